"""``validate(path)``: read any supported file, map every row to a Conversation, report every problem."""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lorastudio.data.checks import (
    PER_MESSAGE_OVERHEAD,
    count_tokens,
    dedup_key,
    estimate_conversation_tokens,
    repair_mojibake,
)
from lorastudio.data.facts import fact_groups
from lorastudio.data.readers import RawTable, read_table
from lorastudio.data.schema import (
    EXPECTED_SHORT,
    IGNORED_PREFIX,
    ColumnMap,
    RowIssue,
    Turn,
    order_issues,
    record_turns,
    resolve_columns,
    row_schema,
    table_columns,
)
from lorastudio.data.types import Conversation, DataError, DatasetIssue, Message, RejectedRow, ValidationIssue
from lorastudio.i18n import t

FEW_ROWS = 100
SHORT_ANSWER_CHARS = 10
SHORT_ANSWER_SHARE = 0.3
HEAVY_DUPLICATION_SHARE = 0.1
# Advice to add wordings: at least this many rows, this share of the facts asked one way only.
ONE_WORDING_MIN_ROWS = 20
ONE_WORDING_SHARE = 0.8
HINT_PREVIEW_CHARS = 160


@dataclass
class ValidationReport:
    file: str
    format: str
    schema: str
    encoding: str | None
    rows_total: int
    conversations: list[Conversation]
    issues: list[ValidationIssue]
    dataset_issues: list[DatasetIssue]
    rejected: list[RejectedRow]
    columns: list[str] | None = None  # the source header/keys, for write_rejected
    mappings: list[dict] = field(default_factory=list)  # [{"from": "instructlon", "to": "instruction"}]
    delimiter: str | None = None
    header_row: int | None = None  # XLSX: the sheet row of the header, so data row r is Excel's row r + header_row

    @property
    def rows_ok(self) -> int:
        return len(self.conversations)

    @property
    def rows_rejected(self) -> int:
        return len(self.rejected)

    @property
    def ok(self) -> bool:
        return self.rows_ok > 0

    def to_dict(self, lang: str = "en") -> dict:
        """Exactly the object of PRODUCT.md's ``validate --json``.

        ``lang="zh"`` renders messages and hints in Chinese (for the bilingual UI); kinds, fields
        and rows are the same in every language.
        """
        if lang != "en":
            return {**self.to_dict(), "issues": [_localized_dict(i, lang) for i in self.issues],
                    "dataset_issues": [_localized_dict(d, lang) for d in self.dataset_issues]}
        return {
            "file": self.file,
            "format": self.format,
            "schema": self.schema,
            "encoding": self.encoding,
            "rows_total": self.rows_total,
            "rows_ok": self.rows_ok,
            "rows_rejected": self.rows_rejected,
            "issues": [i.to_dict() for i in self.issues],
            "dataset_issues": [d.to_dict() for d in self.dataset_issues],
        }

    def write_rejected(self, path: str | Path, *, lang: str = "en", hints: dict[str, str] | None = None) -> int:
        """Write rejected rows with their reasons; returns how many. ``.csv``/``.tsv`` or ``.jsonl``/``.json``.

        The file keeps the original fields so it can be fixed and uploaded again; the added
        ``lorastudio_row`` / ``lorastudio_reasons`` (and, for rows that could not be split into
        fields, ``lorastudio_raw``) columns are ignored when the file is read back. The reasons are in
        ``lang`` (CSV/TSV); ``hints`` replaces the hint of an issue kind (e.g. one without CLI options).
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".json"):
            with path.open("w", encoding="utf-8", newline="\n") as fh:
                for rej in self.rejected:
                    fh.write(json.dumps(self._rejected_object(rej), ensure_ascii=False) + "\n")
            return len(self.rejected)
        if suffix not in (".csv", ".tsv"):
            raise DataError(f"{path}: rejected rows can be written as .csv, .tsv or .jsonl", "bad_output")
        columns = self.columns or ["instruction", "response"]
        header = [*columns, "lorastudio_row", "lorastudio_reasons", "lorastudio_raw"]
        # UTF-8 with BOM so that Excel shows Chinese correctly when the user opens it.
        with path.open("w", encoding="utf-8-sig", newline="") as fh:
            writer = csv.writer(fh, delimiter="\t" if suffix == ".tsv" else ",")
            writer.writerow(header)
            for rej in self.rejected:
                cells, raw = self._rejected_cells(rej, columns)
                writer.writerow([*cells, rej.row, _reasons_text(rej.reasons, lang, hints or {}), raw])
        return len(self.rejected)

    def _rejected_object(self, rej: RejectedRow) -> dict:
        reasons = [{k: v for k, v in i.to_dict().items() if k != "row"} for i in rej.reasons]
        if isinstance(rej.raw, dict):
            obj = {k: v for k, v in rej.raw.items() if not str(k).startswith(IGNORED_PREFIX)}
        elif isinstance(rej.raw, list) and self.columns:
            obj = dict(zip(self.columns, _fit_cells(rej.raw, len(self.columns), self.delimiter), strict=True))
            obj["lorastudio_raw"] = _raw_line(rej.raw, self.delimiter)
        else:
            obj = {k: _cell(v) for k, v in (rej.fields or {}).items()}
            obj["lorastudio_raw"] = rej.raw if isinstance(rej.raw, str) else json.dumps(rej.raw, ensure_ascii=False)
        obj["lorastudio_row"] = rej.row
        obj["lorastudio_reasons"] = reasons
        return obj

    def _rejected_cells(self, rej: RejectedRow, columns: list[str]) -> tuple[list[str], str]:
        raw = rej.raw
        if isinstance(raw, dict):
            cells = [_cell(raw.get(c, "")) for c in columns]
            extra = {k: v for k, v in raw.items() if k not in columns and not str(k).startswith(IGNORED_PREFIX)}
            return cells, json.dumps(extra, ensure_ascii=False) if extra else ""
        if isinstance(raw, list):
            return _fit_cells([_cell(c) for c in raw], len(columns), self.delimiter), _raw_line(raw, self.delimiter)
        fields = rej.fields or {}
        return [_cell(fields.get(c, "")) for c in columns], str(raw)


def _localized_dict(issue: ValidationIssue | DatasetIssue, lang: str) -> dict:
    message, hint = issue.localized(lang)
    return {**issue.to_dict(), "message": message, "hint": hint}


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _fit_cells(cells: list, n: int, delim: str | None) -> list[str]:
    """Cells for n columns. Overflow (an unquoted delimiter inside a value) is joined back into the
    last column — the likely intended value — and the untouched raw line is written beside it."""
    cells = [_cell(c) for c in cells]
    if len(cells) > n:
        cells = cells[: n - 1] + [(delim or ",").join(cells[n - 1:])]
    return cells + [""] * (n - len(cells))


def _raw_line(cells: list, delim: str | None) -> str:
    return (delim or ",").join(_cell(c) for c in cells)


_ZH_FIELDS = {"instruction": "问题", "response": "回答", "system": "系统提示", "input": "输入", "output": "输出"}


def _reasons_text(issues: list[ValidationIssue], lang: str = "en", hints: dict[str, str] | None = None) -> str:
    """The reasons of one rejected row; in Chinese without English kind or field names."""
    hints = hints or {}
    if lang != "zh":
        return "; ".join(f"{i.kind}{f' ({i.field})' if i.field else ''}: {i.message} {hints.get(i.kind, i.hint)}".strip()
                         for i in issues)
    texts = []
    for issue in issues:
        message, hint = issue.localized("zh")
        field = f"（{_ZH_FIELDS[issue.field]}）" if issue.field in _ZH_FIELDS else ""
        texts.append(f"{field}{message} {hints.get(issue.kind, hint)}".strip())
    return "；".join(texts)


def _make_issue(row: int | None, ri: RowIssue) -> ValidationIssue:
    return ValidationIssue(row, ri.severity, ri.kind, ri.field, t(ri.code, "en", **ri.params),
                           t(ri.code + ".hint", "en", **ri.params), code=ri.code, params=ri.params)


def _dataset_issue(severity: str, code: str, **params: object) -> DatasetIssue:
    return DatasetIssue(severity, code.split(".")[0], t(code, "en", **params), t(code + ".hint", "en", **params),
                        code=code, params=params)


def _preview(text: str) -> str:
    return text if len(text) <= HINT_PREVIEW_CHARS else text[:HINT_PREVIEW_CHARS] + "…"


def validate(path: str | Path, *, max_length: int | None = 2048, tokenizer: object | None = None,
             sheet: str | None = None, max_rows: int | None = None) -> ValidationReport:
    """Read ``path`` (any supported format/encoding), check every row, return the report.

    ``max_length=None`` leaves lengths to the caller: the trainer counts every row's tokens exactly
    when it tokenizes them (one pass), so its reading is the service's validation, not a second one.
    ``max_rows``: a file with more data rows is refused (DataError ``too_many_rows`` with the file, the
    count and the limit) before any row is checked; None (the CLI, the trainer) takes any number.

    Raises DataError only when the file cannot be used at all. Row contents are never changed:
    usable rows become Conversations with their text exactly as written (no trimming).
    """
    if max_length is not None and max_length < 1:
        raise DataError(f"max_length must be at least 1 (got {max_length})", "bad_argument")
    table = read_table(path, sheet=sheet)
    if max_rows is not None and len(table.records) > max_rows:
        raise DataError.of("too_many_rows", "too_many_rows", file=Path(path).name, rows=len(table.records),
                           limit=max_rows)
    try:
        return validate_table(table, str(path), max_length=max_length, tokenizer=tokenizer)
    except DataError as exc:
        if len(table.sheets) > 1:
            # The data may sit on another sheet: say which one was read and what else exists.
            others = ", ".join(f"'{s}'" for s in table.sheets if s != table.sheet)
            exc.message = f"{exc.message.rstrip('.')} (read sheet '{table.sheet}'; other sheets: {others}; choose one with --sheet)."
            exc.args = (exc.message,)
            exc.code = ""  # the English text now carries more than the catalog entry
        raise


def validate_table(table: RawTable, name: str, *, max_length: int | None = 2048,
                   tokenizer: object | None = None) -> ValidationReport:
    if not table.records:
        raise DataError.of("no_rows", "empty_file", file=name)
    columns = table_columns(table)
    if table.keyed and not columns:
        # Every row is broken JSON or not an object: report them row by row rather than refusing.
        cmap = ColumnMap({})
    else:
        rows = [r.fields for r in table.records if r.fields is not None] if table.keyed else None
        cmap = resolve_columns(columns, name, table=not table.keyed, rows=rows)

    issues: list[ValidationIssue] = []
    dataset_issues: list[DatasetIssue] = []
    conversations: list[Conversation] = []
    rejected: list[RejectedRow] = []
    schemas: Counter[str] = Counter()
    first_seen: dict[tuple, int] = {}
    first_question: dict[tuple, tuple[int, tuple]] = {}
    duplicates = 0

    if table.skipped:
        preview = " / ".join(_preview(x) for x in table.skipped[:3])
        dataset_issues.append(_dataset_issue("warning", "skipped_above_header", n=len(table.skipped), lines=preview))
    for src, dst in cmap.mapped:
        dataset_issues.append(_dataset_issue("warning", "column_mapped", src=src, dst=dst))
    ignored = list(cmap.ignored)
    if ignored:
        dataset_issues.append(_dataset_issue("warning", "ignored_columns", columns=", ".join(f"'{c}'" for c in ignored),
                                             expected=EXPECTED_SHORT))

    for rec in table.records:
        row_issues: list[RowIssue] = []
        turns: list[Turn] = []
        if rec.problem:
            kind, code, params = rec.problem
            row_issues.append(RowIssue("error", kind, code, None, params))
        else:
            schema = row_schema(rec, cmap)
            if schema is None:
                row_issues.append(RowIssue("error", "malformed_row", "malformed_row.no_fields", None,
                                           {"expected": ", ".join(sorted(set(cmap.fields.values()))) or EXPECTED_SHORT}))
            else:
                schemas[schema] += 1
                turns, row_issues = record_turns(rec, cmap, schema, keyed=table.keyed)
                row_issues += order_issues(turns, broken=any(i.severity == "error" for i in row_issues))
        for turn in turns:
            if turn.text:
                fixed = repair_mojibake(turn.text)
                if fixed:
                    # a repair with U+FFFD lost bytes in the garbling: say so instead of offering it as the fix
                    code = "mojibake.lossy" if "\ufffd" in fixed[1] else "mojibake"
                    row_issues.append(RowIssue("error", "mojibake", code, turn.field,
                                               {"field": turn.field, "codec": fixed[0], "repaired": _preview(fixed[1])}))
        if not any(i.severity == "error" for i in row_issues) and any(tn.text is None for tn in turns):
            # Defensive: a turn without text must never become an empty training answer silently.
            bad = next(tn for tn in turns if tn.text is None)
            row_issues.append(RowIssue("error", "malformed_row", "malformed_row.turn", bad.field,
                                       {"field": bad.field, "example": '{"role": "user", "content": "…"}'}))
        if max_length is not None and not any(i.severity == "error" for i in row_issues):
            msgs = [{"role": tn.role, "content": tn.text or ""} for tn in turns]
            longest = max(turns, key=lambda tn: len(tn.text or "")).field if turns else None
            row_issues += _length_issues(msgs, max_length, tokenizer, longest)
        if not any(i.severity == "error" for i in row_issues):
            key = tuple((tn.role, dedup_key(tn.text or "")) for tn in turns)
            question = tuple(k for k in key if k[0] != "assistant")
            if key in first_seen:
                duplicates += 1
                row_issues.append(RowIssue("error", "duplicate", "duplicate", None, {"first": first_seen[key]}))
            else:
                first_seen[key] = rec.row
                prior = first_question.get(question)
                if prior is not None and prior[1] != key:
                    row_issues.append(RowIssue("warning", "duplicate_question", "duplicate_question", None,
                                               {"first": prior[0]}))
                else:
                    first_question.setdefault(question, (rec.row, key))
        row_vi = [_make_issue(rec.row, ri) for ri in row_issues]
        issues += row_vi
        if any(i.severity == "error" for i in row_vi):
            rejected.append(RejectedRow(rec.row, rec.raw, [i for i in row_vi if i.severity == "error"] +
                                        [i for i in row_vi if i.severity == "warning"],
                                        fields=rec.fields if isinstance(rec.raw, str) else None))
        else:
            conversations.append(Conversation([Message(tn.role, tn.text or "") for tn in turns], row=rec.row))

    rows_total = len(table.records)
    if len(schemas) > 1:
        dataset_issues.append(_dataset_issue("warning", "mixed_schemas",
                                             schemas=", ".join(f"{s} ({n})" for s, n in schemas.most_common())))
    if not conversations:
        dataset_issues.append(_dataset_issue("error", "no_usable_rows"))
    elif len(conversations) < FEW_ROWS:
        dataset_issues.append(_dataset_issue("warning", "few_rows", n=len(conversations)))
    answers = [m.content for c in conversations for m in c.messages if m.role == "assistant"]
    if answers:
        short = sum(1 for a in answers if len(a.strip()) < SHORT_ANSWER_CHARS)
        if short / len(answers) >= SHORT_ANSWER_SHARE:
            dataset_issues.append(_dataset_issue("warning", "short_answers", pct=round(100 * short / len(answers)),
                                                 min=SHORT_ANSWER_CHARS))
    if rows_total and duplicates / rows_total >= HEAVY_DUPLICATION_SHARE:
        dataset_issues.append(_dataset_issue("warning", "heavy_duplication", pct=round(100 * duplicates / rows_total)))
    if len(conversations) >= ONE_WORDING_MIN_ROWS:
        askings = Counter(fact_groups(conversations)).values()
        once = sum(1 for count in askings if count == 1)
        if once / len(askings) >= ONE_WORDING_SHARE:
            dataset_issues.append(_dataset_issue("warning", "one_wording", pct=round(100 * once / len(askings))))

    schema_name = schemas.most_common(1)[0][0] if schemas else "unknown"
    return ValidationReport(
        file=name, format=table.format, schema=schema_name, encoding=table.encoding, rows_total=rows_total,
        conversations=conversations, issues=issues, dataset_issues=dataset_issues, rejected=rejected,
        columns=table.columns if table.columns is not None else (columns or None),
        mappings=[{"from": s, "to": d} for s, d in cmap.mapped], delimiter=table.delimiter,
        header_row=table.header_row,
    )


def _length_issues(msgs: list[dict], max_length: int, tokenizer: object | None,
                   fld: str | None) -> list[RowIssue]:
    chars = sum(len(m["content"]) for m in msgs)
    # The estimate never exceeds one token per character (and a byte-level tokenizer spends at most
    # four per character), so most rows are settled without estimating or tokenizing.
    upper_bound = chars + PER_MESSAGE_OVERHEAD * len(msgs)
    if upper_bound <= (max_length // 4 if tokenizer is not None else max_length):
        return []
    estimate = estimate_conversation_tokens([m["content"] for m in msgs])
    if tokenizer is not None and estimate > max_length // 4:
        # Tokenize only rows that could plausibly be too long: exact counts for 10k rows are slow
        # and the estimate is never off by 4x for natural text.
        exact = count_tokens(tokenizer, msgs)
        if exact is not None:
            if exact > max_length:
                return [RowIssue("error", "too_long", "too_long.tokens", fld, {"tokens": exact, "limit": max_length})]
            return []
    if tokenizer is None or estimate > max_length // 4:
        if estimate > max_length:
            return [RowIssue("error", "too_long", "too_long", fld,
                             {"tokens": estimate, "chars": chars, "limit": max_length})]
    return []
