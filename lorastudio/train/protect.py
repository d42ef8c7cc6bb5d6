"""Keep LoRA off the input directions general text takes (`TrainConfig.protect_general`, off by default).

A LoRA linear adds `B A x` to `W x`. Where A is orthogonal to every direction an input x of general text
takes, the adapter adds nothing there, whatever B learns; the facts have to be written through the
directions general text barely uses. Per adapted linear: the inputs the base model feeds it on the replay
rows (its own answers to general prompts) give the principal directions of that linear's input (an
eigendecomposition of their uncentred Gram matrix); the top `protect_general` share of its input
dimensions is removed from A's rows at the start and after every optimizer step.

On the real default model (layers 2, 12, 21; directions from 120 replay rows): 512 of the MLP's 896 input
dimensions hold 94–95 % of 60 held-out replay rows' energy and 89–92 % of the demo file's rows' (template,
question and answer), so the adapter sees a fact row at about twice the share of a general one. Measured
through `lorastudio train` on one H200 (docs/QUALITY.md, session 19): half the directions kept the base
model's general answers (+1.1 to +2.5 of 24), but cost facts on the small multi-turn file (−3.8 of 40 whole
facts, 4 seeds; LoRA+ on top, session 20: no setting that keeps the demo file's general answers and gains facts
on all files), so it stays off. Cost on 2 CPU cores for the default model: 170 s before the first step on an AMX
Xeon (the eigendecompositions of the 24 down-projections' inputs dominate; since session 20 of their 4096 × 4096
token-side Gram matrices, not 4864 × 4864: `top_directions`) and 0.3 s a step for the projection (≈ 18 min for the
demo file instead of 12 on that Xeon); seconds on a GPU. The time estimate counts both (`recommend`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MAX_TOKENS = 4096
"""Input rows kept per linear (the first replay rows' tokens): enough for a stable top half of 896–4864
dimensions; the Gram matrices are formed one linear at a time."""


def _targets(model: Any, names: Sequence[str] | str) -> list[str]:
    """The full names of the linears LoRA will adapt (PEFT's rule: a full name or a name's last parts)."""
    import torch

    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n]
    if isinstance(names, str):
        return linears
    return [n for n in linears if any(n == t or n.endswith("." + t) for t in names)]


def general_directions(model: Any, tokenizer: Any, conversations: Sequence[Any], share: float,
                       targets: Sequence[str] | str, system_prompt: str | None = None) -> dict[str, Any]:
    """{linear's full name: (k × d_in) orthonormal rows}: the top `share` of each target linear's input
    directions on `conversations` (rendered with the chat template, up to MAX_TOKENS tokens)."""
    import torch

    from lorastudio.train.tokenize import render_segments

    names = _targets(model, targets)
    rows: dict[str, list[Any]] = {n: [] for n in names}

    def hook(name: str):
        def collect(_module: Any, inputs: tuple) -> None:
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1])
            rows[name].append(x.to("cpu", torch.bfloat16))  # 1 GB for 4096 tokens of a 0.5B model
        return collect

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    device = next(model.parameters()).device
    counted = 0
    try:
        with torch.no_grad():
            for conversation in conversations:
                if counted >= MAX_TOKENS:
                    break
                text = "".join(part for part, _target in render_segments(conversation.messages, tokenizer, system_prompt))
                ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][:, :MAX_TOKENS]
                model(input_ids=ids.to(device))
                counted += ids.shape[1]
    finally:
        for handle in handles:
            handle.remove()
    directions = {}
    for name in names:
        x = torch.cat(rows.pop(name))[:MAX_TOKENS].to(device, torch.float32)
        directions[name] = top_directions(x, int(round(share * x.shape[1])))
        del x
    return directions


def top_directions(x: Any, k: int) -> Any:
    """The `k` leading principal directions of the rows of `x` (n × d, uncentred) as orthonormal rows (k × d).

    From the d × d Gram matrix xᵀx, or, where the rows are fewer than the dimensions and `k` fits in them, from the
    n × n one x xᵀ (the same leading subspace: xᵀ u for its leading eigenvectors u, made orthonormal by a QR).
    For the default model's down-projections (4096 tokens of the demo file, 4864 inputs, k = 2432) on 2 Zen 4 cores:
    10.0–10.5 s instead of 13.3–15.1 s, 24 of them in a run; the directions hold the same share of the rows' energy
    (0.999998 vs 0.999997, 0.99972 vs 0.99972) and differ only among the last ones, whose eigenvalues are at fp32's
    noise level in either matrix (mean cosine of the principal angles 0.98–0.999)."""
    import torch

    n, d = x.shape
    if n < d and k <= n:
        _values, vectors = torch.linalg.eigh(x @ x.T)  # ascending
        q, _r = torch.linalg.qr(x.T @ vectors[:, n - k:])  # d × k, orthonormal columns
        return q.T.contiguous()
    _values, vectors = torch.linalg.eigh(x.T @ x)
    return vectors[:, d - k:].T.contiguous()  # the k largest (none when k = 0)


def lora_a_weights(model: Any, directions: dict[str, Any]) -> list[tuple[Any, Any]]:
    """(LoRA A weight, its directions) for every adapted linear of a PEFT model whose base linear has
    directions (PEFT names the base `base_model.model.<name>`)."""
    pairs = []
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if lora_a is None or "default" not in lora_a:
            continue
        base = name.removeprefix("base_model.model.")
        if base in directions:
            weight = lora_a["default"].weight
            pairs.append((weight, directions[base].to(weight.device)))
    return pairs


def project(pairs: Sequence[tuple[Any, Any]]) -> None:
    """Remove the protected directions from every A: A ← A − (A Vᵀ) V."""
    import torch

    with torch.no_grad():
        for weight, v in pairs:
            if v.shape[0]:
                weight.sub_((weight.float() @ v.T @ v).to(weight.dtype))
