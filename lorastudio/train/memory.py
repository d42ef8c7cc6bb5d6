"""Memory planning for LoRA training on a GPU: pure arithmetic; importing it imports no torch.

Shared by the recommender (`recommend._gpu_plan`, to show what a card of that size gets) and the CUDA
fast path (`gpu.customize`, which re-plans from the memory free when training starts), through the same
entry, `plan_for_settings`, so the two cannot drift apart: both plan for the LoRA modules actually
adapted (`target_modules`), the kernels actually compiled (`compiles_kernels`) and the user's fixed
choices (`gradient_checkpointing`, `quantize_base`).

- `ModelShape`: the numbers of a decoder-only transformer that decide its memory and FLOPs.
- `autofit(shape, ...) -> FitPlan`: gradient checkpointing, micro-batch tokens, accumulation, 4-bit
  base, the cross-entropy chunk, an estimated peak and a one-line reason.
- `bf16_weight_bytes`, `ce_chunk_tokens`: the pieces autofit adds up.

Measured against: docs/BENCHMARKS.md (7B at 16k tokens: 98.3 GB estimated, 98.0 measured).
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

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
# The one planning entry of the recommender and the CUDA hook
# ------------------------------------------------------------------------------------------------
COMPILE_MIN_PARAMS = 1_000_000_000
"""Compile the fused elementwise kernels only for models this big: compiling costs 20–60 s once, which
small models on small data sets (a whole run in under a minute) never win back. LORASTUDIO_COMPILE=0/1
overrides."""


def compiles_kernels(shape: ModelShape | None) -> bool:
    """Whether the CUDA path compiles RMSNorm/SwiGLU/rotary for this model (it changes the activation
    memory: eager ones keep fp32 copies)."""
    env = os.environ.get("LORASTUDIO_COMPILE")
    if env in ("0", "1"):
        return env == "1"
    return shape is not None and shape.n_params >= COMPILE_MIN_PARAMS


def bitsandbytes_available() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def plan_for_settings(shape: ModelShape, settings: Any, *, free_bytes: int, bitsandbytes_available: bool = False,
                      weight_shards: int = 1) -> FitPlan:
    """`autofit` for training settings: a TrainConfig, or a mapping of its fields (the recommender's).

    Reads `lora_r`, `target_modules` (LoRA on the modules actually adapted: `all-mlp` adapts 3 of
    the 7 linears of a block), `batch_tokens`, `max_length`, `gradient_checkpointing` (a bool fixes
    the choice; `auto` lets the plan decide) and `quantize_base` (`none` never plans 4-bit, `4bit`
    always does). Raises `MemoryError` as autofit does.
    """
    def get(key: str, default: Any) -> Any:
        value = settings.get(key) if isinstance(settings, Mapping) else getattr(settings, key, None)
        return default if value is None else value

    checkpointing = get("gradient_checkpointing", "auto")
    quantize = get("quantize_base", "auto")
    return autofit(shape, lora_r=int(get("lora_r", 16)), lora_targets=get("target_modules", "all-linear"),
                   pack_tokens=int(get("batch_tokens", 16384)), max_length=int(get("max_length", 1024)),
                   free_bytes=int(free_bytes), bitsandbytes_available=bitsandbytes_available and quantize != "none",
                   fused_elementwise=compiles_kernels(shape),
                   gradient_checkpointing=checkpointing if isinstance(checkpointing, bool) else None,
                   weight_shards=weight_shards, force_4bit=quantize == "4bit")
