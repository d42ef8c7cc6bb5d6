"""Column names → schema → turns.

Every input layout (single-turn with its many column aliases, Alpaca, the seed's multi-turn
``conversation``, ShareGPT ``conversations``, OpenAI ``messages``) is turned into a list of
:class:`Turn` (role, text, where it came from) plus structural issues. ``validate`` then applies the
same content checks to every layout. The column-name vocabulary itself (aliases, fuzzy matching)
lives in ``columns``, which ``readers`` uses too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lorastudio.data.columns import SCHEMA_KEYS, exact_canonical, fuzzy_candidates, norm_name
from lorastudio.data.readers import RawRecord, RawTable
from lorastudio.data.types import DataError

EXPECTED_SHORT = "instruction, response, question, answer, 问题, 答案"

# Inside turns of the seed's multi-turn layout.
TURN_ALIASES: dict[str, tuple[str, ...]] = {
    "system": ("system", "系统"),
    "input": ("input", "instruction", "question", "prompt", "query", "human", "user", "问题", "输入"),
    "output": ("output", "response", "answer", "completion", "assistant", "gpt", "答案", "回答", "输出"),
}
ROLE_ALIASES = {
    "system": "system",
    "user": "user", "human": "user", "question": "user", "customer": "user", "用户": "user",
    "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "model": "assistant",
    "chatgpt": "assistant", "ai": "assistant", "助手": "assistant",
}
IGNORED_PREFIX = "lorastudio_"  # columns that write_rejected adds; ignored when the file comes back


@dataclass
class ColumnMap:
    fields: dict[str, str]  # canonical → source column/key
    mapped: list[tuple[str, str]] = field(default_factory=list)  # fuzzy (source, canonical)
    ignored: list[str] = field(default_factory=list)
    # JSON rows merged from several files may spell a field differently row by row
    # ("question" here, "instruction" there); never two spellings inside one row.
    alternates: dict[str, list[str]] = field(default_factory=dict)

    def has(self, canon: str, row: dict) -> bool:
        return any(src in row for src in self._sources(canon))

    def src(self, canon: str, row: dict) -> str | None:
        """The key this row uses for ``canon`` (the file's main one when the row has none)."""
        return next((s for s in self._sources(canon) if s in row), self.fields.get(canon))

    def _sources(self, canon: str) -> list[str]:
        main = self.fields.get(canon)
        return ([main] if main else []) + self.alternates.get(canon, [])


def resolve_columns(columns: list[str], name: str, *, table: bool,
                    rows: list[dict] | None = None) -> ColumnMap:
    """Map source columns to canonical fields; refuse (DataError) when nothing usable is found.

    Exact aliases win; a name within a small edit distance of exactly one canonical field that no
    exact column claims is mapped and reported; anything else is listed as ignored.
    """
    exact: dict[str, list[str]] = {}
    unknown: list[str] = []
    for col in columns:
        if str(col).startswith(IGNORED_PREFIX):
            continue
        canon = exact_canonical(col)
        if canon:
            exact.setdefault(canon, []).append(col)
        else:
            unknown.append(col)
    cmap = ColumnMap({})
    for canon, cols in exact.items():
        if len(cols) > 1:
            together = table or any(sum(c in row for c in cols) > 1 for row in rows or [])
            if together:
                role = {"instruction": "question", "response": "answer"}.get(canon, canon)
                raise DataError.of("ambiguous_columns", file=name, columns=", ".join(f"'{c}'" for c in cols),
                                   role=role)
            cmap.alternates[canon] = cols[1:]
        cmap.fields[canon] = cols[0]
    fuzzy: dict[str, list[str]] = {}
    for col in unknown:
        cands = {c: d for c, d in fuzzy_candidates(col).items() if c not in cmap.fields}
        if cands:
            best = min(cands.values())
            winners = [c for c, d in cands.items() if d == best]
            if len(winners) == 1:
                fuzzy.setdefault(winners[0], []).append(col)
                continue
        cmap.ignored.append(col)
    for canon, cols in fuzzy.items():
        if len(cols) == 1:
            cmap.fields[canon] = cols[0]
            cmap.mapped.append((cols[0], canon))
        else:
            cmap.ignored.extend(cols)  # two near-misses for one field: guessing would be a coin toss

    usable = ("instruction" in cmap.fields or "input" in cmap.fields) and "response" in cmap.fields
    if not table:
        usable = usable or any(k in cmap.fields for k in SCHEMA_KEYS)
    if not usable:
        expected = "@expected.table" if table else "@expected.records"
        found = ", ".join(f"'{c}'" for c in columns) or "no columns"
        suggestions = []
        for col in cmap.ignored:
            near = fuzzy_candidates(col, limit=max(1, min(3, len(norm_name(col)) // 3)))
            if near:
                best = min(near.values())
                targets = " or ".join(f"'{c}'" for c in sorted(near) if near[c] == best)
                suggestions.append(f"{targets} for '{col}'")
        if suggestions:
            raise DataError.of("unknown_columns.suggest", "unknown_columns", file=name, found=found,
                               suggestions=" / ".join(suggestions), expected=expected)
        raise DataError.of("unknown_columns", file=name, found=found, expected=expected)
    return cmap


def table_columns(table: RawTable) -> list[str]:
    if table.columns is not None:
        return table.columns
    seen: dict[str, None] = {}
    for rec in table.records:
        if rec.fields is not None:
            for k in rec.fields:
                seen.setdefault(str(k), None)
    return list(seen)


# --- rows → turns -------------------------------------------------------------------------------

@dataclass
class Turn:
    role: str  # system / user / assistant
    text: str | None  # None: the field is missing or not text (an issue was raised)
    field: str  # where it came from, for messages: a column name or a JSON path


@dataclass
class RowIssue:
    severity: str
    kind: str
    code: str
    field: str | None
    params: dict


INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff"


def is_blank(text: str) -> bool:
    # str.strip() already treats U+3000 (ideographic space), tabs and NBSP as whitespace.
    return not text.strip().strip(INVISIBLE).strip()


def _as_text(value: object, fld: str, issues: list[RowIssue], *, keyed: bool) -> str | None:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        issues.append(RowIssue("error", "non_text", "non_text", fld, {"field": fld, "type": "true/false"}))
        return None
    if isinstance(value, (int, float)):
        text = str(value)
        if keyed:
            issues.append(RowIssue("warning", "non_text", "non_text.number", fld, {"field": fld, "value": text}))
        return text
    kind = "a list" if isinstance(value, list) else "an object" if isinstance(value, dict) else type(value).__name__
    issues.append(RowIssue("error", "non_text", "non_text", fld, {"field": fld, "type": kind}))
    return None


def _content_text(value: object, fld: str, issues: list[RowIssue]) -> str | None:
    # OpenAI content parts: [{"type": "text", "text": "..."}]; anything but text parts is refused.
    if isinstance(value, list) and value and all(isinstance(p, dict) for p in value):
        if all(p.get("type") == "text" and isinstance(p.get("text"), str) for p in value):
            return "".join(p["text"] for p in value)
    return _as_text(value, fld, issues, keyed=True)


def row_schema(rec: RawRecord, cmap: ColumnMap) -> str | None:
    row = rec.fields or {}
    keys = {canon for canon in cmap.fields if cmap.has(canon, row)}
    if "messages" in keys:
        return "openai_messages"
    if "conversations" in keys:
        return "sharegpt"
    if "conversation" in keys:
        return "conversation"
    if keys & {"instruction", "input", "response"}:
        return "alpaca" if {"instruction", "input"} <= set(cmap.fields) else "instruction_response"
    return None


def record_turns(rec: RawRecord, cmap: ColumnMap, schema: str, *, keyed: bool) -> tuple[list[Turn], list[RowIssue]]:
    issues: list[RowIssue] = []
    fields = rec.fields or {}
    turns: list[Turn] = []
    if keyed and schema in ("openai_messages", "sharegpt", "conversation"):
        sys_src = cmap.src("system", fields)
        if sys_src and sys_src in fields:
            text = _as_text(fields[sys_src], sys_src, issues, keyed=True)
            if text is not None and not is_blank(text):
                turns.append(Turn("system", text, sys_src))
        key = {"openai_messages": "messages", "sharegpt": "conversations", "conversation": "conversation"}[schema]
        src = cmap.src(key, fields) or key
        items = fields.get(src)
        if not isinstance(items, list):
            issues.append(RowIssue("error", "malformed_row", "malformed_row.turns", src, {"field": src}))
            return turns, issues
        if not items:
            issues.append(RowIssue("error", "malformed_row", "malformed_row.no_turns", src, {"field": src}))
            return turns, issues
        if schema == "conversation":
            _seed_turns(items, src, turns, issues)
        else:
            _role_turns(items, src, turns, issues)
        return turns, issues

    # Single-turn layouts (tables, TXT, and keyed rows with instruction/response-like keys).
    def get(canon: str) -> tuple[str | None, str | None, bool]:
        col = cmap.src(canon, fields)
        if col is None:
            return canon, None, True  # the file has no such column at all (a mixed-layout JSON row)
        if col not in fields:
            return col, None, True  # the key is missing in this JSON row
        return col, _as_text(fields[col], col, issues, keyed=keyed), False

    used = [c for c in ("instruction", "input", "response", "system", "history") if c in cmap.fields]
    if rec.cells_found is not None and any(list(fields).index(cmap.fields[c]) >= rec.cells_found for c in used):
        # Only tables have cells_found, and tables have no alternates: fields[c] is the column.
        n = len(fields)
        issues.append(RowIssue("error", "malformed_row", "malformed_row.missing_fields", None,
                               {"found": rec.cells_found, "expected": n}))
        return turns, issues

    sys_col, sys_text, _ = get("system")
    if sys_text and not is_blank(sys_text):
        turns.append(Turn("system", sys_text, sys_col or "system"))
    hist_col = cmap.src("history", fields)
    if hist_col and fields.get(hist_col) not in (None, "", []):
        hist = fields[hist_col]
        if isinstance(hist, list) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in hist):
            for i, (q, a) in enumerate(hist):
                turns.append(Turn("user", _as_text(q, f"{hist_col}[{i}][0]", issues, keyed=True), f"{hist_col}[{i}][0]"))
                turns.append(Turn("assistant", _as_text(a, f"{hist_col}[{i}][1]", issues, keyed=True), f"{hist_col}[{i}][1]"))
        else:
            issues.append(RowIssue("error", "malformed_row", "malformed_row.turns", hist_col, {"field": hist_col}))
    # Per row: a row with an instruction gets its input appended (Alpaca); a row with only an
    # input uses it as the question (input/output files).
    q_canon = "instruction" if cmap.has("instruction", fields) or not cmap.has("input", fields) else "input"
    if "instruction" not in cmap.fields:
        q_canon = "input"
    q_col, q_text, q_missing = get(q_canon)
    if q_canon == "instruction" and cmap.has("input", fields):
        # Alpaca: the optional input is context for the instruction, appended after a blank line.
        _, in_text, _ = get("input")
        if in_text and not is_blank(in_text):
            q_text = in_text if (q_text is None or is_blank(q_text)) else f"{q_text}\n\n{in_text}"
    r_col, r_text, r_missing = get("response")
    if q_missing:
        issues.append(RowIssue("error", "empty_instruction", "empty_instruction.missing", q_col, {"field": q_col}))
    if r_missing:
        issues.append(RowIssue("error", "empty_response", "empty_response.missing", r_col, {"field": r_col}))
    turns.append(Turn("user", None if q_missing else q_text, q_col or "instruction"))
    turns.append(Turn("assistant", None if r_missing else r_text, r_col or "response"))
    return turns, issues


_SEED_TURN = '{"input": "…", "output": "…"}'
_ROLE_TURN = '{"role": "user", "content": "…"}'


def _malformed_turn(path: str, example: str) -> RowIssue:
    """A turn that is not an object of the expected shape; ``example`` shows that shape."""
    return RowIssue("error", "malformed_row", "malformed_row.turn", path, {"field": path, "example": example})


def _seed_turns(items: list, src: str, turns: list[Turn], issues: list[RowIssue]) -> None:
    aliases = {norm_name(a): canon for canon, names in TURN_ALIASES.items() for a in names}
    for i, item in enumerate(items):
        path = f"{src}[{i}]"
        if not isinstance(item, dict):
            issues.append(_malformed_turn(path, _SEED_TURN))
            continue
        found = {aliases.get(norm_name(k)): k for k in item}
        if "system" in found:
            key = found["system"]
            text = _as_text(item[key], f"{path}.{key}", issues, keyed=True)
            if text is not None and not is_blank(text):
                turns.append(Turn("system", text, f"{path}.{key}"))  # order_issues checks it comes first
        if "input" not in found and "output" not in found:
            if "system" not in found:
                issues.append(_malformed_turn(path, _SEED_TURN))
            continue
        for canon, role in (("input", "user"), ("output", "assistant")):
            if canon in found:
                key = found[canon]
                turns.append(Turn(role, _as_text(item[key], f"{path}.{key}", issues, keyed=True), f"{path}.{key}"))
            elif canon == "input":
                issues.append(RowIssue("error", "empty_instruction", "empty_instruction.missing", f"{path}.input",
                                       {"field": f"{path}.input"}))
                turns.append(Turn("user", None, f"{path}.input"))
            elif i < len(items) - 1:
                issues.append(RowIssue("error", "empty_response", "empty_response.missing", f"{path}.output",
                                       {"field": f"{path}.output"}))
                turns.append(Turn("assistant", None, f"{path}.output"))
            # A last turn with input and no output: the order check reports missing_assistant.


def _role_turns(items: list, src: str, turns: list[Turn], issues: list[RowIssue]) -> None:
    for i, item in enumerate(items):
        path = f"{src}[{i}]"
        if not isinstance(item, dict):
            issues.append(_malformed_turn(path, _ROLE_TURN))
            continue
        role_key = next((k for k in ("role", "from", "speaker", "author") if k in item), None)
        content_key = next((k for k in ("content", "value", "text") if k in item), None)
        if role_key is None or content_key is None:
            issues.append(_malformed_turn(path, _ROLE_TURN))
            continue
        raw_role = item[role_key]
        role = ROLE_ALIASES.get(norm_name(raw_role)) if isinstance(raw_role, str) else None
        fld = f"{path}.{content_key}"
        if role is None:
            issues.append(RowIssue("error", "unsupported_role", "unsupported_role", f"{path}.{role_key}",
                                   {"field": f"{path}.{role_key}", "role": raw_role}))
            continue
        text = _content_text(item[content_key], fld, issues)
        if role == "system" and text is not None and is_blank(text):
            continue  # an empty system prompt says nothing; dropping it loses nothing
        turns.append(Turn(role, text, fld))


def order_issues(turns: list[Turn], *, broken: bool = False) -> list[RowIssue]:
    """system? then user/assistant alternating, ending with assistant; empty turns named.

    ``broken``: the row already has a structural error (a dropped turn, a non-list), so a missing
    answer or an empty dialog is a consequence of it, not a second problem to report.
    """
    issues: list[RowIssue] = []
    expected = "user"
    prev = None
    order_ok = True
    for i, turn in enumerate(turns):
        if turn.role == "system":
            if i != 0 and order_ok:
                issues.append(RowIssue("error", "wrong_turn_order", "wrong_turn_order.system", turn.field,
                                       {"field": turn.field}))
                order_ok = False
            continue
        if turn.role != expected and order_ok:
            issues.append(RowIssue("error", "wrong_turn_order", "wrong_turn_order", turn.field,
                                   {"field": turn.field, "role": turn.role, "prev": prev or "start"}))
            order_ok = False
        prev = turn.role
        expected = "assistant" if turn.role == "user" else "user"
        if turn.text is not None and is_blank(turn.text):
            kind = "empty_instruction" if turn.role == "user" else "empty_response"
            code = kind if turn.text == "" else f"{kind}.blank"
            issues.append(RowIssue("error", kind, code, turn.field, {"field": turn.field}))
    dialog = [t for t in turns if t.role != "system"]
    if order_ok and not broken and dialog and dialog[-1].role == "user":
        issues.append(RowIssue("error", "missing_assistant", "missing_assistant", dialog[-1].field, {}))
    if not dialog and not broken and not any(i.severity == "error" for i in issues):
        issues.append(RowIssue("error", "malformed_row", "malformed_row.no_turns", None, {"field": "row"}))
    return issues
