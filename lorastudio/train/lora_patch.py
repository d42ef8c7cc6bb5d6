"""Which PEFT LoRA linears a fused LoRA function may run, and swapping their `forward` (CPU and CUDA
fast paths: `cpu.fuse_lora_linears`, `gpu.fuse_lora_linears`)."""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from typing import Any

ORIGINAL_FORWARD = "_lorastudio_original_forward"
"""Where a patched module keeps PEFT's own forward (the fallback for anything the fused one can't do)."""


def plain_lora_linears(model: Any, *, allow_dropout: bool) -> Iterator[Any]:
    """PEFT `lora.Linear` modules with a plain `nn.Linear` base (not a 4-bit or other subclass), no
    DoRA/variants, no fan_in_fan_out, not patched yet; with `allow_dropout=False` also no LoRA dropout."""
    import torch
    from peft.tuners.lora import Linear as LoraLinear

    for module in model.modules():
        if not isinstance(module, LoraLinear) or type(module.base_layer) is not torch.nn.Linear:
            continue
        if getattr(module, "lora_variant", None) and any(module.lora_variant.values()):
            continue
        if not allow_dropout and any(not isinstance(d, torch.nn.Identity) for d in module.lora_dropout.values()):
            continue
        if getattr(module, "fan_in_fan_out", False) or hasattr(module, ORIGINAL_FORWARD):
            continue
        yield module


def patch_lora_linears(model: Any, forward: Callable[..., Any], *, allow_dropout: bool) -> int:
    """Make `forward(module, x, ...)` the forward of every `plain_lora_linears` module (PEFT's own stays
    at `ORIGINAL_FORWARD`); returns how many were patched."""
    modules = list(plain_lora_linears(model, allow_dropout=allow_dropout))
    for module in modules:
        setattr(module, ORIGINAL_FORWARD, module.forward)
        module.forward = types.MethodType(forward, module)
    return len(modules)
