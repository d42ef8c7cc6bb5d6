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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorastudio.engines.common import (
    AdapterError,
    Backend,
    Completion,
    IncrementalDecoder,
    Messages,
    PromptError,
    adapter_system_prompt,
    check_adapter_dir,
    normalize_messages,
    render_prompt,
)
from lorastudio.knowledge import grounded, reading_strength

_IncrementalDecoder = IncrementalDecoder  # the old private name, kept for callers

__all__ = ["AdapterError", "ChatEngine", "Completion", "EngineChoice", "GenerateFileResult", "LineError",
           "Messages", "PromptError", "adapter_system_prompt", "check_adapter_dir", "choose_engine",
           "engine_setting", "generate_file", "normalize_messages", "render_prompt"]

ENGINES = ("auto", "llama.cpp", "transformers")


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
    """One base model in memory, LoRA adapters switched per call (see the module docstring).

    The backend (`self.backend`, from `lorastudio.engines`) holds the model, the lock and the adapter
    LRU; this class renders prompts, budgets tokens, and turns token ids into text and counts.
    """

    def __init__(self, base: str = "default", max_adapters: int = 4, *, dtype: Any = None,
                 device: str | None = None, model: Any = None, tokenizer: Any = None,
                 engine: str | None = None, knowledge: bool = True):
        if max_adapters < 1:
            raise ValueError("max_adapters must be at least 1")
        self.base_id = base
        self.max_adapters = max_adapters
        self.knowledge = knowledge
        """Put an adapter's closest training rows beside each question (`lorastudio.knowledge`); False = the
        weights alone. Adapters without a knowledge file answer from their weights either way."""
        choice = choose_engine(base, engine=engine, device=device, dtype=dtype, model_given=model is not None)
        llama = None
        if choice.name == "llama.cpp":
            from lorastudio.llamacpp import LlamaCppError, LlamaCppModel

            try:
                llama = LlamaCppModel(choice.gguf)
            except LlamaCppError as exc:
                if engine_setting(engine) == "llama.cpp":
                    raise
                choice = EngineChoice("transformers", f"llama.cpp could not load the model ({exc})")
        self.engine = choice.name
        self.engine_reason = choice.reason
        self.backend: Backend
        if llama is not None:
            from lorastudio import llamacpp
            from lorastudio.engines.llama import LlamaBackend

            self.engine_reason += f" ({llama.n_threads} threads, {llamacpp.omp_wait}, context {llama.n_ctx})"
            tok = tokenizer if tokenizer is not None else _gguf_tokenizer(base, choice.gguf)
            self.backend = LlamaBackend(llama, tok, max_adapters, base)
            return
        from lorastudio.engines.hf import TransformersBackend

        if model is None or tokenizer is None:
            from lorastudio.models import load_model

            model, tokenizer = load_model(base, dtype=dtype, device=device)
        self.backend = TransformersBackend(model, tokenizer, max_adapters, base)

    @property
    def model(self) -> Any:
        """The transformers model (a PeftModel once an adapter is loaded); None on llama.cpp."""
        return self.backend.model

    @property
    def tokenizer(self) -> Any:
        return self.backend.tokenizer

    @property
    def eos_token_ids(self) -> set[int]:
        return self.backend.eos_token_ids

    # -- public API --------------------------------------------------------------------------

    def generate(self, messages: Messages, adapter: str | os.PathLike | None = None,
                 max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = None) -> str:
        return self.complete(messages, adapter, max_new_tokens, temperature, top_p, seed).text

    def complete(self, messages: Messages, adapter: str | os.PathLike | None = None,
                 max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = None, *, cancel: threading.Event | None = None,
                 knowledge: bool | None = None) -> Completion:
        """Like `generate`, plus token counts and why it stopped (for the OpenAI API's usage).

        `cancel`: setting it stops the generation at the next token (finish_reason "cancelled").
        `knowledge`: this request's choice of the adapter's rows (None: the engine's `knowledge`).
        """
        stats: dict[str, Any] = {}
        text = "".join(self.stream(messages, adapter, max_new_tokens, temperature, top_p, seed,
                                   stats=stats, cancel=cancel, knowledge=knowledge))
        return Completion(text, stats["prompt_tokens"], stats["completion_tokens"], stats["finish_reason"])

    def stream(self, messages: Messages, adapter: str | os.PathLike | None = None,
               max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
               seed: int | None = None, *, stats: dict | None = None,
               cancel: threading.Event | None = None, knowledge: bool | None = None) -> Iterator[str]:
        """Yield the answer as text pieces. If `stats` is given it is filled in at the end (token counts, why it
        stopped, `rows`: the adapter's training rows put beside the question).

        Generation runs in a worker thread that holds the engine lock; closing the iterator early
        (a client disconnect) stops it at the next token, and so does setting `cancel` (from any
        thread; a request still waiting for the lock then never starts). A cancelled generation
        ends the iteration normally, with finish_reason "cancelled" in `stats`.
        """
        msgs = normalize_messages(messages)
        adapter_path = check_adapter_dir(adapter) if adapter is not None else None
        read: list[dict[str, str]] = []  # the adapter's rows put beside the question
        prompt_ids = self._encode(msgs, adapter_path, knowledge, read)
        strength = self._strength(adapter_path, knowledge)
        max_new_tokens = self._budget(len(prompt_ids), max_new_tokens)
        q: queue.Queue = queue.Queue()
        stop = cancel if cancel is not None else threading.Event()
        closed = threading.Event()  # set when the consumer is done: the worker stops too

        def work() -> None:
            try:
                ids = self.backend.generate_ids(prompt_ids, adapter_path, max_new_tokens, temperature, top_p,
                                                seed, lambda new: q.put(("ids", new)), _Either(stop, closed),
                                                strength=strength)
                q.put(("done", ids))
            except BaseException as exc:  # re-raised in the consumer's thread
                q.put(("error", exc))

        worker = threading.Thread(target=work, name="lorastudio-generate", daemon=True)
        worker.start()
        decoder = IncrementalDecoder(self.tokenizer)
        try:
            while True:
                kind, value = q.get()
                if kind == "error":
                    raise value
                if kind == "done":
                    generated = value
                    break
                piece = decoder.push(self.backend.until_eos(value))
                if piece:
                    yield piece
            # The decoder saw every streamed id; the final ids decide the tail and the stats.
            answer_ids = self.backend.until_eos(generated)
            decoder.ids = list(answer_ids)
            tail = decoder.flush()
            if tail:
                yield tail
            if stats is not None:
                stopped = len(answer_ids) < len(generated) or (
                    generated and generated[-1] in self.eos_token_ids)
                reason = "stop" if stopped else "cancelled" if stop.is_set() and \
                    len(generated) < max_new_tokens else "length"
                stats.update(prompt_tokens=len(prompt_ids), completion_tokens=len(generated), finish_reason=reason,
                             rows=read)
        finally:
            closed.set()
            worker.join()

    def generate_batch(self, questions: Sequence[Messages], adapter: str | os.PathLike | None = None,
                       max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                       batch_size: int = 8, seed: int | None = None) -> list[str]:
        """Answers for many prompts, in input order (transformers: left-padded batches of similar
        lengths; llama.cpp: continuous batching). The lock is taken per batch, so interactive
        requests are not starved by a long evaluation."""
        all_msgs = [normalize_messages(q) for q in questions]
        adapter_path = check_adapter_dir(adapter) if adapter is not None else None
        encoded = [self._encode(m, adapter_path) for m in all_msgs]
        outs = self.backend.generate_many(encoded, adapter_path, lambda n: self._budget(n, max_new_tokens),
                                          temperature, top_p, seed, batch_size,
                                          strength=self._strength(adapter_path))
        return [self.tokenizer.decode(self.backend.until_eos(out), skip_special_tokens=True) for out in outs]

    def loaded_adapters(self) -> list[str]:
        """Adapter directories in memory, least recently used first."""
        return [str(p) for p in self.backend.adapters]

    def unload_adapter(self, adapter: str | os.PathLike) -> bool:
        path = Path(adapter).expanduser().resolve()
        with self.backend.lock:
            if path not in self.backend.adapters:
                return False
            self.backend.evict(path)
            return True

    # -- internals ---------------------------------------------------------------------------

    def _encode(self, msgs: list[dict[str, str]], adapter_path: Path | None = None,
                knowledge: bool | None = None, read: list[dict[str, str]] | None = None) -> list[int]:
        system = adapter_system_prompt(adapter_path) if adapter_path is not None else None
        if (self.knowledge if knowledge is None else knowledge) and adapter_path is not None:
            msgs = grounded(msgs, adapter_path, system, read)
        prompt = render_prompt(msgs, self.tokenizer, system_prompt=system)
        if isinstance(prompt, str):
            # The template already contains any BOS the model wants; adding one would double it.
            return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return list(prompt)

    def _strength(self, adapter_path: Path | None, knowledge: bool | None = None) -> float:
        """The adapter's strength for this request: its `knowledge_strength` while it reads its rows, else 1."""
        if adapter_path is None or not (self.knowledge if knowledge is None else knowledge):
            return 1.0
        return reading_strength(adapter_path)

    def _budget(self, prompt_len: int, max_new_tokens: int) -> int:
        if max_new_tokens < 1:
            raise PromptError("max_new_tokens must be at least 1")
        ctx = self.backend.context_length()
        if ctx is None:
            return max_new_tokens
        if prompt_len >= ctx:
            raise PromptError(f"the prompt is {prompt_len} tokens but the model reads at most {ctx}; "
                              "shorten the conversation")
        return min(max_new_tokens, ctx - prompt_len)


class _Either:
    """Set when either event is (`is_set` is all the backends ask of a cancel event)."""

    def __init__(self, a: threading.Event, b: threading.Event):
        self.a, self.b = a, b

    def is_set(self) -> bool:
        return self.a.is_set() or self.b.is_set()


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
