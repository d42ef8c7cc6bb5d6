"""Issue 15's done criterion: one walk through the whole studio in Chromium, as a user does it —
upload → data preview → settings → start → reload → pause / resume → compare any two → evaluate →
forgetting meter → download — in English and Chinese, at desktop (1366 px) and phone (390 px) width,
against the real service in-process (uvicorn) with the fake trainer and the scripted chat engine.

At every step: nothing in the other language (visible text, and placeholders, tooltips, screen-reader
labels and fixed choices), no server path or traceback anywhere on the page, nothing wider than the
screen, no overlapping controls, and a screenshot (`walk-{lang}-{width}-{nn}-{step}.png` in
screenshots/ or LORASTUDIO_SCREENSHOTS).
"""

from __future__ import annotations

import io
import json
import urllib.request
import zipfile

import pytest
from browser_support import (
    LAPTOP,
    PHONE,
    check_layout,
    chromium,
    leaks,
    open_page,
    shot,
    studio_server,
    untranslated_attributes,
)

from tests.playground_fakes import GENERAL, SlowEngine

pytestmark = [pytest.mark.browser, pytest.mark.slow]
DATA_NAME = "walk_faq.csv"
QUESTIONS_NAME = "walk_questions.csv"
NAMES = [DATA_NAME, QUESTIONS_NAME]


class WalkEngine(SlowEngine):
    delay = 0.05  # pieces arrive visibly, yet four walks stay short


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The service with the real routes and web page, the fake trainer (100 steps of 0.3 s: long enough
    to check and photograph the page twice, reload, pause and resume mid-job on a loaded 2-core machine;
    40 steps, 12 s, could end before the pause there) and the scripted engine."""
    with studio_server(tmp_path_factory.mktemp("walk"), WalkEngine, FAKE_STEPS="100", FAKE_STEP_S="0.3") as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    yield from chromium()


def write_files(tmp_path) -> tuple[str, str]:
    data = tmp_path / DATA_NAME
    rows = [("工单超过多久没处理会自动升级？", "超过 48 小时自动升级。"), ("退款多久到账？", "3 到 5 个工作日。"),
            ("满意度低于 3 分怎么办？", "自动重开并转质检组复核。"), ("栈台 Max 多少钱？", "每月 199 元。")]
    data.write_text("question,answer\n" + "\n".join(f"{q},{a}" for q, a in rows * 3) + "\n", encoding="utf-8")
    questions = tmp_path / QUESTIONS_NAME
    keys = ["|".join(k if isinstance(k, str) else k[0] for k in q.keys) for q in GENERAL[:4]]
    questions.write_text("question,must_contain\n" + "\n".join(f"{q.question},{k}" for q, k in zip(GENERAL[:4], keys, strict=True))
                         + "\n", encoding="utf-8")
    return str(data), str(questions)


class Walk:
    """One walk's page, with the check and screenshot every step ends with."""

    def __init__(self, page, lang: str, width: str) -> None:
        self.page, self.lang, self.width, self.n = page, lang, width, 0

    def step(self, name: str) -> None:
        self.n += 1
        page = self.page
        check_layout(page, NAMES)
        assert leaks(page) == [], (name, leaks(page))
        assert untranslated_attributes(page, self.lang, NAMES) == [], (name, untranslated_attributes(page, self.lang))
        shot(page, f"walk-{self.lang}-{self.width}-{self.n:02d}-{name}")


def walk(browser, server, tmp_path, lang: str, viewport: dict) -> None:
    from playwright.sync_api import expect

    zh = lang == "zh"
    width = "laptop" if viewport == LAPTOP else "phone"
    data, questions = write_files(tmp_path)
    context, page, errors = open_page(browser, server + "/", lang, viewport)
    w = Walk(page, lang, width)
    w.step("start")

    # 1. upload → the report and the data preview (the rows as the model will see them)
    page.get_by_test_id("upload-input").set_input_files(data)
    expect(page.get_by_test_id("validation-summary")).to_contain_text("12")
    preview = page.get_by_test_id("data-preview")
    expect(preview).to_be_visible()
    expect(preview).to_contain_text("工单超过多久没处理会自动升级？", timeout=60_000)  # the base's tokenizer loads
    expect(preview).to_contain_text("超过 48 小时自动升级。")
    w.step("preview")

    # 2. settings: the smoke-test base, the recommendation with its reasons
    page.get_by_test_id("base-model-select").select_option("tiny-random")
    settings = page.get_by_test_id("recommended-settings")
    expect(settings).to_be_visible()
    expect(page.get_by_test_id("start-training")).to_be_enabled()
    w.step("settings")

    # 3. start → running, then a reload finds the same job still running
    page.get_by_test_id("start-training").click()
    status = page.get_by_test_id("job-status")
    expect(status).to_have_attribute("data-status", "running", timeout=30_000)
    expect(page.get_by_test_id("loss-chart")).not_to_have_attribute("data-points", "0")
    job_id = page.get_by_test_id("job-list-item").first.get_attribute("data-job-id")
    assert job_id and job_id in page.url
    w.step("running")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert job_id in page.url
    expect(status).to_have_attribute("data-status", "running")
    w.step("reloaded")

    # 4. pause (the trainer keeps a checkpoint) → resume → it finishes
    page.get_by_test_id("job-pause").click()
    expect(status).to_have_attribute("data-status", "paused", timeout=30_000)
    expect(page.get_by_test_id("job-resume")).to_be_visible()
    w.step("paused")
    page.get_by_test_id("job-resume").click()
    expect(status).not_to_have_attribute("data-status", "paused", timeout=30_000)
    expect(status).to_have_attribute("data-status", "succeeded", timeout=60_000)
    expect(page.get_by_test_id("job-progress")).to_have_attribute("aria-valuenow", "100")
    job = json.load(urllib.request.urlopen(f"{server}/v1/fine_tuning/jobs/{job_id}"))
    tuned = job["fine_tuned_model"]
    w.step("finished")

    # 5. compare any two: the playground, the base vs this job's adapter, streamed side by side
    a, b = page.get_by_test_id("compare-model-a"), page.get_by_test_id("compare-model-b")
    expect(b.locator(f"option[value='{tuned}']")).to_have_count(1)
    a.select_option("tiny-random")
    b.select_option(tuned)
    question = "退款多久到账？"
    page.get_by_test_id("playground-input").fill(question)
    page.get_by_test_id("playground-send").click()
    out_a, out_b = page.get_by_test_id("compare-a-output"), page.get_by_test_id("compare-b-output")
    expect(out_b).to_have_attribute("data-state", "done", timeout=30_000)
    assert out_a.inner_text() == f"tiny-random|base|-|1: {question}"
    assert out_b.inner_text() == f"tiny-random|{job_id}|-|1: {question}"
    for side in ("a", "b"):
        expect(page.get_by_test_id(f"compare-{side}-timing")).to_contain_text("token")
    # and step 4's before/after of this job, streamed the same way
    page.get_by_test_id("compare-input").fill(question)
    page.get_by_test_id("compare-send").click()
    expect(page.get_by_test_id("compare-tuned-output")).to_have_attribute("data-state", "done", timeout=30_000)
    expect(page.get_by_test_id("compare-tuned-output")).to_have_text(f"tiny-random|{job_id}|-|1: {question}")
    expect(page.get_by_test_id("compare-base-timing")).to_contain_text("token")
    w.step("compared")

    # 6. evaluate: held-out questions with key facts, before / after
    page.get_by_test_id("eval-model").select_option(tuned)
    page.get_by_test_id("eval-upload").set_input_files(questions)
    page.get_by_test_id("eval-run").click()
    expect(page.get_by_test_id("eval-summary")).to_be_visible(timeout=30_000)
    expect(page.locator("#eval-body-rows tr")).to_have_count(4)
    expect(page.locator("#eval-body-rows tr[data-flip=lost]")).to_have_count(2)  # the scripted forgetting
    w.step("evaluated")

    # 7. the forgetting meter: the built-in general questions, base vs tuned — run by itself after the job
    # (no click): in the job panel, the job list and the evaluation card
    job_meter = page.get_by_test_id("job-forgetting")
    expect(job_meter).to_have_attribute("data-state", "done", timeout=60_000)
    expect(job_meter).to_have_attribute("data-kept", "22")
    expect(job_meter.locator("[data-testid=forgetting-flip][data-flip=lost]")).to_have_count(2)
    expect(page.locator(f"[data-testid=job-list-item][data-job-id={job_id}]").get_by_test_id("job-list-forgetting")
           ).to_contain_text("常识问题：保留 22/24" if zh else "General questions: kept 22 of 24")
    meter = page.get_by_test_id("forgetting-meter")
    expect(meter).to_have_attribute("data-state", "done", timeout=60_000)
    expect(meter).to_have_attribute("data-kept", "22")
    expect(meter).to_have_attribute("data-lost", "2")
    expect(meter).to_contain_text("忘记 2" if zh else "forgot 2")
    w.step("forgetting")

    # 8. download: the adapter alone (a zip of the PEFT files and its model card, no server path);
    # the GGUF says how long building and checking it takes before anything starts
    expect(page.get_by_test_id("use-job-select")).to_have_value(job_id)
    with page.expect_download() as dl:
        page.get_by_test_id("download-adapter").click()
    with zipfile.ZipFile(io.BytesIO(open(dl.value.path(), "rb").read())) as zf:
        names = set(zf.namelist())
        readme = zf.read("README.md").decode("utf-8") if "README.md" in names else ""
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names, names
    assert "/tmp/" not in readme and ".local/share" not in readme
    check = page.get_by_test_id("gguf-check")
    expect(check).to_have_attribute("data-state", "none")
    expect(check).to_contain_text("30 秒" if zh else "30 s")  # the smoke-test base: the estimate's floor
    expect(page.get_by_test_id("gguf-check-run")).to_be_enabled()
    w.step("download")
    assert errors == []
    context.close()


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("width", ["laptop", "phone"])
def test_the_whole_walk(browser, server, tmp_path, lang, width):
    walk(browser, server, tmp_path, lang, LAPTOP if width == "laptop" else PHONE)
