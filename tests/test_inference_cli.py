"""`lorastudio generate` and `lorastudio compare` end to end on a tiny model and adapter."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from inference_fixtures import build_adapter, build_tiny_model  # noqa: E402

from lorastudio.cli import main  # noqa: E402
from lorastudio.inference import ChatEngine  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tinycli")
    base = build_tiny_model(root / "base")
    return {"base": base, "adapter": build_adapter(base, root / "adapter", seed=1)}


def test_generate_end_to_end_with_adapter_keeps_every_line(tiny, tmp_path, capsys):
    lines = [
        json.dumps({"question": "工单超过多久会升级？", "id": 1}, ensure_ascii=False),
        "",  # blank lines are not data
        json.dumps({"messages": [{"role": "system", "content": "简短回答"}, {"role": "user", "content": "价格？"}]},
                   ensure_ascii=False),
        "{not json",
        json.dumps({"prompt": "wrong field"}),
        json.dumps({"question": "   "}),
        json.dumps({"question": "Hello?", "system": "Answer in English."}),
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out" / "answers.jsonl"
    code = main(["generate", "--base", str(tiny["base"]), "--adapter", str(tiny["adapter"]),
                 "--input", str(src), "--output", str(out), "--max-new-tokens", "8", "--batch-size", "2"])
    err = capsys.readouterr().err
    assert code == 1  # some lines failed, others answered
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 6  # every non-blank input line, in order
    assert rows[0]["id"] == 1 and isinstance(rows[0]["answer"], str) and "error" not in rows[0]
    assert rows[1]["messages"][1]["content"] == "价格？" and isinstance(rows[1]["answer"], str)
    assert rows[2] == {"line": 4, "raw": "{not json", "answer": None, "error": rows[2]["error"]}
    assert "line 4" in rows[2]["error"] and "JSON" in rows[2]["error"]
    assert "no `question` or `messages`" in rows[3]["error"] and rows[3]["prompt"] == "wrong field"
    assert rows[4]["answer"] is None and "empty" in rows[4]["error"]
    assert isinstance(rows[5]["answer"], str)
    assert "line 5" in err and "line 6" in err and "answered 3 of 6" in err
    # The answers are the tuned model's greedy answers.
    engine = ChatEngine(str(tiny["base"]))
    assert rows[0]["answer"] == engine.generate("工单超过多久会升级？", adapter=tiny["adapter"], max_new_tokens=8)
    assert rows[5]["answer"] == engine.generate(
        [{"role": "system", "content": "Answer in English."}, {"role": "user", "content": "Hello?"}],
        adapter=tiny["adapter"], max_new_tokens=8)


def test_generate_all_good_exits_zero_and_base_defaults_to_adapter_base(tiny, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text('{"question": "a"}\n{"question": "b"}\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    # No --base: the adapter records its base directory.
    assert main(["generate", "--adapter", str(tiny["adapter"]), "--input", str(src), "--output", str(out),
                 "--max-new-tokens", "4"]) == 0
    assert [json.loads(x)["question"] for x in out.read_text().splitlines()] == ["a", "b"]


def test_generate_missing_adapter_exits_2_with_clear_message(tiny, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text('{"question": "a"}\n')
    code = main(["generate", "--base", str(tiny["base"]), "--adapter", str(tmp_path / "nope"),
                 "--input", str(src), "--output", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    assert code == 2
    assert "nope" in err and "does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "o.jsonl").exists()


def test_generate_missing_input_exits_2(tiny, tmp_path, capsys):
    code = main(["generate", "--base", str(tiny["base"]), "--input", str(tmp_path / "missing.jsonl"),
                 "--output", str(tmp_path / "o.jsonl")])
    assert code == 2 and "missing.jsonl" in capsys.readouterr().err


def test_compare_prints_both_answers(tiny, capsys):
    code = main(["compare", "--base", str(tiny["base"]), "--adapter", str(tiny["adapter"]),
                 "--question", "工单超过多久会升级？", "--max-new-tokens", "6", "--json"])
    assert code == 0
    row = json.loads(capsys.readouterr().out.strip())
    engine = ChatEngine(str(tiny["base"]))
    assert row["base_answer"] == engine.generate(row["question"], max_new_tokens=6)
    assert row["tuned_answer"] == engine.generate(row["question"], adapter=tiny["adapter"], max_new_tokens=6)
    assert row["base_answer"] != row["tuned_answer"]


def test_compare_side_by_side_and_interactive(tiny, capsys, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("第一个问题\nsecond\n\n"))
    code = main(["compare", "--base", str(tiny["base"]), "--adapter", str(tiny["adapter"]),
                 "--max-new-tokens", "4"])
    out = capsys.readouterr().out
    assert code == 0
    assert "第一个问题" in out and "second" in out and "│" in out


def test_compare_missing_adapter_exits_2(tiny, tmp_path, capsys):
    code = main(["compare", "--base", str(tiny["base"]), "--adapter", str(tmp_path / "x"), "--question", "q"])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_side_by_side_aligns_wide_characters():
    from lorastudio.commands._using import display_width, side_by_side

    table = side_by_side("基础模型", "工单" * 30, "Fine-tuned", "short", total=80)
    lines = table.splitlines()
    bar = [display_width(line.split("│")[0]) for line in lines if "│" in line]
    assert len(set(bar)) == 1  # the column separator is at the same display column on every line


def test_generate_unknown_base_exits_2(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text('{"question": "a"}\n')
    code = main(["generate", "--base", str(tmp_path / "no-such-model"), "--input", str(src),
                 "--output", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot load base model" in err and "no-such-model" in err and "Traceback" not in err
