"""The playground: any two models answering side by side (streamed, timed), a question set answered by
both and scored on optional key strings, the forgetting check, and tables exported as CSV/XLSX.

```python
from lorastudio.playground import Side, compare_events, set_events, forgetting_events, export_table
sides = [Side("a", engine, None), Side("b", engine, "runs/yunzhan", temperature=0.7, system="…")]
for event in compare_events(sides, "工单超时多久升级？"): ...      # start / delta / done per side, then end
for event in set_events(sides, questions): ...                   # row per question and side, then summary
for event in forgetting_events(engine, "runs/yunzhan"): ...       # progress, then the result
export_table(["Question", "A", "B"], rows, "xlsx")               # bytes
```

Everything here is plain Python over a `ChatEngine`-like object (`stream`, `generate_batch`): the HTTP
layer (serve/api_playground.py) only resolves model names, runs these generators in a thread and
sends their events as Server-Sent Events. The engine's own lock serialises generation, so the two
sides of a comparison answer one after the other, each streamed as its tokens arrive.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

MAX_QUESTION_CHARS = 8000
MAX_SYSTEM_CHARS = 4000
MAX_TURNS = 40
MAX_SET_QUESTIONS = 200
EXPORT_FORMATS = ("csv", "xlsx")


class PlaygroundError(ValueError):
    """Bad input: `code` says which (the page words it in its language), `params` fill the words in."""

    def __init__(self, code: str, message: str, **params: Any) -> None:
        super().__init__(message)
        self.code = code
        self.params = params


@dataclass
class Side:
    """One model of a comparison: `label` is "a" or "b"; `adapter` None means the base alone."""

    label: str
    engine: Any
    adapter: str | None
    temperature: float = 0.0
    system: str | None = None
    seed: int | None = None


@dataclass
class SetQuestion:
    question: str
    keys: list[Any] = field(default_factory=list)  # each a string, or a list of alternative strings
    row: int | None = None


# --- input checks --------------------------------------------------------------------------------
def check_text(text: Any, what: str, limit: int) -> str:
    if not isinstance(text, str) or not text.strip():
        raise PlaygroundError(f"empty_{what}", f"The {what} is empty.")
    if len(text) > limit:
        raise PlaygroundError(f"{what}_too_long", f"The {what} has {len(text)} characters; the limit is {limit}.",
                              chars=len(text), limit=limit)
    return text


def conversation(history: Sequence[dict] | None, question: str, system: str | None) -> list[dict]:
    """The messages one side sees: its own system prompt, the earlier turns, then the question."""
    check_text(question, "question", MAX_QUESTION_CHARS)
    turns = list(history or [])
    if len(turns) > 2 * MAX_TURNS:
        raise PlaygroundError("too_many_turns", f"The conversation has more than {MAX_TURNS} turns; start a new one.",
                              limit=MAX_TURNS)
    msgs: list[dict] = []
    if system and system.strip():
        msgs.append({"role": "system", "content": check_text(system, "system", MAX_SYSTEM_CHARS)})
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("role") not in ("user", "assistant") \
                or not isinstance(turn.get("content"), str):
            raise PlaygroundError("bad_history", f"Turn {i + 1} of the conversation is not a user or assistant "
                                  "message with text.", turn=i + 1)
        if len(turn["content"]) > MAX_QUESTION_CHARS * 2:
            raise PlaygroundError("question_too_long", "A turn of the conversation is too long.",
                                  chars=len(turn["content"]), limit=MAX_QUESTION_CHARS)
        msgs.append({"role": turn["role"], "content": turn["content"]})
    msgs.append({"role": "user", "content": question})
    return msgs


# --- streaming one side --------------------------------------------------------------------------
def stream_side(side: Side, messages: list[dict], max_new_tokens: int,
                clock: Callable[[], float] = time.monotonic) -> Iterator[dict]:
    """`{"type": "delta", "side", "delta"}` as pieces arrive, then `{"type": "done", "side", timings}`.

    Timings: `first_token_s` (from the request to the first piece, including any wait for the engine
    lock), `total_s`, `tokens` (generated), `tokens_per_s` (decode speed after the first token); `rows`: the
    training rows a tuned model read beside the question (the engine's stats; [] for a base model).
    """
    stats: dict[str, Any] = {}
    started = clock()
    first: float | None = None
    text = ""
    pieces = side.engine.stream(messages, side.adapter, max_new_tokens=max_new_tokens,
                                temperature=side.temperature, seed=side.seed, stats=stats)
    try:
        for piece in pieces:
            if first is None:
                first = clock() - started
            text += piece
            yield {"type": "delta", "side": side.label, "delta": piece}
    finally:
        close = getattr(pieces, "close", None)
        if close:
            close()
    total = clock() - started
    tokens = stats.get("completion_tokens")
    rate = None
    if tokens and tokens > 1 and first is not None and total > first:
        rate = round((tokens - 1) / (total - first), 2)
    yield {"type": "done", "side": side.label, "text": text, "first_token_s": round(first, 3) if first is not None
           else None, "total_s": round(total, 3), "tokens": tokens, "tokens_per_s": rate,
           "finish_reason": stats.get("finish_reason"), "rows": stats.get("rows", [])}


def error_event(side: str | None, exc: Exception) -> dict:
    from lorastudio.inference import AdapterError, PromptError

    if isinstance(exc, PlaygroundError):
        return {"type": "error", "side": side, "code": exc.code, "params": exc.params, "message": str(exc)}
    if isinstance(exc, PromptError):
        return {"type": "error", "side": side, "code": "prompt_too_long", "params": {}, "message": str(exc)}
    if isinstance(exc, AdapterError):
        return {"type": "error", "side": side, "code": "adapter_unavailable", "params": {}, "message": str(exc)}
    return {"type": "error", "side": side, "code": "generation_failed", "params": {},
            "message": f"{type(exc).__name__}: {exc}"}


def compare_events(sides: Sequence[Side], question: str, history: Sequence[dict] | None = None,
                   max_new_tokens: int = 256) -> Iterator[dict]:
    """Each side in turn: start, its deltas, done (or an error for that side); then end.

    One side failing (an adapter that cannot load) does not stop the other.
    """
    convs = [conversation(history, question, s.system) for s in sides]  # bad input: raised before any event
    for side, msgs in zip(sides, convs, strict=True):
        yield {"type": "start", "side": side.label}
        try:
            yield from stream_side(side, msgs, max_new_tokens)
        except Exception as exc:  # reported in-band: the stream has started
            yield error_event(side.label, exc)
    yield {"type": "end"}


# --- scoring on key strings ----------------------------------------------------------------------
def keys_found(answer: str, keys: Sequence[Any]) -> list[bool]:
    """Per key: does the answer state it (normalised like `lorastudio eval`; a list = any of them)."""
    from lorastudio.evaluate import normalize

    norm = normalize(answer)
    return [any(normalize(str(alt)) in norm for alt in (k if isinstance(k, list) else [k])) for k in keys]


def passes(answer: str, keys: Sequence[Any]) -> bool | None:
    return all(keys_found(answer, keys)) if keys else None


def flip(before: bool | None, after: bool | None) -> str | None:
    """kept (right → right), lost (right → wrong), gained (wrong → right), wrong (wrong → wrong)."""
    if before is None or after is None:
        return None
    return {(True, True): "kept", (True, False): "lost", (False, True): "gained", (False, False): "wrong"}[
        (before, after)]


def parse_questions(items: Sequence[Any]) -> list[SetQuestion]:
    """Questions from the page: strings, or `{question, must_contain}` (a list, or one string with `|`)."""
    out = []
    for i, item in enumerate(items, start=1):
        if isinstance(item, str):
            item = {"question": item}
        if not isinstance(item, dict):
            raise PlaygroundError("bad_question", f"Question {i} is not text.", row=i)
        q = item.get("question")
        if not isinstance(q, str) or not q.strip():
            raise PlaygroundError("empty_question_row", f"Question {i} is empty.", row=i)
        if len(q) > MAX_QUESTION_CHARS:
            raise PlaygroundError("question_too_long_row", f"Question {i} has {len(q)} characters; the limit is "
                                  f"{MAX_QUESTION_CHARS}.", row=i, chars=len(q), limit=MAX_QUESTION_CHARS)
        keys = item.get("must_contain") or []
        if isinstance(keys, str):
            keys = [k.strip() for k in keys.split("|") if k.strip()]
        if not isinstance(keys, list) or not all(isinstance(k, (str, list)) for k in keys):
            raise PlaygroundError("bad_keys", f"The key strings of question {i} are not text.", row=i)
        out.append(SetQuestion(q.strip(), keys, item.get("row") if isinstance(item.get("row"), int) else i))
    if not out:
        raise PlaygroundError("no_questions", "No questions given.")
    if len(out) > MAX_SET_QUESTIONS:
        raise PlaygroundError("too_many_questions", f"{len(out)} questions; at most {MAX_SET_QUESTIONS} at a time.",
                              count=len(out), limit=MAX_SET_QUESTIONS)
    return out


def set_events(sides: Sequence[Side], questions: Sequence[SetQuestion], max_new_tokens: int = 256) -> Iterator[dict]:
    """Every question answered by every side, one `row` event per answer (question order, then side),
    then a `summary`: per side how many passed their key strings, and the flips from side a to side b."""
    passed: dict[str, list[bool | None]] = {s.label: [] for s in sides}
    for index, q in enumerate(questions):
        for side in sides:
            msgs = conversation(None, q.question, side.system)
            started = time.monotonic()
            try:
                answer = side.engine.generate(msgs, side.adapter, max_new_tokens=max_new_tokens,
                                              temperature=side.temperature, seed=side.seed)
            except Exception as exc:
                event = error_event(side.label, exc)
                yield {**event, "index": index}
                passed[side.label].append(None)
                continue
            ok = passes(answer, q.keys)
            passed[side.label].append(ok)
            yield {"type": "row", "index": index, "side": side.label, "answer": answer, "pass": ok,
                   "keys_found": keys_found(answer, q.keys), "seconds": round(time.monotonic() - started, 2)}
    yield {"type": "summary", **summary(questions, passed, [s.label for s in sides])}


def summary(questions: Sequence[SetQuestion], passed: dict[str, list[bool | None]], labels: list[str]) -> dict:
    scored = sum(1 for q in questions if q.keys)
    out: dict[str, Any] = {"questions": len(questions), "scored": scored,
                           "pass": {k: sum(1 for p in passed[k] if p) for k in labels}}
    if len(labels) == 2:
        a, b = labels
        flips = [flip(x, y) for x, y in zip(passed[a], passed[b], strict=True)]
        out["flips"] = flips
        out["counts"] = {k: flips.count(k) for k in ("kept", "lost", "gained", "wrong")}
    return out


# --- question files ------------------------------------------------------------------------------
QUESTION_COLUMNS = ("question", "q", "instruction", "prompt", "input", "query", "问题", "提问", "指令")
KEY_COLUMNS = ("must_contain", "keywords", "keys", "key_facts", "必须包含", "关键词", "关键点", "要点")


def _column(fields: dict, names: Sequence[str]) -> str | None:
    lowered = {str(k).strip().lower(): k for k in fields}
    return next((lowered[n] for n in names if n in lowered), None)


def read_questions(data: bytes, name: str, lang: str = "en") -> list[SetQuestion]:
    """Questions (and optional key facts) from an uploaded file: TXT (one per line), CSV/TSV/XLSX (a
    question column, an optional must_contain/关键词 column with `|` between key facts) or JSONL/JSON.

    Any unusable row refuses the file with every such row named (`PlaygroundError`, its message in
    `lang`): a question set must be whole to compare runs fairly, and no row is dropped silently.
    """
    from lorastudio.data import DataError
    from lorastudio.data.readers import cell_text, decode, read_bytes
    from lorastudio.i18n import t

    suffix = name[name.rfind("."):].lower() if "." in name else ""
    try:
        if suffix == ".txt":
            text, _enc = decode(data, name)
            items = [(i, {"question": line.strip()}) for i, line in enumerate(text.lstrip("\ufeff").splitlines(), 1)
                     if line.strip()]
            qcol, kcol, bad = "question", None, []
        else:
            table = read_bytes(data, name=name, suffix=suffix)
            fields = [r.fields for r in table.records if r.fields]
            qcol = _column(fields[0], QUESTION_COLUMNS) if fields else None
            if fields and qcol is None:
                found = ", ".join(map(str, table.columns or fields[0]))
                raise PlaygroundError("question_file_no_column", t("playground.no_question_column", lang, file=name,
                                                                    columns=found))
            kcol = _column(fields[0], KEY_COLUMNS) if fields else None
            items = [(r.row, r.fields) for r in table.records if r.fields is not None]
            bad = [t("playground.row_unreadable", lang, row=r.row) for r in table.records if r.fields is None]
    except DataError as exc:
        raise PlaygroundError("question_file_unreadable", exc.localized(lang)) from None
    questions = []
    for row, rec in items:
        q = cell_text(rec.get(qcol))
        if not q or not q.strip():
            bad.append(t("playground.row_empty_question", lang, row=row))
            continue
        if len(q) > MAX_QUESTION_CHARS:
            bad.append(t("playground.row_too_long", lang, row=row, chars=len(q), limit=MAX_QUESTION_CHARS))
            continue
        raw = rec.get(kcol) if kcol else None
        if isinstance(raw, list):
            keys = [str(k).strip() for k in raw if str(k).strip()]
        else:
            keys = [k.strip() for k in cell_text(raw).split("|") if k.strip()] if raw not in (None, "") else []
        questions.append(SetQuestion(q.strip(), keys, row))
    if bad:
        sep = "；" if lang == "zh" else "; "
        shown = sep.join(bad[:8]) + (("…" if lang == "zh" else " …") if len(bad) > 8 else "")
        raise PlaygroundError("question_file_rows", t("playground.file_rows", lang, file=name, count=len(bad),
                                                      rows=shown))
    if not questions:
        raise PlaygroundError("question_file_empty", t("playground.no_questions", lang, file=name))
    if len(questions) > MAX_SET_QUESTIONS:
        raise PlaygroundError("too_many_questions", t("playground.too_many", lang, file=name, count=len(questions),
                                                      limit=MAX_SET_QUESTIONS), count=len(questions),
                              limit=MAX_SET_QUESTIONS)
    return questions


# --- the forgetting check ------------------------------------------------------------------------
def general_questions() -> list[SetQuestion]:
    """The built-in general questions (zh/en facts, held out from the replay prompts training uses)."""
    text = resources.files("lorastudio").joinpath("assets", "general_check.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [SetQuestion(r["question"], r["must_contain"], i) for i, r in enumerate(rows, start=1)]


def general_fingerprint(max_new_tokens: int = 64) -> str:
    """What the base model's answers to the general questions depend on besides the model: the questions
    and the answer length (a cache of those answers is valid while this stays the same)."""
    import hashlib

    text = resources.files("lorastudio").joinpath("assets", "general_check.jsonl").read_bytes()
    return hashlib.sha256(text + f"|{max_new_tokens}".encode()).hexdigest()[:16]


def forgetting_events(engine: Any, adapter: str, max_new_tokens: int = 64, batch_size: int = 8,
                      base_answers: Sequence[str] | None = None) -> Iterator[dict]:
    """The general questions answered greedily by the base and by base + adapter: `progress` events,
    then `result` (`kept` of the base's right answers still right, `lost`, `gained`, per question).

    `base_answers`: the base model's answers from an earlier check (greedy, same questions and length:
    see `general_fingerprint`); then only the tuned model answers, which halves the work.
    """
    qs = general_questions()
    prompts = [[{"role": "user", "content": q.question}] for q in qs]
    started = time.monotonic()
    answers: dict[str, list[str]] = {}
    runs: list[tuple[str, str | None]] = [("base", None), ("tuned", adapter)]
    if base_answers is not None and len(base_answers) == len(qs) and all(isinstance(a, str) for a in base_answers):
        answers["base"] = list(base_answers)
        runs = [("tuned", adapter)]
    total = len(runs) * len(prompts)
    for k, (name, which) in enumerate(runs):
        done: list[str] = []
        for i in range(0, len(prompts), batch_size):  # chunks: progress, and the lock shared with chat
            done += engine.generate_batch(prompts[i:i + batch_size], adapter=which, max_new_tokens=max_new_tokens,
                                          batch_size=batch_size)
            yield {"type": "progress", "done": k * len(prompts) + len(done), "total": total}
        answers[name] = done
    result = forgetting_result(qs, answers["base"], answers["tuned"], time.monotonic() - started)
    yield {"type": "result", **result, "base_reused": len(runs) == 1}


def forgetting_result(qs: Sequence[SetQuestion], base: Sequence[str], tuned: Sequence[str], seconds: float) -> dict:
    rows = []
    for q, a, b in zip(qs, base, tuned, strict=True):
        pa, pb = passes(a, q.keys), passes(b, q.keys)
        rows.append({"question": q.question, "keys": q.keys, "base_answer": a, "tuned_answer": b,
                     "base_pass": pa, "tuned_pass": pb, "flip": flip(pa, pb)})
    counts = {k: sum(1 for r in rows if r["flip"] == k) for k in ("kept", "lost", "gained", "wrong")}
    return {"questions": len(rows), "base_right": counts["kept"] + counts["lost"],
            "tuned_right": counts["kept"] + counts["gained"], **counts, "seconds": round(seconds, 1), "rows": rows}


# --- export --------------------------------------------------------------------------------------
def _safe_cell(value: Any) -> str:
    """Text as a spreadsheet shows it: never a formula (a model's answer may start with '=')."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def export_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> bytes:
    """The table as CSV (UTF-8 with BOM, so Excel reads Chinese) or XLSX bytes."""
    if fmt not in EXPORT_FORMATS:
        raise PlaygroundError("bad_format", f"Unknown export format {fmt!r}: use csv or xlsx.")
    if any(len(r) != len(columns) for r in rows):
        raise PlaygroundError("bad_table", "Every row needs one cell per column.")
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow([_safe_cell(c) for c in columns])
        writer.writerows([[_safe_cell(v) for v in r] for r in rows])
        return ("\ufeff" + buf.getvalue()).encode("utf-8")
    from openpyxl import Workbook
    from openpyxl.styles import Alignment, Font

    wb = Workbook()
    ws = wb.active
    ws.title = "answers"
    for j, name in enumerate(columns, start=1):
        cell = ws.cell(row=1, column=j, value=str(name))
        cell.font = Font(bold=True)
    for i, r in enumerate(rows, start=2):
        for j, v in enumerate(r, start=1):
            cell = ws.cell(row=i, column=j)
            cell.value = "" if v is None else str(v)
            cell.data_type = "s"  # text, never a formula
            cell.alignment = Alignment(wrap_text=True, vertical="top")
    for j in range(1, len(columns) + 1):
        ws.column_dimensions[ws.cell(row=1, column=j).column_letter].width = 20 if j == 1 else 48
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()
