"""Device choices: the one place a backend (lorastudio/train/gpu.py, cpu.py) customises the loop —
dtype, autocast, attention implementation, checkpointing, the loss function, kernel patches."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lorastudio.train.config import ConfigError, TrainConfig
from lorastudio.train.tokenize import IGNORE_INDEX

LossFn = Callable[[Any, dict[str, Any]], tuple[Any, float]]


@dataclass
class DeviceSetup:
    device: str
    dtype: Any                         # torch dtype the base weights are loaded in and autocast uses
    autocast: bool                     # run forward under torch.autocast(dtype)
    attn_implementation: str | None    # passed to from_pretrained; must honour packed position_ids
    gradient_checkpointing: bool
    loss_fn: LossFn                    # (peft_model, batch) -> (sum of token losses, number of target tokens)
    prepare_model: Callable[[Any], Any] | None = None  # e.g. kernel patches, applied before LoRA wrapping
    notes: list[str] = field(default_factory=list)
    world: int = 1                     # ranks training together (`--gpus N` under torchrun)
    strategy: str = "ddp"              # several ranks: "ddp" (each holds the base) or "fsdp" (base sharded)
    quantize_4bit: bool = False        # load the base in 4-bit NF4 (QLoRA, bitsandbytes)


def causal_lm_loss(model, batch: dict[str, Any]) -> tuple[Any, float]:
    """Summed next-token cross-entropy over target (assistant) tokens of one packed row.

    The LM head runs only on positions that have a target: with a 151k vocabulary the full logits
    tensor would be the largest thing in memory (4096 tokens × 151,936 × 4 bytes = 2.5 GB).
    """
    import torch.nn.functional as F

    fast = getattr(model, "_lorastudio_loss", None)  # a device fast path (lorastudio/train/cpu.py), same loss
    if fast is not None:
        return fast(model, batch)
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = causal_lm.get_decoder()(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                     use_cache=False).last_hidden_state[0]
    targets = batch["labels"][0, 1:]
    keep = targets != IGNORE_INDEX
    logits = causal_lm.get_output_embeddings()(hidden[:-1][keep]).float()
    if batch.get("repeats") is None:
        return F.cross_entropy(logits, targets[keep], reduction="sum"), int(keep.sum())
    weights = batch["repeats"][0, 1:][keep]  # loss weights (key tokens, questions): a target's CE × `repeats`
    losses = F.cross_entropy(logits, targets[keep], reduction="none")
    return (losses * weights.float()).sum(), float(weights.sum())


def device_setup(cfg: TrainConfig) -> DeviceSetup:
    import torch

    from lorastudio.models import pick_device, pick_dtype
    from lorastudio.train import distributed

    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    checkpointing = cfg.gradient_checkpointing
    if checkpointing == "auto":
        # CPU: memory is rarely the limit at our batch sizes and recomputation costs ~30 % time.
        checkpointing = device == "cuda"
    setup = DeviceSetup(
        device=device,
        dtype=dtype,
        autocast=dtype != torch.float32,
        # sdpa honours packed position_ids (block-diagonal mask) and is the fastest built-in on CPU.
        attn_implementation="sdpa",
        gradient_checkpointing=bool(checkpointing),
        loss_fn=causal_lm_loss,
    )
    _rank, setup.world = distributed.rank_and_world()
    if setup.world > 1:
        setup.strategy = distributed.pick_strategy(cfg.base, device)
    if device == "cuda":
        from lorastudio.train import gpu  # auto-fit, varlen attention, fused kernels, chunked CE

        setup = gpu.customize(cfg, setup)  # may change attention, loss, kernels; returns a DeviceSetup
    elif device == "cpu":
        from lorastudio.train import cpu  # fused LoRA, no autocast copies, per-document attention

        setup = cpu.customize(cfg, setup)
    if cfg.quantize_base == "4bit":
        setup.quantize_4bit = True
    if setup.quantize_4bit:
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError("quantize_base=4bit needs bitsandbytes: `pip install bitsandbytes` (or 'lorastudio[gpu]'), "
                              "or set quantize_base=none")
        setup.notes.append("QLoRA: the base is loaded in 4-bit NF4 (bitsandbytes), LoRA trains in bf16/fp32")
        if setup.strategy == "fsdp":  # a 4-bit base fits one GPU: replicate it instead of sharding
            setup.strategy = "ddp"
    return setup
