"""The done-when flows of issue 5, against a live `lorastudio serve` subprocess on loopback, driven by
the official `openai` SDK, training tiny-random with the real `lorastudio train`."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parent.parent
SEED_ROWS = [{"instruction": f"云栈工单 {i} 超时多久升级？", "response": f"超过 {i + 2} 小时未处理自动升级到二线支持。"}
             for i in range(16)]
# Short runs: the suite must stay fast on a shared 2-core CPU.
NO_EXTRAS = {"augment_paraphrases": 0, "replay_rows": 0, "max_length": 128, "batch_tokens": 256,
             "dtype": "fp32"}
QUICK = {"n_epochs": 1, "max_steps": 4, "save_every": 2, "lora_r": 4, **NO_EXTRAS}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, data_dir: Path, *args: str) -> None:
        self.data_dir = data_dir
        self.port = _free_port()
        self.log = (data_dir.parent / f"server-{self.port}.log").open("wb")
        # Own process group: the crash test SIGKILLs the whole group, as an OOM killer or `kill -9 -PGID` would.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lorastudio", "serve", "--port", str(self.port), "--data-dir", str(data_dir),
             "--log-level", "warning", *args],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.logs()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            raise AssertionError("server did not start: " + self.logs())

    def logs(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-3000:]

    def client(self, key: str = "unused") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=120)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()

    def kill_group(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.log.close()


@pytest.fixture
def seed_file(tmp_path) -> Path:
    path = tmp_path / "seed.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in SEED_ROWS) + "\n", encoding="utf-8")
    return path


def wait_job(client: openai.OpenAI, job_id: str, statuses: tuple[str, ...], timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {job.status}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie still answers kill(0)
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _job_pid(data_dir: Path, job_id: str) -> int | None:
    import sqlite3

    db = sqlite3.connect(data_dir / "studio.sqlite3")
    try:
        return db.execute("SELECT pid FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
    finally:
        db.close()


def test_openai_sdk_full_flow(tmp_path, seed_file):
    server = Server(tmp_path / "data")
    try:
        client = server.client()
        uploaded = client.files.create(file=seed_file.open("rb"), purpose="fine-tune")
        assert uploaded.filename == "seed.jsonl" and uploaded.bytes == seed_file.stat().st_size
        job = client.fine_tuning.jobs.create(model="tiny-random", training_file=uploaded.id, suffix="yunzhan",
                                             hyperparameters=QUICK)
        assert job.status == "validating_files"
        job = wait_job(client, job.id, ("succeeded", "failed", "cancelled"))
        assert job.status == "succeeded", (job.error, server.logs())
        assert job.fine_tuned_model == f"ft:tiny-random:yunzhan:{job.id}"
        assert job.finished_at and job.trained_tokens

        events = client.fine_tuning.jobs.list_events(job.id, limit=200).data
        metrics = [e for e in events if e.type == "metrics" and "train_loss" in (e.data or {})]
        assert metrics and {"step", "train_loss", "tokens_per_s", "eta_s"} <= set(metrics[0].data)
        assert any(e.type == "message" and "successfully completed" in e.message for e in events)
        (done,) = [e for e in events if e.message == "Training finished; adapter saved"]
        assert job.trained_tokens == done.data["trained_tokens"] > 0
        checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
        assert checkpoints and checkpoints[0].fine_tuned_model_checkpoint.startswith(job.fine_tuned_model)
        assert sorted(c.step_number for c in checkpoints)[0] == 2

        assert job.fine_tuned_model in [m.id for m in client.models.list().data]
        reply = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=8,
                                               messages=[{"role": "user", "content": "云栈工单超时多久升级？"}])
        assert reply.choices[0].message.role == "assistant" and reply.usage.completion_tokens >= 1
        pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model=job.fine_tuned_model, max_tokens=8, stream=True,
            messages=[{"role": "user", "content": "云栈工单超时多久升级？"}]) if c.choices]
        # Greedy decoding: the stream spells the same answer as the plain call.
        assert "".join(pieces) == reply.choices[0].message.content

        adapter_zip = httpx.get(f"{server.url}/studio/jobs/{job.id}/download/adapter", timeout=120)
        assert adapter_zip.status_code == 200
        names = zipfile.ZipFile(io.BytesIO(adapter_zip.content)).namelist()
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(names)
        gguf = httpx.get(f"{server.url}/studio/jobs/{job.id}/download/gguf", timeout=300)
        assert gguf.status_code == 200, gguf.text
        assert gguf.content[:4] == b"GGUF"
        merged = httpx.get(f"{server.url}/studio/jobs/{job.id}/download/merged", timeout=300)
        assert merged.status_code == 200, merged.text
        assert "config.json" in zipfile.ZipFile(io.BytesIO(merged.content)).namelist()
        compare = httpx.post(f"{server.url}/studio/compare", timeout=120, json={
            "fine_tuned_model": job.fine_tuned_model, "question": "云栈工单超时多久升级？", "max_tokens": 8}).json()
        assert compare["tuned_answer"] == reply.choices[0].message.content

        with pytest.raises(openai.NotFoundError) as err:
            client.chat.completions.create(model="ft:tiny-random:nope:ftjob-x", messages=[
                {"role": "user", "content": "hi"}])
        assert err.value.body["code"] == "model_not_found"

        second = client.fine_tuning.jobs.create(model="tiny-random", training_file=uploaded.id,
                                                hyperparameters={"n_epochs": 1, "max_steps": 100000, "lora_r": 4,
                                                                                 **NO_EXTRAS})
        wait_job(client, second.id, ("running",), timeout=120)
        pid = _job_pid(server.data_dir, second.id)
        assert pid and _alive(pid)
        t0 = time.monotonic()
        cancelled = client.fine_tuning.jobs.cancel(second.id)
        assert cancelled.status == "cancelled"
        while _alive(pid):
            assert time.monotonic() - t0 < 15, "trainer still running 15 s after cancel"
            time.sleep(0.1)
        assert client.fine_tuning.jobs.retrieve(second.id).status == "cancelled"
        listed = client.fine_tuning.jobs.list(limit=10).data
        assert [j.id for j in listed] == [second.id, job.id]
    finally:
        server.stop()


def test_sigkill_of_the_server_group_then_resume(tmp_path, seed_file):
    data = tmp_path / "data"
    server = Server(data)
    try:
        client = server.client()
        uploaded = client.files.create(file=seed_file.open("rb"), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model="tiny-random", training_file=uploaded.id, hyperparameters={
            "n_epochs": 1, "max_steps": 16, "save_every": 3, "lora_r": 4, **NO_EXTRAS})
        deadline = time.monotonic() + 180
        while not client.fine_tuning.jobs.checkpoints.list(job.id).data:
            assert time.monotonic() < deadline, server.logs()
            assert client.fine_tuning.jobs.retrieve(job.id).status in ("validating_files", "queued", "running")
            time.sleep(0.2)
        before = {e.id for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data}
        trainer_pid = _job_pid(data, job.id)
    except BaseException:
        server.stop()
        raise
    server.kill_group()
    # The trainer (its own process group) must not outlive its server: it checkpoints and exits.
    deadline = time.monotonic() + 60
    while _alive(trainer_pid):
        assert time.monotonic() < deadline, "orphan trainer still running"
        time.sleep(0.2)

    server = Server(data)
    try:
        client = server.client()
        done = wait_job(client, job.id, ("succeeded", "failed", "cancelled"))
        assert done.status == "succeeded", (done.error, server.logs())
        events = client.fine_tuning.jobs.list_events(job.id, limit=1000).data
        assert before <= {e.id for e in events}, "events recorded before the crash were lost"
        messages = [e.message for e in events]
        assert any("server restarted" in m and "resume" in m for m in messages), messages
        assert any(m.startswith("Training resumed from the checkpoint") for m in messages), messages
        assert client.files.retrieve(uploaded.id).filename == "seed.jsonl"
        steps = [e.data["step"] for e in events if e.type == "metrics" and "train_loss" in (e.data or {})]
        assert max(steps) == 16
        reply = client.chat.completions.create(model=done.fine_tuned_model, max_tokens=4,
                                               messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content is not None
    finally:
        server.stop()


def test_live_bad_requests(tmp_path):
    server = Server(tmp_path / "data", "--api-key", "k-123", "--max-upload-mb", "1")
    try:
        with pytest.raises(openai.AuthenticationError):
            server.client("wrong").models.list()
        client = server.client("k-123")
        assert any(m.id == "tiny-random" for m in client.models.list().data)
        with pytest.raises(openai.APIStatusError) as err:
            client.files.create(file=("big.jsonl", b"x" * (2 * 1024 * 1024)), purpose="fine-tune")
        assert err.value.status_code == 413 and err.value.body["code"] == "file_too_large"
        with pytest.raises(openai.NotFoundError):
            client.fine_tuning.jobs.create(model="tiny-random", training_file="file-missing")
        with pytest.raises(openai.NotFoundError):
            client.fine_tuning.jobs.create(model="gpt-99", training_file="file-missing")
        f = client.files.create(file=("../../etc/passwd", b'{"instruction":"a","response":"b"}\n'),
                                purpose="fine-tune")
        assert f.filename == "passwd"
        assert {p.name.split(".")[0] for p in (tmp_path / "data" / "files").iterdir()} == {f.id}
        resp = httpx.post(server.url + "/v1/chat/completions", content=b"{oops",
                          headers={"Authorization": "Bearer k-123", "Content-Type": "application/json"})
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json"
        assert httpx.get(server.url + "/docs").status_code == 200
        second = subprocess.run([sys.executable, "-m", "lorastudio", "serve", "--port", str(_free_port()),
                                 "--data-dir", str(tmp_path / "data")], capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and "already used by another lorastudio server" in second.stderr
        assert "k-123" not in server.logs()
    finally:
        server.stop()


@pytest.mark.slow
def test_chat_with_the_real_default_model(tmp_path):
    """The embedded 0.5B model behind the OpenAI API (loads ~1 GB; minutes on a small CPU)."""
    server = Server(tmp_path / "data")
    try:
        client = server.client()
        t0 = time.monotonic()
        reply = client.chat.completions.create(model="default", max_tokens=32, messages=[
            {"role": "user", "content": "用一句话介绍你自己。"}])
        first_s = time.monotonic() - t0
        assert reply.choices[0].message.content.strip()
        t0 = time.monotonic()
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="default", max_tokens=32, stream=True, messages=[{"role": "user", "content": "用一句话介绍你自己。"}])
            if c.choices)
        warm_s = time.monotonic() - t0
        assert streamed == reply.choices[0].message.content
        print(f"default model: first request {first_s:.1f}s (incl. load), warm 32-token stream {warm_s:.1f}s")
    finally:
        server.stop()
