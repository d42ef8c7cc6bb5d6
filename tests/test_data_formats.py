"""Every format × encoding × schema, with files the tests write themselves."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from lorastudio.data import Conversation, DataError, validate

# Contents chosen to survive every encoding (GBK has no emoji) while exercising what must not be
# lost: numbers, inner newlines and inner/outer whitespace in answers.
PAIRS = [
    ("退款多久到账？", "原路退回3个工作日内到账；云栈钱包2小时内。"),
    ("What is the hotline?", "Call 400-820-7788\n  (9:00–22:00), ext. 6021  "),
    ("栈台Max多少钱？", "299元/月，年付2990元。"),
]
SYSTEM = "你是云栈科技的客服助手。"

ENCODINGS = {
    "utf-8": lambda s: s.encode("utf-8"),
    "utf-8-sig": lambda s: s.encode("utf-8-sig"),
    "gbk": lambda s: s.encode("gbk"),
    "utf-16-bom": lambda s: s.encode("utf-16"),
    "utf-16-le": lambda s: s.encode("utf-16-le"),
    "utf-16-be": lambda s: s.encode("utf-16-be"),
}
EXPECTED_ENCODING = {
    "utf-8": "utf-8", "utf-8-sig": "utf-8-sig", "gbk": "gbk",
    "utf-16-bom": "utf-16-le", "utf-16-le": "utf-16-le", "utf-16-be": "utf-16-be",
}


def single_turn_messages() -> list[list[dict]]:
    return [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in PAIRS]


# --- keyed schemas (JSON / JSONL) -------------------------------------------------------------

def rec_instruction_response(q: str, a: str, i: int) -> dict:
    return {"instruction": q, "response": a}


def rec_alpaca(q: str, a: str, i: int) -> dict:
    return {"instruction": q, "input": "" if i % 2 else "订单号YZ-1", "output": a}


def rec_conversation(q: str, a: str, i: int) -> dict:
    first = {"system": SYSTEM, "input": q, "output": a} if i == 0 else {"input": q, "output": a}
    return {"conversation": [first, {"input": "还有呢？", "output": "没有了。"}]}


def rec_sharegpt(q: str, a: str, i: int) -> dict:
    return {"conversations": [{"from": "system", "value": SYSTEM}, {"from": "human", "value": q},
                              {"from": "gpt", "value": a}]}


def rec_openai(q: str, a: str, i: int) -> dict:
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q},
                         {"role": "assistant", "content": a}]}


def expected_messages(schema: str) -> list[list[dict]]:
    out = []
    for i, (q, a) in enumerate(PAIRS):
        if schema == "instruction_response":
            out.append([{"role": "user", "content": q}, {"role": "assistant", "content": a}])
        elif schema == "alpaca":
            question = q if i % 2 else f"{q}\n\n订单号YZ-1"
            out.append([{"role": "user", "content": question}, {"role": "assistant", "content": a}])
        elif schema == "conversation":
            msgs = [{"role": "system", "content": SYSTEM}] if i == 0 else []
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a},
                     {"role": "user", "content": "还有呢？"}, {"role": "assistant", "content": "没有了。"}]
            out.append(msgs)
        else:
            out.append([{"role": "system", "content": SYSTEM}, {"role": "user", "content": q},
                        {"role": "assistant", "content": a}])
    return out


KEYED = {
    "instruction_response": rec_instruction_response,
    "alpaca": rec_alpaca,
    "conversation": rec_conversation,
    "sharegpt": rec_sharegpt,
    "openai_messages": rec_openai,
}


def _records(schema: str) -> list[dict]:
    return [KEYED[schema](q, a, i) for i, (q, a) in enumerate(PAIRS)]


def _as_messages(convs: list[Conversation]) -> list[list[dict]]:
    return [c.to_dict()["messages"] for c in convs]


@pytest.mark.parametrize("encoding", list(ENCODINGS))
@pytest.mark.parametrize("schema", list(KEYED))
@pytest.mark.parametrize("layout", ["jsonl", "json-array", "json-object", "jsonl-as-txt"])
def test_keyed_formats(tmp_path: Path, layout: str, schema: str, encoding: str) -> None:
    records = _records(schema)
    if layout == "jsonl":
        name, text, fmt = "data.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", "jsonl"
    elif layout == "jsonl-as-txt":  # detection by content, not by suffix
        name, text, fmt = "data.txt", "\n".join(json.dumps(r, ensure_ascii=False) for r in records), "jsonl"
    elif layout == "json-array":
        name, text, fmt = "data.json", json.dumps(records, ensure_ascii=False, indent=2), "json"
    else:
        name, text, fmt = "data.json", json.dumps({"version": 1, "data": records}, ensure_ascii=False), "json"
    path = tmp_path / name
    path.write_bytes(ENCODINGS[encoding](text))
    report = validate(path)
    assert report.format == fmt
    assert report.schema == schema
    assert report.encoding == EXPECTED_ENCODING[encoding]
    assert [i.to_dict() for i in report.issues] == []
    assert report.rows_total == report.rows_ok == len(PAIRS)
    assert _as_messages(report.conversations) == expected_messages(schema)
    # JSONL: line numbers; JSON: element numbers. Both are 1..3 here.
    assert [c.row for c in report.conversations] == [1, 2, 3]


# --- tables (CSV / TSV / XLSX) ------------------------------------------------------------------

def _table_text(header: list[str], rows: list[list[str]], delim: str) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delim, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


TABLE_SCHEMAS = {
    "instruction_response": (["instruction", "response"], lambda q, a, i: [q, a]),
    "alpaca": (["instruction", "input", "output"], lambda q, a, i: [q, "" if i % 2 else "订单号YZ-1", a]),
}


@pytest.mark.parametrize("encoding", list(ENCODINGS))
@pytest.mark.parametrize("schema", list(TABLE_SCHEMAS))
@pytest.mark.parametrize("fmt", ["csv", "tsv", "csv-semicolon"])
def test_delimited_formats(tmp_path: Path, fmt: str, schema: str, encoding: str) -> None:
    header, make = TABLE_SCHEMAS[schema]
    delim = {"csv": ",", "tsv": "\t", "csv-semicolon": ";"}[fmt]
    rows = [make(q, a, i) for i, (q, a) in enumerate(PAIRS)]
    path = tmp_path / ("data.tsv" if fmt == "tsv" else "data.csv")
    path.write_bytes(ENCODINGS[encoding](_table_text(header, rows, delim)))
    report = validate(path)
    assert report.format == ("tsv" if fmt == "tsv" else "csv")
    assert report.schema == schema
    assert report.encoding == EXPECTED_ENCODING[encoding]
    assert [i.to_dict() for i in report.issues] == []
    assert _as_messages(report.conversations) == expected_messages(schema)
    assert [c.row for c in report.conversations] == [1, 2, 3]


@pytest.mark.parametrize("encoding", list(ENCODINGS))
@pytest.mark.parametrize("layout", ["tab-pairs", "qa-zh", "qa-en"])
def test_txt_formats(tmp_path: Path, layout: str, encoding: str) -> None:
    # TXT cannot carry tabs/newlines inside a tab pair or outer spaces after a marker: plain pairs.
    pairs = [(q, a.strip().replace("\n", " ")) for q, a in PAIRS]
    if layout == "tab-pairs":
        text = "".join(f"{q}\t{a}\n" for q, a in pairs)
        rows = [1, 2, 3]
    elif layout == "qa-zh":
        text = "\n".join(f"问：{q}\n答：{a}\n" for q, a in pairs)
        rows = [1, 4, 7]
    else:
        text = "\n".join(f"Q: {q}\nA: {a}\n" for q, a in pairs)
        rows = [1, 4, 7]
    path = tmp_path / "faq.txt"
    path.write_bytes(ENCODINGS[encoding](text))
    report = validate(path)
    assert report.format == "txt"
    assert report.encoding == EXPECTED_ENCODING[encoding]
    assert [i.to_dict() for i in report.issues] == []
    assert [[m.content for m in c.messages] for c in report.conversations] == [[q, a] for q, a in pairs]
    assert [c.row for c in report.conversations] == rows


def test_qa_blocks_keep_multiline_answers_and_report_orphans(tmp_path: Path) -> None:
    text = "云栈 FAQ\n\n问：工单多久升级？\n答：48小时。\n\n升级到二线护航组。\n\n问：没有回答的问题\n问：热线？\n答：400-820-7788\n"
    path = tmp_path / "faq.txt"
    path.write_text(text, encoding="utf-8")
    report = validate(path)
    assert [(c.row, c.messages[1].content) for c in report.conversations] == [
        (3, "48小时。\n\n升级到二线护航组。"), (9, "400-820-7788")]
    kinds = {(i.row, i.kind) for i in report.issues}
    assert kinds == {(1, "malformed_row"), (8, "empty_response")}


def test_xlsx_first_and_named_sheet_numbers_are_text(tmp_path: Path) -> None:
    openpyxl = pytest.importorskip("openpyxl")
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "说明"
    ws.append(["这张表是说明，不是数据"])
    ws2 = wb.create_sheet("问答")
    ws2.append(["问题", "答案"])
    ws2.append(["栈台Max多少钱？", 299])
    ws2.append(["折扣是多少？", 0.85])
    ws2.append([None, None])  # an empty row is skipped, numbering keeps the sheet's rows
    ws2.append(["热线？", "400-820-7788"])
    path = tmp_path / "data.xlsx"
    wb.save(path)

    with pytest.raises(DataError) as err:
        validate(path)  # the first sheet holds a note, not data: the refusal points at --sheet
    assert err.value.kind == "empty_file" and "'问答'" in str(err.value) and "--sheet" in str(err.value)

    report = validate(path, sheet="问答")
    assert report.format == "xlsx" and report.encoding is None
    assert [i.to_dict() for i in report.issues] == []
    assert [(c.row, c.messages[1].content) for c in report.conversations] == [
        (1, "299"), (2, "0.85"), (4, "400-820-7788")]

    with pytest.raises(DataError) as err:
        validate(path, sheet="nope")
    assert err.value.kind == "unknown_sheet" and "问答" in str(err.value)


def test_xlsx_schema_alpaca_and_extra_cells(tmp_path: Path) -> None:
    openpyxl = pytest.importorskip("openpyxl")
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["instruction", "input", "output"])
    ws.append(["查订单", "YZ-1", "已发货"])
    ws.append(["查订单", None, "请提供订单号", "stray note"])
    path = tmp_path / "alpaca.xlsx"
    wb.save(path)
    report = validate(path)
    assert report.schema == "alpaca"
    assert report.conversations[0].messages[0].content == "查订单\n\nYZ-1"
    assert [(i.row, i.kind) for i in report.issues] == [(2, "extra_columns")]


ALIAS_HEADERS = [
    ("instruction", "response"), ("question", "answer"), ("prompt", "completion"), ("input", "output"),
    ("query", "response"), ("问题", "答案"), ("指令", "回复"), ("问", "答"), ("输入", "输出"),
    ("Question", "Answer"), ("INSTRUCTION", "Output"),
]


@pytest.mark.parametrize("header", ALIAS_HEADERS, ids=lambda h: "-".join(h))
def test_column_aliases(tmp_path: Path, header: tuple[str, str]) -> None:
    path = tmp_path / "data.csv"
    path.write_text(_table_text(list(header), [[q, a] for q, a in PAIRS], ","), encoding="utf-8")
    report = validate(path)
    assert report.rows_ok == 3 and not report.issues
    assert not [d for d in report.dataset_issues if d.kind == "column_mapped"]


@pytest.mark.parametrize("header,mapped", [
    (("instructlon", "respons"), {"instructlon": "instruction", "respons": "response"}),
    (("Questlon", "Answer"), {"Questlon": "instruction"}),
    (("question", "answr"), {"answr": "response"}),
    (("0utput", "instruction"), {"0utput": "response"}),
])
def test_fuzzy_columns_are_mapped_and_reported(tmp_path: Path, header: tuple[str, str], mapped: dict) -> None:
    path = tmp_path / "data.csv"
    path.write_text(_table_text(list(header), [["问？", "答。"]] * 1, ","), encoding="utf-8")
    report = validate(path)
    assert report.rows_ok == 1
    assert {m["from"]: m["to"] for m in report.mappings} == mapped
    warned = [d for d in report.dataset_issues if d.kind == "column_mapped"]
    assert len(warned) == len(mapped) and all(d.severity == "warning" for d in warned)


def test_fuzzy_keys_in_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"instrucion": "问？", "respnse": "答。"}, ensure_ascii=False), encoding="utf-8")
    report = validate(path)
    assert report.rows_ok == 1
    assert {m["to"] for m in report.mappings} == {"instruction", "response"}


@pytest.mark.parametrize("content,expect", [
    ("foo,bar\n1,2\n", "found: 'foo', 'bar'"),
    ("question,rspnse\n问？,答。\n", "'response' for 'rspnse'"),
])
def test_unrecognised_columns_refuse_with_hint(tmp_path: Path, content: str, expect: str) -> None:
    path = tmp_path / "data.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as err:
        validate(path)
    assert err.value.kind == "unknown_columns"
    assert expect in str(err.value) and "response" in str(err.value)


def test_ambiguous_near_miss_is_not_guessed(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"conversatios": [{"from": "human", "value": "hi"}]}), encoding="utf-8")
    with pytest.raises(DataError) as err:
        validate(path)
    assert err.value.kind == "unknown_columns"
    assert "'conversation' or 'conversations' for 'conversatios'" in str(err.value)


def test_two_question_columns_are_ambiguous(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("question,prompt,answer\na,b,c\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        validate(path)
    assert err.value.kind == "ambiguous_columns" and "'question', 'prompt'" in str(err.value)


def test_extra_unknown_columns_are_reported_not_silently_dropped(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("id,category,question,answer\n1,售后,问？,答案很完整。\n", encoding="utf-8")
    report = validate(path)
    assert report.rows_ok == 1
    ignored = [d for d in report.dataset_issues if d.kind == "ignored_columns"]
    assert ignored and "'id', 'category'" in ignored[0].message


@pytest.mark.parametrize("data,kind", [
    (b"", "empty_file"),
    (b"   \n\n\t", "empty_file"),
    (b"\xef\xbb\xbf", "empty_file"),
    (bytes(range(256)) * 8, "binary"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "binary"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 64, "unreadable"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "unreadable"),
    (b"PK\x03\x04garbage", "unreadable"),
    (b"just some prose without any structure\nsecond line\n", "unknown_format"),
    (b"instruction,response\n", "empty_file"),
    (b'[{"instruction": "a", "response": ', "malformed_json"),
])
def test_unusable_files_raise_data_error(tmp_path: Path, data: bytes, kind: str) -> None:
    path = tmp_path / ("data.xlsx" if data.startswith(b"PK") else "data.txt")
    path.write_bytes(data)
    with pytest.raises(DataError) as err:
        validate(path)
    assert err.value.kind == kind
    assert "\n" not in str(err.value)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        validate(tmp_path / "nope.csv")
    assert err.value.kind == "not_found"
    with pytest.raises(DataError) as err:
        validate(tmp_path)
    assert err.value.kind == "unreadable"


def test_gb18030_only_characters(tmp_path: Path) -> None:
    # '𠀀' (U+20000) exists in GB18030 but not in GBK.
    path = tmp_path / "data.csv"
    path.write_bytes("question,answer\n生僻字？,𠀀字的读音。\n".encode("gb18030"))
    report = validate(path)
    assert report.encoding == "gb18030"
    assert report.conversations[0].messages[1].content == "𠀀字的读音。"


def test_pretty_printed_objects_one_after_another(tmp_path: Path) -> None:
    records = [{"instruction": q, "response": a} for q, a in PAIRS]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False, indent=2) for r in records), encoding="utf-8")
    report = validate(path)
    assert report.rows_ok == 3 and not report.issues


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_bomless_utf16_with_almost_no_ascii(tmp_path: Path, encoding: str) -> None:
    # Pure Chinese Q/A blocks: the only NUL bytes come from the newlines.
    text = "问：退款多久到账\n答：三个工作日内原路退回\n问：热线号码是什么\n答：请拨打客服热线\n"
    path = tmp_path / "faq.txt"
    path.write_bytes(text.encode(encoding))
    report = validate(path)
    assert report.encoding == encoding
    assert [c.messages[1].content for c in report.conversations] == ["三个工作日内原路退回", "请拨打客服热线"]


def test_headerless_csv_is_refused_with_a_header_hint(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("退款多久到账？,3个工作日。\n热线？,400-820-7788\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        validate(path)
    assert err.value.kind == "unknown_columns" and "header row" in str(err.value)


def test_data_layer_imports_no_torch_or_web() -> None:
    import subprocess
    import sys

    code = ("import sys, lorastudio.data, lorastudio.commands.validate; "
            "bad = [m for m in ('torch', 'fastapi', 'transformers', 'starlette') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_jsonl_rows_may_spell_fields_differently(tmp_path: Path) -> None:
    rows = [{"instruction": "q1", "response": "a1"}, {"question": "q2", "answer": "a2"},
            {"input": "q3", "output": "a3"}, {"instruction": "q4", "input": "ctx", "output": "a4"}]
    path = tmp_path / "merged.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    report = validate(path)
    assert [i.to_dict() for i in report.issues] == []
    assert [[m.content for m in c.messages] for c in report.conversations] == [
        ["q1", "a1"], ["q2", "a2"], ["q3", "a3"], ["q4\n\nctx", "a4"]]
    # …but two spellings inside one row are ambiguous.
    path.write_text(json.dumps({"question": "q", "prompt": "p", "answer": "a"}), encoding="utf-8")
    with pytest.raises(DataError) as err:
        validate(path)
    assert err.value.kind == "ambiguous_columns"


def test_title_lines_above_the_header_are_skipped_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("云栈客服FAQ 2024版\n\n问题,答案\n热线？,400-820-7788\n", encoding="utf-8")
    report = validate(path)
    assert [(c.row, c.messages[1].content) for c in report.conversations] == [(1, "400-820-7788")]
    skipped = [d for d in report.dataset_issues if d.kind == "skipped_above_header"]
    assert skipped and "云栈客服FAQ 2024版" in skipped[0].message

    openpyxl = pytest.importorskip("openpyxl")
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["云栈客服FAQ"])
    ws.append(["question", "answer"])
    ws.append(["热线？", "400-820-7788"])
    xlsx = tmp_path / "data.xlsx"
    wb.save(xlsx)
    report = validate(xlsx)
    assert [(c.row, c.messages[1].content) for c in report.conversations] == [(1, "400-820-7788")]
    assert [d.kind for d in report.dataset_issues if d.kind == "skipped_above_header"]
