"""`recommend()`: every training setting chosen from the data, the task, the model and the hardware.

Pure function (no torch at import time): the web UI calls it on every change of the form, the CLI
calls it before `train(cfg)`. Each setting comes with a one-line reason the UI shows next to it, and
the whole plan with a time/cost estimate. The numbers behind the defaults are in docs/QUALITY.md
(a sweep on the real default model: bench/quality/sweep.py).
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TASKS = ("qa", "copywriting", "consulting")

# Throughput of LoRA all-linear training on the 0.5B default model, real (unpadded) tokens/s,
# measured (docs/QUALITY.md, ../shared/docs/EXPERIMENTS.md). Other sizes scale by 0.5B / size.
CPU_TOKENS_PER_S_05B_2CORES_BF16 = 140.0  # the CPU fast path, 640-token steps: 140–146 measured
CPU_TOKENS_PER_S_05B_2CORES_FP32 = 80.0
GPU_TOKENS_PER_S_05B = 20_000.0
# Small steps on a GPU are bound by kernel launches, not arithmetic: 141 steps of 640 tokens took
# 25–30 s on an H200 (three runs sharing it), so a step costs at least this much.
GPU_SECONDS_PER_STEP = 0.15
# Greedy generation for augmentation/replay, batched, tokens/s of the whole batch on 2 CPU cores.
CPU_GEN_TOKENS_PER_S_05B = 40.0
GPU_GEN_TOKENS_PER_S_05B = 2_000.0

# The replay set: 130 open + 64 short factual built-in prompts (lorastudio/assets/general_prompts.jsonl);
# at most the 130 open ones a pass. The default model's answers to the open ones average 76 tokens, 117
# a row with the template (the factual ones are shorter: the estimate errs long).
REPLAY_PROMPTS = 130
REPLAY_ANSWER_TOKENS = 76
REPLAY_ROW_TOKENS = 117

# On a CPU the default run must stay within this wall-time budget (PRODUCT: "≤ 15 minutes on a
# laptop-class 2-core machine"): epochs and augmentation shrink to fit it.
CPU_BUDGET_S = 12 * 60
# An epoch (data + augmentation + replay) under this many tokens is a small file that states each fact
# once or twice: it gets a 4th pass (multi-turn demo file: 23 vs 20 of 80 reworded facts, general
# answers kept), still minutes on a laptop.
SMALL_EPOCH_TOKENS = 20_000

# Template overhead per conversation beyond 5 per message: role markers and the system prompt that
# Qwen's chat template injects (31 tokens a row in all, measured with the default tokenizer).
TEMPLATE_TOKENS_PER_ROW = 21

# Known families: name fragment → (parameters in billions, supports chat template).
_KNOWN_SIZES = {
    "default": 0.5,
    "tiny-random": 0.001,
}


@dataclass
class Hardware:
    """What the run will train on. `device` is "cpu" or "cuda"."""

    device: str = "cpu"
    cpu_cores: int = 2
    bf16: bool = True
    gpu_memory_gb: float = 0.0
    gpu_name: str = ""
    gpus: int = 1

    @classmethod
    def from_any(cls, value: Hardware | Mapping[str, Any] | str | None) -> Hardware:
        if value is None:
            return detect_hardware()
        if isinstance(value, Hardware):
            return value
        if isinstance(value, str):
            return cls(device="cuda" if value in ("cuda", "gpu") else "cpu")
        known = {k: v for k, v in value.items() if k in cls.__dataclass_fields__}
        if known.get("device") == "gpu":
            known["device"] = "cuda"
        if "device" not in known:
            known["device"] = "cuda" if float(known.get("gpu_memory_gb") or 0) > 0 else "cpu"
        return cls(**known)

    @property
    def label(self) -> str:
        if self.device == "cuda":
            name = self.gpu_name or "GPU"
            return f"{self.gpus}× {name} ({self.gpu_memory_gb:.0f} GB)" if self.gpus > 1 else \
                f"{name} ({self.gpu_memory_gb:.0f} GB)"
        return f"CPU, {self.cpu_cores} cores{', bf16' if self.bf16 else ''}"


def detect_hardware() -> Hardware:
    """The machine this process runs on. Imports torch lazily (only when asked)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        import torch
    except ImportError:  # no torch: the estimate is still useful
        return Hardware(device="cpu", cpu_cores=cores, bf16=False)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return Hardware(device="cuda", cpu_cores=cores, bf16=torch.cuda.is_bf16_supported(),
                        gpu_memory_gb=props.total_memory / 2**30, gpu_name=props.name,
                        gpus=torch.cuda.device_count())
    bf16 = False
    try:  # avx512_bf16 / amx: bf16 matmuls are ~2.5× faster than fp32 on such CPUs
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
        bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        pass
    return Hardware(device="cpu", cpu_cores=cores, bf16=bf16)


@dataclass
class DataStats:
    """What the recommender needs to know about the training data."""

    rows: int
    mean_tokens: float
    """Mean tokens of one rendered conversation (characters converted when no tokenizer is given)."""
    max_tokens: int
    mean_answer_tokens: float = 0.0
    turns: float = 1.0
    has_system: bool = False

    @classmethod
    def from_any(cls, value: Any, tokenizer: Any = None) -> DataStats:
        if isinstance(value, DataStats):
            return value
        if isinstance(value, int):
            return cls(rows=value, mean_tokens=80.0, max_tokens=200, mean_answer_tokens=40.0)
        if isinstance(value, Mapping):
            rows = int(value.get("rows") or value.get("rows_ok") or value.get("count") or 0)
            mean = float(value.get("mean_tokens") or approx_tokens("x" * int(value.get("mean_chars", 240))))
            return cls(rows=rows, mean_tokens=mean,
                       max_tokens=int(value.get("max_tokens") or mean * 3),
                       mean_answer_tokens=float(value.get("mean_answer_tokens") or mean / 2),
                       turns=float(value.get("turns") or 1.0), has_system=bool(value.get("has_system")))
        return cls.from_conversations(list(value), tokenizer)

    @classmethod
    def from_conversations(cls, conversations: Iterable[Any], tokenizer: Any = None) -> DataStats:
        def count(text: str) -> int:
            if tokenizer is not None:
                return len(tokenizer(text, add_special_tokens=False)["input_ids"])
            return approx_tokens(text)

        lengths, answers, turns = [], [], []
        has_system = False
        for conv in conversations:
            messages = _messages_of(conv)
            total = TEMPLATE_TOKENS_PER_ROW
            answer = 0
            for role, content in messages:
                n = count(content) + 5
                total += n
                if role == "assistant":
                    answer += n
                if role == "system":
                    has_system = True
            lengths.append(total)
            answers.append(answer)
            turns.append(max(1, sum(1 for role, _ in messages if role == "assistant")))
        if not lengths:
            return cls(rows=0, mean_tokens=0.0, max_tokens=0)
        return cls(rows=len(lengths), mean_tokens=sum(lengths) / len(lengths), max_tokens=max(lengths),
                   mean_answer_tokens=sum(answers) / len(answers), turns=sum(turns) / len(turns),
                   has_system=has_system)


def _messages_of(conv: Any) -> list[tuple[str, str]]:
    """(role, content) pairs from a Conversation, an OpenAI-style dict or an instruction/response dict."""
    messages = getattr(conv, "messages", None)
    if messages is None and isinstance(conv, Mapping):
        messages = conv.get("messages")
        if messages is None:
            question = next((conv[k] for k in ("instruction", "question", "prompt", "input") if k in conv), "")
            answer = next((conv[k] for k in ("response", "answer", "completion", "output") if k in conv), "")
            return [("user", str(question)), ("assistant", str(answer))]
    out = []
    for m in messages or []:
        if isinstance(m, Mapping):
            out.append((str(m.get("role", "")), str(m.get("content", ""))))
        else:
            out.append((m.role, m.content))
    return out


_CJK = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]")


def approx_tokens(text: str) -> int:
    """Token count without a tokenizer: Qwen-style BPE gives ≈ 0.85 tokens per CJK character and
    ≈ 1 token per 3.6 other characters (measured on the demo data with the default tokenizer)."""
    cjk = len(_CJK.findall(text))
    return max(1, round(cjk * 0.85 + (len(text) - cjk) / 3.6))


def model_size_b(base: str) -> float:
    """Parameters in billions, from the catalog id or a size in the name (`Qwen2.5-1.5B`, `7b`)."""
    name = os.path.basename(str(base).rstrip("/")).lower()
    if name in _KNOWN_SIZES:
        return _KNOWN_SIZES[name]
    match = re.search(r"(\d+(?:\.\d+)?)\s*([bm])(?![a-z])", name)
    if match:
        number = float(match.group(1))
        return number / 1000 if match.group(2) == "m" else number
    return 0.5


@dataclass
class Recommendation:
    settings: dict[str, Any]
    reasons: dict[str, str]
    estimate: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"settings": dict(self.settings), "reasons": dict(self.reasons),
                "estimate": dict(self.estimate), "warnings": list(self.warnings)}


def recommend(rows_or_stats: Any, base: str = "default", task: str = "qa", hardware: Any = None,
              price_per_hour: float | None = None, *, tokenizer: Any = None,
              currency: str = "USD") -> Recommendation:
    """Choose every TrainConfig setting for this data, task, base model and hardware.

    `rows_or_stats`: a list of Conversation (or dict rows), a `DataStats`, a dict of stats
    (`rows`, `mean_tokens`, `max_tokens`, …) or just a row count.
    `hardware`: a `Hardware`, a dict (`device`, `cpu_cores`, `bf16`, `gpu_memory_gb`, …), "cpu"/"cuda",
    or None to look at this machine.
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r} is invalid: choose one of {', '.join(TASKS)}")
    stats = DataStats.from_any(rows_or_stats, tokenizer)
    hw = Hardware.from_any(hardware)
    size = model_size_b(base)
    on_gpu = hw.device == "cuda"
    s: dict[str, Any] = {"task": task}
    r: dict[str, str] = {}
    warnings: list[str] = []
    rows = max(stats.rows, 0)

    # --- LoRA shape -----------------------------------------------------------------------------
    s["target_modules"] = "all-mlp"
    r["target_modules"] = ("the feed-forward (MLP) layers, where facts are stored: 66.7 of 80 reworded facts and "
                           "17.3 of 24 general answers kept, vs 65.5 and 16.7 on all linear layers (3 and 6 runs); "
                           "attention-only LoRA barely learns facts (5/40)")
    rank = 16 if size <= 3 else 32 if size <= 14 else 64
    if rows >= 5000:
        rank *= 2
    s["lora_r"] = rank
    r["lora_r"] = (f"rank {rank}: enough capacity for {rows} rows on a {size:g}B model "
                   "without the slow-down of bigger adapters")
    s["lora_alpha"] = 2 * rank
    r["lora_alpha"] = "alpha = 2 × rank: the usual scale, keeps the learning rate meaningful across ranks"
    s["lora_dropout"] = 0.0
    r["lora_dropout"] = "no dropout: augmentation and replay regularise better on small data and cost nothing"

    # --- learning rate and schedule ------------------------------------------------------------
    lr = 1e-3 if size <= 1 else 5e-4 if size <= 4 else 2e-4 if size <= 14 else 1e-4
    if rows >= 5000:
        lr *= 0.5
    s["learning_rate"] = lr
    r["learning_rate"] = (f"{lr:g}: learns facts in 3 passes on a {size:g}B model; in our sweep 1.5× that "
                          "forgot more (14 vs 16 of 24 general answers) and 0.7× learnt fewer facts (64 vs 70 of 80)")
    s["lr_scheduler"] = "linear"
    r["lr_scheduler"] = "linear decay: ends at a low rate so the last epoch polishes instead of overshooting"
    s["warmup_ratio"] = 0.05
    r["warmup_ratio"] = "5 % warm-up: avoids a destructive first step on a freshly initialised adapter"
    s["weight_decay"] = 0.0
    r["weight_decay"] = "no weight decay: LoRA starts at zero and trains briefly; decay only slows learning"

    # --- augmentation and replay (what makes facts stick without forgetting) ------------------
    facts_task = task in ("qa", "consulting")
    # Same-fact pairs cost nothing but tokens; base-model paraphrases cost generation time, so they are
    # on where generation is cheap (a GPU). Measured: docs/QUALITY.md.
    s["augment_same_fact"] = bool(facts_task and rows <= 5000)
    s["augment_paraphrases"] = 2 if (facts_task and on_gpu and rows <= 2000) else 0
    multi_turn = stats.turns > 1.0
    s["augment_turns"] = bool(facts_task and multi_turn)
    r["augment_turns"] = (
        "later turns of each conversation also trained as questions of their own: customers ask them "
        "without the conversation before" if s["augment_turns"] else
        "off: every row is a single question" if not multi_turn else
        "off: copywriting conversations teach a style, not facts")
    # ≈ 40 % of the answers taught (60 for 150 rows, as swept), so replay never outweighs the user's data.
    replay = int(min(REPLAY_PROMPTS, max(8, round(0.4 * rows * max(1.0, stats.turns))))) if rows else 0
    s["replay_rows"] = replay
    r["replay_rows"] = (f"{replay} general questions answered by the base model itself mixed in: keeps what "
                        "the base model knew (3 epochs: 17 of 24 general answers with 60, 15 with 40, "
                        "at the same fact recall; a KL term cost facts and kept none more)")

    # --- length and batching --------------------------------------------------------------------
    max_len = 256
    while max_len < min(stats.max_tokens * 1.25, 8192):
        max_len *= 2
    s["max_length"] = max_len
    r["max_length"] = (f"{max_len} tokens: longest row is about {stats.max_tokens}, "
                       "longer rows are reported and skipped, never cut silently")
    # About 8 rows per optimiser step on small data (what the sweep used): enough steps per epoch for
    # the facts to be learnt in 3 passes. Bigger data takes bigger steps (fewer, faster ones).
    rows_per_step = 8 if rows < 1000 else 16 if rows < 5000 else 32
    batch_tokens = max(max_len, int(math.ceil(rows_per_step * max(stats.mean_tokens, 16) / 64) * 64))
    s["batch_tokens"] = batch_tokens
    r["batch_tokens"] = (f"{batch_tokens} real tokens per step (packed, no padding), about {rows_per_step} rows: "
                         "enough optimiser steps per pass for small data")
    s["gradient_accumulation"] = 1
    r["gradient_accumulation"] = "1: the packed batch is already large enough for stable steps"

    # --- epochs and early stopping -----------------------------------------------------------
    # Three passes over data + augmentation + replay: the sweep's best within a 15-minute CPU run
    # (64 of 80 reworded facts over 3 seeds vs 56 with 2; 4 passes forgot more general knowledge).
    epochs = 3.0 if rows < 5000 else 1.0
    s["num_epochs"] = epochs
    one_pass = _estimate({**s, "num_epochs": 1.0}, stats, hw, size, 0.0, currency, base)["tokens"]
    small = bool(rows and facts_task and epochs == 3.0 and one_pass < SMALL_EPOCH_TOKENS)
    if small:
        epochs = s["num_epochs"] = 4.0
    s["val_fraction"] = 0.1 if rows >= 200 else 0.0
    s["early_stopping_patience"] = 2 if rows >= 200 else None
    if rows >= 200:
        r["val_fraction"] = "10 % held out (whole facts, reworded) to choose the best checkpoint"
        r["early_stopping_patience"] = "stop after 2 evaluations without improvement, keep the best checkpoint"
    else:
        r["val_fraction"] = (f"no held-out split: with {rows} rows every row is a fact the model must learn; "
                             "the schedule is fixed instead")
        r["early_stopping_patience"] = "off: too few rows for a validation loss that means anything"
    s["neftune_alpha"] = None
    r["neftune_alpha"] = "off: noisy embeddings are not needed once questions are varied by augmentation"

    # --- precision and memory -------------------------------------------------------------------
    s["dtype"] = "bf16" if hw.bf16 else ("fp16" if on_gpu else "fp32")
    r["dtype"] = ("bf16: half the memory, 2–3× faster, stable for LoRA" if hw.bf16 else
                  "fp16 (this GPU has no bf16)" if on_gpu else "fp32: this CPU has no fast bf16")
    plan = _gpu_plan(base, s, hw, warnings) if on_gpu else None
    if plan is not None:
        # The trainer re-plans at start from the memory free then (`gpu.customize`); shown here so the
        # user sees what a card of this size gets.
        s["gradient_checkpointing"] = "auto"
        r["gradient_checkpointing"] = f"auto-fit for {hw.gpu_memory_gb:.0f} GB: {plan.reason}"
    else:
        weights_gb = size * (2 if s["dtype"] != "fp32" else 4)
        need_ckpt = on_gpu and hw.gpu_memory_gb and weights_gb * 3 > hw.gpu_memory_gb
        s["gradient_checkpointing"] = bool(need_ckpt)
        r["gradient_checkpointing"] = ("on: the model barely fits this GPU's memory" if need_ckpt else
                                       "off: memory is sufficient, and it costs ~30 % speed")
    s["quantize_base"] = "auto"
    r["quantize_base"] = ("auto: 4-bit base weights (QLoRA): the bf16 base does not fit this GPU"
                          if plan is not None and plan.quantize_4bit else
                          "auto: full-precision base; 4-bit (QLoRA, bitsandbytes) only if it would not fit the GPU")
    s["device"] = "cuda" if on_gpu else "cpu"
    r["device"] = f"train on {hw.label}"
    price = float(price_per_hour) if price_per_hour is not None else 0.0
    s["price_per_hour"] = price
    r["price_per_hour"] = (f"{price:g} {currency}/hour, used for the cost shown while training" if price
                           else "no price given: cost shown as 0")

    # Fresh variants each epoch where there is something to vary (settled below, once epochs are fitted).
    s["augment_per_epoch"] = bool(s["augment_same_fact"] or s["replay_rows"])

    # --- time/cost estimate, and fitting the CPU budget ----------------------------------------
    estimate = _estimate(s, stats, hw, size, price, currency, base)
    if not on_gpu and estimate["seconds"] > CPU_BUDGET_S and rows:
        # Too slow for a laptop: shrink the passes first, then the augmentation.
        while estimate["seconds"] > CPU_BUDGET_S and s["num_epochs"] > 2:
            s["num_epochs"] = float(s["num_epochs"] - 1)
            estimate = _estimate(s, stats, hw, size, price, currency, base)
        while estimate["seconds"] > CPU_BUDGET_S and s["augment_paraphrases"] > 0:
            s["augment_paraphrases"] -= 1
            estimate = _estimate(s, stats, hw, size, price, currency, base)
        while estimate["seconds"] > CPU_BUDGET_S and s["num_epochs"] > 1:
            s["num_epochs"] = float(s["num_epochs"] - 1)
            estimate = _estimate(s, stats, hw, size, price, currency, base)
        if estimate["seconds"] > CPU_BUDGET_S:
            warnings.append(f"about {estimate['seconds'] / 60:.0f} minutes on this CPU; "
                            "a GPU or a smaller model is faster")
    fitted = not on_gpu and (s["num_epochs"] < epochs)
    r["num_epochs"] = (f"{s['num_epochs']:g} epochs over data + paraphrases + replay: enough passes for "
                       f"{rows} rows to be recalled, few enough not to overwrite the base model"
                       + (f" (a 4th: one pass is only {one_pass:,} tokens)" if small else "")
                       + (" (fewer, to fit a CPU run)" if fitted else ""))
    s["augment_per_epoch"] = bool(s["augment_per_epoch"] and s["num_epochs"] > 1)
    r["augment_per_epoch"] = (
        "each pass gets fresh variants (another same-fact answer, new general questions) instead of repeats: "
        "18.7 of 24 general answers kept vs 17.3 (MLP LoRA, 6 and 3 seeds), facts 65.2 vs 66.7 of 80"
        if s["augment_per_epoch"] else
        "off: one pass, or nothing is augmented")
    r["augment_same_fact"] = (
        "each question also trained with the answer of another row about the same fact: the best "
        "measured lever per trained token (59 vs 47 of 80 reworded questions)" if s["augment_same_fact"] else
        "off: copywriting rows teach a style, not facts asked several ways" if not facts_task else
        f"off: {rows} rows, too many to compare answers pairwise quickly")
    augment = s["augment_paraphrases"]
    if augment:
        r["augment_paraphrases"] = (f"{augment} reworded version(s) of each question: the model learns the "
                                    "fact, not the wording, so customers' own phrasings hit it")
    else:
        r["augment_paraphrases"] = ("off: copywriting learns a style, not facts asked in many ways"
                                    if not facts_task else
                                    f"off: {rows} rows already phrase things many ways" if rows > 2000 else
                                    "off: writing paraphrases with the model costs minutes on a CPU; "
                                    "same-fact pairs give more per minute")
    if rows < 100:
        warnings.append(f"only {rows} usable rows: the model will learn little; 500–1000 are advised")
    return Recommendation(settings=s, reasons=r, estimate=estimate, warnings=warnings)


@functools.cache
def _builtin_prompt_count() -> int:
    from lorastudio.train.replay import general_prompts

    return len(general_prompts())


def _local_config(base: str) -> dict | None:
    """The base's config.json when it is on this machine (the cached default, a model directory)."""
    import json

    candidates = [Path(base).expanduser()]
    if base in ("default", "tiny-random"):
        from lorastudio.models.cache import lorastudio_home

        candidates.insert(0, lorastudio_home() / "models" / base)
    for directory in candidates:
        try:
            return json.loads((directory / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    return None


def _gpu_plan(base: str, s: Mapping[str, Any], hw: Hardware, warnings: list[str]) -> Any:
    """`gpu.autofit`'s plan for this base on this GPU (None when the base's shape is not known here)."""
    config = _local_config(base)
    if not config or not hw.gpu_memory_gb:
        return None
    from types import SimpleNamespace

    from lorastudio.train.gpu import GIB, ModelShape, autofit, bitsandbytes_available

    try:
        shape = ModelShape.from_config(SimpleNamespace(**config))
    except (AttributeError, TypeError):  # not a decoder-only config we can read
        return None
    try:
        return autofit(shape, lora_r=int(s["lora_r"]), pack_tokens=int(s["batch_tokens"]),
                       max_length=int(s["max_length"]), free_bytes=int(hw.gpu_memory_gb * 0.95 * GIB),
                       bitsandbytes_available=bitsandbytes_available())
    except MemoryError as error:
        warnings.append(f"does not fit this GPU: {error}")
        return None


def _estimate(s: Mapping[str, Any], stats: DataStats, hw: Hardware, size: float, price: float,
              currency: str, base: str = "default") -> dict[str, Any]:
    """Seconds and tokens of the whole run: generation of paraphrases/replay, then training."""
    rows = stats.rows
    scale = 0.5 / max(size, 0.05)
    if hw.device == "cuda":
        train_tps = GPU_TOKENS_PER_S_05B * scale * max(1, hw.gpus)
        gen_tps = GPU_GEN_TOKENS_PER_S_05B * scale
    else:
        per_core = (CPU_TOKENS_PER_S_05B_2CORES_BF16 if hw.bf16 else CPU_TOKENS_PER_S_05B_2CORES_FP32) / 2
        train_tps = per_core * max(1, hw.cpu_cores) * scale
        gen_tps = CPU_GEN_TOKENS_PER_S_05B / 2 * max(1, hw.cpu_cores) * scale
    question_tokens = max(4.0, stats.mean_tokens - stats.mean_answer_tokens - TEMPLATE_TOKENS_PER_ROW)
    paraphrase_rows = rows * int(s.get("augment_paraphrases") or 0) * 0.6  # ~60 % survive the filters
    replay = int(s.get("replay_rows") or 0)
    # Paraphrases: one prompt per question asking for n rewordings (~1.3 × question tokens each).
    gen_tokens = (rows * question_tokens * 1.3 * int(s.get("augment_paraphrases") or 0)) if paraphrase_rows else 0
    # Replay answers are cached per base model (shipped for `default`); a first run of another model
    # writes them once: for every epoch's prompts under augment_per_epoch.
    if replay and base != "default":
        epochs = math.ceil(float(s.get("num_epochs") or 1))
        cycles = min(epochs, _builtin_prompt_count() // replay) if s.get("augment_per_epoch") else 1
        gen_tokens += replay * max(1, cycles) * REPLAY_ANSWER_TOKENS
    per_epoch = (rows + paraphrase_rows) * stats.mean_tokens + replay * REPLAY_ROW_TOKENS
    # Later turns as rows of their own, and same-fact pairs (single-turn rows and those turns), each
    # about one turn long.
    per_turn = stats.mean_tokens / max(1.0, stats.turns)
    turn_rows = rows * (stats.turns - 1) if s.get("augment_turns") else 0.0
    single_rows = rows if stats.turns <= 1.0 else 0.0
    per_epoch += turn_rows * per_turn
    if s.get("augment_same_fact"):
        per_epoch += (single_rows + turn_rows) * per_turn
    tokens = int(per_epoch * float(s.get("num_epochs") or 1))
    train_s = tokens / train_tps
    if hw.device == "cuda":
        train_s = max(train_s, tokens / max(1, int(s.get("batch_tokens") or 4096)) * GPU_SECONDS_PER_STEP)
    seconds = train_s + gen_tokens / gen_tps + (20 if hw.device == "cuda" else 45)
    cost = round(seconds / 3600 * price, 4)
    return {"seconds": int(math.ceil(seconds)), "tokens": tokens, "device": hw.label,
            "cost": cost, "currency": currency}


__all__ = ["DataStats", "Hardware", "Recommendation", "approx_tokens", "detect_hardware",
           "model_size_b", "recommend"]
