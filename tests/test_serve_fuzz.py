"""Reliability suite, part 1: schemathesis over the whole OpenAPI document, with real ids.

Every operation of /openapi.json is called with generated requests, valid ones (positive) and ones
that break the schema (negative), against the app in-process with the fake trainer and chat engine
(tests/serve_fakes.py). Path and body ids are real part of the time: a file that was uploaded, a
job that succeeded (with checkpoints and a fine-tuned model), one that failed validation and one
that was cancelled, so `{file_id}`/`{job_id}`/`{model_id}` routes reach their real code, not only
their 404. Each response is checked by schemathesis (no 5xx; the status, the content type and the
body are the ones the document declares: the /v1 bodies against their pydantic response models;
negative data is refused) and by this suite (an error is an OpenAI error object with a code; no
server path and no traceback in any body).

Bounded and reproducible: `derandomize=True`, a fixed number of examples per operation and mode
(LORASTUDIO_FUZZ_EXAMPLES, default 10). Set LORASTUDIO_FUZZ_REPORT=FILE to get the request and
failure counts as JSON (docs/SERVICE.md quotes them).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from lorastudio.serve import create_app  # noqa: E402
from tests.test_serve_api import make_settings, seed_jsonl, wait_status  # noqa: E402

EXAMPLES = int(os.environ.get("LORASTUDIO_FUZZ_EXAMPLES", "10"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
# Absolute paths outside the API's own URL space (e.g. "/tmp/…/data/files/file-…", "/home/…").
SERVER_PATH = re.compile(r"(?<![\w:/.~-])/(?!(?:v1|studio|docs|openapi\.json|health)\b)[\w.~-]+/[\w.~/-]+")


@dataclass
class World:
    client: TestClient
    operations: dict
    roots: list[str]
    pools: dict[str, list[str]]
    counts: dict[str, int] = field(default_factory=lambda: {"requests": 0, "failures": 0, "5xx": 0})


def _upload(c: TestClient, content: bytes, name: str) -> str:
    resp = c.post("/v1/files", files={"file": (name, content)}, data={"purpose": "fine-tune"})
    assert resp.status_code == 200, resp.text
    return resp.json()["id"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    saved = {k: os.environ.get(k) for k in ("FAKE_STEPS", "FAKE_STEP_S")}
    os.environ.update(FAKE_STEPS="4", FAKE_STEP_S="0.01")
    app = create_app(make_settings(tmp))
    try:
        with TestClient(app, raise_server_exceptions=False) as c:
            good = _upload(c, seed_jsonl(), "seed.jsonl")
            binary = _upload(c, bytes(range(256)) * 8, "blob.jsonl")           # not a text file
            empty_rows = _upload(c, b'{"instruction": "", "response": ""}\n', "empty.jsonl")
            ok = c.post("/v1/fine_tuning/jobs", json={"model": "tiny-random", "training_file": good,
                                                      "suffix": "fuzz"}).json()
            ok = wait_status(c, ok["id"], ("succeeded",))
            bad = c.post("/v1/fine_tuning/jobs", json={"model": "tiny-random", "training_file": binary}).json()
            wait_status(c, bad["id"], ("failed",))
            cancelled = c.post("/v1/fine_tuning/jobs", json={"model": "tiny-random",
                                                             "training_file": empty_rows}).json()
            c.post(f"/v1/fine_tuning/jobs/{cancelled['id']}/cancel")
            checkpoints = [ck["fine_tuned_model_checkpoint"] for ck in
                           c.get(f"/v1/fine_tuning/jobs/{ok['id']}/checkpoints").json()["data"]]
            assert checkpoints
            models = ["tiny-random", ok["fine_tuned_model"], *checkpoints]
            pools = {"file_id": [good, binary, empty_rows], "job_id": [ok["id"], bad["id"], cancelled["id"]],
                     "model_id": models, "kind": ["adapter", "merged", "gguf"],
                     "training_file": [good, binary], "validation_file": [good], "model": models,
                     "fine_tuned_model": models[1:], "base_model": ["tiny-random"]}
            schema = schemathesis.openapi.from_dict(app.openapi())
            operations = {op.label: op for op in (r.ok() for r in schema.get_all_operations())}
            settings_ = app.state.settings
            roots = sorted({str(settings_.data_dir), str(Path(settings_.data_dir).resolve()), str(Path.home()),
                            str(tmp)}, key=len, reverse=True)
            w = World(c, operations, roots, pools)
            yield w
            report = os.environ.get("LORASTUDIO_FUZZ_REPORT")
            if report:
                Path(report).write_text(json.dumps({**w.counts, "operations": len(operations),
                                                    "examples_per_mode": EXAMPLES}) + "\n")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _header_value(value) -> str | bytes:
    value = str(value)
    try:
        value.encode("ascii")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8")


def _as_bytes(value) -> bytes:
    if isinstance(value, bytes):
        return value
    return (value if isinstance(value, str) else json.dumps(value)).encode()


def send(c: TestClient, case):
    """The case's request through the app's TestClient (its worker runs; schemathesis' own ASGI client
    would start a second lifespan on the same data directory)."""
    kw = case.as_transport_kwargs(base_url="http://testserver")
    headers = {k: _header_value(v) for k, v in (kw.get("headers") or {}).items()
               if k.lower() not in ("connection", "accept-encoding")}
    args = {"params": kw.get("params") or None, "headers": headers, "cookies": kw.get("cookies") or None}
    if kw.get("files"):
        files = [(name, (part[0], _as_bytes(part[1]), *part[2:])) for name, part in kw["files"]]
        form = kw.get("data") if isinstance(kw.get("data"), dict) else None
        return c.request(kw["method"], kw["url"], files=files, data=form, **args)
    if "json" in kw:
        return c.request(kw["method"], kw["url"], json=kw["json"], **args)
    data = kw.get("data")
    if isinstance(data, dict):
        return c.request(kw["method"], kw["url"], data=data, **args)
    content = data.encode() if isinstance(data, str) else data
    return c.request(kw["method"], kw["url"], content=content, **args)


def use_real_ids(case, data, world: World) -> None:
    """Half of the time, replace generated ids (path and body) by ids of real objects."""
    for name in list(case.path_parameters or {}):
        if name in world.pools and data.draw(st.booleans(), label=f"real {name}"):
            value = data.draw(st.sampled_from(world.pools[name]), label=name)
            if case.operation.label in FRESH:
                value = fresh(world, name)
            case.path_parameters[name] = value
    _real_body_ids(case.body, data, world)


def _real_body_ids(body, data, world: World) -> None:
    """Ids in a JSON body (also one level down: the playground's {"a": {"model": …}})."""
    if isinstance(body, dict):
        for name, value in list(body.items()):
            if name in world.pools and isinstance(value, str):
                if data.draw(st.booleans(), label=f"real {name}"):
                    body[name] = data.draw(st.sampled_from(world.pools[name]), label=name)
            elif isinstance(value, dict):
                _real_body_ids(value, data, world)


def fresh(world: World, name: str) -> str:
    """A new object to delete: an uploaded file, or a job cancelled at once (a finished job)."""
    file_id = _upload(world.client, seed_jsonl(), "to-delete.jsonl")
    if name == "file_id":
        return file_id
    job = world.client.post("/v1/fine_tuning/jobs", json={"model": "tiny-random", "training_file": file_id}).json()
    world.client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    return job["id"]


def own_checks(resp, world: World, paths: bool = True) -> None:
    """What schemathesis does not know: errors are OpenAI objects with a code; nothing of the server's
    file system or a traceback leaks into a body."""
    text = resp.text
    assert "Traceback" not in text, text[:2000]
    for root in world.roots if paths else ():
        assert root not in text, f"server path {root} in: {text[:2000]}"
    if resp.status_code >= 400 and not resp.headers.get("content-type", "").startswith("text/event-stream"):
        error = resp.json()["error"]
        assert error["code"], resp.text
        assert error["message"] and not SERVER_PATH.search(error["message"]), resp.text


def _document_operations() -> tuple[list[str], list[str]]:
    """(every operation of the app's OpenAPI document, those with a body or query parameters), read
    at collection from a throwaway app, so a route added to the app is fuzzed without editing this."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(make_settings(Path(tmp)))
        try:
            schema = schemathesis.openapi.from_dict(app.openapi())
        finally:
            app.state.store.close()
    operations = [result.ok() for result in schema.get_all_operations()]
    # Operations with something a request can get wrong beyond a path string also get negative cases
    # (requests that break the schema and must be refused with a 4xx).
    return [op.label for op in operations], [op.label for op in operations if op.body or op.query]


OPERATIONS, NEGATIVE = _document_operations()
# Deleting the pool's objects would leave the other operations only 404s: these get a fresh object.
FRESH = {"DELETE /v1/files/{file_id}", "DELETE /studio/jobs/{job_id}"}


def test_the_document_has_the_routes_this_suite_relies_on():
    assert {"POST /v1/files", "GET /v1/fine_tuning/jobs/{job_id}/events", "POST /v1/chat/completions",
            "GET /studio/jobs/{job_id}/stream", *FRESH} <= set(OPERATIONS)
    assert {"POST /v1/fine_tuning/jobs", "GET /v1/files", "POST /v1/chat/completions"} <= set(NEGATIVE)


# Checks not yet met by routes this suite's author does not own. Every other check still runs on
# them. Remove an entry once its route is fixed (the xfail in test_serve_hostile.py flips too).
NOT_YET: dict[str, set] = {
}

def negative_data_refused(ctx, response, case):
    """schemathesis' negative_data_rejection, less one false alarm: a multipart field is bytes on the
    wire, so a `type` mutation of one (the number 4.8e+194 instead of a file's content) sends a valid
    request (schemathesis allows for this in query and path parameters, not in multipart bodies)."""
    data = getattr(getattr(case.meta, "phase", None), "data", None)
    mutations = getattr(data, "mutations", None) or ()
    if (case.media_type or "").startswith("multipart/") and mutations and \
            all(m.keywords == ("type",) and m.parameter_location.value == "body" for m in mutations):
        return None
    return negative_data_rejection(ctx, response, case)


CASES = [(label, GenerationMode.POSITIVE) for label in OPERATIONS] + \
    [(label, GenerationMode.NEGATIVE) for label in NEGATIVE]


@pytest.mark.parametrize("label, mode", CASES, ids=[f"{label}-{mode.value}" for label, mode in CASES])
def test_fuzz_operation(world, label, mode):
    operation = world.operations[label]
    checks = [check for check in CHECKS if check not in NOT_YET.get(label, ())]
    checks += [negative_data_refused] if mode is GenerationMode.NEGATIVE else []
    strategy = operation.as_strategy(generation_mode=mode)

    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None, print_blob=False,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate, Phase.shrink])
    @given(data=st.data())
    def run(data):
        case = data.draw(strategy, label="case")
        use_real_ids(case, data, world)
        resp = send(world.client, case)
        world.counts["requests"] += 1
        world.counts["5xx"] += resp.status_code >= 500
        resp.request.read()  # a multipart body is streamed; the checks look at what was sent
        try:
            case.validate_response(resp, checks=checks)
            own_checks(resp, world, paths="no_server_paths" not in NOT_YET.get(label, ()))
        except BaseException:
            world.counts["failures"] += 1
            raise

    run()
