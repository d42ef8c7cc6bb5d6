"""Every error leaves the server in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

Clients written for OpenAI (the official SDK first) turn that shape into typed exceptions with a
readable message, so the server never answers with FastAPI's `{"detail": ...}` or a stack trace.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from lorastudio.serve.store import UnknownCursor

log = logging.getLogger("lorastudio.serve")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "invalid_request_error", 405: "invalid_request_error", 409: "invalid_request_error",
          411: "invalid_request_error", 413: "invalid_request_error", 415: "invalid_request_error",
          422: "invalid_request_error", 429: "rate_limit_error"}
# Every error carries a code; these are the ones for errors raised without their own (Starlette's
# multipart/body parser, a route that named none).
DEFAULT_CODES = {400: "invalid_request", 401: "invalid_api_key", 403: "permission_denied", 404: "not_found",
                 405: "method_not_allowed", 409: "conflict", 411: "length_required", 413: "request_too_large",
                 415: "unsupported_media_type", 422: "invalid_value", 429: "rate_limit_exceeded",
                 500: "internal_error", 503: "unavailable"}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None
    params: dict[str, Any] | None = None
    """Only with some codes (e.g. too_many_rows): the values behind the message, for a client's own words."""


class ErrorResponse(BaseModel):
    """Every 4xx/5xx body."""

    error: ErrorDetail


ERROR_MEANINGS = {
    400: "Invalid request: a missing or malformed parameter (`param` names it), including request bodies that "
         "fail validation",
    401: "Missing or wrong API key",
    404: "No such object",
    409: "The object is not in a state that allows this",
    413: "The request body (an upload, a JSON body) is larger than the server's limit",
    429: "Too many requests are waiting; retry later",
    503: "Not available on this server now",
}


def error_responses(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI `responses=` for a route: each status with the error object as its body."""
    return {status: {"model": ErrorResponse, "description": ERROR_MEANINGS[status]} for status in statuses}


class APIError(StarletteHTTPException):
    """Raised anywhere in a request; becomes an OpenAI-shaped JSON error."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None, params: dict[str, Any] | None = None) -> None:
        super().__init__(status_code=status, detail=message, headers=headers)
        self.message = message
        self.param = param
        self.code = code
        self.params = params  # the values a client fills its own words for `code` with (the web page does)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None,
               params: dict[str, Any] | None = None) -> dict:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    code = code or DEFAULT_CODES.get(status, "server_error" if status >= 500 else "invalid_request")
    error = {"message": message, "type": kind, "param": param, "code": code}
    return {"error": {**error, "params": params} if params else error}


# --- no server paths, no tracebacks --------------------------------------------------------------
# An absolute path with at least two components that is not one of the API's own URLs ("/v1/…").
# Not after a word character, ':' or '/' (so "http://host/x", "en/zh" and "a/b" are left alone).
_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~-])/(?!(?:v1|studio|docs|redoc|openapi\.json|health)(?![\w.-]))"
                            r"[^\s'\"`<>()\[\]{},;|]+/[^\s'\"`<>()\[\]{},;|]*")
_TRACEBACK = "Traceback (most recent call last)"
# A "; …" clause that tells a command-line user what to type (`--sheet`, `lorastudio validate …`), with
# the parenthesis that explains it: advice an API client cannot follow.
_CLI_HINT = re.compile(r";\s[^;()]*?(?:(?<![\w-])--[a-z][\w-]*|`lorastudio [^`]*`)[^;()]*(?:\s*\([^()]*\))?")
T = TypeVar("T")
INTERNAL_ERROR_MESSAGE = ("The server had an internal error while processing your request. The details are in "
                          "the server log.")


def server_roots(data_dir: str | Path) -> tuple[str, ...]:
    """The directories whose names must not reach a client, most specific first: a path under one
    is shown relative to it (`DATA_DIR/files/file-1.jsonl` → `file-1.jsonl`, `DATA_DIR/jobs/ftjob-1/
    checkpoints/step-4` → `ftjob-1/checkpoints/step-4`); the directory itself by its last name."""
    roots: set[str] = set()
    for base in {str(data_dir), str(Path(data_dir).resolve())}:
        roots.update({f"{base}/files", f"{base}/jobs", base})
    return tuple(sorted(roots, key=len, reverse=True))


def public_text(text: str, roots: Iterable[str] = ()) -> str:
    """`text` as a client may see it: a traceback cut to its last line (the error itself), paths
    under the server's roots made relative, any other absolute path cut to its last component, and
    command-line advice ("; choose one with --sheet") left out."""
    if _TRACEBACK in text:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        text = lines[-1] if lines else ""
    text = _CLI_HINT.sub("", text)
    for root in roots:
        text = text.replace(root.rstrip("/") + "/", "")
    return _ABSOLUTE_PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1] or "/", text)


def public(value: T, roots: Iterable[str] = ()) -> T:
    """`public_text` over every string in a JSON-like value (dict values, list items)."""
    roots = tuple(roots)
    if isinstance(value, str):
        return public_text(value, roots)  # type: ignore[return-value]
    if isinstance(value, dict):
        return {k: public(v, roots) for k, v in value.items()}  # type: ignore[return-value]
    if isinstance(value, (list, tuple)):
        return type(value)(public(v, roots) for v in value)  # type: ignore[return-value]
    return value


def request_roots(request: Any) -> tuple[str, ...]:
    """The server roots of the app that serves `request` (see `server_roots`)."""
    state = request.app.state
    roots = getattr(state, "public_roots", None)
    if roots is None:
        roots = state.public_roots = server_roots(state.settings.data_dir)
    return roots


def public_for(request: Any, value: T) -> T:
    """What routes call on anything built from server-side text (job errors, events, SSE payloads)
    before it is sent: `public(value, <this server's roots>)`."""
    return public(value, request_roots(request))


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None, params: dict[str, Any] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code, params), status_code=status, headers=headers)


def _loc_to_param(loc: tuple | list) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc, APIError):
            return error_response(exc.status_code, public_for(request, exc.message), exc.param, exc.code,
                                  exc.headers, public_for(request, exc.params) if exc.params else None)
        if exc.status_code == 404:
            return error_response(404, f"Unknown path: {request.method} {request.url.path}. "
                                  "See /docs for the endpoints.", code="unknown_url")
        if exc.status_code == 405:
            return error_response(405, f"Method {request.method} is not allowed on {request.url.path}.",
                                  code="method_not_allowed", headers=exc.headers)
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 400:  # Starlette's body parsers ("There was an error parsing the body")
            if isinstance(exc.__cause__, UnicodeDecodeError):  # FastAPI's json.loads of the raw bytes
                return error_response(400, "The request body is not valid JSON (it is not UTF-8 text). Send a "
                                      "JSON object with Content-Type: application/json.", code="invalid_json")
            if request.headers.get("content-type", "").startswith("multipart/"):
                hint = "Send the upload as multipart/form-data with a 'file' part (curl -F file=@data.jsonl)."
            else:
                hint = "Send a JSON object with Content-Type: application/json."
            message = f"{message.rstrip('.')}. {hint}"
            return error_response(400, public_for(request, message), code="invalid_body", headers=exc.headers)
        return error_response(exc.status_code, public_for(request, message), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            detail = first.get("ctx", {}).get("error", "")
            return error_response(400, f"The request body is not valid JSON ({detail}). "
                                  "Send a JSON object with Content-Type: application/json.",
                                  code="invalid_json")
        param = _loc_to_param(first.get("loc", ()))
        msg = first.get("msg", "invalid request")
        if first.get("type") == "missing":
            message = f"Missing required parameter: '{param}'." if param else "Missing request body."
            return error_response(400, message, param, "missing_required_parameter")
        if first.get("type") == "model_attributes_type":
            return error_response(400, "The request body must be a JSON object.", None, "invalid_json")
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        return error_response(400, f"Invalid value for '{param}': {msg}{more}.", param, "invalid_value")

    @app.exception_handler(UnknownCursor)
    async def _cursor(request: Request, exc: UnknownCursor) -> JSONResponse:
        return error_response(400, f"'after' names no item of this list: {exc.args[0]!r}. Use the id of an "
                              "item from the previous page (its last_id), or leave 'after' out for the first page.",
                              "after", "invalid_cursor")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the server log only; clients get a message that leaks nothing.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, INTERNAL_ERROR_MESSAGE, code="internal_error")
