"""`lorastudio train --gpus N` on the CPU: torchrun with 2 gloo ranks against one process.

The gloo backend (LORASTUDIO_DIST_BACKEND=gloo) runs the same code as NCCL on GPUs except the
collective's transport: the rank-sharded micro-batches, the token-weighted gradient all-reduce, rank-0
-only files and the coordinated stop are what these tests prove, for both strategies (DDP-style
replication, and FSDP forced by LORASTUDIO_DIST_STRATEGY=fsdp: fully_shard runs on gloo/CPU too).
Each launch costs ~10 s of start-up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_fixtures import ROWS, write_rows

from lorastudio.cli import main
from lorastudio.train import read_events

STEPS = 8
# Two micro-batches per step (the last step of each epoch has one: rank 1 then has nothing to do and
# still joins the all-reduce). LoRA dropout on, so the per-micro-batch seeding is tested too.
SETTINGS = ["--no-recommend", "-q", "--set", f"max_steps={STEPS}", "--set", "batch_tokens=128",
            "--set", "max_length=128", "--set", "gradient_accumulation=2", "--set", "learning_rate=0.01",
            "--set", "dtype=fp32", "--set", "lora_dropout=0.1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    rows = ROWS + [(q + " 请回答。", a) for q, a in ROWS]
    return write_rows(tmp_path_factory.mktemp("dist-data") / "faq.jsonl", rows)


@pytest.fixture(scope="module")
def single_run(data, tiny_random_dir, tmp_path_factory) -> Path:
    """The reference: one process, the same settings (hence the same global batch per step)."""
    out = tmp_path_factory.mktemp("single") / "run"
    assert main(["train", str(data), "--base", "tiny-random", "-o", str(out), *SETTINGS]) == 0
    return out


def _env(strategy: str = "ddp") -> dict[str, str]:
    env = dict(os.environ, LORASTUDIO_DIST_BACKEND="gloo", OMP_NUM_THREADS="1", LORASTUDIO_DIST_STRATEGY=strategy)
    env.pop("LOCAL_RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def _launch(data: Path, out: Path, *extra: str, strategy: str = "ddp") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lorastudio", "train", str(data), "--base", "tiny-random",
                             "-o", str(out), *SETTINGS, "--gpus", "2", *extra], env=_env(strategy),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "adapter_model.safetensors"))


# The CPU fast path computes the chat-template head once per packed row (train/cpu_prefix.py, exact in
# arithmetic): its small GEMMs round differently with 1 thread per rank than with 2 in one process, a few
# 1e-7 of the weights' size (measured max 3.2e-6 on a 0.12-sized weight on an AVX2 CPU; 1.43e-5 on one element
# of 2048 on an AVX-512 AMD Zen 5, whose kernels sum in other orders); a rank that summed or scaled the
# gradients wrongly is off by orders of magnitude more (a wrong scale by 2 moves every weight by ~1e-2).
DDP_ATOL = 5e-5


def _assert_same_adapter(a: Path, b: Path, atol: float = DDP_ATOL) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=atol, msg=key)
    assert any(v.abs().sum() > 0 for k, v in wa.items() if "lora_B" in k)  # it did learn something


def _losses(run: Path) -> list[tuple[int, float]]:
    return [(e["step"], e["loss"]) for e in read_events(run / "events.jsonl") if e["type"] == "metrics"]


def test_cpu_refuses_several_gpus_without_the_test_backend(data, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LORASTUDIO_DIST_BACKEND", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    code = main(["train", str(data), "--base", "tiny-random", "-o", str(tmp_path / "o"), "--gpus", "2",
                 *SETTINGS])
    assert code == 2
    err = capsys.readouterr().err
    assert "--gpus 2" in err and "none" in err and "LORASTUDIO_DIST_BACKEND=gloo" in err
    assert not (tmp_path / "o" / "events.jsonl").exists()


# FSDP: the gradients are reduce-scattered and the weights all-gathered per layer, so the sums run in
# another order than one process's (differences of a few fp32 ulps of the weights' size; the AVX-512
# Zen 5's rounding, 1.43e-5, as for DDP above).
FSDP_ATOL = 5e-5


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gloo_ranks_equal_one_process_and_only_rank_0_writes(data, single_run, tmp_path, strategy):
    out = tmp_path / "dist"
    proc = _launch(data, out, strategy=strategy)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log

    _assert_same_adapter(out, single_run, atol=FSDP_ATOL if strategy == "fsdp" else DDP_ATOL)
    # The loss is summed over ranks and divided by the step's global target count: the same numbers.
    dist_losses, single_losses = _losses(out), _losses(single_run)
    assert [s for s, _ in dist_losses] == list(range(1, STEPS + 1))  # one line per step, not one per rank
    for (_, a), (_, b) in zip(dist_losses, single_losses, strict=True):
        assert a == pytest.approx(b, rel=1e-5)

    events = read_events(out / "events.jsonl")
    assert sum(e["type"] == "done" for e in events) == 1
    assert events[-1]["metrics"]["strategy"] == strategy
    rank_notes = [e["message"] for e in events if e["type"] == "stage" and e["message"].startswith("2 ranks (cpu)")]
    assert len(rank_notes) == 1 and ("FSDP" in rank_notes[0]) == (strategy == "fsdp")
    checkpoints = [e["step"] for e in events if e["type"] == "checkpoint"]
    assert len(checkpoints) == len(set(checkpoints))
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in single_run.iterdir())
    assert not [p for p in out.rglob(".tmp-*")]
    from lorastudio.train import TrainConfig

    assert TrainConfig.from_yaml(out / "train_config.yaml").gpus == 2


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _wait_for_step(events: Path, step: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(e["type"] == "metrics" and e["step"] >= step for e in read_events(events)):
            return
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.05)
    raise AssertionError(f"training did not reach step {step}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds rank 0 through /proc")
def test_sigterm_on_rank_0_stops_all_ranks_with_one_checkpoint_and_resume_is_exact(data, single_run, tmp_path):
    out = tmp_path / "dist"
    proc = _launch(data, out)
    _wait_for_step(out / "events.jsonl", 2, proc)
    ranks = [pid for torchrun in _children(proc.pid) for pid in _children(torchrun)]
    rank0 = [pid for pid in ranks if b"\0RANK=0\0" in b"\0" + Path(f"/proc/{pid}/environ").read_bytes()]
    assert len(ranks) == 2 and len(rank0) == 1, ranks
    os.kill(rank0[0], signal.SIGTERM)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, log
    assert "continue with:" in log
    for pid in ranks:  # every rank is gone, none was left behind
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()

    events = read_events(out / "events.jsonl")
    stopped_at = max(e["step"] for e in events if e["type"] == "metrics")
    assert stopped_at < STEPS
    interrupted = [e for e in events if e["type"] == "stage" and "interrupted (SIGTERM)" in e["message"]]
    assert len(interrupted) == 1 and f"at step {stopped_at}" in interrupted[0]["message"]
    # one checkpoint for the interruption (plus the per-epoch ones), written once
    saved = [e["step"] for e in events if e["type"] == "checkpoint"]
    assert saved.count(stopped_at) == 1 and len(saved) == len(set(saved))
    assert (out / "checkpoints" / f"step-{stopped_at:08d}" / "trainer_state.pt").is_file()
    assert not (out / "adapter_model.safetensors").exists()

    # --resume reads the run's train_config.yaml (gpus: 2), relaunches, and ends where one process ends.
    resumed = subprocess.run([sys.executable, "-m", "lorastudio", "train", str(data), "-o", str(out), "--resume",
                              "-q"], env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert [e["step"] for e in read_events(out / "events.jsonl") if e["type"] == "resumed"] == [stopped_at]
    _assert_same_adapter(out, single_run)


def test_sigterm_to_the_launcher_reaches_every_rank_once(data, tmp_path):
    """What a Ctrl-C or the job worker's SIGTERM does: one clean stop, exit 130, no torchrun report."""
    out = tmp_path / "dist"
    proc = _launch(data, out)
    _wait_for_step(out / "events.jsonl", 2, proc)
    proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, log
    assert "ChildFailedError" not in log and "SignalException" not in log
    events = read_events(out / "events.jsonl")
    stopped_at = max(e["step"] for e in events if e["type"] == "metrics")
    assert [e["step"] for e in events if e["type"] == "checkpoint"].count(stopped_at) == 1


def test_fsdp_interrupted_and_resumed_equals_one_process(data, single_run, tmp_path):
    """FSDP checkpoints gather the sharded LoRA weights and optimizer state into the one-process format;
    resuming shards them again, and the run ends where one process ends."""
    out = tmp_path / "dist"
    proc = _launch(data, out, strategy="fsdp")
    _wait_for_step(out / "events.jsonl", 3, proc)
    proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, log
    stopped_at = max(e["step"] for e in read_events(out / "events.jsonl") if e["type"] == "metrics")
    state = torch.load(out / "checkpoints" / f"step-{stopped_at:08d}" / "trainer_state.pt", weights_only=False)
    single_state = torch.load(sorted((single_run / "checkpoints").glob("step-*"))[-1] / "trainer_state.pt",
                              weights_only=False)
    assert state["optimizer"]["state"].keys() == single_state["optimizer"]["state"].keys()
    first = state["optimizer"]["state"][0]
    assert type(first["exp_avg"]) is torch.Tensor and first["exp_avg"].shape == single_state["optimizer"]["state"][0]["exp_avg"].shape

    resumed = subprocess.run([sys.executable, "-m", "lorastudio", "train", str(data), "-o", str(out), "--resume",
                              "-q"], env=_env("fsdp"), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert [e["step"] for e in read_events(out / "events.jsonl") if e["type"] == "resumed"] == [stopped_at]
    _assert_same_adapter(out, single_run, atol=FSDP_ATOL)
