// Thin wrappers over the service API (docs/ARCHITECTURE.md "Service ↔ web UI").
// Errors become ApiError with the server's plain-words message when it sent one
// (OpenAI shape {"error": {"message"}} or FastAPI's {"detail"}).

import { lang } from "./i18n.js";

export class ApiError extends Error {
  constructor(message, status, param = null, code = null, params = null) {
    super(message);
    this.status = status;
    this.param = param;
    this.code = code; // the service's error code (e.g. file_too_large): the page may say it in its own words
    this.params = params; // the values behind some codes (too_many_rows: {file, rows, limit})
  }
}

async function errorFrom(response) {
  let message = "";
  let param = null;
  let code = null;
  let params = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = typeof body.error === "string" ? body.error : body.error.message || "";
      param = body.error.param || null;
      code = body.error.code || null;
      params = body.error.params || null;
    } else if (body && body.detail) {
      message = typeof body.detail === "string"
        ? body.detail
        : body.detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
    }
  } catch { /* not JSON */ }
  return new ApiError(message || `HTTP ${response.status}`, response.status, param, code, params);
}

async function request(method, url, body, { json = true } = {}) {
  const headers = { "Accept-Language": lang() };
  const init = { method, headers };
  if (body instanceof FormData) {
    init.body = body;
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (err) {
    // fetch only throws when the server cannot be reached at all.
    throw new ApiError("", 0);
  }
  if (!response.ok) throw await errorFrom(response);
  return json ? response.json() : response;
}

export const api = {
  models: () => request("GET", "/studio/models"),
  uploadFile(file) {
    const form = new FormData();
    form.append("purpose", "fine-tune");
    form.append("file", file, file.name);
    return request("POST", "/v1/files", form);
  },
  file: (id) => request("GET", `/v1/files/${encodeURIComponent(id)}`),
  report: (id) => request("GET", `/studio/files/${encodeURIComponent(id)}/report`),
  preview: (id, model) => request("GET", `/studio/files/${encodeURIComponent(id)}/preview?model=${encodeURIComponent(model)}`),
  remap: (id, fields) => request("POST", `/studio/files/${encodeURIComponent(id)}/mapping`, { fields }),
  rejectedUrl: (id) => `/studio/files/${encodeURIComponent(id)}/rejected`,
  recommend: (trainingFile, model, task, quick = false, settings = null) =>
    request("POST", "/studio/recommend", { training_file: trainingFile, model, task, quick: Boolean(quick),
      ...(settings ? { settings } : {}) }),
  messages: (code) => request("GET", `/studio/messages?lang=${encodeURIComponent(code)}`),
  createJob: (body) => request("POST", "/v1/fine_tuning/jobs", body),
  job: (id) => request("GET", `/v1/fine_tuning/jobs/${encodeURIComponent(id)}`),
  jobs: () => request("GET", "/v1/fine_tuning/jobs?limit=100"),
  cancel: (id) => request("POST", `/v1/fine_tuning/jobs/${encodeURIComponent(id)}/cancel`),
  pause: (id) => request("POST", `/v1/fine_tuning/jobs/${encodeURIComponent(id)}/pause`),
  resume: (id) => request("POST", `/v1/fine_tuning/jobs/${encodeURIComponent(id)}/resume`),
  studioJobs: () => request("GET", "/studio/jobs?limit=100"),
  deleteJob: (id) => request("DELETE", `/studio/jobs/${encodeURIComponent(id)}`),
  metrics: (id) => request("GET", `/studio/jobs/${encodeURIComponent(id)}/metrics`),
  streamUrl: (id) => `/studio/jobs/${encodeURIComponent(id)}/stream`,
  compare: (model, fineTunedModel, question, maxTokens) =>
    request("POST", "/studio/compare", { model, fine_tuned_model: fineTunedModel, question, max_tokens: maxTokens }),
  ggufCheck: (id) => request("GET", `/studio/jobs/${encodeURIComponent(id)}/gguf-check`),
  buildGguf: (id) => request("POST", `/studio/jobs/${encodeURIComponent(id)}/gguf-check`),
  downloadUrl: (id, kind) => `/studio/jobs/${encodeURIComponent(id)}/download/${kind}`,
};
