"""Before/after evaluation of an adapter on a question file.

```python
from lorastudio.evaluate import evaluate, load_questions
report = evaluate("default", "runs/yunzhan", "questions.jsonl")   # or a list of EvalQuestion
print(report.table())            # before vs after: must-contain, key recall, exact match, similarity
report.to_dict()                 # what `lorastudio eval --json` prints
```

A question file is JSONL, a JSON array, CSV, TSV, XLSX (or TXT: one question per line) with a `question` column and optionally
`expected` (a reference answer) and `must_contain` (key strings that a correct answer states; a
list, or one string separated by `|`). Chinese and English column names are accepted (see
`_ALIASES`).

Scores, all computed on normalised text (Unicode NFKC, case-folded, whitespace removed, so `４８`
matches `48` and `YZ-ld2406` matches `YZ-LD2406`):
- **must-contain pass**: every key string of the question appears in the answer;
- **key recall**: found key strings / all key strings (partial credit);
- **exact match**: answer equals `expected`;
- **similarity**: ROUGE-L F1 between answer and `expected` over tokens where a token is a single
  CJK character or a run of letters/digits, so it works for Chinese without a word segmenter.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


class EvalFileError(ValueError):
    """A question file cannot be used; the message names the file, the row and the field."""


@dataclass
class EvalQuestion:
    question: str
    expected: str | None = None
    must_contain: list[str] = field(default_factory=list)
    row: int | None = None  # 1-based (lines for JSONL, data rows after the header for CSV/TSV)
    system: str | None = None


@dataclass
class Score:
    answer: str
    must_contain_pass: bool | None  # None when the question has no key strings
    keys_found: list[str]
    exact_match: bool | None  # None without `expected`
    similarity: float | None  # None without `expected`


@dataclass
class QuestionResult:
    question: EvalQuestion
    before: Score
    after: Score | None  # None when evaluating a base model alone


@dataclass
class EvalReport:
    base: str
    adapter: str | None
    results: list[QuestionResult]
    seconds: float = 0.0

    def summary(self, side: str) -> dict[str, Any]:
        """Aggregates for `before` or `after`; a metric is None when no question can measure it."""
        scores = [getattr(r, side) for r in self.results]
        scores = [s for s in scores if s is not None]
        with_keys = [s for s in scores if s.must_contain_pass is not None]
        with_expected = [s for s in scores if s.exact_match is not None]
        key_total = sum(len(r.question.must_contain) for r in self.results)
        keys_found = sum(len(s.keys_found) for s in with_keys)
        return {
            "questions": len(scores),
            "must_contain_pass": sum(s.must_contain_pass for s in with_keys) if with_keys else None,
            "must_contain_total": len(with_keys),
            "must_contain_rate": _ratio(sum(s.must_contain_pass for s in with_keys), len(with_keys)),
            "key_recall": _ratio(keys_found, key_total) if with_keys else None,
            "exact_match": _ratio(sum(s.exact_match for s in with_expected), len(with_expected)),
            "similarity": (sum(s.similarity for s in with_expected) / len(with_expected)) if with_expected else None,
            "expected_total": len(with_expected),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "adapter": self.adapter,
            "seconds": round(self.seconds, 1),
            "before": self.summary("before"),
            "after": self.summary("after") if self.adapter else None,
            "questions": [
                {"row": r.question.row, "question": r.question.question, "expected": r.question.expected,
                 "must_contain": r.question.must_contain, "before": asdict(r.before),
                 "after": asdict(r.after) if r.after else None}
                for r in self.results
            ],
        }

    def table(self, lang: str = "en") -> str:
        """The before/after table a terminal shows (no answers; see `details()`)."""
        zh = lang == "zh"
        before = self.summary("before")
        after = self.summary("after") if self.adapter else None
        head = ("指标", "微调前", "微调后", "变化") if zh else ("metric", "before", "after", "change")
        rows: list[tuple[str, str, str, str]] = []

        def add(label: str, key: str, fmt) -> None:
            b = before[key]
            a = after[key] if after else None
            if b is None and a is None:
                return
            delta = ""
            if a is not None and b is not None:
                delta = f"{(a - b) * 100:+.0f} pt" if key != "similarity" else f"{a - b:+.3f}"
            rows.append((label, fmt(b, before), fmt(a, after) if after else "", delta))

        def pass_fmt(v, s):
            return "" if v is None else f"{s['must_contain_pass']}/{s['must_contain_total']} ({v:.0%})"

        def pct(v, _s):
            return "" if v is None else f"{v:.0%}"

        def num(v, _s):
            return "" if v is None else f"{v:.3f}"

        add("全部关键点都答到" if zh else "all key facts stated", "must_contain_rate", pass_fmt)
        add("关键点召回率" if zh else "key fact recall", "key_recall", pct)
        add("完全一致" if zh else "exact match", "exact_match", pct)
        add("相似度 (ROUGE-L)" if zh else "similarity (ROUGE-L F1)", "similarity", num)
        if not after:
            head, rows = head[:2], [r[:2] for r in rows]
        widths = [max(_width(r[i]) for r in [head, *rows]) for i in range(len(head))]
        lines = ["  ".join(_ljust(c, w) for c, w in zip(row, widths, strict=True)).rstrip()
                 for row in [head, *rows]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        n = len(self.results)
        lines.append(f"{n} 个问题" if zh else f"{n} questions")
        return "\n".join(lines)

    def details(self, lang: str = "en", max_chars: int = 80) -> str:
        """One block per question: key strings, before/after answers with ✓/✗."""
        zh = lang == "zh"
        out = []
        for r in self.results:
            out.append(f"[{r.question.row}] {r.question.question}")
            if r.question.must_contain:
                out.append(("  关键点: " if zh else "  must contain: ") + " | ".join(r.question.must_contain))
            for label, s in (("before", r.before), ("after", r.after)):
                if s is None:
                    continue
                mark = "" if s.must_contain_pass is None else ("✓ " if s.must_contain_pass else "✗ ")
                name = {"before": "微调前", "after": "微调后"}[label] if zh else label
                answer = s.answer.replace("\n", " ")
                answer = answer if len(answer) <= max_chars else answer[:max_chars] + "…"
                out.append(f"  {mark}{name}: {answer}")
        return "\n".join(out)


# --------------------------------------------------------------------------------------------
# scoring


def normalize(text: str) -> str:
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text).casefold())


_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)


def tokens(text: str) -> list[str]:
    """Letters/digits runs, with each CJK (or other wide) character its own token."""
    text = unicodedata.normalize("NFKC", text).casefold()
    out: list[str] = []
    for run in _TOKEN.findall(text):
        word = ""
        for c in run:
            if unicodedata.east_asian_width(c) in ("W", "F"):
                if word:
                    out.append(word)
                    word = ""
                out.append(c)
            else:
                word += c
        if word:
            out.append(word)
    return out


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 over `tokens()`; 1.0 for two empty texts."""
    a, b = tokens(candidate), tokens(reference)
    if not a and not b:
        return 1.0
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            cur[j] = prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1])
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


def score(answer: str, q: EvalQuestion) -> Score:
    norm = normalize(answer)
    found = [k for k in q.must_contain if normalize(k) in norm]
    has_keys = bool(q.must_contain)
    has_expected = q.expected is not None and q.expected.strip() != ""
    return Score(
        answer=answer,
        must_contain_pass=(len(found) == len(q.must_contain)) if has_keys else None,
        keys_found=found,
        exact_match=(norm == normalize(q.expected)) if has_expected else None,
        similarity=round(rouge_l(answer, q.expected), 4) if has_expected else None,
    )


# --------------------------------------------------------------------------------------------
# question files

_ALIASES = {
    "question": ("question", "q", "instruction", "prompt", "input", "query", "问题", "提问", "指令"),
    "expected": ("expected", "answer", "reference", "response", "output", "expected_answer",
                 "参考答案", "答案", "标准答案", "回答"),
    "must_contain": ("must_contain", "keywords", "keys", "key_facts", "必须包含", "关键词", "关键点"),
    "system": ("system", "系统"),
}


def _pick(obj: dict[str, Any], name: str) -> tuple[str | None, Any]:
    lowered = {str(k).strip().lower(): k for k in obj}
    for alias in _ALIASES[name]:
        if alias in lowered:
            return lowered[alias], obj[lowered[alias]]
    return None, None


def _question_from(obj: Any, row: int, src: str) -> EvalQuestion:
    where = f"{src}, row {row}"
    if not isinstance(obj, dict):
        raise EvalFileError(f"{where}: expected an object with a `question` field, got {type(obj).__name__}")
    key, question = _pick(obj, "question")
    if key is None and "messages" in obj and isinstance(obj["messages"], list):
        users = [m.get("content") for m in obj["messages"] if isinstance(m, dict) and m.get("role") == "user"]
        question = users[-1] if users else None
        key = "messages"
    if key is None:
        raise EvalFileError(f"{where}: no question field (have: {', '.join(map(str, obj))}); "
                            "name the column `question`")
    if not isinstance(question, str) or not question.strip():
        raise EvalFileError(f"{where}, field {key!r}: the question is empty; fill it in or delete the row")
    ekey, expected = _pick(obj, "expected")
    if expected is not None and not isinstance(expected, str):
        raise EvalFileError(f"{where}, field {ekey!r}: must be text")
    mkey, must = _pick(obj, "must_contain")
    if must is None or must == "":
        keys: list[str] = []
    elif isinstance(must, str):
        keys = [k.strip() for k in must.split("|") if k.strip()]
    elif isinstance(must, list) and all(isinstance(k, (str, int, float)) for k in must):
        keys = [str(k).strip() for k in must if str(k).strip()]
    else:
        raise EvalFileError(f"{where}, field {mkey!r}: must be a list of strings or one string "
                            "with `|` between key strings")
    _skey, system = _pick(obj, "system")
    return EvalQuestion(question=question.strip(), expected=expected or None, must_contain=keys, row=row,
                        system=system if isinstance(system, str) and system.strip() else None)


def _read_xlsx(path: Path) -> list[tuple[int, Any]]:
    """Excel question sheets through the data layer's reader (first sheet with a header row)."""
    from lorastudio.data import DataError
    from lorastudio.data.readers import read_table

    try:
        table = read_table(path)
    except DataError as exc:
        raise EvalFileError(str(exc)) from None
    items = []
    for rec in table.records:
        if rec.problem is not None or rec.fields is None:
            raise EvalFileError(f"{path}, row {rec.row}: the row cannot be read ({rec.problem[0] if rec.problem else '?'})")
        items.append((rec.row, {k: ("" if v is None else str(v)) for k, v in rec.fields.items()}))
    return items


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            return raw.decode("gb18030")  # Excel on Chinese Windows saves CSV this way
        except UnicodeDecodeError:
            raise EvalFileError(f"{path}: unknown text encoding; save it as UTF-8") from None


def load_questions(path: str | os.PathLike) -> list[EvalQuestion]:
    """Read a question file (JSONL, JSON array, CSV, TSV). Raises `EvalFileError` on any bad row.

    Every bad row is reported at once (not only the first), because fixing a file one error per
    run is tedious; a question file is small and must be all usable to compare runs fairly.
    """
    p = Path(path)
    if not p.is_file():
        raise EvalFileError(f"question file {str(p)!r} does not exist")
    suffix = p.suffix.lower()
    items: list[tuple[int, Any]] = []
    text = "" if suffix == ".xlsx" else _read_text(p)
    if suffix == ".xlsx":
        items = _read_xlsx(p)
    elif suffix == ".txt":  # one question per line, nothing to check
        items = [(i, {"question": line}) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]
    elif suffix in (".csv", ".tsv"):
        delim = "\t" if suffix == ".tsv" else ","
        reader = csv.DictReader(io.StringIO(text), delimiter=delim)
        for i, rec in enumerate(reader, start=1):
            if None in rec:
                raise EvalFileError(f"{p}, row {i}: more cells than header columns; quote cells that "
                                    "contain the delimiter")
            if any((v or "").strip() for v in rec.values()):
                items.append((i, rec))
    elif suffix == ".json" or text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise EvalFileError(f"{p}: not valid JSON ({exc})") from None
        if not isinstance(data, list):
            raise EvalFileError(f"{p}: expected a JSON array of question objects")
        items = list(enumerate(data, start=1))
    else:
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                items.append((i, json.loads(line)))
            except ValueError as exc:
                raise EvalFileError(f"{p}, line {i}: not valid JSON ({exc.msg})") from None
    errors: list[str] = []
    questions: list[EvalQuestion] = []
    for row, obj in items:
        try:
            questions.append(_question_from(obj, row, str(p)))
        except EvalFileError as exc:
            errors.append(str(exc))
    if errors:
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise EvalFileError("; ".join(errors[:5]) + more)
    if not questions:
        raise EvalFileError(f"{p}: no questions found")
    return questions


# --------------------------------------------------------------------------------------------
# the entry function


def evaluate(base: Any, adapter: str | os.PathLike | None, questions: str | os.PathLike | Sequence[Any],
             *, max_new_tokens: int = 256, batch_size: int = 8, on_progress: Any = None) -> EvalReport:
    """Answer every question with the adapter off (before) and on (after), greedy, and score them.

    `base` is a model id/directory or an existing `ChatEngine` (the service and the demo reuse theirs,
    so evaluation never loads a second copy of the model). `adapter=None` scores the base alone.
    `questions` is a file path or a list of `EvalQuestion` / question strings.
    """
    import time

    from lorastudio.inference import ChatEngine, check_adapter_dir

    qs = _as_questions(questions)
    if adapter is not None:
        check_adapter_dir(adapter)
    engine = base if isinstance(base, ChatEngine) else ChatEngine(str(base))
    started = time.monotonic()
    prompts = [([{"role": "system", "content": q.system}] if q.system else [])
               + [{"role": "user", "content": q.question}] for q in qs]
    passes = [None, adapter] if adapter is not None else [None]
    answers: list[list[str]] = []
    for k, which in enumerate(passes):
        done: list[str] = []
        # Chunks so a progress callback can report and the lock is shared with other users.
        step = max(1, batch_size) * 2
        for i in range(0, len(prompts), step):
            done += engine.generate_batch(prompts[i:i + step], adapter=which, max_new_tokens=max_new_tokens,
                                          batch_size=batch_size)
            if on_progress is not None:
                on_progress(k * len(prompts) + len(done), len(passes) * len(prompts))
        answers.append(done)
    results = [QuestionResult(q, score(answers[0][i], q), score(answers[1][i], q) if adapter is not None else None)
               for i, q in enumerate(qs)]
    return EvalReport(base=engine.base_id, adapter=str(adapter) if adapter is not None else None,
                      results=results, seconds=time.monotonic() - started)


def _as_questions(questions: str | os.PathLike | Sequence[Any]) -> list[EvalQuestion]:
    if isinstance(questions, (str, os.PathLike)):
        return load_questions(questions)
    out = []
    for i, q in enumerate(questions, start=1):
        if isinstance(q, EvalQuestion):
            out.append(q)
        elif isinstance(q, str):
            out.append(EvalQuestion(question=q, row=i))
        else:
            out.append(_question_from(q, i, "questions"))
    if not out:
        raise EvalFileError("no questions given")
    return out


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _width(s: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in s)


def _ljust(s: str, width: int) -> str:
    return s + " " * max(0, width - _width(s))
