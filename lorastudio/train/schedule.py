"""The schedule: which examples go in which micro-batch of which step, fixed by the seed up front, so the
total step count is known for the progress bar and a resumed run replays the same order; and the
learning-rate factor of each step."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lorastudio.train.config import TrainConfig
from lorastudio.train.tokenize import pack


@dataclass
class Step:
    micro_batches: list[list[int]]
    epoch: float          # epochs completed when this step ends (2.5 = half-way through the third)
    epoch_end: bool


def build_schedule(lengths: Sequence[int], cfg: TrainConfig,
                   rotation: Sequence[tuple[int, int] | None] | None = None) -> list[Step]:
    """`rotation[i]` = (k, n): example i is trained only in epochs e with e % n == k (None: every epoch)."""
    steps: list[Step] = []
    accumulation = cfg.gradient_accumulation
    epoch = 0
    while True:
        order = list(range(len(lengths)))
        random.Random(cfg.seed * 1_000_003 + epoch).shuffle(order)
        if rotation is not None:
            order = [i for i in order if rotation[i] is None or rotation[i][0] == epoch % rotation[i][1]]
        batches = pack(lengths, order, cfg.batch_tokens)
        if cfg.max_steps is None:
            remaining = cfg.num_epochs - epoch
            if remaining <= 0:
                break
            if remaining < 1:
                batches = batches[: max(1, math.ceil(len(batches) * remaining))]
        groups = [batches[i:i + accumulation] for i in range(0, len(batches), accumulation)]
        per_epoch = len(pack(lengths, order, cfg.batch_tokens))
        done = 0
        for index, group in enumerate(groups):
            done += len(group)
            steps.append(Step(group, epoch + done / per_epoch, index == len(groups) - 1))
            if cfg.max_steps is not None and len(steps) >= cfg.max_steps:
                steps[-1].epoch_end = True
                return steps
        epoch += 1
    return steps


def lr_lambda(cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    warmup = int(round(cfg.warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.lr_scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if cfg.lr_scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1.0 - progress)

    return factor
