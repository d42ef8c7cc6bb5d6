"""Forgetting guard: mix in the base model's own answers to a varied set of general prompts.

Training on a few hundred company Q&A rows pulls a small model towards "everything is about the
company" (the seed recipe dropped general answers from 12/15 to 3/15). Replaying the base model's own
greedy answers to general prompts (zh and en: science, geography, coding, writing, advice — none about
any company) keeps its behaviour there; in our sweep it beat a KL-to-base term on the same prompts
(docs/QUALITY.md).

The answers depend only on the base model, so they are generated once per model and cached under
`$LORASTUDIO_HOME/replay/<model key>.jsonl`; the cache for the embedded `default` model ships in
`lorastudio/assets/replay/` so a first run on a laptop does not pay for it.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from lorastudio.data.types import Conversation, Message

MAX_NEW_TOKENS = 192
"""Long enough for the prompts' short answers; the sweep generated replay answers with this cap."""
_ORDER_SEED = 1  # each kind's fixed shuffled order: n rows = the first n of the merged order
FACT_SHARE = 0.0
"""Share of the first replay rows that are short factual questions (kind "fact": capitals, units,
authors, arithmetic) rather than open prompts (explain, write, advise). Mixing them in early kept no
more general answers (14.7–16 vs 16.7 of 24, docs/QUALITY.md), so they come after the 130 open ones:
used by large replay sets and by per-epoch replay (60 rows × 3 epochs = 180 prompts)."""


def general_prompts() -> list[dict]:
    """The built-in general prompts: `{"prompt", "lang", "kind"}` per line of assets/general_prompts.jsonl
    (kind "open" or "fact")."""
    text = resources.files("lorastudio").joinpath("assets", "general_prompts.jsonl").read_text(encoding="utf-8")
    return [{"kind": "open", **json.loads(line)} for line in text.splitlines() if line.strip()]


def ordered_prompts(fact_share: float = FACT_SHARE) -> list[str]:
    """Every built-in prompt in replay order: each kind shuffled once (fixed seed), then merged so that
    any first n hold round(n × fact_share) factual ones while both kinds last."""
    by_kind: dict[str, list[str]] = {"open": [], "fact": []}
    for p in general_prompts():
        by_kind[p["kind"]].append(p["prompt"])
    for prompts in by_kind.values():
        random.Random(_ORDER_SEED).shuffle(prompts)
    opens, facts = by_kind["open"], by_kind["fact"]
    merged: list[str] = []
    n_fact = 0
    while opens or facts:
        due = round((len(merged) + 1) * fact_share) > n_fact
        if facts and (due or not opens):
            merged.append(facts.pop(0))
            n_fact += 1
        else:
            merged.append(opens.pop(0))
    return merged


def read_prompts(path: str | Path) -> list[str]:
    """Prompts of a user's own replay file: TXT (one per line) or JSONL (`prompt` per line), each once."""
    from lorastudio.train.config import ConfigError

    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"replay_prompts={str(path)!r}: no such file; give a .txt with one general question "
                          "per line or a .jsonl with a \"prompt\" per line")
    prompts: list[str] = []
    for number, line in enumerate(file.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        if file.suffix.lower() == ".jsonl":
            try:
                row = json.loads(line)
                prompt = row["prompt"] if isinstance(row, dict) else None
            except (json.JSONDecodeError, KeyError):
                prompt = None
            if not isinstance(prompt, str) or not prompt.strip():
                raise ConfigError(f"{file}, line {number}: expected a JSON object with a \"prompt\" text, "
                                  f"got {line[:60]!r}")
            prompts.append(prompt.strip())
        else:
            prompts.append(line.strip())
    if not prompts:
        raise ConfigError(f"{file}: no prompts in it; one general question per line")
    return list(dict.fromkeys(prompts))


def model_key(base: str, model_dir: str | Path | None = None) -> str:
    """A cache key that changes when the weights do: `default` → the GGUF's sha256; a directory → its
    config and weight file sizes; anything else → its id."""
    if base == "default":
        from lorastudio.models.default import GGUF_SHA256

        return f"default-{GGUF_SHA256[:12]}"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", str(base).strip("/"))[-60:] or "model"
    digest = hashlib.sha256(str(base).encode())
    directory = Path(model_dir or base)
    if directory.is_dir():
        for f in sorted(directory.glob("*.json")) + sorted(directory.glob("*.safetensors")):
            digest.update(f.name.encode())
            digest.update(f.read_bytes() if f.suffix == ".json" else str(f.stat().st_size).encode())
    return f"{slug}-{digest.hexdigest()[:12]}"


_SENTENCE_END = re.compile(r"(?<=[。！？!?；;\n])|(?<=[.](?=\s))")


def trim_repetition(answer: str, min_chars: int = 15, times: int = 3) -> str:
    """Cut a looping answer after the first copy of the sentence it repeats.

    A small model's greedy answer sometimes repeats one sentence until the token cap ("The Earth's
    rotation causes …" × 8); trained as replay, that would teach the loop. A sentence of at least
    `min_chars` characters seen `times` times marks the loop; the answer ends where it first ended.
    """
    sentences = [x for x in _SENTENCE_END.split(answer) if x]
    seen: dict[str, int] = {}
    for sentence in sentences:
        key = sentence.strip()
        if len(key) >= min_chars:
            seen[key] = seen.get(key, 0) + 1
    looping = {k for k, count in seen.items() if count >= times}
    if not looping:
        return answer
    kept: list[str] = []
    for sentence in sentences:
        kept.append(sentence)
        if sentence.strip() in looping:
            break
    return "".join(kept).rstrip()


def _cache_paths(key: str) -> tuple[Path, Path]:
    from lorastudio.models.cache import lorastudio_home

    shipped = Path(str(resources.files("lorastudio").joinpath("assets", "replay", f"{key}.jsonl")))
    return shipped, lorastudio_home() / "replay" / f"{key}.jsonl"


def _read_cache(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            out[row["prompt"]] = row["answer"]
    return out


def replay_engine(base: str, device: str | None = None) -> tuple[str, str]:
    """(engine, reason) for the replay answers: "llama.cpp" on a CPU when it can run the base (the
    `default` model straight from its GGUF), else "transformers" (`generation.base_engine`, the rule
    the paraphrases follow too)."""
    from lorastudio.train.generation import base_engine

    return base_engine(base, device)


def general_replay(base: str, n: int, *, model: Any = None, tokenizer: Any = None,
                   model_dir: str | Path | None = None, prompts: Sequence[str] | None = None,
                   on_progress: Callable[[int, int], None] | None = None,
                   device: str | None = None, on_event: Callable[[dict], None] | None = None) -> list[Conversation]:
    """n conversations: a general prompt (the first n of `prompts`, else of the built-in order) and the
    base model's own greedy answer to it.

    Answers come from the cache when present; missing ones are generated and added to the cache
    (each line names the engine that wrote it) by `generation.base_answers`: on a CPU by the llama.cpp
    engine when it runs the base (`replay_engine`; in a child process, see `lorastudio.engines.batch`),
    else batched with `model` / `tokenizer`, or with the base model loaded here. `on_event` gets the
    engine used, and the reason when llama.cpp failed and transformers answered instead.
    """
    if n <= 0:
        return []
    prompts = list(dict.fromkeys(prompts if prompts is not None else ordered_prompts()))[:n]
    key = model_key(base, model_dir)
    shipped, cached = _cache_paths(key)
    answers = {**_read_cache(shipped), **_read_cache(cached)}
    missing = [p for p in prompts if p not in answers]
    if missing:
        from lorastudio.train.generation import base_answers

        generated, engine = base_answers(base, [[{"role": "user", "content": p}] for p in missing],
                                         max_new_tokens=MAX_NEW_TOKENS, model=model, tokenizer=tokenizer,
                                         device=device, batch_size=16, what="replay answers",
                                         on_progress=on_progress, on_event=on_event)
        cached.parent.mkdir(parents=True, exist_ok=True)
        with open(cached, "a", encoding="utf-8") as f:
            for prompt, answer in zip(missing, generated, strict=True):
                answers[prompt] = answer
                f.write(json.dumps({"prompt": prompt, "answer": answer, "engine": engine}, ensure_ascii=False) + "\n")
    return [Conversation([Message("user", p), Message("assistant", trim_repetition(answers[p]))])
            for p in prompts if answers[p]]


def replay_conversations(conversations: Sequence[Conversation], *, model: Any = None, tokenizer: Any = None,
                         cfg: Any = None, on_event: Callable[[dict], None] | None = None) -> list[Conversation]:
    """The trainer's hook: the training conversations plus `cfg.replay_rows` replay rows (prompts from
    `cfg.replay_prompts` when the user gives a file of their own)."""
    n = int(getattr(cfg, "replay_rows", 0) or 0)
    base = str(getattr(cfg, "base", "default"))

    def progress(done: int, total: int) -> None:
        if on_event:
            on_event({"type": "stage", "stage": "prepare",
                      "message": f"answering general prompts with the base model (cached once): {done}/{total}"})

    model_dir = None
    if base not in ("default", "tiny-random") and Path(base).expanduser().is_dir():
        model_dir = Path(base).expanduser()
    own = getattr(cfg, "replay_prompts", None)
    prompts = read_prompts(own) if own else ordered_prompts()
    from lorastudio.train.augment import epoch_cycle

    # augment_per_epoch: new prompts every epoch, as many epochs as the prompts last
    cycle = max(1, min(epoch_cycle(cfg), len(prompts) // n))
    replay = general_replay(base, n * cycle, model=model, tokenizer=tokenizer, model_dir=model_dir,
                            prompts=prompts, on_progress=progress, device=getattr(cfg, "device", None),
                            on_event=on_event)
    if cycle > 1:
        for index, row in enumerate(replay):
            row.rotation = (index // n, cycle)
    return list(conversations) + replay


__all__ = ["general_prompts", "general_replay", "model_key", "ordered_prompts", "read_prompts",
           "replay_conversations", "replay_engine", "trim_repetition"]
