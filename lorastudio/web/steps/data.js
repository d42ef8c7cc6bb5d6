// Step 1, the data: upload (input or drop zone), the service's validation report, one table line
// per problem row, the rejected-rows download, and the preview: the first rows as the model will see
// them (the chosen base's chat template, the learned answer highlighted) with the table's column mapping,
// which the user can change when it was guessed (the service writes a new file with that mapping, and
// the page goes on with it). The last uploaded file is remembered over a reload.

import { api, ApiError } from "../api.js";
import { $, errorText, node, showStatus, tNodes } from "../dom.js";
import { formatNumber, has, lang, t, tOr } from "../i18n.js";
import * as store from "../store.js";

const FILE_KEY = "lorastudio.file";

/**
 * Wire the upload controls and the report's render. `dataChanged()` is called when the file or its
 * report changes (the settings depend on them); its promise is awaited after a report has loaded.
 */
export function initData({ dataChanged }) {
  store.subscribe(["file", "report", "lang"], renderReport);
  store.subscribe(["report", "preview", "previewError", "previewLoading", "lang"], renderPreview);
  store.subscribe("lang", askAgainInPageLang);
  store.subscribe("model", () => {
    const preview = store.get("preview");
    if (store.get("report") && preview && preview.model !== store.get("model")) loadPreview();
  });
  $("mapping-apply").addEventListener("click", () => applyMapping(dataChanged));
  const upload = (file) => uploadFile(file, dataChanged);
  $("upload-input").addEventListener("change", (e) => upload(e.target.files[0]));
  const dz = $("dropzone");
  for (const name of ["dragenter", "dragover"]) {
    dz.addEventListener(name, (e) => { e.preventDefault(); dz.classList.add("dragging"); });
  }
  for (const name of ["dragleave", "drop"]) dz.addEventListener(name, () => dz.classList.remove("dragging"));
  dz.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer?.files?.length) upload(e.dataTransfer.files[0]);
  });
}

/** At start: the file uploaded last time and its report, if the service still has it. */
export async function restoreFile({ dataChanged }) {
  const id = store.recall(FILE_KEY);
  if (id) await openFile(id, dataChanged);
}

/**
 * Show an uploaded file (by id) and its report, e.g. the data of a job trained again; remembered as the
 * last file. A file the service no longer has leaves no file chosen.
 */
export async function openFile(id, dataChanged = async () => {}) {
  if (store.get("file")?.id === id && store.get("report")) return;
  let filename = "";
  store.set({ file: { id, filename }, report: null });
  store.remember(FILE_KEY, id);
  try {
    filename = (await api.file(id)).filename || "";
  } catch { /* the report call below decides whether the file still exists */ }
  if (store.get("file")?.id !== id) return;
  store.set({ file: { id, filename } });
  await loadReport(dataChanged);
}

async function uploadFile(file, dataChanged) {
  if (!file) return;
  store.set({ file: null, report: null });
  dataChanged();
  showStatus("upload-state", "loading", t("data.uploading", { name: file.name }));
  try {
    const uploaded = await api.uploadFile(file);
    store.set({ file: { id: uploaded.id, filename: uploaded.filename || file.name } });
    store.remember(FILE_KEY, uploaded.id);
    await loadReport(dataChanged);
  } catch (err) {
    showStatus("upload-state", "error", t("data.upload_failed", { name: file.name, message: uploadError(err, file) }));
  } finally {
    $("upload-input").value = ""; // so the same (fixed) file name can be chosen again
  }
}

/** Why an upload was refused: the limits in the page's words (the service's message only for the rest). */
function uploadError(err, file) {
  if (err instanceof ApiError && (err.code === "file_too_large" || err.code === "request_too_large" || err.status === 413)) {
    return t("data.too_large", { size: formatSize(file.size) });
  }
  if (err instanceof ApiError && err.code === "empty_file") return t("data.empty_upload");
  return errorText(err);
}

function formatSize(bytes) {
  const mb = Number(bytes) / (1024 * 1024);
  return mb >= 1 ? `${formatNumber(mb, 1)} MB` : `${formatNumber(Number(bytes) / 1024, 0)} KB`;
}

async function loadReport(dataChanged) {
  const file = store.get("file");
  showStatus("upload-state", "loading", t("data.checking", { name: file.filename }));
  let report = null;
  try {
    report = await api.report(file.id);
    showStatus("upload-state", "", "");
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      if (store.get("file")?.id === file.id) {
        store.remember(FILE_KEY, null);
        store.set({ file: null, report: null });
      }
      showStatus("upload-state", "", "");
      return;
    }
    if (err instanceof ApiError && err.code === "too_many_rows" && err.params) {
      // The server's row limit, in the page's words: the file, its rows, the limit and what to do.
      showStatus("upload-state", "error", "");
      $("upload-state").append(...tNodes("data.too_many_rows", { file: err.params.file || file.filename,
        rows: formatNumber(err.params.rows), limit: formatNumber(err.params.limit) }));
    } else showStatus("upload-state", "error", t("data.report_failed", { message: errorText(err) }));
  }
  if (store.get("file")?.id !== file.id) return; // another file was uploaded meanwhile
  store.set({ file: { ...file, filename: file.filename || report?.file || "" }, report });
  if (report) loadPreview();
  await dataChanged();
}

// ---------------------------------------------------------------------------------------------
// the preview: the first rows as the model sees them, and the column mapping

async function loadPreview() {
  const file = store.get("file");
  const model = store.get("model") || "default";
  if (!file || !(store.get("report")?.rows_ok > 0)) {
    store.set({ preview: null, previewError: null, previewLoading: false });
    return;
  }
  store.set({ previewLoading: true, previewError: null });
  try {
    const preview = await api.preview(file.id, model);
    if (store.get("file")?.id !== file.id || (store.get("model") || "default") !== model) return;
    store.set({ preview: { ...preview, file: file.id }, previewLoading: false });
  } catch (err) {
    if (store.get("file")?.id !== file.id) return;
    store.set({ preview: null, previewError: err, previewLoading: false });
  }
}

/** The chosen use of each column, from the selects (only when the mapping may be changed). */
function chosenMapping() {
  const fields = {};
  for (const select of document.querySelectorAll("#mapping-fields select")) fields[select.dataset.column] = select.value || null;
  return fields;
}

async function applyMapping(dataChanged) {
  const file = store.get("file");
  if (!file) return;
  $("mapping-apply").disabled = true;
  showStatus("mapping-state", "loading", t("data.mapping_applying"));
  try {
    const made = await api.remap(file.id, chosenMapping());
    showStatus("mapping-state", "", "");
    store.set({ file: { id: made.id, filename: made.filename || "" }, report: null, preview: null });
    store.remember(FILE_KEY, made.id);
    dataChanged();
    await loadReport(dataChanged);
  } catch (err) {
    showStatus("mapping-state", "error", t("data.mapping_failed", { message: errorText(err) }));
  } finally {
    $("mapping-apply").disabled = false;
  }
}

const FIELD_CHOICES = ["instruction", "input", "response", "system", ""];

function renderMapping(preview) {
  const box = $("mapping");
  const columns = preview?.columns || [];
  box.hidden = columns.length === 0;
  if (box.hidden) return;
  const editable = Boolean(preview.editable);
  $("mapping-note").textContent = t(editable ? "data.mapping_guessed" : "data.mapping_exact");
  $("mapping-apply").hidden = !editable;
  $("mapping-fields").replaceChildren(...columns.map((c, i) => {
    const id = `mapping-${i}`;
    const label = node("label", { for: id },
      node("span", { class: "data", translate: "no", text: c.column }),
      c.how === "guessed" ? node("span", { class: "tag tag-guessed", text: t("data.mapping_tag_guessed") }) : null);
    const select = node("select", { id, "data-testid": "mapping-select", "data-column": c.column, disabled: !editable });
    for (const f of FIELD_CHOICES) select.append(node("option", { value: f, text: t(`data.use_${f || "unused"}`) }));
    select.value = c.field || "";
    return node("div", { class: "field mapping-field" }, label, select);
  }));
}

function renderPreview() {
  const box = $("data-preview");
  const report = store.get("report");
  const shown = store.get("preview");
  const preview = shown && shown.file === store.get("file")?.id ? shown : null; // never another file's rows
  const error = store.get("previewError");
  box.hidden = !(report?.rows_ok > 0) || (!preview && !error && !store.get("previewLoading"));
  if (box.hidden) return;
  if (store.get("previewLoading") && !preview) showStatus("preview-state", "loading", t("data.preview_loading"));
  else if (error) showStatus("preview-state", "error", t("data.preview_failed", { message: errorText(error) }));
  else showStatus("preview-state", "", "");
  renderMapping(preview);
  const rows = preview?.rows || [];
  $("preview-rows").replaceChildren(...rows.map((row) => node("figure", { class: "preview-row", "data-row": row.row },
    node("figcaption", { class: "small", text: t("data.preview_row", { row: row.row }) }),
    row.segments
      ? node("pre", { class: "preview-text data", tabindex: "0", translate: "no" },
        ...row.segments.map((seg) => (seg.learned ? node("mark", { text: seg.text }) : document.createTextNode(seg.text))))
      : node("dl", { class: "preview-messages" }, ...row.messages.flatMap((m) => [
        node("dt", { text: t(`data.role_${m.role}`) }), node("dd", { class: "data", text: m.content })])))));
}

/** A service that localises its report (Accept-Language) is asked again after a language switch. */
function askAgainInPageLang() {
  const file = store.get("file");
  const report = store.get("report");
  if (!file || !report?.lang || report.lang === lang()) return;
  api.report(file.id).then((fresh) => {
    if (store.get("file")?.id === file.id) store.set({ report: fresh });
  }).catch(() => {});
}

function groupIssuesByRow(issues) {
  const rows = new Map();
  for (const issue of issues) {
    if (issue.row === null || issue.row === undefined) continue;
    if (!rows.has(issue.row)) rows.set(issue.row, []);
    rows.get(issue.row).push(issue);
  }
  return [...rows.entries()].sort((a, b) => a[0] - b[0]);
}

function issueKind(issue) {
  return tOr(`kind.${issue.kind}`, String(issue.kind || "").replaceAll("_", " "));
}

// The service's hints carry specifics (e.g. the repaired text): shown when they are in the page's
// language (a report says which with "lang", English when absent); otherwise our own line per kind.
function reportSpeaksUiLang() {
  return (store.get("report")?.lang || "en") === lang();
}

function issueHint(issue) {
  if (reportSpeaksUiLang() && issue.hint) return issue.hint;
  return tOr(`hint.${issue.kind}`, issue.hint || "");
}

/** A field in the page's words; a column named in the user's file (e.g. "答案") is data, as they wrote it. */
function fieldName(field) {
  if (!field) return "—";
  return has(`field.${field}`) ? t(`field.${field}`) : node("span", { class: "data", translate: "no", text: field });
}

function renderReport() {
  const report = store.get("report");
  const file = store.get("file");
  const box = $("validation");
  if (!report) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  const ok = report.rows_ok ?? 0;
  const total = report.rows_total ?? 0;
  const rejected = report.rows_rejected ?? Math.max(0, total - ok);
  const summary = $("validation-summary");
  summary.className = `summary ${ok === 0 ? "summary-bad" : rejected ? "summary-warn" : "summary-good"}`;
  const name = file?.filename || report.file || "";
  if (ok === 0) summary.replaceChildren(...tNodes("data.summary_none", { total, name }));
  else if (rejected) summary.replaceChildren(...tNodes("data.summary_some", { ok, total, rejected, name }));
  else summary.replaceChildren(...tNodes("data.summary_all", { ok, name }));

  const link = $("download-rejected");
  link.hidden = !rejected || !file;
  if (file) link.href = api.rejectedUrl(file.id);

  const dsList = $("dataset-issues");
  dsList.replaceChildren();
  const fileLevel = [
    ...(report.dataset_issues || []),
    ...(report.issues || []).filter((i) => i.row === null || i.row === undefined),
  ];
  for (const issue of fileLevel) {
    const sev = issue.severity === "error" ? "error" : "warning";
    dsList.append(node("li", { class: `ds-issue ds-${sev}` },
      node("strong", { text: `${t(`severity.${sev}`)}: ` }),
      node("span", { text: tOr(`dskind.${issue.kind}`, issue.message || "", { ok, total }) }),
      issue.hint || has(`dshint.${issue.kind}`)
        ? node("span", { class: "muted", text: ` ${tOr(`dshint.${issue.kind}`, issue.hint || "")}` })
        : null));
  }

  const rows = groupIssuesByRow(report.issues || []);
  $("issues-wrap").hidden = rows.length === 0;
  const body = $("issues-body");
  body.replaceChildren();
  for (const [row, issues] of rows) {
    // One wrapper per cell: on phones each cell is a two-column grid (label, content).
    const cell = (label, items, cls = "") => node("td", { "data-label": label, class: cls },
      node("div", {}, ...items.map((item) => (typeof item === "string" ? node("div", { text: item }) : node("div", {}, item)))));
    const severe = issues.some((i) => i.severity === "error");
    const tr = node("tr", { "data-testid": "validation-issue", "data-row": row, class: severe ? "sev-error" : "sev-warning" },
      node("td", { "data-label": t("data.col_row"), class: "num" }, node("div", {}, node("strong", { text: String(row) }),
        // A spreadsheet user looks for the row Excel shows (the header and any title rows above it count).
        Number.isInteger(report.sheet_row_offset)
          ? node("span", { class: "excel-row", "data-testid": "validation-excel-row",
            text: t("data.excel_row", { n: row + report.sheet_row_offset }) }) : null)),
      cell(t("data.col_kind"), issues.map((i) => `${issueKind(i)}${i.severity === "warning" ? ` (${t("severity.warning")})` : ""}`), "kind"),
      cell(t("data.col_field"), issues.map((i) => fieldName(i.field))),
      cell(t("data.col_message"), issues.map((i) => i.message || ""), "data"),
      // In English the service's own hints are shown (they may quote the row's text): data, not UI.
      cell(t("data.col_hint"), issues.map(issueHint), reportSpeaksUiLang() ? "hint data" : "hint"));
    body.append(tr);
  }
}
