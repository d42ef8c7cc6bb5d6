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
