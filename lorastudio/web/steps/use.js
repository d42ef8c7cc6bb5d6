// Step 5, use a tuned model (once a job has succeeded): which one (any succeeded job, the shown one by
// default, so starting or cancelling another job never takes its downloads away), the adapter alone /
// merged / GGUF downloads and its training report, and a Python (openai SDK) or curl snippet for the
// service's chat endpoint with a copy button. The GGUF is prepared on request: the page says first how
// long building and checking it takes, then the export fidelity check's result (llama.cpp vs the adapter;
// a failure loudly, with what to do), and the GGUF stays downloadable either way.

import { api } from "../api.js";
import { $, errorText, node } from "../dom.js";
import { formatDuration, formatNumber, t } from "../i18n.js";
import { formatTime, modelName } from "../format.js";
import * as store from "../store.js";
import { succeededJobs, tunedJob } from "./job.js";

export function initUse() {
  store.subscribe(["job", "jobs", "useJobId", "snippetKind", "lang"], renderUse);
  $("use-job").addEventListener("change", (e) => store.set({ useJobId: e.target.value || null }));
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => store.set({ snippetKind: tab.dataset.snippet }));
    tab.addEventListener("keydown", (e) => {
      if (e.key !== "ArrowRight" && e.key !== "ArrowLeft") return;
      const kind = store.get("snippetKind") === "python" ? "curl" : "python";
      store.set({ snippetKind: kind });
      document.querySelector(`.tab[data-snippet="${kind}"]`).focus();
    });
  }
  $("copy-snippet").addEventListener("click", copySnippet);
  $("gguf-check-run").addEventListener("click", buildGguf);
}

function renderUse() {
  const job = tunedJob();
  $("use-empty").hidden = Boolean(job);
  $("use-body").hidden = !job;
  if (!job) return;
  const select = $("use-job");
  select.replaceChildren(...succeededJobs().map((j) => node("option", { value: j.id,
    text: [modelName(j.model), formatTime(j.created_at), j.id].filter(Boolean).join(" · ") })));
  select.value = job.id;
  $("download-adapter").href = api.downloadUrl(job.id, "adapter");
  $("download-report").href = api.downloadUrl(job.id, "report");
  $("download-merged").href = api.downloadUrl(job.id, "merged");
  $("download-gguf").href = api.downloadUrl(job.id, "gguf");
  renderGguf(job.id);
  const kind = store.get("snippetKind");
  $("snippet-code").textContent = snippetText();
  for (const tab of document.querySelectorAll(".tab")) {
    tab.setAttribute("aria-selected", String(tab.dataset.snippet === kind));
    tab.tabIndex = tab.dataset.snippet === kind ? 0 : -1;
  }
}

function snippetText() {
  const job = tunedJob();
  if (!job) return "";
  const base = `${location.origin}/v1`;
  const question = t("use.example_question");
  if (store.get("snippetKind") === "curl") {
    const payload = JSON.stringify({ model: job.fine_tuned_model, messages: [{ role: "user", content: question }] });
    return `curl ${base}/chat/completions \\\n  -H "Content-Type: application/json" \\\n  -d '${payload.replaceAll("'", "'\\''")}'`;
  }
  return [
    "from openai import OpenAI",
    "",
    `client = OpenAI(base_url="${base}", api_key="not-needed")`,
    "reply = client.chat.completions.create(",
    `    model="${job.fine_tuned_model}",`,
    `    messages=[{"role": "user", "content": ${JSON.stringify(question)}}],`,
    ")",
    "print(reply.choices[0].message.content)",
  ].join("\n");
}

async function copySnippet() {
  const text = snippetText();
  let ok = false;
  try {
    await navigator.clipboard.writeText(text);
    ok = true;
  } catch {
    // Clipboard API needs a secure context; fall back to selecting a hidden textarea.
    const area = node("textarea", { class: "sr-only", "aria-hidden": "true" });
    area.value = text;
    document.body.append(area);
    area.select();
    try { ok = document.execCommand("copy"); } catch { ok = false; }
    area.remove();
  }
  $("copy-state").textContent = ok ? t("use.copied") : t("use.copy_failed");
}

// ---------------------------------------------------------------------------------------------
// the GGUF and its fidelity check (GET/POST /studio/jobs/{id}/gguf-check)

const ggufStates = new Map(); // job id → the service's GgufCheck, or {status: "building"|"error"}

async function renderGguf(jobId) {
  if (!ggufStates.has(jobId)) {
    ggufStates.set(jobId, { status: "loading" });
    try {
      ggufStates.set(jobId, await api.ggufCheck(jobId));
    } catch (err) {
      ggufStates.set(jobId, { status: "none", error: err });
    }
  }
  if (tunedJob()?.id === jobId) showGguf(ggufStates.get(jobId));
}

function aboutTime(state) {
  return state.estimate_s ? t("use.gguf_time", { time: formatDuration(state.estimate_s) }) : t("use.gguf_time_unknown");
}

function showGguf(state) {
  const box = $("gguf-check");
  const status = state.status;
  box.dataset.state = status;
  const built = ["passed", "failed", "skipped", "unchecked"].includes(status);
  $("download-gguf").hidden = !built;
  $("gguf-check-run").hidden = built;
  $("gguf-check-run").disabled = status === "building" || status === "loading";
  const problems = state.problems || [];
  $("gguf-check-details").hidden = !(status === "failed" && problems.length);
  $("gguf-check-problems").replaceChildren(...problems.map((p) => node("li", { text: p })));
  const n = (v) => formatNumber(v ?? 0);
  const numbers = { agreeing: n(state.agreeing), total: n(state.total), required: n(state.required),
    tokens: n(state.tokens), type: state.type || "f16",
    time: formatDuration(state.seconds ?? 0) };
  let text = "";
  if (status === "loading") text = "";
  else if (status === "none") text = t("use.gguf_before", { about: aboutTime(state) });
  else if (status === "building") text = t("use.gguf_building", { about: aboutTime(state) });
  else if (status === "passed") text = t(state.criterion === "first_token" ? "use.gguf_passed_first" : "use.gguf_passed", numbers);
  else if (status === "failed") {
    text = state.agreeing < state.required ? t("use.gguf_failed", numbers) : t("use.gguf_failed_template", numbers);
  } else if (status === "skipped") text = t("use.gguf_skipped");
  else if (status === "unchecked") text = t("use.gguf_unchecked");
  else if (status === "error") text = t("use.gguf_build_failed", { message: errorText(state.error) });
  $("gguf-check-text").textContent = text;
  if (status === "error") $("gguf-check-run").hidden = false;
}

async function buildGguf() {
  const job = tunedJob();
  if (!job) return;
  const before = ggufStates.get(job.id) || {};
  ggufStates.set(job.id, { ...before, status: "building" });
  showGguf(ggufStates.get(job.id));
  try {
    ggufStates.set(job.id, await api.buildGguf(job.id));
  } catch (err) {
    ggufStates.set(job.id, { ...before, status: "error", error: err });
  }
  if (tunedJob()?.id === job.id) showGguf(ggufStates.get(job.id));
}
