// Small DOM helpers every step uses: element lookup and creation, the status line under a control,
// translated text with data parts, and an error in the user's words.

import { ApiError } from "./api.js";
import { t } from "./i18n.js";

export const $ = (id) => document.getElementById(id);

/** An element with attributes ("class", "text", "on<event>" handlers, the rest as attributes) and children. */
export function node(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) el.append(c);
  return el;
}

/** A status line (`<div class="state">`): kind "" | "loading" (with a spinner) | "error"; no text empties it. */
export function showStatus(id, kind, text) {
  const box = $(id);
  box.className = `state${kind ? ` state-${kind}` : ""}`;
  box.replaceChildren();
  if (!text) return;
  if (kind === "loading") {
    const spin = document.createElement("span");
    spin.className = "spinner";
    spin.setAttribute("aria-hidden", "true");
    box.append(spin);
  }
  box.append(document.createTextNode(text));
}

/** Like t(), but as nodes: the filled-in values (names, ids) are marked as data, not UI text. */
export function tNodes(key, params) {
  const marker = "\u0000";
  const text = t(key, Object.fromEntries(Object.keys(params).map((k) => [k, `${marker}${k}${marker}`])));
  return text.split(marker).map((part, i) => (i % 2
    ? node("span", { class: "data", translate: "no", text: String(params[part]) })
    : document.createTextNode(part)));
}

/** What went wrong, in the service's words (or "cannot be reached" / "needs an API key"). */
export function errorText(err) {
  if (err instanceof ApiError && err.status === 0) return t("error.offline");
  if (err instanceof ApiError && err.status === 401) return t("error.api_key");
  return t("error.server", { message: err.message || String(err) });
}
