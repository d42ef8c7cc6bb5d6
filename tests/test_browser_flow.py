"""The whole no-code flow in a real Chromium against a real `lorastudio serve` on tiny-random, in
English and in Chinese: broken file → its problems → good file → settings → training (live progress,
loss chart, reload mid-job; in the Chinese run also a server restart mid-job) → compare → adapter
download. Screenshots of every step go to screenshots/.

About 1–2 minutes per language on a busy 2-core machine (most of it is the 6 training steps).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
import yaml
from browser_support import (
    LAPTOP,
    PHONE,
    REPO,
    check_layout,
    chromium,
    free_port,
    open_page,
    require_chromium,
    shot,
    shot_sections,
)

pytestmark = pytest.mark.browser

SHARED = REPO.parent / "shared" / "data"
TRAIN_STEPS = 40  # long enough that the reload and the server restart happen mid-job
BROKEN_CSV = """instruction,response
工单超过多久没处理会自动升级？,工单超过48小时未处理，系统会自动升级到二线护航组。
SLA等级是怎么划分的？,SLA分三级：P0要求10分钟响应；P1要求30分钟响应；P2要求4小时响应。
客服热线是多少？,客服热线是400-820-7788，人工服务时间为每天9:00-22:00。
栈台Max多少钱？,
晚上十点以后谁来接待客户？,22:00至次日9:00由智能助手小栈接待。
一线客服能直接给客户发多少补偿？,一线客服可直接发放50元以内的优惠券。
,退款审核通过后原路退回，3个工作日内到账。
"""


def broken_file(tmp: Path) -> tuple[Path, int]:
    """The shared dirty CSV (12 problem rows) if this checkout has it, else a small one with 2."""
    shared = SHARED / "yunzhan_broken.csv"
    if not shared.is_file():
        shared = REPO / "tests" / "fixtures" / "yunzhan_broken.csv"  # the repository's copy
    if shared.is_file():
        return shared, 12
    path = tmp / "broken.csv"
    path.write_text(BROKEN_CSV, encoding="utf-8")
    return path, 2


def good_file(tmp: Path) -> tuple[Path, int]:
    shared = SHARED / "yunzhan_train.jsonl"
    if not shared.is_file():
        shared = REPO / "lorastudio" / "assets" / "demo" / "yunzhan_train.jsonl"  # the bundled copy
    if shared.is_file():
        return shared, sum(1 for line in shared.read_text(encoding="utf-8").splitlines() if line.strip())
    path = tmp / "good.jsonl"
    rows = [{"instruction": f"问题 {i}：工单超过多久会升级？", "response": f"回答 {i}：超过48小时自动升级到二线护航组。"}
            for i in range(40)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path, len(rows)


class Studio:
    """`python -m lorastudio serve` in a subprocess on a fixed port and data dir; restartable."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir / "serve.log"

    def start(self) -> None:
        log = self.log_path.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lorastudio", "serve", "--data-dir", str(self.data_dir), "--port", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=REPO)
        log.close()
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                pytest.fail("lorastudio serve did not start:\n" + self.log_path.read_text())
            time.sleep(0.5)

    def stop(self) -> None:
        """SIGTERM: the service checkpoints running trainers and re-queues their jobs."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    require_chromium()
    server = Studio(tmp_path_factory.mktemp("studio-data"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    yield from chromium()


def both_widths(page, name: str, extra: list[str]) -> None:
    """Check and photograph the page at laptop and phone width, then go back to laptop width."""
    check_layout(page, extra)
    shot(page, f"{name}-laptop")
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(250)
    check_layout(page, extra)
    shot_sections(page, f"{name}-phone")
    page.set_viewport_size(LAPTOP)
    page.wait_for_timeout(250)


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_whole_flow_on_tiny_random(browser, studio, lang, tmp_path):
    from playwright.sync_api import expect

    context, page, page_errors = open_page(browser, studio.base + "/", lang)
    zh = lang == "zh"
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN" if zh else "en")
    expect(page.get_by_test_id("base-model-select")).to_have_value("default")
    expect(page.get_by_test_id("start-training")).to_be_disabled()
    check_layout(page)
    shot(page, f"{lang}-01-start-laptop")

    # 1. a broken file: every problem row listed, rejected rows downloadable
    broken, problems = broken_file(tmp_path)
    names = [broken.name]
    page.get_by_test_id("upload-input").set_input_files(str(broken))
    expect(page.get_by_test_id("validation-issue")).to_have_count(problems, timeout=60_000)
    expect(page.get_by_test_id("validation-summary")).to_contain_text("28" if problems == 12 else "5")
    first = page.get_by_test_id("validation-issue").first
    expect(first).to_contain_text("回答为空" if zh else "Answer is empty")
    with page.expect_download() as info:
        page.locator("#download-rejected").click()
    rejected = Path(info.value.path()).read_text(encoding="utf-8-sig")
    assert len([line for line in rejected.splitlines() if line.strip()]) >= problems + 1
    both_widths(page, f"{lang}-02-problems", names)

    # 2. the fixed file, a task and the smoke-test model; recommendation with reasons and estimate
    good, rows = good_file(tmp_path)
    names.append(good.name)
    page.get_by_test_id("upload-input").set_input_files(str(good))
    expect(page.get_by_test_id("validation-summary")).to_contain_text(str(rows), timeout=60_000)
    expect(page.get_by_test_id("validation-issue")).to_have_count(0)
    page.get_by_test_id("task-type-select").select_option("qa")
    page.get_by_test_id("base-model-select").select_option("tiny-random")
    expect(page.locator("#model-info")).to_contain_text("仅供测试" if zh else "for testing only")
    expect(page.get_by_test_id("recommended-settings").locator(".setting").first).to_be_visible(timeout=60_000)
    expect(page.get_by_test_id("cost-estimate")).to_contain_text("约" if zh else "about")
    # the full schedule by default; the quick preview offered beside it with its recall cost
    expect(page.get_by_test_id("schedule-full")).to_be_checked()
    expect(page.get_by_test_id("quick-preview")).not_to_be_checked()
    expect(page.get_by_test_id("quick-cost")).not_to_be_empty()
    page.locator("#advanced summary").click()
    for key, value in (("max_steps", TRAIN_STEPS), ("augment_paraphrases", 0), ("replay_rows", 0)):
        page.locator(f"#adv-{key}").fill(str(value))
        page.locator(f"#adv-{key}").press("Tab")
    # A value equal to the recommendation is no change (the recommender may already say 0 here).
    expect(page.locator(".setting.changed", has_text=str(TRAIN_STEPS))).to_have_count(1)
    both_widths(page, f"{lang}-03-settings", names)

    # 3. train: live progress and loss chart; reload mid-job re-attaches to the same job
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/v1/fine_tuning/jobs")) as sent:
        page.get_by_test_id("start-training").click()
    job_request = sent.value.post_data_json
    assert job_request["model"] == "tiny-random"
    hyper = job_request["hyperparameters"]
    assert hyper["task"] == "qa" and hyper["max_steps"] == TRAIN_STEPS and "quick" not in hyper
    assert hyper.get("augment_paraphrases", 0) == 0 and hyper.get("replay_rows", 0) == 0
    chart = page.get_by_test_id("loss-chart")
    points = "Number(document.getElementById('loss-chart').dataset.points || 0)"
    page.wait_for_function(f"() => {points} >= 2", timeout=180_000)
    job_id = page.locator("#job-id").inner_text()
    assert job_id.startswith("ftjob-") and job_id in page.url
    progress = page.get_by_test_id("job-progress")
    if page.get_by_test_id("job-status").get_attribute("data-status") == "running":
        assert 0 < float(progress.get_attribute("aria-valuenow")) < 100
        expect(page.get_by_test_id("job-eta")).not_to_have_text("—")
    both_widths(page, f"{lang}-04-training", names)

    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator("#job-id")).to_have_text(job_id)
    after_reload = page.evaluate(f"() => {points}")
    assert after_reload >= 2  # the history came back with the page
    if page.get_by_test_id("job-status").get_attribute("data-status") == "running":
        # still live after the reload: new points arrive through the re-opened stream
        # (or the job ends: its last step may already have been in the history the page reloaded)
        done = "document.querySelector('[data-testid=job-status]').dataset.status === 'succeeded'"
        page.wait_for_function(f"() => {points} > {after_reload} || {done}", timeout=120_000)
    shot(page, f"{lang}-05-reattached-laptop")

    if zh and page.get_by_test_id("job-status").get_attribute("data-status") == "running":
        # restart the server mid-job: the page keeps its chart, reconnects, and the job resumes
        before_restart = page.evaluate(f"() => {points}")
        studio.stop()
        # the job may have finished (and said so to the page) just before the stop: nothing to reconnect to
        finished_first = page.get_by_test_id("job-status").get_attribute("data-status") == "succeeded"
        if not finished_first:
            expect(page.locator("#job-stage")).to_contain_text("正在重连", timeout=30_000)
            shot(page, f"{lang}-05b-server-down-laptop")
        studio.start()
        if not finished_first:
            expect(page.locator("#job-stage")).not_to_contain_text("正在重连", timeout=60_000)
            # the interruption's checkpoint ("save") and the resumed session's "prepare": still training
            train_current = ("document.querySelector('[data-testid=job-stage-step][data-stage=train]')"
                             "?.dataset.state === 'current'")
            succeeded = "document.querySelector('[data-testid=job-status]').dataset.status === 'succeeded'"
            page.wait_for_function(f"() => {train_current} || {succeeded}", timeout=120_000)
        expect(page.locator("#job-id")).to_have_text(job_id)
        assert page.evaluate(f"() => {points}") >= before_restart

    # 40 steps (and, in zh, a resume after the restart) on a 2-core machine other work shares: minutes
    expect(page.get_by_test_id("job-status")).to_have_attribute("data-status", "succeeded", timeout=420_000)
    # the stages in order, all done, never moved back by the resumed session's "prepare"; the time taken
    stages = page.eval_on_selector_all("[data-testid=job-stage-step]",
                                       "els => els.map(e => [e.dataset.stage, e.dataset.state])")
    assert [name for name, _ in stages if name in ("prepare", "tokenize", "train", "save")] == [
        "prepare", "tokenize", "train", "save"]
    assert {state for _, state in stages} == {"done"}, stages
    expect(page.get_by_test_id("job-estimate")).to_have_attribute("data-basis", "done")
    expect(page.get_by_test_id("job-estimate")).to_contain_text("用时" if zh else "Took")
    expect(chart).to_have_attribute("data-points", str(TRAIN_STEPS))
    expect(progress).to_have_attribute("aria-valuenow", "100")
    # what the trainer really ran with: the recommendation plus exactly the user's changes
    ran = yaml.safe_load((studio.data_dir / "jobs" / job_id / "train_config.yaml").read_text(encoding="utf-8"))
    assert (ran["base"], ran["task"], ran["max_steps"]) == ("tiny-random", "qa", TRAIN_STEPS)
    assert ran["augment_paraphrases"] == 0 and ran["replay_rows"] == 0
    job_row = page.locator(".job-item", has_text=job_id)
    expect(job_row).to_contain_text("已完成" if zh else "succeeded")

    # 4. compare base and tuned answers side by side
    question = "工单超过多久没处理会自动升级？"
    expect(page.locator("#compare-body")).to_be_visible(timeout=60_000)
    page.locator("#compare-length").select_option("32")  # tiny-random writes noise; keep it short
    page.get_by_test_id("compare-input").fill(question)
    # streamed (the playground's route: side a = the base, b = the tuned model), each with its timing
    with page.expect_response("**/studio/playground/stream", timeout=120_000) as answer:
        page.get_by_test_id("compare-send").click()
    expect(page.get_by_test_id("compare-send")).to_be_enabled(timeout=120_000)
    assert answer.value.status == 200, answer.value.text()
    events = [json.loads(line[6:]) for line in answer.value.text().splitlines() if line.startswith("data: ")]
    done = {e["side"]: e for e in events if e["type"] == "done"}
    assert set(done) == {"a", "b"}, events
    body = {"base_answer": done["a"]["text"], "tuned_answer": done["b"]["text"]}
    expect(page.locator("#compare-state")).to_be_empty()
    expect(page.get_by_test_id("compare-tuned-timing")).not_to_be_empty()
    for side, text in (("compare-base-output", body["base_answer"]), ("compare-tuned-output", body["tuned_answer"])):
        shown = page.get_by_test_id(side).text_content()
        # tiny-random's noise may be blank: then the page says so instead of showing an empty box
        assert " ".join(shown.split()) == " ".join(text.split()) or (not text.strip() and shown), (side, shown)
    expect(page.locator("#snippet-code")).to_contain_text("ft:tiny-random:")
    both_widths(page, f"{lang}-06-compare", names)

    # 5. the adapter download is a PEFT adapter in a zip
    with page.expect_download(timeout=120_000) as info:
        page.get_by_test_id("download-adapter").click()
    with zipfile.ZipFile(info.value.path()) as z:
        files = set(z.namelist())
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert page_errors == []
    context.close()
