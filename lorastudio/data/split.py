"""Deterministic train/validation split: reworded questions of facts still trained, never one question on both sides."""

from __future__ import annotations

import random

from lorastudio.data.checks import dedup_key
from lorastudio.data.facts import fact_groups
from lorastudio.data.types import Conversation

MIN_ROWS_FOR_VALIDATION = 50


MIN_REWORDED = 5
"""Fewer reworded questions than this and the split falls back to whole rows chosen at random."""


def split_train_val(conversations: list[Conversation], val_fraction: float = 0.1,
                    seed: int = 0) -> tuple[list[Conversation], list[Conversation]]:
    """(train, val), both in the original order.

    Sets smaller than 50 rows keep everything for training (val is empty): a handful of held-out
    rows gives a noisy loss and costs the model facts it should learn.

    Validation is made of reworded questions where the file has them: for facts asked in several ways
    (rows whose answers state the same fact, `fact_groups`), one wording is held out and the others
    stay in training, so the fact is still learnt and validation loss measures what users need,
    answering a new wording of a known fact. A fact asked only once is never held out. Files with fewer
    than `MIN_REWORDED` such questions fall back to random rows. Either way conversations are grouped
    by their (normalised) user turns, so duplicates of a question never straddle the split.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(conversations)
    if n < MIN_ROWS_FOR_VALIDATION or val_fraction == 0.0:
        return list(conversations), []
    groups: dict[tuple, list[int]] = {}
    for i, conv in enumerate(conversations):
        key = tuple(dedup_key(m.content) for m in conv.messages if m.role == "user")
        groups.setdefault(key, []).append(i)
    target = max(1, round(n * val_fraction))
    val_idx = _reworded(conversations, list(groups.values()), target, seed)
    if len(val_idx) < MIN_REWORDED:
        val_idx = _fill(list(groups.values()), target, seed)
    if len(val_idx) >= n:  # everything landed in one group: keep training data
        return list(conversations), []
    train = [c for i, c in enumerate(conversations) if i not in val_idx]
    val = [c for i, c in enumerate(conversations) if i in val_idx]
    return train, val


def _fill(question_groups: list[list[int]], target: int, seed: int) -> set[int]:
    """Whole question groups in a seeded order until `target` rows (never overshooting with a big one)."""
    order = list(question_groups)
    random.Random(seed).shuffle(order)
    val_idx: set[int] = set()
    for members in order:
        if len(val_idx) >= target:
            break
        if len(val_idx) + len(members) > target and val_idx:
            continue  # a big group would overshoot; a later, smaller one may fit
        val_idx.update(members)
    return val_idx


def _reworded(conversations: list[Conversation], question_groups: list[list[int]], target: int,
              seed: int) -> set[int]:
    """One wording of each fact asked in two or more ways, up to `target` rows."""
    fact_of = fact_groups(conversations)
    wordings: dict[int, list[list[int]]] = {}
    for members in question_groups:
        wordings.setdefault(fact_of[members[0]], []).append(members)
    rng = random.Random(seed)
    held_out = [rng.choice(options) for _, options in sorted(wordings.items()) if len(options) >= 2]
    return _fill(held_out, target, seed)
