"""Row and dataset checks, the shared demo files, rejected-row round trip, train/val split."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

from lorastudio.data import Conversation, Message, repair_mojibake, split_train_val, validate
from lorastudio.data.checks import estimate_tokens

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DEMO = REPO / "lorastudio" / "assets" / "demo"


FIXTURES = REPO / "tests" / "fixtures"


def _shared(name: str) -> Path:
    """The shared file beside the checkout, else the copy the repository keeps (tests/fixtures, assets)."""
    for path in (SHARED / name, FIXTURES / name, DEMO / name):
        if path.exists():
            return path
    pytest.skip(f"{name} not present (neither in {SHARED} nor in the repository)")


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows) + "\n",
                    encoding="utf-8")
    return path


def _kinds(report) -> list[tuple]:
    return [(i.row, i.kind) for i in report.issues]


# --- the shared demo files ------------------------------------------------------------------------

BROKEN_EXPECTED = {
    (4, "empty_response"), (7, "empty_instruction"), (11, "empty_response"), (14, "duplicate"),
    (17, "mojibake"), (20, "too_long"), (23, "extra_columns"), (26, "empty_response"), (29, "mojibake"),
    (32, "duplicate"), (35, "empty_response"), (40, "malformed_row"),
}


def test_yunzhan_broken_names_exactly_the_twelve_bad_rows() -> None:
    report = validate(_shared("yunzhan_broken.csv"))
    assert set(_kinds(report)) == BROKEN_EXPECTED
    assert all(i.severity == "error" for i in report.issues)
    assert report.rows_total == 40 and report.rows_ok == 28 and report.rows_rejected == 12
    assert {c.row for c in report.conversations} == set(range(1, 41)) - {r for r, _ in BROKEN_EXPECTED}
    by_row = {i.row: i for i in report.issues}
    assert "row 2" in by_row[14].message and "row 9" in by_row[32].message
    assert {i.field for i in report.issues if i.row == 29} == {"instruction", "response"}
    assert "栈钻会员" in by_row[29].hint  # the repaired text is offered
    assert "小时内申请" in by_repair(report, 17)


def by_repair(report, row: int) -> str:
    return next(i.hint for i in report.issues if i.row == row and i.kind == "mojibake")


@pytest.mark.parametrize("name,rows,schema", [
    ("yunzhan_train.jsonl", 150, "instruction_response"),
    ("yunzhan_conversations.jsonl", 30, "conversation"),
])
def test_shared_clean_files(name: str, rows: int, schema: str) -> None:
    report = validate(_shared(name))
    assert report.rows_ok == rows and report.schema == schema
    assert not [i for i in report.issues if i.severity == "error"]


@pytest.mark.parametrize("name,rows", [("yunzhan_train.jsonl", 150), ("yunzhan_conversations.jsonl", 30)])
def test_bundled_demo_copies_validate(name: str, rows: int) -> None:
    report = validate(DEMO / name)
    assert report.rows_ok == rows and not report.issues
    turns = sum(len([m for m in c.messages if m.role == "assistant"]) for c in report.conversations)
    assert turns == (150 if rows == 150 else 66)
    systems = sum(1 for c in report.conversations if c.system)
    assert systems == (0 if rows == 150 else 22)


def test_to_dict_has_exactly_the_product_keys() -> None:
    report = validate(DEMO / "yunzhan_conversations.jsonl")
    d = report.to_dict()
    assert list(d) == ["file", "format", "schema", "encoding", "rows_total", "rows_ok", "rows_rejected",
                       "issues", "dataset_issues"]
    assert [set(x) for x in d["dataset_issues"]] == [{"severity", "kind", "message", "hint"}] * 2
    assert [x["kind"] for x in d["dataset_issues"]] == ["few_rows", "one_wording"]
    json.dumps(d)  # serialisable


# --- row checks -----------------------------------------------------------------------------------

def test_whitespace_and_invisible_characters_count_as_empty(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [
        {"instruction": "q1", "response": "\u3000\u3000\t "},
        {"instruction": "\u200b ", "response": "answer"},
        {"instruction": "q3", "response": None},
        {"instruction": "q4"},
        {"instruction": "q5", "response": "  kept as is \n"},
    ])
    report = validate(path)
    assert _kinds(report) == [(1, "empty_response"), (2, "empty_instruction"), (3, "empty_response"),
                              (4, "empty_response")]
    assert report.conversations[0].messages[1].content == "  kept as is \n"


def test_duplicates_name_first_row_and_conflicting_answers_warn(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [
        {"question": "退款多久到账？", "answer": "3个工作日。"},
        {"question": "热线？", "answer": "400-820-7788"},
        {"question": " 退款多久到账？ ", "answer": "3个工作日。"},  # same after whitespace normalisation
        {"question": "退款多久到账？", "answer": "5个工作日。"},
    ])
    report = validate(path)
    assert _kinds(report) == [(3, "duplicate"), (4, "duplicate_question")]
    assert report.issues[0].severity == "error" and "row 1" in report.issues[0].message
    assert report.issues[1].severity == "warning"
    assert [c.row for c in report.conversations] == [1, 2, 4]


def test_too_long_estimate_is_sane_for_cjk_and_latin(tmp_path: Path) -> None:
    assert estimate_tokens("云" * 1000) == 800
    assert 250 <= estimate_tokens("word " * 200) <= 350
    assert estimate_tokens("2024") == 4
    path = _jsonl(tmp_path / "d.jsonl", [
        {"instruction": "q", "response": "栈" * 3000},  # ~2400 tokens: too long for 2048
        {"instruction": "q2", "response": "word " * 1200},  # 6000 Latin characters, ~1800 tokens: fine
    ])
    report = validate(path)
    assert _kinds(report) == [(1, "too_long")]
    assert validate(path, max_length=4096).rows_ok == 2


class CharTokenizer:
    """A stand-in tokenizer: one token per character."""

    chat_template = None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]


def test_too_long_counts_tokens_with_a_tokenizer(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [{"instruction": "q", "response": "a" * 1000},
                                         {"instruction": "q2", "response": "b" * 100}])
    assert validate(path, max_length=1000).rows_ok == 2  # estimate: ~300 tokens
    report = validate(path, max_length=1000, tokenizer=CharTokenizer())
    assert _kinds(report) == [(1, "too_long")] and "1011 tokens" in report.issues[0].message


def test_mojibake_detection_and_no_false_alarms() -> None:
    original = "破损快赔需在签收后72小时内申请，并上传至少3张照片。"
    gbk_garble = original.encode("utf-8").decode("gbk", errors="replace")
    latin_garble = original.encode("utf-8").decode("cp1252", errors="replace")
    for garbled, codec in ((gbk_garble, "GBK"), (latin_garble, "Windows-1252/Latin-1")):
        found = repair_mojibake(garbled)
        assert found and found[0] == codec
        assert "内申请，并上传至" in found[1]  # lossy where the garble lost bytes, readable elsewhere
    assert repair_mojibake("Ã©tÃ© Ã\xa0 Paris") == ("Windows-1252/Latin-1", "été à Paris")
    clean = ["你好，世界！", "Café naïve façade", "Größe: 42 cm", "Hello 😀 世界", "“quoted” – dash…", "¥299 ＋ 运费",
             "ÄÖÜ äöü ß", "Ω≈ç√∫", "日本語のテキスト", "한국어 텍스트", original]
    assert [t for t in clean if repair_mojibake(t)] == []


def test_structural_problems_in_conversations(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}]},  # 1: no answer
        {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]},  # 2
        {"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q2"},
                      {"role": "assistant", "content": "a"}]},  # 3
        {"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "x"}]},  # 4
        {"messages": "not a list"},  # 5
        '{"messages": [ broken',  # 6
        '["a", "b"]',  # 7
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 42}]},  # 8: warning
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ["x"]}]},  # 9
        {"messages": [{"role": "user", "content": "q9"}, {"role": "system", "content": "late"},
                      {"role": "assistant", "content": "a"}]},  # 10
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "parts "}, {"type": "text", "text": "ok"}]},
                      {"role": "assistant", "content": "fine answer"}]},  # 11: fine
        {"conversation": [{"input": "q"}, {"input": "q2", "output": "a2"}]},  # 12: middle answer missing
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": ""}]},  # 13
    ])
    report = validate(path)
    assert _kinds(report) == [
        (1, "missing_assistant"), (2, "wrong_turn_order"), (3, "wrong_turn_order"), (4, "unsupported_role"),
        (5, "malformed_row"), (6, "malformed_row"), (7, "malformed_row"), (8, "non_text"), (9, "non_text"),
        (10, "wrong_turn_order"), (12, "empty_response"), (13, "empty_response"),
    ]
    assert [c.row for c in report.conversations] == [8, 11]
    assert report.conversations[0].messages[1].content == "42"
    assert report.conversations[1].messages[0].content == "parts ok"
    assert {i.row: i.severity for i in report.issues}[8] == "warning"
    fields = {i.row: i.field for i in report.issues}
    assert fields[12] == "conversation[0].output" and fields[13] == "conversations[1].value"
    mixed = [d for d in report.dataset_issues if d.kind == "mixed_schemas"]
    assert mixed and "openai_messages" in mixed[0].message


def test_csv_row_problems(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text(
        "question,answer\n"
        "q1,a1\n"
        "q2,a2,extra\n"
        "q3\n"
        'q4,"an ""escaped"" quote, and a comma"\n'
        'q5,"closed"garbage\n'
        "q6,a6,,\n"  # trailing empty cells hold no data: fine
        "\n"
        'q8,"multi\nline answer"\n'
        'q9,"never closed\n'
        "q10,a10\n",
        encoding="utf-8",
    )
    report = validate(path)
    assert _kinds(report) == [(2, "extra_columns"), (3, "malformed_row"), (5, "malformed_row"), (9, "malformed_row")]
    assert [i.code for i in report.issues[1:]] == [
        "malformed_row.missing_fields", "malformed_row.quote", "malformed_row.quote"]
    assert [c.row for c in report.conversations] == [1, 4, 6, 8]
    assert report.conversations[1].messages[1].content == 'an "escaped" quote, and a comma'
    assert report.conversations[3].messages[1].content == "multi\nline answer"


# --- dataset checks -------------------------------------------------------------------------------

def test_dataset_advice(tmp_path: Path) -> None:
    rows = [{"instruction": f"问题{i}", "response": "好的。"} for i in range(120)]
    rows += [rows[0]] * 20
    report = validate(_jsonl(tmp_path / "d.jsonl", rows))
    kinds = {d.kind for d in report.dataset_issues}
    assert {"short_answers", "heavy_duplication"} <= kinds and "few_rows" not in kinds

    few = validate(_jsonl(tmp_path / "few.jsonl", [{"instruction": "q", "response": "a complete answer"}]))
    assert [d.kind for d in few.dataset_issues] == ["few_rows"] and "500–1000" in few.dataset_issues[0].hint

    none = validate(_jsonl(tmp_path / "none.jsonl", [{"instruction": "q", "response": ""}]))
    assert [d.kind for d in none.dataset_issues] == ["no_usable_rows"] and none.dataset_issues[0].severity == "error"


# --- rejected rows round trip ---------------------------------------------------------------------

def test_write_rejected_csv_fix_and_revalidate(tmp_path: Path) -> None:
    src = tmp_path / "d.csv"
    src.write_text("instruction,response\nq1,a complete answer\nq2,\n,answer for nobody\n"
                   "q4,热线400-820-7788,企业按2\n", encoding="utf-8")
    report = validate(src)
    assert _kinds(report) == [(2, "empty_response"), (3, "empty_instruction"), (4, "extra_columns")]
    out = tmp_path / "rejected.csv"
    assert report.write_rejected(out) == 3
    with out.open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["lorastudio_row"] for r in rows] == ["2", "3", "4"]
    assert "empty_response" in rows[0]["lorastudio_reasons"]
    assert rows[2]["response"] == "热线400-820-7788,企业按2"  # the split value, joined back
    assert rows[2]["lorastudio_raw"] == "q4,热线400-820-7788,企业按2"

    # The user fixes the rows in the same file and uploads it again.
    rows[0]["response"] = "fixed answer"
    rows[1]["instruction"] = "fixed question"
    with out.open("w", encoding="utf-8-sig", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    again = validate(out)
    assert again.rows_ok == 3 and not again.issues
    assert not [d for d in again.dataset_issues if d.kind == "ignored_columns"]


def test_write_rejected_jsonl_round_trip(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "d.jsonl", [
        {"instruction": "q1", "response": ""}, '{"broken', {"instruction": "q3", "response": "ok answer"}])
    report = validate(src)
    out = tmp_path / "rejected.jsonl"
    assert report.write_rejected(out) == 2
    lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert lines[0]["instruction"] == "q1" and lines[0]["lorastudio_row"] == 1
    assert lines[0]["lorastudio_reasons"][0]["kind"] == "empty_response"
    assert lines[1]["lorastudio_raw"] == '{"broken'
    lines[0]["response"] = "now answered"
    fixed = _jsonl(tmp_path / "fixed.jsonl", [lines[0]])
    assert validate(fixed).rows_ok == 1


def test_write_rejected_refuses_unknown_suffix(tmp_path: Path) -> None:
    from lorastudio.data import DataError

    report = validate(_jsonl(tmp_path / "d.jsonl", [{"instruction": "q", "response": ""}]))
    with pytest.raises(DataError):
        report.write_rejected(tmp_path / "out.docx")


# --- split ----------------------------------------------------------------------------------------

def _convs(questions: list[str]) -> list[Conversation]:
    return [Conversation([Message("user", q), Message("assistant", f"a{i}")], row=i + 1)
            for i, q in enumerate(questions)]


def test_split_small_sets_keep_everything() -> None:
    convs = _convs([f"q{i}" for i in range(49)])
    train, val = split_train_val(convs)
    assert train == convs and val == []


def test_split_is_deterministic_sized_and_keeps_duplicates_together() -> None:
    questions = [f"q{i % 150}" for i in range(300)]  # every question twice
    convs = _convs(questions)
    train, val = split_train_val(convs, val_fraction=0.1, seed=7)
    assert (train, val) == split_train_val(convs, val_fraction=0.1, seed=7)
    assert len(val) == 30 and len(train) == 270
    assert {c.messages[0].content for c in train}.isdisjoint({c.messages[0].content for c in val})
    assert [c.row for c in train] == sorted(c.row for c in train)  # original order kept
    other = split_train_val(convs, val_fraction=0.1, seed=8)[1]
    assert {c.row for c in other} != {c.row for c in val}
    with pytest.raises(ValueError):
        split_train_val(convs, val_fraction=1.0)


def test_split_holds_out_rewordings_of_facts_that_stay_in_training() -> None:
    facts = [f"订单YZ-{i:04d}的退款在{i % 7 + 1}个工作日内原路退回，运费由{['买家', '卖家', '平台'][i % 3]}承担，"
             f"客服分机{6000 + i}。" for i in range(40)]
    rows = []
    for i, fact in enumerate(facts):
        asked = 3 if i < 20 else 1  # half the facts asked three ways, half once
        rows += [(f"第{k}种问法：订单YZ-{i:04d}的退款多久到？", fact) for k in range(asked)]
    convs = [Conversation([Message("user", q), Message("assistant", a)], row=n + 1) for n, (q, a) in enumerate(rows)]
    train, val = split_train_val(convs, val_fraction=0.1, seed=3)
    assert len(val) == 8 and len(train) == len(convs) - 8
    trained_answers = {c.messages[-1].content for c in train}
    assert all(c.messages[-1].content in trained_answers for c in val)  # each held-out fact is still taught
    assert all(c.row <= 60 for c in val)  # only facts asked several ways are held out
    assert split_train_val(convs, val_fraction=0.1, seed=3) == (train, val)


def test_advice_to_add_wordings_only_when_facts_are_asked_once(tmp_path: Path) -> None:
    once = [{"instruction": f"产品{i}号的保修期是多久？", "response": f"产品{i}号保修{i + 1}个月，凭发票在{i % 9 + 1}号窗口办理。"}
            for i in range(40)]
    report = validate(_jsonl(tmp_path / "once.jsonl", once))
    advice = [d for d in report.dataset_issues if d.code == "one_wording"]
    assert advice and advice[0].params["pct"] >= 80 and "wordings" in advice[0].hint
    asked_three_ways = [{"instruction": f"第{k}种问法：产品{i}号保修多久？", "response": row["response"]}
                        for i, row in enumerate(once) for k in range(3)]
    report = validate(_jsonl(tmp_path / "three.jsonl", asked_three_ways))
    assert not [d for d in report.dataset_issues if d.code == "one_wording"]


def test_split_without_rewordings_falls_back_to_random_rows() -> None:
    convs = [Conversation([Message("user", f"问题{i}"), Message("assistant", f"第{i}条规定：编号{i * 7919 % 10007}。")],
                          row=i + 1) for i in range(100)]
    train, val = split_train_val(convs, val_fraction=0.1, seed=0)
    assert len(val) == 10 and len(train) == 90


# --- performance ----------------------------------------------------------------------------------

def test_ten_thousand_rows_validate_in_linear_time(tmp_path: Path) -> None:
    """10,000 templated rows all validate, and the time grows about linearly with the rows: a ratio
    measured in one run (4x the rows), each size its best of two, so a busy machine slows both sizes
    alike. Linear is ~4x, a quadratic pass (e.g. all pairs of answers in the fact grouping) would be ~16x."""
    def rows(n: int) -> list[dict]:
        return [{"instruction": f"第{i}个问题：订单YZ-{i:06d}怎么查？", "response": f"登录云栈后在“我的订单”输入YZ-{i:06d}查看，"
                 f"物流信息每2小时更新一次。Item {i} ships in 24h."} for i in range(n)]

    def timed(n: int) -> float:
        path = _jsonl(tmp_path / f"big{n}.jsonl", rows(n))
        start = time.perf_counter()
        report = validate(path)
        elapsed = time.perf_counter() - start
        assert report.rows_ok == n
        return elapsed

    timed(500)  # imports and caches
    small = min(timed(2_500) for _ in range(2))
    large = min(timed(10_000) for _ in range(2))
    assert large / small < 9.0, f"2,500 rows {small:.2f}s, 10,000 rows {large:.2f}s: worse than linear"


@pytest.mark.slow
def test_real_default_tokenizer_counts_row_20() -> None:
    """With the default model's tokenizer the fact-sheet row is counted exactly (~2.8k tokens)."""
    import os

    home = Path(os.environ.get("LORASTUDIO_HOME", Path.home() / ".cache" / "lorastudio"))
    model_dir = home / "models" / "default"
    if not (model_dir / "tokenizer.json").exists():
        pytest.skip("the default model has not been materialised")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    report = validate(_shared("yunzhan_broken.csv"), tokenizer=tokenizer)
    too_long = [i for i in report.issues if i.kind == "too_long"]
    assert [i.row for i in too_long] == [20] and too_long[0].code == "too_long.tokens"
    assert set(_kinds(report)) == BROKEN_EXPECTED


def test_write_rejected_from_txt_blocks_keeps_fields(tmp_path: Path) -> None:
    src = tmp_path / "faq.txt"
    src.write_text("问：热线是多少？\n答：\n问：退款多久？\n答：3个工作日。\n", encoding="utf-8")
    report = validate(src)
    assert _kinds(report) == [(1, "empty_response")]
    out = tmp_path / "rejected.csv"
    report.write_rejected(out)
    with out.open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["instruction"] == "热线是多少？" and rows[0]["lorastudio_raw"] == "问：热线是多少？\n答："
    rows[0]["response"] = "400-820-7788"
    with out.open("w", encoding="utf-8-sig", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert validate(out).rows_ok == 1


def test_mixed_layouts_never_produce_silent_empty_answers(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [
        {"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]},
        {"instruction": "q2"},  # the file has no answer column at all
    ])
    report = validate(path)
    assert _kinds(report) == [(2, "empty_response")]
    assert [c.row for c in report.conversations] == [1]
