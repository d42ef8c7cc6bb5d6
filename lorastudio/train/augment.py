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
  dropped. Costs generation time, so the recommender turns it on where generation is cheap (GPU).

Everything generated is written to `<output_dir>/augmented.jsonl` so the user can read it.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lorastudio.data.facts import fact_groups
from lorastudio.data.types import Conversation, Message

PARAPHRASE_PROMPT_ZH = ("请把下面这个问题换成{n}种不同的问法，意思必须完全相同，保留其中的专有名词和数字，不要回答问题。"
                        "每行写一个问题，不要编号，不要其他内容。\n问题：{q}")
PARAPHRASE_PROMPT_EN = ("Rewrite the following question in {n} different ways with exactly the same meaning. "
                        "Keep names and numbers. Do not answer it. One question per line, no numbering, "
                        "nothing else.\nQuestion: {q}")

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
                         on_progress: Callable[[int, int], None] | None = None) -> list[Conversation]:
    """n reworded copies of each conversation (its first question rewritten by the base model).

    `engine_or_model`: a `ChatEngine` (anything with `.generate(messages, ...) -> str`), or a causal LM
    with its `tokenizer` (batched greedy generation, much faster per token on a CPU). Rows whose rewrites
    all fail the filters get fewer than n (or none): a bad paraphrase teaches the wrong question.
    """
    if n <= 0:
        return []
    convs = [c for c in conversations if _first_user(c) is not None]
    questions = [c.messages[_first_user(c)].content for c in convs]
    ask = n + 1  # ask for one more than needed: some rewrites are filtered out
    prompts = [[{"role": "user", "content": (PARAPHRASE_PROMPT_ZH if _is_cjk(q) else PARAPHRASE_PROMPT_EN)
                 .format(n=ask, q=q)}] for q in questions]
    max_new = int(min(256, 8 + ask * (max(len(q) for q in questions) * 1.2 + 6))) if questions else 0
    if tokenizer is not None and not hasattr(engine_or_model, "stream"):
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


def generate_batch(model: Any, tokenizer: Any, prompts: list[list[dict]], *, max_new_tokens: int,
                   batch_size: int = 32, on_progress: Callable[[int, int], None] | None = None) -> list[str]:
    """Greedy answers for many chats at once (left padding; longest first so batches pad little)."""
    import torch

    order = sorted(range(len(prompts)), key=lambda i: -len(json.dumps(prompts[i], ensure_ascii=False)))
    texts = [tokenizer.apply_chat_template(prompts[i], tokenize=False, add_generation_prompt=True) for i in order]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    was_training = model.training
    model.eval()
    results: dict[int, str] = {}
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                                  add_special_tokens=False).to(device)
                generated = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                           temperature=None, top_p=None, top_k=None,
                                           pad_token_id=tokenizer.pad_token_id)
                for j, seq in enumerate(generated[:, batch["input_ids"].shape[1]:]):
                    results[order[start + j]] = tokenizer.decode(seq, skip_special_tokens=True).strip()
                if on_progress:
                    on_progress(min(start + batch_size, len(texts)), len(texts))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return [results[i] for i in range(len(prompts))]


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
    n = int(getattr(cfg, "augment_paraphrases", 0) or 0)
    if n and model is not None:
        def progress(done: int, total: int) -> None:
            if on_event:
                on_event({"type": "stage", "stage": "prepare",
                          "message": f"writing paraphrases with the base model: {done}/{total} questions"})

        added += [("paraphrase", c) for c in paraphrase_questions(model, conversations, n, tokenizer=tokenizer,
                                                                   on_progress=progress)]
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


__all__ = ["augment_conversations", "epoch_cycle", "fact_groups", "is_good_paraphrase", "paraphrase_questions",
           "parse_paraphrases", "same_fact_pairs", "standalone_turns", "strip_verdict"]
