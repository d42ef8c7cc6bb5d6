"""`/v1/fine_tuning/jobs`: create, list, inspect, cancel; events and checkpoints."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from lorastudio.serve.api_files import get_file_or_404
from lorastudio.serve.engines import base_model_ids, model_not_found
from lorastudio.serve.errors import APIError, error_responses, public_for
from lorastudio.serve.intake import OPENAI_HYPERPARAMETERS, RESERVED_FIELDS, SCHEDULE_CHOICES
from lorastudio.serve.objects import (
    FineTuningJob,
    FineTuningJobCheckpointList,
    FineTuningJobEventList,
    FineTuningJobList,
    checkpoint_object,
    event_object,
    job_object,
    list_object,
)
from lorastudio.serve.store import TERMINAL_STATUSES, new_id, now
from lorastudio.train.config import MAX_SEED

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"], responses=error_responses(401))
_JOB = {"response_model": FineTuningJob, "response_model_exclude_unset": True}


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")  # integrations etc. are accepted and ignored

    model: str = Field(description="A base id from GET /v1/models, e.g. 'default' or 'tiny-random'.")
    training_file: str
    validation_file: str | None = None
    suffix: str | None = Field(None, max_length=64)
    hyperparameters: dict[str, Any] | None = Field(
        None, description="n_epochs, batch_size, learning_rate_multiplier ('auto' or a number) plus any "
        "TrainConfig field, e.g. task, lora_r, max_steps.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    metadata: dict[str, str] | None = None
    method: dict[str, Any] | None = None


# OpenAI's ranges (n_epochs 1–50, batch_size 1–256, learning_rate_multiplier up to 10); NaN and
# infinity (JSON `Infinity`, `1e309`) fail the comparison.
OPENAI_RANGES = {"n_epochs": (0, 50), "batch_size": (0, 256), "learning_rate_multiplier": (0, 10)}


def check_hyperparameters(hp: dict[str, Any]) -> dict[str, Any]:
    """Reject what can never work now (400 with the exact parameter), before a job exists."""
    from lorastudio.train.config import TASKS, ConfigError, TrainConfig

    known = set(TrainConfig.__dataclass_fields__)
    out: dict[str, Any] = {}
    for key, value in hp.items():
        param = f"hyperparameters.{key}"
        if key in OPENAI_HYPERPARAMETERS:
            if value == "auto" or value is None:
                out[key] = "auto"
                continue
            low, high = OPENAI_RANGES[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value <= high:
                raise APIError(400, f"{key} must be 'auto' or a number in ({low:g}, {high:g}], got {value!r}.",
                               param=param, code="invalid_value")
            if key == "batch_size" and not float(value).is_integer():
                raise APIError(400, f"batch_size must be a whole number, got {value!r}.", param=param,
                               code="invalid_value")
            out[key] = value
        elif key == "task":
            if value not in (*TASKS, "auto"):
                raise APIError(400, f"task must be one of {', '.join(TASKS)}, got {value!r}.", param=param,
                               code="invalid_value")
            out[key] = value
        elif key == "quick":  # the quick-preview schedule (1 pass; the recommender states its cost)
            if not isinstance(value, bool):
                raise APIError(400, f"quick must be true or false, got {value!r}.", param=param, code="invalid_value")
            out[key] = value
        elif key == "time_budget_s":  # shrink the schedule to fit this many seconds (only when asked)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 10**7:
                raise APIError(400, f"time_budget_s must be a number of seconds between 0 and 10^7, got {value!r}.",
                               param=param, code="invalid_value")
            out[key] = value
        elif key in RESERVED_FIELDS or key not in known:
            why = "is set by the job itself" if key in RESERVED_FIELDS else "is not a training setting"
            raise APIError(400, f"Hyperparameter '{key}' {why}. Use n_epochs, batch_size, "
                           "learning_rate_multiplier or a TrainConfig field such as lora_r, max_steps, "
                           "max_length, save_every.", param=param, code="invalid_value")
        elif value != "auto":  # "auto": the recommender decides
            out[key] = value
    knobs = {k: v for k, v in out.items() if k not in OPENAI_HYPERPARAMETERS and k not in SCHEDULE_CHOICES}
    try:
        # Together, so that e.g. batch_tokens=256 with max_length=128 is judged as a pair.
        TrainConfig.from_dict(knobs)
    except ConfigError as exc:
        named = exc.setting if exc.setting in knobs else None
        raise APIError(400, str(exc), param=f"hyperparameters.{named}" if named else "hyperparameters",
                       code="invalid_value") from None
    return out


def public_job(request: Request, row: dict) -> dict:
    """The job as a client sees it: its error message (the worker's and trainer's words) without
    server paths or tracebacks."""
    job = job_object(row)
    if job["error"]:
        job["error"] = public_for(request, job["error"])
    return job


def get_job_or_404(request: Request, job_id: str) -> dict:
    job = request.app.state.store.get_job(job_id)
    if job is None:
        raise APIError(404, f"No such fine-tuning job: '{job_id}'.", param="fine_tuning_job_id",
                       code="job_not_found")
    return job


def refuse_unavailable_base(model: str, lang: str = "en") -> None:
    """A base that cannot train on this server (e.g. a 7B on a CPU-only machine, or a hub model not
    downloaded while offline) is a 400 `model_unavailable` that says why (in `lang`), at create or
    before a recommendation, not a job that fails later."""
    from lorastudio.i18n import t
    from lorastudio.models.availability import base_availability, reasons

    found = base_availability(model)
    if found is not None and not found["available"]:
        raise APIError(400, t("studio.model_unavailable", lang, model=model, reasons=reasons(found, lang)),
                       param="model", code="model_unavailable")


def _tell_worker(request: Request, job_id: str, message: str) -> None:
    """Record why the job changed (a job event) and wake the worker to act on it now."""
    request.app.state.worker_event(job_id, message)
    request.app.state.wake_worker()


@router.post("", summary="Create a fine-tuning job", **_JOB, responses=error_responses(400, 404))
def create_job(request: Request, body: JobCreate) -> dict:
    store = request.app.state.store
    settings = request.app.state.settings
    if body.model not in base_model_ids():
        raise model_not_found(body.model)
    refuse_unavailable_base(body.model)
    get_file_or_404(request, body.training_file, "training_file")
    if body.validation_file:
        get_file_or_404(request, body.validation_file, "validation_file")
    if body.suffix is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", body.suffix):
        raise APIError(400, "suffix may only contain letters, digits, '-' and '_' (at most 64).", param="suffix",
                       code="invalid_value")
    hp = dict(body.hyperparameters or {})
    # Newer SDKs send hyperparameters under method.supervised; accept both.
    if body.method and isinstance(body.method.get("supervised"), dict):
        hp = {**(body.method["supervised"].get("hyperparameters") or {}), **hp}
    hp = check_hyperparameters(hp)
    job_id = new_id("ftjob")
    job_dir = settings.jobs_dir / job_id
    job_dir.mkdir(parents=True, exist_ok=True)
    job = store.add_job(id=job_id, model=body.model, training_file=body.training_file,
                        validation_file=body.validation_file, suffix=body.suffix, hyperparameters=hp,
                        status="validating_files", seed=body.seed, metadata=body.metadata, job_dir=str(job_dir))
    _tell_worker(request, job_id, "Validating training file")
    return public_job(request, job)


@router.get("", summary="List fine-tuning jobs, newest first", response_model=FineTuningJobList,
            response_model_exclude_unset=True)
def list_jobs(request: Request, after: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> dict:
    rows = request.app.state.store.list_jobs(after=after, limit=limit + 1)
    return list_object([public_job(request, r) for r in rows[:limit]], len(rows) > limit)


@router.get("/{job_id}", summary="One fine-tuning job", **_JOB, responses=error_responses(404))
def get_job(request: Request, job_id: str) -> dict:
    return public_job(request, get_job_or_404(request, job_id))


@router.post("/{job_id}/cancel", summary="Cancel a job; a running trainer is stopped within seconds", **_JOB,
             responses=error_responses(404, 409))
def cancel_job(request: Request, job_id: str) -> dict:
    store = request.app.state.store
    job = get_job_or_404(request, job_id)
    if job["status"] in TERMINAL_STATUSES:
        raise APIError(409, f"Job {job_id} has already {job['status']}; only unfinished jobs can be cancelled.",
                       param="fine_tuning_job_id", code="job_not_cancellable")
    # The status flips now; the worker sees it and stops the trainer (SIGTERM, then SIGKILL).
    unfinished = ("validating_files", "queued", "running", "paused")
    if store.update_job(job_id, only_if_status=unfinished, status="cancelled",
                        finished_at=now(), estimated_finish=None):
        _tell_worker(request, job_id, "Job cancelled by request.")
    return public_job(request, store.get_job(job_id))


@router.post("/{job_id}/pause", summary="Pause a job: the trainer checkpoints and frees the device", **_JOB,
             responses=error_responses(404, 409))
def pause_job(request: Request, job_id: str) -> dict:
    store = request.app.state.store
    job = get_job_or_404(request, job_id)
    if job["status"] == "paused":
        return public_job(request, job)
    # resume=1: whenever it runs again, it continues from its latest checkpoint.
    if not store.update_job(job_id, only_if_status=("queued", "running"), status="paused", resume=1,
                            estimated_finish=None):
        raise APIError(409, f"Job {job_id} is {job['status']}; only queued or running jobs can be paused.",
                       param="fine_tuning_job_id", code="job_not_pausable")
    _tell_worker(request, job_id, "Job paused by request.")
    return public_job(request, store.get_job(job_id))


@router.post("/{job_id}/resume", summary="Resume a paused job from its latest checkpoint", **_JOB,
             responses=error_responses(404, 409))
def resume_job(request: Request, job_id: str) -> dict:
    store = request.app.state.store
    job = get_job_or_404(request, job_id)
    if not store.update_job(job_id, only_if_status=("paused",), status="queued"):
        raise APIError(409, f"Job {job_id} is {job['status']}, not paused.", param="fine_tuning_job_id",
                       code="job_not_paused")
    _tell_worker(request, job_id, "Job resumed by request; queued.")
    return public_job(request, store.get_job(job_id))


@router.get("/{job_id}/events", summary="A job's events, newest first", response_model=FineTuningJobEventList,
            response_model_exclude_unset=True, responses=error_responses(404))
def list_events(request: Request, job_id: str, after: str | None = None,
                limit: Annotated[int, Query(ge=1, le=10000)] = 20) -> dict:
    get_job_or_404(request, job_id)
    rows, more = request.app.state.store.list_events(job_id, after=after, limit=limit)
    return list_object([public_for(request, event_object(r)) for r in rows], more)


@router.get("/{job_id}/checkpoints", summary="A job's checkpoints, newest first",
            response_model=FineTuningJobCheckpointList, response_model_exclude_unset=True,
            responses=error_responses(404))
def list_checkpoints(request: Request, job_id: str, after: str | None = None,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 10) -> dict:
    get_job_or_404(request, job_id)
    rows, more = request.app.state.store.list_checkpoints(job_id, after=after, limit=limit)
    return list_object([checkpoint_object(r) for r in rows], more)
