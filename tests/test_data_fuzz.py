"""Fuzz: whatever bytes or rows come in, validate() returns a report or raises DataError — nothing else."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorastudio.data import DataError, validate

SUFFIXES = [".jsonl", ".json", ".csv", ".tsv", ".txt", ".xlsx", ""]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"data{suffix}"
        path.write_bytes(data)
        try:
            report = validate(path)
        except DataError as exc:
            assert str(exc) and "\n" not in str(exc)
            return
        assert report.rows_ok + report.rows_rejected == report.rows_total
        for conv in report.conversations:  # every usable row is a well-formed training example
            roles = [m.role for m in conv.messages]
            dialog = roles[1:] if roles and roles[0] == "system" else roles
            assert dialog and dialog == ["user", "assistant"] * (len(dialog) // 2), roles
            assert all(isinstance(m.content, str) and m.content.strip() for m in conv.messages)
        json.dumps(report.to_dict())
        for out in ("rejected.csv", "rejected.jsonl"):
            report.write_rejected(Path(tmp) / out)


@FUZZ
@given(st.binary(max_size=2000), st.sampled_from(SUFFIXES))
def test_random_bytes(data: bytes, suffix: str) -> None:
    _check(data, suffix)


@FUZZ
@given(st.text(max_size=800), st.sampled_from(SUFFIXES), st.sampled_from(["utf-8", "utf-16", "gb18030"]))
def test_random_text(text: str, suffix: str, encoding: str) -> None:
    _check(text.encode(encoding, errors="replace"), suffix)


_value = st.one_of(st.text(max_size=40), st.integers(), st.floats(allow_nan=False), st.none(), st.booleans(),
                   st.lists(st.text(max_size=5), max_size=3), st.dictionaries(st.text(max_size=5), st.text(max_size=5),
                                                                             max_size=2))
_keys = st.sampled_from(["instruction", "response", "input", "output", "question", "answer", "system", "messages",
                         "conversations", "conversation", "history", "instructlon", "x", "问题", "答案"])
_turn = st.dictionaries(st.sampled_from(["role", "content", "from", "value", "input", "output", "system"]),
                        st.one_of(st.sampled_from(["user", "assistant", "system", "human", "gpt", "tool", ""]),
                                  st.text(max_size=20), st.integers()), max_size=3)
_row = st.dictionaries(_keys, st.one_of(_value, st.lists(_turn, max_size=4)), max_size=4)


@FUZZ
@given(st.lists(st.one_of(_row, st.text(max_size=30)), min_size=1, max_size=12), st.sampled_from(["jsonl", "json"]))
def test_random_json_rows(rows: list, layout: str) -> None:
    if layout == "jsonl":
        text = "\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows)
    else:
        text = json.dumps(rows, ensure_ascii=False)
    _check(text.encode("utf-8"), f".{layout}")


@FUZZ
@given(st.lists(st.lists(st.text(max_size=20), min_size=0, max_size=4), min_size=1, max_size=12),
       st.sampled_from([",", "\t", ";"]))
def test_random_table_rows(rows: list[list[str]], delim: str) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delim)
    writer.writerow(["question", "answer"])
    writer.writerows(rows)
    _check(buf.getvalue().encode("utf-8"), ".tsv" if delim == "\t" else ".csv")
