"""The export fidelity gate on the real default model (Qwen2.5 0.5B, ChatML), with a random LoRA of
the trainer's shape. Slow tier: 4–10 minutes on 2 shared AVX2 cores (578 s at load average 9–12),
most of it the float32 transformers reference; q8_0 took 6.5 min at load 11–14, so only f16 runs here
(numbers for all three types in docs/ENGINE.md, "Export fidelity")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorastudio import llamacpp

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not llamacpp.available(), reason="llama-cpp-python is not installed")]

DEMO = Path(__file__).resolve().parent.parent / "lorastudio" / "assets" / "demo" / "yunzhan_train.jsonl"


def _default_dir() -> Path:
    from lorastudio.models import resolve_model
    from lorastudio.models.errors import ModelError

    try:
        return Path(resolve_model("default"))
    except ModelError as exc:  # not cached here: this tier never downloads
        pytest.skip(f"the default model is not cached ({str(exc).splitlines()[0]})")


def _random_adapter(path: Path, base: Path, seed: int = 0) -> Path:
    """A PEFT LoRA of the trainer's shape (r16, α32, MLP linears) with random A and B (a trained
    adapter's scale), plus the
    train_config.yaml that names its training file (the demo), as `lorastudio train` writes it."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    shapes = {"gate_proj": (896, 4864), "up_proj": (896, 4864), "down_proj": (4864, 896)}
    tensors = {}
    for layer in range(24):
        for name, (fan_in, fan_out) in shapes.items():
            key = f"base_model.model.model.layers.{layer}.mlp.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(16, fan_in, generator=g) / fan_in ** 0.5
            # B at ~2x the scale of a trained adapter (the 20-step demo adapter's B: std 0.0028). At 0.05
            # (18x) the f16 export disagreed from the first token on 4 of 5 questions, not investigated
            # further (an f16 overflow of llama.cpp's activations is one candidate; see docs/ENGINE.md).
            tensors[f"{key}.lora_B.weight"] = torch.randn(fan_out, 16, generator=g) * 0.005
    path.mkdir(parents=True)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": list(shapes), "bias": "none",
        "base_model_name_or_path": str(base)}))
    (path / "train_config.yaml").write_text(f"data: {DEMO}\nbase: default\nsystem_prompt: null\n", encoding="utf-8")
    return path


def test_f16_export_of_the_default_model_answers_like_the_adapter(tmp_path, capsys):
    from lorastudio.cli import main

    base = _default_dir()
    adapter = _random_adapter(tmp_path / "adapter", base)
    out = tmp_path / "out" / "model.gguf"
    code = main(["export", "--adapter", str(adapter), "--gguf", str(out), "--no-verify"])
    captured = capsys.readouterr()
    report = json.loads((tmp_path / "out" / "model.fidelity.json").read_text(encoding="utf-8"))
    assert code == 0, captured.err
    assert "fidelity PASSED" in captured.out
    assert report["passed"] is True and report["total"] == 5 and report["identical"] >= 4
    assert report["questions_source"].startswith("training data") and report["problems"] == []
    assert all(q["prompt_ids_match"] and q["modelfile_prompt_match"] for q in report["questions"])
    # the Modelfile speaks ChatML with Qwen's default system prompt and stops at <|im_end|>
    modelfile = (tmp_path / "out" / "Modelfile").read_text(encoding="utf-8")
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "You are Qwen" in modelfile
