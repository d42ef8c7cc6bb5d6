"""`/studio/playground/*` and `/studio/jobs/{id}/forgetting`: the playground's streamed routes.

Any two of {base model, any finished adapter} side by side, streamed as Server-Sent Events; a
multi-turn chat with one model (the page keeps the history); a question set answered by both and
exported as CSV/XLSX; the forgetting check of a job (cached per job under the data directory). The
work is lorastudio.playground's; this layer resolves model names, loads engines in a thread, runs the
event generators in Starlette's thread pool (the event loop stays free) and words errors as codes
the page translates. Contracts in docs/UI.md ("Playground and evaluation").
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, File, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from lorastudio.serve.api_files import display_name, safe_download_name
from lorastudio.serve.api_jobs import get_job_or_404
from lorastudio.serve.engines import base_model_ids
from lorastudio.serve.errors import APIError, error_responses

router = APIRouter(prefix="/studio", tags=["playground"], responses=error_responses(401))


def _sse_doc(what: str, *statuses: int) -> dict:
    """OpenAPI for a route that answers Server-Sent Events (app.py gives each event its schema)."""
    return {"response_class": StreamingResponse,
            "responses": {200: {"description": what, "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                          **error_responses(*statuses)}}

MAX_QUESTION_FILE_BYTES = 2 * 1024 * 1024
QUESTION_SUFFIXES = (".csv", ".tsv", ".txt", ".xlsx", ".jsonl", ".json")
_forget_locks: dict[str, threading.Lock] = {}
_forget_guard = threading.Lock()


class SideRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    temperature: float = Field(0.0, ge=0, le=2)
    system: str | None = None
    seed: int | None = Field(None, ge=0, le=2**31 - 1)


class StreamRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    a: SideRequest
    b: SideRequest | None = None
    question: str
    history: list[dict[str, Any]] | None = None
    max_tokens: int = Field(256, ge=1, le=2048)


class SetRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    a: SideRequest
    b: SideRequest | None = None
    questions: list[Any] = Field(min_length=1)
    max_tokens: int = Field(256, ge=1, le=2048)


class ExportRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    format: str
    columns: list[str] = Field(min_length=1, max_length=20)
    rows: list[list[Any]] = Field(max_length=2000)
    filename: str = "answers"


def _bad(exc: Any) -> APIError:
    """A PlaygroundError as a 400 whose `code` the page words (the English message for API users)."""
    return APIError(400, str(exc), param=exc.params.get("param") if hasattr(exc, "params") else None,
                    code=exc.code)


_END = object()


def _sse(events: Iterator[dict]) -> StreamingResponse:
    """Events as Server-Sent Events. Each `next()` runs in the thread pool (the event loop stays free);
    when the client goes away (Stop, a closed tab) the generator is closed as soon as its current step
    returns, which closes the engine's stream: generation stops at the next token and frees the lock."""
    step = threading.Lock()

    def advance() -> Any:
        with step:
            return next(events, _END)

    def close() -> None:
        with step:  # after a step still running in another thread
            events.close()

    async def body():
        finished = False
        try:
            while True:
                try:
                    event = await run_in_threadpool(advance)
                except Exception as exc:  # the status line is sent: report in-band, never a traceback
                    from lorastudio.playground import error_event

                    yield f"data: {json.dumps(error_event(None, exc), ensure_ascii=False)}\n\n"
                    break
                if event is _END:
                    break
                yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
            finished = True
        finally:
            if not finished:
                threading.Thread(target=close, name="lorastudio-playground-close", daemon=True).start()

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _adapters(request: Request) -> list[dict]:
    store = request.app.state.store
    out = []
    for row in store.list_models():
        job = store.get_job(row["job_id"]) if row.get("job_id") else None
        out.append({"model": row["id"], "base": row["base"], "job_id": row.get("job_id"),
                    "created_at": row.get("created_at"),
                    "finished_at": (job or {}).get("finished_at"), "suffix": (job or {}).get("suffix")})
    return sorted(out, key=lambda m: m.get("created_at") or 0, reverse=True)


@router.get("/playground/models", summary="What the playground can compare: base models and every finished adapter")
def playground_models(request: Request) -> dict:
    from lorastudio import playground

    return {"bases": base_model_ids(), "adapters": _adapters(request),
            "limits": {"question_chars": playground.MAX_QUESTION_CHARS, "system_chars": playground.MAX_SYSTEM_CHARS,
                       "set_questions": playground.MAX_SET_QUESTIONS, "turns": playground.MAX_TURNS}}


async def _sides(request: Request, a: SideRequest, b: SideRequest | None) -> list[Any]:
    from lorastudio.playground import MAX_SYSTEM_CHARS, PlaygroundError, Side, check_text

    pool = request.app.state.engines
    wanted = [("a", a), ("b", b)] if b is not None else [("a", a)]
    resolved = []
    for label, side in wanted:
        base, adapter = pool.resolve(side.model, f"{label}.model")
        if side.system and side.system.strip():
            try:
                check_text(side.system, "system", MAX_SYSTEM_CHARS)
            except PlaygroundError as exc:
                raise _bad(exc) from None
        resolved.append((label, side, base, adapter))
    sides = []
    for label, side, base, adapter in resolved:
        engine = await run_in_threadpool(pool.get, base)  # loads on first use, off the event loop
        sides.append(Side(label, engine, adapter, side.temperature, side.system, side.seed))
    return sides


@router.post("/playground/stream", summary="One question (with earlier turns) to one or two models, streamed (SSE)",
             **_sse_doc("`data:` lines: start, delta {side, delta}, done {side, timings}, error", 400, 404))
async def playground_stream(request: Request, body: StreamRequest) -> StreamingResponse:
    from lorastudio.playground import PlaygroundError, compare_events, conversation

    try:
        conversation(body.history, body.question, None)  # bad input is a 400 before the stream starts
    except PlaygroundError as exc:
        raise _bad(exc) from None
    sides = await _sides(request, body.a, body.b)
    return _sse(compare_events(sides, body.question, body.history, body.max_tokens))


@router.post("/playground/set", summary="A question set answered by one or two models, scored on key strings (SSE)",
             **_sse_doc("`data:` lines: one per answered question, then the totals", 400, 404))
async def playground_set(request: Request, body: SetRequest) -> StreamingResponse:
    from lorastudio.playground import PlaygroundError, parse_questions, set_events

    try:
        questions = parse_questions(body.questions)
    except PlaygroundError as exc:
        raise _bad(exc) from None
    sides = await _sides(request, body.a, body.b)
    return _sse(set_events(sides, questions, body.max_tokens))


@router.post("/playground/questions", summary="Read a question file (CSV, TSV, XLSX, TXT, JSONL) for a question set")
async def playground_questions(request: Request, file: UploadFile = File(...)) -> dict:
    """`{filename, questions: [{question, must_contain, row}]}`; a file with unusable rows is refused with
    every such row named, in the request's language (Accept-Language)."""
    from lorastudio.playground import PlaygroundError, read_questions
    from lorastudio.serve.api_studio import request_lang

    name = display_name(file.filename)
    suffix = Path(name).suffix.lower()
    if suffix not in QUESTION_SUFFIXES:
        raise APIError(400, f"{name}: use a .csv, .tsv, .xlsx, .txt or .jsonl file.", param="file",
                       code="question_file_type")
    lang = request_lang(request)

    def work() -> dict:
        data = file.file.read(MAX_QUESTION_FILE_BYTES + 1)
        if len(data) > MAX_QUESTION_FILE_BYTES:
            raise APIError(413, f"{name} is larger than {MAX_QUESTION_FILE_BYTES // (1024 * 1024)} MiB; a "
                           "question set is small: split it.", param="file", code="question_file_too_large")
        try:
            qs = read_questions(data, name, lang)
        except PlaygroundError as exc:
            raise APIError(400, str(exc), param="file", code=exc.code) from None
        return {"filename": name, "questions": [{"question": q.question, "must_contain": q.keys, "row": q.row}
                                                for q in qs]}

    return await run_in_threadpool(work)


@router.post("/playground/export", summary="A table of answers as CSV or XLSX")
def playground_export(body: ExportRequest) -> Response:
    from lorastudio.playground import PlaygroundError, export_table

    try:
        data = export_table(body.columns, body.rows, body.format)
    except PlaygroundError as exc:
        raise _bad(exc) from None
    stem = safe_download_name(body.filename) or "answers"
    media = "text/csv; charset=utf-8" if body.format == "csv" else \
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    return Response(data, media_type=media,
                    headers={"Content-Disposition": f'attachment; filename="{stem}.{body.format}"'})


# --- the forgetting check ------------------------------------------------------------------------
# The page starts it by itself once a job it shows has succeeded (and on request in the evaluation
# card); the result is kept per job (serve/studio_forgetting.py), so it runs at most once per job and
# adapter file, and the base model's answers once per base.
def _finished_job(request: Request, job_id: str) -> dict:
    job = get_job_or_404(request, job_id)
    if job["status"] != "succeeded" or not job.get("fine_tuned_model"):
        raise APIError(409, f"Job {job_id} is {job['status']}; the forgetting check needs a finished job.",
                       param="job_id", code="job_not_finished")
    return job


@router.get("/jobs/{job_id}/forgetting", summary="The job's forgetting check if it was run ({status: none} if not)",
            responses=error_responses(404, 409))
def forgetting_get(request: Request, job_id: str) -> dict:
    from lorastudio.serve.studio_forgetting import read_result

    found = read_result(_finished_job(request, job_id))
    return {"status": "done", **found} if found else {"status": "none"}


@router.post("/jobs/{job_id}/forgetting", summary="Run the forgetting check: general questions, base vs tuned (SSE)",
             **_sse_doc("`data:` lines: progress per question, then the result", 404, 409))
async def forgetting_run(request: Request, job_id: str) -> StreamingResponse:
    from lorastudio.playground import forgetting_events, general_fingerprint
    from lorastudio.serve.studio_forgetting import (
        engine_kind,
        read_base_answers,
        read_result,
        write_base_answers,
        write_result,
    )

    job = _finished_job(request, job_id)
    pool = request.app.state.engines
    base, adapter = pool.resolve(job["fine_tuned_model"], "job_id")
    data_dir = request.app.state.settings.data_dir
    engine = await run_in_threadpool(pool.get, base)
    kind, fingerprint = engine_kind(engine), general_fingerprint()
    with _forget_guard:
        lock = _forget_locks.setdefault(job_id, threading.Lock())

    def events() -> Iterator[dict]:
        with lock:  # two tabs (or the page's own start and a click) compute it once
            found = read_result(job)
            if found:
                yield {"type": "result", **found}
                return
            reused = read_base_answers(data_dir, base, kind, fingerprint)
            for event in forgetting_events(engine, adapter, base_answers=reused):
                if event["type"] == "result":
                    if not reused:
                        write_base_answers(data_dir, base, kind, fingerprint, [r["base_answer"] for r in event["rows"]])
                    kept = write_result(job, {k: v for k, v in event.items() if k != "type"})
                    event = {"type": "result", **kept}
                yield event

    return _sse(events())
