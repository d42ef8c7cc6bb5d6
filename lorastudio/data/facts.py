"""Which rows state the same fact: answer similarity, no model (used by augmentation and the split)."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

from lorastudio.data.types import Conversation

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def fact_groups(conversations: Sequence[Conversation], threshold: float = 0.3) -> list[int]:
    """A group id per conversation: rows whose last answers state the same fact share one.

    TF-IDF cosine of character bigrams ≥ threshold, single link (works for Chinese and English; on the
    demo file: 46 groups for its 40 facts). Two answers whose numbers conflict (neither set of digit
    strings contains the other: "订单YZ-0001…" vs "订单YZ-0002…") never link, so templated rows about
    different orders, products or prices stay apart however alike their wording.
    """
    answers = [c.messages[-1].content if c.messages else "" for c in conversations]
    grams = [Counter(a[i:i + 2] for i in range(len(a) - 1)) for a in answers]
    df = Counter(g for x in grams for g in x)
    n = len(answers)
    vecs = [{g: v * math.log((n + 1) / df[g]) for g, v in x.items()} for x in grams]  # +1: no zero idf
    norms = [math.sqrt(sum(v * v for v in x.values())) or 1.0 for x in vecs]
    numbers = [frozenset(_NUMBER.findall(a)) for a in answers]
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    # Dot products through an inverted index; on big files bigrams in more than 60 rows (low weight)
    # are left out so the pair count stays near linear (10,000 templated rows: well under a second).
    postings: dict[str, list[int]] = {}
    for i, vec in enumerate(vecs):
        for g in vec:
            postings.setdefault(g, []).append(i)
    max_df = n if n <= 400 else 60
    dots: dict[tuple[int, int], float] = {}
    for g, rows in postings.items():
        if len(rows) > max_df:
            continue
        for a in range(len(rows)):
            wa = vecs[rows[a]][g]
            for b in range(a + 1, len(rows)):
                key = (rows[a], rows[b])
                dots[key] = dots.get(key, 0.0) + wa * vecs[rows[b]][g]
    for (i, j), dot in dots.items():
        if dot / (norms[i] * norms[j]) >= threshold and (numbers[i] <= numbers[j] or numbers[j] <= numbers[i]):
            parent[find(i)] = find(j)
    return [find(i) for i in range(n)]


__all__ = ["fact_groups"]
