"""Known column names: the alias vocabulary and how a header or a JSON object is recognised.

A leaf of the data layer (it imports nothing from lorastudio). ``readers`` uses it to find a
table's header and delimiter, ``schema`` to map columns to fields; so ``schema`` imports ``readers``
(for its record types) and ``readers`` never needs ``schema``.
"""

from __future__ import annotations

import unicodedata

# Canonical field → accepted names (compared after norm_name: case, spaces, "_" and "-" ignored).
ALIASES: dict[str, tuple[str, ...]] = {
    "instruction": (
        "instruction", "instructions", "question", "questions", "prompt", "query", "q", "ask", "user_question",
        "问题", "问", "提问", "指令", "用户问题", "问句", "用户提问", "客户问题", "题目",
    ),
    "input": ("input", "inputs", "context", "输入", "补充输入", "上下文"),
    "response": (
        "response", "responses", "answer", "answers", "completion", "output", "outputs", "reply", "a", "target",
        "答案", "答", "回答", "回复", "输出", "应答", "标准答案", "标准回答", "客服回复",
    ),
    "system": ("system", "system_prompt", "sys", "系统", "系统提示", "系统提示词", "人设"),
    "history": ("history", "历史", "对话历史"),
    "messages": ("messages",),
    "conversations": ("conversations",),
    "conversation": ("conversation", "dialog", "dialogue", "对话"),
}
SCHEMA_KEYS = ("messages", "conversations", "conversation")


def norm_name(name: object) -> str:
    """A column or key name as compared with the aliases: NFKC, lower case, no spaces, "_", "-" or "."."""
    text = unicodedata.normalize("NFKC", str(name)).strip().lower()
    return "".join(ch for ch in text if ch not in " _-.\t")


def _garble(name: str) -> str:
    # Letters that PDF extraction and OCR confuse: "instructlon", "Questlon", "0utput".
    return name.replace("rn", "m").replace("l", "i").replace("1", "i").replace("|", "i").replace("0", "o")


_ALIAS_INDEX = {norm_name(a): canon for canon, names in ALIASES.items() for a in names}
_FUZZY_POOL = [(_garble(norm_name(a)), canon) for canon, names in ALIASES.items() for a in names if a.isascii()]


def _distance(a: str, b: str, limit: int) -> int:
    """Optimal-string-alignment edit distance, giving up (limit + 1) beyond ``limit``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2: list[int] | None = None
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, start=1):
            cost = 0 if ca == cb else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if prev2 is not None and i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        if min(cur) > limit:
            return limit + 1
        prev2, prev = prev, cur
    return prev[-1]


def _fuzzy_limit(norm: str) -> int:
    if len(norm) >= 7:
        return 2
    if len(norm) >= 4:
        return 1
    return 0


def fuzzy_candidates(name: str, limit: int | None = None) -> dict[str, int]:
    """canonical → best distance for a name that is not an exact alias."""
    norm = norm_name(name)
    if not norm.isascii() or not norm:
        return {}
    g = _garble(norm)
    lim = _fuzzy_limit(norm) if limit is None else limit
    best: dict[str, int] = {}
    for alias, canon in _FUZZY_POOL:
        d = _distance(g, alias, lim)
        if d <= lim and d < best.get(canon, lim + 1):
            best[canon] = d
    return best


def exact_canonical(name: object) -> str | None:
    return _ALIAS_INDEX.get(norm_name(name))


def header_score(cells: list[str]) -> int:
    """How many cells look like known column names (used to pick the delimiter)."""
    score = 0
    for c in cells:
        if exact_canonical(c):
            score += 1
        else:
            cands = fuzzy_candidates(c)
            if len(cands) == 1:
                score += 1
    return score


def is_record(obj: dict) -> bool:
    """A JSON object that is itself one row (rather than a wrapper holding a list of rows)."""
    return any(exact_canonical(k) in ("instruction", "input", "response", *SCHEMA_KEYS) for k in obj)
