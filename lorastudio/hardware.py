"""What this machine's CPU is: the one core count and the one CPU class used everywhere.

A leaf module (standard library only, nothing from lorastudio; torch is imported only inside
`matmul_gflops`, when it runs): the recommender's time estimate, the CPU fast path's thread count and the
trainer's calibration all ask here, so they cannot disagree.

- `physical_cores()`: physical cores among the CPUs this process may run on (its affinity mask, so a
  container limited to 2 CPUs counts 2), hyper-thread siblings counted once (they slow GEMMs down).
- `cpu_class()`: which kind of CPU training the machine can do, from the x86 feature flags in
  /proc/cpuinfo; the recommender keeps a measured throughput per class:
  * ``"amx-bf16"``: AMX tiles with bf16 (`amx_bf16`, e.g. Xeon Sapphire Rapids and later): bf16 training
    on the matrix units, ~1.5× the AVX-512-bf16 figure on 2 cores (measured);
  * ``"avx512-bf16"``: AVX-512 with native bf16 (`avx512_bf16`) and no AMX (e.g. AMD Zen 4): bf16 training;
  * ``"avx512-fp32"``: AVX-512 without native bf16: fp32 training;
  * ``"avx2-fp32"``: AVX2 only (most laptops and desktops): fp32 training;
  * ``"other"``: anything else (no AVX2, another architecture, flags unreadable): not measured.
- `matmul_gflops()`: how fast this CPU runs the product that dominates a training step, timed here
  (a fraction of a second, at most every `PROBE_REFRESH_S`): CPUs of one class differ by 2× (an AMD Zen 5
  runs AVX-512 at full width, a Zen 4 in two halves), so the recommender scales its class figure by it.
  Other work on the same cores (a training job beside the studio's server) only ever slows the product
  down, so the answer is the best reading of the last `PROBE_KEEP_S`, not the latest.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

CPU_CLASSES: tuple[str, ...] = ("amx-bf16", "avx512-bf16", "avx512-fp32", "avx2-fp32", "other")
CPUINFO = Path("/proc/cpuinfo")
PROBE_ENV = "LORASTUDIO_CPU_PROBE"
FLAGS_ENV = "LORASTUDIO_CPU_FLAGS"
"""Feature flags to take instead of this CPU's ("fpu … avx2 fma"): its class, the training dtype, the int8 range and
the time estimate follow them. For measuring another class on this machine (bench/emulate_avx2.sh), with the
libraries' own kernels capped to match (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS, ...)."""
PROBE_SHAPE = (704, 896, 4864)
"""(rows, inputs, outputs) of the timed product: one default packed step (704 tokens) through the default
model's feed-forward up-projection (896 → 4864), the shape most of a step's arithmetic has."""
PROBE_REFRESH_S = 300.0
"""A reading younger than this is reused as it is (a server recommends often; the probe costs ~0.8 s)."""
PROBE_KEEP_S = 3600.0
"""Readings this recent count; `matmul_gflops` answers their best (busy cores read slow, never fast)."""
_clock = time.monotonic
_probe_lock = threading.Lock()
_probe_readings: dict[tuple, list[tuple[float, float]]] = {}  # key → [(monotonic time, GFLOP/s)]
_TOPOLOGY = "/sys/devices/system/cpu/cpu{cpu}/topology"


def allowed_cpus() -> list[int]:
    """The logical CPUs this process may run on (affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def physical_cores(cpus: Iterable[int] | None = None, topology: str = _TOPOLOGY) -> int:
    """Physical cores among `cpus` (default: the CPUs this process may use), siblings counted once.

    A CPU whose topology cannot be read counts as a core of its own (what a VM without the sysfs
    topology reports), so the result is never below 1 and never above the allowed CPUs.
    """
    cores: set[tuple[str, str]] = set()
    for cpu in allowed_cpus() if cpus is None else cpus:
        base = Path(topology.format(cpu=cpu))
        try:
            package = (base / "physical_package_id").read_text().strip()
            core = (base / "core_id").read_text().strip()
        except OSError:
            package, core = "?", f"cpu{cpu}"
        cores.add((package, core))
    return max(1, len(cores))


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The feature flags of the first CPU in /proc/cpuinfo text (read from the file when not given).

    x86 writes them on a `flags` line; other architectures (`Features` on ARM) name other things,
    which then give the class "other". Unreadable → empty set. Not given and `FLAGS_ENV` set: its flags
    instead, so that one machine can take the choices of another CPU class (`machine_flags` stays true).
    """
    if cpuinfo is None and os.environ.get(FLAGS_ENV, "").strip():
        return set(os.environ[FLAGS_ENV].split())
    return machine_flags(cpuinfo)


def machine_flags(cpuinfo: str | None = None) -> set[str]:
    """`cpu_flags` of the CPU itself, whatever `FLAGS_ENV` says (for what the hardware must have or lack)."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return set()


def cpu_class(flags: str | Iterable[str] | None = None) -> str:
    """``"amx-bf16"`` | ``"avx512-bf16"`` | ``"avx512-fp32"`` | ``"avx2-fp32"`` | ``"other"`` for this CPU.

    `flags`: a flag string ("fpu ... avx2 ..."), a whole /proc/cpuinfo text, an iterable of flags, or
    None to read this machine's /proc/cpuinfo.
    """
    if flags is None:
        found = cpu_flags()
    elif isinstance(flags, str):
        found = cpu_flags(flags) if ":" in flags else set(flags.split())
    else:
        found = set(flags)
    if "amx_bf16" in found:
        return "amx-bf16"
    if "avx512_bf16" in found:
        return "avx512-bf16"
    if "avx512f" in found:
        return "avx512-fp32"
    if "avx2" in found:
        return "avx2-fp32"
    return "other"


def bf16_native(klass: str) -> bool:
    """Whether a CPU of this class trains fastest in bf16 (native bf16 dot products)."""
    return klass in ("amx-bf16", "avx512-bf16")


def matmul_gflops(bf16: bool, threads: int, seconds: float = 0.3, warmup: float = 0.5) -> float | None:
    """GFLOP/s of `PROBE_SHAPE`'s product `x Wᵀ` (bf16 or fp32, as training would run it) on `threads`
    threads of this CPU: the median of the runs in about `seconds` (at least 5), after `warmup` seconds of
    the same product (an idle CPU reads up to 20 % slow for its first few tenths of a second while its
    clock ramps up; a training run is past that). None when torch is missing or the probe is switched off
    (`LORASTUDIO_CPU_PROBE=0`).

    Timed again when the last reading is older than `PROBE_REFRESH_S`; the answer is the best reading of
    the last `PROBE_KEEP_S`, so a reading taken while a training job shares the cores does not stretch
    the estimates made after it. One probe at a time (two at once would slow each other down)."""
    if os.environ.get(PROBE_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    key = (bool(bf16), max(1, int(threads)), float(seconds), float(warmup))
    with _probe_lock:
        now = _clock()
        readings = [r for r in _probe_readings.get(key, []) if now - r[0] < PROBE_KEEP_S]
        if not readings or now - readings[-1][0] >= PROBE_REFRESH_S:
            measured = _time_product(*key)
            if measured is None:
                return None
            readings.append((_clock(), measured))
        _probe_readings[key] = readings
        return max(gflops for _, gflops in readings)


def clear_probe_readings() -> None:
    """Forget every reading of `matmul_gflops` (the next call times the CPU again)."""
    with _probe_lock:
        _probe_readings.clear()


def _time_product(bf16: bool, threads: int, seconds: float, warmup: float) -> float | None:
    """One timing of `matmul_gflops`' product (None without torch); the thread count is restored."""
    try:
        import torch
    except ImportError:
        return None
    rows, inputs, outputs = PROBE_SHAPE
    dtype = torch.bfloat16 if bf16 else torch.float32
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(rows, inputs, generator=generator).to(dtype)
        weight = torch.randn(outputs, inputs, generator=generator).to(dtype)
        times: list[float] = []
        with torch.no_grad():
            stop = time.perf_counter() + warmup
            torch.nn.functional.linear(x, weight)
            while time.perf_counter() < stop:
                torch.nn.functional.linear(x, weight)
            stop = time.perf_counter() + seconds
            while len(times) < 5 or (time.perf_counter() < stop and len(times) < 200):
                start = time.perf_counter()
                torch.nn.functional.linear(x, weight)
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return 2.0 * rows * inputs * outputs / max(sorted(times)[len(times) // 2], 1e-9) / 1e9


__all__ = ["CPU_CLASSES", "FLAGS_ENV", "PROBE_ENV", "PROBE_SHAPE", "allowed_cpus", "bf16_native", "clear_probe_readings",
           "cpu_class", "cpu_flags", "machine_flags", "matmul_gflops", "physical_cores"]
