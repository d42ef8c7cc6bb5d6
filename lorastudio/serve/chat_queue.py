"""Admission for chat generation: per model base, one generation runs, at most `limit` wait in line,
and any request beyond that is told at once to come back (429 with Retry-After) instead of
holding a connection and a worker thread behind the engine's lock.

Everything runs on the event loop (no threads), so the bookkeeping needs no lock. A waiting request
whose client leaves is taken out of the line; a slot is handed straight to the next in line.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import deque
from dataclasses import dataclass, field

DEFAULT_LIMIT = 8
"""Requests that may wait per base model (Settings.chat_queue: `--chat-queue`, `LORASTUDIO_CHAT_QUEUE`)."""


def limit_from_env() -> int:
    """For apps whose settings object has no `chat_queue`."""
    raw = os.environ.get("LORASTUDIO_CHAT_QUEUE", "")
    return int(raw) if raw.strip().isdigit() else DEFAULT_LIMIT


class QueueFull(Exception):
    def __init__(self, waiting: int, retry_after: int) -> None:
        super().__init__(f"{waiting} requests are waiting")
        self.waiting = waiting
        self.retry_after = retry_after


@dataclass
class _Line:
    running: int = 0
    waiters: deque = field(default_factory=deque)
    mean_s: float = 5.0  # running mean of how long a generation holds the slot (seeds Retry-After)


class ChatQueue:
    def __init__(self, limit: int = DEFAULT_LIMIT, concurrency: int = 1) -> None:
        if limit < 0 or concurrency < 1:
            raise ValueError("the chat queue needs limit ≥ 0 and concurrency ≥ 1")
        self.limit = limit
        self.concurrency = concurrency
        self._lines: dict[str, _Line] = {}

    def state(self, key: str) -> tuple[int, int]:
        """(running, waiting) for a base model."""
        line = self._lines.get(key)
        return (line.running, len(line.waiters)) if line else (0, 0)

    def retry_after(self, key: str) -> int:
        line = self._lines.setdefault(key, _Line())
        ahead = line.running + len(line.waiters)
        return max(1, min(600, math.ceil(ahead * line.mean_s / self.concurrency)))

    async def acquire(self, key: str) -> float:
        """Wait for a slot (or raise `QueueFull` at once); returns the start time for `release`.
        Cancelled while waiting (the client left): leaves the line, or passes on a slot just given."""
        line = self._lines.setdefault(key, _Line())
        if line.running < self.concurrency and not line.waiters:
            line.running += 1
            return time.monotonic()
        if len(line.waiters) >= self.limit:
            raise QueueFull(len(line.waiters), self.retry_after(key))
        granted: asyncio.Future = asyncio.get_running_loop().create_future()
        line.waiters.append(granted)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release(key, None)  # the slot came just as the client left: hand it on
            elif granted in line.waiters:
                line.waiters.remove(granted)
            raise
        return time.monotonic()

    def release(self, key: str, started: float | None) -> None:
        line = self._lines[key]
        if started is not None:
            line.mean_s = 0.7 * line.mean_s + 0.3 * (time.monotonic() - started)
        while line.waiters:
            nxt = line.waiters.popleft()
            if not nxt.done():
                nxt.set_result(None)  # the slot passes on: `running` stays the same
                return
        line.running -= 1
