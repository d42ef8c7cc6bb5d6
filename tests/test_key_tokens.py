"""Loss weights: key-token weighting (`TrainConfig.key_token_weight`: which answer tokens count more) and the
questions' own tokens (`TrainConfig.question_loss_weight`: targets at a fractional weight), and that every
loss path (the plain one, the CPU fast path, the shared template head) counts them the same."""

from __future__ import annotations

import pytest
import torch
from test_cpu_speed import _random_lora_model
from train_fixtures import write_rows

from lorastudio.train import TrainConfig, cpu, cpu_int8, cpu_prefix, kernels, train
from lorastudio.train.device import causal_lm_loss
from lorastudio.train.tokenize import (
    KEY_OPENING_TOKENS,
    KeyTokens,
    encode_conversation,
    encode_dataset,
)

ANSWER = "好的。根据规定，退款会在3个工作日内原路退回，金额超过2000元时还需要主管审批和财务复核两道签字。"
CONV = [{"role": "user", "content": "退款多久到账？"}, {"role": "assistant", "content": ANSWER}]


def test_key_tokens_are_each_answers_opening_and_its_digits(small_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(small_model_dir)
    plain = encode_conversation(CONV, tokenizer)
    weighted = encode_conversation(CONV, tokenizer, key_tokens=KeyTokens(tokenizer, 3))
    assert plain.repeats is None and weighted.input_ids == plain.input_ids and weighted.labels == plain.labels
    targets = [i for i, label in enumerate(plain.labels) if label != kernels.IGNORE_INDEX]
    assert all(weighted.repeats[i] == 1 for i in range(len(plain.labels)) if i not in targets)  # prompt: once
    first = targets[0]
    assert all(weighted.repeats[i] == 3 for i in targets[:KEY_OPENING_TOKENS])
    later = {i for i in targets if i >= first + KEY_OPENING_TOKENS and weighted.repeats[i] == 3}
    texts = [tokenizer.decode([plain.input_ids[i]]) for i in sorted(later)]
    assert texts and all(any(ch.isdigit() for ch in t) for t in texts)
    assert "".join(texts).replace(" ", "") == "32000"  # the digits of "3个工作日" and "2000元"
    rest = [i for i in targets if i >= first + KEY_OPENING_TOKENS and i not in later]
    assert rest and all(weighted.repeats[i] == 1 for i in rest)
    assert weighted.target_weight == plain.num_target_tokens + 2 * (KEY_OPENING_TOKENS + len(later))
    # the dataset: training rows weighted, 1 = off
    assert encode_dataset([CONV], tokenizer, 512, key_token_weight=1).examples[0].repeats is None
    assert encode_dataset([CONV], tokenizer, 512, key_token_weight=2).examples[0].repeats is not None


def _both(loss_fn, model, batch):
    model.zero_grad()
    loss, count = loss_fn(model, batch)
    loss.backward()
    return loss.detach(), count, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_every_loss_path_counts_a_key_target_repeats_times():
    """Reference: the plain path's loss over all targets plus its loss over the key targets alone (the
    same targets counted once more), and its gradients = each path's with repeats 2 on the key tokens
    (the CE's gradient rows are weighted too, not only its value)."""
    model, batch = _random_lora_model()
    gen = torch.Generator().manual_seed(1)
    repeats = torch.randint(1, 3, batch["labels"].shape, generator=gen)
    key_only = batch["labels"].clone()
    key_only[repeats == 1] = kernels.IGNORE_INDEX

    def reference(model, batch):
        total, n = causal_lm_loss(model, {k: v for k, v in batch.items() if k != "repeats"})
        extra, n_extra = causal_lm_loss(model, {**batch, "labels": key_only, "repeats": None})
        assert n_extra > 0
        return total + extra, n + n_extra

    weighted = {**batch, "repeats": repeats}
    want, want_n, want_grads = _both(reference, model, weighted)
    assert cpu_prefix.shared_batch(weighted) is not None  # the row really shares its template head
    paths = {"plain": causal_lm_loss, "fast": cpu.packed_loss, "shared head": cpu_prefix.packed_loss}
    for name, loss_fn in paths.items():
        loss, count, grads = _both(loss_fn, model, weighted)
        assert count == want_n, name
        assert loss.item() == pytest.approx(want.item(), rel=1e-4), name
        for key, g in want_grads.items():
            assert torch.allclose(grads[key], g, rtol=1e-3, atol=1e-6), (name, key)
    # the int8 LM head (cpu_int8.HEAD) weighs its rows the same, within int8 noise
    saved = dict(cpu_int8.HEAD)
    cpu_int8.HEAD.update(forward=True, backward=True)
    try:
        cpu_int8.enable(model)
        loss, count = cpu_int8.packed_loss(model, kernels.packed_batch(
            weighted["input_ids"], weighted["position_ids"], weighted["labels"], None, repeats))
        assert count == want_n and loss.item() == pytest.approx(want.item(), rel=2e-2)
    finally:
        cpu_int8.HEAD.update(saved)
        cpu_int8.disable(model)


def test_training_with_key_token_weight_changes_what_is_learnt(tmp_path, small_model_dir):
    from safetensors.torch import load_file

    data = write_rows(tmp_path / "faq.jsonl")
    weights = {}
    for weight in (1, 2):
        cfg = TrainConfig(data=str(data), base=small_model_dir, output_dir=str(tmp_path / f"k{weight}"), max_steps=3,
                          batch_tokens=256, max_length=256, learning_rate=5e-3, lora_r=4, lora_alpha=8,
                          dtype="fp32", key_token_weight=weight)
        result = train(cfg)
        weights[weight] = load_file(str(tmp_path / f"k{weight}" / "adapter_model.safetensors"))
        assert f"key_token_weight: {weight}" in (tmp_path / f"k{weight}" / "train_config.yaml").read_text()
        assert result.metrics["train_loss"] > 0
    assert any(not torch.equal(weights[1][k], weights[2][k]) for k in weights[1])
    with pytest.raises(ValueError, match="key_token_weight"):
        TrainConfig(key_token_weight=5)


MULTI = [{"role": "user", "content": "退款多久到账？"}, {"role": "assistant", "content": ANSWER},
         {"role": "user", "content": "那运费呢？"}, {"role": "assistant", "content": "运费不退。"}]


def test_question_tokens_are_targets_at_their_weight_and_nothing_else_changes(small_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(small_model_dir)
    keys = KeyTokens(tokenizer, 2)
    system = "你是客服。常被问到：退款多久到账？"  # quotes a question: only the user's own turn is learnt
    plain = encode_conversation(MULTI, tokenizer, system_prompt=system, key_tokens=keys)
    asked = encode_conversation(MULTI, tokenizer, system_prompt=system, key_tokens=keys, question_weight=0.3)
    assert asked.input_ids == plain.input_ids  # the same tokens: only labels and weights differ
    new = [i for i, (a, b) in enumerate(zip(asked.labels, plain.labels, strict=True)) if a != b]
    assert all(plain.labels[i] == kernels.IGNORE_INDEX and asked.labels[i] == asked.input_ids[i] for i in new)
    assert all(asked.repeats[i] == 0.3 for i in new)
    # exactly the two questions' words: no system prompt, no role header, no end-of-turn token
    assert tokenizer.decode([asked.input_ids[i] for i in new]) == "退款多久到账？那运费呢？"
    first_user = tokenizer.decode(asked.input_ids[:new[0]])
    assert first_user.endswith("user\n") and "常被问到：退款多久到账？" in first_user
    answers = [i for i, label in enumerate(plain.labels) if label != kernels.IGNORE_INDEX]
    assert [asked.repeats[i] for i in answers] == [plain.repeats[i] for i in answers]
    assert asked.target_weight == pytest.approx(plain.target_weight + 0.3 * len(new))
    # off: the answers-only example as before; on without key tokens: weights still float per token
    assert encode_conversation(MULTI, tokenizer, question_weight=0.0).repeats is None
    only = encode_dataset([MULTI], tokenizer, 512, question_weight=0.5).examples[0]
    assert sorted(set(only.repeats)) == [0.5, 1]
    # an empty user turn has nothing to learn, and does not shift the next question's span
    empty = [{"role": "user", "content": ""}, {"role": "assistant", "content": "好。"}, *MULTI]
    got = encode_conversation(empty, tokenizer, question_weight=0.3)
    marked = [got.input_ids[i] for i, r in enumerate(got.repeats) if r == 0.3]
    assert tokenizer.decode(marked) == "退款多久到账？那运费呢？"


def test_every_loss_path_weighs_fractional_targets_alike():
    """Question tokens at 0.3, answers at 1 or 2: each path's loss and gradients equal the plain path's
    loss over the answers plus 0.3 × its loss over the questions (counted 1 and 0.3 a target)."""
    model, batch = _random_lora_model()
    gen = torch.Generator().manual_seed(2)
    targets = batch["labels"] != kernels.IGNORE_INDEX
    question = targets & (torch.rand(batch["labels"].shape, generator=gen) < 0.3)
    weights = torch.where(question, torch.tensor(0.3), torch.tensor(1.0))
    answer_labels = batch["labels"].masked_fill(question, kernels.IGNORE_INDEX)
    question_labels = batch["labels"].masked_fill(~question, kernels.IGNORE_INDEX)

    def reference(model, batch):
        answers, n_answers = causal_lm_loss(model, {**batch, "labels": answer_labels, "repeats": None})
        questions, n_questions = causal_lm_loss(model, {**batch, "labels": question_labels, "repeats": None})
        assert n_questions > 0
        return answers + 0.3 * questions, n_answers + 0.3 * n_questions

    weighted = {**batch, "repeats": weights}
    want, want_n, want_grads = _both(reference, model, weighted)
    assert cpu_prefix.shared_batch(weighted) is not None
    for name, loss_fn in {"plain": causal_lm_loss, "fast": cpu.packed_loss,
                          "shared head": cpu_prefix.packed_loss}.items():
        loss, count, grads = _both(loss_fn, model, weighted)
        assert count == pytest.approx(want_n), name
        assert loss.item() == pytest.approx(want.item(), rel=1e-4), name
        for key, g in want_grads.items():
            assert torch.allclose(grads[key], g, rtol=1e-3, atol=1e-6), (name, key)


def test_training_with_question_tokens_changes_what_is_learnt(tmp_path, small_model_dir):
    from safetensors.torch import load_file

    data = write_rows(tmp_path / "faq.jsonl")
    weights = {}
    for weight in (0.0, 0.3):
        out = tmp_path / f"q{weight}"
        cfg = TrainConfig(data=str(data), base=small_model_dir, output_dir=str(out), max_steps=3, batch_tokens=256,
                          max_length=256, learning_rate=5e-3, lora_r=4, lora_alpha=8, dtype="fp32",
                          key_token_weight=2, question_loss_weight=weight)
        assert train(cfg).metrics["train_loss"] > 0
        weights[weight] = load_file(str(out / "adapter_model.safetensors"))
        assert f"question_loss_weight: {weight}" in (out / "train_config.yaml").read_text()
    assert any(not torch.equal(weights[0.0][k], weights[0.3][k]) for k in weights[0.0])
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="question_loss_weight"):
            TrainConfig(question_loss_weight=bad)
