"""Trainer processes: start one per device slot, watch them, stop them, record how they ended.

Each trainer runs as `lorastudio train …` in its own session (process group), so cancel can stop it
with everything it spawned and a trainer crash never takes the server down. On Linux it runs under
`TRAINER_LAUNCHER`, which turns the server's death into exactly one SIGTERM for the trainer (it then
saves a checkpoint and exits; the next server start resumes from there).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorastudio.serve.settings import Settings
from lorastudio.serve.store import Store, now
from lorastudio.serve.tail import EventTail, fine_tuned_model_name
from lorastudio.train import checkpoints

log = logging.getLogger("lorastudio.serve")

# argv: the server's pid, then the trainer command. Linux sends a parent-death signal each time the
# *thread* that is the parent exits and the child is handed to another one, so a SIGKILLed server with
# several threads sent its trainer two SIGTERMs 71 ms apart (issue 16). This launcher asks for the
# parent-death SIGTERM itself, stays the trainer's parent (one thread: one signal if it dies) and passes
# exactly one SIGTERM on, and only when the server is really gone: a SIGTERM to the whole group
# (cancel, pause, shutdown) already reaches the trainer directly. It exits with the trainer's status.
TRAINER_LAUNCHER = r"""
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
parent, cmd = int(sys.argv[1]), sys.argv[2:]
child, told = [0], [False]
def orphaned(*_):
    if os.getppid() != parent and child[0] and not told[0]:
        told[0] = True
        os.kill(child[0], signal.SIGTERM)
signal.signal(signal.SIGTERM, orphaned)
libc.prctl(1, signal.SIGTERM)
if os.getppid() != parent:
    sys.exit(130)
pid = os.fork()
if pid == 0:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    libc.prctl(1, signal.SIGTERM)
    os.execvp(cmd[0], cmd)
child[0] = pid
orphaned()
_, status = os.waitpid(pid, 0)
code = os.waitstatus_to_exitcode(status)
if code < 0:
    signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
sys.exit(code)
"""


def pid_runs_job(pid: int, job_dir: str) -> bool:
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


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name: [state, ppid, …]; OSError without /proc."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def orphaned_launcher(pid: int) -> bool:
    """Is `pid` a TRAINER_LAUNCHER whose server is gone (so it has passed its one SIGTERM on)?"""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return argv[1:3] == [b"-c", TRAINER_LAUNCHER.encode()] and int(_stat(pid)[1]) != int(argv[3])
    except (OSError, ValueError, IndexError):
        return False


def _zombie(pid: int) -> bool:
    """`pid` has exited and only waits for its parent to collect it (it still answers kill(pid, 0))."""
    try:
        return _stat(pid)[0] == "Z"
    except (OSError, IndexError):
        return False


def wait_gone(pid: int, timeout: float) -> bool:
    """Until `pid` has exited (a zombie counts: it holds no device and runs nothing), or `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        if _zombie(pid):
            return True
        time.sleep(0.1)
    return False


def kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def job_gpus(job: dict) -> int:
    """GPUs a job asked for (`hyperparameters.gpus`, a TrainConfig field); 1 when absent or odd."""
    try:
        return max(1, int((job.get("hyperparameters") or {}).get("gpus") or 1))
    except (TypeError, ValueError):
        return 1


@dataclass
class Running:
    job_id: str
    job_dir: Path
    process: subprocess.Popen
    slot: int
    log_file: Any
    slots: list[int] = field(default_factory=list)  # every slot it holds (several: `gpus` > 1)
    term_sent_at: float | None = None
    killed: bool = False


class TrainerSupervisor:
    """slot → running trainer; launch, watch (cancel/pause signals, exits), finish, stop all."""

    def __init__(self, store: Store, settings: Settings, tail: EventTail, fail: Callable[..., None]) -> None:
        self.store, self.settings, self.tail, self.fail = store, settings, tail, fail
        self.running: dict[int, Running] = {}
        self.lock = threading.Lock()

    def runs(self) -> list[tuple[int, Running]]:
        with self.lock:  # a run may hold several slots: each once
            return list({id(run): (slot, run) for slot, run in self.running.items()}.values())

    def gpu_slots(self) -> list[int]:
        return [i for i, device in enumerate(self.settings.devices) if device.isdigit()]

    def free(self, slot: int) -> bool:
        with self.lock:
            return slot not in self.running

    def slots_for(self, job: dict, free_slot: int) -> list[int] | None:
        """The slots a job trains on: `free_slot`, or for `gpus` = N > 1 the first N free GPU slots
        (None while fewer are free)."""
        need = job_gpus(job)
        if need <= 1:
            return [free_slot]
        with self.lock:
            free = [i for i in self.gpu_slots() if i not in self.running]
        return free[:need] if len(free) >= need else None

    def launch(self, slots: list[int], job: dict) -> None:
        """Start the job's trainer on `slots` (`slots_for`); it runs `running` from here on."""
        slot = slots[0]
        job_dir = Path(job["job_dir"])
        config = job_dir / "job.yaml"
        training = self.store.get_file(job["training_file"])
        if training is None or not config.exists():
            self.fail(job["id"], "The training file or the job's config disappeared before training started.",
                      code="invalid_file", param="training_file", only_if=("queued",))
            return
        # Each attempt gets a fresh events.jsonl; earlier attempts' lines are already in the store.
        events = job_dir / "events.jsonl"
        if events.exists() and events.stat().st_size > 0:
            self.tail.pump(job["id"])
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
            cmd = [sys.executable, "-c", TRAINER_LAUNCHER, str(os.getpid()), *cmd]
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
            self.fail(job["id"], f"could not start the trainer: {exc}", code="training_failed", only_if=("queued",))
            return
        with self.lock:
            run = Running(job["id"], job_dir, process, slot, log_file, slots=slots)
            for held in slots:
                self.running[held] = run
        # Status and pid together: whoever sees `running` can also find the process. If the job was
        # cancelled meanwhile, the update does nothing and the next tick stops the trainer.
        if not self.store.update_job(job["id"], only_if_status=("queued",), status="running", pid=process.pid,
                                     attempts=job["attempts"] + 1):
            return
        if ckpt:
            self.tail.message(job["id"], f"Resuming training from the checkpoint at step {ckpt.step}.",
                              data={"resumed_from_step": ckpt.step})
        else:
            where = f"device slot {slot} ({device})" if len(slots) == 1 else \
                f"{len(slots)} GPUs (slots {', '.join(map(str, slots))}: {device})"
            self.tail.message(job["id"], f"Training started on {where}.")

    def watch(self, slot: int, run: Running) -> None:
        self.tail.pump(run.job_id)
        job = self.store.get_job(run.job_id)
        rc = run.process.poll()
        if job is not None and job["status"] in ("cancelled", "paused") and rc is None:
            # Cancel: a few seconds to exit. Pause: time to write the checkpoint it will resume from.
            grace = self.settings.cancel_grace_s if job["status"] == "cancelled" else self.settings.pause_grace_s
            if run.term_sent_at is None:
                kill_group(run.process.pid, signal.SIGTERM)
                run.term_sent_at = time.monotonic()
            elif not run.killed and time.monotonic() - run.term_sent_at > grace:
                kill_group(run.process.pid, signal.SIGKILL)
                run.killed = True
            return
        if rc is None:
            return
        # The trainer is gone: make sure nothing it spawned keeps the device busy.
        kill_group(run.process.pid, signal.SIGKILL)
        run.log_file.close()
        with self.lock:
            for held in run.slots:
                if self.running.get(held) is run:
                    del self.running[held]
        self.tail.pump(run.job_id)
        self.finish(run, rc)

    def stop_all(self, timeout: float) -> None:
        """One SIGTERM per trainer (a second would not help: it already checkpoints), then the queue."""
        with self.lock:
            running = list({id(run): run for run in self.running.values()}.values())
            self.running.clear()
        for run in running:
            if run.term_sent_at is None:
                kill_group(run.process.pid, signal.SIGTERM)
        for run in running:
            try:
                run.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                kill_group(run.process.pid, signal.SIGKILL)
                run.process.wait()
            run.log_file.close()
            self.tail.pump(run.job_id)
            if self.store.update_job(run.job_id, only_if_status=("running",), status="queued", pid=None, resume=1):
                self.tail.message(run.job_id, "The server is shutting down: training stopped after saving a "
                                  "checkpoint; it resumes from there when the server starts again.")

    def finish(self, run: Running, rc: int) -> None:
        job = self.store.get_job(run.job_id)
        if job is None or job["status"] != "running":
            if job is not None:
                self.store.update_job(job["id"], pid=None)
                if job["status"] == "cancelled":
                    self.tail.message(job["id"], "The training process stopped; the device is free.")
                elif job["status"] == "paused":
                    ckpt = checkpoints.latest(run.job_dir)
                    where = f"the checkpoint at step {ckpt.step}" if ckpt else "the beginning (no checkpoint yet)"
                    self.tail.message(job["id"], f"Training paused; the device is free. Resuming continues "
                                      f"from {where}.", data={"checkpoint_step": ckpt.step if ckpt else None})
            return
        if rc == 0:
            self.succeed(job, run.job_dir)
            return
        reason, code = self.tail.last_error(job["id"], run.job_dir)
        if rc == 2 and code == "invalid_hyperparameters":
            self.fail(job["id"], reason, code="invalid_hyperparameters", param="hyperparameters",
                      only_if=("running",))
        elif rc == 2:
            self.fail(job["id"], reason or "the trainer could not use the training file",
                      code="invalid_file", param="training_file", only_if=("running",))
        elif rc in (130, -signal.SIGTERM, -signal.SIGKILL, 128 + signal.SIGKILL):
            self.fail(job["id"], f"the training process was stopped from outside the studio (exit {rc}). "
                      "Create the job again to retrain.", code="training_interrupted", only_if=("running",))
        else:
            self.fail(job["id"], reason or f"the trainer exited with code {rc}; see train.log in {run.job_dir}",
                      code="training_failed", only_if=("running",))

    def succeed(self, job: dict, job_dir: Path) -> None:
        if not (job_dir / "adapter_config.json").exists():
            self.fail(job["id"], "The trainer exited without writing an adapter; see train.log in the job "
                      "directory.", code="training_failed", only_if=("running",))
            return
        name = fine_tuned_model_name(job)
        trained_tokens = job.get("trained_tokens") or self.tail.approx_trained_tokens(job["id"])
        self.store.add_model(model_id=name, job_id=job["id"], base=job["model"], adapter_dir=str(job_dir))
        if self.store.update_job(job["id"], only_if_status=("running",), status="succeeded",
                                 fine_tuned_model=name, trained_tokens=trained_tokens, finished_at=now(),
                                 pid=None, estimated_finish=None):
            self.tail.message(job["id"], f"The job has successfully completed: {name}",
                              data={"fine_tuned_model": name})
