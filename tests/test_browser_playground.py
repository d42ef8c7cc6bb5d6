"""The playground and evaluation cards in Chromium against the real service (in-process uvicorn, the
fake trainer, a scripted chat engine whose pieces arrive 0.12 s apart), in both languages, at desktop
and 390 px width, with screenshots in screenshots/ (`pg-{en,zh}-*`).

Covers issue 15 #2 (compare any two models, with no finished job too, streamed, with timings,
temperature and system prompt), #3 (a 100,000-character question gets a clear error in the page's
language), the chat, the question set with its CSV/XLSX export, the before/after evaluation with flips
and the forgetting meter.
"""

from __future__ import annotations

import io
import json
import re
import time
import urllib.request

import pytest
from browser_support import (
    LAPTOP,
    PHONE,
    check_layout,
    chromium,
    expect_forgetting_panel,
    leaks,
    shot,
    shot_sections,
    studio_server,
)
from browser_support import open_page as open_url

from tests.playground_fakes import FORGOTTEN, GENERAL, SlowEngine

pytestmark = pytest.mark.browser
SECTIONS = ("step-playground", "step-eval")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The service with the real routes and web page, the fake trainer and the slow scripted engine."""
    with studio_server(tmp_path_factory.mktemp("pg"), SlowEngine, FAKE_STEPS="2", FAKE_STEP_S="0.01") as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    yield from chromium()


def finish_job(base: str) -> dict:
    """Upload a small file and train (fake trainer) until the job succeeded."""
    rows = "\n".join(json.dumps({"instruction": f"工单 {i} 超时多久升级？", "response": f"{i + 2} 小时"},
                                ensure_ascii=False) for i in range(12))
    boundary = "pgboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"seed.jsonl\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n{rows}\n\r\n--{boundary}--\r\n").encode()
    req = urllib.request.Request(base + "/v1/files", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    fid = json.load(urllib.request.urlopen(req))["id"]
    req = urllib.request.Request(base + "/v1/fine_tuning/jobs", json.dumps({"model": "tiny-random", "training_file": fid}).encode(),
                                 {"Content-Type": "application/json"})
    job = json.load(urllib.request.urlopen(req))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = json.load(urllib.request.urlopen(f"{base}/v1/fine_tuning/jobs/{job['id']}"))
        if job["status"] == "succeeded":
            return job
        assert job["status"] not in ("failed", "cancelled"), job
        time.sleep(0.1)
    raise AssertionError(f"job did not finish: {job}")


def open_page(browser, base, lang, viewport=LAPTOP):
    return open_url(browser, base + "/", lang, viewport)


def no_leaks(page) -> None:
    """No server path, traceback or Python exception name anywhere on the page."""
    assert leaks(page) == []


def layout(page, name: str) -> None:
    check_layout(page)
    no_leaks(page)
    shot(page, name)


def test_playground_and_evaluation(browser, server, tmp_path):
    from playwright.sync_api import expect

    for lang in ("en", "zh"):
        zh = lang == "zh"
        context, page, errors = open_page(browser, server, lang)
        a, b = page.get_by_test_id("compare-model-a"), page.get_by_test_id("compare-model-b")
        out_a, out_b = page.get_by_test_id("compare-a-output"), page.get_by_test_id("compare-b-output")

        if lang == "en":  # before any job has finished (the zh pass runs after the en pass made two)
            expect(page.locator("#eval-empty")).to_be_visible()
            expect(a).to_have_value("default")
            expect(b).to_have_value("")  # the base alone
            page.get_by_test_id("playground-input").fill("How long until a ticket is escalated?")
            page.get_by_test_id("playground-send").click()
            # streamed: part of the answer is on screen while it is still being written, then the timings
            partial = page.wait_for_function("""() => {
                const e = document.querySelector('[data-testid=compare-a-output]');
                return e.dataset.state === 'streaming' && e.textContent.length > 0 && e.textContent; }""").json_value()
            expect(out_a).to_have_attribute("data-state", "done")
            full = "default|base|-|1: How long until a ticket is escalated?"
            assert out_a.inner_text() == full and len(partial) < len(full), partial
            expect(page.get_by_test_id("compare-a-timing")).to_contain_text("tokens/s")
            expect(out_b).to_have_attribute("data-state", "off")
            # base vs base, B with its own settings
            b.select_option("default")
            page.locator("#pg-b-own").check()
            page.get_by_test_id("compare-temperature-b").fill("0.7")
            page.get_by_test_id("compare-system-b").fill("Be brief")
            page.get_by_test_id("compare-system").fill("Be kind")
            page.get_by_test_id("playground-send").click()
            # the sides answer one after the other: both states in one look while A streams (A's ~1 s could
            # be over between two separate reads on a loaded machine)
            states = page.wait_for_function("""() => {
                const state = (side) => document.querySelector(`[data-testid=compare-${side}-output]`).dataset.state;
                return state('a') === 'streaming' && [state('a'), state('b')]; }""").json_value()
            assert states == ["streaming", "waiting"], states
            expect(out_b).to_have_attribute("data-state", "done")
            assert out_a.inner_text() == "default|base|Be kind|2: How long until a ticket is escalated?"
            assert out_b.inner_text() == "default|base|Be brief|2: How long until a ticket is escalated?"
            layout(page, "pg-en-1-base-vs-base-laptop")
            context.close()
            jobs = [finish_job(server), finish_job(server)]
            context, page, errors = open_page(browser, server, lang)
            a, b = page.get_by_test_id("compare-model-a"), page.get_by_test_id("compare-model-b")
            out_a, out_b = page.get_by_test_id("compare-a-output"), page.get_by_test_id("compare-b-output")

        # two adapters of different jobs, none of them on screen; step 4 shows the newest finished job too
        expect(page.locator("#compare-body")).to_be_visible()
        adapters = [o.get_attribute("value") for o in b.locator("optgroup").first.locator("option").all()]
        assert len(adapters) == 2 and all(m.startswith("ft:") for m in adapters)
        a.select_option(adapters[1])
        b.select_option(adapters[0])
        page.get_by_test_id("playground-input").fill("Q1")
        page.get_by_test_id("playground-send").click()
        expect(out_b).to_have_attribute("data-state", "done")
        ids = {j["fine_tuned_model"]: j["id"] for j in jobs}
        assert out_a.inner_text() == f"tiny-random|{ids[adapters[1]]}|-|1: Q1"
        assert out_b.inner_text() == f"tiny-random|{ids[adapters[0]]}|-|1: Q1"
        expect(page.get_by_test_id("compare-b-timing")).to_contain_text("token")

        # a 100,000-character question: a clear error in the page's language, nothing sent
        page.get_by_test_id("playground-input").fill("长" * 100_000)
        page.get_by_test_id("playground-send").click()
        err = page.locator("#pg-state[data-testid=error-message]")
        expect(err).to_contain_text("100,000" if not zh else "100,000")
        expect(err).to_contain_text("最多允许" if zh else "at most")

        # chat: the second turn carries the first
        a.select_option("tiny-random")
        page.get_by_test_id("chat-input").fill("你好")
        page.get_by_test_id("chat-send").click()
        chat = page.get_by_test_id("chat-output")
        expect(chat.locator("li[data-role=assistant]")).to_have_count(1)
        page.get_by_test_id("chat-input").fill("再说一次")
        page.get_by_test_id("chat-send").click()
        expect(chat.locator("li[data-role=assistant]")).to_have_count(2)
        expect(chat.locator("li[data-role=assistant] .text").nth(1)).to_have_text("tiny-random|base|-|3: 再说一次")
        expect(chat.locator("li[data-role=user]")).to_have_count(2)
        layout(page, f"pg-{lang}-2-compare-chat-laptop")

        # a question set from a file with key facts, answered by the base and the first adapter
        a.select_option("tiny-random")
        b.select_option(adapters[0])
        qfile = tmp_path / "questions.csv"
        qfile.write_text("question,must_contain\n" + "\n".join(
            f"{q.question},{'|'.join(k if isinstance(k, str) else k[0] for k in q.keys)}" for q in GENERAL[:4])
            + "\nHow are you?,\n", encoding="utf-8")
        page.get_by_test_id("set-upload").set_input_files(str(qfile))
        expect(page.locator("#set-state")).to_contain_text("5")
        page.get_by_test_id("set-run").click()
        expect(page.get_by_test_id("set-summary")).to_be_visible()
        rows = page.locator("#set-body tr")
        expect(rows).to_have_count(5)
        flips = [page.locator(f"#set-body tr[data-index='{i}'] .flip").get_attribute("data-flip") for i in range(4)]
        assert flips == ["lost", "kept", "kept", "lost"], flips  # GENERAL[0] and [3] are the forgotten ones
        assert {GENERAL[0].question, GENERAL[3].question} == FORGOTTEN
        expect(page.get_by_test_id("set-summary")).to_contain_text("4")
        with page.expect_download() as dl:
            page.get_by_test_id("set-export-xlsx").click()
        from openpyxl import load_workbook

        ws = load_workbook(io.BytesIO(open(dl.value.path(), "rb").read())).active
        assert ws.max_row == 6 and ws["A2"].value == GENERAL[0].question
        assert ws["G2"].value == ("变错了" if zh else "now wrong")
        with page.expect_download() as dl:
            page.get_by_test_id("set-export-csv").click()
        csv_text = open(dl.value.path(), encoding="utf-8-sig").read()
        assert csv_text.splitlines()[0].startswith("问题" if zh else "Question") and "How are you?" in csv_text
        layout(page, f"pg-{lang}-3-set-laptop")

        # evaluation: the forgetting meter, on demand, then cached for the job
        expect(page.locator("#eval-body")).to_be_visible()
        page.get_by_test_id("eval-model").select_option(adapters[0])
        meter = page.get_by_test_id("forgetting-meter")
        if lang == "en":
            expect(meter).to_have_attribute("data-state", "none")
            page.get_by_test_id("forgetting-run").click()
        expect(meter).to_have_attribute("data-state", "done")  # zh: the en pass's result, from the cache
        expect(meter).to_have_attribute("data-kept", "22")
        expect(meter).to_have_attribute("data-lost", "2")
        expect(meter.locator("#forgetting-flips li[data-flip=lost]")).to_have_count(2)
        expect(meter).to_contain_text("忘记 2" if zh else "forgot 2")
        # held-out questions with key facts, before/after
        page.get_by_test_id("eval-upload").set_input_files(str(qfile))
        page.get_by_test_id("eval-run").click()
        expect(page.get_by_test_id("eval-summary")).to_be_visible()
        expect(page.locator("#eval-body-rows tr")).to_have_count(5)
        expect(page.locator("#eval-body-rows tr[data-flip=lost]")).to_have_count(2)
        expect(page.get_by_test_id("eval-summary")).to_contain_text("2")
        # a question file that cannot be used: the page's words, the user's file name, no server path
        bad = tmp_path / "broken.csv"
        bad.write_text("question,must_contain\n,x\n", encoding="utf-8")
        page.get_by_test_id("eval-upload").set_input_files(str(bad))
        err = page.locator("#eval-state[data-testid=error-message]")
        expect(err).to_contain_text("问题文件无法使用" if zh else "The question file cannot be used")
        expect(err).to_contain_text("broken.csv")
        expect(err).to_contain_text("第 1 行：问题为空" if zh else "row 1: the question is empty")
        if zh:  # the service's words come in the page's language too
            assert not re.search("[A-Za-z]{3,}", err.inner_text().replace("broken.csv", "")), err.inner_text()
        layout(page, f"pg-{lang}-4-evaluate-laptop")
        shot_sections(page, f"pg-{lang}-4-laptop", SECTIONS)

        page.set_viewport_size(PHONE)
        page.wait_for_timeout(300)
        check_layout(page)
        no_leaks(page)
        shot_sections(page, f"pg-{lang}-5-phone", SECTIONS)
        assert errors == []
        context.close()


def test_phone_width_from_the_start(browser, server):
    """A fresh phone-width page: pickers, chat and the evaluation card fit and speak one language."""
    from playwright.sync_api import expect

    for lang in ("zh", "en"):
        context, page, errors = open_page(browser, server, lang, viewport=PHONE)
        expect(page.get_by_test_id("compare-model-a")).not_to_have_value("")
        # bases that cannot run here are listed but cannot be chosen (the catalogue says which)
        catalog = json.load(urllib.request.urlopen(server + "/studio/models"))["data"]
        off = sorted(m["id"] for m in catalog if m.get("available") is False)
        disabled = page.locator("[data-testid=compare-model-a] option[disabled]")
        assert sorted(o.get_attribute("value") for o in disabled.all()) == off
        page.get_by_test_id("playground-send").click()  # no question: said in words
        expect(page.locator("#pg-state[data-testid=error-message]")).to_have_text(
            "请先输入问题。" if lang == "zh" else "Type a question first.")
        check_layout(page)
        no_leaks(page)
        shot_sections(page, f"pg-{lang}-6-phone-fresh", SECTIONS)
        assert errors == []
        context.close()


def test_the_forgetting_check_runs_by_itself_after_every_job(browser, server, monkeypatch):
    """Issue 15: the forgetting meter is shown after every job without a click — the page starts the check
    once the job it shows has succeeded; the service runs it once per job and the base model's answers
    once per base (every later job answers only its tuned side)."""
    from playwright.sync_api import expect

    batches: list[bool] = []  # one entry per generate_batch call: True for the base model, False for tuned
    plain = SlowEngine.generate_batch

    def counted(self, questions, adapter=None, **kw):
        batches.append(adapter is None)
        return plain(self, questions, adapter, **kw)

    monkeypatch.setattr(SlowEngine, "generate_batch", counted)
    per_side = -(-len(GENERAL) // 8)  # batches of 8
    for n, lang in enumerate(("en", "zh"), start=1):
        zh = lang == "zh"
        job = finish_job(server)
        context, page, errors = open_url(browser, f"{server}/#job={job['id']}", lang)
        panel = page.get_by_test_id("job-forgetting")
        expect(panel).to_have_attribute("data-state", "done", timeout=60_000)
        expect_forgetting_panel(panel, kept=22, lost=2, of=24, zh=zh)
        lost = panel.locator("[data-testid=forgetting-flip][data-flip=lost]")
        expect(lost).to_have_count(2)
        assert {lost.nth(i).locator(".data").first.inner_text() for i in range(2)} == FORGOTTEN
        line = page.locator(f"[data-testid=job-list-item][data-job-id={job['id']}]").get_by_test_id("job-list-forgetting")
        expect(line).to_contain_text("常识问题：保留 22/24" if zh else "General questions: kept 22 of 24")
        # the evaluation card shows the same result for this job's tuned model
        page.get_by_test_id("eval-model").select_option(job["fine_tuned_model"])
        expect(page.get_by_test_id("forgetting-meter")).to_have_attribute("data-kept", "22")
        # the check ran once for this job: at most one pass of the base model over all jobs (its answers
        # are kept per base), one of the tuned model per job
        assert batches.count(False) == n * per_side, batches
        assert batches.count(True) <= per_side, batches
        layout(page, f"pg-{lang}-7-forgetting-after-job-laptop")
        # another visit: the kept result, nothing generated again
        again = context.new_page()
        again.goto(f"{server}/#job={job['id']}")
        again.wait_for_selector("body[data-ready=true]")
        expect(again.get_by_test_id("job-forgetting")).to_have_attribute("data-state", "done")
        assert batches.count(False) == n * per_side
        assert errors == []
        context.close()
