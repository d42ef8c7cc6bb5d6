"""`/v1/chat/completions` and `/v1/models`: base models and tuned adapters behind one API."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from types import SimpleNamespace
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from lorastudio.serve.chat_queue import ChatQueue, QueueFull, limit_from_env
from lorastudio.serve.engines import base_model_ids, model_not_found
from lorastudio.serve.errors import APIError, ErrorResponse, error_responses
from lorastudio.serve.objects import ChatCompletion, Model, ModelList, list_object, model_object

router = APIRouter(prefix="/v1", tags=["chat"], responses=error_responses(401))

MAX_NEW_TOKENS = 4096
_DONE = object()


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send many optional fields

    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(1, ge=1)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = None
    knowledge: bool | None = None
    """LoRA Studio's own field (the openai SDK sends it with `extra_body={"knowledge": false}`): whether a tuned
    model reads its closest training rows for this request; left out, the server's choice (on)."""


def _sampling(body: ChatRequest) -> dict[str, Any]:
    if body.n != 1:
        raise APIError(400, "Only n=1 is supported: one answer per request.", param="n", code="invalid_value")
    max_tokens = body.max_completion_tokens or body.max_tokens or 256
    sampling = {"max_new_tokens": min(max_tokens, MAX_NEW_TOKENS), "temperature": body.temperature or 0.0,
                "top_p": body.top_p if body.top_p is not None else 1.0, "seed": body.seed}
    return sampling if body.knowledge is None else {**sampling, "knowledge": body.knowledge}


def _stops(body: ChatRequest) -> list[str]:
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > 4 or any(not isinstance(x, str) or not x for x in stops):
        raise APIError(400, "'stop' must be a non-empty string or a list of at most 4 non-empty strings.",
                       param="stop", code="invalid_value")
    return stops


class StopFilter:
    """Cuts generated text at the first stop sequence, across piece boundaries.

    It holds back the last len(longest stop) - 1 characters, since they may be the start of a stop
    sequence that the next piece completes; nothing after a stop sequence is ever released.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.hold = max((len(x) for x in stops), default=1) - 1
        self.buffer = ""
        self.hit = False

    def push(self, piece: str) -> str:
        if self.hit:
            return ""
        self.buffer += piece
        cuts = [i for i in (self.buffer.find(x) for x in self.stops) if i >= 0]
        if cuts:
            self.hit = True
            out, self.buffer = self.buffer[:min(cuts)], ""
            return out
        keep = len(self.buffer) - self.hold if self.hold else len(self.buffer)
        out, self.buffer = self.buffer[:max(keep, 0)], self.buffer[max(keep, 0):]
        return out

    def flush(self) -> str:
        out, self.buffer = ("" if self.hit else self.buffer), ""
        return out


def _generate_with_stops(engine: Any, messages: list, adapter: str | None, sampling: dict,
                         stops: list[str], cancel: threading.Event | None = None) -> tuple[str, dict, bool]:
    stats: dict[str, Any] = {}
    cut = StopFilter(stops)
    extra = {"cancel": cancel} if cancel is not None and _takes_cancel(engine.stream) else {}
    pieces = engine.stream(messages, adapter, **sampling, stats=stats, **extra)
    text = ""
    try:
        for piece in pieces:
            text += cut.push(piece)
            if cut.hit:
                break  # closing the stream stops generation at the next token
    finally:
        close = getattr(pieces, "close", None)
        if close:
            close()
    return text + cut.flush(), stats, cut.hit


def _check_messages(messages: list[dict[str, Any]]) -> None:
    from lorastudio.inference import PromptError, normalize_messages

    try:
        normalize_messages(messages)
    except PromptError as exc:
        raise APIError(400, f"Invalid 'messages': {exc}.", param="messages", code="invalid_value") from None
    except (TypeError, AttributeError, KeyError):  # e.g. a content part whose text is not a string
        raise APIError(400, "Invalid 'messages': each message needs a role and a content that is a string or a "
                       "list of {\"type\": \"text\", \"text\": <string>} parts.", param="messages",
                       code="invalid_value") from None


def _engine_error(exc: Exception) -> APIError:
    from lorastudio.inference import AdapterError, PromptError

    if isinstance(exc, PromptError):
        return APIError(400, f"Invalid 'messages': {exc}.", param="messages", code="invalid_value")
    if isinstance(exc, AdapterError):
        return APIError(409, f"The fine-tuned model's adapter cannot be loaded: {exc}", param="model",
                        code="adapter_unavailable")
    raise exc


_RESPONSES_429 = {429: {"model": ErrorResponse, "description": "Too many chat requests are waiting for this model: "
                         "retry after the seconds in the Retry-After header (`code`: rate_limit_exceeded)"}}


def _chat_queue(request: Request) -> ChatQueue:
    queue = getattr(request.app.state, "chat_queue", None)
    if queue is None:
        limit = getattr(request.app.state.settings, "chat_queue", None)
        queue = request.app.state.chat_queue = ChatQueue(limit if isinstance(limit, int) else limit_from_env())
    return queue


async def _client_gone(request: Request) -> None:
    """Returns when the client has disconnected (the body is read, so receive() waits for that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _race(work: Awaitable, gone: asyncio.Future) -> asyncio.Future:
    """`work` as a task, returned once it is done or the client has left (then it may still run)."""
    task = asyncio.ensure_future(work)
    await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    return task


async def _settle(task: asyncio.Future) -> None:
    """Wait for an abandoned task to end; its result or error no longer has anyone to go to."""
    with contextlib.suppress(BaseException):
        await task


def _takes_cancel(method: Any) -> bool:
    """Whether an engine method names a `cancel` parameter (ChatEngine does; test fakes and wrappers
    that pass **kwargs on may not: they are not cancelled)."""
    try:
        return "cancel" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


async def _admit(queue: ChatQueue, key: str, gone: asyncio.Future) -> float | None:
    """A generation slot for `key` (its start time), None if the client left while waiting, or a 429."""
    task = await _race(queue.acquire(key), gone)
    if not task.done():
        task.cancel()
        await _settle(task)
        return None
    try:
        return task.result()
    except QueueFull as exc:
        raise APIError(429, f"Too many chat requests: {exc.waiting} are already waiting for model '{key}' (this "
                       f"server's limit). Retry after {exc.retry_after} s, or start the server with a larger "
                       "LORASTUDIO_CHAT_QUEUE.", code="rate_limit_exceeded",
                       headers={"Retry-After": str(exc.retry_after)}) from None


def _gone() -> Response:
    return Response(status_code=499)  # nginx's "client closed request": nobody reads it


@router.post("/chat/completions", summary="Chat with a base model or a fine-tuned model (stream=true: SSE)",
             response_model=ChatCompletion, response_model_exclude_unset=True,
             responses={200: {"content": {"text/event-stream": {"schema": {
                 "type": "string", "description": "stream=true: `data: {chat.completion.chunk}` lines, then "
                 "`data: [DONE]`"}}}}, **error_responses(400, 404, 409), **_RESPONSES_429})
async def chat_completions(request: Request, body: ChatRequest) -> Any:
    """Generation waits in a bounded line per base model (429 beyond it) and stops when the client
    disconnects, streamed or not, so a gone client never holds the engine."""
    pool = request.app.state.engines
    base, adapter = pool.resolve(body.model)
    sampling = _sampling(body)
    stops = _stops(body)
    _check_messages(body.messages)
    queue = _chat_queue(request)
    gone = asyncio.ensure_future(_client_gone(request))
    handed_over = False  # the stream's generator now owns `gone` and the slot
    try:
        started = await _admit(queue, base, gone)
        if started is None:
            return _gone()
        try:
            engine = await run_in_threadpool(pool.get, base)
            if not body.stream:
                return await _complete(body, engine, adapter, sampling, stops, gone)
            response = await _stream(body, engine, adapter, sampling, stops, gone,
                                     lambda: queue.release(base, started))
            handed_over = isinstance(response, StreamingResponse)
            return response
        finally:
            if not handed_over:
                queue.release(base, started)
    finally:
        if not handed_over:
            gone.cancel()


async def _complete(body: ChatRequest, engine: Any, adapter: str | None, sampling: dict, stops: list[str],
                    gone: asyncio.Future) -> Any:
    cancel = threading.Event()
    if stops:
        work = run_in_threadpool(_generate_with_stops, engine, body.messages, adapter, sampling, stops, cancel)
    else:
        extra = {"cancel": cancel} if _takes_cancel(engine.complete) else {}
        work = run_in_threadpool(partial(engine.complete, body.messages, adapter, **sampling, **extra))
    task = await _race(work, gone)
    if not task.done():  # the client left: stop at the next token, free the engine, answer nobody
        cancel.set()
        await _settle(task)
        return _gone()
    try:
        outcome = task.result()
    except Exception as exc:
        raise _engine_error(exc) from None
    if stops:
        text, stats, hit = outcome
        # Counts exist only when generation ran to its end (a stop sequence closes it early).
        result = SimpleNamespace(text=text, prompt_tokens=stats.get("prompt_tokens"),
                                 completion_tokens=stats.get("completion_tokens"),
                                 finish_reason="stop" if hit else stats.get("finish_reason", "stop"))
    else:
        result = outcome
    return {
        "id": f"chatcmpl-{secrets.token_hex(12)}", "object": "chat.completion", "created": int(time.time()),
        "model": body.model, "system_fingerprint": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text, "refusal": None},
                     "logprobs": None, "finish_reason": result.finish_reason}],
        "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                  "total_tokens": result.prompt_tokens + result.completion_tokens}
        if result.prompt_tokens is not None and result.completion_tokens is not None else None,
    }


def _close_then(pieces: Any, after: Callable[[], None]) -> None:
    """Close a generation iterator (joins its worker: up to one token) off the event loop, then run
    `after` (the slot's release) back on the loop."""
    loop = asyncio.get_running_loop()

    def run() -> None:
        close = getattr(pieces, "close", None)
        try:
            if close:
                with contextlib.suppress(ValueError):  # "already executing": its consumer closes it
                    close()
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is gone at shutdown
                loop.call_soon_threadsafe(after)

    threading.Thread(target=run, name="lorastudio-chat-close", daemon=True).start()


async def _stream(body: ChatRequest, engine: Any, adapter: str | None, sampling: dict, stops: list[str],
                  gone: asyncio.Future, release: Callable[[], None]) -> Any:
    completion_id = f"chatcmpl-{secrets.token_hex(12)}"
    created = int(time.time())
    stats: dict[str, Any] = {}
    cancel = threading.Event()
    extra = {"cancel": cancel} if _takes_cancel(engine.stream) else {}
    pieces = engine.stream(body.messages, adapter, **sampling, stats=stats, **extra)
    # The first piece is produced here so that a bad prompt is still a proper HTTP error.
    task = await _race(run_in_threadpool(next, pieces, _DONE), gone)
    if not task.done():
        cancel.set()
        await _settle(task)
        await run_in_threadpool(getattr(pieces, "close", lambda: None))
        return _gone()
    try:
        first = task.result()
    except Exception as exc:
        raise _engine_error(exc) from None
    include_usage = bool((body.stream_options or {}).get("include_usage"))
    done = {"released": False, "iterated": False}

    def release_once() -> None:
        if not done["released"]:
            done["released"] = True
            release()

    def on_gone(f: asyncio.Future) -> None:
        # From now on a disconnect sets `cancel` at once, whatever the stream is doing; and if the
        # response never started iterating (cancelled before its first chunk), nothing else frees the slot.
        if f.cancelled():
            return
        cancel.set()
        if not done["iterated"]:
            _close_then(pieces, release_once)

    gone.add_done_callback(on_gone)

    def chunk(delta: dict, finish: str | None = None) -> str:
        payload = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": body.model,
                   "system_fingerprint": None,
                   "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    async def events() -> AsyncIterator[str]:
        finished = False
        done["iterated"] = True
        try:
            yield chunk({"role": "assistant", "content": ""})
            cut = StopFilter(stops) if stops else None
            piece = first
            try:
                while piece is not _DONE:
                    text = cut.push(piece) if cut else piece
                    if text:
                        yield chunk({"content": text})
                    if cut and cut.hit:
                        break
                    piece = await run_in_threadpool(next, pieces, _DONE)
                rest = cut.flush() if cut else ""
                if rest:
                    yield chunk({"content": rest})
            except Exception as exc:  # mid-stream: the status line is sent, report in-band
                err = {"error": {"message": f"generation failed: {exc}", "type": "server_error", "param": None,
                                 "code": "generation_failed"}}
                yield f"data: {json.dumps(err)}\n\n"
                yield "data: [DONE]\n\n"
                return
            reason = "stop" if cut and cut.hit else stats.get("finish_reason", "stop")
            yield chunk({}, "stop" if reason == "cancelled" else reason)
            if include_usage and "prompt_tokens" in stats:
                usage = {"prompt_tokens": stats["prompt_tokens"], "completion_tokens": stats["completion_tokens"],
                         "total_tokens": stats["prompt_tokens"] + stats["completion_tokens"]}
                payload = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                           "model": body.model, "choices": [], "usage": usage}
                yield f"data: {json.dumps(payload)}\n\n"
            yield "data: [DONE]\n\n"
            finished = True
        finally:
            # Normal end, an error, a stop sequence, or the client gone (Starlette cancels us, or the
            # generator is closed): the generation stops at its next token and the slot is freed.
            cancel.set()
            gone.cancel()
            if finished and stats:
                release_once()  # ran to its end: nothing left to join
            else:
                _close_then(pieces, release_once)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _all_models(request: Request) -> list[dict]:
    started = request.app.state.started_at
    data = [model_object(mid, started, "lorastudio", kind="base") for mid in base_model_ids()]
    for row in request.app.state.store.list_models():
        data.append(model_object(row["id"], row["created_at"], "user", kind="fine-tuned", root=row["base"],
                                 parent=row["base"], fine_tuning_job_id=row["job_id"]))
    return data


@router.get("/models", summary="Base models and fine-tuned models", response_model=ModelList,
            response_model_exclude_unset=True)
def list_models(request: Request) -> dict:
    return list_object(_all_models(request))


@router.get("/models/{model_id:path}", summary="One model", response_model=Model, response_model_exclude_unset=True,
            responses=error_responses(404))
def get_model(request: Request, model_id: str) -> dict:
    for model in _all_models(request):
        if model["id"] == model_id:
            return model
    raise model_not_found(model_id)
