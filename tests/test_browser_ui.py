"""The studio page against a scripted API (Playwright routes), in both languages and at both widths.

Fast and deterministic: every state the page can be in (issues table, recommendation, live job, failed
job, compare, downloads) is rendered from answers shaped exactly like the service's
(docs/ARCHITECTURE.md "Service ↔ web UI"), then checked for untranslated text, sideways scrolling and
overlapping blocks. test_browser_flow.py walks the same page against the real server.
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import threading
import time
from urllib.parse import parse_qs, urlparse

import pytest
from browser_support import (
    LAPTOP,
    PHONE,
    WEB,
    check_layout,
    chromium,
    i18n_keys,
    require_chromium,
    shot,
    shot_sections,
)
from browser_support import open_page as open_url

pytestmark = pytest.mark.browser

BROKEN_ROWS = [  # row, kind, field, severity (the shared yunzhan_broken.csv's 12 problem rows)
    (4, "empty_response", "response", "error"), (7, "empty_instruction", "instruction", "error"),
    (11, "empty_response", "response", "error"), (14, "duplicate", None, "error"),
    (17, "mojibake", "response", "error"), (20, "too_long", "response", "error"),
    (23, "extra_columns", None, "error"), (26, "empty_response", "response", "error"),
    (29, "mojibake", "instruction", "error"), (29, "mojibake", "response", "error"),
    (32, "duplicate", None, "error"), (35, "empty_response", "response", "error"),
    (40, "malformed_row", None, "error"),
]


def broken_report(lang: str | None = None) -> dict:
    """The report as the service sends it; with `lang`, localised the way the UI asks for (Accept-Language)."""
    hint = "服务器提示：请修改这一行。" if lang == "zh" else "server hint"
    issues = [{"row": r, "severity": s, "kind": k, "field": f, "message": f"{k.replace('_', ' ')} in row {r}",
               "hint": hint} for r, k, f, s in BROKEN_ROWS]
    return {**({"lang": lang} if lang else {}),"file": "yunzhan_broken.csv", "format": "csv", "schema": "instruction_response", "encoding": "utf-8",
            "rows_total": 40, "rows_ok": 28, "rows_rejected": 12, "issues": issues,
            "dataset_issues": [{"severity": "warning", "kind": "few_rows", "message": "Only 28 usable rows.",
                                "hint": "500–1000 are advised."}]}


RECOMMENDATION = {
    "settings": {"task": "qa", "target_modules": "all-linear", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0,
                 "learning_rate": 0.0005, "lr_scheduler": "linear", "warmup_ratio": 0.05, "weight_decay": 0.0,
                 "augment_paraphrases": 2, "replay_rows": 32, "max_length": 256, "batch_tokens": 512,
                 "gradient_accumulation": 1, "num_epochs": 4.0, "val_fraction": 0.0, "early_stopping_patience": None,
                 "neftune_alpha": None, "dtype": "fp32", "gradient_checkpointing": False, "device": "cpu",
                 "price_per_hour": 0.0, "quantize_base": "auto"},
    "reasons": {"lora_r": "rank 16: enough capacity for 28 rows on a 0.5B model",
                "learning_rate": "0.0005: fast enough to learn facts in a few epochs on a 0.5B model",
                "num_epochs": "4 epochs over data + paraphrases + replay", "max_length": "256 tokens: longest row",
                "batch_tokens": "512 real tokens per step", "augment_paraphrases": "2 reworded versions",
                "replay_rows": "32 general questions", "val_fraction": "no held-out split with 28 rows",
                "device": "train on CPU, 2 cores", "dtype": "fp32: this CPU has no fast bf16"},
    "estimate": {"seconds": 754, "tokens": 123456, "device": "CPU, 2 cores", "cost": 0.0, "currency": "USD"},
    "warnings": ["only 28 usable rows: the model will learn little; 500–1000 are advised"],
}

# What a service with coded recommender messages adds (reason_codes, warning_codes, the estimate's
# device_code) and its catalogue (GET /studio/messages?lang=…). "rec.learning_rate.unknown" is in no
# catalogue: the page shows the English line for it.
CODED = {
    "reason_codes": {"lora_r": {"code": "rec.lora_r", "params": {"rank": 16, "rows": 28, "size": 0.5}},
                     "learning_rate": {"code": "rec.learning_rate.unknown", "params": {"lr": 0.0005}},
                     "device": {"code": "rec.device.cpu", "params": {"cores": 2, "cpu_class": "avx2-fp32"}}},
    "warning_codes": [{"code": "warn.few_rows", "params": {"rows": 28}}],
    "estimate": {**RECOMMENDATION["estimate"],
                 "device_code": {"code": "estimate.device.cpu", "params": {"cores": 2, "cpu_class": "avx2-fp32"}}},
}
CATALOGUE = {
    "en": {"rec.lora_r": "Rank {rank}: enough for the facts of {rows} rows on a {size}B model.",
           "rec.device.cpu": "Trains on this computer's CPU ({cores} cores, {cpu_class}).",
           "warn.few_rows": "Only {rows} usable rows: the model will learn little beyond them.",
           "estimate.device.cpu": "CPU, {cores} cores ({cpu_class})"},
    "zh": {"rec.lora_r": "秩 {rank}：足够容纳这 {rows} 行里的知识（{size}B 模型）。",
           "rec.device.cpu": "在这台电脑的 CPU 上训练（{cores} 核，{cpu_class}）。",
           "warn.few_rows": "只有 {rows} 行可用数据：模型能学到的很有限。",
           "estimate.device.cpu": "CPU，{cores} 核（{cpu_class}）"},
}

# The schedules (issue 13): the full schedule is the default; the quick preview is opt-in, with its own
# estimate and its recall cost as a code of the catalogue (alternatives.quick.cost).
STAGE_SECONDS = {"load": 20, "augment": 90, "tokenize": 4, "train": 600, "evaluate": 0, "save": 40}  # 754 s
FULL_ESTIMATE = {**CODED["estimate"], "cpu_class": "avx2-fp32", "tokens_per_s": 43.0, "stages": STAGE_SECONDS}
QUICK_ESTIMATE = {**FULL_ESTIMATE, "seconds": 262, "tokens": 41152,
                  "stages": {"load": 20, "augment": 90, "tokenize": 2, "train": 140, "evaluate": 0, "save": 10}}
RECALL = {"quick_facts": 8, "full_facts": 28, "facts": 40, "full_epochs": 4, "minutes": 4, "full_minutes": 13}
SCHEDULE_CATALOGUE = {
    "en": {"estimate.quick_cost": "One pass instead of {full_epochs}: in our test it recalled {quick_facts} of "
                                  "{facts} facts instead of {full_facts}.",
           "estimate.full_gain": "{full_epochs} passes recalled {full_facts} of {facts} facts where one pass "
                                 "recalled {quick_facts}."},
    "zh": {"estimate.quick_cost": "只训练 1 轮（完整为 {full_epochs} 轮）：我们测试中 {facts} 条知识只答对 {quick_facts} 条，"
                                  "完整训练为 {full_facts} 条。",
           "estimate.full_gain": "完整训练 {full_epochs} 轮：{facts} 条知识答对 {full_facts} 条，只训练 1 轮时为 {quick_facts} 条。"},
}


def scheduled_recommendation(quick: bool) -> dict:
    """What POST /studio/recommend answers with `schedule`, the estimate by stage and `alternatives`."""
    quick_cost = {"code": "estimate.quick_cost", "params": RECALL}
    if not quick:
        return {**RECOMMENDATION, **CODED, "estimate": FULL_ESTIMATE, "schedule": "full",
                "alternatives": {"quick": {"settings_changes": {"num_epochs": 1.0}, "estimate": QUICK_ESTIMATE,
                                           "cost": quick_cost}}}
    return {**RECOMMENDATION, **CODED, "settings": {**RECOMMENDATION["settings"], "num_epochs": 1.0},
            "reasons": {**RECOMMENDATION["reasons"], "num_epochs": "1 pass: the quick preview you asked for"},
            "estimate": QUICK_ESTIMATE, "schedule": "quick",
            "alternatives": {"quick": {"settings_changes": {}, "estimate": QUICK_ESTIMATE, "cost": quick_cost},
                             "full": {"settings_changes": {"num_epochs": 4.0}, "estimate": FULL_ESTIMATE,
                                      "cost": {"code": "estimate.full_gain", "params": RECALL}}}}


MODELS = [
    {"id": "default", "name": "Qwen2.5-Coder-0.5B-Instruct (embedded)", "params": "0.49B", "disk_gb": 1.3,
     "min_memory_gb": 4, "description": "Included and offline.", "offline": True, "smoke_test": False},
    {"id": "tiny-random", "name": "tiny-random (smoke test)", "params": "0.01B", "disk_gb": 0.04,
     "min_memory_gb": 1, "description": "Smoke-test model. Learns nothing.", "offline": True, "smoke_test": True},
]


# The forgetting check's result as the service sends it: 24 general questions, the base right on 20, the
# tuned model kept 19, lost one and gained two.
FORGETTING = {"questions": 24, "base_right": 20, "tuned_right": 21, "kept": 19, "lost": 1, "gained": 2, "wrong": 2,
              "seconds": 41.5, "rows": [
                  {"question": "What is the capital of France?", "keys": ["Paris"], "base_answer": "Paris.",
                   "tuned_answer": "I am not sure.", "base_pass": True, "tuned_pass": False, "flip": "lost"},
                  {"question": "水的化学式是什么？", "keys": ["H2O"], "base_answer": "水。", "tuned_answer": "H2O。",
                   "base_pass": False, "tuned_pass": True, "flip": "gained"},
                  {"question": "How many days are in a week?", "keys": ["7"], "base_answer": "Six.",
                   "tuned_answer": "7 days.", "base_pass": False, "tuned_pass": True, "flip": "gained"}]}

# The scripted live job whose stream the static server holds open (one test at a time).
LIVE: dict = {"fake": None}


class FakeStudio:
    """Answers /v1 and /studio like the service would, from a script of job outcomes."""

    def __init__(self, outcome: str = "succeeded", localised_reports: bool = False, coded: bool = False,
                 schedules: bool = False, hold_job_posts: bool = False, script: list[list[dict]] | None = None,
                 error_code: str | None = "training_failed"):
        self.outcome = outcome
        self.error_code = error_code  # a failed job's error code, as the service sets it
        self.localised_reports = localised_reports
        self.coded = coded or schedules
        self.schedules = schedules
        self.catalogue_requests: list[str] = []
        self.recommends: list[dict] = []
        self.jobs: dict[str, dict] = {}
        self.created: list[dict] = []
        self.hold_job_posts = hold_job_posts  # job creations wait in self.held until release_jobs()
        self.held: list = []
        # A live job: its events come in phases; the test moves `phase` on and the stream, held open by the
        # static server like the service holds it, sends what is new. Running until an event is "done".
        self.script = script
        self.phase = 0
        self.status_overrides: dict[str, str] = {}  # a paused / cancelled job (pause, resume, cancel)
        self.actions: list[tuple[str, str]] = []  # (action, job id) of every pause/resume/cancel/delete
        self.gguf_built = False
        self.gguf_result = "passed"  # what the GGUF's fidelity check answers once built: passed | failed
        self.compared: list[dict] = []  # bodies of step 4's streamed compare requests
        self.forgetting_runs: list[str] = []  # job ids whose forgetting check was started (POST)
        self.forgetting_done: set[str] = set()
        if script is not None:
            LIVE["fake"] = self

    def release_jobs(self) -> None:
        held, self.held = self.held, []
        for route, request in held:
            self.create_job(route, request)

    def script_events(self) -> list[dict]:
        return [e for phase in self.script[: self.phase + 1] for e in phase]

    def job_events(self, job: dict) -> list[dict]:
        if self.script is not None:
            return self.script_events()
        events = [{"type": "stage", "stage": "train", "message": "Training"}]
        total = 6
        steps = total if job["status"] == "succeeded" else 3
        for step in range(1, steps + 1):
            events.append({"type": "metrics", "step": step, "total_steps": total, "epoch": step / total,
                           "percent": 100 * step / total, "eta_s": 5 * (total - step), "tokens_per_s": 812.5,
                           "loss": 3.2 / step + 0.4, "lr": 5e-4, "elapsed_s": step, "cost": 0.0})
        return events

    def handle(self, route, request) -> None:
        url = urlparse(request.url)
        path, method = url.path, request.method

        def ok(obj, status=200):
            route.fulfill(status=status, content_type="application/json", body=json.dumps(obj, ensure_ascii=False))

        if path == "/studio/models":
            return ok({"data": MODELS})
        if path == "/v1/files" and method == "POST":
            return ok({"id": "file-broken", "object": "file", "bytes": 100, "filename": "yunzhan_broken.csv",
                       "purpose": "fine-tune", "created_at": 1})
        if path == "/v1/files/file-broken":
            return ok({"id": "file-broken", "object": "file", "filename": "yunzhan_broken.csv"})
        if path == "/studio/files/file-broken/report":
            lang = (request.headers.get("accept-language") or "en")[:2]
            return ok(broken_report(lang if self.localised_reports else None))
        if path == "/studio/files/file-broken/preview":  # the first usable rows as the model sees them
            segments = [{"text": "<|im_start|>user\n退款多久到账？<|im_end|>\n<|im_start|>assistant\n", "learned": False},
                        {"text": "3 个工作日。<|im_end|>", "learned": True}]
            return ok({"file_id": "file-broken", "model": parse_qs(url.query).get("model", ["default"])[0],
                       "schema": "instruction_response", "format": "csv", "template": "chatml", "columns": [],
                       "editable": False, "rows": [{"row": 1, "messages": [], "segments": segments}]})
        if path == "/studio/recommend":
            body = json.loads(request.post_data)
            self.recommends.append(body)
            changes = body.get("settings")
            if changes and float(changes.get("num_epochs", 0)) > 50:  # what the service says of a refused change
                return ok({"error": {"message": "num_epochs=99 is invalid: must be 50 or fewer", "type":
                                     "invalid_request_error", "param": "settings.num_epochs", "code": "invalid_value"}},
                          400)
            if self.schedules and changes:  # the time of the changed settings (epochs move it, the rank does not)
                rec = scheduled_recommendation(bool(body.get("quick")))
                epochs = changes.get("num_epochs")
                moved = {**FULL_ESTIMATE, "seconds": int(FULL_ESTIMATE["seconds"] * float(epochs) / 4)} if epochs else None
                return ok({**rec, "changed_settings": ["num_epochs"] if epochs else [], "changed_estimate": moved})
            if self.schedules:
                return ok(scheduled_recommendation(bool(body.get("quick"))))
            return ok({**RECOMMENDATION, **CODED} if self.coded else RECOMMENDATION)
        if path == "/studio/messages" and self.coded:
            lang = url.query.removeprefix("lang=")
            self.catalogue_requests.append(lang)
            return ok({"lang": lang, "messages": {**CATALOGUE[lang], **SCHEDULE_CATALOGUE[lang]}})
        if path == "/v1/fine_tuning/jobs" and method == "POST":
            if self.hold_job_posts:
                self.held.append((route, request))
                return None
            return self.create_job(route, request)
        if path == "/v1/fine_tuning/jobs":
            return ok({"object": "list", "data": list(reversed(self.jobs.values())), "has_more": False})
        if path == "/studio/jobs":
            return ok({"object": "list", "data": [self.summary(j) for j in reversed(self.jobs.values())],
                       "has_more": False})
        parts = path.strip("/").split("/")
        if path.startswith("/v1/fine_tuning/jobs/") and len(parts) == 5 and parts[3] in self.jobs:
            return self.job_action(ok, parts[4], parts[3])
        if path.startswith("/studio/jobs/") and method == "DELETE" and parts[2] in self.jobs:
            self.actions.append(("delete", parts[2]))
            del self.jobs[parts[2]]
            return ok({"id": parts[2], "object": "fine_tuning.job", "deleted": True})
        if path.startswith("/v1/fine_tuning/jobs/") and parts[3] in self.jobs:
            return ok(self.job_now(self.jobs[parts[3]]))
        if path.startswith("/studio/jobs/") and parts[2] in self.jobs:
            job = self.job_now(self.jobs[parts[2]])
            if parts[3] == "metrics":
                return ok({"data": [e for e in self.job_events(job) if e["type"] in ("metrics", "eval")]})
            if parts[3] == "stream":
                if self.script is not None:
                    return route.continue_()  # to the static server: serve_stream
                lines = ["retry: 60000\n\n"]
                for i, e in enumerate(self.job_events(job), 1):
                    lines.append(f"id: {i}\ndata: {json.dumps(e)}\n\n")
                lines.append("data: " + json.dumps({"type": "status", "status": job["status"],
                                                    "fine_tuned_model": job["fine_tuned_model"],
                                                    "error": job["error"]}) + "\n\n")
                return route.fulfill(status=200, headers={"content-type": "text/event-stream"}, body="".join(lines))
        if path.endswith("/gguf-check") and parts[2] in self.jobs:  # the GGUF and its fidelity check
            if method == "POST":
                self.gguf_built = True
            if not self.gguf_built:
                return ok({"job_id": parts[2], "status": "none", "estimate_s": 578})
            agreeing = 5 if self.gguf_result == "passed" else 1
            return ok({"job_id": parts[2], "status": self.gguf_result, "estimate_s": 578, "type": "f16",
                       "agreeing": agreeing, "identical": agreeing, "first_token_agreement": agreeing, "total": 5,
                       "required": 4, "criterion": "identical", "tokens": 16, "seconds": 212.4,
                       "problems": [] if agreeing == 5 else ["only 1 of 5 questions have the adapter's first 16 "
                                                             "greedy tokens in llama.cpp (a f16 export needs 4)"],
                       "questions": []})
        if path.endswith("/forgetting") and parts[2] in self.jobs:  # the forgetting check, run once per job
            if method == "POST":
                self.forgetting_runs.append(parts[2])
                self.forgetting_done.add(parts[2])
                events = [{"type": "progress", "done": 24, "total": 48}, {"type": "progress", "done": 48, "total": 48},
                          {"type": "result", **FORGETTING}]
                return route.fulfill(status=200, headers={"content-type": "text/event-stream"},
                                     body="".join(f"data: {json.dumps(e, ensure_ascii=False)}\n\n" for e in events))
            found = {"status": "done", **FORGETTING} if parts[2] in self.forgetting_done else {"status": "none"}
            return ok(found)
        if path == "/studio/playground/stream":  # step 4's compare: a = base, b = tuned, streamed
            body = json.loads(request.post_data)
            self.compared.append(body)
            answers = {"a": ["I am ", "not sure."], "b": ["48 小时 ", f"({body['question']})"]}
            events = []
            for side in ("a", "b") if body.get("b") else ("a",):
                events.append({"type": "start", "side": side})
                events += [{"type": "delta", "side": side, "delta": d} for d in answers[side]]
                rows = [{"question": "工单多久没人处理会升级？", "answer": "超过48小时自动升级到护航组。"}] if side == "b" else []
                events.append({"type": "done", "side": side, "text": "".join(answers[side]), "first_token_s": 0.42,
                               "total_s": 1.5, "tokens": 7, "tokens_per_s": 4.7, "rows": rows})
            events.append({"type": "end"})
            return route.fulfill(status=200, headers={"content-type": "text/event-stream"},
                                 body="".join(f"data: {json.dumps(e)}\n\n" for e in events))
        return ok({"error": {"message": f"fake API has no {method} {path}", "type": "invalid_request_error"}}, 404)

    def summary(self, job: dict) -> dict:
        """A job as GET /studio/jobs lists it: the job object plus its summary."""
        job = self.job_now(job)
        done = job["status"] == "succeeded"
        # Once queued, the service fills OpenAI's three with the resolved values (not the user's choice).
        job = {**job, "hyperparameters": {"n_epochs": 4, "batch_size": 1, "learning_rate_multiplier": 1,
                                          **job.get("hyperparameters", {})}}
        studio = {"duration_s": 754 if done else None, "final_loss": 0.9333 if done else None,
                  "steps": 6, "total_steps": 6, "rows": 28, "valid_loss": None}
        if done and job["id"] in self.forgetting_done:  # the service adds the check's summary once it ran
            studio["forgetting"] = {**{k: FORGETTING[k] for k in ("questions", "base_right", "tuned_right", "kept",
                                                                   "lost", "gained")},
                                    "flipped": [{"question": r["question"], "flip": r["flip"]} for r in FORGETTING["rows"]]}
        return {**job, "studio": studio}

    def job_action(self, ok, action: str, job_id: str):
        """pause / resume / cancel as the service answers them (409 when the state does not allow it)."""
        job = self.job_now(self.jobs[job_id])
        allowed = {"pause": ("queued", "running"), "resume": ("paused",),
                   "cancel": ("validating_files", "queued", "running", "paused")}
        if action not in allowed:
            return ok({"error": {"message": f"fake API has no {action}", "type": "invalid_request_error"}}, 404)
        if job["status"] not in allowed[action]:
            return ok({"error": {"message": f"Job {job_id} is {job['status']}.", "type": "invalid_request_error",
                                 "code": "job_not_pausable"}}, 409)
        self.actions.append((action, job_id))
        if action == "resume":
            self.status_overrides.pop(job_id, None)
        else:
            self.status_overrides[job_id] = {"pause": "paused", "cancel": "cancelled"}[action]
        return ok(self.job_now(self.jobs[job_id]))

    def create_job(self, route, request) -> None:
        body = json.loads(request.post_data)
        self.created.append(body)
        job_id = f"ftjob-{len(self.created)}"  # never reused, even after a delete
        failed = self.outcome == "failed"
        job = {"id": job_id, "object": "fine_tuning.job", "model": body["model"], "created_at": 1764318000,
               "finished_at": None,
               "status": "failed" if failed else "succeeded", "training_file": body["training_file"],
               "fine_tuned_model": None if failed else f"ft:{body['model']}:studio:{job_id}",
               "error": {"code": self.error_code, "param": None,
                         "message": "The trainer ran out of memory at step 3 (needs 4 GB)."} if failed else None,
               "hyperparameters": body.get("hyperparameters", {})}
        if self.script is not None:
            job["created_at"] = int(self.script[0][0]["time"]) - 5
        self.jobs[job_id] = job
        route.fulfill(status=200, content_type="application/json",
                      body=json.dumps({**job, "status": "queued", "fine_tuned_model": None, "error": None}))

    def serve_stream(self, handler, job_id: str) -> None:
        """The job's Server-Sent Events as the service sends them: all so far (after Last-Event-ID), then
        new ones as the test moves the phase on, a status event on each change; ends after a final one."""
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Cache-Control", "no-cache")
        handler.end_headers()
        sent = int(handler.headers.get("Last-Event-ID") or 0)
        status = None
        deadline = time.time() + 60
        try:
            handler.wfile.write(b"retry: 2000\n\n")
            while time.time() < deadline:
                events = self.script_events()
                for i, e in enumerate(events[sent:], sent + 1):
                    handler.wfile.write(f"id: {i}\ndata: {json.dumps(e)}\n\n".encode())
                sent = max(sent, len(events))
                job = self.job_now(self.jobs[job_id])
                if job["status"] != status:
                    status = job["status"]
                    handler.wfile.write(("data: " + json.dumps({"type": "status", "status": status,
                                                                 "fine_tuned_model": job["fine_tuned_model"],
                                                                 "error": None}) + "\n\n").encode())
                handler.wfile.flush()
                if status in ("succeeded", "failed", "cancelled"):
                    return
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            return

    def job_now(self, job: dict) -> dict:
        """A scripted job runs until its events so far include "done" (or is paused / cancelled)."""
        if job["id"] in self.status_overrides:
            return {**job, "status": self.status_overrides[job["id"]], "fine_tuned_model": None}
        if self.script is None:
            return job
        events = self.script_events()
        done = next((e for e in events if e["type"] == "done"), None)
        if done is None:
            return {**job, "status": "running", "fine_tuned_model": None, "error": None}
        return {**job, "status": "succeeded", "finished_at": int(done["time"]) + 1}


@pytest.fixture(scope="module")
def static_server():
    require_chromium()
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            match = re.fullmatch(r"/studio/jobs/([^/]+)/stream", urlparse(self.path).path)
            if match and LIVE["fake"] is not None and match.group(1) in LIVE["fake"].jobs:
                return LIVE["fake"].serve_stream(self, match.group(1))
            return super().do_GET()

    handler = functools.partial(Quiet, directory=str(WEB))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True  # held-open event streams end with their test
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    yield from chromium()


def open_page(browser, base, lang, fake, viewport=LAPTOP):
    """The page against `fake`'s answers (every /v1 and /studio request), the rest from the static server."""
    return open_url(browser, base + "/", lang, viewport, routes={"**/v1/**": fake.handle, "**/studio/**": fake.handle})


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_every_state_renders_translated_and_fits(browser, static_server, lang, tmp_path):
    from playwright.sync_api import expect

    fake = FakeStudio()
    context, page, errors = open_page(browser, static_server, lang, fake)
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN" if lang == "zh" else "en")
    expect(page.get_by_test_id("start-training")).to_be_disabled()
    expect(page.get_by_test_id("base-model-select")).to_have_value("default")
    check_layout(page)
    shot(page, f"mock-{lang}-1-empty-laptop")

    data = tmp_path / "yunzhan_broken.csv"
    data.write_text("instruction,response\n", encoding="utf-8")
    page.get_by_test_id("upload-input").set_input_files(str(data))
    expect(page.get_by_test_id("validation-issue")).to_have_count(12)  # row 29's two issues share one row
    expect(page.get_by_test_id("validation-summary")).to_contain_text("28")
    row29 = page.locator("[data-testid=validation-issue][data-row='29']")
    expect(row29).to_contain_text("文字乱码" if lang == "zh" else "Garbled text")
    expect(page.locator("#download-rejected")).to_have_attribute("href", "/studio/files/file-broken/rejected")
    expect(page.get_by_test_id("recommended-settings")).to_be_visible()
    expect(page.get_by_test_id("cost-estimate")).to_contain_text("12")  # about 12 min
    check_layout(page, ["yunzhan_broken.csv"])
    shot(page, f"mock-{lang}-2-report-laptop")

    page.locator("#advanced summary").click()
    page.locator("#adv-max_steps").fill("6")
    page.locator("#adv-max_steps").press("Tab")
    expect(page.locator(".setting.changed")).to_have_count(1)
    check_layout(page)
    shot(page, f"mock-{lang}-3-settings-laptop")

    page.get_by_test_id("start-training").click()
    expect(page.get_by_test_id("job-status")).to_have_attribute("data-status", "succeeded")
    assert fake.created[0]["hyperparameters"] == {"task": "qa", "max_steps": 6}
    assert fake.created[0]["model"] == "default" and fake.created[0]["training_file"] == "file-broken"
    expect(page.get_by_test_id("job-progress")).to_have_attribute("aria-valuenow", "100")
    expect(page.get_by_test_id("loss-chart")).to_have_attribute("data-points", "6")
    assert page.locator("#loss-chart path.line.train").count() == 1
    assert "ftjob-1" in page.url
    page.get_by_test_id("compare-input").fill("工单多久升级？")
    page.get_by_test_id("compare-send").click()
    expect(page.get_by_test_id("compare-tuned-output")).to_contain_text("48 小时")
    expect(page.get_by_test_id("compare-base-output")).to_have_text("I am not sure.")
    expect(page.get_by_test_id("compare-tuned-output")).to_have_attribute("data-state", "done")
    timing = {"en": "First word after 0.42 s", "zh": "0.42"}[lang]
    expect(page.get_by_test_id("compare-base-timing")).to_contain_text(timing)
    expect(page.get_by_test_id("compare-tuned-timing")).to_contain_text(timing)
    # the rows the tuned model read beside the question, folded under its timing; none under the base model's
    read = page.locator("#compare-tuned-timing + details.rows-read")
    expect(read).to_have_attribute("data-rows", "1")
    expect(read.locator("summary")).to_contain_text({"en": "Read 1 of your training rows", "zh": "1 条资料"}[lang])
    expect(read.locator(".rows-read-a")).to_be_hidden()
    read.locator("summary").click()
    expect(read.locator(".rows-read-a")).to_have_text("超过48小时自动升级到护航组。")
    expect(page.locator("#compare-base-timing + details.rows-read")).to_have_count(0)
    assert fake.compared[0]["a"] == {"model": "default"} and fake.compared[0]["b"] == {"model": "ft:default:studio:ftjob-1"}
    page.locator("#question-set summary").click()
    page.locator("#question-set-input").fill("退款多久到账？\n\n栈台Max多少钱？")
    page.locator("#question-set-run").click()
    expect(page.locator("#question-set-body tr")).to_have_count(2)
    expect(page.locator("#question-set-body tr").nth(1)).to_contain_text("48 小时 (栈台Max多少钱？)")
    expect(page.get_by_test_id("download-adapter")).to_have_attribute("href", "/studio/jobs/ftjob-1/download/adapter")
    # the GGUF: its time said before the build; then the fidelity check (en: passed; zh: failed, loudly)
    check = page.get_by_test_id("gguf-check")
    expect(check).to_have_attribute("data-state", "none")
    expect(page.get_by_test_id("download-gguf")).to_be_hidden()
    expect(check).to_contain_text({"en": "9 min 38 s", "zh": "9 分 38 秒"}[lang])
    fake.gguf_result = "passed" if lang == "en" else "failed"
    page.get_by_test_id("gguf-check-run").click()
    expect(check).to_have_attribute("data-state", fake.gguf_result)
    expect(page.get_by_test_id("download-gguf")).to_be_visible()
    expect(page.get_by_test_id("download-gguf")).to_have_attribute("href", "/studio/jobs/ftjob-1/download/gguf")
    if lang == "en":
        expect(check).to_contain_text("llama.cpp agrees with your tuned model on 5/5 check questions")
        expect(page.get_by_test_id("gguf-check-problems")).to_be_hidden()
    else:
        expect(check).to_contain_text("警告：这个 GGUF 文件的回答与你的微调模型不一致")
        expect(check).to_contain_text("5 个检查问题中的 1 个")
        expect(check).to_contain_text("请改用适配器下载")
        expect(page.locator("#gguf-check-details summary")).to_contain_text("英文")
    check_layout(page)

    expect(page.locator("#snippet-code")).to_contain_text("ft:default:studio:ftjob-1")
    check_layout(page)
    shot(page, f"mock-{lang}-4-trained-laptop")

    page.set_viewport_size(PHONE)
    page.wait_for_timeout(300)  # the chart redraws after a resize
    check_layout(page, ["yunzhan_broken.csv"])
    shot(page, f"mock-{lang}-5-trained-phone")
    shot_sections(page, f"mock-{lang}-5-trained-phone")
    assert errors == []
    context.close()


def test_failed_job_says_why_in_both_languages(browser, static_server, tmp_path):
    from playwright.sync_api import expect

    fake = FakeStudio(outcome="failed")
    context, page, errors = open_page(browser, static_server, "zh", fake, viewport=PHONE)
    data = tmp_path / "yunzhan_broken.csv"
    data.write_text("instruction,response\n", encoding="utf-8")
    page.get_by_test_id("upload-input").set_input_files(str(data))
    expect(page.get_by_test_id("recommended-settings")).to_be_visible()
    page.get_by_test_id("start-training").click()
    expect(page.get_by_test_id("job-status")).to_have_text("失败")
    # the reason in the page's words by the error's code; the trainer's own message as a detail (data)
    expect(page.locator("#job-error")).to_contain_text("训练失败：训练程序出错停止。请重新开始")
    expect(page.locator("#job-error .error-detail")).to_have_text(
        "训练程序给出的详情：The trainer ran out of memory at step 3 (needs 4 GB).")
    expect(page.locator("#job-error .error-detail .data")).to_have_text("The trainer ran out of memory at step 3 (needs 4 GB).")
    expect(page.locator("#compare-body")).to_be_hidden()
    expect(page.get_by_test_id("job-progress")).to_have_attribute("aria-valuenow", "50")
    check_layout(page, ["yunzhan_broken.csv"])
    shot(page, "mock-zh-6-failed-phone")
    shot_sections(page, "mock-zh-6-failed-phone", ["step-train"])
    page.get_by_test_id("lang-toggle").click()
    expect(page.locator("#job-error")).to_contain_text("Training failed: the trainer stopped with an error.")
    expect(page.locator("#job-error .error-detail")).to_contain_text("Details from the trainer: The trainer ran out")
    expect(page.get_by_test_id("job-status")).to_have_text("failed")
    check_layout(page, ["yunzhan_broken.csv"])
    assert errors == []
    context.close()


def test_every_failure_code_is_said_in_chinese_and_english_only_as_the_labelled_detail(browser, static_server,
                                                                                       tmp_path):
    """Each code the service gives a failed job (tests/test_studio_api.py collects them from its source), an
    unknown one and none: the reason in Chinese; the trainer's English sentence only inside the labelled
    detail, never as the reason."""
    from playwright.sync_api import expect

    from tests.test_studio_api import job_failure_codes

    for code in [*sorted(job_failure_codes()), "a_code_from_the_future", None]:
        fake = FakeStudio(outcome="failed", error_code=code)
        context, page, errors = open_page(browser, static_server, "zh", fake, viewport=PHONE)
        upload_broken(page, tmp_path)
        page.get_by_test_id("start-training").click()
        expect(page.get_by_test_id("job-status")).to_have_text("失败")
        box = page.locator("#job-error")
        expect(box.locator(".error-detail .data")).to_have_text("The trainer ran out of memory at step 3 (needs 4 GB).")
        reason = box.locator("> span").first.inner_text()
        assert reason.startswith("训练失败："), (code, reason)
        assert not re.search("[A-Za-z]{3,}", reason), (code, reason)  # no English outside the detail
        expect(box.locator(".error-detail")).to_contain_text("训练程序给出的详情：")
        if code is None or code == "a_code_from_the_future":
            assert "原话见下方" in reason, reason
        check_layout(page, ["yunzhan_broken.csv"])
        assert errors == []
        context.close()


def test_language_toggle_translates_everything_and_persists(browser, static_server):
    from playwright.sync_api import expect

    context, page, errors = open_page(browser, static_server, "en", FakeStudio())
    zh, en = i18n_keys("zh"), i18n_keys("en")
    page.get_by_test_id("lang-toggle").click()
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    texts = page.eval_on_selector_all("[data-i18n]", "els => els.map(e => [e.dataset.i18n, e.textContent])")
    assert texts and all(text == zh[key] for key, text in texts)
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(page.get_by_test_id("lang-toggle")).to_have_text(zh["lang.switch"])
    page.get_by_test_id("lang-toggle").click()
    texts = page.eval_on_selector_all("[data-i18n]", "els => els.map(e => [e.dataset.i18n, e.textContent])")
    assert all(text == en[key] for key, text in texts)
    assert errors == []
    context.close()


def test_a_localised_report_is_used_and_asked_again_on_language_switch(browser, static_server, tmp_path):
    from playwright.sync_api import expect

    context, page, errors = open_page(browser, static_server, "en", FakeStudio(localised_reports=True))
    data = tmp_path / "yunzhan_broken.csv"
    data.write_text("instruction,response\n", encoding="utf-8")
    page.get_by_test_id("upload-input").set_input_files(str(data))
    hint = page.locator("[data-testid=validation-issue][data-row='4'] td.hint")
    expect(hint).to_have_text("server hint")
    page.get_by_test_id("lang-toggle").click()
    expect(hint).to_have_text("服务器提示：请修改这一行。")
    check_layout(page, ["yunzhan_broken.csv"])
    assert errors == []
    context.close()


def test_coded_reasons_are_shown_in_the_page_language(browser, static_server, tmp_path):
    from playwright.sync_api import expect

    fake = FakeStudio(coded=True)
    context, page, errors = open_page(browser, static_server, "zh", fake)
    data = tmp_path / "yunzhan_broken.csv"
    data.write_text("instruction,response\n", encoding="utf-8")
    page.get_by_test_id("upload-input").set_input_files(str(data))
    settings = page.get_by_test_id("recommended-settings")
    expect(settings).to_contain_text("秩 16：足够容纳这 28 行里的知识（0.5B 模型）。")
    expect(settings).to_contain_text("在这台电脑的 CPU 上训练（2 核，avx2-fp32）。")
    expect(page.locator("#rec-warnings")).to_have_text("只有 28 行可用数据：模型能学到的很有限。")
    expect(page.get_by_test_id("cost-estimate")).to_contain_text("CPU，2 核（avx2-fp32）")
    # a code missing from the catalogue (or a reason without a code): the service's English line, as data
    expect(settings.locator("dd.data[lang=en]", has_text=RECOMMENDATION["reasons"]["learning_rate"])).to_have_count(1)
    check_layout(page, ["yunzhan_broken.csv"])
    page.get_by_test_id("lang-toggle").click()
    expect(settings).to_contain_text("Rank 16: enough for the facts of 28 rows on a 0.5B model.")
    expect(page.locator("#rec-warnings")).to_have_text("Only 28 usable rows: the model will learn little beyond them.")
    expect(settings.locator("dd.data")).to_have_count(0)
    check_layout(page, ["yunzhan_broken.csv"])
    page.get_by_test_id("lang-toggle").click()
    expect(settings).to_contain_text("秩 16")
    assert fake.catalogue_requests == ["zh", "en"]  # once per language
    assert errors == []
    context.close()


def upload_broken(page, tmp_path) -> None:
    data = tmp_path / "yunzhan_broken.csv"
    data.write_text("instruction,response\n", encoding="utf-8")
    page.get_by_test_id("upload-input").set_input_files(str(data))
    from playwright.sync_api import expect

    expect(page.get_by_test_id("recommended-settings")).to_be_visible()


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_quick_preview_is_opt_in_with_its_cost_and_is_sent(browser, static_server, lang, tmp_path):
    from playwright.sync_api import expect

    fake = FakeStudio(schedules=True)
    context, page, errors = open_page(browser, static_server, lang, fake)
    upload_broken(page, tmp_path)
    zh = lang == "zh"
    full, quick = page.get_by_test_id("schedule-full"), page.get_by_test_id("quick-preview")
    # the full schedule is the default, with its estimate; the preview beside it, with its own and its cost
    expect(full).to_be_checked()
    expect(quick).not_to_be_checked()
    expect(page.get_by_test_id("schedule-full-estimate")).to_contain_text("12 分 34 秒" if zh else "12 min 34 s")
    expect(page.get_by_test_id("quick-estimate")).to_contain_text("4 分 22 秒" if zh else "4 min 22 s")
    cost = page.get_by_test_id("quick-cost")
    expect(cost).to_have_text("只训练 1 轮（完整为 4 轮）：我们测试中 40 条知识只答对 8 条，完整训练为 28 条。" if zh else
                              "One pass instead of 4: in our test it recalled 8 of 40 facts instead of 28.")
    expect(cost.locator(".data")).to_have_count(4)  # the numbers are the service's data
    expect(page.locator("#schedule legend")).to_have_text("训练时长" if zh else "How long to train")
    # where the time goes, by stage
    expect(page.get_by_test_id("cost-estimate")).to_contain_text("训练约 10 分 0 秒" if zh else "training ~10 min 0 s")
    assert [r["quick"] for r in fake.recommends] == [False]
    check_layout(page, ["yunzhan_broken.csv"])
    shot(page, f"mock-{lang}-7-schedule-laptop")

    quick.check()
    expect(page.get_by_test_id("cost-estimate")).to_contain_text("预计（快速预览）" if zh else "Estimate (quick preview)")
    assert [r["quick"] for r in fake.recommends] == [False, True]
    expect(quick).to_be_checked()
    epochs = page.locator("#recommended-settings .setting", has_text="训练轮数" if zh else "Passes over the data")
    expect(epochs.locator(".setting-value")).to_have_text("1")
    # the full schedule is still there, with its estimate and what it gains
    expect(page.get_by_test_id("schedule-full-estimate")).to_contain_text("12 分 34 秒" if zh else "12 min 34 s")
    expect(page.locator("#schedule-full-note")).to_contain_text("28")
    check_layout(page, ["yunzhan_broken.csv"])

    page.get_by_test_id("start-training").click()
    expect(page.get_by_test_id("job-status")).to_have_attribute("data-status", "succeeded")
    assert fake.created[0]["hyperparameters"] == {"task": "qa", "quick": True}
    expect(page.get_by_test_id("job-quick")).to_be_visible()
    expect(page.get_by_test_id("job-quick")).to_have_text("快速预览" if zh else "quick preview")

    # back to the full schedule: asked again without quick, and the next job is a full one
    full.check()
    expect(page.get_by_test_id("cost-estimate")).not_to_contain_text("快速预览" if zh else "quick preview")
    assert [r["quick"] for r in fake.recommends] == [False, True, False]
    page.get_by_test_id("start-training").click()
    expect(page.locator("#job-id")).to_have_text("ftjob-2")
    assert fake.created[1]["hyperparameters"] == {"task": "qa"}
    page.set_viewport_size(PHONE)
    check_layout(page, ["yunzhan_broken.csv"])
    shot_sections(page, f"mock-{lang}-7-schedule-phone", ["step-settings"])
    assert errors == []
    context.close()


def test_a_changed_setting_gets_its_own_estimate(browser, static_server, tmp_path):
    """More passes in the advanced panel: the service estimates them and the page shows that time (not the
    recommendation's with a caveat); a change the time does not depend on keeps the recommendation's; a
    refused change says why; the job started carries the changed time as its estimate."""
    from playwright.sync_api import expect

    fake = FakeStudio(schedules=True)
    context, page, errors = open_page(browser, static_server, "en", fake)
    upload_broken(page, tmp_path)
    cost = page.get_by_test_id("cost-estimate")
    expect(cost).to_contain_text("12 min 34 s")
    page.locator("#advanced summary").click()
    page.locator("#adv-num_epochs").fill("8")
    page.locator("#adv-num_epochs").press("Tab")
    expect(page.get_by_test_id("estimate-with-changes")).to_have_text(" (with your changes)")
    expect(cost).to_contain_text("25 min 8 s")  # 754 s × 8 / 4
    expect(cost).not_to_contain_text("may alter it")
    assert fake.recommends[-1]["settings"] == {"num_epochs": 8}
    page.locator("#adv-num_epochs").fill("99")
    page.locator("#adv-num_epochs").press("Tab")
    expect(page.get_by_test_id("changes-refused")).to_contain_text("num_epochs=99 is invalid")
    page.locator("#adv-num_epochs").fill("8")
    page.locator("#adv-num_epochs").press("Tab")
    expect(cost).to_contain_text("25 min 8 s")
    expect(page.get_by_test_id("changes-refused")).to_have_count(0)
    # another schedule: the same changes are estimated again for it
    asked = len(fake.recommends)
    page.get_by_test_id("quick-preview").check()
    expect(cost).to_contain_text("Estimate (quick preview)")
    for _ in range(100):  # asked again a moment after the schedule changed
        if any(r.get("quick") and r.get("settings") == {"num_epochs": 8} for r in fake.recommends[asked:]):
            break
        page.wait_for_timeout(100)
    assert any(r.get("quick") and r.get("settings") == {"num_epochs": 8} for r in fake.recommends[asked:])
    expect(page.get_by_test_id("estimate-with-changes")).to_have_count(1)
    page.get_by_test_id("schedule-full").check()
    expect(cost).to_contain_text("25 min 8 s")
    check_layout(page, ["yunzhan_broken.csv"])
    page.get_by_test_id("start-training").click()
    expect(page.get_by_test_id("job-estimate")).to_contain_text("Estimated 25 min 8 s")
    expect(page.get_by_test_id("job-estimate")).not_to_contain_text("recommended settings")
    assert fake.created[0]["hyperparameters"] == {"task": "qa", "num_epochs": 8}
    assert errors == []
    context.close()


def test_start_twice_creates_one_job(browser, static_server, tmp_path):
    from playwright.sync_api import expect

    fake = FakeStudio(hold_job_posts=True)
    context, page, errors = open_page(browser, static_server, "en", fake)
    upload_broken(page, tmp_path)
    start = page.get_by_test_id("start-training")
    expect(start).to_be_enabled()
    start.dblclick()
    expect(start).to_be_disabled()  # the start request is in flight (held by the fake)
    start.dispatch_event("click")  # a click that reaches the handler anyway
    page.keyboard.press("Enter")
    page.wait_for_timeout(500)
    assert len(fake.held) == 1 and fake.created == []
    fake.release_jobs()
    expect(page.get_by_test_id("job-status")).to_have_attribute("data-status", "succeeded")
    page.wait_for_timeout(300)
    assert len(fake.created) == 1 and fake.held == []
    expect(start).to_be_enabled()  # attached: another job may be started on purpose
    assert errors == []
    context.close()


def live_script(t0: float) -> list[list[dict]]:
    """A job's events in phases, times from t0 (unix seconds): phase 0 prepares (no step yet), 1 trains
    two steps, 2 evaluates, is interrupted (its checkpoint is a "save" stage), prepares and tokenizes
    again (a resumed session: earlier stages, the last stage event is not training) and gets its
    measured estimate, 3 saves."""
    def metrics(step, at, eta, speed):
        return {"type": "metrics", "time": t0 + at, "step": step, "total_steps": 10, "epoch": step / 10,
                "percent": 10.0 * step, "eta_s": eta, "tokens_per_s": speed, "loss": 3.0 / step, "lr": 5e-4,
                "elapsed_s": at, "cost": 0.0}

    def stage(name, at, message):
        return {"type": "stage", "time": t0 + at, "stage": name, "message": message}

    return [
        [stage("prepare", 0, "reading data.csv and default"), stage("prepare", 3, "loading default on cpu (fp32)")],
        [stage("tokenize", 20, "20 examples"), stage("train", 25, "training 4,399,104 LoRA parameters for 10 steps"),
         metrics(1, 40, 700.0, 30.1), metrics(2, 55, 650.0, 31.0)],
        [stage("evaluate", 56, "validation loss at step 2"), {"type": "eval", "time": t0 + 58, "step": 2, "valid_loss": 2.5},
         stage("save", 58.5, "interrupted (SIGTERM) at step 2; resume with --resume"),
         stage("prepare", 59, "loading default on cpu (fp32)"), stage("tokenize", 60, "20 examples"),
         {"type": "resumed", "time": t0 + 60.5, "step": 2, "path": "/jobs/x/checkpoints/step-00000002"},
         {"type": "estimate", "time": t0 + 61, "tokens_per_s": 43.4, "remaining_s": 1860.0, "finish_s": 1921.0,
          "estimated_s": 2100, "steps_measured": 2},
         metrics(3, 62, 1850.0, 43.2)],
        [stage("save", 90, "writing the adapter"), stage("done", 95, "adapter saved"),
         {"type": "done", "time": t0 + 95, "adapter_dir": "/jobs/x", "metrics": {}}],
    ]


def stage_states(page) -> dict:
    return dict(page.eval_on_selector_all("[data-testid=job-stage-step]",
                                          "els => els.map(e => [e.dataset.stage, e.dataset.state])"))


def test_live_eta_is_shown_beside_the_estimate(browser, static_server, tmp_path):
    from playwright.sync_api import expect

    fake = FakeStudio(schedules=True, script=live_script(time.time() - 100))
    context, page, errors = open_page(browser, static_server, "en", fake)
    upload_broken(page, tmp_path)
    fake.phase = 1
    page.get_by_test_id("start-training").click()
    estimate = page.get_by_test_id("job-estimate")
    # before the trainer's measurement: the recommender's estimate, and the ETA says it rests on it
    expect(estimate).to_have_attribute("data-basis", "estimate")
    expect(estimate).to_contain_text("Estimated 12 min 34 s · ")
    expect(estimate).to_contain_text("left by the estimate (speed not measured yet)")
    expect(page.get_by_test_id("job-eta")).to_contain_text("≈")
    check_layout(page, ["yunzhan_broken.csv"])

    fake.phase = 2  # the stream reconnects and brings the "estimate" event
    expect(estimate).to_have_attribute("data-basis", "measured")
    expect(estimate).to_have_text("Estimated 35 min 0 s · measured: 30 min 50 s left, 43 tokens/s")
    expect(page.get_by_test_id("job-eta")).to_have_text("30 min 50 s")
    check_layout(page, ["yunzhan_broken.csv"])
    shot(page, "mock-en-8-measured-laptop")
    shot_sections(page, "mock-en-8-measured-laptop", ["step-train"])
    page.get_by_test_id("lang-toggle").click()
    expect(estimate).to_have_text("预计 35 分 0 秒 · 实测：还需 30 分 50 秒，43 token/秒")
    check_layout(page, ["yunzhan_broken.csv"])
    shot(page, "mock-zh-8-measured-laptop")

    fake.phase = 3
    expect(page.get_by_test_id("job-status")).to_have_attribute("data-status", "succeeded")
    expect(estimate).to_have_text("用时 1 分 35 秒 · 预计 35 分 0 秒")
    assert errors == []
    context.close()


def test_stages_in_order_with_their_times_never_backwards(browser, static_server, tmp_path):
    from playwright.sync_api import expect

    fake = FakeStudio(schedules=True, script=live_script(time.time() - 100))
    context, page, errors = open_page(browser, static_server, "zh", fake)
    upload_broken(page, tmp_path)
    page.get_by_test_id("start-training").click()
    # before the first step: the stage and its time, no "0 %", no endless "estimating"
    steps = page.get_by_test_id("job-stage-step")
    expect(steps).to_have_count(4)  # prepare, tokenize, train, save (from the first second)
    expect(page.locator("[data-stage=prepare]")).to_have_attribute("data-state", "current")
    assert stage_states(page) == {"prepare": "current", "tokenize": "pending", "train": "pending", "save": "pending"}
    expect(page.locator("#job-stage")).to_have_text("正在准备模型和数据……")
    expect(page.locator("#job-stage-time")).to_have_text(re.compile(r"^（已进行 [12] 分 \d+ 秒）$"))  # ~100 s
    expect(page.locator("[data-stage=prepare] .stage-time")).to_contain_text("（预计 1 分 50 秒）")
    expect(page.locator("[data-stage=train] .stage-time")).to_have_text("预计 10 分 0 秒")
    expect(page.locator("#job-percent")).to_have_text("—")
    expect(page.get_by_test_id("job-elapsed")).to_have_text(re.compile(r"^[12] 分 \d+ 秒$"))
    expect(page.get_by_test_id("job-eta")).not_to_contain_text("估算中")
    check_layout(page, ["yunzhan_broken.csv"])
    shot(page, "mock-zh-9-preparing-laptop")

    fake.phase = 1
    expect(page.locator("[data-stage=train]")).to_have_attribute("data-state", "current")
    assert stage_states(page) == {"prepare": "done", "tokenize": "done", "train": "current", "save": "pending"}
    expect(page.locator("[data-stage=prepare] .stage-time")).to_have_text("20 秒（预计 1 分 50 秒）")
    expect(page.locator("[data-stage=tokenize] .stage-time")).to_have_text("5 秒（预计 4 秒）")

    fake.phase = 2  # evaluate, an interruption's "save", "prepare" and "tokenize" again: still training
    expect(page.locator("[data-stage=evaluate]")).to_have_count(1)
    page.wait_for_function("() => document.querySelector('[data-testid=job-eta]').dataset.basis === 'measured'")
    assert stage_states(page) == {"prepare": "done", "tokenize": "done", "train": "current", "evaluate": "done",
                                  "save": "pending"}
    expect(page.locator("[data-stage=evaluate] .stage-time")).to_contain_text("2 秒")
    expect(page.locator("[data-stage=prepare] .stage-time")).to_have_text("20 秒（预计 1 分 50 秒）")
    expect(page.locator("#job-stage")).to_have_text("正在训练……")
    check_layout(page, ["yunzhan_broken.csv"])
    page.set_viewport_size(PHONE)
    check_layout(page, ["yunzhan_broken.csv"])
    shot_sections(page, "mock-zh-9-stages-phone", ["step-train"])
    page.set_viewport_size(LAPTOP)

    fake.phase = 3
    expect(page.get_by_test_id("job-status")).to_have_attribute("data-status", "succeeded")
    assert stage_states(page) == {"prepare": "done", "tokenize": "done", "train": "done", "evaluate": "done",
                                  "save": "done"}
    expect(page.locator("[data-stage=train] .stage-time")).to_contain_text("1 分 5 秒")  # 25 s → 90 s
    expect(page.locator("[data-stage=save] .stage-time")).to_contain_text("5 秒")
    assert errors == []
    context.close()
