"""The playground's routes with the real ChatEngine on a tiny random Qwen2 (built from a config, never
downloaded) and real LoRA adapters placed in finished (fake-trained) jobs: streamed pieces and
timings, two adapters side by side, the question set, the forgetting check, and the event loop staying
free while the engine generates."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("peft")
from fastapi.testclient import TestClient  # noqa: E402
from inference_fixtures import build_adapter, build_tiny_model  # noqa: E402

from lorastudio.serve import create_app  # noqa: E402
from tests.test_serve_api import make_settings, upload, wait_status  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("pg-real")
    base = build_tiny_model(root / "base")
    return {"root": root, "base": base, "adapters": [build_adapter(base, root / f"adapter_{i}", seed=i) for i in (1, 2)]}


@pytest.fixture
def client(tiny, tmp_path, monkeypatch):
    import torch

    from lorastudio.inference import ChatEngine

    # One torch thread: on a loaded 2-core CPU, batched generation of this tiny model with 2 threads
    # took 25-32 s per batch of 8 (spinning threads) against 1.3-1.6 s with one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    monkeypatch.setenv("FAKE_STEPS", "2")
    monkeypatch.setenv("FAKE_STEP_S", "0.01")
    # Every base name is served by the tiny model (the catalog's ids are what a client names).
    factory = lambda _base: ChatEngine(str(tiny["base"]), max_adapters=2, engine="transformers")  # noqa: E731
    try:
        with TestClient(create_app(make_settings(tmp_path, engine_factory=factory))) as c:
            yield c
    finally:
        torch.set_num_threads(threads)


def finished_job_with(c: TestClient, adapter: Path) -> dict:
    """A job finished by the fake trainer, whose directory then holds a real adapter."""
    fid = upload(c).json()["id"]
    job = c.post("/v1/fine_tuning/jobs", json={"model": "tiny-random", "training_file": fid}).json()
    job = wait_status(c, job["id"], ("succeeded",))
    job_dir = Path(c.app.state.store.get_job(job["id"])["job_dir"])
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(adapter / name, job_dir / name)
    return job


def sse(response) -> list[dict]:
    assert response.status_code == 200, response.text
    return [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]


def test_two_real_adapters_stream_side_by_side(client, tiny):
    one, two = (finished_job_with(client, a) for a in tiny["adapters"])
    rows = [{"question": "工单多久没处理会升级？", "answer": "超过48小时未处理自动升级到护航组。"},
            {"question": "观星3.2卖多少钱？", "answer": "售价299元。"}]
    (Path(client.app.state.store.get_job(one["id"])["job_dir"]) / "knowledge.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    events = sse(client.post("/studio/playground/stream", json={
        "a": {"model": one["fine_tuned_model"]}, "b": {"model": two["fine_tuned_model"]},
        "question": "工单超过48小时未处理会怎样？", "max_tokens": 24}))
    assert [e["type"] for e in events if e["type"] != "delta"] == ["start", "done", "start", "done", "end"], events
    done = {e["side"]: e for e in events if e["type"] == "done"}
    for side in "ab":
        pieces = [e["delta"] for e in events if e["type"] == "delta" and e["side"] == side]
        assert "".join(pieces) == done[side]["text"]
        assert 1 <= done[side]["tokens"] <= 24 and done[side]["first_token_s"] <= done[side]["total_s"]
        if done[side]["tokens"] > 1:
            assert done[side]["tokens_per_s"] > 0
    assert done["a"]["text"] != done["b"]["text"]  # two different adapters, greedy
    # what each side read beside the question: the closest of its own rows (only rows sharing words), none without
    assert done["a"]["rows"] == rows[:1] and done["b"]["rows"] == []
    # the base alone, greedy twice: the same answer; with a system prompt: the prompt reaches the model
    ask = {"question": "Hello world, how are you today?", "max_tokens": 16}
    plain = [sse(client.post("/studio/playground/stream", json={"a": {"model": "tiny-random"}, **ask}))[-2]
             for _ in range(2)]
    assert plain[0]["text"] == plain[1]["text"] and plain[0]["rows"] == []


def test_question_set_and_forgetting_check_with_real_generation(client, tiny):
    job = finished_job_with(client, tiny["adapters"][0])
    events = sse(client.post("/studio/playground/set", json={
        "a": {"model": "tiny-random"}, "b": {"model": job["fine_tuned_model"]}, "max_tokens": 8,
        "questions": [{"question": "栈台当前版本是多少？", "must_contain": "V5.3"}, "Hello?"]}))
    rows = [e for e in events if e["type"] == "row"]
    assert len(rows) == 4 and all(isinstance(r["answer"], str) for r in rows)
    assert [r["pass"] is None for r in rows] == [False, False, True, True]
    summary = events[-1]
    assert summary["type"] == "summary" and sum(summary["counts"].values()) == 1
    started = time.monotonic()
    result = sse(client.post(f"/studio/jobs/{job['id']}/forgetting"))[-1]
    seconds = time.monotonic() - started
    assert result["type"] == "result" and result["questions"] == len(result["rows"]) == 24
    assert all(isinstance(r["base_answer"], str) and isinstance(r["tuned_answer"], str) for r in result["rows"])
    assert result["kept"] + result["lost"] + result["gained"] + result["wrong"] == 24
    assert result["base_right"] == result["kept"] + result["lost"]
    cached = client.get(f"/studio/jobs/{job['id']}/forgetting").json()
    assert cached["status"] == "done" and cached["rows"] == result["rows"]
    print(f"forgetting check, tiny model, 48 answers of <= 64 tokens: {seconds:.1f} s")


def test_the_event_loop_stays_free_while_the_engine_generates(client):
    client.get("/health")
    done = threading.Event()

    def long_stream():
        # long enough to overlap the probes below: a fast CPU (an AVX-512 Zen 5) wrote 400 tokens in under 0.5 s
        sse(client.post("/studio/playground/stream", json={"a": {"model": "tiny-random"}, "b": {"model": "tiny-random"},
                                                           "question": "Tell me a long story.", "max_tokens": 2000}))
        done.set()

    worker = threading.Thread(target=long_stream)
    worker.start()
    time.sleep(0.2)
    latencies = []
    while not done.is_set() and len(latencies) < 5:
        started = time.monotonic()
        assert client.get("/health").status_code == 200
        latencies.append(time.monotonic() - started)
        time.sleep(0.1)
    worker.join(120)
    assert done.is_set()
    assert latencies and max(latencies) < 1.0, latencies
