// How values look on the page: setting names and values, model sizes, money, times, job states,
// and the recommender's message templates filled in. Pure functions of their arguments and the language.

import { formatNumber, has, lang, t, tOr } from "./i18n.js";

export function settingLabel(key) {
  return tOr(`setting.${key}`, key);
}

export function formatSetting(key, value) {
  if (value === null || value === undefined || value === "") return t("settings.auto");
  if (typeof value === "boolean") return t(value ? "settings.yes" : "settings.no");
  if (typeof value === "number") {
    if (key === "learning_rate" || (Math.abs(value) > 0 && Math.abs(value) < 0.001)) return value.toExponential(1);
    return formatNumber(value, 4);
  }
  if (typeof value === "string" && has(`choice.${value}`)) return t(`choice.${value}`);
  if (Array.isArray(value)) return value.join(", ");
  return String(value);
}

/** A parameter count (number or the catalogue's "0.49B") as 494M / 1.5B. */
export function formatParams(params) {
  if (typeof params === "number") {
    if (params >= 1e9) return `${formatNumber(params / 1e9, 1)}B`;
    if (params >= 1e6) return `${formatNumber(params / 1e6, 0)}M`;
    if (params >= 1e3) return `${formatNumber(params / 1e3, 0)}K`;
    return String(params);
  }
  return params ? String(params) : "";
}

export function formatMoney(amount, currency) {
  if (amount === null || amount === undefined || !Number.isFinite(Number(amount))) return "—";
  const cur = currency || "";
  const text = formatNumber(amount, 2);
  if (cur === "CNY" || cur === "¥") return `¥${text}`;
  if (cur === "USD" || cur === "$") return `$${text}`;
  return cur ? `${text} ${cur}` : text;
}

/** A unix time as a short local date and time. */
export function formatTime(unix) {
  if (!unix) return "";
  return new Date(unix * 1000).toLocaleString(lang() === "zh" ? "zh-CN" : "en-US", {
    month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
  });
}

export function statusText(status) {
  return tOr(`status.${status}`, status || "");
}

/** A catalogue model's name in the page's language (the service's name when the page has none). */
export function modelName(id, fallback) {
  return tOr(`model.${id}.name`, fallback || id);
}

/**
 * One coded message of the service ({code, params}) from its catalogue (code → template), as parts:
 * [{text}] for the template's words, [{text, param: true}] for each filled-in value (numbers, names:
 * data, not UI text). Templates use Python's str.format names, `{rows}`, and `{{`/`}}` for braces (a
 * format spec such as `{n:,}` is ignored: the service sends its params formatted); a param "@key"
 * is the catalogue's own text for that key, as the service renders it. Null when the code, a param
 * or a referenced key is missing, so the caller can fall back to the service's English line.
 */
export function messageParts(messages, coded) {
  const template = coded && messages ? messages[coded.code] : undefined;
  if (typeof template !== "string") return null;
  const params = coded.params || {};
  const parts = [];
  let missing = false;
  let last = 0;
  const add = (text, param = false) => {
    if (text) parts.push(param ? { text, param } : { text });
  };
  for (const match of template.matchAll(/\{\{|\}\}|\{(\w+)(?:![rsa])?(?::[^{}]*)?\}/g)) {
    add(template.slice(last, match.index));
    last = match.index + match[0].length;
    if (match[0] === "{{" || match[0] === "}}") {
      add(match[0][0]);
      continue;
    }
    const value = Object.prototype.hasOwnProperty.call(params, match[1]) ? params[match[1]] : undefined;
    if (value === null || value === undefined) missing = true;
    else if (typeof value === "string" && value.startsWith("@")) {
      const inner = messageParts(messages, { code: value.slice(1), params: {} });
      if (inner === null) missing = true;
      else parts.push(...inner.map(({ text }) => ({ text })));
    } else add(String(value), true);
  }
  add(template.slice(last));
  return missing ? null : parts;
}
