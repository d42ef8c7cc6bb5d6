"""The forgetting check's results on disk (the check itself is lorastudio.playground.forgetting_events;
its routes are in api_playground.py).

- One result per job, `JOB_DIR/forgetting.json`: valid while the adapter file is the one that was
  checked (its mtime is kept as `adapter_version`); deleting the job removes it with the job.
- The base model's answers per base, `DATA_DIR/playground/base-<id>.general.json`: greedy answers to
  the same questions at the same length do not change, so every later job on that base answers only
  its tuned side (half the work). Keyed by the questions' fingerprint and the engine kind (llama.cpp
  and transformers may word an answer differently).
- `summary(job)`: what the job list shows (kept / lost / gained, the flipped questions), read once per
  change of the result file.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

RESULT_FILE = "forgetting.json"
_summaries: dict[str, tuple[float, dict | None]] = {}


def adapter_version(job: dict) -> float:
    adapter = Path(job["job_dir"]) / "adapter_model.safetensors"
    return adapter.stat().st_mtime if adapter.exists() else 0.0


def result_path(job: dict) -> Path:
    return Path(job["job_dir"]) / RESULT_FILE


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{threading.get_ident()}.part")  # two checks may write one base's answers
    tmp.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_result(job: dict) -> dict | None:
    """The job's check, if it was run on the adapter file the job has now."""
    data = _read(result_path(job))
    return data if data and data.get("adapter_version") == adapter_version(job) else None


def write_result(job: dict, result: dict) -> dict:
    data = {**result, "job_id": job["id"], "model": job.get("fine_tuned_model"), "base": job["model"],
            "adapter_version": adapter_version(job)}
    _write(result_path(job), data)
    return data


def summary(job: dict) -> dict | None:
    """`{questions, base_right, tuned_right, kept, lost, gained, flipped: [{question, flip}]}` of a
    succeeded job's check, or None when it has not been checked (on this adapter file)."""
    if job.get("status") != "succeeded":
        return None
    path = result_path(job)
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return None
    key = str(path)
    cached = _summaries.get(key)
    if cached is None or cached[0] != mtime:
        data = read_result(job)
        short = None
        if data:
            short = {k: data.get(k) for k in ("questions", "base_right", "tuned_right", "kept", "lost", "gained")}
            short["flipped"] = [{"question": r.get("question"), "flip": r.get("flip")}
                                for r in data.get("rows") or [] if r.get("flip") in ("lost", "gained")]
        _summaries[key] = cached = (mtime, short)
    return cached[1]


def engine_kind(engine: Any) -> str:
    return type(getattr(engine, "backend", None) or engine).__name__


def _base_path(data_dir: Path, base: str) -> Path:
    return Path(data_dir) / "playground" / f"base-{re.sub(r'[^A-Za-z0-9_.-]', '_', base)}.general.json"


def read_base_answers(data_dir: Path, base: str, kind: str, fingerprint: str) -> list[str] | None:
    data = _read(_base_path(data_dir, base))
    if not data or data.get("fingerprint") != fingerprint or data.get("engine") != kind:
        return None
    answers = data.get("answers")
    return answers if isinstance(answers, list) and all(isinstance(a, str) for a in answers) else None


def write_base_answers(data_dir: Path, base: str, kind: str, fingerprint: str, answers: list[str]) -> None:
    _write(_base_path(data_dir, base), {"base": base, "engine": kind, "fingerprint": fingerprint,
                                        "answers": answers})
