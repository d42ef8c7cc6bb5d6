"""Checkpoints of a run: one layout, one rule for "usable", used by the trainer and the job service.

    <output_dir>/checkpoints/step-00000050/   adapter_model.safetensors, adapter_config.json, trainer_state.pt
    <output_dir>/checkpoints/best/            the best adapter under early stopping (+ step.txt)

A checkpoint is usable when its `trainer_state.pt` exists: directories are written into a temporary
sibling and renamed (`atomic_dir`), so a crash leaves either a whole checkpoint or none. The newest
`KEEP` step checkpoints are kept; older ones are pruned as each new one lands.
"""

from __future__ import annotations

import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from lorastudio.atomic import atomic_dir

DIR = "checkpoints"
STATE_FILE = "trainer_state.pt"
BEST = "best"
KEEP = 2
_STEP = re.compile(r"step-(\d+)")


class Checkpoint(NamedTuple):
    step: int
    path: Path


def step_path(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / DIR / f"step-{step:08d}"


def best_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / DIR / BEST


def usable(output_dir: str | Path) -> list[Checkpoint]:
    """Every complete step checkpoint, oldest first."""
    root = Path(output_dir) / DIR
    found = []
    for path in root.glob("step-*") if root.is_dir() else ():
        match = _STEP.fullmatch(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append(Checkpoint(int(match.group(1)), path))
    return sorted(found)


def latest(output_dir: str | Path) -> Checkpoint | None:
    """The newest complete checkpoint (what `--resume` continues from), or None."""
    found = usable(output_dir)
    return found[-1] if found else None


def prune(output_dir: str | Path, keep: int = KEEP) -> None:
    """Delete all but the newest `keep` step checkpoints (incomplete leftovers included)."""
    root = Path(output_dir) / DIR
    if not root.is_dir():
        return
    keep_paths = {c.path for c in usable(output_dir)[-keep:]} if keep > 0 else set()
    for path in root.glob("step-*"):
        if _STEP.fullmatch(path.name) and path not in keep_paths:
            shutil.rmtree(path, ignore_errors=True)


def clear(output_dir: str | Path) -> None:
    """A fresh run in a reused directory: checkpoints of another run must not be resumed."""
    shutil.rmtree(Path(output_dir) / DIR, ignore_errors=True)


def save(path: Path, write_adapter: Callable[[Path], None], state: dict[str, Any]) -> Path:
    """Atomically write an adapter (`write_adapter(dir)`) and the trainer state beside it."""
    import torch

    def write(tmp: Path) -> None:
        write_adapter(tmp)
        torch.save(state, tmp / STATE_FILE)

    return atomic_dir(path, write)


def load_state(path: Path) -> dict[str, Any]:
    import torch

    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)


def rng_state() -> dict[str, Any]:
    import torch

    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resume_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'key: old → new' for each setting a resume must match (declared on the TrainConfig fields) that
    differs. A setting missing from an older checkpoint counts as its default."""
    from lorastudio.train.config import TrainConfig, resume_keys

    saved = {**TrainConfig().to_dict(), **saved}
    return [f"{key}: {saved.get(key)!r} → {current.get(key)!r}"
            for key in resume_keys() if saved.get(key) != current.get(key)]
