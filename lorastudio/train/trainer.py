"""The training run: `train(cfg) -> TrainResult`, a `Trainer` with an explicit lifecycle.

    lorastudio train data.jsonl --base tiny-random --output runs/smoke --set max_steps=5   # seconds
    lorastudio train data.jsonl --base default --output runs/shop                          # CPU, minutes

`Trainer.setup()` creates every piece of state — device choices (device.py), data (dataset.py), the
LoRA-wrapped model (adapters.py), the step schedule (schedule.py), optimizer and scheduler, and, on
resume, the checkpoint's state (checkpoints.py); `fit()` runs the steps with validation and early
stopping (evaluation.py) and checkpoints; `save()` writes the adapter, the resolved config and the model card. How
ranks share the work (one process, DDP, FSDP) is the strategy's business (strategy.py). Every step
is an event (events.py). SIGINT/SIGTERM save a checkpoint and stop; `resume=True` continues from the
latest checkpoint exactly (same data order, optimizer, scheduler and RNG state).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorastudio.knowledge import write_knowledge
from lorastudio.train import checkpoints, dataset, kernels, protect
from lorastudio.train.adapters import lora_targets, neftune_hook, wrap_lora
from lorastudio.train.card import model_card
from lorastudio.train.config import ConfigError, TrainConfig
from lorastudio.train.dataset import DataUnusable
from lorastudio.train.device import DeviceSetup, causal_lm_loss, device_setup
from lorastudio.train.evaluation import Evaluation
from lorastudio.train.events import EventCallback, EventLog
from lorastudio.train.schedule import Step, lr_lambda
from lorastudio.train.stopping import StepAborted, StopFlag, TrainingInterrupted, install_abort_hooks
from lorastudio.train.tokenize import Example, collate_packed

# Steps (and seconds) measured before the run's own speed replaces the recommender's assumption. The
# session's first step is not measured: it pays one-off costs (the CPU path's int8 weight packs, lazy
# kernel set-up) that made a 25-minute int8 run's first re-estimate 59 % long.
CALIBRATION_STEPS = 2
CALIBRATION_MIN_S = 20.0


@dataclass
class TrainResult:
    adapter_dir: str
    steps: int
    metrics: dict[str, Any] = field(default_factory=dict)
    early_stopped: bool = False


@dataclass
class Progress:
    """What a checkpoint carries besides weights, optimizer, scheduler and RNG."""

    best_valid_loss: float | None = None
    bad_evals: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed_before: float = 0.0  # earlier sessions of this run (before a resume)
    tokens_before: int = 0
    session_tokens: int = 0
    session_start: float = field(default_factory=time.time)

    def elapsed(self) -> float:
        return self.elapsed_before + (time.time() - self.session_start)

    def to_state(self) -> dict[str, Any]:
        return {"best_valid_loss": self.best_valid_loss, "bad_evals": self.bad_evals, "history": self.history,
                "elapsed_s": self.elapsed(), "tokens_seen": self.tokens_before + self.session_tokens}

    def load(self, state: dict[str, Any]) -> None:
        self.best_valid_loss, self.bad_evals = state["best_valid_loss"], state["bad_evals"]
        self.history, self.elapsed_before = state["history"], state["elapsed_s"]
        self.tokens_before = state["tokens_seen"]
        self.session_start = time.time()


def train(cfg: TrainConfig, on_event: EventCallback | None = None, *, resume: bool = False,
          conversations: Sequence[Any] | None = None, val_conversations: Sequence[Any] | None = None,
          stop: threading.Event | None = None) -> TrainResult:
    """Fine-tune ``cfg.base`` with LoRA on ``cfg.data`` (or ``conversations``) and write ``cfg.output_dir``.

    Raises DataUnusable (nothing to train on), ConfigError (bad/incompatible settings), ModelError
    (model cannot be loaded), TrainingInterrupted (signal/stop event, after saving a checkpoint).
    """
    from lorastudio.train import distributed

    if cfg.device != "cpu":  # before CUDA starts (it may not be used: then this changes nothing)
        from lorastudio.train.gpu import configure_allocator

        configure_allocator()
    # Under torchrun (`lorastudio train --gpus N`): join the group; only rank 0 writes files and events.
    own_group = distributed.is_worker() and distributed.rank_and_world()[1] > 1 and not distributed.joined()
    if own_group:
        distributed.init()
    rank, _world = distributed.rank_and_world()
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = checkpoints.latest(output_dir) if resume else None
    if resume and checkpoint is None:
        raise ConfigError(f"--resume: no checkpoint in {output_dir / checkpoints.DIR}; start without --resume")
    if not resume and rank == 0:
        # A fresh run in a reused directory: old events and checkpoints belong to another run and would
        # confuse readers and a later --resume. (The old adapter files are overwritten at the end.)
        (output_dir / "events.jsonl").unlink(missing_ok=True)
        checkpoints.clear(output_dir)
    log = EventLog(output_dir / "events.jsonl", on_event) if rank == 0 else EventLog(None)
    try:
        trainer = Trainer(cfg, log, conversations=conversations, val_conversations=val_conversations, stop=stop)
        return trainer.run(checkpoint.path if checkpoint else None)
    except TrainingInterrupted:
        raise
    except Exception as error:
        log.emit("error", message=f"{type(error).__name__}: {error}", code=error_code(error))
        raise
    finally:
        log.close()
        if own_group:
            distributed.cleanup()


def error_code(error: BaseException) -> str:
    """The `code` of an error event: what the job service tells the client (exit codes are coarser)."""
    from lorastudio.models import ModelError

    if isinstance(error, DataUnusable):
        return "invalid_file"
    if isinstance(error, ConfigError):
        return "invalid_hyperparameters"
    if isinstance(error, ModelError):
        return "model_unavailable"
    return "training_failed"


class Trainer:
    """One fine-tuning run. `setup(checkpoint)` → `fit()` → `save(...)`; `run()` does all three."""

    def __init__(self, cfg: TrainConfig, log: EventLog, *, conversations: Sequence[Any] | None = None,
                 val_conversations: Sequence[Any] | None = None, stop: threading.Event | None = None):
        self.cfg = TrainConfig.from_dict(cfg.to_dict())  # our own copy: we record resolved values in it
        self.log = log
        self.stop = StopFlag(stop)
        self.output_dir = Path(cfg.output_dir)
        self._given = (conversations, val_conversations)

    def run(self, checkpoint: Path | None = None) -> TrainResult:
        with self.stop.installed():
            self.setup(checkpoint)
            try:
                steps, early_stopped = self.fit()
            finally:
                kernels.release_ce_buffers()  # the CPU loss's kept buffers (~0.5 GB), also after a stop or error
            return self.save(steps, early_stopped)

    # -- setup ---------------------------------------------------------------------------------
    def setup(self, checkpoint: Path | None = None) -> None:
        import torch

        from lorastudio.models import load_model, load_tokenizer, resolve_model
        from lorastudio.train import strategy
        from lorastudio.train.distributed import rank_and_world

        cfg, log = self.cfg, self.log
        self.device: DeviceSetup = device_setup(cfg)
        self.strategy = strategy.for_run(*rank_and_world(), self.device.strategy)
        world_note = self.strategy.fit_config(cfg, self.device.device)
        if cfg.protect_general and self.strategy.name == "fsdp":  # before the model loads
            raise ConfigError("protect_general is not supported with FSDP (sharded LoRA weights); set it to 0")
        for note in self.device.notes + ([world_note] if world_note else []):
            log.stage("prepare", note)  # auto-fit plan, QLoRA, fast paths, ranks: what was decided
        log.stage("prepare", f"reading {cfg.data or 'the given conversations'} and {cfg.base}")
        self.model_dir = resolve_model(cfg.base)
        # Data first: bad data fails in seconds, not after a model load.
        train_convs, val_convs, self.data_report = dataset.load_conversations(cfg, *self._given)
        self._knowledge = train_convs + val_convs  # the user's rows as written, before augmentation
        tokenizer = load_tokenizer(self.model_dir)
        log.stage("prepare", f"loading {cfg.base} on {self.device.device} ({_dtype_name(self.device)})")
        quantization = None
        if self.device.quantize_4bit:
            from lorastudio.train.gpu import qlora_quantization_config

            quantization = qlora_quantization_config()
        model, _ = load_model(self.model_dir, dtype=self.device.dtype, device=self.device.device,
                              attn_implementation=self.device.attn_implementation,
                              quantization_config=quantization)
        train_convs, replay_convs = dataset.augment(train_convs, model=model, tokenizer=tokenizer, cfg=cfg, log=log)
        directions = None
        if cfg.protect_general:
            log.stage("prepare", f"protect_general: the top {cfg.protect_general:.0%} of each adapted linear's "
                                 f"input directions on {len(replay_convs)} replay rows (an eigendecomposition "
                                 "per adapted linear: seconds on a GPU, minutes on a CPU)")
            directions = protect.general_directions(model, tokenizer, replay_convs, cfg.protect_general,
                                                    lora_targets(model, cfg), cfg.system_prompt)
        if self.device.prepare_model:
            decided = len(self.device.notes)
            model = self.device.prepare_model(model) or model
            for note in self.device.notes[decided:]:  # choices that needed the loaded model
                log.stage("prepare", note)
        torch.manual_seed(cfg.seed)  # LoRA A's random init: the same seed gives the same run
        self.model = wrap_lora(model, cfg, gradient_checkpointing=self.device.gradient_checkpointing,
                               note=lambda text: log.stage("prepare", text))
        for param in self.strategy.trainable(self.model):  # fp32 masters of the LoRA weights
            param.data = param.data.float()
        self._protected: list = []
        if directions is not None:
            self._protected = protect.lora_a_weights(self.model, directions)
            protect.project(self._protected)
        self._neftune_lengths: list[list[int]] = [[]]
        if cfg.neftune_alpha:
            self.model.get_input_embeddings().register_forward_hook(
                neftune_hook(cfg.neftune_alpha, self._neftune_lengths))
        self.model = self.strategy.wrap(self.model)
        self.trainable = self.strategy.trainable(self.model)  # sharded under FSDP
        # Written before training so an interrupted run can be resumed with its own settings.
        cfg.extra = {**cfg.extra, "resolved_base": str(Path(self.model_dir).resolve()),
                     "device": self.device.device, "dtype": _dtype_name(self.device)}
        if self.strategy.writes:
            cfg.to_yaml(self.output_dir / "train_config.yaml")

        data = dataset.tokenize(train_convs, val_convs, tokenizer=tokenizer, cfg=cfg, log=log, report=self.data_report)
        self.train_examples, self.val_examples, self.schedule = data.train, data.val, data.schedule
        self.total_steps = len(self.schedule)
        self.optimizer, self.scheduler, self.scaler = build_optimizer(self.trainable, cfg, self.device,
                                                                      self.total_steps, lora_b_params(self.model))
        self.evaluation = Evaluation(cfg, log, self.strategy, self.model, self.val_examples, self._forward_loss,
                                     self._write_adapter, self.output_dir)
        self.progress = Progress()
        self.calibrated = False
        self._after_first: tuple[float, int] | None = None  # (time, tokens) at the end of the first step
        self._timed = [0.0, 0, 0]  # seconds, tokens and steps of the optimizer steps after this session's first
        self.start_step = self._restore(checkpoint) if checkpoint else 0

    # -- fit -----------------------------------------------------------------------------------
    def fit(self) -> tuple[int, bool]:
        """Run the remaining steps; (last step, early stopped). Raises TrainingInterrupted on a stop."""
        cfg, progress = self.cfg, self.progress
        progress.session_start = time.time()
        self.log.stage("train", f"training {sum(p.numel() for p in self.trainable):,} LoRA parameters for "
                                f"{self.total_steps} steps" + (f" from step {self.start_step}" if self.start_step else ""))
        if self.device.device == "cpu" and self.strategy.world == 1:  # ranks stop together, at the all-reduce
            install_abort_hooks(self.model, self.stop)
        self.model.train()
        early_stopped, last_saved, step = False, self.start_step, self.start_step
        for step, plan in self.schedule.iterate(self.start_step):
            began, tokens_before = time.time(), progress.session_tokens
            train_loss, stop_now = self._step(step, plan, last_saved)
            if step - self.start_step > 1:  # the first step is mostly one-off costs (`_report` says the same)
                self._timed[0] += time.time() - began
                self._timed[1] += progress.session_tokens - tokens_before
                self._timed[2] += 1
            self._report(step, plan, train_loss)
            valid_loss = None
            at_eval = (step % cfg.eval_every == 0) if cfg.eval_every else plan.epoch_end
            if (at_eval or step == self.total_steps) and self.val_examples:
                self.log.stage("evaluate", f"validation loss at step {step}")
                try:
                    valid_loss = self.evaluation.loss()
                except StepAborted:  # stop asked during evaluation: the step itself is complete
                    self.model.train()
                    self._interrupt(step, last_saved, train_loss, None)
                progress.history[-1]["valid_loss"] = valid_loss
                self.log.emit("eval", step=step, valid_loss=round(valid_loss, 5))
                early_stopped = self.evaluation.should_stop(step, valid_loss, progress)
            if (step % cfg.save_every == 0) if cfg.save_every else plan.epoch_end:
                self._save_checkpoint(step, train_loss, valid_loss)
                last_saved = step
            if stop_now or (self.strategy.world == 1 and self.stop.requested):
                self._interrupt(step, last_saved, train_loss, valid_loss)
            if early_stopped:
                break
        self._remember_speed()
        return step, early_stopped

    def _remember_speed(self) -> None:
        """What this CPU trained at, for the next estimate here (`speeds`); one process on the CPU only."""
        if self.device.device != "cpu" or self.strategy.world != 1:
            return
        from lorastudio import hardware
        from lorastudio.train import speeds
        from lorastudio.train.recommend import int8_switched_off

        seconds, tokens, steps = self._timed
        dtype = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(_dtype_name(self.device), "fp32")
        speeds.record(machine=speeds.machine_id(hardware.cpu_class(), hardware.physical_cores()), base=self.cfg.base,
                      dtype=dtype, int8=dtype == "fp32" and not int8_switched_off(),
                      question_loss=self.cfg.question_loss_weight > 0, batch_tokens=self.cfg.batch_tokens,
                      tokens=tokens, seconds=seconds, steps=steps)

    def _step(self, step: int, plan: Step, last_saved: int) -> tuple[float, bool]:
        """One optimizer step over this rank's micro-batches; (train loss, stop requested on any rank)."""
        import torch

        group_targets = sum(self.train_examples[i].target_weight for mb in plan.micro_batches for i in mb)
        loss_total, step_tokens = 0.0, 0
        rng_at_start = checkpoints.rng_state()
        try:
            for micro, indices, weight in self.strategy.micro_batches(plan.micro_batches):
                if self.stop.requested and self.strategy.world == 1:
                    raise StepAborted
                # Dropout/NEFTune noise depend on (seed, step, micro-batch) only: the same on any number
                # of ranks, and after --resume.
                torch.manual_seed(self.cfg.seed * 1_000_003 + step * 1_009 + micro)
                loss_sum, _n = self._forward_loss(indices, self.train_examples)
                # Token-level mean over the whole accumulation group, so packing/accumulation never change
                # what one target token weighs (a key token `key_token_weight` times as much as others).
                loss = loss_sum / group_targets
                if weight != 1:
                    loss = loss * weight
                (self.scaler.scale(loss) if self.scaler else loss).backward()
                if weight:
                    loss_total += float(loss_sum.detach())
                    step_tokens += sum(self.train_examples[i].num_tokens for i in indices)
        except StepAborted:
            # Stop asked mid-step: drop the half-computed gradients and checkpoint the last finished step,
            # with the RNG as it was when this step began, so --resume redoes it identically.
            self.optimizer.zero_grad(set_to_none=True)
            checkpoints.set_rng_state(rng_at_start)
            self._interrupt(step - 1, last_saved)
        # Sum the LoRA gradients (each rank's share is already divided by the step's global target count),
        # the loss, the tokens and the stop requests over ranks; all stop together on the summed flag.
        loss_total, tokens, stops = self.strategy.reduce_step(self.trainable, [loss_total, step_tokens,
                                                                               float(self.stop.requested)])
        self.stop.peer = self.stop.peer or stops > 0
        self.progress.session_tokens += int(tokens)
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self._protected:
            protect.project(self._protected)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_total / group_targets, stops > 0

    def _report(self, step: int, plan: Step, train_loss: float) -> None:
        """The step's metrics event; after the first steps, the run's own speed re-estimates the time."""
        progress = self.progress
        now = time.time()
        session_s = max(now - progress.session_start, 1e-9)
        done = step - self.start_step
        if done == 1:
            self._after_first = (now, progress.session_tokens)
        rate = progress.session_tokens / session_s  # includes evaluation and checkpoints: an honest ETA
        if done > 1 and self._after_first:  # from the end of the first step on: without its one-off costs
            since, tokens = self._after_first
            rate = (progress.session_tokens - tokens) / max(now - since, 1e-9)
        remaining_tokens = self.schedule.total_tokens - plan.tokens_done
        eta = remaining_tokens / max(rate, 1e-9)
        if done == 1 and (planned := self._planned_rate()):  # step 1 is mostly one-off costs: the estimate's rate
            eta = remaining_tokens / planned
        elapsed = progress.elapsed()
        metrics = {
            "step": step, "total_steps": self.total_steps, "epoch": round(plan.epoch, 4),
            "percent": round(100.0 * step / self.total_steps, 2), "eta_s": round(eta, 1),
            "tokens_per_s": round(rate, 1), "loss": round(train_loss, 5),
            "lr": self.scheduler.get_last_lr()[0], "elapsed_s": round(elapsed, 2),
            "cost": round(elapsed / 3600.0 * self.cfg.price_per_hour, 4),
        }
        progress.history.append({k: metrics[k] for k in ("step", "epoch", "loss", "lr")})
        self.log.emit("metrics", **metrics)
        if not self.calibrated and done - 1 >= CALIBRATION_STEPS and (
                session_s >= CALIBRATION_MIN_S or step == self.total_steps or done >= 4 * CALIBRATION_STEPS):
            self.calibrated = True  # once per session: the recommender's figure was an assumption, this is measured
            self.log.emit("estimate", tokens_per_s=round(rate, 1), remaining_s=round(eta, 1),
                          finish_s=round(elapsed + eta, 1), steps_measured=done - 1,
                          estimated_s=(self.cfg.extra.get("estimate") or {}).get("seconds"))

    def _planned_rate(self) -> float | None:
        """Training tokens a second in the recommender's estimate of this run (`extra["estimate"]`), if it has one."""
        estimate = self.cfg.extra.get("estimate") or {}
        tokens, train_s = estimate.get("tokens"), (estimate.get("stages") or {}).get("train")
        if isinstance(tokens, (int, float)) and isinstance(train_s, (int, float)) and tokens > 0 and train_s > 0:
            return tokens / train_s
        return None

    def _forward_loss(self, indices: list[int], examples: list[Example]):
        batch = collate_packed([examples[i] for i in indices])
        batch = {k: (v.to(self.device.device) if hasattr(v, "to") else v) for k, v in batch.items()}
        if self.cfg.neftune_alpha:
            self._neftune_lengths[0] = batch["lengths"]
        with self._autocast():
            return self.device.loss_fn(self.model, batch)

    def _autocast(self):
        import torch

        if not self.device.autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.device, dtype=self.device.dtype)

    # -- checkpoints ---------------------------------------------------------------------------
    def _write_adapter(self, path: Path, weights: dict[str, Any] | None) -> None:
        if weights is None:
            self.model.save_pretrained(path)
        else:
            self.model.save_pretrained(path, state_dict=weights)

    def _save_checkpoint(self, step: int, train_loss: float | None, valid_loss: float | None) -> Path:
        weights = self.strategy.full_weights(self.model)  # collectives: every rank, same order
        optimizer = self.strategy.optimizer_state(self.optimizer)
        path = checkpoints.step_path(self.output_dir, step)
        if not self.strategy.writes:
            return path
        state = {"step": step, "optimizer": optimizer, "scheduler": self.scheduler.state_dict(),
                 "scaler": self.scaler.state_dict() if self.scaler else None, "rng": checkpoints.rng_state(),
                 "config": self.cfg.to_dict(), **self.progress.to_state()}
        checkpoints.save(path, lambda tmp: self._write_adapter(tmp, weights), state)
        self.log.emit("checkpoint", step=step, path=str(path), train_loss=train_loss, valid_loss=valid_loss)
        checkpoints.prune(self.output_dir, self.cfg.keep_checkpoints)
        return path

    def _restore(self, checkpoint: Path) -> int:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        state = checkpoints.load_state(checkpoint)
        changed = checkpoints.resume_mismatch(state.get("config", {}), self.cfg.to_dict())
        if changed:
            raise ConfigError(f"--resume: settings differ from the interrupted run ({', '.join(changed)}); "
                              "resume with the same settings, or start a new output directory")
        weights = load_file(str(checkpoint / "adapter_model.safetensors"),
                            device=self.strategy.weights_device(self.device.device))
        result = set_peft_model_state_dict(self.model, self.strategy.load_weights(weights, self.trainable))
        if getattr(result, "unexpected_keys", None):
            raise ConfigError(f"--resume: {checkpoint} does not match this model's LoRA layout")
        self.strategy.load_optimizer(self.optimizer, state["optimizer"], self.trainable)
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        checkpoints.set_rng_state(state["rng"])
        self.progress.load(state)
        self.log.emit("resumed", step=state["step"], path=str(checkpoint))
        return int(state["step"])

    def _interrupt(self, step: int, last_saved: int, train_loss: float | None = None,
                   valid_loss: float | None = None) -> None:
        """Checkpoint ``step`` (unless just saved), report, and raise TrainingInterrupted."""
        path = checkpoints.step_path(self.output_dir, step)
        # Several ranks decide alike without looking at rank 0's files (FSDP gathers on every rank).
        if last_saved != step or (self.strategy.world == 1 and not (path / checkpoints.STATE_FILE).is_file()):
            path = self._save_checkpoint(step, train_loss, valid_loss)
        self.strategy.barrier()  # no rank leaves (torchrun would stop the others) before rank 0 has saved
        reason = signal.Signals(self.stop.signal).name if self.stop.signal else "stop requested"
        self.log.stage("save", f"interrupted ({reason}) at step {step}; resume with --resume")
        raise TrainingInterrupted(step, str(path))

    # -- save ----------------------------------------------------------------------------------
    def save(self, steps: int, early_stopped: bool) -> TrainResult:
        """Write the adapter (the best checkpoint's under early stopping), config, data report, card."""
        cfg, out = self.cfg, self.output_dir
        weights = self.strategy.full_weights(self.model)
        if not self.strategy.writes:  # rank 0 writes the adapter, config, model card and the `done` event
            return TrainResult(adapter_dir=str(out), steps=steps, early_stopped=early_stopped)
        self.log.stage("save", f"writing the adapter to {out}")
        best = checkpoints.best_path(out)
        use_best = bool(cfg.early_stopping_patience and (best / "adapter_model.safetensors").is_file())
        for name in ("adapter_model.safetensors", "adapter_config.json"):
            (out / name).unlink(missing_ok=True)
            if use_best:
                shutil.copy2(best / name, out / name)
        if not use_best:
            self._write_adapter(out, weights)
        # Plain PEFT must find the base: point at the resolved local directory, never a bare "default".
        config_path = out / "adapter_config.json"
        adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
        adapter_config["base_model_name_or_path"] = str(Path(self.model_dir).resolve())
        config_path.write_text(json.dumps(adapter_config, indent=2, ensure_ascii=False), encoding="utf-8")
        metrics = final_metrics(self, steps, early_stopped, use_best)
        cfg.to_yaml(out / "train_config.yaml")
        if cfg.knowledge_rows:
            write_knowledge(out, self._knowledge)
        (out / "data_report.json").write_text(
            json.dumps(self.data_report, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
        (out / "README.md").write_text(model_card(cfg, self.data_report, metrics), encoding="utf-8")
        self.log.stage("done", f"adapter saved to {out}")
        self.log.emit("done", adapter_dir=str(out), metrics=metrics)
        return TrainResult(adapter_dir=str(out), steps=steps, metrics=metrics, early_stopped=early_stopped)


def optimizer_groups(trainable: list[Any], cfg: TrainConfig, b_params: set[int] = frozenset()) -> list[dict]:
    """AdamW's parameter groups: matrices with `cfg.weight_decay`, vectors without; with LoRA+
    (`cfg.lora_plus_ratio` > 1) the LoRA B matrices (ids in `b_params`) in a group of their own at that
    many times the learning rate. Empty groups are left out."""
    ratio = float(cfg.lora_plus_ratio)
    plus = [p for p in trainable if p.ndim >= 2 and id(p) in b_params] if ratio != 1.0 else []
    plus_ids = {id(p) for p in plus}
    groups = [{"params": [p for p in trainable if p.ndim >= 2 and id(p) not in plus_ids],
               "weight_decay": cfg.weight_decay},
              {"params": plus, "weight_decay": cfg.weight_decay, "lr": cfg.learning_rate * ratio},
              {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def lora_b_params(model: Any) -> set[int]:
    """Ids of the LoRA B matrices (PEFT names them `…lora_B.<adapter>.weight`)."""
    return {id(p) for name, p in model.named_parameters() if ".lora_B." in name}


def build_optimizer(trainable: list[Any], cfg: TrainConfig, device: DeviceSetup,
                    total_steps: int, b_params: set[int] = frozenset()) -> tuple[Any, Any, Any]:
    """AdamW (fused on CUDA) over the LoRA weights, the warm-up/decay scheduler, fp16's grad scaler.
    `b_params`: ids of the LoRA B matrices, for LoRA+ (`optimizer_groups`)."""
    import torch

    groups = optimizer_groups(trainable, cfg, b_params)
    if device.device == "cuda":  # one fused kernel for all LoRA params instead of one per tensor
        from lorastudio.train.gpu import fused_adamw

        optimizer = fused_adamw(groups, lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8)
    else:
        optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
    scaler = torch.amp.GradScaler("cuda") if device.dtype == torch.float16 else None
    return optimizer, scheduler, scaler


def final_metrics(run: Trainer, steps: int, early_stopped: bool, use_best: bool) -> dict[str, Any]:
    """The `done` event's metrics (also the model card's)."""
    progress = run.progress
    losses = [h["loss"] for h in progress.history]
    valid = [h["valid_loss"] for h in progress.history if h.get("valid_loss") is not None]
    elapsed = progress.elapsed()
    metrics = {
        "steps": steps, "total_steps": run.total_steps,
        "trained_tokens": progress.tokens_before + progress.session_tokens,  # all sessions (the job's)
        "epochs": progress.history[-1]["epoch"] if progress.history else 0.0,
        "train_loss": losses[-1] if losses else None, "first_train_loss": losses[0] if losses else None,
        "valid_loss": valid[-1] if valid else None, "best_valid_loss": progress.best_valid_loss,
        "early_stopped": early_stopped, "used_best_checkpoint": use_best, "elapsed_s": round(elapsed, 1),
        "tokens_per_s": round(progress.session_tokens / max(1e-9, time.time() - progress.session_start), 1),
        "device": run.device.device, "dtype": _dtype_name(run.device),
        "cost": round(elapsed / 3600.0 * run.cfg.price_per_hour, 4),
    }
    if run.device.device == "cuda":  # this process's (rank 0's) GPU, model load included
        import torch

        metrics["gpu_peak_allocated_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
        metrics["gpu_peak_reserved_gb"] = round(torch.cuda.max_memory_reserved() / 1e9, 2)
    if run.strategy.world > 1:
        metrics["strategy"] = run.strategy.name
    return metrics


def _dtype_name(setup: DeviceSetup) -> str:
    return str(setup.dtype).split(".")[-1]


__all__ = ["DataUnusable", "DeviceSetup", "Progress", "Step", "TrainResult", "Trainer", "TrainingInterrupted",
           "causal_lm_loss", "device_setup", "error_code", "lr_lambda", "neftune_hook", "train"]
