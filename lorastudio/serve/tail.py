"""Event ingestion: the trainer's `events.jsonl` tailed into the store, exactly once.

The byte offset is saved in the same transaction as each event, so after a SIGKILL of the server the
tail continues exactly where it stopped: no event is lost and none is recorded twice.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from lorastudio.serve.store import Store, now
from lorastudio.train import checkpoints


def fine_tuned_model_name(job: dict) -> str:
    """`ft:<base>:<suffix>:<job id>` (OpenAI's naming, without an organisation)."""
    base = Path(job["model"]).name if ("/" in job["model"] or os.sep in job["model"]) else job["model"]
    suffix = job.get("suffix") or "lorastudio"
    return f"ft:{base}:{suffix}:{job['id']}"


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


class EventTail:
    """Job events into the store: the worker's own messages and the trainer's events.jsonl lines."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def message(self, job_id: str, message: str, *, level: str = "info", data: dict | None = None,
                job_updates: dict | None = None) -> None:
        raw = {"time": time.time(), "type": "message", "level": level, "message": message}
        self.store.add_event(job_id, level=level, type="message", message=message, data=data, raw=raw,
                             job_updates=job_updates)

    def pump(self, job_id: str) -> None:
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
                self.message(job_id, f"Unreadable line in events.jsonl: {text[:200]}", level="warn",
                             job_updates={"events_offset": position})
                continue
            self.record(job, raw, position)

    def record(self, job: dict, raw: dict, position: int) -> None:
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

    def approx_trained_tokens(self, job_id: str) -> int | None:
        """Tokens seen ≈ rate × time of the last metrics event, when the trainer does not report them."""
        for event in reversed(self.store.events_since(job_id, 0)):
            raw = event["raw"]
            if raw.get("type") == "metrics" and isinstance(raw.get("tokens_per_s"), (int, float)) \
                    and isinstance(raw.get("elapsed_s"), (int, float)):
                return int(raw["tokens_per_s"] * raw["elapsed_s"])
        return None

    def last_error(self, job_id: str, job_dir: Path) -> tuple[str | None, str | None]:
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
