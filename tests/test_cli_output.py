"""The CLI's output: a reader that goes away (`lorastudio train … | head`) does not stop a command,
and `lorastudio compare` prints the answers while they are generated."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from train_fixtures import write_rows

from lorastudio.cli import ClosedPipeSafe, main
from lorastudio.train import read_events

REPO = Path(__file__).resolve().parents[1]


def test_training_survives_its_reader_going_away(tmp_path, small_model_dir):
    """`lorastudio train … 2>&1 | head -1`: the pipe closes after the first line; training goes on,
    saves its adapter and exits 0 (it used to stop with BrokenPipeError, reported as training_failed)."""
    data = write_rows(tmp_path / "good.jsonl")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lorastudio", "train", str(data), "--base", small_model_dir, "-o", str(out),
         "--no-recommend", "--max-steps", "3", "--set", "batch_tokens=128", "--set", "max_length=128"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first = proc.stdout.readline()
    proc.stdout.close()  # `head -1` has what it wanted
    assert proc.wait(timeout=300) == 0, first
    events = read_events(out / "events.jsonl")
    assert [e for e in events if e["type"] == "error"] == []
    assert events[-1]["type"] == "done" and (out / "adapter_model.safetensors").is_file()


def test_output_still_buffered_at_the_end_meets_a_closed_pipe_quietly(tmp_path):
    """`lorastudio models | head -0`: the reader is gone before the command prints; its buffered output
    used to fail in the interpreter's final flush ("Exception ignored … BrokenPipeError", exit 120)."""
    proc = subprocess.Popen([sys.executable, "-m", "lorastudio", "models"], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "BrokenPipeError" not in err, err


def test_a_closed_pipe_discards_the_rest_instead_of_raising():
    read_end, write_end = os.pipe()
    stream = ClosedPipeSafe(open(write_end, "w", encoding="utf-8", buffering=1))  # line-buffered, like a terminal
    stream.write("one\n")
    assert os.read(read_end, 100) == b"one\n" and not stream.reader_gone
    os.close(read_end)
    print("two", file=stream, flush=True)  # BrokenPipeError underneath
    assert stream.reader_gone
    print("three" * 10_000, file=stream, flush=True)
    stream.flush()
    assert stream.isatty() is False and stream.encoding == "utf-8"
    stream.close()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Engine:
    """Answers in pieces and records what stdout held each time it was asked for the next piece."""

    engine, engine_reason = "scripted", "test"

    def __init__(self, stdout: io.StringIO):
        self.stdout, self.seen = stdout, []

    def stream(self, msgs, adapter=None, max_new_tokens=256, stats=None, **kw):
        for piece in (["base ", "answer"] if adapter is None else ["tuned ", "answer"]):
            yield piece
            self.seen.append(self.stdout.getvalue())
        if stats is not None:
            stats["completion_tokens"] = 2


def _adapter(tmp_path: Path) -> Path:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}), encoding="utf-8")
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    return adapter


def test_compare_prints_each_answer_as_it_is_generated(tmp_path, monkeypatch):
    from lorastudio.commands import _using

    adapter = _adapter(tmp_path)
    for layout, stdout in (("auto", _Terminal()), ("stream", io.StringIO())):
        monkeypatch.setattr(sys, "stdout", stdout)
        engine = _Engine(stdout)
        monkeypatch.setattr(_using, "load_engine", lambda base, max_adapters=4, knowledge=True, e=engine: e)
        assert main(["compare", "--base", "x", "--adapter", str(adapter), "--question", "hi?",
                     "--layout", layout]) == 0
        # each piece was on stdout before the engine was asked for the next one
        assert [s.rsplit("──\n", 1)[-1] for s in engine.seen] == ["base ", "base answer", "tuned ", "tuned answer"]
        assert "(" in stdout.getvalue().rsplit("tuned answer", 1)[-1]  # the time it took, after the answer


def test_no_knowledge_reaches_the_engine_of_compare_generate_and_eval(tmp_path, monkeypatch):
    from lorastudio.commands import _using

    adapter, asked = _adapter(tmp_path), []

    def load(base, max_adapters=4, knowledge=True):
        asked.append(knowledge)
        raise _using.UsageError("stop here")  # the flag is what this test is about, not the answers

    monkeypatch.setattr(_using, "load_engine", load)
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "hi?"}\n', encoding="utf-8")
    for argv in (["compare", "--adapter", str(adapter), "--question", "hi?"],
                 ["generate", "--adapter", str(adapter), "--input", str(questions), "--output", str(tmp_path / "a")],
                 ["eval", "--adapter", str(adapter), "--questions", str(questions)]):
        assert main(argv + ["--no-knowledge"]) == 2
        assert main(argv) == 2
    assert asked == [False, True] * 3
