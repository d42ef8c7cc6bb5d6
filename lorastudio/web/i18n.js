// Every string of the UI lives in i18n/en.json and i18n/zh.json (same keys; a test checks).
// Static text is marked in the HTML with a data-i18n attribute naming the key (text) and
// data-i18n-attr with "attribute:key" pairs separated by ";" (attributes); dynamic text goes through t().
// The language and the dictionaries live in the store ("lang", "dictionaries"): a module that shows
// text subscribes its render to "lang".

import * as store from "./store.js";

const STORAGE_KEY = "lorastudio.lang";
export const LANGS = ["en", "zh"];

/** The language to start in: a saved choice, else the browser's (zh* → zh), else English. */
export function initialLang() {
  const saved = store.recall(STORAGE_KEY);
  if (LANGS.includes(saved)) return saved;
  const prefs = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || "en"];
  return String(prefs[0] || "en").toLowerCase().startsWith("zh") ? "zh" : "en";
}

/**
 * Fetch both dictionaries, then have every language change apply them to the page's static text
 * (subscribed here, before any step subscribes its render, so static text changes first).
 */
export async function loadDictionaries() {
  const entries = await Promise.all(LANGS.map(async (code) => {
    const response = await fetch(`i18n/${code}.json`, { cache: "no-cache" });
    if (!response.ok) throw new Error(`i18n/${code}.json: HTTP ${response.status}`);
    return [code, await response.json()];
  }));
  store.set({ dictionaries: Object.fromEntries(entries) });
  store.subscribe("lang", applyToDocument);
}

export function lang() {
  return store.get("lang");
}

function dictionary(code) {
  return store.get("dictionaries")[code] || {};
}

export function has(key) {
  return Object.prototype.hasOwnProperty.call(dictionary(lang()), key);
}

/** Translate `key`, filling {name} placeholders from `params`. A missing key shows itself, loudly. */
export function t(key, params = {}) {
  const dict = dictionary(lang());
  const text = Object.prototype.hasOwnProperty.call(dict, key) ? dict[key] : dictionary("en")[key];
  if (text === undefined) {
    console.warn(`missing i18n key: ${key}`);
    return `⟦${key}⟧`;
  }
  return text.replace(/\{(\w+)\}/g, (_, name) => (name in params ? String(params[name]) : `{${name}}`));
}

/** A key's translation if the dictionary has it, else the fallback (server text, shown as data). */
export function tOr(key, fallback, params) {
  return has(key) ? t(key, params) : fallback;
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

function applyToDocument() {
  document.documentElement.lang = lang() === "zh" ? "zh-CN" : "en";
  document.title = t("app.title");
  applyStatic();
}

/** Switch the page's language (remembered unless `persist` is false); every "lang" subscriber re-renders. */
export function setLang(next, { persist = true } = {}) {
  const code = LANGS.includes(next) ? next : "en";
  if (persist) store.remember(STORAGE_KEY, code);
  store.set({ lang: code });
}

export function formatNumber(value, digits = 0) {
  if (value === null || value === undefined || Number.isNaN(Number(value))) return "—";
  return Number(value).toLocaleString(lang() === "zh" ? "zh-CN" : "en-US", {
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
