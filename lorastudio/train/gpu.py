"""The CUDA fast path: what the trainer switches on when a GPU is present (`trainer.device_setup` →
`customize`). The kernels are `lorastudio.train.kernels` (shared with the CPU path); this module
chooses among them and adds what only a GPU needs:

- attention: `kernels.varlen_attention` (torch's flash varlen kernel, per-document, GQA, no L×L
  mask), or sdpa with transformers' block-diagonal mask where varlen is missing (`enable_fast_path`);
- LoRA linears: `kernels.fuse_lora_linears` for layers without LoRA dropout (those keep PEFT's own);
- RMSNorm, SwiGLU, rotary: `kernels.fuse_elementwise`, compiled for models of ≥ 1 B params
  (`memory.compiles_kernels`; LORASTUDIO_COMPILE=0/1 overrides);
- the loss: `kernels.packed_loss` with the chunked linear+cross-entropy, chunk rows from auto-fit's
  budget, or liger-kernel's fused one (LORASTUDIO_CE=liger, if installed);
- memory auto-fit (`lorastudio.train.memory`, pure, shared with the recommender): gradient
  checkpointing, micro-batch tokens, accumulation, 4-bit base; LORASTUDIO_GPU_MEMORY_GB=24 trains
  within that much of each GPU (the allocator capped, the plan made for it);
- `fused_adamw` (the trainer's optimizer on CUDA), `qlora_quantization_config` (bitsandbytes),
  `configure_allocator`, `cuda_batch` (a packed row's boundaries and targets derived on the CPU and
  copied without a device sync).

The trainer and `bench/gpu_bench.py` call the same functions. Measured numbers: docs/BENCHMARKS.md.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from lorastudio.train import kernels
from lorastudio.train.kernels import (
    FastPath,
    causal_lm_parts,
    chunked_linear_cross_entropy,
    fuse_elementwise,
    liger_linear_cross_entropy,
    set_attention,
    varlen_attention,
    varlen_available,
)
from lorastudio.train.memory import (
    COMPILE_MIN_PARAMS,
    GIB,
    FitPlan,
    ModelShape,
    autofit,
    bf16_weight_bytes,
    bitsandbytes_available,
    ce_chunk_tokens,
    compiles_kernels,
    plan_for_settings,
)

__all__ = [  # this module's own API, and the shared pieces it re-exports (planning: lorastudio.train.memory)
    "ATTN_IMPLEMENTATION", "CE_CHUNK", "COMPILE_MIN_PARAMS", "CONTEXT_BYTES", "GIB", "MEMORY_ENV", "FastPath",
    "FitPlan", "ModelShape", "apply_memory_budget", "autofit", "batch_from_device", "bf16_weight_bytes",
    "bitsandbytes_available", "causal_lm_parts", "ce_chunk_tokens", "chunked_linear_cross_entropy",
    "compiles_kernels", "configure_allocator", "cuda_batch", "customize", "enable_fast_path", "free_gpu_bytes",
    "fuse_elementwise", "fuse_lora_linears", "fused_adamw", "liger_linear_cross_entropy", "memory_budget_bytes",
    "packed_lm_loss", "plan_for_settings", "qlora_quantization_config", "register_attention", "set_attention",
    "varlen_attention", "varlen_available",
]

log = logging.getLogger(__name__)

ATTN_IMPLEMENTATION = "lorastudio_varlen"
CE_CHUNK = 2048
"""Rows per cross-entropy chunk when auto-fit did not size it (`FitPlan.ce_chunk_tokens` otherwise)."""


# ------------------------------------------------------------------------------------------------
# The CUDA choices among the shared kernels
# ------------------------------------------------------------------------------------------------
def register_attention() -> str:
    return kernels.register_attention(ATTN_IMPLEMENTATION, kernels.varlen_attention)


def fuse_lora_linears(model: Any) -> int:
    """`kernels.fuse_lora_linears` for the LoRA linears without dropout; others keep PEFT's forward."""
    return kernels.fuse_lora_linears(model, allow_dropout=False)


def enable_fast_path(model: Any, *, attention: str = "auto", compile: bool = True, ce: str = "chunked",
                     ce_chunk: int = CE_CHUNK, fuse_lora: bool = True) -> FastPath:
    """Switch a PEFT-wrapped causal LM (bf16, on CUDA) to the fast path. Idempotent enough to call once.

    attention: "varlen" (torch's flash varlen kernel), "sdpa" (transformers builds a block-diagonal
    mask from position_ids: correct, O(T²)), or "auto" (varlen where available).
    """
    if attention == "auto":
        attention = "varlen" if varlen_available() else "sdpa"
    varlen = attention == "varlen"
    return kernels.install(model, attention=register_attention() if varlen else attention, per_document=varlen,
                           fuse_lora=fuse_lora, lora_dropout=False, elementwise=compile, ce=ce, ce_chunk=ce_chunk,
                           label=attention)


def cuda_batch(input_ids: Any, position_ids: Any, labels: Any, device: Any = "cuda") -> dict[str, Any]:
    """From one packed row (1-D or (1, T) CPU tensors) make the inputs of `packed_lm_loss`: derived on
    the CPU (`kernels.packed_batch`), then copied (pinned, non-blocking), so no step waits for the GPU."""
    import torch

    batch = kernels.packed_batch(torch.as_tensor(input_ids), torch.as_tensor(position_ids), torch.as_tensor(labels))
    pin = torch.cuda.is_available() and str(device).startswith("cuda")
    return {k: ((v.pin_memory() if pin else v).to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
            for k, v in batch.items()}


def batch_from_device(batch: dict[str, Any]) -> dict[str, Any]:
    """`packed_lm_loss` inputs from the trainer's packed batch (already on the GPU: input_ids, labels,
    position_ids of shape (1, T), plus `lengths`, a list of example lengths)."""
    return kernels.packed_batch(batch["input_ids"], batch["position_ids"], batch["labels"], batch.get("lengths"),
                                batch.get("repeats"))


def packed_lm_loss(model: Any, batch: dict[str, Any], *, reduction: str = "mean") -> Any:
    """Loss of one packed row (from `cuda_batch`): mean (or sum) CE over its target tokens."""
    total, count = kernels.packed_loss(model, batch)
    return total / max(1, count) if reduction == "mean" else total


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
# The trainer's hook (lorastudio.train.device.device_setup calls `customize` on CUDA)
# ------------------------------------------------------------------------------------------------
def customize(cfg: Any, setup: Any) -> Any:
    """Turn the trainer's default CUDA setup into the fast path (the `DeviceSetup` hook).

    - memory auto-fit from the model's config and the free GPU memory: gradient checkpointing (when
      `gradient_checkpointing: auto`), and a smaller micro-batch with more accumulation if the asked
      `batch_tokens` would not fit (tokens per optimizer step unchanged); the reason goes to notes;
    - the loss: `kernels.packed_loss` with this module's choices (`enable_fast_path`: varlen attention,
      fused LoRA linears, compiled kernels, chunked CE), switched on at the first call, when the model
      is already PEFT-wrapped;
    - bf16 weights without autocast (the fused functions cast the fp32 LoRA masters themselves).
    """
    import torch

    notes = list(getattr(setup, "notes", []))
    shape = None
    try:
        shape = ModelShape.of(cfg.base)
    except Exception as err:  # the loader reports a bad model itself; keep the defaults here
        notes.append(f"auto-fit skipped: could not read the model config ({type(err).__name__})")
    compile_kernels = compiles_kernels(shape)
    ce_chunk = CE_CHUNK
    free = apply_memory_budget()
    if memory_budget_bytes() is not None:
        notes.append(f"{MEMORY_ENV}: planning for {free / 1e9:.1f} GB of this GPU")
    if shape is not None:
        try:
            shards = getattr(setup, "world", 1) if getattr(setup, "strategy", "ddp") == "fsdp" else 1
            # the recommender plans through the same function (recommend._gpu_plan)
            plan = plan_for_settings(shape, cfg, free_bytes=free, bitsandbytes_available=bitsandbytes_available(),
                                     weight_shards=shards)
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

    def loss_fn(model: Any, batch: dict[str, Any]) -> tuple[Any, float]:
        if getattr(model, "_lorastudio_fast_path", None) is None:
            ce = "liger" if os.environ.get("LORASTUDIO_CE") == "liger" else "chunked"
            fp = enable_fast_path(model, compile=compile_kernels, ce=ce, ce_chunk=ce_chunk)
            log.info("CUDA fast path: %s", fp.to_dict())
        return kernels.packed_loss(model, batch_from_device(batch))

    setup.loss_fn = loss_fn
    notes.append(f"CUDA fast path: varlen attention, fused LoRA, chunked CE"
                 f"{', compiled norms/SwiGLU/rotary' if compile_kernels else ''}")
    setup.notes = notes
    return setup
