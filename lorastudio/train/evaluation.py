"""Validation loss and early stopping: what the trainer asks at each evaluation point."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorastudio.train import checkpoints
from lorastudio.train.config import TrainConfig
from lorastudio.train.events import EventLog
from lorastudio.train.tokenize import Example, pack


class Evaluation:
    """Mean validation loss per target token over every rank, and the patience rule that keeps the best
    adapter (`checkpoints.best_path`) while the loss improves."""

    def __init__(self, cfg: TrainConfig, log: EventLog, strategy: Any, model: Any, examples: list[Example],
                 forward_loss: Callable[[list[int], list[Example]], Any],
                 write_adapter: Callable[[Path, Any], None], output_dir: Path) -> None:
        self.cfg, self.log, self.strategy, self.model = cfg, log, strategy, model
        self.examples, self.forward_loss = examples, forward_loss
        self.write_adapter, self.output_dir = write_adapter, output_dir

    def loss(self) -> float | None:
        """Every rank calls it; the result is global. None without validation examples."""
        import torch

        if not self.examples:
            return None
        self.model.eval()
        total, count = 0.0, 0
        batches = pack([e.num_tokens for e in self.examples], range(len(self.examples)), self.cfg.batch_tokens)
        share, fillers = self.strategy.eval_share(batches)
        with torch.no_grad():
            for indices in share:
                loss_sum, n = self.forward_loss(indices, self.examples)
                total += float(loss_sum)
                count += n
            for _ in range(fillers):  # FSDP: every rank takes part in every forward's all-gathers
                self.forward_loss(batches[0][:1], self.examples)
        total, count = self.strategy.reduce_step([], [total, count])
        self.model.train()
        return total / max(1, count)

    def should_stop(self, step: int, valid_loss: float, progress: Any) -> bool:
        """Record `valid_loss` in `progress` (best, evaluations without improvement); True to stop."""
        patience = self.cfg.early_stopping_patience
        if progress.best_valid_loss is None or valid_loss < progress.best_valid_loss - 1e-4:
            progress.best_valid_loss, progress.bad_evals = valid_loss, 0
            if patience:
                weights = self.strategy.full_weights(self.model)
                if self.strategy.writes:
                    best = checkpoints.best_path(self.output_dir)
                    checkpoints.atomic_dir(best, lambda tmp: self.write_adapter(tmp, weights))
                    (best / "step.txt").write_text(str(step))
            return False
        progress.bad_evals += 1
        if patience and progress.bad_evals >= patience:
            self.log.stage("evaluate", f"early stopping at step {step}: validation loss has not improved for "
                                       f"{patience} evaluation(s); keeping the best adapter")
            return True
        return False
