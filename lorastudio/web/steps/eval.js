// Evaluation of a tuned model in the page: the forgetting meter (the built-in general questions
// answered by the base and the tuned model: how many it kept, which it lost; steps/forgetting.js runs
// it by itself after a job and keeps its state per job, here it can also be started for any tuned
// model) and a before/after table on the user's held-out questions with key facts (uploaded, or the
// last file again), with per-question flips.

import { $, node, showStatus } from "../dom.js";
import { formatNumber, t } from "../i18n.js";
import * as store from "../store.js";
import { flippedItem, flippedOf, forgettingOf, loadForgetting, markCounts, resultText, runForgetting } from "./forgetting.js";
import {
  adapterOf, errorParts, exportTable, flipBadge, modelLabel, onModelsRendered, passMark, readQuestionFile, showAnswer,
  showError, streamPost,
} from "./playground.js";

const LAST_QUESTIONS = "lorastudio.evalQuestions";

export function initEval() {
  onModelsRendered(renderChoices);
  store.subscribe(["forgetting", "pgModels", "lang"], renderForgetting);
  store.subscribe(["evalRun", "evalQuestions", "lang"], renderHeldOut);
  $("eval-model").addEventListener("change", askForgetting);
  $("forgetting-run").addEventListener("click", () => {
    const adapter = adapterOf($("eval-model").value);
    if (adapter?.job_id) runForgetting(adapter.job_id);
  });
  $("eval-upload").addEventListener("change", onUpload);
  $("eval-reuse").addEventListener("click", () => {
    try {
      const last = JSON.parse(store.recall(LAST_QUESTIONS) || "null");
      if (last && Array.isArray(last.questions)) store.set({ evalQuestions: last, evalRun: null });
    } catch { /* a damaged value: nothing to reuse */ }
  });
  $("eval-run").addEventListener("click", runHeldOut);
  $("eval-export").addEventListener("click", exportHeldOut);
  $("eval-reuse").hidden = !store.recall(LAST_QUESTIONS);
}

function renderChoices() {
  const adapters = store.get("pgModels")?.adapters || [];
  $("eval-empty").hidden = adapters.length > 0;
  $("eval-body").hidden = !adapters.length;
  if (!adapters.length) return;
  const select = $("eval-model");
  const job = store.get("job");
  const onScreen = job && job.status === "succeeded" ? job.fine_tuned_model : null;
  const before = select.value;
  const firstTime = !select.options.length || select.dataset.jobOnScreen !== String(onScreen);
  select.dataset.jobOnScreen = String(onScreen);
  select.replaceChildren(...adapters.map((a) => node("option", { value: a.model, text: modelLabel(a.model) })));
  const wanted = firstTime ? (onScreen || adapters[0].model) : before;
  select.value = adapters.some((a) => a.model === wanted) ? wanted : adapters[0].model;
  askForgetting();
}

// ---------------------------------------------------------------------------------------------
// the forgetting meter

/** The chosen tuned model's check: asked of the service once (then its state is in the store). */
function askForgetting() {
  const adapter = adapterOf($("eval-model").value);
  if (adapter?.job_id && !forgettingOf(adapter.job_id)) loadForgetting(adapter.job_id);
  else renderForgetting();
}

function renderForgetting() {
  const adapter = adapterOf($("eval-model").value);
  const f = adapter ? forgettingOf(adapter.job_id) : null;
  const box = $("forgetting-meter");
  const bar = $("forgetting-bar");
  box.dataset.state = f?.status || "none";
  markCounts(box, f);
  $("forgetting-run").hidden = Boolean(f && ["done", "running", "loading"].includes(f.status));
  $("forgetting-flips").replaceChildren();
  bar.hidden = true;
  showError("forgetting-state", null);
  if (!f || f.status === "none" || f.status === "waiting") {
    $("forgetting-text").textContent = t(f?.status === "waiting" ? "fg.short_waiting" : "ev.forget_none");
    return;
  }
  if (f.status === "loading") {
    $("forgetting-text").textContent = "";
    return;
  }
  if (f.status === "running") {
    $("forgetting-text").textContent = "";
    showStatus("forgetting-state", "loading", f.total
      ? t("ev.forget_running", { done: f.done, total: f.total }) : t("fg.starting"));
    return;
  }
  if (f.status === "error") {
    $("forgetting-text").textContent = t("ev.forget_none");
    showError("forgetting-state", "ev.forget_failed", {}, f.error);
    return;
  }
  $("forgetting-text").textContent = resultText(f);
  bar.max = Math.max(1, f.base_right);
  bar.value = f.kept;
  bar.hidden = !f.base_right;
  bar.low = Math.max(1, f.base_right) * 0.8;
  bar.optimum = Math.max(1, f.base_right);
  bar.setAttribute("aria-label", $("forgetting-text").textContent);
  $("forgetting-flips").replaceChildren(...flippedOf(f).map(flippedItem));
}

// ---------------------------------------------------------------------------------------------
// held-out questions before / after

async function onUpload() {
  const file = $("eval-upload").files[0];
  $("eval-upload").value = "";
  if (!file) return;
  showStatus("eval-state", "loading", t("pg.reading_file"));
  try {
    const read = await readQuestionFile(file);
    store.remember(LAST_QUESTIONS, JSON.stringify(read));
    $("eval-reuse").hidden = false;
    store.set({ evalQuestions: read, evalRun: null });
    showStatus("eval-state", "", "");
  } catch (err) {
    showError("eval-state", "pg.file_failed", {}, err);
  }
}

async function runHeldOut() {
  const questions = store.get("evalQuestions")?.questions;
  const adapter = adapterOf($("eval-model").value);
  if (!questions || !adapter) return;
  const run = { model: adapter.model, base: adapter.base, questions, rows: questions.map(() => ({})), summary: null, running: true };
  store.set({ evalRun: run });
  showStatus("eval-state", "loading", t("compare.set_progress", { i: 1, n: questions.length }));
  try {
    await streamPost("/studio/playground/set", { a: { model: adapter.base }, b: { model: adapter.model }, questions, max_tokens: 256 }, (ev) => {
      if (ev.type === "row" || ev.type === "error") {
        run.rows[ev.index][ev.side] = ev;
        showStatus("eval-state", "loading", t("compare.set_progress", { i: Math.min(ev.index + 2, questions.length), n: questions.length }));
      } else if (ev.type === "summary") run.summary = ev;
      store.set({ evalRun: run });
    });
    showStatus("eval-state", "", "");
  } catch (err) {
    showError("eval-state", "compare.failed", {}, err);
  } finally {
    run.running = false;
    store.set({ evalRun: run });
  }
}

function cell(result, label) {
  const td = node("td", { "data-label": label });
  if (!result) td.textContent = "…";
  else if (result.type === "error") td.append(...errorParts(result));
  else {
    const text = node("span", { class: "data" });
    showAnswer(text, result.answer);
    td.append(...[passMark(result.pass), text].filter(Boolean));
  }
  return td;
}

function renderHeldOut() {
  const loaded = store.get("evalQuestions");
  const run = store.get("evalRun");
  $("eval-run").disabled = !loaded || Boolean(run?.running);
  $("eval-export").disabled = !run || run.running;
  $("eval-file").replaceChildren();
  if (loaded) {
    const keyed = loaded.questions.filter((q) => q.must_contain.length).length;
    $("eval-file").append(node("span", { class: "data", text: loaded.filename }), document.createTextNode(
      ` · ${t("pg.file_read", { n: loaded.questions.length, keyed })}`));
    if (!keyed) $("eval-file").append(document.createTextNode(` ${t("ev.no_keys")}`));
  }
  $("eval-table").hidden = !run;
  $("eval-summary").hidden = !run?.summary;
  if (!run) return;
  const labels = [t("compare.question"), t("ev.keys"), t("ev.before"), t("ev.after"), t("pg.flip")];
  $("eval-body-rows").replaceChildren(...run.questions.map((q, i) => node("tr", { "data-index": i, "data-flip": run.summary?.flips?.[i] || "" },
    node("td", { "data-label": labels[0], class: "data", text: q.question }),
    node("td", { "data-label": labels[1], class: "data", text: q.must_contain.join(" | ") || "—" }),
    cell(run.rows[i].a, labels[2]), cell(run.rows[i].b, labels[3]),
    node("td", { "data-label": labels[4] }, flipBadge(run.summary?.flips?.[i])))));
  const s = run.summary;
  if (s) {
    $("eval-summary").textContent = s.scored
      ? t("ev.summary", { before: s.pass.a, after: s.pass.b, scored: s.scored, gained: s.counts.gained, lost: s.counts.lost })
      : t("ev.summary_unscored", { n: formatNumber(s.questions) });
  }
}

function exportHeldOut() {
  const run = store.get("evalRun");
  if (!run) return;
  const word = (p) => (p === null || p === undefined ? "" : t(p ? "pg.right" : "pg.wrong"));
  const columns = [t("compare.question"), t("ev.keys"), t("ev.before"), t("pg.a_right"), t("ev.after"), t("pg.b_right"), t("pg.flip")];
  const rows = run.questions.map((q, i) => {
    const r = run.rows[i];
    const flip = run.summary?.flips?.[i];
    return [q.question, q.must_contain.join(" | "), r.a?.answer ?? "", word(r.a?.pass), r.b?.answer ?? "", word(r.b?.pass),
      flip ? t(`pg.flip_${flip}`) : ""];
  });
  exportTable("xlsx", columns, rows, t("ev.export_name"), "eval-state");
}
