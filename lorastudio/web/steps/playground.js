// The playground: any two of {base models, every finished tuned model} answering side by side, both
// streamed as they write (POST /studio/playground/stream, Server-Sent Events), with temperature and
// system prompt (shared, or model B's own); a multi-turn chat with model A (the history lives in the
// store, sent with each turn); a question set answered by both (typed, or a CSV/Excel/TXT file with
// optional key facts), scored and exported as CSV/XLSX. Contracts: serve/api_playground.py.

import { ApiError } from "../api.js";
import { $, errorText, node, showStatus, tNodes } from "../dom.js";
import { formatNumber, has, lang, t } from "../i18n.js";
import { modelName } from "../format.js";
import * as store from "../store.js";

// ---------------------------------------------------------------------------------------------
// shared with steps/eval.js: requests, streams, errors, model labels, marks

/** An ApiError that also carries the service's error `code` (the page words it) and `params`. */
async function apiError(response) {
  let message = "";
  let code = null;
  let param = null;
  try {
    const body = await response.json();
    if (body && body.error) ({ message = "", code = null, param = null } = body.error);
  } catch { /* not JSON */ }
  const err = new ApiError(message || `HTTP ${response.status}`, response.status, param);
  err.code = code;
  return err;
}

export async function pgRequest(method, url, body) {
  const init = { method, headers: { "Accept-Language": lang() } };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (err) {
    if (err && err.name === "AbortError") throw err;
    throw new ApiError("", 0);
  }
  if (!response.ok) throw await apiError(response);
  return response;
}

/** POST a JSON body and call onEvent(event) for each `data:` line of the SSE answer, as it arrives. */
export async function streamPost(url, body, onEvent, signal) {
  let response;
  try {
    response = await fetch(url, { method: "POST", signal, headers: { "Content-Type": "application/json",
      "Accept-Language": lang() }, body: JSON.stringify(body) });
  } catch (err) {
    if (err && err.name === "AbortError") return;
    throw new ApiError("", 0);
  }
  if (!response.ok) throw await apiError(response);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const chunk = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of chunk.split("\n")) {
          if (line.startsWith("data: ")) onEvent(JSON.parse(line.slice(6)));
        }
      }
    }
  } catch (err) {
    if (err && err.name === "AbortError") return;
    throw new ApiError("", 0);
  }
}

/** An error in the page's words as nodes: the service's code when the page knows it (UI text), else
 * its message marked as data (never parsed, never mistaken for the page's own words). */
export function errorParts(err) {
  const code = err && err.code;
  if (code && has(`pg.error.${code}`)) return [document.createTextNode(t(`pg.error.${code}`, err.params || {}))];
  if (err instanceof ApiError && (err.status === 0 || err.status === 401)) return [document.createTextNode(errorText(err))];
  return [node("span", { class: "data", text: (err && err.message) || "—" })];
}

/** The same as plain text (for table cells and exports). */
export function errorWords(err) {
  return errorParts(err).map((n) => n.textContent).join("");
}

/**
 * A status line showing an error, marked for tests as `error-message`: the template `key` with its
 * {message} filled by errorParts(err) (err null: the template alone). No key clears it.
 */
export function showError(id, key, params = {}, err = null) {
  const box = $(id);
  box.replaceChildren();
  box.className = key ? "state state-error" : "state";
  if (!key) {
    box.removeAttribute("data-testid");
    return;
  }
  box.setAttribute("data-testid", "error-message");
  const mark = "\u0000";
  const text = t(key, { ...params, message: mark });
  text.split(mark).forEach((part, i) => {
    if (i) box.append(...errorParts(err));
    if (part) box.append(document.createTextNode(part));
  });
}

/** Fetch the bases and every finished adapter (GET /studio/playground/models) into the store. */
export async function loadPlaygroundModels() {
  try {
    const models = await (await pgRequest("GET", "/studio/playground/models")).json();
    store.set({ pgModels: models, pgModelsError: null });
  } catch (err) {
    store.set({ pgModelsError: err });
  }
}

export function adapterOf(model) {
  return (store.get("pgModels")?.adapters || []).find((a) => a.model === model) || null;
}

/** How a model is named in the page: a base by its catalogue name, an adapter by its job and base. */
export function modelLabel(model) {
  const adapter = adapterOf(model);
  if (!adapter) return modelName(model);
  const when = adapter.created_at ? new Date(adapter.created_at * 1000).toLocaleString(lang() === "zh" ? "zh-CN" : "en-US",
    { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" }) : "";
  const job = adapter.suffix || (adapter.job_id ? adapter.job_id.slice(0, 12) : model);
  return t("pg.adapter_option", { job, base: adapter.base, when });
}

/** A ✓/✗ mark (words for screen readers) before an answer that was scored on key facts. */
export function passMark(pass) {
  if (pass === null || pass === undefined) return null;
  return node("span", { class: `mark mark-${pass ? "pass" : "fail"}`, title: t(pass ? "pg.right" : "pg.wrong"),
    "aria-label": t(pass ? "pg.right" : "pg.wrong"), text: pass ? "✓" : "✗" });
}

export function flipBadge(flip) {
  if (!flip) return node("span", { class: "muted", text: "—" });
  return node("span", { class: `flip flip-${flip}`, "data-flip": flip, text: t(`pg.flip_${flip}`) });
}

/** Model output as shown: runs of blank lines folded; an empty answer said in words. */
export function showAnswer(el, answer) {
  const text = String(answer ?? "").replace(/\n{3,}/g, "\n\n").trim();
  el.classList.toggle("empty-answer", !text);
  if (text) el.textContent = text;
  else el.replaceChildren(node("span", { class: "muted", "data-i18n": "compare.empty_answer", text: t("compare.empty_answer") }));
}

/**
 * One side of a streamed answer (the playground's A/B, step 4's base/tuned): returns `on(event)` for that
 * side's Server-Sent Events — start (state "streaming", "writing…"), delta (the text so far, blank runs
 * folded), done (the answer, state "done", time to first word, total, tokens, tokens/s), error (state
 * "error") — drawn into `out` (with `data-state`) and `timing`.
 */
export function sideRenderer(out, timing) {
  let text = "";
  return (ev) => {
    if (ev.type === "start") {
      out.dataset.state = "streaming";
      timing.textContent = t("pg.writing");
      showRowsRead(timing, []);
    } else if (ev.type === "delta") {
      text += ev.delta;
      out.textContent = text.replace(/\n{3,}/g, "\n\n").replace(/^\s+/, "");
    } else if (ev.type === "done") {
      showAnswer(out, text);
      out.dataset.state = "done";
      timing.textContent = timingText(ev);
      showRowsRead(timing, ev.rows);
    } else if (ev.type === "error") {
      out.dataset.state = "error";
      timing.textContent = "";
    }
  };
}

/**
 * The training rows a tuned model read beside the question (the done event's `rows`), folded under its timing
 * line: "read 3 rows of your data", each row's question and answer when opened. Nothing for none (a base model).
 */
export function showRowsRead(timing, rows) {
  const old = timing.nextElementSibling;
  if (old && old.classList.contains("rows-read")) old.remove();
  if (!rows || !rows.length) return;
  const items = rows.map((r) => node("li", {}, node("div", { class: "rows-read-q", text: r.question }),
    node("div", { class: "rows-read-a", text: r.answer })));
  timing.after(node("details", { class: "rows-read", "data-rows": String(rows.length) },
    node("summary", { text: t("pg.rows_read", { n: rows.length }) }), node("ol", { class: "data", translate: "no" }, ...items)));
}

/** Ask the service for a CSV/XLSX of `rows` under `columns` and save it as `filename.format`. */
export async function exportTable(format, columns, rows, filename, stateId) {
  try {
    const response = await pgRequest("POST", "/studio/playground/export", { format, columns, rows, filename });
    const url = URL.createObjectURL(await response.blob());
    const a = node("a", { href: url, download: `${filename}.${format}`, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (err) {
    showError(stateId, "pg.export_failed", {}, err);
  }
}

/** Read an uploaded question file through the service: [{question, must_contain, row}]. */
export async function readQuestionFile(file) {
  const form = new FormData();
  form.append("file", file, file.name);
  return (await pgRequest("POST", "/studio/playground/questions", form)).json();
}

// ---------------------------------------------------------------------------------------------
// the model pickers

export function initPlayground() {
  store.subscribe(["pgModels", "pgModelsError", "models", "job", "lang"], renderPickers);
  store.subscribe(["chat", "lang"], renderChat);
  store.subscribe(["setRun", "lang"], renderSet);
  store.subscribe(["jobs", "job"], refreshWhenNewAdapter);
  $("compare-model-a").addEventListener("change", renderTitles);
  $("compare-model-b").addEventListener("change", renderTitles);
  for (const id of ["compare-temperature", "compare-temperature-b"]) {
    $(id).addEventListener("input", () => { $(`${id}-value`).textContent = formatNumber($(id).value, 1); });
  }
  $("pg-b-own").addEventListener("change", () => { $("pg-b-settings").hidden = !$("pg-b-own").checked; });
  $("pg-form").addEventListener("submit", onAsk);
  $("playground-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("pg-form").requestSubmit();
  });
  $("playground-stop").addEventListener("click", () => store.get("pgAbort")?.abort());
  $("chat-form").addEventListener("submit", onChat);
  $("chat-clear").addEventListener("click", () => { store.set({ chat: [] }); showError("chat-state", null); });
  $("set-upload").addEventListener("change", onSetUpload);
  $("set-run").addEventListener("click", onSetRun);
  $("set-export-csv").addEventListener("click", () => exportSet("csv"));
  $("set-export-xlsx").addEventListener("click", () => exportSet("xlsx"));
}

/** A job that finished since the list was fetched: fetch the choices again (they are every adapter). */
function refreshWhenNewAdapter() {
  const finished = [...(store.get("jobs") || []), store.get("job")].filter((j) => j && j.status === "succeeded" && j.fine_tuned_model);
  const known = new Set((store.get("pgModels")?.adapters || []).map((a) => a.model));
  if (store.get("pgModels") && finished.some((j) => !known.has(j.fine_tuned_model))) loadPlaygroundModels();
}

function fillSelect(select, groups, value) {
  select.replaceChildren(...groups.filter((g) => g.options.length).map((g) => node("optgroup", { label: g.label },
    ...g.options.map((o) => node("option", { value: o.value, text: o.label, disabled: o.disabled, title: o.title })))));
  const values = groups.flatMap((g) => g.options.filter((o) => !o.disabled).map((o) => o.value));
  select.value = values.includes(value) ? value : values[0] ?? "";
}

/** A base of the catalogue (settings' list, store "models") that cannot run on this server, or null. */
function unavailable(id) {
  const m = (store.get("models") || []).find((x) => x.id === id);
  return m && m.available === false ? m : null;
}

function renderPickers() {
  const models = store.get("pgModels");
  const err = store.get("pgModelsError");
  if (err) showError("pg-models-state", "pg.models_failed", {}, err);
  else if (!models) showStatus("pg-models-state", "loading", t("pg.models_loading"));
  else showError("pg-models-state", null);
  if (!models) return;
  const job = store.get("job");
  const onScreen = job && job.status === "succeeded" ? job.fine_tuned_model : null;
  const adapters = models.adapters || [];
  // Bases that cannot run here (no GPU, not downloaded and offline) are listed but cannot be chosen.
  const bases = { label: t("pg.group_bases"), options: models.bases.map((id) => {
    const off = unavailable(id);
    return { value: id, label: off ? `${modelName(id)} · ${t("model.unavailable_tag")}` : modelName(id),
      disabled: Boolean(off), title: off ? off.unavailable_reason : null };
  }) };
  const tuned = { label: t("pg.group_tuned"), options: adapters.map((a) => ({ value: a.model, label: modelLabel(a.model) })) };
  const none = { label: t("pg.group_none"), options: [{ value: "", label: t("pg.none") }] };
  const a = $("compare-model-a");
  const b = $("compare-model-b");
  // The first time (and when the job on screen changes): its base against it; else keep the user's choice.
  const suggested = onScreen || adapters[0]?.model || "";
  const baseOf = (m) => adapterOf(m)?.base || (models.bases.includes("default") && !unavailable("default") ? "default"
    : models.bases.find((id) => !unavailable(id)));
  const firstTime = !a.options.length || a.dataset.jobOnScreen !== String(onScreen);
  a.dataset.jobOnScreen = String(onScreen);
  fillSelect(a, [bases, tuned], firstTime ? baseOf(suggested) : a.value);
  fillSelect(b, [tuned, bases, none], firstTime ? suggested : b.value);
  renderTitles();
  renderEvalChoices();
}

/** eval.js fills its own select from the same list; it registers its render here (no import cycle). */
let renderEvalChoices = () => {};
export function onModelsRendered(fn) { renderEvalChoices = fn; }

function renderTitles() {
  const a = $("compare-model-a").value;
  const b = $("compare-model-b").value;
  $("pg-a-title").replaceChildren(...tNodes("pg.answer_of", { which: "A", model: modelLabel(a) }));
  $("pg-b-title").replaceChildren(...(b ? tNodes("pg.answer_of", { which: "B", model: modelLabel(b) })
    : [document.createTextNode(t("pg.b_off"))]));
  $("pg-b-box").classList.toggle("muted", !b);
}

function sides() {
  const shared = { temperature: Number($("compare-temperature").value) || 0, system: $("compare-system").value.trim() || null };
  const own = $("pg-b-own").checked
    ? { temperature: Number($("compare-temperature-b").value) || 0, system: $("compare-system-b").value.trim() || null }
    : shared;
  const b = $("compare-model-b").value;
  return { a: { model: $("compare-model-a").value, ...shared }, b: b ? { model: b, ...own } : null };
}

function limit(name, fallback) {
  return store.get("pgModels")?.limits?.[name] || fallback;
}

/** The question's own problem ({key, params} of the page's words), or null. */
function questionProblem(text) {
  if (!text.trim()) return { key: "pg.error.empty_question", params: {} };
  const max = limit("question_chars", 8000);
  if (text.length > max) return { key: "pg.error.question_too_long", params: { chars: formatNumber(text.length), limit: formatNumber(max) } };
  return null;
}

// ---------------------------------------------------------------------------------------------
// side by side, streamed

export function timingText(done) {
  if (done.first_token_s === null || done.first_token_s === undefined) return t("pg.timing_empty", { total: formatNumber(done.total_s, 1) });
  return t("pg.timing", { first: formatNumber(done.first_token_s, 2), total: formatNumber(done.total_s, 1),
    tokens: formatNumber(done.tokens), rate: done.tokens_per_s ? formatNumber(done.tokens_per_s, 1) : "—" });
}

async function onAsk(event) {
  event.preventDefault();
  const question = $("playground-input").value;
  const problem = questionProblem(question);
  if (problem) {
    showError("pg-state", problem.key, problem.params);
    $("playground-input").focus();
    return;
  }
  const body = { ...sides(), question: question.trim(), max_tokens: Number($("pg-length").value) || 256 };
  if (!body.a.model) return;
  const render = {};
  for (const s of ["a", "b"]) {
    render[s] = sideRenderer($(`compare-${s}-output`), $(`compare-${s}-timing`));
    $(`compare-${s}-output`).textContent = "";
    $(`compare-${s}-timing`).textContent = "";
    $(`compare-${s}-output`).dataset.state = s === "b" && !body.b ? "off" : "waiting";
  }
  if (body.b) $("compare-b-timing").textContent = t("pg.waiting");
  const abort = new AbortController();
  store.set({ pgAbort: abort });
  $("playground-send").disabled = true;
  $("playground-stop").hidden = false;
  showStatus("pg-state", "loading", t(body.b ? "pg.answering_both" : "pg.answering_one"));
  let failed = null;
  try {
    await streamPost("/studio/playground/stream", body, (ev) => {
      if (ev.type === "error") failed = ev;
      if (render[ev.side]) render[ev.side](ev);
    }, abort.signal);
    if (failed) showError("pg-state", "pg.side_failed", { side: (failed.side || "").toUpperCase() || "—" }, failed);
    else if (abort.signal.aborted) showStatus("pg-state", "", t("pg.stopped"));
    else showStatus("pg-state", "", "");
  } catch (err) {
    showError("pg-state", "compare.failed", {}, err);
  } finally {
    store.set({ pgAbort: null });
    $("playground-send").disabled = false;
    $("playground-stop").hidden = true;
  }
}

// ---------------------------------------------------------------------------------------------
// chat with model A

function bubble(role, text, state) {
  const li = node("li", { class: `chat-msg chat-${role}`, "data-role": role, "data-state": state || "done" },
    node("span", { class: "who", text: role === "user" ? t("pg.chat_you") : t("pg.chat_model") }),
    node("div", { class: "text data" }));
  if (role === "assistant") showAnswer(li.lastChild, text);
  else li.lastChild.textContent = text;
  return li;
}

function renderChat() {
  $("chat-output").replaceChildren(...store.get("chat").map((m) => bubble(m.role, m.content)));
}

async function onChat(event) {
  event.preventDefault();
  const question = $("chat-input").value;
  const problem = questionProblem(question);
  if (problem) {
    showError("chat-state", problem.key, problem.params);
    $("chat-input").focus();
    return;
  }
  const history = store.get("chat");
  if (history.length >= 2 * limit("turns", 40)) {
    showError("chat-state", "pg.error.too_many_turns", { limit: limit("turns", 40) });
    return;
  }
  const { a } = sides();
  $("chat-input").value = "";
  $("chat-send").disabled = true;
  showError("chat-state", null);
  const log = $("chat-output");
  log.append(bubble("user", question.trim()));
  const reply = bubble("assistant", "", "streaming");
  reply.lastChild.textContent = "…";
  log.append(reply);
  let text = "";
  let failed = null;
  try {
    await streamPost("/studio/playground/stream", { a, question: question.trim(), history, max_tokens: 512 }, (ev) => {
      if (ev.type === "delta") {
        text += ev.delta;
        reply.lastChild.textContent = text.replace(/\n{3,}/g, "\n\n").replace(/^\s+/, "");
      } else if (ev.type === "error") failed = ev;
    });
    if (failed) throw Object.assign(new ApiError(failed.message, 500), { code: failed.code, params: failed.params });
    store.set({ chat: [...history, { role: "user", content: question.trim() }, { role: "assistant", content: text }] });
  } catch (err) {
    reply.remove();
    showError("chat-state", "compare.failed", {}, err);
    $("chat-input").value = question;
  } finally {
    $("chat-send").disabled = false;
  }
}

// ---------------------------------------------------------------------------------------------
// a question set answered by both

async function onSetUpload() {
  const file = $("set-upload").files[0];
  $("set-upload").value = "";
  if (!file) return;
  showStatus("set-state", "loading", t("pg.reading_file"));
  try {
    const read = await readQuestionFile(file);
    store.set({ setKeys: Object.fromEntries(read.questions.map((q) => [q.question, q.must_contain])) });
    $("set-input").value = read.questions.map((q) => q.question).join("\n");
    const keyed = read.questions.filter((q) => q.must_contain.length).length;
    showStatus("set-state", "", t("pg.file_read", { n: read.questions.length, keyed }));
  } catch (err) {
    showError("set-state", "pg.file_failed", {}, err);
  }
}

async function onSetRun() {
  const keys = store.get("setKeys");
  const questions = $("set-input").value.split("\n").map((q) => q.trim()).filter(Boolean)
    .map((q) => ({ question: q, must_contain: keys[q] || [] }));
  if (!questions.length) {
    showError("set-state", "compare.set_empty");
    return;
  }
  const max = limit("set_questions", 200);
  if (questions.length > max) {
    showError("set-state", "pg.error.too_many_questions", { count: questions.length, limit: max });
    return;
  }
  const long = questions.findIndex((q) => questionProblem(q.question));
  if (long >= 0) {
    showError("set-state", "pg.error.question_too_long_row", { row: long + 1,
      chars: formatNumber(questions[long].question.length), limit: formatNumber(limit("question_chars", 8000)) });
    return;
  }
  const { a, b } = sides();
  const run = { a, b, questions, rows: questions.map(() => ({})), summary: null, running: true };
  store.set({ setRun: run });
  $("set-run").disabled = true;
  showStatus("set-state", "loading", t("compare.set_progress", { i: 1, n: questions.length }));
  try {
    await streamPost("/studio/playground/set", { a, b, questions, max_tokens: Number($("pg-length").value) || 256 }, (ev) => {
      if (ev.type === "row" || ev.type === "error") {
        run.rows[ev.index][ev.side] = ev;
        const next = Math.min(ev.index + 2, questions.length);
        showStatus("set-state", "loading", t("compare.set_progress", { i: next, n: questions.length }));
      } else if (ev.type === "summary") run.summary = ev;
      store.set({ setRun: run });
    });
    showStatus("set-state", "", t("compare.set_done", { n: questions.length }));
  } catch (err) {
    showError("set-state", "compare.failed", {}, err);
  } finally {
    run.running = false;
    store.set({ setRun: run });
    $("set-run").disabled = false;
  }
}

function answerCell(result, label) {
  const td = node("td", { "data-label": label });
  if (!result) {
    td.textContent = "…";
    return td;
  }
  if (result.type === "error") {
    td.append(node("span", { class: "mark mark-fail", text: "!" }), ...errorParts(result));
    return td;
  }
  const text = node("span", { class: "data" });
  showAnswer(text, result.answer);
  td.append(...[passMark(result.pass), text].filter(Boolean));
  return td;
}

function renderSet() {
  const run = store.get("setRun");
  $("set-table").hidden = !run;
  $("set-export-csv").disabled = $("set-export-xlsx").disabled = !run || run.running;
  if (!run) return;
  const labels = [t("compare.question"), t("pg.model_a"), t("pg.model_b"), t("pg.flip")];
  $("set-col-a").replaceChildren(...tNodes("pg.answer_of", { which: "A", model: modelLabel(run.a.model) }));
  $("set-col-b").replaceChildren(...(run.b ? tNodes("pg.answer_of", { which: "B", model: modelLabel(run.b.model) })
    : [document.createTextNode(t("pg.b_off"))]));
  $("set-body").replaceChildren(...run.questions.map((q, i) => {
    const row = run.rows[i];
    const flip = run.summary?.flips?.[i];
    return node("tr", { "data-index": i },
      node("td", { "data-label": labels[0], class: "data", text: q.question }),
      answerCell(row.a, labels[1]),
      run.b ? answerCell(row.b, labels[2]) : node("td", { "data-label": labels[2], class: "muted", text: "—" }),
      node("td", { "data-label": labels[3] }, flipBadge(flip)));
  }));
  const s = run.summary;
  $("set-summary").hidden = !s;
  if (!s) return;
  const text = s.scored && run.b
    ? t("pg.set_summary_keys", { scored: s.scored, a: s.pass.a, b: s.pass.b, gained: s.counts.gained, lost: s.counts.lost })
    : s.scored ? t("pg.set_summary_one", { scored: s.scored, a: s.pass.a }) : t("pg.set_summary", { n: s.questions });
  $("set-summary").textContent = text;
}

function exportSet(format) {
  const run = store.get("setRun");
  if (!run) return;
  const word = (p) => (p === null || p === undefined ? "" : t(p ? "pg.right" : "pg.wrong"));
  const columns = [t("compare.question"), t("ev.keys"), `A: ${modelLabel(run.a.model)}`, t("pg.a_right"),
    `B: ${run.b ? modelLabel(run.b.model) : t("pg.none")}`, t("pg.b_right"), t("pg.flip")];
  const rows = run.questions.map((q, i) => {
    const r = run.rows[i];
    const flip = run.summary?.flips?.[i];
    return [q.question, (q.must_contain || []).join(" | "), r.a?.answer ?? "", word(r.a?.pass), r.b?.answer ?? "",
      word(r.b?.pass), flip ? t(`pg.flip_${flip}`) : ""];
  });
  exportTable(format, columns, rows, t("pg.export_name"), "set-state");
}
