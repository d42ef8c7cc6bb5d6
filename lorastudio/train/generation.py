"""Greedy generation with the base model inside training: the replay answers (`replay.py`) and the
paraphrases (`augment.py`) both come from here, so both use the same engine rule, the same llama.cpp
child process and the same fallback.

- `base_engine(base, device)`: which engine writes them and why: "llama.cpp" on a CPU when it can run
  the base (`default` straight from its GGUF, or a `.gguf`; `inference.choose_engine`'s rules,
  `LORASTUDIO_ENGINE` included), else "transformers" (the trainer's own model).
- `base_answers(base, chats, ...)`: the answers. llama.cpp runs in a child process
  (`lorastudio.engines.batch`: the trainer has loaded torch, and with it libgomp's long spin); if the
  child fails, the trainer's model answers instead and the reason is given as a warning and as a
  `stage` event.
- `generate_batch(model, tokenizer, chats, ...)`: the transformers path (left-padded greedy batches).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from typing import Any

Chat = list[dict[str, str]]


def base_engine(base: str, device: str | None = None) -> tuple[str, str]:
    """(engine, reason) for text the base model writes inside training: "llama.cpp" on a CPU when it
    can run the base, else "transformers"."""
    from lorastudio.inference import choose_engine

    try:
        choice = choose_engine(base, device=device)
    except ValueError as exc:  # LORASTUDIO_ENGINE=llama.cpp on a base it cannot run
        return "transformers", str(exc)
    return choice.name, choice.reason


def base_answers(base: str, chats: list[Chat], *, max_new_tokens: int, model: Any = None, tokenizer: Any = None,
                 device: str | None = None, batch_size: int = 16, what: str = "answers",
                 on_progress: Callable[[int, int], None] | None = None,
                 on_event: Callable[[dict], None] | None = None) -> tuple[list[str], str]:
    """Greedy answers (stripped, the model's own chat template, no system prompt of ours) to `chats`,
    and the engine that wrote them ("llama.cpp" or "transformers").

    `what` names the job in the events and warnings ("replay answers", "paraphrases"). The
    transformers path uses `model`/`tokenizer`, or loads the base model when they are None.
    """
    def say(message: str) -> None:
        if on_event:
            on_event({"type": "stage", "stage": "prepare", "message": message})

    engine, reason = base_engine(base, device)
    if engine == "llama.cpp":
        from lorastudio.engines.batch import BatchError, run_llamacpp_batch

        say(f"{what}: the llama.cpp engine writes them ({reason})")
        try:
            return run_llamacpp_batch(base, chats, max_new_tokens=max_new_tokens, batch_size=min(8, batch_size),
                                      on_progress=on_progress), "llama.cpp"
        except BatchError as exc:
            message = f"{what}: llama.cpp failed, using transformers ({exc})"
            warnings.warn(message, stacklevel=2)
            say(message)
    else:
        say(f"{what}: the transformers engine writes them ({reason})")
    if model is None or tokenizer is None:
        from lorastudio.models import load_model

        model, tokenizer = load_model(base)
    return generate_batch(model, tokenizer, chats, max_new_tokens=max_new_tokens, batch_size=batch_size,
                          on_progress=on_progress), "transformers"


def generate_batch(model: Any, tokenizer: Any, prompts: list[Chat], *, max_new_tokens: int,
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


__all__ = ["base_answers", "base_engine", "generate_batch"]
