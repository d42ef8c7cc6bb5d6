"""The studio's GGUF download and its export fidelity check (issue 14's gate, shown by the page): the
time said before the build, the check's numbers after it, a failed check (damaged weights, as in
tests/test_export_fidelity.py) reported as failed while the file stays downloadable; no server path.
A tiny random Qwen2 with a real adapter stands in the job's directory (the fake trainer writes none)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from inference_fixtures import build_adapter, build_tiny_model  # noqa: E402

from lorastudio import export, llamacpp  # noqa: E402
from lorastudio.serve import create_app  # noqa: E402
from lorastudio.serve.studio_export import CPU_SECONDS_PER_BILLION, estimate_seconds  # noqa: E402
from tests.test_serve_api import make_settings  # noqa: E402
from tests.test_studio_api import finished_job  # noqa: E402

needs_llama = pytest.mark.skipif(not llamacpp.available(), reason="llama-cpp-python is not installed")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf-check")
    base = build_tiny_model(root / "base")
    return build_adapter(base, root / "adapter", seed=1)


@pytest.fixture
def client(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEPS", "3")
    monkeypatch.setenv("FAKE_STEP_S", "0.02")
    with TestClient(create_app(make_settings(tmp_path))) as c:
        yield c


def job_with_tiny_adapter(c: TestClient, adapter: Path) -> tuple[dict, Path]:
    job = finished_job(c)
    assert job["status"] == "succeeded"
    job_dir = Path(c.app.state.store.get_job(job["id"])["job_dir"])
    for f in adapter.iterdir():
        if f.is_file():
            shutil.copy2(f, job_dir / f.name)
    return job, job_dir


def no_server_path(body: dict, job_dir: Path) -> None:
    text = json.dumps(body, ensure_ascii=False)
    assert str(job_dir) not in text and str(job_dir.parent.parent) not in text, text


def test_estimate_scales_with_the_base_and_is_unknown_on_a_gpu():
    assert estimate_seconds({"model": "default"}, gpu=False) == round(CPU_SECONDS_PER_BILLION * 0.49)
    assert estimate_seconds({"model": "tiny-random"}, gpu=False) == 30  # the floor
    assert estimate_seconds({"model": "default"}, gpu=True) is None
    assert estimate_seconds({"model": "nobody/unknown"}, gpu=False) is None


def test_check_before_a_job_finishes_or_for_an_unknown_job(client):
    assert client.get("/studio/jobs/ftjob-nope/gguf-check").status_code == 404
    zh = client.get("/studio/jobs/ftjob-nope/gguf-check", headers={"Accept-Language": "zh-CN"})
    assert zh.json()["error"]["code"] == "job_not_found" and "找不到" in zh.json()["error"]["message"]


@needs_llama
def test_gguf_build_reports_the_check_and_the_file_carries_it(client, tiny):
    job, job_dir = job_with_tiny_adapter(client, tiny)
    before = client.get(f"/studio/jobs/{job['id']}/gguf-check").json()
    assert before == {"job_id": job["id"], "estimate_s": 30, "status": "none"}
    built = client.post(f"/studio/jobs/{job['id']}/gguf-check")
    assert built.status_code == 200, built.text
    state = built.json()
    assert state["status"] == "passed", state
    assert state["type"] == "f16" and state["total"] == 5 and state["required"] == 4
    assert state["agreeing"] >= 4 and state["problems"] == [] and len(state["questions"]) == 5
    assert state["seconds"] > 0 and state["tokens"] == 16
    no_server_path(state, job_dir)
    assert (job_dir / "exports" / "model.fidelity.json").is_file()
    assert client.get(f"/studio/jobs/{job['id']}/gguf-check").json() == state  # read back, not re-run
    got = client.get(f"/studio/jobs/{job['id']}/download/gguf")
    assert got.status_code == 200 and got.content[:4] == b"GGUF"
    assert got.headers["x-lorastudio-fidelity"] == "passed"


@needs_llama
def test_a_failed_check_is_reported_and_the_file_still_downloads(client, tiny, monkeypatch):
    import torch

    real = export.write_gguf

    def damaged(model, tokenizer, path, dtype="f16", name="model"):
        with torch.no_grad():  # a bad merge: the MLP outputs are wrong
            for n, p in model.named_parameters():
                if "down_proj" in n:
                    p.mul_(-3.0)
        real(model, tokenizer, path, dtype, name)

    monkeypatch.setattr(export, "write_gguf", damaged)
    job, job_dir = job_with_tiny_adapter(client, tiny)
    state = client.post(f"/studio/jobs/{job['id']}/gguf-check").json()
    assert state["status"] == "failed", state
    assert state["agreeing"] < state["required"] and state["problems"]
    assert any(not q["identical"] for q in state["questions"])
    no_server_path(state, job_dir)
    got = client.get(f"/studio/jobs/{job['id']}/download/gguf")
    assert got.status_code == 200 and got.headers["x-lorastudio-fidelity"] == "failed"


def test_without_llamacpp_the_check_says_skipped(client, tiny, monkeypatch):
    monkeypatch.setattr(llamacpp, "available", lambda: False)
    job, _ = job_with_tiny_adapter(client, tiny)
    state = client.post(f"/studio/jobs/{job['id']}/gguf-check").json()
    assert state["status"] == "skipped", state
