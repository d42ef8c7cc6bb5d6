"""A template head shared by the examples of a packed row, computed once (issue 13; `cpu.customize`).

With the default data every example starts with the same tokens: Qwen's chat template adds its
system prompt and the user header (`<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You
are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n`, 24 tokens of ~78 per example in
yunzhan_train.jsonl, 31 %). Causal attention makes the hidden states of those P tokens the same in
every example, so a packed row of n examples can hold them once:

    [shared head (positions 0…P-1)] [rest of example 1 (positions P…)] [rest of example 2 (P…)] …

where the rest of each example attends to the head and to itself (causal), never to another
example. Loss and gradients are those of the row with the head repeated (the head's gradient is the
sum of what each example sends it — autograd adds it up), up to fp32 rounding: nothing is approximated
(`tests/test_cpu_speed.py`). The row computes (n-1)·P fewer tokens in every layer; the LM head runs
on the same target positions.

Used only when it is exact and worth it: at least 2 examples share ≥ `MIN_PREFIX` leading tokens,
no target lies inside the head (no label on tokens 1…P of any example), and each example keeps ≥ 1
token after it. Otherwise the row goes through `kernels.packed_loss` unchanged. LoRA dropout on the head
then draws one mask for the head instead of one per example (same distribution); NEFTune (noise per
example on the embeddings) is incompatible, so `cpu.customize` leaves this off when it is set.

Switch: `LORASTUDIO_CPU_PREFIX=1/0`; unset: `cpu.customize` decides.
"""

from __future__ import annotations

import contextvars
from itertools import accumulate
from typing import Any

from lorastudio.train import kernels

ENV = "LORASTUDIO_CPU_PREFIX"
MIN_PREFIX = 8
SMALL_DOC = 256
"""A segment whose head + own tokens are ≤ this many goes through fp32 matmul + softmax, longer ones
through sdpa with an explicit (own tokens × head + own tokens) mask — as `kernels.doc_attention`."""
NAME = "lorastudio_prefix"

_LAYOUT: contextvars.ContextVar[int] = contextvars.ContextVar("lorastudio_prefix_len", default=0)


# ------------------------------------------------------------------------------------------------
# The row with its shared head once
# ------------------------------------------------------------------------------------------------
def shared_prefix(docs: list[list[int]], labels: list[list[int]]) -> int:
    """Length P of the head all `docs` share and may share (no label on tokens 1…P, ≥ 1 token after
    it in each); 0 when fewer than 2 docs or P < MIN_PREFIX."""
    if len(docs) < 2:
        return 0
    limit = min(len(d) for d in docs) - 1
    p = 0
    first = docs[0]
    while p < limit and all(d[p] == first[p] for d in docs[1:]):
        p += 1
    # token j's label is predicted at position j-1: the head's positions predict tokens 1…P
    while p > 0 and any(lab[j] != kernels.IGNORE_INDEX for lab in labels for j in range(1, p + 1)):
        p = next(j for j in range(1, p + 1) if any(lab[j] != kernels.IGNORE_INDEX for lab in labels)) - 1
    return p if p >= MIN_PREFIX else 0


def shared_batch(batch: dict[str, Any]) -> dict[str, Any] | None:
    """`kernels.packed_batch`'s dict for the row with its shared head once, or None (no head to share).
    `batch`: the trainer's packed row (input_ids, position_ids, labels[, lengths])."""
    import torch

    ids = torch.as_tensor(batch["input_ids"]).reshape(-1)
    labels = torch.as_tensor(batch["labels"]).reshape(-1)
    lengths = kernels.document_lengths(torch.as_tensor(batch["position_ids"]), batch.get("lengths"))
    if len(lengths) < 2:
        return None
    starts = [0, *accumulate(lengths)][:-1]
    id_list, lab_list = ids.tolist(), labels.tolist()
    rep_list = torch.as_tensor(batch["repeats"]).reshape(-1).tolist() if batch.get("repeats") is not None \
        else [1] * len(id_list)
    docs = [id_list[s:s + n] for s, n in zip(starts, lengths, strict=True)]
    labs = [lab_list[s:s + n] for s, n in zip(starts, lengths, strict=True)]
    reps = [rep_list[s:s + n] for s, n in zip(starts, lengths, strict=True)]
    p = shared_prefix(docs, labs)
    if not p:
        return None
    new_ids, new_pos, index, targets, weights = list(docs[0][:p]), list(range(p)), [], [], []
    offset = p
    for doc, lab, rep in zip(docs, labs, reps, strict=True):
        n = len(doc)
        new_ids.extend(doc[p:])
        new_pos.extend(range(p, n))
        for t in range(p, n - 1):  # position t predicts token t+1 of the same example
            if lab[t + 1] != kernels.IGNORE_INDEX:
                index.append(offset + t - p)
                targets.append(lab[t + 1])
                weights.append(rep[t + 1])
        offset += n - p
    seg = [p, *(n - p for n in lengths)]
    device = ids.device
    return {"input_ids": torch.tensor([new_ids], device=device), "position_ids": torch.tensor([new_pos], device=device),
            "cu_seq_lens": torch.tensor([0, *accumulate(seg)], dtype=torch.int32, device=device), "lengths": seg,
            "max_length": max(seg), "target_index": torch.tensor(index, dtype=torch.long, device=device),
            "target_ids": torch.tensor(targets, dtype=torch.long, device=device),
            "target_weights": torch.tensor(weights, dtype=torch.float32, device=device)
            if batch.get("repeats") is not None else None, "num_targets": sum(weights),
            "num_tokens": int(ids.numel()), "prefix": p}


# ------------------------------------------------------------------------------------------------
# Attention: the head causal on its own, each example's rest over [head, itself]
# ------------------------------------------------------------------------------------------------
def _segment_attention(q: Any, k: Any, v: Any, prefix: int, scale: float | None, p_drop: float) -> Any:
    """q (1, H, m, D) of one segment; k/v (1, Hkv, prefix + m, D): the head's keys then the segment's.
    Query i sees all `prefix` head keys and its own keys 0…i. Returns (1, m, H, D)."""
    import torch
    import torch.nn.functional as F

    _, h, m, d = q.shape
    kv, n = k.shape[1], k.shape[2]
    if n <= SMALL_DOC and not p_drop:
        return kernels.small_doc_attention(q, k, v, scale)
    mask = torch.ones(m, n, dtype=torch.bool, device=q.device).triu_(1 + prefix)  # True = not seen
    scale = scale if scale is not None else d ** -0.5
    return F.scaled_dot_product_attention(q, k, v, attn_mask=~mask, dropout_p=p_drop, scale=scale,
                                          enable_gqa=kv != h).transpose(1, 2)


def prefix_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                     scaling: float | None = None, dropout: float = 0.0, **kwargs: Any) -> tuple[Any, None]:
    """The attention of a row from `shared_batch` (segments [head, rest 1, rest 2, …] in
    `cu_seq_lens_q`); any other row goes to the attention function that was there before (`enable`)."""
    import torch

    prefix = _LAYOUT.get()
    if not prefix:
        return _fallback(module)(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    cu = kwargs["cu_seq_lens_q"]
    cu = cu.tolist() if hasattr(cu, "tolist") else list(cu)
    seg = [b - a for a, b in zip(cu[:-1], cu[1:], strict=True)]
    p_drop = dropout if module.training else 0.0
    qs, ks, vs = (t.split(seg, dim=2) for t in (query, key, value))
    outs = [_segment_attention(qs[0], ks[0], vs[0], 0, scaling, p_drop)]
    for q, k, v in zip(qs[1:], ks[1:], vs[1:], strict=True):
        outs.append(_segment_attention(q, torch.cat((ks[0], k), dim=2), torch.cat((vs[0], v), dim=2), prefix,
                                       scaling, p_drop))
    return torch.cat(outs, dim=1), None


_FALLBACK_ATTR = "_lorastudio_prefix_fallback"


def _fallback(module: Any) -> Any:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS[getattr(module, _FALLBACK_ATTR, None) or "sdpa"]


def enable(model: Any) -> str:
    """Make the model's attention `prefix_attention` (idempotent); the implementation it had (the
    CPU fast path's per-document attention) stays the one for rows without a shared head (kept on
    each attention module, not in the config)."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, prefix_attention)
    backbone, _ = kernels.causal_lm_parts(model)
    current = backbone.config._attn_implementation
    if current != NAME:
        for module in model.modules():
            if type(module).__name__.endswith("Attention"):
                setattr(module, _FALLBACK_ATTR, current)
        kernels.set_attention(model, NAME)
    model.__dict__["_lorastudio_prefix"] = True
    return NAME


def enabled_on(model: Any) -> bool:
    for m in (model, getattr(model, "base_model", None), getattr(getattr(model, "base_model", None), "model", None)):
        if m is not None and m.__dict__.get("_lorastudio_prefix"):
            return True
    return False


def packed_loss(model: Any, batch: dict[str, Any], inner: Any = None) -> tuple[Any, float]:
    """`kernels.packed_loss` (or `inner`) of the row with its shared head computed once; rows without
    one unchanged. Same value as `kernels.packed_loss(model, batch)`."""
    inner = inner or kernels.packed_loss
    if not enabled_on(model):
        enable(model)
    shared = None if "target_index" in batch else shared_batch(batch)
    if shared is None:
        return inner(model, batch)
    token = _LAYOUT.set(shared["prefix"])
    try:
        return inner(model, shared)
    finally:
        _LAYOUT.reset(token)
