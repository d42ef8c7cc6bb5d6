"""Directories that appear whole or not at all (a leaf module: used by the model cache and checkpoints)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_dir(final: Path, write: Callable[[Path], None], *, shared: bool = False) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``final``, then rename it into place: a crash
    leaves the old ``final`` (or nothing), never a half-written one. ``shared``: make the result
    readable by other users (mkdtemp creates private directories)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        write(tmp)
        if shared:
            tmp.chmod(0o755)
            for child in tmp.rglob("*"):
                child.chmod(0o755 if child.is_dir() else 0o644)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
