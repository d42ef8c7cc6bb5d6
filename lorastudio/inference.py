"""Chat with a base model and any number of LoRA adapters, one base model in memory.

```python
engine = ChatEngine(base="default", max_adapters=4)
engine.generate("工单超时多久升级？", adapter="runs/yunzhan")        # tuned answer
engine.generate("工单超时多久升级？")                                # base answer, same weights
for piece in engine.stream(messages, adapter="runs/yunzhan"): ...
engine.generate_batch(list_of_questions, adapter=...)               # left-padded batches
```

Adapters are loaded by directory path into one `PeftModel` under generated names and switched per
call (`set_adapter`; `disable_adapter()` for the base). A bounded LRU deletes the least recently used
adapter when more than `max_adapters` are loaded. One lock serialises generation, because the active
adapter is model state: two requests must never switch it under each other.

Prompts are rendered by the same function the trainer uses (`lorastudio.train.tokenize`), so a
tuned model sees at inference exactly the format it was trained on.

Two engines behind the same API (`engine.engine` says which, `engine.engine_reason` why):
- **llama.cpp** (`lorastudio.llamacpp`) on a CPU when the base is a GGUF it runs (`default` is its
  own Q4_K_M GGUF, or a `.gguf` file) and `llama-cpp-python` is installed: no dequantised copy is
  loaded; adapters are converted once to GGUF LoRA and switched per call on the one loaded base.
  Prompts are rendered and tokenized by the Hugging Face tokenizer exactly as for transformers, the
  token ids go to llama.cpp, and the answer ids are decoded by the same tokenizer, with the same
  end-of-turn ids.
- **transformers** otherwise (a CUDA GPU, any other base, a model object passed in, or asked for).
`ChatEngine(..., engine="auto"|"llama.cpp"|"transformers")`; the `LORASTUDIO_ENGINE` variable sets the
default. Rules: `choose_engine`.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Messages = str | Sequence[Any]


ENGINES = ("auto", "llama.cpp", "transformers")


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


def adapter_system_prompt(path: Path) -> str | None:
    """The `system_prompt` an adapter was trained with (None when it had none or no config is saved)."""
    cfg = path / "train_config.yaml"
    if not cfg.is_file():
        return None
    import yaml

    try:
        data = yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}
    except (OSError, ValueError):
        return None
    value = data.get("system_prompt") if isinstance(data, dict) else None
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


def _adapter_version(path: Path) -> float:
    """Retraining into the same directory must reload the adapter, not serve the stale one."""
    for n in ("adapter_model.safetensors", "adapter_model.bin"):
        f = path / n
        if f.is_file():
            return f.stat().st_mtime
    return 0.0


# --------------------------------------------------------------------------------------------
# incremental decoding


class _IncrementalDecoder:
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


class _QueueStreamer:
    """A `generate()` streamer that forwards new token ids to a queue (the consumer decodes)."""

    def __init__(self, q: queue.Queue):
        self.q = q
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate() first pushes the prompt
            self.prompt_seen = True
            return
        self.q.put(("ids", value.reshape(-1).tolist()))

    def end(self) -> None:
        pass


# --------------------------------------------------------------------------------------------
# which engine


@dataclass
class EngineChoice:
    name: str  # "llama.cpp" or "transformers"
    reason: str  # one line, for logs and CLI output
    gguf: Path | None = None  # the model file llama.cpp runs


def engine_setting(engine: str | None = None) -> str:
    """`engine` or `$LORASTUDIO_ENGINE`, normalised to one of ENGINES (ValueError otherwise)."""
    raw = engine if engine is not None else os.environ.get("LORASTUDIO_ENGINE", "")
    value = (raw or "auto").strip().lower()
    value = {"llamacpp": "llama.cpp", "llama-cpp": "llama.cpp", "llama_cpp": "llama.cpp",
             "hf": "transformers", "torch": "transformers"}.get(value, value)
    if value not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {raw!r}")
    return value


def _is_default_base(base: str) -> bool:
    if base == "default":
        return True
    from lorastudio.models import models_dir

    # Adapters record the resolved directory of the base they were trained on.
    try:
        return Path(base).expanduser().resolve() == (models_dir() / "default").resolve()
    except OSError:
        return False


def _cuda_available() -> bool:
    """Without an NVIDIA device node there is no CUDA, and torch is not imported to find that out:
    the llama.cpp engine wants its library loaded before torch's (see lorastudio.llamacpp)."""
    import sys

    if "torch" not in sys.modules and not any(Path(p).exists() for p in ("/dev/nvidiactl", "/dev/nvidia0")):
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def choose_engine(base: str, *, engine: str | None = None, device: str | None = None, dtype: Any = None,
                  model_given: bool = False) -> EngineChoice:
    """llama.cpp when all hold: not asked for transformers, no model object / dtype / non-CPU device
    given, `llama-cpp-python` installed, the base is `default` (its directory included) or a `.gguf`
    file, and no CUDA GPU (unless llama.cpp was asked for). Otherwise transformers, with the reason.

    `engine="llama.cpp"` (or LORASTUDIO_ENGINE) makes any unmet rule a ValueError instead.
    """
    setting = engine_setting(engine)
    if setting == "transformers":
        return EngineChoice("transformers", "asked for (engine=transformers)")
    forced = setting == "llama.cpp"

    def fallback(reason: str) -> EngineChoice:
        if forced:
            raise ValueError(f"the llama.cpp engine cannot run base {base!r}: {reason}")
        return EngineChoice("transformers", reason)

    from lorastudio import llamacpp

    if model_given:
        return fallback("a model object was passed in")
    if dtype is not None:
        return fallback(f"dtype {dtype} was asked for (llama.cpp computes with the GGUF's own weights)")
    if device not in (None, "auto", "cpu"):
        return fallback(f"device {device} (the llama.cpp engine is for CPUs)")
    path = Path(str(base)).expanduser()
    if _is_default_base(str(base)):
        gguf = None
    elif path.suffix.lower() == ".gguf" and path.is_file():
        gguf = path.resolve()
    else:
        return fallback(f"base {base!r} is not a GGUF model (llama.cpp runs `default` or a .gguf file)")
    if not llamacpp.available():
        return fallback(f"llama-cpp-python is not installed; {llamacpp.install_hint()}")
    if device in (None, "auto") and not forced and _cuda_available():
        return fallback("a CUDA GPU is available")
    if gguf is None:
        from lorastudio.models import ModelError, resolve_default_gguf

        try:
            gguf = resolve_default_gguf()
        except ModelError as exc:
            return fallback(f"the default model's GGUF is not available ({exc})")
    return EngineChoice("llama.cpp", f"CPU, {gguf.name} runs in llama.cpp", gguf)


def _gguf_tokenizer(base: str, gguf: Path) -> Any:
    """The Hugging Face tokenizer (with its chat template) for a GGUF base: the same one the
    transformers engine would load, so both engines render and tokenize prompts identically."""
    from transformers import AutoTokenizer

    if _is_default_base(str(base)):
        from lorastudio.models.default import ensure_default_tokenizer

        return AutoTokenizer.from_pretrained(str(ensure_default_tokenizer()))
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


# --------------------------------------------------------------------------------------------
# the engine


class ChatEngine:
    """One base model in memory, LoRA adapters switched per call (see the module docstring)."""

    def __init__(self, base: str = "default", max_adapters: int = 4, *, dtype: Any = None,
                 device: str | None = None, model: Any = None, tokenizer: Any = None,
                 engine: str | None = None):
        if max_adapters < 1:
            raise ValueError("max_adapters must be at least 1")
        self.base_id = base
        self.max_adapters = max_adapters
        self._llama: Any = None  # a lorastudio.llamacpp.LlamaCppModel when llama.cpp is the engine
        choice = choose_engine(base, engine=engine, device=device, dtype=dtype, model_given=model is not None)
        if choice.name == "llama.cpp":
            from lorastudio.llamacpp import LlamaCppError, LlamaCppModel

            try:
                self._llama = LlamaCppModel(choice.gguf)
            except LlamaCppError as exc:
                if engine_setting(engine) == "llama.cpp":
                    raise
                choice = EngineChoice("transformers", f"llama.cpp could not load the model ({exc})")
        self.engine = choice.name
        self.engine_reason = choice.reason
        if self._llama is not None:
            from lorastudio import llamacpp

            self.engine_reason += (f" ({self._llama.n_threads} threads, {llamacpp.omp_wait}, "
                                   f"context {self._llama.n_ctx})")
            self.model = None
            self.tokenizer = tokenizer if tokenizer is not None else _gguf_tokenizer(base, choice.gguf)
            if self.tokenizer.pad_token_id is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
            self._adapters: OrderedDict[Path, tuple[Any, float]] = OrderedDict()
            self._counter = 0
            self._lock = threading.Lock()
            self.eos_token_ids = self._eos_ids()
            return
        if model is None or tokenizer is None:
            from lorastudio.models import load_model

            model, tokenizer = load_model(base, dtype=dtype, device=device)
        model.eval()
        self.model = model  # becomes a PeftModel once the first adapter is loaded
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            # Batching needs a pad id; the attention mask makes its value irrelevant.
            tokenizer.pad_token = tokenizer.eos_token
        self._adapters: OrderedDict[Path, tuple[str, float]] = OrderedDict()  # path → (name, version)
        self._counter = 0
        self._lock = threading.Lock()
        self.eos_token_ids = self._eos_ids()

    # -- public API --------------------------------------------------------------------------

    def generate(self, messages: Messages, adapter: str | os.PathLike | None = None,
                 max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = None) -> str:
        return self.complete(messages, adapter, max_new_tokens, temperature, top_p, seed).text

    def complete(self, messages: Messages, adapter: str | os.PathLike | None = None,
                 max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = None) -> Completion:
        """Like `generate`, plus token counts and why it stopped (for the OpenAI API's usage)."""
        stats: dict[str, Any] = {}
        text = "".join(self.stream(messages, adapter, max_new_tokens, temperature, top_p, seed,
                                   stats=stats))
        return Completion(text, stats["prompt_tokens"], stats["completion_tokens"], stats["finish_reason"])

    def stream(self, messages: Messages, adapter: str | os.PathLike | None = None,
               max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
               seed: int | None = None, *, stats: dict | None = None) -> Iterator[str]:
        """Yield the answer as text pieces. If `stats` is given it is filled in at the end.

        Generation runs in a worker thread that holds the engine lock; closing the iterator early
        (a client disconnect) stops it at the next token.
        """
        msgs = normalize_messages(messages)
        adapter_path = check_adapter_dir(adapter) if adapter is not None else None
        prompt_ids = self._encode(msgs, adapter_path)
        max_new_tokens = self._budget(len(prompt_ids), max_new_tokens)
        q: queue.Queue = queue.Queue()
        cancel = threading.Event()

        def work() -> None:
            if self._llama is not None:
                return self._llama_work(prompt_ids, adapter_path, max_new_tokens, temperature, top_p, seed,
                                        q, cancel)
            import torch
            try:
                with self._lock, torch.inference_mode():
                    with self._activate(adapter_path):
                        if seed is not None:
                            torch.manual_seed(seed)
                        ids = torch.tensor([prompt_ids], device=self._device())
                        out = self.model.generate(
                            input_ids=ids, attention_mask=torch.ones_like(ids),
                            streamer=_QueueStreamer(q),
                            stopping_criteria=_cancel_criteria(cancel),
                            **self._sampling(max_new_tokens, temperature, top_p))
                q.put(("done", out[0, len(prompt_ids):].tolist()))
            except BaseException as exc:  # re-raised in the consumer's thread
                q.put(("error", exc))

        worker = threading.Thread(target=work, name="lorastudio-generate", daemon=True)
        worker.start()
        decoder = _IncrementalDecoder(self.tokenizer)
        try:
            while True:
                kind, value = q.get()
                if kind == "error":
                    raise value
                if kind == "done":
                    generated = value
                    break
                kept = self._until_eos(value)
                piece = decoder.push(kept)
                if piece:
                    yield piece
            # The decoder saw every streamed id; the final ids decide the tail and the stats.
            answer_ids = self._until_eos(generated)
            decoder.ids = list(answer_ids)
            tail = decoder.flush()
            if tail:
                yield tail
            if stats is not None:
                stopped = len(answer_ids) < len(generated) or (
                    generated and generated[-1] in self.eos_token_ids)
                stats.update(prompt_tokens=len(prompt_ids), completion_tokens=len(generated),
                             finish_reason="stop" if stopped else "length")
        finally:
            cancel.set()
            worker.join()

    def generate_batch(self, questions: Sequence[Messages], adapter: str | os.PathLike | None = None,
                       max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                       batch_size: int = 8, seed: int | None = None) -> list[str]:
        """Answers for many prompts, in input order; left-padded batches of similar lengths.

        The lock is taken per batch so interactive requests are not starved by a long evaluation.
        """
        all_msgs = [normalize_messages(q) for q in questions]
        adapter_path = check_adapter_dir(adapter) if adapter is not None else None
        encoded = [self._encode(m, adapter_path) for m in all_msgs]
        if self._llama is not None:
            return self._llama_batch(encoded, adapter_path, max_new_tokens, temperature, top_p, seed,
                                     batch_size)
        import torch

        # Similar lengths together: less padding, which is wasted compute on a CPU.
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        answers: list[str] = [""] * len(encoded)
        pad_id = self.tokenizer.pad_token_id
        for start in range(0, len(order), max(1, batch_size)):
            idx = order[start:start + batch_size]
            width = max(len(encoded[i]) for i in idx)
            budget = self._budget(width, max_new_tokens)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                seq = encoded[i]
                ids[row, width - len(seq):] = torch.tensor(seq)
                mask[row, width - len(seq):] = 1
            with self._lock, torch.inference_mode(), self._activate(adapter_path):
                if seed is not None:
                    torch.manual_seed(seed)
                out = self.model.generate(input_ids=ids.to(self._device()),
                                          attention_mask=mask.to(self._device()),
                                          **self._sampling(budget, temperature, top_p))
            for row, i in enumerate(idx):
                gen = self._until_eos(out[row, width:].tolist())
                answers[i] = self.tokenizer.decode(gen, skip_special_tokens=True)
        return answers

    def loaded_adapters(self) -> list[str]:
        """Adapter directories in memory, least recently used first."""
        return [str(p) for p in self._adapters]

    def unload_adapter(self, adapter: str | os.PathLike) -> bool:
        path = Path(adapter).expanduser().resolve()
        with self._lock:
            if path not in self._adapters:
                return False
            self._delete(path)
            return True

    # -- internals ---------------------------------------------------------------------------

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if isinstance(gen_eos, int):
            ids.add(gen_eos)
        elif gen_eos:
            ids.update(int(i) for i in gen_eos)
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        # Chat models end a turn with their own marker, which may not be the tokenizer's eos.
        vocab = self.tokenizer.get_vocab()
        for tok in ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "<end_of_turn>"):
            if tok in vocab:
                ids.add(vocab[tok])
        return ids

    def _until_eos(self, ids: list[int]) -> list[int]:
        for k, t in enumerate(ids):
            if t in self.eos_token_ids:
                return ids[:k]
        return ids

    def _encode(self, msgs: list[dict[str, str]], adapter_path: Path | None = None) -> list[int]:
        system = adapter_system_prompt(adapter_path) if adapter_path is not None else None
        prompt = render_prompt(msgs, self.tokenizer, system_prompt=system)
        if isinstance(prompt, str):
            # The template already contains any BOS the model wants; adding one would double it.
            return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return list(prompt)

    def _context_length(self) -> int | None:
        if self._llama is not None:
            return self._llama.n_ctx
        cfg = getattr(self.model, "config", None)
        return getattr(cfg, "max_position_embeddings", None)

    def _budget(self, prompt_len: int, max_new_tokens: int) -> int:
        if max_new_tokens < 1:
            raise PromptError("max_new_tokens must be at least 1")
        ctx = self._context_length()
        if ctx is None:
            return max_new_tokens
        if prompt_len >= ctx:
            raise PromptError(f"the prompt is {prompt_len} tokens but the model reads at most {ctx}; "
                              "shorten the conversation")
        return min(max_new_tokens, ctx - prompt_len)

    def _device(self) -> Any:
        return next(self.model.parameters()).device

    @staticmethod
    def _check_sampling(temperature: float, top_p: float) -> None:
        if temperature < 0 or not 0 < top_p <= 1:
            raise PromptError("temperature must be ≥ 0 and top_p in (0, 1]")

    def _sampling(self, max_new_tokens: int, temperature: float, top_p: float) -> dict[str, Any]:
        self._check_sampling(temperature, top_p)
        kw: dict[str, Any] = dict(max_new_tokens=max_new_tokens, eos_token_id=sorted(self.eos_token_ids),
                                  pad_token_id=self.tokenizer.pad_token_id)
        if temperature > 0:
            kw.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=None)
        else:
            # Explicit so a generation_config that asks for sampling cannot make "greedy" random.
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw

    def _activate(self, adapter_path: Path | None):
        """A context manager in which `self.model` computes with the requested adapter (or none)."""
        import contextlib

        from peft import PeftModel

        if adapter_path is None:
            if isinstance(self.model, PeftModel):
                return self.model.disable_adapter()
            return contextlib.nullcontext()
        name = self._ensure_loaded(adapter_path)
        self.model.set_adapter(name)
        return contextlib.nullcontext()

    def _ensure_loaded(self, path: Path) -> str:
        """Called with the lock held. Loads (or reloads a retrained) adapter; LRU bookkeeping."""
        from peft import PeftModel

        version = _adapter_version(path)
        if path in self._adapters:
            name, loaded_version = self._adapters[path]
            if loaded_version == version:
                self._adapters.move_to_end(path)
                return name
            self._delete(path)
        name = f"adapter_{self._counter}"
        self._counter += 1
        try:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(path), adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
                self.model.eval()
        except (RuntimeError, ValueError, KeyError) as exc:
            # Typically a shape mismatch: the adapter was trained on another base model.
            base = _adapter_base(path)
            raise AdapterError(f"adapter {str(path)!r} does not fit base model {self.base_id!r}"
                               f"{f' (it was trained on {base!r})' if base else ''}: "
                               f"{str(exc).splitlines()[0][:300]}") from None
        self._adapters[path] = (name, version)
        while len(self._adapters) > self.max_adapters:
            self._delete(next(iter(self._adapters)))
        return name

    def _delete(self, path: Path) -> None:
        name, _ = self._adapters.pop(path)
        if self._llama is not None:
            # Two directories holding the same adapter share one converted file and handle.
            if all(other != name for other, _ in self._adapters.values()):
                self._llama.unload_lora(name)
            return
        remaining = [n for n, _ in self._adapters.values()]
        if remaining:
            # PEFT refuses to delete the active adapter's layers cleanly otherwise.
            self.model.set_adapter(remaining[-1])
            self.model.delete_adapter(name)
        else:
            # Last adapter gone: unwrap back to the plain base model (LoRA layers removed).
            self.model = self.model.unload()
            self.model.eval()

    # -- the llama.cpp engine ----------------------------------------------------------------

    def _ensure_lora(self, path: Path) -> Any:
        """Called with the lock held: the adapter's GGUF LoRA loaded in llama.cpp (converted once)."""
        from lorastudio.llamacpp import LoraConversionError, adapter_gguf

        version = _adapter_version(path)
        if path in self._adapters:
            key, loaded_version = self._adapters[path]
            if loaded_version == version:
                self._adapters.move_to_end(path)
                return key
            self._delete(path)
        try:
            key = self._llama.load_lora(adapter_gguf(path, arch=self._llama.arch))
        except LoraConversionError as exc:
            base = _adapter_base(path)
            raise AdapterError(f"adapter {str(path)!r} cannot be used with base model {self.base_id!r}"
                               f"{f' (it was trained on {base!r})' if base else ''}: {exc}") from None
        self._adapters[path] = (key, version)
        while len(self._adapters) > self.max_adapters:
            self._delete(next(iter(self._adapters)))
        return key

    def _llama_work(self, prompt_ids: list[int], adapter_path: Path | None, max_new_tokens: int,
                    temperature: float, top_p: float, seed: int | None, q: queue.Queue,
                    cancel: threading.Event) -> None:
        """`stream`'s worker on llama.cpp: token ids to the queue as they come, then all of them."""
        try:
            self._check_sampling(temperature, top_p)
            generated: list[int] = []
            with self._lock:
                lora = self._ensure_lora(adapter_path) if adapter_path is not None else None
                for token in self._llama.generate(prompt_ids, lora=lora, max_new_tokens=max_new_tokens,
                                                  temperature=temperature, top_p=top_p, seed=seed,
                                                  stop_ids=self.eos_token_ids, cancel=cancel):
                    generated.append(token)
                    q.put(("ids", [token]))
            q.put(("done", generated))
        except BaseException as exc:  # re-raised in the consumer's thread
            q.put(("error", exc))

    def _llama_batch(self, encoded: list[list[int]], adapter_path: Path | None, max_new_tokens: int,
                     temperature: float, top_p: float, seed: int | None, batch_size: int) -> list[str]:
        """`generate_batch` on llama.cpp: up to `batch_size` prompts decode together (continuous
        batching: a finished answer's place goes to the next prompt). The lock is taken per group of
        2 × batch_size prompts, so interactive requests are not starved by a long evaluation."""
        self._check_sampling(temperature, top_p)
        budgets = [self._budget(len(ids), max_new_tokens) for ids in encoded]  # all checked up front
        group = max(1, batch_size) * 2
        answers: list[str] = []
        for start in range(0, len(encoded), group):
            with self._lock:
                lora = self._ensure_lora(adapter_path) if adapter_path is not None else None
                outs = self._llama.generate_many(encoded[start:start + group], lora=lora,
                                                 max_new_tokens=budgets[start:start + group],
                                                 temperature=temperature, top_p=top_p, seed=seed,
                                                 stop_ids=self.eos_token_ids, parallel=max(1, batch_size))
            answers += [self.tokenizer.decode(self._until_eos(out), skip_special_tokens=True) for out in outs]
        return answers


def _adapter_base(path: Path) -> str | None:
    try:
        return json.loads((path / "adapter_config.json").read_text(encoding="utf-8")).get(
            "base_model_name_or_path")
    except (OSError, ValueError):
        return None


def _cancel_criteria(cancel: threading.Event):
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Cancel(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool,
                              device=input_ids.device)

    return StoppingCriteriaList([_Cancel()])


# --------------------------------------------------------------------------------------------
# files of questions → files of answers (`lorastudio generate`)


@dataclass
class LineError:
    line: int  # 1-based line of the input file
    message: str


@dataclass
class GenerateFileResult:
    total: int  # non-blank input lines
    answered: int
    errors: list[LineError]


def _line_to_messages(obj: Any) -> list[dict[str, str]]:
    """An input line's prompt: `messages`, or `question` (+ optional `system`)."""
    if not isinstance(obj, dict):
        raise PromptError(f"expected a JSON object, got {type(obj).__name__}")
    if "messages" in obj:
        if not isinstance(obj["messages"], list):
            raise PromptError("`messages` must be a list of {role, content} objects")
        return normalize_messages(obj["messages"])
    if "question" in obj:
        q = obj["question"]
        if not isinstance(q, str) or not q.strip():
            raise PromptError("`question` is empty or not text")
        system = obj.get("system")
        msgs = [{"role": "system", "content": system}] if isinstance(system, str) and system.strip() else []
        return msgs + [{"role": "user", "content": q}]
    raise PromptError(f"no `question` or `messages` field (fields: {', '.join(map(str, obj)) or 'none'})")


def generate_file(engine: ChatEngine, input_path: str | os.PathLike, output_path: str | os.PathLike,
                  adapter: str | os.PathLike | None = None, *, max_new_tokens: int = 256,
                  temperature: float = 0.0, top_p: float = 1.0, batch_size: int = 8,
                  on_progress: Any = None) -> GenerateFileResult:
    """Answer every line of a JSONL file; each output line is the input object plus `answer`.

    Nothing is dropped: a bad line is written back as `{..., "answer": null, "error": why}` (an
    unparseable line as `{"line": n, "raw": text, ...}`), in input order, so output line k always
    belongs to input line k (blank lines excepted). Output is written after every chunk, so an
    interrupted run keeps what it answered.
    """
    src = Path(input_path)
    if not src.is_file():
        raise FileNotFoundError(f"input file {str(src)!r} does not exist")
    if adapter is not None:
        check_adapter_dir(adapter)
    try:
        raw_lines = src.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise PromptError(f"{src}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    entries: list[tuple[int, Any, list[dict[str, str]] | None, str | None]] = []
    for n, line in enumerate(raw_lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            entries.append((n, {"line": n, "raw": line}, None, f"line {n}: not valid JSON ({exc})"))
            continue
        try:
            entries.append((n, obj, _line_to_messages(obj), None))
        except PromptError as exc:
            entries.append((n, obj if isinstance(obj, dict) else {"line": n, "raw": obj}, None,
                            f"line {n}: {exc}"))
    result = GenerateFileResult(total=len(entries), answered=0, errors=[])
    out = Path(output_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    chunk = max(1, batch_size) * 4
    with out.open("w", encoding="utf-8") as fh:
        for start in range(0, len(entries), chunk):
            part = entries[start:start + chunk]
            todo = [e for e in part if e[2] is not None]
            answers: dict[int, str] = {}
            if todo:
                try:
                    texts = engine.generate_batch([e[2] for e in todo], adapter=adapter,
                                                  max_new_tokens=max_new_tokens, temperature=temperature,
                                                  top_p=top_p, batch_size=batch_size)
                    answers = {e[0]: t for e, t in zip(todo, texts, strict=True)}
                except PromptError:
                    # One prompt too long for the model: answer the chunk one by one to blame it alone.
                    for e in todo:
                        try:
                            answers[e[0]] = engine.generate(e[2], adapter=adapter, max_new_tokens=max_new_tokens,
                                                            temperature=temperature, top_p=top_p)
                        except PromptError as exc:
                            part[part.index(e)] = (e[0], e[1], None, f"line {e[0]}: {exc}")
            for n, obj, _msgs, err in part:
                record = dict(obj)
                if n in answers:
                    record["answer"] = answers[n]
                    result.answered += 1
                else:
                    record["answer"] = None
                    record["error"] = err
                    result.errors.append(LineError(n, err or "unknown error"))
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            fh.flush()
            if on_progress is not None:
                on_progress(min(start + chunk, len(entries)), len(entries))
    return result
