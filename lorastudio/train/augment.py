"""Offline data augmentation: more ways of asking each fact, so the model learns the fact, not the wording.

Sources, measured on the real default model (docs/QUALITY.md, bench/quality/sweep.py):

* same-fact pairs (`augment_same_fact`, on by default): a Q&A file usually asks each fact several ways
  (the demo file asks each of its 40 facts 3–4 times). Rows whose answers state the same fact are found
  by answer similarity, and each question is also trained with the answer of another row of its fact.
  Free (no generation), and the best lever we measured per trained token.
* standalone turns (`augment_turns`, on for multi-turn files): each later turn of a conversation also
  trained as a question of its own, so the fact is found without the conversation before it.
* base-model paraphrases (`augment_paraphrases` = n): the base model rewrites each question n ways;
  rewrites that are not a question, copy the original, switch language or have an odd length are
  dropped. Costs generation time; the recommender leaves it off since session 14 (with the questions in the
  loss it taught no more facts and cost general answers, docs/QUALITY.md). On a
  CPU that runs the base in llama.cpp the rewrites come from it, as the replay answers do (`generation.py`).

Everything generated is written to `<output_dir>/augmented.jsonl` so the user can read it.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lorastudio.data.facts import fact_groups
from lorastudio.data.types import Conversation, Message
from lorastudio.train.generation import generate_batch  # noqa: F401 - its old home, kept for callers

PARAPHRASE_PROMPT_ZH = ("请把下面这个问题换成{n}种不同的问法，意思必须完全相同，保留其中的专有名词和数字，不要回答问题。"
                        "每行写一个问题，不要编号，不要其他内容。\n问题：{q}")
PARAPHRASE_PROMPT_EN = ("Rewrite the following question in {n} different ways with exactly the same meaning. "
                        "Keep names and numbers. Do not answer it. One question per line, no numbering, "
                        "nothing else.\nQuestion: {q}")
PARAPHRASE_MAX_NEW_TOKENS = 256
"""Cap on one rewrite request's answer (n + 1 questions; below it, about 1.2 tokens per character asked)."""

_QUESTION = re.compile(r"(吗|呢|什么|多少|几|怎么|怎样|如何|哪|谁|是否|能否|可以|有没有|要不要|多久|多长|为何|为什么"
                       r"|\?|？|^(what|how|why|when|where|which|who|is|are|can|does|do|should|could|would)\b)",
                       re.IGNORECASE)
_CJK = re.compile(r"[\u4e00-\u9fff]")
_LIST_MARKER = re.compile(r"^\s*(\d+\s*[.、)）:：]|[-*•]|问题\s*\d*\s*[:：]|question\s*\d*\s*[:：])\s*", re.IGNORECASE)
# A short yes/no sentence opening an answer ("不能。", "会。", "Yes."): true for its own question only.
_SHORT_VERDICT = re.compile(r"^\s*([^。！？!?.，,；;:：\n]{1,4}[。！，]|(yes|no)[.,!]\s)", re.IGNORECASE)


def _is_cjk(text: str) -> bool:
    return bool(_CJK.search(text))


def is_good_paraphrase(candidate: str, original: str, seen: set[str] | None = None) -> bool:
    """A question (not a statement), not a copy of the original or of one already kept, same language,
    length within 0.5–2.5× the original."""
    seen = seen or set()
    if not candidate or candidate in seen or candidate == original:
        return False
    if not _QUESTION.search(candidate):
        return False
    ratio = len(candidate) / max(1, len(original))
    if len(candidate) < 4 or not 0.5 <= ratio <= 2.5:
        return False
    if difflib.SequenceMatcher(None, candidate, original).ratio() > 0.9:
        return False
    return _is_cjk(candidate) == _is_cjk(original)


def parse_paraphrases(text: str, original: str, n: int) -> list[str]:
    """The usable rewrites in one model output (one per line), at most n."""
    kept: list[str] = []
    seen = {original}
    for line in text.splitlines():
        candidate = _LIST_MARKER.sub("", line.strip()).strip().strip('"“”「」')
        if is_good_paraphrase(candidate, original, seen):
            kept.append(candidate)
            seen.add(candidate)
        if len(kept) >= n:
            break
    return kept


def _first_user(conv: Conversation) -> int | None:
    return next((i for i, m in enumerate(conv.messages) if m.role == "user"), None)


def _replace_question(conv: Conversation, question: str) -> Conversation:
    index = _first_user(conv)
    messages = [Message(m.role, m.content) for m in conv.messages]
    messages[index] = Message("user", question)
    return Conversation(messages, row=conv.row)


def paraphrase_questions(engine_or_model: Any, conversations: Sequence[Conversation], n: int, *,
                         tokenizer: Any = None, batch_size: int = 32,
                         on_progress: Callable[[int, int], None] | None = None, base: str | None = None,
                         device: str | None = None,
                         on_event: Callable[[dict], None] | None = None) -> list[Conversation]:
    """n reworded copies of each conversation (its first question rewritten by the base model).

    `engine_or_model`: a `ChatEngine` (anything with `.generate(messages, ...) -> str`), or a causal LM
    with its `tokenizer` (batched greedy generation, much faster per token on a CPU). With `base` (the
    trainer's call) the rewrites come from `generation.base_answers`, as the replay answers do: the
    llama.cpp engine in a child process on a CPU that runs the base, else (or if that fails, said
    through `on_event` and a warning) the causal LM given. Rows whose rewrites all fail the filters get
    fewer than n (or none): a bad paraphrase teaches the wrong question.
    """
    if n <= 0:
        return []
    convs = [c for c in conversations if _first_user(c) is not None]
    questions = [c.messages[_first_user(c)].content for c in convs]
    ask = n + 1  # ask for one more than needed: some rewrites are filtered out
    prompts = [[{"role": "user", "content": (PARAPHRASE_PROMPT_ZH if _is_cjk(q) else PARAPHRASE_PROMPT_EN)
                 .format(n=ask, q=q)}] for q in questions]
    max_new = int(min(PARAPHRASE_MAX_NEW_TOKENS, 8 + ask * (max(len(q) for q in questions) * 1.2 + 6))) if questions else 0
    if not prompts:
        outputs: list[str] = []
    elif base is not None:
        from lorastudio.train.generation import base_answers

        outputs, _engine = base_answers(base, prompts, max_new_tokens=max_new, model=engine_or_model,
                                        tokenizer=tokenizer, device=device, batch_size=batch_size,
                                        what="paraphrases", on_progress=on_progress, on_event=on_event)
    elif tokenizer is not None and not hasattr(engine_or_model, "stream"):
        outputs = generate_batch(engine_or_model, tokenizer, prompts, max_new_tokens=max_new,
                                 batch_size=batch_size, on_progress=on_progress)
    else:
        outputs = []
        for i, p in enumerate(prompts):
            outputs.append(engine_or_model.generate(p, max_new_tokens=max_new, temperature=0.0))
            if on_progress:
                on_progress(i + 1, len(prompts))
    out: list[Conversation] = []
    for conv, question, text in zip(convs, questions, outputs, strict=True):
        out += [_replace_question(conv, p) for p in parse_paraphrases(text, question, n)]
    return out


# --------------------------------------------------------------------------------------------------
# same-fact pairs
# --------------------------------------------------------------------------------------------------
def _single_turn(conv: Conversation) -> bool:
    roles = [m.role for m in conv.messages if m.role != "system"]
    return roles == ["user", "assistant"]


def strip_verdict(answer: str) -> str:
    """Drop a short yes/no opening ("不能。…" → "…"): right for the row's own question, maybe not another's."""
    stripped = _SHORT_VERDICT.sub("", answer, count=1).lstrip()
    return stripped if len(stripped) >= 0.5 * len(answer) else answer


def standalone_turns(conversations: Sequence[Conversation]) -> list[Conversation]:
    """Every later turn of a multi-turn row as a single-turn row (the row's system message kept).

    The first turn is already learnt without history; later ones ("那多久到账？") are learnt only after
    their conversation, so a customer asking the same thing cold would not reach the fact.
    """
    out: list[Conversation] = []
    for conv in conversations:
        system = [Message(m.role, m.content) for m in conv.messages if m.role == "system"][:1]
        turns = [m for m in conv.messages if m.role != "system"]
        for i in range(2, len(turns) - 1, 2):
            if turns[i].role == "user" and turns[i + 1].role == "assistant":
                out.append(Conversation(system + [Message("user", turns[i].content),
                                                  Message("assistant", turns[i + 1].content)], row=conv.row))
    return out


def same_fact_pairs(conversations: Sequence[Conversation], per_row: int = 1, seed: int = 0,
                    cycle: int = 1) -> list[Conversation]:
    """Each single-turn question paired with the answer(s) of other rows of the same fact.

    `cycle` > 1: a different sibling's answer for each of `cycle` epochs (rows carry `rotation`), as far
    as the fact has siblings; a question with one sibling keeps that one pair every epoch.
    """
    convs = list(conversations)
    single = [i for i, c in enumerate(convs) if _single_turn(c)]
    groups = fact_groups([convs[i] for i in single])
    rng = random.Random(seed)
    out: list[Conversation] = []
    for k, i in enumerate(single):
        others = [single[m] for m in range(len(single)) if m != k and groups[m] == groups[k]]
        if cycle > 1 and len(others) > per_row:
            picks = rng.sample(others, len(others))
            chosen = [(picks[(e * per_row + p) % len(picks)], (e, cycle)) for e in range(cycle) for p in range(per_row)]
        else:
            chosen = [(j, None) for j in rng.sample(others, min(per_row, len(others)))]
        for j, rotation in chosen:
            messages = [Message(m.role, m.content) for m in convs[i].messages[:-1]]
            messages.append(Message("assistant", strip_verdict(convs[j].messages[-1].content)))
            out.append(Conversation(messages, row=convs[i].row, rotation=rotation))
    return out


def epoch_cycle(cfg: Any) -> int:
    """How many epochs get a variant of their own under `augment_per_epoch` (1 = off)."""
    if not getattr(cfg, "augment_per_epoch", False):
        return 1
    return max(1, math.ceil(float(getattr(cfg, "num_epochs", 1) or 1)))


# --------------------------------------------------------------------------------------------------
# contrastive neighbour pairs (augment_contrast)
# --------------------------------------------------------------------------------------------------
_PUNCT = re.compile(r"[\s，。？！、：；“”‘’（）《》,.?!:;()\"'-]")


def _features(text: str) -> Counter:
    """Character bigrams, punctuation and spaces dropped. (Words instead, for text without Chinese characters,
    read better by eye but taught less: session 12, docs/QUALITY.md.)"""
    t = _PUNCT.sub("", text.lower())
    return Counter(t[i:i + 2] for i in range(len(t) - 1))


def _bigram_vectors(texts: Sequence[str]) -> list[dict[str, float]]:
    """Unit-length TF-IDF vectors of `_features`."""
    grams = [_features(text) for text in texts]
    df = Counter(g for x in grams for g in x)
    n = len(texts)
    vecs = []
    for x in grams:
        v = {g: c * math.log((n + 1) / df[g]) for g, c in x.items()}
        norm = math.sqrt(sum(w * w for w in v.values())) or 1.0
        vecs.append({g: w / norm for g, w in v.items()})
    return vecs


def neighbour_facts(conversations: Sequence[Conversation], groups: Sequence[int], k: int = 2,
                    min_similarity: float = 0.0) -> dict[int, list[int]]:
    """For each fact group, the k other groups whose rows (questions and answers together) read most alike:
    the facts a model is likely to answer instead ("退款多久到账" next to "大额退款要谁批")."""
    ids = sorted(set(groups))
    text = {g: "".join(c.messages[_first_user(c)].content + c.messages[-1].content
                       for c, cg in zip(conversations, groups, strict=True) if cg == g) for g in ids}
    vecs = _bigram_vectors([text[g] for g in ids])
    # dot products through an inverted index; on big files bigrams shared by more than 60 facts (low
    # weight) are left out so the work stays near linear, as in fact_groups
    postings: dict[str, list[int]] = {}
    for a, vec in enumerate(vecs):
        for b in vec:
            postings.setdefault(b, []).append(a)
    max_df = len(ids) if len(ids) <= 400 else 60
    dots: dict[tuple[int, int], float] = {}
    for b, members in postings.items():
        if len(members) > max_df:
            continue
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                key = (members[x], members[y])
                dots[key] = dots.get(key, 0.0) + vecs[members[x]][b] * vecs[members[y]][b]
    sims: dict[int, list[tuple[float, int]]] = {a: [] for a in range(len(ids))}
    for (a, b), dot in dots.items():
        sims[a].append((dot, ids[b]))
        sims[b].append((dot, ids[a]))
    out: dict[int, list[int]] = {}
    for a, g in enumerate(ids):
        best = sorted(sims[a], key=lambda x: (-x[0], x[1]))[:k]
        out[g] = [h for value, h in best if value > min_similarity]
    return out


def _ends_question(text: str) -> str:
    text = text.rstrip()
    return text if text[-1:] in ("？", "?", "。", ".", "！", "!") else text + ("？" if _is_cjk(text) else "?")


def question_turns(conversations: Sequence[Conversation]) -> list[Conversation]:
    """Every question-and-answer turn of the file as a single-turn row: single-turn rows as they are; a
    multi-turn row's first turn (its system message kept) and its later turns (`standalone_turns`)."""
    out: list[Conversation] = []
    for conv in conversations:
        if _single_turn(conv):
            out.append(conv)
            continue
        system = [Message(m.role, m.content) for m in conv.messages if m.role == "system"][:1]
        turns = [m for m in conv.messages if m.role != "system"]
        if len(turns) >= 2 and turns[0].role == "user" and turns[1].role == "assistant":
            out.append(Conversation(system + [Message("user", turns[0].content),
                                              Message("assistant", turns[1].content)], row=conv.row))
        out += standalone_turns([conv])
    return out


def contrast_plan(conversations: Sequence[Conversation], k: int = 2) -> tuple[list[Conversation], list[list[int]]]:
    """The questions contrastive pairs are built from (`question_turns` that read as questions) and, for
    each, the questions of its k neighbouring facts (`neighbour_facts`; empty: no neighbour, no pair).
    `contrast_pairs` trains from it; the recommender counts from it (how many pairs, how long)."""
    units, _groups, candidates = _contrast_plan(conversations, k)
    return units, candidates


def _contrast_plan(conversations: Sequence[Conversation], k: int) -> tuple[list[Conversation], list[int],
                                                                              list[list[int]]]:
    """`contrast_plan` with each question's fact group (`fact_groups`) too."""
    units = [c for c in question_turns(conversations) if _QUESTION.search(c.messages[_first_user(c)].content)]
    if len(units) < 2:
        return units, list(range(len(units))), [[] for _ in units]
    groups = fact_groups(units)
    near = neighbour_facts(units, groups, k=k)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    return units, groups, [[j for h in near[groups[i]] for j in members[h]] for i in range(len(units))]


JOINERS_ZH = ("另外，", "", "还有，", "顺便问下，", "对了，", "再问一下，")
JOINERS_EN = (" Also, ", " ", " And ", " One more thing: ", " By the way, ", " Another question: ")
"""How two questions are joined into one: `contrast_joiners="also"` always takes the first, "varied" draws
one per pair (people ask two things in many ways: "…？…？", "…？还有，…？")."""


def _joined(conv: Conversation, other: Conversation, joiner: int = 0) -> tuple[str, str]:
    q_i = conv.messages[_first_user(conv)].content
    q_j = other.messages[_first_user(other)].content
    joiners = JOINERS_ZH if _is_cjk(q_i) else JOINERS_EN
    question = _ends_question(q_i) + joiners[joiner % len(joiners)] + _ends_question(q_j)
    return question, conv.messages[-1].content.rstrip() + "\n" + other.messages[-1].content.strip()


def contrast_pairs(conversations: Sequence[Conversation], seed: int = 0, cycle: int = 1,
                   k: int = 2, passes: int = 0, random_share: float = 0.0,
                   joiners: str = "also") -> list[Conversation]:
    """Two neighbouring facts asked in one question, each part answered with its OWN row's answer.

    Every other question (the other half in the next epoch) is joined with a question of a neighbouring
    fact ("…？另外，…？") and trained with both rows' answers in that order, so the model learns to keep
    close facts apart instead of answering the neighbour. The questions are the file's single-turn rows
    and, for multi-turn rows, each turn on its own (`question_turns`). Under `cycle` > 1 a row pairs with a
    different neighbour row each epoch (rows carry `rotation`); `passes` > 0 keeps the pairs to the first
    `passes` epochs of the cycle (two passes pair every question once). `random_share` of the pairs (drawn
    per pair) join a question of a fact that is no neighbour instead, so two unrelated facts asked at once
    are answered too. `joiners`: "also" joins every pair with "另外，" / "Also,"; "varied" draws the joiner
    per pair from `JOINERS_ZH`/`JOINERS_EN` (a separate generator: the pairs themselves stay the same).
    Nothing is generated.
    """
    convs, groups, candidates_of = _contrast_plan(conversations, k)
    rng = random.Random(seed)
    joiner_rng = random.Random(seed + 1) if joiners == "varied" else None
    out: list[Conversation] = []
    for i, conv in enumerate(convs):
        candidates = list(candidates_of[i])
        if not candidates:
            continue
        rng.shuffle(candidates)
        for epoch in range(min(cycle, passes) if passes and cycle > 1 else cycle):
            if (i + epoch) % 2:  # half the rows each epoch, the other half the next
                continue
            j = candidates[epoch % len(candidates)]
            if random_share > 0 and rng.random() < random_share:
                for _ in range(32):  # a few draws find a fact that is neither this one nor a neighbour
                    x = rng.randrange(len(convs))
                    if groups[x] != groups[i] and x not in candidates_of[i]:
                        j = x
                        break
            question, answer = _joined(conv, convs[j], joiner_rng.randrange(len(JOINERS_ZH)) if joiner_rng else 0)
            messages = [Message(m.role, m.content) for m in conv.messages[:-2]]
            messages += [Message("user", question), Message("assistant", answer)]
            out.append(Conversation(messages, row=conv.row, rotation=(epoch, cycle) if cycle > 1 else None))
    return out


# --------------------------------------------------------------------------------------------------
# applied cases (augment_cases)
# --------------------------------------------------------------------------------------------------
# unit → (dimension, factor to the dimension's base unit); longest spellings first in the regex
_UNITS: dict[str, tuple[str, float]] = {
    "个工作日": ("workday", 1), "分钟": ("time", 60), "小时": ("time", 3600), "秒": ("time", 1),
    "天": ("time", 86400), "周": ("time", 604800), "块钱": ("money", 1), "元": ("money", 1), "块": ("money", 1),
    "分": ("score", 1), "次": ("count", 1), "%": ("percent", 1), "张": ("sheet", 1), "点": ("clock", 1),
}
_UNIT_RE = "|".join(sorted(map(re.escape, _UNITS), key=len, reverse=True))
_NUM = r"(?<![\d.:：A-Za-z_-])(\d+(?:\.\d+)?)"
_AMOUNT = re.compile(_NUM + r"\s*(" + _UNIT_RE + r")(?!钟)")
_RANGE = re.compile(_NUM + r"\s*[-~～至到]\s*(\d+(?:\.\d+)?)\s*(" + _UNIT_RE + r")(?!钟)")
_CLOCK = re.compile(r"(?<![\d.])(\d{1,2})[:：](\d{2})(?!\d)")
_RULE_WORD = re.compile(r"(超过|高于|低于|不足|少于|满|至少|不少于|不超过|多于|大于|小于|≥|≤|>|<|以上|以下|以内|多少|几)")
# a threshold an answer states: (comparator before, number, unit) or (number, unit, comparator after)
_UP_BEFORE = re.compile(r"(超过|高于|满|至少|不少于|大于|多于|≥|>)\s*" + _NUM + r"\s*(" + _UNIT_RE + r")(?!钟)")
_DOWN_BEFORE = re.compile(r"(低于|不足|少于|不超过|小于|≤|<)\s*" + _NUM + r"\s*(" + _UNIT_RE + r")(?!钟)")
_AFTER = re.compile(_NUM + r"\s*(" + _UNIT_RE + r")(?!钟)\s*(以上|以下|以内)")
CASE_TEMPLATES_ZH = ("{q}比如{x}呢？", "{q}要是{x}呢？")
CASE_TEMPLATES_EN = ("{q} What about {x}?", "{q} Say, {x}?")
# what a rule question asks about → the unit kind its case must have ("多久…？比如60小时呢？")
_ASKS = (("time", re.compile(r"多久|多长时间|几天|几小时|几秒|时限|时长|how long", re.I)),
         ("money", re.compile(r"多少钱|多少元|金额|补偿|消费|退款|how much", re.I)),
         ("count", re.compile(r"几次|次数|多少次|how many times", re.I)),
         ("score", re.compile(r"多少分|几分|分数|得分|门槛")),
         ("percent", re.compile(r"比例|百分|考核线|percent", re.I)),
         ("sheet", re.compile(r"几张|照片")))
_CN_AMOUNT = re.compile(r"[一二两三四五六七八九十百千万半]+\s*(" + _UNIT_RE + r")(?!钟)")


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}".rstrip("0").rstrip(".")


def _stated_values(text: str) -> list[tuple[str, float]]:
    """(dimension, value in base units) of every amount in `text` (ranges "50-200元" count both ends)."""
    out = [(_UNITS[u][0], float(v) * _UNITS[u][1]) for v, u in _AMOUNT.findall(text)]
    out += [(_UNITS[u][0], float(a) * _UNITS[u][1]) for a, _b, u in _RANGE.findall(text)]
    out += [("clock", int(h) + int(m) / 60) for h, m in _CLOCK.findall(text)]
    return out


def _nice_choices(low: float, high: float, exclude: set[float], step: float) -> list[float]:
    first = math.floor(low / step) * step + step
    values = []
    x = first
    while x < high - 1e-9 and len(values) < 400:
        if x > low + 1e-9 and all(abs(x - e) > 1e-9 for e in exclude):
            values.append(round(x, 6))
        x += step
    return values


def case_variants(conv: Conversation, rng: random.Random, n: int) -> list[Conversation]:
    """Up to n copies of a case question ("客户要退一台3500元的设备…") with its amount moved to other values
    on the same side of every threshold its answer states (same unit kind), in question and answer alike,
    so the answer stays right. Rule questions ("超过200元怎么走流程？") are not cases: none."""
    q_index = _first_user(conv)
    question, answer = conv.messages[q_index].content, conv.messages[-1].content
    found = [m for m in _AMOUNT.finditer(question)]
    if len(found) != 1:
        return []
    m = found[0]
    before = question[max(0, m.start() - 4):m.start()]
    if _RULE_WORD.search(before) or _RULE_WORD.search(question[m.end():m.end() + 3]):
        return []
    value, unit = float(m.group(1)), m.group(2)
    dim, factor = _UNITS[unit]
    base = value * factor
    bounds = sorted({v for d, v in _stated_values(answer) if d == dim and abs(v - base) > 1e-9})
    if not bounds:
        return []  # no threshold to stay on one side of: the answer may hold only for this amount
    low = max([b for b in bounds if b < base], default=base / 2) / factor
    high = min([b for b in bounds if b > base], default=base * 2) / factor
    step = 100.0 if value >= 1000 else 10.0 if value >= 100 else 1.0
    choices = _nice_choices(low, high, {value}, step) or _nice_choices(low, high, {value}, 1.0)
    if not choices:
        return []
    token = re.compile(r"(?<![\d.])" + re.escape(m.group(1)) + r"(?=\s*" + re.escape(unit) + r")")
    out = []
    for x in rng.sample(choices, min(n, len(choices))):
        messages = [Message(mm.role, mm.content) for mm in conv.messages]
        messages[q_index] = Message("user", token.sub(_fmt(x), question))
        messages[-1] = Message("assistant", token.sub(_fmt(x), answer))
        out.append(Conversation(messages, row=conv.row))
    return out


def rule_cases(conv: Conversation, rng: random.Random, n: int) -> list[Conversation]:
    """Up to n case copies of a rule question ("退款金额多少以上需要财务复核？") whose answer states a threshold
    of the kind the question asks about ("超过2000元"): a concrete amount past the threshold is appended
    ("…比如3500元呢？") and the row's own answer kept (its yes/no opening dropped, since the case is new).
    Questions that already name an amount, or ask about another kind of thing, get none."""
    q_index = _first_user(conv)
    question, answer = conv.messages[q_index].content, conv.messages[-1].content
    if _AMOUNT.search(question) or _CN_AMOUNT.search(question) or not _QUESTION.search(question):
        return []
    asked = {dim for dim, pattern in _ASKS if pattern.search(question)}
    thresholds = [(1, float(v), u) for _w, v, u in _UP_BEFORE.findall(answer)]
    thresholds += [(-1, float(v), u) for _w, v, u in _DOWN_BEFORE.findall(answer)]
    thresholds += [(1 if w == "以上" else -1, float(v), u) for v, u, w in _AFTER.findall(answer)]
    thresholds = [t for t in thresholds if _UNITS[t[2]][0] in asked]
    if not thresholds:
        return []
    cjk = _is_cjk(question)
    templates = CASE_TEMPLATES_ZH if cjk else CASE_TEMPLATES_EN
    reply = strip_verdict(answer)
    out = []
    for k in range(n):
        direction, value, unit = thresholds[(k + rng.randrange(len(thresholds))) % len(thresholds)]
        x = value * (rng.uniform(1.2, 2.0) if direction > 0 else rng.uniform(0.3, 0.8))
        if unit == "%":
            x = min(x, (value + 100) / 2)
        x = round(x, -2) if x >= 1000 else round(x, -1) if x >= 100 else round(x) if x >= 3 or unit != "秒" else round(x, 1)
        if x <= 0 or x == value or (direction > 0) != (x > value):
            continue
        amount = _fmt(x) + ("" if cjk else " ") + unit
        text = templates[(k + rng.randrange(len(templates))) % len(templates)].format(q=question.rstrip(), x=amount)
        messages = [Message(mm.role, mm.content) for mm in conv.messages]
        messages[q_index] = Message("user", text)
        messages[-1] = Message("assistant", reply)
        out.append(Conversation(messages, row=conv.row))
    return out


def applied_cases(conversations: Sequence[Conversation], seed: int = 0, cycle: int = 1) -> list[Conversation]:
    """New cases of the rules the rows state, built from the rows alone (no model, no new facts):
    `case_variants` for questions about one case, `rule_cases` for rule questions with a threshold.
    One variant per row and epoch (rows carry `rotation` under `cycle` > 1)."""
    rng = random.Random(seed)
    out: list[Conversation] = []
    for conv in conversations:
        if not _single_turn(conv):
            continue
        variants = case_variants(conv, rng, cycle) or rule_cases(conv, rng, cycle)
        for epoch, variant in enumerate(variants):
            if cycle > 1:
                variant.rotation = (epoch, cycle)
            out.append(variant)
    return out


# --------------------------------------------------------------------------------------------------
# the rows beside the question (augment_grounded)
# --------------------------------------------------------------------------------------------------
def grounded_copies(conversations: Sequence[Conversation], share: float, k: int, system_prompt: str | None = None,
                    seed: int = 0, cycle: int = 1) -> list[Conversation]:
    """Copies of the user's turns with their `k` closest rows in the system message, built by the same
    `Knowledge.ground` the engine answers with (lorastudio/knowledge.py), the rows shuffled. A later turn's copy
    is its conversation up to that answer. Each turn gets a copy in `share` of the passes (rows carry `rotation`
    under `cycle` > 1; with one variant for every pass, in `share` of the turns)."""
    from lorastudio.knowledge import Knowledge, rows_of

    knowledge = Knowledge(rows_of(conversations), k)
    rng = random.Random(seed * 7919 + 17)
    out: list[Conversation] = []
    for conv in conversations:
        messages = [{"role": m.role, "content": m.content} for m in conv.messages]
        for end, m in enumerate(messages):
            if m["role"] != "assistant" or end == 0 or messages[end - 1]["role"] != "user":
                continue
            for epoch in range(cycle):
                if rng.random() >= share:
                    continue
                prefix = messages[:end + 1]
                grounded = knowledge.ground(prefix, system_prompt, shuffle=rng)
                if grounded is prefix:  # no row shares a bigram with the question
                    continue
                copy = Conversation([Message(x["role"], x["content"]) for x in grounded], row=conv.row)
                if cycle > 1:
                    copy.rotation = (epoch, cycle)
                out.append(copy)
    return out


# --------------------------------------------------------------------------------------------------
# the trainer's hook
# --------------------------------------------------------------------------------------------------
def augment_conversations(conversations: Sequence[Conversation], *, model: Any = None, tokenizer: Any = None,
                          cfg: Any = None, on_event: Callable[[dict], None] | None = None) -> list[Conversation]:
    """The training conversations plus their augmented copies; writes `<output_dir>/augmented.jsonl`.

    Called by `train(cfg)` when `cfg.augment_same_fact`, `cfg.augment_turns` or `cfg.augment_paraphrases` is set.
    """
    conversations = list(conversations)
    added: list[tuple[str, Conversation]] = []
    seed = int(getattr(cfg, "seed", 0) or 0)
    if getattr(cfg, "augment_turns", False):
        added += [("turn", c) for c in standalone_turns(conversations)]
    if getattr(cfg, "augment_same_fact", False):
        # the standalone turns join the pool: a fact told in a follow-up also pairs with its other askings
        pool = conversations + [c for source, c in added if source == "turn"]
        added += [("same_fact", c) for c in same_fact_pairs(pool, seed=seed, cycle=epoch_cycle(cfg))]
    if getattr(cfg, "augment_contrast", False):
        added += [("contrast", c) for c in contrast_pairs(conversations, seed=seed, cycle=epoch_cycle(cfg),
                                                          passes=int(getattr(cfg, "contrast_passes", 0) or 0),
                                                          random_share=float(getattr(cfg, "contrast_random", 0.0)
                                                                             or 0.0),
                                                          k=int(getattr(cfg, "contrast_neighbours", 2) or 2),
                                                          joiners=str(getattr(cfg, "contrast_joiners", "varied")))]
    if getattr(cfg, "augment_cases", False):
        added += [("case", c) for c in applied_cases(conversations, seed=seed, cycle=epoch_cycle(cfg))]
    share = float(getattr(cfg, "augment_grounded", 0.0) or 0.0)
    if share:
        added += [("grounded", c) for c in grounded_copies(conversations, share, int(getattr(cfg, "knowledge_rows", 6)),
                                                           getattr(cfg, "system_prompt", None), seed=seed,
                                                           cycle=epoch_cycle(cfg))]
    n = int(getattr(cfg, "augment_paraphrases", 0) or 0)
    if n and model is not None:
        def progress(done: int, total: int) -> None:
            if on_event:
                on_event({"type": "stage", "stage": "prepare",
                          "message": f"writing paraphrases with the base model: {done}/{total} questions"})

        added += [("paraphrase", c) for c in paraphrase_questions(
            model, conversations, n, tokenizer=tokenizer, on_progress=progress,
            base=str(getattr(cfg, "base", None) or "default"), device=getattr(cfg, "device", None),
            on_event=on_event)]
    output_dir = getattr(cfg, "output_dir", None)
    if output_dir:
        write_augmented(Path(output_dir) / "augmented.jsonl", added)
    return conversations + [c for _, c in added]


def write_augmented(path: Path, rows: list[tuple[str, Conversation]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # own temp file: under --gpus every rank writes it
    with open(tmp, "w", encoding="utf-8") as f:
        for source, conv in rows:
            extra = {"epoch": conv.rotation[0] + 1, "every": conv.rotation[1]} if conv.rotation else {}
            f.write(json.dumps({**conv.to_dict(), "source": source, "row": conv.row, **extra},
                               ensure_ascii=False) + "\n")
    tmp.replace(path)


__all__ = ["applied_cases", "augment_conversations", "case_variants", "contrast_pairs", "contrast_plan", "epoch_cycle",
           "fact_groups", "grounded_copies", "is_good_paraphrase", "neighbour_facts", "paraphrase_questions", "parse_paraphrases",
           "question_turns", "rule_cases", "same_fact_pairs", "standalone_turns", "strip_verdict"]
