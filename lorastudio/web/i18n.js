// Every string of the UI lives in i18n/en.json and i18n/zh.json (same keys; a test checks).
// Static text is marked in the HTML with a data-i18n attribute naming the key (text) and
// data-i18n-attr with "attribute:key" pairs separated by ";" (attributes); dynamic text goes through t().

const STORAGE_KEY = "lorastudio.lang";
export const LANGS = ["en", "zh"];

let current = "en";
const dictionaries = {};
const listeners = [];

/** The language to start in: a saved choice, else the browser's (zh* → zh), else English. */
export function initialLang() {
  try {
    const saved = localStorage.getItem(STORAGE_KEY);
    if (LANGS.includes(saved)) return saved;
  } catch { /* storage may be disabled; fall through */ }
  const prefs = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || "en"];
  return String(prefs[0] || "en").toLowerCase().startsWith("zh") ? "zh" : "en";
}

export async function loadDictionaries() {
  await Promise.all(LANGS.map(async (lang) => {
    const response = await fetch(`i18n/${lang}.json`, { cache: "no-cache" });
    if (!response.ok) throw new Error(`i18n/${lang}.json: HTTP ${response.status}`);
    dictionaries[lang] = await response.json();
  }));
}

export function lang() {
  return current;
}

export function has(key) {
  return Object.prototype.hasOwnProperty.call(dictionaries[current] || {}, key);
}

/** Translate `key`, filling {name} placeholders from `params`. A missing key shows itself, loudly. */
export function t(key, params = {}) {
  const dict = dictionaries[current] || {};
  let text = Object.prototype.hasOwnProperty.call(dict, key) ? dict[key] : (dictionaries.en || {})[key];
  if (text === undefined) {
    console.warn(`missing i18n key: ${key}`);
    return `⟦${key}⟧`;
  }
  return text.replace(/\{(\w+)\}/g, (_, name) => (name in params ? String(params[name]) : `{${name}}`));
}

export function applyStatic(root = document) {
  root.querySelectorAll("[data-i18n]").forEach((el) => {
    el.textContent = t(el.dataset.i18n);
  });
  root.querySelectorAll("[data-i18n-attr]").forEach((el) => {
    for (const pair of el.dataset.i18nAttr.split(";")) {
      const [attr, key] = pair.split(":").map((s) => s.trim());
      if (attr && key) el.setAttribute(attr, t(key));
    }
  });
}

export function setLang(next, { persist = true } = {}) {
  current = LANGS.includes(next) ? next : "en";
  document.documentElement.lang = current === "zh" ? "zh-CN" : "en";
  document.title = t("app.title");
  if (persist) {
    try { localStorage.setItem(STORAGE_KEY, current); } catch { /* not fatal */ }
  }
  applyStatic();
  for (const fn of listeners) fn(current);
}

/** Re-render dynamic parts when the language changes. */
export function onLangChange(fn) {
  listeners.push(fn);
}

export function formatNumber(value, digits = 0) {
  if (value === null || value === undefined || Number.isNaN(Number(value))) return "—";
  return Number(value).toLocaleString(current === "zh" ? "zh-CN" : "en-US", {
    maximumFractionDigits: digits,
    minimumFractionDigits: 0,
  });
}

/** Seconds as a short human duration in the current language ("2 min 5 s" / "2 分 5 秒"). */
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(Number(seconds))) return "—";
  let s = Math.max(0, Math.round(Number(seconds)));
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  if (h) return t("time.hm", { h, m });
  if (m) return t("time.ms", { m, s });
  return t("time.s", { s });
}
