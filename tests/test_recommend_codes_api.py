"""Recommender codes end to end: `GET /studio/messages`, `POST /studio/recommend` (quick preview, time
budget, codes), and `lorastudio train` printing them in the user's language with --quick/--time-budget."""

from __future__ import annotations

import re
import string

import pytest

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from lorastudio.serve import create_app  # noqa: E402
from tests.test_serve_api import make_settings, upload  # noqa: E402
from tests.train_fixtures import write_rows  # noqa: E402


@pytest.fixture
def client(tmp_path):
    with TestClient(create_app(make_settings(tmp_path))) as c:
        yield c


def fill(template: str, params: dict) -> str:
    """What the page does with a template: replace each {name} by its parameter."""
    return re.sub(r"\{(\w+)\}", lambda m: str(params[m.group(1)]), template)


def test_messages_endpoint_serves_every_code_in_both_languages(client):
    en = client.get("/studio/messages", params={"lang": "en"}).json()
    zh = client.get("/studio/messages", params={"lang": "zh"}).json()
    assert en["lang"] == "en" and zh["lang"] == "zh"
    assert set(en["messages"]) == set(zh["messages"])
    assert all(k.startswith(("rec.", "warn.", "estimate.")) for k in en["messages"])
    assert "rec.num_epochs.full" in en["messages"] and "warn.few_rows" in en["messages"]
    for code, template in zh["messages"].items():
        names = {n for _, n, _, _ in string.Formatter().parse(template) if n}
        assert names == {n for _, n, _, _ in string.Formatter().parse(en["messages"][code]) if n}, code
    # the header chooses when no lang is given; anything else is a clear 400
    assert client.get("/studio/messages", headers={"Accept-Language": "zh-CN,zh"}).json()["lang"] == "zh"
    bad = client.get("/studio/messages", params={"lang": "fr"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "lang"


def test_recommend_returns_codes_alternatives_and_renders_with_the_messages(client):
    fid = upload(client).json()["id"]
    rec = client.post("/studio/recommend", json={"training_file": fid, "model": "default", "task": "qa"}).json()
    assert {"settings", "reasons", "estimate", "warnings", "reason_codes", "warning_codes", "alternatives",
            "schedule"} <= set(rec)
    assert rec["schedule"] == "full" and set(rec["reason_codes"]) == set(rec["reasons"])
    messages = {lang: client.get("/studio/messages", params={"lang": lang}).json()["messages"] for lang in ("en", "zh")}
    for key, entry in rec["reason_codes"].items():
        assert fill(messages["en"][entry["code"]], entry["params"]) == rec["reasons"][key]
        assert re.search(r"[\u4e00-\u9fff]", fill(messages["zh"][entry["code"]], entry["params"]))
    for entry, line in zip(rec["warning_codes"], rec["warnings"], strict=True):
        assert fill(messages["en"][entry["code"]], entry["params"]) == line
    assert any(w["code"] == "warn.few_rows" for w in rec["warning_codes"])  # 12 rows
    device = rec["estimate"]["device_code"]
    assert fill(messages["en"][device["code"]], device["params"]) == rec["estimate"]["device"]
    quick = rec["alternatives"]["quick"]
    assert quick["settings_changes"]["num_epochs"] == 1.0 and quick["cost"]["code"] == "estimate.quick_cost"
    assert quick["estimate"]["seconds"] < rec["estimate"]["seconds"]

    chosen = client.post("/studio/recommend", json={"training_file": fid, "model": "default", "quick": True}).json()
    assert chosen["schedule"] == "quick" and chosen["settings"]["num_epochs"] == 1.0
    assert "full" in chosen["alternatives"]
    budget = client.post("/studio/recommend", json={"training_file": fid, "model": "default",
                                                    "time_budget_s": 0}).json()
    assert budget["error"]["param"] == "time_budget_s"


def test_recommend_estimates_the_users_changes_and_refuses_bad_ones(client):
    fid = upload(client).json()["id"]
    ask = {"training_file": fid, "model": "default", "task": "qa"}
    rec = client.post("/studio/recommend", json=ask).json()
    assert "changed_estimate" not in rec or rec["changed_estimate"] is None
    epochs = rec["settings"]["num_epochs"]
    more = client.post("/studio/recommend", json={**ask, "settings": {"num_epochs": 2 * epochs, "lora_r": 8}}).json()
    assert more["settings"] == rec["settings"] and more["estimate"] == rec["estimate"]  # the recommendation stays
    assert more["changed_settings"] == ["num_epochs"]  # the rank does not move the time
    assert more["changed_estimate"]["tokens"] == pytest.approx(2 * rec["estimate"]["tokens"], abs=2)
    assert more["changed_estimate"]["seconds"] > rec["estimate"]["seconds"]
    same = client.post("/studio/recommend", json={**ask, "settings": {"lora_r": 8}}).json()
    assert same["changed_settings"] == [] and same["changed_estimate"] is None
    for bad, param in (({"num_epochs": "many"}, "settings.num_epochs"), ({"lora_rank": 8}, "settings.lora_rank"),
                       ({"num_epochs": -1}, "settings.num_epochs")):
        resp = client.post("/studio/recommend", json={**ask, "settings": bad})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == param, resp.text


def test_cli_quick_and_time_budget_print_codes_in_the_users_language(tmp_path, capsys, monkeypatch):
    from lorastudio.cli import main
    from lorastudio.commands.train import _recommended

    data = write_rows(tmp_path / "rows.jsonl")
    monkeypatch.setenv("LORASTUDIO_LANG", "zh")
    settings = _recommended(str(data), "default", "qa", quiet=False, quick=True)
    err = capsys.readouterr().err
    assert settings["num_epochs"] == 1.0 and settings["extra"]["schedule"] == "quick" and settings["extra"]["estimate"]["seconds"] > 0
    assert "推荐设置：" in err and "快速预览" in err and "预计：" in err
    assert "Recommended settings" not in err and "pass" not in err

    monkeypatch.setenv("LORASTUDIO_LANG", "en")
    settings = _recommended(str(data), "default", "qa", quiet=False)
    err = capsys.readouterr().err
    assert settings["extra"]["schedule"] == "full" and settings["extra"]["estimate"]["seconds"] > 0 and settings["num_epochs"] >= 3
    assert "Recommended settings:" in err and "option --quick: Quick preview" in err
    settings = _recommended(str(data), "default", "qa", quiet=True, time_budget_min=0.1)
    assert settings["extra"]["schedule"] == "budget" and settings["extra"]["estimate"]["seconds"] > 0 and settings["num_epochs"] == 1.0

    # flags that skip the recommender cannot take --quick; a budget must be positive
    out = str(tmp_path / "out")
    assert main(["train", str(data), "-o", out, "--quick", "--no-recommend"]) == 2
    assert "--quick/--time-budget" in capsys.readouterr().err
    assert main(["train", str(data), "-o", out, "--time-budget", "0"]) == 2
    assert "--time-budget" in capsys.readouterr().err
