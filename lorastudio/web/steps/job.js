// Step 3, training: the start button, the job panel (status, the stages in order with their own
// times, progress, elapsed time, time left beside the recommender's estimate, speed, cost, loss and
// the live loss chart, fed by the job's Server-Sent Events stream), pause / resume / cancel (cancel asks
// first), and the list of all jobs: each with its status, base, duration, final loss, rows and settings,
// to open, to train again with the same settings (clone) or, once finished, to delete (asks first).
// The current job id is kept in the URL (#job=…) and in localStorage, so a reload re-attaches to it:
// the loss history comes back from /metrics and the live stream re-opens (and replays the stages).
// The estimate the job was started with is kept too (the job object does not carry it).

import { api, ApiError } from "../api.js";
import { drawChart } from "../chart.js";
import { $, errorText, node, showStatus, tNodes } from "../dom.js";
import { formatDuration, formatNumber, has, t, tOr } from "../i18n.js";
import { formatMoney, formatSetting, formatTime, modelName, settingLabel, statusText } from "../format.js";
import * as store from "../store.js";
import { timeLeft, timeline } from "../timeline.js";
import { openFile } from "./data.js";
import { forgettingLine } from "./forgetting.js";
import { changesEstimated, useSettingsOf } from "./settings.js";

const JOB_KEY = "lorastudio.job";
const ESTIMATE_KEY = "lorastudio.jobEstimate";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
// Hyperparameters of a job that are not a changed setting: the task and schedule, and OpenAI's three
// (which the job object fills with the resolved values once queued: not the user's choice).
const NOT_CHANGES = new Set(["task", "quick", "time_budget_s", "n_epochs", "batch_size", "learning_rate_multiplier"]);

export function initJob() {
  store.subscribe(["file", "report", "model", "job", "starting", "recLoading", "lang"], updateStartButton);
  store.subscribe(["jobId", "job", "metrics", "evals", "jobAction", "lang"], renderJob);
  store.subscribe(["jobId", "job", "metrics", "evals", "stages", "measured", "jobEstimate", "clock",
    "streamProblem", "lang"], renderTimes);
  store.subscribe(["jobId", "job"], keepClock);
  store.subscribe(["jobs", "jobsError", "job", "jobAction", "forgetting", "lang"], renderJobList);
  $("start-training").addEventListener("click", startTraining);
  $("cancel-job").addEventListener("click", cancelJob);
  $("pause-job").addEventListener("click", () => pauseOrResume("pause"));
  $("resume-job").addEventListener("click", () => pauseOrResume("resume"));
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(drawLoss, 150);
  });
  window.addEventListener("hashchange", () => {
    const id = jobIdFromHash();
    if (id && id !== store.get("job")?.id) attachJob(id);
  });
}

/** At start: the job of the URL (#job=…), else the one shown last time. */
export async function restoreJob() {
  const id = jobIdFromHash() || store.recall(JOB_KEY);
  if (id) await attachJob(id);
}

/** Load the job list now, then every 5 s. */
export async function watchJobs() {
  await refreshJobs();
  setInterval(refreshJobs, 5000);
}

/** Every succeeded job with a tuned model, newest first (the shown one included even before the list has it). */
export function succeededJobs() {
  const shown = store.get("job");
  const list = (store.get("jobs") || []).filter((j) => j.status === "succeeded" && j.fine_tuned_model);
  if (shown?.status === "succeeded" && shown.fine_tuned_model && !list.some((j) => j.id === shown.id)) list.unshift(shown);
  return list;
}

/**
 * The tuned job downloads (and compare) are for: the one the user chose, else the shown job when it has
 * succeeded, else the newest succeeded one. Starting, cancelling or opening another job never takes a
 * finished job's downloads away.
 */
export function tunedJob() {
  const list = succeededJobs();
  const chosen = store.get("useJobId");
  const shown = store.get("job");
  return list.find((j) => j.id === chosen) || list.find((j) => j.id === shown?.id) || list[0] || null;
}

function jobIdFromHash() {
  const m = location.hash.match(/job=([^&]+)/);
  return m ? decodeURIComponent(m[1]) : null;
}

function updateStartButton() {
  const report = store.get("report");
  const job = store.get("job");
  const ready = Boolean(store.get("file") && report && report.rows_ok > 0 && store.get("model"));
  const running = job && !TERMINAL.has(job.status);
  // Never while a start is in flight (a second click would queue a duplicate job), nor while the
  // settings are being worked out again (the job would start from the other schedule's estimate).
  $("start-training").disabled = !ready || store.get("starting") || store.get("recLoading");
  $("start-hint").textContent = !ready ? t("train.need_data")
    : running ? t("train.another_running") : t("train.ready", { n: report.rows_ok });
}

// The service applies the same recommendation for this file, model, task and schedule, then these on
// top: so only what the user changed is sent (TrainConfig field names, as the worker expects), and
// `quick` only when the user chose the quick preview (the full schedule is the default).
function jobHyperparameters() {
  return { task: store.get("task"), ...(store.get("quick") ? { quick: true } : {}), ...store.get("overrides") };
}

async function startTraining() {
  if (store.get("starting")) return; // one start at a time: the button is disabled, this is the backstop
  store.set({ starting: true });
  showStatus("train-state", "loading", t("train.starting"));
  showStatus("jobs-action-state", "", "");
  try {
    const body = {
      model: store.get("model"),
      training_file: store.get("file").id,
      hyperparameters: jobHyperparameters(),
    };
    // The estimate shown for what is sent: the recommendation of the chosen schedule, or the service's
    // estimate of the user's changes when it has answered for exactly them.
    const rec = store.get("rec");
    const mine = changesEstimated();
    const recommended = rec && (rec.schedule === "quick") === store.get("quick") ? rec.estimate : null;
    const estimate = mine?.estimate || recommended;
    const changed = Object.keys(store.get("overrides")).length > 0 && !(mine && !mine.error);
    const job = await api.createJob(body);
    rememberEstimate(job.id, estimate, changed);
    showStatus("train-state", "", "");
    await attachJob(job.id, job);
    refreshJobs();
  } catch (err) {
    showStatus("train-state", "error", t("train.start_failed", { message: errorText(err) }));
  } finally {
    store.set({ starting: false });
  }
}

/** The estimates kept ({job id: {seconds, stages, changed, at}}); a broken value is forgotten. */
function keptEstimates() {
  try {
    const kept = JSON.parse(store.recall(ESTIMATE_KEY) || "{}");
    return kept && typeof kept === "object" && !Array.isArray(kept) ? kept : {};
  } catch {
    return {};
  }
}

/** Keep the recommender's estimate of a job just started (the job object does not carry it); the last 20. */
function rememberEstimate(id, estimate, changed) {
  if (!estimate || !Number.isFinite(Number(estimate.seconds))) return;
  const kept = keptEstimates();
  kept[id] = { seconds: Number(estimate.seconds), stages: estimate.stages || null, changed, at: Date.now() };
  const newest = Object.entries(kept).sort((a, b) => (b[1]?.at || 0) - (a[1]?.at || 0)).slice(0, 20);
  store.remember(ESTIMATE_KEY, JSON.stringify(Object.fromEntries(newest)));
}

/** The estimate kept for job `id`, or null. */
function recallEstimate(id) {
  const kept = keptEstimates()[id];
  return kept && typeof kept === "object" ? kept : null;
}

// ---------------------------------------------------------------------------------------------
// the current job and its live stream

async function attachJob(id, initial = null) {
  closeStream();
  store.set({ jobId: id, job: initial, useJobId: null, metrics: [], evals: [], stages: [], measured: null,
    jobEstimate: recallEstimate(id), streamProblem: false });
  store.remember(JOB_KEY, id);
  if (location.hash !== `#job=${id}`) history.replaceState(null, "", `#job=${encodeURIComponent(id)}`);
  let job = initial;
  try {
    job = await api.job(id);
  } catch (err) {
    if (store.get("jobId") !== id) return;
    if (err instanceof ApiError && err.status === 404) {
      store.remember(JOB_KEY, null);
      history.replaceState(null, "", location.pathname + location.search);
      store.set({ jobId: null, job: null });
      showStatus("train-state", "error", t("train.job_missing", { id }));
      return;
    }
    showStatus("train-state", "error", t("train.job_load_failed", { message: errorText(err) }));
  }
  // The loss history so far (the live stream only brings what comes next, or replays it).
  const series = { metrics: [], evals: [], stages: [], measured: null };
  try {
    const past = await api.metrics(id);
    for (const ev of past.data || []) foldEvent(series, ev);
  } catch { /* the live stream still fills the chart */ }
  if (store.get("jobId") !== id) return; // another job was opened meanwhile
  store.set({ job, ...series });
  // A running job's stream brings what comes next; a finished job's replays its events (the stages and
  // their times, which /metrics does not hold) and ends with its final status.
  if (job) openStream(id);
}

/**
 * Add a metrics/eval/stage/estimate event to `series` ({metrics, evals, stages, measured}), metrics and
 * evals de-duplicated by step, stages by time and name (a reconnect replays from Last-Event-ID).
 */
function foldEvent(series, ev) {
  if (ev.type === "metrics") {
    const list = series.metrics;
    const last = list[list.length - 1];
    if (last && ev.step <= last.step) {
      // A reconnect replays from Last-Event-ID: the same step again replaces, an older one fills a gap.
      if (ev.step === last.step) list[list.length - 1] = ev;
      else if (!list.some((m) => m.step === ev.step)) {
        list.push(ev);
        list.sort((a, b) => a.step - b.step);
      }
    } else list.push(ev);
  } else if (ev.type === "eval") {
    if (!series.evals.some((e) => e.step === ev.step)) series.evals.push(ev);
  } else if (ev.type === "stage") {
    if (!series.stages.some((s) => s.time === ev.time && s.stage === ev.stage && s.message === ev.message)) {
      series.stages.push(ev);
    }
  } else if (ev.type === "estimate") {
    if (!series.measured || !(ev.time < series.measured.time)) series.measured = ev;
  }
}

function openStream(id) {
  closeStream();
  const source = new EventSource(api.streamUrl(id));
  store.set({ stream: source });
  source.onmessage = (msg) => {
    let ev;
    try { ev = JSON.parse(msg.data); } catch { return; }
    if (store.get("job")?.id !== id) return;
    onLiveEvent(ev);
  };
  source.onerror = () => {
    if (store.get("stream") !== source) return;
    // A finished job: its replay is over (or cannot be had); nothing more will come.
    if (TERMINAL.has(store.get("job")?.status)) {
      closeStream();
      return;
    }
    // EventSource reconnects by itself; say so, and check the job in case it has ended.
    store.set({ streamProblem: true });
    refreshCurrentJob();
  };
}

function closeStream() {
  const source = store.get("stream");
  if (source) {
    source.close();
    store.set({ stream: null });
  }
}

function onLiveEvent(ev) {
  const job = store.get("job");
  const patch = { streamProblem: false };
  if (["metrics", "eval", "stage", "estimate"].includes(ev.type)) {
    const series = { metrics: store.get("metrics").slice(), evals: store.get("evals").slice(),
      stages: store.get("stages").slice(), measured: store.get("measured") };
    foldEvent(series, ev);
    Object.assign(patch, series);
  } else if (ev.type === "status" && job) {
    patch.job = { ...job, status: ev.status, ...(ev.fine_tuned_model ? { fine_tuned_model: ev.fine_tuned_model } : {}) };
  } else if (ev.type === "error" && job && !job.error) {
    patch.job = { ...job, error: { message: ev.message, code: ev.code || ev.data?.code || null } };
  }
  store.set(patch);
  if (ev.type === "status" && TERMINAL.has(ev.status)) {
    closeStream();
    refreshCurrentJob();
    refreshJobs();
  } else if (ev.type === "done" || ev.type === "error") {
    refreshCurrentJob();
  }
}

async function refreshCurrentJob() {
  const id = store.get("job")?.id;
  if (!id) return;
  // Refreshes overlap (a "done" event, then the final status): only the latest one may win, or a
  // slower, older answer ("running") would overwrite the finished job.
  const seq = store.get("jobRefresh") + 1;
  store.set({ jobRefresh: seq });
  try {
    const job = await api.job(id);
    if (store.get("job")?.id !== id || seq !== store.get("jobRefresh")) return;
    // A job that has just ended: an open stream is left to bring its last events and final status
    // (it closes itself then, or on its next error).
    if (!TERMINAL.has(job.status) && !store.get("stream")) openStream(id);
    store.set({ job });
  } catch { /* keep showing what we have */ }
}

async function cancelJob() {
  const id = store.get("job")?.id;
  if (!id || store.get("jobAction")) return;
  // Cancelling throws the run away (a pause keeps it): asked first.
  if (!window.confirm(t("train.cancel_confirm"))) return;
  await jobAction(id, "cancel", () => api.cancel(id), "train.cancel_failed");
}

/** Pause (the trainer saves a checkpoint and frees the machine) or resume (from that checkpoint). */
async function pauseOrResume(action) {
  const id = store.get("job")?.id;
  if (!id || store.get("jobAction")) return;
  const job = await jobAction(id, action, () => api[action](id), `train.${action}_failed`);
  // A resumed job goes on: its live stream brings what comes next.
  if (job && action === "resume" && !store.get("stream")) openStream(id);
}

/** One request about a job at a time; the answer (the job object) replaces the shown job. */
async function jobAction(id, action, call, failedKey) {
  store.set({ jobAction: { id, action } });
  showStatus("train-state", "", "");
  let job = null;
  try {
    job = await call();
    if (store.get("job")?.id === id) store.set({ job });
  } catch (err) {
    showStatus("train-state", "error", t(failedKey, { message: errorText(err) }));
  } finally {
    store.set({ jobAction: null });
  }
  refreshJobs();
  return job;
}

function renderJob() {
  const jobId = store.get("jobId");
  $("job-panel").hidden = !jobId;
  if (jobId) $("job-id").textContent = jobId;
  const job = store.get("job");
  if (!job) return;
  const metrics = store.get("metrics");
  const status = job.status || "validating_files";
  const badge = $("job-status");
  badge.textContent = statusText(status);
  badge.className = `badge badge-${status}`;
  badge.dataset.status = status;
  $("job-quick").hidden = job.hyperparameters?.quick !== true;
  const busy = Boolean(store.get("jobAction"));
  $("cancel-job").hidden = TERMINAL.has(status);
  $("pause-job").hidden = !["queued", "running"].includes(status);
  $("resume-job").hidden = status !== "paused";
  for (const id of ["cancel-job", "pause-job", "resume-job"]) $(id).disabled = busy;

  const last = metrics[metrics.length - 1];
  let percent = last ? Number(last.percent ?? (100 * last.step) / Math.max(1, last.total_steps)) : 0;
  if (status === "succeeded") percent = 100;
  percent = Math.max(0, Math.min(100, percent));
  const progress = $("job-progress");
  progress.value = percent;
  progress.setAttribute("aria-valuenow", String(Math.round(percent)));
  progress.setAttribute("aria-valuetext", t("train.progress_text", { percent: formatNumber(percent, 0) }));
  progress.textContent = `${Math.round(percent)}%`;
  // No "0 %" before the first step: the stage and the elapsed time say what is happening.
  $("job-percent").textContent = last || status === "succeeded"
    ? `${formatNumber(percent, 0)}%${last ? ` · ${t("train.steps", { step: last.step, total: last.total_steps })}` : ""}` : "—";
  $("job-speed").textContent = last?.tokens_per_s !== undefined
    ? t("train.tokens_per_s", { n: formatNumber(last.tokens_per_s, 0) }) : "—";
  // A run on this machine costs nothing: said so, as the estimate does ("$0" read as a price).
  $("job-cost").textContent = last?.cost === undefined ? "—"
    : Number(last.cost) === 0 ? t("train.cost_free") : formatMoney(last.cost, store.get("rec")?.estimate?.currency);
  $("job-loss").textContent = last?.loss !== undefined ? formatNumber(last.loss, 4) : "—";

  const errBox = $("job-error");
  if (status === "failed" || (job.error && job.error.message)) {
    errBox.hidden = false;
    // What went wrong and what to do, in the page's words by the error's code; the trainer's own
    // (English) message follows as a detail, as data.
    // Any other text (a code the page does not know, the trainer's sentence) is never shown as the
    // reason: only inside the labelled detail.
    const code = job.error?.code;
    const detail = job.error?.message;
    const said = code && has(`train.error.${code}`) ? t(`train.error.${code}`)
      : detail ? t("train.failed_other") : t("train.failed_unknown");
    const lead = status === "failed" ? t("train.failed_said", { reason: said }) : t("train.error_reported", { reason: said });
    errBox.replaceChildren(node("span", { text: lead }),
      detail ? node("span", { class: "error-detail" }, ...tNodes("train.error_detail", { message: detail })) : null);
  } else errBox.hidden = true;

  drawLoss();
}

// ---------------------------------------------------------------------------------------------
// time: the stages with their own times, the elapsed time, the time left and the estimate

/** A clock that ticks once a second while the shown job is not finished (elapsed times move). */
function keepClock() {
  const job = store.get("job");
  const live = Boolean(store.get("jobId")) && !(job && TERMINAL.has(job.status));
  const ticker = store.get("ticker");
  const now = Date.now() / 1000;
  if (live && !ticker) {
    store.set({ ticker: setInterval(() => store.set({ clock: Date.now() / 1000 }), 1000), clock: now });
  } else if (!live && ticker) {
    clearInterval(ticker);
    store.set({ ticker: null, clock: now });
  }
}

function renderTimes() {
  const job = store.get("job");
  if (!store.get("jobId") || !job) return;
  const status = job.status || "validating_files";
  const now = store.get("clock") || Date.now() / 1000;
  const metrics = store.get("metrics");
  const jobEstimate = store.get("jobEstimate");
  // Per-stage estimates only for the settings they were made for (not after changes in the advanced panel).
  const line = timeline({ stages: store.get("stages"), metrics, evals: store.get("evals"), status, now,
    finishedAt: job.finished_at, estimate: jobEstimate?.changed ? null : jobEstimate });
  const left = timeLeft({ status, metrics, measured: store.get("measured"), jobEstimate, now,
    startedAt: line.startedAt, endedAt: line.endedAt, createdAt: job.created_at, finishedAt: job.finished_at });

  // The stage in words, and how long it has been going (before the trainer starts: since the job was made).
  let stage;
  let since = null;
  if (status === "succeeded") stage = t("stage.done");
  else if (status === "failed") stage = t("stage.failed");
  else if (status === "cancelled") stage = t("stage.cancelled");
  else if (store.get("streamProblem")) stage = t("train.reconnecting");
  else if (line.sub) stage = t(`stage.${line.sub}`);
  else if (line.current) stage = t(`stage.${line.current}`);
  else stage = tOr(`stage.status.${status}`, statusText(status));
  if (!TERMINAL.has(status)) {
    const row = line.rows.find((r) => r.state === "current");
    if (row) since = row.seconds;
    else if (Number.isFinite(job.created_at)) since = Math.max(0, now - job.created_at);
  }
  $("job-stage").textContent = stage;
  $("job-stage-time").textContent = since === null ? "" : t("train.stage_time", { time: formatDuration(since) });

  const from = Number.isFinite(job.created_at) ? job.created_at : line.startedAt;
  const to = TERMINAL.has(status) ? (Number.isFinite(job.finished_at) ? job.finished_at : line.endedAt) : now;
  $("job-elapsed").textContent = Number.isFinite(from) && Number.isFinite(to) ? formatDuration(Math.max(0, to - from)) : "—";

  renderStages(line, status);
  renderTimeLeft(left, status, jobEstimate);
}

function renderStages(line, status) {
  const list = $("job-stages");
  // A finished job whose stages this page never saw (the history holds metrics only): nothing to show.
  const seen = line.rows.some((r) => r.state !== "pending");
  list.hidden = TERMINAL.has(status) && !seen;
  if (list.hidden) return;
  const items = [];
  for (const row of line.rows) {
    items.push(stageItem(row.name, row.state, row.seconds, row.estimate));
    if (row.name === "train" && line.evaluate) {
      const ev = line.evaluate;
      const state = ev.state === "running" && !TERMINAL.has(status) ? "current" : "done";
      items.push(stageItem("evaluate", state, ev.seconds, ev.estimate, ev.count));
    }
  }
  list.replaceChildren(...items);
}

function stageItem(name, state, seconds, estimate, count = 0) {
  let time = "";
  const est = Number.isFinite(estimate) ? formatDuration(estimate) : null;
  if (state === "skipped") time = t("stages.skipped");
  else if (seconds !== null && seconds !== undefined) {
    time = est ? t("stages.time_of_estimate", { time: formatDuration(seconds), estimate: est }) : formatDuration(seconds);
  } else if (est) time = t("stages.estimate_only", { estimate: est });
  const label = name === "evaluate" && count > 1 ? t("stages.evaluate_times", { n: count }) : t(`stages.${name}`);
  return node("li", {
    class: `stage-step stage-${state}${name === "evaluate" ? " substep" : ""}`, "data-testid": "job-stage-step",
    "data-stage": name, "data-state": state, "aria-current": state === "current" ? "step" : null,
  },
  node("span", { class: "stage-mark", "aria-hidden": "true" }),
  node("span", { class: "stage-name", text: label }),
  node("span", { class: "sr-only", text: t(`stages.state_${state}`) }),
  node("span", { class: "stage-time", text: time }));
}

/** "estimated 35 min · measured: 31 min left, 43 tokens/s", or what the time left rests on so far. */
function renderTimeLeft(left, status, jobEstimate) {
  const eta = $("job-eta");
  const box = $("job-estimate");
  eta.dataset.basis = left.basis;
  box.dataset.basis = left.basis;
  const duration = (s) => (s === null || s === undefined ? "—" : formatDuration(s));
  if (left.basis === "done") eta.textContent = t("train.eta_done");
  else if (left.basis === "estimate") eta.textContent = t("train.eta_approx", { time: duration(left.left) });
  else eta.textContent = duration(left.left);

  const parts = [];
  if (left.basis === "done") {
    if (status === "succeeded" && left.took !== null) parts.push(t("train.took", { time: duration(left.took) }));
  }
  if (left.estimated !== null && !(left.basis === "done" && status !== "succeeded")) {
    parts.push(t(jobEstimate?.changed ? "train.estimated_recommended" : "train.estimated",
      { time: duration(left.estimated) }));
  }
  if (left.basis === "measured") {
    parts.push(left.speed === null ? t("train.measured_left", { left: duration(left.left) })
      : t("train.measured_left_speed", { left: duration(left.left), speed: formatNumber(left.speed, 0) }));
  } else if (left.basis === "estimate") {
    if (!left.started) parts.push(t("train.not_started"));
    else if (left.left > 0) parts.push(t("train.left_by_estimate", { left: duration(left.left) }));
    else parts.push(t("train.over_estimate"));
  } else if (left.basis === "steps") {
    parts.push(t("train.left_first_steps", { left: duration(left.left) }));
  } else if (left.basis === "none") {
    parts.push(t("train.left_unknown"));
  }
  const text = parts.join(" · ");
  box.textContent = text.charAt(0).toUpperCase() + text.slice(1); // a sentence (no-op in Chinese)
  box.hidden = parts.length === 0;
}

function drawLoss() {
  const svg = $("loss-chart");
  const points = store.get("metrics").filter((m) => Number.isFinite(m.loss)).map((m) => [m.step, m.loss]);
  const valid = store.get("evals").filter((e) => Number.isFinite(e.valid_loss)).map((e) => [e.step, e.valid_loss]);
  const drawn = drawChart(svg, [
    { name: "train", points, className: "train" },
    { name: "valid", points: valid, className: "valid" },
  ], { x: t("train.chart_x") });
  svg.dataset.points = String(points.length);
  // Screen readers get the gist of the curve, not just "a chart".
  const last = points[points.length - 1];
  svg.setAttribute("aria-label", last
    ? t("train.chart_summary", { n: points.length, first: formatNumber(points[0][1], 4), last: formatNumber(last[1], 4) })
    : t("train.chart_label"));
  $("chart-empty").hidden = drawn > 0;
  $("chart-legend-valid")?.toggleAttribute("hidden", valid.length === 0);
}

// ---------------------------------------------------------------------------------------------
// all jobs

async function refreshJobs() {
  try {
    const body = await api.studioJobs();
    const jobs = body.data || [];
    store.set({ jobs, jobsError: null });
    const job = store.get("job");
    const current = jobs.find((j) => j.id === job?.id);
    if (current && job && current.status !== job.status) refreshCurrentJob();
  } catch (err) {
    store.set({ jobsError: err });
  }
}

/** The panel shows no job (the one shown was deleted). */
function detachJob() {
  closeStream();
  store.remember(JOB_KEY, null);
  history.replaceState(null, "", location.pathname + location.search);
  store.set({ jobId: null, job: null, metrics: [], evals: [], stages: [], measured: null, jobEstimate: null });
}

async function deleteJob(job) {
  if (store.get("jobAction") || !window.confirm(t("jobs.delete_confirm"))) return;
  store.set({ jobAction: { id: job.id, action: "delete" } });
  showStatus("jobs-action-state", "", "");
  try {
    await api.deleteJob(job.id);
    if (store.get("jobId") === job.id) detachJob();
    if (store.get("useJobId") === job.id) store.set({ useJobId: null });
    store.set({ jobs: (store.get("jobs") || []).filter((j) => j.id !== job.id) });
  } catch (err) {
    showStatus("jobs-action-state", "error", t("jobs.delete_failed", { message: errorText(err) }));
  } finally {
    store.set({ jobAction: null });
  }
  refreshJobs();
}

/** "Train again with…": the job's file, base, task, schedule and changed settings, back in steps 1 and 2. */
async function cloneJob(job) {
  if (store.get("jobAction")) return;
  const hp = job.hyperparameters || {};
  const overrides = {};
  for (const [key, value] of Object.entries(hp)) {
    if (value === "auto" || value === null || value === undefined) continue;
    if (!NOT_CHANGES.has(key)) overrides[key] = value;
  }
  store.set({ jobAction: { id: job.id, action: "clone" } });
  showStatus("jobs-action-state", "loading", t("jobs.cloning"));
  try {
    await useSettingsOf({ model: job.model, task: hp.task, quick: hp.quick === true, overrides },
      () => openFile(job.training_file));
    if (store.get("file")?.id !== job.training_file) {
      showStatus("jobs-action-state", "error", t("jobs.clone_no_file"));
      return;
    }
    $("jobs-action-state").className = "state";
    $("jobs-action-state").replaceChildren(node("span", {}, ...tNodes("jobs.cloned", { id: job.id })));
    $("step-settings").scrollIntoView({ block: "start" });
  } catch (err) {
    showStatus("jobs-action-state", "error", t("jobs.clone_failed", { message: errorText(err) }));
  } finally {
    store.set({ jobAction: null });
  }
}

/** The job's changed settings in words ("Max steps 6 · LoRA rank 8"), or that it ran the recommended ones. */
function settingsText(job) {
  const hp = job.hyperparameters || {};
  const changes = Object.entries(hp).filter(([k, v]) => !NOT_CHANGES.has(k) && v !== "auto" && v !== null)
    .map(([k, v]) => `${settingLabel(k)} ${formatSetting(k, v)}`);
  const task = hp.task && hp.task !== "auto" ? t(`task.${hp.task}`) : null;
  const schedule = hp.quick === true ? t("train.quick_tag") : null;
  const settings = changes.length ? t("jobs.changed", { settings: changes.join(", ") }) : t("jobs.recommended");
  return [task, schedule, settings].filter(Boolean).join(" · ");
}

/** Status, base, when, how long, final loss, rows: what tells one job from another. */
function summaryText(job) {
  const s = job.studio || {};
  const bits = [modelName(job.model), formatTime(job.created_at)];
  if (Number.isFinite(s.duration_s)) bits.push(t("jobs.took", { time: formatDuration(s.duration_s) }));
  if (Number.isFinite(s.final_loss)) bits.push(t("jobs.final_loss", { loss: formatNumber(s.final_loss, 4) }));
  if (Number.isFinite(s.rows)) bits.push(t("jobs.rows", { n: formatNumber(s.rows) }));
  return bits.filter(Boolean).join(" · ");
}

function renderJobList() {
  const list = $("job-list");
  const jobs = store.get("jobs");
  const error = store.get("jobsError");
  const shown = store.get("job");
  const busy = store.get("jobAction");
  list.replaceChildren();
  if (error) {
    showStatus("jobs-state", "error", t("jobs.failed", { message: errorText(error) }));
    return;
  }
  if (jobs === null) {
    showStatus("jobs-state", "loading", t("jobs.loading"));
    return;
  }
  if (!jobs.length) {
    showStatus("jobs-state", "", t("jobs.empty"));
    return;
  }
  showStatus("jobs-state", "", "");
  for (const job of jobs) {
    const current = job.id === shown?.id;
    const status = current ? shown.status : job.status;
    list.append(node("li", { class: `job-item${current ? " current" : ""}`, "data-testid": "job-list-item",
      "data-job-id": job.id, "data-status": status },
    node("button", {
      type: "button", class: "job-open", "aria-current": current ? "true" : null,
      onclick: () => attachJob(job.id),
    },
    node("span", { class: "job-main" },
      node("span", { class: "job-title" },
        node("code", { class: "data", text: job.id }),
        node("span", { class: `badge badge-${status}`, text: statusText(status) })),
      node("span", { class: "muted small", "data-testid": "job-summary", text: summaryText(job) }),
      node("span", { class: "muted small job-settings", text: settingsText(job) }),
      forgettingLine(current ? { ...job, status } : job))),
    node("span", { class: "job-item-actions" },
      node("button", { type: "button", class: "btn btn-secondary btn-small", "data-testid": "job-clone",
        disabled: Boolean(busy), onclick: () => cloneJob(job), text: t("jobs.clone"),
        "aria-label": t("jobs.clone_label", { id: job.id }) }),
      TERMINAL.has(status) ? node("button", { type: "button", class: "btn btn-ghost btn-small btn-danger",
        "data-testid": "job-delete", disabled: Boolean(busy), onclick: () => deleteJob(job), text: t("jobs.delete"),
        "aria-label": t("jobs.delete_label", { id: job.id }) }) : null)));
  }
}
