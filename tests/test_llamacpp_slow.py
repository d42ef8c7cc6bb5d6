"""The llama.cpp engine on the real default model (its own Q4_K_M GGUF). Slow tier: about a minute
on 2 cores (the transformers engine loads the dequantised model for the comparison)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorastudio import llamacpp

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not llamacpp.available(), reason="llama-cpp-python is not installed")]

FACTS = [("What is 12 + 30? Reply with the number only.", ["42"]),
         ("法国的首都是哪座城市？", ["巴黎"]),
         ("What is the capital of Japan?", ["Tokyo"])]


def _adapter(path: Path, *, zero: bool, seed: int = 0) -> Path:
    """A PEFT LoRA of the trainer's shape for the default model (r16, α32, MLP linears), written
    directly: B = 0 (a freshly initialised adapter) or random."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    shapes = {"gate_proj": (896, 4864), "up_proj": (896, 4864), "down_proj": (4864, 896)}
    tensors = {}
    for layer in range(24):
        for name, (fan_in, fan_out) in shapes.items():
            key = f"base_model.model.model.layers.{layer}.mlp.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(16, fan_in, generator=g) / fan_in ** 0.5
            tensors[f"{key}.lora_B.weight"] = torch.zeros(fan_out, 16) if zero else \
                torch.randn(fan_out, 16, generator=g) * 0.05
    path.mkdir(parents=True)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": list(shapes), "bias": "none",
        "base_model_name_or_path": "default"}))
    return path


@pytest.fixture(scope="module")
def engine():
    from lorastudio.inference import ChatEngine

    eng = ChatEngine("default", max_adapters=2)
    if eng.engine != "llama.cpp":
        pytest.skip(f"llama.cpp not chosen here: {eng.engine_reason}")
    return eng


def test_default_model_answers_from_its_gguf(engine):
    assert engine.model is None  # no dequantised copy in memory
    for question, keys in FACTS:
        answer = engine.generate(question, max_new_tokens=24)
        assert any(k in answer for k in keys), (question, answer)
    streamed = "".join(engine.stream("用一句话介绍一下你自己。", max_new_tokens=24))
    assert streamed == engine.generate("用一句话介绍一下你自己。", max_new_tokens=24)
    assert any("\u4e00" <= c <= "\u9fff" for c in streamed)


def test_adapters_apply_and_switch_on_the_one_base(engine, tmp_path):
    q = FACTS[1][0]
    base = engine.generate(q, max_new_tokens=16)
    assert engine.generate(q, adapter=_adapter(tmp_path / "zero", zero=True), max_new_tokens=16) == base
    changed = engine.generate(q, adapter=_adapter(tmp_path / "rand", zero=False), max_new_tokens=16)
    assert changed != base
    assert engine.generate(q, max_new_tokens=16) == base  # switched off again, cache not reused
    assert engine.generate(q, adapter=tmp_path / "rand", max_new_tokens=16) == changed


def test_same_key_facts_as_the_transformers_engine(engine):
    from lorastudio.inference import ChatEngine

    reference = ChatEngine("default", engine="transformers")
    questions = [q for q, _ in FACTS]
    fast = engine.generate_batch(questions, max_new_tokens=24)
    slow = reference.generate_batch(questions, max_new_tokens=24)
    for (question, keys), a, b in zip(FACTS, fast, slow, strict=True):
        assert [k in a for k in keys] == [k in b for k in keys], (question, a, b)
