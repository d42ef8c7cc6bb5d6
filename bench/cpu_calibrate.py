"""Is the recommender's pre-run estimate right on this CPU? `lorastudio train --quick` timed end to end.

    python bench/cpu_calibrate.py --tokenizer DIR [--cores 4,5] [--env ATEN_CPU_CAPABILITY=avx2 ...] [--set dtype=fp32] --out OUT

Builds (once) a random-weight model of the default model's shape (Qwen2.5-0.5B: hidden 896, 24 layers,
14/2 heads, 151,936 vocab, tied embeddings) named `qwen2.5-0.5b-random` (the recommender reads the size
from the name), so any machine can run it without the default model; a tokenizer directory of the
Qwen2.5 family is needed (the default model's cache has one). Then runs, pinned to `--cores` with
`taskset`, the whole command a user runs:

    lorastudio train lorastudio/assets/demo/yunzhan_train.jsonl --base MODEL --quick --device cpu
        --set replay_rows=0 --output OUT/run

(no replay rows: for a base other than `default` their answers would be generated first, which the
default model ships cached) and prints the recommender's estimate (`estimated_s` of the trainer's
`estimate` event), the measured wall time of the command, their ratio, the CPU class the recommender
saw, and the trainer's tokens/s, with `hardware.matmul_gflops` (bf16 and fp32, on the same cores and
environment) run before and after the command: the probe the recommender scales its class figure by
(`recommend.CPU_PROBE_REFERENCE_GFLOPS`). Training speed does not depend on the weights' values, so the random
model times the same steps as the real one (same shapes, same tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPE = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
             num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768,
             rope_theta=1_000_000.0, rms_norm_eps=1e-6, hidden_act="silu", use_sliding_window=False)


def build(model_dir: Path, tokenizer_dir: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    if (model_dir / "config.json").exists():
        return
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen2Config(**SHAPE, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    tmp = model_dir.with_name(model_dir.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(model_dir)


def probe(prefix: list[str], env: dict[str, str]) -> dict[str, float]:
    """`hardware.matmul_gflops` in bf16 and fp32 in a child pinned like the timed command."""
    code = ("import json; from lorastudio import hardware as h; n = h.physical_cores(); "
            "print(json.dumps({'bf16': h.matmul_gflops(True, n), 'fp32': h.matmul_gflops(False, n), 'cores': n, "
            "'class': h.cpu_class()}))")
    proc = subprocess.run([*prefix, sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {"error": proc.stderr[-500:]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--cores", default="", help="taskset -c list (empty: not pinned)")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the timed command")
    ap.add_argument("--set", action="append", default=[], dest="settings",
                    help="KEY=VALUE passed on to `lorastudio train --set` (e.g. dtype=fp32)")
    ap.add_argument("--label", default="")
    ap.add_argument("--workdir", default="/tmp/lorastudio-calibrate")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    work, out = Path(a.workdir), Path(a.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = work / "qwen2.5-0.5b-random"
    build(model_dir, a.tokenizer)
    run_dir = out / (a.label or "run")
    cmd = [sys.executable, "-m", "lorastudio", "train", str(ROOT / "lorastudio/assets/demo/yunzhan_train.jsonl"),
           "--base", str(model_dir), "--quick", "--device", "cpu", "--set", "replay_rows=0",
           "--output", str(run_dir)]
    for kv in a.settings:
        cmd += ["--set", kv]
    prefix = ["taskset", "-c", a.cores] if a.cores else []
    cmd = [*prefix, *cmd]
    env = {**os.environ, "PYTHONPATH": str(ROOT), **dict(kv.split("=", 1) for kv in a.env)}
    probe_before = probe(prefix, env)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    probe_after = probe(prefix, env)
    (out / f"{a.label or 'run'}.log").write_text(proc.stdout + proc.stderr)
    events = [json.loads(line) for line in (run_dir / "events.jsonl").open()] if (run_dir / "events.jsonl").exists() else []
    est = next((e for e in events if e.get("type") == "estimate" and e.get("estimated_s")), {})
    metrics = [e for e in events if e.get("type") == "metrics" and e.get("tokens_per_s")]
    estimate_line = next((line.strip() for line in proc.stdout.splitlines() if line.strip().startswith("estimate:")), "")
    result = {"label": a.label, "cores": a.cores, "env": a.env, "set": a.settings, "rc": proc.returncode, "wall_s": round(wall, 1),
              "estimated_s": est.get("estimated_s"), "estimate_line": estimate_line,
              "ratio_estimate_to_wall": round(est["estimated_s"] / wall, 3) if est.get("estimated_s") else None,
              "trainer_tokens_per_s_last": metrics[-1]["tokens_per_s"] if metrics else None,
              "calibrated_tokens_per_s": est.get("tokens_per_s"),
              "probe_gflops_before": probe_before, "probe_gflops_after": probe_after}
    print(json.dumps(result), flush=True)
    with (out / "calibrate.jsonl").open("a") as fh:
        fh.write(json.dumps(result) + "\n")
    if proc.returncode:
        print((proc.stdout + proc.stderr)[-3000:], file=sys.stderr)
        raise SystemExit(proc.returncode)


if __name__ == "__main__":
    main()
