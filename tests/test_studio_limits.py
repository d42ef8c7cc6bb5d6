"""The row limit (issue 15: "limits with clear, localised errors: question length, upload size, rows"):
a training file with more data rows than the server takes (LORASTUDIO_MAX_ROWS, default 100,000) is
refused before its rows are checked — by the studio's routes as a 400 `too_many_rows` whose `params`
name the file (the user's name), the count and the limit, in the request's language, and by a job as
`invalid_file` saying the same."""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from lorastudio.data import DataError, validate  # noqa: E402
from lorastudio.serve import create_app  # noqa: E402
from lorastudio.serve.settings import Settings, SettingsError  # noqa: E402
from tests.test_serve_api import make_settings, upload, wait_status  # noqa: E402

ROWS = 12


def rows_file(n: int = ROWS) -> bytes:
    return "\n".join(json.dumps({"instruction": f"问题 {i}？", "response": f"回答 {i}。"}, ensure_ascii=False)
                     for i in range(n)).encode() + b"\n"


@pytest.fixture
def client(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEPS", "2")
    monkeypatch.setenv("FAKE_STEP_S", "0.01")
    with TestClient(create_app(make_settings(tmp_path, max_rows=ROWS - 1))) as c:
        yield c


def test_the_data_layer_refuses_more_rows_than_the_limit_before_checking_them(tmp_path):
    path = tmp_path / "faq.jsonl"
    path.write_bytes(rows_file())
    assert validate(path, max_rows=ROWS).rows_ok == ROWS  # at the limit: fine
    assert validate(path).rows_ok == ROWS  # no limit (the CLI, the trainer)
    with pytest.raises(DataError) as caught:
        validate(path, max_rows=ROWS - 1)
    err = caught.value
    assert err.code == "too_many_rows" and err.params == {"file": "faq.jsonl", "rows": ROWS, "limit": ROWS - 1}
    assert str(tmp_path) not in str(err)
    assert "faq.jsonl has 12 data rows; one training file may have at most 11" in str(err)
    assert "拆成每个不超过 11 行" in err.localized("zh")


def test_the_setting_has_a_default_the_environment_and_a_floor(monkeypatch, tmp_path):
    assert Settings(data_dir=tmp_path).max_rows == 100_000
    monkeypatch.setenv("LORASTUDIO_MAX_ROWS", "2500")
    assert Settings.from_env(data_dir=tmp_path).max_rows == 2500
    with pytest.raises(SettingsError, match="LORASTUDIO_MAX_ROWS"):
        Settings(data_dir=tmp_path, max_rows=0)


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_the_studio_says_the_file_the_count_and_the_limit_in_the_users_language(client, lang):
    fid = upload(client, rows_file(), name="客服问答.jsonl").json()["id"]
    headers = {"Accept-Language": "zh-CN" if lang == "zh" else "en-US"}
    answers = [client.get(f"/studio/files/{fid}/report", headers=headers),
               client.get(f"/studio/files/{fid}/preview", headers=headers),
               client.post("/studio/recommend", json={"training_file": fid, "model": "tiny-random"}, headers=headers)]
    for r in answers:
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "too_many_rows" and error["param"] == "file_id"
        assert error["params"] == {"file": "客服问答.jsonl", "rows": ROWS, "limit": ROWS - 1}
        message = error["message"]
        assert message.startswith("客服问答.jsonl") and "/" not in message and "file-" not in message
        if lang == "zh":
            assert "12 行数据，一个训练文件最多 11 行" in message
            assert not re.search("[A-Za-z]{3,}", message.replace("客服问答.jsonl", "")), message
        else:
            assert "12 data rows" in message and "at most 11" in message and "Split it" in message


def test_a_job_on_a_file_over_the_limit_fails_saying_why(client):
    fid = upload(client, rows_file(), name="faq.jsonl").json()["id"]
    job = client.post("/v1/fine_tuning/jobs", json={"model": "tiny-random", "training_file": fid}).json()
    job = wait_status(client, job["id"], ("failed", "succeeded"))
    assert job["status"] == "failed" and job["error"]["code"] == "invalid_file"
    assert job["error"]["message"].startswith("faq.jsonl has 12 data rows; one training file may have at most 11")
    # one row fewer is fine
    ok = upload(client, rows_file(ROWS - 1), name="faq.jsonl").json()["id"]
    assert client.get(f"/studio/files/{ok}/report").json()["rows_ok"] == ROWS - 1
