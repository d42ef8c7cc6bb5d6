"""Where models live on disk, and how one is built there exactly once.

Cache root: ``$LORASTUDIO_HOME`` (default ``~/.cache/lorastudio``); each model under ``models/<name>/``.
A model directory appears only when complete: it is built in a temporary sibling and renamed into
place, under an exclusive file lock so two processes (a CLI run and the server) never build it twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from lorastudio.atomic import atomic_dir


def lorastudio_home() -> Path:
    return Path(os.environ.get("LORASTUDIO_HOME") or Path.home() / ".cache" / "lorastudio").expanduser()


def models_dir() -> Path:
    path = lorastudio_home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_complete(path: Path) -> bool:
    """A finished model directory: a rename put it there, and it holds a config and weights."""
    return path.is_dir() and (path / "config.json").is_file() and (
        any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").is_file()
    )


@contextlib.contextmanager
def build_lock(name: str) -> Iterator[None]:
    lock_path = models_dir() / f".{name.lstrip('.')}.lock"
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def build_once(name: str, builder: Callable[[Path], None], *, complete: Callable[[Path], bool] = is_complete) -> Path:
    """Return ``models/<name>``, calling ``builder(tmp_dir)`` to create it if it is not there yet."""
    target = models_dir() / name
    if complete(target):
        return target
    with build_lock(name):
        if complete(target):  # another process finished it while we waited for the lock
            return target
        # A shared cache: other tools and users read it (`shared` undoes mkdtemp's private mode).
        atomic_dir(target, builder, shared=True)
    return target
