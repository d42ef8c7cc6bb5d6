"""Shared by both generation backends and by `lorastudio.inference`: errors, prompts, adapter
directories, the incremental decoder and the `Backend` base class (lock, adapter LRU, stop ids)."""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Messages = str | Sequence[Any]
OnIds = Callable[[list[int]], None]


class AdapterError(ValueError):
    """An adapter directory is missing, is not a LoRA adapter, or does not fit the base model."""


class PromptError(ValueError):
    """The messages cannot be turned into a prompt (bad roles, empty, too long for the model)."""


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end-of-turn token) or "length" (max_new_tokens reached)


# --------------------------------------------------------------------------------------------
# messages and prompts


def normalize_messages(messages: Messages) -> list[dict[str, str]]:
    """Accept a question string, OpenAI-style dicts, `Message` objects or a `Conversation`.

    OpenAI content may be a list of parts; the text parts are joined. Anything else is a
    `PromptError` that says which message is wrong.
    """
    if isinstance(messages, str):
        if not messages.strip():
            raise PromptError("the question is empty")
        return [{"role": "user", "content": messages}]
    if hasattr(messages, "messages") and not isinstance(messages, (list, tuple)):
        messages = messages.messages  # a Conversation
    out: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        if isinstance(m, dict):
            role, content = m.get("role"), m.get("content")
        else:
            role, content = getattr(m, "role", None), getattr(m, "content", None)
        if isinstance(content, list):  # OpenAI content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if role not in ("system", "user", "assistant"):
            raise PromptError(f"message {i + 1}: role must be system, user or assistant, got {role!r}")
        if not isinstance(content, str):
            raise PromptError(f"message {i + 1}: content must be text, got {type(content).__name__}")
        out.append({"role": role, "content": content})
    if not out:
        raise PromptError("no messages: give at least one user message")
    if out[-1]["role"] != "user":
        raise PromptError("the last message must come from the user (the model answers it)")
    return out


def render_prompt(messages: list[dict[str, str]], tokenizer: Any, system_prompt: str | None = None) -> str:
    """The generation prompt, rendered by the trainer's own function (same rules, same template).

    `system_prompt` is the adapter's training-time default (train_config.yaml), used when the
    messages bring no system message of their own — exactly as during training.
    """
    from lorastudio.train.tokenize import TemplateError
    from lorastudio.train.tokenize import render_prompt as train_render

    try:
        return train_render(messages, tokenizer, system_prompt=system_prompt)
    except TemplateError as exc:
        raise PromptError(str(exc)) from None


def adapter_setting(path: Path, key: str) -> Any:
    """One setting of the `train_config.yaml` saved beside an adapter (None when absent or unreadable)."""
    cfg = path / "train_config.yaml"
    if not cfg.is_file():
        return None
    import yaml

    try:
        data = yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}
    except (OSError, ValueError):
        return None
    return data.get(key) if isinstance(data, dict) else None


def adapter_system_prompt(path: Path) -> str | None:
    """The `system_prompt` an adapter was trained with (None when it had none or no config is saved)."""
    value = adapter_setting(path, "system_prompt")
    return value if isinstance(value, str) and value.strip() else None


# --------------------------------------------------------------------------------------------
# adapters


def check_adapter_dir(path: str | os.PathLike) -> Path:
    """The resolved adapter directory, or an `AdapterError` saying what is wrong and what to do."""
    p = Path(path).expanduser()
    if not p.exists():
        raise AdapterError(f"adapter directory {str(p)!r} does not exist; pass the output directory "
                           "of `lorastudio train` (it contains adapter_config.json)")
    if not p.is_dir():
        raise AdapterError(f"adapter {str(p)!r} is a file; pass the directory that holds "
                           "adapter_config.json and adapter_model.safetensors")
    cfg = p / "adapter_config.json"
    if not cfg.is_file():
        raise AdapterError(f"{str(p)!r} has no adapter_config.json, so it is not a PEFT adapter "
                           "directory; pass the output directory of `lorastudio train`")
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{cfg}: unreadable adapter_config.json ({exc})") from None
    if str(data.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterError(f"{cfg}: peft_type is {data.get('peft_type')!r}; only LoRA adapters are supported")
    if not any((p / n).is_file() for n in ("adapter_model.safetensors", "adapter_model.bin")):
        raise AdapterError(f"{str(p)!r} has no adapter_model.safetensors; the training run may not "
                           "have finished (look in its checkpoints/ folder)")
    return p.resolve()


def adapter_version(path: Path) -> float:
    """Retraining into the same directory must reload the adapter, not serve the stale one."""
    for n in ("adapter_model.safetensors", "adapter_model.bin"):
        f = path / n
        if f.is_file():
            return f.stat().st_mtime
    return 0.0


def adapter_base(path: Path) -> str | None:
    """The base model an adapter says it was trained on (for error messages)."""
    try:
        return json.loads((path / "adapter_config.json").read_text(encoding="utf-8")).get(
            "base_model_name_or_path")
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------
# incremental decoding


class IncrementalDecoder:
    """Turns a growing list of token ids into text pieces that never split a character.

    Byte-level BPE tokens can end in the middle of a UTF-8 sequence (most Chinese characters are 3
    bytes); decoding such a prefix gives U+FFFD. We re-decode everything generated so far and hold
    back a trailing U+FFFD until the next token completes the character, so the concatenated pieces
    equal the one-shot decode.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""

    def _text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def push(self, new_ids: Iterable[int]) -> str:
        self.ids.extend(int(i) for i in new_ids)
        text = self._text()
        stable = text.rstrip("\ufffd")
        if len(stable) <= len(self.emitted):
            return ""
        piece = stable[len(self.emitted):]
        self.emitted = stable
        return piece

    def flush(self) -> str:
        text = self._text()
        piece = text[len(self.emitted):]
        self.emitted = text
        return piece


# --------------------------------------------------------------------------------------------
# the backend base


_TURN_ENDS = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "<end_of_turn>")


def check_sampling(temperature: float, top_p: float) -> None:
    if temperature < 0 or not 0 < top_p <= 1:
        raise PromptError("temperature must be ≥ 0 and top_p in (0, 1]")


class Backend:
    """One model, one lock, and a bounded LRU of loaded adapters (path → (key, file version)).

    Subclasses say how an adapter is loaded (`_load(path) -> key`) and dropped (`_drop(key)`), and
    generate token ids: `generate_ids` (one prompt, ids pushed to `on_ids` as they come) and
    `generate_many` (several prompts, ids in input order). Both are called without the lock;
    they take it themselves, so a batch can let interactive requests in between its groups.
    """

    name = ""
    model: Any = None

    def __init__(self, tokenizer: Any, max_adapters: int, base_id: str, generation_config: Any = None):
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            # Batching needs a pad id; the attention mask makes its value irrelevant.
            tokenizer.pad_token = tokenizer.eos_token
        self.max_adapters = max_adapters
        self.base_id = base_id
        self.lock = threading.Lock()
        self.adapters: OrderedDict[Path, tuple[Any, float]] = OrderedDict()
        self.eos_token_ids = self._eos_ids(generation_config)

    def _eos_ids(self, generation_config: Any) -> set[int]:
        ids: set[int] = set()
        gen_eos = getattr(generation_config, "eos_token_id", None)
        if isinstance(gen_eos, int):
            ids.add(gen_eos)
        elif gen_eos:
            ids.update(int(i) for i in gen_eos)
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        # Chat models end a turn with their own marker, which may not be the tokenizer's eos.
        vocab = self.tokenizer.get_vocab()
        ids.update(vocab[tok] for tok in _TURN_ENDS if tok in vocab)
        return ids

    def until_eos(self, ids: list[int]) -> list[int]:
        for k, t in enumerate(ids):
            if t in self.eos_token_ids:
                return ids[:k]
        return ids

    def context_length(self) -> int | None:
        raise NotImplementedError

    # -- adapters (call with the lock held) ----------------------------------------------------

    def acquire(self, path: Path) -> Any:
        """The loaded adapter's key, loading (or reloading a retrained) adapter; LRU bookkeeping."""
        version = adapter_version(path)
        if path in self.adapters:
            key, loaded_version = self.adapters[path]
            if loaded_version == version:
                self.adapters.move_to_end(path)
                return key
            self.evict(path)
        key = self._load(path)
        self.adapters[path] = (key, version)
        while len(self.adapters) > self.max_adapters:
            self.evict(next(iter(self.adapters)))
        return key

    def evict(self, path: Path) -> None:
        key, _ = self.adapters.pop(path)
        self._drop(key)

    def _load(self, path: Path) -> Any:
        raise NotImplementedError

    def _drop(self, key: Any) -> None:
        raise NotImplementedError

    def _misfit(self, path: Path, why: str, verb: str = "does not fit") -> AdapterError:
        base = adapter_base(path)
        return AdapterError(f"adapter {str(path)!r} {verb} base model {self.base_id!r}"
                            f"{f' (it was trained on {base!r})' if base else ''}: {why}")

    # -- generation ------------------------------------------------------------------------------

    # `strength`: the adapter's LoRA update scaled by this (1 = as trained), for this call only.
    def generate_ids(self, prompt_ids: list[int], adapter_path: Path | None, max_new_tokens: int,
                     temperature: float, top_p: float, seed: int | None, on_ids: OnIds,
                     cancel: threading.Event, *, strength: float = 1.0) -> list[int]:
        raise NotImplementedError

    def generate_many(self, encoded: list[list[int]], adapter_path: Path | None, budget: Callable[[int], int],
                      temperature: float, top_p: float, seed: int | None, batch_size: int, *,
                      strength: float = 1.0) -> list[list[int]]:
        raise NotImplementedError
