// Step 4, compare before and after (once a job has succeeded): one question to the base and the
// tuned model side by side, both streamed as they write with their timings (the playground's route,
// POST /studio/playground/stream: sides a = base, b = tuned), with an answer-length choice, and a set
// of up to 20 questions as a table (each question through the same route).

import { $, node, showStatus, tNodes } from "../dom.js";
import { t } from "../i18n.js";
import { modelName } from "../format.js";
import * as store from "../store.js";
import { tunedJob } from "./job.js";
import { errorWords, showAnswer, showError, sideRenderer, streamPost } from "./playground.js";

// The route's sides: a is the base, b the tuned model; the page's elements are named base/tuned.
const SIDES = { a: "base", b: "tuned" };

export function initCompare() {
  store.subscribe(["job", "jobs", "useJobId", "lang"], renderCompare);
  $("compare-form").addEventListener("submit", onCompare);
  $("question-set-run").addEventListener("click", runQuestionSet);
}

function renderCompare() {
  const job = tunedJob();
  $("compare-empty").hidden = Boolean(job);
  $("compare-body").hidden = !job;
  if (!job) return;
  $("compare-which").replaceChildren(...tNodes("compare.which", {
    base: modelName(job.model), tuned: job.fine_tuned_model,
  }));
}

/**
 * Ask the base and the tuned model one question through the streamed route. `on(event)` sees every
 * event as it arrives (start/delta/done/error, `side` = "base"|"tuned"); resolves to
 * {base, tuned} (the texts) and {failed} (the first side's error event, if any).
 */
async function compareStream(question, on = () => {}) {
  const job = tunedJob();
  const maxTokens = Number($("compare-length").value) || 256;
  const body = { a: { model: job.model }, b: { model: job.fine_tuned_model }, question, max_tokens: maxTokens };
  const text = { base: "", tuned: "" };
  let failed = null;
  await streamPost("/studio/playground/stream", body, (ev) => {
    const side = SIDES[ev.side];
    if (ev.type === "delta" && side) text[side] += ev.delta;
    if (ev.type === "error" && !failed) failed = { ...ev, side };
    on({ ...ev, side });
  });
  return { ...text, failed };
}

async function onCompare(event) {
  event.preventDefault();
  const question = $("compare-input").value.trim();
  if (!question) {
    showStatus("compare-state", "error", t("compare.empty_question"));
    $("compare-input").focus();
    return;
  }
  $("compare-send").disabled = true;
  for (const side of Object.values(SIDES)) {
    $(`compare-${side}-output`).textContent = "";
    $(`compare-${side}-output`).dataset.state = "waiting";
    $(`compare-${side}-timing`).textContent = "";
  }
  $("compare-tuned-timing").textContent = t("compare.waiting");
  showStatus("compare-state", "loading", t("compare.thinking"));
  const render = Object.fromEntries(Object.values(SIDES).map((side) =>
    [side, sideRenderer($(`compare-${side}-output`), $(`compare-${side}-timing`))]));
  try {
    const result = await compareStream(question, (ev) => {
      if (render[ev.side]) render[ev.side](ev);
    });
    const failed = result.failed;
    if (failed && failed.side) showError("compare-state", "compare.side_failed", { side: t(`compare.${failed.side}`) }, failed);
    else if (failed) showError("compare-state", "compare.failed", {}, failed);
    else showStatus("compare-state", "", "");
  } catch (err) {
    showError("compare-state", "compare.failed", {}, err);
  } finally {
    $("compare-send").disabled = false;
  }
}

async function runQuestionSet() {
  const questions = $("question-set-input").value.split("\n").map((q) => q.trim()).filter(Boolean).slice(0, 20);
  if (!questions.length) {
    showStatus("question-set-state", "error", t("compare.set_empty"));
    return;
  }
  const body = $("question-set-body");
  body.replaceChildren();
  $("question-set-table").hidden = false;
  $("question-set-run").disabled = true;
  try {
    for (const [i, q] of questions.entries()) {
      showStatus("question-set-state", "loading", t("compare.set_progress", { i: i + 1, n: questions.length }));
      const tr = node("tr", {},
        node("td", { "data-label": t("compare.question"), class: "data", text: q }),
        node("td", { "data-label": t("compare.base"), class: "data", text: "…" }),
        node("td", { "data-label": t("compare.tuned"), class: "data", text: "…" }));
      body.append(tr);
      try {
        const r = await compareStream(q);
        showAnswer(tr.children[1], r.base);
        showAnswer(tr.children[2], r.tuned);
        if (r.failed) tr.children[r.failed.side === "tuned" ? 2 : 1].textContent = errorWords(r.failed);
      } catch (err) {
        tr.children[1].textContent = errorWords(err);
        tr.children[2].textContent = "";
      }
    }
    showStatus("question-set-state", "", t("compare.set_done", { n: questions.length }));
  } finally {
    $("question-set-run").disabled = false;
  }
}
