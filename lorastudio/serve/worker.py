"""The job worker: validates files, runs one training subprocess per device, records what it says.

It lives in two threads of the server: the validation queue (intake.py: reading a big file takes
seconds to minutes) and the control loop (this module), which starts trainers, acts on cancel, pause
and resume and watches exits, so control never waits behind validation. Training runs in child
processes (supervisor.py) and the trainer's `events.jsonl` is tailed into the store (tail.py); after a
SIGKILL of the server the tail continues exactly where it stopped and interrupted jobs resume from
their last checkpoint.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from lorastudio.serve.intake import JobIntake
from lorastudio.serve.settings import Settings
from lorastudio.serve.store import Store, now
from lorastudio.serve.supervisor import (
    TrainerSupervisor,
    kill_group,
    orphaned_launcher,
    pid_runs_job,
    wait_gone,
)
from lorastudio.serve.tail import EventTail
from lorastudio.train import checkpoints

log = logging.getLogger("lorastudio.serve")


class JobWorker:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.tail = EventTail(store)
        self.trainers = TrainerSupervisor(store, settings, self.tail, self._fail)
        self.intake = JobIntake(store, self.tail, self._fail, self.trainers.gpu_slots, settings.devices,
                                on_queued=self.wake_control, max_rows=settings.max_rows)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tick_lock = threading.Lock()
        self._draining = False

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self.recover()
        self.intake.start(self._stop, self.settings.poll_interval_s)
        self._thread = threading.Thread(target=self._loop, name="lorastudio-worker", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self.intake.wake.set()
        self._wake.set()

    def wake_control(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 60.0) -> None:
        """Graceful shutdown: trainers checkpoint (SIGTERM) and their jobs resume on the next start.

        Exactly one SIGTERM per trainer. The control thread stops ticking first (no half-done launch),
        then trainers are stopped, and only then do the threads end.
        """
        with self._tick_lock:  # no tick is half-way through a launch or a finish
            self._draining = True
        self.trainers.stop_all(timeout)
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.intake.thread is not None:
            self.intake.thread.join(timeout=1)  # a daemon: a long validation must not hold the exit

    def recover(self) -> None:
        """Jobs left `running` by a dead server go back to the queue, to resume from a checkpoint."""
        for job in self.store.jobs_with_status("running"):
            pid = job.get("pid")
            if pid and pid_runs_job(pid, job["job_dir"]):
                # A trainer outlived its server. Its launcher already passed it one SIGTERM when the
                # server died and it is writing its checkpoint: another signal would be a second one.
                if orphaned_launcher(pid):
                    if not wait_gone(pid, self.settings.pause_grace_s):
                        kill_group(pid, signal.SIGKILL)
                        wait_gone(pid, 10)
                else:  # nobody told it (no launcher, or its server still lives: a worker restarted in-process)
                    kill_group(pid, signal.SIGTERM)
                    if not wait_gone(pid, 60):
                        kill_group(pid, signal.SIGKILL)
                        wait_gone(pid, 10)
            self.tail.pump(job["id"])
            job_dir = Path(job["job_dir"])
            if _finished(job_dir):  # it completed while no server was watching
                self.trainers.succeed(self.store.get_job(job["id"]) or job, job_dir)
                continue
            ckpt = checkpoints.latest(job_dir)
            where = f"its last checkpoint (step {ckpt.step})" if ckpt else "the beginning (no checkpoint was saved yet)"
            self.store.update_job(job["id"], status="queued", pid=None, resume=1)
            self.message_event(job["id"], f"The server restarted while this job was running; the job was "
                               f"re-queued and will resume from {where}.",
                               data={"resumed_from_step": ckpt.step if ckpt else None})

    # --- the control loop ----------------------------------------------------------------------
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
        for slot, run in self.trainers.runs():
            self.trainers.watch(slot, run)
        for slot in range(len(self.settings.devices)):
            if self._stop.is_set():
                return
            if not self.trainers.free(slot):
                continue
            queued = self.store.jobs_with_status("queued")
            if not queued:
                break
            slots = self.trainers.slots_for(queued[0], slot)
            if slots is None:
                break  # the oldest job waits for enough free GPUs; nothing overtakes it
            try:
                self.trainers.launch(slots, queued[0])
            except Exception as exc:
                log.exception("starting job %s failed", queued[0]["id"])
                self._fail(queued[0]["id"], f"could not start the trainer ({type(exc).__name__}: {exc})",
                           code="training_failed", only_if=("queued",))

    # --- events and outcomes -------------------------------------------------------------------
    def message_event(self, job_id: str, message: str, *, level: str = "info", data: dict | None = None,
                      job_updates: dict | None = None) -> None:
        self.tail.message(job_id, message, level=level, data=data, job_updates=job_updates)

    def _fail(self, job_id: str, message: str, *, code: str, param: str | None = None,
              only_if: tuple[str, ...] = ("validating_files", "queued", "running")) -> None:
        if self.store.update_job(job_id, only_if_status=only_if, status="failed", finished_at=now(), pid=None,
                                 estimated_finish=None,
                                 error={"code": code, "message": message, "param": param}):
            self.message_event(job_id, f"Job failed: {message}", level="error")


def _finished(job_dir: Path) -> bool:
    """Did the last attempt write its adapter and say `done` (the trainer's last event)?"""
    import json

    events = job_dir / "events.jsonl"
    if not (job_dir / "adapter_config.json").exists() or not events.exists():
        return False
    lines = [ln for ln in events.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    try:
        return bool(lines) and json.loads(lines[-1]).get("type") == "done"
    except ValueError:
        return False

