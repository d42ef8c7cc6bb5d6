"""The training file's own rows beside each question: what a tuned model reads as well as remembers.

A LoRA adapter learns a business's facts into its weights, but a small model finds a fact asked in new words
less reliably than it reads one put in front of it. So training writes the rows it learnt from to
`<adapter>/knowledge.jsonl` (every user → assistant turn of the training file, as the user wrote it), and at
inference the engine (`lorastudio.inference.ChatEngine`: CLI, HTTP API, studio, `bench/quality/score.py`) puts the
`knowledge_rows` rows most like the question into the system message, after any system prompt. Measured on
the demo file with the default model (docs/QUALITY.md, "The tuned model reading its own rows"): the same
adapters answer more whole facts with their rows than from their weights alone, with no general answer lost.

Retrieval: TF-IDF cosine of character bigrams between the question (with the user's previous question, for
follow-ups) and each row's question + answer; it needs no model, no word splitter (Chinese and English alike)
and no files beyond the rows; an inverted index keeps a query over thousands of rows in milliseconds. Rows that
share no bigram with the question are never sent. `knowledge_rows: 0` (train config) or
`ChatEngine(knowledge=False)` / `lorastudio generate --no-knowledge` answer from the weights alone, as an exported
GGUF does in llama.cpp or Ollama.
"""

from __future__ import annotations

import json
import math
import os
import random
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lorastudio.engines.common import AdapterError, adapter_setting

KNOWLEDGE_FILE = "knowledge.jsonl"
DEFAULT_ROWS = 6
MAX_CHARS = 4000  # rows past this much text are left out (the closest row always goes): a long file's rows fit

HEADER = {"zh": "以下是公司内部资料（问答形式）。请根据资料回答用户的问题。\n\n",
          "en": "Below is the company's internal knowledge (questions and answers). Answer the user's question "
                "from it.\n\n"}
ROW = {"zh": "问：{q}\n答：{a}", "en": "Q: {q}\nA: {a}"}


class KnowledgeError(AdapterError):
    """An adapter's knowledge file cannot be read; the message names the file, the line and what to do."""


def _bigrams(text: str) -> Counter:
    text = text.lower()
    return Counter(text[i:i + 2] for i in range(len(text) - 1))


def language(texts: Iterable[str]) -> str:
    """"zh" when the texts hold more CJK characters than there are texts, else "en"."""
    texts = list(texts)
    return "zh" if sum("\u4e00" <= ch <= "\u9fff" for ch in "".join(texts)) > len(texts) else "en"


class Retriever:
    """TF-IDF cosine of character bigrams between a question and each row's question + answer."""

    def __init__(self, rows: Sequence[tuple[str, str]]) -> None:
        grams = [_bigrams(q + " " + a) for q, a in rows]
        df = Counter(g for x in grams for g in x)
        self.idf = {g: math.log((len(rows) + 1) / n) for g, n in df.items()}
        self.postings: dict[str, list[tuple[int, float]]] = {}
        for i, x in enumerate(grams):
            for g, w in self._vec(x).items():
                self.postings.setdefault(g, []).append((i, w))

    def _vec(self, grams: Counter) -> dict[str, float]:
        vec = {g: v * self.idf.get(g, 0.0) for g, v in grams.items()}
        norm = math.sqrt(sum(v * v for v in vec.values())) or 1.0
        return {g: v / norm for g, v in vec.items() if v}

    def scores(self, question: str) -> dict[int, float]:
        """Cosine of `question` with every row that shares a bigram with it (the others score 0)."""
        sims: dict[int, float] = {}
        for g, w in self._vec(_bigrams(question)).items():
            for i, v in self.postings.get(g, ()):
                sims[i] = sims.get(i, 0.0) + w * v
        return sims

    def top(self, question: str, k: int) -> list[int]:
        """The `k` rows most like `question`, best first (ties by row order); only rows scoring above 0."""
        sims = self.scores(question)
        return sorted((i for i in sims if sims[i] > 0), key=lambda i: (-sims[i], i))[:k]


def rows_of(conversations: Iterable[Any]) -> list[tuple[str, str]]:
    """Every user → assistant turn of `conversations` (`Conversation`s or lists of messages), once each. A later
    turn's question carries the user's question before it (one per line): a follow-up such as "审批通过后多久到账？"
    is found, and read, with the topic its conversation gave it ("客户申请退款2600元…")."""
    rows: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for conv in conversations:
        messages = getattr(conv, "messages", conv)
        asked = ""  # the user's previous question in this conversation
        for m, reply in zip(messages, messages[1:], strict=False):
            role, text = _role(m), _content(m).strip()
            if role != "user" or not text:
                continue
            if _role(reply) == "assistant" and _content(reply).strip():
                row = (f"{asked}\n{text}" if asked else text, _content(reply).strip())
                if row not in seen:
                    seen.add(row)
                    rows.append(row)
            asked = text
    return rows


def _role(m: Any) -> str:
    return m["role"] if isinstance(m, dict) else m.role


def _content(m: Any) -> str:
    return m["content"] if isinstance(m, dict) else m.content


def write_knowledge(directory: str | os.PathLike, conversations: Iterable[Any]) -> int:
    """Write `<directory>/knowledge.jsonl` (one `{"question", "answer"}` per row); returns the row count."""
    rows = rows_of(conversations)
    path = Path(directory) / KNOWLEDGE_FILE
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps({"question": q, "answer": a}, ensure_ascii=False) + "\n" for q, a in rows),
                   encoding="utf-8")
    tmp.replace(path)
    return len(rows)


class Knowledge:
    """An adapter's rows and how many of them go with each question."""

    def __init__(self, rows: list[tuple[str, str]], k: int = DEFAULT_ROWS, strength: float = 1.0) -> None:
        self.rows, self.k = rows, k
        self.strength = strength  # the adapter's strength while it reads these rows (`knowledge_strength`)
        self.lang = language(a for _, a in rows)
        self.retriever = Retriever(rows)

    def picked(self, question: str, shuffle: random.Random | None = None) -> list[int]:
        """The rows put before `question`: the closest first (or in `shuffle`'s order, for training copies:
        the right row anywhere), as many as fit the text budget (the first always does)."""
        picked = self.retriever.top(question, self.k) if self.k > 0 else []
        if shuffle is not None:
            shuffle.shuffle(picked)
        kept: list[int] = []
        size = 0
        for i in picked:
            size += len(ROW[self.lang].format(q=self.rows[i][0], a=self.rows[i][1]))
            if kept and size > MAX_CHARS:
                break
            kept.append(i)
        return kept

    def block(self, question: str, shuffle: random.Random | None = None) -> str | None:
        """The text put before the question: a header and the `picked` rows, or None when none is close."""
        return self._text(self.picked(question, shuffle))

    def _text(self, picked: list[int]) -> str | None:
        texts = [ROW[self.lang].format(q=self.rows[i][0], a=self.rows[i][1]) for i in picked]
        return HEADER[self.lang] + "\n\n".join(texts) if texts else None

    def ground(self, messages: list[dict[str, str]], system_prompt: str | None = None,
               shuffle: random.Random | None = None, read: list[dict[str, str]] | None = None) -> list[dict[str, str]]:
        """`messages` with the rows closest to the last user question (and the one before it) in the system
        message: appended to the messages' own system message, else to `system_prompt` (the adapter's
        training default), else alone. Unchanged when no row is close or there is no user message.
        `read`, when given, gets the rows put in, as `{"question", "answer"}` (what the studio shows)."""
        asked = [m["content"] for m in messages if m["role"] == "user"]
        picked = self.picked("\n".join(asked[-2:]), shuffle) if asked else []
        block = self._text(picked)
        if block is None:
            return messages
        if read is not None:
            read += [{"question": self.rows[i][0], "answer": self.rows[i][1]} for i in picked]
        if messages and messages[0]["role"] == "system":
            return [{"role": "system", "content": messages[0]["content"] + "\n\n" + block}] + messages[1:]
        head = system_prompt + "\n\n" + block if system_prompt else block
        return [{"role": "system", "content": head}] + messages


_CACHE: dict[tuple[str, int, int, int | None], Knowledge | None] = {}
_CACHE_SIZE = 32
_LOCK = threading.Lock()


def load_knowledge(adapter_dir: str | os.PathLike) -> Knowledge | None:
    """The adapter's `knowledge.jsonl` with its `knowledge_rows` and `knowledge_strength` (train_config.yaml), or
    None when the adapter has no such file (trained before it existed, or not by LoRA Studio) or was trained with
    `knowledge_rows: 0`. Cached per version of both files. A file that cannot be read raises `KnowledgeError`
    saying which line and why."""
    path = Path(adapter_dir) / KNOWLEDGE_FILE
    try:
        stat = path.stat()
    except OSError:
        return None
    try:
        config = (Path(adapter_dir) / "train_config.yaml").stat().st_mtime_ns
    except OSError:
        config = None
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, config)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
    k = _rows_setting(Path(adapter_dir))
    knowledge = Knowledge(_read_rows(path), k, _strength_setting(Path(adapter_dir))) if k > 0 else None
    with _LOCK:
        if len(_CACHE) >= _CACHE_SIZE:  # the oldest file versions go first (a retrained adapter's old rows)
            del _CACHE[next(iter(_CACHE))]
        _CACHE[key] = knowledge
    return knowledge


def grounded(messages: list[dict[str, str]], adapter_dir: str | os.PathLike, system_prompt: str | None = None,
             read: list[dict[str, str]] | None = None) -> list[dict[str, str]]:
    """`messages` grounded in the adapter's knowledge (`Knowledge.ground`, `read` gets the rows put in),
    unchanged when it has none."""
    knowledge = load_knowledge(adapter_dir)
    return knowledge.ground(messages, system_prompt, read=read) if knowledge is not None else messages


def _read_rows(path: Path) -> list[tuple[str, str]]:
    rows = []
    fix = "repair or delete that line (deleting the file makes the adapter answer from its weights alone)"
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise KnowledgeError(f"{path}, line {n}: not valid JSON ({exc.msg}); {fix}") from None
        if not (isinstance(obj, dict) and isinstance(obj.get("question"), str) and isinstance(obj.get("answer"), str)):
            raise KnowledgeError(f'{path}, line {n}: needs a "question" and an "answer" string; {fix}')
        rows.append((obj["question"], obj["answer"]))
    return rows


def reading_strength(adapter_dir: str | os.PathLike) -> float:
    """The adapter's strength while it reads its rows (`knowledge_strength`); 1.0 when it has no rows."""
    knowledge = load_knowledge(adapter_dir)
    return knowledge.strength if knowledge is not None else 1.0


def _strength_setting(adapter_dir: Path) -> float:
    value = adapter_setting(adapter_dir, "knowledge_strength")
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0
    return float(value) if ok else 1.0


def _rows_setting(adapter_dir: Path) -> int:
    value = adapter_setting(adapter_dir, "knowledge_rows")
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else DEFAULT_ROWS
