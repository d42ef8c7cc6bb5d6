"""bench/gpu_trainer_bench.py: its measurement from events, and its CPU smoke run end to end (the real
`lorastudio train` on a tiny model: one process, 2 gloo ranks, 2 gloo ranks under FSDP)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "gpu_trainer_bench.py"
sys.path.insert(0, str(BENCH.parent))

from gpu_trainer_bench import summarize  # noqa: E402


def _metrics(step: int, elapsed: float, tokens: int, loss: float) -> dict:
    return {"type": "metrics", "time": 1000.0 + elapsed, "step": step, "elapsed_s": elapsed,
            "tokens_per_s": tokens / elapsed, "loss": loss}


def test_steady_state_leaves_the_warm_up_steps_out():
    # step 1 takes 10 s (compilation), then 1 s and 1,000 tokens per step
    events = [{"type": "stage", "time": 990.0, "stage": "prepare", "message": "…"}]
    events += [_metrics(s, 10.0 + (s - 1), 1000 * s, 12.0 - s / 10) for s in range(1, 7)]
    events.append({"type": "done", "metrics": {"gpu_peak_allocated_gb": 3.5, "gpu_peak_reserved_gb": 4.0,
                                               "strategy": "ddp"}})
    out = summarize(events, warmup=2)
    assert out["tokens_per_s"] == pytest.approx(1000.0) and out["measured_steps"] == 4
    assert out["first_step_s"] == 10.0 and out["startup_s"] == pytest.approx(10.0)
    assert out["peak_reserved_gb"] == 4.0 and out["strategy"] == "ddp" and len(out["losses"]) == 6
    # too few steps for a steady state: the whole session's rate, marked as unmeasured
    short = summarize(events[:3], warmup=2)
    assert short["measured_steps"] == 0 and short["tokens_per_s"] == pytest.approx(2000 / 11)


def test_smoke_run_trains_one_process_two_ranks_and_fsdp(tmp_path, tiny_random_dir):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(BENCH), "--smoke", "--out", str(out), "--work", str(tmp_path / "work"),
                           "--tokenizer", tiny_random_dir, "--budget-s", "420"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = json.loads((out / "trainer_bench.json").read_text())
    results = {r["label"]: r for r in summary["results"]}
    assert list(results) == ["tiny-1gpu", "tiny-2gpu", "tiny-2gpu-fsdp"]
    logs = (out / "trainer_bench_logs.txt").read_text()
    for r in results.values():
        assert r["status"] == "ok", r.get("error")
        assert r["steps_done"] == 3 and r["measured_steps"] == 2 and r["tokens_per_s"] > 0
        assert len(r["steps"]) == 3 and r["notes"] and f"===== run {r['label']}:" in logs
    assert sorted(p.name for p in out.iterdir()) == ["trainer_bench.json", "trainer_bench_logs.txt"]
    assert results["tiny-2gpu"]["strategy"] == "ddp" and results["tiny-2gpu-fsdp"]["strategy"] == "fsdp"
    # the same steps on one process and on two ranks: the same losses
    assert results["tiny-2gpu"]["loss_max_rel_diff_vs_1gpu"] < 1e-5
    assert results["tiny-2gpu-fsdp"]["loss_max_rel_diff_vs_1gpu"] < 1e-5
    assert set(summary["ratios"]) == {"tiny-2gpu / tiny-1gpu", "tiny-2gpu-fsdp / tiny-1gpu"}
    assert "| tiny-2gpu-fsdp | ok | fsdp |" in proc.stdout
