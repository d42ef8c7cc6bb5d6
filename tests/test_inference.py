"""ChatEngine on a tiny random Qwen2: adapter switching, LRU, streaming, batching, errors."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from inference_fixtures import build_adapter, build_tiny_model  # noqa: E402

from lorastudio.inference import (  # noqa: E402
    AdapterError,
    ChatEngine,
    PromptError,
    _IncrementalDecoder,
    normalize_messages,
)

QUESTIONS = ["工单超过多久会升级？", "What is the price of YZ-LD2406?", "满意度低于3分怎么办？"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    base = build_tiny_model(root / "base")
    a = build_adapter(base, root / "adapter_a", seed=1)
    b = build_adapter(base, root / "adapter_b", seed=2)
    c = build_adapter(base, root / "adapter_c", seed=3)
    return {"base": base, "a": a, "b": b, "c": c, "root": root}


@pytest.fixture(scope="module")
def engine(tiny):
    return ChatEngine(str(tiny["base"]), max_adapters=2)


def test_adapters_change_outputs_and_switching_is_stable(engine, tiny):
    q = QUESTIONS[0]
    base1 = engine.generate(q, max_new_tokens=12)
    a1 = engine.generate(q, adapter=tiny["a"], max_new_tokens=12)
    b1 = engine.generate(q, adapter=tiny["b"], max_new_tokens=12)
    assert len({base1, a1, b1}) == 3, (base1, a1, b1)
    # Switch back and forth: each answer is the same as the first time (greedy, no leakage).
    assert engine.generate(q, max_new_tokens=12) == base1
    assert engine.generate(q, adapter=tiny["a"], max_new_tokens=12) == a1
    assert engine.generate(q, adapter=tiny["b"], max_new_tokens=12) == b1
    assert engine.generate(q, max_new_tokens=12) == base1


def test_base_output_matches_a_fresh_plain_model(engine, tiny):
    # Loading adapters into the engine must not alter what the base model answers.
    engine.generate(QUESTIONS[1], adapter=tiny["a"], max_new_tokens=4)
    fresh = ChatEngine(str(tiny["base"]))
    assert engine.generate(QUESTIONS[1], max_new_tokens=10) == fresh.generate(QUESTIONS[1], max_new_tokens=10)


def test_lru_evicts_least_recently_used(tiny):
    eng = ChatEngine(str(tiny["base"]), max_adapters=2)
    q = QUESTIONS[2]
    a = eng.generate(q, adapter=tiny["a"], max_new_tokens=8)
    eng.generate(q, adapter=tiny["b"], max_new_tokens=8)
    eng.generate(q, adapter=tiny["a"], max_new_tokens=8)  # a is now most recent
    eng.generate(q, adapter=tiny["c"], max_new_tokens=8)  # evicts b
    assert eng.loaded_adapters() == [str(tiny["a"].resolve()), str(tiny["c"].resolve())]
    peft_names = set(eng.model.peft_config)
    assert len(peft_names) == 2  # the evicted adapter's weights are really gone
    # Reloading b after eviction gives the same answer as a fresh engine with only b.
    b_again = eng.generate(q, adapter=tiny["b"], max_new_tokens=8)
    only_b = ChatEngine(str(tiny["base"]), max_adapters=1).generate(q, adapter=tiny["b"], max_new_tokens=8)
    assert b_again == only_b
    assert eng.generate(q, adapter=tiny["a"], max_new_tokens=8) == a


def test_stream_equals_generate_and_never_splits_characters(engine, tiny):
    for adapter in (None, tiny["a"]):
        for q in QUESTIONS:
            pieces = list(engine.stream(q, adapter=adapter, max_new_tokens=40))
            assert "".join(pieces) == engine.generate(q, adapter=adapter, max_new_tokens=40)
            # A held-back partial character shows as U+FFFD at the end of a piece; none may.
            assert all(not p.endswith("\ufffd") for p in pieces[:-1])


def test_incremental_decoder_holds_back_partial_utf8(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny["base"])
    text = "护航组的电话是分机6021，谢谢！"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    dec = _IncrementalDecoder(tok)
    pieces = [dec.push([i]) for i in ids] + [dec.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_complete_reports_usage_and_finish_reason(engine):
    c = engine.complete(QUESTIONS[0], max_new_tokens=5)
    assert c.prompt_tokens > 5
    assert 1 <= c.completion_tokens <= 5
    assert c.finish_reason in ("stop", "length")
    if c.completion_tokens == 5 and c.finish_reason == "length":
        assert c.text == engine.generate(QUESTIONS[0], max_new_tokens=5)


def test_batch_matches_one_by_one(engine, tiny):
    questions = QUESTIONS + ["短问题", "A much longer question about the warranty terms and the return policy?"]
    for adapter in (None, tiny["b"]):
        batch = engine.generate_batch(questions, adapter=adapter, max_new_tokens=10, batch_size=3)
        single = [engine.generate(q, adapter=adapter, max_new_tokens=10) for q in questions]
        assert batch == single


def test_sampling_is_seeded_and_differs_from_greedy(engine):
    s1 = engine.generate(QUESTIONS[0], max_new_tokens=20, temperature=1.5, seed=7)
    s2 = engine.generate(QUESTIONS[0], max_new_tokens=20, temperature=1.5, seed=7)
    assert s1 == s2
    samples = {engine.generate(QUESTIONS[0], max_new_tokens=20, temperature=1.5, seed=s) for s in range(4)}
    assert len(samples) > 1


def test_concurrent_requests_do_not_mix_adapters(engine, tiny):
    q = QUESTIONS[1]
    expected = {k: engine.generate(q, adapter=tiny[k] if k else None, max_new_tokens=10) for k in ("a", "b", None)}
    results: dict[int, tuple] = {}

    def worker(i: int, key):
        adapter = tiny[key] if key else None
        results[i] = (key, "".join(engine.stream(q, adapter=adapter, max_new_tokens=10)))

    threads = [threading.Thread(target=worker, args=(i, k)) for i, k in enumerate(["a", "b", None] * 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(text == expected[key] for key, text in results.values())


def test_closing_a_stream_early_releases_the_engine(engine):
    it = engine.stream(QUESTIONS[0], max_new_tokens=200)
    next(it)
    it.close()  # a client disconnect
    # The lock must be free again: a new call completes.
    assert isinstance(engine.generate(QUESTIONS[0], max_new_tokens=3), str)


def test_retrained_adapter_in_same_dir_is_reloaded(tiny, tmp_path):
    eng = ChatEngine(str(tiny["base"]))
    d = build_adapter(tiny["base"], tmp_path / "ad", seed=11)
    first = eng.generate(QUESTIONS[0], adapter=d, max_new_tokens=10)
    import os
    import time

    build_adapter(tiny["base"], d, seed=12)
    st = (d / "adapter_model.safetensors").stat()
    os.utime(d / "adapter_model.safetensors", (st.st_atime, time.time() + 5))
    second = eng.generate(QUESTIONS[0], adapter=d, max_new_tokens=10)
    fresh = ChatEngine(str(tiny["base"])).generate(QUESTIONS[0], adapter=d, max_new_tokens=10)
    assert second == fresh and second != first


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "no adapter_config.json"),
        (lambda p: (p / "f.txt").write_text("x") and p / "f.txt", "is a file"),
    ],
)
def test_bad_adapter_paths_are_clear_errors(engine, tmp_path, setup, message):
    with pytest.raises(AdapterError, match=message):
        engine.generate("hi", adapter=setup(tmp_path))


def test_adapter_for_another_base_is_a_clear_error(engine, tmp_path):
    other = build_tiny_model(tmp_path / "other_base")
    # A different hidden size makes the LoRA shapes incompatible.
    import json

    cfg = json.loads((other / "config.json").read_text())
    cfg.update(hidden_size=32, intermediate_size=64)
    (other / "config.json").write_text(json.dumps(cfg))
    from transformers import AutoConfig, AutoModelForCausalLM

    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(other)).save_pretrained(other)
    bad = build_adapter(other, tmp_path / "bad_adapter", seed=5)
    with pytest.raises(AdapterError, match="does not fit base model"):
        engine.generate("hi", adapter=bad)
    assert engine.generate("hi", max_new_tokens=3) is not None  # engine still usable


def test_message_validation():
    assert normalize_messages("你好") == [{"role": "user", "content": "你好"}]
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert normalize_messages(parts) == [{"role": "user", "content": "ab"}]
    with pytest.raises(PromptError, match="role"):
        normalize_messages([{"role": "bot", "content": "x"}])
    with pytest.raises(PromptError, match="last message"):
        normalize_messages([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}])
    with pytest.raises(PromptError, match="empty"):
        normalize_messages("  ")


def test_prompt_too_long_is_a_clear_error(engine):
    with pytest.raises(PromptError, match="reads at most"):
        engine.generate("工单" * 2000)


def test_adapter_training_system_prompt_is_used_like_in_training(tiny, tmp_path):
    import shutil

    adapter = tmp_path / "with_system"
    shutil.copytree(tiny["a"], adapter)
    (adapter / "train_config.yaml").write_text("system_prompt: 你是云栈客服。\n", encoding="utf-8")
    eng = ChatEngine(str(tiny["base"]))
    q = QUESTIONS[0]
    explicit = [{"role": "system", "content": "你是云栈客服。"}, {"role": "user", "content": q}]
    # No system message given: the adapter's training-time system prompt is filled in.
    assert eng.generate(q, adapter=adapter, max_new_tokens=10) == eng.generate(explicit, adapter=tiny["a"],
                                                                               max_new_tokens=10)
    assert eng.generate(q, adapter=adapter, max_new_tokens=10) != eng.generate(q, adapter=tiny["a"],
                                                                               max_new_tokens=10)
    # A conversation's own system message wins, as in training.
    own = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": q}]
    assert eng.generate(own, adapter=adapter, max_new_tokens=10) == eng.generate(own, adapter=tiny["a"],
                                                                                 max_new_tokens=10)


def test_unloading_the_last_adapter_restores_the_plain_base(tiny):
    from peft import PeftModel

    eng = ChatEngine(str(tiny["base"]), max_adapters=1)
    q = QUESTIONS[1]
    base = eng.generate(q, max_new_tokens=8)
    tuned = eng.generate(q, adapter=tiny["a"], max_new_tokens=8)
    assert eng.unload_adapter(tiny["a"]) is True
    assert not isinstance(eng.model, PeftModel) and eng.loaded_adapters() == []
    assert eng.generate(q, max_new_tokens=8) == base
    assert eng.generate(q, adapter=tiny["a"], max_new_tokens=8) == tuned  # loads again
    assert eng.unload_adapter(tiny["b"]) is False
