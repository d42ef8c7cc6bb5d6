"""Terminal messages in English and Chinese.

The language comes from the usual POSIX variables (``LORASTUDIO_LANG`` overrides them): GNU
``LANGUAGE`` first (a priority list like ``zh_CN:en``) unless the locale is ``C``/``POSIX``, then the
first non-empty of ``LC_ALL``, ``LC_MESSAGES``, ``LANG``. Anything that is not Chinese gets English.

Messages are looked up by key; a missing Chinese text falls back to English, a missing key shows the
key itself, so a gap in the catalog never crashes a command.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

LANGS = ("en", "zh")

# key: (English, Chinese). Placeholders use str.format names.
MESSAGES: dict[str, tuple[str, str]] = {
    # --- row issues -------------------------------------------------------------------------
    "empty_instruction": ("The question ({field}) is empty.", "问题（{field}）为空。"),
    "empty_instruction.hint": ("Fill in the question or delete the row.", "请补上问题，或删除这一行。"),
    "empty_instruction.missing": ("The row has no question field ({field}).", "这一行没有问题字段（{field}）。"),
    "empty_instruction.missing.hint": (
        "Add the question under '{field}' or delete the row.", "请在“{field}”下补上问题，或删除这一行。"),
    "empty_instruction.blank": (
        "The question ({field}) contains only whitespace.", "问题（{field}）只有空白字符。"),
    "empty_instruction.blank.hint": ("Fill in the question or delete the row.", "请补上问题，或删除这一行。"),
    "empty_response": ("The answer ({field}) is empty.", "回答（{field}）为空。"),
    "empty_response.hint": ("Write the answer or delete the row.", "请补上回答，或删除这一行。"),
    "empty_response.missing": ("The row has no answer field ({field}).", "这一行没有回答字段（{field}）。"),
    "empty_response.missing.hint": (
        "Add the answer under '{field}' or delete the row.", "请在“{field}”下补上回答，或删除这一行。"),
    "empty_response.blank": ("The answer ({field}) contains only whitespace.", "回答（{field}）只有空白字符。"),
    "empty_response.blank.hint": ("Write the answer or delete the row.", "请补上回答，或删除这一行。"),
    "duplicate": ("Exact duplicate of row {first}.", "与第 {first} 行完全重复。"),
    "duplicate.hint": (
        "Delete this row: repeated rows over-weight one answer.", "请删除这一行：重复的数据会让模型过度偏向同一个回答。"),
    "duplicate_question": (
        "Same question as row {first}, but a different answer.", "与第 {first} 行问题相同，但回答不同。"),
    "duplicate_question.hint": (
        "Check which answer is right; contradicting answers confuse the model.",
        "请确认哪个回答正确；相互矛盾的回答会让模型混乱。"),
    "too_long": (
        "About {tokens} tokens (estimated from {chars} characters), over the limit of {limit}.",
        "约 {tokens} 个 token（按 {chars} 个字符估算），超过上限 {limit}。"),
    "too_long.hint": (
        "Shorten or split this row, or raise --max-length; training would cut it off.",
        "请缩短或拆分这一行，或调大 --max-length；否则训练时会被截断。"),
    "too_long.tokens": ("{tokens} tokens, over the limit of {limit}.", "共 {tokens} 个 token，超过上限 {limit}。"),
    "too_long.tokens.hint": (
        "Shorten or split this row, or raise --max-length; training would cut it off.",
        "请缩短或拆分这一行，或调大 --max-length；否则训练时会被截断。"),
    "mojibake": (
        "{field} looks garbled: UTF-8 text that was read as {codec}.",
        "{field} 疑似乱码：UTF-8 文字被按 {codec} 错误解读。"),
    "mojibake.hint": (
        "Re-export the source as UTF-8, or replace it with the repaired text: {repaired}",
        "请把源文件重新导出为 UTF-8，或替换为修复后的文字：{repaired}"),
    "mojibake.lossy": (
        "{field} looks garbled: UTF-8 text that was read as {codec}.",
        "{field} 疑似乱码：UTF-8 文字被按 {codec} 错误解读。"),
    "mojibake.lossy.hint": (
        "Re-export the source as UTF-8. Automatic repair recovers only part of it (� = lost characters, "
        "retype them): {repaired}",
        "请把源文件重新导出为 UTF-8。自动修复只能恢复一部分（� 处的字已丢失，需要重新输入）：{repaired}"),
    "extra_columns": (
        "The row has {found} fields but the header has {expected}.", "这一行有 {found} 个字段，表头只有 {expected} 个。"),
    "extra_columns.hint": (
        "A value probably contains an unquoted '{delim}': wrap that value in double quotes.",
        "某个值里很可能有未加引号的“{delim}”：请用英文双引号把这个值括起来。"),
    "extra_columns.sheet": (
        "The row has values in {found} columns but the header names only {expected}.",
        "这一行有 {found} 列有值，但表头只有 {expected} 列。"),
    "extra_columns.sheet.hint": (
        "Move the stray value into the right cell, or give that column a header.",
        "请把多出的值移到正确的单元格，或给那一列加上表头。"),
    "malformed_row.quote": (
        "Unbalanced double quote: a quoted value is never closed.", "双引号不成对：某个带引号的值没有闭合。"),
    "malformed_row.quote.hint": (
        "Add the missing closing quote (\") or remove the stray one.", "请补上缺少的右引号（\"），或删掉多余的引号。"),
    "malformed_row.missing_fields": (
        "The row has {found} fields but the header has {expected}.", "这一行只有 {found} 个字段，表头有 {expected} 个。"),
    "malformed_row.missing_fields.hint": (
        "Fill in the missing value(s) or check for a stray line break.", "请补上缺少的值，或检查是否有多余的换行。"),
    "malformed_row.json": ("Not valid JSON: {error}.", "不是合法的 JSON：{error}。"),
    "malformed_row.json.hint": (
        "Fix the JSON on this line: each line must be one complete JSON object.",
        "请修正这一行的 JSON：每一行必须是一个完整的 JSON 对象。"),
    "malformed_row.not_object": ("Expected a JSON object, found {type}.", "应为 JSON 对象，实际是 {type}。"),
    "malformed_row.not_object.hint": (
        "Write each row as an object, e.g. {{\"instruction\": \"…\", \"response\": \"…\"}}.",
        "每一行应写成对象，例如 {{\"instruction\": \"…\", \"response\": \"…\"}}。"),
    "malformed_row.no_fields": (
        "The row has none of the fields the rest of the file uses ({expected}).",
        "这一行没有文件其余部分使用的字段（{expected}）。"),
    "malformed_row.no_fields.hint": (
        "Use the same field names as the other rows.", "请使用与其他行相同的字段名。"),
    "malformed_row.no_tab": (
        "The line has no tab between question and answer.", "这一行的问题和回答之间没有制表符（Tab）。"),
    "malformed_row.no_tab.hint": (
        "Separate question and answer with one tab, or use 问：/答： blocks.", "请用一个 Tab 分隔问题和回答，或改用 问：/答： 格式。"),
    "malformed_row.orphan_text": (
        "Text outside any question/answer block.", "这段文字不属于任何问答块。"),
    "malformed_row.orphan_text.hint": (
        "Start questions with 问： or Q: and answers with 答： or A:, or delete the line.",
        "问题请以“问：”或“Q:”开头，回答以“答：”或“A:”开头，或删除这一行。"),
    "malformed_row.csv": ("Could not read this row: {error}.", "无法读取这一行：{error}。"),
    "malformed_row.csv.hint": ("Check the quotes and separators on this row.", "请检查这一行的引号和分隔符。"),
    "malformed_row.turns": ("{field} must be a list of turns.", "{field} 应该是一个对话轮次列表。"),
    "malformed_row.turns.hint": (
        "Write the turns as a JSON list, e.g. [{{\"role\": \"user\", \"content\": \"…\"}}, …].",
        "请把轮次写成 JSON 列表，例如 [{{\"role\": \"user\", \"content\": \"…\"}}, …]。"),
    "malformed_row.no_turns": ("{field} has no turns.", "{field} 里没有任何对话轮次。"),
    "malformed_row.no_turns.hint": ("Add at least one question and its answer.", "请至少加入一问一答。"),
    "malformed_row.turn": ("{field} is not an object with text.", "{field} 不是带文字的对象。"),
    "malformed_row.turn.hint": (
        "Each turn must be an object such as {example}.", "每个轮次应是这样的对象：{example}。"),
    "missing_assistant": (
        "The conversation ends with a question and no answer.", "对话以提问结束，缺少回答。"),
    "missing_assistant.hint": (
        "Add the assistant's answer as the last turn, or remove the unanswered question.",
        "请在最后补上助手的回答，或删除没有回答的提问。"),
    "wrong_turn_order": (
        "{field}: a {role} turn follows a {prev} turn; turns must alternate user, assistant.",
        "{field}：{prev} 之后又是 {role}；轮次必须是用户、助手交替。"),
    "wrong_turn_order.hint": (
        "Reorder or merge the turns so each question is followed by its answer.",
        "请调整或合并轮次，使每个问题后面紧跟它的回答。"),
    "wrong_turn_order.system": (
        "{field}: a system turn may only come first.", "{field}：system 轮次只能放在最前面。"),
    "wrong_turn_order.system.hint": (
        "Move the system prompt to the first turn.", "请把系统提示移到第一个轮次。"),
    "unsupported_role": ("{field}: unknown role '{role}'.", "{field}：未知角色“{role}”。"),
    "unsupported_role.hint": (
        "Use system, user or assistant (ShareGPT: system, human, gpt).",
        "请使用 system、user 或 assistant（ShareGPT 用 system、human、gpt）。"),
    "non_text.number": ("{field} is a number; read as the text '{value}'.", "{field} 是数字，已按文字“{value}”读取。"),
    "non_text.number.hint": (
        "Store it as text (in quotes) to silence this warning.", "把它存成文字（加引号）即可消除此警告。"),
    "non_text": ("{field} is {type}, not text.", "{field} 是 {type}，不是文字。"),
    "non_text.hint": ("Put plain text in this field.", "请在这个字段里填写纯文字。"),
    # --- dataset issues ---------------------------------------------------------------------
    "few_rows": ("Only {n} usable row(s).", "只有 {n} 行可用数据。"),
    "few_rows.hint": (
        "500–1000 varied question/answer pairs are advised; with fewer than 100 the model mostly memorises.",
        "建议准备 500–1000 条多样的问答；少于 100 条时模型基本只会死记硬背。"),
    "no_usable_rows": ("No usable rows.", "没有可用的数据行。"),
    "no_usable_rows.hint": ("Fix the errors listed above and validate again.", "请修正上面列出的错误后重新校验。"),
    "short_answers": (
        "{pct}% of answers are shorter than {min} characters.", "{pct}% 的回答短于 {min} 个字符。"),
    "short_answers.hint": (
        "Very short answers teach the model to answer tersely; write complete answers with the concrete facts.",
        "过短的回答会让模型学会敷衍；请写出包含具体事实的完整回答。"),
    "heavy_duplication": ("{pct}% of rows are exact duplicates.", "{pct}% 的数据行完全重复。"),
    "heavy_duplication.hint": (
        "Remove the repeated rows; ask each fact in different ways instead of copying rows.",
        "请删除重复行；同一事实请换不同问法，而不是复制粘贴。"),
    "one_wording": (
        "{pct}% of the facts are asked only one way.", "{pct}% 的知识点只有一种问法。"),
    "one_wording.hint": (
        "Customers word questions differently: add 2–3 other wordings of each important question (same "
        "answer). In our tests a file asking each fact 3–4 ways was answered right on about 80% of new "
        "wordings, one stating each fact once on about 35%.",
        "客户的问法各不相同：请为每个重要问题再补充 2–3 种不同问法（答案相同）。在我们的测试中，每条知识有 3–4 种问法"
        "的数据，换一种问法仍有约 80% 答对；每条知识只出现一次的数据约为 35%。"),
    "column_mapped": (
        "Column '{src}' was read as '{dst}' (close spelling).", "列“{src}”按相近拼写识别为“{dst}”。"),
    "column_mapped.hint": ("Rename it to '{dst}' to silence this warning.", "将其改名为“{dst}”即可消除此警告。"),
    "ignored_columns": (
        "Columns not used for training: {columns}.", "以下列不参与训练：{columns}。"),
    "ignored_columns.hint": (
        "They are ignored. If one holds questions or answers, rename it to one of: {expected}.",
        "这些列会被忽略。如果其中有问题或回答，请改名为：{expected}。"),
    "skipped_above_header": (
        "{n} line(s) above the header row were not read: {lines}.", "表头上方的 {n} 行未被读取：{lines}。"),
    "skipped_above_header.hint": (
        "They look like a title or note. If they hold data, move them below the header.",
        "它们看起来像标题或说明；如果其中有数据，请移到表头下方。"),
    "mixed_schemas": ("Rows use different layouts: {schemas}.", "各行使用了不同的格式：{schemas}。"),
    "mixed_schemas.hint": (
        "Each row was read with its own layout; use one layout to be sure nothing is misread.",
        "每一行已按各自的格式读取；建议统一成一种格式以免误读。"),
    # --- file-level refusals (DataError) ----------------------------------------------------
    "not_found": ("{file}: no such file.", "{file}：文件不存在。"),
    "is_directory": ("{file} is a folder, not a file.", "{file} 是文件夹，不是文件。"),
    "unreadable": ("{file} cannot be read: {error}.", "无法读取 {file}：{error}。"),
    "empty_file": ("{file} is empty.", "{file} 是空文件。"),
    "binary": (
        "{file} is not a text file (binary content); use JSONL, JSON, CSV, TSV, TXT or XLSX.",
        "{file} 不是文本文件（二进制内容）；请使用 JSONL、JSON、CSV、TSV、TXT 或 XLSX。"),
    "undecodable": (
        "{file}: unknown text encoding (not UTF-8, UTF-16 or GBK); save it as UTF-8.",
        "{file}：无法识别的文字编码（不是 UTF-8、UTF-16 或 GBK）；请另存为 UTF-8。"),
    "legacy_xls": (
        "{file} is an old Excel .xls file; save it as .xlsx or CSV (UTF-8).",
        "{file} 是旧版 Excel .xls 文件；请另存为 .xlsx 或 CSV（UTF-8）。"),
    "not_xlsx": ("{file} is not a readable .xlsx workbook: {error}.", "{file} 不是可读取的 .xlsx 工作簿：{error}。"),
    "other_document": (
        "{file} is a {doc} document, not a data table; export the Q&A as XLSX, CSV or JSONL.",
        "{file} 是 {doc} 文档，不是数据表；请把问答导出为 XLSX、CSV 或 JSONL。"),
    "unknown_sheet": (
        "{file} has no sheet named '{sheet}'; sheets: {sheets}.", "{file} 中没有名为“{sheet}”的工作表；现有：{sheets}。"),
    "malformed_json": (
        "{file} is not valid JSON (line {line}, column {column}: {error}).",
        "{file} 不是合法的 JSON（第 {line} 行第 {column} 列：{error}）。"),
    "unknown_columns": (
        "{file}: no question/answer columns found (found: {found}); expected {expected}.",
        "{file}：找不到问题/回答列（现有：{found}）；应为 {expected}。"),
    "unknown_columns.suggest": (
        "{file}: no question/answer columns found (found: {found}); did you mean {suggestions}? Expected {expected}.",
        "{file}：找不到问题/回答列（现有：{found}）；是否想写 {suggestions}？应为 {expected}。"),
    "ambiguous_columns": (
        "{file}: columns {columns} all look like the {role}; keep one or rename the others.",
        "{file}：列 {columns} 看起来都是{role}；请只保留一个或给其他列改名。"),
    "unknown_format": (
        "{file}: cannot tell the format (no JSON, no header row with known columns, no tab pairs, no 问：/答： blocks).",
        "{file}：无法识别格式（不是 JSON，没有带已知列名的表头，没有 Tab 分隔的问答，也没有 问：/答： 块）。"),
    "no_rows": ("{file} has a header but no data rows.", "{file} 只有表头，没有数据行。"),
    "too_many_rows": (
        "{file} has {rows:,} data rows; one training file may have at most {limit:,}. Split it into files of at "
        "most {limit:,} rows (or keep the {limit:,} that matter most) and upload one, or ask whoever runs this "
        "server for a larger limit.",
        "{file} 有 {rows:,} 行数据，一个训练文件最多 {limit:,} 行。请把它拆成每个不超过 {limit:,} 行的文件"
        "（或只保留最重要的 {limit:,} 行）再上传，或请管理这台服务器的人调高上限。"),
    "expected.table": (
        "a header row with a question column (instruction / question / prompt / input / 问题 / 指令) and an "
        "answer column (response / answer / output / completion / 答案 / 回复)",
        "一行表头，含问题列（instruction / question / prompt / input / 问题 / 指令）和回答列"
        "（response / answer / output / completion / 答案 / 回复）"),
    "expected.records": (
        "a question field (instruction / question / prompt / input / 问题 / 指令) and an answer field "
        "(response / answer / output / completion / 答案 / 回复), or messages / conversations / conversation",
        "问题字段（instruction / question / prompt / input / 问题 / 指令）和回答字段"
        "（response / answer / output / completion / 答案 / 回复），或 messages / conversations / conversation"),
    "expected.list": ("one list of rows (name it 'data')", "只包含一个数据列表（建议命名为 data）"),
    # --- CLI --------------------------------------------------------------------------------
    "cli.file": ("File", "文件"),
    "cli.format": ("Format", "格式"),
    "cli.schema": ("Schema", "结构"),
    "cli.encoding": ("Encoding", "编码"),
    "cli.rows": (
        "Rows: {total} total, {ok} usable, {rejected} rejected",
        "行数：共 {total} 行，可用 {ok} 行，拒绝 {rejected} 行"),
    "cli.no_issues": ("No problems found.", "未发现问题。"),
    "cli.issues": ("Row problems ({n}):", "行问题（{n} 个）："),
    "cli.dataset_issues": ("Dataset advice:", "数据集建议："),
    "cli.more": (
        "… {n} more; see all with --json or write them with --rejected FILE.",
        "……还有 {n} 个；用 --json 查看全部，或用 --rejected 文件 导出。"),
    "cli.col.row": ("Row", "行"),
    "cli.col.severity": ("Level", "级别"),
    "cli.col.kind": ("Kind", "类型"),
    "cli.col.field": ("Field", "字段"),
    "cli.col.message": ("Problem", "问题"),
    "cli.error": ("error", "错误"),
    "cli.warning": ("warning", "警告"),
    "cli.rejected_written": (
        "Wrote {n} rejected rows with their reasons to {path}", "已将 {n} 行被拒绝的数据及原因写入 {path}"),
    "cli.internal_error": (
        "internal error while validating ({error}); please report it", "校验时发生内部错误（{error}）；请反馈此问题"),
    # --- recommender: reasons (rec.<setting>.<case>), warnings (warn.*), estimate (estimate.*) --------
    # Rendered by lorastudio.train.recommend (English .reasons/.warnings), the CLI and the studio page
    # (GET /studio/messages). Parameters are plain numbers/strings; no format specs.
    "rec.target_modules.mlp": (
        "Adapts only the feed-forward layers, where the model keeps its facts: the facts of your {rows} rows are "
        "written where the model looks them up, while its grammar and general skills stay as they were. In our "
        "tests adapting every layer learnt no more facts (65.5 vs 66.7 of 80 reworded questions) and kept fewer "
        "general answers (16.7 vs 17.3 of 24).",
        "只调整前馈层，也就是模型存放知识的地方：你这 {rows} 行里的知识会写进模型查找知识的位置，语法和通用能力保持原样。"
        "我们测试中调整所有层并没有多记住知识（80 个换了说法的问题答对 65.5 比 66.7 个），通用问题反而保住得更少"
        "（24 个中 16.7 比 17.3 个）。"),
    "rec.lora_r": (
        "Rank {rank}: how much the adapter can hold, enough for the facts of {rows} rows on a {size}B model. "
        "Doubling it trained slower and recalled no more in our tests; a much smaller rank may not hold every fact.",
        "秩 {rank}：决定适配器能装下多少内容，足够容纳这 {rows} 行里的知识（{size}B 模型）。我们测试中把它翻倍后"
        "训练更慢，也没有多记住知识；调得太小则可能装不下全部知识。"),
    "rec.lora_alpha": (
        "{alpha}, twice the rank ({rank}): the usual strength of the adapter's changes, the one the learning rate "
        "below was measured with. Changing it works like changing the learning rate.",
        "{alpha}，即秩（{rank}）的两倍：适配器改动的常用力度，下面的学习率就是在这个力度下测出来的。改它的效果相当于改学习率。"),
    "rec.lora_dropout.off": (
        "Off: the extra wordings and general questions mixed into your {rows} rows already keep the model from "
        "repeating them word for word; dropout would only slow down learning them.",
        "关闭：混入这 {rows} 行的额外问法和通用问题已经能防止模型逐字照搬；再加 dropout 只会让学习变慢。"),
    "rec.lora_dropout.off_plain": (
        "Off: {rows} rows trained for a few passes are not learnt by rote; dropout would only slow learning.",
        "关闭：{rows} 行数据只训练几轮，不会被死记硬背；dropout 只会让学习变慢。"),
    "rec.learning_rate": (
        "{lr}: the size of each learning step, chosen so a {size}B model takes in the facts of your {rows} rows "
        "in the {epochs}-pass schedule. In our tests a 1.5× higher rate learnt about as many facts but kept fewer "
        "general answers (16.7 vs 18.7 of 24); a lower one (0.7×) learnt fewer facts (64 vs 70 of 80).",
        "{lr}：每一步学习的幅度，按 {size}B 模型在 {epochs} 轮训练内学会这 {rows} 行知识来选。我们测试中调高到 1.5 倍，"
        "记住的知识差不多，但通用问题保住得更少（24 个中 16.7 比 18.7 个）；调低到 0.7 倍则记住的知识更少（80 个中 64 比 70 个）。"),
    "rec.learning_rate.four": (
        "{lr}: the size of each learning step, chosen so a {size}B model takes in the facts of your {rows} rows in "
        "the {epochs}-pass schedule: 0.8× the rate of shorter schedules ({full_lr}). Over 4 passes the full rate recalled about the same facts (0.8 of 40 more) "
        "but kept fewer general answers (1.7 of 24 fewer, 16 paired runs on our 150-row demo file); with fewer "
        "passes (quick preview, a time limit) the full rate comes back.",
        "{lr}：每一步学习的幅度，按 {size}B 模型在 {epochs} 轮训练内学会这 {rows} 行知识来选，是较短方案（{full_lr}）的 0.8 倍。训练 4 轮时用原来的幅度，"
        "记住的知识差不多（40 条中多 0.8 条），但通用问题保住得更少（24 个中少 1.7 个，在 150 行示例数据上 16 组对照）；"
        "轮数变少时（快速预览、时间限制）恢复原来的幅度。"),
    "rec.learning_rate.style": (
        "{lr}: the size of each learning step, chosen so a {size}B model picks up the style of your {rows} rows in "
        "the {epochs}-pass schedule. A higher rate imitates faster but forgets more of what the model knew; a "
        "lower one changes it less.",
        "{lr}：每一步学习的幅度，按 {size}B 模型在 {epochs} 轮训练内学会这 {rows} 行的文风来选。调高模仿得更快，但会忘掉更多原有能力；"
        "调低则改变更小。"),
    "rec.learning_rate.big": (
        "{lr}, half the usual rate: with {rows} rows one pass already takes many steps, and smaller steps keep "
        "the model from drifting away from what it knew ({epochs}-pass schedule). A higher rate risks forgetting.",
        "{lr}，常用值的一半：{rows} 行数据一轮就有很多步，步子小一些能防止模型偏离原有能力（共 {epochs} 轮）。调高有遗忘的风险。"),
    "rec.lr_scheduler.linear": (
        "The step size falls steadily to zero over the {epochs}-pass schedule, so the last pass settles the facts "
        "instead of shaking them loose. A constant rate keeps changing the model to the end; cosine measured the same.",
        "学习幅度在 {epochs} 轮训练中逐步降到零，最后一轮是在巩固知识，而不是把它们打乱。固定幅度会让模型一直改到最后；"
        "余弦衰减实测效果相同。"),
    "rec.warmup_ratio": (
        "The first {steps} of about {total_steps} learning steps ({pct}%) start gently, so the fresh adapter's first "
        "updates do not jolt the model. Without it the first steps can damage what the model already knows.",
        "约 {total_steps} 步中的前 {steps} 步（{pct}%）从小幅度起步，让新适配器最初的更新不至于冲击模型。去掉它，最初几步可能损坏模型原有的能力。"),
    "rec.weight_decay.off": (
        "Off: the adapter starts at zero and trains for only about {total_steps} steps; decay would just pull it "
        "back and slow the learning.",
        "关闭：适配器从零开始，只训练约 {total_steps} 步；权重衰减只会把它往回拉，让学习变慢。"),
    "rec.augment_same_fact.on": (
        "Each question is also trained with the answer of another row about the same fact, so the model learns the "
        "fact rather than one sentence. It taught the most per minute in our tests (59 vs 47 of 80 reworded "
        "questions). Turning it off makes training about {saved_pct}% shorter and recalls less.",
        "每个问题还会配上另一行讲同一知识的回答一起训练，让模型学会的是知识本身，而不是某一句话。我们测试中它是每分钟收益最大的做法"
        "（80 个换了说法的问题答对 59 比 47 个）。关掉它训练时间约少 {saved_pct}%，但记住的更少。"),
    "rec.key_token_weight.on": (
        "The words of an answer that carry the fact count {weight}× in training: its first words (where the "
        "model picks which fact it answers with) and every number (amounts, limits, days). In our tests (20 and "
        "16 runs on two files) this answered about 1–3 more of 80 reworded questions right, at no extra time and "
        "no loss of general answers. Setting it to 1 weighs every word the same.",
        "回答里承载知识的词在训练中按 {weight} 倍计：回答开头的几个词（模型在这里决定答哪一条知识）和每个数字（金额、门槛、天数）。"
        "我们的测试（两个文件上 20 次和 16 次运行）：80 个换了说法的问题多答对约 1–3 个，不多花时间，通用问题也没有变差。"
        "设为 1 则所有词同等对待。"),
    "rec.key_token_weight.off_style": (
        "1: copywriting rows teach a style, so every word of an answer weighs the same.",
        "1：文案数据教的是文风，回答里每个词同等对待。"),
    "rec.question_loss_weight.on": (
        "The model also learns your questions' own words, each counting {weight} of an answer's word, so the "
        "names and terms of your business are learnt as your customers write them. In our tests (42 runs on "
        "four files) this answered about 1 more of 32–40 facts right on every file with no loss of general "
        "answers; on a CPU training takes about 5–15 % longer. 0 trains on the answers only.",
        "模型也学习你的问题本身的用词，每个词按回答里一个词的 {weight} 计，让业务里的名称和术语按客户的说法学进去。"
        "我们的测试（四个文件上 42 次运行）：每个文件 32–40 条知识都多答对约 1 条，通用问题也没有变差；"
        "在 CPU 上训练时间约多 5–15%。设为 0 则只学回答。"),
    "rec.question_loss_weight.off_style": (
        "0: copywriting rows teach how to write, so only the answers are learnt.",
        "0：文案数据教的是怎么写，只学回答。"),
    "rec.augment_contrast.on_example": (
        "Questions about facts that sit close together in your data are also asked in pairs, for example "
        "“{first}” together with “{second}”, each part answered with its own row's answer ({per_pass} such "
        "pairs a pass, from the {questions} questions that have a close neighbour). This teaches the model to "
        "keep similar facts apart instead of answering with the neighbouring one. In our tests (a 150-row file, "
        "10 runs) it answered about 8 more of 75 harder questions right and 4 more of 80 reworded ones (6 more "
        "on a file of conversations), for about one general answer of 24 (18.0 vs 18.8). "
        "It adds about {minutes} min here ({pct}% more training). Turning it off saves that "
        "time, but similar facts get mixed up more often.",
        "你的数据里相近的知识还会被两两合成一个问题来训练，比如“{first}”和“{second}”一起问，每一部分用它自己那一行的回答作答"
        "（每轮 {per_pass} 个这样的组合，来自 {questions} 个有相近知识的问题）。这样模型学会把相似的知识分开，而不是答成相邻的那一条。"
        "我们的测试（150 行的文件，10 次运行）：75 个更难的问题多答对约 8 个，80 个换了说法的问题多答对 4 个（多轮对话文件上多答对 6 个），"
        "24 个通用问题约少答对 1 个（18.0 比 18.8）。这里会多花约 {minutes} 分钟（训练量多 {pct}%）。"
        "关掉可以省下这段时间，但相似的知识更容易被混淆。"),
    "rec.augment_contrast.on": (
        "Questions about facts that sit close together in your data are also asked in pairs (two refund rules, "
        "two deadlines), each part answered with its own row's answer (about {per_pass} such pairs a pass). "
        "This teaches the model to keep similar facts apart instead of answering with the neighbouring one. In "
        "our tests (a 150-row file, 10 runs) it answered about 8 more of 75 harder questions right and 4 more of "
        "80 reworded ones (6 more on a file of conversations), for about one general answer of 24 (18.0 vs "
        "18.8). It adds about {minutes} min here ({pct}% more training). "
        "Turning it off saves that time, but similar facts get mixed up more often.",
        "你的数据里相近的知识（比如两条退款规则、两个时限）还会被两两合成一个问题来训练，每一部分用它自己那一行的回答作答"
        "（每轮约 {per_pass} 个这样的组合）。这样模型学会把相似的知识分开，而不是答成相邻的那一条。我们的测试（150 行的文件，10 次运行）："
        "75 个更难的问题多答对约 8 个，80 个换了说法的问题多答对 4 个（多轮对话文件上多答对 6 个），24 个通用问题约少答对 1 个"
        "（18.0 比 18.8）。这里会多花约 {minutes} 分钟（训练量多 {pct}%）。"
        "关掉可以省下这段时间，但相似的知识更容易被混淆。"),
    "rec.augment_contrast.budget": (
        "Off to fit your {budget_minutes}-minute limit (it would add about {minutes} min). It is the last thing "
        "left out, after the passes down to one: a pass fewer costs fewer right answers than this does, above all to "
        "questions that ask about two similar facts at once; without it similar facts get mixed up more often.",
        "为了控制在你设定的 {budget_minutes} 分钟内而关闭（它会多花约 {minutes} 分钟）。它最后才被省掉（先把训练轮数减到 1 轮）："
        "少训练一轮损失的正确回答比关掉它更少，尤其是同时问到两个相近知识的问题；关掉后相似的知识更容易被混淆。"),
    "rec.augment_contrast.off_style": (
        "Off: copywriting rows teach a style, not facts that could be confused with each other.",
        "关闭：文案数据教的是文风，不存在容易混淆的相邻知识。"),
    "rec.augment_contrast.off_few": (
        "Off: only {questions} of the questions in your {rows} rows have a close neighbouring fact; pairing "
        "starts at {min_rows}, below that there is little to confuse.",
        "关闭：你的 {rows} 行数据中只有 {questions} 个问题有相近的知识；至少 {min_rows} 个才开启，再少就没什么可混淆的。"),
    "rec.augment_contrast.off_big": (
        "Off: with {rows} rows one pass is long already, and pairing neighbouring facts was measured on small "
        "files only. Turn it on if similar facts get mixed up (it adds about a quarter to the training).",
        "关闭：{rows} 行数据训练一轮已经很长，而相近知识两两配对只在小文件上测过。如果相似的知识被混淆，可以打开它（训练量约多四分之一）。"),
    "rec.augment_same_fact.off_style": (
        "Off: copywriting rows teach a style, not facts asked in several ways.",
        "关闭：文案数据教的是文风，不是用多种问法询问的知识。"),
    "rec.augment_same_fact.off_big": (
        "Off: {rows} rows are too many to compare every pair of answers quickly, and so many rows usually word "
        "each fact several ways already.",
        "关闭：{rows} 行数据太多，无法快速两两比较回答；而且这么多数据通常已经包含同一知识的多种说法。"),
    "rec.augment_paraphrases.off_style": (
        "Off: copywriting learns a style, not facts asked in many ways.",
        "关闭：文案学的是文风，不是用多种问法询问的知识。"),
    "rec.augment_paraphrases.off_big": (
        "Off: {rows} rows already phrase things many ways.",
        "关闭：{rows} 行数据本身已经有很多种说法。"),
    "rec.augment_paraphrases.off_measured": (
        "Off: rewordings of your questions written by the model itself taught no more facts in our tests once your "
        "questions are learnt too (above), and cost about 2 of 24 general answers (10 runs on a GPU). Turning it on "
        "adds about {minutes} min here.",
        "关闭：我们的测试中，在问题本身也参与学习（见上）之后，由模型自己改写的问法没有让模型多记住知识，反而让 24 个通用问题少答对约 2 个"
        "（GPU 上 10 次运行）。打开它在这里要多花约 {minutes} 分钟。"),
    "rec.augment_turns.on": (
        "Your {rows} conversations have about {turns} answers each; every later turn is also trained as a question "
        "of its own, because customers ask it without the conversation before it. In our tests this recalled far "
        "more facts (20 vs 12 of 80); without it, facts told late in a conversation are found mostly inside that "
        "conversation.",
        "这 {rows} 段对话平均每段约 {turns} 轮回答；后面的每一轮也会单独作为一个问题来训练，因为客户往往不经过前面的对话就直接问。"
        "我们测试中这样能多记住很多知识（80 个中 20 比 12 个）；不这样做，对话后半段讲到的知识基本只有在同一段对话里才答得出。"),
    "rec.augment_turns.off_single": (
        "Off: every row is a single question and answer.",
        "关闭：每一行都是单独的一问一答。"),
    "rec.augment_turns.off_style": (
        "Off: copywriting conversations teach a style, not facts.",
        "关闭：文案对话教的是文风，不是知识。"),
    "rec.replay_rows.on": (
        "{n} general questions, answered by the base model itself, are mixed in with your {rows} rows, so the model "
        "keeps its general knowledge while learning yours. In our tests 60 kept more general answers than 40 "
        "(17 vs 15 of 24) with the same facts learnt; more than that did not help and cost time.",
        "在这 {rows} 行之外混入 {n} 个通用问题（由基础模型自己作答），让模型学你的知识时不丢掉原有的常识。"
        "我们测试中混入 60 个比 40 个保住的通用回答更多（24 个中 17 比 15 个），记住的知识一样多；再多则没有帮助，还费时间。"),
    "rec.knowledge_strength.told_once": (
        "Half strength while it reads: only {pct}% of your answers state a fact that another answer also states, so "
        "each fact is told about once and the training holds little of it; the model then answers better reading "
        "your rows with the tuned weights at half strength. In our tests on such a file (a multi-turn file, 6 runs) "
        "that answered 4.8 more of 40 facts (25.3 vs 20.5) and 4.2 more of 75 harder questions, general answers "
        "unchanged. Without the rows (an exported model) the full adapter answers.",
        "查阅资料时适配器用一半强度：你的回答中只有 {pct}% 讲的知识在别的回答里也出现，每条知识大约只讲一次，训练记住的不多；"
        "这时模型以一半强度的微调权重查阅你的资料，答得更准。我们在这样的文件（多轮对话文件，6 次训练）上测试：40 条知识多答对 "
        "4.8 条（25.3 比 20.5），75 道更难的题多答对 4.2 道，通用回答不变。不带资料时（例如导出的模型）仍用完整的适配器。"),
    "rec.knowledge_strength.full": (
        "Full strength: {pct}% of your answers state a fact that another answer also states, so the training holds "
        "your facts. On such files a weaker adapter answered some reworded questions better but fewer questions "
        "that ask two facts at once, so it answers as trained.",
        "完整强度：你的回答中有 {pct}% 讲的知识在别的回答里也出现，训练能记住这些知识。在这类文件上，降低适配器强度对换个说法的"
        "问题略好，但同时问两条知识的问题答对更少，所以保持训练时的强度。"),
    "rec.knowledge_strength.style": (
        "Full strength: writing-style data teaches a way of writing, which a weaker adapter would lose.",
        "完整强度：文案类数据教的是写法，降低强度会丢掉它。"),
    "rec.knowledge_rows": (
        "When the tuned model answers, the {n} rows of your file closest to the question are put beside it (not in "
        "training): it reads your facts as well as remembering them. In our tests the same adapters answered 3.8 more "
        "of 40 facts with them (35.5 vs 31.7) and 7–10 more on smaller files, with no general answer lost; on a 2-core "
        "CPU the first word comes about 1.6 s later. 0 answers from the weights alone, as an exported model does.",
        "微调后的模型回答时，会把你资料中与问题最相近的 {n} 行放在问题旁边（训练时不用）：既靠记忆，也查阅你的资料。我们测试中，"
        "同一个适配器这样多答对 3.8 条知识（40 条中 35.5 比 31.7），在更小的文件上多 7–10 条，通用回答没有变少；在 2 核 CPU 上"
        "第一个字约晚 1.6 秒出现。设为 0 则只靠模型权重回答（导出的模型就是这样）。"),
    "rec.replay_rows.off": (
        "Off: there are no rows of yours to balance.",
        "关闭：没有需要平衡的数据。"),
    "rec.augment_per_epoch.on": (
        "Each pass gets fresh variants (another same-fact answer, new general questions) instead of repeating the "
        "same ones: in our tests the model kept more general knowledge (18.7 vs 17.3 of 24 answers) with about the "
        "same facts learnt, at no extra time.",
        "每一轮都换一批新的变体（换一个同知识的回答、换一批通用问题），而不是重复同样的内容：我们测试中模型保住的常识更多"
        "（24 个中 18.7 比 17.3 个），记住的知识差不多，也不多花时间。"),
    "rec.augment_per_epoch.off_one_pass": (
        "Off: a single pass has nothing to vary between passes.",
        "关闭：只训练一轮，没有轮与轮之间可以变换的内容。"),
    "rec.augment_per_epoch.off_nothing": (
        "Off: nothing is added to your rows, so every pass is the same.",
        "关闭：没有给数据额外添加内容，每一轮都一样。"),
    "rec.max_length": (
        "{max_length} tokens: your longest row is about {longest} tokens, so every row fits whole. Longer rows are "
        "reported and skipped, never cut; a lower limit would skip your longest rows, a higher one only uses more memory.",
        "{max_length} 个 token：你最长的一行约 {longest} 个 token，每一行都能完整放下。超长的行会被报告并跳过，绝不会被截断；"
        "调低会跳过你最长的那些行，调高只会多占内存。"),
    "rec.batch_tokens": (
        "About {rows_per_step} rows ({tokens} tokens, packed without padding) per learning step: about {steps} steps "
        "per pass over your data, enough small steps for the facts to settle. Steps twice this size ran faster but "
        "learnt fewer facts in our tests (65 vs 70 of 80).",
        "每一步学习约 {rows_per_step} 行（{tokens} 个 token，紧密拼接、不补齐）：每轮约 {steps} 步，步数足够让知识记牢。"
        "我们测试中把每步加大一倍会更快，但记住的知识更少（80 个中 65 比 70 个）。"),
    "rec.gradient_accumulation.one": (
        "1: each learning step is one packed batch, already large enough for steady steps.",
        "1：每一步就是一个拼好的批次，已经足够大，学习很平稳。"),
    "rec.num_epochs.full": (
        "{epochs} passes over your {rows} rows and their variants: the schedule we measured best overall. On our "
        "150-row demo file 4 passes (at 0.8× the step size) answered about 5 more of 75 harder questions and "
        "2 more of 40 facts in full than 3 passes, with as many general answers (12 paired runs), for a third more "
        "time; 2 passes recalled far fewer (56 of 80 reworded questions, 3 passes 66). Fewer passes finish sooner "
        "but recall less.",
        "在这 {rows} 行及其变体上训练 {epochs} 轮：我们测试中综合效果最好的方案。在 150 行的示例数据上，4 轮（学习幅度为 0.8 倍）"
        "比 3 轮在 75 个更难的问题上多答对约 5 个、40 条知识中完整答对的多约 2 条，通用问题保住得一样多（12 组对照），"
        "多花约三分之一的时间；2 轮记住的少得多（80 个换了说法的问题答对 56 个，3 轮 66 个）。轮数少结束得早，但记住的更少。"),
    "rec.num_epochs.small": (
        "{epochs} passes: one pass over your {rows} rows and their variants is only about {tokens} tokens (each fact "
        "is told once or twice), so the extra passes cost only minutes and recalled more such facts in our tests "
        "(4 passes instead of 3: 23 vs 20 of 80 reworded questions; 5 instead of 4: about 2 more of 48–75 harder "
        "questions on three small files). Fewer passes finish sooner but recall less.",
        "训练 {epochs} 轮：这 {rows} 行及其变体一轮只有约 {tokens} 个 token（每条知识只讲一两次），多训练几轮只多花几分钟，"
        "我们测试中能多记住这类知识（4 轮比 3 轮：80 个换了说法的问题多答对 3 个，23 比 20；5 轮比 4 轮：在三个小文件上，"
        "48–75 个更难的问题多答对约 2 个）。轮数少结束得早，但记住的更少。"),
    "rec.num_epochs.style": (
        "{epochs} passes over your {rows} rows: enough for the model to pick up their style and wording without "
        "overwriting what it knows. Fewer passes imitate the style less; more risk copying your texts word for word.",
        "在这 {rows} 行上训练 {epochs} 轮：足以让模型学会它们的文风和措辞，又不会覆盖原有能力。轮数少模仿得不够像；"
        "轮数多则可能逐字照抄你的文本。"),
    "rec.num_epochs.big": (
        "{epochs} pass: with {rows} rows the model sees each kind of question many times in one pass, and the "
        "held-out rows stop training when it no longer improves. More passes would take much longer and risk "
        "forgetting general knowledge.",
        "训练 {epochs} 轮：{rows} 行数据在一轮里就会让模型多次见到每类问题，留出的验证数据会在不再进步时停止训练。"
        "多训练几轮会耗时很久，还可能丢掉常识。"),
    "rec.num_epochs.quick": (
        "1 pass, a quick preview as you asked: about {minutes} min instead of {full_minutes} min for the full "
        "{full_epochs} passes. With your closest rows beside each question it answers almost as many plain questions, "
        "but fewer harder ones (in our measurement, {quick_facts} vs {full_facts} of {facts} facts, {quick_hard} vs "
        "{full_hard} of {hard} harder questions with {measured_epochs} passes), and its weights alone (an exported "
        "model) hold far fewer ({quick_weights} vs {full_weights}). Use it to check your data and the whole process, "
        "then train in full.",
        "按你的选择做快速预览，只训练 1 轮：约 {minutes} 分钟（完整的 {full_epochs} 轮约 {full_minutes} 分钟）。回答时会参考你资料中最相近的几行，"
        "普通问题答对的几乎一样多，较难的问题少一些（我们实测：{facts} 条知识答对 {quick_facts} 条，训练 {measured_epochs} 轮时 {full_facts} 条；"
        "{hard} 道较难问题答对 {quick_hard} 道，完整训练 {full_hard} 道）；只靠模型权重（导出的模型）则少得多（{quick_weights} 条对 {full_weights} 条）。"
        "适合先检查数据和整个流程，之后再完整训练。"),
    "rec.num_epochs.budget": (
        "A {epochs}-pass schedule instead of {full_epochs} passes, to fit your {budget_minutes}-minute limit: fewer "
        "facts will be recalled. Raise or remove the limit for the full schedule.",
        "为了控制在你设定的 {budget_minutes} 分钟内，只训练 {epochs} 轮（完整方案为 {full_epochs} 轮）：记住的知识会变少。"
        "放宽或取消时间限制即可使用完整方案。"),
    "rec.val_fraction.on": (
        "About {n} of your {rows} rows ({pct}%; a wording of facts you also ask other ways) are held out to pick the "
        "best checkpoint: they show how well the model answers a wording it never trained on. Holding out less "
        "trains on more rows but judges worse.",
        "从这 {rows} 行中留出约 {n} 行（{pct}%，优先留出有其他问法的知识的某一种问法）用来挑选最好的检查点：它们能看出模型回答"
        "没训练过的问法的水平。留得少，训练数据多一些，但评判不够准。"),
    "rec.val_fraction.off": (
        "No held-out rows: with {rows} rows every row is a fact the model must learn, so all of them train and the "
        "fixed schedule decides when to stop.",
        "不留验证数据：只有 {rows} 行时，每一行都是模型必须学会的知识，所以全部用于训练，由固定的轮数决定何时结束。"),
    "rec.early_stopping_patience.on": (
        "Training stops after {n} checks in a row without improvement on the held-out rows and keeps the best "
        "checkpoint, so extra passes cannot make the answers worse.",
        "如果在留出的数据上连续 {n} 次检查都没有进步，就停止训练并保留最好的检查点，多余的训练不会让回答变差。"),
    "rec.early_stopping_patience.off": (
        "Off: {rows} rows are too few for a held-out score that means anything.",
        "关闭：{rows} 行数据太少，留出一部分打分也说明不了问题。"),
    "rec.neftune_alpha.off": (
        "Off: adding noise to the inputs learnt fewer facts in our tests (60 vs about 66 of 80); the variants above "
        "already vary your questions.",
        "关闭：我们测试中给输入加噪声反而记住的知识更少（80 个中 60 比约 66 个）；上面的变体已经让问题足够多样。"),
    "rec.dtype.bf16_cpu": (
        "bf16: this CPU ({cpu_class}) computes it natively, about twice as fast as fp32 with the same result for LoRA.",
        "bf16：这颗 CPU（{cpu_class}）原生支持，速度约为 fp32 的两倍，LoRA 训练结果相同。"),
    "rec.dtype.fp32_cpu": (
        "fp32: this CPU ({cpu_class}) has no native bf16 arithmetic, so bf16 would bring little or no speed here.",
        "fp32：这颗 CPU（{cpu_class}）没有原生 bf16 运算，用 bf16 在这里几乎不会更快。"),
    "rec.dtype.bf16_gpu": (
        "bf16: half the memory of fp32 and faster on this GPU, stable for LoRA.",
        "bf16：显存只需 fp32 的一半，在这块 GPU 上更快，LoRA 训练也稳定。"),
    "rec.dtype.fp16_gpu": (
        "fp16: this GPU has no bf16; half the memory of fp32.",
        "fp16：这块 GPU 不支持 bf16；显存只需 fp32 的一半。"),
    "rec.gradient_checkpointing.auto_full": (
        "Auto-fit for {gb} GB: no gradient checkpointing needed, {tokens} tokens per micro-batch fit in memory "
        "({accum} micro-batch(es) per step). Checked again with the memory free when training starts.",
        "按 {gb} GB 显存自动适配：不需要梯度检查点，每个小批次 {tokens} 个 token 放得下（每步 {accum} 个小批次）。训练开始时会按当时的空闲显存再确认一次。"),
    "rec.gradient_checkpointing.auto_ckpt": (
        "Auto-fit for {gb} GB: gradient checkpointing on (recomputes parts of the model to save memory, about 30% "
        "slower), {tokens} tokens per micro-batch, {accum} micro-batch(es) per step. Checked again when training starts.",
        "按 {gb} GB 显存自动适配：开启梯度检查点（重算部分中间结果以节省显存，约慢 30%），每个小批次 {tokens} 个 token，每步 {accum} 个小批次。"
        "训练开始时会再确认一次。"),
    "rec.gradient_checkpointing.on": (
        "On: the model barely fits this GPU's memory; it saves memory at about 30% of the speed.",
        "开启：模型勉强放得进这块 GPU 的显存；它能省显存，代价是约慢 30%。"),
    "rec.gradient_checkpointing.off": (
        "Off: memory is sufficient, and it would cost about 30% of the speed.",
        "关闭：内存充足，开启反而会慢约 30%。"),
    "rec.quantize_base.auto_4bit": (
        "4-bit base weights (QLoRA): the full-precision model does not fit {gb} GB. Far less memory, slightly lower quality.",
        "基础模型用 4 位权重（QLoRA）：全精度模型放不进 {gb} GB 显存。显存占用小得多，质量略有下降。"),
    "rec.quantize_base.auto": (
        "Full-precision base weights; 4-bit (QLoRA) only if the model would not fit the GPU.",
        "基础模型保持全精度；只有放不进 GPU 显存时才用 4 位权重（QLoRA）。"),
    "rec.device.cpu": (
        "Trains on this computer's CPU ({cores} cores, {cpu_class}): about {tokens_per_s} tokens per second with this "
        "model, as measured on this type of CPU. A GPU would be many times faster.",
        "在这台电脑的 CPU 上训练（{cores} 核，{cpu_class}）：按这类 CPU 的实测，这个模型每秒约 {tokens_per_s} 个 token。用 GPU 会快很多倍。"),
    "rec.device.cpu_probed": (
        "Trains on this computer's CPU ({cores} cores, {cpu_class}): about {tokens_per_s} tokens per second with this "
        "model — the speed measured on this type of CPU, scaled by a quick test of this one ({speed}× as fast per core "
        "as the CPU we measured). A GPU would be many times faster.",
        "在这台电脑的 CPU 上训练（{cores} 核，{cpu_class}）：这个模型每秒约 {tokens_per_s} 个 token——按这类 CPU 的实测速度，"
        "再按对这颗 CPU 的快速测试换算（每核是我们实测那颗的 {speed} 倍）。用 GPU 会快很多倍。"),
    "rec.device.cpu_remembered": (
        "Trains on this computer's CPU ({cores} cores, {cpu_class}): about {tokens_per_s} tokens per second with this "
        "model — what your last {runs} run(s) here trained at with this batch size, so the time is this machine's own. "
        "A GPU would be many times faster.",
        "在这台电脑的 CPU 上训练（{cores} 核，{cpu_class}）：这个模型每秒约 {tokens_per_s} 个 token——这是你在这台电脑上最近 {runs} 次"
        "同样批大小的训练实际跑出的速度，所以时间按这台机器自己的速度估算。用 GPU 会快很多倍。"),
    "rec.device.cpu_remembered_other_packs": (
        "Trains on this computer's CPU ({cores} cores, {cpu_class}): about {tokens_per_s} tokens per second with this "
        "model — what your last {runs} run(s) here trained at, converted to this batch size. A GPU would be many times "
        "faster.",
        "在这台电脑的 CPU 上训练（{cores} 核，{cpu_class}）：这个模型每秒约 {tokens_per_s} 个 token——按你在这台电脑上最近 {runs} 次"
        "训练的实际速度，换算到这次的批大小。用 GPU 会快很多倍。"),
    "rec.device.cpu_unmeasured": (
        "Trains on this computer's CPU ({cores} cores, {cpu_class}): this type of CPU was not measured, so the time "
        "assumes about {tokens_per_s} tokens per second and may be far off. A GPU would be many times faster.",
        "在这台电脑的 CPU 上训练（{cores} 核，{cpu_class}）：这类 CPU 没有实测过，时间按每秒约 {tokens_per_s} 个 token 估算，可能偏差很大。"
        "用 GPU 会快很多倍。"),
    "rec.device.cuda": (
        "Trains on {gpus} × {name} ({gb} GB), many times faster than a CPU.",
        "在 {gpus} 块 {name}（{gb} GB）上训练，比 CPU 快很多倍。"),
    "rec.price_per_hour.set": (
        "{price} {currency} per hour: used to show the cost while training.",
        "每小时 {price} {currency}：用于在训练时显示费用。"),
    "rec.price_per_hour.none": (
        "No price given: no cost is shown.",
        "未填写价格：不显示费用。"),
    "warn.few_rows": (
        "Only {rows} usable rows: the model will learn little beyond them; 500–1000 are advised.",
        "只有 {rows} 行可用数据：模型能学到的很有限；建议准备 500–1000 行。"),
    "warn.long_cpu_run": (
        "About {minutes} minutes on this CPU. A GPU or a smaller model is faster; a quick preview (1 pass) takes "
        "about {quick_minutes} minutes but answers fewer harder questions, and its weights alone hold far fewer facts.",
        "在这颗 CPU 上约需 {minutes} 分钟。用 GPU 或更小的模型会更快；快速预览（只训练 1 轮）约 {quick_minutes} 分钟，但较难的问题答对得少一些，"
        "只靠模型权重记住的知识会少得多。"),
    "warn.long_cpu_run.short": (
        "About {minutes} minutes on this CPU; a GPU or a smaller model is faster.",
        "在这颗 CPU 上约需 {minutes} 分钟；用 GPU 或更小的模型会更快。"),
    "warn.quick": (
        "Quick preview: 1 pass, about {minutes} min instead of {full_minutes} min. In our measurement it answered "
        "{quick_facts} of {facts} facts where {measured_epochs} passes answered {full_facts}, {quick_hard} of {hard} harder "
        "questions instead of {full_hard}, and from its weights alone (an exported model) {quick_weights} facts instead "
        "of {full_weights}: use it to check the data and the process, then train in full for real use.",
        "快速预览：只训练 1 轮，约 {minutes} 分钟（完整训练约 {full_minutes} 分钟）。我们实测：{facts} 条知识答对 {quick_facts} 条"
        "（训练 {measured_epochs} 轮时 {full_facts} 条），{hard} 道较难问题答对 {quick_hard} 道（完整训练 {full_hard} 道），"
        "只靠模型权重（导出的模型）答对 {quick_weights} 条（完整训练 {full_weights} 条）：适合先检查数据和流程，正式使用请完整训练。"),
    "warn.budget_contrast": (
        "To fit your {budget_minutes}-minute limit, neighbouring facts are not asked in pairs (saves about "
        "{minutes} min): similar facts get mixed up more often.",
        "为了控制在你设定的 {budget_minutes} 分钟内，不再把相近的知识两两配对训练（约省 {minutes} 分钟）：相似的知识更容易被混淆。"),
    "warn.budget_epochs": (
        "To fit your {budget_minutes}-minute limit, training runs {epochs} pass(es) instead of {full_epochs}: fewer "
        "facts will be recalled.",
        "为了控制在你设定的 {budget_minutes} 分钟内，只训练 {epochs} 轮（完整方案为 {full_epochs} 轮）：记住的知识会变少。"),
    "warn.budget_unmet": (
        "Even the shortest schedule takes about {minutes} minutes here, over your {budget_minutes}-minute limit: use a "
        "GPU, a smaller model or fewer rows.",
        "即使用最短的方案，这里也需要约 {minutes} 分钟，超过你设定的 {budget_minutes} 分钟：请使用 GPU、更小的模型或更少的数据。"),
    "warn.gpu_does_not_fit": (
        "This model does not fit the {gb} GB of this GPU, even with memory-saving settings: choose a smaller model or "
        "a GPU with more memory.",
        "即使开启省显存的设置，这个模型也放不进这块 GPU 的 {gb} GB 显存：请换更小的模型，或显存更大的 GPU。"),
    "warn.cpu_speed_unknown": (
        "This type of CPU ({cores} cores) was not measured: the time estimate is a guess and may be far off.",
        "这类 CPU（{cores} 核）没有实测过：时间只是粗略估计，可能偏差很大。"),
    "estimate.device.cpu": ("CPU, {cores} cores ({cpu_class})", "CPU，{cores} 核（{cpu_class}）"),
    "estimate.device.gpu": ("{name} ({gb} GB)", "{name}（{gb} GB）"),
    "estimate.device.gpus": ("{n}× {name} ({gb} GB)", "{n} 块 {name}（每块 {gb} GB）"),
    "estimate.quick_cost": (
        "Quick preview: 1 pass instead of {full_epochs}, about {minutes} min instead of {full_minutes} min. Recall cost, "
        "in our measurement: about {quick_facts} of {facts} facts instead of {full_facts} with {measured_epochs} passes, "
        "{quick_hard} of {hard} harder questions instead of {full_hard}; from the weights alone (an exported model) "
        "{quick_weights} facts instead of {full_weights}.",
        "快速预览：只训练 1 轮（完整为 {full_epochs} 轮），约 {minutes} 分钟（完整约 {full_minutes} 分钟）。代价（我们实测）："
        "{facts} 条知识约答对 {quick_facts} 条（训练 {measured_epochs} 轮时 {full_facts} 条），{hard} 道较难问题答对 {quick_hard} 道"
        "（完整训练 {full_hard} 道）；只靠模型权重（导出的模型）答对 {quick_weights} 条（完整训练 {full_weights} 条）。"),
    "estimate.quick_same": (
        "The full schedule is already {epochs} pass: a quick preview would be no shorter.",
        "完整方案本来就只训练 {epochs} 轮：快速预览不会更快。"),
    "estimate.full_gain": (
        "Full schedule: {full_epochs} passes, about {full_minutes} min. In our measurement {measured_epochs} passes "
        "answered {full_facts} of {facts} facts and {full_hard} of {hard} harder questions where 1 pass answered "
        "{quick_facts} and {quick_hard}; from the weights alone {full_weights} facts where 1 pass kept {quick_weights}.",
        "完整方案：训练 {full_epochs} 轮，约 {full_minutes} 分钟。我们实测，训练 {measured_epochs} 轮时 {facts} 条知识答对 {full_facts} 条、"
        "{hard} 道较难问题答对 {full_hard} 道，只训练 1 轮时为 {quick_facts} 条和 {quick_hard} 道；只靠模型权重时 {full_weights} 条对 1 轮的 "
        "{quick_weights} 条。"),
    "estimate.stage.load": ("starting and loading the model", "启动并加载模型"),
    "estimate.stage.augment": ("preparing extra rows", "准备补充数据"),
    "estimate.stage.tokenize": ("tokenizing", "分词"),
    "estimate.stage.train": ("training", "训练"),
    "estimate.stage.evaluate": ("checking on held-out rows", "在留出数据上检查"),
    "estimate.stage.save": ("saving checkpoints and the adapter", "保存检查点和适配器"),
    # --- CLI: lorastudio train ---------------------------------------------------------------
    "cli.train.recommended": ("Recommended settings:", "推荐设置："),
    "cli.train.estimate": ("estimate: about {time} on {device}", "预计：在 {device} 上约需 {time}"),
    "cli.train.estimate_changed": ("with your changes ({changes}): about {time} on {device}",
                                   "按你的修改（{changes}）：在 {device} 上约需 {time}"),
    "cli.train.overridden": ("your settings instead of the recommended ones: {changes} (the reasons above are for "
                             "the recommended values)",
                             "以下设置按你的指定，不用推荐值：{changes}（上面的理由说的是推荐值）"),
    "cli.train.estimate_cost": (
        "estimate: about {time} on {device}, cost {cost} {currency}", "预计：在 {device} 上约需 {time}，费用 {cost} {currency}"),
    "cli.train.note": ("note: {text}", "提示：{text}"),
    "cli.train.quick_hint": (
        "option --quick: {text}", "选项 --quick：{text}"),
    "cli.train.full_hint": (
        "without --quick/--time-budget: {text}", "不加 --quick/--time-budget：{text}"),
    # --- service: playground question files (playground.py), in the language of the request ------
    "playground.no_question_column": (
        "{file} has no question column (its columns: {columns}). Name the column of questions 'question' or "
        "'问题', and the optional key facts 'must_contain' or '关键词'.",
        "{file} 没有“问题”列（现有的列：{columns}）。请把问题所在的列命名为“问题”或 question，可选的要点列命名为“关键词”或 must_contain。"),
    "playground.row_unreadable": ("row {row}: the row cannot be read", "第 {row} 行：这一行无法读取"),
    "playground.row_empty_question": ("row {row}: the question is empty", "第 {row} 行：问题为空"),
    "playground.row_too_long": (
        "row {row}: the question has {chars} characters, at most {limit} are allowed",
        "第 {row} 行：问题有 {chars} 个字符，最多允许 {limit} 个"),
    "playground.file_rows": (
        "{file}: {count} row(s) cannot be used ({rows}). Fix or delete them, then upload the file again.",
        "{file} 中有 {count} 行不能使用（{rows}）。请修改或删除这些行后重新上传。"),
    "playground.no_questions": ("{file} contains no questions.", "{file} 里没有问题。"),
    "playground.too_many": (
        "{file} has {count} questions; at most {limit} can be asked at a time. Split the file.",
        "{file} 有 {count} 个问题，一次最多 {limit} 个。请拆分文件。"),
    # --- service: /studio routes (api_studio.py), in the language of the request ------------------
    "studio.question_empty": ("The question is empty: type a question.", "问题是空的：请输入一个问题。"),
    "studio.question_too_long": (
        "The question is {length} characters long; at most {limit} are accepted. Shorten it and ask again.",
        "问题有 {length} 个字符，最多只能 {limit} 个。请缩短后再问。"),
    "studio.prompt_failed": (
        "The model cannot answer this question as it is (too long for the model, or not a question). "
        "Shorten it and ask again.",
        "模型无法回答这个问题（对模型来说太长，或不是一个问题）。请缩短后再问。"),
    "studio.file_unusable": ("{file} cannot be used: {reason}", "文件 {file} 无法使用：{reason}"),
    "studio.no_usable_rows": (
        "{file} has no usable rows: fix the rows listed in its report, then upload it again.",
        "{file} 没有可用的行：请按检查报告修改后重新上传。"),
    "studio.job_not_found": ("There is no training job '{job}' (it may have been deleted).",
                             "找不到训练任务 {job}（可能已被删除）。"),
    "studio.job_unfinished": (
        "Job {job} has not finished yet: cancel it first, then delete it.",
        "任务 {job} 还没有结束：请先取消，再删除。"),
    "studio.download_not_ready": (
        "Job {job} has not succeeded, so there is nothing to download yet.",
        "任务 {job} 没有成功完成，暂时没有可下载的内容。"),
    "studio.download_unknown": (
        "Unknown download '{kind}': use adapter, report, merged or gguf.",
        "没有“{kind}”这种下载：可选 adapter、report、merged 或 gguf。"),
    "studio.export_failed": (
        "Preparing the {kind} download failed: {reason}",
        "准备 {kind} 下载失败。请稍后重试；如果仍然失败，请下载适配器（.zip）。"),
    "studio.hint.too_long": (
        "Shorten this row or split it into several questions; as it is, it is too long to learn from whole.",
        "请缩短这一行，或拆成几个问题；现在这样太长，无法完整学习。"),
    "studio.unavailable.no_gpu": (
        "needs a GPU with {memory} GB of memory; this server has none", "需要显存 {memory} GB 的 GPU，这台服务器没有"),
    "studio.unavailable.offline": (
        "not downloaded, and this server cannot reach the Hugging Face hub", "尚未下载，且这台服务器无法连接 Hugging Face"),
    "studio.unavailable.not_downloaded": (
        "not downloaded yet: the first run downloads {disk} GB", "尚未下载：第一次使用时需下载 {disk} GB"),
    "studio.field.instruction": ("question", "问题"),
    "studio.field.input": ("extra input", "补充输入"),
    "studio.field.response": ("answer", "回答"),
    "studio.field.system": ("system prompt", "系统提示"),
    "studio.mapping.not_table": (
        "{file} is not a table with columns, so there is no column mapping to change.",
        "{file} 不是带列的表格，没有可以修改的列对应关系。"),
    "studio.mapping.unknown_column": ("There is no column '{column}' in this file.", "这个文件里没有“{column}”这一列。"),
    "studio.mapping.unknown_field": ("'{field}' is not something a column can be used as.", "列不能用作“{field}”。"),
    "studio.mapping.need_one": (
        "Choose exactly one column as the {field} ({count} chosen).", "请恰好选择一列作为{field}（现在选了 {count} 列）。"),
    "studio.mapping.twice": ("Each use can go to one column only.", "每种用途只能对应一列。"),
    "studio.model_unavailable": (
        "{model} cannot run on this server: {reasons}. Choose another base model.",
        "{model} 无法在这台服务器上运行：{reasons}。请选择其他基础模型。"),
    # --- end of service: /studio routes
}


def _lang_from(value: str | None) -> str | None:
    if not value:
        return None
    code = value.strip().lower()
    if not code:
        return None
    return "zh" if code.startswith("zh") else "en"


def current_lang(env: Mapping[str, str] | None = None) -> str:
    """The user's language: "zh" or "en" (English fallback)."""
    env = os.environ if env is None else env
    forced = _lang_from(env.get("LORASTUDIO_LANG"))
    if forced:
        return forced
    locale = next((env[k] for k in ("LC_ALL", "LC_MESSAGES", "LANG") if env.get(k)), "")
    # GNU gettext: LANGUAGE wins over the locale variables, except when the locale is C/POSIX.
    is_c_locale = locale.strip().lower() in ("c", "posix") or locale.lower().startswith("c.")
    if env.get("LANGUAGE") and not is_c_locale:
        for item in env["LANGUAGE"].split(":"):
            # Like gettext: the first language we actually have wins ("fr:zh" → zh).
            code = item.strip().lower()
            if code.startswith(LANGS):
                return code[:2]
    return _lang_from(locale) or "en"


def t(key: str, lang: str | None = None, /, **params: object) -> str:
    """The message ``key`` in ``lang`` (default: the user's), formatted with ``params``."""
    lang = lang if lang in LANGS else current_lang()
    pair = MESSAGES.get(key)
    if pair is None:
        return key
    template = pair[1] if lang == "zh" and pair[1] else pair[0]
    # A parameter may itself be a catalog entry ("@expected.table"), rendered in the same language.
    params = {k: t(v[1:], lang) if isinstance(v, str) and v.startswith("@") and v[1:] in MESSAGES else v
              for k, v in params.items()}
    try:
        return template.format(**params)
    except (KeyError, IndexError, ValueError):
        # A missing parameter must not turn a helpful message into a crash.
        return template


def catalog(lang: str, prefixes: tuple[str, ...] = ()) -> dict[str, str]:
    """Every message template in `lang` ("en" | "zh"; a missing Chinese text falls back to English),
    only the keys starting with one of `prefixes` when given. Placeholders stay (str.format names)."""
    index = 1 if lang == "zh" else 0
    return {key: (pair[index] or pair[0]) for key, pair in MESSAGES.items()
            if not prefixes or key.startswith(prefixes)}
