"""The speed training actually ran at on this machine, remembered for the next estimate (issue 13).

Before a run the recommender knows only its CPU class's measured figure, scaled by a 0.8-second matmul probe
(`recommend.cpu_speed`); on the session-27 Zen 3 the probe read 0.89–1.36 of the same steady speed (a VM runs fast
for a while after a long idle), and the printed estimates were 13.5 % short to 35 % long. A run that trained here
says what this machine does with this model: the trainer records its rate at the end (`record`), and the next
estimate for the same machine, model, dtype and packing uses the median of the last few (`recall`) instead of the
class figure and the probe.

One JSON file, `$LORASTUDIO_HOME/speeds.json` (`LORASTUDIO_SPEED_FILE` names another; `LORASTUDIO_SPEED_FILE=off`
switches remembering off): `{"version": 1, "runs": [{"machine", "base", "dtype", "int8", "question_loss",
"batch_tokens", "tokens_per_s", "tokens", "seconds", "time"}, …]}`, the last `KEEP` runs of each kind. No torch here:
the recommender imports it.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV = "LORASTUDIO_SPEED_FILE"
VERSION = 1
KEEP = 5
"""Runs kept per kind (machine, model, dtype, int8, question loss, pack size); `recall` takes their median."""
MIN_STEPS = 8
MIN_SECONDS = 60.0
"""A run is remembered only when it trained at least this many steps and seconds after its first step: short runs
(tests, a `max_steps` check) are mostly one-off costs and would teach the estimate the wrong speed."""
PACK_EXPONENT = 0.23
"""Real tokens a second fall with the pack's length to this power (attention and activations grow with it). Measured
on a 2-core AMD EPYC Zen 3 (AVX2, fp32 + int8), session 28, the default model: the demo file 98.5 tok/s in 704-token
packs and 87.6 in 1,280-token ones (exponent 0.20), the multi-turn file 86.6 and 73.5 (0.27). Used only to carry a
remembered speed to another pack size."""


@dataclass(frozen=True)
class Remembered:
    tokens_per_s: float
    runs: int
    """How many remembered runs the figure is the median of."""
    same_packs: bool
    """The runs trained in packs of this size; False: another size, carried by `PACK_EXPONENT`."""


def speed_file() -> Path | None:
    """Where the speeds live; None when remembering is switched off."""
    named = os.environ.get(ENV, "").strip()
    if named.lower() in ("0", "off", "false", "no"):
        return None
    if named:
        return Path(named).expanduser()
    from lorastudio.models.cache import lorastudio_home

    return lorastudio_home() / "speeds.json"


def machine_id(cpu_class: str, cores: int) -> str:
    """This CPU as a remembered speed knows it: its class, the physical cores used, and its model name."""
    return f"{cpu_class}|{int(cores)}|{_cpu_model()}"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _load(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or unreadable: nothing remembered (the estimate falls back)
        return []
    runs = data.get("runs") if isinstance(data, dict) and data.get("version") == VERSION else None
    return [r for r in runs if isinstance(r, dict)] if isinstance(runs, list) else []


def _kind(run: dict[str, Any]) -> tuple:
    return (run.get("machine"), run.get("base"), run.get("dtype"), run.get("int8"), run.get("question_loss"))


def record(*, machine: str, base: str, dtype: str, int8: bool, question_loss: bool, batch_tokens: int,
           tokens: int, seconds: float, steps: int) -> bool:
    """Remember one run's training speed (`tokens` trained in `seconds` of steps after its first, over `steps`
    steps); False when it is too short to count (`MIN_STEPS`, `MIN_SECONDS`), switched off, or the file cannot be
    written (remembering is a help to the estimate, never a reason for a run to fail)."""
    path = speed_file()
    if path is None or steps < MIN_STEPS or seconds < MIN_SECONDS or tokens <= 0:
        return False
    entry = {"machine": machine, "base": base, "dtype": dtype, "int8": bool(int8), "question_loss": bool(question_loss),
             "batch_tokens": int(batch_tokens), "tokens_per_s": round(tokens / seconds, 2), "tokens": int(tokens),
             "seconds": round(seconds, 1), "time": round(time.time())}
    runs = _load(path) + [entry]
    same = [r for r in runs if _kind(r) == _kind(entry) and r.get("batch_tokens") == entry["batch_tokens"]]
    drop = {id(r) for r in same[:-KEEP]}
    runs = [r for r in runs if id(r) not in drop]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".speeds-", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"version": VERSION, "runs": runs}, f, ensure_ascii=False, indent=1)
        os.replace(tmp, path)
    except OSError:
        return False
    return True


def recall(*, machine: str, base: str, dtype: str, int8: bool, question_loss: bool,
           batch_tokens: int) -> Remembered | None:
    """The median speed of the last runs of this kind here, in packs of `batch_tokens`; runs in other pack sizes
    (the closest size's) carried over by `PACK_EXPONENT` when there are none; None when nothing is remembered."""
    path = speed_file()
    if path is None:
        return None
    want = (machine, base, dtype, bool(int8), bool(question_loss))
    runs = [r for r in _load(path) if _kind(r) == want and isinstance(r.get("tokens_per_s"), (int, float))
            and isinstance(r.get("batch_tokens"), int) and r["tokens_per_s"] > 0 and r["batch_tokens"] > 0]
    if not runs:
        return None
    closest = min({r["batch_tokens"] for r in runs}, key=lambda b: (abs(b - batch_tokens), b))
    chosen = [r["tokens_per_s"] for r in runs if r["batch_tokens"] == closest][-KEEP:]
    rate = statistics.median(chosen) * (closest / max(1, batch_tokens)) ** PACK_EXPONENT
    return Remembered(tokens_per_s=round(rate, 1), runs=len(chosen), same_packs=closest == batch_tokens)


__all__ = ["ENV", "KEEP", "MIN_SECONDS", "MIN_STEPS", "PACK_EXPONENT", "Remembered", "machine_id", "recall", "record",
           "speed_file"]
