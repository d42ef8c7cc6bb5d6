"""Several GPUs: `lorastudio train --gpus N` relaunches the same command under torchrun.

Each worker (rank) trains on its share of every optimizer step's packed micro-batches: the schedule
(which examples in which micro-batch of which step) is the single-process one, and micro-batch j of a
step goes to rank j mod N. Each rank divides its summed token losses by the step's *global* number of
target tokens, so the sum of the ranks' LoRA gradients is exactly the single-process gradient of the
same step. Only rank 0 writes events, checkpoints and the adapter.

Strategy (`pick_strategy`; LORASTUDIO_DIST_STRATEGY=ddp|fsdp forces one):
- "ddp": every GPU holds the whole bf16 base; one flat all-reduce (SUM) of the LoRA gradients per
  optimizer step (`allreduce_step`, which also sums the step's loss, tokens and stop requests). No
  wrapper around the model, so the fast path (`gpu.packed_lm_loss`) runs unchanged.
- "fsdp" (`choose_strategy`'s pick when the bf16 base takes more than half of one GPU): `apply_fsdp`
  shards the base with `fully_shard` (one unit per decoder layer, the backbone as root). FSDP
  reduce-scatters the LoRA gradients in backward (it averages: the trainer scales each rank's loss by
  the world size to keep the sum), every rank runs the same number of forward/backward passes per
  step (a rank short of micro-batches runs a zero-weighted one), and checkpoints gather the full LoRA
  weights and optimizer state (`full_state`, `full_optimizer_state`) into the single-process format,
  so FSDP and DDP runs resume each other's checkpoints. Needs torch ≥ 2.10 (`fsdp_problem`).

Backend: NCCL on CUDA. `LORASTUDIO_DIST_BACKEND=gloo` runs the ranks on the CPU (for tests: several
CPU processes share the same cores and train no faster than one).

The launcher and the strategy choice are pure functions (tested on the CPU); the rest needs torch.
"""

from __future__ import annotations

import os
import re
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


BACKEND_ENV = "LORASTUDIO_DIST_BACKEND"
STRATEGY_ENV = "LORASTUDIO_DIST_STRATEGY"
RC_FILE_ENV = "LORASTUDIO_DIST_RC_FILE"


def backend_name() -> str:
    """"nccl" (the default) or "gloo" (LORASTUDIO_DIST_BACKEND=gloo: ranks on the CPU, for tests)."""
    name = os.environ.get(BACKEND_ENV, "").strip().lower() or "nccl"
    if name not in ("nccl", "gloo"):
        raise ValueError(f"{BACKEND_ENV}={name!r}: use nccl (GPUs) or gloo (CPU, for tests)")
    return name


def joined() -> bool:
    """Has this process joined a process group?"""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process: from the process group if joined, else torchrun's env."""
    if joined():
        import torch.distributed as dist

        return dist.get_rank(), dist.get_world_size()
    if is_worker():
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return 0, 1


def launch_problem(gpus: int) -> str | None:
    """Why `--gpus N` cannot run here (one line for the user), or None if it can."""
    if gpus <= 1:
        return None
    try:
        backend = backend_name()
    except ValueError as err:
        return str(err)
    if backend == "gloo":
        return None
    import torch

    have = torch.cuda.device_count()
    if have == 0:
        return (f"--gpus {gpus} needs {gpus} CUDA GPUs and this machine has none; on the CPU several "
                f"processes only share the same cores, so train with --gpus 1 (tests can set "
                f"{BACKEND_ENV}=gloo to run the ranks on the CPU)")
    if have < gpus:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        return (f"--gpus {gpus} asked for, but this machine has {have} CUDA GPU(s)"
                + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""))
    return None


def _parent_death_signal(sig: int) -> None:
    """Linux: ask the kernel to send `sig` to this process when its parent dies (no orphan ranks)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover - best effort
        pass


# Run a command through a tiny launcher that asks Linux to SIGTERM it when its parent dies (no orphan
# trainers or ranks); exits 130 at once if the parent is already gone. argv: parent pid, then the
# real command. Also used by the studio's job worker.
PDEATHSIG_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)\n"
    "except Exception:\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(130)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def maybe_relaunch(gpus: int, argv: list[str]) -> int | None:
    """If more than one GPU is asked for and this is not a worker yet, run the same command under
    torchrun and return rank 0's exit code; else None (train here). Raises RuntimeError (one line for
    the user) if the GPUs are not there.

    torchrun (and each rank) runs in a session of its own, so a signal to this process's group (Ctrl-C
    in a terminal, the job worker's SIGTERM) reaches every rank exactly once: this process forwards it
    to the ranks (to torchrun where it cannot list them); the ranks agree at the next optimizer step,
    rank 0 writes one checkpoint and all exit. A second signal is forwarded too and means "stop now",
    as in one process. If this process dies, torchrun gets SIGTERM from the kernel, and so do the ranks
    if torchrun dies.
    """
    if gpus <= 1 or is_worker():
        return None
    problem = launch_problem(gpus)
    if problem:
        raise RuntimeError(problem)
    import signal
    import tempfile
    import threading

    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1" if backend_name() == "gloo" else "4")
    signalled: list[int] = []
    with tempfile.TemporaryDirectory(prefix="lorastudio-dist-") as tmp:
        rc_file = os.path.join(tmp, "rank0.rc")
        env[RC_FILE_ENV] = rc_file
        # torchrun through a tiny launcher that asks for SIGTERM when this process dies (no preexec_fn:
        # unsafe once threads exist), then execs it
        process = subprocess.Popen([sys.executable, "-c", PDEATHSIG_LAUNCHER, str(os.getpid()),
                                    *torchrun_command(argv, gpus)], env=env, start_new_session=True)

        def forward(signum, _frame):
            # To the ranks themselves where Linux lists them (torchrun then sees a clean exit); else to
            # torchrun, which forwards it to every rank (and prints its own report of the signal).
            signalled.append(signum)
            for pid in _children(process.pid) or [process.pid]:
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass

        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            rc = process.wait()
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
        try:
            with open(rc_file, encoding="utf-8") as fh:
                return int(fh.read().strip())
        except (OSError, ValueError):  # rank 0 never got to report (stopped while starting, crashed)
            if signalled:
                return 130
            return rc if rc >= 0 else 128 - rc


def _children(pid: int) -> list[int]:
    """Child pids of `pid` (Linux /proc), [] where unknown."""
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as fh:
                found += [int(x) for x in fh.read().split()]
    except (OSError, ValueError):
        return []
    return found


def report_exit_code(code: int) -> bool:
    """Rank 0 of a relaunched command: tell the launching process its exit code (torchrun's own
    exit code says only "a rank failed"). True if told."""
    path = os.environ.get(RC_FILE_ENV)
    if path and is_worker() and int(os.environ.get("RANK", 0)) == 0:
        try:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(str(int(code)))
            return True
        except OSError:
            pass
    return False


def choose_strategy(shape: ModelShape, gpu_bytes: int) -> str:
    """"ddp" when the bf16 base takes at most half of one GPU (room left for large packs), else "fsdp"."""
    return "ddp" if shape.n_params * 2 <= 0.5 * gpu_bytes else "fsdp"


FSDP_MIN_TORCH = (2, 10)
"""fully_shard takes frozen bf16 and trainable fp32 (LoRA master) weights in one unit from here on
(torch 2.7 asserts that a unit's weights share one dtype)."""


def fsdp_problem() -> str | None:
    """Why this torch cannot shard the trainer's model with FSDP (one line), or None."""
    import torch

    version = tuple(int(part) for part in re.findall(r"\d+", torch.__version__)[:2])
    if version < FSDP_MIN_TORCH:
        return (f"FSDP needs torch ≥ {'.'.join(map(str, FSDP_MIN_TORCH))} here (bf16 base and fp32 LoRA weights "
                f"in one shard group); this is torch {torch.__version__}")
    return None


def pick_strategy(base: str, device: str) -> str:
    """The strategy of a run on several ranks: LORASTUDIO_DIST_STRATEGY if set, else `choose_strategy`
    from the base's config and this GPU's memory ("ddp" on the CPU, if the config is unreadable, or if
    this torch cannot shard the model)."""
    from lorastudio.train.config import ConfigError

    forced = os.environ.get(STRATEGY_ENV, "").strip().lower()
    if forced:
        if forced not in ("ddp", "fsdp"):
            raise ConfigError(f"{STRATEGY_ENV}={forced!r}: use ddp (replicate the base) or fsdp (shard it)")
        problem = fsdp_problem() if forced == "fsdp" else None
        if problem:
            raise ConfigError(f"{STRATEGY_ENV}=fsdp: {problem}")
        return forced
    if device != "cuda":
        return "ddp"
    try:
        import torch

        shape = ModelShape.of(base)
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    except Exception:  # the loader reports a bad model itself
        return "ddp"
    strategy = choose_strategy(shape, total)
    return "ddp" if strategy == "fsdp" and fsdp_problem() else strategy


def init(backend: str | None = None) -> tuple[int, int, int]:
    """Join the process group (NCCL, or gloo on the CPU); returns (rank, world_size, local_rank) and,
    with NCCL, selects this rank's GPU. A rank whose torchrun dies gets SIGTERM (Linux)."""
    import signal

    import torch
    import torch.distributed as dist

    backend = backend or backend_name()
    local = int(os.environ.get("LOCAL_RANK", 0))
    if not dist.is_initialized():
        _parent_death_signal(signal.SIGTERM)
        if backend == "nccl":
            torch.cuda.set_device(local)
            dist.init_process_group("nccl", device_id=torch.device("cuda", local))
        else:
            dist.init_process_group(backend)
    elif backend == "nccl":
        torch.cuda.set_device(local)
    return dist.get_rank(), dist.get_world_size(), local


def my_share(items: list[Any], rank: int, world: int) -> list[Any]:
    """Items rank, rank + world, …: this rank's micro-batches of one optimizer step (any count; a rank
    may get none — it still joins the step's all-reduce)."""
    return items[rank::world]


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


def allreduce_step(params: list[Any], scalars: list[float]) -> list[float]:
    """One optimizer step's collective: SUM the gradients of `params` over all ranks (in place) and the
    `scalars` (e.g. loss sum, tokens, stop request): one flat all-reduce of the gradients and one of the
    scalars; returns the summed scalars.

    Every rank must call it with the same params in the same order. A param without a gradient on this
    rank contributes zeros (and then holds the others' sum), so the buffers match on every rank.
    """
    import torch
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [float(v) for v in scalars]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p, dtype=p.dtype)
    grads = [p.grad for p in params]
    device = grads[0].device if grads else ("cuda" if backend_name() == "nccl" else "cpu")
    by_dtype: dict[Any, list[Any]] = {}
    for g in grads:
        by_dtype.setdefault(g.dtype, []).append(g)
    for same in by_dtype.values():  # one buffer: the LoRA masters are all fp32
        flat = torch._utils._flatten_dense_tensors(same)
        dist.all_reduce(flat)
        for g, synced in zip(same, torch._utils._unflatten_dense_tensors(flat, same), strict=True):
            g.copy_(synced)
    extra = torch.tensor([float(v) for v in scalars], dtype=torch.float64, device=device)
    dist.all_reduce(extra)  # a few numbers, exact in float64
    return [float(v) for v in extra.tolist()]


def allreduce_sum(value: float) -> float:
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64,
                     device="cuda" if backend_name() == "nccl" and torch.cuda.is_available() else "cpu")
    dist.all_reduce(t)
    return float(t.item())


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def apply_fsdp(model: Any) -> Any:
    """Shard a (PEFT-wrapped) decoder-only model in place: one FSDP unit per decoder layer, and the
    backbone (embeddings, final norm) as the root, since the loss functions call the backbone, not the
    model. An untied LM head stays replicated (frozen: no gradient to reduce); a tied one keeps
    referring to the full embedding matrix."""
    from torch.distributed.fsdp import fully_shard

    from lorastudio.train.gpu import causal_lm_parts

    backbone, _ = causal_lm_parts(model)
    for layer in backbone.layers:
        fully_shard(layer)
    fully_shard(backbone)
    return model


def _full(value: Any) -> Any:
    """A DTensor's full value (an all-gather: every rank calls it in the same order) as a CPU tensor;
    anything else unchanged."""
    from torch.distributed.tensor import DTensor

    if isinstance(value, DTensor):
        return value.detach().full_tensor().cpu()
    return value


def full_state(model: Any) -> dict[str, Any]:
    """The trainable (LoRA) parameters by name, full and on the CPU, gathered from their shards.
    Every rank must call it."""
    return {name: _full(p) for name, p in model.named_parameters() if p.requires_grad}


def full_optimizer_state(optimizer: Any) -> dict[str, Any]:
    """`optimizer.state_dict()` with every sharded state tensor gathered: the single-process format.
    Every rank must call it."""
    state = optimizer.state_dict()
    state["state"] = {index: {key: _full(value) for key, value in values.items()}
                      for index, values in sorted(state["state"].items())}
    return state


def _shard_like(tensor: Any, param: Any) -> Any:
    """`tensor` (full) split like the sharded `param` (a collective: every rank calls it alike)."""
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(tensor.to(param.device, param.dtype), param.device_mesh, param.placements)


def shard_adapter_weights(weights: dict[str, Any], params: list[Any]) -> dict[str, Any]:
    """Full LoRA weights (as saved in an adapter) split like the sharded LoRA `params` (all fully_shard's
    dim-0 shards on one mesh), ready for `set_peft_model_state_dict`."""
    like = params[0]
    return {name: _shard_like(t, like) for name, t in sorted(weights.items())}


def load_full_optimizer_state(optimizer: Any, state: dict[str, Any]) -> None:
    """Load a single-process optimizer state (`full_optimizer_state`'s format) into an optimizer of
    sharded parameters. Every rank must call it."""
    from torch.distributed.tensor import DTensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    sharded = {}
    for index, values in sorted(state["state"].items()):
        param = params[index]
        sharded[index] = {key: _shard_like(value, param)
                          if isinstance(param, DTensor) and getattr(value, "shape", None) == param.shape
                          else value for key, value in values.items()}
    optimizer.load_state_dict({**state, "state": sharded})


def cleanup() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
