// The studio page: upload → report → settings → train (live) → compare → use.
// No logic of its own that the API lacks: it renders what the service returns.
//
// This entry loads the texts and starts the steps (lorastudio/web/steps/, one module per card);
// their state lives in store.js and each step re-renders from it. The only link between steps that
// is not state: a new file or report asks for fresh settings.

import { $ } from "./dom.js";
import { initialLang, lang, loadDictionaries, setLang } from "./i18n.js";
import { initCompare } from "./steps/compare.js";
import { initData, restoreFile } from "./steps/data.js";
import { initEval } from "./steps/eval.js";
import { initForgetting } from "./steps/forgetting.js";
import { initJob, restoreJob, watchJobs } from "./steps/job.js";
import { initPlayground, loadPlaygroundModels } from "./steps/playground.js";
import { initSettings, loadModels, recommendAfresh } from "./steps/settings.js";
import { initUse } from "./steps/use.js";

async function boot() {
  try {
    await loadDictionaries();
  } catch (err) {
    const box = $("boot-error");
    box.hidden = false;
    box.textContent = `页面文字加载失败 / The page's texts could not be loaded: ${err.message}`;
    return;
  }
  const steps = { dataChanged: recommendAfresh };
  initData(steps);
  initSettings();
  initJob();
  initCompare();
  initPlayground();
  initEval();
  initForgetting();
  initUse();
  $("lang-toggle").addEventListener("click", () => setLang(lang() === "zh" ? "en" : "zh"));
  setLang(initialLang(), { persist: false }); // the first render of every step
  await loadModels();
  await loadPlaygroundModels();
  await restoreFile(steps);
  await restoreJob();
  await watchJobs();
  document.body.dataset.ready = "true";
}

boot();
