"""`lorastudio demo --quick`: every step of the demo path on tiny-random, and its question file."""

from __future__ import annotations

import json
from pathlib import Path

from lorastudio.cli import main
from lorastudio.evaluate import load_questions

ASSETS = Path(__file__).resolve().parents[1] / "lorastudio" / "assets" / "demo"


def test_demo_questions_are_held_out_and_checkable():
    questions = load_questions(ASSETS / "demo_questions.jsonl")
    assert len(questions) >= 10
    train_rows = [json.loads(line) for line in (ASSETS / "yunzhan_train.jsonl").read_text(encoding="utf-8").splitlines()]
    train_questions = {r["instruction"] for r in train_rows}
    train_answers = "\n".join(r["response"] for r in train_rows)
    for q in questions:
        assert q.question not in train_questions  # reworded, not copied
        assert q.must_contain
        for key in q.must_contain:
            assert key in train_answers, f"{key!r} is not a taught fact"


def test_demo_quick_runs_the_whole_path(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert "before" in printed and "after" in printed and "all key facts stated" in printed
    assert str(out) in printed
    assert "3 questions" in printed


def test_demo_bad_data_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("")
    assert main(["demo", "--quick", "--data", str(bad), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err
