"""The validation queue: a job's files are validated and its TrainConfig built on a thread of its own.

Validating a big file takes seconds to minutes (19.6 s for 200 MB, issue 16); on its own thread it
never holds up control — cancel, pause, resume and the watchdog run on the worker's control thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorastudio.serve.store import Store
from lorastudio.serve.tail import EventTail

log = logging.getLogger("lorastudio.serve")

# Job hyperparameters with OpenAI names; everything else must be a TrainConfig field.
OPENAI_HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier")
# TrainConfig fields the job itself decides; a client may not point them elsewhere (nor at the server's
# files: `replay_prompts` is a path).
RESERVED_FIELDS = ("data", "base", "output_dir", "validation_data", "extra", "replay_prompts")
# Hyperparameters that choose the recommender's schedule rather than set a TrainConfig field.
SCHEDULE_CHOICES = ("task", "quick", "time_budget_s")

Fail = Callable[..., None]


class JobIntake:
    """`validating_files` → `queued` (or `failed` with the file, the row kinds and what to do)."""

    def __init__(self, store: Store, tail: EventTail, fail: Fail, gpu_slots: Callable[[], list[int]],
                 devices: list[str], on_queued: Callable[[], None], max_rows: int | None = None) -> None:
        self.store, self.tail, self.fail = store, tail, fail
        self.max_rows = max_rows  # the server's row limit per file (LORASTUDIO_MAX_ROWS)
        self.gpu_slots, self.devices, self.on_queued = gpu_slots, devices, on_queued
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, stop: threading.Event, poll_s: float) -> None:
        self.thread = threading.Thread(target=self._loop, args=(stop, poll_s), name="lorastudio-validate",
                                       daemon=True)
        self.thread.start()

    def _loop(self, stop: threading.Event, poll_s: float) -> None:
        while not stop.is_set():
            try:
                self.validate_pending(stop)
            except Exception:  # the queue must outlive any one bad job
                log.exception("validation queue failed")
            self.wake.wait(poll_s)
            self.wake.clear()

    def validate_pending(self, stop: threading.Event | None = None) -> None:
        for job in self.store.jobs_with_status("validating_files"):
            if stop is not None and stop.is_set():
                return
            try:
                self.validate(job)
            except Exception as exc:  # a bug must fail this one job, not retry it forever
                log.exception("validating job %s failed", job["id"])
                self.fail(job["id"], f"internal error while validating the files ({type(exc).__name__}: {exc}); "
                          "see the server log", code="internal_error", only_if=("validating_files",))

    def validate(self, job: dict) -> None:
        from lorastudio.data import DataError, validate

        files: dict[str, Path] = {}
        conversations: list = []
        for param in ("training_file", "validation_file"):
            if not job.get(param):
                continue
            record = self.store.get_file(job[param])
            if record is None or not Path(record["path"]).exists():
                self.fail(job["id"], f"The {param.replace('_', ' ')} {job[param]} no longer exists.",
                          code="invalid_file", param=param)
                return
            try:
                report = validate(record["path"], max_rows=self.max_rows)
            except DataError as exc:
                if exc.code == "too_many_rows":  # the user's file name, not the stored one
                    from lorastudio.i18n import t

                    self.fail(job["id"], t(exc.code, "en", **{**exc.params, "file": record["filename"]}),
                              code="invalid_file", param=param)
                    return
                self.fail(job["id"], f"{record['filename']}: {exc}", code="invalid_file", param=param)
                return
            if not report.conversations:
                reasons = _top_reasons(report.to_dict())
                self.fail(job["id"], f"{record['filename']} has no usable rows ({reasons}). "
                          f"Fix the file and upload it again; the full report is at "
                          f"/studio/files/{record['id']}/report.", code="invalid_file", param=param)
                return
            files[param] = Path(record["path"])
            if param == "training_file":
                info = report.to_dict()
                counts = {"rows_ok": info.get("rows_ok"), "rows_rejected": info.get("rows_rejected")}
                self.tail.message(job["id"], f"Validated {record['filename']}: {counts['rows_ok']} usable rows, "
                                  f"{counts['rows_rejected']} rejected.", data=counts)
                conversations = report.conversations
        current = self.store.get_job(job["id"])
        if current is None or current["status"] != "validating_files":
            return  # cancelled (or deleted) while its file was read: nothing more to do
        try:
            cfg, resolved = build_train_config(job, conversations, files)
        except Exception as exc:  # ConfigError and the recommender's own value errors
            self.fail(job["id"], str(exc), code="invalid_hyperparameters", param="hyperparameters")
            return
        gpu_slots = self.gpu_slots()
        if cfg.gpus > 1 and cfg.gpus > len(gpu_slots):
            self.fail(job["id"], f"gpus={cfg.gpus} asks for more GPUs than this server trains on "
                      f"(LORASTUDIO_DEVICES={','.join(self.devices)}: {len(gpu_slots)} GPU slot(s)); list the "
                      "GPUs of this host in LORASTUDIO_DEVICES (e.g. 0,1) or lower gpus",
                      code="invalid_hyperparameters", param="hyperparameters")
            return
        job_dir = Path(job["job_dir"])
        job_dir.mkdir(parents=True, exist_ok=True)
        cfg.to_yaml(job_dir / "job.yaml")
        if self.store.update_job(job["id"], only_if_status=("validating_files",), status="queued",
                                 hyperparameters=resolved):
            self.tail.message(job["id"], "Job queued; it starts when a device is free.")
            self.on_queued()


def _top_reasons(report: dict) -> str:
    counts: dict[str, int] = {}
    for issue in [*(report.get("issues") or []), *(report.get("dataset_issues") or [])]:
        if issue.get("severity") == "error":
            counts[issue.get("kind", "?")] = counts.get(issue.get("kind", "?"), 0) + 1
    if not counts:
        return f"{report.get('rows_total', 0)} rows read, none usable"
    return ", ".join(f"{kind}: {n} row(s)" if n > 1 else kind for kind, n in
                     sorted(counts.items(), key=lambda kv: -kv[1])[:5])


def build_train_config(job: dict, conversations: list, files: dict[str, Path]) -> tuple[Any, dict]:
    """The recommender's settings for this data and base, then the client's hyperparameters on top."""
    from lorastudio.train.config import TrainConfig
    from lorastudio.train.recommend import changed_settings, recommend

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
    # The time of what runs: the recommendation's estimate unless the client changed what it depends on.
    changed = changed_settings(rec.settings, values)
    run_estimate = rec.estimate_for(values) if changed else rec.estimate
    values["extra"] = {**(values.get("extra") or {}), "job_id": job["id"],
                       "recommendation_reasons": rec.reasons, "schedule": rec.schedule, "estimate": run_estimate,
                       **({"recommended_estimate": rec.estimate, "changed_settings": sorted(changed)} if changed else {})}
    cfg = TrainConfig.from_dict(values)
    resolved = dict(hp)
    epochs = cfg.num_epochs if cfg.max_steps is None else hp.get("n_epochs", cfg.num_epochs)
    resolved["n_epochs"] = int(epochs) if float(epochs).is_integer() else epochs
    resolved["learning_rate_multiplier"] = round(cfg.learning_rate / recommended_lr, 6)
    resolved["batch_size"] = max(1, cfg.batch_tokens // cfg.max_length)
    resolved["task"] = cfg.task
    return cfg, resolved
