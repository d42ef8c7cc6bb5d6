"""Padding-free packing is exact: a packed micro-batch gives the same loss and LoRA gradients as the
same examples run one by one (no attention across examples), for each attention backend we use."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lorastudio.train.tokenize import IGNORE_INDEX, collate_packed, encode_conversation
from lorastudio.train.trainer import causal_lm_loss

CONVERSATIONS = [
    [{"role": "user", "content": "工单超过多久会升级？"}, {"role": "assistant", "content": "48小时未处理会自动升级到二线护航组。"}],
    [{"role": "user", "content": "What is the price of YZ-LD2406?"}, {"role": "assistant", "content": "299元。"}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "满意度评分多少才能关单？"}, {"role": "assistant", "content": "≥3分才能关单。"},
     {"role": "user", "content": "低于3分呢？"}, {"role": "assistant", "content": "自动重开并转质检组复核。"}],
]


def _lora_model(model_dir: str, attn: str):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attn)
    torch.manual_seed(0)
    # Random A *and* B: with B = 0 (the usual init) the A gradients would be zero and prove nothing.
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    model.eval()  # no dropout; gradients still flow
    return model, tokenizer


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _reference_loss(model, example) -> torch.Tensor:
    """One example alone through the plain HF forward (no position_ids, full logits): the ground truth."""
    ids = torch.tensor([example.input_ids])
    logits = model(input_ids=ids).logits[0, :-1].float()
    targets = torch.tensor(example.labels[1:])
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_equals_one_by_one(small_model_dir, attn):
    model, tokenizer = _lora_model(small_model_dir, attn)
    examples = [encode_conversation(c, tokenizer) for c in CONVERSATIONS]

    model.zero_grad()
    unpacked = sum(_reference_loss(model, e) for e in examples)
    unpacked.backward()
    reference_grads = _grads(model)

    model.zero_grad()
    packed, count = causal_lm_loss(model, collate_packed(examples))
    packed.backward()
    packed_grads = _grads(model)

    assert count == sum(e.num_target_tokens for e in examples)
    torch.testing.assert_close(packed, unpacked, rtol=1e-5, atol=1e-4)
    assert reference_grads.keys() == packed_grads.keys() and len(packed_grads) > 0
    for name, grad in reference_grads.items():
        assert grad.abs().sum() > 0, name
        # fp32 summation order differs (one row vs three), so compare against the gradient's own scale.
        err = (packed_grads[name] - grad).abs().max().item()
        assert err <= 1e-5 * grad.abs().max().item() + 1e-7, (name, err)


def test_without_position_restart_examples_would_leak(small_model_dir):
    """The control: the same packed row with running positions (one long document) gives another
    loss — so the equality above really depends on the per-example mask."""
    model, tokenizer = _lora_model(small_model_dir, "sdpa")
    examples = [encode_conversation(c, tokenizer) for c in CONVERSATIONS]
    batch = collate_packed(examples)
    with torch.no_grad():
        exact, _ = causal_lm_loss(model, batch)
        batch["position_ids"] = torch.arange(batch["input_ids"].shape[1]).unsqueeze(0)
        leaky, _ = causal_lm_loss(model, batch)
    assert not torch.allclose(exact, leaky, rtol=1e-3)


def test_packed_equals_one_by_one_on_tiny_random_bf16(tiny_random_dir):
    """The real tokenizer and bf16 autocast, as CPU training runs: equal within bf16 tolerance."""
    model, tokenizer = _lora_model(tiny_random_dir, "sdpa")
    examples = [encode_conversation(c, tokenizer) for c in CONVERSATIONS]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        packed, _ = causal_lm_loss(model, collate_packed(examples))
        alone = sum(causal_lm_loss(model, collate_packed([e]))[0] for e in examples)
    torch.testing.assert_close(packed, alone, rtol=2e-2, atol=1e-2)
