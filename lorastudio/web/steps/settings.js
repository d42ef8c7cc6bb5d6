// Step 2, the model and settings: task and base model (both remembered), the service's recommended
// settings with one reason each, the time/cost estimate (by stage), the schedule choice (the full
// schedule, the default, or an opt-in quick preview with its own estimate and its stated recall
// cost), warnings, and the advanced panel whose changes ("overrides") are, with the task and the
// quick choice, all the job sends.
//
// Reasons, warnings, the estimate's hardware and the schedules' costs come from the recommender as
// codes with params ("reason_codes", "warning_codes", "estimate.device_code",
// "alternatives.{quick,full}.cost"), rendered through its message catalogue
// (GET /studio/messages?lang=…, fetched once per language) in the page's language, the params as
// data. Where a code is not in the catalogue, or the service sends no codes, its English line
// ("reasons", "warnings", "estimate.device") is shown instead, marked as data outside English.

import { api, ApiError } from "../api.js";
import { $, errorText, node, showStatus, tNodes } from "../dom.js";
import { formatDuration, formatNumber, lang, t, tOr } from "../i18n.js";
import { formatMoney, formatParams, formatSetting, messageParts, settingLabel } from "../format.js";
import * as store from "../store.js";

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
  "num_epochs", "learning_rate", "lora_r", "max_length", "batch_tokens", "augment_same_fact", "augment_contrast",
  "key_token_weight", "question_loss_weight", "augment_turns", "augment_per_epoch", "augment_paraphrases", "replay_rows", "val_fraction",
  "device", "dtype",
];
const CHOICES = { lr_scheduler: ["linear", "cosine", "constant"], quantize_base: ["auto", "none", "4bit"] };

export function initSettings() {
  const task = store.recall(TASK_KEY);
  const taskSelect = $("task-type-select");
  if (task && [...taskSelect.options].some((o) => o.value === task)) store.set({ task });
  taskSelect.value = store.get("task");

  store.subscribe(["models", "modelsError", "lang"], renderModelOptions);
  store.subscribe("model", renderModelChoice);
  store.subscribe(["file", "report", "rec", "recError", "recLoading", "overrides", "quick", "catalogues", "lang",
    "changedEstimate"], renderRecommendation);
  store.subscribe(["overrides", "rec"], estimateChanges);
  store.subscribe(["rec", "lang"], () => {
    if (hasCodes(store.get("rec"))) loadCatalogue(lang());
  });

  taskSelect.addEventListener("change", () => {
    store.remember(TASK_KEY, taskSelect.value);
    store.set({ task: taskSelect.value });
    recommendAfresh();
  });
  $("base-model-select").addEventListener("change", () => {
    const model = $("base-model-select").value;
    store.remember(MODEL_KEY, model);
    store.set({ model });
    recommendAfresh();
  });
  $("reset-settings").addEventListener("click", () => store.set({ overrides: {} }));
  for (const id of ["schedule-full", "quick-preview"]) $(id).addEventListener("change", onScheduleChange);
}

// ---------------------------------------------------------------------------------------------
// base models

export async function loadModels() {
  try {
    const body = await api.models();
    const models = body.data || [];
    store.set({ models, modelsError: null, model: pickModel(models) });
  } catch (err) {
    store.set({ modelsError: err, model: "" });
  }
}

/** The model chosen before (this page, then the last visit), else the built-in default, else the first;
 * never one that cannot run here. */
function pickModel(models) {
  const known = (id) => id && models.some((m) => m.id === id && m.available !== false);
  const current = store.get("model");
  const saved = store.recall(MODEL_KEY);
  if (known(current)) return current;
  if (known(saved)) return saved;
  if (known("default")) return "default";
  return models.find((m) => m.available !== false)?.id || "";
}

/** Why a base cannot run on this server (no GPU, not downloaded and offline), in the page's words. */
function unavailableText(m) {
  return (m.unavailable || []).map((r) => tOr(`model.unavailable.${r.code}`, m.unavailable_reason || r.code, r.params || {}))
    .join(lang() === "zh" ? "；" : "; ");
}

function modelLabel(m) {
  const size = formatParams(m.params);
  const bits = [tOr(`model.${m.id}.name`, m.name || m.id)];
  if (size) bits.push(size);
  if (m.smoke_test) bits.push(t("model.smoke_tag"));
  if (m.available === false) bits.push(t("model.unavailable_tag"));
  return bits.join(" · ");
}

function renderModelOptions() {
  const select = $("base-model-select");
  const models = store.get("models");
  const error = store.get("modelsError");
  select.replaceChildren();
  if (error) {
    select.append(node("option", { value: "", text: t("settings.models_failed") }));
    $("model-info").textContent = errorText(error);
    return;
  }
  if (models === null) {
    select.append(node("option", { value: "", text: t("settings.models_loading") }));
    return;
  }
  if (!models.length) {
    select.append(node("option", { value: "", text: t("settings.models_none") }));
    $("model-info").textContent = "";
    return;
  }
  // Bases that cannot run here are listed (so the user knows they exist) but cannot be chosen.
  for (const m of models) {
    select.append(node("option", { value: m.id, text: modelLabel(m), disabled: m.available === false,
      title: m.available === false ? unavailableText(m) : null }));
  }
  renderModelChoice();
  renderUnavailable(models);
}

function renderUnavailable(models) {
  const box = $("models-unavailable");
  if (!box) return;
  const out = models.filter((m) => m.available === false);
  box.hidden = out.length === 0;
  box.replaceChildren(...out.map((m) => node("li", { "data-testid": "model-unavailable", "data-model": m.id },
    node("span", { class: "data", translate: "no", text: tOr(`model.${m.id}.name`, m.name || m.id) }),
    document.createTextNode(t("model.unavailable_line", { reason: unavailableText(m) })))));
}

function renderModelChoice() {
  const models = store.get("models") || [];
  const m = models.find((x) => x.id === store.get("model"));
  const info = $("model-info");
  if (store.get("modelsError")) return;
  if (m) $("base-model-select").value = m.id;
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

// ---------------------------------------------------------------------------------------------
// the recommendation

/**
 * Train again with a job's settings: its base, task and schedule chosen, its file opened (`openFile`, which
 * must not ask for settings itself), the recommendation asked for them, then its changed settings on top.
 */
export async function useSettingsOf({ model, task, quick, overrides }, openFile) {
  const models = store.get("models") || [];
  const known = models.some((m) => m.id === model) ? model : store.get("model");
  const taskSelect = $("task-type-select");
  const chosenTask = [...taskSelect.options].some((o) => o.value === task) ? task : store.get("task");
  taskSelect.value = chosenTask;
  store.remember(MODEL_KEY, known);
  store.remember(TASK_KEY, chosenTask);
  store.set({ model: known, task: chosenTask, quick: Boolean(quick), overrides: {} });
  await openFile();
  await loadRecommendation();
  store.set({ overrides: { ...overrides } });
}

/**
 * The data, the task or the model changed: the user's changes are dropped (the quick preview too: the
 * full schedule is the default), the settings asked again.
 */
export function recommendAfresh() {
  store.set({ overrides: {}, quick: false });
  return loadRecommendation();
}

/**
 * Ask for the settings of the current file, model, task and schedule. `keep`: the settings on screen
 * stay while the new ones are worked out (a schedule switch), and a failure goes back to their schedule.
 */
async function loadRecommendation({ keep = false } = {}) {
  const request = store.get("recRequest") + 1;
  const file = store.get("file");
  const report = store.get("report");
  const model = store.get("model");
  const ready = Boolean(file && report && report.rows_ok > 0 && model);
  const shown = store.get("rec");
  store.set({ recRequest: request, recError: null, recLoading: ready, ...(keep && shown ? {} : { rec: null }) });
  if (!ready) return;
  try {
    const rec = await api.recommend(file.id, model, store.get("task"), store.get("quick"));
    // Its reasons are shown once, in the page's language: the catalogue first.
    if (hasCodes(rec)) await loadCatalogue(lang());
    if (request !== store.get("recRequest")) return;
    store.set({ rec, recLoading: false });
  } catch (err) {
    if (request !== store.get("recRequest")) return;
    if (keep && shown) {
      store.set({ quick: shown.schedule === "quick", recLoading: false });
      showStatus("schedule-state", "error", t("schedule.failed", { message: errorText(err) }));
    } else store.set({ recError: err, recLoading: false });
  }
}

function hasCodes(rec) {
  return Boolean(rec && (rec.reason_codes || rec.warning_codes || rec.estimate?.device_code || rec.alternatives));
}

/** The user picked the full schedule or the quick preview: the settings are asked again for it. */
function onScheduleChange(event) {
  const quick = event.target.value === "quick";
  if (quick === store.get("quick")) return;
  showStatus("schedule-state", "", "");
  store.set({ quick });
  loadRecommendation({ keep: true });
}

/**
 * The recommender's message templates in `code` language, fetched once and kept in the store.
 * A server that cannot be reached is asked again next time; one without the catalogue is not.
 */
function loadCatalogue(code) {
  const known = store.get("catalogues")[code];
  if (known) return known.pending || Promise.resolve();
  const keep = (entry) => {
    const catalogues = { ...store.get("catalogues") };
    if (entry) catalogues[code] = entry;
    else delete catalogues[code];
    store.set({ catalogues });
  };
  const pending = api.messages(code).then(
    (body) => keep({ messages: body && typeof body.messages === "object" && body.messages ? body.messages : {}, pending: null }),
    (err) => keep(err instanceof ApiError && err.status === 0 ? null : { messages: {}, pending: null }));
  keep({ messages: null, pending });
  return pending;
}

/** A coded message in the page's language as parts (see messageParts), or null when it cannot be. */
function codedParts(coded) {
  return messageParts(store.get("catalogues")[lang()]?.messages, coded);
}

/**
 * A <dd>/<li> with one recommender line: from its code in the page's language (the filled-in values
 * as data), else the service's English line, itself data when the page is not in English.
 */
function recommenderNode(tag, attrs, coded, english) {
  const parts = codedParts(coded);
  if (parts) {
    return node(tag, attrs, ...parts.map(({ text, param }) => (param
      ? node("span", { class: "data", translate: "no", text }) : document.createTextNode(text))));
  }
  const foreign = lang() !== "en";
  return node(tag, { ...attrs, class: [attrs.class, foreign ? "data" : ""].filter(Boolean).join(" ") || null,
    lang: foreign ? "en" : null, text: english || "" });
}

function renderRecommendation() {
  const box = $("recommendation");
  const file = store.get("file");
  const report = store.get("report");
  const rec = store.get("rec");
  const recError = store.get("recError");
  if (!file || !report) {
    box.hidden = true;
    showStatus("settings-state", "", t("settings.need_data"));
    return;
  }
  if (recError) {
    box.hidden = true;
    showStatus("settings-state", "error", t("settings.failed", { message: errorText(recError) }));
    return;
  }
  if (!rec) {
    box.hidden = true;
    if (store.get("recLoading")) showStatus("settings-state", "loading", t("settings.loading"));
    else showStatus("settings-state", "", report.rows_ok > 0 ? "" : t("settings.need_rows"));
    return;
  }
  // A schedule switch keeps the settings on screen while the new ones are worked out.
  if (store.get("recLoading")) showStatus("settings-state", "loading", t("settings.loading_schedule"));
  else showStatus("settings-state", "", "");
  box.hidden = false;
  const settings = rec.settings || {};
  const overrides = store.get("overrides");
  const list = $("recommended-settings");
  list.replaceChildren();
  const keys = MAIN_SETTINGS.filter((k) => k in settings || k in overrides);
  for (const k of Object.keys(overrides)) if (!keys.includes(k)) keys.push(k);
  for (const key of keys) {
    const changed = key in overrides;
    const value = changed ? overrides[key] : settings[key];
    list.append(node("div", { class: `setting${changed ? " changed" : ""}` },
      node("dt", {}, node("span", { text: settingLabel(key) }),
        node("span", { class: "setting-value data", text: formatSetting(key, value) }),
        changed ? node("span", { class: "tag", text: t("settings.changed") }) : null),
      changed ? node("dd", { text: t("settings.changed_reason") })
        : recommenderNode("dd", {}, rec.reason_codes?.[key], rec.reasons?.[key])));
  }

  const mine = changesEstimated();
  const state = !Object.keys(overrides).length ? "" : !mine ? "pending" : mine.error ? "refused"
    : mine.estimate ? "estimated" : "same";
  renderEstimate(mine?.estimate || rec.estimate || {}, state, rec.schedule === "quick", mine?.error);
  renderSchedule(rec);

  const warnBox = $("rec-warnings");
  warnBox.replaceChildren();
  const codes = Array.isArray(rec.warning_codes) ? rec.warning_codes : [];
  const english = Array.isArray(rec.warnings) ? rec.warnings : [];
  for (let i = 0; i < Math.max(codes.length, english.length); i++) {
    const line = recommenderNode("li", { class: "ds-issue ds-warning" }, codes[i], english[i]);
    if (line.textContent) warnBox.append(line);
  }
  renderAdvanced();
}

// The recommender's stages of a run, in the order they happen (estimate.stages, seconds).
const ESTIMATE_STAGES = ["load", "augment", "tokenize", "train", "evaluate", "save"];

/**
 * The user's changes, estimated by the service (POST /studio/recommend with `settings`): asked again a moment
 * after the last change; the answer kept as `changedEstimate` {for, estimate, error} (`for`: the changes
 * it was asked for, so a late answer to older changes is never shown).
 */
let changesTimer = null;
function estimateChanges() {
  clearTimeout(changesTimer);
  const overrides = store.get("overrides");
  const rec = store.get("rec");
  if (!rec || !Object.keys(overrides).length) {
    if (store.get("changedEstimate")) store.set({ changedEstimate: null });
    return;
  }
  const key = changesKey();
  if (store.get("changedEstimate")?.for === key) return;
  changesTimer = setTimeout(async () => {
    const file = store.get("file");
    try {
      const answer = await api.recommend(file.id, store.get("model"), store.get("task"), store.get("quick"), overrides);
      if (changesKey() !== key) return;
      store.set({ changedEstimate: { for: key, estimate: answer.changed_estimate || null, error: null } });
    } catch (err) {
      if (changesKey() !== key) return;
      store.set({ changedEstimate: { for: key, estimate: null, error: errorText(err) } });
    }
  }, 300);
}

/** What an estimate of the changes was asked for: the changes, and the file, model, task and schedule. */
function changesKey() {
  return JSON.stringify([store.get("overrides"), store.get("file")?.id, store.get("model"), store.get("task"),
    Boolean(store.get("quick"))]);
}

/** The service's estimate of the current changes, when it answered for exactly them (and the same schedule). */
export function changesEstimated() {
  const mine = store.get("changedEstimate");
  return mine && Object.keys(store.get("overrides")).length && mine.for === changesKey() ? mine : null;
}

/**
 * changed: "" (the recommendation as it is), "pending" (changes not estimated yet), "estimated" (`est` is
 * the time of the changed settings), "same" (the changes do not move the time), "refused" (`error` says why).
 */
function renderEstimate(est, changed, quick, error = null) {
  const bits = [[t("settings.estimate_time", { time: formatDuration(est.seconds) })]];
  if (est.tokens !== undefined) bits.push([t("settings.estimate_tokens", { tokens: formatNumber(est.tokens) })]);
  // The hardware (a name, cores, a CPU class): data, in the page's language when the service codes it.
  const device = codedParts(est.device_code)?.map((part) => part.text).join("") || est.device;
  if (device) bits.push(tNodes("settings.estimate_device", { device }));
  bits.push([Number(est.cost) > 0
    ? t("settings.estimate_cost", { cost: formatMoney(est.cost, est.currency) })
    : t("settings.estimate_free")]);
  const parts = [`${t(quick ? "settings.estimate_quick" : "settings.estimate")} `];
  bits.forEach((bit, i) => parts.push(...(i ? [" · "] : []), ...bit));
  if (changed === "pending") {
    parts.push(node("span", { class: "muted small", text: ` ${t("settings.estimate_changed")}` }));
  } else if (changed === "estimated") {
    parts.push(node("span", { class: "small", "data-testid": "estimate-with-changes",
      text: ` ${t("settings.estimate_with_changes")}` }));
  }
  if (error) {
    parts.push(node("span", { class: "small changes-refused", "data-testid": "changes-refused",
      text: ` ${t("settings.changes_refused", { message: error })}` }));
  }
  // Where the time goes, stage by stage (the ones that take a second or more).
  const stages = est.stages && typeof est.stages === "object" ? est.stages : {};
  const shown = ESTIMATE_STAGES.filter((k) => Number(stages[k]) >= 1)
    .map((k) => t("settings.estimate_stage", { stage: t(`estimate_stage.${k}`), time: formatDuration(stages[k]) }));
  if (shown.length) {
    parts.push(node("span", { class: "estimate-stages", id: "estimate-stages" },
      `${t("settings.estimate_stages")} ${shown.join(" · ")}`));
  }
  $("cost-estimate").replaceChildren(...parts);
}

/**
 * The schedule choice: the full schedule (the default: what measured best for quality) and the quick
 * preview, each with its own estimate; the quick preview's cost in recall as the recommender states
 * it (alternatives.quick.cost), the full schedule's gain when the quick one is on screen.
 */
function renderSchedule(rec) {
  const box = $("schedule");
  const alt = rec.alternatives || {};
  if (!alt.quick) { // a service without the choice
    box.hidden = true;
    return;
  }
  box.hidden = false;
  const onQuick = rec.schedule === "quick";
  const fullEstimate = onQuick || rec.schedule === "budget" ? alt.full?.estimate : rec.estimate;
  const quickEstimate = onQuick ? rec.estimate : alt.quick.estimate;
  // The full schedule is already as short as the preview: nothing to choose.
  const same = !onQuick && Object.keys(alt.quick.settings_changes || {}).length === 0;
  const loading = store.get("recLoading");
  const quick = store.get("quick");
  const full = $("schedule-full");
  const preview = $("quick-preview");
  full.checked = !quick;
  preview.checked = quick;
  // Not disabled while the settings are asked again (focus would be lost): only the latest answer lands.
  preview.disabled = same && !quick;
  box.setAttribute("aria-busy", loading ? "true" : "false");
  const time = (est) => (est && Number.isFinite(Number(est.seconds))
    ? t("schedule.time", { time: formatDuration(est.seconds) }) : "");
  $("schedule-full-time").textContent = time(fullEstimate);
  $("quick-time").textContent = same ? "" : time(quickEstimate);
  $("schedule-full-note").replaceChildren(...(onQuick && alt.full?.cost
    ? codedOr(alt.full.cost, t("schedule.full_note")) : [t("schedule.full_note")]));
  $("quick-cost").replaceChildren(...codedOr(alt.quick.cost, t(same ? "schedule.quick_same" : "schedule.quick_note")));
}

/** A coded message as nodes (its values as data), else the page's own line. */
function codedOr(coded, fallback) {
  const parts = codedParts(coded);
  if (!parts) return [fallback];
  return parts.map(({ text, param }) => (param
    ? node("span", { class: "data", translate: "no", text }) : document.createTextNode(text)));
}

// ---------------------------------------------------------------------------------------------
// the advanced panel

function renderAdvanced() {
  const settings = store.get("rec")?.settings || {};
  const overrides = store.get("overrides");
  const box = $("advanced-fields");
  const focused = document.activeElement?.id;
  box.replaceChildren();
  for (const key of ADVANCED_FIELDS) {
    if (!(key in settings) && key !== "max_steps") continue;
    const id = `adv-${key}`;
    const value = key in overrides ? overrides[key] : settings[key];
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
  const recommended = store.get("rec")?.settings?.[key];
  const overrides = { ...store.get("overrides") };
  let value;
  if (CHOICES[key]) value = raw;
  else if (raw === "") {
    delete overrides[key]; // empty means "use the recommendation"
    store.set({ overrides });
    return;
  } else {
    value = Number(raw);
    if (!Number.isFinite(value)) return;
  }
  if (value === recommended || (value === null && recommended === undefined)) delete overrides[key];
  else overrides[key] = value;
  store.set({ overrides });
}
