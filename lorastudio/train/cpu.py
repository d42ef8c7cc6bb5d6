"""The CPU fast path: what the trainer switches on when it trains on the CPU (`trainer.device_setup`).

Measured on the default model (docs/ENGINE.md, "Measured"), the plain PEFT + autocast loop spent
about a third of its time outside the GEMMs: every LoRA linear cast its input bf16 → fp32 (PEFT) →
bf16 (autocast) and its A/B weights fp32 → bf16, then multiplied by the scaling and added in separate
passes, forward and backward; the packed row's attention ran over the whole L×L block-diagonal mask;
the cross-entropy kept two fp32 copies of the (targets × 151k) logits. Here, with the same numerics:

- base weights stay bf16 and **autocast is off**; each vanilla LoRA linear is one autograd function:
  `y = x Wᵀ + s·(x Aᵀ) Bᵀ` with the low-rank update added by the GEMM's epilogue (`addmm_`), A and B
  cast from their fp32 masters once per call — the compute dtypes autocast used, without its copies.
  The optimizer (AdamW) still holds fp32 LoRA weights and fp32 state. LoRA dropout is supported.
- **per-document attention**: each document of the packed row (`position_ids` restart at 0) is
  attended to on its own, causal, so no L×L mask exists and only the diagonal blocks are computed
  (8 rows of ~80 tokens: ~8× less attention work); documents ≤ `SMALL_DOC` tokens through fp32
  matmul + softmax (faster than the CPU flash kernel's backward at that size), longer ones through
  `scaled_dot_product_attention(is_causal=True)`.
- the LM head + cross-entropy over target positions only, one fp32 log-softmax, the gradient
  computed in the same pass (no second fp32 copy of the targets × 151k logits, no autograd graph).
- `torch.set_num_threads` = the physical cores this process may use (hyper-threads slow GEMMs).

`LORASTUDIO_CPU_FAST=0` turns all of it off (the plain PEFT + autocast loop, for comparison).
"""

from __future__ import annotations

import os
from typing import Any

from lorastudio.train.lora_patch import patch_lora_linears

ATTN_IMPLEMENTATION = "lorastudio_cpu_docs"


def enabled() -> bool:
    return os.environ.get("LORASTUDIO_CPU_FAST", "1") != "0"


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (hyper-thread siblings counted once).
    The one count used everywhere: `lorastudio.hardware.physical_cores`."""
    from lorastudio import hardware

    return hardware.physical_cores()


# ------------------------------------------------------------------------------------------------
# LoRA linear as one autograd function
# ------------------------------------------------------------------------------------------------
def _lora_linear_fn() -> type:
    import torch

    class LoraLinearFn(torch.autograd.Function):
        """y = x Wᵀ + b + s·(x' Aᵀ) Bᵀ, W frozen, x' = dropout(x) or x (``xd`` None)."""

        @staticmethod
        def forward(ctx, x, xd, weight, bias, lora_a, lora_b, scaling):
            x2 = x.reshape(-1, x.shape[-1])
            xd2 = x2 if xd is None else xd.reshape(-1, xd.shape[-1])
            a = lora_a.to(x.dtype)
            b = lora_b.to(x.dtype)
            xa = xd2 @ a.t()
            y = torch.addmm(bias, x2, weight.t()) if bias is not None else x2 @ weight.t()
            y.addmm_(xa, b.t(), alpha=scaling)
            ctx.save_for_backward(x if xd is None else xd, weight, a, b, xa)
            ctx.scaling = scaling
            ctx.dropout = xd is not None
            ctx.param_dtypes = (lora_a.dtype, lora_b.dtype)
            return y.view(*x.shape[:-1], y.shape[-1])

        @staticmethod
        def backward(ctx, grad_out):
            xl, weight, a, b, xa = ctx.saved_tensors
            s = ctx.scaling
            g = grad_out.reshape(-1, grad_out.shape[-1])
            xl2 = xl.reshape(-1, xl.shape[-1])
            gxa = torch.mm(g, b)  # (m, r), unscaled
            grad_x = grad_xd = None
            if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
                base = g @ weight
                if ctx.dropout:
                    grad_x = base.view(*grad_out.shape[:-1], -1) if ctx.needs_input_grad[0] else None
                    grad_xd = torch.mm(gxa, a).mul_(s).view(*grad_out.shape[:-1], -1)
                else:
                    grad_x = base.addmm_(gxa, a, alpha=s).view(*grad_out.shape[:-1], -1)
            grad_a = torch.mm(gxa.t(), xl2).mul_(s).to(ctx.param_dtypes[0]) if ctx.needs_input_grad[4] else None
            grad_b = torch.mm(g.t(), xa).mul_(s).to(ctx.param_dtypes[1]) if ctx.needs_input_grad[5] else None
            return grad_x, grad_xd, None, None, grad_a, grad_b, None

    return LoraLinearFn


_LORA_FN: Any = None


def _fused_lora_forward(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    if self.disable_adapters or self.merged or args or kwargs or len(self.active_adapters) != 1:
        return self._lorastudio_original_forward(x, *args, **kwargs)
    name = self.active_adapters[0]
    if name not in self.lora_A:
        return self._lorastudio_original_forward(x, *args, **kwargs)
    import torch

    dropout = self.lora_dropout[name]
    xd = None if isinstance(dropout, torch.nn.Identity) else dropout(x)
    base = self.base_layer
    return _LORA_FN.apply(x, xd, base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight,
                          float(self.scaling[name]))


def fuse_lora_linears(model: Any) -> int:
    """Patch every vanilla PEFT LoRA linear (plain nn.Linear base, no DoRA/variants; LoRA dropout is
    fine) to the fused function. Returns how many were patched; any other keeps PEFT's own forward."""
    global _LORA_FN
    if _LORA_FN is None:
        _LORA_FN = _lora_linear_fn()
    return patch_lora_linears(model, _fused_lora_forward, allow_dropout=True)


# ------------------------------------------------------------------------------------------------
# Per-document attention for one packed row
# ------------------------------------------------------------------------------------------------
SMALL_DOC = 256
"""Documents up to this many tokens use `_small_doc_attention` (plain fp32 matmuls + softmax): on a
2-core CPU its forward+backward is ~2× faster than the flash kernel's for ~80-token documents, and its
(H × L × L) fp32 scores stay small."""


def _small_doc_attention(q: Any, k: Any, v: Any, scale: float | None) -> Any:
    """Causal attention of one short document, fp32 scores/softmax; query heads grouped onto their
    key/value head (GQA, the head order of transformers' repeat_kv). (1, H, L, D) → (1, L, H, D)."""
    import torch

    _, h, length, d = q.shape
    kv = k.shape[1]
    qg = q.reshape(1, kv, h // kv, length, d).float()
    scores = qg @ k.unsqueeze(2).float().transpose(-1, -2)
    scores = scores.mul_(scale if scale is not None else d ** -0.5)
    mask = torch.ones(length, length, dtype=torch.bool, device=q.device).triu_(1)
    probs = scores.masked_fill_(mask, float("-inf")).softmax(-1)
    out = (probs @ v.unsqueeze(2).float()).to(q.dtype)
    return out.reshape(1, h, length, d).transpose(1, 2)


def doc_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                  scaling: float | None = None, dropout: float = 0.0, **kwargs: Any) -> tuple[Any, None]:
    """A transformers attention function: causal attention within each document of one packed row.

    query (1, H, T, D), key/value (1, Hkv, T, D); boundaries from `cu_seq_lens_q` (a list of ints).
    Returns (1, T, H, D) like transformers' sdpa function.
    """
    import torch
    import torch.nn.functional as F

    cu = kwargs.get("cu_seq_lens_q")
    if cu is None or query.shape[0] != 1:
        raise ValueError("lorastudio_cpu_docs attention takes one packed row with cu_seq_lens_q")
    gqa = key.shape[1] != query.shape[1]
    p_drop = dropout if module.training else 0.0
    outs = []
    for start, end in zip(cu[:-1], cu[1:], strict=True):
        q, k, v = query[:, :, start:end], key[:, :, start:end], value[:, :, start:end]
        if end - start <= SMALL_DOC and not p_drop:
            outs.append(_small_doc_attention(q, k, v, scaling))
            continue
        outs.append(F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p_drop, scale=scaling,
                                                   enable_gqa=gqa).transpose(1, 2))
    return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)), None


def register_attention() -> str:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, doc_attention)
    return ATTN_IMPLEMENTATION


# ------------------------------------------------------------------------------------------------
# LM head + cross-entropy on target positions, gradient computed in the forward
# ------------------------------------------------------------------------------------------------
def _head_ce_fn() -> type:
    import torch

    class HeadCrossEntropy(torch.autograd.Function):
        """Sum over rows of CE(h Wᵀ, target), W frozen; logits in fp32 (as `.float()` + cross_entropy).

        With grad enabled the forward also computes d(sum)/dh = (softmax − one-hot) W (a bf16 GEMM, as
        autograd's would be) and keeps it in fp32; backward multiplies by the incoming scalar (the
        trainer's 1/targets) in fp32 and casts once. Against autograd through `cross_entropy(logits
        .float())` that is one extra round-to-nearest of the bf16 product (≤ 2⁻⁹ relative), exact in fp32.
        """

        @staticmethod
        def forward(ctx, hidden, weight, targets, chunk):
            total = torch.zeros((), dtype=torch.float32)
            need = ctx.needs_input_grad[0]
            grad_h = torch.empty(hidden.shape, dtype=torch.float32) if need else None
            for start in range(0, hidden.shape[0], chunk):
                h = hidden[start:start + chunk]
                t = targets[start:start + chunk]
                logp = torch.log_softmax((h @ weight.t()).float(), dim=-1)
                total -= logp.gather(1, t[:, None]).sum()
                if need:
                    probs = logp.exp_()
                    probs[torch.arange(t.numel()), t] -= 1.0
                    grad_h[start:start + chunk] = probs.to(hidden.dtype) @ weight
            ctx.save_for_backward(grad_h)
            ctx.dtype = hidden.dtype
            return total

        @staticmethod
        def backward(ctx, grad_total):
            (grad_h,) = ctx.saved_tensors
            return (grad_h * grad_total).to(ctx.dtype), None, None, None

    return HeadCrossEntropy


_CE_FN: Any = None


def head_cross_entropy(hidden: Any, weight: Any, targets: Any, chunk: int = 1024) -> Any:
    global _CE_FN
    if _CE_FN is None:
        _CE_FN = _head_ce_fn()
    return _CE_FN.apply(hidden, weight, targets, int(chunk))


# ------------------------------------------------------------------------------------------------
# The loss and the trainer's hook
# ------------------------------------------------------------------------------------------------
def enable(model: Any) -> dict[str, Any]:
    """Switch a PEFT-wrapped causal LM to the CPU fast path (idempotent)."""
    info = getattr(model, "_lorastudio_cpu_fast", None)
    if info is None:
        name = register_attention()
        try:
            model.set_attn_implementation(name)
        except Exception:  # older/newer transformers: the config field is what the layers read
            model.config._attn_implementation = name
        info = {"attention": name, "fused_lora": fuse_lora_linears(model)}
        model._lorastudio_cpu_fast = info
    return info


def packed_loss(model: Any, batch: dict[str, Any]) -> tuple[Any, int]:
    """(summed next-token CE over target tokens, number of targets) of one packed row — the same
    quantity as `trainer.causal_lm_loss`, on the fast path."""
    import torch

    enable(model)
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    ids, pos = batch["input_ids"], batch["position_ids"]
    lengths = list(batch.get("lengths") or [])
    if sum(lengths) != ids.shape[-1]:  # derive boundaries from restarting positions
        starts = (pos[0] == 0).nonzero().flatten().tolist()
        if not starts or starts[0] != 0:
            starts = [0, *starts]
        lengths = [b - a for a, b in zip(starts, [*starts[1:], ids.shape[-1]], strict=True)]
    cu = [0]
    for length in lengths:
        cu.append(cu[-1] + length)
    hidden = causal_lm.get_decoder()(
        input_ids=ids, position_ids=pos, use_cache=False, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
        max_length_q=max(lengths), max_length_k=max(lengths),
        attention_mask={"full_attention": None, "sliding_attention": None}).last_hidden_state[0]
    labels = batch["labels"][0]
    targets = labels[1:]
    keep = (targets != -100).nonzero().flatten()
    h = hidden[:-1].index_select(0, keep)
    head = causal_lm.get_output_embeddings()
    if getattr(head, "bias", None) is not None or not isinstance(head, torch.nn.Linear):
        import torch.nn.functional as F

        return F.cross_entropy(head(h).float(), targets[keep], reduction="sum"), int(keep.numel())
    return head_cross_entropy(h, head.weight, targets.index_select(0, keep)), int(keep.numel())


def customize(cfg: Any, setup: Any) -> Any:
    """The trainer's CPU hook: threads, no autocast (bf16 weights, fused LoRA), the fast loss."""
    import torch

    if not enabled():
        return setup
    cores = physical_cores()
    if torch.get_num_threads() > cores:
        torch.set_num_threads(cores)
    setup.autocast = False
    previous = setup.prepare_model

    def prepare_model(model: Any) -> Any:
        model = (previous(model) or model) if previous else model
        # `trainer.causal_lm_loss` (still the setup's loss_fn) hands over to `packed_loss`, which fuses the
        # LoRA linears on its first call, once PEFT has wrapped the model (the attribute is found through
        # PEFT's wrappers).
        model._lorastudio_loss = packed_loss
        return model

    setup.prepare_model = prepare_model
    setup.notes = [*getattr(setup, "notes", []),
                   f"CPU fast path: {torch.get_num_threads()} threads, fused LoRA, per-document attention"]
    return setup
