"""CPU LoRA training throughput (docs/ENGINE.md).

Whole trainer on the default model (needs it cached: `lorastudio models --prepare default`):

    python bench/cpu_train.py bf16 4 512     # dtype, optimizer steps, tokens per packed step [, data file]
    python bench/cpu_train.py fp32 4 512
    LORASTUDIO_CPU_FAST=0 python bench/cpu_train.py bf16 4 512   # without the CPU fast path (train/cpu.py)

Prints wall tokens/s and tokens per CPU-second (process time over all threads), both over the steps
after the first (the first includes one-off kernel setup). On a shared machine compare the CPU-second
figure: the wall figure mostly measures the neighbours.

The CPU fast path's own loop (no model download, no trainer): a random-weight model of the default
model's shape (Qwen2.5-0.5B: hidden 896, 24 layers, 14/2 heads, 151,936 vocab), LoRA r16 α32, packed
rows of synthetic examples (lognormal lengths, median 100 tokens, the first 30–60 % prompt), each step
`cpu.packed_loss` → backward → AdamW, as the trainer runs it:

    python bench/cpu_train.py loop --dtype fp32 --tokens 640 --steps 4 [--layers 24] [--targets all-mlp]

and old code against new, alternating runs (A B B A …) so that the neighbours' load hits both alike;
each run is a fresh process with `PYTHONPATH` set to one tree (e.g. an old commit from `git archive`):

    python bench/cpu_train.py compare OLD_TREE NEW_TREE --rounds 4 -- --dtype fp32 --tokens 640 --steps 4

or, less noisy on a shared machine, old and new `cpu.py` in one process, one step each in turn on two
identical models (the old module loaded from its file; it must import only what the new tree has):

    python bench/cpu_train.py paired OLD_TREE/lorastudio/train/cpu.py --dtype fp32 --tokens 640 --steps 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_SHAPE = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                     num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                     rope_parameters={"rope_type": "default", "rope_theta": 1e6}, rms_norm_eps=1e-6,
                     tie_word_embeddings=False, use_sliding_window=False)


def trainer_run(argv: list[str]) -> None:
    from lorastudio.train import TrainConfig, read_events, train

    dtype, steps, batch_tokens = argv[0], int(argv[1]), int(argv[2])
    data = argv[3] if len(argv) > 3 else str(Path(__file__).resolve().parents[1] / "shared/data/yunzhan_train.jsonl")
    marks: list[tuple[float, float]] = []  # (wall, cpu) at the start of training and after each step

    def on_event(event: dict) -> None:
        if event["type"] == "metrics" or (event["type"] == "stage" and event["stage"] == "train"):
            marks.append((time.time(), time.process_time()))

    with tempfile.TemporaryDirectory() as out:
        train(TrainConfig(data=data, base="default", output_dir=out, max_steps=steps, batch_tokens=batch_tokens,
                          max_length=batch_tokens, dtype=dtype, val_fraction=0.0, save_every=10**6),
              on_event=on_event)
        metrics = [e for e in read_events(Path(out) / "events.jsonl") if e["type"] == "metrics"]
    # tokens_per_s × elapsed_s = tokens so far in this session
    seen = [m["tokens_per_s"] * m["elapsed_s"] for m in metrics]
    tokens = seen[-1] - seen[0]
    wall, cpu = marks[-1][0] - marks[1][0], marks[-1][1] - marks[1][1]
    print(json.dumps({"dtype": dtype, "steps": steps, "batch_tokens": batch_tokens, "tokens_after_first": round(tokens),
                      "wall_tok_s": round(tokens / wall, 1), "tok_per_cpu_s": round(tokens / cpu, 1),
                      "first_step_wall_s": round(marks[1][0] - marks[0][0], 1),
                      "losses": [m["loss"] for m in metrics]}))


def packed_rows(tokens: int, count: int, vocab: int, seed: int = 0) -> list[dict]:
    """`count` packed rows of ≤ `tokens` tokens each, in the trainer's batch format."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    rows = []
    while len(rows) < count:
        ids, pos, lab, lengths = [], [], [], []
        while True:
            n = int(np.clip(rng.lognormal(np.log(100), 0.5), 24, tokens))
            if sum(lengths) + n > tokens:
                break
            doc = rng.integers(0, vocab, n)
            prompt = int(n * rng.uniform(0.3, 0.6))
            ids.extend(doc.tolist())
            pos.extend(range(n))
            lab.extend([-100] * prompt + doc[prompt:].tolist())
            lengths.append(n)
        rows.append({"input_ids": torch.tensor([ids]), "position_ids": torch.tensor([pos]),
                     "labels": torch.tensor([lab]), "lengths": lengths})
    return rows


def build_model(a: argparse.Namespace):
    """(PEFT model, config): random weights of the default model's shape, the same in every run."""
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    config = transformers.Qwen2Config(**{**DEFAULT_SHAPE, "num_hidden_layers": a.layers}, hidden_act="silu")
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("meta"):
        model = transformers.Qwen2ForCausalLM(config)
    model = model.to_empty(device="cpu").to(dtype)
    model.model.rotary_emb = type(model.model.rotary_emb)(config)  # its buffers were left on "meta"
    cache = Path(tempfile.gettempdir()) / f"lorastudio-bench-default-shape-{a.layers}l-{a.dtype}.safetensors"
    if cache.exists():  # the same random weights for every run, read from the page cache
        from safetensors.torch import load_file

        model.load_state_dict(load_file(cache), strict=False)
    else:
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(torch.ones(p.shape) if "norm" in name else torch.randn(p.shape, generator=gen) * 0.02)
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(cache) + ".tmp")
        os.replace(str(cache) + ".tmp", cache)
    targets = a.targets if a.targets in ("all-linear",) else ["gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=targets,
                                             task_type="CAUSAL_LM"))
    return model, config


def loop_run(a: argparse.Namespace) -> None:
    import torch

    from lorastudio.train import cpu

    torch.set_num_threads(a.threads)
    model, config = build_model(a)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4)
    rows = packed_rows(a.tokens, a.steps + 1, config.vocab_size, seed=a.seed)
    marks, tokens, losses = [], 0, []
    for step, batch in enumerate(rows):
        if step == 1:
            marks = [(time.perf_counter(), time.process_time())]
        loss_sum, n = cpu.packed_loss(model, batch)
        (loss_sum / n).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(loss_sum.item() / n, 6))
        if step >= 1:
            tokens += batch["input_ids"].shape[-1]
    wall, cpu_s = time.perf_counter() - marks[0][0], time.process_time() - marks[0][1]
    print(json.dumps({"code": str(Path(cpu.__file__).resolve().parents[2]), "dtype": a.dtype, "layers": a.layers,
                      "targets": a.targets, "tokens_per_step": a.tokens, "timed_steps": a.steps, "tokens": tokens,
                      "wall_tok_s": round(tokens / wall, 2), "tok_per_cpu_s": round(tokens / cpu_s, 2),
                      "losses": losses}))


def paired_run(a: argparse.Namespace) -> None:
    """Old and new `cpu.py` in one process, one step each in turn on two identical models (the old
    module loaded from a file, its attention registered under another name): neighbours' load hits
    both alike, step by step. Prints per-step wall and CPU seconds of each and their paired ratios."""
    import importlib.util

    import torch

    from lorastudio.train import cpu as new_cpu

    spec = importlib.util.spec_from_file_location("old_cpu", a.old_cpu)
    old_cpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old_cpu)
    old_cpu.ATTN_IMPLEMENTATION = "lorastudio_cpu_docs_old"
    torch.set_num_threads(a.threads)
    runs = {}
    for tag, module in (("old", old_cpu), ("new", new_cpu)):
        model, config = build_model(a)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        runs[tag] = {"module": module, "model": model, "params": params, "opt": torch.optim.AdamW(params, lr=2e-4),
                     "wall": [], "cpu": [], "losses": []}
    rows = packed_rows(a.tokens, a.steps + 1, config.vocab_size, seed=a.seed)
    for step, batch in enumerate(rows):
        for tag in (("old", "new") if step % 2 == 0 else ("new", "old")):
            r = runs[tag]
            t0, c0 = time.perf_counter(), time.process_time()
            loss_sum, n = r["module"].packed_loss(r["model"], batch)
            (loss_sum / n).backward()
            torch.nn.utils.clip_grad_norm_(r["params"], 1.0)
            r["opt"].step()
            r["opt"].zero_grad(set_to_none=True)
            r["wall"].append(time.perf_counter() - t0)
            r["cpu"].append(time.process_time() - c0)
            r["losses"].append(round(loss_sum.item() / n, 6))
        print(step, {t: (round(runs[t]["wall"][-1], 2), round(runs[t]["cpu"][-1], 2)) for t in runs}, flush=True)
    timed = slice(1, None)  # the first step of each sets kernels up
    tokens = [b["input_ids"].shape[-1] for b in rows][timed]
    out = {"dtype": a.dtype, "layers": a.layers, "targets": a.targets, "tokens_per_step": a.tokens,
           "threads": a.threads, "timed_steps": len(tokens), "losses_identical": runs["old"]["losses"] == runs["new"]["losses"]}
    for key in ("wall", "cpu"):
        old, new = runs["old"][key][timed], runs["new"][key][timed]
        out[f"{key}_tok_s"] = {t: round(sum(tokens) / sum(runs[t][key][timed]), 2) for t in runs}
        out[f"{key}_new_over_old_median_of_steps"] = round(statistics.median(o / n for o, n in zip(old, new, strict=True)), 4)
        out[f"{key}_s_per_step"] = {t: [round(x, 3) for x in runs[t][key]] for t in runs}
    out["losses"] = runs["new"]["losses"]
    print(json.dumps(out))
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1))


def compare(a: argparse.Namespace, loop_args: list[str]) -> None:
    runs: dict[str, list[dict]] = {"old": [], "new": []}
    for r in range(a.rounds):
        order = ("old", "new") if r % 2 == 0 else ("new", "old")  # A B B A …: neither always goes first
        for tag in order:
            tree = a.old if tag == "old" else a.new
            env = {**os.environ, "PYTHONPATH": tree}
            out = subprocess.run([sys.executable, __file__, "loop", *loop_args], env=env, check=True,
                                 capture_output=True, text=True, cwd=tempfile.gettempdir())
            result = json.loads(out.stdout.strip().splitlines()[-1])
            result["round"], result["load_avg_1m"] = r, os.getloadavg()[0]
            runs[tag].append(result)
            print(tag, json.dumps({k: result[k] for k in ("round", "wall_tok_s", "tok_per_cpu_s", "load_avg_1m")}),
                  flush=True)
    summary = {}
    for key in ("wall_tok_s", "tok_per_cpu_s"):
        old = statistics.median(x[key] for x in runs["old"])
        new = statistics.median(x[key] for x in runs["new"])
        summary[key] = {"old_median": old, "new_median": new, "new_over_old": round(new / old, 4)}
    same_losses = all(o["losses"] == n["losses"] for o, n in zip(runs["old"], runs["new"], strict=True))
    report = {"args": loop_args, "rounds": a.rounds, "summary": summary, "losses_identical": same_losses, "runs": runs}
    print(json.dumps(summary))
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] not in ("loop", "paired", "compare"):
        return trainer_run(sys.argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    loop = sub.add_parser("loop")
    paired = sub.add_parser("paired", help="old cpu.py (a file) vs the imported one, steps alternating")
    paired.add_argument("old_cpu", help="path of the old lorastudio/train/cpu.py")
    paired.add_argument("--out")
    for p in (loop, paired):
        p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
        p.add_argument("--tokens", type=int, default=640)
        p.add_argument("--steps", type=int, default=4, help="timed steps (one more runs first, untimed)")
        p.add_argument("--layers", type=int, default=DEFAULT_SHAPE["num_hidden_layers"])
        p.add_argument("--targets", default="all-mlp", choices=("all-mlp", "all-linear"))
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--seed", type=int, default=0)
    cmp_ = sub.add_parser("compare")
    cmp_.add_argument("old")
    cmp_.add_argument("new")
    cmp_.add_argument("--rounds", type=int, default=4)
    cmp_.add_argument("--out")
    argv = sys.argv[1:]
    loop_args = argv[argv.index("--") + 1:] if "--" in argv else []
    a = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if a.mode == "loop":
        loop_run(a)
    elif a.mode == "paired":
        paired_run(a)
    else:
        compare(a, loop_args)


if __name__ == "__main__":
    main()
