"""Response models of the `/studio/*` routes, so /openapi.json describes them as it does the /v1 ones
(serve/objects.py). The routes still build plain dicts; these models only declare their shape.

Every route passes `response_model_exclude_unset=True` and every model allows extra keys, so the bytes
on the wire stay exactly what the builder made: no key added as null, none dropped. Numbers are
`int | float` (pydantic's smart union keeps 754 an int and 0.5 a float).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lorastudio.serve.objects import FineTuningJob

Number = int | float


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Coded(_Open):
    """A message as a code of the catalogue (GET /studio/messages) and the values it is filled with."""

    code: str
    params: dict[str, Any] = Field(default_factory=dict)


# --- models --------------------------------------------------------------------------------------
class StudioModel(_Open):
    id: str
    name: str
    params: str | Number | None = None
    disk_gb: Number | None = None
    min_memory_gb: Number | None = None
    description: str | None = None
    offline: bool | None = None
    smoke_test: bool | None = None
    hub_id: str | None = None
    cached: bool | None = None
    available: bool | None = Field(None, description="False: listed, but cannot run on this server.")
    unavailable: list[Coded] | None = Field(None, description="Why not: codes `no_gpu`, `offline`.")
    notes: list[Coded] | None = Field(None, description="What the first use costs: `not_downloaded`.")
    unavailable_reason: str | None = Field(None, description="The reasons in the request's language.")


class StudioModelList(_Open):
    data: list[StudioModel]


# --- data reports --------------------------------------------------------------------------------
class ReportIssue(_Open):
    row: int | None = None
    severity: Literal["error", "warning"]
    kind: str
    field: str | None = None
    message: str
    hint: str | None = None


class DatasetIssue(_Open):
    severity: Literal["error", "warning"]
    kind: str
    message: str
    hint: str | None = None


class ValidationReport(_Open):
    """PRODUCT.md's `validate --json` object, in the request's language, plus the file's id and name."""

    file: str = Field(description="The uploaded name (never the server's storage path).")
    file_id: str | None = None
    lang: Literal["en", "zh"] | None = None
    format: str | None = None
    schema_: str | None = Field(None, alias="schema")
    encoding: str | None = None
    rows_total: int
    rows_ok: int
    rows_rejected: int
    issues: list[ReportIssue]
    dataset_issues: list[DatasetIssue]
    sheet_row_offset: int | None = Field(None, description="XLSX: Excel's row of data row r is r + this.")


class PreviewSegment(_Open):
    text: str
    learned: bool = Field(description="The part the model learns to write (the answer); the rest is context.")


class PreviewRow(_Open):
    row: int
    messages: list[dict[str, Any]]
    segments: list[PreviewSegment] | None = Field(description="The text the model is trained on, rendered by the "
                                                  "base's chat template; null when its tokenizer is not here.")


class ColumnUse(_Open):
    column: str
    field: str | None = Field(description="instruction, input, response, system, or null (not used).")
    how: Literal["exact", "guessed", "unused"]


class DataPreview(_Open):
    file_id: str
    model: str
    schema_: str | None = Field(None, alias="schema")
    format: str | None = None
    template: str | None = Field(None, description="chatml, chat_template, plain, or null (no tokenizer here).")
    rows: list[PreviewRow]
    columns: list[ColumnUse]
    editable: bool = Field(description="A table whose mapping was guessed or left columns unused: the user may "
                           "change it (POST /studio/files/{id}/mapping).")


# --- recommendations -----------------------------------------------------------------------------
class Estimate(_Open):
    seconds: Number | None = None
    tokens: Number | None = None
    device: str | None = None
    device_code: Coded | None = None
    cpu_class: str | None = None
    tokens_per_s: Number | None = None
    stages: dict[str, Number | None] | None = Field(None, description="Seconds by stage: load, augment, tokenize, train, "
                                             "evaluate, save.")
    cost: Number | None = None
    currency: str | None = None


class Alternative(_Open):
    settings_changes: dict[str, Any] | None = None
    estimate: Estimate | None = None
    cost: Coded | None = Field(None, description="What this schedule gains or costs in recall, as a code.")


class Recommendation(_Open):
    settings: dict[str, Any] = Field(description="TrainConfig fields.")
    reasons: dict[str, str | None] = Field(description="One English line per setting (reason_codes renders them).")
    reason_codes: dict[str, Coded] | None = None
    warnings: list[str]
    warning_codes: list[Coded] | None = None
    estimate: Estimate
    alternatives: dict[str, Alternative] | None = None
    schedule: str | None = Field(None, description="full, quick or budget.")
    changed_settings: list[str] | None = Field(None, description="With `settings` in the request: which of the "
                                               "user's changes the time depends on.")
    changed_estimate: Estimate | None = Field(None, description="With `settings`: the time of the recommendation "
                                              "with the user's changes (null when none of them moves it).")


class MessageCatalogue(_Open):
    lang: Literal["en", "zh"]
    messages: dict[str, str] = Field(description="code → template (str.format names).")


# --- jobs ----------------------------------------------------------------------------------------
class MetricsList(_Open):
    data: list[dict[str, Any]] = Field(description="`metrics` and `eval` events of events.jsonl, oldest first.")


class FlippedQuestion(_Open):
    question: str | None = None
    flip: Literal["lost", "gained"] | None = None


class ForgettingSummary(_Open):
    questions: int | None = None
    base_right: int | None = Field(None, description="General questions the base model answers right.")
    tuned_right: int | None = None
    kept: int | None = Field(None, description="Of base_right, still right after tuning.")
    lost: int | None = None
    gained: int | None = None
    flipped: list[FlippedQuestion] = Field(default_factory=list, description="The questions lost or gained.")


class JobSummary(_Open):
    duration_s: Number | None = None
    final_loss: Number | None = None
    steps: int | None = None
    total_steps: int | None = None
    rows: int | None = Field(None, description="Usable rows of the training file.")
    valid_loss: Number | None = None
    forgetting: ForgettingSummary | None = Field(None, description="The forgetting check's result (general "
                                                 "questions, base vs tuned), once it was run; absent before.")


class StudioJob(FineTuningJob):
    model_config = ConfigDict(extra="allow")

    studio: JobSummary


class StudioJobList(_Open):
    object: Literal["list"]
    data: list[StudioJob]
    has_more: bool


class JobDeleted(_Open):
    id: str
    object: Literal["fine_tuning.job"]
    deleted: bool


class CompareAnswer(_Open):
    question: str
    model: str
    fine_tuned_model: str
    base_answer: str
    tuned_answer: str


class GgufCheck(_Open):
    """The GGUF download's fidelity check (serve/studio_export.py): numbers, not sentences; `problems`
    are the check's own (English) words for a labelled detail."""
    job_id: str
    status: Literal["none", "unchecked", "passed", "failed", "skipped"]
    estimate_s: int | None = Field(None, description="Build + check time here (CPU); null when not known")
    type: str | None = None
    agreeing: int | None = None
    identical: int | None = None
    first_token_agreement: int | None = None
    total: int | None = None
    required: int | None = None
    criterion: str | None = None
    tokens: int | None = None
    seconds: float | None = None
    problems: list[str] | None = None
    questions: list[dict[str, Any]] | None = None


def binary(media: str, what: str) -> dict:
    """OpenAPI `responses=` for a route that answers with a file."""
    return {200: {"description": what, "content": {media: {"schema": {"type": "string", "format": "binary"}}}}}
