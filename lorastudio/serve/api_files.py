"""`/v1/files`: uploads stored under generated names; the user's filename is only ever a label."""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from lorastudio.serve.errors import APIError, error_responses
from lorastudio.serve.objects import PURPOSES, FileDeleted, FileList, FileObject, file_object, list_object
from lorastudio.serve.store import new_id

router = APIRouter(prefix="/v1/files", tags=["files"], responses=error_responses(401))

# Suffixes the data layer reads; the stored file keeps one so format detection works.
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".txt", ".xlsx")
_CHUNK = 1024 * 1024


def display_name(raw: str | None) -> str:
    """A safe label from a client filename: last path component, no control characters."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    if name in ("", ".", ".."):
        name = "upload"
    return name[:255]


def stored_suffix(name: str) -> str:
    suffix = Path(name).suffix.lower()
    return suffix if suffix in DATA_SUFFIXES else ""


def get_file_or_404(request: Request, file_id: str, param: str = "file_id") -> dict:
    record = request.app.state.store.get_file(file_id)
    if record is None:
        raise APIError(404, f"No such file: '{file_id}'. List files with GET /v1/files.", param=param,
                       code="file_not_found")
    return record


def _save(upload: UploadFile, target: Path, limit: int) -> int:
    size = 0
    tmp = target.with_name(target.name + ".part")
    try:
        with tmp.open("wb") as out:
            while chunk := upload.file.read(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise APIError(413, f"The file is larger than this server's upload limit of "
                                   f"{limit // (1024 * 1024) or limit} {'MiB' if limit >= 1024 * 1024 else 'bytes'}. "
                                   "Split it, or start the server with a larger LORASTUDIO_MAX_UPLOAD_MB.",
                                   param="file", code="file_too_large")
                out.write(chunk)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return size


@router.post("", summary="Upload a data file (any format the data layer reads)", response_model=FileObject,
             response_model_exclude_unset=True, responses=error_responses(400, 413))
async def upload_file(request: Request, file: Annotated[UploadFile, File()],
                      purpose: Annotated[str, Form()] = "fine-tune") -> dict:
    settings = request.app.state.settings
    if purpose not in PURPOSES:
        raise APIError(400, f"Invalid purpose '{purpose}'; use 'fine-tune' for training data.",
                       param="purpose", code="invalid_value")
    name = display_name(file.filename)
    file_id = new_id("file")
    settings.files_dir.mkdir(parents=True, exist_ok=True)
    target = settings.files_dir / f"{file_id}{stored_suffix(name)}"
    size = await run_in_threadpool(_save, file, target, settings.max_upload_bytes)
    if size == 0:
        target.unlink(missing_ok=True)
        raise APIError(400, f"The uploaded file '{name}' is empty.", param="file", code="empty_file")
    record = request.app.state.store.add_file(filename=name, nbytes=size, purpose=purpose, path=str(target),
                                              file_id=file_id)
    return file_object(record)


@router.get("", summary="List uploaded files", response_model=FileList, response_model_exclude_unset=True)
def list_files(request: Request, purpose: str | None = None, after: str | None = None,
               limit: Annotated[int, Query(ge=1, le=10000)] = 10000) -> dict:
    rows, more = request.app.state.store.list_files(purpose=purpose, after=after, limit=limit)
    return list_object([file_object(r) for r in rows], more)


@router.get("/{file_id}", summary="One file's metadata", response_model=FileObject,
            response_model_exclude_unset=True, responses=error_responses(404))
def get_file(request: Request, file_id: str) -> dict:
    return file_object(get_file_or_404(request, file_id))


@router.delete("/{file_id}", summary="Delete a file (jobs that already used it keep their results)",
               response_model=FileDeleted, response_model_exclude_unset=True, responses=error_responses(404, 409))
def delete_file(request: Request, file_id: str) -> dict:
    record = get_file_or_404(request, file_id)
    store = request.app.state.store
    users = [j["id"] for j in store.jobs_with_status("validating_files", "queued", "running", "paused")
             if file_id in (j["training_file"], j.get("validation_file"))]
    if users:
        raise APIError(409, f"File '{file_id}' is used by unfinished job(s) {', '.join(users)}; cancel them or "
                       "wait for them to finish before deleting it.", param="file_id", code="file_in_use")
    store.delete_file(file_id)
    for path in (Path(record["path"]), *Path(record["path"]).parent.glob(f"{file_id}.*")):
        if path.name.startswith(file_id):
            path.unlink(missing_ok=True)
    return {"id": file_id, "object": "file", "deleted": True}


@router.get("/{file_id}/content", summary="Download a file's bytes", response_class=FileResponse,
            responses={200: {"description": "The file as uploaded.",
                             "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                       **error_responses(404)})
def file_content(request: Request, file_id: str) -> FileResponse:
    record = get_file_or_404(request, file_id)
    path = Path(record["path"])
    if not path.exists():
        raise APIError(404, f"The content of file '{file_id}' is gone from disk.", param="file_id",
                       code="file_not_found")
    return FileResponse(path, media_type="application/octet-stream", filename=record["filename"])


def safe_download_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "download"
