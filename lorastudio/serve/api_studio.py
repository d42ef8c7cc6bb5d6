"""`/studio/*`: what OpenAI's API has no word for — reports, recommendations, live progress, compare,
downloads. Contracts in docs/ARCHITECTURE.md ("Service ↔ web UI")."""

from __future__ import annotations

import asyncio
import json
import threading
import zipfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from lorastudio.serve.api_files import get_file_or_404, safe_download_name
from lorastudio.serve.api_jobs import get_job_or_404
from lorastudio.serve.engines import base_model_ids, model_not_found
from lorastudio.serve.errors import APIError
from lorastudio.serve.objects import job_object
from lorastudio.serve.store import TERMINAL_STATUSES

router = APIRouter(prefix="/studio", tags=["studio"])

# Files of a job directory that are not part of the adapter a user downloads.
_NOT_ADAPTER = ("train.log", "job.yaml")
_export_locks: dict[tuple[str, str], threading.Lock] = {}
_export_guard = threading.Lock()


@router.get("/models", summary="The model catalog (embedded default first, tiny-random labelled)")
def studio_models() -> dict:
    from lorastudio.models import catalog

    return {"data": catalog()}


# --- data reports --------------------------------------------------------------------------------
def _validate(record: dict) -> Any:
    from lorastudio.data import DataError, validate

    try:
        return validate(record["path"])
    except DataError as exc:
        raise APIError(400, f"{record['filename']} cannot be used: {exc}", param="file_id",
                       code="unusable_file") from None


def _report(record: dict, lang: str) -> dict:
    """The validation report in `lang`, computed once per file and language, cached beside it."""
    cache = Path(record["path"]).with_name(f"{record['id']}.report.{lang}.json")
    if cache.exists():
        return json.loads(cache.read_text(encoding="utf-8"))
    report = _validate(record).to_dict(lang)
    report["file"] = record["filename"]  # the client's name, not our storage path
    report["file_id"] = record["id"]
    report["lang"] = lang
    cache.write_text(json.dumps(report, ensure_ascii=False), encoding="utf-8")
    return report


def request_lang(request: Request) -> str:
    """`zh` when the client's first Accept-Language choice is Chinese, else `en`."""
    first = request.headers.get("accept-language", "").split(",")[0].strip().lower()
    return "zh" if first.startswith("zh") else "en"


@router.get("/files/{file_id}/report", summary="Validation report of an uploaded file (Accept-Language: zh|en)")
async def file_report(request: Request, file_id: str) -> dict:
    record = get_file_or_404(request, file_id)
    return await run_in_threadpool(_report, record, request_lang(request))


@router.get("/files/{file_id}/rejected", summary="Rejected rows with their reasons (CSV)")
async def file_rejected(request: Request, file_id: str) -> FileResponse:
    record = get_file_or_404(request, file_id)
    target = Path(record["path"]).with_name(f"{record['id']}.rejected.csv")

    def build() -> None:
        if not target.exists():
            _validate(record).write_rejected(target)

    await run_in_threadpool(build)
    name = safe_download_name(Path(record["filename"]).stem) + ".rejected.csv"
    return FileResponse(target, media_type="text/csv; charset=utf-8", filename=name)


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    training_file: str
    model: str = "default"
    task: str = "qa"
    price_per_hour: float | None = Field(None, ge=0)
    quick: bool = False
    """The user chose the quick preview (one pass); its recall cost is in the answer."""
    time_budget_s: float | None = Field(None, gt=0)
    """The user's wall-time limit: the schedule shrinks to fit it, each shrink stated as a warning code."""


# The code families the recommender emits; GET /studio/messages serves their templates.
MESSAGE_PREFIXES = ("rec.", "warn.", "estimate.")


@router.get("/messages", summary="Templates of the recommender's reason/warning/estimate codes (lang=en|zh)")
def studio_messages(request: Request, lang: str | None = None) -> dict:
    """`{"lang", "messages": {code: template}}`: placeholders are `{name}` (str.format style), filled from a
    code's `params`. Without `lang`, the Accept-Language header chooses."""
    from lorastudio.i18n import catalog

    chosen = request_lang(request) if lang is None else lang.strip().lower()
    if chosen not in ("en", "zh"):
        raise APIError(400, "lang must be en or zh.", param="lang", code="invalid_value")
    return {"lang": chosen, "messages": catalog(chosen, MESSAGE_PREFIXES)}


@router.post("/recommend", summary="Recommended settings, reasons (codes + English) and a time/cost estimate")
async def studio_recommend(request: Request, body: RecommendRequest) -> dict:
    from lorastudio.train.config import TASKS
    from lorastudio.train.recommend import recommend

    record = get_file_or_404(request, body.training_file, "training_file")
    if body.model not in base_model_ids():
        raise model_not_found(body.model)
    if body.task not in TASKS:
        raise APIError(400, f"task must be one of {', '.join(TASKS)}.", param="task", code="invalid_value")

    def work() -> dict:
        report = _validate(record)
        if not report.conversations:
            raise APIError(400, f"{record['filename']} has no usable rows; see its report.",
                           param="training_file", code="no_usable_rows")
        return recommend(report.conversations, body.model, task=body.task, price_per_hour=body.price_per_hour,
                         quick=body.quick, time_budget_s=body.time_budget_s).to_dict()

    return await run_in_threadpool(work)


# --- live progress -------------------------------------------------------------------------------
def _status_event(job: dict) -> dict:
    public = job_object(job)
    return {"type": "status", "status": job["status"], "fine_tuned_model": job.get("fine_tuned_model"),
            "error": public["error"], "estimated_finish": public["estimated_finish"]}


@router.get("/jobs/{job_id}/stream", summary="Server-Sent Events: every event of the job, then live ones")
async def job_stream(request: Request, job_id: str) -> StreamingResponse:
    store = request.app.state.store
    get_job_or_404(request, job_id)
    try:  # a reconnecting EventSource says what it already has
        last_seq = int(request.headers.get("last-event-id", "0"))
    except ValueError:
        last_seq = 0
    interval = request.app.state.settings.poll_interval_s

    async def events():
        nonlocal last_seq
        status = None
        idle = 0.0
        yield "retry: 2000\n\n"
        while True:
            rows = await run_in_threadpool(store.events_since, job_id, last_seq)
            for row in rows:
                last_seq = row["seq"]
                yield f"id: {row['seq']}\ndata: {json.dumps(row['raw'], ensure_ascii=False)}\n\n"
            current = await run_in_threadpool(store.get_job, job_id)
            if current is None:
                return
            if current["status"] != status:
                status = current["status"]
                yield f"data: {json.dumps(_status_event(current), ensure_ascii=False)}\n\n"
            if status in TERMINAL_STATUSES:
                rows = await run_in_threadpool(store.events_since, job_id, last_seq)
                for row in rows:  # events written together with the final status
                    last_seq = row["seq"]
                    yield f"id: {row['seq']}\ndata: {json.dumps(row['raw'], ensure_ascii=False)}\n\n"
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(max(interval, 0.2))
            idle += max(interval, 0.2)
            if idle >= 15:  # a comment line keeps proxies from closing a quiet stream
                idle = 0.0
                yield ": keep-alive\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/jobs/{job_id}/metrics", summary="Metrics (and validation) events, oldest first, for charts")
def job_metrics(request: Request, job_id: str) -> dict:
    get_job_or_404(request, job_id)
    rows = request.app.state.store.events_since(job_id, 0)
    return {"data": [r["raw"] for r in rows if r["raw"].get("type") in ("metrics", "eval")]}


# --- compare -------------------------------------------------------------------------------------
class CompareRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    fine_tuned_model: str
    question: str = Field(min_length=1)
    max_tokens: int = Field(256, ge=1, le=4096)


@router.post("/compare", summary="The same question to the base and the fine-tuned model")
async def compare(request: Request, body: CompareRequest) -> dict:
    pool = request.app.state.engines
    tuned_base, adapter = pool.resolve(body.fine_tuned_model, "fine_tuned_model")
    if adapter is None:
        raise APIError(400, f"'{body.fine_tuned_model}' is a base model; give a job's fine_tuned_model.",
                       param="fine_tuned_model", code="invalid_value")
    base_name = body.model or tuned_base
    base, base_adapter = pool.resolve(base_name)
    if not body.question.strip():
        raise APIError(400, "The question is empty.", param="question", code="invalid_value")

    def work() -> dict:
        base_engine = pool.get(base)
        base_answer = base_engine.generate(body.question, adapter=base_adapter, max_new_tokens=body.max_tokens)
        tuned_engine = pool.get(tuned_base)
        tuned_answer = tuned_engine.generate(body.question, adapter=adapter, max_new_tokens=body.max_tokens)
        return {"question": body.question, "model": base_name, "fine_tuned_model": body.fine_tuned_model,
                "base_answer": base_answer, "tuned_answer": tuned_answer}

    return await run_in_threadpool(work)


# --- downloads -----------------------------------------------------------------------------------
def _zip_dir(files: list[Path], root: Path, target: Path) -> None:
    tmp = target.with_name(target.name + ".part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in files:
            zf.write(path, path.relative_to(root).as_posix())
    tmp.replace(target)


def _build_export(job: dict, kind: str) -> Path:
    job_dir = Path(job["job_dir"])
    out_dir = job_dir / "exports"
    out_dir.mkdir(exist_ok=True)
    adapter_file = job_dir / "adapter_model.safetensors"
    if kind == "adapter":
        target = out_dir / "adapter.zip"
        if not target.exists() or target.stat().st_mtime < adapter_file.stat().st_mtime:
            files = [p for p in sorted(job_dir.iterdir()) if p.is_file() and p.name not in _NOT_ADAPTER
                     and not p.name.startswith("events.attempt-")]
            _zip_dir(files, job_dir, target)
        return target
    from lorastudio import export

    if kind == "merged":
        target = out_dir / "merged.zip"
        if not target.exists():
            merged = out_dir / "merged"
            export.export_merged(job_dir, merged)
            _zip_dir(sorted(p for p in merged.rglob("*") if p.is_file()), merged, target)
        return target
    target = out_dir / "model.gguf"
    if not target.exists():
        export.export_gguf(job_dir, target)
    return target


@router.get("/jobs/{job_id}/download/{kind}", summary="Download the adapter (zip), merged model (zip) or GGUF")
async def download(request: Request, job_id: str, kind: str) -> FileResponse:
    job = get_job_or_404(request, job_id)
    if kind not in ("adapter", "merged", "gguf"):
        raise APIError(404, f"Unknown download '{kind}': use adapter, merged or gguf.", param="kind",
                       code="unknown_download")
    if job["status"] != "succeeded":
        raise APIError(409, f"Job {job_id} is {job['status']}; downloads exist once it has succeeded.",
                       param="fine_tuning_job_id", code="job_not_finished")
    with _export_guard:
        lock = _export_locks.setdefault((job_id, kind), threading.Lock())

    def work() -> Path:
        from lorastudio.export import ExportError
        from lorastudio.inference import AdapterError

        with lock:  # two clicks must not build the same export twice
            try:
                return _build_export(job, kind)
            except (ExportError, AdapterError) as exc:
                raise APIError(409, f"The {kind} export of job {job_id} failed: {exc}", param="kind",
                               code="export_failed") from None

    path = await run_in_threadpool(work)
    stem = safe_download_name(job.get("fine_tuned_model") or job_id)
    names = {"adapter": f"{stem}-adapter.zip", "merged": f"{stem}-merged.zip", "gguf": f"{stem}.gguf"}
    media = "application/zip" if kind != "gguf" else "application/octet-stream"
    return FileResponse(path, media_type=media, filename=names[kind])
