"""Deterministic train/validation split that never lets one question sit on both sides."""

from __future__ import annotations

import random

from lorastudio.data.checks import dedup_key
from lorastudio.data.types import Conversation

MIN_ROWS_FOR_VALIDATION = 50


def split_train_val(conversations: list[Conversation], val_fraction: float = 0.1,
                    seed: int = 0) -> tuple[list[Conversation], list[Conversation]]:
    """(train, val), both in the original order.

    Sets smaller than 50 rows keep everything for training (val is empty): a handful of held-out
    rows gives a noisy loss and costs the model facts it should learn. Conversations are grouped by
    their (normalised) user turns so paraphrase-free duplicates of a question never straddle the
    split, which would make validation loss look better than it is.
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
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    target = max(1, round(n * val_fraction))
    val_idx: set[int] = set()
    for members in order:
        if len(val_idx) >= target:
            break
        if len(val_idx) + len(members) > target and val_idx:
            continue  # a big group would overshoot; a later, smaller one may fit
        val_idx.update(members)
    if len(val_idx) >= n:  # everything landed in one group: keep training data
        return list(conversations), []
    train = [c for i, c in enumerate(conversations) if i not in val_idx]
    val = [c for i, c in enumerate(conversations) if i in val_idx]
    return train, val
