"""`lorastudio validate`: exit codes, --json, --rejected, the terminal table in zh/en, i18n."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lorastudio.cli import main
from lorastudio.i18n import MESSAGES, current_lang, t

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "lorastudio" / "assets" / "demo" / "yunzhan_train.jsonl"


@pytest.fixture(autouse=True)
def english(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("LORASTUDIO_LANG", "LANGUAGE", "LC_ALL", "LC_MESSAGES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LANG", "C.UTF-8")


def _bad_csv(tmp_path: Path) -> Path:
    path = tmp_path / "bad.csv"
    path.write_text("问题,答案\n退款多久到账？,3个工作日。\n热线？,\n", encoding="utf-8")
    return path


def test_json_output_is_the_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["validate", str(_bad_csv(tmp_path)), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rows_total"] == 2 and out["rows_ok"] == 1 and out["rows_rejected"] == 1
    assert out["issues"][0] == {
        "row": 2, "severity": "error", "kind": "empty_response", "field": "答案",
        "message": "The answer (答案) is empty.", "hint": "Write the answer or delete the row.",
    }


def test_table_in_english_and_chinese(tmp_path: Path, capsys: pytest.CaptureFixture,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = _bad_csv(tmp_path)
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Rows: 2 total, 1 usable, 1 rejected" in out and "empty_response" in out
    monkeypatch.setenv("LANG", "zh_CN.UTF-8")
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "行数：共 2 行，可用 1 行，拒绝 1 行" in out and "回答（答案）为空。" in out


@pytest.mark.parametrize("content,kind", [
    (b"", "empty_file"),
    (b"\x00\x01\x02garbage\xff\xfe\x00" * 50, "binary"),
    (b"name,price\nwidget,3\n", "unknown_columns"),
])
def test_unusable_files_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                             content: bytes, kind: str) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(content)
    assert main(["validate", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1 and "Traceback" not in captured.err
    assert main(["validate", str(path), "--json"]) == 2
    captured = capsys.readouterr()
    payload = json.loads(captured.out)
    assert set(payload) == {"error", "kind"} and payload["kind"] == kind


def test_unknown_columns_message_lists_found_and_expected(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "data.csv"
    path.write_text("name,price\nwidget,3\n", encoding="utf-8")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "'name', 'price'" in err and "instruction" in err and "response" in err


def test_missing_file_and_unknown_sheet(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["validate", str(tmp_path / "nope.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["validate", str(DEMO), "--max-length", "0"]) == 2
    assert "max_length" in capsys.readouterr().err


def test_rejected_option_writes_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "rejected.jsonl"
    assert main(["validate", str(_bad_csv(tmp_path)), "--rejected", str(out)]) == 0
    assert "Wrote 1 rejected rows" in capsys.readouterr().out
    line = json.loads(out.read_text(encoding="utf-8"))
    assert line["问题"] == "热线？" and line["lorastudio_reasons"][0]["kind"] == "empty_response"
    assert main(["validate", str(_bad_csv(tmp_path)), "--rejected", str(tmp_path / "x.pdf")]) == 2


def test_subprocess_refusal_has_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("nothing here that looks like data\n", encoding="utf-8")
    env = {**os.environ, "LANG": "C.UTF-8", "PYTHONPATH": str(REPO)}
    env.pop("LC_ALL", None)
    proc = subprocess.run([sys.executable, "-m", "lorastudio", "validate", str(path)], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("lorastudio validate: ") and len(proc.stderr.strip().splitlines()) == 1
    ok = subprocess.run([sys.executable, "-m", "lorastudio", "validate", str(DEMO), "--json"],
                        capture_output=True, text=True, env=env, timeout=60)
    assert ok.returncode == 0 and json.loads(ok.stdout)["rows_ok"] == 150


@pytest.mark.parametrize("env,lang", [
    ({}, "en"),
    ({"LANG": "zh_CN.UTF-8"}, "zh"),
    ({"LANG": "en_US.UTF-8", "LC_ALL": "zh_TW.UTF-8"}, "zh"),
    ({"LANG": "zh_CN.UTF-8", "LC_MESSAGES": "en_GB.UTF-8"}, "en"),
    ({"LANG": "en_US.UTF-8", "LANGUAGE": "zh_CN:en"}, "zh"),
    ({"LANG": "C", "LANGUAGE": "zh_CN"}, "en"),  # gettext ignores LANGUAGE under the C locale
    ({"LANGUAGE": "fr:zh"}, "zh"),
    ({"LANGUAGE": "fr"}, "en"),
    ({"LANG": "zh_CN.UTF-8", "LORASTUDIO_LANG": "en"}, "en"),
])
def test_locale_detection(env: dict, lang: str) -> None:
    assert current_lang(env) == lang


def test_catalog_is_complete_and_formats() -> None:
    for key, (en, zh) in MESSAGES.items():
        assert en and zh, key
        if not key.endswith(".hint") and not key.startswith(("cli.", "rec.", "warn.", "estimate.", "studio.", "playground.")) \
                and key + ".hint" not in MESSAGES:
            # every issue code has a hint; refusals (DataError) are one line without one
            assert key in {"not_found", "is_directory", "unreadable", "empty_file", "binary", "undecodable",
                           "legacy_xls", "not_xlsx", "other_document", "unknown_sheet", "malformed_json",
                           "unknown_columns", "unknown_columns.suggest", "ambiguous_columns", "unknown_format",
                           "no_rows", "too_many_rows", "expected.table", "expected.records", "expected.list"}, key
    assert t("duplicate", "zh", first=3) == "与第 3 行完全重复。"
    assert t("duplicate", "en") == "Exact duplicate of row {first}."  # a missing parameter never crashes
    assert t("no.such.key", "en") == "no.such.key"


def test_report_dict_in_chinese_keeps_kinds(tmp_path: Path) -> None:
    from lorastudio.data import validate

    report = validate(_bad_csv(tmp_path))
    zh = report.to_dict(lang="zh")
    en = report.to_dict()
    assert zh["issues"][0]["message"] == "回答（答案）为空。"
    assert [(i["row"], i["kind"], i["field"]) for i in zh["issues"]] == [
        (i["row"], i["kind"], i["field"]) for i in en["issues"]]
    assert zh["dataset_issues"][0]["message"] == "只有 1 行可用数据。"


def test_bad_tokenizer_dir_is_a_one_line_refusal(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["validate", str(DEMO), "--tokenizer", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "not a directory" in err and len(err.strip().splitlines()) == 1
