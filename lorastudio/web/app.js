// The studio page: upload → report → settings → train (live) → compare → use.
// No logic of its own that the API lacks: it renders what the service returns.

import { api, ApiError } from "./api.js";
import { drawChart } from "./chart.js";
import {
  formatDuration, formatNumber, has, initialLang, lang, loadDictionaries, onLangChange, setLang, t,
} from "./i18n.js";

const $ = (id) => document.getElementById(id);
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const FILE_KEY = "lorastudio.file";
const JOB_KEY = "lorastudio.job";
const MODEL_KEY = "lorastudio.model";
const TASK_KEY = "lorastudio.task";
// Settings a user may change in the advanced panel (TrainConfig field names), in display order.
const ADVANCED_FIELDS = [
  "num_epochs", "max_steps", "learning_rate", "lr_scheduler", "warmup_ratio", "lora_r", "lora_alpha",
  "lora_dropout", "batch_tokens", "gradient_accumulation", "max_length", "augment_paraphrases", "replay_rows",
  "val_fraction", "early_stopping_patience", "eval_every", "save_every", "seed", "quantize_base",
];
// The settings shown with their reasons in the summary list (the rest are in the advanced panel).
const MAIN_SETTINGS = [
  "num_epochs", "learning_rate", "lora_r", "max_length", "batch_tokens", "augment_same_fact",
  "augment_turns", "augment_per_epoch", "augment_paraphrases", "replay_rows", "val_fraction", "device", "dtype",
];
const CHOICES = { lr_scheduler: ["linear", "cosine", "constant"], quantize_base: ["auto", "none", "4bit"] };

const state = {
  models: [],
  modelsError: null,
  file: null, // {id, filename}
  report: null,
  reportError: null,
  rec: null,
  recError: null,
  overrides: {},
  job: null,
  metrics: [],
  evals: [],
  stage: null,
  streamProblem: false,
  source: null,
  jobs: null,
  jobsError: null,
  compareModel: null,
};

// ---------------------------------------------------------------------------------------------
// helpers

function store(key, value) {
  try {
    if (value === null) localStorage.removeItem(key);
    else localStorage.setItem(key, value);
  } catch { /* private mode: the URL hash still keeps the job */ }
}

function stored(key) {
  try { return localStorage.getItem(key); } catch { return null; }
}

function errorText(err) {
  if (err instanceof ApiError && err.status === 0) return t("error.offline");
  if (err instanceof ApiError && err.status === 401) return t("error.api_key");
  return t("error.server", { message: err.message || String(err) });
}

function setState(id, kind, text) {
  const box = $(id);
  box.className = `state${kind ? ` state-${kind}` : ""}`;
  box.replaceChildren();
  if (!text) return;
  if (kind === "loading") {
    const spin = document.createElement("span");
    spin.className = "spinner";
    spin.setAttribute("aria-hidden", "true");
    box.append(spin);
  }
  box.append(document.createTextNode(text));
}

function node(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) el.append(c);
  return el;
}

/** A key's translation if the dictionary has it, else the fallback (server text, shown as data). */
function tOr(key, fallback, params) {
  return has(key) ? t(key, params) : fallback;
}

/** Like t(), but as nodes: the filled-in values (names, ids) are marked as data, not UI text. */
function tNodes(key, params) {
  const marker = "\u0000";
  const text = t(key, Object.fromEntries(Object.keys(params).map((k) => [k, `${marker}${k}${marker}`])));
  return text.split(marker).map((part, i) => (i % 2
    ? node("span", { class: "data", translate: "no", text: String(params[part]) })
    : document.createTextNode(part)));
}

function settingLabel(key) {
  return tOr(`setting.${key}`, key);
}

function formatSetting(key, value) {
  if (value === null || value === undefined || value === "") return t("settings.auto");
  if (typeof value === "boolean") return t(value ? "settings.yes" : "settings.no");
  if (typeof value === "number") {
    if (key === "learning_rate" || (Math.abs(value) > 0 && Math.abs(value) < 0.001)) return value.toExponential(1);
    return formatNumber(value, 4);
  }
  if (key === "device" && typeof value === "string" && !has(`choice.${value}`)) return deviceText(value);
  if (typeof value === "string" && has(`choice.${value}`)) return t(`choice.${value}`);
  if (Array.isArray(value)) return value.join(", ");
  return String(value);
}

function formatParams(params) {
  if (typeof params === "number") {
    if (params >= 1e9) return `${formatNumber(params / 1e9, 1)}B`;
    if (params >= 1e6) return `${formatNumber(params / 1e6, 0)}M`;
    if (params >= 1e3) return `${formatNumber(params / 1e3, 0)}K`;
    return String(params);
  }
  return params ? String(params) : "";
}

function formatMoney(amount, currency) {
  if (amount === null || amount === undefined || !Number.isFinite(Number(amount))) return "—";
  const cur = currency || state.rec?.estimate?.currency || "";
  const text = formatNumber(amount, 2);
  if (cur === "CNY" || cur === "¥") return `¥${text}`;
  if (cur === "USD" || cur === "$") return `$${text}`;
  return cur ? `${text} ${cur}` : text;
}

// ---------------------------------------------------------------------------------------------
// 1. data

async function uploadFile(file) {
  if (!file) return;
  state.file = null;
  state.report = null;
  state.reportError = null;
  state.rec = null;
  state.overrides = {};
  renderReport();
  renderRecommendation();
  updateStartButton();
  setState("upload-state", "loading", t("data.uploading", { name: file.name }));
  try {
    const uploaded = await api.uploadFile(file);
    state.file = { id: uploaded.id, filename: uploaded.filename || file.name };
    store(FILE_KEY, uploaded.id);
    await loadReport();
  } catch (err) {
    state.reportError = err;
    setState("upload-state", "error", t("data.upload_failed", { name: file.name, message: errorText(err) }));
  } finally {
    $("upload-input").value = ""; // so the same (fixed) file name can be chosen again
  }
}

async function loadReport() {
  setState("upload-state", "loading", t("data.checking", { name: state.file.filename }));
  try {
    state.report = await api.report(state.file.id);
    if (state.report.file && !state.file.filename) state.file.filename = state.report.file;
    setState("upload-state", "", "");
  } catch (err) {
    state.report = null;
    if (err instanceof ApiError && err.status === 404) {
      store(FILE_KEY, null);
      state.file = null;
      setState("upload-state", "", "");
      return;
    }
    setState("upload-state", "error", t("data.report_failed", { message: errorText(err) }));
  }
  renderReport();
  updateStartButton();
  await loadRecommendation();
}

function groupIssuesByRow(issues) {
  const rows = new Map();
  for (const issue of issues) {
    if (issue.row === null || issue.row === undefined) continue;
    if (!rows.has(issue.row)) rows.set(issue.row, []);
    rows.get(issue.row).push(issue);
  }
  return [...rows.entries()].sort((a, b) => a[0] - b[0]);
}

function issueKind(issue) {
  return tOr(`kind.${issue.kind}`, String(issue.kind || "").replaceAll("_", " "));
}

// The service's hints carry specifics (e.g. the repaired text): shown when they are in the page's
// language (a report says which with "lang", English when absent); otherwise our own line per kind.
function reportSpeaksUiLang() {
  return (state.report?.lang || "en") === lang();
}

function issueHint(issue) {
  if (reportSpeaksUiLang() && issue.hint) return issue.hint;
  return tOr(`hint.${issue.kind}`, issue.hint || "");
}

function fieldName(field) {
  if (!field) return "—";
  return tOr(`field.${field}`, field);
}

function renderReport() {
  const report = state.report;
  const box = $("validation");
  if (!report) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  const ok = report.rows_ok ?? 0;
  const total = report.rows_total ?? 0;
  const rejected = report.rows_rejected ?? Math.max(0, total - ok);
  const summary = $("validation-summary");
  summary.className = `summary ${ok === 0 ? "summary-bad" : rejected ? "summary-warn" : "summary-good"}`;
  const name = state.file?.filename || report.file || "";
  if (ok === 0) summary.replaceChildren(...tNodes("data.summary_none", { total, name }));
  else if (rejected) summary.replaceChildren(...tNodes("data.summary_some", { ok, total, rejected, name }));
  else summary.replaceChildren(...tNodes("data.summary_all", { ok, name }));

  const link = $("download-rejected");
  link.hidden = !rejected || !state.file;
  if (state.file) link.href = api.rejectedUrl(state.file.id);

  const dsList = $("dataset-issues");
  dsList.replaceChildren();
  const fileLevel = [
    ...(report.dataset_issues || []),
    ...(report.issues || []).filter((i) => i.row === null || i.row === undefined),
  ];
  for (const issue of fileLevel) {
    const sev = issue.severity === "error" ? "error" : "warning";
    dsList.append(node("li", { class: `ds-issue ds-${sev}` },
      node("strong", { text: `${t(`severity.${sev}`)}: ` }),
      node("span", { text: tOr(`dskind.${issue.kind}`, issue.message || "", { ok, total }) }),
      issue.hint || has(`dshint.${issue.kind}`)
        ? node("span", { class: "muted", text: ` ${tOr(`dshint.${issue.kind}`, issue.hint || "")}` })
        : null));
  }

  const rows = groupIssuesByRow(report.issues || []);
  $("issues-wrap").hidden = rows.length === 0;
  const body = $("issues-body");
  body.replaceChildren();
  for (const [row, issues] of rows) {
    // One wrapper per cell: on phones each cell is a two-column grid (label, content).
    const cell = (label, items, cls = "") => node("td", { "data-label": label, class: cls },
      node("div", {}, ...items.map((text) => node("div", { text }))));
    const severe = issues.some((i) => i.severity === "error");
    const tr = node("tr", { "data-testid": "validation-issue", "data-row": row, class: severe ? "sev-error" : "sev-warning" },
      node("td", { "data-label": t("data.col_row"), class: "num" }, node("div", {}, node("strong", { text: String(row) }))),
      cell(t("data.col_kind"), issues.map((i) => `${issueKind(i)}${i.severity === "warning" ? ` (${t("severity.warning")})` : ""}`), "kind"),
      cell(t("data.col_field"), issues.map((i) => fieldName(i.field))),
      cell(t("data.col_message"), issues.map((i) => i.message || ""), "data"),
      // In English the service's own hints are shown (they may quote the row's text): data, not UI.
      cell(t("data.col_hint"), issues.map(issueHint), reportSpeaksUiLang() ? "hint data" : "hint"));
    body.append(tr);
  }
}

// ---------------------------------------------------------------------------------------------
// 2. models and settings

async function loadModels() {
  try {
    const body = await api.models();
    state.models = body.data || [];
    state.modelsError = null;
  } catch (err) {
    state.modelsError = err;
  }
  renderModels();
}

function modelLabel(m) {
  const size = formatParams(m.params);
  const name = tOr(`model.${m.id}.name`, m.name || m.id);
  const bits = [name];
  if (size) bits.push(size);
  if (m.smoke_test) bits.push(t("model.smoke_tag"));
  return bits.join(" · ");
}

function renderModels() {
  const select = $("base-model-select");
  const previous = select.value;
  select.replaceChildren();
  if (state.modelsError) {
    select.append(node("option", { value: "", text: t("settings.models_failed") }));
    $("model-info").textContent = errorText(state.modelsError);
    return;
  }
  if (!state.models.length) {
    select.append(node("option", { value: "", text: t("settings.models_none") }));
    $("model-info").textContent = "";
    return;
  }
  for (const m of state.models) select.append(node("option", { value: m.id, text: modelLabel(m) }));
  const saved = stored(MODEL_KEY);
  const known = (id) => id && state.models.some((m) => m.id === id);
  const wanted = known(previous) ? previous : known(saved) ? saved
    : known("default") ? "default" : state.models[0]?.id;
  if (wanted) select.value = wanted;
  renderModelInfo();
}

function renderModelInfo() {
  const m = state.models.find((x) => x.id === $("base-model-select").value);
  const info = $("model-info");
  if (!m) {
    info.textContent = "";
    return;
  }
  // Sentences joined with " · ": drop each one's final full stop.
  const parts = [tOr(`model.${m.id}.description`, m.description || "").replace(/[。.]\s*$/, "")];
  if (m.disk_gb !== undefined && m.disk_gb !== null) parts.push(t("model.disk", { gb: formatNumber(m.disk_gb, 2) }));
  if (m.min_memory_gb !== undefined && m.min_memory_gb !== null) parts.push(t("model.memory", { gb: formatNumber(m.min_memory_gb, 1) }));
  if (m.smoke_test) parts.push(t("model.smoke_warning"));
  info.textContent = parts.filter(Boolean).join(" · ");
  info.classList.toggle("warn-text", Boolean(m.smoke_test));
}

let recToken = 0;
async function loadRecommendation() {
  const token = ++recToken;
  state.rec = null;
  state.recError = null;
  if (!state.file || !state.report || !(state.report.rows_ok > 0) || !$("base-model-select").value) {
    renderRecommendation();
    return;
  }
  renderRecommendation(); // hide the previous model's/task's settings while the new ones load
  setState("settings-state", "loading", t("settings.loading"));
  try {
    const rec = await api.recommend(state.file.id, $("base-model-select").value, $("task-type-select").value);
    if (token !== recToken) return;
    state.rec = rec;
  } catch (err) {
    if (token !== recToken) return;
    state.recError = err;
  }
  renderRecommendation();
}

function renderRecommendation() {
  const box = $("recommendation");
  if (!state.file || !state.report) {
    box.hidden = true;
    setState("settings-state", "", t("settings.need_data"));
    return;
  }
  if (state.recError) {
    box.hidden = true;
    setState("settings-state", "error", t("settings.failed", { message: errorText(state.recError) }));
    return;
  }
  if (!state.rec) {
    box.hidden = true;
    if (!(state.report.rows_ok > 0)) setState("settings-state", "", t("settings.need_rows"));
    return;
  }
  setState("settings-state", "", "");
  box.hidden = false;
  const settings = state.rec.settings || {};
  const reasons = state.rec.reasons || {};
  const list = $("recommended-settings");
  list.replaceChildren();
  const keys = MAIN_SETTINGS.filter((k) => k in settings || k in state.overrides);
  for (const k of Object.keys(state.overrides)) if (!keys.includes(k)) keys.push(k);
  for (const key of keys) {
    const value = key in state.overrides ? state.overrides[key] : settings[key];
    const changed = key in state.overrides;
    list.append(node("div", { class: `setting${changed ? " changed" : ""}` },
      node("dt", {}, node("span", { text: settingLabel(key) }),
        node("span", { class: "setting-value data", text: formatSetting(key, value) }),
        changed ? node("span", { class: "tag", text: t("settings.changed") }) : null),
      node("dd", { text: reasonText(key, value, reasons[key]) })));
  }

  const est = state.rec.estimate || {};
  const bits = [t("settings.estimate_time", { time: formatDuration(est.seconds) })];
  if (est.tokens !== undefined) bits.push(t("settings.estimate_tokens", { tokens: formatNumber(est.tokens) }));
  if (est.device) bits.push(t("settings.estimate_device", { device: deviceText(est.device) }));
  bits.push(Number(est.cost) > 0
    ? t("settings.estimate_cost", { cost: formatMoney(est.cost, est.currency) })
    : t("settings.estimate_free"));
  $("cost-estimate").textContent = `${t("settings.estimate")} ${bits.join(" · ")}`;
  if (Object.keys(state.overrides).length) {
    $("cost-estimate").append(node("span", { class: "muted small", text: ` ${t("settings.estimate_changed")}` }));
  }
  const warnBox = $("rec-warnings");
  warnBox.replaceChildren();
  for (const w of state.rec.warnings || []) warnBox.append(node("li", { class: "ds-issue ds-warning", text: warningText(w) }));
  renderAdvanced();
}

/** Recommendation warnings come in English; the two the recommender writes are translated here. */
function warningText(text) {
  if (lang() === "en") return text;
  let m = text.match(/^only (\d+) usable rows/);
  if (m) return t("warning.few_rows", { n: m[1] });
  m = text.match(/^about (\d+) minutes on this CPU/);
  if (m) return t("warning.slow_cpu", { m: m[1] });
  return text;
}

/** The service writes reasons in English with the exact numbers; in Chinese, our own line for that setting. */
function reasonText(key, value, serverReason) {
  if (key in state.overrides) return t("settings.changed_reason");
  if (lang() === "en" && serverReason) return serverReason;
  if ((value === 0 || value === null || value === false) && has(`reason.${key}.off`)) return t(`reason.${key}.off`);
  return tOr(`reason.${key}`, serverReason || "", { value: formatSetting(key, value) });
}

/** The recommender labels hardware in English ("CPU, 2 cores"); GPU names stay as they are. */
function deviceText(label) {
  const m = String(label).match(/^CPU, (\d+) cores?(.*)$/);
  return m ? `${t("device.cpu", { n: m[1] })}${m[2]}` : String(label);
}

function renderAdvanced() {
  const settings = state.rec?.settings || {};
  const box = $("advanced-fields");
  const focused = document.activeElement?.id;
  box.replaceChildren();
  for (const key of ADVANCED_FIELDS) {
    if (!(key in settings) && key !== "max_steps") continue;
    const id = `adv-${key}`;
    const value = key in state.overrides ? state.overrides[key] : settings[key];
    let input;
    if (CHOICES[key]) {
      input = node("select", { id, name: key });
      for (const c of CHOICES[key]) input.append(node("option", { value: c, text: formatSetting(key, c) }));
      input.value = value ?? CHOICES[key][0];
    } else {
      input = node("input", {
        id, name: key, type: "number", step: "any", min: "0", inputmode: "decimal",
        placeholder: value === null || value === undefined ? t("settings.auto") : null,
      });
      input.value = value === null || value === undefined ? "" : String(value);
    }
    input.dataset.setting = key;
    input.addEventListener("change", onAdvancedChange);
    box.append(node("div", { class: "field" }, node("label", { for: id, text: settingLabel(key) }), input));
  }
  if (focused && $(focused)) $(focused).focus();
}

function onAdvancedChange(event) {
  const key = event.target.dataset.setting;
  const raw = event.target.value.trim();
  const recommended = state.rec?.settings?.[key];
  let value;
  if (CHOICES[key]) value = raw;
  else if (raw === "") {
    delete state.overrides[key]; // empty means "use the recommendation"
    renderRecommendation();
    return;
  } else {
    value = Number(raw);
    if (!Number.isFinite(value)) return;
  }
  if (value === recommended || (value === null && recommended === undefined)) delete state.overrides[key];
  else state.overrides[key] = value;
  renderRecommendation();
}

function updateStartButton() {
  const ready = Boolean(state.file && state.report && state.report.rows_ok > 0 && $("base-model-select").value);
  const running = state.job && !TERMINAL.has(state.job.status);
  $("start-training").disabled = !ready;
  $("start-hint").textContent = !ready ? t("train.need_data")
    : running ? t("train.another_running") : t("train.ready", { n: state.report.rows_ok });
}

// ---------------------------------------------------------------------------------------------
// 3. training

// The service applies the same recommendation for this file, model and task, then these on top:
// so only what the user changed is sent (TrainConfig field names, as the worker expects).
function jobHyperparameters() {
  return { task: $("task-type-select").value, ...state.overrides };
}

async function startTraining() {
  const button = $("start-training");
  button.disabled = true;
  setState("train-state", "loading", t("train.starting"));
  try {
    const job = await api.createJob({
      model: $("base-model-select").value,
      training_file: state.file.id,
      hyperparameters: jobHyperparameters(),
    });
    setState("train-state", "", "");
    await attachJob(job.id, job);
    refreshJobs();
  } catch (err) {
    setState("train-state", "error", t("train.start_failed", { message: errorText(err) }));
  } finally {
    updateStartButton();
  }
}

function closeStream() {
  if (state.source) {
    state.source.close();
    state.source = null;
  }
}

async function attachJob(id, initial = null) {
  closeStream();
  state.job = initial;
  state.metrics = [];
  state.evals = [];
  state.stage = null;
  state.streamProblem = false;
  store(JOB_KEY, id);
  if (location.hash !== `#job=${id}`) history.replaceState(null, "", `#job=${encodeURIComponent(id)}`);
  $("job-panel").hidden = false;
  $("job-id").textContent = id;
  renderJob();
  try {
    state.job = await api.job(id);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      store(JOB_KEY, null);
      history.replaceState(null, "", location.pathname + location.search);
      state.job = null;
      $("job-panel").hidden = true;
      setState("train-state", "error", t("train.job_missing", { id }));
      return;
    }
    setState("train-state", "error", t("train.job_load_failed", { message: errorText(err) }));
  }
  try {
    const history_ = await api.metrics(id);
    for (const ev of history_.data || []) addEvent(ev, false);
  } catch { /* the live stream still fills the chart */ }
  renderJob();
  renderJobList();
  if (state.job && !TERMINAL.has(state.job.status)) openStream(id);
  updateStartButton();
}

function openStream(id) {
  closeStream();
  const source = new EventSource(api.streamUrl(id));
  state.source = source;
  source.onmessage = (msg) => {
    let ev;
    try { ev = JSON.parse(msg.data); } catch { return; }
    if (state.job?.id !== id) return;
    state.streamProblem = false;
    addEvent(ev, true);
  };
  source.onerror = () => {
    // EventSource reconnects by itself; say so, and check the job in case it has ended.
    if (state.source !== source) return;
    state.streamProblem = true;
    renderJob();
    refreshCurrentJob();
  };
}

function addEvent(ev, live) {
  switch (ev.type) {
    case "metrics": {
      const last = state.metrics[state.metrics.length - 1];
      if (last && ev.step <= last.step) {
        if (ev.step === last.step) state.metrics[state.metrics.length - 1] = ev;
        else if (!state.metrics.some((m) => m.step === ev.step)) {
          state.metrics.push(ev);
          state.metrics.sort((a, b) => a.step - b.step);
        }
      } else state.metrics.push(ev);
      break;
    }
    case "eval":
      if (!state.evals.some((e) => e.step === ev.step)) state.evals.push(ev);
      break;
    case "stage":
      state.stage = ev;
      break;
    case "status":
      if (state.job) {
        state.job.status = ev.status;
        if (ev.fine_tuned_model) state.job.fine_tuned_model = ev.fine_tuned_model;
      }
      if (TERMINAL.has(ev.status)) {
        closeStream();
        refreshCurrentJob();
        refreshJobs();
      }
      break;
    case "done":
    case "error":
      if (ev.type === "error" && state.job && !state.job.error) state.job.error = { message: ev.message };
      refreshCurrentJob();
      break;
    default:
      break;
  }
  if (live) renderJob();
}

async function refreshCurrentJob() {
  const id = state.job?.id;
  if (!id) return;
  // Refreshes overlap (a "done" event, then the final status): only the latest one may win, or a
  // slower, older answer ("running") would overwrite the finished job.
  const seq = (state.refreshSeq = (state.refreshSeq || 0) + 1);
  try {
    const job = await api.job(id);
    if (state.job?.id !== id || seq !== state.refreshSeq) return;
    state.job = job;
    if (TERMINAL.has(job.status)) closeStream();
    else if (!state.source) openStream(id);
  } catch { /* keep showing what we have */ }
  renderJob();
  renderJobList();
  updateStartButton();
}

function statusText(status) {
  return tOr(`status.${status}`, status || "");
}

function renderJob() {
  const job = state.job;
  if (!job) {
    renderCompareAndUse();
    return;
  }
  const status = job.status || "validating_files";
  const badge = $("job-status");
  badge.textContent = statusText(status);
  badge.className = `badge badge-${status}`;
  badge.dataset.status = status;
  $("cancel-job").hidden = TERMINAL.has(status);

  const last = state.metrics[state.metrics.length - 1];
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
  $("job-cost").textContent = last?.cost !== undefined ? formatMoney(last.cost) : "—";
  $("job-loss").textContent = last?.loss !== undefined ? formatNumber(last.loss, 4) : "—";

  let stage;
  if (status === "succeeded") stage = t("stage.done");
  else if (status === "failed") stage = t("stage.failed");
  else if (status === "cancelled") stage = t("stage.cancelled");
  else if (state.streamProblem) stage = t("train.reconnecting");
  else if (state.stage) stage = tOr(`stage.${state.stage.stage}`, state.stage.message || state.stage.stage);
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
  renderCompareAndUse();
}

function drawLoss() {
  const svg = $("loss-chart");
  const points = state.metrics.filter((m) => Number.isFinite(m.loss)).map((m) => [m.step, m.loss]);
  const valid = state.evals.filter((e) => Number.isFinite(e.valid_loss)).map((e) => [e.step, e.valid_loss]);
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

async function cancelJob() {
  const id = state.job?.id;
  if (!id) return;
  $("cancel-job").disabled = true;
  try {
    state.job = await api.cancel(id);
  } catch (err) {
    setState("train-state", "error", t("train.cancel_failed", { message: errorText(err) }));
  } finally {
    $("cancel-job").disabled = false;
  }
  renderJob();
  refreshJobs();
}

// job list

async function refreshJobs() {
  try {
    const body = await api.jobs();
    state.jobs = body.data || [];
    state.jobsError = null;
    const current = state.jobs.find((j) => j.id === state.job?.id);
    if (current && state.job && current.status !== state.job.status) refreshCurrentJob();
  } catch (err) {
    state.jobsError = err;
  }
  renderJobList();
}

function formatTime(unix) {
  if (!unix) return "";
  return new Date(unix * 1000).toLocaleString(lang() === "zh" ? "zh-CN" : "en-US", {
    month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
  });
}

function renderJobList() {
  const list = $("job-list");
  list.replaceChildren();
  if (state.jobsError) {
    setState("jobs-state", "error", t("jobs.failed", { message: errorText(state.jobsError) }));
    return;
  }
  if (state.jobs === null) {
    setState("jobs-state", "loading", t("jobs.loading"));
    return;
  }
  if (!state.jobs.length) {
    setState("jobs-state", "", t("jobs.empty"));
    return;
  }
  setState("jobs-state", "", "");
  for (const job of state.jobs) {
    const current = job.id === state.job?.id;
    const status = current ? state.job.status : job.status;
    const model = tOr(`model.${job.model}.name`, job.model);
    list.append(node("li", { class: `job-item${current ? " current" : ""}` },
      node("button", {
        type: "button", class: "job-open", "aria-current": current ? "true" : null,
        onclick: () => attachJob(job.id),
      },
      node("span", { class: "job-main" },
        node("code", { class: "data", text: job.id }),
        node("span", { class: "muted small", text: `${model} · ${formatTime(job.created_at)}` })),
      node("span", { class: `badge badge-${status}`, text: statusText(status) }))));
  }
}

// ---------------------------------------------------------------------------------------------
// 4. compare and 5. use

function tunedJob() {
  return state.job && state.job.status === "succeeded" && state.job.fine_tuned_model ? state.job : null;
}

function renderCompareAndUse() {
  const job = tunedJob();
  $("compare-empty").hidden = Boolean(job);
  $("compare-body").hidden = !job;
  $("use-empty").hidden = Boolean(job);
  $("use-body").hidden = !job;
  if (!job) return;
  $("compare-which").replaceChildren(...tNodes("compare.which", {
    base: tOr(`model.${job.model}.name`, job.model), tuned: job.fine_tuned_model,
  }));
  $("download-adapter").href = api.downloadUrl(job.id, "adapter");
  $("download-merged").href = api.downloadUrl(job.id, "merged");
  $("download-gguf").href = api.downloadUrl(job.id, "gguf");
  renderSnippet();
}

async function compareOnce(question) {
  const job = tunedJob();
  return api.compare(job.model, job.fine_tuned_model, question, Number($("compare-length").value) || 256);
}

/** Model output as text; runs of blank lines folded, an empty answer said in words. */
function showAnswer(el, answer) {
  const text = String(answer ?? "").replace(/\n{3,}/g, "\n\n").trim();
  el.classList.toggle("empty-answer", !text);
  if (text) el.textContent = text;
  else el.replaceChildren(node("span", { class: "muted", "data-i18n": "compare.empty_answer", text: t("compare.empty_answer") }));
}

async function onCompare(event) {
  event.preventDefault();
  const question = $("compare-input").value.trim();
  if (!question) {
    setState("compare-state", "error", t("compare.empty_question"));
    $("compare-input").focus();
    return;
  }
  $("compare-send").disabled = true;
  $("compare-base-output").textContent = "";
  $("compare-tuned-output").textContent = "";
  setState("compare-state", "loading", t("compare.thinking"));
  try {
    const result = await compareOnce(question);
    showAnswer($("compare-base-output"), result.base_answer);
    showAnswer($("compare-tuned-output"), result.tuned_answer);
    setState("compare-state", "", "");
  } catch (err) {
    setState("compare-state", "error", t("compare.failed", { message: errorText(err) }));
  } finally {
    $("compare-send").disabled = false;
  }
}

async function runQuestionSet() {
  const questions = $("question-set-input").value.split("\n").map((q) => q.trim()).filter(Boolean).slice(0, 20);
  if (!questions.length) {
    setState("question-set-state", "error", t("compare.set_empty"));
    return;
  }
  const body = $("question-set-body");
  body.replaceChildren();
  $("question-set-table").hidden = false;
  $("question-set-run").disabled = true;
  try {
    for (const [i, q] of questions.entries()) {
      setState("question-set-state", "loading", t("compare.set_progress", { i: i + 1, n: questions.length }));
      const tr = node("tr", {},
        node("td", { "data-label": t("compare.question"), class: "data", text: q }),
        node("td", { "data-label": t("compare.base"), class: "data", text: "…" }),
        node("td", { "data-label": t("compare.tuned"), class: "data", text: "…" }));
      body.append(tr);
      try {
        const r = await compareOnce(q);
        showAnswer(tr.children[1], r.base_answer);
        showAnswer(tr.children[2], r.tuned_answer);
      } catch (err) {
        tr.children[1].textContent = errorText(err);
        tr.children[2].textContent = "";
      }
    }
    setState("question-set-state", "", t("compare.set_done", { n: questions.length }));
  } finally {
    $("question-set-run").disabled = false;
  }
}

let snippetKind = "python";
function snippetText() {
  const job = tunedJob();
  if (!job) return "";
  const base = `${location.origin}/v1`;
  const question = t("use.example_question");
  if (snippetKind === "curl") {
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

function renderSnippet() {
  $("snippet-code").textContent = snippetText();
  for (const tab of document.querySelectorAll(".tab")) {
    tab.setAttribute("aria-selected", String(tab.dataset.snippet === snippetKind));
    tab.tabIndex = tab.dataset.snippet === snippetKind ? 0 : -1;
  }
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
// boot

let reportLang = null;
function rerenderAll() {
  // A service that localises its report (Accept-Language) is asked again in the new language.
  if (state.file && state.report && reportLang !== lang() && state.report.lang) {
    api.report(state.file.id).then((report) => { state.report = report; renderReport(); }).catch(() => {});
  }
  reportLang = lang();
  renderModels();
  renderReport();
  renderRecommendation();
  renderJob();
  renderJobList();
  updateStartButton();
  if (!state.report && !$("upload-state").classList.contains("state-loading")) {
    if (!$("upload-state").classList.contains("state-error")) setState("upload-state", "", "");
  }
  $("lang-toggle").textContent = t("lang.switch");
}

function wire() {
  $("lang-toggle").addEventListener("click", () => setLang(lang() === "zh" ? "en" : "zh"));
  $("upload-input").addEventListener("change", (e) => uploadFile(e.target.files[0]));
  const dz = $("dropzone");
  for (const name of ["dragenter", "dragover"]) {
    dz.addEventListener(name, (e) => { e.preventDefault(); dz.classList.add("dragging"); });
  }
  for (const name of ["dragleave", "drop"]) dz.addEventListener(name, () => dz.classList.remove("dragging"));
  dz.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer?.files?.length) uploadFile(e.dataTransfer.files[0]);
  });
  $("task-type-select").addEventListener("change", () => {
    store(TASK_KEY, $("task-type-select").value);
    state.overrides = {};
    loadRecommendation();
  });
  $("base-model-select").addEventListener("change", () => {
    store(MODEL_KEY, $("base-model-select").value);
    renderModelInfo();
    state.overrides = {};
    loadRecommendation();
    updateStartButton();
  });
  $("reset-settings").addEventListener("click", () => { state.overrides = {}; renderRecommendation(); });
  $("start-training").addEventListener("click", startTraining);
  $("cancel-job").addEventListener("click", cancelJob);
  $("compare-form").addEventListener("submit", onCompare);
  $("question-set-run").addEventListener("click", runQuestionSet);
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => { snippetKind = tab.dataset.snippet; renderSnippet(); });
    tab.addEventListener("keydown", (e) => {
      if (e.key !== "ArrowRight" && e.key !== "ArrowLeft") return;
      snippetKind = snippetKind === "python" ? "curl" : "python";
      renderSnippet();
      document.querySelector(`.tab[data-snippet="${snippetKind}"]`).focus();
    });
  }
  $("copy-snippet").addEventListener("click", copySnippet);
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(drawLoss, 150);
  });
  window.addEventListener("hashchange", () => {
    const id = jobIdFromHash();
    if (id && id !== state.job?.id) attachJob(id);
  });
}

function jobIdFromHash() {
  const m = location.hash.match(/job=([^&]+)/);
  return m ? decodeURIComponent(m[1]) : null;
}

async function boot() {
  try {
    await loadDictionaries();
  } catch (err) {
    const box = $("boot-error");
    box.hidden = false;
    box.textContent = `页面文字加载失败 / The page's texts could not be loaded: ${err.message}`;
    return;
  }
  onLangChange(rerenderAll);
  setLang(initialLang(), { persist: false });
  wire();
  const task = stored(TASK_KEY);
  if (task && [...$("task-type-select").options].some((o) => o.value === task)) $("task-type-select").value = task;
  renderRecommendation();
  renderJobList();
  await loadModels();
  updateStartButton();
  const fileId = stored(FILE_KEY);
  if (fileId) {
    state.file = { id: fileId, filename: "" };
    try {
      const f = await api.file(fileId);
      state.file.filename = f.filename || "";
    } catch { /* the report call below decides whether the file still exists */ }
    await loadReport();
  }
  const jobId = jobIdFromHash() || stored(JOB_KEY);
  if (jobId) await attachJob(jobId);
  await refreshJobs();
  setInterval(refreshJobs, 5000);
  document.body.dataset.ready = "true";
}

boot();
