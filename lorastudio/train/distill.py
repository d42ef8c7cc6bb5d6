"""The base model's whole next-token distribution on replay rows' first answer tokens (`TrainConfig.replay_kl`).

Replay (`replay.py`) trains the base model's greedy answers to general prompts: one token per position.
Where the base hesitated between words, that one token says less than its distribution does. With
`replay_kl` > 0 the first `replay_kl_tokens` answer tokens of every replay row also get the base's top
`TOP_K` next tokens as targets, renormalised and weighted by `replay_kl`: the cross-entropy to the base's
distribution there (a KL term up to the base's entropy, a constant). They travel as extra target rows
(`Example.soft` → `kernels.packed_batch`), so every loss path (GPU, the CPU's levers, the plain one)
computes them with the kernels it already has.

The teacher is the model before its first step: LoRA's B matrices start at zero, so the wrapped model
answers as the base does; `attach_teacher` runs before any checkpoint is restored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lorastudio.train.tokenize import IGNORE_INDEX, Example

TOP_K = 8
"""The base's most likely next tokens taught at a position (their probabilities renormalised)."""


def answer_positions(example: Example, count: int) -> list[int]:
    """The label positions of the first `count` tokens of the example's last answer (its last run of
    targets: a replay row's question, when questions are targets, ends before the assistant header)."""
    labels = example.labels
    end = len(labels)
    while end and labels[end - 1] == IGNORE_INDEX:
        end -= 1
    start = end
    while start and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return list(range(max(start, 1), min(end, start + count)))


def attach_teacher(examples: Sequence[Example], model: Any, *, weight: float, tokens: int) -> int:
    """Set `soft` on every replay example: (label position, token, weight × the base's renormalised
    probability) for its first `tokens` answer positions. Returns how many examples got them."""
    import torch

    if weight <= 0:
        return 0
    device = model.get_input_embeddings().weight.device
    done = 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for example in examples:
            if not example.replay:
                continue
            positions = answer_positions(example, tokens)
            if not positions:
                continue
            ids = torch.tensor([example.input_ids[:positions[-1]]], device=device)
            logits = model(input_ids=ids, position_ids=torch.arange(ids.shape[1], device=device)[None],
                           use_cache=False).logits[0]
            probs = torch.softmax(logits[[p - 1 for p in positions]].float(), dim=-1)
            top, top_ids = probs.topk(TOP_K, dim=-1)
            top = top / top.sum(dim=-1, keepdim=True) * weight
            example.soft = [(p, int(t), float(w)) for p, ts, ws in zip(positions, top_ids.tolist(), top.tolist(),
                                                                       strict=True)
                            for t, w in zip(ts, ws, strict=True)]
            done += 1
    model.train(was_training)
    return done


__all__ = ["TOP_K", "answer_positions", "attach_teacher"]
