"""The fp32 CPU speed levers of issue 13 (lorastudio/train/cpu_prefix.py, cpu_int8.py) on a tiny model:
the shared template head is exact, int8 stays within int8 noise of fp32, and the switches really
change the path."""

from __future__ import annotations

import pytest
import torch
from test_train_packing import CONVERSATIONS, _grads, _lora_model

from lorastudio.train import cpu, cpu_int8, cpu_prefix, kernels
from lorastudio.train.tokenize import collate_packed, encode_conversation

# No system message: Qwen-style templates then add the same default system prompt to each.
SHARED = [CONVERSATIONS[0], CONVERSATIONS[1],
          [{"role": "user", "content": "请问退货需要多久？"}, {"role": "assistant", "content": "工作日9点到18点。"}],
          [{"role": "user", "content": "Hello world, how are you today?"},
           {"role": "assistant", "content": "The quick brown fox."}]]


def _examples(tokenizer, conversations=SHARED):
    return [encode_conversation(c, tokenizer) for c in conversations]


def _random_lora_model(seed: int = 0):
    """A 2-layer Qwen2 (hidden 128, transformers' default init) with the default LoRA (r16 α32 on the
    MLP linears, B random so that A has gradients), and a packed row of 6 examples sharing a 24-token
    head (as the chat template's), ~50 % targets."""
    import transformers
    from peft import LoraConfig, get_peft_model

    from lorastudio.train.tokenize import Example

    torch.manual_seed(seed)
    config = transformers.Qwen2Config(hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=1000,
                                      max_position_embeddings=512, tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    model = get_peft_model(transformers.Qwen2ForCausalLM(config),
                           LoraConfig(r=16, lora_alpha=32, target_modules=["gate_proj", "up_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    gen = torch.Generator().manual_seed(seed)
    head = torch.randint(0, 1000, (24,), generator=gen).tolist()
    examples = []
    for n in (60, 75, 90, 70, 85, 80):
        ids = head + torch.randint(0, 1000, (n - 24,), generator=gen).tolist()
        examples.append(Example(ids, [kernels.IGNORE_INDEX] * (n // 2) + ids[n // 2:]))
    return model, collate_packed(examples)


def _loss_and_grads(model, loss_fn, batch, scale=7.0):
    model.zero_grad()
    loss, count = loss_fn(model, batch)
    (loss / scale).backward()
    return loss.detach(), count, _grads(model)


@pytest.mark.parametrize("small_doc", [256, 0])  # fp32 matmul + softmax, or sdpa with a mask
def test_shared_prefix_equals_the_packed_row(small_model_dir, small_doc, monkeypatch):
    monkeypatch.setattr(cpu_prefix, "SMALL_DOC", small_doc)
    model, tokenizer = _lora_model(small_model_dir, "sdpa")
    batch = collate_packed(_examples(tokenizer))
    ref_loss, ref_count, ref = _loss_and_grads(model, cpu.packed_loss, batch)

    shared = cpu_prefix.shared_batch(batch)
    assert shared is not None and shared["prefix"] >= cpu_prefix.MIN_PREFIX
    # the head once instead of 4 times
    assert shared["input_ids"].shape[-1] == batch["input_ids"].shape[-1] - 3 * shared["prefix"]
    loss, count, fast = _loss_and_grads(model, cpu_prefix.packed_loss, batch)
    assert cpu_prefix.enabled_on(model)
    assert count == ref_count
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-4)
    assert ref.keys() == fast.keys() and len(fast) > 0
    for name, grad in ref.items():
        assert grad.abs().sum() > 0, name
        err = (fast[name] - grad).abs().max().item()
        assert err <= 1e-5 * grad.abs().max().item() + 1e-7, (name, err)
    # a row without a head worth sharing goes through the per-document attention unchanged, with the
    # prefix attention installed (here: one example has its own system prompt; the common head is
    # then "<|im_start|>system\n…", a few tokens)
    own_system = [{"role": "system", "content": "Answer the question in one sentence."}, *SHARED[2]]
    other = collate_packed(_examples(tokenizer, [SHARED[0], own_system]))
    monkeypatch.setattr(cpu_prefix, "MIN_PREFIX", 12)
    assert cpu_prefix.shared_batch(other) is None
    ref_other = _loss_and_grads(model, kernels.packed_loss, other)
    got_other = _loss_and_grads(model, cpu_prefix.packed_loss, other)
    assert torch.equal(ref_other[0], got_other[0])


def test_shared_prefix_rules():
    ignore = kernels.IGNORE_INDEX
    head = list(range(100, 112))  # 12 shared tokens
    docs = [head + [1, 2, 3], head + [4, 5]]
    labels = [[ignore] * 13 + [2, 3], [ignore] * 13 + [5]]
    assert cpu_prefix.shared_prefix(docs, labels) == 12
    assert cpu_prefix.shared_prefix(docs[:1], labels[:1]) == 0  # one example: nothing to share
    # a target inside the head (token 6 is a label): the head stops before the position predicting it
    labels_in = [[ignore] * 6 + [106] + [ignore] * 6 + [2, 3], labels[1]]
    assert cpu_prefix.shared_prefix(docs, labels_in) == 0  # 5 < MIN_PREFIX
    # each example keeps a token after the head
    assert cpu_prefix.shared_prefix([head, head + [1]], [[ignore] * 12, [ignore] * 12 + [1]]) == 11


def test_int8_stays_within_int8_noise_and_the_switch_changes_the_path(monkeypatch):
    """Tolerances: one int8 GEMM here (7-bit per-token activations, 8-bit per-channel weights, the
    largest input channels in fp32) has ~1–2 % relative error (bench/cpu_speed.py kernels), random
    from element to element; through 2 layers that moves the loss by well under 1 % and leaves the
    LoRA gradient a cosine > 0.99 to fp32 (0.9995 measured). Bit-identical again after `disable`."""
    model, batch = _random_lora_model()
    ref_loss, _, ref = _loss_and_grads(model, cpu.packed_loss, batch)

    calls = []
    real = cpu_int8._linear_dynamic

    def counting(*args):
        calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(cpu_int8, "_linear_dynamic", counting)
    counts = cpu_int8.enable(model)
    assert counts == {"lora": 6, "linear": 8}  # 2 layers: gate/up/down with LoRA, q/k/v/o without
    loss, _, got = _loss_and_grads(model, cpu.packed_loss, batch)
    # the forwards of gate/up_proj (cpu_int8.FORWARD) in both layers; the input gradients of layer 1's
    # seven linears and of layer 0's down_proj (below it nothing is trainable: autograd asks for none)
    assert cpu_int8.FORWARD == frozenset({"gate_proj", "up_proj", "w1", "w3"}) and cpu_int8.BACKWARD is None
    assert len(calls) == 4 + 8
    assert not torch.equal(loss, ref_loss)
    assert abs(loss.item() - ref_loss.item()) < 1e-2 * abs(ref_loss.item())
    a = torch.cat([ref[k].flatten() for k in ref])
    b = torch.cat([got[k].flatten() for k in ref])
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.99

    cpu_int8.disable(model)
    calls.clear()
    loss2, _, again = _loss_and_grads(model, cpu.packed_loss, batch)
    assert not calls and torch.equal(loss2, ref_loss)
    assert all(torch.equal(again[k], ref[k]) for k in ref)


def test_int8_head_forward_runs_the_logits_in_int8_and_the_gradient_in_fp32(monkeypatch):
    """`cpu_int8.HEAD["forward"]` (off by default; session 8 measured it: loss 3e-4 relative, hidden-state
    gradient cosine 0.9999 on the real model, a few % faster) sends the frozen LM head's logits GEMM through
    int8 while its gradient GEMM stays fp32; off, the head is fp32 and the layers' int8 products unchanged."""
    assert cpu_int8.HEAD == {"forward": False, "backward": False}
    monkeypatch.setitem(cpu_int8.HEAD, "forward", True)
    model, batch = _random_lora_model()
    ref_loss, _, ref = _loss_and_grads(model, kernels.packed_loss, batch)
    cpu_int8.enable(model)
    vocab = model.get_output_embeddings().weight.shape[0]
    shapes = []
    real = cpu_int8._linear_dynamic

    def counting(a2, packed, reduce):
        out = real(a2, packed, reduce)
        shapes.append(out.shape[-1])
        return out

    monkeypatch.setattr(cpu_int8, "_linear_dynamic", counting)
    loss, _, got = _loss_and_grads(model, cpu_int8.packed_loss, batch)
    assert shapes.count(vocab) == 1  # one chunk of targets: its logits once, in int8; no int8 gradient GEMM
    assert abs(loss.item() - ref_loss.item()) < 1e-2 * abs(ref_loss.item())
    a = torch.cat([ref[k].flatten() for k in ref])
    b = torch.cat([got[k].flatten() for k in ref])
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.99
    shapes.clear()
    monkeypatch.setitem(cpu_int8.HEAD, "forward", False)
    _loss_and_grads(model, cpu_int8.packed_loss, batch)
    assert vocab not in shapes and len(shapes) > 0  # the layers' int8 products as before, the head fp32
    cpu_int8.disable(model)


def test_int8_is_a_function_of_weights_and_batch(monkeypatch):
    """No state calibrated on whichever batch came first: a resumed run or another rank computes the
    same numbers for the same row."""
    model, batch = _random_lora_model()
    _, other = _random_lora_model(seed=1)
    cpu_int8.enable(model)
    first, _, g1 = _loss_and_grads(model, cpu.packed_loss, batch)
    cpu_int8.disable(model)
    cpu_int8.enable(model)
    _loss_and_grads(model, cpu.packed_loss, other)  # another row meets the weights first
    second, _, g2 = _loss_and_grads(model, cpu.packed_loss, batch)
    assert torch.equal(first, second)
    assert all(torch.equal(g1[k], g2[k]) for k in g1)


def test_int8_leaves_trainable_or_non_fp32_linears_alone(small_model_dir):
    model, tokenizer = _lora_model(small_model_dir, "sdpa")
    batch = collate_packed(_examples(tokenizer))
    for p in model.parameters():  # everything trainable: no frozen W to quantize
        p.requires_grad_(True)
    with torch.no_grad():
        ref_loss, _ = cpu.packed_loss(model, batch)
        assert sum(cpu_int8.enable(model).values()) > 0
        loss, _ = cpu.packed_loss(model, batch)
    assert torch.equal(loss, ref_loss)


@pytest.mark.parametrize("env,min_hidden,expect", [
    ({}, 512, (False, True)),  # the tiny model (hidden 64) is below INT8_MIN_HIDDEN: exact fp32
    ({}, 32, (True, True)),  # a model big enough for int8 to gain gets it by default
    ({"LORASTUDIO_CPU_INT8": "1"}, 512, (True, True)),  # forced on whatever the size
    ({"LORASTUDIO_CPU_INT8": "0"}, 32, (False, True)),
    ({"LORASTUDIO_CPU_PREFIX": "0"}, 512, (False, False)),
    ({"LORASTUDIO_CPU_INT8": "1", "LORASTUDIO_CPU_PREFIX": "0"}, 512, (True, False))])
def test_customize_switches(small_model_dir, monkeypatch, env, min_hidden, expect):
    """`cpu.customize` turns the shared head on for an fp32 run unless switched off, int8 by default
    for models with a hidden size ≥ INT8_MIN_HIDDEN (1.32× on the default model, docs/BENCHMARKS.md)
    unless switched off, and for any size when forced; `cpu.packed_loss` then runs them (and nothing
    else does without customize)."""
    from lorastudio.train.config import TrainConfig
    from lorastudio.train.device import device_setup

    for key in ("LORASTUDIO_CPU_INT8", "LORASTUDIO_CPU_PREFIX", "LORASTUDIO_CPU_FAST"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(cpu_int8, "available", lambda: True)
    monkeypatch.setattr(cpu, "INT8_MIN_HIDDEN", min_hidden)
    setup = device_setup(TrainConfig(data="x.jsonl", base="tiny-random", output_dir="out", device="cpu", dtype="fp32"))
    model, tokenizer = _lora_model(small_model_dir, "sdpa")
    setup.prepare_model(model.get_base_model())
    if not env.get("LORASTUDIO_CPU_INT8"):  # the default's choice needs the loaded model, and says which it made
        assert any(n.startswith("int8 base GEMMs") and ("on:" in n) == expect[0] for n in setup.notes)
    batch = collate_packed(_examples(tokenizer))
    with torch.no_grad():
        setup.loss_fn(model, batch)
    assert (cpu_int8.enabled_on(model) is not None, cpu_prefix.enabled_on(model)) == expect
    levers = cpu.levers(model)
    assert (levers["int8"], levers["prefix"]) == expect


def test_without_customize_the_fast_path_has_no_levers(small_model_dir, monkeypatch):
    for key in ("LORASTUDIO_CPU_INT8", "LORASTUDIO_CPU_PREFIX"):
        monkeypatch.delenv(key, raising=False)
    model, tokenizer = _lora_model(small_model_dir, "sdpa")
    with torch.no_grad():
        cpu.packed_loss(model, collate_packed(_examples(tokenizer)))
    assert cpu_int8.enabled_on(model) is None and not cpu_prefix.enabled_on(model)


def test_no_shared_head_under_gradient_checkpointing(small_model_dir, monkeypatch):
    """Checkpointing recomputes each layer in backward, after `packed_loss` returned and the row's
    layout is gone: the head would then be attended as a separate document. `customize` leaves the
    lever off and says so."""
    from lorastudio.train.config import TrainConfig
    from lorastudio.train.device import device_setup

    for key in ("LORASTUDIO_CPU_INT8", "LORASTUDIO_CPU_PREFIX", "LORASTUDIO_CPU_FAST"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("LORASTUDIO_CPU_PREFIX", "1")
    setup = device_setup(TrainConfig(data="x.jsonl", base="tiny-random", output_dir="out", device="cpu",
                                     dtype="fp32", gradient_checkpointing=True))
    assert any("gradient checkpointing" in n for n in setup.notes)
    model, tokenizer = _lora_model(small_model_dir, "sdpa")
    setup.prepare_model(model.get_base_model())
    assert cpu.levers(model)["prefix"] is False


def test_the_floor_counts_every_frozen_product_of_a_step_once():
    """bench/cpu_speed.py floor: forward through every decoder linear, input gradients above layer 0 (only
    down_proj's in layer 0), the LM head both ways for the target rows; FLOPs = 2 × rows × weights."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_cpu_speed",
                                                  Path(__file__).resolve().parents[1] / "bench" / "cpu_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    shape = {"hidden": 8, "intermediate": 20, "kv": 4, "layers": 3, "vocab": 50}
    m, t = 7, 5
    products = bench.floor_products(m, t, shape)
    flops = sum(2 * count * mm * n * k for _, count, mm, n, k in products)
    attention, mlp = 2 * 8 * 8 + 2 * 4 * 8, 3 * 8 * 20
    layer = attention + mlp
    forward = 2 * m * layer * 3
    backward = 2 * m * layer * 2 + 2 * m * 8 * 20  # layers 1-2 whole, layer 0 down_proj only
    head = 2 * 2 * t * 50 * 8
    assert flops == forward + backward + head
    assert {w for w, *_ in products if w.startswith("LM head")} == {"LM head logits", "LM head hidden gradient"}
    assert all(mm == t for w, _, mm, _, _ in products if w.startswith("LM head"))
