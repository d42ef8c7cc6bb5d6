"""The studio service in-process (TestClient) with a fake trainer subprocess and a fake chat engine.

The same flows run against the real trainer and a live server in test_serve_e2e.py.
"""

from __future__ import annotations

import json
import os
import time
import zipfile
from io import BytesIO
from pathlib import Path

import pytest
import yaml

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from lorastudio.serve import Settings, create_app  # noqa: E402
from tests.serve_fakes import FakeEngine, fake_trainer_command  # noqa: E402

SEED_ROWS = [{"instruction": f"工单 {i} 超时多久升级？", "response": f"超过 {i + 2} 小时升级到二线。"} for i in range(12)]


def seed_jsonl(rows=SEED_ROWS) -> bytes:
    return "\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode() + b"\n"


def make_settings(tmp_path: Path, **kw) -> Settings:
    values = dict(data_dir=tmp_path / "data", trainer_command=fake_trainer_command(tmp_path),
                  engine_factory=FakeEngine, poll_interval_s=0.05, cancel_grace_s=2.0,
                  web_dir=tmp_path / "no-web")
    values.update(kw)
    return Settings(**values)


@pytest.fixture
def client(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEPS", "6")
    monkeypatch.setenv("FAKE_STEP_S", "0.02")
    with TestClient(create_app(make_settings(tmp_path))) as c:
        yield c


def upload(c: TestClient, content: bytes = None, name: str = "seed.jsonl", **kw):
    return c.post("/v1/files", files={"file": (name, content if content is not None else seed_jsonl())},
                  data={"purpose": "fine-tune"}, **kw)


def wait_status(c: TestClient, job_id: str, statuses: tuple[str, ...], timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = c.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} stuck in {job['status']}: {job}")


def wait_until(condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still waiting after {timeout:.0f} s for {what}"
        time.sleep(0.05)


def start_long_job(c: TestClient, until: str) -> tuple[str, dict, int]:
    """Upload, create a job, wait until it runs and the list at `until` ({id} = the job) has data.

    (file id, job, trainer pid). Set FAKE_STEPS/FAKE_STEP_S first so it runs long enough."""
    fid = upload(c).json()["id"]
    job = c.post("/v1/fine_tuning/jobs", json={"model": "tiny-random", "training_file": fid}).json()
    wait_status(c, job["id"], ("running",))
    url = until.format(id=job["id"])
    wait_until(lambda: c.get(url).json()["data"], url)
    return fid, job, c.app.state.store.get_job(job["id"])["pid"]


def assert_openai_error(resp, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"]
    assert "Traceback" not in body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    if param is not None:
        assert body["error"]["param"] == param, body
    return body["error"]


# --- files -------------------------------------------------------------------------------------
def test_upload_list_get_content_delete(client):
    resp = upload(client)
    assert resp.status_code == 200, resp.text
    f = resp.json()
    assert f["object"] == "file" and f["filename"] == "seed.jsonl" and f["bytes"] == len(seed_jsonl())
    assert f["purpose"] == "fine-tune" and f["id"].startswith("file-")
    assert [x["id"] for x in client.get("/v1/files").json()["data"]] == [f["id"]]
    assert client.get(f"/v1/files/{f['id']}").json()["filename"] == "seed.jsonl"
    assert client.get(f"/v1/files/{f['id']}/content").content == seed_jsonl()
    assert client.delete(f"/v1/files/{f['id']}").json() == {"id": f["id"], "object": "file", "deleted": True}
    assert_openai_error(client.get(f"/v1/files/{f['id']}"), 404, "file_not_found")
    assert list((client.app.state.settings.files_dir).iterdir()) == []


def test_filenames_are_labels_never_paths(client, tmp_path):
    for evil in ("../../etc/passwd", "..\\..\\windows\\win.ini", "/etc/passwd", "..", "a\x00b.jsonl"):
        resp = upload(client, name=evil)
        assert resp.status_code == 200, (evil, resp.text)
        record = client.app.state.store.get_file(resp.json()["id"])
        stored = Path(record["path"]).resolve()
        assert stored.parent == client.app.state.settings.files_dir.resolve()
        assert stored.name.startswith(resp.json()["id"])
        assert "/" not in resp.json()["filename"] and "\\" not in resp.json()["filename"]
        assert "\x00" not in resp.json()["filename"]
    assert not (tmp_path / "etc").exists()
    assert upload(client, name="../../etc/passwd").json()["filename"] == "passwd"


def test_upload_size_limit(tmp_path):
    with TestClient(create_app(make_settings(tmp_path, max_upload_bytes=1000))) as c:
        err = assert_openai_error(upload(c, b"x" * 200_000), 413, "file_too_large", "file")
        assert "limit" in err["message"]
        # Between the byte limit and the multipart allowance: caught while copying.
        assert_openai_error(upload(c, b'{"instruction":"a","response":"b"}\n' * 100), 413, "file_too_large")
        assert upload(c, b'{"instruction":"a","response":"b"}\n').status_code == 200
        assert list(c.app.state.settings.files_dir.glob("*.part")) == []


def test_chunked_upload_over_the_limit_is_cut_off(tmp_path):
    """No Content-Length (chunked): the limit is enforced while the body streams in."""
    boundary = "xyzBOUNDARY"

    def body():
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
               f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n'
               "Content-Type: application/octet-stream\r\n\r\n").encode()
        for _ in range(200):
            yield b"x" * 1000
        yield f"\r\n--{boundary}--\r\n".encode()

    with TestClient(create_app(make_settings(tmp_path, max_upload_bytes=1000))) as c:
        resp = c.post("/v1/files", content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        assert resp.request.headers.get("transfer-encoding") == "chunked"
        assert_openai_error(resp, 413, "file_too_large", "file")
        assert list(c.app.state.settings.files_dir.iterdir()) == []


def test_bad_requests_are_openai_shaped(client):
    assert_openai_error(client.post("/v1/files", data={"purpose": "fine-tune"}), 400, "missing_required_parameter",
                        "file")
    assert_openai_error(upload(client, b""), 400, "empty_file")
    assert_openai_error(client.post("/v1/fine_tuning/jobs", content=b"{not json",
                                    headers={"content-type": "application/json"}), 400, "invalid_json")
    assert_openai_error(client.post("/v1/fine_tuning/jobs", json=[1, 2]), 400)
    assert_openai_error(client.post("/v1/fine_tuning/jobs", json={"model": "tiny-random"}), 400,
                        "missing_required_parameter", "training_file")
    assert_openai_error(client.post("/v1/fine_tuning/jobs", json={"model": "tiny-random", "training_file": "file-nope"}),
                        404, "file_not_found", "training_file")
    fid = upload(client).json()["id"]
    assert_openai_error(client.post("/v1/fine_tuning/jobs", json={"model": "gpt-17", "training_file": fid}), 404,
                        "model_not_found", "model")
    assert_openai_error(client.post("/v1/fine_tuning/jobs", json={"model": "tiny-random", "training_file": fid,
                                                                  "hyperparameters": {"n_epochs": -1}}),
                        400, "invalid_value", "hyperparameters.n_epochs")
    assert_openai_error(client.post("/v1/fine_tuning/jobs", json={"model": "tiny-random", "training_file": fid,
                                                                  "hyperparameters": {"lora_rank": 8}}),
                        400, "invalid_value", "hyperparameters.lora_rank")
    assert_openai_error(client.post("/v1/fine_tuning/jobs", json={"model": "tiny-random", "training_file": fid,
                                                                  "hyperparameters": {"output_dir": "/etc"}}),
                        400, "invalid_value", "hyperparameters.output_dir")
    assert_openai_error(client.post("/v1/fine_tuning/jobs", json={"model": "tiny-random", "training_file": fid,
                                                                  "hyperparameters": {"replay_prompts": "/etc/passwd"}}),
                        400, "invalid_value", "hyperparameters.replay_prompts")
    assert_openai_error(client.post("/v1/fine_tuning/jobs", json={"model": "tiny-random", "training_file": fid,
                                                                  "suffix": "../x"}), 400, "invalid_value", "suffix")
    assert_openai_error(client.get("/v1/fine_tuning/jobs/ftjob-nope"), 404, "job_not_found")
    assert_openai_error(client.get("/v1/nothing-here"), 404, "unknown_url")
    assert_openai_error(client.delete("/v1/models"), 405)
    assert_openai_error(client.post("/v1/chat/completions", json={"model": "nope", "messages": [
        {"role": "user", "content": "hi"}]}), 404, "model_not_found", "model")
    assert_openai_error(client.post("/v1/chat/completions", json={"model": "tiny-random", "messages": [
        {"role": "robot", "content": "hi"}]}), 400, "invalid_value", "messages")
    assert_openai_error(client.post("/v1/chat/completions", json={"model": "tiny-random", "messages": []}), 400)
    assert_openai_error(client.get("/studio/jobs/ftjob-nope/metrics"), 404, "job_not_found")


def test_internal_errors_hide_the_traceback(tmp_path):
    app = create_app(make_settings(tmp_path))

    @app.get("/v1/boom")
    def boom():
        raise RuntimeError("secret internals /home/user")

    with TestClient(app, raise_server_exceptions=False) as c:
        resp = c.get("/v1/boom")
        assert resp.status_code == 500
        assert "secret" not in resp.text and "Traceback" not in resp.text
        assert resp.json()["error"]["type"] == "server_error"


def test_api_key_required_when_configured(tmp_path):
    with TestClient(create_app(make_settings(tmp_path, api_key="s3cret-key"))) as c:
        assert_openai_error(c.get("/v1/models"), 401, "missing_api_key")
        assert_openai_error(c.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401, "invalid_api_key")
        assert_openai_error(c.get("/studio/models", headers={"Authorization": "Basic s3cret-key"}), 401)
        assert_openai_error(upload(c), 401)
        assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
        assert c.get("/health").status_code == 200  # liveness stays open
        assert "s3cret-key" not in repr(c.app.state.settings)


def test_refuses_public_bind_without_key():
    from lorastudio.serve import SettingsError

    Settings(host="127.0.0.1").check_bind()
    Settings(host="0.0.0.0", api_key="k").check_bind()
    with pytest.raises(SettingsError, match="API key"):
        Settings(host="0.0.0.0").check_bind()


# --- jobs --------------------------------------------------------------------------------------
def test_job_runs_to_success_with_events_checkpoints_and_chat(client):
    fid = upload(client).json()["id"]
    resp = client.post("/v1/fine_tuning/jobs", json={"model": "tiny-random", "training_file": fid, "suffix": "support",
                                                     "hyperparameters": {"n_epochs": 2, "lora_r": 4}})
    assert resp.status_code == 200, resp.text
    job = resp.json()
    assert job["object"] == "fine_tuning.job" and job["status"] == "validating_files"
    job = wait_status(client, job["id"], ("succeeded", "failed", "cancelled"))
    assert job["status"] == "succeeded", job
    assert job["fine_tuned_model"] == f"ft:tiny-random:support:{job['id']}"
    assert job["trained_tokens"] == 1234 and job["finished_at"] and job["error"] is None
    assert job["hyperparameters"]["n_epochs"] == 2 and job["hyperparameters"]["lora_r"] == 4

    job_dir = Path(client.app.state.store.get_job(job["id"])["job_dir"])
    cfg = __import__("yaml").safe_load((job_dir / "job.yaml").read_text())
    assert cfg["num_epochs"] == 2 and cfg["lora_r"] == 4 and cfg["base"] == "tiny-random"
    # the estimate the run is compared with is the one of what runs (2 passes), not the recommendation's
    extra = cfg["extra"]
    assert "num_epochs" in extra["changed_settings"] and "lora_r" not in extra["changed_settings"]
    assert 0 < extra["estimate"]["tokens"] < extra["recommended_estimate"]["tokens"]

    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 100}).json()
    assert events["has_more"] is False
    stamps = [e["created_at"] for e in events["data"]]
    assert stamps == sorted(stamps, reverse=True)  # newest first
    metrics = [e for e in events["data"] if e["type"] == "metrics"]
    assert len(metrics) == 6
    assert {"step", "train_loss", "tokens_per_s", "eta_s"} <= set(metrics[0]["data"])
    assert metrics[0]["data"]["step"] == 6  # newest first
    assert any("successfully completed" in e["message"] for e in events["data"])
    # paging
    page1 = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 3}).json()
    page2 = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events",
                       params={"limit": 3, "after": page1["data"][-1]["id"]}).json()
    assert page1["has_more"] and [e["id"] for e in page1["data"] + page2["data"]] == \
        [e["id"] for e in events["data"][:6]]

    ckpts = client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"]
    assert [c["step_number"] for c in ckpts] == [6, 4, 2]
    assert ckpts[0]["object"] == "fine_tuning.job.checkpoint"
    assert ckpts[0]["fine_tuned_model_checkpoint"] == f"{job['fine_tuned_model']}:ckpt-step-6"
    assert ckpts[0]["metrics"]["train_loss"] == pytest.approx(1 / 6)

    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert {"default", "tiny-random", job["fine_tuned_model"]} <= set(models)
    assert client.get(f"/v1/models/{job['fine_tuned_model']}").json()["owned_by"] == "user"

    chat = client.post("/v1/chat/completions", json={"model": job["fine_tuned_model"], "messages": [
        {"role": "user", "content": "hello"}]}).json()
    assert chat["object"] == "chat.completion"
    assert chat["choices"][0]["message"]["content"] == f"tiny-random|{job_dir.name}: hello"
    assert chat["usage"]["total_tokens"] > 0
    base = client.post("/v1/chat/completions", json={"model": "tiny-random", "messages": [
        {"role": "user", "content": "hello"}]}).json()
    assert base["choices"][0]["message"]["content"] == "tiny-random|base: hello"
    ck = client.post("/v1/chat/completions", json={"model": ckpts[1]["fine_tuned_model_checkpoint"], "messages": [
        {"role": "user", "content": "hi"}]}).json()
    assert ck["choices"][0]["message"]["content"] == "tiny-random|step-00000004: hi"
    assert FakeEngine.loads.count("tiny-random") >= 1

    with client.stream("POST", "/v1/chat/completions", json={
            "model": job["fine_tuned_model"], "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "stream me"}]}) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in resp.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text.strip() == f"tiny-random|{job_dir.name}: stream me"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["usage"]["total_tokens"] > 0

    # studio endpoints on a finished job
    metrics = client.get(f"/studio/jobs/{job['id']}/metrics").json()["data"]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6] and metrics[0]["type"] == "metrics"
    with client.stream("GET", f"/studio/jobs/{job['id']}/stream") as resp:
        sse = [json.loads(ln[6:]) for ln in resp.iter_lines() if ln.startswith("data: ")]
    assert sum(e["type"] == "metrics" for e in sse) == 6
    assert any(e.get("type") == "status" and e["status"] == "succeeded" for e in sse)
    cmp = client.post("/studio/compare", json={"fine_tuned_model": job["fine_tuned_model"], "question": "q?"}).json()
    assert cmp["base_answer"] == "tiny-random|base: q?" and cmp["tuned_answer"] == f"tiny-random|{job_dir.name}: q?"
    dl = client.get(f"/studio/jobs/{job['id']}/download/adapter")
    assert dl.status_code == 200 and dl.headers["content-type"] == "application/zip"
    names = zipfile.ZipFile(BytesIO(dl.content)).namelist()
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(names) and "train.log" not in names
    assert_openai_error(client.get(f"/studio/jobs/{job['id']}/download/weights"), 404, "unknown_download")
    assert_openai_error(client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel"), 409, "job_not_cancellable")


def test_cancel_running_job_stops_the_trainer(client, monkeypatch):
    monkeypatch.setenv("FAKE_STEPS", "1000")
    monkeypatch.setenv("FAKE_STEP_S", "0.05")
    fid, job, pid = start_long_job(client, "/studio/jobs/{id}/metrics")
    t0 = time.monotonic()
    resp = client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    assert resp.json()["status"] == "cancelled"
    while time.monotonic() - t0 < 10:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("trainer still alive 10 s after cancel")
    # The device is free again: the next job runs.
    monkeypatch.setenv("FAKE_STEPS", "2")
    job2 = client.post("/v1/fine_tuning/jobs", json={"model": "tiny-random", "training_file": fid}).json()
    assert wait_status(client, job2["id"], ("succeeded", "failed"))["status"] == "succeeded"
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "cancelled"
    # Every event: the trainer may log many steps between the cancel and the SIGTERM on a loaded machine,
    # which would push the cancel message out of the default page of 20.
    msgs = [e["message"] for e in client.get(f"/v1/fine_tuning/jobs/{job['id']}/events",
                                             params={"limit": 10000}).json()["data"]]
    assert any("cancelled" in m for m in msgs) and any("device is free" in m for m in msgs)


def test_cancel_kills_a_trainer_that_ignores_sigterm(client, monkeypatch):
    monkeypatch.setenv("FAKE_STEPS", "1000")
    monkeypatch.setenv("FAKE_IGNORE_TERM", "1")
    fid = upload(client).json()["id"]
    job = client.post("/v1/fine_tuning/jobs", json={"model": "tiny-random", "training_file": fid}).json()
    wait_status(client, job["id"], ("running",))
    pid = client.app.state.store.get_job(job["id"])["pid"]
    client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    deadline = time.monotonic() + 15  # grace 2 s in these settings, then SIGKILL
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError("trainer survived SIGKILL escalation")


def test_queued_jobs_wait_their_turn(client, monkeypatch):
    monkeypatch.setenv("FAKE_STEPS", "4")
    fid = upload(client).json()["id"]
    ids = [client.post("/v1/fine_tuning/jobs", json={"model": "tiny-random", "training_file": fid}).json()["id"]
           for _ in range(3)]
    seen_running: set[int] = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        # One query, so the count is a snapshot (three GETs could straddle a hand-over).
        seen_running.add(len(client.app.state.store.jobs_with_status("running")))
        statuses = [client.get(f"/v1/fine_tuning/jobs/{i}").json()["status"] for i in ids]
        if all(s == "succeeded" for s in statuses):
            break
        time.sleep(0.02)
    assert all(s == "succeeded" for s in statuses), statuses
    assert max(seen_running) == 1  # one device, one trainer at a time
    listed = client.get("/v1/fine_tuning/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in listed["data"]] == ids[::-1][:2] and listed["has_more"]


def test_trainer_failures_become_job_errors(client, monkeypatch):
    fid = upload(client).json()["id"]
    monkeypatch.setenv("FAKE_MODE", "crash")
    job = client.post("/v1/fine_tuning/jobs", json={"model": "tiny-random", "training_file": fid}).json()
    job = wait_status(client, job["id"], ("succeeded", "failed"))
    assert job["status"] == "failed" and job["error"]["code"] == "training_failed"
    assert "out of memory" in job["error"]["message"]
    monkeypatch.setenv("FAKE_MODE", "unusable")
    job = client.post("/v1/fine_tuning/jobs", json={"model": "tiny-random", "training_file": fid}).json()
    job = wait_status(client, job["id"], ("succeeded", "failed"))
    assert job["error"]["param"] == "training_file" and "no usable rows" in job["error"]["message"]


def test_file_without_usable_rows_fails_validation_with_reasons(client):
    bad = b'{"instruction": "   ", "response": "x"}\n{"instruction": "q", "response": ""}\n'
    fid = upload(client, bad, name="bad.jsonl").json()["id"]
    job = client.post("/v1/fine_tuning/jobs", json={"model": "tiny-random", "training_file": fid}).json()
    job = wait_status(client, job["id"], ("failed", "queued", "running", "succeeded"))
    assert job["status"] == "failed"
    assert job["error"]["param"] == "training_file"
    assert "empty_instruction" in job["error"]["message"] and "empty_response" in job["error"]["message"]
    report = client.get(f"/studio/files/{fid}/report").json()
    assert report["rows_ok"] == 0 and report["file"] == "bad.jsonl"
    rejected = client.get(f"/studio/files/{fid}/rejected")
    assert rejected.status_code == 200 and rejected.headers["content-type"].startswith("text/csv")
    assert "empty_response" in rejected.text


def test_studio_report_recommend_models(client):
    fid = upload(client).json()["id"]
    report = client.get(f"/studio/files/{fid}/report").json()
    assert report["rows_ok"] == 12 and report["file"] == "seed.jsonl" and report["lang"] == "en"
    bad = upload(client, b'{"instruction": "q", "response": ""}\n{"instruction": "q2", "response": "a"}\n').json()
    en = client.get(f"/studio/files/{bad['id']}/report", headers={"Accept-Language": "en-US,en"}).json()
    zh = client.get(f"/studio/files/{bad['id']}/report", headers={"Accept-Language": "zh-CN,zh;q=0.9"}).json()
    assert en["lang"] == "en" and zh["lang"] == "zh"
    assert [i["kind"] for i in en["issues"]] == [i["kind"] for i in zh["issues"]]
    assert en["issues"][0]["hint"] != zh["issues"][0]["hint"]
    rec = client.post("/studio/recommend", json={"training_file": fid, "model": "tiny-random", "task": "qa"}).json()
    assert {"settings", "reasons", "estimate"} <= set(rec) and rec["settings"]["lora_r"] >= 1
    ids = [m["id"] for m in client.get("/studio/models").json()["data"]]
    assert ids[0] == "default" and "tiny-random" in ids
    assert_openai_error(client.post("/studio/recommend", json={"training_file": fid, "task": "poetry"}), 400,
                        param="task")


def test_fallback_page_and_docs(client):
    assert "LoRA Studio" in client.get("/").text
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/v1/fine_tuning/jobs" in spec["paths"] and "/v1/chat/completions" in spec["paths"]


def test_openapi_document_types_the_openai_routes(client):
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    ok_schemas = {}
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            responses = op["responses"]
            # Validation errors are answered 400 with the OpenAI error object, so no 422 is advertised.
            assert "422" not in responses, (method, path)
            for status, response in responses.items():
                if status != "200":
                    assert response["content"]["application/json"]["schema"] == \
                        {"$ref": "#/components/schemas/ErrorResponse"}, (method, path, status)
            if path.startswith("/v1/"):
                assert "401" in responses, (method, path)
                ok_schemas[f"{method.upper()} {path}"] = {
                    kind: body.get("schema", {}).get("$ref", "").rsplit("/", 1)[-1]
                    for kind, body in responses["200"]["content"].items()}
    assert "HTTPValidationError" not in schemas
    assert ok_schemas["POST /v1/files"] == {"application/json": "FileObject"}
    assert ok_schemas["GET /v1/files"] == {"application/json": "FileList"}
    assert ok_schemas["DELETE /v1/files/{file_id}"] == {"application/json": "FileDeleted"}
    assert ok_schemas["GET /v1/files/{file_id}/content"] == {"application/octet-stream": ""}
    assert ok_schemas["POST /v1/fine_tuning/jobs"] == {"application/json": "FineTuningJob"}
    assert ok_schemas["GET /v1/fine_tuning/jobs"] == {"application/json": "FineTuningJobList"}
    assert ok_schemas["GET /v1/fine_tuning/jobs/{job_id}/events"] == {"application/json": "FineTuningJobEventList"}
    assert ok_schemas["GET /v1/fine_tuning/jobs/{job_id}/checkpoints"] == \
        {"application/json": "FineTuningJobCheckpointList"}
    assert ok_schemas["POST /v1/chat/completions"] == {"application/json": "ChatCompletion", "text/event-stream": ""}
    assert ok_schemas["GET /v1/models"] == {"application/json": "ModelList"}
    assert ok_schemas["GET /v1/models/{model_id}"] == {"application/json": "Model"}
    for name in ("FineTuningJob", "FileObject", "FineTuningJobEvent", "FineTuningJobCheckpoint", "ChatCompletion"):
        assert schemas[name]["properties"]["object"]["const"] in (
            "fine_tuning.job", "file", "fine_tuning.job.event", "fine_tuning.job.checkpoint", "chat.completion")
    assert set(schemas["FineTuningJob"]["properties"]["status"]["enum"]) >= {
        "validating_files", "queued", "running", "succeeded", "failed", "cancelled"}
    assert set(schemas["ErrorDetail"]["properties"]) == {"message", "type", "param", "code", "params"}  # params: when the code has values


def test_openapi_declares_what_the_guard_and_handlers_answer_everywhere(client):
    """Issue 16 item 10 / the fuzz suite: the document listed neither the 401 of a configured key nor
    the 413 of the body limits nor the 404 of an unknown id on most routes, and described each SSE
    stream as one string (schemathesis reads a 3.1 stream schema as one event's)."""
    spec = client.get("/openapi.json").json()
    streams = []
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            responses = op["responses"]
            if path.startswith(("/v1/", "/studio/")):
                assert "401" in responses, (method, path)
            if "requestBody" in op:
                assert {"400", "413"} <= set(responses), (method, path)
            if any(p["in"] == "path" and p["name"].endswith("_id") for p in op.get("parameters", [])):
                assert "404" in responses, (method, path)
            for response in responses.values():
                stream = response.get("content", {}).get("text/event-stream")
                if stream:
                    streams.append(f"{method.upper()} {path}")
                    assert stream["schema"]["allOf"] == [{"$ref": "#/components/schemas/ServerSentEvent"}]
    assert {"POST /v1/chat/completions", "GET /studio/jobs/{job_id}/stream"} <= set(streams)
    event = spec["components"]["schemas"]["ServerSentEvent"]
    assert event["type"] == "object" and set(event["properties"]) == {"data", "event", "id", "retry"}
    # What the document says is what the server does.
    assert_openai_error(client.get("/v1/fine_tuning/jobs/ftjob-nope/checkpoints"), 404, "job_not_found")
    assert_openai_error(client.post("/studio/recommend", content=b"x" * (17 * 1024 * 1024),
                                    headers={"Content-Type": "application/json"}), 413, "request_too_large")


def test_list_and_model_objects_keep_their_optional_keys_out(client):
    """Response models do not add keys: an empty list has no first_id/last_id; a base model no parent."""
    empty = client.get("/v1/files").json()
    assert empty == {"object": "list", "data": [], "has_more": False}
    base = client.get("/v1/models/tiny-random").json()
    assert set(base) == {"id", "object", "created", "owned_by", "kind"}
    fid = upload(client).json()["id"]
    listed = client.get("/v1/files").json()
    assert listed["first_id"] == listed["last_id"] == fid


def test_serves_the_web_ui_when_present(tmp_path):
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("<html>studio page</html>")
    with TestClient(create_app(make_settings(tmp_path, web_dir=web))) as c:
        assert "studio page" in c.get("/").text
        assert_openai_error(c.get("/v1/nothing"), 404)


# --- crash safety ------------------------------------------------------------------------------
def test_running_job_resumes_after_a_crash(tmp_path, monkeypatch):
    """A job left `running` (server SIGKILLed) is re-queued and resumed with --resume on restart."""
    monkeypatch.setenv("FAKE_STEPS", "1000")
    monkeypatch.setenv("FAKE_STEP_S", "0.02")
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings)) as c:
        fid, job, _ = start_long_job(c, "/v1/fine_tuning/jobs/{id}/checkpoints")
        # Simulate the crash: the worker vanishes without a word (no graceful stop).
        c.app.state.worker._stop.set()
        c.app.state.worker._thread.join(timeout=60)  # a hang here once held a suite run for 8+ min
        assert not c.app.state.worker._thread.is_alive(), "the worker loop did not stop within 60 s"
        c.app.state.worker.trainers.running.clear()
        c.app.state.settings.start_worker = False  # lifespan exit must not stop anything
    assert settings.start_worker is False
    monkeypatch.setenv("FAKE_STEPS", "30")
    with TestClient(create_app(make_settings(tmp_path))) as c:
        done = wait_status(c, job["id"], ("succeeded", "failed"), timeout=60)
        assert done["status"] == "succeeded", done
        events = c.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
        messages = [e["message"] for e in events]
        assert any("server restarted" in m and "resume" in m for m in messages), messages
        assert any(m.startswith("Training resumed from the checkpoint") for m in messages)
        argv = (Path(c.app.state.store.get_job(job["id"])["job_dir"]) / "argv.log").read_text().splitlines()
        assert "--resume" not in json.loads(argv[0]) and "--resume" in json.loads(argv[-1])
        assert c.get(f"/v1/files/{fid}").status_code == 200


def test_graceful_shutdown_requeues_and_the_next_start_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEPS", "1000")
    monkeypatch.setenv("FAKE_STEP_S", "0.02")
    with TestClient(create_app(make_settings(tmp_path))) as c:
        _, job, pid = start_long_job(c, "/v1/fine_tuning/jobs/{id}/checkpoints")
    # Leaving the client ran the lifespan shutdown: the trainer got SIGTERM and checkpointed.
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    monkeypatch.setenv("FAKE_STEPS", "20")
    with TestClient(create_app(make_settings(tmp_path))) as c:
        assert wait_status(c, job["id"], ("succeeded", "failed"))["status"] == "succeeded"
        messages = [e["message"] for e in c.get(f"/v1/fine_tuning/jobs/{job['id']}/events",
                                                  params={"limit": 1000}).json()["data"]]
        assert any("shutting down" in m for m in messages)
        assert any(m.startswith("Resuming training from the checkpoint") for m in messages)


def test_sse_stream_follows_a_running_job(client, monkeypatch):
    monkeypatch.setenv("FAKE_STEPS", "8")
    monkeypatch.setenv("FAKE_STEP_S", "0.1")
    fid = upload(client).json()["id"]
    job = client.post("/v1/fine_tuning/jobs", json={"model": "tiny-random", "training_file": fid}).json()
    seen = []
    with client.stream("GET", f"/studio/jobs/{job['id']}/stream") as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
    statuses = [e["status"] for e in seen if e["type"] == "status"]
    # The first status is whatever the job had when the stream opened; running lasts ~0.8 s.
    assert statuses[-1] == "succeeded" and "running" in statuses, statuses
    assert [e["step"] for e in seen if e["type"] == "metrics"] == list(range(1, 9))
    assert any(e["type"] == "checkpoint" for e in seen)
    # A reconnect with Last-Event-ID gets only what came after.
    last_seq = client.app.state.store.events_since(job["id"], 0)[-2]["seq"]
    with client.stream("GET", f"/studio/jobs/{job['id']}/stream", headers={"Last-Event-ID": str(last_seq)}) as resp:
        tail = [json.loads(ln[6:]) for ln in resp.iter_lines() if ln.startswith("data: ")]
    assert len([e for e in tail if e["type"] != "status"]) == 1, tail


def test_a_file_in_use_cannot_be_deleted(client, monkeypatch):
    monkeypatch.setenv("FAKE_STEPS", "1000")
    fid = upload(client).json()["id"]
    job = client.post("/v1/fine_tuning/jobs", json={"model": "tiny-random", "training_file": fid}).json()
    assert_openai_error(client.delete(f"/v1/files/{fid}"), 409, "file_in_use", "file_id")
    client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    assert client.delete(f"/v1/files/{fid}").json()["deleted"] is True


def test_cancel_a_queued_job_never_starts_it(client, monkeypatch):
    monkeypatch.setenv("FAKE_STEPS", "1000")
    fid = upload(client).json()["id"]
    first = client.post("/v1/fine_tuning/jobs", json={"model": "tiny-random", "training_file": fid}).json()
    second = client.post("/v1/fine_tuning/jobs", json={"model": "tiny-random", "training_file": fid}).json()
    wait_status(client, first["id"], ("running",))
    wait_status(client, second["id"], ("queued",))
    assert client.post(f"/v1/fine_tuning/jobs/{second['id']}/cancel").json()["status"] == "cancelled"
    client.post(f"/v1/fine_tuning/jobs/{first['id']}/cancel")
    time.sleep(1.0)
    job_dir = Path(client.app.state.store.get_job(second["id"])["job_dir"])
    assert not (job_dir / "argv.log").exists()  # the trainer never ran for it
    assert client.get(f"/v1/fine_tuning/jobs/{second['id']}").json()["status"] == "cancelled"


class _HeldEngine(FakeEngine):
    """Generates "slow" only once the test lets it (or after 30 s): while it waits, the server must still answer."""

    generating = release = expired = None

    def complete(self, messages, *args, **kw):
        if messages[-1]["content"] == "slow":
            self.generating.set()
            if not self.release.wait(30.0):
                self.expired.set()
        return super().complete(messages, *args, **kw)


def test_generation_does_not_block_the_server(tmp_path):
    import threading

    _HeldEngine.generating, _HeldEngine.release, _HeldEngine.expired = (threading.Event(), threading.Event(),
                                                                        threading.Event())
    with TestClient(create_app(make_settings(tmp_path, engine_factory=_HeldEngine))) as c:
        c.post("/v1/chat/completions", json={"model": "tiny-random", "messages": [{"role": "user", "content": "warm"}]})
        result = {}
        worker = threading.Thread(target=lambda: result.setdefault("r", c.post("/v1/chat/completions", json={
            "model": "tiny-random", "messages": [{"role": "user", "content": "slow"}]})))
        worker.start()
        assert _HeldEngine.generating.wait(30.0)  # the slow request is now generating, and waits for us
        health, models = c.get("/health"), c.get("/v1/models")
        answered_while_generating = not _HeldEngine.expired.is_set()  # a blocked server answers after the 30 s wait
        _HeldEngine.release.set()
        worker.join()
        assert health.status_code == 200 and models.status_code == 200
        assert answered_while_generating
        assert result["r"].json()["choices"][0]["message"]["content"] == "tiny-random|base: slow"


def test_stop_sequences_plain_and_streamed(client):
    msg = [{"role": "user", "content": "one two three"}]
    plain = client.post("/v1/chat/completions", json={"model": "tiny-random", "messages": msg, "stop": [" tw", "zz"]})
    choice = plain.json()["choices"][0]
    assert choice["message"]["content"] == "tiny-random|base: one" and choice["finish_reason"] == "stop"
    with client.stream("POST", "/v1/chat/completions", json={"model": "tiny-random", "messages": msg,
                                                             "stream": True, "stop": "o thr"}) as resp:
        chunks = [json.loads(ln[6:]) for ln in resp.iter_lines() if ln.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "tiny-random|base: one tw" and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert_openai_error(client.post("/v1/chat/completions", json={"model": "tiny-random", "messages": msg,
                                                                  "stop": ["a", "b", "c", "d", "e"]}), 400,
                        "invalid_value", "stop")


def test_a_request_chooses_whether_the_tuned_model_reads_its_rows(client):
    """`knowledge` (the SDK's extra_body) reaches the engine for this request only, plain and streamed; left out,
    the engine's own choice; anything but a boolean is a 400 naming the field."""
    openai = pytest.importorskip("openai")
    msg = [{"role": "user", "content": "q"}]
    plain = client.post("/v1/chat/completions", json={"model": "tiny-random", "messages": msg, "knowledge": False})
    assert plain.json()["choices"][0]["message"]["content"] == "tiny-random|base: q [knowledge=False]"
    default = client.post("/v1/chat/completions", json={"model": "tiny-random", "messages": msg})
    assert default.json()["choices"][0]["message"]["content"] == "tiny-random|base: q"
    with client.stream("POST", "/v1/chat/completions", json={"model": "tiny-random", "messages": msg,
                                                             "stream": True, "knowledge": True}) as resp:
        chunks = [json.loads(ln[6:]) for ln in resp.iter_lines() if ln.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks).strip() == \
        "tiny-random|base: q [knowledge=True]"
    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)
    answer = sdk.chat.completions.create(model="tiny-random", messages=msg, extra_body={"knowledge": False})
    assert answer.choices[0].message.content == "tiny-random|base: q [knowledge=False]"
    bad = client.post("/v1/chat/completions", json={"model": "tiny-random", "messages": msg, "knowledge": "maybe"})
    assert bad.status_code == 400 and "knowledge" in bad.text


def test_pause_and_resume_with_the_sdk(client, monkeypatch):
    """The SDK's pause/resume verbs: the trainer checkpoints, the device is freed, resume continues."""
    openai = pytest.importorskip("openai")
    monkeypatch.setenv("FAKE_STEPS", "1000")
    monkeypatch.setenv("FAKE_STEP_S", "0.02")
    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)
    fid = sdk.files.create(file=("seed.jsonl", seed_jsonl()), purpose="fine-tune").id
    job = sdk.fine_tuning.jobs.create(model="tiny-random", training_file=fid)
    wait_status(client, job.id, ("running",))
    wait_until(lambda: sdk.fine_tuning.jobs.checkpoints.list(job.id).data, "a checkpoint")
    pid = client.app.state.store.get_job(job.id)["pid"]
    assert sdk.fine_tuning.jobs.pause(job.id).status == "paused"
    wait_until(lambda: any(e.message.startswith("Training paused") for e in sdk.fine_tuning.jobs.list_events(job.id).data),
               "the 'Training paused' event")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert sdk.fine_tuning.jobs.retrieve(job.id).status == "paused"
    monkeypatch.setenv("FAKE_STEPS", "30")
    assert sdk.fine_tuning.jobs.resume(job.id).status == "queued"
    done = wait_status(client, job.id, ("succeeded", "failed"))
    assert done["status"] == "succeeded"
    argv = (Path(client.app.state.store.get_job(job.id)["job_dir"]) / "argv.log").read_text().splitlines()
    assert "--resume" in json.loads(argv[-1])
    with pytest.raises(openai.ConflictError):
        sdk.fine_tuning.jobs.resume(job.id)
    with pytest.raises(openai.ConflictError):
        sdk.fine_tuning.jobs.pause(job.id)
    with pytest.raises(openai.NotFoundError):
        sdk.fine_tuning.jobs.pause("ftjob-nope")


def test_oversized_json_bodies_are_refused(client):
    from lorastudio.serve.app import MAX_JSON_BYTES

    big = b'{"model": "tiny-random", "messages": [{"role": "user", "content": "' + b"x" * MAX_JSON_BYTES + b'"}]}'
    assert_openai_error(client.post("/v1/chat/completions", content=big, headers={"content-type": "application/json"}),
                        413, "request_too_large")
    assert_openai_error(client.post("/v1/chat/completions", content=iter([big]),
                                    headers={"content-type": "application/json"}), 413, "request_too_large")


def test_one_trainer_per_device_slot(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEPS", "10")
    monkeypatch.setenv("FAKE_STEP_S", "0.1")
    with TestClient(create_app(make_settings(tmp_path, devices=["0", "1"]))) as c:
        fid = upload(c).json()["id"]
        ids = [c.post("/v1/fine_tuning/jobs", json={"model": "tiny-random", "training_file": fid}).json()["id"]
               for _ in range(3)]
        most = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            most = max(most, len(c.app.state.store.jobs_with_status("running")))
            statuses = [c.get(f"/v1/fine_tuning/jobs/{i}").json()["status"] for i in ids]
            if all(s == "succeeded" for s in statuses):
                break
            time.sleep(0.02)
        assert all(s == "succeeded" for s in statuses), statuses
        assert most == 2  # two devices, two trainers at once, the third waits
        devices = [(Path(c.app.state.store.get_job(i)["job_dir"]) / "device.log").read_text().split()[0] for i in ids]
        assert sorted(devices[:2]) == ["0", "1"] and devices[2] in ("0", "1")


def test_a_job_asking_for_two_gpus_holds_two_slots(tmp_path, monkeypatch):
    """`hyperparameters.gpus = 2`: the worker reserves two GPU slots (one trainer, both GPUs visible; the
    trainer relaunches itself under torchrun); a job queued behind it waits; more GPUs than listed fail."""
    monkeypatch.setenv("FAKE_STEPS", "8")
    monkeypatch.setenv("FAKE_STEP_S", "0.05")
    with TestClient(create_app(make_settings(tmp_path, devices=["0", "1"]))) as c:
        fid = upload(c).json()["id"]
        create = lambda hp: c.post("/v1/fine_tuning/jobs", json={"model": "tiny-random", "training_file": fid,  # noqa: E731
                                                              "hyperparameters": hp}).json()["id"]
        ids = [create({"gpus": 2}), create({}), create({"gpus": 3})]
        most = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            most = max(most, len(c.app.state.store.jobs_with_status("running")))
            statuses = [c.get(f"/v1/fine_tuning/jobs/{i}").json()["status"] for i in ids]
            if statuses[:2] == ["succeeded", "succeeded"] and statuses[2] == "failed":
                break
            time.sleep(0.02)
        assert statuses == ["succeeded", "succeeded", "failed"], statuses
        assert most == 1  # the 2-GPU job held both slots; the other waited
        dirs = [Path(c.app.state.store.get_job(i)["job_dir"]) for i in ids[:2]]
        assert (dirs[0] / "device.log").read_text().split() == ["0,1"]
        assert (dirs[1] / "device.log").read_text().split()[0] in ("0", "1")
        assert yaml.safe_load((dirs[0] / "job.yaml").read_text())["gpus"] == 2
        error = c.get(f"/v1/fine_tuning/jobs/{ids[2]}").json()["error"]
        assert error["code"] == "invalid_hyperparameters" and "gpus=3" in error["message"]


def test_uploads_in_other_formats_are_validated(client):
    import openpyxl

    csv = "问题,答案\n工单多久升级？,48小时\n怎么退款？,在订单页申请\n".encode("gbk")
    fid = upload(client, csv, name="faq.csv").json()["id"]
    report = client.get(f"/studio/files/{fid}/report").json()
    assert report["rows_ok"] == 2 and report["format"] == "csv" and report["file"] == "faq.csv"
    book = openpyxl.Workbook()
    book.active.append(["question", "answer"])
    book.active.append(["How long until escalation?", "48 hours"])
    buf = BytesIO()
    book.save(buf)
    fid = upload(client, buf.getvalue(), name="faq.xlsx").json()["id"]
    assert client.app.state.store.get_file(fid)["path"].endswith(".xlsx")
    report = client.get(f"/studio/files/{fid}/report").json()
    assert report["rows_ok"] == 1 and report["format"] == "xlsx"


def test_lists_page_to_the_end_and_unknown_cursors_are_refused(client):
    """Issue 16: `has_more` was always false for files (the SDK's auto-paging stopped at page 1) and an
    unknown `after` silently returned page 1."""
    ids = [upload(client, name=f"f{i}.jsonl").json()["id"] for i in range(5)]
    seen, after = [], None
    for _ in range(10):
        page = client.get("/v1/files", params={"limit": 2, **({"after": after} if after else {})}).json()
        seen += [f["id"] for f in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert sorted(seen) == sorted(ids) and len(seen) == 5
    assert_openai_error(client.get("/v1/files", params={"after": "file-nope"}), 400, "invalid_cursor", "after")
    assert_openai_error(client.get("/v1/fine_tuning/jobs", params={"after": "ftjob-nope"}), 400,
                        "invalid_cursor", "after")
    job = client.post("/v1/fine_tuning/jobs", json={"model": "tiny-random", "training_file": ids[0]}).json()
    for kind in ("events", "checkpoints"):
        assert_openai_error(client.get(f"/v1/fine_tuning/jobs/{job['id']}/{kind}", params={"after": "x-nope"}),
                            400, "invalid_cursor", "after")


@pytest.mark.parametrize("body, param", [
    ({"hyperparameters": {"n_epochs": 1e9}}, "hyperparameters.n_epochs"),         # held the only slot, memory grew
    ({"hyperparameters": {"learning_rate_multiplier": 1000}}, "hyperparameters.learning_rate_multiplier"),
    ({"hyperparameters": {"batch_size": 10**6}}, "hyperparameters.batch_size"),
    ({"hyperparameters": {"max_steps": 10**12}}, "hyperparameters.max_steps"),
    ({"seed": 2**64}, "seed"),                                                     # was a 500 + an orphan job dir
])
def test_out_of_range_job_settings_are_400_naming_the_parameter(client, body, param):
    fid = upload(client).json()["id"]
    resp = client.post("/v1/fine_tuning/jobs", json={"model": "tiny-random", "training_file": fid, **body})
    assert_openai_error(resp, 400, "invalid_value", param)
    assert client.get("/v1/fine_tuning/jobs").json()["data"] == []
    assert list(client.app.state.settings.jobs_dir.iterdir()) == []  # no orphan job directory either


def test_non_finite_json_numbers_are_refused_at_create(client):
    fid = upload(client).json()["id"]
    for literal in ("Infinity", "NaN", "1e309"):
        raw = f'{{"model": "tiny-random", "training_file": "{fid}", "hyperparameters": {{"n_epochs": {literal}}}}}'
        resp = client.post("/v1/fine_tuning/jobs", content=raw, headers={"Content-Type": "application/json"})
        assert resp.status_code == 400, (literal, resp.text)


def test_chat_bad_seed_and_content_parts_are_400_not_500(client):
    messages = [{"role": "user", "content": "hi"}]
    assert_openai_error(client.post("/v1/chat/completions", json={"model": "tiny-random", "messages": messages,
                                                                  "seed": 2**64}), 400, "invalid_value", "seed")
    parts = [{"role": "user", "content": [{"type": "text", "text": 5}]}]
    assert_openai_error(client.post("/v1/chat/completions", json={"model": "tiny-random", "messages": parts}),
                        400, "invalid_value", "messages")


def test_a_base_that_cannot_train_here_is_refused_at_create(client, monkeypatch):
    """A 7B base on a CPU-only server is a 400 model_unavailable naming why, before any job exists
    (issue 15 #7 for API users); a base that can run is accepted."""
    from lorastudio.models import availability

    monkeypatch.setattr(availability, "has_gpu", lambda: False)
    monkeypatch.setattr(availability, "hub_cached", lambda hub_id: True)  # downloaded: only the GPU is missing
    fid = upload(client).json()["id"]
    jobs_before = client.get("/v1/fine_tuning/jobs").json()["data"]
    r = client.post("/v1/fine_tuning/jobs", json={"model": "Qwen/Qwen2.5-7B-Instruct", "training_file": fid})
    assert_openai_error(r, 400, "model_unavailable", "model")
    assert "GPU" in r.json()["error"]["message"]
    assert client.get("/v1/fine_tuning/jobs").json()["data"] == jobs_before
    assert client.post("/v1/fine_tuning/jobs", json={"model": "tiny-random", "training_file": fid}).status_code == 200
