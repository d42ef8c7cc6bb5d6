"""Store rows → the JSON objects of OpenAI's API (the SDK parses these)."""

from __future__ import annotations

from typing import Any

ORGANIZATION = "lorastudio"


def file_object(row: dict) -> dict[str, Any]:
    return {"id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": row["created_at"],
            "filename": row["filename"], "purpose": row["purpose"], "status": row["status"],
            "status_details": None, "expires_at": None}


def job_object(row: dict) -> dict[str, Any]:
    hp = row.get("hyperparameters") or {}
    public_hp = {"n_epochs": hp.get("n_epochs", "auto"), "batch_size": hp.get("batch_size", "auto"),
                 "learning_rate_multiplier": hp.get("learning_rate_multiplier", "auto"),
                 **{k: v for k, v in hp.items() if k not in ("n_epochs", "batch_size", "learning_rate_multiplier")}}
    error = row.get("error")
    return {
        "id": row["id"], "object": "fine_tuning.job", "created_at": row["created_at"],
        "finished_at": row.get("finished_at"), "model": row["model"],
        "fine_tuned_model": row.get("fine_tuned_model"), "organization_id": ORGANIZATION,
        "status": row["status"], "hyperparameters": public_hp, "training_file": row["training_file"],
        "validation_file": row.get("validation_file"), "result_files": [],
        "trained_tokens": row.get("trained_tokens"),
        "error": error if error else None,
        "seed": row.get("seed") if row.get("seed") is not None else 0,
        "estimated_finish": row.get("estimated_finish") if row["status"] in ("queued", "running") else None,
        "integrations": [], "metadata": row.get("metadata"), "user_provided_suffix": row.get("suffix"),
        "method": {"type": "supervised", "supervised": {"hyperparameters": public_hp}},
    }


def event_object(row: dict) -> dict[str, Any]:
    return {"id": row["id"], "object": "fine_tuning.job.event", "created_at": row["created_at"],
            "level": row["level"], "message": row["message"], "type": row["type"], "data": row.get("data") or {}}


def checkpoint_object(row: dict) -> dict[str, Any]:
    return {"id": row["id"], "object": "fine_tuning.job.checkpoint", "created_at": row["created_at"],
            "fine_tuned_model_checkpoint": row["fine_tuned_model_checkpoint"],
            "fine_tuning_job_id": row["job_id"], "step_number": row["step_number"], "metrics": row["metrics"]}


def list_object(data: list[dict], has_more: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"object": "list", "data": data, "has_more": has_more}
    if data:
        out["first_id"] = data[0].get("id")
        out["last_id"] = data[-1].get("id")
    return out


def model_object(model_id: str, created: int, owned_by: str, **extra: Any) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by, **extra}
