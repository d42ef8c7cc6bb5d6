"""Every error leaves the server in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

Clients written for OpenAI (the official SDK first) turn that shape into typed exceptions with a
readable message, so the server never answers with FastAPI's `{"detail": ...}` or a stack trace.
"""

from __future__ import annotations

import json
import logging

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


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every 4xx/5xx body."""

    error: ErrorDetail


ERROR_MEANINGS = {400: "Invalid request: a missing or malformed parameter (`param` names it), including request "
                  "bodies that fail validation",
             401: "Missing or wrong API key", 404: "No such object", 409: "The object is not in a state that "
             "allows this", 413: "The upload is larger than the server's limit"}


def error_responses(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI `responses=` for a route: each status with the error object as its body."""
    return {status: {"model": ErrorResponse, "description": ERROR_MEANINGS[status]} for status in statuses}


class APIError(StarletteHTTPException):
    """Raised anywhere in a request; becomes an OpenAI-shaped JSON error."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status, detail=message, headers=headers)
        self.message = message
        self.param = param
        self.code = code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def _loc_to_param(loc: tuple | list) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc, APIError):
            return error_response(exc.status_code, exc.message, exc.param, exc.code, exc.headers)
        if exc.status_code == 404:
            return error_response(404, f"Unknown path: {request.method} {request.url.path}. "
                                  "See /docs for the endpoints.", code="unknown_url")
        if exc.status_code == 405:
            return error_response(405, f"Method {request.method} is not allowed on {request.url.path}.",
                                  code="method_not_allowed", headers=exc.headers)
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return error_response(exc.status_code, message, headers=exc.headers)

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
        return error_response(500, "The server had an internal error while processing your request. "
                              "The details are in the server log.", code="internal_error")
