"""The CPU fast path (lorastudio/train/cpu.py) computes the same loss and LoRA gradients as the plain
one-example-at-a-time HF forward, and its fused LoRA linear equals PEFT's, dropout included."""

from __future__ import annotations

import pytest
import torch
from test_train_packing import CONVERSATIONS, _grads, _lora_model, _reference_loss

from lorastudio.train import cpu
from lorastudio.train.tokenize import collate_packed, encode_conversation


@pytest.mark.parametrize("small_doc", [256, 0])  # short documents: fp32 matmul attention; else sdpa
def test_fast_packed_loss_equals_one_by_one(small_model_dir, small_doc, monkeypatch):
    monkeypatch.setattr(cpu, "SMALL_DOC", small_doc)
    model, tokenizer = _lora_model(small_model_dir, "sdpa")
    examples = [encode_conversation(c, tokenizer) for c in CONVERSATIONS]

    model.zero_grad()
    unpacked = sum(_reference_loss(model, e) for e in examples)
    (unpacked / 7).backward()
    reference = _grads(model)

    model.zero_grad()
    packed, count = cpu.packed_loss(model, collate_packed(examples))
    (packed / 7).backward()  # a loss scale, as the trainer's 1/targets: applied in the custom backward
    fast = _grads(model)

    assert model._lorastudio_fast_path.fused_lora > 0
    assert model._lorastudio_fast_path.attention == cpu.ATTN_IMPLEMENTATION
    assert count == sum(e.num_target_tokens for e in examples)
    torch.testing.assert_close(packed, unpacked, rtol=1e-5, atol=1e-4)
    assert reference.keys() == fast.keys() and len(fast) > 0
    for name, grad in reference.items():
        err = (fast[name] - grad).abs().max().item()
        assert err <= 1e-5 * grad.abs().max().item() + 1e-7, (name, err)

    batch = collate_packed(examples)
    del batch["lengths"]  # boundaries found from restarting positions instead
    with torch.no_grad():
        torch.testing.assert_close(cpu.packed_loss(model, batch)[0], unpacked.detach(), rtol=1e-5, atol=1e-4)


def test_fused_lora_linear_with_dropout_equals_peft():
    from peft import LoraConfig, get_peft_model

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(32, 48)

        def forward(self, x):
            return self.proj(x)

    torch.manual_seed(0)
    model = get_peft_model(Net(), LoraConfig(r=4, lora_alpha=12, lora_dropout=0.3, target_modules=["proj"],
                                             init_lora_weights=False))
    model.train()
    x = torch.randn(2, 5, 32, requires_grad=True)
    weights = torch.randn(48)

    def run():
        model.zero_grad()
        x.grad = None
        torch.manual_seed(1)  # the same dropout mask both times
        y = model(x)
        (y * weights).sum().backward()
        return y.detach(), x.grad.clone(), _grads(model)

    y0, gx0, g0 = run()
    assert cpu.fuse_lora_linears(model) == 1
    y1, gx1, g1 = run()
    torch.testing.assert_close(y1, y0)
    torch.testing.assert_close(gx1, gx0)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-5, atol=1e-6)


def test_cpu_and_cuda_kernel_choices_give_the_same_loss_and_gradients(small_model_dir):
    """Both device modules run the same kernels (lorastudio.train.kernels) and differ only in their
    choices: CPU per-document attention + 1,024-row CE chunks, no elementwise patches; the CUDA path as
    it runs on a machine without varlen (sdpa with transformers' block mask, eager norms/SwiGLU/rotary
    patched in, 2,048-row chunks). Same packed row, same loss and LoRA gradients."""
    from lorastudio.train import gpu

    model, tokenizer = _lora_model(small_model_dir, "sdpa")
    batch = collate_packed([encode_conversation(c, tokenizer) for c in CONVERSATIONS])
    model.zero_grad()
    cpu_sum, cpu_n = cpu.packed_loss(model, batch)
    (cpu_sum / cpu_n).backward()
    on_cpu = _grads(model)
    assert model._lorastudio_fast_path.per_document and model._lorastudio_fast_path.ce_chunk == cpu.CE_CHUNK

    model, _ = _lora_model(small_model_dir, "sdpa")
    fp = gpu.enable_fast_path(model, attention="auto", compile=False)
    assert fp.attention == "sdpa" and not fp.per_document and fp.elementwise["rms_norm"] > 0
    model.zero_grad()
    cuda_mean = gpu.packed_lm_loss(model, gpu.batch_from_device(batch))
    cuda_mean.backward()
    on_cuda = _grads(model)

    torch.testing.assert_close(cuda_mean, cpu_sum.detach() / cpu_n, rtol=1e-5, atol=1e-6)
    assert on_cpu.keys() == on_cuda.keys() and len(on_cpu) > 0
    for name, grad in on_cpu.items():
        err = (on_cuda[name] - grad).abs().max().item()
        assert err <= 1e-5 * grad.abs().max().item() + 1e-7, (name, err)
