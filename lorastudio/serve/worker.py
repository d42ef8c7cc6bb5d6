"""The job worker: validates files, runs one training subprocess per device, records what it says.

It lives in a thread of the server but trains in child processes (`lorastudio train …`, each in
its own process group), so a trainer crash never takes the server down and cancel can stop the
trainer with everything it spawned. The trainer's `events.jsonl` is tailed into the store; the
byte offset is saved in the same transaction as each event, so after a SIGKILL of the server the
tail continues exactly where it stopped and interrupted jobs resume from their last checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorastudio.serve.settings import Settings
from lorastudio.serve.store import Store, now
from lorastudio.train import checkpoints
from lorastudio.train.distributed import PDEATHSIG_LAUNCHER

log = logging.getLogger("lorastudio.serve")

# Job hyperparameters with OpenAI names; everything else must be a TrainConfig field.
OPENAI_HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier")
# TrainConfig fields the job itself decides; a client may not point them elsewhere (nor at the server's
# files: `replay_prompts` is a path).
RESERVED_FIELDS = ("data", "base", "output_dir", "validation_data", "extra", "replay_prompts")
# Hyperparameters that choose the recommender's schedule rather than set a TrainConfig field.
SCHEDULE_CHOICES = ("task", "quick", "time_budget_s")

# The trainer runs through distributed.PDEATHSIG_LAUNCHER, so a SIGKILLed server never leaves an
# orphan trainer writing into a job directory (SIGTERM makes the trainer save a checkpoint first).


def fine_tuned_model_name(job: dict) -> str:
    """`ft:<base>:<suffix>:<job id>` (OpenAI's naming, without an organisation)."""
    base = Path(job["model"]).name if ("/" in job["model"] or os.sep in job["model"]) else job["model"]
    suffix = job.get("suffix") or "lorastudio"
    return f"ft:{base}:{suffix}:{job['id']}"


def _pid_runs_job(pid: int, job_dir: str) -> bool:
    """Is `pid` still our trainer for this job (and not a recycled pid of something else)?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return sys.platform != "linux"  # no /proc: trust the pid
    return job_dir in cmdline


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        time.sleep(0.1)
    return False


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "?"


def translate_event(raw: dict) -> tuple[str, str, str, dict | None]:
    """events.jsonl object → (level, OpenAI event type, message, data)."""
    kind = raw.get("type")
    if kind == "metrics":
        data = {
            "step": raw.get("step"), "total_steps": raw.get("total_steps"), "train_loss": raw.get("loss"),
            "epoch": raw.get("epoch"), "percent": raw.get("percent"), "eta_s": raw.get("eta_s"),
            "tokens_per_s": raw.get("tokens_per_s"), "learning_rate": raw.get("lr"),
            "elapsed_s": raw.get("elapsed_s"), "cost": raw.get("cost"),
        }
        msg = f"Step {raw.get('step')}/{raw.get('total_steps')}: training loss={_fmt(raw.get('loss'))}"
        return "info", "metrics", msg, data
    if kind == "eval":
        data = {"step": raw.get("step"), "valid_loss": raw.get("valid_loss")}
        return "info", "metrics", f"Step {raw.get('step')}: validation loss={_fmt(raw.get('valid_loss'))}", data
    if kind == "stage":
        return "info", "message", str(raw.get("message") or f"Stage: {raw.get('stage')}"), {"stage": raw.get("stage")}
    if kind == "checkpoint":
        return "info", "message", f"Checkpoint saved at step {raw.get('step')}", {"step": raw.get("step")}
    if kind == "resumed":
        return "info", "message", f"Training resumed from the checkpoint at step {raw.get('step')}", \
            {"step": raw.get("step")}
    if kind == "done":
        metrics = raw.get("metrics") if isinstance(raw.get("metrics"), dict) else None
        return "info", "message", "Training finished; adapter saved", metrics
    if kind == "estimate":
        data = {k: raw.get(k) for k in ("tokens_per_s", "remaining_s", "finish_s", "estimated_s", "steps_measured")}
        minutes = (raw.get("remaining_s") or 0) / 60
        return "info", "metrics", (f"Speed measured over {raw.get('steps_measured')} steps: "
                                   f"{_fmt(raw.get('tokens_per_s'), 1)} tokens/s; about {minutes:.1f} min left"), data
    if kind == "error":
        return "error", "message", str(raw.get("message") or "training error"), {"code": raw.get("code")}
    return "info", "message", str(raw.get("message") or json.dumps(raw, ensure_ascii=False)), None


@dataclass
class _Running:
    job_id: str
    job_dir: Path
    process: subprocess.Popen
    slot: int
    log_file: Any
    slots: list[int] = field(default_factory=list)  # every slot it holds (several: `gpus` > 1)
    term_sent_at: float | None = None
    killed: bool = False
    extra: dict = field(default_factory=dict)


class JobWorker:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._running: dict[int, _Running] = {}  # slot → running trainer
        self._lock = threading.Lock()
        self._tick_lock = threading.Lock()
        self._draining = False

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="lorastudio-worker", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 60.0) -> None:
        """Graceful shutdown: trainers checkpoint (SIGTERM) and their jobs resume on the next start.

        Exactly one SIGTERM per trainer: the trainer treats a second one as "stop now, no checkpoint".
        So the worker thread keeps living (its exit would fire the parent-death SIGTERM too) but
        stops ticking, trainers are stopped, and only then does the thread end.
        """
        with self._tick_lock:  # no tick is half-way through a launch or a finish
            self._draining = True
        with self._lock:
            running = list({id(run): run for run in self._running.values()}.values())  # a run may hold several slots
            self._running.clear()
        for run in running:
            if run.term_sent_at is None:
                _kill_group(run.process.pid, signal.SIGTERM)
        for run in running:
            try:
                run.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(run.process.pid, signal.SIGKILL)
                run.process.wait()
            run.log_file.close()
            self._pump(run.job_id)
            if self.store.update_job(run.job_id, only_if_status=("running",), status="queued", pid=None, resume=1):
                self.message_event(run.job_id, "The server is shutting down: training stopped after saving a "
                                   "checkpoint; it resumes from there when the server starts again.")
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def recover(self) -> None:
        """Jobs left `running` by a dead server go back to the queue, to resume from a checkpoint."""
        for job in self.store.jobs_with_status("running"):
            pid = job.get("pid")
            if pid and _pid_runs_job(pid, job["job_dir"]):
                # A trainer outlived its server. On Linux it already got SIGTERM from the kernel when
                # the server died and is writing its checkpoint: a second SIGTERM would abort that.
                if sys.platform == "linux":
                    _wait_gone(pid, self.settings.pause_grace_s)
                if _pid_runs_job(pid, job["job_dir"]):
                    _kill_group(pid, signal.SIGTERM)
                    if not _wait_gone(pid, 60):
                        _kill_group(pid, signal.SIGKILL)
                        _wait_gone(pid, 10)
            self._pump(job["id"])
            ckpt = checkpoints.latest(Path(job["job_dir"]))
            where = f"its last checkpoint (step {ckpt.step})" if ckpt else "the beginning (no checkpoint was saved yet)"
            self.store.update_job(job["id"], status="queued", pid=None, resume=1)
            self.message_event(job["id"], f"The server restarted while this job was running; the job was "
                               f"re-queued and will resume from {where}.",
                               data={"resumed_from_step": ckpt.step if ckpt else None})

    # --- the loop ------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # the worker must outlive any one bad job
                log.exception("job worker tick failed")
            self._wake.wait(self.settings.poll_interval_s)
            self._wake.clear()

    def tick(self) -> None:
        with self._tick_lock:
            if not self._draining:
                self._tick()

    def _tick(self) -> None:
        for job in self.store.jobs_with_status("validating_files"):
            if self._stop.is_set():
                return
            try:
                self._validate(job)
            except Exception as exc:  # a bug must fail this one job, not retry it forever
                log.exception("validating job %s failed", job["id"])
                self._fail(job["id"], f"internal error while validating the files ({type(exc).__name__}: {exc}); "
                           "see the server log", code="internal_error", only_if=("validating_files",))
        with self._lock:
            runs = list({id(run): (slot, run) for slot, run in self._running.items()}.values())
        for slot, run in runs:
            self._watch(slot, run)
        for slot in range(len(self.settings.devices)):
            if self._stop.is_set():
                return
            with self._lock:
                busy = slot in self._running
            if busy:
                continue
            queued = self.store.jobs_with_status("queued")
            if not queued:
                break
            slots = self._slots_for(queued[0], slot)
            if slots is None:
                break  # the oldest job waits for enough free GPUs; nothing overtakes it
            try:
                self._launch(slots, queued[0])
            except Exception as exc:
                log.exception("starting job %s failed", queued[0]["id"])
                self._fail(queued[0]["id"], f"could not start the trainer ({type(exc).__name__}: {exc})",
                           code="training_failed", only_if=("queued",))

    # --- events --------------------------------------------------------------------------------
    def message_event(self, job_id: str, message: str, *, level: str = "info", data: dict | None = None,
               job_updates: dict | None = None) -> None:
        raw = {"time": time.time(), "type": "message", "level": level, "message": message}
        self.store.add_event(job_id, level=level, type="message", message=message, data=data, raw=raw,
                             job_updates=job_updates)

    def _pump(self, job_id: str) -> None:
        """Copy new complete lines of the job's events.jsonl into the store."""
        job = self.store.get_job(job_id)
        if job is None:
            return
        path = Path(job["job_dir"]) / "events.jsonl"
        if not path.exists():
            return
        offset = job["events_offset"]
        with path.open("rb") as fh:
            if os.fstat(fh.fileno()).st_size < offset:
                offset = 0  # the trainer started the file afresh
            fh.seek(offset)
            chunk = fh.read()
        position = offset
        for line in chunk.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # half-written line: wait for the rest
            position += len(line)
            text = line.decode("utf-8", errors="replace").strip()
            if not text:
                self.store.update_job(job_id, events_offset=position)
                continue
            try:
                raw = json.loads(text)
                if not isinstance(raw, dict):
                    raise ValueError("not an object")
            except ValueError:
                self.message_event(job_id, f"Unreadable line in events.jsonl: {text[:200]}", level="warn",
                                   job_updates={"events_offset": position})
                continue
            self._record(job, raw, position)

    def _record(self, job: dict, raw: dict, position: int) -> None:
        level, kind, message, data = translate_event(raw)
        updates: dict[str, Any] = {"events_offset": position}
        if raw.get("type") == "metrics" and isinstance(raw.get("eta_s"), (int, float)):
            updates["estimated_finish"] = int(time.time() + raw["eta_s"])
        if raw.get("type") == "done":
            done = raw.get("metrics") or {}
            tokens = done.get("trained_tokens") or done.get("tokens_seen")
            if isinstance(tokens, (int, float)):
                updates["trained_tokens"] = int(tokens)
        if raw.get("type") == "checkpoint" and isinstance(raw.get("step"), int):
            ckpt_path = raw.get("path") or str(Path(job["job_dir"]) / "checkpoints" / f"step-{raw['step']:08d}")
            self.store.add_checkpoint(
                job_id=job["id"], step_number=raw["step"], path=str(ckpt_path),
                metrics={"step": raw["step"], "train_loss": raw.get("train_loss"),
                         "train_mean_token_accuracy": None, "valid_loss": raw.get("valid_loss"),
                         "valid_mean_token_accuracy": None, "full_valid_loss": raw.get("valid_loss"),
                         "full_valid_mean_token_accuracy": None},
                fine_tuned_model_checkpoint=f"{fine_tuned_model_name(job)}:ckpt-step-{raw['step']}",
                created_at=int(raw.get("time") or now()),
            )
            # The list shows what can be used: the trainer keeps only its newest checkpoints on disk.
            self.store.keep_checkpoints(job["id"], {c.step for c in checkpoints.usable(job["job_dir"])})
        self.store.add_event(job["id"], level=level, type=kind, message=message, data=data, raw=raw,
                             job_updates=updates)

    # --- validation ----------------------------------------------------------------------------
    def _fail(self, job_id: str, message: str, *, code: str, param: str | None = None,
              only_if: tuple[str, ...] = ("validating_files", "queued", "running")) -> None:
        if self.store.update_job(job_id, only_if_status=only_if, status="failed", finished_at=now(), pid=None,
                                 estimated_finish=None,
                                 error={"code": code, "message": message, "param": param}):
            self.message_event(job_id, f"Job failed: {message}", level="error")

    def _validate(self, job: dict) -> None:
        from lorastudio.data import DataError, validate

        files: dict[str, Path] = {}
        conversations: list = []
        for param in ("training_file", "validation_file"):
            if not job.get(param):
                continue
            record = self.store.get_file(job[param])
            if record is None or not Path(record["path"]).exists():
                self._fail(job["id"], f"The {param.replace('_', ' ')} {job[param]} no longer exists.",
                           code="invalid_file", param=param)
                return
            try:
                report = validate(record["path"])
            except DataError as exc:
                self._fail(job["id"], f"{record['filename']}: {exc}", code="invalid_file", param=param)
                return
            if not report.conversations:
                reasons = _top_reasons(report.to_dict())
                self._fail(job["id"], f"{record['filename']} has no usable rows ({reasons}). "
                           f"Fix the file and upload it again; the full report is at "
                           f"/studio/files/{record['id']}/report.", code="invalid_file", param=param)
                return
            files[param] = Path(record["path"])
            if param == "training_file":
                info = report.to_dict()
                counts = {"rows_ok": info.get("rows_ok"), "rows_rejected": info.get("rows_rejected")}
                self.message_event(job["id"], f"Validated {record['filename']}: {counts['rows_ok']} usable rows, "
                                   f"{counts['rows_rejected']} rejected.", data=counts)
                conversations = report.conversations
        try:
            cfg, resolved = build_train_config(job, conversations, files)
        except Exception as exc:  # ConfigError and the recommender's own value errors
            self._fail(job["id"], str(exc), code="invalid_hyperparameters", param="hyperparameters")
            return
        if cfg.gpus > 1 and cfg.gpus > len(self._gpu_slots()):
            devices = ",".join(self.settings.devices)
            self._fail(job["id"], f"gpus={cfg.gpus} asks for more GPUs than this server trains on "
                       f"(LORASTUDIO_DEVICES={devices}: {len(self._gpu_slots())} GPU slot(s)); list the GPUs "
                       "of this host in LORASTUDIO_DEVICES (e.g. 0,1) or lower gpus",
                       code="invalid_hyperparameters", param="hyperparameters")
            return
        job_dir = Path(job["job_dir"])
        job_dir.mkdir(parents=True, exist_ok=True)
        cfg.to_yaml(job_dir / "job.yaml")
        if self.store.update_job(job["id"], only_if_status=("validating_files",), status="queued",
                                 hyperparameters=resolved):
            self.message_event(job["id"], "Job queued; it starts when a device is free.")

    # --- training processes --------------------------------------------------------------------
    def _gpu_slots(self) -> list[int]:
        return [i for i, device in enumerate(self.settings.devices) if device.isdigit()]

    def _slots_for(self, job: dict, free_slot: int) -> list[int] | None:
        """The slots a job trains on: `free_slot`, or for `gpus` = N > 1 the first N free GPU slots
        (None while fewer are free)."""
        need = _job_gpus(job)
        if need <= 1:
            return [free_slot]
        with self._lock:
            free = [i for i in self._gpu_slots() if i not in self._running]
        return free[:need] if len(free) >= need else None

    def _launch(self, slots: list[int] | int, job: dict) -> None:
        slots = [slots] if isinstance(slots, int) else list(slots)
        slot = slots[0]
        job_dir = Path(job["job_dir"])
        config = job_dir / "job.yaml"
        training = self.store.get_file(job["training_file"])
        if training is None or not config.exists():
            self._fail(job["id"], "The training file or the job's config disappeared before training started.",
                       code="invalid_file", param="training_file", only_if=("queued",))
            return
        # Each attempt gets a fresh events.jsonl; earlier attempts' lines are already in the store.
        events = job_dir / "events.jsonl"
        if events.exists() and events.stat().st_size > 0:
            self._pump(job["id"])
            events.rename(job_dir / f"events.attempt-{job['attempts']}.jsonl")
        self.store.update_job(job["id"], events_offset=0)
        ckpt = checkpoints.latest(job_dir) if job["resume"] else None
        cmd = [*self.settings.trainer_command, training["path"], "--base", job["model"],
               "--output", str(job_dir), "--config", str(config)]
        if ckpt:
            cmd.append("--resume")
            # `train --resume` starts from the run's train_config.yaml, which the trainer writes only
            # when it finishes; an interrupted run's config is exactly the job's.
            if not (job_dir / "train_config.yaml").exists():
                shutil.copyfile(config, job_dir / "train_config.yaml")
        if sys.platform == "linux":
            cmd = [sys.executable, "-c", PDEATHSIG_LAUNCHER, str(os.getpid()), *cmd]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        device = ",".join(self.settings.devices[i] for i in slots)
        if all(self.settings.devices[i].isdigit() for i in slots):
            env["CUDA_VISIBLE_DEVICES"] = device  # several: the trainer relaunches itself under torchrun
        log_file = (job_dir / "train.log").open("ab")
        try:
            # A new session (process group) so cancel can signal the trainer and its children, and
            # a Ctrl-C meant for the server's terminal does not reach the trainer directly.
            process = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       cwd=str(job_dir), env=env, start_new_session=True)
        except OSError as exc:
            log_file.close()
            self._fail(job["id"], f"could not start the trainer: {exc}", code="training_failed", only_if=("queued",))
            return
        with self._lock:
            run = _Running(job["id"], job_dir, process, slot, log_file, slots=slots)
            for held in slots:
                self._running[held] = run
        # Status and pid together: whoever sees `running` can also find the process. If the job was
        # cancelled meanwhile, the update does nothing and the next tick stops the trainer.
        if not self.store.update_job(job["id"], only_if_status=("queued",), status="running", pid=process.pid,
                                     attempts=job["attempts"] + 1):
            return
        if ckpt:
            self.message_event(job["id"], f"Resuming training from the checkpoint at step {ckpt.step}.",
                               data={"resumed_from_step": ckpt.step})
        else:
            where = f"device slot {slot} ({device})" if len(slots) == 1 else \
                f"{len(slots)} GPUs (slots {', '.join(map(str, slots))}: {device})"
            self.message_event(job["id"], f"Training started on {where}.")

    def _watch(self, slot: int, run: _Running) -> None:
        self._pump(run.job_id)
        job = self.store.get_job(run.job_id)
        rc = run.process.poll()
        if job is not None and job["status"] in ("cancelled", "paused") and rc is None:
            # Cancel: a few seconds to exit. Pause: time to write the checkpoint it will resume from.
            grace = self.settings.cancel_grace_s if job["status"] == "cancelled" else self.settings.pause_grace_s
            if run.term_sent_at is None:
                _kill_group(run.process.pid, signal.SIGTERM)
                run.term_sent_at = time.monotonic()
            elif not run.killed and time.monotonic() - run.term_sent_at > grace:
                _kill_group(run.process.pid, signal.SIGKILL)
                run.killed = True
            return
        if rc is None:
            return
        # The trainer is gone: make sure nothing it spawned keeps the device busy.
        _kill_group(run.process.pid, signal.SIGKILL)
        run.log_file.close()
        with self._lock:
            for held in run.slots or [slot]:
                if self._running.get(held) is run:
                    del self._running[held]
        self._pump(run.job_id)
        self._finish(run, rc)

    def _finish(self, run: _Running, rc: int) -> None:
        job = self.store.get_job(run.job_id)
        if job is None or job["status"] != "running":
            if job is not None:
                self.store.update_job(job["id"], pid=None)
                if job["status"] == "cancelled":
                    self.message_event(job["id"], "The training process stopped; the device is free.")
                elif job["status"] == "paused":
                    ckpt = checkpoints.latest(run.job_dir)
                    where = f"the checkpoint at step {ckpt.step}" if ckpt else "the beginning (no checkpoint yet)"
                    self.message_event(job["id"], f"Training paused; the device is free. Resuming continues "
                                       f"from {where}.", data={"checkpoint_step": ckpt.step if ckpt else None})
            return
        if rc == 0:
            if not (run.job_dir / "adapter_config.json").exists():
                self._fail(job["id"], "The trainer exited without writing an adapter; see train.log in the job "
                           "directory.", code="training_failed", only_if=("running",))
                return
            name = fine_tuned_model_name(job)
            trained_tokens = job.get("trained_tokens") or self._approx_trained_tokens(job["id"])
            self.store.add_model(model_id=name, job_id=job["id"], base=job["model"], adapter_dir=str(run.job_dir))
            if self.store.update_job(job["id"], only_if_status=("running",), status="succeeded",
                                     fine_tuned_model=name, trained_tokens=trained_tokens, finished_at=now(),
                                     pid=None, estimated_finish=None):
                self.message_event(job["id"], f"The job has successfully completed: {name}",
                                   data={"fine_tuned_model": name})
            return
        reason, code = self._last_error(job["id"], run.job_dir)
        if rc == 2 and code == "invalid_hyperparameters":
            self._fail(job["id"], reason, code="invalid_hyperparameters", param="hyperparameters",
                       only_if=("running",))
        elif rc == 2:
            self._fail(job["id"], reason or "the trainer could not use the training file",
                       code="invalid_file", param="training_file", only_if=("running",))
        elif rc in (130, -signal.SIGTERM, -signal.SIGKILL, 128 + signal.SIGKILL):
            self._fail(job["id"], f"the training process was stopped from outside the studio (exit {rc}). "
                       "Create the job again to retrain.", code="training_interrupted", only_if=("running",))
        else:
            self._fail(job["id"], reason or f"the trainer exited with code {rc}; see train.log in {run.job_dir}",
                       code="training_failed", only_if=("running",))

    def _approx_trained_tokens(self, job_id: str) -> int | None:
        """Tokens seen ≈ rate × time of the last metrics event, when the trainer does not report them."""
        for event in reversed(self.store.events_since(job_id, 0)):
            raw = event["raw"]
            if raw.get("type") == "metrics" and isinstance(raw.get("tokens_per_s"), (int, float)) \
                    and isinstance(raw.get("elapsed_s"), (int, float)):
                return int(raw["tokens_per_s"] * raw["elapsed_s"])
        return None

    def _last_error(self, job_id: str, job_dir: Path) -> tuple[str | None, str | None]:
        """(message, code) of the trainer's error event, else the last line of its log and no code."""
        events, _ = self.store.list_events(job_id, limit=5)
        for event in events:
            if event["level"] == "error" and not event["message"].startswith("Job failed"):
                return event["message"], (event.get("data") or {}).get("code")
        try:
            lines = [ln.strip() for ln in (job_dir / "train.log").read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return None, None
        return (lines[-1][:500] if lines else None), None


def _job_gpus(job: dict) -> int:
    """GPUs a job asked for (`hyperparameters.gpus`, a TrainConfig field); 1 when absent or odd."""
    try:
        return max(1, int((job.get("hyperparameters") or {}).get("gpus") or 1))
    except (TypeError, ValueError):
        return 1


def _top_reasons(report: dict) -> str:
    counts: dict[str, int] = {}
    for issue in report.get("issues") or []:
        if issue.get("severity") == "error":
            counts[issue.get("kind", "?")] = counts.get(issue.get("kind", "?"), 0) + 1
    for issue in report.get("dataset_issues") or []:
        if issue.get("severity") == "error":
            counts[issue.get("kind", "?")] = counts.get(issue.get("kind", "?"), 0) + 1
    if not counts:
        return f"{report.get('rows_total', 0)} rows read, none usable"
    return ", ".join(f"{kind}: {n} row(s)" if n > 1 else kind for kind, n in
                     sorted(counts.items(), key=lambda kv: -kv[1])[:5])


def build_train_config(job: dict, conversations: list, files: dict[str, Path]) -> tuple[Any, dict]:
    """The recommender's settings for this data and base, then the client's hyperparameters on top."""
    from lorastudio.train.config import TrainConfig
    from lorastudio.train.recommend import recommend

    hp = dict(job.get("hyperparameters") or {})
    task = hp.get("task") if hp.get("task") not in (None, "auto") else "qa"
    rec = recommend(conversations, job["model"], task=task, quick=bool(hp.get("quick")),
                    time_budget_s=hp.get("time_budget_s"))
    values = dict(rec.settings)
    values.update(data=str(files["training_file"]), base=job["model"], output_dir=job["job_dir"], task=task,
                  validation_data=str(files["validation_file"]) if "validation_file" in files else None)
    if job.get("seed") is not None:
        values["seed"] = job["seed"]
    recommended_lr = float(values.get("learning_rate") or TrainConfig().learning_rate)
    for key, value in hp.items():
        if value == "auto" or key in SCHEDULE_CHOICES:
            continue
        if key == "n_epochs":
            values["num_epochs"] = value
        elif key == "learning_rate_multiplier":
            values["learning_rate"] = recommended_lr * float(value)
        elif key == "batch_size":
            # lorastudio packs tokens, not rows: a batch of N rows ≈ N rows at the longest length.
            values["batch_tokens"] = int(value) * int(values.get("max_length") or TrainConfig().max_length)
        else:
            values[key] = value
    values["extra"] = {**(values.get("extra") or {}), "job_id": job["id"],
                       "recommendation_reasons": rec.reasons, "schedule": rec.schedule, "estimate": rec.estimate}
    cfg = TrainConfig.from_dict(values)
    resolved = dict(hp)
    epochs = cfg.num_epochs if cfg.max_steps is None else hp.get("n_epochs", cfg.num_epochs)
    resolved["n_epochs"] = int(epochs) if float(epochs).is_integer() else epochs
    resolved["learning_rate_multiplier"] = round(cfg.learning_rate / recommended_lr, 6)
    resolved["batch_size"] = max(1, cfg.batch_tokens // cfg.max_length)
    resolved["task"] = cfg.task
    return cfg, resolved
