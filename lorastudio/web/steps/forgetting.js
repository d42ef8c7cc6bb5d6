// The forgetting check of a tuned job: the 24 built-in general questions answered by the base model and
// by the tuned model — how many it kept, which flipped (GET/POST /studio/jobs/{id}/forgetting). It runs
// by itself once a job the page shows has succeeded: at most once per job (the service keeps the result
// per job and adapter file, and the base model's answers per base, so later jobs answer only their tuned
// side); while another job is training it waits for it (both would share this computer's processor).
// The evaluation card can start it too. The state per job lives in the store ("forgetting": {job id:
// {status: loading|none|waiting|running|done|error, …}}); the job panel (here), the job list (job.js,
// through forgettingLine) and the evaluation card (eval.js) render from it.

import { $, node, showStatus } from "../dom.js";
import { formatNumber, lang, t } from "../i18n.js";
import * as store from "../store.js";
import { flipBadge, pgRequest, showError, streamPost } from "./playground.js";

const TRAINING = new Set(["validating_files", "queued", "running"]);

export function initForgetting() {
  store.subscribe(["job", "jobs", "forgetting"], startWhenFinished);
  store.subscribe(["job", "forgetting", "lang"], renderJobForgetting);
  $("job-forgetting-run").addEventListener("click", () => {
    const id = store.get("job")?.id;
    if (id) runForgetting(id);
  });
}

/** The check's state for a job, or null before the page asked for it. */
export function forgettingOf(jobId) {
  return (jobId && store.get("forgetting")[jobId]) || null;
}

function put(jobId, value) {
  store.set({ forgetting: { ...store.get("forgetting"), [jobId]: value } });
}

const url = (jobId) => `/studio/jobs/${encodeURIComponent(jobId)}/forgetting`;

/** The service's kept result for a job (status "none" when it was never run), into the store. */
export async function loadForgetting(jobId) {
  put(jobId, { status: "loading" });
  try {
    const found = await (await pgRequest("GET", url(jobId))).json();
    if (forgettingOf(jobId)?.status !== "loading") return; // a run started meanwhile
    put(jobId, found.status === "done" ? found : { status: "none" });
  } catch (err) {
    put(jobId, { status: "error", error: err });
  }
}

/** Run the check, its progress into the store (the service answers from its cache when it was run). */
export async function runForgetting(jobId) {
  if (forgettingOf(jobId)?.status === "running") return;
  put(jobId, { status: "running", done: 0, total: null });
  try {
    let result = null;
    let failed = null;
    await streamPost(url(jobId), {}, (ev) => {
      if (ev.type === "progress") put(jobId, { status: "running", done: ev.done, total: ev.total });
      else if (ev.type === "result") result = ev;
      else if (ev.type === "error") failed = ev;
    });
    if (failed || !result) throw Object.assign(new Error(failed?.message || ""), { code: failed?.code || "generation_failed" });
    put(jobId, { ...result, status: "done" });
  } catch (err) {
    put(jobId, { status: "error", error: err });
  }
}

/**
 * The job on screen has succeeded: show its check, and start it when it was never run. Each state moves
 * on once (loading → none → running → done | error), so a job is checked at most once by itself; a
 * failed check waits for the user's click.
 */
function startWhenFinished() {
  const job = store.get("job");
  if (!job || job.status !== "succeeded" || !job.fine_tuned_model) return;
  const state = forgettingOf(job.id);
  if (!state) {
    loadForgetting(job.id);
    return;
  }
  if (state.status !== "none" && state.status !== "waiting") return;
  const training = (store.get("jobs") || []).some((j) => j.id !== job.id && TRAINING.has(j.status));
  if (!training) runForgetting(job.id);
  else if (state.status !== "waiting") put(job.id, { status: "waiting" });
}

/** "Kept 22 of the 24 general questions the base model answers right; forgot 2, newly right 0 (of 24)." */
export function resultText(f) {
  return f.base_right
    ? t("ev.forget_result", { kept: f.kept, right: f.base_right, lost: f.lost, gained: f.gained, n: f.questions })
    : t("ev.forget_base_none", { n: f.questions, gained: f.gained });
}

/** The questions that flipped (lost or gained): from a full result's rows or a job list's summary. */
export function flippedOf(f) {
  if (Array.isArray(f.flipped)) return f.flipped;
  return (f.rows || []).filter((r) => r.flip === "lost" || r.flip === "gained");
}

/** One flipped question: its badge, the question and (when known) what the tuned model said, as data. */
export function flippedItem(r) {
  return node("li", { "data-flip": r.flip, "data-testid": "forgetting-flip" },
    flipBadge(r.flip), document.createTextNode(" "), node("span", { class: "data", text: r.question }),
    ...(r.tuned_answer !== undefined ? [document.createTextNode(` ${t("ev.tuned_said")} `),
      node("span", { class: "data", text: String(r.tuned_answer).slice(0, 160) || "—" })] : []));
}

/** The numbers as data-* attributes (tests and tools read them). */
export function markCounts(el, f) {
  for (const k of ["kept", "lost", "gained", "baseRight"]) delete el.dataset[k];
  if (f?.status !== "done") return;
  el.dataset.kept = f.kept;
  el.dataset.lost = f.lost;
  el.dataset.gained = f.gained;
  el.dataset.baseRight = f.base_right;
}

function renderJobForgetting() {
  const job = store.get("job");
  const box = $("job-forgetting");
  const shown = Boolean(job && job.status === "succeeded" && job.fine_tuned_model);
  box.hidden = !shown;
  if (!shown) return;
  const f = forgettingOf(job.id) || { status: "loading" };
  box.dataset.state = f.status;
  markCounts(box, f);
  const text = $("job-forgetting-text");
  $("job-forgetting-flips").replaceChildren();
  $("job-forgetting-flips-title").hidden = true;
  $("job-forgetting-run").hidden = !["none", "error"].includes(f.status);
  showError("job-forgetting-state", null);
  if (f.status === "done") {
    const flipped = flippedOf(f);
    text.textContent = `${resultText(f)} ${flipped.length ? "" : t("fg.no_flips")}`.trim();
    $("job-forgetting-flips-title").hidden = !flipped.length;
    $("job-forgetting-flips").replaceChildren(...flipped.map(flippedItem));
  } else if (f.status === "running") {
    text.textContent = "";
    showStatus("job-forgetting-state", "loading", f.total
      ? t("ev.forget_running", { done: formatNumber(f.done), total: formatNumber(f.total) }) : t("fg.starting"));
  } else if (f.status === "error") {
    text.textContent = t("fg.none");
    showError("job-forgetting-state", "ev.forget_failed", {}, f.error);
  } else text.textContent = t(`fg.${f.status}`);
}

/** The job list's line for a succeeded job: "General questions: kept 22 of 24 · flipped: …", or null. */
export function forgettingLine(job) {
  if (job.status !== "succeeded") return null;
  const live = forgettingOf(job.id);
  const f = live && ["running", "waiting", "done"].includes(live.status) ? live
    : job.studio?.forgetting ? { ...job.studio.forgetting, status: "done" } : null;
  if (!f) return null;
  const line = node("span", { class: "muted small job-forgetting-line", "data-testid": "job-list-forgetting",
    "data-state": f.status });
  markCounts(line, f);
  if (f.status === "running") {
    line.textContent = f.total ? t("fg.short_running", { done: formatNumber(f.done), total: formatNumber(f.total) })
      : t("fg.starting");
    return line;
  }
  if (f.status === "waiting") {
    line.textContent = t("fg.short_waiting");
    return line;
  }
  line.append(document.createTextNode(f.base_right ? t("fg.short", { kept: f.kept, right: f.base_right })
    : t("fg.short_base_none", { gained: f.gained })));
  const flipped = flippedOf(f);
  line.append(document.createTextNode(" · "));
  if (!flipped.length) {
    line.append(document.createTextNode(t("fg.short_none_flipped")));
    return line;
  }
  line.append(document.createTextNode(`${t("fg.short_flipped")} `));
  flipped.slice(0, 3).forEach((r, i) => {
    if (i) line.append(document.createTextNode(lang() === "zh" ? "；" : "; "));
    line.append(node("span", { class: "data", text: r.question }), document.createTextNode(" "), flipBadge(r.flip));
  });
  if (flipped.length > 3) line.append(document.createTextNode(` ${t("fg.short_more", { n: flipped.length - 3 })}`));
  return line;
}
