"""The studio routes the page's job list, downloads and limits rely on (TestClient, fake trainer, fake
chat engine): job summaries, deleting a job, the adapter alone vs the training report, localised 400s
instead of 500s, no server path in what a user sees or downloads."""

from __future__ import annotations

import json
import zipfile
from io import BytesIO
from pathlib import Path

import pytest
import yaml

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from lorastudio.serve import create_app  # noqa: E402
from tests.test_serve_api import make_settings, upload, wait_status  # noqa: E402

ZH = {"Accept-Language": "zh-CN,zh;q=0.9"}


@pytest.fixture
def client(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEPS", "6")
    monkeypatch.setenv("FAKE_STEP_S", "0.02")
    with TestClient(create_app(make_settings(tmp_path))) as c:
        yield c


def finished_job(c: TestClient, **hp) -> dict:
    fid = upload(c).json()["id"]
    body = {"model": "tiny-random", "training_file": fid, **({"hyperparameters": hp} if hp else {})}
    job = c.post("/v1/fine_tuning/jobs", json=body).json()
    return wait_status(c, job["id"], ("succeeded", "failed", "cancelled"))


def as_the_real_trainer_leaves_it(c: TestClient, job_id: str) -> Path:
    """The files the real trainer writes beside the adapter (the fake writes only the adapter)."""
    job_dir = Path(c.app.state.store.get_job(job_id)["job_dir"])
    resolved = job_dir.parent.parent / "models" / "tiny-random"
    resolved.mkdir(parents=True)
    (resolved / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"}))
    (job_dir / "train_config.yaml").write_text(yaml.safe_dump({
        "data": str(job_dir.parent.parent / "files" / "file-x.jsonl"), "base": "tiny-random",
        "output_dir": str(job_dir), "task": "qa", "lora_r": 16, "lora_alpha": 32, "num_epochs": 4.0,
        "system_prompt": None, "extra": {"resolved_base": str(resolved)}}))
    (job_dir / "augmented.jsonl").write_text('{"source": "paraphrase", "row": 1}\n')
    (job_dir / "data_report.json").write_text(json.dumps({"file": "/srv/secret/file-x.jsonl", "rows_ok": 12}))
    (job_dir / "README.md").write_text(f"adapter at {job_dir}\n")
    return job_dir


def zip_names(content: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(BytesIO(content)) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def test_job_list_has_summaries_and_a_finished_job_can_be_deleted(client):
    job = finished_job(client, task="qa", max_steps=6)
    assert job["status"] == "succeeded"
    job_dir = as_the_real_trainer_leaves_it(client, job["id"])
    body = client.get("/studio/jobs").json()
    [item] = body["data"]
    assert item["id"] == job["id"] and item["status"] == "succeeded" and item["model"] == "tiny-random"
    assert item["hyperparameters"]["max_steps"] == 6 and item["hyperparameters"]["task"] == "qa"
    studio = item["studio"]
    assert studio["final_loss"] == pytest.approx(2.0 / 6) and studio["steps"] == 6 and studio["total_steps"] == 6
    assert studio["rows"] == 12
    assert studio["duration_s"] == job["finished_at"] - job["created_at"]

    gone = client.delete(f"/studio/jobs/{job['id']}")
    assert gone.status_code == 200 and gone.json() == {"id": job["id"], "object": "fine_tuning.job", "deleted": True}
    assert not job_dir.exists()
    assert client.get("/studio/jobs").json()["data"] == []
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}").status_code == 404
    assert client.get("/v1/models").json()["data"] and all(
        m["id"] != job["fine_tuned_model"] for m in client.get("/v1/models").json()["data"])
    again = client.delete(f"/studio/jobs/{job['id']}", headers=ZH)
    assert again.status_code == 404 and "找不到训练任务" in again.json()["error"]["message"]


def test_an_unfinished_job_cannot_be_deleted(client, monkeypatch):
    monkeypatch.setenv("FAKE_STEPS", "400")
    monkeypatch.setenv("FAKE_STEP_S", "0.05")
    fid = upload(client).json()["id"]
    job = client.post("/v1/fine_tuning/jobs", json={"model": "tiny-random", "training_file": fid}).json()
    wait_status(client, job["id"], ("running",))
    refused = client.delete(f"/studio/jobs/{job['id']}", headers=ZH)
    assert refused.status_code == 409
    assert refused.json()["error"]["message"] == f"任务 {job['id']} 还没有结束：请先取消，再删除。"
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}").status_code == 200
    client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    wait_status(client, job["id"], ("cancelled",))


def test_adapter_download_is_the_adapter_alone_and_the_report_is_separate(client):
    job = finished_job(client)
    job_dir = as_the_real_trainer_leaves_it(client, job["id"])
    data_dir = str(client.app.state.settings.data_dir)
    response = client.get(f"/studio/jobs/{job['id']}/download/adapter")
    assert response.status_code == 200
    files = zip_names(response.content)
    assert set(files) == {"adapter_config.json", "adapter_model.safetensors", "README.md", "train_config.yaml",
                          "chat_template.jinja"}
    config = json.loads(files["adapter_config.json"])
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == "tiny-random"
    card = files["README.md"].decode()
    assert "Base model: `tiny-random`" in card and "ChatML" in card and "seed.jsonl" in card
    settings = yaml.safe_load(files["train_config.yaml"])
    assert settings["lora_r"] == 16 and "data" not in settings and "output_dir" not in settings
    for name, content in files.items():
        assert data_dir.encode() not in content, f"{name} names a server path"
        assert b"/srv/secret" not in content

    report = client.get(f"/studio/jobs/{job['id']}/download/report")
    assert report.status_code == 200
    assert 'filename="ft-tiny-random' in report.headers["content-disposition"]
    assert set(zip_names(report.content)) == {"events.jsonl", "augmented.jsonl", "data_report.json",
                                              "train_config.yaml"}
    assert (job_dir / "exports").is_dir()


def test_downloads_say_why_not_in_the_users_language(client):
    job = finished_job(client)
    unknown = client.get(f"/studio/jobs/{job['id']}/download/weights", headers=ZH)
    assert unknown.status_code == 404 and "没有“weights”这种下载" in unknown.json()["error"]["message"]
    missing = client.get("/studio/jobs/ftjob-nope/download/adapter", headers=ZH)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "job_not_found"


@pytest.mark.parametrize(("headers", "expected"), [
    ({}, "The question is 100,000 characters long; at most 4,000 are accepted."),
    (ZH, "问题有 100,000 个字符，最多只能 4,000 个。请缩短后再问。"),
])
def test_a_huge_question_is_a_localised_400_not_a_500(client, headers, expected):
    job = finished_job(client)
    response = client.post("/studio/compare", headers=headers,
                           json={"fine_tuned_model": job["fine_tuned_model"], "question": "问" * 100_000})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "question_too_long" and error["param"] == "question"
    assert error["message"].startswith(expected)
    empty = client.post("/studio/compare", headers=headers, json={"fine_tuned_model": job["fine_tuned_model"],
                                                                  "question": "  "})
    assert empty.status_code == 400 and empty.json()["error"]["code"] == "invalid_value"
    ok = client.post("/studio/compare", json={"fine_tuned_model": job["fine_tuned_model"], "question": "问" * 4000})
    assert ok.status_code == 200


def test_an_unusable_file_is_named_by_its_upload_name_in_the_users_language(client):
    fid = upload(client, b"\x00\x01\x02binary\x00" * 50, name="notes.txt").json()["id"]
    for headers, marker in (({}, "cannot be used"), (ZH, "无法使用")):
        response = client.get(f"/studio/files/{fid}/report", headers=headers)
        assert response.status_code == 400
        message = response.json()["error"]["message"]
        assert marker in message and "notes.txt" in message
        assert str(client.app.state.settings.data_dir) not in message and "file-" not in message
    zh = client.get(f"/studio/files/{fid}/report", headers=ZH).json()["error"]["message"]
    assert "cannot" not in zh and "used" not in zh


def test_rejected_rows_and_too_long_hints_speak_the_users_language(client):
    rows = [{"instruction": "退款多久到账？", "response": "3 个工作日。"}, {"instruction": "空回答", "response": " "},
            {"instruction": "很长的问题", "response": "长" * 20000}]
    fid = upload(client, "\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode(), name="faq.jsonl").json()["id"]
    report = client.get(f"/studio/files/{fid}/report", headers=ZH).json()
    assert report["lang"] == "zh"
    assert all("--max-length" not in (i["hint"] or "") for i in report["issues"])
    assert any(i["kind"] == "too_long" for i in report["issues"])
    zh_csv = client.get(f"/studio/files/{fid}/rejected", headers=ZH).content.decode("utf-8-sig")
    en_csv = client.get(f"/studio/files/{fid}/rejected").content.decode("utf-8-sig")
    assert "empty_response" not in zh_csv and "--max-length" not in zh_csv and "回答" in zh_csv
    assert "empty_response" in en_csv and "--max-length" not in en_csv


def test_bases_that_cannot_run_here_are_listed_with_the_reason(client, monkeypatch):
    from lorastudio.models import availability

    monkeypatch.setattr(availability, "has_gpu", lambda: False)
    monkeypatch.setattr(availability, "hub_cached", lambda hub_id: False)
    monkeypatch.setattr(availability, "hub_reachable", lambda: False)
    models = {m["id"]: m for m in client.get("/studio/models", headers=ZH).json()["data"]}
    assert models["default"]["available"] and models["tiny-random"]["available"]
    seven_b = models["Qwen/Qwen2.5-7B-Instruct"]
    assert not seven_b["available"] and [r["code"] for r in seven_b["unavailable"]] == ["no_gpu", "offline"]
    assert seven_b["unavailable_reason"].startswith("需要显存 24 GB 的 GPU")
    small = models["Qwen/Qwen2.5-1.5B-Instruct"]
    assert [r["code"] for r in small["unavailable"]] == ["offline"]

    monkeypatch.setattr(availability, "has_gpu", lambda: True)
    monkeypatch.setattr(availability, "hub_reachable", lambda: True)
    models = {m["id"]: m for m in client.get("/studio/models").json()["data"]}
    seven_b = models["Qwen/Qwen2.5-7B-Instruct"]
    assert seven_b["available"] and seven_b["notes"] == [{"code": "not_downloaded", "params": {"disk": 15.2}}]


def test_studio_routes_are_typed_in_openapi_and_answer_as_before(client):
    """Issue 12: /openapi.json describes every /studio JSON answer with a schema; the answers stay the dicts
    the routes build (same keys and values; nothing added as null, nothing dropped)."""
    doc = client.get("/openapi.json").json()
    typed = {
        ("/studio/models", "get"): "StudioModelList", ("/studio/files/{file_id}/report", "get"): "ValidationReport",
        ("/studio/messages", "get"): "MessageCatalogue", ("/studio/recommend", "post"): "Recommendation",
        ("/studio/jobs/{job_id}/metrics", "get"): "MetricsList", ("/studio/compare", "post"): "CompareAnswer",
        ("/studio/jobs", "get"): "StudioJobList", ("/studio/jobs/{job_id}", "delete"): "JobDeleted",
        ("/studio/jobs/{job_id}/gguf-check", "get"): "GgufCheck", ("/studio/jobs/{job_id}/gguf-check", "post"): "GgufCheck",
    }
    for (path, method), name in typed.items():
        schema = doc["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{name}"}, (path, schema)
    for path in ("/studio/files/{file_id}/rejected", "/studio/jobs/{job_id}/download/{kind}",
                 "/studio/jobs/{job_id}/stream"):
        content = doc["paths"][path]["get"]["responses"]["200"]["content"]
        assert "application/json" not in content, path
    assert "schema" in doc["components"]["schemas"]["ValidationReport"]["properties"]

    from lorastudio.data import validate
    from lorastudio.train.recommend import recommend

    job = finished_job(client)
    record = client.app.state.store.get_file(job["training_file"])
    report = validate(record["path"])
    rec = client.post("/studio/recommend", json={"training_file": job["training_file"], "model": "tiny-random"})
    assert rec.json() == json.loads(json.dumps(recommend(report.conversations, "tiny-random", task="qa").to_dict()))
    got = client.get(f"/studio/files/{job['training_file']}/report").json()
    assert got == {**report.to_dict("en"), "file": "seed.jsonl", "file_id": job["training_file"], "lang": "en"}
    assert client.get(f"/studio/jobs/{job['id']}/metrics").json()["data"][0].keys() >= {"type", "step", "loss", "time"}
    listed = client.get("/studio/jobs").json()["data"][0]
    assert listed == {**client.get(f"/v1/fine_tuning/jobs/{job['id']}").json(), "studio": listed["studio"]}


def test_an_empty_answer_cell_in_excel_is_an_empty_answer_with_the_excel_row(client):
    """Issue 15 #5: it was "row cannot be read… stray line break" with field "—", and "row 5" is Excel's 6."""
    import openpyxl

    book = openpyxl.Workbook()
    book.active.append(["问题", "答案"])
    for i in range(1, 5):
        book.active.append([f"问题{i}？", f"答案{i}"])
    book.active.append(["没有答案的问题？", None])
    buf = BytesIO()
    book.save(buf)
    fid = upload(client, buf.getvalue(), name="faq.xlsx").json()["id"]
    report = client.get(f"/studio/files/{fid}/report", headers=ZH).json()
    [issue] = report["issues"]
    assert issue["kind"] == "empty_response" and issue["field"] == "答案" and issue["row"] == 5
    assert "换行" not in issue["message"] + issue["hint"]
    assert report["sheet_row_offset"] == 1  # Excel's row 6


def test_preview_shows_rows_as_the_model_sees_them(client):
    fid = upload(client).json()["id"]
    body = client.get(f"/studio/files/{fid}/preview", params={"model": "tiny-random", "rows": 2}).json()
    assert body["file_id"] == fid and body["model"] == "tiny-random" and body["template"] == "chatml"
    assert [r["row"] for r in body["rows"]] == [1, 2]
    first = body["rows"][0]
    assert first["messages"] == [{"role": "user", "content": "工单 0 超时多久升级？"},
                                 {"role": "assistant", "content": "超过 2 小时升级到二线。"}]
    learned = "".join(s["text"] for s in first["segments"] if s["learned"])
    context = "".join(s["text"] for s in first["segments"] if not s["learned"])
    assert learned.startswith("超过 2 小时升级到二线。") and "<|im_start|>user\n工单 0 超时多久升级？" in context
    assert body["columns"] == [] and body["editable"] is False  # JSONL: no columns to map
    assert client.get(f"/studio/files/{fid}/preview", params={"model": "nope"}).status_code == 404


def test_a_guessed_column_mapping_can_be_changed_into_a_new_file(client):
    csv = "questoin,answre,备注\n退款多久到账？,3 个工作日。,x\n怎么开发票？,在订单页申请。,y\n\n工单多久升级？,,z\n"
    fid = upload(client, csv.encode(), name="faq.csv").json()["id"]
    body = client.get(f"/studio/files/{fid}/preview", params={"model": "tiny-random"}).json()
    assert body["editable"] is True
    assert body["columns"] == [{"column": "questoin", "field": "instruction", "how": "guessed"},
                               {"column": "answre", "field": "response", "how": "guessed"},
                               {"column": "备注", "field": None, "how": "unused"}]
    wrong = client.post(f"/studio/files/{fid}/mapping", headers=ZH,
                        json={"fields": {"questoin": "instruction", "answre": None, "备注": None}})
    assert wrong.status_code == 400 and wrong.json()["error"]["message"] == "请恰好选择一列作为回答（现在选了 0 列）。"
    made = client.post(f"/studio/files/{fid}/mapping",
                       json={"fields": {"questoin": "instruction", "answre": None, "备注": "response"}})
    assert made.status_code == 200
    new = made.json()
    assert new["filename"] == "faq.mapped.jsonl" and new["id"] != fid
    report = client.get(f"/studio/files/{new['id']}/report").json()
    assert report["rows_ok"] == 3 and report["rows_total"] == 3  # the blank row 3 is no row, row 4 keeps its number
    preview = client.get(f"/studio/files/{new['id']}/preview", params={"model": "tiny-random"}).json()
    assert preview["rows"][0]["messages"][1]["content"] == "x" and [r["row"] for r in preview["rows"]] == [1, 2, 4]


def test_no_settings_for_a_base_that_cannot_run_here(client, monkeypatch):
    from lorastudio.models import availability

    monkeypatch.setattr(availability, "has_gpu", lambda: False)
    monkeypatch.setattr(availability, "hub_reachable", lambda: False)
    monkeypatch.setattr(availability, "hub_cached", lambda hub_id: False)
    fid = upload(client).json()["id"]
    refused = client.post("/studio/recommend", headers=ZH, json={"training_file": fid, "model": "Qwen/Qwen2.5-7B-Instruct"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "model_unavailable"
    assert refused.json()["error"]["message"].startswith(
        "Qwen/Qwen2.5-7B-Instruct 无法在这台服务器上运行：需要显存 24 GB 的 GPU，这台服务器没有；")
    assert client.post("/studio/recommend", json={"training_file": fid, "model": "tiny-random"}).status_code == 200


def job_failure_codes() -> set[str]:
    """Every `code` the service can give a failed job: the worker's, the supervisor's and the intake's
    `fail(…, code=…)`, and the trainer's error events (`trainer.error_code`), read from their source."""
    import re

    root = Path(__file__).resolve().parents[1] / "lorastudio"
    codes: set[str] = set()
    for name in ("serve/worker.py", "serve/supervisor.py", "serve/intake.py"):
        text = (root / name).read_text(encoding="utf-8")
        for call in re.finditer(r"fail\((.*?)\)\n", text, re.S):
            codes.update(re.findall(r'code="(\w+)"', call.group(1)))
    trainer = (root / "train" / "trainer.py").read_text(encoding="utf-8")
    body = trainer.split("def error_code", 1)[1].split("\nclass ", 1)[0]
    codes.update(re.findall(r'return "(\w+)"', body))
    return codes


def test_every_job_failure_code_has_words_in_both_languages():
    """A failed job's reason is said by the page from its code (steps/job.js, `train.error.<code>`): every
    code the service can set has an English and a Chinese rendering; the Chinese one has no English words."""
    import re

    codes = job_failure_codes()
    assert {"invalid_file", "invalid_hyperparameters", "model_unavailable", "training_failed",
            "training_interrupted", "internal_error"} <= codes, codes  # the collection itself works
    web = Path(__file__).resolve().parents[1] / "lorastudio" / "web" / "i18n"
    en = json.loads((web / "en.json").read_text(encoding="utf-8"))
    zh = json.loads((web / "zh.json").read_text(encoding="utf-8"))
    missing = sorted(c for c in codes if f"train.error.{c}" not in en or f"train.error.{c}" not in zh)
    assert missing == [], missing
    for c in codes:
        assert not re.search("[A-Za-z]{3,}", zh[f"train.error.{c}"]), (c, zh[f"train.error.{c}"])
