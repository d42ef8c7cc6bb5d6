"""Pure pieces of the service: the store, event translation, the events.jsonl tail, settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lorastudio.serve.settings import Settings, SettingsError
from lorastudio.serve.store import SQLiteStore
from lorastudio.serve.tail import fine_tuned_model_name, translate_event
from lorastudio.serve.worker import JobWorker
from lorastudio.train.checkpoints import STATE_FILE, latest, prune


def test_core_packages_never_import_fastapi():
    code = ("import sys, lorastudio.data, lorastudio.train, lorastudio.train.config, lorastudio.models, "
            "lorastudio.serve.settings; "
            "bad = [m for m in ('fastapi', 'starlette', 'uvicorn') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_serve_command_help_is_cheap():
    code = ("import sys; from lorastudio.cli import build_parser; build_parser(); "
            "print([m for m in ('fastapi', 'torch', 'uvicorn') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_serve_refuses_public_bind_without_key(tmp_path):
    out = subprocess.run([sys.executable, "-m", "lorastudio", "serve", "--host", "0.0.0.0", "--data-dir",
                          str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "without an API key" in out.stderr and "Traceback" not in out.stderr


def test_settings_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LORASTUDIO_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("LORASTUDIO_MAX_UPLOAD_MB", "3")
    monkeypatch.setenv("LORASTUDIO_API_KEY", "zq-secret-77")
    s = Settings.from_env(port=9000)
    assert s.data_dir == tmp_path / "d" and s.max_upload_bytes == 3 * 1024 * 1024 and s.port == 9000
    assert s.api_key == "zq-secret-77" and "zq-secret-77" not in repr(s)
    monkeypatch.setenv("LORASTUDIO_PORT", "eighty")
    with pytest.raises(SettingsError, match="LORASTUDIO_PORT"):
        Settings.from_env()


def _job(store: SQLiteStore, tmp_path: Path, job_id: str = "ftjob-1", **kw) -> dict:
    values = dict(id=job_id, model="tiny-random", training_file="file-1", hyperparameters={}, status="running",
                  job_dir=str(tmp_path / job_id))
    values.update(kw)
    Path(values["job_dir"]).mkdir(parents=True, exist_ok=True)
    return store.add_job(**values)


def test_store_uses_wal_and_pages_newest_first(tmp_path):
    store = SQLiteStore(tmp_path / "db.sqlite3")
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    _job(store, tmp_path)
    ids = [store.add_event("ftjob-1", level="info", type="message", message=f"m{i}", data=None,
                           raw={"type": "message", "message": f"m{i}"})["id"] for i in range(5)]
    page, more = store.list_events("ftjob-1", limit=2)
    assert [e["id"] for e in page] == ids[::-1][:2] and more
    page, more = store.list_events("ftjob-1", after=page[-1]["id"], limit=10)
    assert [e["id"] for e in page] == ids[::-1][2:] and not more
    assert store.update_job("ftjob-1", only_if_status=("queued",), status="failed") is False
    assert store.get_job("ftjob-1")["status"] == "running"
    # Records survive a reopen (what a restart sees).
    store.close()
    again = SQLiteStore(tmp_path / "db.sqlite3")
    assert len(again.events_since("ftjob-1", 0)) == 5 and again.get_job("ftjob-1")["hyperparameters"] == {}


def test_checkpoints_are_recorded_once_per_step(tmp_path):
    store = SQLiteStore(tmp_path / "db.sqlite3")
    _job(store, tmp_path)
    first = store.add_checkpoint(job_id="ftjob-1", step_number=2, path="p", metrics={}, fine_tuned_model_checkpoint="x")
    assert first is not None
    assert store.add_checkpoint(job_id="ftjob-1", step_number=2, path="p", metrics={},
                                fine_tuned_model_checkpoint="x") is None


@pytest.mark.parametrize("raw,kind,needle", [
    ({"type": "metrics", "step": 3, "total_steps": 10, "loss": 1.23456, "eta_s": 5, "tokens_per_s": 99.0},
     "metrics", "Step 3/10: training loss=1.2346"),
    ({"type": "eval", "step": 3, "valid_loss": 0.5}, "metrics", "validation loss=0.5000"),
    ({"type": "stage", "stage": "tokenize", "message": "Tokenizing 12 rows"}, "message", "Tokenizing 12 rows"),
    ({"type": "checkpoint", "step": 4, "path": "x"}, "message", "Checkpoint saved at step 4"),
    ({"type": "resumed", "step": 4, "path": "x"}, "message", "resumed from the checkpoint at step 4"),
    ({"type": "error", "message": "boom"}, "message", "boom"),
    ({"type": "something-new", "x": 1}, "message", "something-new"),
])
def test_translate_event(raw, kind, needle):
    level, typ, message, data = translate_event(raw)
    assert typ == kind and needle in message
    if raw["type"] == "metrics":
        assert data["train_loss"] == raw["loss"] and data["tokens_per_s"] == 99.0 and data["eta_s"] == 5
    if raw["type"] == "error":
        assert level == "error"


def test_tail_reads_only_complete_lines_and_survives_garbage(tmp_path):
    store = SQLiteStore(tmp_path / "db.sqlite3")
    job = _job(store, tmp_path)
    worker = JobWorker(store, Settings(data_dir=tmp_path / "data"))
    events = Path(job["job_dir"]) / "events.jsonl"
    line1 = json.dumps({"type": "metrics", "step": 1, "total_steps": 2, "loss": 2.0, "time": 1}) + "\n"
    events.write_text(line1 + "not json\n" + '{"type": "metrics", "step": 2')  # last line half-written
    worker.tail.pump(job["id"])
    rows = store.events_since(job["id"], 0)
    assert [r["type"] for r in rows] == ["metrics", "message"] and rows[1]["level"] == "warn"
    with events.open("a") as fh:
        fh.write(', "total_steps": 2, "loss": 1.0, "time": 2}\n')
    worker.tail.pump(job["id"])
    worker.tail.pump(job["id"])  # idempotent: nothing new, nothing twice
    rows = store.events_since(job["id"], 0)
    assert [r["data"]["step"] for r in rows if r["type"] == "metrics"] == [1, 2]
    assert store.get_job(job["id"])["events_offset"] == events.stat().st_size


def test_checkpoint_event_becomes_checkpoint_object(tmp_path):
    store = SQLiteStore(tmp_path / "db.sqlite3")
    job = _job(store, tmp_path, suffix="sup")
    worker = JobWorker(store, Settings(data_dir=tmp_path / "data"))
    _checkpoint_on_disk(job, 50)
    (Path(job["job_dir"]) / "events.jsonl").write_text(
        json.dumps({"type": "checkpoint", "step": 50, "path": "/x/step-00000050", "train_loss": 0.7,
                    "valid_loss": 0.9, "time": 5}) + "\n")
    worker.tail.pump(job["id"])
    (ckpt,), _ = store.list_checkpoints(job["id"])
    assert ckpt["step_number"] == 50 and ckpt["metrics"]["valid_loss"] == 0.9
    assert ckpt["fine_tuned_model_checkpoint"] == "ft:tiny-random:sup:ftjob-1:ckpt-step-50"


def _checkpoint_on_disk(job: dict, step: int) -> None:
    path = Path(job["job_dir"]) / "checkpoints" / f"step-{step:08d}"
    path.mkdir(parents=True, exist_ok=True)
    (path / STATE_FILE).write_bytes(b"x")


def test_the_checkpoint_list_is_what_can_be_used(tmp_path):
    """The trainer keeps its newest checkpoints only (issue 16: 10 listed for a 40-step job, 2 on disk)."""
    store = SQLiteStore(tmp_path / "db.sqlite3")
    job = _job(store, tmp_path, suffix="sup")
    worker = JobWorker(store, Settings(data_dir=tmp_path / "data"))
    events = Path(job["job_dir"]) / "events.jsonl"
    for step in (4, 8, 12, 16):
        _checkpoint_on_disk(job, step)
        prune(job["job_dir"], keep=2)
        with events.open("a") as f:
            f.write(json.dumps({"type": "checkpoint", "step": step, "path": "p", "time": step}) + "\n")
        worker.tail.pump(job["id"])
        listed = sorted(c["step_number"] for c in store.list_checkpoints(job["id"], limit=100)[0])
        assert listed == [s for s in (4, 8, 12, 16) if s <= step][-2:]


def test_helpers(tmp_path):
    assert fine_tuned_model_name({"id": "ftjob-9", "model": "/models/my-base", "suffix": None}) == \
        "ft:my-base:lorastudio:ftjob-9"
    for step in (5, 50, 10):
        (tmp_path / "checkpoints" / f"step-{step:08d}").mkdir(parents=True)
        (tmp_path / "checkpoints" / f"step-{step:08d}" / STATE_FILE).write_bytes(b"x")
    (tmp_path / "checkpoints" / "step-junk").mkdir()
    (tmp_path / "checkpoints" / "step-00000099").mkdir()  # no state file: a half-written checkpoint
    assert latest(tmp_path).step == 50
    assert latest(tmp_path / "none") is None
    prune(tmp_path, keep=2)  # the trainer and the service share one rule for what is kept
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-00000010", "step-00000050", "step-junk"]


def test_one_server_per_data_dir(tmp_path):
    from lorastudio.serve.app import lock_data_dir

    first = lock_data_dir(tmp_path / "d")
    with pytest.raises(SettingsError, match="already used by another lorastudio server"):
        lock_data_dir(tmp_path / "d")
    first.close()  # what the kernel does when the holder dies, even by SIGKILL
    lock_data_dir(tmp_path / "d").close()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SettingsError, match="cannot use"):
        lock_data_dir(blocker / "sub")


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="ab\n", max_size=40), cuts=st.lists(st.integers(0, 40), max_size=8),
       stops=st.lists(st.text(alphabet="ab\n", min_size=1, max_size=4), min_size=1, max_size=4))
def test_stop_filter_cuts_at_the_first_stop_sequence(text, cuts, stops):
    from lorastudio.serve.api_chat import StopFilter

    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    f = StopFilter(stops)
    out = ""
    for piece in pieces:
        out += f.push(piece)
        if f.hit:
            break
    out += f.flush()
    # Reference: generation stops at the first piece after which the text so far contains a stop
    # sequence, and is cut where the earliest such sequence starts.
    expected, hit = text, False
    for end in bounds[1:]:
        starts = [i for i in (text[:end].find(x) for x in stops) if i >= 0]
        if starts:
            expected, hit = text[:min(starts)], True
            break
    assert out == expected and f.hit == hit


def test_a_damaged_or_lost_database_is_refused_with_one_clear_line(tmp_path):
    """Issue 16: a corrupt database printed a traceback; a 0-byte one started silently empty beside
    files/ and jobs/ full of data."""
    import subprocess
    import sys

    from lorastudio.serve.store import StoreDamaged

    data = tmp_path / "data"
    (data / "files").mkdir(parents=True)
    (data / "files" / "file-1.jsonl").write_text("{}")
    db = data / "lorastudio.sqlite3"
    db.write_bytes(b"")
    with pytest.raises(StoreDamaged, match="empty.*files/"):
        SQLiteStore(db)
    assert db.stat().st_size == 0  # nothing replaced

    db.write_bytes(b"SQLite format 3\0" + b"\x13" * 4096)  # a header and garbage
    with pytest.raises(StoreDamaged, match="damaged"):
        SQLiteStore(db)

    settings_db = Settings(data_dir=data).db_path
    settings_db.write_bytes(b"not a database at all" * 300)
    proc = subprocess.run([sys.executable, "-m", "lorastudio", "serve", "--data-dir", str(data), "--port", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(settings_db) in lines[0] and "Traceback" not in proc.stderr

    fresh = tmp_path / "fresh"
    (fresh / "files").mkdir(parents=True)
    (fresh / "db.sqlite3").write_bytes(b"")
    SQLiteStore(fresh / "db.sqlite3").close()  # empty database, empty folders: a normal first start


def test_wait_gone_counts_an_exited_child_nobody_collected():
    """A trainer that exited but was not yet collected (a zombie: kill(pid, 0) still succeeds) holds no
    device: `recover()` must not wait out its 60 s for it (a worker restarted in-process did)."""
    import time

    from lorastudio.serve.supervisor import wait_gone

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        t0 = time.monotonic()
        assert wait_gone(child.pid, 20)
        assert time.monotonic() - t0 < 15
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            assert not wait_gone(sleeper.pid, 0.3)  # a running process is not gone
        finally:
            sleeper.kill()
            sleeper.wait()
    finally:
        child.wait()
