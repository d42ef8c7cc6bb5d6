// Step 5, use a tuned model (once a job has succeeded): which one (any succeeded job, the shown one by
// default, so starting or cancelling another job never takes its downloads away), the adapter alone /
// merged / GGUF downloads and its training report, and a Python (openai SDK) or curl snippet for the
// service's chat endpoint with a copy button.

import { api } from "../api.js";
import { $, node } from "../dom.js";
import { t } from "../i18n.js";
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
