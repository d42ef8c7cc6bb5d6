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


# --------------------------------------------------------------------------------------------------
# paraphrases (augment_paraphrases > 0): the same engine rule, child process and fallback


def _convs():
    from lorastudio.data.types import Conversation, Message

    return [Conversation([Message("user", q), Message("assistant", "ok")], row=i + 1) for i, q in enumerate(PROMPTS)]


def _cfg(tiny, tmp_path, device="cpu"):
    from lorastudio.train.config import TrainConfig

    return TrainConfig(base=str(tiny["gguf"]), device=device, augment_paraphrases=2, output_dir=str(tmp_path / "run"))


@pytest.fixture
def spies(monkeypatch):
    """Records the llama.cpp child's calls (passing them on) and the transformers path's prompts."""
    from lorastudio.engines import batch
    from lorastudio.train import augment, generation

    monkeypatch.setattr(augment, "PARAPHRASE_MAX_NEW_TOKENS", 12)  # short: a random model's near-ties part later
    seen: dict[str, list] = {"llama.cpp": [], "transformers": []}
    real_child, real_tf = batch.run_llamacpp_batch, generation.generate_batch

    def child(base, prompts, **kw):
        out = real_child(base, prompts, **kw)
        seen["llama.cpp"].append({"base": base, "prompts": prompts, "out": out, **kw})
        return out

    def transformers(model, tokenizer, prompts, **kw):
        out = real_tf(model, tokenizer, prompts, **kw)
        seen["transformers"].append({"prompts": prompts, "out": out, **kw})
        return out

    monkeypatch.setattr(batch, "run_llamacpp_batch", child)
    monkeypatch.setattr(generation, "generate_batch", transformers)
    return seen


@needs_llama
def test_paraphrases_on_cpu_come_from_the_llamacpp_child_with_the_transformers_answers(tiny, home, spies, tmp_path):
    from lorastudio.train import augment
    from lorastudio.train.generation import generate_batch

    events: list[dict] = []
    convs = _convs()
    out = augment.augment_conversations(convs, model=tiny["model"], tokenizer=tiny["tokenizer"],
                                        cfg=_cfg(tiny, tmp_path), on_event=events.append)
    assert spies["transformers"] == [] and len(spies["llama.cpp"]) == 1
    call = spies["llama.cpp"][0]
    assert call["base"] == str(tiny["gguf"]) and call["max_new_tokens"] == 12 and len(call["prompts"]) == 4
    assert "换成3种不同的问法" in call["prompts"][1][0]["content"]  # n + 1 asked, the Chinese prompt
    assert "in 3 different ways" in call["prompts"][0][0]["content"]
    # What training used before (the trainer's model through transformers), same weights: same text.
    assert call["out"] == generate_batch(tiny["model"], tiny["tokenizer"], call["prompts"], max_new_tokens=12)
    assert any("paraphrases: the llama.cpp engine" in e.get("message", "") for e in events)
    expected = [p for q, a in zip(PROMPTS, call["out"], strict=True) for p in augment.parse_paraphrases(a, q, 2)]
    assert [c.messages[0].content for c in out[len(convs):]] == expected


@needs_llama
def test_paraphrases_written_by_the_child_become_training_rows(tiny, home, monkeypatch, tmp_path):
    from lorastudio.engines import batch
    from lorastudio.train import augment

    scripted = {"What is the price of YZ-LD2406?": "How much does the YZ-LD2406 cost?\nTell me YZ-LD2406's price?",
                "工单超过多久会升级？": "1. 工单放多长时间没处理就会升级？\n这是一个陈述句。"}

    def child(base, prompts, **kw):
        return [next((v for k, v in scripted.items() if k in p[0]["content"]), "") for p in prompts]

    monkeypatch.setattr(batch, "run_llamacpp_batch", child)
    out = augment.augment_conversations(_convs(), model=tiny["model"], tokenizer=tiny["tokenizer"],
                                        cfg=_cfg(tiny, tmp_path))
    rows = [json.loads(x) for x in (tmp_path / "run" / "augmented.jsonl").read_text("utf-8").splitlines()]
    assert [(r["source"], r["row"], r["messages"][0]["content"]) for r in rows] == [
        ("paraphrase", 1, "How much does the YZ-LD2406 cost?"), ("paraphrase", 1, "Tell me YZ-LD2406's price?"),
        ("paraphrase", 2, "工单放多长时间没处理就会升级？")]
    assert len(out) == 4 + 3 and out[4].messages[1].content == "ok"


@needs_llama
def test_paraphrases_fall_back_to_transformers_when_the_child_fails_and_say_why(tiny, home, spies, monkeypatch,
                                                                                 tmp_path):
    from lorastudio.engines import batch
    from lorastudio.train import augment

    def broken(*args, **kw):
        raise batch.BatchError("the llama.cpp generation process exited with code 1: boom")

    monkeypatch.setattr(batch, "run_llamacpp_batch", broken)
    events: list[dict] = []
    with pytest.warns(UserWarning, match="paraphrases: llama.cpp failed, using transformers .*boom"):
        augment.augment_conversations(_convs(), model=tiny["model"], tokenizer=tiny["tokenizer"],
                                      cfg=_cfg(tiny, tmp_path), on_event=events.append)
    assert len(spies["transformers"]) == 1 and len(spies["transformers"][0]["prompts"]) == 4
    assert any(e["type"] == "stage" and "llama.cpp failed, using transformers" in e["message"] and "boom" in e["message"]
               for e in events)


def test_paraphrases_stay_on_transformers_where_llamacpp_does_not_apply(tiny, home, spies, monkeypatch, tmp_path):
    from lorastudio.train import augment

    for device, env in (("cuda", None), ("cpu", "transformers")):
        if env:
            monkeypatch.setenv("LORASTUDIO_ENGINE", env)
        events: list[dict] = []
        augment.augment_conversations(_convs(), model=tiny["model"], tokenizer=tiny["tokenizer"],
                                      cfg=_cfg(tiny, tmp_path, device), on_event=events.append)
        assert spies["llama.cpp"] == []
        assert any("paraphrases: the transformers engine writes them" in e.get("message", "") for e in events)
    assert len(spies["transformers"]) == 2
