"""The product trainer on GPUs: `lorastudio train` end to end, timed from its own events.jsonl.

`bench/gpu_bench.py` timed the fast path's functions in a loop of its own. This runs what a user runs:
the CLI, data validation and tokenization, the trainer's loop (`gpu.customize`: auto-fit, varlen
attention, fused LoRA, compiled kernels, chunked CE, fused AdamW) and its checkpoint, on one GPU and
under `--gpus N` (torchrun, NCCL).

  # on the device (2 GPUs), one call of about 7 minutes; TOKENIZER_DIR holds a Qwen2.5 tokenizer:
  PYTHONPATH=$PWD python3 bench/gpu_trainer_bench.py --out $OUT --tokenizer TOKENIZER_DIR
  # CPU smoke run (tiny shape, gloo ranks, < 1 minute; tests/test_gpu_trainer_bench.py runs it):
  python bench/gpu_trainer_bench.py --smoke --out /tmp/tb --tokenizer "$(python -c \
      'from lorastudio.models import resolve_model; print(resolve_model("tiny-random"))')"

Models: random bf16 weights in real Qwen2.5-1.5B / 7B shapes, written once with `save_pretrained`
(with the tokenizer) under --work, and reused by later calls. Data: synthetic Q&A rows of random
common words, about 113 tokens per example with the chat template (lognormal lengths, as gpu_bench).

Variants, in this order; one that the time left (--budget-s) cannot cover is skipped, one still
running at the deadline is stopped (SIGTERM: it checkpoints) and its steps so far are still measured:
each size of --sizes on 1 GPU, then on each N > 1 of --gpus-list; then --extras: `24gb` (the largest
size on 1 GPU with LORASTUDIO_GPU_MEMORY_GB=24: the auto-fit plan of a 24 GB card) and `fsdp` (the
smallest size on the most GPUs with LORASTUDIO_DIST_STRATEGY=fsdp) and `qlora` (the largest size on 1 GPU
with quantize_base=4bit: bitsandbytes must be importable, e.g. a carried wheel).
Settings of every run: LoRA r16 α32 on all linear layers, bf16, batch_tokens 16384 × gradient
accumulation 2 (one and two GPUs run the same steps; on two, each GPU takes one 16k pack per step), no
validation, replay or augmentation, max_steps --steps, one checkpoint after the last step.

Measured per run: steady-state real tokens/s over the steps after --warmup-steps (compilation happens
before), from the cumulative `tokens_per_s` × `elapsed_s` of the `metrics` events; MFU = 4 · N ·
tokens/s / 790 TFLOP/s per GPU (N: parameters without the embedding lookup, as in gpu_bench); rank 0's
peak GPU memory (the `done` event); the largest per-step loss difference against the 1-GPU run of the
same size (same steps: it should be ~0). Results: a table on stdout and two files in DIR (few, small
files: what a device call brings back): trainer_bench.json (every run's numbers, auto-fit plan,
per-step metrics, prepare notes, error tail) and trainer_bench_logs.txt (the head and tail of every
run's log). The runs' own output directories stay under --work.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bench import MODELS  # noqa: E402  (the one table of benchmark shapes)
from gpu_bench import PEAK_790 as PEAK_FLOPS  # noqa: E402  (the yardstick of docs/BENCHMARKS.md, per GPU)

# Qwen2.5 shapes: gpu_bench's (the published configs); all bf16, random normal(0, 0.02) weights.
SIZES: dict[str, dict[str, Any]] = {
    "1.5B": MODELS["1.5b"],
    "7B": MODELS["7b"],
    # the shape of the catalog's tiny-random, for the CPU smoke run
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
}
COMMON = dict(max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6, hidden_act="silu",
              use_sliding_window=False, initializer_range=0.02)
# What one run costs before its first step (start, data, model load, compile) and per optimizer step
# on one H200, in seconds: only to decide what still fits the budget.
COST = {"1.5B": (35.0, 0.6), "7B": (55.0, 1.9), "tiny": (12.0, 0.5)}
BUILD_S = {"1.5B": 25.0, "7B": 60.0, "tiny": 5.0}
MARKER = "BUILT"

WORDS = ("time year people way day man thing woman life child world school state family student group "
         "country problem hand part place case week company system program question work government "
         "number night point home water room mother area money story fact month lot right study book eye "
         "job word business issue side kind head house service friend father power hour game line end "
         "member law car city community name president team minute idea kid body information back parent "
         "face others level office door health person art war history party result change morning reason "
         "research girl guy moment air teacher force education price order store support model").split()


def model_shape(size: str):
    from lorastudio.train.memory import ModelShape

    return ModelShape.from_config(type("Config", (), SIZES[size])())


# ------------------------------------------------------------------------------------------------
# inputs: model directories and data
# ------------------------------------------------------------------------------------------------
def build_model(size: str, out_dir: Path, tokenizer_dir: str, info_file: Path) -> None:
    """A random-weight model directory of `size` (run in a subprocess: the GPU is free afterwards)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = Qwen2Config(**SIZES[size], **COMMON, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        except TypeError:  # transformers before `dtype=`
            model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, max_shard_size="5GB")
    tokenizer.save_pretrained(tmp)
    (tmp / MARKER).write_text(json.dumps({"size": size, "params": sum(p.numel() for p in model.parameters())}))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    info = {"name": "cpu", "gpus": 0, "torch": torch.__version__, "transformers": transformers.__version__}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(name=torch.cuda.get_device_name(0), gpus=torch.cuda.device_count(),
                    total_gb=round(props.total_memory / 1e9, 1), capability=list(torch.cuda.get_device_capability(0)))
    try:
        import peft

        info["peft"] = peft.__version__
    except ImportError:
        pass
    info_file.write_text(json.dumps(info))


def write_data(path: Path, rows: int, seed: int = 0) -> None:
    """Instruction/response rows of random common words: lognormal lengths, median 70 words (with the
    chat template about 100 tokens, mean about 113), the first 30–60 % of each the question."""
    rng = random.Random(seed)
    lines = []
    for _ in range(rows):
        words = min(700, max(8, int(rng.lognormvariate(math.log(70), 0.5))))
        split = max(2, int(words * rng.uniform(0.3, 0.6)))
        text = [rng.choice(WORDS) for _ in range(words)]
        lines.append(json.dumps({"instruction": " ".join(text[:split]).capitalize() + "?",
                                 "response": " ".join(text[split:]).capitalize() + "."}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def default_work_dir(sizes: list[str]) -> Path:
    """RAM-backed /dev/shm when it has room for the models (fast to write and load), else the temp dir."""
    need = sum(model_shape(s).n_params * 2 for s in sizes) * 1.1 + 8e9
    shm = Path("/dev/shm")
    try:
        if shm.is_dir() and shutil.disk_usage(shm).free > need:
            return shm / "lorastudio-trainer-bench"
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / "lorastudio-trainer-bench"


# ------------------------------------------------------------------------------------------------
# one run of the trainer
# ------------------------------------------------------------------------------------------------
def train_command(data: Path, model_dir: Path, out_dir: Path, gpus: int, steps: int, smoke: bool) -> list[str]:
    settings = {"lora_r": 16, "lora_alpha": 32, "lora_dropout": 0, "target_modules": "all-linear",
                "batch_tokens": 1024 if smoke else 16384, "gradient_accumulation": 2,
                "max_length": 512 if smoke else 1024, "dtype": "fp32" if smoke else "bf16",
                "val_fraction": 0, "replay_rows": 0, "augment_paraphrases": 0, "augment_same_fact": "false",
                "max_steps": steps, "save_every": steps}
    cmd = [sys.executable, "-m", "lorastudio", "train", str(data), "--base", str(model_dir), "--output",
           str(out_dir), "--device", "cpu" if smoke else "cuda", "--quiet", "--no-recommend"]
    for key, value in settings.items():
        cmd += ["--set", f"{key}={value}"]
    return cmd + (["--gpus", str(gpus)] if gpus > 1 else [])


def summarize(events: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """Steady-state throughput, losses and memory from one run's events."""
    metrics = [e for e in events if e.get("type") == "metrics"]
    out: dict[str, Any] = {"steps_done": metrics[-1]["step"] if metrics else 0,
                           "losses": [e["loss"] for e in metrics],
                           "steps": [[e["step"], e["elapsed_s"], e["tokens_per_s"], e["loss"]] for e in metrics],
                           "notes": [e["message"] for e in events
                                     if e.get("type") == "stage" and e.get("stage") == "prepare"]}
    if metrics:
        out["first_step_s"] = metrics[0]["elapsed_s"]
        stages = [e for e in events if e.get("type") == "stage"]
        if stages:
            out["startup_s"] = round(metrics[0]["time"] - stages[0]["time"] - metrics[0]["elapsed_s"], 1)
    if len(metrics) >= warmup + 2:
        a, b = metrics[warmup - 1] if warmup else None, metrics[-1]
        tokens_a, seconds_a = (a["tokens_per_s"] * a["elapsed_s"], a["elapsed_s"]) if a else (0.0, 0.0)
        out["tokens_per_s"] = (b["tokens_per_s"] * b["elapsed_s"] - tokens_a) / max(1e-9, b["elapsed_s"] - seconds_a)
        out["measured_steps"] = b["step"] - (a["step"] if a else 0)
    elif metrics:  # too few steps for a steady state: the whole session, warm-up included
        out["tokens_per_s"] = metrics[-1]["tokens_per_s"]
        out["measured_steps"] = 0
    done = [e for e in events if e.get("type") == "done"]
    if done:
        m = done[-1].get("metrics", {})
        out.update(peak_alloc_gb=m.get("gpu_peak_allocated_gb"), peak_reserved_gb=m.get("gpu_peak_reserved_gb"),
                   strategy=m.get("strategy"))
    errors = [e["message"] for e in events if e.get("type") == "error"]
    if errors:
        out["event_error"] = errors[-1][:2000]
    return out


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError:
        return ""


def _head_and_tail(path: Path, head: int = 3000, tail: int = 12000) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)\n"
    if len(text) <= head + tail:
        return text
    return f"{text[:head]}\n[… {len(text) - head - tail} characters left out …]\n{text[-tail:]}"


class Bench:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.out = Path(a.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.start = time.time()
        self.deadline = self.start + a.budget_s
        self.sizes = [s for s in a.sizes.split(",") if s]
        unknown = [s for s in self.sizes if s not in SIZES]
        if unknown:
            raise SystemExit(f"unknown size(s) {unknown}: choose from {sorted(SIZES)}")
        self.work = Path(a.work) if a.work else default_work_dir(self.sizes)
        self.work.mkdir(parents=True, exist_ok=True)
        self.info: dict[str, Any] = {}
        self.results: list[dict[str, Any]] = []
        self.logs: list[tuple[str, Path]] = []  # (title, log file) of every build and run
        self.data: Path | None = None

    def left(self) -> float:
        return self.deadline - time.time()

    def env(self, extra: dict[str, str]) -> dict[str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1", LORASTUDIO_DEBUG="1", HF_HUB_OFFLINE="1",
                   TRANSFORMERS_OFFLINE="1", PYTORCH_CUDA_ALLOC_CONF="expandable_segments:True")
        # NVLink multicast stays off on shared GPU hosts (it can take their GPUs out of service)
        for key, value in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"),
                           ("NVSHMEM_DISABLE_NVLS", "1")):
            env.setdefault(key, value)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        for key in ("LORASTUDIO_DIST_STRATEGY", "LORASTUDIO_GPU_MEMORY_GB", "LORASTUDIO_DIST_BACKEND"):
            env.pop(key, None)
        if self.a.smoke:
            env["LORASTUDIO_DIST_BACKEND"] = "gloo"
        return {**env, **extra}

    def model_dir(self, size: str) -> tuple[Path | None, str | None]:
        """The model directory of `size`, built if missing; (None, why) if it cannot be."""
        path = self.work / "models" / size
        info_file = self.work / "device.json"
        if (path / MARKER).is_file() and info_file.is_file():
            self.info = self.info or json.loads(info_file.read_text())
            return path, None
        if self.left() < BUILD_S[size]:
            return None, f"not built: {self.left():.0f}s left, building takes ~{BUILD_S[size]:.0f}s"
        log = self.work / "logs" / f"build-{size}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        self.logs.append((f"build {size}", log))
        print(f"building the {size} model in {path} …", flush=True)
        t = time.time()
        cmd = [sys.executable, str(Path(__file__).resolve()), "build", "--size", size, "--dir", str(path),
               "--tokenizer", self.a.tokenizer, "--info", str(info_file)]
        with open(log, "w") as fh:
            try:
                rc = subprocess.run(cmd, env=self.env({}), stdout=fh, stderr=subprocess.STDOUT,
                                    timeout=max(10.0, self.left())).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        if rc != 0:
            return None, f"model build failed (rc={rc}): {_tail(log)}"
        self.info = json.loads(info_file.read_text())
        print(f"  built in {time.time() - t:.0f}s; device: {json.dumps(self.info)}", flush=True)
        return path, None

    def variants(self) -> list[dict[str, Any]]:
        gpus_list = sorted({int(g) for g in self.a.gpus_list.split(",") if g})
        extras = {x for x in self.a.extras.split(",") if x}
        out = []
        for size in ([] if self.a.only_extras else self.sizes):
            for gpus in gpus_list:
                out.append({"label": f"{size}-{gpus}gpu", "size": size, "gpus": gpus, "env": {}})
        by_size = sorted(self.sizes, key=lambda s: model_shape(s).n_params)
        if "24gb" in extras and not self.a.smoke:
            out.append({"label": f"{by_size[-1]}-1gpu-24GB", "size": by_size[-1], "gpus": 1,
                        "env": {"LORASTUDIO_GPU_MEMORY_GB": "24"}})
        if "fsdp" in extras and max(gpus_list) > 1:
            out.append({"label": f"{by_size[0]}-{max(gpus_list)}gpu-fsdp", "size": by_size[0],
                        "gpus": max(gpus_list), "env": {"LORASTUDIO_DIST_STRATEGY": "fsdp"}})
        if "qlora" in extras:
            out.append({"label": f"{by_size[-1]}-1gpu-qlora", "size": by_size[-1], "gpus": 1, "env": {},
                        "set": {"quantize_base": "4bit"}})
        return out

    def estimate(self, v: dict[str, Any]) -> float:
        """Seconds to get a steady-state number: start-up plus warm-up and three measured steps."""
        overhead, step = COST[v["size"]]
        if v["gpus"] > 1:
            overhead, step = overhead + 10, step / v["gpus"]
        if "LORASTUDIO_GPU_MEMORY_GB" in v["env"]:
            step *= 1.6
        return overhead + (self.a.warmup_steps + 3) * step

    def run(self, v: dict[str, Any]) -> dict[str, Any]:
        result = {k: v[k] for k in ("label", "size", "gpus", "env")}
        shape = model_shape(v["size"])
        result.update(n_params=shape.n_params, flops_params=shape.flops_params)
        have = self.info.get("gpus", 0)
        if not self.a.smoke and have and v["gpus"] > have:
            return {**result, "status": "skipped", "error": f"needs {v['gpus']} GPUs, this machine has {have}"}
        built = (self.work / "models" / v["size"] / MARKER).is_file()
        need = self.estimate(v) + (0.0 if built else BUILD_S[v["size"]])
        if self.left() < need:
            return {**result, "status": "skipped", "error": f"not started: {self.left():.0f}s left, needs ~{need:.0f}s"}
        model_dir, why = self.model_dir(v["size"])
        if model_dir is None:
            return {**result, "status": "failed" if "failed" in why else "skipped", "error": why}
        if self.data is None:
            self.data = self.work / "data.jsonl"
            tokens_per_step = (1024 if self.a.smoke else 16384) * 2
            write_data(self.data, math.ceil(self.a.steps * tokens_per_step / 90) + 20)  # one epoch is enough
        run_dir = self.work / "runs" / v["label"]
        shutil.rmtree(run_dir, ignore_errors=True)
        log = self.work / "logs" / f"{v['label']}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        self.logs.append((f"run {v['label']}", log))
        cmd = train_command(self.data, model_dir, run_dir, v["gpus"], self.a.steps, self.a.smoke)
        cmd += [arg for key, value in v.get("set", {}).items() for arg in ("--set", f"{key}={value}")]
        print(f"running {v['label']} ({self.left():.0f}s left): {' '.join(cmd[1:])}", flush=True)
        t = time.time()
        timed_out = False
        with open(log, "w") as fh:
            fh.write(" ".join(cmd) + "\n" + json.dumps(v["env"]) + "\n")
            fh.flush()
            proc = subprocess.Popen(cmd, cwd=REPO, env=self.env(v["env"]), stdout=fh, stderr=subprocess.STDOUT)
            try:
                rc = proc.wait(timeout=max(5.0, self.left()))
            except subprocess.TimeoutExpired:  # the deadline: stop it like Ctrl-C would, keep what it did
                timed_out = True
                proc.send_signal(signal.SIGTERM)
                try:
                    rc = proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    rc = proc.wait()
        result.update(rc=rc, wall_s=round(time.time() - t, 1), run_dir=str(run_dir))
        from lorastudio.train.events import read_events

        result.update(summarize(read_events(run_dir / "events.jsonl"), self.a.warmup_steps))
        plan = _gpu_plan(run_dir / "train_config.yaml")
        if plan:
            result["gpu_plan"] = plan
        if "tokens_per_s" in result:
            per_gpu = result["tokens_per_s"] / v["gpus"]
            result.update(tokens_per_s_per_gpu=per_gpu, mfu_790=4 * shape.flops_params * per_gpu / PEAK_FLOPS)
        if rc == 0:
            result["status"] = "ok"
        else:
            result["status"] = "timeout" if timed_out else "failed"
            result["error"] = result.pop("event_error", "") + "\n" + _tail(log)
        return result

    def compare_losses(self) -> None:
        """Per-step loss difference of each multi-GPU run against the 1-GPU run of the same size."""
        single = {r["size"]: r for r in self.results
                  if r["gpus"] == 1 and not r["env"] and r.get("losses")}
        for r in self.results:
            ref = single.get(r["size"])
            if r["gpus"] > 1 and ref and r.get("losses"):
                pairs = [(a, b) for a, b in zip(r["losses"], ref["losses"], strict=False)
                         if a is not None and b is not None]
                if pairs:
                    r["loss_max_rel_diff_vs_1gpu"] = max(abs(a - b) / max(abs(b), 1e-9) for a, b in pairs)

    def ratios(self) -> dict[str, float]:
        out = {}
        ok = [r for r in self.results if r.get("tokens_per_s")]
        for r in ok:
            base = next((s for s in ok if s["size"] == r["size"] and s["gpus"] == 1 and not s["env"]), None)
            if base and r is not base:
                out[f"{r['label']} / {base['label']}"] = r["tokens_per_s"] / base["tokens_per_s"]
        return out

    def write(self) -> dict[str, Any]:
        self.compare_losses()
        summary = {"device": self.info, "elapsed_s": round(time.time() - self.start, 1),
                   "settings": {"steps": self.a.steps, "warmup_steps": self.a.warmup_steps, "smoke": self.a.smoke,
                                "budget_s": self.a.budget_s, "work": str(self.work)},
                   "results": self.results, "ratios": self.ratios()}
        (self.out / "trainer_bench.json").write_text(json.dumps(summary, indent=1, default=str))
        (self.out / "trainer_bench_logs.txt").write_text(
            "".join(f"\n===== {title}: {path} =====\n{_head_and_tail(path)}" for title, path in self.logs),
            encoding="utf-8")
        return summary

    def main(self) -> int:
        print(f"trainer bench: sizes {self.sizes}, GPUs {self.a.gpus_list}, {self.a.steps} steps, "
              f"budget {self.a.budget_s:.0f}s, work dir {self.work}", flush=True)
        for v in self.variants():
            try:
                result = self.run(v)
            except Exception as err:  # the bench's own bug: record it, go on with the next variant
                import traceback

                result = {k: v[k] for k in ("label", "size", "gpus", "env")}
                result.update(status="failed", error=f"bench error: {traceback.format_exc()[-2000:]}")
                print(f"  bench error in {v['label']}: {err}", flush=True)
            self.results.append(result)
            brief = {k: result.get(k) for k in ("status", "tokens_per_s", "mfu_790", "peak_reserved_gb", "wall_s")}
            print(f"  {v['label']}: {json.dumps(brief, default=str)}", flush=True)
            self.write()
        print_table(self.write())
        return 0 if all(r["status"] in ("ok", "skipped") for r in self.results) else 1


def _gpu_plan(path: Path) -> dict[str, Any] | None:
    try:
        import yaml

        return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("extra", {}).get("gpu_plan")
    except (OSError, ImportError, AttributeError):
        return None


def _num(result: dict[str, Any], key: str, fmt: str) -> str:
    value = result.get(key)
    return format(value, fmt) if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


def print_table(summary: dict[str, Any]) -> None:
    for r in summary["results"]:
        if r["status"] != "ok":
            print(f"\n--- {r['label']}: {r['status']} ---\n{str(r.get('error', ''))[-1000:]}")
    device = summary["device"]
    print(f"\n# trainer bench · {device.get('name', '?')} × {device.get('gpus', '?')} · torch "
          f"{device.get('torch', '?')} · transformers {device.get('transformers', '?')} · {summary['elapsed_s']:.0f}s")
    print("| run | status | strategy | micro × accum | ckpt | real tok/s | per GPU | MFU/GPU (4N/790) | "
          "peak alloc / reserved GB | first step s | loss Δ vs 1 GPU |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in summary["results"]:
        plan = r.get("gpu_plan") or {}
        micro = f"{plan.get('micro_batch_tokens', '')} × {plan.get('gradient_accumulation', '')}" if plan else ""

        mfu = f"{100 * r['mfu_790']:.1f} %" if isinstance(r.get("mfu_790"), float) else ""
        print(f"| {r['label']} | {r['status']} | {r.get('strategy') or ''} | {micro} | "
              f"{plan.get('gradient_checkpointing', '')} | {_num(r, 'tokens_per_s', ',.0f')} | "
              f"{_num(r, 'tokens_per_s_per_gpu', ',.0f')} | {mfu} | {_num(r, 'peak_alloc_gb', '.1f')} / "
              f"{_num(r, 'peak_reserved_gb', '.1f')} | {_num(r, 'first_step_s', '.1f')} | "
              f"{_num(r, 'loss_max_rel_diff_vs_1gpu', '.1e')} |")
    for key, value in summary["ratios"].items():
        print(f"ratio {key}: {value:.2f}×")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    b = sub.add_parser("build", help="(internal) write one model directory")
    b.add_argument("--size", required=True, choices=sorted(SIZES))
    b.add_argument("--dir", required=True)
    b.add_argument("--tokenizer", required=True)
    b.add_argument("--info", required=True)
    p.add_argument("--out", default=os.environ.get("OUT", "bench/results/trainer"))
    p.add_argument("--sizes", help="comma-separated, of " + ", ".join(SIZES) + " (default 1.5B,7B; smoke: tiny)")
    p.add_argument("--steps", type=int, help="optimizer steps per run (default 12; smoke: 3)")
    p.add_argument("--warmup-steps", type=int, help="first steps left out of the throughput (default 3; smoke: 1)")
    p.add_argument("--gpus-list", default="1,2", help="GPU counts to run each size on")
    p.add_argument("--only-extras", action="store_true", help="run only the --extras variants")
    p.add_argument("--extras", help="comma-separated: 24gb, fsdp, qlora (default 24gb,fsdp; smoke: fsdp)")
    p.add_argument("--tokenizer", help="directory with a Qwen2.5 tokenizer (smoke: tiny-random's by default)")
    p.add_argument("--work", help="where models and run outputs go (default /dev/shm if roomy, else the temp dir)")
    p.add_argument("--budget-s", type=float, default=420.0, help="start no run that cannot finish by then")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny shape, gloo ranks: every code path in < 1 min")
    a = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    if a.cmd == "build":
        build_model(a.size, Path(a.dir), a.tokenizer, Path(a.info))
        return 0
    a.sizes = a.sizes or ("tiny" if a.smoke else "1.5B,7B")
    a.steps = a.steps or (3 if a.smoke else 12)
    a.warmup_steps = a.warmup_steps if a.warmup_steps is not None else (1 if a.smoke else 3)
    a.extras = a.extras if a.extras is not None else ("fsdp" if a.smoke else "24gb,fsdp")
    if not a.tokenizer:
        if not a.smoke:
            p.error("--tokenizer DIR is needed: a directory with a Qwen2.5 tokenizer (e.g. the default model's)")
        from lorastudio.models import resolve_model

        a.tokenizer = resolve_model("tiny-random")
    return Bench(a).main()


if __name__ == "__main__":
    sys.exit(main())
