"""Replay answers (the base model's own greedy answers, generated inside training) through the
llama.cpp engine on a CPU: same prompts and greedy semantics as the transformers path, computed in a
child process (lorastudio.engines.batch), cached with the engine named; transformers where
llama.cpp does not apply."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from inference_fixtures import build_tiny_model  # noqa: E402

from lorastudio import llamacpp  # noqa: E402
from lorastudio.train import replay  # noqa: E402

PROMPTS = ["What is the price of YZ-LD2406?", "工单超过多久会升级？", "Hello world, how are you today?",
           "请问退货需要多久？"]
needs_llama = pytest.mark.skipif(not llamacpp.available(),
                                 reason="llama-cpp-python is not installed (pip install 'lorastudio[llamacpp]')")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorastudio.export import write_gguf

    root = tmp_path_factory.mktemp("replay_llamacpp")
    base = build_tiny_model(root / "base")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    with torch.no_grad():  # f16-rounded weights: what the f16 GGUF holds
        for p in model.parameters():
            p.copy_(p.half().float())
    tokenizer = AutoTokenizer.from_pretrained(base)
    (root / "gguf").mkdir()
    gguf = root / "gguf" / "tiny.gguf"
    write_gguf(model, tokenizer, gguf, "f16", name="tiny")
    return {"gguf": gguf, "model": model, "tokenizer": tokenizer}


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LORASTUDIO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LORASTUDIO_ENGINE", raising=False)
    monkeypatch.setattr(replay, "MAX_NEW_TOKENS", 12)  # short: a random model's near-ties part later
    return tmp_path / "home"


def _cache(home: Path, base: str) -> list[dict]:
    path = home / "replay" / f"{replay.model_key(base)}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@needs_llama
def test_replay_on_cpu_uses_llamacpp_with_the_transformers_prompts_and_greedy_answers(tiny, home):
    from lorastudio.train.augment import generate_batch

    base = str(tiny["gguf"])
    assert replay.replay_engine(base, "cpu")[0] == "llama.cpp"
    progress: list[tuple[int, int]] = []
    rows = replay.general_replay(base, len(PROMPTS), prompts=PROMPTS, device="cpu",
                                 on_progress=lambda d, t: progress.append((d, t)))
    cache = _cache(home, base)
    assert [r["engine"] for r in cache] == ["llama.cpp"] * len(PROMPTS)
    assert progress and progress[-1] == (len(PROMPTS), len(PROMPTS))
    # The transformers path (what training used before) on the same weights: the same answers.
    reference = generate_batch(tiny["model"], tiny["tokenizer"], [[{"role": "user", "content": p}] for p in PROMPTS],
                               max_new_tokens=12)
    assert [r["answer"] for r in cache] == reference
    assert [(c.messages[0].content, c.messages[1].content) for c in rows] == \
        [(p, replay.trim_repetition(a)) for p, a in zip(PROMPTS, reference, strict=True) if a]
    # Cached now: no engine runs the second time.
    assert replay.general_replay(base, len(PROMPTS), prompts=PROMPTS, device="cpu") == rows
    assert len(_cache(home, base)) == len(PROMPTS)


def test_transformers_where_llamacpp_does_not_apply(tiny, home, monkeypatch):
    base = str(tiny["gguf"])
    assert replay.replay_engine(base, "cuda")[0] == "transformers"
    monkeypatch.setenv("LORASTUDIO_ENGINE", "transformers")
    assert replay.replay_engine(base, "cpu")[0] == "transformers"
    monkeypatch.delenv("LORASTUDIO_ENGINE")
    assert replay.replay_engine(str(Path(tiny["gguf"]).parent), "cpu")[0] == "transformers"  # not a GGUF
    # The trainer's own model answers then (no llama.cpp child): the cache says so.
    replay.general_replay(base, 2, prompts=PROMPTS[:2], device="cuda", model=tiny["model"],
                          tokenizer=tiny["tokenizer"])
    assert [r["engine"] for r in _cache(home, base)] == ["transformers", "transformers"]


@needs_llama
def test_a_failing_llamacpp_child_falls_back_to_transformers(tiny, home, monkeypatch):
    from lorastudio.engines import batch

    def broken(*args, **kw):
        raise batch.BatchError("exited with code 1: boom")

    monkeypatch.setattr(batch, "run_llamacpp_batch", broken)
    base = str(tiny["gguf"])
    with pytest.warns(UserWarning, match="llama.cpp failed, using transformers"):
        rows = replay.general_replay(base, 2, prompts=PROMPTS[:2], device="cpu", model=tiny["model"],
                                     tokenizer=tiny["tokenizer"])
    assert len(rows) <= 2 and [r["engine"] for r in _cache(home, base)] == ["transformers", "transformers"]
