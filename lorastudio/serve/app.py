"""The app factory: `create_app(settings)` wires store, worker, chat engines, routes and the web UI.

Tests build apps with their own settings (a temp data dir, a fake trainer command, a fake chat
engine); `lorastudio serve` builds one from the command line and the environment.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TextIO

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lorastudio import __version__
from lorastudio.serve.errors import (
    ERROR_MEANINGS,
    INTERNAL_ERROR_MESSAGE,
    APIError,
    ErrorResponse,
    error_body,
    install_error_handlers,
    server_roots,
)
from lorastudio.serve.settings import Settings, SettingsError
from lorastudio.serve.store import SQLiteStore

log = logging.getLogger("lorastudio.serve")

PROTECTED_PREFIXES = ("/v1", "/studio")
MAX_JSON_BYTES = 16 * 1024 * 1024
_FALLBACK_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>LoRA Studio</title></head>
<body><h1>LoRA Studio</h1><p>The web UI is not installed in this build. The API is at
<a href="/docs">/docs</a> (OpenAI-compatible under <code>/v1</code>).</p></body></html>"""


async def _send_json_error(send: Send, status: int, message: str, param: str | None, code: str,
                           headers: list[tuple[bytes, bytes]] | None = None) -> None:
    import json

    body = json.dumps(error_body(status, message, param, code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """API-key check and upload size limit, before any body is read; a 500 for an unexpected error.

    Pure ASGI (not BaseHTTPMiddleware) so that streamed responses and the request body pass through
    untouched. The key is compared in constant time and never logged.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        key = self.settings.api_key
        if key and path.startswith(PROTECTED_PREFIXES):
            # Bytes against bytes: the key is printable ASCII (Settings refuses anything else), so no
            # header decoding can make a right key wrong, and any other byte is simply a wrong key.
            auth = next((v for k, v in scope.get("headers", []) if k.lower() == b"authorization"), b"")
            scheme, _, token = auth.partition(b" ")
            if not auth:
                await _send_json_error(send, 401, "Missing API key: send 'Authorization: Bearer <key>' (the key "
                                       "the server was started with).", None, "missing_api_key",
                                       [(b"www-authenticate", b"Bearer")])
                return
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), key.encode("ascii")):
                await _send_json_error(send, 401, "Incorrect API key provided.", None, "invalid_api_key",
                                       [(b"www-authenticate", b"Bearer")])
                return
        if path.rstrip("/") == "/v1/files" and scope.get("method") == "POST":
            limit = self.settings.max_upload_bytes
            # Multipart adds headers and boundaries around the file; allow for them.
            allowed, param, code = limit + 64 * 1024, "file", "file_too_large"
            what = "Split the file, or start the server with a larger LORASTUDIO_MAX_UPLOAD_MB."
        else:
            # JSON requests are small; a huge body is a mistake or an attack, not a chat message.
            allowed = limit = MAX_JSON_BYTES
            param, code, what = None, "request_too_large", "Send a smaller request."
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > allowed:
            await _send_json_error(send, 413, f"The request body ({int(length)} bytes) is larger than this server's "
                                   f"limit of {limit} bytes. {what}", param, code)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > allowed:  # chunked bodies without Content-Length
                    raise APIError(413, f"The request body is larger than this server's limit of {limit} bytes. "
                                   f"{what}", param=param, code=code)
            return message

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except Exception:
            # Answered here rather than by Starlette's ServerErrorMiddleware, which re-raises after its
            # 500 so that the server resets the connection: a keep-alive client would lose it.
            log.exception("unhandled error on %s %s", scope.get("method"), path)
            if started:  # half a response is out; only closing the connection can end it
                raise
            await _send_json_error(send, 500, INTERNAL_ERROR_MESSAGE, None, "internal_error")


def lock_data_dir(data_dir: Path) -> TextIO:
    """One server (one job worker) per data directory: two would run the same queue twice.

    An advisory lock that the kernel drops when the process dies, even by SIGKILL, so a crash never
    leaves a stale lock behind. (POSIX only, like the rest of the service: process groups, signals.)
    """
    import fcntl

    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        handle = (data_dir / "server.lock").open("a+")
    except OSError as exc:
        raise SettingsError(f"cannot use {data_dir} as the data directory: {exc.strerror or exc}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise SettingsError(f"{data_dir} is already used by another lorastudio server ({holder}); stop it or "
                            "choose another --data-dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return handle


SERVER_SENT_EVENT = {
    "type": "object", "title": "ServerSentEvent",
    "description": "One event of a text/event-stream answer, as an EventSource sees it: `data` is the text "
                   "after `data:` (a JSON object, or `[DONE]` at the end of a chat stream).",
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"},
                   "retry": {"type": "integer", "minimum": 0}},
}


class Health(BaseModel):
    status: str
    version: str
    loaded_models: list[str]


def openapi_document(app: FastAPI) -> dict:
    """FastAPI's document, told the truth about errors.

    FastAPI lists a 422 `HTTPValidationError` on every route with parameters, but this server turns
    request validation errors into 400 with the OpenAI error object (errors.install_error_handlers).
    So each 422 becomes that 400 (unless the route documents its own 400), and the unused
    validation-error schemas go. The statuses that the guard and the handlers give on any route
    are added where they apply: 401 under /v1 and /studio, 413 with a request body, 404 with an
    `…_id` path parameter. Route-specific ones (409, 429, …) each route declares itself. A
    text/event-stream answer's schema is that of one event (`ServerSentEvent`), as OpenAPI 3.1 tools
    (schemathesis among them) read it.
    """
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)

    def error(status: int) -> dict:
        return {"description": ERROR_MEANINGS[status],
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}

    for path, operations in doc.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if responses.pop("422", None) is not None:
                responses.setdefault("400", error(400))
            # What the server answers on every such route, whatever the route itself documents:
            if path.startswith(PROTECTED_PREFIXES):  # GuardMiddleware, when a key is configured
                responses.setdefault("401", error(401))
            if "requestBody" in operation:  # GuardMiddleware's body limits
                responses.setdefault("413", error(413))
            if any(p.get("in") == "path" and p["name"].endswith("_id") for p in operation.get("parameters", [])):
                responses.setdefault("404", error(404))  # an id that names no object
            for response in responses.values():
                stream = response.get("content", {}).get("text/event-stream")
                if stream is not None:  # before OpenAPI 3.2 a stream's `schema` describes one event
                    what = stream.get("schema", {}).get("description")
                    stream["schema"] = {"allOf": [{"$ref": "#/components/schemas/ServerSentEvent"}],
                                        **({"description": what} if what else {})}
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas["ServerSentEvent"] = SERVER_SENT_EVENT
    if "ErrorResponse" not in schemas:  # no route named its errors: add the schema the 400s point at
        error_schema = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(error_schema.pop("$defs", {}))
        schemas["ErrorResponse"] = error_schema
    app.openapi_schema = doc
    return doc


def create_app(settings: Settings | None = None) -> FastAPI:
    from lorastudio.serve.engines import EnginePool
    from lorastudio.serve.worker import JobWorker

    settings = settings or Settings.from_env()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.files_dir.mkdir(parents=True, exist_ok=True)
    settings.jobs_dir.mkdir(parents=True, exist_ok=True)
    store = SQLiteStore(settings.db_path)
    worker = JobWorker(store, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        lock = lock_data_dir(settings.data_dir) if settings.start_worker else None
        if settings.start_worker:
            worker.start()
        try:
            yield
        finally:
            if settings.start_worker:
                worker.stop()
            store.close()
            if lock is not None:
                lock.close()

    app = FastAPI(title="LoRA Studio", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible fine-tuning and chat under /v1; studio endpoints under /studio.")
    app.state.settings = settings
    app.state.store = store
    app.state.worker = worker
    app.state.engines = EnginePool(store, settings.max_adapters, settings.engine_factory)
    app.state.started_at = int(time.time())
    app.state.public_roots = server_roots(settings.data_dir)  # what errors.public_for hides
    app.state.wake_worker = worker.wake
    app.state.worker_event = worker.message_event
    install_error_handlers(app)
    app.add_middleware(GuardMiddleware, settings=settings)

    from lorastudio.serve import api_chat, api_files, api_jobs, api_playground, api_studio

    for module in (api_files, api_jobs, api_chat, api_studio, api_playground):
        app.include_router(module.router)

    @app.get("/health", tags=["meta"], summary="Liveness and what is loaded", response_model=Health)
    def health() -> dict:
        return {"status": "ok", "version": __version__, "loaded_models": app.state.engines.loaded()}

    app.openapi = lambda: openapi_document(app)

    web_dir = settings.web_dir or Path(__file__).resolve().parent.parent / "web"
    if (web_dir / "index.html").is_file():
        app.mount("/", StaticFiles(directory=str(web_dir), html=True), name="web")
    else:
        @app.get("/", include_in_schema=False)
        def fallback_page() -> HTMLResponse:
            return HTMLResponse(_FALLBACK_PAGE)
    return app
