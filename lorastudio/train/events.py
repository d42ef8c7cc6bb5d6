"""Training events: one JSON object per line in ``events.jsonl`` (schema in docs/ARCHITECTURE.md).

The file is the interface: the CLI progress bar, the job worker and the web UI's live chart all read
the same objects. Lines are appended and flushed one by one, so a reader tailing the file never sees
half an event and a crash loses nothing already reported.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

EVENT_TYPES = ("stage", "metrics", "estimate", "eval", "checkpoint", "resumed", "done", "error")
STAGES = ("prepare", "tokenize", "train", "evaluate", "save", "done")

EventCallback = Callable[[dict[str, Any]], None]


def _clean(value: Any) -> Any:
    # JSON has no NaN/inf; a diverged loss is reported as null rather than breaking every reader.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class EventLog:
    """Append events to ``path`` (if given) and pass each to ``on_event`` (if given)."""

    def __init__(self, path: str | Path | None, on_event: EventCallback | None = None):
        self.path = Path(path) if path else None
        self.on_event = on_event
        self._handle = None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "a", encoding="utf-8")

    def emit(self, type: str, **fields: Any) -> dict[str, Any]:
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type!r}")
        event = _clean({"time": round(time.time(), 3), "type": type, **fields})
        if self._handle:
            self._handle.write(json.dumps(event, ensure_ascii=False) + "\n")
            self._handle.flush()
        if self.on_event:
            self.on_event(event)
        return event

    def stage(self, stage: str, message: str) -> dict[str, Any]:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        return self.emit("stage", stage=stage, message=message)

    def close(self) -> None:
        if self._handle:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """All complete events in a log (a torn last line from a killed writer is skipped)."""
    events = []
    path = Path(path)
    if not path.exists():
        return events
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events
