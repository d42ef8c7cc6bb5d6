"""The base model's distribution on replay rows' first answer tokens (`TrainConfig.replay_kl`,
lorastudio/train/distill.py): which tokens get it, what it holds, and that every loss path (the plain one,
the CPU fast path, the shared template head, the GPU's `packed_batch`) adds the same extra rows."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from test_cpu_speed import _random_lora_model
from train_fixtures import write_rows

from lorastudio.train import TrainConfig, cpu, cpu_prefix, kernels, train
from lorastudio.train.device import causal_lm_loss
from lorastudio.train.distill import TOP_K, answer_positions, attach_teacher
from lorastudio.train.tokenize import IGNORE_INDEX, collate_packed, encode_dataset

REPLAY = [{"role": "user", "content": "为什么天空是蓝色的？"},
          {"role": "assistant", "content": "因为大气中的分子对短波长的蓝光散射更强，这叫瑞利散射。"}]


def _loss_and_grads(loss_fn, model, batch):
    model.zero_grad()
    loss, count = loss_fn(model, batch)
    loss.backward()
    return loss.detach(), count, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_every_loss_path_adds_the_soft_rows_at_their_weight():
    """Reference: the row's own loss (plain path, no extra rows) plus, for each extra row, its weight × the
    CE of its token at the position before its label, from the example's own unpacked forward."""
    model, batch = _random_lora_model()
    lengths = batch["lengths"]
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    gen = torch.Generator().manual_seed(3)
    soft = []  # (row position of a label, token, weight): 3 answer positions of examples 1 and 4, 4 tokens each
    for doc in (1, 4):
        for offset in (lengths[doc] // 2 + 2, lengths[doc] // 2 + 5, lengths[doc] - 1):
            for token in torch.randint(0, 1000, (4,), generator=gen).tolist():
                soft.append((starts[doc] + offset, token, float(torch.rand(1, generator=gen)) / 2))
    with_soft = {**batch, "soft_index": torch.tensor([s[0] for s in soft]),
                 "soft_ids": torch.tensor([s[1] for s in soft]),
                 "soft_weights": torch.tensor([s[2] for s in soft])}

    def reference(model, batch):
        own, n = causal_lm_loss(model, {k: v for k, v in batch.items() if not k.startswith("soft")})
        extra = 0.0
        for at, token, weight in soft:
            doc = max(i for i in range(len(starts)) if starts[i] <= at)
            ids = batch["input_ids"][:, starts[doc]:starts[doc] + lengths[doc]]
            logits = model(input_ids=ids).logits[0, at - starts[doc] - 1].float()
            extra = extra + weight * F.cross_entropy(logits[None], torch.tensor([token]))
        return own + extra, n + sum(s[2] for s in soft)

    want, want_n, want_grads = _loss_and_grads(reference, model, with_soft)
    plain, _ = causal_lm_loss(model, batch)  # without them, the row's own loss
    assert plain.item() < want.item()
    assert cpu_prefix.shared_batch(with_soft) is not None  # the row really shares its template head
    paths = {"plain": causal_lm_loss, "fast": cpu.packed_loss, "shared head": cpu_prefix.packed_loss,
             "packed_batch": kernels.packed_loss}
    for name, loss_fn in paths.items():
        loss, count, grads = _loss_and_grads(loss_fn, model, with_soft)
        assert count == pytest.approx(want_n), name
        assert loss.item() == pytest.approx(want.item(), rel=1e-4), name
        for key, g in want_grads.items():
            assert torch.allclose(grads[key], g, rtol=1e-3, atol=1e-6), (name, key)


def test_the_teacher_is_the_base_top_k_on_the_first_answer_tokens_of_replay_rows(small_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorastudio.data.types import Conversation, Message

    tokenizer = AutoTokenizer.from_pretrained(small_model_dir)
    base = AutoModelForCausalLM.from_pretrained(small_model_dir, dtype=torch.float32)
    replay = Conversation([Message(**m) for m in REPLAY], kind="replay")
    own = Conversation([Message(**m) for m in REPLAY])
    # questions as targets too: the teacher still starts at the answer
    examples = encode_dataset([own, replay], tokenizer, 512, question_weight=0.3, key_token_weight=2).examples
    assert [e.replay for e in examples] == [False, True]
    first = next(i for i in range(len(examples[1].labels) - 1, 0, -1) if examples[1].labels[i - 1] == IGNORE_INDEX)
    assert answer_positions(examples[1], 5) == list(range(first, first + 5))
    assert tokenizer.decode(examples[1].input_ids[first:]).startswith("因为大气")  # the answer, not the question
    with torch.no_grad():  # the base's own distributions, before LoRA exists
        logits = base(input_ids=torch.tensor([examples[1].input_ids])).logits[0].float()
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["gate_proj", "up_proj"]))
    model.train()
    assert attach_teacher(examples, model, weight=0.5, tokens=5) == 1
    assert model.training  # left as it was
    assert examples[0].soft is None
    soft = examples[1].soft
    assert len(soft) == 5 * TOP_K and sorted({at for at, _, _ in soft}) == answer_positions(examples[1], 5)
    for at in {at for at, _, _ in soft}:
        rows = [(token, w) for a, token, w in soft if a == at]
        assert sum(w for _, w in rows) == pytest.approx(0.5)
        assert [t for t, _ in rows] == logits[at - 1].topk(TOP_K).indices.tolist()
    # packed with another example, the rows move with their example
    batch = collate_packed(examples)
    assert batch["soft_index"].tolist() == [len(examples[0].input_ids) + at for at, _, _ in soft]
    assert attach_teacher(examples, model, weight=0.0, tokens=5) == 0


def test_training_with_replay_kl_changes_what_is_learnt(tmp_path, small_model_dir, monkeypatch):
    from safetensors.torch import load_file

    from lorastudio.train.replay import model_key, ordered_prompts

    monkeypatch.setenv("LORASTUDIO_HOME", str(tmp_path))
    cache = tmp_path / "replay" / f"{model_key(small_model_dir, small_model_dir)}.jsonl"
    cache.parent.mkdir(parents=True)
    cache.write_text("".join(json.dumps({"prompt": p, "answer": "好的，答案是：" + p[:12]}, ensure_ascii=False) + "\n"
                             for p in ordered_prompts()[:4]), encoding="utf-8")
    data = write_rows(tmp_path / "faq.jsonl")
    weights = {}
    for kl in (0.0, 1.0):
        out = tmp_path / f"kl{kl}"
        cfg = TrainConfig(data=str(data), base=small_model_dir, output_dir=str(out), max_steps=3, batch_tokens=256,
                          max_length=256, learning_rate=5e-3, lora_r=4, lora_alpha=8, dtype="fp32", replay_rows=4,
                          replay_kl=kl, replay_kl_tokens=4)
        events = []
        train(cfg, on_event=events.append)
        weights[kl] = load_file(str(out / "adapter_model.safetensors"))
        said = " ".join(str(e.get("message", "")) for e in events)
        assert ("4 rows carry the base model's distribution" in said) == bool(kl)
    assert any(not torch.equal(weights[0.0][k], weights[1.0][k]) for k in weights[0.0])
    with pytest.raises(ValueError, match="replay_kl"):
        TrainConfig(replay_kl=-1)
