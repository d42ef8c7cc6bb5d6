"""Settings of one studio server: from the command line, the environment, or a test."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def default_data_dir() -> Path:
    """`$LORASTUDIO_DATA_DIR`, else `$XDG_DATA_HOME/lorastudio`, else `~/.local/share/lorastudio`."""
    if os.environ.get("LORASTUDIO_DATA_DIR"):
        return Path(os.environ["LORASTUDIO_DATA_DIR"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or "~/.local/share"
    return Path(base).expanduser() / "lorastudio"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number") from None


class SettingsError(ValueError):
    """A setting makes the server unsafe or impossible to start; the message says what to change."""


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = field(default_factory=default_data_dir)
    api_key: str | None = field(default=None, repr=False)  # never printed: repr=False
    max_upload_bytes: int = 512 * 1024 * 1024
    max_rows: int = 100_000
    """Data rows one training file may have (LORASTUDIO_MAX_ROWS); a larger file is refused with the
    count and the limit (400 too_many_rows) before its rows are checked."""
    devices: list[str] = field(default_factory=lambda: ["auto"])
    """One training slot per entry; GPU indices ("0", "1") pin a slot via CUDA_VISIBLE_DEVICES."""
    trainer_command: list[str] = field(default_factory=lambda: [sys.executable, "-m", "lorastudio", "train"])
    """Prefix of the training command; the worker appends DATA --base … --output … --config …"""
    max_adapters: int = 4
    chat_queue: int = 8
    """Chat requests that may wait per base model while one generates; more get 429 + Retry-After."""
    cancel_grace_s: float = 5.0
    """Seconds a cancelled trainer gets to exit after SIGTERM before SIGKILL."""
    pause_grace_s: float = 120.0
    """Seconds a paused trainer gets to write its checkpoint after SIGTERM before SIGKILL."""
    poll_interval_s: float = 0.3
    start_worker: bool = True
    engine_factory: Callable[[str], Any] | None = None
    """Builds the chat engine for a base id; None → lorastudio.inference.ChatEngine (tests inject fakes)."""
    web_dir: Path | None = None
    """Static web UI; None → the packaged lorastudio/web."""

    def __post_init__(self) -> None:
        # Absolute: the trainer runs with its job directory as cwd and gets paths under the data dir.
        self.data_dir = Path(self.data_dir).expanduser().resolve()
        if self.max_upload_bytes < 1:
            raise SettingsError("max upload size must be at least 1 byte")
        if self.max_rows < 1:
            raise SettingsError("the row limit must be at least 1 (LORASTUDIO_MAX_ROWS)")
        if self.chat_queue < 0:
            raise SettingsError("the chat queue limit must be 0 or more (LORASTUDIO_CHAT_QUEUE / --chat-queue)")
        if not self.devices:
            raise SettingsError("at least one training device slot is needed")
        if self.api_key and not all("!" <= ch <= "~" for ch in self.api_key):
            # HTTP clients send header bytes in different encodings (the openai SDK refuses anything but
            # ASCII), so such a key could lock every client out. The key itself is never printed.
            raise SettingsError("the API key may contain only printable ASCII characters without spaces "
                                "(letters, digits, punctuation): HTTP clients, the official openai SDK among "
                                "them, cannot send others in a header. Generate one with: python -c "
                                "'import secrets; print(secrets.token_urlsafe(32))'")

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Environment first (`LORASTUDIO_*`), then explicit overrides (the CLI's flags) win."""
        values: dict[str, Any] = {}
        if os.environ.get("LORASTUDIO_HOST"):
            values["host"] = os.environ["LORASTUDIO_HOST"]
        values["port"] = _env_int("LORASTUDIO_PORT", 8000)
        if os.environ.get("LORASTUDIO_API_KEY"):
            values["api_key"] = os.environ["LORASTUDIO_API_KEY"]
        values["chat_queue"] = _env_int("LORASTUDIO_CHAT_QUEUE", 8)
        values["max_upload_bytes"] = _env_int("LORASTUDIO_MAX_UPLOAD_MB", 512) * 1024 * 1024
        values["max_rows"] = _env_int("LORASTUDIO_MAX_ROWS", 100_000)
        if os.environ.get("LORASTUDIO_DEVICES"):
            values["devices"] = [d.strip() for d in os.environ["LORASTUDIO_DEVICES"].split(",") if d.strip()]
        if os.environ.get("LORASTUDIO_TRAINER_COMMAND"):
            # e.g. another interpreter or a launcher in front of `lorastudio train`
            values["trainer_command"] = shlex.split(os.environ["LORASTUDIO_TRAINER_COMMAND"])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def check_bind(self) -> None:
        """Refuse to expose an unauthenticated training service beyond this machine."""
        if self.host not in LOOPBACK_HOSTS and not self.api_key:
            raise SettingsError(
                f"refusing to listen on {self.host} without an API key: anyone who can reach this "
                "machine could upload data and run jobs. Set --api-key KEY (or LORASTUDIO_API_KEY), "
                "or bind to 127.0.0.1."
            )

    # --- paths under the data dir --------------------------------------------------------------
    @property
    def db_path(self) -> Path:
        return self.data_dir / "studio.sqlite3"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"
