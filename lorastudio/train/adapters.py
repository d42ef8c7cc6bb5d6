"""The LoRA wrapping of a loaded base model: which modules to adapt, PEFT's wrapper, NEFTune noise."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from lorastudio.train.config import ConfigError, TrainConfig

_MLP_BLOCKS = ("mlp", "feed_forward", "ffn", "block_sparse_moe")


def mlp_linears(model) -> list[str]:
    """Full names of the linear layers inside the feed-forward blocks (`….mlp.gate_proj`, `….mlp.c_fc`),
    the `target_modules="all-mlp"` choice; empty when the model has no block named like one."""
    import torch

    return [name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and any(part in _MLP_BLOCKS for part in name.split(".")[:-1])]


def lora_targets(model: Any, cfg: TrainConfig) -> list[str] | str:
    """PEFT's `target_modules` for cfg: "all-mlp" resolved to the feed-forward linears' full names
    ("all-linear" when the model has none), otherwise cfg's own value."""
    if cfg.target_modules == "all-mlp":
        return mlp_linears(model) or "all-linear"
    return cfg.target_modules


def wrap_lora(model: Any, cfg: TrainConfig, *, gradient_checkpointing: bool,
              note: Callable[[str], Any]) -> Any:
    """`model` wrapped by PEFT with cfg's LoRA shape; `note(text)` reports a choice the user should see."""
    from peft import LoraConfig, get_peft_model

    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    targets = lora_targets(model, cfg)
    if cfg.target_modules == "all-mlp" and targets == "all-linear":
        note(f"target_modules=all-mlp: {cfg.base} has no recognisable feed-forward blocks, "
             "so LoRA goes on all linear layers")
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM", bias="none")
    try:
        return get_peft_model(model, lora)
    except ValueError as error:
        raise ConfigError(f"target_modules={cfg.target_modules!r} does not fit {cfg.base}: {error}") from error


# NEFTune: uniform noise on input embeddings while training (Jain et al. 2023), scaled per example.
def neftune_hook(alpha: float, lengths_ref: list[list[int]]):
    import torch

    def hook(module, _inputs, output):
        if not module.training:
            return output
        dims = output.shape[-1]
        scale = torch.empty(output.shape[:-1] + (1,), dtype=output.dtype, device=output.device)
        start = 0
        for length in lengths_ref[0] or [output.shape[-2]]:
            scale[..., start:start + length, :] = alpha / math.sqrt(length * dims)
            start += length
        return output + torch.empty_like(output).uniform_(-1, 1) * scale

    return hook
