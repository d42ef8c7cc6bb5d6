"""The training kernels of both fast paths, each defined once; the device modules only choose among them.

`lorastudio.train.cpu` (the CPU path) and `lorastudio.train.gpu` (the CUDA path) call `install(model,
…)` with their choices and then compute the loss with the same `packed_loss`:

| kernel | what | CPU chooses | CUDA chooses |
|---|---|---|---|
| `fuse_lora_linears` | each vanilla PEFT LoRA linear as one autograd function (`LoraLinearFn`) | with LoRA dropout | without (dropout layers keep PEFT's forward) |
| attention | per-document causal attention over one packed row | `doc_attention` (short documents: fp32 matmul + softmax; long: sdpa) | `varlen_attention` (flash, `cu_seqlens`), sdpa + block mask where missing |
| `fuse_elementwise` | RMSNorm, SwiGLU, rotary through `torch.compile` | no | yes (compiled for ≥ 1 B params) |
| `chunked_linear_cross_entropy` | LM head + CE over target rows only, gradient computed in the forward | 1,024 rows per chunk | rows from auto-fit's budget (`memory.ce_chunk_tokens`), or liger |

Numerics (the same on every device): LoRA `y = x Wᵀ + b + s·(x' Aᵀ) Bᵀ`, A/B cast from their fp32
masters to the activation dtype once per call, the scaling `s` applied by the GEMM epilogue (never
folded into B), in forward and backward; cross-entropy logits in fp32, one log-softmax per chunk, the
incoming loss scale (the trainer's 1/targets) applied in fp32 before the single cast back.

A packed row is one row of examples back to back, `position_ids` restarting at 0 per example, `labels`
unshifted (Hugging Face convention: the token id on assistant tokens, -100 elsewhere). `packed_batch`
derives its boundaries and shifted targets (position t predicts token t+1 of the same example), on the
device of its tensors. torch is imported inside the functions: importing this module imports none.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import types
from dataclasses import asdict, dataclass, field
from itertools import accumulate
from typing import Any

from lorastudio.train.lora_patch import ORIGINAL_FORWARD, patch_lora_linears

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
NO_MASK = {"full_attention": None, "sliding_attention": None}
"""A precomputed (empty) mask mapping: transformers then builds no mask at all (no L×L tensor, no device
sync to detect packed sequences); for attention functions that find the documents themselves."""


# ------------------------------------------------------------------------------------------------
# Packed rows: document boundaries and shifted targets
# ------------------------------------------------------------------------------------------------
def document_lengths(position_ids: Any, lengths: Any = None) -> list[int]:
    """Lengths of the documents of one packed row: `lengths` when they cover the row, else found where
    `position_ids` restart at 0 (a device→host copy on a GPU)."""
    import torch

    pos = torch.as_tensor(position_ids).reshape(-1)
    total = pos.numel()
    lengths = [int(n) for n in (lengths or [])]
    if lengths and sum(lengths) == total:
        return lengths
    starts = (pos == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    return [b - a for a, b in zip(starts, [*starts[1:], total], strict=True)]


def packed_batch(input_ids: Any, position_ids: Any, labels: Any, lengths: Any = None,
                 repeats: Any = None) -> dict[str, Any]:
    """Everything `packed_loss` reads, from one packed row (1-D or (1, T) tensors, on any device).

    `cu_seq_lens` (int32, the tensors' device) and `lengths` (host ints) bound the documents;
    `target_index` are the positions that have a target and `target_ids` their targets: the next token
    of the same example (an example's last token predicts nothing). One device sync (the target count).
    `repeats` (like `labels`; key tokens, questions): how much each token's target counts; then
    `target_weights` holds them per target row (the loss weighs that row's CE so), `num_targets` their sum.
    """
    import torch

    ids = torch.as_tensor(input_ids).reshape(1, -1)
    pos = torch.as_tensor(position_ids).reshape(1, -1)
    lab = torch.as_tensor(labels).reshape(-1)
    lengths = document_lengths(pos, lengths)
    cu = torch.tensor([0, *accumulate(lengths)], dtype=torch.int32)
    if ids.device.type != "cpu":
        cu = cu.to(ids.device, non_blocking=True)
    flat_pos = pos.reshape(-1)
    shifted = torch.full_like(lab, IGNORE_INDEX)
    shifted[:-1] = torch.where(flat_pos[1:] == 0, shifted[1:], lab[1:])  # the next token starts another example
    index = (shifted != IGNORE_INDEX).nonzero().flatten()
    weights, count = None, None
    if repeats is not None:
        weights = torch.as_tensor(repeats).reshape(-1).to(index.device).index_select(0, index + 1)  # t predicts t + 1
        weights = weights.float()
        count = float(weights.sum())
    return {"input_ids": ids, "position_ids": pos, "cu_seq_lens": cu, "lengths": lengths, "max_length": max(lengths),
            "target_index": index, "target_ids": shifted.index_select(0, index),
            "target_weights": weights, "num_targets": int(index.numel()) if count is None else count,
            "num_tokens": int(ids.shape[-1])}


# ------------------------------------------------------------------------------------------------
# LoRA linear as one autograd function
# ------------------------------------------------------------------------------------------------
class FloatBase:
    """The frozen base products of `LoraLinearFn` in the activation dtype (every device's choice):
    `product` = x Wᵀ + b and `input_grad` = g W, each a fresh (m × n) / (m × k) tensor that the function
    adds the LoRA term into in place. Another base (`cpu_int8.Packs`: int8 GEMMs) is an object with the
    same two methods; `x` is the call's input as given (a cache key), `x2` its (m × k) rows."""

    __slots__ = ()

    @staticmethod
    def product(x: Any, x2: Any, weight: Any, bias: Any) -> Any:
        import torch

        return torch.addmm(bias, x2, weight.t()) if bias is not None else x2 @ weight.t()

    @staticmethod
    def input_grad(g: Any, weight: Any) -> Any:
        return g @ weight


FLOAT_BASE = FloatBase()


def _lora_linear_fn() -> type:
    import torch

    class LoraLinearFn(torch.autograd.Function):
        """y = x Wᵀ + b + s·(x' Aᵀ) Bᵀ, W frozen, x' = dropout(x) or x (``xd`` None). The frozen products
        x Wᵀ + b and g W come from ``base`` (`FloatBase`, or the int8 `cpu_int8.Packs`); the low-rank
        update is added in place by the GEMM epilogue (addmm_, alpha = s); A and B (fp32 masters) are
        cast to the activation dtype once per call. Saves x' (or x), W, A, B and x'Aᵀ."""

        @staticmethod
        def forward(ctx, x, xd, weight, bias, lora_a, lora_b, scaling, base):
            x2 = x.reshape(-1, x.shape[-1])
            xd2 = x2 if xd is None else xd.reshape(-1, xd.shape[-1])
            a = lora_a.to(x.dtype)
            b = lora_b.to(x.dtype)
            xa = xd2 @ a.t()
            y = base.product(x, x2, weight, bias)
            y.addmm_(xa, b.t(), alpha=scaling)
            ctx.save_for_backward(x if xd is None else xd, weight, a, b, xa)
            ctx.base = base
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
                base = ctx.base.input_grad(g, weight)
                if ctx.dropout:
                    grad_x = base.view(*grad_out.shape[:-1], -1) if ctx.needs_input_grad[0] else None
                    grad_xd = torch.mm(gxa, a).mul_(s).view(*grad_out.shape[:-1], -1)
                else:
                    grad_x = base.addmm_(gxa, a, alpha=s).view(*grad_out.shape[:-1], -1)
            grad_a = torch.mm(gxa.t(), xl2).mul_(s).to(ctx.param_dtypes[0]) if ctx.needs_input_grad[4] else None
            grad_b = torch.mm(g.t(), xa).mul_(s).to(ctx.param_dtypes[1]) if ctx.needs_input_grad[5] else None
            return grad_x, grad_xd, None, None, grad_a, grad_b, None, None

    return LoraLinearFn


_LORA_FN: Any = None


def lora_linear(x: Any, weight: Any, bias: Any, lora_a: Any, lora_b: Any, scaling: float, xd: Any = None,
                base: Any = FLOAT_BASE) -> Any:
    """`x Wᵀ + b + scaling·(x' Aᵀ) Bᵀ` through `LoraLinearFn`; `xd` = dropout(x), or None for x; `base`
    computes the frozen products (`FloatBase`)."""
    global _LORA_FN
    if _LORA_FN is None:
        _LORA_FN = _lora_linear_fn()
    return _LORA_FN.apply(x, xd, weight, bias, lora_a, lora_b, float(scaling), base)


def one_plain_adapter(module: Any, args: tuple, kwargs: dict) -> str | None:
    """The name of the one plain LoRA adapter a fused call can run on a PEFT `lora.Linear`, or None when
    PEFT's own forward must (adapters off, merged, several active, extra arguments, not a LoRA linear)."""
    if module.disable_adapters or module.merged or args or kwargs or len(module.active_adapters) != 1:
        return None
    name = module.active_adapters[0]
    return name if name in module.lora_A else None


def lora_module_call(module: Any, name: str, x: Any, base: Any = FLOAT_BASE) -> Any:
    """`lora_linear` over a PEFT `lora.Linear`'s base layer and its adapter `name` (its dropout applied)."""
    import torch

    dropout = module.lora_dropout[name]
    xd = None if isinstance(dropout, torch.nn.Identity) else dropout(x)
    layer = module.base_layer
    return lora_linear(x, layer.weight, layer.bias, module.lora_A[name].weight, module.lora_B[name].weight,
                       module.scaling[name], xd, base)


def fused_lora_forward(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    """Replacement `forward` of a PEFT `lora.Linear`: one plain LoRA adapter active → `lora_linear`;
    anything else (adapters off, merged, several active, extra arguments) → PEFT's own forward."""
    name = one_plain_adapter(self, args, kwargs)
    if name is None:
        return getattr(self, ORIGINAL_FORWARD)(x, *args, **kwargs)
    return lora_module_call(self, name, x)


def fuse_lora_linears(model: Any, *, allow_dropout: bool = True) -> int:
    """Patch every vanilla PEFT LoRA linear (plain nn.Linear base, no DoRA/variants; with
    `allow_dropout` also those with LoRA dropout) to `fused_lora_forward`. Returns how many were
    patched; any other keeps PEFT's own forward."""
    return patch_lora_linears(model, fused_lora_forward, allow_dropout=allow_dropout)


# ------------------------------------------------------------------------------------------------
# Attention over one packed row, per document (transformers attention functions)
# ------------------------------------------------------------------------------------------------
def small_doc_attention(q: Any, k: Any, v: Any, scale: float | None) -> Any:
    """Causal attention of one short document, fp32 scores/softmax; query heads grouped onto their
    key/value head (GQA, the head order of transformers' repeat_kv). q (1, H, L, D), k/v (1, Hkv, N, D)
    with N - L ≥ 0 leading keys that every query sees (a shared head, `cpu_prefix`; 0: plain causal).
    Returns (1, L, H, D)."""
    import torch

    _, h, length, d = q.shape
    kv, n = k.shape[1], k.shape[2]
    qg = q.reshape(1, kv, h // kv, length, d).float()
    scores = qg @ k.unsqueeze(2).float().transpose(-1, -2)
    scores = scores.mul_(scale if scale is not None else d ** -0.5)
    mask = torch.ones(length, n, dtype=torch.bool, device=q.device).triu_(1 + n - length)  # True: not seen
    probs = scores.masked_fill_(mask, float("-inf")).softmax(-1)
    out = (probs @ v.unsqueeze(2).float()).to(q.dtype)
    return out.reshape(1, h, length, d).transpose(1, 2)


def doc_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float | None = None,
                  dropout: float = 0.0, *, small_doc: int = 256, **kwargs: Any) -> tuple[Any, None]:
    """Causal attention within each document of one packed row, one document at a time: no L×L mask,
    only the diagonal blocks computed. Documents of ≤ `small_doc` tokens (and no attention dropout)
    through fp32 matmul + softmax, longer ones through `scaled_dot_product_attention(is_causal=True)`.

    query (1, H, T, D), key/value (1, Hkv, T, D); boundaries from `cu_seq_lens_q` (ints or a tensor).
    Returns (1, T, H, D) like transformers' sdpa function.
    """
    import torch
    import torch.nn.functional as F

    cu = kwargs.get("cu_seq_lens_q")
    if cu is None or query.shape[0] != 1:
        raise ValueError("per-document attention takes one packed row with cu_seq_lens_q")
    if hasattr(cu, "tolist"):
        cu = cu.tolist()
    gqa = key.shape[1] != query.shape[1]
    p_drop = dropout if module.training else 0.0
    outs = []
    for start, end in zip(cu[:-1], cu[1:], strict=True):
        q, k, v = query[:, :, start:end], key[:, :, start:end], value[:, :, start:end]
        if end - start <= small_doc and not p_drop:
            outs.append(small_doc_attention(q, k, v, scaling))
            continue
        outs.append(F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p_drop, scale=scaling,
                                                   enable_gqa=gqa).transpose(1, 2))
    return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)), None


def varlen_available() -> bool:
    """torch's flash varlen kernel exists here and runs on this GPU (Ampere or newer)."""
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    import torch

    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


def _varlen_call() -> Any:
    """`varlen_attn` with causal masking, across the torch versions that changed its arguments."""
    import inspect

    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    causal = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    has_gqa = "enable_gqa" in params

    def call(q, k, v, cu, max_len, scale):
        kw = dict(causal)
        if "scale" in params:
            kw["scale"] = scale
        if has_gqa and k.shape[1] != q.shape[1]:
            kw["enable_gqa"] = True
        elif k.shape[1] != q.shape[1]:  # an old signature without GQA: repeat the K/V heads
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        return varlen_attn(q, k, v, cu, cu, max_len, max_len, **kw)

    return call


_VARLEN = None


def varlen_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                     scaling: float | None = None, dropout: float = 0.0, **kwargs: Any) -> tuple[Any, None]:
    """Per-document causal attention over one packed row through `varlen_attn` (flash kernels, GQA).

    query (1, H, T, D), key/value (1, Hkv, T, D); boundaries from `cu_seq_lens_q` (an int32 tensor on
    the GPU) and `max_length_q`, which `packed_loss` passes to the model. Returns (1, T, H, D).
    """
    global _VARLEN
    if _VARLEN is None:
        _VARLEN = _varlen_call()
    cu = kwargs.get("cu_seq_lens_q")
    max_len = kwargs.get("max_length_q")
    if cu is None or max_len is None:
        raise ValueError("varlen attention needs cu_seq_lens_q/max_length_q (packed batches only)")
    b, h, t, d = query.shape
    if b != 1:
        raise ValueError("varlen attention takes one packed row (batch size 1)")
    q = query.transpose(1, 2).reshape(t, h, d)
    k = key.transpose(1, 2).reshape(t, key.shape[1], d)
    v = value.transpose(1, 2).reshape(t, value.shape[1], d)
    out = _VARLEN(q, k, v, cu, int(max_len), scaling)
    return out.view(1, t, h, d), None


def register_attention(name: str, fn: Any) -> str:
    """Register `fn` with transformers under `name` (what `set_attention` then selects)."""
    from transformers import AttentionInterface

    AttentionInterface.register(name, fn)
    return name


def set_attention(model: Any, name: str) -> None:
    try:
        model.set_attn_implementation(name)
    except Exception:  # older/newer transformers: the config field is what the layers read
        model.config._attn_implementation = name


# ------------------------------------------------------------------------------------------------
# Fused elementwise kernels (torch.compile where it works, eager otherwise)
# ------------------------------------------------------------------------------------------------
def _rms_norm(x, weight, eps: float):
    import torch

    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def _silu_mul(gate, up):
    import torch

    return torch.nn.functional.silu(gate) * up


def _rotate_half(x):
    import torch

    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rotary(q, k, cos, sin, unsqueeze_dim: int = 1):
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


class _Kernel:
    """A function compiled on first use; on any compile error it falls back to eager for good."""

    def __init__(self, fn: Any, compile: bool) -> None:
        self.eager = fn
        self.fn = fn
        self.failed: str | None = None
        if compile:
            import torch

            self.fn = torch.compile(fn, fullgraph=True)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.fn is self.eager:
            return self.eager(*args, **kwargs)
        try:
            return self.fn(*args, **kwargs)
        except Exception as err:  # inductor/triton missing or broken: correctness first
            self.failed = f"{type(err).__name__}: {str(err)[:200]}"
            log.warning("torch.compile failed for %s, using eager: %s", self.eager.__name__, self.failed)
            self.fn = self.eager
            return self.eager(*args, **kwargs)


def fuse_elementwise(model: Any, compile: bool = True) -> dict[str, int]:
    """RMSNorm, SwiGLU and rotary embeddings of Llama/Qwen-style models through compiled kernels:
    one pass over memory each instead of several, and fewer saved fp32 intermediates."""
    rms = _Kernel(_rms_norm, compile)
    silu_mul = _Kernel(_silu_mul, compile)
    counts = {"rms_norm": 0, "swiglu": 0, "rotary": 0}
    patched_modules = set()
    for module in model.modules():
        cls = type(module).__name__
        if cls.endswith("RMSNorm") and hasattr(module, "variance_epsilon") and hasattr(module, "weight"):
            module.forward = types.MethodType(
                lambda self, x: rms(x, self.weight, self.variance_epsilon), module)
            counts["rms_norm"] += 1
        elif (cls.endswith("MLP") and all(hasattr(module, n) for n in ("gate_proj", "up_proj", "down_proj"))
              and getattr(getattr(module, "config", None), "hidden_act", "silu") == "silu"):
            module.forward = types.MethodType(
                lambda self, x: self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x))), module)
            counts["swiglu"] += 1
        elif cls.endswith("Attention"):
            patched_modules.add(type(module).__module__)
    for name in patched_modules:
        mod = sys.modules.get(name)
        if mod is not None and hasattr(mod, "apply_rotary_pos_emb"):
            mod.apply_rotary_pos_emb = _Kernel(_rotary, compile)
            counts["rotary"] += 1
    return counts


# ------------------------------------------------------------------------------------------------
# LM head + cross-entropy over target rows, chunked, gradient computed in the forward
# ------------------------------------------------------------------------------------------------
def chunk_log_likelihood(logp: Any, targets: Any, row_weights: Any = None) -> Any:
    """Σ log p(target) over a chunk's rows (rows × vocab log-probabilities), each row times its weight
    when `row_weights` (one per row) is given: minus the chunk's (weighted) cross-entropy."""
    picked = logp.gather(1, targets[:, None])
    return picked.sum() if row_weights is None else (picked * row_weights[:, None]).sum()


def chunk_logit_grad(logp: Any, targets: Any, row_weights: Any = None) -> Any:
    """The gradient of the chunk's (weighted) summed cross-entropy w.r.t. its logits, softmax − one-hot
    (times each row's weight), computed in place in `logp`'s storage (which it consumes)."""
    import torch

    probs = logp.exp_()
    probs[torch.arange(targets.numel(), device=targets.device), targets] -= 1.0
    return probs if row_weights is None else probs.mul_(row_weights[:, None])


CE_WORKSPACE = os.environ.get("LORASTUDIO_CPU_CE_WORKSPACE", "1") != "0"
"""On the CPU the cross-entropy's (chunk × vocab) buffers are kept from step to step (per thread)
instead of allocated afresh: at 151k vocab they are 0.1–0.2 GB each, above glibc's mmap threshold,
so every step mapped ~0.6 GB of new pages and the kernel zeroed them (docs/BENCHMARKS.md,
"Fresh pages"). The numbers are the same (tested). `LORASTUDIO_CPU_CE_WORKSPACE=0` allocates afresh."""

_CE_BUFFERS = threading.local()


def _ce_buffer(name: str, rows: int, cols: int, dtype: Any) -> Any:
    """A kept (rows × cols) buffer of this thread, grown when a chunk needs more."""
    import torch

    buffers = _CE_BUFFERS.__dict__.setdefault("buffers", {})
    buf = buffers.get(name)
    if buf is None or buf.dtype != dtype or buf.numel() < rows * cols:
        del buf
        buffers.pop(name, None)  # the old one freed before the larger one is made
        buf = buffers[name] = torch.empty(rows * cols, dtype=dtype)
    return buf[:rows * cols].view(rows, cols)


def release_ce_buffers() -> None:
    """Drop this thread's kept cross-entropy buffers (the trainer calls it when training ends)."""
    _CE_BUFFERS.buffers = {}


def _cpu_chunk_logp(h: Any, weight: Any) -> tuple[Any, Any]:
    """(fp32 log-softmax of `h @ weight.T`, a kept buffer in `h`'s dtype for the logits' gradient, or
    None when that is fp32: the log-probabilities' own buffer then holds it) in kept CPU buffers."""
    import torch

    rows, vocab = h.shape[0], weight.shape[0]
    logits = _ce_buffer("logits", rows, vocab, h.dtype)
    torch.mm(h, weight.t(), out=logits)
    if logits.dtype != torch.float32:
        wide = _ce_buffer("wide", rows, vocab, torch.float32)
        wide.copy_(logits)
    else:
        wide = logits
    logp = _ce_buffer("logp", rows, vocab, torch.float32)
    torch.log_softmax(wide, dim=-1, out=logp)
    return logp, (logits if logits.dtype != torch.float32 else None)


def _chunked_ce_fn() -> type:
    import torch

    class ChunkedLinearCrossEntropy(torch.autograd.Function):
        """Sum over rows of CE(h Wᵀ, target) without the (rows × vocab) logits in memory at once.

        Per chunk of rows: logits in fp32 (as `.float()` + cross_entropy), one log-softmax, the loss,
        and at once the gradient (softmax − one-hot) W (a GEMM in the activation dtype, as autograd's
        would be; kept in that dtype) and, if W requires it, (softmax − one-hot)ᵀ h in fp32. Backward
        multiplies the stored gradients by the incoming scalar (the trainer's 1/targets) in fp32 and
        casts once: against autograd through `cross_entropy(logits.float())` one extra rounding of the
        product in the activation dtype, exact in fp32.
        """

        @staticmethod
        def forward(ctx, hidden, weight, targets, chunk, row_weights):
            rows = hidden.shape[0]
            ctx.weight_dtype = weight.dtype
            ctx.chunk = chunk
            grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
            grad_w = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            keep = CE_WORKSPACE and hidden.device.type == "cpu"
            for start in range(0, rows, chunk):
                h = hidden[start:start + chunk]
                t = targets[start:start + chunk]
                w = None if row_weights is None else row_weights[start:start + chunk]
                if keep:
                    logp, g_buffer = _cpu_chunk_logp(h, weight)
                else:
                    logp, g_buffer = torch.log_softmax((h @ weight.t()).float(), dim=-1), None
                total -= chunk_log_likelihood(logp, t, w)
                if grad_h is None and grad_w is None:
                    continue
                probs = chunk_logit_grad(logp, t, w)
                g = g_buffer.copy_(probs) if g_buffer is not None else probs.to(hidden.dtype)
                if grad_h is not None:
                    torch.mm(g, weight, out=grad_h[start:start + chunk])
                if grad_w is not None:
                    grad_w.addmm_(g.t().float(), h.float())
            ctx.save_for_backward(grad_h, grad_w)
            return total

        @staticmethod
        def backward(ctx, grad_total):
            grad_h, grad_w = ctx.saved_tensors
            gh = gw = None
            if grad_h is not None:
                scale = grad_total.float()
                gh = torch.empty_like(grad_h)
                for start in range(0, grad_h.shape[0], ctx.chunk):  # fp32 product, one chunk at a time
                    gh[start:start + ctx.chunk] = grad_h[start:start + ctx.chunk].float() * scale
            if grad_w is not None:
                gw = (grad_w * grad_total).to(ctx.weight_dtype)
            return gh, gw, None, None, None

    return ChunkedLinearCrossEntropy


_CE_FN: Any = None


def chunked_linear_cross_entropy(hidden: Any, weight: Any, targets: Any, chunk: int = 2048,
                                 reduction: str = "sum", row_weights: Any = None) -> Any:
    """Cross-entropy of `hidden @ weight.T` against `targets` (rows × hidden, vocab × hidden, rows),
    processed `chunk` rows at a time. Returns the sum (or mean) in fp32, each row's CE times its
    `row_weights` entry when given (fp32, one per row). Gradients flow to `hidden` and, if it requires
    them, `weight`."""
    global _CE_FN
    if _CE_FN is None:
        _CE_FN = _chunked_ce_fn()
    out = _CE_FN.apply(hidden, weight, targets, int(chunk), row_weights)
    if reduction == "mean":
        return out / max(1, targets.numel())
    return out


def liger_linear_cross_entropy(hidden: Any, weight: Any, targets: Any) -> Any:
    """liger-kernel's fused linear cross-entropy (sum over rows); an optional extra (CUDA)."""
    try:
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss
    except ImportError as err:
        raise RuntimeError("liger-kernel is not installed: `pip install liger-kernel` "
                           "(or use the built-in chunked cross-entropy, the default)") from err
    return LigerFusedLinearCrossEntropyLoss(reduction="sum")(weight, hidden, targets)


# ------------------------------------------------------------------------------------------------
# The model on a fast path, and its loss
# ------------------------------------------------------------------------------------------------
def causal_lm(model: Any) -> Any:
    """The causal LM inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def causal_lm_parts(model: Any) -> tuple[Any, Any]:
    """(backbone, lm_head weight) of a (PEFT-wrapped) causal LM. The backbone is the module the loss
    calls (and FSDP's root unit, `distributed.apply_fsdp`)."""
    lm = causal_lm(model)
    backbone = getattr(lm, lm.base_model_prefix, None) or lm.model
    return backbone, lm.get_output_embeddings().weight


@dataclass
class FastPath:
    """What `install` switched on (for logs, the benchmark and the model card)."""

    attention: str
    fused_lora: int
    elementwise: dict[str, int] = field(default_factory=dict)
    ce: str = "chunked"
    ce_chunk: int = 2048
    per_document: bool = True  # the attention function finds the documents itself (no mask is built)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def install(model: Any, *, attention: str, per_document: bool, fuse_lora: bool = True, lora_dropout: bool = True,
            elementwise: bool | None = None, ce: str = "chunked", ce_chunk: int = 2048,
            label: str | None = None) -> FastPath:
    """Switch a PEFT-wrapped causal LM to the kernels a device chose; `packed_loss` then uses them.

    attention: a registered attention implementation (`register_attention`) or a transformers one
    ("sdpa": a block-diagonal mask from position_ids); `per_document`: it finds the documents from
    `cu_seq_lens_q` itself. fuse_lora / lora_dropout: `fuse_lora_linears` (`allow_dropout`).
    elementwise: None leaves the model's norms/MLPs alone, False patches them eager, True compiled.
    ce: "chunked" (`chunked_linear_cross_entropy`, `ce_chunk` rows) or "liger". label: the attention's
    name in the record (default `attention`).
    """
    set_attention(model, attention)
    fused = fuse_lora_linears(model, allow_dropout=lora_dropout) if fuse_lora else 0
    counts = fuse_elementwise(model, compile=elementwise) if elementwise is not None else {}
    fp = FastPath(label or attention, fused, counts, ce, int(ce_chunk), per_document)
    model._lorastudio_fast_path = fp
    return fp


def target_hidden(model: Any, batch: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """(`packed_batch`'s dict, the backbone's last hidden states at its target positions) of one packed
    row, through the attention `install` chose: everything of the loss but the LM head. `batch`:
    `packed_batch`'s dict, or the trainer's (input_ids, position_ids, labels, lengths)."""
    if "target_index" not in batch:
        batch = packed_batch(batch["input_ids"], batch["position_ids"], batch["labels"], batch.get("lengths"),
                             batch.get("repeats"))
    fp: FastPath | None = getattr(model, "_lorastudio_fast_path", None)
    backbone, _ = causal_lm_parts(model)
    cu, max_len = batch["cu_seq_lens"], batch["max_length"]
    kwargs = {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max_len, "max_length_k": max_len}
    if fp is not None and fp.per_document:
        kwargs["attention_mask"] = NO_MASK
    out = backbone(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False, **kwargs)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return batch, hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch["target_index"])


def packed_loss(model: Any, batch: dict[str, Any]) -> tuple[Any, float]:
    """(summed next-token CE over target tokens in fp32, number of targets) of one packed row, with the
    kernels `install` chose. `batch`: `packed_batch`'s dict, or the trainer's (input_ids, position_ids,
    labels, lengths), from which it is derived."""
    import torch

    batch, hidden = target_hidden(model, batch)
    fp: FastPath | None = getattr(model, "_lorastudio_fast_path", None)
    targets, weights = batch["target_ids"], batch.get("target_weights")
    head = causal_lm(model).get_output_embeddings()
    if fp is not None and fp.ce == "liger" and weights is None:  # liger has no per-row weights
        total = liger_linear_cross_entropy(hidden, head.weight, targets)
    elif getattr(head, "bias", None) is not None or not isinstance(head, torch.nn.Linear):
        losses = torch.nn.functional.cross_entropy(head(hidden).float(), targets, reduction="none")
        total = losses.sum() if weights is None else (losses * weights).sum()
    else:
        total = chunked_linear_cross_entropy(hidden, head.weight, targets, chunk=fp.ce_chunk if fp else 2048,
                                             row_weights=weights)
    return total.to(torch.float32), batch["num_targets"]
