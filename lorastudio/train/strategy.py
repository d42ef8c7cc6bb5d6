"""How ranks share a run: one process, DDP (every rank holds the base, LoRA gradients all-reduced) or
FSDP (the base sharded per decoder layer). The trainer asks its strategy instead of branching on the
world size; the collectives themselves live in lorastudio/train/distributed.py.

Every rank builds the same schedule; micro-batch j of a step goes to rank j mod world. Only rank 0
(`writes`) writes events, checkpoints, the adapter and the model card.
"""

from __future__ import annotations

import math
from typing import Any


class Single:
    """One process: no collectives, the model holds its own full weights."""

    name = "single"
    rank = 0
    world = 1
    sharded = False

    @property
    def writes(self) -> bool:
        return self.rank == 0

    # -- model -------------------------------------------------------------------------------
    def wrap(self, model: Any) -> Any:
        return model

    def trainable(self, model: Any) -> list[Any]:
        return [p for p in model.parameters() if p.requires_grad]

    def fit_config(self, cfg: Any, device: str) -> str | None:
        """Adjust `cfg` for this many ranks; a line saying what was decided, or None."""
        return None

    # -- work split ----------------------------------------------------------------------------
    def micro_batches(self, batches: list[list[int]]) -> list[tuple[int, list[int], float]]:
        """(micro-batch number, example indices, loss weight) of the passes this rank runs in one step."""
        return [(m, batches[m], 1.0) for m in range(self.rank, len(batches), self.world)]

    def eval_share(self, batches: list[list[int]]) -> tuple[list[list[int]], int]:
        """This rank's validation batches, and how many zero-weight filler passes it adds."""
        return batches[self.rank::self.world], 0

    # -- collectives ---------------------------------------------------------------------------
    def reduce_step(self, params: list[Any], scalars: list[float]) -> list[float]:
        """Sum each step's LoRA gradients and `scalars` over ranks (one process: unchanged)."""
        return [float(v) for v in scalars]

    def barrier(self) -> None:
        pass

    # -- state for checkpoints (every rank calls these in the same order) -----------------------
    def full_weights(self, model: Any) -> dict[str, Any] | None:
        """The full LoRA weights to save, or None when the model holds them (save_pretrained reads them)."""
        return None

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_weights(self, weights: dict[str, Any], trainable: list[Any]) -> dict[str, Any]:
        return weights

    def load_optimizer(self, optimizer: Any, state: dict[str, Any], trainable: list[Any]) -> None:
        for param in trainable:  # fp32 master copies, as in setup
            param.data = param.data.float()
        optimizer.load_state_dict(state)

    def weights_device(self, device: str) -> str:
        """Where to load checkpoint weights before they are copied into place."""
        return device


class DataParallel(Single):
    """Several ranks, each holding the whole base; LoRA gradients summed in one all-reduce per step."""

    name = "ddp"

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world

    def fit_config(self, cfg: Any, device: str) -> str | None:
        """Micro-batch j of a step goes to rank j mod world: with fewer micro-batches per step than ranks,
        smaller packs and more accumulation keep the tokens per step and give every rank work."""
        cfg.gpus = self.world
        note = f"{self.world} ranks ({device}); rank 0 writes events, checkpoints and the adapter"
        if cfg.gradient_accumulation < self.world:
            factor = math.ceil(self.world / cfg.gradient_accumulation)
            cfg.batch_tokens = max(cfg.max_length, cfg.batch_tokens // factor)
            cfg.gradient_accumulation *= factor
            note += (f"; batch_tokens {cfg.batch_tokens} × gradient_accumulation {cfg.gradient_accumulation} "
                     "so that every rank has a micro-batch in each step")
        if self.sharded:
            note += "; FSDP: the base is sharded over the ranks (fully_shard per decoder layer)"
        elif device == "cuda":
            note += "; DDP: every GPU holds the whole base, the LoRA gradients are all-reduced"
        return note

    def reduce_step(self, params: list[Any], scalars: list[float]) -> list[float]:
        from lorastudio.train.distributed import allreduce_step

        return allreduce_step(params, scalars)

    def barrier(self) -> None:
        from lorastudio.train.distributed import barrier

        barrier()

    def weights_device(self, device: str) -> str:
        return "cpu"  # "cuda" would mean GPU 0 for every rank; copied into place afterwards


class FullyShardedDataParallel(DataParallel):
    """The base sharded over the ranks (fully_shard per decoder layer); FSDP reduces the LoRA gradients
    in backward, so the step's all-reduce carries only the scalars. FSDP's collectives need every rank
    in every pass: a rank short of micro-batches adds zero-weighted passes over one example."""

    name = "fsdp"
    sharded = True

    def wrap(self, model: Any) -> Any:
        from lorastudio.train.distributed import apply_fsdp

        return apply_fsdp(model)

    def micro_batches(self, batches: list[list[int]]) -> list[tuple[int, list[int], float]]:
        # FSDP averages the ranks' gradients; the step needs their sum: weight = world size.
        mine = [(m, batches[m], float(self.world)) for m in range(self.rank, len(batches), self.world)]
        short = math.ceil(len(batches) / self.world) - len(mine)
        return mine + [(len(batches) + k, batches[0][:1], 0.0) for k in range(short)]

    def eval_share(self, batches: list[list[int]]) -> tuple[list[list[int]], int]:
        share = batches[self.rank::self.world]
        return share, math.ceil(len(batches) / self.world) - len(share)

    def reduce_step(self, params: list[Any], scalars: list[float]) -> list[float]:
        return super().reduce_step([], scalars)

    def full_weights(self, model: Any) -> dict[str, Any] | None:
        from lorastudio.train.distributed import full_state

        return full_state(model)

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        from lorastudio.train.distributed import full_optimizer_state

        return full_optimizer_state(optimizer)

    def load_weights(self, weights: dict[str, Any], trainable: list[Any]) -> dict[str, Any]:
        from lorastudio.train.distributed import shard_adapter_weights

        return shard_adapter_weights(weights, trainable)

    def load_optimizer(self, optimizer: Any, state: dict[str, Any], trainable: list[Any]) -> None:
        from lorastudio.train.distributed import load_full_optimizer_state

        load_full_optimizer_state(optimizer, state)


def for_run(rank: int, world: int, kind: str) -> Single:
    """The strategy for this process: `kind` is the device setup's choice ("ddp" or "fsdp") when world > 1."""
    if world <= 1:
        return Single()
    return FullyShardedDataParallel(rank, world) if kind == "fsdp" else DataParallel(rank, world)
