"""The playground's routes in-process (TestClient), with a fake trainer and a scripted chat engine; the
core (lorastudio.playground) directly where that is clearer."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from lorastudio import playground  # noqa: E402
from lorastudio.serve import create_app  # noqa: E402
from tests.playground_fakes import FORGOTTEN, GENERAL, ScriptedEngine  # noqa: E402
from tests.test_serve_api import make_settings, upload, wait_status  # noqa: E402


@pytest.fixture
def client(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEPS", "2")
    monkeypatch.setenv("FAKE_STEP_S", "0.01")
    with TestClient(create_app(make_settings(tmp_path, engine_factory=ScriptedEngine))) as c:
        yield c


def finished_job(c: TestClient) -> dict:
    fid = upload(c).json()["id"]
    job = c.post("/v1/fine_tuning/jobs", json={"model": "tiny-random", "training_file": fid}).json()
    return wait_status(c, job["id"], ("succeeded",))


def sse(response) -> list[dict]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]


def test_models_lists_bases_and_every_finished_adapter(client):
    empty = client.get("/studio/playground/models").json()
    assert "tiny-random" in empty["bases"] and empty["adapters"] == []
    assert empty["limits"]["question_chars"] == playground.MAX_QUESTION_CHARS
    one, two = finished_job(client), finished_job(client)
    adapters = client.get("/studio/playground/models").json()["adapters"]
    assert {a["model"] for a in adapters} == {one["fine_tuned_model"], two["fine_tuned_model"]}
    assert all(a["base"] == "tiny-random" and a["job_id"] in (one["id"], two["id"]) for a in adapters)


def test_base_vs_base_streams_both_sides_with_their_own_settings(client):
    events = sse(client.post("/studio/playground/stream", json={
        "a": {"model": "tiny-random"}, "b": {"model": "tiny-random", "temperature": 0.7, "system": "Be brief"},
        "question": "工单超时多久升级？"}))
    kinds = [(e["type"], e.get("side")) for e in events]
    assert kinds[0] == ("start", "a") and kinds[-1] == ("end", None)
    assert kinds.index(("done", "a")) < kinds.index(("start", "b")) < kinds.index(("done", "b"))
    text = {s: "".join(e["delta"] for e in events if e["type"] == "delta" and e["side"] == s) for s in "ab"}
    assert text["a"].strip() == "tiny-random|base|-|1: 工单超时多久升级？"
    assert text["b"].strip() == "tiny-random|base|Be brief|2: 工单超时多久升级？"
    assert sum(1 for e in events if e["type"] == "delta" and e["side"] == "a") > 1  # pieces, not one blob
    done = {e["side"]: e for e in events if e["type"] == "done"}
    for side in "ab":
        assert done[side]["first_token_s"] is not None and done[side]["total_s"] >= done[side]["first_token_s"]
        assert done[side]["tokens"] == len(text[side].split()) and done[side]["text"] == text[side]


def test_two_adapters_of_different_jobs_and_one_model_chat(client):
    one, two = finished_job(client), finished_job(client)
    events = sse(client.post("/studio/playground/stream", json={
        "a": {"model": one["fine_tuned_model"]}, "b": {"model": two["fine_tuned_model"]}, "question": "Q"}))
    text = {s: "".join(e["delta"] for e in events if e.get("side") == s and e["type"] == "delta") for s in "ab"}
    assert Path(one["fine_tuned_model"]).name  # the adapter dir is the job's directory
    assert text["a"].split("|")[1] == one["id"] and text["b"].split("|")[1] == two["id"]
    # chat: one model, the page sends the earlier turns
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    events = sse(client.post("/studio/playground/stream", json={
        "a": {"model": "tiny-random", "system": "S"}, "question": "again", "history": history}))
    assert {e.get("side") for e in events if e["type"] == "delta"} == {"a"}
    assert "".join(e["delta"] for e in events if e["type"] == "delta").strip() == "tiny-random|base|S|4: again"


@pytest.mark.parametrize("body, code", [
    ({"question": "x" * (playground.MAX_QUESTION_CHARS + 1)}, "question_too_long"),
    ({"question": "   "}, "empty_question"),
    ({"question": "q", "history": [{"role": "tool", "content": "x"}]}, "bad_history"),
])
def test_bad_input_is_a_400_with_a_code_never_a_500(client, body, code):
    r = client.post("/studio/playground/stream", json={"a": {"model": "tiny-random"}, **body})
    assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text


def test_unknown_model_is_a_404(client):
    r = client.post("/studio/playground/stream", json={"a": {"model": "nope"}, "question": "q"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_question_set_scores_keys_and_counts_flips(client):
    job = finished_job(client)
    qs = [{"question": GENERAL[0].question, "must_contain": "巴黎|Paris"},  # base: right, tuned: wrong → lost
          {"question": GENERAL[4].question, "must_contain": ["曹雪芹"]},  # both right → kept
          {"question": "no keys here"}]
    events = sse(client.post("/studio/playground/set", json={
        "a": {"model": "tiny-random"}, "b": {"model": job["fine_tuned_model"]}, "questions": qs}))
    rows = [e for e in events if e["type"] == "row"]
    assert [(r["index"], r["side"]) for r in rows] == [(0, "a"), (0, "b"), (1, "a"), (1, "b"), (2, "a"), (2, "b")]
    # "巴黎|Paris" is two keys that must both be stated; the base says only 巴黎
    assert [r["pass"] for r in rows] == [False, False, True, True, None, None]
    summary = events[-1]
    assert summary["type"] == "summary" and summary["flips"] == ["wrong", "kept", None]
    assert summary["counts"] == {"kept": 1, "lost": 0, "gained": 0, "wrong": 1}


def test_question_file_upload_reads_keys_and_names_the_users_file(client):
    csv_text = "question,must_contain\n工单超时多久升级？,二线|4 小时\nWhat is 2+2?,4\n"
    r = client.post("/studio/playground/questions", files={"file": ("held_out.csv", csv_text.encode())})
    assert r.status_code == 200, r.text
    assert r.json()["questions"] == [
        {"question": "工单超时多久升级？", "must_contain": ["二线", "4 小时"], "row": 1},
        {"question": "What is 2+2?", "must_contain": ["4"], "row": 2}]
    bad = client.post("/studio/playground/questions", files={"file": ("held_out.csv", b"question,x\n,1\nok,2\n\n")})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "question_file_rows"
    assert bad.json()["error"]["message"] == ("held_out.csv: 1 row(s) cannot be used (row 1: the question is empty). "
                                              "Fix or delete them, then upload the file again.")
    zh = client.post("/studio/playground/questions", files={"file": ("测试.csv", b"question,x\n,1\n")},
                     headers={"Accept-Language": "zh-CN,zh"})
    assert zh.json()["error"]["message"] == "测试.csv 中有 1 行不能使用（第 1 行：问题为空）。请修改或删除这些行后重新上传。"
    nocol = client.post("/studio/playground/questions", files={"file": ("q.csv", b"foo,bar\n1,2\n")})
    assert nocol.json()["error"]["code"] == "question_file_no_column" and "foo, bar" in nocol.json()["error"]["message"]
    txt = client.post("/studio/playground/questions", files={"file": ("q.txt", "第一个\n\n第二个\n".encode())})
    assert [q["question"] for q in txt.json()["questions"]] == ["第一个", "第二个"]
    kind = client.post("/studio/playground/questions", files={"file": ("a.pdf", b"%PDF")})
    assert kind.status_code == 400 and kind.json()["error"]["code"] == "question_file_type"


def test_export_csv_and_xlsx_keep_text_and_never_make_formulas(client):
    from openpyxl import load_workbook

    rows = [["问题一", "=1+1", "答案"], ["q2", "plain", None]]
    body = {"columns": ["问题", "A", "B"], "rows": rows, "filename": "比较"}
    csv_r = client.post("/studio/playground/export", json={**body, "format": "csv"})
    assert csv_r.status_code == 200 and csv_r.content.startswith(b"\xef\xbb\xbf")
    text = csv_r.content.decode("utf-8-sig")
    assert text.splitlines()[0] == "问题,A,B" and "'=1+1" in text
    x = client.post("/studio/playground/export", json={**body, "format": "xlsx"})
    assert x.status_code == 200
    ws = load_workbook(io.BytesIO(x.content)).active
    assert [c.value for c in ws[1]] == ["问题", "A", "B"]
    assert ws["B2"].value == "=1+1" and ws["B2"].data_type == "s" and not ws["C3"].value
    bad = client.post("/studio/playground/export", json={**body, "format": "pdf"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_format"


def test_forgetting_check_runs_once_per_job_and_is_cached(client):
    job = finished_job(client)
    assert client.get(f"/studio/jobs/{job['id']}/forgetting").json() == {"status": "none"}
    events = sse(client.post(f"/studio/jobs/{job['id']}/forgetting"))
    progress = [e for e in events if e["type"] == "progress"]
    assert progress[-1] == {"type": "progress", "done": 2 * len(GENERAL), "total": 2 * len(GENERAL)}
    result = events[-1]
    assert result["type"] == "result" and result["questions"] == len(GENERAL) == 24
    assert result["base_right"] == 24 and result["lost"] == 2 and result["kept"] == 22 and result["gained"] == 0
    assert {r["question"] for r in result["rows"] if r["flip"] == "lost"} == FORGOTTEN
    cached = client.get(f"/studio/jobs/{job['id']}/forgetting").json()
    assert cached["status"] == "done" and cached["kept"] == 22 and cached["model"] == job["fine_tuned_model"]
    started = time.monotonic()
    again = sse(client.post(f"/studio/jobs/{job['id']}/forgetting"))
    assert [e["type"] for e in again] == ["result"] and again[0]["kept"] == 22  # from the cache
    assert time.monotonic() - started < 5
    # a retrained adapter (new file) is checked again
    adapter = Path(client.app.state.store.get_job(job["id"])["job_dir"]) / "adapter_model.safetensors"
    adapter.write_bytes(b"retrained")
    import os
    os.utime(adapter, (time.time() + 5, time.time() + 5))
    assert client.get(f"/studio/jobs/{job['id']}/forgetting").json() == {"status": "none"}


def test_base_answers_are_kept_per_base_and_the_job_list_shows_each_check(client):
    one, two = finished_job(client), finished_job(client)
    assert all("forgetting" not in j["studio"] for j in client.get("/studio/jobs").json()["data"])
    first = sse(client.post(f"/studio/jobs/{one['id']}/forgetting"))
    assert first[-1]["base_reused"] is False
    assert [e for e in first if e["type"] == "progress"][-1]["total"] == 2 * len(GENERAL)
    # the second job on the same base: only its tuned side answers (the base's greedy answers are kept)
    second = sse(client.post(f"/studio/jobs/{two['id']}/forgetting"))
    assert second[-1]["base_reused"] is True and second[-1]["kept"] == 22 and second[-1]["lost"] == 2
    assert [e for e in second if e["type"] == "progress"][-1] == {"type": "progress", "done": len(GENERAL),
                                                                   "total": len(GENERAL)}
    assert [r["base_answer"] for r in second[-1]["rows"]] == [r["base_answer"] for r in first[-1]["rows"]]
    listed = {j["id"]: j["studio"] for j in client.get("/studio/jobs").json()["data"]}
    for job in (one, two):
        summary = listed[job["id"]]["forgetting"]
        assert (summary["questions"], summary["base_right"], summary["kept"], summary["lost"], summary["gained"]) == \
            (24, 24, 22, 2, 0)
        assert {f["question"] for f in summary["flipped"]} == FORGOTTEN and {f["flip"] for f in summary["flipped"]} == {"lost"}
    # the check is kept with the job: deleting the job removes it
    kept = Path(client.app.state.store.get_job(one["id"])["job_dir"]) / "forgetting.json"
    assert kept.exists()
    assert client.delete(f"/studio/jobs/{one['id']}").status_code == 200
    assert not kept.exists()


def test_base_answers_of_another_length_are_not_reused():
    engine = ScriptedEngine("tiny-random")
    events = list(playground.forgetting_events(engine, "/nowhere/adapter", base_answers=["only one"]))
    assert events[-1]["base_reused"] is False and events[-2]["total"] == 2 * len(GENERAL)


def test_forgetting_check_of_an_unfinished_job_is_a_409(client):
    fid = upload(client).json()["id"]
    job = client.post("/v1/fine_tuning/jobs", json={"model": "tiny-random", "training_file": fid}).json()
    client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    wait_status(client, job["id"], ("cancelled", "succeeded"))
    if client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "cancelled":
        r = client.get(f"/studio/jobs/{job['id']}/forgetting")
        assert r.status_code == 409 and r.json()["error"]["code"] == "job_not_finished"


def test_general_questions_are_the_held_out_set_and_alternatives_count():
    root = Path(__file__).resolve().parents[1]
    assert (root / "evalsets/general.jsonl").read_text("utf-8") == \
        (root / "lorastudio/assets/general_check.jsonl").read_text("utf-8")
    assert playground.keys_found("巴黎是首都", [["Paris", "巴黎"]]) == [True]
    assert playground.keys_found("Ｐａｒｉｓ！", ["paris"]) == [True]  # normalised like `lorastudio eval`
    assert playground.passes("no", []) is None and playground.flip(True, False) == "lost"


def test_an_engine_failing_on_one_side_leaves_the_other():
    class Broken:
        def stream(self, *a, **kw):
            raise RuntimeError("boom")
            yield ""

    ok = playground.Side("a", ScriptedEngine("tiny-random"), None)
    bad = playground.Side("b", Broken(), None)
    events = list(playground.compare_events([ok, bad], "q"))
    assert [e["type"] for e in events][-3:] == ["start", "error", "end"]
    assert events[-2]["code"] == "generation_failed" and any(e["type"] == "done" and e["side"] == "a" for e in events)


def test_a_client_that_goes_away_stops_generation(tmp_path, monkeypatch):
    """Stop in the page (or a closed tab) closes the engine's stream, which stops generation and frees
    the engine's lock, instead of generating to the end for nobody."""
    import socket
    import threading

    import uvicorn

    state = {"closed": False, "pieces": 0}

    class Endless(ScriptedEngine):
        def stream(self, messages, adapter=None, max_new_tokens=256, temperature=0.0, top_p=1.0, seed=None, *,
                   stats=None):
            try:
                for i in range(2000):
                    time.sleep(0.02)
                    state["pieces"] += 1
                    yield f"w{i} "
            finally:
                state["closed"] = True

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(make_settings(tmp_path, engine_factory=Endless)),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        body = json.dumps({"a": {"model": "tiny-random"}, "question": "q"}).encode()
        conn = socket.create_connection(("127.0.0.1", port))
        conn.sendall(b"POST /studio/playground/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        received = b""
        while b'"delta"' not in received:
            received += conn.recv(4096)
        conn.close()
        deadline = time.monotonic() + 5
        while not state["closed"]:
            assert time.monotonic() < deadline, f"still generating after the client left ({state['pieces']} pieces)"
            time.sleep(0.02)
        assert state["pieces"] < 2000
    finally:
        server.should_exit = True
        thread.join(10)
