"""GPU throughput: the seed recipe vs TRL's SFTTrainer vs lorastudio's CUDA fast path.

Same synthetic data for all (Q&A-like: lognormal lengths around 110 tokens, random token ids, the
first 30–60 % of each example is prompt, loss on the answer only), random-weight Qwen2.5 shapes.

  # on the device, one call (the repo travels there; wheels for TRL in .whl/gpu):
  PYTHONPATH=. python3 bench/gpu_bench.py all --out $OUT
  # every code path on tiny shapes (any CUDA GPU; not yet run on the device):
  PYTHONPATH=. python3 bench/gpu_bench.py all --smoke --out /tmp/bench
  # one job by hand:
  PYTHONPATH=. python3 bench/gpu_bench.py job ls --model 7b --result /tmp/r.json

Variants: `seed` (HF Trainer, pad every example to 256, batch 2, LoRA r8 α16 q/k/v/o, dropout .05),
`trl` (SFTTrainer, bfd packing + padding-free, flex attention, fused LM head, LoRA r16 all-linear),
`ls` (lorastudio.train.gpu's choices among the shared kernels of lorastudio.train.kernels: packed
rows, varlen attention, fused LoRA, compiled norms, chunked CE, memory auto-fit from
lorastudio.train.memory; `--budget-gb 24` emulates a 24 GB card; `--ddp` under torchrun), and microbenchmarks
`attn` (varlen vs flex vs sdpa+dense mask) and `ce` (chunked vs full logits vs liger).
MFU = 4 · N · real tokens/s / 790 TFLOP/s, N = parameters except the embedding lookup (LM head counted).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

DEV = os.environ.get("BENCH_DEVICE", "cuda")  # "cpu" only to try the code paths on a laptop
PEAK_790 = 790e12  # the yardstick (bf16 dense, measured matmul rate of H100/H200 here)
PEAK_H100_SXM = 989e12  # datasheet dense bf16, H100 SXM

MODELS = {
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "tiny": dict(hidden_size=512, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=8,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
}


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def make_docs(n: int, vocab: int, seed: int = 0, max_len: int = 1024) -> list[tuple[np.ndarray, int]]:
    """n examples: (token ids, prompt length). Lengths lognormal, median 100, mean ≈ 113."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(math.log(100), 0.5, n).astype(int), 24, max_len)
    docs = []
    for length in lengths:
        ids = rng.integers(3, vocab, int(length))
        docs.append((ids, int(length * rng.uniform(0.3, 0.6))))
    return docs


def labels_of(ids: np.ndarray, prompt: int) -> np.ndarray:
    lab = ids.copy()
    lab[:prompt] = -100
    return lab


def pack_docs(docs, tokens: int):
    """Greedy packs of exactly `tokens` (a filler example with no targets tops each one up, so every
    step has one shape). Returns [(ids, position_ids, labels, real_tokens)]."""
    packs, cur, used = [], [], 0
    for ids, p in docs:
        if used + len(ids) > tokens:
            packs.append(_finish(cur, tokens))
            cur, used = [], 0
        cur.append((ids, p))
        used += len(ids)
    if cur:
        packs.append(_finish(cur, tokens))
    return packs


def _finish(cur, tokens: int):
    ids = np.concatenate([d for d, _ in cur])
    pos = np.concatenate([np.arange(len(d)) for d, _ in cur])
    lab = np.concatenate([labels_of(d, p) for d, p in cur])
    real = len(ids)
    pad = tokens - real
    if pad > 0:
        ids = np.concatenate([ids, np.zeros(pad, dtype=ids.dtype)])
        pos = np.concatenate([pos, np.arange(pad)])
        lab = np.concatenate([lab, np.full(pad, -100)])
    return ids, pos, lab, real


# ------------------------------------------------------------------------------------------------
# model
# ------------------------------------------------------------------------------------------------
def qwen_config(name: str):
    from transformers import Qwen2Config

    return Qwen2Config(**MODELS[name], max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
                       use_sliding_window=False, hidden_act="silu")


def build_model(name: str, attn: str = "sdpa"):
    import torch
    from transformers import AutoModelForCausalLM

    cfg = qwen_config(name)
    with torch.device(DEV):
        try:
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation=attn)
        except TypeError:
            model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16, attn_implementation=attn)
    return model


def shape_of(name: str):
    from lorastudio.train.memory import ModelShape

    return ModelShape.from_config(qwen_config(name))


def sync() -> None:
    import torch

    if DEV == "cuda":
        torch.cuda.synchronize()


def reset_peak() -> None:
    import torch

    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()


def mem_stats() -> dict:
    import torch

    if DEV != "cuda":
        return {"peak_alloc_gb": 0.0, "peak_reserved_gb": 0.0}
    return {"peak_alloc_gb": torch.cuda.max_memory_allocated() / 1e9,
            "peak_reserved_gb": torch.cuda.max_memory_reserved() / 1e9}


def device_info() -> dict:
    import torch

    if DEV != "cuda":
        return {"name": "cpu", "total_gb": 0, "torch": torch.__version__, "transformers": "", "gpus": 0}
    props = torch.cuda.get_device_properties(0)
    import transformers

    return {"name": torch.cuda.get_device_name(0), "total_gb": props.total_memory / 1e9,
            "sms": props.multi_processor_count, "torch": torch.__version__,
            "transformers": transformers.__version__, "gpus": torch.cuda.device_count()}


def finish(result: dict, name: str, tokens: int, seconds: float) -> dict:
    shape = shape_of(name)
    tps = tokens / seconds
    result.update(tokens=tokens, seconds=seconds, tokens_per_s=tps, n_flops_params=shape.flops_params,
                  n_params=shape.n_params, mfu_790=4 * shape.flops_params * tps / PEAK_790,
                  mfu_989=4 * shape.flops_params * tps / PEAK_H100_SXM)
    result.update(mem_stats())
    return result


# ------------------------------------------------------------------------------------------------
# HF Trainer timing (seed and TRL)
# ------------------------------------------------------------------------------------------------
def timed_trainer(base_cls, warmup: int, token_fn):
    from transformers import TrainerCallback

    class Times(TrainerCallback):
        def __init__(self):
            self.t = []

        def on_step_end(self, args, state, control, **kw):
            sync()
            self.t.append(time.perf_counter())

    class Timed(base_cls):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.times = Times()
            self.add_callback(self.times)
            self.step_tokens = []

        def training_step(self, model, inputs, *a, **k):
            self.step_tokens.append(token_fn(inputs))
            return super().training_step(model, inputs, *a, **k)

        def measured(self):
            t = self.times.t
            toks = [int(x) for x in self.step_tokens]
            return sum(toks[warmup + 1:len(t)]) if len(t) > warmup else 0, t[-1] - t[warmup]

    return Timed


def job_seed(a) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments, default_data_collator

    steps, warmup = a.steps or 30, a.warmup or 5
    cfg = MODELS[a.model]
    docs = make_docs(2 * (steps + warmup + 2), cfg["vocab_size"], seed=1)
    rows = []
    for ids, _p in docs:  # the seed: whole text in the loss, every example padded to 256
        ids = ids[:256]
        n = len(ids)
        rows.append({"input_ids": np.pad(ids, (0, 256 - n)).tolist(),
                     "attention_mask": [1] * n + [0] * (256 - n),
                     "labels": ids.tolist() + [-100] * (256 - n)})
    model = build_model(a.model, "sdpa")
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                             task_type="CAUSAL_LM"))
    cls = timed_trainer(Trainer, warmup, lambda inp: inp["attention_mask"].sum())
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=2, max_steps=steps + warmup,
                                 learning_rate=3e-4, bf16=DEV == "cuda", use_cpu=DEV == "cpu", logging_steps=10**6, save_strategy="no",
                                 report_to=[], dataloader_num_workers=0, remove_unused_columns=False,
                                 disable_tqdm=True, gradient_checkpointing=False)
        reset_peak()
        trainer = cls(model=model, args=args, train_dataset=rows, data_collator=default_data_collator)
        trainer.train()
        tokens, secs = trainer.measured()
    return finish({"variant": "seed", "model": a.model, "pack": "pad 256 × bs 2", "ckpt": False}, a.model,
                  tokens, secs)


def trl_pack(name: str, total_gb: float) -> int:
    """TRL's activations per token (PEFT keeps fp32 copies of each LoRA input, eager RMSNorm/SwiGLU
    keep fp32/bf16 intermediates): the largest pack of 16k/8k/4k/2k that leaves 15 % of the card."""
    s = shape_of(name)
    h, i, kv = s.hidden_size, s.intermediate_size, s.kv_dim
    per_tok = s.num_layers * (2 * (5 * h + 2 * kv + 3 * i) + (24 * h + 4 * i) + 16 * h + 4 * i)
    for t in (16384, 8192, 4096, 2048):
        if s.n_params * 2 + t * per_tok <= 0.85 * total_gb * 1e9:
            return t
    return 1024


def tiny_tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({"<pad>": 0, "<eos>": 1, "<unk>": 2}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def job_trl(a) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    steps, warmup = a.steps or 8, a.warmup or 4
    total = torch.cuda.get_device_properties(0).total_memory / 1e9 if DEV == "cuda" else 80.0
    pack = a.pack or trl_pack(a.model, total)
    cfg = MODELS[a.model]
    n_docs = int((steps + warmup + 3) * pack / 100) + 64
    docs = make_docs(n_docs, cfg["vocab_size"], seed=2)
    # datasets hashes the whole Arrow table for a fingerprint; some dill/pyarrow pairs cannot pickle it
    # (PicklingError on MonthDayNano) — a random fingerprint is all we need here
    import datasets.arrow_dataset
    import datasets.fingerprint

    datasets.arrow_dataset.generate_fingerprint = lambda _ds: datasets.fingerprint.generate_random_fingerprint()
    ds = Dataset.from_dict({"input_ids": [d.tolist() for d, _ in docs],
                            "labels": [labels_of(d, p).tolist() for d, p in docs]})
    attn = a.attn or "flex_attention"
    model = build_model(a.model, attn)

    def real_tokens(inp):
        pos = inp["position_ids"][0]
        return pos  # resolved after training: the padded tail is a run of zeros

    cls = timed_trainer(SFTTrainer, warmup, real_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        sargs = SFTConfig(output_dir=tmp, max_length=pack, packing=True, packing_strategy="bfd",
                          padding_free=True, pad_to_multiple_of=pack if attn == "flex_attention" else None,
                          per_device_train_batch_size=1, gradient_accumulation_steps=1, bf16=DEV == "cuda", use_cpu=DEV == "cpu",
                          learning_rate=1e-4, max_steps=steps + warmup, logging_steps=10**6,
                          save_strategy="no", report_to=[], gradient_checkpointing=False,
                          disable_tqdm=True, dataloader_num_workers=0)
        trainer = cls(model=model, args=sargs, train_dataset=ds, processing_class=tiny_tokenizer(),
                      peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
        reset_peak()
        trainer.train()
        t = trainer.times.t
        counts = []
        for pos in trainer.step_tokens:
            nz = (pos != 0).nonzero()
            counts.append(int(nz.max()) + 1 if nz.numel() else 0)
        tokens = sum(counts[warmup + 1:len(t)])
        secs = t[-1] - t[warmup]
    return finish({"variant": "trl", "model": a.model, "pack": pack, "ckpt": False, "attn": attn,
                   "trl": trl.__version__}, a.model, tokens, secs)


# ------------------------------------------------------------------------------------------------
# lorastudio
# ------------------------------------------------------------------------------------------------
def loss_check(model, name: str, pack_tokens: int, fast_kwargs: dict) -> dict:
    """Unpacked, padded reference (sdpa + attention mask, full logits, fp32 CE) vs the fast path on
    the same 8 examples packed into one row; LoRA B made non-zero so the low-rank path counts."""
    import torch

    from lorastudio.train import gpu

    docs = make_docs(8, MODELS[name]["vocab_size"], seed=7, max_len=256)
    gen = torch.Generator(device=DEV).manual_seed(0)
    lora = [p for n, p in model.named_parameters() if p.requires_grad]
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad and "lora_B" in n:
                p.normal_(0, 0.02, generator=gen)
    longest = max(len(d) for d, _ in docs)
    ids = torch.zeros(len(docs), longest, dtype=torch.long)
    mask = torch.zeros_like(ids)
    lab = torch.full_like(ids, -100)
    for row, (d, p) in enumerate(docs):
        ids[row, :len(d)] = torch.from_numpy(d)
        mask[row, :len(d)] = 1
        lab[row, :len(d)] = torch.from_numpy(labels_of(d, p))
    ids, mask, lab = ids.to(DEV), mask.to(DEV), lab.to(DEV)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    tgt = lab[:, 1:]
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                            ignore_index=-100)
    ref.backward()
    del logits
    ref_grads = torch.cat([p.grad.flatten().float() for p in lora])
    model.zero_grad(set_to_none=True)
    fp = gpu.enable_fast_path(model, **fast_kwargs)
    pid, ppos, plab, _ = pack_docs(docs, max(pack_tokens, sum(len(d) for d, _ in docs)))[0]
    batch = gpu.cuda_batch(torch.from_numpy(pid), torch.from_numpy(ppos), torch.from_numpy(plab), device=DEV)
    loss = gpu.packed_lm_loss(model, batch)
    loss.backward()
    grads = torch.cat([p.grad.flatten().float() for p in lora])
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad and "lora_B" in n:
                p.zero_()
    cos = torch.nn.functional.cosine_similarity(grads, ref_grads, dim=0).item()
    rel = abs(loss.item() - ref.item()) / abs(ref.item())
    return {"ref_loss": ref.item(), "packed_loss": loss.item(), "rel_diff": rel, "grad_cosine": cos,
            "ok": bool(rel < 1e-2 and cos > 0.99), "fast_path": fp.to_dict()}


def job_ls(a) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    from lorastudio.train import distributed, gpu

    rank, world = 0, 1
    if a.ddp:
        rank, world, _ = distributed.init()
    if a.budget_gb:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, a.budget_gb * 1e9 / total))
        free = int(a.budget_gb * 1e9 - 1.0e9)  # what a 24 GB card leaves after the CUDA context
    else:
        free = gpu.free_gpu_bytes() if DEV == "cuda" else 80 * 2**30
    shape = shape_of(a.model)
    plan = gpu.autofit(shape, lora_r=16, pack_tokens=a.pack or 16384, free_bytes=free, max_length=1024,
                       fused_elementwise=not a.no_compile)
    micro, accum, ckpt = plan.micro_batch_tokens, plan.gradient_accumulation, plan.gradient_checkpointing
    if a.force_ckpt:
        ckpt = True
    steps, warmup = a.steps or 6, a.warmup or 2
    cfg = MODELS[a.model]
    need = (steps + warmup) * accum * micro
    docs = make_docs(int(need / 100) + 64, cfg["vocab_size"], seed=10 + rank)
    packs = pack_docs(docs, micro)[: (steps + warmup) * accum]
    model = build_model(a.model, "sdpa")
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    model.train()
    fast_kwargs = dict(compile=not a.no_compile, ce_chunk=plan.ce_chunk_tokens,
                       attention=a.attn or "auto")
    result = {"variant": "ls" + ("-ddp" if a.ddp else "") + (f"-{a.budget_gb:g}GB" if a.budget_gb else "")
              + ("-nocompile" if a.no_compile else ""),
              "model": a.model, "pack": micro, "accum": accum, "ckpt": ckpt, "plan": plan.to_dict(),
              "world": world}
    if a.check and not a.ddp:
        result["loss_check"] = loss_check(model, a.model, micro, fast_kwargs)
        print("loss check:", json.dumps(result["loss_check"]), flush=True)
    else:
        gpu.enable_fast_path(model, **fast_kwargs)
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params = [p for p in model.parameters() if p.requires_grad]
    opt = gpu.fused_adamw(params, lr=1e-4)
    reset_peak()
    tokens, t0 = 0, None
    it = iter(packs)
    losses = []
    t_start = time.perf_counter()
    for step in range(steps + warmup):
        if step == warmup:
            sync()
            if a.ddp:
                torch.distributed.barrier()
            t0 = time.perf_counter()
        for _ in range(accum):
            ids, pos, lab, real = next(it)
            batch = gpu.cuda_batch(torch.from_numpy(ids), torch.from_numpy(pos), torch.from_numpy(lab), device=DEV)
            loss = gpu.packed_lm_loss(model, batch) / accum
            loss.backward()
            if step >= warmup:
                tokens += real
        if a.ddp:
            distributed.allreduce_gradients(params)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        if step == 0:
            sync()
            result["first_step_s"] = time.perf_counter() - t_start  # includes torch.compile
    sync()
    secs = time.perf_counter() - t0
    result["losses"] = [float(x) * accum for x in losses]
    if a.ddp:
        tokens = int(distributed.allreduce_sum(tokens))
    result["fast_path"] = model._lorastudio_fast_path.to_dict()
    finish(result, a.model, tokens, secs)
    if a.ddp:  # MFU per GPU (the 790 TFLOP/s yardstick is one GPU's)
        result["per_gpu_tokens_per_s"] = result["tokens_per_s"] / world
        result["mfu_790"] /= world
        result["mfu_989"] /= world
        distributed.cleanup()
        if rank != 0:
            result["_skip_write"] = True
    return result


# ------------------------------------------------------------------------------------------------
# microbenchmarks
# ------------------------------------------------------------------------------------------------
def bench_ms(fn, reps: int = 10, warm: int = 3) -> float:
    import torch

    for _ in range(warm):
        fn()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    return float(np.median(times))


def job_attn(a) -> dict:
    """Per-document causal attention over one packed row, 7B attention shape: fwd+bwd time, error."""
    import torch
    import torch.nn.functional as F

    from lorastudio.train import kernels

    T = a.pack or 16384
    H, HK, D = (28, 4, 128) if a.model != "tiny" else (8, 2, 64)
    docs = make_docs(T // 50, 1000, seed=3)
    lens, used = [], 0
    for d, _ in docs:
        if used + len(d) > T:
            break
        lens.append(len(d))
        used += len(d)
    if used < T:
        lens.append(T - used)
    cu = torch.tensor(np.concatenate([[0], np.cumsum(lens)]), dtype=torch.int32, device="cuda")
    doc = torch.repeat_interleave(torch.arange(len(lens), device="cuda"), torch.tensor(lens, device="cuda"))
    gen = torch.Generator(device="cuda").manual_seed(0)

    def rnd(*s):
        return torch.randn(*s, device="cuda", dtype=torch.bfloat16, generator=gen)

    q, k, v = rnd(T, H, D), rnd(T, HK, D), rnd(T, HK, D)
    dout = rnd(T, H, D)
    scale = D ** -0.5
    ref = torch.empty(T, H, D, device="cuda", dtype=torch.float32)
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
        qq, kk, vv = (x[s:e].float().transpose(0, 1)[None] for x in (q, k, v))
        ref[s:e] = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, enable_gqa=True,
                                                  scale=scale)[0].transpose(0, 1)
    out = {"tokens": T, "docs": len(lens), "heads": [H, HK, D]}

    def record(name, fwd):
        try:
            qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
            o = fwd(qg, kg, vg)
            err = ((o.float() - ref).norm() / ref.norm()).item()

            def step():
                o = fwd(qg, kg, vg)
                o.backward(dout)

            torch.cuda.reset_peak_memory_stats()
            ms = bench_ms(step)
            out[name] = {"fwd_bwd_ms": ms, "rel_err": err, "peak_gb": torch.cuda.max_memory_allocated() / 1e9}
        except Exception as err:  # report and go on
            out[name] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
        print(name, out[name], flush=True)

    call = kernels._varlen_call()
    record("varlen", lambda q_, k_, v_: call(q_, k_, v_, cu, max(lens), scale))

    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    flex = torch.compile(flex_attention, dynamic=False)

    def doc_causal(b, h, qi, ki):
        return (doc[qi] == doc[ki]) & (qi >= ki)

    bm = create_block_mask(doc_causal, 1, None, T, T, device="cuda")
    def bhtd(x):  # (T, H, D) -> (1, H, T, D), contiguous
        return x.transpose(0, 1)[None].contiguous()

    record("flex", lambda q_, k_, v_: flex(bhtd(q_), bhtd(k_), bhtd(v_), block_mask=bm, enable_gqa=True,
                                           scale=scale)[0].transpose(0, 1))
    dense = (doc[:, None] == doc[None, :]) & torch.ones(T, T, dtype=torch.bool, device="cuda").tril()
    record("sdpa_dense_mask", lambda q_, k_, v_: F.scaled_dot_product_attention(
        bhtd(q_), bhtd(k_), bhtd(v_), attn_mask=dense[None, None], enable_gqa=True, scale=scale)[0].transpose(0, 1))
    return {"variant": "attn", "model": a.model, **out}


def job_ce(a) -> dict:
    """Linear + cross-entropy over the target rows of one pack, 7B head: chunked vs full vs liger."""
    import torch
    import torch.nn.functional as F

    from lorastudio.train import gpu

    rows = a.pack or 8192
    cfg = MODELS[a.model]
    hdim, vocab = cfg["hidden_size"], cfg["vocab_size"]
    gen = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(rows, hdim, device="cuda", dtype=torch.bfloat16, generator=gen)
    w = (torch.randn(vocab, hdim, device="cuda", generator=gen) * 0.02).to(torch.bfloat16)
    t = torch.randint(0, vocab, (rows,), device="cuda", generator=gen)
    chunk = gpu.ce_chunk_tokens(vocab, 2 * 1024**3)
    out = {"rows": rows, "vocab": vocab, "chunk": chunk}
    fns = {
        "full_logits": lambda x: F.cross_entropy((x @ w.t()).float(), t, reduction="sum"),
        "chunked": lambda x: gpu.chunked_linear_cross_entropy(x, w, t, chunk=chunk),
        "liger": lambda x: gpu.liger_linear_cross_entropy(x, w, t),
    }
    ref_loss = ref_grad = None
    for name, fn in fns.items():
        try:
            x = h.clone().requires_grad_()
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            loss = fn(x)
            loss.backward()
            peak = (torch.cuda.max_memory_allocated() - base) / 1e9
            if ref_loss is None:
                ref_loss, ref_grad = loss.item(), x.grad.float().flatten()
            rel = abs(loss.item() - ref_loss) / abs(ref_loss)
            cos = F.cosine_similarity(x.grad.float().flatten(), ref_grad, dim=0).item()

            def step(fn=fn, x=x):
                x.grad = None
                fn(x).backward()

            out[name] = {"fwd_bwd_ms": bench_ms(step, reps=5, warm=1), "extra_peak_gb": peak, "rel_diff": rel,
                         "grad_cosine": cos}
        except Exception as err:
            out[name] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
        print(name, out[name], flush=True)
    return {"variant": "ce", "model": a.model, **out}


JOBS = {"seed": job_seed, "trl": job_trl, "ls": job_ls, "attn": job_attn, "ce": job_ce}


def run_job(a) -> int:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    t = time.perf_counter()
    try:
        result = JOBS[a.job](a)
        code = 0
    except Exception as err:
        import traceback

        traceback.print_exc()
        oom = isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()
        result = {"variant": a.job, "model": a.model, "error": f"{type(err).__name__}: {str(err)[:500]}",
                  "oom": oom}
        code = 1
    result["job_seconds"] = time.perf_counter() - t
    if a.result and not result.pop("_skip_write", False):
        Path(a.result).write_text(json.dumps(result, default=str))
    print("RESULT", json.dumps({k: v for k, v in result.items() if k != "losses"}, default=str), flush=True)
    return code


# ------------------------------------------------------------------------------------------------
# orchestration: lanes of jobs, one lane per GPU, then DDP over all GPUs
# ------------------------------------------------------------------------------------------------
class Runner:
    def __init__(self, out: Path, deadline: float, smoke: bool) -> None:
        self.out, self.deadline, self.smoke = out, deadline, smoke
        self.results: list[dict] = []
        self.lock = threading.Lock()
        self.n = 0

    def run(self, args: list[str], gpus: str, log, est: float, torchrun: int = 0) -> dict | None:
        left = self.deadline - time.time()
        if left < est:
            rec = {"job": " ".join(args), "skipped": f"not started: {left:.0f}s left, needs ~{est:.0f}s"}
            with self.lock:
                self.results.append(rec)
            print("SKIP", rec, flush=True)
            return None
        with self.lock:
            self.n += 1
            path = Path(tempfile.gettempdir()) / f"bench_result_{self.n}.json"
        path.unlink(missing_ok=True)
        me = str(Path(__file__).resolve())
        if torchrun:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}",
                   me, "job", *args, "--result", str(path)]
        else:
            cmd = [sys.executable, me, "job", *args, "--result", str(path)]
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=gpus, PYTHONUNBUFFERED="1")
        env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        t = time.time()
        log.write(f"\n===== {' '.join(args)} on GPU {gpus} =====\n")
        log.flush()
        try:
            proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=max(30, self.deadline - time.time()))
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        res = json.loads(path.read_text()) if path.exists() else {"error": f"no result (rc={rc})"}
        res.update(job=" ".join(args), gpus=gpus, wall_s=time.time() - t)
        with self.lock:
            self.results.append(res)
        brief = {k: res.get(k) for k in ("job", "tokens_per_s", "mfu_790", "peak_reserved_gb", "pack", "error")}
        print("DONE", json.dumps(brief, default=str), flush=True)
        return res

    def run_ls(self, args, gpus, log, est, torchrun=0):
        """lorastudio with an OOM fallback: a pack 30 % smaller, at most twice."""
        res = self.run(args, gpus, log, est, torchrun)
        pack = (res or {}).get("pack") or (res or {}).get("plan", {}).get("micro_batch_tokens")
        tries = 0
        while res and res.get("oom") and tries < 2:
            pack = int(int(pack or 16384) * 0.7) // 512 * 512
            tries += 1
            res = self.run([*args, "--pack", str(pack)], gpus, log, est, torchrun)
        return res


def orchestrate(a) -> int:
    import torch

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    deadline = start + a.budget_s
    n_gpu = torch.cuda.device_count()
    info = device_info()
    print("device:", json.dumps(info), flush=True)
    big, small = ("tiny", "tiny") if a.smoke else ("7b", "1.5b")
    sm = ["--steps", "3", "--warmup", "2"] if a.smoke else []
    r = Runner(out, deadline, a.smoke)
    lane_big = [  # (kind, args, estimated seconds)
        ("ls", ["ls", "--model", big, "--check", *sm], 100),
        ("run", ["seed", "--model", big, *sm], 50),
        ("run", ["trl", "--model", big, *sm], 100),
        ("ls", ["ls", "--model", big, "--budget-gb", "24", *sm] + (["--force-ckpt"] if a.smoke else []), 70),
    ]
    lane_small = [
        ("run", ["attn", "--model", big] + (["--pack", "4096"] if a.smoke else []), 60),
        ("run", ["ce", "--model", big] + (["--pack", "2048"] if a.smoke else []), 30),
        ("ls", ["ls", "--model", small, "--check", *sm], 70),
        ("run", ["seed", "--model", small, *sm], 40),
        ("run", ["trl", "--model", small, *sm], 80),
        ("ls", ["ls", "--model", small, "--no-compile", *sm], 50),
    ]
    if a.smoke:  # the risky code paths only (seed and ce use nothing version-sensitive)
        lane_big = [j for j in lane_big if j[1][0] != "seed"]
        lane_small = [j for j in lane_small if j[1][0] in ("attn", "ce") or "--no-compile" in j[1]]
    if a.only:
        keep = set(a.only.split(","))
        lane_big = [j for j in lane_big if j[1][0] in keep]
        lane_small = [j for j in lane_small if j[1][0] in keep]

    def lane(jobs, gpus, name):
        with open(out / f"log_{name}.txt", "a") as log:
            for kind, args, est in jobs:
                (r.run_ls if kind == "ls" else r.run)(args, gpus, log, est)

    if n_gpu >= 2:
        threads = [threading.Thread(target=lane, args=(lane_big, "0", "gpu0")),
                   threading.Thread(target=lane, args=(lane_small, "1", "gpu1"))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if not a.no_ddp:
            with open(out / "log_ddp.txt", "a") as log:
                r.run_ls(["ls", "--model", big, "--ddp", *sm], ",".join(str(i) for i in range(n_gpu)), log,
                         90, torchrun=n_gpu)
    else:  # one GPU: the 7B comparison first, then 1.5B, then the microbenchmarks
        order = {"ls": 0, "seed": 1, "trl": 2, "attn": 3, "ce": 4}
        lane(lane_big + sorted(lane_small, key=lambda j: (order[j[1][0]] + (9 if "--no-compile" in j[1] else 0))),
             "0", "gpu0")
        if a.smoke and not a.no_ddp:
            with open(out / "log_ddp.txt", "a") as log:
                r.run_ls(["ls", "--model", big, "--ddp", *sm], "0", log, 60, torchrun=1)
    summary = {"device": info, "elapsed_s": time.time() - start, "results": r.results}
    summary["ratios"] = ratios(r.results)
    (out / "gpu_bench.json").write_text(json.dumps(summary, indent=1, default=str))
    print_table(summary)
    return 0


def _pick(results, model, variant):
    for res in results:
        if res.get("model") == model and res.get("variant") == variant and "tokens_per_s" in res:
            return res
    return None


def ratios(results) -> dict:
    out = {}
    for model in {res.get("model") for res in results if res.get("model")}:
        ls, seed, trl = (_pick(results, model, v) for v in ("ls", "seed", "trl"))
        if ls and seed:
            out[f"{model} ls/seed"] = ls["tokens_per_s"] / seed["tokens_per_s"]
        if ls and trl:
            out[f"{model} ls/trl"] = ls["tokens_per_s"] / trl["tokens_per_s"]
        ddp = _pick(results, model, "ls-ddp")
        if ls and ddp:
            out[f"{model} ddp{ddp.get('world')}/1gpu"] = ddp["tokens_per_s"] / ls["tokens_per_s"]
        nc = _pick(results, model, "ls-nocompile")
        if ls and nc:
            out[f"{model} compile/nocompile"] = ls["tokens_per_s"] / nc["tokens_per_s"]
    return out


def print_table(summary) -> None:
    print(f"\n# {summary['device']['name']} · torch {summary['device']['torch']} · "
          f"transformers {summary['device']['transformers']} · {summary['elapsed_s']:.0f}s")
    print("| model | variant | pack | ckpt | real tok/s | MFU 4N/790T | peak alloc GB | peak reserved GB |")
    print("|---|---|---|---|---|---|---|---|")
    for res in summary["results"]:
        if "tokens_per_s" in res:
            print(f"| {res['model']} | {res['variant']} | {res.get('pack')} | {res.get('ckpt')} | "
                  f"{res['tokens_per_s']:,.0f} | {100 * res['mfu_790']:.1f} % | {res['peak_alloc_gb']:.1f} | "
                  f"{res['peak_reserved_gb']:.1f} |")
        elif res.get("variant") in ("attn", "ce") and "error" not in res:
            print(f"| {res['model']} | {res['variant']} | " + json.dumps(
                {k: v for k, v in res.items() if isinstance(v, dict)}, default=str)[:900])
        else:
            print(f"| {res.get('job')} | FAILED/SKIPPED | {str(res.get('error') or res.get('skipped'))[:300]}")
        if "loss_check" in res:
            print(f"|   loss check ({res['model']}): {json.dumps(res['loss_check'])[:400]}")
    for k, v in summary["ratios"].items():
        print(f"ratio {k}: {v:.2f}×")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    al = sub.add_parser("all", help="every job, one lane per GPU, then DDP; results in --out")
    al.add_argument("--out", default=os.environ.get("OUT", "bench/results"))
    al.add_argument("--budget-s", type=float, default=460.0, help="stop starting jobs after this")
    al.add_argument("--smoke", action="store_true", help="tiny shapes, few steps: every code path")
    al.add_argument("--only", help="comma-separated job kinds (seed,trl,ls,attn,ce)")
    al.add_argument("--no-ddp", action="store_true")
    jb = sub.add_parser("job", help="one job in this process")
    jb.add_argument("job", choices=sorted(JOBS))
    jb.add_argument("--model", default="7b", choices=sorted(MODELS))
    jb.add_argument("--steps", type=int)
    jb.add_argument("--warmup", type=int)
    jb.add_argument("--pack", type=int)
    jb.add_argument("--attn")
    jb.add_argument("--budget-gb", type=float)
    jb.add_argument("--check", action="store_true")
    jb.add_argument("--no-compile", action="store_true")
    jb.add_argument("--force-ckpt", action="store_true")
    jb.add_argument("--ddp", action="store_true")
    jb.add_argument("--result")
    a = p.parse_args(argv)
    if a.cmd == "all":
        return orchestrate(a)
    return run_job(a)


if __name__ == "__main__":
    sys.exit(main())
