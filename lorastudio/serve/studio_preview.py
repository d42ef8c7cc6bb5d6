"""The data preview of the studio (routes in api_studio.py): the first usable rows as the model will see
them — the mapped fields, rendered by the training's own chat template (train.tokenize.render_segments,
the part the model learns to write marked) — and the column mapping of a table, which the user may
change when it was guessed: the changed mapping is written as a new file (JSONL, one line per source
row, so row numbers stay the same), which then goes through the usual report.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

# The fields a table column can be mapped to (data.columns.ALIASES' single-turn ones).
MAPPABLE = ("instruction", "input", "response", "system")
_tokenizers: dict[str, Any] = {}
_tokenizer_lock = threading.Lock()


def tokenizer_for(model: str) -> Any | None:
    """The base's tokenizer (loaded once per server), or None when it cannot be loaded here."""
    with _tokenizer_lock:
        if model not in _tokenizers:
            from lorastudio.models import ModelError, load_tokenizer

            try:
                _tokenizers[model] = load_tokenizer(model)
            except (ModelError, OSError, ValueError):
                _tokenizers[model] = None
        return _tokenizers[model]


def column_mapping(report: Any) -> dict[str, Any]:
    """Each source column with the field it feeds and how it was chosen (exact name, guessed, unused);
    `editable` when anything was guessed or left unused in a table."""
    from lorastudio.data import DataError
    from lorastudio.data.schema import IGNORED_PREFIX, resolve_columns

    columns = [c for c in (report.columns or []) if not str(c).startswith(IGNORED_PREFIX)]
    table = report.format in ("csv", "tsv", "xlsx")
    if not table or not columns:
        return {"columns": [], "editable": False}
    try:
        cmap = resolve_columns(columns, report.file, table=True)
    except DataError:
        return {"columns": [], "editable": False}
    guessed = {src for src, _ in cmap.mapped}
    field_of = {col: canon for canon, col in cmap.fields.items()}
    out = [{"column": col, "field": field_of.get(col),
            "how": "guessed" if col in guessed else "exact" if col in field_of else "unused"} for col in columns]
    return {"columns": out, "editable": bool(guessed) or any(c["how"] == "unused" for c in out)}


def preview(report: Any, model: str, rows: int = 3) -> dict[str, Any]:
    """The first `rows` usable rows: messages, and the text the model is trained on in segments
    (`learned`: the answer the model learns to write; the rest is context)."""
    from lorastudio.train.tokenize import TemplateError, render_segments

    tokenizer = tokenizer_for(model)
    out = []
    for conv in report.conversations[:rows]:
        messages = [{"role": m.role, "content": m.content} for m in conv.messages]
        segments = None
        if tokenizer is not None:
            try:
                segments = [{"text": text, "learned": learned}
                            for text, learned in render_segments(messages, tokenizer)]
            except TemplateError:
                segments = None
        out.append({"row": conv.row, "messages": messages, "segments": segments})
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    return {"model": model, "schema": report.schema, "format": report.format, "rows": out,
            "template": ("chatml" if isinstance(template, str) and "<|im_start|>" in template
                         else "chat_template" if template else "plain" if tokenizer is not None else None),
            **column_mapping(report)}


class MappingError(ValueError):
    """The mapping asked for cannot be used; `code` and `params` say why (rendered in the user's language)."""

    def __init__(self, code: str, **params: Any) -> None:
        super().__init__(code)
        self.code = code
        self.params = params


def check_mapping(fields: dict[str, str | None], columns: list[str]) -> dict[str, str]:
    """{column: field} with only used columns; exactly one question and one answer column."""
    chosen: dict[str, str] = {}
    for col, field in fields.items():
        if col not in columns:
            raise MappingError("unknown_column", column=col)
        if field in (None, "", "unused"):
            continue
        if field not in MAPPABLE:
            raise MappingError("unknown_field", field=field)
        chosen[col] = field
    for needed in ("instruction", "response"):
        count = sum(1 for f in chosen.values() if f == needed)
        if count != 1:
            raise MappingError("need_one", field=needed, count=count)
    if len(set(chosen.values())) != len(chosen):
        raise MappingError("twice")
    return chosen


def write_mapped(path: str, mapping: dict[str, str], target: Path, *, sheet: str | None = None) -> int:
    """The table at `path` as JSONL with the chosen fields, line r = data row r (a row that could not be
    read keeps its text in `lorastudio_raw` and is reported again, never dropped). Returns bytes written."""
    from lorastudio.data.readers import read_table

    table = read_table(path, sheet=sheet)
    lines: list[str] = []
    for rec in table.records:
        while len(lines) < rec.row - 1:
            lines.append("")  # a blank source row keeps its number
        if rec.fields is None:
            raw = rec.raw if isinstance(rec.raw, str) else json.dumps(rec.raw, ensure_ascii=False)
            obj: dict[str, Any] = {"lorastudio_raw": raw}
        else:
            obj = {field: rec.fields.get(col, "") for col, field in mapping.items()}
        lines.append(json.dumps(obj, ensure_ascii=False))
    text = "\n".join(lines) + "\n"
    tmp = target.with_name(target.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)
    return len(text.encode("utf-8"))
