"""How steady is this CPU? One GEMM of a training step, timed over and over for a while.

    python bench/cpu_gemm_drift.py [--seconds 60] [--dtype bf16] [--threads 2] [--out drift.json]

The product: a 484-token pack through the default model's 896 → 4864 up-projection (the shape most of a
CPU training step is made of), the same operands every call, so nothing but the machine changes. Printed:
per second, the median call time and its GFLOP/s. On a VM whose cores share their physical core (and its
AMX or AVX-512 units) with other tenants the rate swings; a whole-run comparison of two code paths on such a
machine then says more about the neighbours than about the code, and only interleaved runs
(`bench/cpu_speed.py ab`) can tell the two apart (docs/BENCHMARKS.md, "Fresh pages").
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    m, k, n = 484, 896, 4864
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=gen).to(dtype)
    w = (torch.randn(n, k, generator=gen) * 0.02).to(dtype)
    out = torch.empty(m, n, dtype=dtype)
    for _ in range(5):
        torch.mm(x, w.t(), out=out)
    seconds: list[dict] = []
    start = time.perf_counter()
    while time.perf_counter() - start < a.seconds:
        calls = []
        t_end = time.perf_counter() + 1.0
        while time.perf_counter() < t_end:
            t = time.perf_counter()
            torch.mm(x, w.t(), out=out)
            calls.append(time.perf_counter() - t)
        ms = statistics.median(calls) * 1e3
        seconds.append({"s": len(seconds), "calls": len(calls), "median_ms": round(ms, 2),
                        "gflops": round(2 * m * n * k / ms / 1e6)})
        print(json.dumps(seconds[-1]), flush=True)
    rates = [s["gflops"] for s in seconds]
    summary = {"dtype": a.dtype, "threads": a.threads, "seconds": len(seconds), "gflops_min": min(rates),
               "gflops_median": statistics.median(rates), "gflops_max": max(rates),
               "max_over_min": round(max(rates) / min(rates), 2)}
    print(json.dumps(summary))
    if a.out:
        Path(a.out).write_text(json.dumps({"summary": summary, "per_second": seconds}, indent=1))


if __name__ == "__main__":
    main()
