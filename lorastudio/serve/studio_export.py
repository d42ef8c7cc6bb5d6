"""The GGUF download's fidelity check as the page shows it: before the build, how long it will take;
after it, the check's numbers (`export_check`'s report, `exports/model.fidelity.json` beside the
studio's `exports/model.gguf`) without the server's paths or token ids. The page words the verdict
itself from these numbers; `problems` are the check's own sentences (English), shown only as a
labelled detail."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lorastudio.models.catalog import catalog

# Measured: the default model (0.49B) exported as f16 and checked (float32 reference in transformers,
# merge + write, llama.cpp) in 578 s on the 2-core EPYC (AVX2) at load average 9-12 (docs/ENGINE.md,
# tests/test_export_fidelity_slow.py). Scaled by the base's parameters; a GPU is not measured.
CPU_SECONDS_PER_BILLION = 578 / 0.49
MIN_SECONDS = 30


def gguf_paths(job: dict) -> tuple[Path, Path]:
    """The studio's GGUF of a job and its fidelity report (where `api_studio._build_export` writes them)."""
    out = Path(job["job_dir"]) / "exports"
    return out / "model.gguf", out / "model.fidelity.json"


def _params_billion(model_id: str) -> float | None:
    for entry in catalog():
        if entry["id"] == model_id:
            try:
                return float(str(entry["params"]).rstrip("Bb"))
            except ValueError:
                return None
    return None


def estimate_seconds(job: dict, gpu: bool) -> int | None:
    """How long building the GGUF and checking it takes here (CPU), or None when not known (a GPU, a
    base outside the catalogue)."""
    params = _params_billion(job.get("model") or "")
    if gpu or params is None:
        return None
    return max(MIN_SECONDS, round(CPU_SECONDS_PER_BILLION * params))


def _no_paths(text: str, folder: Path) -> str:
    """The check's sentence without the server's folder (a Modelfile problem names its file)."""
    return text.replace(str(folder) + "/", "").replace(str(folder), "exports")


def check_state(job: dict, gpu: bool) -> dict[str, Any]:
    """`status`: none (not built yet), unchecked (built without a report), passed, failed or skipped
    (llama.cpp not installed); with `estimate_s` and, once checked, the report's numbers."""
    gguf, report_path = gguf_paths(job)
    state: dict[str, Any] = {"job_id": job["id"], "estimate_s": estimate_seconds(job, gpu)}
    if not gguf.exists():
        return {**state, "status": "none"}
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {**state, "status": "unchecked"}
    if report.get("passed") is None:
        return {**state, "status": "skipped", "type": report.get("type")}
    seconds = report.get("seconds") or {}
    return {
        **state,
        "status": "passed" if report["passed"] else "failed",
        "type": report.get("type"),
        "agreeing": report.get("agreeing"),
        "identical": report.get("identical"),
        "first_token_agreement": report.get("first_token_agreement"),
        "total": report.get("total"),
        "required": report.get("required"),
        "criterion": report.get("criterion"),
        "tokens": report.get("tokens"),
        "seconds": seconds.get("total"),
        "problems": [_no_paths(str(p), gguf.parent) for p in report.get("problems") or []],
        "questions": [{"question": q.get("question"), "identical": q.get("identical"),
                       "common_prefix": q.get("common_prefix"), "adapter_text": q.get("adapter_text"),
                       "export_text": q.get("export_text")} for q in report.get("questions") or []],
    }
