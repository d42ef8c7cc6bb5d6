"""`protect_general`: LoRA's A matrices kept orthogonal to general text's input directions."""

from __future__ import annotations

import pytest
import torch
from train_fixtures import write_rows

from lorastudio.train import ConfigError, TrainConfig, train


def _tiny_model(tiny_random_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_random_dir), AutoTokenizer.from_pretrained(tiny_random_dir)


def _general_rows():
    from lorastudio.data.types import Conversation, Message

    texts = [("What is the capital of France?", "Paris is the capital of France."),
             ("Explain photosynthesis briefly.", "Plants turn light, water and CO2 into sugar and oxygen."),
             ("写一句关于春天的诗。", "春风又绿江南岸。")]
    return [Conversation([Message("user", q), Message("assistant", a)]) for q, a in texts]


def test_directions_are_orthonormal_and_projection_removes_exactly_them(tiny_random_dir):
    from peft import LoraConfig, get_peft_model

    from lorastudio.train import protect
    from lorastudio.train.adapters import mlp_linears

    model, tokenizer = _tiny_model(tiny_random_dir)
    targets = mlp_linears(model)
    directions = protect.general_directions(model, tokenizer, _general_rows(), 0.5, targets)
    assert sorted(directions) == sorted(targets)
    for name, v in directions.items():
        d_in = model.get_submodule(name).in_features
        assert v.shape == (round(0.5 * d_in), d_in)
        assert torch.allclose(v @ v.T, torch.eye(v.shape[0]), atol=1e-4)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=targets, task_type="CAUSAL_LM"))
    pairs = protect.lora_a_weights(peft, directions)
    assert len(pairs) == len(targets)
    weight, v = pairs[0]
    weight = weight.detach()  # the same storage: project() changes it in place
    before = weight.clone()
    protect.project(pairs)
    assert float((weight @ v.T).abs().max()) < 1e-5           # nothing left along the protected directions
    rest = before - before @ v.T @ v
    assert torch.allclose(weight, rest, atol=1e-6)             # the complement untouched
    assert float((before @ v.T).abs().max()) > 1e-3            # and the test could fail: there was something


def test_fewer_rows_than_dimensions_give_the_same_subspace_from_the_smaller_gram_matrix():
    """`top_directions` takes the n × n Gram matrix when the rows are fewer than the dimensions (the default
    model's down-projections: 4096 tokens, 4864 inputs); its k directions span what the d × d one gives."""
    from lorastudio.train.protect import top_directions

    torch.manual_seed(0)
    x = torch.randn(40, 96) * torch.linspace(0.1, 3.0, 96)  # uneven energy over the dimensions
    wide = top_directions(x, 24)                             # 40 rows < 96 dimensions: the 40 × 40 path
    full = torch.linalg.eigh(x.T @ x).eigenvectors[:, -24:].T  # the 96 × 96 path, by hand
    assert wide.shape == (24, 96)
    assert torch.allclose(wide @ wide.T, torch.eye(24), atol=1e-5)
    assert torch.allclose(wide.T @ wide, full.T @ full, atol=1e-4)  # the same projector
    assert top_directions(x, 60).shape == (60, 96)              # more than the rows: the d × d path
    assert top_directions(x, 0).shape == (0, 96)
    assert top_directions(x[:, :30], 15).shape == (15, 30)      # rows ≥ dimensions: the d × d path


def test_training_keeps_every_a_off_the_directions(tmp_path, tiny_random_dir):
    """A run with protect_general: each trained A is orthogonal to the directions of its input on the run's
    own replay rows (recomputed here from the same rows), while B learnt something."""
    from safetensors.torch import load_file

    from lorastudio.train import protect
    from lorastudio.train.adapters import mlp_linears
    from lorastudio.train.replay import replay_conversations

    cfg = TrainConfig(data=str(write_rows(tmp_path / "faq.jsonl")), base="tiny-random",
                      output_dir=str(tmp_path / "run"), max_steps=3, batch_tokens=512, max_length=256,
                      learning_rate=1e-2, dtype="fp32", replay_rows=2, target_modules="all-mlp",
                      protect_general=0.25, augment_paraphrases=0, val_fraction=0.0)
    train(cfg)
    model, tokenizer = _tiny_model(tiny_random_dir)
    replay = replay_conversations([], model=model, tokenizer=tokenizer, cfg=cfg)
    directions = protect.general_directions(model, tokenizer, replay, 0.25, mlp_linears(model))
    weights = load_file(str(tmp_path / "run" / "adapter_model.safetensors"))
    checked = 0
    for key, a in weights.items():
        if "lora_A" not in key:
            continue
        name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        assert float((a.float() @ directions[name].T).abs().max()) < 1e-4 * float(a.abs().max()), name
        checked += 1
    assert checked == len(directions)
    assert any("lora_B" in k and float(w.abs().sum()) > 0 for k, w in weights.items())


def test_protect_general_is_validated():
    with pytest.raises(ConfigError, match="protect_general"):
        TrainConfig(protect_general=1.0).validate()
    with pytest.raises(ConfigError, match="replay_rows"):
        TrainConfig(protect_general=0.5, replay_rows=0).validate()
