"""`/studio/*`: what OpenAI's API has no word for — reports, recommendations, live progress, compare,
the job list with summaries, deleting a job, downloads. Contracts in docs/ARCHITECTURE.md ("Service ↔ web
UI"). Errors of these routes are in the request's language (Accept-Language: zh|en), for the page."""

from __future__ import annotations

import asyncio
import json
import threading
import zipfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from lorastudio.models.availability import catalog_availability, has_gpu, reasons
from lorastudio.serve.api_files import get_file_or_404, safe_download_name
from lorastudio.serve.api_jobs import get_job_or_404, refuse_unavailable_base
from lorastudio.serve.engines import base_model_ids, model_not_found
from lorastudio.serve.errors import APIError, error_responses, public_for
from lorastudio.serve.objects import FileObject, file_object, job_object
from lorastudio.serve.store import TERMINAL_STATUSES, new_id
from lorastudio.serve.studio_export import check_state
from lorastudio.serve.studio_jobs import build_adapter_zip, build_report_zip, job_summary, remove_job_dir
from lorastudio.serve.studio_objects import (
    CompareAnswer,
    DataPreview,
    GgufCheck,
    JobDeleted,
    MessageCatalogue,
    MetricsList,
    Recommendation,
    StudioJobList,
    StudioModelList,
    ValidationReport,
    binary,
)
from lorastudio.serve.studio_preview import MappingError, check_mapping, column_mapping, preview, write_mapped

router = APIRouter(prefix="/studio", tags=["studio"], responses=error_responses(401))
# Typed for /openapi.json (studio_objects.py); the answer stays exactly the dict a route builds.
_TYPED = {"response_model_exclude_unset": True}

# The longest question compare answers (characters): a business question, not a document.
MAX_QUESTION_CHARS = 4000
DOWNLOADS = ("adapter", "report", "merged", "gguf")
_export_locks: dict[tuple[str, str], threading.Lock] = {}
_export_guard = threading.Lock()


@router.get("/models", summary="The model catalog (embedded default first, tiny-random labelled), each with "
            "whether it can run on this server and why not (no GPU, not downloaded and offline)",
            response_model=StudioModelList, **_TYPED)
def studio_models(request: Request) -> dict:
    lang = request_lang(request)
    return {"data": [{**item, "unavailable_reason": reasons(item, lang)} for item in catalog_availability()]}


# --- data reports --------------------------------------------------------------------------------
def say(lang: str, key: str, **params: Any) -> str:
    """A message of the studio routes in `lang` (lorastudio/i18n.py, keys `studio.*`)."""
    from lorastudio.i18n import t

    return t(key, lang, **params)


def _validate(record: dict, lang: str = "en", max_rows: int | None = None) -> Any:
    """The file's validation report; `max_rows` (the server's LORASTUDIO_MAX_ROWS) refuses a larger file
    as a 400 `too_many_rows` with `params` {file, rows, limit} for the page's own words."""
    from lorastudio.data import DataError, validate

    try:
        return validate(record["path"], max_rows=max_rows)
    except DataError as exc:
        # The client's file name, never the server's storage path, in the request's language.
        from lorastudio.i18n import MESSAGES, t

        params = {**exc.params, "file": record["filename"]}
        reason = t(exc.code, lang, **params) if exc.code in MESSAGES else str(exc).replace(
            record["path"], record["filename"])
        if exc.code == "too_many_rows":
            raise APIError(400, reason, param="file_id", code="too_many_rows", params=params) from None
        raise APIError(400, say(lang, "studio.file_unusable", file=record["filename"], reason=reason),
                       param="file_id", code="unusable_file") from None


def _max_rows(request: Request) -> int | None:
    return getattr(request.app.state.settings, "max_rows", None)


def _web_hints(report: dict, lang: str) -> dict:
    """Hints for the page's user, not a terminal's: no command-line options (e.g. --max-length)."""
    for issue in report.get("issues") or []:
        if issue.get("kind") == "too_long":
            issue["hint"] = say(lang, "studio.hint.too_long")
    return report


def _report(record: dict, lang: str, max_rows: int | None = None) -> dict:
    """The validation report in `lang`, computed once per file and language, cached beside it."""
    cache = Path(record["path"]).with_name(f"{record['id']}.report-v3.{lang}.json")
    if cache.exists():
        return json.loads(cache.read_text(encoding="utf-8"))
    validated = _validate(record, lang, max_rows)
    report = _web_hints(validated.to_dict(lang), lang)
    if validated.header_row is not None:  # XLSX: Excel's row of data row r is r + this
        report["sheet_row_offset"] = validated.header_row
    report["file"] = record["filename"]  # the client's name, not our storage path
    report["file_id"] = record["id"]
    report["lang"] = lang
    cache.write_text(json.dumps(report, ensure_ascii=False), encoding="utf-8")
    return report


def request_lang(request: Request) -> str:
    """`zh` when the client's first Accept-Language choice is Chinese, else `en`."""
    first = request.headers.get("accept-language", "").split(",")[0].strip().lower()
    return "zh" if first.startswith("zh") else "en"


@router.get("/files/{file_id}/report", summary="Validation report of an uploaded file (Accept-Language: zh|en)",
            response_model=ValidationReport, responses=error_responses(400, 404), **_TYPED)
async def file_report(request: Request, file_id: str) -> dict:
    record = get_file_or_404(request, file_id)
    return await run_in_threadpool(_report, record, request_lang(request), _max_rows(request))


@router.get("/files/{file_id}/preview", summary="The first usable rows as the model will see them (mapped "
            "fields, the chat template, the learned part marked) and the table's column mapping",
            response_model=DataPreview, responses=error_responses(400, 404), **_TYPED)
async def file_preview(request: Request, file_id: str, model: str = "default",
                       rows: Annotated[int, Query(ge=1, le=20)] = 3) -> dict:
    record = get_file_or_404(request, file_id)
    lang = request_lang(request)
    if model not in base_model_ids():
        raise model_not_found(model)

    def work() -> dict:
        return {"file_id": record["id"], **preview(_validate(record, lang, _max_rows(request)), model, rows)}

    return await run_in_threadpool(work)


class MappingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    fields: dict[str, str | None] = Field(description="source column → instruction, input, response, system, "
                                          "or null (not used)")


@router.post("/files/{file_id}/mapping", summary="Use the table's columns as the user says: a new file (JSONL, "
             "same row numbers) with those fields", response_model=FileObject, responses=error_responses(400, 404),
             **_TYPED)
async def file_mapping(request: Request, file_id: str, body: MappingRequest) -> dict:
    record = get_file_or_404(request, file_id)
    lang = request_lang(request)
    settings = request.app.state.settings

    def work() -> dict:
        columns = [c["column"] for c in column_mapping(_validate(record, lang, _max_rows(request)))["columns"]]
        if not columns:
            raise APIError(400, say(lang, "studio.mapping.not_table", file=record["filename"]), param="file_id",
                           code="not_a_table")
        try:
            chosen = check_mapping(body.fields, columns)
        except MappingError as exc:
            params = {k: f"@studio.field.{v}" if k == "field" else v for k, v in exc.params.items()}
            raise APIError(400, say(lang, f"studio.mapping.{exc.code}", **params), param="fields",
                           code="invalid_mapping") from None
        new = new_id("file")
        target = settings.files_dir / f"{new}.jsonl"
        size = write_mapped(record["path"], chosen, target)
        name = f"{Path(record['filename']).stem}.mapped.jsonl"
        return file_object(request.app.state.store.add_file(filename=name, nbytes=size, purpose="fine-tune",
                                                            path=str(target), file_id=new))

    return await run_in_threadpool(work)


@router.get("/files/{file_id}/rejected", summary="Rejected rows with their reasons (CSV, in the request's language)",
            response_class=FileResponse,
            responses={**binary("text/csv", "The rejected rows, their reasons in added columns."),
                       **error_responses(400, 404)})
async def file_rejected(request: Request, file_id: str) -> FileResponse:
    record = get_file_or_404(request, file_id)
    lang = request_lang(request)
    target = Path(record["path"]).with_name(f"{record['id']}.rejected.{lang}.csv")

    def build() -> None:
        if not target.exists():
            _validate(record, lang, _max_rows(request)).write_rejected(target, lang=lang,
                                                   hints={"too_long": say(lang, "studio.hint.too_long")})

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
    settings: dict[str, Any] | None = None
    """The user's changes on top of the recommendation (TrainConfig names): validated, and where the time
    depends on them, estimated (`changed_estimate`)."""


# The code families the recommender emits; GET /studio/messages serves their templates.
MESSAGE_PREFIXES = ("rec.", "warn.", "estimate.")


@router.get("/messages", summary="Templates of the recommender's reason/warning/estimate codes (lang=en|zh)",
            response_model=MessageCatalogue, responses=error_responses(400), **_TYPED)
def studio_messages(request: Request, lang: str | None = None) -> dict:
    """`{"lang", "messages": {code: template}}`: placeholders are `{name}` (str.format style), filled from a
    code's `params`. Without `lang`, the Accept-Language header chooses."""
    from lorastudio.i18n import catalog

    chosen = request_lang(request) if lang is None else lang.strip().lower()
    if chosen not in ("en", "zh"):
        raise APIError(400, "lang must be en or zh.", param="lang", code="invalid_value")
    return {"lang": chosen, "messages": catalog(chosen, MESSAGE_PREFIXES)}


@router.post("/recommend", summary="Recommended settings, reasons (codes + English) and a time/cost estimate",
             response_model=Recommendation, responses=error_responses(400, 404), **_TYPED)
async def studio_recommend(request: Request, body: RecommendRequest) -> dict:
    from lorastudio.train.config import TASKS
    from lorastudio.train.recommend import recommend

    record = get_file_or_404(request, body.training_file, "training_file")
    lang = request_lang(request)
    if body.model not in base_model_ids():
        raise model_not_found(body.model)
    if body.task not in TASKS:
        raise APIError(400, f"task must be one of {', '.join(TASKS)}.", param="task", code="invalid_value")
    refuse_unavailable_base(body.model, lang)  # a base that cannot run here gets no settings

    def work() -> dict:
        report = _validate(record, lang, _max_rows(request))
        if not report.conversations:
            raise APIError(400, say(lang, "studio.no_usable_rows", file=record["filename"]),
                           param="training_file", code="no_usable_rows")
        rec = recommend(report.conversations, body.model, task=body.task, price_per_hour=body.price_per_hour,
                        quick=body.quick, time_budget_s=body.time_budget_s)
        out = rec.to_dict()
        if body.settings:
            out.update(_with_changes(rec, body.settings))
        return out

    return await run_in_threadpool(work)


def _with_changes(rec: Any, changes: dict[str, Any]) -> dict:
    """`changed_settings` (the changes the time depends on) and `changed_estimate` (the time of the
    recommendation with the user's changes, null when none of them moves it); a change TrainConfig refuses
    is a 400 naming it."""
    from lorastudio.train.config import ConfigError, TrainConfig
    from lorastudio.train.recommend import changed_settings

    final = {**rec.settings, **changes}
    try:
        TrainConfig.from_dict(final)
    except ConfigError as error:
        wrong = error.setting if error.setting in changes else None
        raise APIError(400, str(error), param=f"settings.{wrong}" if wrong else "settings",
                       code="invalid_value") from None
    changed = changed_settings(rec.settings, final)
    return {"changed_settings": sorted(changed), "changed_estimate": rec.estimate_for(final) if changed else None}


# --- live progress -------------------------------------------------------------------------------
def _status_event(job: dict) -> dict:
    public = job_object(job)
    return {"type": "status", "status": job["status"], "fine_tuned_model": job.get("fine_tuned_model"),
            "error": public["error"], "estimated_finish": public["estimated_finish"]}


@router.get("/jobs/{job_id}/stream", summary="Server-Sent Events: every event of the job, then live ones",
            response_class=StreamingResponse,
            responses={200: {"description": "`data:` lines, each an events.jsonl object or {type: status, status, "
                             "fine_tuned_model, error, estimated_finish}; `id:` is the sequence number "
                             "(Last-Event-ID resumes).", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                       **error_responses(404)})
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
                yield f"id: {row['seq']}\ndata: {json.dumps(public_for(request, row['raw']), ensure_ascii=False)}\n\n"
            current = await run_in_threadpool(store.get_job, job_id)
            if current is None:
                return
            if current["status"] != status:
                status = current["status"]
                yield f"data: {json.dumps(public_for(request, _status_event(current)), ensure_ascii=False)}\n\n"
            if status in TERMINAL_STATUSES:
                rows = await run_in_threadpool(store.events_since, job_id, last_seq)
                for row in rows:  # events written together with the final status
                    last_seq = row["seq"]
                    yield f"id: {row['seq']}\ndata: {json.dumps(public_for(request, row['raw']), ensure_ascii=False)}\n\n"
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


@router.get("/jobs/{job_id}/metrics", summary="Metrics (and validation) events, oldest first, for charts",
            response_model=MetricsList, responses=error_responses(404), **_TYPED)
def job_metrics(request: Request, job_id: str) -> dict:
    get_job_or_404(request, job_id)
    rows = request.app.state.store.events_since(job_id, 0)
    return {"data": [public_for(request, r["raw"]) for r in rows if r["raw"].get("type") in ("metrics", "eval")]}


# --- compare -------------------------------------------------------------------------------------
class CompareRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    fine_tuned_model: str
    question: str = Field(description=f"At most {MAX_QUESTION_CHARS} characters.")
    max_tokens: int = Field(256, ge=1, le=4096)


def check_question(question: str, lang: str, param: str = "question") -> None:
    """An empty or over-long question is the user's to fix: a 400 in their language, never a 500."""
    if not question.strip():
        raise APIError(400, say(lang, "studio.question_empty"), param=param, code="invalid_value")
    if len(question) > MAX_QUESTION_CHARS:
        number = "{:,}".format
        raise APIError(400, say(lang, "studio.question_too_long", length=number(len(question)),
                                limit=number(MAX_QUESTION_CHARS)), param=param, code="question_too_long")


@router.post("/compare", summary="The same question to the base and the fine-tuned model",
             response_model=CompareAnswer, responses=error_responses(400, 404), **_TYPED)
async def compare(request: Request, body: CompareRequest) -> dict:
    lang = request_lang(request)
    check_question(body.question, lang)
    pool = request.app.state.engines
    tuned_base, adapter = pool.resolve(body.fine_tuned_model, "fine_tuned_model")
    if adapter is None:
        raise APIError(400, f"'{body.fine_tuned_model}' is a base model; give a job's fine_tuned_model.",
                       param="fine_tuned_model", code="invalid_value")
    base_name = body.model or tuned_base
    base, base_adapter = pool.resolve(base_name)

    def work() -> dict:
        from lorastudio.inference import PromptError

        try:
            base_engine = pool.get(base)
            base_answer = base_engine.generate(body.question, adapter=base_adapter, max_new_tokens=body.max_tokens)
            tuned_engine = pool.get(tuned_base)
            tuned_answer = tuned_engine.generate(body.question, adapter=adapter, max_new_tokens=body.max_tokens)
        except PromptError:
            raise APIError(400, say(lang, "studio.prompt_failed"), param="question", code="invalid_prompt") from None
        return {"question": body.question, "model": base_name, "fine_tuned_model": body.fine_tuned_model,
                "base_answer": base_answer, "tuned_answer": tuned_answer}

    return await run_in_threadpool(work)


# --- jobs: the list with summaries, deleting -----------------------------------------------------
def _summary_cache(request: Request) -> dict[str, dict]:
    state = request.app.state
    if not hasattr(state, "studio_job_summaries"):
        state.studio_job_summaries = {}
    return state.studio_job_summaries


@router.get("/jobs", summary="Jobs, newest first, each with a summary (duration, final loss, steps, rows)",
            response_model=StudioJobList, **_TYPED)
def studio_jobs(request: Request, limit: int = 100) -> dict:
    store = request.app.state.store
    rows = store.list_jobs(limit=max(1, min(limit, 1000)) + 1)
    cache = _summary_cache(request)
    data = [public_for(request, job_summary(store, job, cache)) for job in rows[:limit]]
    return {"object": "list", "data": data, "has_more": len(rows) > limit}


def _job_or_404(request: Request, job_id: str, lang: str) -> dict:
    job = request.app.state.store.get_job(job_id)
    if job is None:
        raise APIError(404, say(lang, "studio.job_not_found", job=job_id), param="fine_tuning_job_id",
                       code="job_not_found")
    return job


@router.delete("/jobs/{job_id}", summary="Delete a finished job: its record, events, tuned model and files",
               response_model=JobDeleted, responses=error_responses(404, 409), **_TYPED)
def delete_job(request: Request, job_id: str) -> dict:
    lang = request_lang(request)
    job = _job_or_404(request, job_id, lang)
    if job["status"] not in TERMINAL_STATUSES:
        raise APIError(409, say(lang, "studio.job_unfinished", job=job_id), param="fine_tuning_job_id",
                       code="job_not_finished")
    store = request.app.state.store
    store.delete_job(job_id)
    _summary_cache(request).pop(job_id, None)
    remove_job_dir(job, request.app.state.settings.jobs_dir)
    return {"id": job_id, "object": "fine_tuning.job", "deleted": True}


# --- downloads -----------------------------------------------------------------------------------
def _zip_dir(files: list[Path], root: Path, target: Path) -> None:
    tmp = target.with_name(target.name + ".part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in files:
            zf.write(path, path.relative_to(root).as_posix())
    tmp.replace(target)


def _build_export(job: dict, kind: str, filename: str | None) -> Path:
    job_dir = Path(job["job_dir"])
    out_dir = job_dir / "exports"
    out_dir.mkdir(exist_ok=True)
    adapter_file = job_dir / "adapter_model.safetensors"
    if kind in ("adapter", "report"):
        target = out_dir / f"{kind}-v2.zip"
        if not target.exists() or target.stat().st_mtime < adapter_file.stat().st_mtime:
            if kind == "adapter":
                build_adapter_zip(job, target, filename)
            else:
                build_report_zip(job, target)
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


def _succeeded_or_409(request: Request, job_id: str, lang: str) -> dict:
    job = _job_or_404(request, job_id, lang)
    if job["status"] != "succeeded":
        raise APIError(409, say(lang, "studio.download_not_ready", job=job_id), param="fine_tuning_job_id",
                       code="job_not_finished")
    return job


@router.get("/jobs/{job_id}/gguf-check", summary="The GGUF download's fidelity check: its time before the "
            "build, its result after (llama.cpp vs the adapter on the check questions)",
            response_model=GgufCheck, responses=error_responses(404, 409), **_TYPED)
def gguf_check(request: Request, job_id: str) -> dict:
    job = _succeeded_or_409(request, job_id, request_lang(request))
    return check_state(job, has_gpu())


@router.post("/jobs/{job_id}/gguf-check", summary="Build the GGUF download and run its fidelity check (minutes on "
             "a CPU); the result as GET gives it. The file is kept, also when the check fails.",
             response_model=GgufCheck, responses=error_responses(404, 409), **_TYPED)
async def build_gguf_checked(request: Request, job_id: str) -> dict:
    lang = request_lang(request)
    job = _succeeded_or_409(request, job_id, lang)
    await run_in_threadpool(_export_work(job, "gguf", None, lang))
    return check_state(job, has_gpu())


def _export_work(job: dict, kind: str, filename: str | None, lang: str):
    """The build of one download, one at a time per job and kind (two clicks never build it twice)."""
    with _export_guard:
        lock = _export_locks.setdefault((job["id"], kind), threading.Lock())

    def work() -> Path:
        from lorastudio.export import ExportError
        from lorastudio.inference import AdapterError

        with lock:
            try:
                return _build_export(job, kind, filename)
            except (ExportError, AdapterError, OSError) as exc:
                raise APIError(409, say(lang, "studio.export_failed", kind=kind, reason=exc), param="kind",
                               code="export_failed") from None

    return work


@router.get("/jobs/{job_id}/download/{kind}",
            summary="Download the adapter (zip: PEFT files + model card), the training report (zip: events, "
                    "augmented rows), the merged model (zip) or a GGUF", response_class=FileResponse,
            responses={**binary("application/zip", "adapter, report, merged: a zip; gguf: application/octet-stream"),
                       **error_responses(404, 409)})
async def download(request: Request, job_id: str, kind: str) -> FileResponse:
    lang = request_lang(request)
    job = _job_or_404(request, job_id, lang)
    if kind not in DOWNLOADS:
        raise APIError(404, say(lang, "studio.download_unknown", kind=kind), param="kind", code="unknown_download")
    if job["status"] != "succeeded":
        raise APIError(409, say(lang, "studio.download_not_ready", job=job_id), param="fine_tuning_job_id",
                       code="job_not_finished")
    record = request.app.state.store.get_file(job["training_file"])
    filename = record["filename"] if record else None
    path = await run_in_threadpool(_export_work(job, kind, filename, lang))
    stem = safe_download_name(job.get("fine_tuned_model") or job_id)
    names = {"adapter": f"{stem}-adapter.zip", "report": f"{stem}-training-report.zip",
             "merged": f"{stem}-merged.zip", "gguf": f"{stem}.gguf"}
    media = "application/zip" if kind != "gguf" else "application/octet-stream"
    # the GGUF's fidelity check travels with the file: passed | failed | skipped | unchecked
    headers = {"X-LoraStudio-Fidelity": check_state(job, False)["status"]} if kind == "gguf" else None
    return FileResponse(path, media_type=media, filename=names[kind], headers=headers)
