"""The studio page's jobs and downloads (issue 15) against the scripted API of test_browser_ui.py, in both
languages, at desktop and phone width: the job list (status, base, duration, final loss, rows, settings),
open / train again with… / delete (asked first), pause / resume / cancel (asked first), and downloads that
belong to the job the user chooses, not to whichever job is on screen."""

from __future__ import annotations

import json
import time

import pytest
from browser_support import LAPTOP, PHONE, check_layout, expect_forgetting_panel, shot, shot_sections
from test_browser_ui import FakeStudio, browser, live_script, open_page, static_server, upload_broken  # noqa: F401

pytestmark = pytest.mark.browser
NAMES = ["yunzhan_broken.csv"]


def answer_dialogs(page, accept: bool, seen: list[str]) -> None:
    """Answer the next confirmation with `accept`, keeping its text."""
    def handle(dialog):
        seen.append(dialog.message)
        dialog.accept() if accept else dialog.dismiss()
    page.once("dialog", handle)


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_job_list_clone_delete_and_downloads_of_the_chosen_job(browser, static_server, lang, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    zh = lang == "zh"
    fake = FakeStudio()
    context, page, errors = open_page(browser, static_server, lang, fake)
    upload_broken(page, tmp_path)
    page.locator("#advanced summary").click()
    # the QLoRA choices in words (issue 15 #7: they were raw "none" / "4bit")
    expect(page.locator("#adv-quantize_base option[value='4bit']")).to_have_text(
        "开启（4 位基础模型，省显存）" if zh else "on (4-bit base: less GPU memory)")
    expect(page.locator("#adv-quantize_base option[value=none]")).to_have_text(
        "不量化（全精度）" if zh else "off (full-precision base)")
    page.locator("#adv-max_steps").fill("6")
    page.locator("#adv-max_steps").press("Tab")
    page.get_by_test_id("start-training").click()
    expect(page.get_by_test_id("job-status")).to_have_attribute("data-status", "succeeded")
    expect(page.locator("#job-cost")).to_have_text("无费用（本机）" if zh else "free (this machine)")  # not "$0"
    items = page.get_by_test_id("job-list-item")
    expect(items).to_have_count(1)
    first = items.first
    expect(first).to_have_attribute("data-status", "succeeded")
    summary = first.get_by_test_id("job-summary")
    expect(summary).to_contain_text("12 分 34 秒" if zh else "took 12 min 34 s")
    expect(summary).to_contain_text("最终损失 0.9333" if zh else "final loss 0.9333")
    expect(summary).to_contain_text("28 行数据" if zh else "28 rows")
    expect(first.locator(".job-settings")).to_contain_text("改动：" if zh else "changed: ")
    expect(first.locator(".job-settings")).to_contain_text("6")
    # OpenAI's n_epochs, resolved by the service once queued, is not a change the user made
    expect(first.locator(".job-settings")).not_to_contain_text("训练轮数" if zh else "Passes over the data")
    expect(page.get_by_test_id("download-adapter")).to_have_attribute("href", "/studio/jobs/ftjob-1/download/adapter")
    expect(page.get_by_test_id("download-report")).to_have_attribute("href", "/studio/jobs/ftjob-1/download/report")

    # another job that fails: the finished one keeps its downloads (issue 15 #2)
    fake.outcome = "failed"
    page.get_by_test_id("start-training").click()
    expect(page.locator("#job-id")).to_have_text("ftjob-2")
    expect(page.get_by_test_id("job-status")).to_have_attribute("data-status", "failed")
    expect(items).to_have_count(2)
    expect(items.first).to_have_attribute("data-job-id", "ftjob-2")  # newest first
    expect(page.locator("#use-body")).to_be_visible()
    expect(page.get_by_test_id("use-job-select")).to_have_value("ftjob-1")
    expect(page.get_by_test_id("download-adapter")).to_have_attribute("href", "/studio/jobs/ftjob-1/download/adapter")
    check_layout(page, NAMES)
    shot(page, f"studio-{lang}-jobs-laptop")

    # a fresh browser (nothing remembered) still offers the finished job's downloads
    fresh, fresh_page, fresh_errors = open_page(browser, static_server, lang, fake)
    expect(fresh_page.get_by_test_id("job-list-item")).to_have_count(2)
    expect(fresh_page.get_by_test_id("download-adapter")).to_have_attribute(
        "href", "/studio/jobs/ftjob-1/download/adapter")
    assert fresh_errors == []
    fresh.close()

    # delete asks first: "no" keeps the job, "yes" deletes it
    asked: list[str] = []
    failed = page.locator("[data-testid=job-list-item][data-job-id=ftjob-2]")
    answer_dialogs(page, False, asked)
    failed.get_by_test_id("job-delete").click()
    page.wait_for_timeout(300)
    assert asked == ["确定删除这个任务及其训练好的模型和下载文件吗？删除后无法恢复。" if zh else
                     "Delete this job with its trained model and downloads? This cannot be undone."]
    assert fake.actions == [] and "ftjob-2" in fake.jobs
    answer_dialogs(page, True, asked)
    failed.get_by_test_id("job-delete").click()
    expect(items).to_have_count(1)
    assert fake.actions == [("delete", "ftjob-2")]
    expect(page.locator("#job-panel")).to_be_hidden()  # the deleted job was on screen
    assert "ftjob-2" not in page.url

    # train again with…: the same file, base and changed settings, ready to start
    page.get_by_test_id("base-model-select").select_option("tiny-random")
    expect(page.locator(".setting.changed")).to_have_count(0)
    items.first.get_by_test_id("job-clone").click()
    expect(page.locator("#jobs-action-state")).to_contain_text("已在第 1、2 步载入" if zh else "are loaded in steps 1 and 2")
    expect(page.get_by_test_id("base-model-select")).to_have_value("default")
    expect(page.locator(".setting.changed")).to_have_count(1)
    expect(page.locator("#adv-max_steps")).to_have_value("6")
    check_layout(page, NAMES)
    page.get_by_test_id("start-training").click()
    expect(page.locator("#job-id")).to_have_text("ftjob-3")
    assert fake.created[-1]["hyperparameters"] == {"task": "qa", "max_steps": 6}
    assert fake.created[-1]["model"] == "default" and fake.created[-1]["training_file"] == "file-broken"

    page.set_viewport_size(PHONE)
    page.wait_for_timeout(300)
    check_layout(page, NAMES)
    shot_sections(page, f"studio-{lang}-jobs-phone", ["step-train", "step-use"])
    assert errors == []
    context.close()


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_pause_resume_and_cancel_after_asking(browser, static_server, lang, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    zh = lang == "zh"
    fake = FakeStudio(schedules=True, script=live_script(time.time() - 100))
    context, page, errors = open_page(browser, static_server, lang, fake)
    upload_broken(page, tmp_path)
    fake.phase = 1
    page.get_by_test_id("start-training").click()
    status = page.get_by_test_id("job-status")
    expect(status).to_have_attribute("data-status", "running")
    pause, resume, cancel = (page.get_by_test_id(t) for t in ("job-pause", "job-resume", "job-cancel"))
    expect(pause).to_be_visible()
    expect(resume).to_be_hidden()
    expect(pause).to_have_text("暂停" if zh else "Pause")

    pause.click()
    expect(status).to_have_attribute("data-status", "paused")
    expect(status).to_have_text("已暂停" if zh else "paused")
    expect(resume).to_be_visible()
    expect(pause).to_be_hidden()
    expect(page.locator("[data-testid=job-list-item][data-job-id=ftjob-1]")).to_have_attribute("data-status", "paused")
    check_layout(page, NAMES)
    shot(page, f"studio-{lang}-paused-laptop")
    resume.click()
    expect(status).to_have_attribute("data-status", "running")
    expect(pause).to_be_visible()
    assert fake.actions == [("pause", "ftjob-1"), ("resume", "ftjob-1")]

    asked: list[str] = []
    answer_dialogs(page, False, asked)
    cancel.click()
    page.wait_for_timeout(300)
    assert len(asked) == 1 and ("已经学到的内容会被丢弃" if zh else "thrown away") in asked[0]
    expect(status).to_have_attribute("data-status", "running")
    assert fake.actions[-1] == ("resume", "ftjob-1")
    answer_dialogs(page, True, asked)
    cancel.click()
    expect(status).to_have_attribute("data-status", "cancelled")
    assert fake.actions[-1] == ("cancel", "ftjob-1")
    expect(cancel).to_be_hidden()
    expect(page.locator("[data-testid=job-list-item][data-job-id=ftjob-1]").get_by_test_id("job-delete")).to_be_visible()
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(300)
    check_layout(page, NAMES)
    shot_sections(page, f"studio-{lang}-cancelled-phone", ["step-train"])
    page.set_viewport_size(LAPTOP)
    assert errors == []
    context.close()



SEVEN_B = {"id": "Qwen/Qwen2.5-7B-Instruct", "name": "Qwen2.5-7B-Instruct", "params": "7.6B", "disk_gb": 15.2,
           "min_memory_gb": 24, "description": "Strong bilingual (zh/en) chat model; needs a 24 GB+ GPU. Hub download.",
           "offline": False, "smoke_test": False, "hub_id": "Qwen/Qwen2.5-7B-Instruct", "available": False,
           "unavailable": [{"code": "no_gpu", "params": {"memory": 24}}, {"code": "offline", "params": {}}],
           "notes": [], "unavailable_reason": "needs a GPU with 24 GB of memory, and this server has none"}


class CpuOfflineStudio(FakeStudio):
    """A CPU-only, offline server: the 7B base is listed but cannot run."""

    def handle(self, route, request) -> None:
        if request.url.endswith("/studio/models"):
            from test_browser_ui import MODELS

            body = {"data": [*[{**m, "available": True, "unavailable": [], "notes": []} for m in MODELS], SEVEN_B]}
            return route.fulfill(status=200, content_type="application/json", body=json.dumps(body))
        return super().handle(route, request)


@pytest.mark.parametrize(("lang", "viewport"), [("en", LAPTOP), ("zh", PHONE)])
def test_bases_that_cannot_run_here_are_shown_disabled_with_the_reason(browser, static_server, lang, viewport):  # noqa: F811
    from playwright.sync_api import expect

    zh = lang == "zh"
    fake = CpuOfflineStudio()
    context, page, errors = open_page(browser, static_server, lang, fake, viewport=viewport)
    # even when it was the choice of the last visit, a base that cannot run is not chosen
    page.evaluate("localStorage.setItem('lorastudio.model', 'Qwen/Qwen2.5-7B-Instruct')")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    select = page.get_by_test_id("base-model-select")
    expect(select).to_have_value("default")
    option = select.locator("option[value='Qwen/Qwen2.5-7B-Instruct']")
    expect(option).to_be_disabled()
    expect(option).to_contain_text("此处无法运行" if zh else "cannot run here")
    line = page.locator("[data-testid=model-unavailable][data-model='Qwen/Qwen2.5-7B-Instruct']")
    expect(line).to_have_text("Qwen2.5-7B-Instruct 无法在此运行：需要显存 24 GB 的 GPU，这台服务器没有；尚未下载，且这台服务器无法连接"
                              " Hugging Face 下载" if zh else "Qwen2.5-7B-Instruct cannot run here: needs a GPU with 24 GB of "
                              "memory, and this server has none; not downloaded yet, and this server cannot reach Hugging "
                              "Face to download it")
    expect(page.locator("[data-testid=model-unavailable]")).to_have_count(1)
    check_layout(page)
    shot_sections(page, f"studio-{lang}-bases-{'phone' if zh else 'laptop'}", ["step-settings"])
    assert errors == []
    context.close()


class ExcelStudio(FakeStudio):
    """A workbook whose 6th data row (Excel's row 7) has an empty answer cell, reported in the page's language."""

    def handle(self, route, request) -> None:
        if request.url.endswith("/studio/files/file-broken/report"):
            zh = (request.headers.get("accept-language") or "en").startswith("zh")
            issue = {"row": 6, "severity": "error", "kind": "empty_response", "field": "答案",
                     "message": "回答（答案）为空。" if zh else "The response (答案) is empty.",
                     "hint": "请补上回答，或删除这一行。" if zh else "Fill in the response, or delete the row."}
            body = {"file": "faq.xlsx", "file_id": "file-broken", "lang": "zh" if zh else "en", "format": "xlsx",
                    "schema": "instruction_response", "encoding": None, "rows_total": 8, "rows_ok": 7,
                    "rows_rejected": 1, "issues": [issue], "dataset_issues": [], "sheet_row_offset": 1}
            return route.fulfill(status=200, content_type="application/json", body=json.dumps(body))
        return super().handle(route, request)


@pytest.mark.parametrize(("lang", "viewport"), [("en", LAPTOP), ("zh", PHONE)])
def test_an_excel_row_is_shown_as_excel_numbers_it(browser, static_server, lang, viewport, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    context, page, errors = open_page(browser, static_server, lang, ExcelStudio(), viewport=viewport)
    upload_broken(page, tmp_path)
    row = page.locator("[data-testid=validation-issue][data-row='6']")
    expect(row.get_by_test_id("validation-excel-row")).to_have_text("Excel 第 7 行" if lang == "zh" else "Excel row 7")
    expect(row).to_contain_text("回答为空" if lang == "zh" else "Answer is empty")
    check_layout(page, ["faq.xlsx", "yunzhan_broken.csv"])
    shot_sections(page, f"studio-{lang}-excel-row", ["step-data"])
    assert errors == []
    context.close()


CHATML = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\n"


def preview_of(file_id: str, rows: list[tuple[str, str]], columns: list[dict], editable: bool) -> dict:
    return {"file_id": file_id, "model": "default", "schema": "instruction_response", "format": "csv",
            "template": "chatml", "columns": columns, "editable": editable,
            "rows": [{"row": i, "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                      "segments": [{"text": f"{CHATML}{q}<|im_end|>\n<|im_start|>assistant\n", "learned": False},
                                   {"text": f"{a}<|im_end|>", "learned": True}, {"text": "\n", "learned": False}]}
                     for i, (q, a) in enumerate(rows, 1)]}


class PreviewStudio(FakeStudio):
    """A CSV whose columns were guessed ("questoin", "answre") beside an unused one ("备注"); a changed mapping
    makes the file file-mapped."""

    def __init__(self):
        super().__init__()
        self.mappings: list[dict] = []

    def handle(self, route, request) -> None:
        path = request.url.split("?")[0].split("://", 1)[1].split("/", 1)[1]
        ok = lambda body: route.fulfill(status=200, content_type="application/json",  # noqa: E731
                                        body=json.dumps(body, ensure_ascii=False))
        if path == "studio/files/file-broken/preview":
            return ok(preview_of("file-broken", [("退款多久到账？", "3 个工作日。"), ("怎么开发票？", "在订单页申请。")], [
                {"column": "questoin", "field": "instruction", "how": "guessed"},
                {"column": "answre", "field": "response", "how": "guessed"},
                {"column": "备注", "field": None, "how": "unused"}], True))
        if path == "studio/files/file-broken/mapping":
            self.mappings.append(json.loads(request.post_data))
            return ok({"id": "file-mapped", "object": "file", "bytes": 10, "filename": "faq.mapped.jsonl",
                       "purpose": "fine-tune", "created_at": 1, "status": "processed"})
        if path == "v1/files/file-mapped":
            return ok({"id": "file-mapped", "object": "file", "filename": "faq.mapped.jsonl"})
        if path == "studio/files/file-mapped/report":
            return ok({"file": "faq.mapped.jsonl", "format": "jsonl", "schema": "instruction_response",
                       "encoding": "utf-8", "rows_total": 2, "rows_ok": 2, "rows_rejected": 0, "issues": [],
                       "dataset_issues": []})
        if path == "studio/files/file-mapped/preview":
            return ok(preview_of("file-mapped", [("退款多久到账？", "x"), ("怎么开发票？", "y")], [], False))
        return super().handle(route, request)


@pytest.mark.parametrize(("lang", "viewport"), [("en", LAPTOP), ("zh", PHONE)])
def test_data_preview_and_a_guessed_mapping_changed(browser, static_server, lang, viewport, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    zh = lang == "zh"
    fake = PreviewStudio()
    context, page, errors = open_page(browser, static_server, lang, fake, viewport=viewport)
    upload_broken(page, tmp_path)
    preview = page.get_by_test_id("data-preview")
    expect(preview).to_be_visible()
    expect(preview.locator("h3")).to_have_text("模型看到的数据是什么样" if zh else "How the model will see your data")
    rows = preview.locator(".preview-row")
    expect(rows).to_have_count(2)
    expect(rows.first.locator("mark")).to_have_text("3 个工作日。<|im_end|>")  # what the model learns to write
    expect(rows.first.locator("pre")).to_contain_text("<|im_start|>user\n退款多久到账？")
    expect(rows.first.locator("figcaption")).to_have_text("第 1 行" if zh else "Row 1")
    selects = page.get_by_test_id("mapping-select")
    expect(selects).to_have_count(3)
    expect(selects.nth(0)).to_have_value("instruction")
    expect(selects.nth(2)).to_have_value("")
    expect(page.locator(".tag-guessed")).to_have_count(2)
    expect(page.get_by_test_id("mapping-apply")).to_be_visible()
    check_layout(page, ["yunzhan_broken.csv", "questoin", "answre"])
    shot_sections(page, f"studio-{lang}-preview", ["step-data"])

    page.locator("select[data-column=answre]").select_option("")
    page.locator("select[data-column='备注']").select_option("response")
    page.get_by_test_id("mapping-apply").click()
    expect(page.get_by_test_id("validation-summary")).to_contain_text("faq.mapped.jsonl")
    assert fake.mappings == [{"fields": {"questoin": "instruction", "answre": None, "备注": "response"}}]
    expect(rows.first.locator("mark")).to_have_text("x<|im_end|>")
    expect(page.locator("#mapping")).to_be_hidden()
    expect(page.get_by_test_id("recommended-settings")).to_be_visible()
    page.get_by_test_id("start-training").click()
    expect(page.get_by_test_id("job-status")).to_have_attribute("data-status", "succeeded")
    assert fake.created[-1]["training_file"] == "file-mapped"
    check_layout(page, ["yunzhan_broken.csv", "faq.mapped.jsonl"])
    assert errors == []
    context.close()


class TooBigStudio(FakeStudio):
    """The service refuses the upload as too large (413), in English, as the middleware does."""

    def handle(self, route, request) -> None:
        if request.url.endswith("/v1/files") and request.method == "POST":
            body = {"error": {"message": "The request body (600000000 bytes) is larger than this server's limit of "
                              "536870912 bytes. Split the file, or start the server with a larger "
                              "LORASTUDIO_MAX_UPLOAD_MB.", "type": "invalid_request_error", "param": "file",
                              "code": "file_too_large"}}
            return route.fulfill(status=413, content_type="application/json", body=json.dumps(body))
        return super().handle(route, request)


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_a_file_over_the_upload_limit_is_said_in_the_users_words(browser, static_server, lang, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    context, page, errors = open_page(browser, static_server, lang, TooBigStudio(), viewport=PHONE)
    data = tmp_path / "faq.csv"
    data.write_text("instruction,response\n" + "问,答\n" * 60000, encoding="utf-8")
    page.get_by_test_id("upload-input").set_input_files(str(data))
    state = page.locator("#upload-state")
    expect(state).to_contain_text("超过了这个工作室允许的大小" if lang == "zh" else "is larger than this studio accepts")
    expect(state).to_contain_text("469 KB")  # its size, as the browser knows it
    expect(state).not_to_contain_text("LORASTUDIO_MAX_UPLOAD_MB")
    check_layout(page, ["faq.csv"])
    assert errors == []
    context.close()


class TooManyRowsStudio(FakeStudio):
    """The service refuses the file's report: more rows than its limit (400 too_many_rows with params)."""

    def handle(self, route, request) -> None:
        if request.url.endswith("/studio/files/file-broken/report"):
            body = {"error": {"message": "yunzhan_broken.csv has 120,000 data rows; one training file may have at "
                              "most 100,000. Split it into files of at most 100,000 rows.",
                              "type": "invalid_request_error", "param": "file_id", "code": "too_many_rows",
                              "params": {"file": "yunzhan_broken.csv", "rows": 120000, "limit": 100000}}}
            return route.fulfill(status=400, content_type="application/json", body=json.dumps(body))
        return super().handle(route, request)


@pytest.mark.parametrize(("lang", "viewport"), [("en", LAPTOP), ("zh", PHONE)])
def test_a_file_over_the_row_limit_is_said_in_the_users_words(browser, static_server, lang, viewport, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    zh = lang == "zh"
    context, page, errors = open_page(browser, static_server, lang, TooManyRowsStudio(), viewport=viewport)
    data = tmp_path / "yunzhan_broken.csv"
    data.write_text("instruction,response\n", encoding="utf-8")
    page.get_by_test_id("upload-input").set_input_files(str(data))
    state = page.locator("#upload-state")
    expect(state).to_contain_text("有 120,000 行数据，一个训练文件最多 100,000 行" if zh
                                  else "has 120,000 data rows; one training file can have at most 100,000")
    expect(state).to_contain_text("拆成每个不超过 100,000 行的文件" if zh else "Split it into files of at most 100,000 rows")
    expect(state.locator(".data").first).to_have_text("yunzhan_broken.csv")  # the user's file, as data
    expect(page.get_by_test_id("start-training")).to_be_disabled()
    check_layout(page, NAMES)
    shot(page, f"studio-{lang}-too-many-rows")
    assert errors == []
    context.close()


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_forgetting_meter_is_shown_after_every_job_without_a_click(browser, static_server, lang, tmp_path):  # noqa: F811
    """Issue 15: the forgetting meter is "shown after every job". The page starts the check by itself once
    the job it shows has succeeded — after any training that is still running on this computer — shows
    "kept N of M" and the flipped questions in the job panel and the job list, and runs it once per job
    (a reload shows the kept result)."""
    from playwright.sync_api import expect
    from test_browser_ui import FORGETTING

    zh = lang == "zh"
    fake = FakeStudio()
    # another job is training on this computer: the check waits for it
    fake.jobs["ftjob-0"] = {"id": "ftjob-0", "object": "fine_tuning.job", "model": "default", "created_at": 1764317000,
                            "finished_at": None, "status": "succeeded", "training_file": "file-broken",
                            "fine_tuned_model": "ft:default:studio:ftjob-0", "error": None, "hyperparameters": {}}
    fake.status_overrides["ftjob-0"] = "running"
    context, page, errors = open_page(browser, static_server, lang, fake)
    upload_broken(page, tmp_path)
    page.get_by_test_id("start-training").click()
    expect(page.get_by_test_id("job-status")).to_have_attribute("data-status", "succeeded")
    panel = page.get_by_test_id("job-forgetting")
    expect(panel).to_have_attribute("data-state", "waiting")
    expect(panel).to_contain_text("等正在进行的训练结束后再检查" if zh else "once the training that is running now has finished")
    row = page.locator("[data-testid=job-list-item][data-job-id=ftjob-1]")
    expect(row.get_by_test_id("job-list-forgetting")).to_have_attribute("data-state", "waiting")
    check_layout(page, NAMES)
    page.wait_for_timeout(500)
    assert fake.forgetting_runs == []

    # the other training ends: the check runs by itself (the job list is asked again every 5 s)
    del fake.status_overrides["ftjob-0"]
    expect(panel).to_have_attribute("data-state", "done", timeout=15_000)
    assert fake.forgetting_runs == ["ftjob-1"]  # only the job on screen, once
    expect_forgetting_panel(panel, kept=19, lost=1, gained=2, of=20, zh=zh)
    flips = panel.get_by_test_id("forgetting-flip")
    expect(flips).to_have_count(3)
    expect(flips.first).to_have_attribute("data-flip", "lost")
    expect(flips.first).to_contain_text(FORGETTING["rows"][0]["question"])
    expect(flips.first).to_contain_text("变错了" if zh else "now wrong")
    line = row.get_by_test_id("job-list-forgetting")
    expect(line).to_have_attribute("data-state", "done")
    expect(line).to_contain_text("常识问题：保留 19/20" if zh else "General questions: kept 19 of 20")
    expect(line).to_contain_text("变化：" if zh else "flipped:")
    expect(line).to_contain_text("水的化学式是什么？")
    check_layout(page, NAMES)
    shot(page, f"studio-{lang}-forgetting-laptop")
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(300)
    check_layout(page, NAMES)
    shot_sections(page, f"studio-{lang}-forgetting-phone", ["step-train"])

    # a reload: the kept result at once (the job list's summary and GET …/forgetting), not run again
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(page.get_by_test_id("job-forgetting")).to_have_attribute("data-state", "done")
    expect(page.get_by_test_id("job-forgetting")).to_have_attribute("data-kept", "19")
    expect(page.locator("[data-testid=job-list-item][data-job-id=ftjob-1]").get_by_test_id("job-list-forgetting")
           ).to_have_attribute("data-kept", "19")
    page.wait_for_timeout(500)
    assert fake.forgetting_runs == ["ftjob-1"]
    assert errors == []
    context.close()
