"""Several GPUs: `lorastudio train --gpus N` relaunches the same command under torchrun.

Each worker trains on its share of the packed batches. The strategy follows the model size:
- DDP-style (the default): every GPU holds the whole bf16 base; only the LoRA gradients (tens of MB)
  are averaged, in one flat all-reduce per optimizer step — no wrapper around the model, so the fast
  path (`gpu.packed_lm_loss`) runs unchanged.
- FSDP (fully_shard per decoder layer) when the bf16 base would take more than half of one GPU.

The launcher and the strategy choice are pure functions (tested on the CPU); the rest needs torch.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Any

from lorastudio.train.gpu import ModelShape


def is_worker() -> bool:
    """True inside a torchrun worker (so the command must not relaunch itself)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def _strip_gpus(argv: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--gpus":
            skip = True
            continue
        if arg.startswith("--gpus="):
            continue
        out.append(arg)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun_command(argv: list[str], gpus: int, *, python: str | None = None, port: int | None = None,
                     module: str = "lorastudio") -> list[str]:
    """The command that runs `python -m lorastudio <argv>` on `gpus` local GPUs (minus `--gpus`)."""
    if gpus < 1:
        raise ValueError("gpus must be ≥ 1")
    return [python or sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={gpus}", f"--master_port={port or free_port()}", "-m", module,
            *_strip_gpus(list(argv))]


def maybe_relaunch(gpus: int, argv: list[str]) -> int | None:
    """If more than one GPU is asked for and this is not a worker yet, run the same command under
    torchrun and return its exit code; else None (train here). Raises if the GPUs are not there."""
    if gpus <= 1 or is_worker():
        return None
    import torch

    have = torch.cuda.device_count()
    if have < gpus:
        raise RuntimeError(f"--gpus {gpus} asked for, but this machine has {have} CUDA GPU(s)")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "4")
    return subprocess.call(torchrun_command(argv, gpus), env=env)


def choose_strategy(shape: ModelShape, gpu_bytes: int) -> str:
    """"ddp" when the bf16 base takes at most half of one GPU (room left for large packs), else "fsdp"."""
    return "ddp" if shape.n_params * 2 <= 0.5 * gpu_bytes else "fsdp"


def init() -> tuple[int, int, int]:
    """Join the process group (NCCL); returns (rank, world_size, local_rank) and selects the GPU."""
    import torch
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", 0))
    torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    return dist.get_rank(), dist.get_world_size(), local


def shard(items: list[Any], rank: int, world: int) -> list[Any]:
    """This worker's share, equal in count on every worker (collectives must match step for step)."""
    per = len(items) // world
    return items[rank * per:(rank + 1) * per]


def allreduce_gradients(params: list[Any]) -> None:
    """Average the gradients of `params` over all workers in one flat all-reduce."""
    import torch
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    if not grads or not dist.is_initialized() or dist.get_world_size() == 1:
        return
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat, op=dist.ReduceOp.AVG)
    for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads), strict=True):
        g.copy_(synced)


def allreduce_sum(value: float) -> float:
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return value
    t = torch.tensor([float(value)], device="cuda")
    dist.all_reduce(t)
    return float(t.item())


def apply_fsdp(model: Any) -> Any:
    """Shard a (PEFT-wrapped) decoder-only model: one FSDP unit per decoder layer, plus the root."""
    from torch.distributed.fsdp import fully_shard

    from lorastudio.train.gpu import causal_lm_parts

    backbone, _ = causal_lm_parts(model)
    for layer in backbone.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def cleanup() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
