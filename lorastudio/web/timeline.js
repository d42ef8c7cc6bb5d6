// The job's time as the user sees it: its stages in order, each with its own time, and the time left
// with what it is based on. Pure functions of the job's events (docs/ARCHITECTURE.md, events.jsonl),
// the recommender's estimate and the clock; steps/job.js renders them.
//
// Stages never go back: a stage event of an earlier stage (a resumed run prepares again, training
// goes on after an evaluation) leaves the display where it is. A "save" followed by a new session's
// stages was the checkpoint of an interruption (a pause, a server restart), not the end: the display
// stays on the stage before it (training), which goes on. Evaluation is a sub-step of training:
// it is "running" from its stage event to the next event of any kind (its `eval` result, the next
// step's metrics, the next stage), and its time is the sum over all evaluations.

/** The stages shown, in order. "augment" only when the trainer reports it as a stage of its own. */
export const STAGE_ORDER = ["prepare", "augment", "tokenize", "train", "save"];
const OPTIONAL = new Set(["augment"]);
// Other names the trainer may use for a shown stage.
const ALIASES = { load: "prepare", loading: "prepare", replay: "augment", evaluate: "train" };
// Which part of the recommender's estimate ({load, augment, tokenize, train, evaluate, save}) each shown
// stage is compared with; the augmenting estimate joins "prepare" while augmenting is not shown apart.
const ESTIMATE_PARTS = { prepare: ["load"], augment: ["augment"], tokenize: ["tokenize"], train: ["train"],
  save: ["save"], evaluate: ["evaluate"] };
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

const finite = (x) => typeof x === "number" && Number.isFinite(x);

/**
 * The stages of a job: {rows, evaluate, current, sub, startedAt, endedAt}.
 * rows: [{name, state: "done"|"current"|"pending"|"skipped"|"stopped", seconds, estimate}] in order
 * (seconds: its own time so far, null when it has not started); evaluate: null until an evaluation
 * started, else {state: "running"|"done", seconds, count, estimate}; current: the name of the current
 * row (null before the first stage event and after the job ended); sub: "evaluate" while an evaluation
 * runs; startedAt/endedAt: the trainer's first and last stage event times (unix seconds).
 */
export function timeline({ stages = [], metrics = [], evals = [], status = "", now = 0, finishedAt = null,
  estimate = null } = {}) {
  const events = stages.filter((ev) => ev && finite(ev.time) && typeof ev.stage === "string");
  const rows = STAGE_ORDER.map((name) => ({ name, start: null, end: null }));
  const save = STAGE_ORDER.indexOf("save");
  let frontier = -1;
  let beforeSave = -1; // the stage the run was in when it saved
  let doneAt = null;
  for (const ev of events) {
    if (ev.stage === "done") {
      doneAt = ev.time;
      continue;
    }
    const index = STAGE_ORDER.indexOf(ALIASES[ev.stage] || ev.stage);
    if (index < 0) continue;
    if (index <= frontier) {
      // An earlier stage again: the display stays where it is. After a "save", a new session
      // started: that save was an interruption's checkpoint, and the stage before it goes on.
      if (frontier === save && index < save && beforeSave >= 0) {
        rows[save].start = null;
        rows[save].end = null;
        frontier = beforeSave;
        rows[frontier].end = null;
      }
      continue;
    }
    if (index === save) beforeSave = frontier;
    if (frontier >= 0) rows[frontier].end = ev.time;
    rows[index].start = ev.time;
    frontier = index;
  }
  const terminal = TERMINAL.has(status);
  const lastTime = events.length ? events[events.length - 1].time : null;
  const endedAt = terminal ? (doneAt ?? (finite(finishedAt) ? finishedAt : lastTime)) : null;
  if (frontier >= 0 && terminal && rows[frontier].end === null) rows[frontier].end = endedAt ?? now;

  const shown = [];
  rows.forEach((row, i) => {
    let state;
    if (row.start === null) state = i < frontier || (terminal && frontier >= 0) ? "skipped" : "pending";
    else if (i < frontier) state = "done";
    else state = !terminal ? "current" : status === "succeeded" ? "done" : "stopped";
    if (state === "skipped" && OPTIONAL.has(row.name)) return;
    if (state === "pending" && OPTIONAL.has(row.name)) return;
    const seconds = row.start === null ? null : Math.max(0, (row.end ?? now) - row.start);
    shown.push({ name: row.name, state, seconds, estimate: partOf(estimate, row.name, rows) });
  });

  // Evaluations: from each "evaluate" stage event to the next event after it.
  const marks = [...events.map((ev) => ev.time), ...evals.map((e) => e.time), ...metrics.map((m) => m.time)]
    .filter(finite).sort((a, b) => a - b);
  let evaluate = null;
  for (const ev of events) {
    if (ev.stage !== "evaluate") continue;
    const next = marks.find((t) => t > ev.time);
    const end = next ?? (terminal ? endedAt ?? ev.time : now);
    evaluate = evaluate || { state: "done", seconds: 0, count: 0, estimate: partOf(estimate, "evaluate", rows) };
    evaluate.seconds += Math.max(0, end - ev.time);
    evaluate.state = next === undefined && !terminal ? "running" : "done";
  }
  if (evaluate) evaluate.count = evals.length;

  const current = !terminal && frontier >= 0 ? rows[frontier].name : null;
  return {
    rows: shown, evaluate, current, sub: evaluate?.state === "running" && current === "train" ? "evaluate" : null,
    startedAt: events.length ? events[0].time : null, endedAt,
  };
}

/** The recommender's seconds for a shown stage (null when unknown). */
function partOf(estimate, name, rows) {
  const parts = estimate?.stages;
  if (!parts || typeof parts !== "object") return null;
  const keys = [...ESTIMATE_PARTS[name]];
  if (name === "prepare" && rows.find((r) => r.name === "augment").start === null) keys.push("augment");
  const values = keys.map((k) => parts[k]).filter(finite);
  const sum = values.reduce((a, b) => a + b, 0);
  return values.length && sum >= 1 ? sum : null; // "estimated 0 s" says nothing
}

/**
 * The time left and what it rests on: {basis, left, speed, estimated, took}.
 * basis: "measured" (after the trainer's "estimate" event: its own speed), "estimate" (before it, from
 * the recommender's estimate and the time since the trainer started), "steps" (no estimate known: the
 * first steps' figure), "none" (nothing to go on yet), "done" (finished; `took` its time).
 * estimated: the recommender's figure for the whole run (seconds) when known.
 */
export function timeLeft({ status = "", metrics = [], measured = null, jobEstimate = null, startedAt = null,
  endedAt = null, createdAt = null, finishedAt = null, now = 0 } = {}) {
  const estimated = finite(measured?.estimated_s) ? measured.estimated_s
    : finite(jobEstimate?.seconds) ? jobEstimate.seconds : null;
  const last = metrics[metrics.length - 1];
  if (TERMINAL.has(status)) {
    const from = startedAt ?? createdAt;
    const to = endedAt ?? finishedAt;
    const took = finite(from) && finite(to) ? Math.max(0, to - from) : null;
    return { basis: "done", left: 0, speed: null, estimated, took };
  }
  if (measured) {
    // The metrics after the measurement carry the same measured speed, step by step.
    const later = last && (!finite(last.time) || !finite(measured.time) || last.time >= measured.time);
    const left = later && finite(last.eta_s) ? last.eta_s : measured.remaining_s;
    const speed = later && finite(last.tokens_per_s) ? last.tokens_per_s : measured.tokens_per_s;
    return { basis: "measured", left: finite(left) ? left : null, speed: finite(speed) ? speed : null, estimated };
  }
  if (finite(estimated) && !jobEstimate?.changed) {
    const spent = finite(startedAt) ? Math.max(0, now - startedAt) : 0;
    return { basis: "estimate", left: Math.max(0, estimated - spent), speed: null, estimated,
      started: finite(startedAt) };
  }
  if (last && finite(last.eta_s)) {
    return { basis: "steps", left: last.eta_s, speed: finite(last.tokens_per_s) ? last.tokens_per_s : null, estimated };
  }
  return { basis: "none", left: null, speed: null, estimated };
}
