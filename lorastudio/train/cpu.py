"""The CPU fast path: what the trainer switches on when it trains on the CPU (`trainer.device_setup`).

Measured on the default model (docs/ENGINE.md, "Measured"), the plain PEFT + autocast loop spent
about a third of its time outside the GEMMs: every LoRA linear cast its input bf16 → fp32 (PEFT) →
bf16 (autocast) and its A/B weights fp32 → bf16, then multiplied by the scaling and added in separate
passes, forward and backward; the packed row's attention ran over the whole L×L block-diagonal mask;
the cross-entropy kept two fp32 copies of the (targets × 151k) logits. Here, with the same numerics,
through the kernels the CUDA path uses too (`lorastudio.train.kernels`; this module only chooses):

- base weights stay bf16 and **autocast is off**; each vanilla LoRA linear is one autograd function
  (`kernels.fuse_lora_linears`, LoRA dropout included): `y = x Wᵀ + s·(x Aᵀ) Bᵀ` with the low-rank
  update added by the GEMM's epilogue (`addmm_`), A and B cast from their fp32 masters once per call —
  the compute dtypes autocast used, without its copies. The optimizer (AdamW) still holds fp32 LoRA
  weights and fp32 state.
- **per-document attention** (`kernels.doc_attention`): each document of the packed row
  (`position_ids` restart at 0) is attended to on its own, causal, so no L×L mask exists and only the
  diagonal blocks are computed (8 rows of ~80 tokens: ~8× less attention work); documents ≤
  `SMALL_DOC` tokens through fp32 matmul + softmax (faster than the CPU flash kernel's backward at that
  size), longer ones through `scaled_dot_product_attention(is_causal=True)`. (CUDA picks varlen flash.)
- the LM head + cross-entropy over target positions only (`kernels.chunked_linear_cross_entropy`,
  `CE_CHUNK` rows at a time), one fp32 log-softmax, the gradient computed in the same pass (no second
  fp32 copy of the targets × 151k logits, no autograd graph), its (rows × vocab) buffers kept from step to
  step (`kernels.CE_WORKSPACE`: fresh ones above glibc's mmap threshold cost ~0.6 GB of new zeroed pages a step).
- `torch.set_num_threads` = the physical cores this process may use (hyper-threads slow GEMMs).

`LORASTUDIO_CPU_FAST=0` turns all of it off (the plain PEFT + autocast loop, for comparison).

Two more levers for fp32 runs (issue 13, docs/BENCHMARKS.md "fp32 CPU training levers"), chosen by
`customize` per run (`levers`) and applied by `enable`/`packed_loss`:
- `cpu_int8`: the decoder layers' frozen W products (forward and input gradient) as int8 fbgemm GEMMs,
  the LoRA branch fp32 (`LORASTUDIO_CPU_INT8=1` on; default `INT8_DEFAULT`, off: 1.1× on AVX2, loss not proven);
- `cpu_prefix`: the template head all examples of a packed row share, computed once, exact
  (`LORASTUDIO_CPU_PREFIX=0/1`; default `PREFIX_DEFAULT`, on; never with NEFTune or gradient
  checkpointing).
Without `customize` (tests, benchmarks calling `packed_loss`) only an explicit `=1` turns one on.
"""

from __future__ import annotations

import os
from typing import Any

from lorastudio.train import cpu_int8, cpu_prefix, kernels

ATTN_IMPLEMENTATION = "lorastudio_cpu_docs"
LEVERS_ATTR = "_lorastudio_cpu_levers"
INT8_DEFAULT = True
"""int8 frozen-base GEMMs on for fp32 CPU training of models with a hidden size ≥ `INT8_MIN_HIDDEN`
(`LORASTUDIO_CPU_INT8=0` off): a whole default run of the demo file on 2 AVX2 cores 1.24× faster than
exact fp32 (1.32× in the interleaved bench, with the shared head) with the same recall from the same seed;
its 30-step loss curve within 1 % of fp32's (docs/BENCHMARKS.md, "fp32 CPU training levers")."""
INT8_MIN_HIDDEN = 512
"""Below this hidden size the int8 packing and per-token scales cost more than the small GEMMs save:
the default stays on the exact fp32 path there (tests' tiny models, for one)."""
PREFIX_DEFAULT = True
"""The shared template head once per packed row on by default: exact, fewer tokens computed."""


def enabled() -> bool:
    return os.environ.get("LORASTUDIO_CPU_FAST", "1") != "0"


def switch(env: str) -> bool | None:
    """A lever's environment switch (`cpu_int8.ENV`, `cpu_prefix.ENV`): True (=1), False (=0, false,
    no, off), None (unset or auto: the default decides)."""
    value = os.environ.get(env, "").strip().lower()
    if value in ("", "auto"):
        return None
    return value not in ("0", "false", "no", "off")


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (hyper-thread siblings counted once).
    The one count used everywhere: `lorastudio.hardware.physical_cores`."""
    from lorastudio import hardware

    return hardware.physical_cores()


# ------------------------------------------------------------------------------------------------
# The CPU choices among the shared kernels (lorastudio.train.kernels)
# ------------------------------------------------------------------------------------------------
SMALL_DOC = 256
"""Documents up to this many tokens get `kernels.doc_attention`'s fp32 matmul + softmax branch: on a
2-core CPU its forward+backward is ~2× faster than the flash kernel's for ~80-token documents, and its
(H × L × L) fp32 scores stay small; longer ones go through sdpa `is_causal`."""

CE_CHUNK = 1024
"""Target rows per chunk of the LM head + cross-entropy (fp32 logits of 1024 × 151k = 0.6 GB)."""


def doc_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                  scaling: float | None = None, dropout: float = 0.0, **kwargs: Any) -> tuple[Any, None]:
    """`kernels.doc_attention` with this module's `SMALL_DOC` (read at each call)."""
    return kernels.doc_attention(module, query, key, value, attention_mask, scaling, dropout,
                                 small_doc=SMALL_DOC, **kwargs)


def register_attention() -> str:
    return kernels.register_attention(ATTN_IMPLEMENTATION, doc_attention)


def fuse_lora_linears(model: Any) -> int:
    """`kernels.fuse_lora_linears`, LoRA dropout included."""
    return kernels.fuse_lora_linears(model, allow_dropout=True)


def levers(model: Any) -> dict[str, bool]:
    """The levers this model runs: what `customize` chose for the run, else only those switched on
    explicitly by their environment variable."""
    chosen = getattr(model, LEVERS_ATTR, None)
    if chosen is not None:
        return chosen
    return {"int8": switch(cpu_int8.ENV) is True and cpu_int8.available(), "prefix": switch(cpu_prefix.ENV) is True}


def enable(model: Any) -> kernels.FastPath:
    """Switch a PEFT-wrapped causal LM to the CPU fast path (idempotent): per-document attention,
    fused LoRA linears (dropout too), chunked head + cross-entropy; norms and MLPs left eager; then
    the run's `levers` (int8 frozen-base GEMMs, the shared template head's attention)."""
    fp = getattr(model, "_lorastudio_fast_path", None)
    if fp is None:
        fp = kernels.install(model, attention=register_attention(), per_document=True, fuse_lora=True,
                             lora_dropout=True, elementwise=None, ce="chunked", ce_chunk=CE_CHUNK)
        chosen = levers(model)
        if chosen["int8"]:
            cpu_int8.enable(model)
        if chosen["prefix"]:
            cpu_prefix.enable(model)
    return fp


def packed_loss(model: Any, batch: dict[str, Any]) -> tuple[Any, float]:
    """(summed next-token CE over target tokens, number of targets) of one packed row — the same
    quantity as `device.causal_lm_loss`, on the fast path (`kernels.packed_loss`, through the levers)."""
    enable(model)
    chosen = levers(model)
    inner = cpu_int8.packed_loss if chosen["int8"] else kernels.packed_loss
    if chosen["prefix"]:
        return cpu_prefix.packed_loss(model, batch, inner=inner)
    return inner(model, batch)


def choose_levers(cfg: Any, setup: Any) -> tuple[dict[str, bool], list[str]]:
    """({"int8": …, "prefix": …}, notes) for a run: the environment switches, else the defaults."""
    import torch

    notes = []
    int8 = switch(cpu_int8.ENV)
    if int8 is None:  # the default; never under FSDP, whose ranks hold only shards of the frozen W
        int8 = INT8_DEFAULT and setup.dtype == torch.float32 and getattr(setup, "strategy", "ddp") != "fsdp"
    if int8 and not cpu_int8.available():
        notes.append("int8 base GEMMs off: this torch build or CPU has no fbgemm/AVX2")
        int8 = False
    prefix = switch(cpu_prefix.ENV)
    if prefix is None:
        prefix = PREFIX_DEFAULT
    if prefix and getattr(cfg, "neftune_alpha", None):
        notes.append("shared template head off: NEFTune adds noise per example")
        prefix = False
    if prefix and getattr(setup, "gradient_checkpointing", False):
        # the recomputation runs in backward, after `packed_loss` has returned: the row's layout is gone
        notes.append("shared template head off: gradient checkpointing recomputes the layers without it")
        prefix = False
    return {"int8": bool(int8), "prefix": bool(prefix)}, notes


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
        if chosen["int8"] and not forced_int8:  # the default: on where the GEMMs are big enough to gain
            hidden = int(getattr(getattr(model, "config", None), "hidden_size", 0) or 0)
            chosen["int8"] = hidden >= INT8_MIN_HIDDEN
            setup.notes.append(
                f"int8 base GEMMs (fbgemm) on: hidden size {hidden} ≥ {INT8_MIN_HIDDEN} (LORASTUDIO_CPU_INT8=0: "
                "exact fp32 products)" if chosen["int8"] else
                f"int8 base GEMMs off: hidden size {hidden} < {INT8_MIN_HIDDEN}, too small to gain")
        # `device.causal_lm_loss` (still the setup's loss_fn) hands over to `packed_loss`, which fuses the
        # LoRA linears on its first call, once PEFT has wrapped the model (the attribute is found through
        # PEFT's wrappers).
        model._lorastudio_loss = packed_loss
        setattr(model, LEVERS_ATTR, chosen)
        return model

    chosen, notes = choose_levers(cfg, setup)
    forced_int8 = switch(cpu_int8.ENV) is True
    extra = (", int8 base GEMMs (fbgemm)" if chosen["int8"] and forced_int8 else "") + \
        (", shared template head once per row" if chosen["prefix"] else "")
    setup.prepare_model = prepare_model
    setup.notes = [*getattr(setup, "notes", []),
                   f"CPU fast path: {torch.get_num_threads()} threads, fused LoRA, per-document attention{extra}",
                   *notes]
    return setup
