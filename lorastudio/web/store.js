// The page's one state object. Every module reads it with get(key) and changes it with set(patch);
// subscribe(keys, fn) calls fn after each set() that named one of those keys (whether or not the
// value differs), once per set() even when several of its keys were named, in subscription order.
// No other module keeps mutable state of its own: renders are functions of this state, subscribed
// to the keys they read. remember()/recall() are the few values kept over a reload (localStorage).

const state = {
  // language (i18n.js)
  lang: "en",
  dictionaries: {}, // lang → {key: text}
  // 1. data
  file: null, // {id, filename}
  report: null, // the service's validation report
  preview: null, // the first rows as the model sees them, and the column mapping ({file, model, …} or null)
  previewError: null,
  previewLoading: false,
  // 2. model and settings
  models: null, // the catalogue; null while loading
  modelsError: null,
  model: "", // the chosen base model id
  task: "qa",
  rec: null, // the recommendation
  recError: null,
  recLoading: false,
  recRequest: 0, // sequence number: only the latest recommendation request may land
  overrides: {}, // settings the user changed in the advanced panel (TrainConfig names)
  changedEstimate: null, // the service's estimate of those changes: {for, estimate, error} (settings.js)
  quick: false, // the user chose the quick preview (opt-in; the full schedule is the default)
  catalogues: {}, // lang → {messages, pending}: the recommender's message templates
  // playground and evaluation (steps/playground.js, steps/eval.js)
  pgModels: null, // {bases, adapters, limits} from /studio/playground/models; null while loading
  pgModelsError: null,
  pgAbort: null, // the AbortController of the side-by-side answer being streamed
  chat: [], // the conversation with model A: [{role, content}], sent with each turn
  setKeys: {}, // question → key facts, from an uploaded question file
  setRun: null, // the question set's run: {a, b, questions, rows: [{a, b}], summary, running}
  forgetting: {}, // the forgetting check per job id: {status: loading|none|waiting|running|done|error, …result}
  evalQuestions: null, // the held-out questions read from a file: {filename, questions}
  evalRun: null, // the before/after run on them (same shape as setRun)
  // 3. job
  starting: false, // a "start training" request is in flight
  jobId: null, // the job the panel shows (set before the job itself has loaded)
  job: null,
  metrics: [], // metrics events, by step
  evals: [], // eval events (validation loss), by step
  stages: [], // every stage event of the job, in the order they came (timeline.js reads them)
  measured: null, // the job's last "estimate" event: its own speed measured after the first steps
  jobEstimate: null, // the recommender's estimate for this job ({seconds, stages, changed}) when known
  clock: 0, // the browser's time (unix seconds), ticking once a second while the job is not finished
  ticker: null, // the interval that moves the clock
  streamProblem: false, // the live stream is reconnecting
  stream: null, // the EventSource of the live stream
  jobRefresh: 0, // sequence number: only the latest job refresh may land
  jobs: null, // the job list; null while loading
  jobsError: null,
  jobAction: null, // a pause/resume/cancel/delete/clone request in flight: {id, action}
  // 5. use
  useJobId: null, // the succeeded job whose downloads the user chose (else the shown one, else the newest)
  snippetKind: "python",
};

const subscribers = new Map(); // key → [fn]

function known(key) {
  if (!Object.prototype.hasOwnProperty.call(state, key)) throw new Error(`unknown state key: ${key}`);
  return key;
}

export function get(key) {
  return state[known(key)];
}

/** Set every key of `patch`, then call the subscribers of those keys (each once). */
export function set(patch) {
  const due = [];
  for (const [key, value] of Object.entries(patch)) {
    state[known(key)] = value;
    for (const fn of subscribers.get(key) || []) if (!due.includes(fn)) due.push(fn);
  }
  for (const fn of due) fn();
}

/** Call fn after every set() naming one of `keys` (a key or a list). Returns the unsubscribe function. */
export function subscribe(keys, fn) {
  const list = Array.isArray(keys) ? keys : [keys];
  for (const key of list) {
    known(key);
    if (!subscribers.has(key)) subscribers.set(key, []);
    subscribers.get(key).push(fn);
  }
  return () => {
    for (const key of list) subscribers.set(key, subscribers.get(key).filter((f) => f !== fn));
  };
}

/** Keep a value over a reload (null forgets it). Private browsing may refuse: not fatal. */
export function remember(name, value) {
  try {
    if (value === null || value === undefined) localStorage.removeItem(name);
    else localStorage.setItem(name, value);
  } catch { /* private mode: the URL hash still keeps the job */ }
}

export function recall(name) {
  try { return localStorage.getItem(name); } catch { return null; }
}
