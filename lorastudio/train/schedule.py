"""The schedule: which examples go in which micro-batch of which step, fixed by the seed, so the total
step count is known for the progress bar and a resumed run replays the same order; and the
learning-rate factor of each step.

The schedule is lazy (`Schedule`): an epoch's steps are made when training reaches it, so memory stays
that of one epoch's order whatever `num_epochs`/`max_steps` say (issue 16: a list of every step grew
~10 MB/s for `n_epochs: 1e9`). Its length and token total are counted once up front, without keeping
the steps.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from lorastudio.train.config import TrainConfig
from lorastudio.train.tokenize import pack


@dataclass
class Step:
    micro_batches: list[list[int]]
    epoch: float          # epochs completed when this step ends (2.5 = half-way through the third)
    epoch_end: bool
    tokens: int = 0       # tokens in this step's micro-batches
    tokens_done: int = 0  # tokens of the schedule up to and including this step


class Schedule:
    """The run's steps, made one epoch at a time. `len()` is the step count; `iterate(start)` yields
    `(step number, Step)` after step `start` (a resume skips whole epochs without making their steps)."""

    def __init__(self, lengths: Sequence[int], cfg: TrainConfig,
                 rotation: Sequence[tuple[int, int] | None] | None = None) -> None:
        self.lengths, self.cfg, self.rotation = lengths, cfg, rotation
        self.total_steps, self.total_tokens = 0, 0
        for groups, _epoch, _per_epoch in self._epochs():
            self.total_steps += len(groups)
            self.total_tokens += sum(self._tokens(g) for g in groups)

    def __len__(self) -> int:
        return self.total_steps

    def _tokens(self, group: list[list[int]]) -> int:
        return sum(self.lengths[i] for mb in group for i in mb)

    def _epochs(self) -> Iterator[tuple[list[list[list[int]]], int, int]]:
        """(this epoch's step groups, epoch index, micro-batches in a full epoch), up to the last step."""
        cfg, lengths, accumulation = self.cfg, self.lengths, self.cfg.gradient_accumulation
        steps, epoch = 0, 0
        while True:
            order = list(range(len(lengths)))
            random.Random(cfg.seed * 1_000_003 + epoch).shuffle(order)
            if self.rotation is not None:
                rotation = self.rotation
                order = [i for i in order if rotation[i] is None or rotation[i][0] == epoch % rotation[i][1]]
            batches = pack(lengths, order, cfg.batch_tokens)
            per_epoch = len(batches)
            if cfg.max_steps is None:
                remaining = cfg.num_epochs - epoch
                if remaining <= 0:
                    return
                if remaining < 1:
                    batches = batches[: max(1, math.ceil(len(batches) * remaining))]
            groups = [batches[i:i + accumulation] for i in range(0, len(batches), accumulation)]
            if cfg.max_steps is not None and steps + len(groups) >= cfg.max_steps:
                yield groups[: cfg.max_steps - steps], epoch, per_epoch
                return
            yield groups, epoch, per_epoch
            steps += len(groups)
            epoch += 1

    def iterate(self, start: int = 0) -> Iterator[tuple[int, Step]]:
        number, tokens_done = 0, 0
        for groups, epoch, per_epoch in self._epochs():
            if number + len(groups) <= start:  # a resume: skip the epoch, keep the count
                number += len(groups)
                tokens_done += sum(self._tokens(g) for g in groups)
                continue
            done = 0
            for index, group in enumerate(groups):
                done += len(group)
                number += 1
                tokens = self._tokens(group)
                tokens_done += tokens
                if number <= start:
                    continue
                last = index == len(groups) - 1 or number == self.cfg.max_steps
                yield number, Step(group, epoch + done / per_epoch, last, tokens, tokens_done)


def build_schedule(lengths: Sequence[int], cfg: TrainConfig,
                   rotation: Sequence[tuple[int, int] | None] | None = None) -> list[Step]:
    """Every step as a list (small data, tests). `rotation[i]` = (k, n): example i is trained only in
    epochs e with e % n == k (None: every epoch)."""
    return [step for _, step in Schedule(lengths, cfg, rotation).iterate()]


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
