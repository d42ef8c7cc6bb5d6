"""The CUDA fast path: what the trainer switches on when a GPU is present.

Pieces, each usable on its own (the trainer and `bench/gpu_bench.py` call the same functions):

- `ModelShape` + `autofit(...)`: from the model's shape, the LoRA settings, the wanted pack size and the
  free GPU memory, choose gradient checkpointing, micro-batch tokens and accumulation (a 7B LoRA fits a
  24 GB card; a big card runs large packs without recomputation). `autofit` is pure arithmetic: no
  torch, no GPU, unit-tested on the CPU.
- `enable_fast_path(model)`: on a PEFT-wrapped causal LM, (1) per-document attention for packed
  sequences through `torch.nn.attention.varlen.varlen_attn` (flash kernels, GQA, no L×L mask), (2) each
  vanilla LoRA linear as one autograd function (base GEMM + low-rank update added in place, no fp32 copy
  of the input), (3) RMSNorm, SwiGLU and rotary embeddings compiled into fused kernels where
  `torch.compile` works.
- `packed_lm_loss(model, batch)`: the backbone on one packed row, then a chunked linear+cross-entropy
  over only the positions that have a target, so the 152k-vocabulary logits never exist in full.
  `liger-kernel`'s fused linear cross-entropy is used instead when asked for and installed.
- `fused_adamw(params, ...)`: AdamW with the fused CUDA kernel (fp32 master weights: the LoRA params);
  the trainer's optimizer on CUDA.
- `qlora_quantization_config()`: 4-bit base weights through bitsandbytes, if installed.

`customize(cfg, setup)` is the trainer's hook (`trainer.device_setup` calls it on CUDA). Environment
overrides: LORASTUDIO_COMPILE=0/1 (compile the fused kernels; default: models of ≥ 1 B params),
LORASTUDIO_CE=liger (liger-kernel's fused linear cross-entropy instead of the built-in chunked one),
LORASTUDIO_GPU_MEMORY_GB=24 (train within that much of each GPU: auto-fit plans for it and the
allocator is capped to it, e.g. to try a 24 GB card's plan on a bigger one).
Measured numbers: docs/BENCHMARKS.md.

A packed batch is one row: examples concatenated, `position_ids` restarting at 0 for each example,
`labels` (unshifted, Hugging Face convention) equal to the token id on assistant tokens and -100
elsewhere. `cuda_batch(...)` derives, on the CPU, everything the GPU needs (sequence boundaries, the
shifted targets and their positions) so that no step waits for a device-to-host copy.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import types
from dataclasses import asdict, dataclass
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from lorastudio.train.lora_patch import patch_lora_linears

if TYPE_CHECKING:  # torch stays an optional import for the pure parts (autofit)
    import torch

log = logging.getLogger(__name__)

ATTN_IMPLEMENTATION = "lorastudio_varlen"
GIB = 1024**3


# ------------------------------------------------------------------------------------------------
# Memory auto-fit (pure arithmetic)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only transformer that decide its memory and FLOPs."""

    n_params: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    tie_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def flops_params(self) -> int:
        """Parameters that cost 2 FLOPs per token forward: all but the embedding lookup, plus the LM head
        matmul (which a tied model shares with the embedding). MFU counts 4 × this per trained token
        (forward + input gradients; frozen weights need no weight gradients)."""
        embed = self.vocab_size * self.hidden_size
        return self.n_params - embed + (embed if self.tie_embeddings else 0)

    @classmethod
    def of(cls, base: str) -> ModelShape:
        """The shape of a model id (`default`, a directory, …) from its config; raises when unreadable."""
        from transformers import AutoConfig

        from lorastudio.models import resolve_model

        return cls.from_config(AutoConfig.from_pretrained(resolve_model(base)))

    @classmethod
    def from_config(cls, config: Any, n_params: int | None = None) -> ModelShape:
        """From a Hugging Face config (Qwen2/Llama-style field names)."""
        hidden = config.hidden_size
        inter = config.intermediate_size
        layers = config.num_hidden_layers
        heads = config.num_attention_heads
        kv = getattr(config, "num_key_value_heads", None) or heads
        vocab = config.vocab_size
        tied = bool(getattr(config, "tie_word_embeddings", False))
        if n_params is None:
            head_dim = getattr(config, "head_dim", None) or hidden // heads
            attn = hidden * heads * head_dim * 2 + hidden * kv * head_dim * 2 + (heads + 2 * kv) * head_dim
            per_layer = attn + 3 * hidden * inter + 2 * hidden
            n_params = layers * per_layer + vocab * hidden * (1 if tied else 2) + hidden
        return cls(n_params, hidden, inter, layers, heads, kv, vocab, tied)

    def lora_params(self, r: int, targets: str | list[str] = "all-linear") -> int:
        h, i, kv = self.hidden_size, self.intermediate_size, self.kv_dim
        io = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
              "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
        names = (list(io) if targets == "all-linear" else ["gate_proj", "up_proj", "down_proj"]
                 if targets == "all-mlp" else [t for t in targets if t in io])
        return self.num_layers * sum(r * (io[n][0] + io[n][1]) for n in names)

    def activation_bytes_per_token(self, fused: bool = True) -> int:
        """Bytes kept for backward per token and layer on the fast path (bf16): norm inputs and outputs,
        q/k/v/attention output, gate/up/product of the MLP. Eager (uncompiled) RMSNorm and SwiGLU also
        keep fp32 copies of the norm inputs and the SiLU output."""
        h, i, kv = self.hidden_size, self.intermediate_size, self.kv_dim
        return 2 * (5 * h + 2 * kv + 3 * i) + 64 + (0 if fused else 16 * h + 2 * i)

    def layer_workspace_bytes_per_token(self) -> int:
        """Transient bytes per token while one layer runs backward (gradients of the MLP's wide
        tensors and the recomputed layer under checkpointing)."""
        h, i = self.hidden_size, self.intermediate_size
        return 2 * (3 * i + 4 * h)


@dataclass(frozen=True)
class FitPlan:
    """What `autofit` chose, and why (shown by the recommender and written to the config)."""

    gradient_checkpointing: bool
    micro_batch_tokens: int
    gradient_accumulation: int
    quantize_4bit: bool
    estimated_peak_bytes: int
    ce_chunk_tokens: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bf16_weight_bytes(shape: ModelShape, shards: int = 1) -> float:
    """Bytes of bf16 base weights on one GPU. Sharded by FSDP over `shards` GPUs (`apply_fsdp`): each
    holds its shard of the decoder layers plus two whole layers (the one running and the one
    prefetched), the embeddings as shard and whole (the root unit stays whole during a step), and a
    whole LM head (an untied one is replicated; a tied one keeps the original matrix)."""
    if shards <= 1:
        return shape.n_params * 2.0
    embed = shape.vocab_size * shape.hidden_size
    layer = (shape.n_params - embed * (1 if shape.tie_embeddings else 2)) / shape.num_layers
    return 2.0 * (shape.num_layers * layer / shards + 2 * layer + embed * (1 + 1 / shards) + embed)


def _round_down(tokens: float, step: int = 512) -> int:
    return int(tokens // step * step)


def ce_chunk_tokens(vocab_size: int, budget_bytes: float) -> int:
    """Rows of logits per chunk of the chunked cross-entropy: fp32 logits + fp32 softmax + bf16 grad."""
    per_row = vocab_size * (4 + 4 + 2)
    return int(max(256, min(8192, budget_bytes // per_row // 256 * 256)))


def autofit(
    shape: ModelShape,
    *,
    lora_r: int = 16,
    lora_targets: str | list[str] = "all-linear",
    pack_tokens: int = 16384,
    free_bytes: int,
    max_length: int = 1024,
    min_fast_tokens: int = 4096,
    bitsandbytes_available: bool = False,
    fused_elementwise: bool = True,
    gradient_checkpointing: bool | None = None,
    headroom_bytes: int = int(1.5 * GIB),
    weight_shards: int = 1,
    force_4bit: bool = False,
) -> FitPlan:
    """Choose gradient checkpointing and micro-batch tokens so training fits `free_bytes` of GPU memory.

    `pack_tokens` is the wanted batch in real tokens (TrainConfig.batch_tokens); the plan's micro-batch
    never exceeds it, and when memory forces a smaller micro-batch the difference becomes gradient
    accumulation, so the optimisation (tokens per optimizer step) stays what the user asked for.
    Preference order: no checkpointing with micro-batches of ≥ `min_fast_tokens` (or the whole pack);
    else checkpointing with the largest micro-batch that fits; else a 4-bit base (QLoRA) if bitsandbytes
    is installed. `gradient_checkpointing=True/False` (a user's explicit setting) fixes that choice and
    only sizes the micro-batch. `weight_shards` > 1: the base is sharded over that many GPUs by FSDP
    (`distributed.apply_fsdp`). `force_4bit`: plan for a 4-bit base whatever fits (the user asked for
    QLoRA). Raises `MemoryError` with a hint if nothing fits.
    """
    if pack_tokens < max_length:
        raise ValueError(f"pack_tokens={pack_tokens} must be ≥ max_length={max_length}")
    lora = shape.lora_params(lora_r, lora_targets)
    lora_bytes = lora * 16  # fp32 weight + grad + two Adam moments
    usable = free_bytes * 0.92 - headroom_bytes
    layer_act = shape.activation_bytes_per_token(fused_elementwise)
    per_tok_full = shape.num_layers * layer_act * 1.1
    per_tok_ckpt = shape.num_layers * 2 * shape.hidden_size
    work = shape.layer_workspace_bytes_per_token()
    ce_budget = min(2 * GIB, max(0.05 * usable, 256 * shape.vocab_size * 10))
    chunk = ce_chunk_tokens(shape.vocab_size, ce_budget)
    ce_bytes = chunk * shape.vocab_size * 10

    # A 4-bit base keeps PEFT's unfused LoRA layers (their inputs and bitsandbytes' dequantized weights
    # are saved too): 30 × hidden bytes more per token and layer, measured on 7B (138 vs 89 GB planned).
    quant_layer = 30 * shape.hidden_size

    def peak(weights: float, tokens: int, ckpt: bool, quant: bool) -> float:
        extra = quant_layer * (1 if ckpt else shape.num_layers) if quant else 0
        act = tokens * ((per_tok_ckpt + layer_act if ckpt else per_tok_full) + extra)
        return weights + lora_bytes + act + tokens * work + ce_bytes + tokens * 64

    def plan(weights: float, quant: bool) -> FitPlan | None:
        fixed = weights + lora_bytes + ce_bytes
        if fixed >= usable:
            return None
        left = usable - fixed
        extra_full = shape.num_layers * quant_layer if quant else 0
        full_tokens = min(pack_tokens, _round_down(left / (per_tok_full + extra_full + work + 64)))
        enough = full_tokens >= min(min_fast_tokens, pack_tokens) or gradient_checkpointing is False
        if gradient_checkpointing is not True and enough and full_tokens >= max_length:
            ckpt, tokens = False, full_tokens
            why = (f"no gradient checkpointing: {full_tokens} tokens per micro-batch fit "
                   f"{free_bytes / GIB:.1f} GiB free")
        elif gradient_checkpointing is False:
            return None
        else:
            per_tok = per_tok_ckpt + layer_act + (quant_layer if quant else 0) + work + 64
            tokens = min(pack_tokens, _round_down(left / per_tok))
            if tokens < max_length:
                return None
            ckpt = True
            why = (f"gradient checkpointing on: without it only {max(full_tokens, 0)} tokens fit "
                   f"{free_bytes / GIB:.1f} GiB free; with it {tokens} tokens per micro-batch")
        accum = math.ceil(pack_tokens / tokens)
        if quant:
            why = ("4-bit base weights (QLoRA, as asked); " if force_4bit else
                   "4-bit base weights (QLoRA): bf16 weights do not fit; ") + why
        if accum > 1:
            why += f"; {accum} micro-batches per step keep {pack_tokens} tokens per optimizer step"
        return FitPlan(ckpt, tokens, accum, quant, int(peak(weights, tokens, ckpt, quant) + headroom_bytes),
                       chunk, why)

    # nf4 with double quantisation ≈ 0.52 bytes/param for the linears; embeddings/head stay bf16
    embed = shape.vocab_size * shape.hidden_size * (1 if shape.tie_embeddings else 2)
    four_bit = (shape.n_params - embed) * 0.52 + embed * 2.0
    result = None if force_4bit else plan(bf16_weight_bytes(shape, weight_shards), quant=False)
    if result is None and (bitsandbytes_available or force_4bit):
        result = plan(four_bit, quant=True)
    if result is None:
        need = shape.n_params * 2 / GIB
        hint = "" if bitsandbytes_available else "; install bitsandbytes for 4-bit QLoRA"
        raise MemoryError(f"model needs ≈{need:.1f} GiB for bf16 weights alone plus activations; only "
                          f"{free_bytes / GIB:.1f} GiB free{hint}")
    return result


# ------------------------------------------------------------------------------------------------
# Packed batches
# ------------------------------------------------------------------------------------------------
def cuda_batch(input_ids: Any, position_ids: Any, labels: Any, device: Any = "cuda") -> dict[str, Any]:
    """From one packed row (1-D or (1, T) CPU tensors) make the inputs of `packed_lm_loss`.

    Targets are shifted inside each example: position t predicts token t+1 of the same example; the
    last token of an example predicts nothing.
    """
    import torch

    ids = torch.as_tensor(input_ids).reshape(-1)
    pos = torch.as_tensor(position_ids).reshape(-1)
    lab = torch.as_tensor(labels).reshape(-1)
    total = ids.numel()
    starts = (pos == 0).nonzero().flatten()
    if starts.numel() == 0 or int(starts[0]) != 0:
        starts = torch.cat([torch.zeros(1, dtype=starts.dtype), starts])
    cu = torch.cat([starts, torch.tensor([total])]).to(torch.int32)
    max_len = int((cu[1:] - cu[:-1]).max())
    shifted = torch.full_like(lab, -100)
    shifted[:-1] = lab[1:]
    shifted[:-1][pos[1:] == 0] = -100  # the next token starts another example
    index = (shifted != -100).nonzero().flatten()
    nb = {"non_blocking": True}
    pin = torch.cuda.is_available() and str(device).startswith("cuda")

    def move(t: torch.Tensor) -> torch.Tensor:
        return (t.pin_memory() if pin else t).to(device, **nb)

    return {
        "input_ids": move(ids.view(1, -1)),
        "position_ids": move(pos.view(1, -1)),
        "cu_seq_lens": move(cu),
        "max_length": max_len,
        "target_index": move(index),
        "target_ids": move(shifted[index]),
        "num_targets": int(index.numel()),
        "num_tokens": total,
    }


# ------------------------------------------------------------------------------------------------
# Attention for packed rows
# ------------------------------------------------------------------------------------------------
def varlen_available() -> bool:
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
    """A transformers attention function: per-document causal attention over one packed row.

    query (1, H, T, D), key/value (1, Hkv, T, D); the sequence boundaries come from the
    `cu_seq_lens_q` / `max_length_q` keyword arguments that `packed_lm_loss` passes to the model.
    """
    global _VARLEN
    if _VARLEN is None:
        _VARLEN = _varlen_call()
    cu = kwargs.get("cu_seq_lens_q")
    max_len = kwargs.get("max_length_q")
    if cu is None or max_len is None:
        raise ValueError("lorastudio_varlen attention needs cu_seq_lens_q/max_length_q (packed batches only)")
    b, h, t, d = query.shape
    if b != 1:
        raise ValueError("lorastudio_varlen attention takes one packed row (batch size 1)")
    q = query.transpose(1, 2).reshape(t, h, d)
    k = key.transpose(1, 2).reshape(t, key.shape[1], d)
    v = value.transpose(1, 2).reshape(t, value.shape[1], d)
    out = _VARLEN(q, k, v, cu, int(max_len), scaling)
    return out.view(1, t, h, d), None


def register_attention() -> str:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, varlen_attention)
    return ATTN_IMPLEMENTATION


def set_attention(model: Any, name: str) -> None:
    try:
        model.set_attn_implementation(name)
    except Exception:  # older/newer transformers: the config field is what the layers read
        model.config._attn_implementation = name


# ------------------------------------------------------------------------------------------------
# LoRA linear as one autograd function
# ------------------------------------------------------------------------------------------------
def _lora_linear_fn() -> type:
    import torch

    class LoraLinearFn(torch.autograd.Function):
        """y = x Wᵀ + b + s·(x Aᵀ) Bᵀ with W frozen; the low-rank update is added in place by the GEMM
        epilogue (addmm_), and A, B (fp32 masters) are cast to the activation dtype once per call."""

        @staticmethod
        def forward(ctx, x, weight, bias, lora_a, lora_b, scaling):
            x2 = x.reshape(-1, x.shape[-1])
            a = lora_a.to(x.dtype)
            b = (lora_b * scaling).to(x.dtype)
            xa = x2 @ a.t()
            y = torch.addmm(bias, x2, weight.t()) if bias is not None else x2 @ weight.t()
            y.addmm_(xa, b.t())
            ctx.save_for_backward(x, weight, a, b, xa)
            ctx.scaling = scaling
            ctx.param_dtypes = (lora_a.dtype, lora_b.dtype)
            return y.view(*x.shape[:-1], y.shape[-1])

        @staticmethod
        def backward(ctx, grad_out):
            x, weight, a, b, xa = ctx.saved_tensors
            g = grad_out.reshape(-1, grad_out.shape[-1])
            x2 = x.reshape(-1, x.shape[-1])
            gxa = g @ b  # (m, r)
            grad_x = None
            if ctx.needs_input_grad[0]:
                grad_x = g @ weight
                grad_x.addmm_(gxa, a)
                grad_x = grad_x.view_as(x)
            grad_a = (gxa.t() @ x2).to(ctx.param_dtypes[0]) if ctx.needs_input_grad[3] else None
            grad_b = (g.t() @ xa).to(ctx.param_dtypes[1]).mul_(ctx.scaling) if ctx.needs_input_grad[4] else None
            return grad_x, None, None, grad_a, grad_b, None

    return LoraLinearFn


_LORA_FN = None


def _fused_lora_forward(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    """Replacement `forward` of a PEFT `lora.Linear` that has exactly one plain LoRA adapter active."""
    if (self.disable_adapters or self.merged or args or kwargs or len(self.active_adapters) != 1):
        return self._lorastudio_original_forward(x, *args, **kwargs)
    name = self.active_adapters[0]
    if name not in self.lora_A:
        return self._lorastudio_original_forward(x, *args, **kwargs)
    base = self.base_layer
    return _LORA_FN.apply(x, base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight,
                          float(self.scaling[name]))


def fuse_lora_linears(model: Any) -> int:
    """Patch every eligible PEFT LoRA linear (plain nn.Linear base, no dropout, no DoRA/variants) to the
    fused autograd function. Returns how many were patched; others keep PEFT's own forward."""
    global _LORA_FN
    if _LORA_FN is None:
        _LORA_FN = _lora_linear_fn()
    return patch_lora_linears(model, _fused_lora_forward, allow_dropout=False)


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
# Chunked linear + cross-entropy
# ------------------------------------------------------------------------------------------------
def _chunked_ce_fn() -> type:
    import torch

    class ChunkedLinearCrossEntropy(torch.autograd.Function):
        """Sum over rows of CE(h Wᵀ, target) without the (rows × vocab) logits in memory at once.

        Forward computes each chunk's logits in fp32, its loss and, at once, its gradient (softmax −
        one-hot) times W; backward only scales the stored gradient by the incoming scalar.
        """

        @staticmethod
        def forward(ctx, hidden, weight, targets, chunk):
            rows = hidden.shape[0]
            ctx.weight_dtype = weight.dtype
            grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
            grad_w = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for start in range(0, rows, chunk):
                h = hidden[start:start + chunk]
                t = targets[start:start + chunk]
                logits = (h @ weight.t()).float()
                lse = torch.logsumexp(logits, dim=-1)
                total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
                if grad_h is None and grad_w is None:
                    continue
                probs = logits.sub_(lse[:, None]).exp_()
                probs[torch.arange(t.numel(), device=t.device), t] -= 1.0
                g = probs.to(hidden.dtype)
                if grad_h is not None:
                    torch.mm(g, weight, out=grad_h[start:start + chunk])
                if grad_w is not None:
                    grad_w.addmm_(g.t().float(), h.float())
            ctx.save_for_backward(grad_h, grad_w)
            return total

        @staticmethod
        def backward(ctx, grad_total):
            grad_h, grad_w = ctx.saved_tensors
            gh = grad_h * grad_total.to(grad_h.dtype) if grad_h is not None else None
            gw = (grad_w * grad_total).to(ctx.weight_dtype) if grad_w is not None else None
            return gh, gw, None, None

    return ChunkedLinearCrossEntropy


_CE_FN = None


def chunked_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                 chunk: int = 2048, reduction: str = "sum") -> torch.Tensor:
    """Cross-entropy of `hidden @ weight.T` against `targets` (rows × hidden, vocab × hidden, rows),
    processed `chunk` rows at a time. Returns the sum (or mean) in fp32. Gradients flow to `hidden`
    and, if it requires them, `weight`."""
    global _CE_FN
    if _CE_FN is None:
        _CE_FN = _chunked_ce_fn()
    out = _CE_FN.apply(hidden, weight, targets, int(chunk))
    if reduction == "mean":
        return out / max(1, targets.numel())
    return out


def liger_linear_cross_entropy(hidden: Any, weight: Any, targets: Any) -> Any:
    """liger-kernel's fused linear cross-entropy (sum over rows); an optional extra."""
    try:
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss
    except ImportError as err:
        raise RuntimeError("liger-kernel is not installed: `pip install liger-kernel` "
                           "(or use the built-in chunked cross-entropy, the default)") from err
    return LigerFusedLinearCrossEntropyLoss(reduction="sum")(weight, hidden, targets)


# ------------------------------------------------------------------------------------------------
# The model on the fast path
# ------------------------------------------------------------------------------------------------
def causal_lm_parts(model: Any) -> tuple[Any, Any]:
    """(backbone, lm_head weight) of a (PEFT-wrapped) causal LM."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(lm, lm.base_model_prefix, None) or lm.model
    return backbone, lm.get_output_embeddings().weight


@dataclass
class FastPath:
    """What `enable_fast_path` switched on (for logs, the benchmark and the model card)."""

    attention: str
    fused_lora: int
    elementwise: dict[str, int]
    ce: str
    ce_chunk: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def enable_fast_path(model: Any, *, attention: str = "auto", compile: bool = True, ce: str = "chunked",
                     ce_chunk: int = 2048, fuse_lora: bool = True) -> FastPath:
    """Switch a PEFT-wrapped causal LM (bf16, on CUDA) to the fast path. Idempotent enough to call once.

    attention: "varlen" (torch's flash varlen kernel), "sdpa" (transformers builds a block-diagonal
    mask from position_ids: correct, O(T²)), or "auto" (varlen where available).
    """
    if attention == "auto":
        attention = "varlen" if varlen_available() else "sdpa"
    if attention == "varlen":
        set_attention(model, register_attention())
    else:
        set_attention(model, attention)
    fused = fuse_lora_linears(model) if fuse_lora else 0
    elementwise = fuse_elementwise(model, compile=compile)
    fp = FastPath(attention, fused, elementwise, ce, ce_chunk)
    model._lorastudio_fast_path = fp
    return fp


def packed_lm_loss(model: Any, batch: dict[str, Any], *, reduction: str = "mean") -> Any:
    """Loss of one packed row (from `cuda_batch`): mean (or sum) CE over its target tokens."""
    import torch

    fp: FastPath | None = getattr(model, "_lorastudio_fast_path", None)
    backbone, head = causal_lm_parts(model)
    # the varlen attention reads these; transformers' own attention functions ignore them and find the
    # example boundaries from position_ids
    kwargs = {"cu_seq_lens_q": batch["cu_seq_lens"], "cu_seq_lens_k": batch["cu_seq_lens"],
              "max_length_q": batch["max_length"], "max_length_k": batch["max_length"]}
    if fp is not None and fp.attention == "varlen":
        # a precomputed (empty) mask mapping: transformers then builds no mask at all (no L×L tensor,
        # no device sync to detect packed sequences)
        kwargs["attention_mask"] = {"full_attention": None, "sliding_attention": None}
    out = backbone(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False,
                   **kwargs)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch["target_index"])
    targets = batch["target_ids"]
    if fp is not None and fp.ce == "liger":
        total = liger_linear_cross_entropy(hidden, head, targets)
    else:
        total = chunked_linear_cross_entropy(hidden, head, targets, chunk=fp.ce_chunk if fp else 2048)
    if reduction == "mean":
        return total / max(1, batch["num_targets"])
    return total.to(torch.float32)


def fused_adamw(params: Any, lr: float, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
                eps: float = 1e-8):
    """AdamW with the fused CUDA kernel (one launch for all LoRA params); plain AdamW elsewhere.
    `params`: tensors, or param groups (dicts with "params" and their own settings)."""
    import torch

    items = list(params)
    groups = [dict(g) for g in items] if items and isinstance(items[0], dict) else [{"params": items}]
    for group in groups:
        group["params"] = [p for p in group["params"] if p.requires_grad]
    flat = [p for group in groups for p in group["params"]]
    fused = bool(flat) and all(p.is_cuda and p.dtype in (torch.float32, torch.bfloat16) for p in flat)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps, fused=fused)


def configure_allocator() -> None:
    """Expandable segments cut fragmentation for variable-length packs; only before CUDA starts."""
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")


def qlora_quantization_config() -> Any:
    """A transformers BitsAndBytesConfig for 4-bit NF4 base weights (QLoRA). Needs bitsandbytes."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise RuntimeError("4-bit QLoRA needs bitsandbytes: `pip install bitsandbytes` "
                           "(CUDA only); without it the base model is loaded in bf16") from err
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def bitsandbytes_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


def free_gpu_bytes(device: int | None = None) -> int:
    import torch

    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


MEMORY_ENV = "LORASTUDIO_GPU_MEMORY_GB"
CONTEXT_BYTES = 10**9
"""What the CUDA context and library workspaces take of a card before training allocates anything."""


def memory_budget_bytes() -> int | None:
    """LORASTUDIO_GPU_MEMORY_GB in bytes (1e9 per GB, as cards are sold), or None when unset."""
    value = os.environ.get(MEMORY_ENV, "").strip()
    if not value:
        return None
    try:
        gb = float(value)
    except ValueError:
        gb = 0.0
    if gb <= 0:
        from lorastudio.train.config import ConfigError

        raise ConfigError(f"{MEMORY_ENV}={value!r}: give the GPU memory to train within in GB, e.g. 24")
    return int(gb * 1e9)


def apply_memory_budget() -> int:
    """Free bytes to plan for on this process's GPU. With LORASTUDIO_GPU_MEMORY_GB, the caching
    allocator is capped to that budget and the plan gets the budget less the context."""
    import torch

    free = free_gpu_bytes()
    budget = memory_budget_bytes()
    if budget is None:
        return free
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total))
    return min(free, budget - CONTEXT_BYTES)


# ------------------------------------------------------------------------------------------------
# The trainer's hook (lorastudio.train.trainer.device_setup calls `customize` on CUDA)
# ------------------------------------------------------------------------------------------------
COMPILE_MIN_PARAMS = 1_000_000_000
"""Compile the fused kernels only for models this big: compiling costs 20–60 s once, which small
models on small data sets (a whole run in under a minute) never win back. LORASTUDIO_COMPILE=0/1
overrides."""


def batch_from_device(batch: dict[str, Any]) -> dict[str, Any]:
    """`packed_lm_loss` inputs from the trainer's packed batch (already on the GPU: input_ids, labels,
    position_ids of shape (1, T), plus `lengths`, a list of example lengths)."""
    import torch

    ids, pos, lab = batch["input_ids"], batch["position_ids"], batch["labels"].reshape(-1)
    lengths = batch.get("lengths") or []
    if sum(lengths) != ids.shape[-1]:
        lengths = [ids.shape[-1]]
    cu = torch.tensor([0, *accumulate(lengths)], dtype=torch.int32).to(ids.device, non_blocking=True)
    flat_pos = pos.reshape(-1)
    shifted = torch.full_like(lab, -100)
    shifted[:-1] = torch.where(flat_pos[1:] == 0, torch.full_like(lab[1:], -100), lab[1:])
    index = (shifted != -100).nonzero().flatten()  # one device sync per micro-batch
    return {"input_ids": ids, "position_ids": pos, "cu_seq_lens": cu, "max_length": max(lengths),
            "target_index": index, "target_ids": shifted.index_select(0, index), "num_targets": int(index.numel()),
            "num_tokens": int(ids.shape[-1])}


def _want_compile(shape: ModelShape | None) -> bool:
    env = os.environ.get("LORASTUDIO_COMPILE")
    if env in ("0", "1"):
        return env == "1"
    return shape is not None and shape.n_params >= COMPILE_MIN_PARAMS


def customize(cfg: Any, setup: Any) -> Any:
    """Turn the trainer's default CUDA setup into the fast path (the `DeviceSetup` hook).

    - memory auto-fit from the model's config and the free GPU memory: gradient checkpointing (when
      `gradient_checkpointing: auto`), and a smaller micro-batch with more accumulation if the asked
      `batch_tokens` would not fit (tokens per optimizer step unchanged); the reason goes to notes;
    - the loss: `packed_lm_loss` (varlen attention, fused LoRA linears, chunked CE), switched on at the
      first call, when the model is already PEFT-wrapped;
    - bf16 weights without autocast (the fused functions cast the fp32 LoRA masters themselves).
    """
    import torch

    notes = list(getattr(setup, "notes", []))
    shape = None
    try:
        shape = ModelShape.of(cfg.base)
    except Exception as err:  # the loader reports a bad model itself; keep the defaults here
        notes.append(f"auto-fit skipped: could not read the model config ({type(err).__name__})")
    compile_kernels = _want_compile(shape)
    ce_chunk = 2048
    free = apply_memory_budget()
    if memory_budget_bytes() is not None:
        notes.append(f"{MEMORY_ENV}: planning for {free / 1e9:.1f} GB of this GPU")
    if shape is not None:
        try:
            fixed = cfg.gradient_checkpointing if isinstance(cfg.gradient_checkpointing, bool) else None
            shards = getattr(setup, "world", 1) if getattr(setup, "strategy", "ddp") == "fsdp" else 1
            plan = autofit(shape, lora_r=cfg.lora_r, lora_targets=cfg.target_modules, pack_tokens=cfg.batch_tokens,
                           free_bytes=free, max_length=cfg.max_length,
                           bitsandbytes_available=bitsandbytes_available() and cfg.quantize_base != "none",
                           fused_elementwise=compile_kernels, gradient_checkpointing=fixed, weight_shards=shards,
                           force_4bit=cfg.quantize_base == "4bit")
        except MemoryError as err:
            notes.append(f"auto-fit: {err}")
        else:
            ce_chunk = plan.ce_chunk_tokens
            setup.gradient_checkpointing = plan.gradient_checkpointing
            if plan.micro_batch_tokens < cfg.batch_tokens:
                cfg.batch_tokens = plan.micro_batch_tokens
                cfg.gradient_accumulation *= plan.gradient_accumulation
            setup.quantize_4bit = plan.quantize_4bit
            notes.append(f"auto-fit: {plan.reason}")
            cfg.extra = {**getattr(cfg, "extra", {}), "gpu_plan": plan.to_dict()}
    if setup.dtype == torch.bfloat16:
        setup.autocast = False

    def loss_fn(model: Any, batch: dict[str, Any]) -> tuple[Any, int]:
        if getattr(model, "_lorastudio_fast_path", None) is None:
            ce = "liger" if os.environ.get("LORASTUDIO_CE") == "liger" else "chunked"
            fp = enable_fast_path(model, compile=compile_kernels, ce=ce, ce_chunk=ce_chunk)
            log.info("CUDA fast path: %s", fp.to_dict())
        b = batch_from_device(batch)
        return packed_lm_loss(model, b, reduction="sum"), b["num_targets"]

    setup.loss_fn = loss_fn
    notes.append(f"CUDA fast path: varlen attention, fused LoRA, chunked CE"
                 f"{', compiled norms/SwiGLU/rotary' if compile_kernels else ''}")
    setup.notes = notes
    return setup
