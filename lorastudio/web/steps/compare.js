// Step 4, compare before and after (once a job has succeeded): one question to the base and the
// tuned model side by side, with an answer-length choice, and a set of up to 20 questions as a table.

import { api } from "../api.js";
import { $, errorText, node, showStatus, tNodes } from "../dom.js";
import { t } from "../i18n.js";
import { modelName } from "../format.js";
import * as store from "../store.js";
import { tunedJob } from "./job.js";

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
    showStatus("compare-state", "error", t("compare.empty_question"));
    $("compare-input").focus();
    return;
  }
  $("compare-send").disabled = true;
  $("compare-base-output").textContent = "";
  $("compare-tuned-output").textContent = "";
  showStatus("compare-state", "loading", t("compare.thinking"));
  try {
    const result = await compareOnce(question);
    showAnswer($("compare-base-output"), result.base_answer);
    showAnswer($("compare-tuned-output"), result.tuned_answer);
    showStatus("compare-state", "", "");
  } catch (err) {
    showStatus("compare-state", "error", t("compare.failed", { message: errorText(err) }));
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
        const r = await compareOnce(q);
        showAnswer(tr.children[1], r.base_answer);
        showAnswer(tr.children[2], r.tuned_answer);
      } catch (err) {
        tr.children[1].textContent = errorText(err);
        tr.children[2].textContent = "";
      }
    }
    showStatus("question-set-state", "", t("compare.set_done", { n: questions.length }));
  } finally {
    $("question-set-run").disabled = false;
  }
}
