"""Store rows → the JSON objects of OpenAI's API (the SDK parses these), and their response models.

Each builder below returns a plain dict; the pydantic model beside it is what the route declares as
its `response_model`, so /openapi.json describes the object (field names and types as in the
official `openai` SDK's types) and FastAPI checks every response against it. Routes also pass
`response_model_exclude_unset=True`: a key that a builder leaves out (a list's `first_id` when it is
empty, a base model's `parent`) stays out instead of coming back as null, so the bytes on the wire
are exactly what the builder made. Models that carry lorastudio's own extras (hyperparameters beyond
OpenAI's three, event data, checkpoint metrics) allow extra keys.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

ORGANIZATION = "lorastudio"

Purpose = Literal["fine-tune", "assistants", "batch", "vision", "user_data", "evals"]
PURPOSES: tuple[str, ...] = get_args(Purpose)
JobStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled", "paused"]
AutoOrNumber = Literal["auto"] | int | float


class FileObject(BaseModel):
    id: str
    object: Literal["file"]
    bytes: int = Field(description="Size of the uploaded file in bytes.")
    created_at: int = Field(description="Unix seconds.")
    filename: str = Field(description="The uploaded name (a label only; the server stores it under its id).")
    purpose: Purpose
    status: Literal["uploaded", "processed", "error"]
    status_details: str | None
    expires_at: int | None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"]
    deleted: bool


def file_object(row: dict) -> dict[str, Any]:
    return {"id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": row["created_at"],
            "filename": row["filename"], "purpose": row["purpose"], "status": row["status"],
            "status_details": None, "expires_at": None}


class Hyperparameters(BaseModel):
    """OpenAI's three ('auto' until the job is queued, then the resolved values) plus any TrainConfig
    field the client set (task, lora_r, max_steps, …)."""

    model_config = ConfigDict(extra="allow")

    n_epochs: AutoOrNumber
    batch_size: AutoOrNumber
    learning_rate_multiplier: AutoOrNumber


class JobError(BaseModel):
    code: str | None
    message: str
    param: str | None


class SupervisedMethod(BaseModel):
    hyperparameters: Hyperparameters


class JobMethod(BaseModel):
    type: Literal["supervised"]
    supervised: SupervisedMethod


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"]
    created_at: int
    finished_at: int | None
    model: str = Field(description="The base model id.")
    fine_tuned_model: str | None = Field(description="`ft:<base>:<suffix|lorastudio>:<job id>` once succeeded; "
                                         "usable as a chat `model`.")
    organization_id: str
    status: JobStatus
    hyperparameters: Hyperparameters
    training_file: str
    validation_file: str | None
    result_files: list[str]
    trained_tokens: int | None
    error: JobError | None
    seed: int
    estimated_finish: int | None = Field(description="Unix seconds, while queued or running.")
    integrations: list[dict[str, Any]]
    metadata: dict[str, str] | None
    user_provided_suffix: str | None
    method: JobMethod


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


class FineTuningJobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"]
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] = Field(description="`metrics` events: step, total_steps, train_loss, epoch, percent, "
                                 "eta_s, tokens_per_s, learning_rate, elapsed_s, cost (or step, valid_loss).")


def event_object(row: dict) -> dict[str, Any]:
    return {"id": row["id"], "object": "fine_tuning.job.event", "created_at": row["created_at"],
            "level": row["level"], "message": row["message"], "type": row["type"], "data": row.get("data") or {}}


class CheckpointMetrics(BaseModel):
    model_config = ConfigDict(extra="allow")

    step: int | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None


class FineTuningJobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"]
    created_at: int
    fine_tuned_model_checkpoint: str = Field(description="`<fine_tuned_model>:ckpt-step-N`, usable as a chat "
                                             "`model`.")
    fine_tuning_job_id: str
    step_number: int
    metrics: CheckpointMetrics


def checkpoint_object(row: dict) -> dict[str, Any]:
    return {"id": row["id"], "object": "fine_tuning.job.checkpoint", "created_at": row["created_at"],
            "fine_tuned_model_checkpoint": row["fine_tuned_model_checkpoint"],
            "fine_tuning_job_id": row["job_id"], "step_number": row["step_number"], "metrics": row["metrics"]}


class _List(BaseModel):
    object: Literal["list"]
    has_more: bool
    first_id: str | None = Field(None, description="Present when `data` is not empty.")
    last_id: str | None = Field(None, description="Present when `data` is not empty.")


class FileList(_List):
    data: list[FileObject]


class FineTuningJobList(_List):
    data: list[FineTuningJob]


class FineTuningJobEventList(_List):
    data: list[FineTuningJobEvent]


class FineTuningJobCheckpointList(_List):
    data: list[FineTuningJobCheckpoint]


def list_object(data: list[dict], has_more: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"object": "list", "data": data, "has_more": has_more}
    if data:
        out["first_id"] = data[0].get("id")
        out["last_id"] = data[-1].get("id")
    return out


def model_object(model_id: str, created: int, owned_by: str, **extra: Any) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by, **extra}


class Model(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str = Field(description="`lorastudio` for base models, `user` for fine-tuned ones.")
    kind: Literal["base", "fine-tuned"] | None = None
    root: str | None = Field(None, description="Fine-tuned models: the base model id.")
    parent: str | None = Field(None, description="Fine-tuned models: the base model id.")
    fine_tuning_job_id: str | None = Field(None, description="Fine-tuned models: the job that made it.")


class ModelList(_List):
    data: list[Model]


class ChatMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None
    refusal: str | None


class ChatChoice(BaseModel):
    index: int
    message: ChatMessage
    logprobs: dict[str, Any] | None
    finish_reason: Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    """A non-streamed answer. With `stream: true` the answer is `text/event-stream` instead: one
    `chat.completion.chunk` object per `data:` line, then `data: [DONE]`."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str | None
    choices: list[ChatChoice]
    usage: Usage | None = Field(description="Absent (null) when a stop sequence ended generation early.")
