"""fp32 CPU training speed levers (issue 13), on the default model's shape with random weights.

    python bench/cpu_speed.py profile [--steps 2] [--tokens 640]        # where a step's time goes
    python bench/cpu_speed.py ab --rounds 4 [--levers base,int8,...]     # tok/s and loss, A B A B … in one run
    python bench/cpu_speed.py kernels                                    # the GEMM kernels on the layer shapes
    python bench/cpu_speed.py parity --model DIR --steps 30              # loss curve / gradient cosine, real weights
    python bench/cpu_speed.py ce [--rows 340]                            # head + CE with/without key-token weights
    python bench/cpu_speed.py kernels --emulate-avx2                     # any mode: an AVX2-only CPU approximated

The model: Qwen2 with the Qwen2.5-0.5B shape (24 layers, hidden 896, intermediate 4864, 14/2 heads,
151,936 vocab), fp32 random weights (seed 0, cached in the temp directory), LoRA r16 α32 on the MLP
linears (the default `all-mlp`), the CPU fast path (`cpu.packed_loss`) and AdamW, as the trainer runs
it. The rows: `yunzhan_train.jsonl` through the default model's tokenizer and chat template when both
are here (the default model cached), else synthetic rows with the same statistics (a shared 24-token
template prefix, ~78 tokens per example, ~49 % of them targets), greedily packed to `--tokens`.

Every lever runs in the same process, its steps interleaved with the baseline's (A B A B …): the
machine's neighbours then slow both alike. Reported: the median over rounds of wall tok/s and tok per
CPU-second (the example tokens of the data, not the tokens computed: a lever that computes fewer
tokens for the same data counts as faster), and the losses of the same rows, step for step.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_SHAPE = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                     num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                     rope_parameters={"rope_type": "default", "rope_theta": 1e6}, rms_norm_eps=1e-6,
                     tie_word_embeddings=False, use_sliding_window=False)
DATA_CANDIDATES = [REPO / "shared/data/yunzhan_train.jsonl", REPO.parent / "shared/data/yunzhan_train.jsonl",
                   REPO / "lorastudio/assets/demo/yunzhan_train.jsonl"]


def cpu_class() -> str:
    """The machine, as the docs name it: model name, ISA class, cores."""
    from lorastudio import hardware

    name = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    flags = ""
    with contextlib.suppress(OSError):
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    isa = ("AVX-512-bf16" if "avx512_bf16" in flags else "AVX-512" if "avx512f" in flags
           else "AVX2" if "avx2" in flags else "no AVX2")
    if os.environ.get("ATEN_CPU_CAPABILITY") == "avx2" and os.environ.get(hardware.FLAGS_ENV):
        isa += " capped at AVX2 (bench/emulate_avx2.sh)"
    return f"{name}, {isa}, {hardware.physical_cores()} physical cores"


# ------------------------------------------------------------------------------------------------
# Model and rows
# ------------------------------------------------------------------------------------------------
def random_model(layers: int, *, vocab: int | None = None, seed: int = 0):
    """A Qwen2ForCausalLM of the default shape (`layers` decoder layers), fp32 random weights."""
    import torch
    import transformers

    shape = {**DEFAULT_SHAPE, "num_hidden_layers": layers}
    if vocab:
        shape["vocab_size"] = vocab
    config = transformers.Qwen2Config(**shape, hidden_act="silu")
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = transformers.Qwen2ForCausalLM(config)
    model = model.to_empty(device="cpu").float()
    model.model.rotary_emb = type(model.model.rotary_emb)(config)  # its buffers were left on "meta"
    cache = Path(tempfile.gettempdir()) / f"lorastudio-cpu-speed-{layers}l-{shape['vocab_size']}v-s{seed}.safetensors"
    from safetensors.torch import load_file, save_file

    if cache.exists():
        model.load_state_dict(load_file(cache), strict=False)
    else:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(torch.ones(p.shape) if "norm" in name else torch.randn(p.shape, generator=gen) * 0.02)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(cache) + f".{os.getpid()}")
        os.replace(str(cache) + f".{os.getpid()}", cache)
    return model


def real_model(model_dir: str, layers: int = 0):
    """The model at `model_dir` ("default": the cached default model), fp32, its first `layers` layers
    (0: all)."""
    import torch
    import transformers

    if model_dir == "default":
        model_dir = str(_tokenizer_dir() or "")
    if not model_dir or not Path(model_dir, "config.json").exists():
        raise SystemExit("real weights needed: --model DIR (or --model default with the default model cached)")
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                              attn_implementation="sdpa")
    if layers and layers < model.config.num_hidden_layers:
        model.model.layers = model.model.layers[:layers]
        model.config.num_hidden_layers = layers
    return model


def in_dtype(model, dtype: str):
    """The base model in `--dtype`: "bf16" is the trainer's path on bf16 CPUs (bf16 base weights; PEFT keeps the
    LoRA masters fp32), "fp32" leaves it as built."""
    import torch

    return model.to(torch.bfloat16) if dtype == "bf16" else model


def lora(model, targets=("gate_proj", "up_proj", "down_proj"), r: int = 16, alpha: int = 32, b_std: float = 0.0):
    """PEFT LoRA (the default r16 α32 on the MLP linears); `b_std` > 0 makes B non-zero (gradients of A)."""
    import torch
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(targets),
                                             task_type="CAUSAL_LM"))
    if b_std:
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * b_std)
    model.train()
    return model


def _tokenizer_dir() -> Path | None:
    home = Path(os.environ.get("LORASTUDIO_HOME", Path.home() / ".cache/lorastudio"))
    d = home / "models/default"
    return d if (d / "tokenizer.json").exists() else None


@functools.lru_cache(maxsize=1)
def _tokenizer(tok_dir: str):
    """The default model's tokenizer, loaded once for every row set (`ab` builds one per row lever)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tok_dir)


def real_examples(path: str | None = None, key_weight: int = 1, question_weight: float = 0.0):
    """The tokenized examples of yunzhan_train.jsonl with the default model's chat template, or None;
    `key_weight`/`question_weight` as the trainer's `key_token_weight`/`question_loss_weight`."""
    tok_dir = _tokenizer_dir()
    data = Path(path) if path else next((p for p in DATA_CANDIDATES if p.exists()), None)
    if tok_dir is None or data is None:
        return None
    from lorastudio.data import validate
    from lorastudio.train.tokenize import KeyTokens, encode_conversation

    tok = _tokenizer(str(tok_dir))
    keys = KeyTokens(tok, key_weight) if key_weight > 1 else None
    return [encode_conversation(getattr(c, "messages", c), tok, key_tokens=keys, question_weight=question_weight)
            for c in validate(str(data)).conversations]


def synthetic_examples(count: int = 150, vocab: int = 151936, seed: int = 0, prefix: int = 24):
    """Rows with the statistics of the default data: a shared `prefix`-token template head, lognormal
    lengths (median ~75), the answer (targets) ~49 % of the tokens."""
    import numpy as np

    from lorastudio.train.tokenize import Example

    rng = np.random.default_rng(seed)
    head = rng.integers(0, vocab, prefix).tolist()
    out = []
    for _ in range(count):
        n = int(np.clip(rng.lognormal(np.log(75), 0.25), prefix + 12, 200))
        answer = int(n * rng.uniform(0.4, 0.58))
        ids = head + rng.integers(0, vocab, n - prefix).tolist()
        labels = [-100] * (n - answer) + ids[n - answer:]
        out.append(Example(input_ids=ids, labels=labels))
    return out


def packed_rows(examples, tokens: int, count: int, seed: int = 0) -> list[dict]:
    """`count` packed rows (the trainer's greedy packing of a shuffled order, `collate_packed`)."""
    import random

    from lorastudio.train.tokenize import collate_packed, pack

    rng = random.Random(seed)
    rows: list[dict] = []
    while len(rows) < count:
        order = list(range(len(examples)))
        rng.shuffle(order)
        for group in pack([e.num_tokens for e in examples], order, tokens):
            if sum(examples[i].num_tokens for i in group) >= tokens * 0.8:  # the full packs of an epoch
                rows.append(collate_packed([examples[i] for i in group]))
    return rows[:count]


ROW_LEVERS = {"kw2": {"key_weight": 2}, "qw": {"key_weight": 2, "question_weight": 0.3}}
"""Levers that change the rows, not the model: the same packed rows (same tokens, same packing) with the
product's key-token weights (×2), and with those plus the questions' tokens as targets at 0.3."""


def bench_rows(tokens: int, count: int, seed: int = 0, synthetic: bool = False, **weights):
    examples = None if synthetic else real_examples(**weights)
    if weights and examples is None:
        raise SystemExit("row levers (kw2, qw) need the real rows: the default model's tokenizer and the demo file")
    source = "yunzhan_train.jsonl, default tokenizer" if examples else "synthetic (24-token shared head)"
    examples = examples or synthetic_examples(seed=seed)
    return packed_rows(examples, tokens, count, seed), source


# ------------------------------------------------------------------------------------------------
# One training step, as the trainer runs it
# ------------------------------------------------------------------------------------------------
def train_step(model, opt, params, batch, loss_fn=None):
    import torch

    from lorastudio.train import cpu

    loss_sum, n = (loss_fn or cpu.packed_loss)(model, batch)
    (loss_sum / n).backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss_sum.item() / n


# ------------------------------------------------------------------------------------------------
# profile: where the time of a step goes
# ------------------------------------------------------------------------------------------------
CATEGORIES = ["forward: MLP GEMMs (frozen W)", "forward: attention projections (frozen W)", "forward: LoRA",
              "forward: attention (per document)", "forward: norms/SwiGLU/rotary/residual/embedding",
              "LM head + CE (forward, gradient included)", "backward: MLP input-gradient GEMMs",
              "backward: attention-projection input-gradient GEMMs", "backward: LoRA (A/B gradients, low-rank dX)",
              "backward: attention", "backward: norms/SwiGLU/rotary/residual", "optimizer (clip + AdamW + zero_grad)",
              "other ops"]


def _classify(ev, parents) -> str:
    name = ev.name
    chain = [p.name for p in parents]
    shapes = ev.input_shapes or []
    dims = {d for s in shapes for d in (s or [])}
    r16 = 16 in dims
    backward = "cs:bwd" in chain
    where = next((c for c in chain if c.startswith("cs:")), "")
    if where == "cs:optimizer":
        return "optimizer (clip + AdamW + zero_grad)"
    if where == "cs:head":
        return "LM head + CE (forward, gradient included)"
    gemm = name in ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::matmul", "aten::linear",
                    "quantized::linear_dynamic")
    if backward:
        node = next((c for c in chain if c.startswith("autograd::engine::evaluate_function")), "")
        if "LoraLinearFn" in node or "Int8Lora" in node:
            if gemm and not r16:
                return "backward: MLP input-gradient GEMMs"
            return "backward: LoRA (A/B gradients, low-rank dX)"
        if "Int8Linear" in node or ((("AddmmBackward" in node) or ("MmBackward" in node)) and gemm
                                    and 896 in dims and 64 not in dims):
            return "backward: attention-projection input-gradient GEMMs"
        if any(k in node for k in ("Softmax", "Bmm", "MaskedFill", "UnsafeView", "Expand", "Attention")):
            return "backward: attention"
        if any(k in node for k in ("Matmul", "MmBackward", "AddmmBackward")) and 64 in dims:
            return "backward: attention"
        return "backward: norms/SwiGLU/rotary/residual"
    if where == "cs:attn_core":
        return "forward: attention (per document)"
    if where == "cs:mlp" and gemm:
        return "forward: LoRA" if r16 else "forward: MLP GEMMs (frozen W)"
    if where == "cs:attn" and gemm:
        return "forward: attention projections (frozen W)"
    return "forward: norms/SwiGLU/rotary/residual/embedding" if where in ("cs:mlp", "cs:attn", "cs:body") \
        else "other ops"


def _wrap(module, label):
    import torch

    fwd = module.forward

    def forward(*a, **k):
        with torch.profiler.record_function(label):
            return fwd(*a, **k)

    module.forward = forward


def profile_cmd(a) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from lorastudio.train import cpu, kernels

    torch.set_num_threads(a.threads)
    rows, source = bench_rows(a.tokens, a.steps + 1, synthetic=a.synthetic)
    model = lora(in_dtype(random_model(a.layers), a.dtype))
    cpu.enable(model)
    if a.lever:
        apply_lever(model, a.lever)
        if "prefix" in _parts(a.lever):
            from lorastudio.train import cpu_prefix

            cpu_prefix.enable(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4)
    base = model.get_base_model()
    for layer in base.model.layers:
        _wrap(layer.self_attn, "cs:attn")
        _wrap(layer.mlp, "cs:mlp")
    attn_name = base.config._attn_implementation
    fn = kernels  # the attention function registered for the fast path, wrapped once
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    inner = ALL_ATTENTION_FUNCTIONS[attn_name]

    def timed_attention(*args, **kw):
        with torch.profiler.record_function("cs:attn_core"):
            return inner(*args, **kw)

    AttentionInterface.register(attn_name, timed_attention)
    head_fn = fn.chunked_linear_cross_entropy

    def timed_head(*args, **kw):
        with torch.profiler.record_function("cs:head"):
            return head_fn(*args, **kw)

    fn.chunked_linear_cross_entropy = timed_head
    step_fn = loss_fn_for(a.lever)
    train_step(model, opt, params, rows[0], step_fn)  # warm-up (one-off kernel setup)
    walls = []
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for batch in rows[1:]:
            t0 = time.perf_counter()
            with torch.profiler.record_function("cs:body"):
                loss_sum, n = (step_fn or cpu.packed_loss)(model, batch)
            with torch.profiler.record_function("cs:bwd"):
                (loss_sum / n).backward()
            with torch.profiler.record_function("cs:optimizer"):
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
            walls.append(time.perf_counter() - t0)
    totals: dict[str, float] = dict.fromkeys(CATEGORIES, 0.0)
    events = prof.events()
    for ev in events:
        parents, p = [], ev.cpu_parent
        while p is not None:
            parents.append(p)
            p = p.cpu_parent
        if ev.name.startswith(("cs:", "autograd::engine", "## ")):
            continue
        totals[_classify(ev, parents)] += ev.self_cpu_time_total / 1e6
    wall = sum(walls)
    op_total = sum(totals.values())
    tokens = sum(int(b["input_ids"].shape[-1]) for b in rows[1:])
    print(f"# {cpu_class()}; torch {torch.__version__}; {a.threads} threads; rows: {source}")
    print(f"# {a.steps} steps of {a.tokens} tokens ({tokens} tokens), {a.dtype} base weights, wall {wall:.1f} s = "
          f"{tokens / wall:.1f} tok/s (under the profiler), lever: {a.lever or 'none (baseline fast path)'}")
    print(f"{'where':58s} {'s':>7s} {'share':>6s}")
    for k in CATEGORIES:
        print(f"{k:58s} {totals[k]:7.2f} {totals[k] / wall:6.1%}")
    print(f"{'Python / framework overhead (wall − op self time)':58s} {wall - op_total:7.2f} "
          f"{(wall - op_total) / wall:6.1%}")
    if a.table:
        print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=a.table))


# ------------------------------------------------------------------------------------------------
# Levers (filled in as they are built)
# ------------------------------------------------------------------------------------------------
LEVERS = ("base", "int8", "int8bwd", "int8mlp", "int8all", "int8head", "int8headf", "prefix", "freshce", "topN",
          *ROW_LEVERS)
"""int8: cpu_int8 as shipped (its FORWARD and BACKWARD sets as imported); int8bwd: only the input
gradients; int8mlp: the forward of gate/up_proj and the input gradients of the MLP linears only (the
attention projections' both products fp32); int8all: every forward too; int8head: int8 plus the LM head's two
GEMMs; int8headf: int8 plus the LM head's forward (logits) GEMM only; prefix: the shared template head
once per row (cpu_prefix); freshce: the cross-entropy's (rows × vocab) buffers allocated afresh
in every step (`kernels.CE_WORKSPACE` off; as shipped they are kept); topN (top12, top16, …): LoRA trained in the top N layers only (`lora_layers`),
so autograd stops below them (the lower layers' LoRA weights are frozen here: their forward costs the
same r/hidden as ever, their backward is gone); kw2, qw: the rows' loss weights (`ROW_LEVERS`).
Combined with '+', e.g. int8+prefix+top12."""


def _top(parts: list[str]) -> int | None:
    return next((int(x[3:]) for x in parts if x.startswith("top")), None)


SHIPPED_FORWARD = None  # cpu_int8.FORWARD as imported (set in main)
SHIPPED_BACKWARD = None  # cpu_int8.BACKWARD as imported (set in main)
MLP_LINEARS = frozenset({"gate_proj", "up_proj", "down_proj", "w1", "w2", "w3"})


def _parts(lever: str) -> list[str]:
    parts = [x for x in (lever or "base").split("+") if x]
    for part in parts:
        if part not in LEVERS and not (part.startswith("top") and part[3:].isdigit()):
            raise SystemExit(f"unknown lever {part!r} (known: {', '.join(LEVERS)})")
    return parts


def apply_lever(model, lever: str) -> None:
    set_levers(model, lever)


def remove_lever(model, lever: str) -> None:
    set_levers(model, "base")


def set_levers(model, lever: str, keep_packs: bool = True) -> None:
    """Switch the model to exactly `lever` (int8 patches on or off, the int8 packs kept; the head
    setting; which layers' LoRA weights train). The prefix lever is a loss function (`loss_fn_for`)."""
    import torch

    from lorastudio.train import cpu_int8, kernels

    parts = _parts(lever)
    want = bool({"int8", "int8bwd", "int8mlp", "int8all", "int8head", "int8headf"} & set(parts))
    on = cpu_int8.enabled_on(model) is not None
    if want and not on:
        cpu_int8.enable(model)
    elif not want and on:
        cpu_int8.disable(model, keep_packs=keep_packs)
    top = _top(parts)
    layers = next(m for n, m in model.named_modules() if n.endswith("layers") and isinstance(m, torch.nn.ModuleList))
    for i, layer in enumerate(layers):
        for name, param in layer.named_parameters():
            if "lora_" in name:
                param.requires_grad_(top is None or i >= len(layers) - top)
    head = "int8head" in parts
    cpu_int8.HEAD.update(forward=head or "int8headf" in parts, backward=head)
    cpu_int8.FORWARD = (frozenset() if "int8bwd" in parts else None if "int8all" in parts else SHIPPED_FORWARD)
    cpu_int8.BACKWARD = MLP_LINEARS if "int8mlp" in parts else SHIPPED_BACKWARD
    kernels.CE_WORKSPACE = "freshce" not in parts


def loss_fn_for(lever: str | None):
    from lorastudio.train import cpu_int8, cpu_prefix

    parts = _parts(lever or "base")
    inner = cpu_int8.packed_loss if {"int8head", "int8headf"} & set(parts) else None
    if "prefix" in parts:
        return lambda model, batch: cpu_prefix.packed_loss(model, batch, inner=inner)
    return inner


# ------------------------------------------------------------------------------------------------
# kernels: the GEMMs of one layer, fp32 against int8, interleaved
# ------------------------------------------------------------------------------------------------
KERNEL_SHAPES = {  # name: (n, k) of act (m × k) ↦ act Wᵀ (m × n)
    "gate/up forward": (4864, 896), "down forward": (896, 4864), "q/o forward": (896, 896),
    "k/v forward": (128, 896), "gate/up input grad": (896, 4864), "down input grad": (4864, 896),
    "q/o input grad": (896, 896), "k/v input grad": (896, 128), "LM head forward (1024 rows of 151,936)": (151936, 896)}


def kernels_cmd(a) -> None:
    import torch

    from lorastudio.train import cpu_int8

    torch.set_num_threads(a.threads)
    gen = torch.Generator().manual_seed(0)
    rows = []
    print(f"# {cpu_class()}; torch {torch.__version__}; {a.threads} threads; m = {a.m} rows; "
          f"{a.rounds} rounds A B A B …, median; load {os.getloadavg()[0]:.1f}")
    print(f"{'product':40s} {'fp32 ms':>8s} {'int8 ms':>8s} {'ratio':>6s} {'raw int8':>8s} {'bf16 ms':>8s} "
          f"{'fp32 GF/s':>9s} {'rel.err':>7s}")
    for name, (n, k) in KERNEL_SHAPES.items():
        if a.only and a.only not in name:
            continue
        m = 1024 if "head" in name else a.m
        x = torch.randn(m, k, generator=gen)
        x[:, :4] *= 20  # a few outlier channels, as Qwen's residual stream has
        w = torch.randn(n, k, generator=gen) * 0.02
        packed = cpu_int8._prepack(w)

        def int8(x=x, w=w, packed=packed):
            cpu_int8._LAST = None  # no reuse between calls
            return cpu_int8.qmm(cpu_int8.prepare(x, x), packed, lambda idx: w.index_select(1, idx))

        xb, wb = x.bfloat16(), w.bfloat16()  # bf16 as the trainer runs it where the CPU has bf16 (and where not)
        fns = {"fp32": lambda x=x, w=w: x @ w.t(), "int8": int8,
               "raw": lambda x=x, packed=packed: torch.ops.quantized.linear_dynamic(x, packed, cpu_int8.reduce_range()),
               "bf16": lambda xb=xb, wb=wb: xb @ wb.t()}
        times: dict[str, list[float]] = {key: [] for key in fns}
        for f in fns.values():
            f()
        for r in range(a.rounds):
            for key in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
                t0 = time.perf_counter()
                fns[key]()
                times[key].append(time.perf_counter() - t0)
        med = {key: statistics.median(v) for key, v in times.items()}
        ref = fns["fp32"]()
        err = float((fns["int8"]() - ref).norm() / ref.norm())
        row = {"product": name, "m": m, "n": n, "k": k, "fp32_ms": round(med["fp32"] * 1e3, 2),
               "int8_ms": round(med["int8"] * 1e3, 2), "raw_int8_ms": round(med["raw"] * 1e3, 2),
               "bf16_ms": round(med["bf16"] * 1e3, 2),
               "ratio": round(med["fp32"] / med["int8"], 2), "rel_err": round(err, 4),
               "fp32_gflops": round(2 * m * n * k / med["fp32"] / 1e9, 1)}
        rows.append(row)
        print(f"{name:40s} {row['fp32_ms']:8.1f} {row['int8_ms']:8.1f} {row['ratio']:6.2f} {row['raw_int8_ms']:8.1f} "
              f"{row['bf16_ms']:8.1f} {row['fp32_gflops']:9.1f} {row['rel_err']:7.4f}", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps({"cpu": cpu_class(), "torch": torch.__version__, "rows": rows}, indent=1))


# ------------------------------------------------------------------------------------------------
# floor: how fast a step could be if it were its frozen GEMMs alone
# ------------------------------------------------------------------------------------------------
def _default_shape() -> dict[str, int]:
    """The default model's dimensions (its cached config when here, else Qwen2.5-0.5B's)."""
    shape = {"hidden": 896, "intermediate": 4864, "kv": 128, "layers": 24, "vocab": 151936}
    tok_dir = _tokenizer_dir()
    if tok_dir is not None and (tok_dir / "config.json").is_file():
        c = json.loads((tok_dir / "config.json").read_text())
        heads = c["num_attention_heads"]
        shape = {"hidden": c["hidden_size"], "intermediate": c["intermediate_size"],
                 "kv": c["num_key_value_heads"] * c.get("head_dim", c["hidden_size"] // heads),
                 "layers": c["num_hidden_layers"], "vocab": c["vocab_size"]}
    return shape


def floor_products(m: int, t: int, shape: dict[str, int]) -> list[tuple[str, int, int, int, int]]:
    """The frozen-weight GEMMs of one CPU training step under `all-mlp` LoRA as (what, count, m, n, k): act (m × k)
    times a frozen (n × k) weight transposed. `m` computed tokens (after the shared template head), `t` target rows
    of the LM head. Forward: every decoder linear; backward: the input gradient of every decoder linear except in
    layer 0, where only down_proj's is needed (its gate/up LoRA take their gradient from it; nothing below them
    trains); the LM head's logits and hidden-state gradient for the target rows. LoRA, attention, norms and the
    optimizer are left out: the floor is what the step cannot go below on this arithmetic."""
    h, i, kv, n_layers, v = shape["hidden"], shape["intermediate"], shape["kv"], shape["layers"], shape["vocab"]
    forward = [("q/o forward", 2, m, h, h), ("k/v forward", 2, m, kv, h), ("gate/up forward", 2, m, i, h),
               ("down forward", 1, m, h, i)]
    grads = [("q/o input grad", 2, m, h, h), ("k/v input grad", 2, m, h, kv), ("gate/up input grad", 2, m, h, i)]
    down_grad = ("down input grad", 1, m, i, h)
    out = [(w, c * n_layers, mm, n, k) for w, c, mm, n, k in forward]
    out += [(w, c * (n_layers - 1), mm, n, k) for w, c, mm, n, k in grads]
    out += [(down_grad[0], n_layers, m, i, h), ("LM head logits", 1, t, v, h), ("LM head hidden gradient", 1, t, h, v)]
    return out


def floor_cmd(a) -> None:
    """Time the frozen GEMMs of real packed steps of the demo file in this CPU class's precision and scale them
    to a whole schedule: the training stage's lower bound on this CPU, beside the measured rate."""
    import torch

    from lorastudio.train import cpu_int8, cpu_prefix

    torch.set_num_threads(a.threads)
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    int8 = a.dtype == "fp32" and a.int8
    shape = _default_shape()
    rows, source = bench_rows(a.tokens, a.rows, key_weight=2, question_weight=0.3)
    gen = torch.Generator().manual_seed(0)
    weights: dict[tuple[int, int], object] = {}
    packed: dict[tuple[int, int], object] = {}
    int8_products = {"gate/up forward", "q/o input grad", "k/v input grad", "gate/up input grad", "down input grad"}

    def product(what: str, m: int, n: int, k: int):
        if (n, k) not in weights:
            weights[(n, k)] = (torch.randn(n, k, generator=gen) * 0.02).to(dtype)
        w = weights[(n, k)]
        x = torch.randn(m, k, generator=gen).to(dtype)
        if int8 and what in int8_products:  # the product's int8 path (cpu_int8), as the fp32 classes train
            if (n, k) not in packed:
                packed[(n, k)] = cpu_int8._prepack(w)

            def run(x=x, w=w, pk=packed[(n, k)]):
                cpu_int8._LAST = None
                return cpu_int8.qmm(cpu_int8.prepare(x, x), pk, lambda idx: w.index_select(1, idx))
            return run
        return lambda x=x, w=w: x @ w.t()

    per_row = []
    for row in rows:
        shared = cpu_prefix.shared_batch(row)
        m = int(shared["input_ids"].numel()) if shared is not None else int(row["input_ids"].numel())
        t = int((row["labels"] != -100).sum())
        tokens = int(row["input_ids"].numel())
        total, flops, parts = 0.0, 0.0, {}
        for what, count, mm, n, k in floor_products(m, t, shape):
            f = product(what, mm, n, k)
            f()
            times = []
            for _ in range(a.rounds):
                t0 = time.perf_counter()
                f()
                times.append(time.perf_counter() - t0)
            s = statistics.median(times) * count
            parts[what] = parts.get(what, 0.0) + s
            total += s
            flops += 2.0 * mm * n * k * count
        per_row.append({"tokens": tokens, "computed": m, "targets": t, "floor_s": round(total, 3),
                        "gflops": round(flops / 1e9, 1), "rate_gflops": round(flops / total / 1e9, 1),
                        "parts_s": {w: round(v, 3) for w, v in parts.items()}})
        print(f"row of {tokens} tokens ({m} computed, {t} targets): GEMMs {flops / 1e9:.0f} GFLOP in {total:.2f} s "
              f"= {flops / total / 1e9:.0f} GFLOP/s → at most {tokens / total:.0f} tok/s", flush=True)
    tokens = sum(r["tokens"] for r in per_row)
    floor_s = sum(r["floor_s"] for r in per_row)
    ceiling = tokens / floor_s
    train_floor = a.schedule_tokens / ceiling
    print(f"# {cpu_class()}; torch {torch.__version__}; {a.threads} threads; {a.dtype}{' + int8' if int8 else ''}; "
          f"rows: {source}; load {os.getloadavg()[0]:.1f}")
    print(f"frozen GEMMs alone: at most {ceiling:.0f} tok/s; {a.schedule_tokens:,} trained tokens (the demo file's "
          f"default schedule) take at least {train_floor / 60:.1f} min of training on this CPU")
    if a.measured:
        print(f"measured whole steps: {a.measured:.0f} tok/s = {a.measured / ceiling:.0%} of the floor's rate; "
              f"the training stage at that rate: {a.schedule_tokens / a.measured / 60:.1f} min")
    if a.out:
        Path(a.out).write_text(json.dumps({"cpu": cpu_class(), "torch": torch.__version__, "threads": a.threads,
                                           "dtype": a.dtype, "int8": int8, "shape": shape, "rows": per_row,
                                           "ceiling_tok_s": round(ceiling, 1), "schedule_tokens": a.schedule_tokens,
                                           "training_floor_min": round(train_floor / 60, 2),
                                           "measured_tok_s": a.measured}, indent=1))


# ------------------------------------------------------------------------------------------------
# ab: every lever on the same rows from the same weights, interleaved step by step
# ------------------------------------------------------------------------------------------------
def _state(model, opt):
    return ([p.detach().clone() for n, p in model.named_parameters() if "lora_" in n], copy.deepcopy(opt.state_dict()))


def _restore(model, opt, state):
    import torch

    params, opt_state = state
    with torch.no_grad():
        for p, saved in zip([p for n, p in model.named_parameters() if "lora_" in n], params, strict=True):
            p.copy_(saved)
    opt.load_state_dict(opt_state)


def ab_cmd(a) -> None:
    """One model, one optimizer; at each step every lever runs the same row from the same LoRA weights
    and optimizer state (restored before each), in an order that rotates step by step; the baseline's
    update is the one kept. Timed: the whole step (forward, backward, clip, AdamW)."""
    import torch

    from lorastudio.train import cpu, cpu_prefix

    torch.set_num_threads(a.threads)
    levers = a.levers.split(",")
    if levers[0] != "base":
        levers = ["base", *[x for x in levers if x != "base"]]
    rows, source = bench_rows(a.tokens, a.steps + 1, seed=a.seed, synthetic=a.synthetic)
    variants = {x: next((v for v in _parts(x) if v in ROW_LEVERS), None) for x in levers}
    row_sets = {v: bench_rows(a.tokens, a.steps + 1, seed=a.seed, **ROW_LEVERS[v])[0]
                for v in set(variants.values()) if v}
    model = lora(in_dtype(real_model(a.model, a.layers) if a.model else random_model(a.layers), a.dtype))
    cpu.enable(model)
    if any("prefix" in x for x in levers):
        cpu_prefix.enable(model)  # rows without the prefix loss fall back to the per-document attention
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr)
    results = {x: {"wall_s": [], "cpu_s": [], "losses": []} for x in levers}
    tokens = [int(b["input_ids"].shape[-1]) for b in rows]
    print(f"# {cpu_class()}; torch {torch.__version__}; {a.threads} threads; {a.layers} layers; {a.dtype}; rows: {source}; "
          f"{a.steps} timed steps of ≤ {a.tokens} tokens after 1 warm-up; load {os.getloadavg()[0]:.1f}", flush=True)
    for step, batch in enumerate(rows):
        state = _state(model, opt)
        order = levers[step % len(levers):] + levers[:step % len(levers)]
        kept = None
        for lever in order:
            _restore(model, opt, state)
            set_levers(model, lever)
            fn = loss_fn_for(lever)
            t0, c0 = time.perf_counter(), time.process_time()
            loss = train_step(model, opt, params, row_sets[variants[lever]][step] if variants[lever] else batch, fn)
            wall, cpu_s = time.perf_counter() - t0, time.process_time() - c0
            if step > 0:
                results[lever]["wall_s"].append(wall)
                results[lever]["cpu_s"].append(cpu_s)
            results[lever]["losses"].append(round(loss, 6))
            if lever == "base":
                kept = _state(model, opt)
            print(json.dumps({"step": step, "lever": lever, "tokens": tokens[step], "wall_s": round(wall, 2),
                              "cpu_s": round(cpu_s, 2), "loss": round(loss, 6), "load": round(os.getloadavg()[0], 1)}),
                  flush=True)
        _restore(model, opt, kept)
    summary = {}
    for lever, r in results.items():
        toks = tokens[1:]
        walls = [t / w for t, w in zip(toks, r["wall_s"], strict=True)]
        cpus = [t / c for t, c in zip(toks, r["cpu_s"], strict=True)]
        summary[lever] = {"wall_tok_s_median": round(statistics.median(walls), 2),
                          "cpu_tok_s_median": round(statistics.median(cpus), 2)}
    base = summary["base"]
    for lever, v in summary.items():
        v["wall_ratio"] = round(statistics.median(
            [b / x for b, x in zip(results["base"]["wall_s"], results[lever]["wall_s"], strict=True)]), 3)
        v["cpu_ratio"] = round(v["cpu_tok_s_median"] / base["cpu_tok_s_median"], 3)
        la, lb = results["base"]["losses"], results[lever]["losses"]
        v["max_loss_rel_diff"] = round(max(abs(y - x) / x for x, y in zip(la, lb, strict=True)), 5)
        v["mean_loss_rel_diff"] = round(statistics.mean(abs(y - x) / x for x, y in zip(la, lb, strict=True)), 5)
    report = {"cpu": cpu_class(), "torch": torch.__version__, "threads": a.threads, "layers": a.layers, "dtype": a.dtype,
              "weights": a.model or "random", "rows": source, "load_end": round(os.getloadavg()[0], 2), "tokens_per_step": tokens, "summary": summary,
              "losses": {k: v["losses"] for k, v in results.items()},
              "wall_s": {k: [round(x, 2) for x in v["wall_s"]] for k, v in results.items()}}
    print(json.dumps(summary, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1))


# ------------------------------------------------------------------------------------------------
# parity: the loss curve and the LoRA gradients of a lever against the fp32 fast path, real weights
# ------------------------------------------------------------------------------------------------
def _lora_grads(model):
    import torch

    return torch.cat([p.grad.detach().flatten() for n, p in sorted(model.named_parameters())
                      if p.requires_grad and p.grad is not None])


def _cos(a, b) -> float:
    import torch

    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


def _schedule(opt, steps: int, warmup: int):
    import torch

    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: (i + 1) / warmup if i < warmup else max(0.0, (steps - i) / max(1, steps - warmup)))


def parity_cmd(a) -> None:
    """Two runs from the same LoRA init on the same rows, stepped alternately (reference step, lever
    step): the fp32 fast path and the lever. At the `--probe` steps the lever's LoRA gradient is also
    computed at the reference's weights (same batch) for the cosine."""
    import torch
    import transformers

    from lorastudio.train import cpu

    torch.set_num_threads(a.threads)
    model_dir = a.model or str(_tokenizer_dir() or "")
    if not model_dir or not Path(model_dir, "config.json").exists():
        raise SystemExit("parity needs real weights: --model DIR (or the default model cached)")
    rows, source = bench_rows(a.tokens, a.steps, seed=a.seed)
    base = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                             attn_implementation="sdpa")
    if a.layers:
        base.model.layers = base.model.layers[:a.layers]
        base.config.num_hidden_layers = a.layers
    torch.manual_seed(a.seed)
    ref = lora(base)
    lev = copy.deepcopy(ref)
    cpu.enable(ref)
    cpu.enable(lev)
    apply_lever(lev, a.lever)
    lev_loss = loss_fn_for(a.lever)
    runs = {}
    for tag, m in (("fp32", ref), (a.lever, lev)):
        params = [p for p in m.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
        runs[tag] = {"model": m, "params": params, "opt": opt, "sched": _schedule(opt, a.steps, max(1, a.steps // 20)),
                     "losses": [], "secs": [], "loss_fn": lev_loss if m is lev else None}
    probes = {int(x) for x in a.probe.split(",") if x}
    cosines, probe_losses = {}, {}
    tokens = [int(b["input_ids"].shape[-1]) for b in rows]
    for step, batch in enumerate(rows):
        if step in probes:  # the lever's gradient at the reference's weights
            m = ref
            m.zero_grad(set_to_none=True)
            loss_sum, n = cpu.packed_loss(m, batch)
            (loss_sum / n).backward()
            g_ref, l_ref = _lora_grads(m), loss_sum.item() / n
            m.zero_grad(set_to_none=True)
            apply_lever(m, a.lever)
            loss_sum, n = (lev_loss or cpu.packed_loss)(m, batch)
            (loss_sum / n).backward()
            g_lev, l_lev = _lora_grads(m), loss_sum.item() / n
            remove_lever(m, a.lever)
            m.zero_grad(set_to_none=True)
            cosines[step] = round(_cos(g_ref, g_lev), 6)
            probe_losses[step] = (round(l_ref, 6), round(l_lev, 6))
            print(json.dumps({"probe": step, "cos": cosines[step], "loss_ref": l_ref, "loss_lever": l_lev,
                              "grad_norm_ratio": float(g_lev.norm() / g_ref.norm())}), flush=True)
        order = ("fp32", a.lever) if step % 2 == 0 else (a.lever, "fp32")
        for tag in order:
            r = runs[tag]
            set_levers(r["model"], a.lever if tag != "fp32" else "base")  # the int8 head switch is global
            t0 = time.perf_counter()
            r["losses"].append(round(train_step(r["model"], r["opt"], r["params"], batch, r["loss_fn"]), 6))
            r["sched"].step()
            r["secs"].append(time.perf_counter() - t0)
        print(json.dumps({"step": step, "tokens": tokens[step], **{t: r["losses"][-1] for t, r in runs.items()},
                          **{t + "_s": round(r["secs"][-1], 2) for t, r in runs.items()}}), flush=True)
    la, lb = runs["fp32"]["losses"], runs[a.lever]["losses"]
    tail = max(1, a.steps // 6)
    mean_a, mean_b = statistics.mean(la[-tail:]), statistics.mean(lb[-tail:])
    timed = slice(1, None)
    speed = {t: sum(tokens[timed]) / sum(r["secs"][timed]) for t, r in runs.items()}
    report = {"cpu": cpu_class(), "torch": torch.__version__, "threads": a.threads, "model": model_dir,
              "rows": source, "tokens_per_step": a.tokens, "steps": a.steps, "lr": a.lr, "lever": a.lever,
              "loss_fp32": la, "loss_lever": lb,
              "final_loss_rel_diff": round((lb[-1] - la[-1]) / la[-1], 5),
              f"last_{tail}_mean_rel_diff": round((mean_b - mean_a) / mean_a, 5),
              "max_step_rel_diff": round(max(abs(x - y) / x for x, y in zip(la, lb, strict=True)), 5),
              "grad_cosine_at_ref_weights": cosines, "probe_losses": probe_losses,
              "tok_s": {t: round(v, 2) for t, v in speed.items()},
              "lever_over_fp32": round(speed[a.lever] / speed["fp32"], 3)}
    print(json.dumps(report))
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1))


# ------------------------------------------------------------------------------------------------
# ce: the LM head + cross-entropy with and without key-token row weights (key_token_weight)
# ------------------------------------------------------------------------------------------------
def ce_cmd(a) -> None:
    """`kernels.chunked_linear_cross_entropy` forward + backward on the default model's head shape
    (rows × 896 against 151,936 × 896, fp32), every target once vs with row weights (a quarter of the rows
    at 2, as key tokens), interleaved; median ms of `--rounds`."""
    import torch

    from lorastudio.train import kernels

    torch.set_num_threads(a.threads)
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(151936, 896, generator=gen) * 0.02
    hidden = torch.randn(a.rows, 896, generator=gen)
    targets = torch.randint(0, 151936, (a.rows,), generator=gen)
    row_weights = torch.where(torch.rand(a.rows, generator=gen) < 0.25, 2.0, 1.0)
    times: dict[str, list[float]] = {"plain": [], "weighted": []}
    for round_ in range(a.rounds + 1):
        for name in (("plain", "weighted") if round_ % 2 else ("weighted", "plain")):
            h = hidden.clone().requires_grad_(True)
            t0 = time.perf_counter()
            loss = kernels.chunked_linear_cross_entropy(h, weight, targets, chunk=1024,
                                                        row_weights=row_weights if name == "weighted" else None)
            loss.backward()
            if round_:  # the first round warms up
                times[name].append(1000 * (time.perf_counter() - t0))
    result = {"cpu": cpu_class(), "threads": a.threads, "rows": a.rows,
              **{k: round(statistics.median(v), 1) for k, v in times.items()}}
    result["ratio"] = round(result["weighted"] / result["plain"], 3)
    print(json.dumps(result))


EMULATE_AVX2 = REPO / "bench" / "emulate_avx2.sh"
"""Caps torch, oneDNN, MKL and fbgemm at AVX2 and gives the product this CPU's flags without AVX-512, AMX and VNNI."""


def emulate_avx2() -> None:
    """Re-exec this process through `bench/emulate_avx2.sh` (the libraries read its settings when loaded); in the
    re-run the int8 path takes the 7-bit activations of a CPU without VNNI (`cpu_int8.reduce_range`, by the flags)."""
    from lorastudio.hardware import FLAGS_ENV

    if os.environ.get("ATEN_CPU_CAPABILITY") != "avx2" or not os.environ.get(FLAGS_ENV):
        os.execvp("bash", ["bash", str(EMULATE_AVX2), sys.executable, *sys.argv])
    from lorastudio.train import cpu_int8

    print(f"# AVX2 emulated ({EMULATE_AVX2.name}), {'7' if cpu_int8.reduce_range() else '8'}-bit int8 activations",
          flush=True)


def _dtype_arg(p) -> None:
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="base weights' dtype: bf16 is the trainer's path on AVX-512-bf16 and AMX CPUs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("profile")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--tokens", type=int, default=640)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lever", default="")
    p.add_argument("--synthetic", action="store_true")
    p.add_argument("--table", type=int, default=0, help="also print the profiler's top N ops")
    _dtype_arg(p)
    p = sub.add_parser("kernels")
    p.add_argument("--m", type=int, default=600, help="activation rows (tokens of a packed row)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default="")
    p.add_argument("--out")
    p = sub.add_parser("floor")
    p.add_argument("--rows", type=int, default=3, help="real packed rows of the demo file to time")
    p.add_argument("--tokens", type=int, default=704, help="tokens a packed row (the trainer's batch_tokens)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-int8", dest="int8", action="store_false", help="fp32 without the int8 frozen-base GEMMs")
    p.add_argument("--schedule-tokens", type=int, default=149_000,
                   help="tokens the schedule trains (the demo file's default: 4 passes, about 149,000)")
    p.add_argument("--measured", type=float, default=None, help="the whole run's training tok/s on this CPU, to compare")
    p.add_argument("--out")
    _dtype_arg(p)
    p = sub.add_parser("ab")
    p.add_argument("--levers", default="base,int8,prefix,int8+prefix")
    p.add_argument("--steps", type=int, default=4, help="timed steps (one more runs first, untimed)")
    p.add_argument("--tokens", type=int, default=640)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--synthetic", action="store_true")
    _dtype_arg(p)
    p.add_argument("--model", help="real weights: a model directory, or 'default' (the cached default model); "
                                   "unset: random weights of the default shape")
    p.add_argument("--out")
    p = sub.add_parser("ce")
    p.add_argument("--rows", type=int, default=340, help="target rows (≈ a 704-token step of the demo data)")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p = sub.add_parser("parity")
    p.add_argument("--model", help="a model directory with real weights (default: the cached default model)")
    p.add_argument("--lever", default="int8")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--tokens", type=int, default=640)
    p.add_argument("--layers", type=int, default=0, help="keep only the first N layers (0: all)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--probe", default="0,10,20,29")
    p.add_argument("--out")
    for p in sub.choices.values():
        p.add_argument("--emulate-avx2", action="store_true",
                       help="approximate a CPU with AVX2 only (no AVX-512, no VNNI) on a newer x86 CPU: "
                            "re-run through bench/emulate_avx2.sh (7-bit int8 activations)")
    a = parser.parse_args()
    if a.emulate_avx2:
        emulate_avx2()
    global SHIPPED_FORWARD, SHIPPED_BACKWARD
    from lorastudio.train import cpu_int8

    SHIPPED_FORWARD, SHIPPED_BACKWARD = cpu_int8.FORWARD, cpu_int8.BACKWARD
    {"profile": profile_cmd, "parity": parity_cmd, "ab": ab_cmd, "kernels": kernels_cmd, "ce": ce_cmd,
     "floor": floor_cmd}[a.mode](a)


if __name__ == "__main__":
    main()
