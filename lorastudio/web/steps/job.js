// Step 3, training: the start button, the job panel (status, stage, progress, time left, speed,
// cost, loss and the live loss chart, fed by the job's Server-Sent Events stream), cancel, and the
// list of all jobs. The current job id is kept in the URL (#job=…) and in localStorage, so a reload
// re-attaches to it: the loss history comes back from /metrics and the live stream re-opens.

import { api, ApiError } from "../api.js";
import { drawChart } from "../chart.js";
import { $, errorText, node, showStatus, tNodes } from "../dom.js";
import { formatDuration, formatNumber, t, tOr } from "../i18n.js";
import { formatMoney, formatTime, modelName, statusText } from "../format.js";
import * as store from "../store.js";

const JOB_KEY = "lorastudio.job";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

export function initJob() {
  store.subscribe(["file", "report", "model", "job", "starting", "lang"], updateStartButton);
  store.subscribe(["jobId", "job", "metrics", "evals", "stage", "streamProblem", "lang"], renderJob);
  store.subscribe(["jobs", "jobsError", "job", "lang"], renderJobList);
  $("start-training").addEventListener("click", startTraining);
  $("cancel-job").addEventListener("click", cancelJob);
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

/** The current job once it has succeeded with a tuned model (what compare and use need), else null. */
export function tunedJob() {
  const job = store.get("job");
  return job && job.status === "succeeded" && job.fine_tuned_model ? job : null;
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
  $("start-training").disabled = !ready || store.get("starting");
  $("start-hint").textContent = !ready ? t("train.need_data")
    : running ? t("train.another_running") : t("train.ready", { n: report.rows_ok });
}

// The service applies the same recommendation for this file, model and task, then these on top:
// so only what the user changed is sent (TrainConfig field names, as the worker expects).
function jobHyperparameters() {
  return { task: store.get("task"), ...store.get("overrides") };
}

async function startTraining() {
  store.set({ starting: true });
  showStatus("train-state", "loading", t("train.starting"));
  try {
    const job = await api.createJob({
      model: store.get("model"),
      training_file: store.get("file").id,
      hyperparameters: jobHyperparameters(),
    });
    showStatus("train-state", "", "");
    await attachJob(job.id, job);
    refreshJobs();
  } catch (err) {
    showStatus("train-state", "error", t("train.start_failed", { message: errorText(err) }));
  } finally {
    store.set({ starting: false });
  }
}

// ---------------------------------------------------------------------------------------------
// the current job and its live stream

async function attachJob(id, initial = null) {
  closeStream();
  store.set({ jobId: id, job: initial, metrics: [], evals: [], stage: null, streamProblem: false });
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
  const series = { metrics: [], evals: [], stage: null };
  try {
    const past = await api.metrics(id);
    for (const ev of past.data || []) foldEvent(series, ev);
  } catch { /* the live stream still fills the chart */ }
  if (store.get("jobId") !== id) return; // another job was opened meanwhile
  store.set({ job, ...series });
  if (job && !TERMINAL.has(job.status)) openStream(id);
}

/** Add a metrics/eval/stage event to `series` ({metrics, evals, stage}), de-duplicated by step. */
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
    series.stage = ev;
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
    // EventSource reconnects by itself; say so, and check the job in case it has ended.
    if (store.get("stream") !== source) return;
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
  if (ev.type === "metrics" || ev.type === "eval" || ev.type === "stage") {
    const series = { metrics: store.get("metrics").slice(), evals: store.get("evals").slice(), stage: store.get("stage") };
    foldEvent(series, ev);
    Object.assign(patch, series);
  } else if (ev.type === "status" && job) {
    patch.job = { ...job, status: ev.status, ...(ev.fine_tuned_model ? { fine_tuned_model: ev.fine_tuned_model } : {}) };
  } else if (ev.type === "error" && job && !job.error) {
    patch.job = { ...job, error: { message: ev.message } };
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
    if (TERMINAL.has(job.status)) closeStream();
    else if (!store.get("stream")) openStream(id);
    store.set({ job });
  } catch { /* keep showing what we have */ }
}

async function cancelJob() {
  const id = store.get("job")?.id;
  if (!id) return;
  $("cancel-job").disabled = true;
  try {
    const job = await api.cancel(id);
    if (store.get("job")?.id === id) store.set({ job });
  } catch (err) {
    showStatus("train-state", "error", t("train.cancel_failed", { message: errorText(err) }));
  } finally {
    $("cancel-job").disabled = false;
  }
  refreshJobs();
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
  $("cancel-job").hidden = TERMINAL.has(status);

  const last = metrics[metrics.length - 1];
  let percent = last ? Number(last.percent ?? (100 * last.step) / Math.max(1, last.total_steps)) : 0;
  if (status === "succeeded") percent = 100;
  percent = Math.max(0, Math.min(100, percent));
  const progress = $("job-progress");
  progress.value = percent;
  progress.setAttribute("aria-valuenow", String(Math.round(percent)));
  progress.setAttribute("aria-valuetext", t("train.progress_text", { percent: formatNumber(percent, 0) }));
  progress.textContent = `${Math.round(percent)}%`;
  $("job-percent").textContent = last || status === "succeeded"
    ? `${formatNumber(percent, 0)}%${last ? ` · ${t("train.steps", { step: last.step, total: last.total_steps })}` : ""}` : "—";
  $("job-eta").textContent = TERMINAL.has(status) ? t("train.eta_done")
    : last && last.eta_s !== undefined && last.eta_s !== null ? formatDuration(last.eta_s) : t("train.eta_unknown");
  $("job-speed").textContent = last?.tokens_per_s !== undefined
    ? t("train.tokens_per_s", { n: formatNumber(last.tokens_per_s, 0) }) : "—";
  $("job-cost").textContent = last?.cost !== undefined
    ? formatMoney(last.cost, store.get("rec")?.estimate?.currency) : "—";
  $("job-loss").textContent = last?.loss !== undefined ? formatNumber(last.loss, 4) : "—";

  const stageEvent = store.get("stage");
  let stage;
  if (status === "succeeded") stage = t("stage.done");
  else if (status === "failed") stage = t("stage.failed");
  else if (status === "cancelled") stage = t("stage.cancelled");
  else if (store.get("streamProblem")) stage = t("train.reconnecting");
  else if (stageEvent) stage = tOr(`stage.${stageEvent.stage}`, stageEvent.message || stageEvent.stage);
  else stage = tOr(`stage.status.${status}`, statusText(status));
  $("job-stage").textContent = stage;

  const errBox = $("job-error");
  if (status === "failed" || (job.error && job.error.message)) {
    const message = job.error?.message || t("train.failed_unknown");
    errBox.hidden = false;
    if (status === "failed") errBox.replaceChildren(...tNodes("train.failed", { message }));
    else errBox.replaceChildren(node("span", { class: "data", text: message }));
  } else errBox.hidden = true;

  drawLoss();
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
    const body = await api.jobs();
    const jobs = body.data || [];
    store.set({ jobs, jobsError: null });
    const job = store.get("job");
    const current = jobs.find((j) => j.id === job?.id);
    if (current && job && current.status !== job.status) refreshCurrentJob();
  } catch (err) {
    store.set({ jobsError: err });
  }
}

function renderJobList() {
  const list = $("job-list");
  const jobs = store.get("jobs");
  const error = store.get("jobsError");
  const shown = store.get("job");
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
    list.append(node("li", { class: `job-item${current ? " current" : ""}` },
      node("button", {
        type: "button", class: "job-open", "aria-current": current ? "true" : null,
        onclick: () => attachJob(job.id),
      },
      node("span", { class: "job-main" },
        node("code", { class: "data", text: job.id }),
        node("span", { class: "muted small", text: `${modelName(job.model)} · ${formatTime(job.created_at)}` })),
      node("span", { class: `badge badge-${status}`, text: statusText(status) }))));
  }
}
