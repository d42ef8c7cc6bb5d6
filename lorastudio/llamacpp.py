"""llama.cpp on the CPU: a GGUF model loaded once, GGUF LoRA adapters switched per request.

```python
from lorastudio.llamacpp import LlamaCppModel, adapter_gguf, available
model = LlamaCppModel(resolve_default_gguf())                 # the default model's own Q4_K_M file
lora = model.load_lora(adapter_gguf("runs/faq"))               # PEFT → GGUF LoRA, converted once, cached
for token_id in model.generate(prompt_ids, lora=lora, max_new_tokens=64, stop_ids={151645}):
    ...
model.greedy(prompt_ids, 16)                                   # first 16 greedy ids (export checks)
```

This module knows token ids only: rendering the prompt and decoding the answer stay with the caller
(`lorastudio.inference.ChatEngine` uses the trainer's `render_prompt` and the model's Hugging Face
tokenizer for both engines, so llama.cpp receives exactly the token ids transformers would).

- `LlamaCppModel` drives llama.cpp's C API through the ctypes module of `llama-cpp-python` (built
  from source at install). One context with one KV cache for up to `n_seq_max` sequences: `generate`
  streams one answer and keeps its tokens cached, so the next prompt's longest common prefix under
  the same adapter (the chat template's system prompt) is not evaluated again; `generate_many` decodes
  several prompts together (one token of each per step). The cache is cleared whenever the adapter
  changes, because a LoRA on any layer changes the keys and values after it. Not thread-safe: the
  caller serialises calls (ChatEngine holds its lock).
- Adapters: `llama_adapter_lora_init` once per file (kept until `unload_lora`), activated per call
  with `llama_set_adapters_lora` (none → the base model). The base weights are never modified.
- Sampling: temperature 0 → greedy; otherwise temperature, then top-p, then a draw seeded by `seed`
  (random when None): the order transformers applies them in.
- `convert_lora(adapter_dir, out)`: a PEFT LoRA (safetensors) → GGUF LoRA (`general.type=adapter`,
  `adapter.type=lora`, `adapter.lora.alpha`, tensors `blk.N.ffn_gate.weight.lora_a` / `.lora_b`,
  float32), written with the `gguf` package's writer. `adapter_gguf(adapter_dir)` caches the result
  under `$LORASTUDIO_HOME/lora-gguf/<sha256 of the adapter's files>.gguf`, so a retrained adapter gets
  a new file and the adapter directory itself is never written to (it may be read-only).
- `quantize_gguf(src, dst, "q4_K_M")`: llama.cpp's own quantizer, for exports.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import math
import os
import re
import secrets
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

# Bump when the converter's output changes: cached GGUF LoRA files of older versions are not reused.
CONVERTER_VERSION = "1"
DEFAULT_CONTEXT = 8192  # tokens of KV cache (≈ 100 MB for the default model); LORASTUDIO_LLAMACPP_CTX


class LlamaCppError(RuntimeError):
    """llama.cpp is not installed, or could not load a model file."""


class LoraConversionError(ValueError):
    """A PEFT adapter cannot be written as (or loaded from) a GGUF LoRA; the message says why."""


def available() -> bool:
    """True when the `llama-cpp-python` binding is installed (checked without importing it)."""
    return importlib.util.find_spec("llama_cpp") is not None


def install_hint() -> str:
    return "install it with `pip install 'lorastudio[llamacpp]'` (builds llama.cpp, about 6 minutes)"


# llama.cpp's CPU backend synchronises its threads with OpenMP barriers after every operation
# (hundreds per token). libgomp's default waiting spins for ~300k iterations, which on a CPU shared
# with other work keeps a core busy while the thread being waited for is descheduled: measured on the
# 2-core machine under load ≈ 10, 0.2–0.4 tok/s with 2 threads by default against 5.6–8.3 with a short
# spin (GOMP_SPINCOUNT=1000) or OMP_WAIT_POLICY=PASSIVE. libgomp reads these once, when it is loaded,
# and torch ships a libgomp of the same soname: so the setting applies only if the binding is loaded
# before torch (ChatEngine's llama.cpp path does so) and the user has chosen neither variable. The
# variable is removed again afterwards, so child processes (training) keep libgomp's defaults.
SPIN_DEFAULT = "1000"
omp_wait = "not loaded"  # how llama.cpp's threads wait: for engine_reason / benchmarks


def _libgomp_loaded() -> bool:
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
            return "libgomp" in fh.read()
    except OSError:
        return False


def _lib() -> Any:
    """The low-level ctypes module of the binding."""
    global omp_wait
    if "llama_cpp.llama_cpp" in sys.modules:  # loaded already (a failed load leaves no entry)
        from llama_cpp import llama_cpp as lib

        return lib
    ours = "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ
    if not ours:
        omp_wait = ", ".join(f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ)
    elif _libgomp_loaded():
        ours = False
        omp_wait = "libgomp's default spinning (torch was loaded first)"
    else:
        os.environ["GOMP_SPINCOUNT"] = SPIN_DEFAULT
        omp_wait = f"GOMP_SPINCOUNT={SPIN_DEFAULT}"
    try:
        from llama_cpp import llama_cpp as lib
    except ImportError as exc:
        omp_wait = "not loaded"
        raise LlamaCppError(f"llama-cpp-python is not installed ({exc}); {install_hint()}") from None
    except (OSError, RuntimeError) as exc:  # the binding is there, its shared library does not load
        omp_wait = "not loaded"
        raise LlamaCppError(f"llama-cpp-python is installed but its library does not load ({exc}); "
                            f"reinstall it: {install_hint()}") from None
    finally:
        if ours:
            os.environ.pop("GOMP_SPINCOUNT", None)
    return lib


def load_library() -> str:
    """Load llama.cpp's library now and say how its threads wait (`omp_wait`), or raise
    `LlamaCppError` saying why it cannot be loaded and how to install it.

    Call it before anything imports torch: only then do llama.cpp's threads get the short OpenMP spin
    that keeps them fast on a shared CPU (see above); afterwards the load is a no-op."""
    if not available():
        raise LlamaCppError(f"llama-cpp-python is not installed; {install_hint()}")
    _lib()
    return omp_wait


def preload() -> str:
    """`load_library` for long-lived processes that import torch later (the server: a chat engine is
    made on first use), without the error: returns how llama.cpp's threads wait ("not loaded" when
    the binding is missing or does not load)."""
    try:
        return load_library()
    except LlamaCppError:
        return omp_wait


# --------------------------------------------------------------------------------------------
# GGUF metadata


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
            12: "<d"}


def gguf_metadata(path: str | os.PathLike, wanted: Iterable[str] | None = None) -> dict[str, Any]:
    """The scalar and string key-value fields of a GGUF file's header (arrays are skipped).

    Read straight from the file (the `gguf` package's reader decodes the whole 150k-token vocabulary
    in Python first, minutes on a busy CPU). With `wanted`, reading stops once those keys are found.
    """
    import mmap
    import struct

    want = set(wanted) if wanted is not None else None
    out: dict[str, Any] = {}
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise LlamaCppError(f"{path}: not a GGUF file")
        version = struct.unpack_from("<I", buf, 4)[0]
        if version < 2:
            raise LlamaCppError(f"{path}: GGUF version {version} is too old")
        _tensors, n_kv = struct.unpack_from("<QQ", buf, 8)
        pos = 24

        def string(at: int) -> tuple[str, int]:
            n = struct.unpack_from("<Q", buf, at)[0]
            return buf[at + 8: at + 8 + n].decode("utf-8", errors="replace"), at + 8 + n

        def skip(kind: int, at: int) -> int:
            if kind in _SCALARS:
                return at + struct.calcsize(_SCALARS[kind])
            if kind == 8:
                return at + 8 + struct.unpack_from("<Q", buf, at)[0]
            if kind == 9:
                inner, count = struct.unpack_from("<IQ", buf, at)
                at += 12
                if inner in _SCALARS:
                    return at + count * struct.calcsize(_SCALARS[inner])
                for _ in range(count):
                    at = skip(inner, at)
                return at
            raise LlamaCppError(f"{path}: unknown GGUF value type {kind}")

        for _ in range(n_kv):
            key, pos = string(pos)
            kind = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
            if kind in _SCALARS:
                out[key] = struct.unpack_from(_SCALARS[kind], buf, pos)[0]
            elif kind == 8:
                out[key], _ = string(pos)
            pos = skip(kind, pos)
            if want is not None and want <= out.keys():
                break
            if want is not None and key == "general.architecture":
                want = {k.replace("{arch}", out[key]) for k in want}
    return out


def gguf_architecture(path: str | os.PathLike) -> str:
    arch = gguf_metadata(path, ["general.architecture"]).get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise LlamaCppError(f"{path}: not a GGUF model (no general.architecture)")
    return arch


# --------------------------------------------------------------------------------------------
# PEFT LoRA → GGUF LoRA


_PEFT_PREFIX = "base_model.model."
_SUFFIXES = {".lora_A.weight": "lora_a", ".lora_B.weight": "lora_b"}


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank_pattern/alpha_pattern lookup: a key matches a module name ending in it."""
    for key, value in (patterns or {}).items():
        if re.fullmatch(rf"(.*\.)?{key}", module):
            return value
    return default


def _read_peft(adapter_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    cfg_path = adapter_dir / "adapter_config.json"
    weights = adapter_dir / "adapter_model.safetensors"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LoraConversionError(f"{cfg_path}: unreadable adapter_config.json ({exc})") from None
    if not weights.is_file():
        raise LoraConversionError(f"{adapter_dir}: no adapter_model.safetensors (llama.cpp needs safetensors "
                                  "adapters; a pickle .bin is not converted)")
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise LoraConversionError(f"{cfg_path}: peft_type {cfg.get('peft_type')!r} is not LoRA")
    unsupported = [name for name, bad in (
        ("use_dora", cfg.get("use_dora")),
        ("fan_in_fan_out", cfg.get("fan_in_fan_out")),
        ("lora_bias", cfg.get("lora_bias")),
        ("bias", cfg.get("bias", "none") not in (None, "none")),
        ("modules_to_save", cfg.get("modules_to_save")),
    ) if bad]
    if unsupported:
        raise LoraConversionError(f"{adapter_dir}: llama.cpp's LoRA cannot represent {', '.join(unsupported)}; "
                                  "use the transformers engine (LORASTUDIO_ENGINE=transformers)")
    from safetensors import safe_open

    tensors: dict[str, Any] = {}
    with safe_open(str(weights), framework="pt") as fh:
        for key in fh.keys():
            tensors[key] = fh.get_tensor(key).float().numpy()
    return cfg, tensors


def convert_lora(adapter_dir: str | os.PathLike, out_path: str | os.PathLike, *, arch: str = "qwen2") -> Path:
    """Write the PEFT LoRA in `adapter_dir` as a GGUF LoRA file llama.cpp loads on a base of `arch`.

    PEFT computes W x + s·B(A x) with s = alpha/r (alpha/√r with rsLoRA); llama.cpp computes
    W x + (alpha/rank)·B(A x), rank read from B. With one rank and one alpha (our trainer's
    adapters) alpha is written as is (×√r for rsLoRA); with per-module ranks/alphas each B is
    pre-multiplied by its own s and alpha is written as 0, which llama.cpp takes as scale 1.
    """
    import gguf
    import numpy as np

    src = Path(adapter_dir)
    cfg, tensors = _read_peft(src)
    try:
        arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    except StopIteration:
        raise LoraConversionError(f"GGUF has no architecture named {arch!r}") from None

    pairs: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        name = key[len(_PEFT_PREFIX):] if key.startswith(_PEFT_PREFIX) else key
        for suffix, part in _SUFFIXES.items():
            if name.endswith(suffix):
                pairs.setdefault(name[: -len(suffix)], {})[part] = value
                break
        else:
            raise LoraConversionError(f"{src}: tensor {key!r} is not a LoRA A/B matrix of a linear layer "
                                      "(embedding LoRA and extra trained modules are not supported by llama.cpp)")
    if not pairs:
        raise LoraConversionError(f"{src}: the adapter holds no LoRA tensors")
    layers = [int(m.group(1)) for m in (re.search(r"\.layers\.(\d+)\.", n) for n in pairs) if m]
    name_map = gguf.get_tensor_name_map(arch_id, (max(layers) + 1) if layers else 1)

    r0 = int(cfg.get("r", 8))
    alpha0 = float(cfg.get("lora_alpha", r0))
    rslora = bool(cfg.get("use_rslora"))
    ranks: set[int] = set()
    scales: set[float] = set()
    out: list[tuple[str, Any, Any, float]] = []
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"lora_a", "lora_b"}:
            raise LoraConversionError(f"{src}: {module} has only {', '.join(ab)}")
        a, b = ab["lora_a"], ab["lora_b"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise LoraConversionError(f"{src}: {module}: LoRA shapes {a.shape} / {b.shape} do not pair up")
        gguf_name = name_map.get_name(module + ".weight", try_suffixes=(".weight",))
        if gguf_name is None:
            raise LoraConversionError(f"{src}: no llama.cpp tensor for {module!r} in architecture {arch!r}")
        rank = int(a.shape[0])
        alpha = float(_pattern_value(cfg.get("alpha_pattern"), module, alpha0))
        scale = alpha / (math.sqrt(rank) if rslora else rank)
        ranks.add(rank)
        scales.add(scale)
        out.append((gguf_name, a, b, scale))

    uniform = len(ranks) == 1 and len(scales) == 1
    rank = next(iter(ranks))
    gguf_alpha = next(iter(scales)) * rank if uniform else 0.0

    dest = Path(out_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.part-{os.getpid()}-{threading.get_ident()}")
    try:
        writer = gguf.GGUFWriter(str(tmp), arch)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(gguf_alpha))
        writer.add_name(src.resolve().name)
        writer.add_string("lorastudio.converter_version", CONVERTER_VERSION)
        for gguf_name, a, b, scale in out:
            # numpy [r, in] / [out, r] are ggml ne [in, r] / [r, out]: what llama.cpp expects.
            writer.add_tensor(f"{gguf_name}.lora_a", np.ascontiguousarray(a, dtype=np.float32))
            bb = b if uniform else b * scale
            writer.add_tensor(f"{gguf_name}.lora_b", np.ascontiguousarray(bb, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _digest(adapter_dir: Path, arch: str) -> str:
    h = hashlib.sha256(f"lorastudio-lora-gguf/{CONVERTER_VERSION}/{arch}\n".encode())
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        with open(adapter_dir / name, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def lora_cache_dir() -> Path:
    from lorastudio.models import lorastudio_home

    return lorastudio_home() / "lora-gguf"


def adapter_gguf(adapter_dir: str | os.PathLike, *, arch: str = "qwen2") -> Path:
    """The GGUF LoRA of a PEFT adapter directory, converted on first use and cached by content.

    `$LORASTUDIO_HOME/lora-gguf/<sha256>.gguf`, the hash over the adapter's config and weights (and
    the converter version), so retraining into the same directory converts again and two directories
    with the same adapter share one file. Concurrent callers may both convert; each writes its own
    temporary file and the rename is atomic.
    """
    src = Path(adapter_dir).expanduser().resolve()
    if not (src / "adapter_model.safetensors").is_file():
        raise LoraConversionError(f"{src}: no adapter_model.safetensors")
    dest = lora_cache_dir() / f"{_digest(src, arch)[:32]}.gguf"
    if dest.is_file():
        return dest
    return convert_lora(src, dest, arch=arch)


# --------------------------------------------------------------------------------------------
# the model


def extra_buffer_types(flags: set[str] | None = None) -> bool:
    """Whether llama.cpp may use its extra CPU buffer types (weights repacked for the CPU's kernels, AMX).

    Not on a CPU with AMX: llama-cpp-python 0.3.36's AMX matmul dies with SIGILL (a `tilezero` in an OpenMP
    worker whose tile configuration was never loaded) on the first batch of more than one token, i.e. every
    prompt; seen on 2 cores of an Intel Xeon with AMX (session 12), in a process that had been granted the AMX
    state. Without them the same machine answers at ≈ 26 tok/s. `LORASTUDIO_LLAMACPP_EXTRA_BUFTS=1` / `=0`
    forces the choice."""
    env = os.environ.get("LORASTUDIO_LLAMACPP_EXTRA_BUFTS", "")
    if env in ("0", "1"):
        return env == "1"
    if flags is None:
        from lorastudio.hardware import machine_flags

        flags = machine_flags()  # the crash is the hardware's, whatever class the trainer is told to take
    return "amx_tile" not in flags


def _threads() -> int:
    env = os.environ.get("LORASTUDIO_LLAMACPP_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    from lorastudio.hardware import physical_cores

    return physical_cores()


_backend_lock = threading.Lock()
_backend_ready = False


_log_state = {"verbose": False, "last": 0}
_log_callback: Any = None  # kept referenced: llama.cpp calls it for the life of the process


def _install_log(lib: Any) -> None:
    """llama.cpp's log lines go to stderr only when verbose, or when they are errors (the binding's
    own filter maps this llama.cpp's levels off by one and prints every warning)."""
    global _log_callback

    def forward(level: int, text: bytes, _user: Any) -> None:
        if level != 5:  # 5 = continuation of the previous line
            _log_state["last"] = level
        if _log_state["verbose"] or _log_state["last"] == 4:  # 4 = GGML_LOG_LEVEL_ERROR
            sys.stderr.write(text.decode("utf-8", errors="replace"))

    _log_callback = lib.llama_log_callback(forward)
    lib.llama_log_set(_log_callback, ctypes.c_void_p(0))


def _init_backend(lib: Any, verbose: bool) -> None:
    global _backend_ready
    _log_state["verbose"] = verbose
    with _backend_lock:
        if not _backend_ready:
            _install_log(lib)
            lib.llama_backend_init()
            _backend_ready = True


class LlamaCppModel:
    """One GGUF model and one llama.cpp context (see the module docstring); llama.cpp's C API
    through the binding's ctypes module.

    The context holds `n_seq_max` sequences in one KV cache: `generate` streams one answer on
    sequence 0 (keeping its prompt cached for the next call), `generate_many` decodes several prompts
    together, one token of each per step, which is what makes a batch cheaper than one by one on a CPU.
    """

    def __init__(self, gguf_path: str | os.PathLike, *, n_ctx: int | None = None, n_threads: int | None = None,
                 n_seq_max: int = 8, verbose: bool = False):
        lib = _lib()
        _init_backend(lib, verbose)
        self._lib = lib
        self._model = self._ctx = self._batch = None
        self._loras: dict[Path, Any] = {}  # GGUF LoRA path → llama_adapter_lora pointer
        self._active: tuple[Path, float] | None = None  # the adapter on the context and its scale
        self._cache: list[int] = []  # tokens of sequence 0 whose keys/values are in the cache
        self.path = Path(gguf_path)
        if not self.path.is_file():
            raise LlamaCppError(f"{self.path}: no such GGUF file")
        meta = gguf_metadata(self.path, ["general.architecture", "{arch}.context_length"])
        self.arch = str(meta.get("general.architecture", ""))
        trained = meta.get(f"{self.arch}.context_length")
        env = os.environ.get("LORASTUDIO_LLAMACPP_CTX", "")
        want = n_ctx or (int(env) if env.isdigit() and int(env) > 0 else DEFAULT_CONTEXT)
        want = min(want, int(trained)) if isinstance(trained, int) and trained > 0 else want
        self.n_threads = n_threads or _threads()
        self.n_seq_max = max(1, min(n_seq_max, int(lib.llama_max_parallel_sequences())))

        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = 0
        if hasattr(mparams, "use_extra_bufts"):
            mparams.use_extra_bufts = extra_buffer_types()
        self._model = lib.llama_model_load_from_file(str(self.path).encode("utf-8"), mparams)
        if not self._model:
            raise LlamaCppError(f"llama.cpp could not load {self.path} (unsupported architecture or damaged file)")
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = want
        cparams.n_batch = cparams.n_ubatch = min(512, want)
        cparams.n_seq_max = self.n_seq_max
        cparams.kv_unified = True  # the sequences share the whole cache (a batch of short answers fits)
        cparams.n_threads = cparams.n_threads_batch = self.n_threads
        cparams.no_perf = True
        self._ctx = lib.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            self.close()
            raise LlamaCppError(f"llama.cpp could not create a context of {want} tokens for {self.path}")
        self.n_ctx = int(lib.llama_n_ctx(self._ctx))
        self.n_batch = int(lib.llama_n_batch(self._ctx))
        self._mem = lib.llama_get_memory(self._ctx)
        self._vocab = lib.llama_model_get_vocab(self._model)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self._vocab))
        self._batch = lib.llama_batch_init(self.n_batch, 0, self.n_seq_max)

    # -- tokens ---------------------------------------------------------------------------------

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """llama.cpp's own tokenizer (no BOS added): to check that a GGUF tokenizes like transformers."""
        lib = self._lib
        data = text.encode("utf-8")
        size = len(data) + 8
        buf = (lib.llama_token * size)()
        n = lib.llama_tokenize(self._vocab, data, len(data), buf, size, False, special)
        if n < 0:
            size = -n
            buf = (lib.llama_token * size)()
            n = lib.llama_tokenize(self._vocab, data, len(data), buf, size, False, special)
        return list(buf[:n])

    def detokenize(self, ids: Sequence[int]) -> str:
        lib = self._lib
        out = bytearray()
        buf = ctypes.create_string_buffer(256)
        for t in ids:
            n = lib.llama_token_to_piece(self._vocab, int(t), buf, len(buf), 0, True)
            out += buf.raw[:max(0, n)]
        return out.decode("utf-8", errors="replace")

    def eos_token_id(self) -> int:
        return int(self._lib.llama_vocab_eos(self._vocab))

    # -- adapters -------------------------------------------------------------------------------

    def load_lora(self, gguf_lora: str | os.PathLike) -> Path:
        """Load a GGUF LoRA for this model (once per file); returns the key to pass as `lora=`."""
        path = Path(gguf_lora).resolve()
        if path in self._loras:
            return path
        ptr = self._lib.llama_adapter_lora_init(self._model, str(path).encode("utf-8"))
        if not ptr:
            raise LoraConversionError(f"llama.cpp could not load the LoRA {path} on {self.path.name} "
                                      "(most likely it was trained on another base model)")
        self._loras[path] = ptr
        return path

    def unload_lora(self, gguf_lora: str | os.PathLike) -> bool:
        path = Path(gguf_lora).resolve()
        ptr = self._loras.pop(path, None)
        if ptr is None:
            return False
        if self._active is not None and self._active[0] == path:
            self._set_lora(None)
        self._lib.llama_adapter_lora_free(ptr)
        return True

    def loaded_loras(self) -> list[Path]:
        return list(self._loras)

    def _set_lora(self, lora: Path | None, scale: float = 1.0) -> None:
        active = (lora, float(scale)) if lora is not None else None
        if active == self._active:
            return
        lib = self._lib
        if lora is None:
            rc = lib.llama_set_adapters_lora(self._ctx, None, 0, None)
        else:
            arr = (lib.llama_adapter_lora_p_ctypes * 1)(self._loras[lora])
            scales = (ctypes.c_float * 1)(float(scale))
            rc = lib.llama_set_adapters_lora(self._ctx, arr, 1, scales)
        if rc != 0:
            raise LlamaCppError(f"llama.cpp refused to switch adapters (code {rc})")
        self._active = active
        self._forget()  # keys/values computed under another adapter are wrong for this one

    # -- decoding -------------------------------------------------------------------------------

    def _forget(self) -> None:
        self._lib.llama_memory_clear(self._mem, True)
        self._cache = []

    def _decode(self, entries: Sequence[tuple[int, int, int, bool]]) -> None:
        """One llama_decode of (token, position, sequence, wants logits) entries."""
        b = self._batch
        for i, (token, pos, seq, logits) in enumerate(entries):
            b.token[i] = token
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = logits
        b.n_tokens = len(entries)
        rc = self._lib.llama_decode(self._ctx, b)
        if rc != 0:
            self._forget()
            raise LlamaCppError(f"llama.cpp could not decode (code {rc}; 1 = the context is full)")

    def _prefill(self, seq: int, tokens: Sequence[int], start: int) -> None:
        """Evaluate `tokens` at positions start… of `seq`; logits for the last one only."""
        for i in range(0, len(tokens), self.n_batch):
            chunk = tokens[i:i + self.n_batch]
            last = i + len(chunk) == len(tokens)
            self._decode([(t, start + i + j, seq, last and j == len(chunk) - 1) for j, t in enumerate(chunk)])

    def _sampler(self, temperature: float, top_p: float, seed: int | None) -> Any:
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if temperature <= 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
            return chain
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(float(temperature)))
        if top_p < 1.0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(float(top_p), 1))
        draw_seed = secrets.randbits(32) if seed is None else int(seed) & 0xFFFFFFFF
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(draw_seed))
        return chain

    def _check(self, prompt_ids: Sequence[int], max_new_tokens: int) -> None:
        if not prompt_ids:
            raise ValueError("empty prompt")
        if len(prompt_ids) + max_new_tokens > self.n_ctx:
            raise ValueError(f"prompt ({len(prompt_ids)}) + max_new_tokens ({max_new_tokens}) exceed the "
                             f"context of {self.n_ctx} tokens")

    def generate(self, prompt_ids: Sequence[int], *, lora: str | os.PathLike | None = None, lora_scale: float = 1.0,
                 max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = None, stop_ids: Iterable[int] = (),
                 cancel: threading.Event | None = None) -> Iterator[int]:
        """Yield generated token ids; a stop id is yielded too, and ends the generation.

        `lora`: a GGUF LoRA path (loaded on first use) or None for the base model, applied at `lora_scale`. The prompt's
        longest common prefix with the previous call's tokens (same adapter) is not evaluated again.
        """
        prompt = [int(t) for t in prompt_ids]
        self._check(prompt, max_new_tokens)
        self._set_lora(self.load_lora(lora) if lora is not None else None, lora_scale)
        stops = set(stop_ids)
        lib = self._lib
        keep = 0
        limit = min(len(self._cache), len(prompt) - 1)  # one token at least is evaluated: its logits are needed
        while keep < limit and self._cache[keep] == prompt[keep]:
            keep += 1
        lib.llama_memory_seq_rm(self._mem, -1, keep, -1)
        self._cache = prompt[:keep]
        chain = self._sampler(temperature, top_p, seed)
        try:
            self._prefill(0, prompt[keep:], keep)
            self._cache = prompt
            for _ in range(max_new_tokens):
                if cancel is not None and cancel.is_set():
                    return
                token = int(lib.llama_sampler_sample(chain, self._ctx, -1))
                yield token
                if token in stops:
                    return
                self._decode([(token, len(self._cache), 0, True)])
                self._cache = self._cache + [token]
        finally:
            lib.llama_sampler_free(chain)

    def generate_many(self, prompts: Sequence[Sequence[int]], *, lora: str | os.PathLike | None = None,
                      lora_scale: float = 1.0, max_new_tokens: int | Sequence[int] = 256, temperature: float = 0.0, top_p: float = 1.0,
                      seed: int | None = None, stop_ids: Iterable[int] = (),
                      parallel: int | None = None) -> list[list[int]]:
        """The generated ids of each prompt (stop id included), in order.

        Continuous batching: up to `parallel` (≤ `n_seq_max`) sequences decode together, one token each per step;
        when one ends, the next prompt takes its place, so the batch stays full. Each prompt has its
        own sampler seeded with `seed`, so an answer does not depend on the prompts beside it.
        """
        from collections import deque

        prompts = [[int(t) for t in p] for p in prompts]
        budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        for p, n in zip(prompts, budgets, strict=True):
            self._check(p, n)
        self._set_lora(self.load_lora(lora) if lora is not None else None, lora_scale)
        lib = self._lib
        stops = set(stop_ids)
        outs: list[list[int]] = [[] for _ in prompts]
        pending = deque(range(len(prompts)))
        width = min(self.n_seq_max, parallel or self.n_seq_max)
        free = list(range(width - 1, -1, -1))
        slot: dict[int, int] = {}  # sequence → prompt index
        chains: dict[int, Any] = {}
        nxt: dict[int, int] = {}  # sequence → its sampled, not yet evaluated token
        reserved = 0  # cache cells the running sequences may fill

        def need(i: int) -> int:
            return len(prompts[i]) + budgets[i]

        self._forget()
        try:
            while pending or nxt:
                while pending and free and reserved + need(pending[0]) <= self.n_ctx:
                    i, s = pending.popleft(), free.pop()
                    slot[s], reserved = i, reserved + need(i)
                    chains[s] = self._sampler(temperature, top_p, seed)
                    self._prefill(s, prompts[i], 0)
                    nxt[s] = int(lib.llama_sampler_sample(chains[s], self._ctx, -1))
                entries = []
                for s, token in list(nxt.items()):
                    i = slot[s]
                    outs[i].append(token)
                    if token in stops or len(outs[i]) >= budgets[i]:
                        del nxt[s], slot[s]
                        lib.llama_sampler_free(chains.pop(s))
                        lib.llama_memory_seq_rm(self._mem, s, -1, -1)
                        free.append(s)
                        reserved -= need(i)
                    else:
                        entries.append((token, len(prompts[i]) + len(outs[i]) - 1, s, True))
                if entries:
                    self._decode(entries)
                    for j, (_, _, s, _) in enumerate(entries):
                        nxt[s] = int(lib.llama_sampler_sample(chains[s], self._ctx, j))
        finally:
            for chain in chains.values():
                lib.llama_sampler_free(chain)
            self._forget()
        return outs

    def greedy(self, prompt_ids: Sequence[int], n: int, *, lora: str | os.PathLike | None = None,
               stop_ids: Iterable[int] = ()) -> list[int]:
        """The first `n` greedy token ids (fewer if a stop id comes first, which is included)."""
        return list(self.generate(prompt_ids, lora=lora, max_new_tokens=n, stop_ids=stop_ids))

    def close(self) -> None:
        lib = getattr(self, "_lib", None)
        if lib is None:
            return
        for ptr in getattr(self, "_loras", {}).values():
            lib.llama_adapter_lora_free(ptr)
        self._loras = {}
        if self._batch is not None:
            lib.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            lib.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            lib.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may be gone already
            pass


# --------------------------------------------------------------------------------------------
# quantization (for exports)

QUANT_TYPES = {"q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
               "q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K", "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0"}


def quantize_gguf(src: str | os.PathLike, dst: str | os.PathLike, qtype: str = "q4_K_M", *,
                  n_threads: int | None = None) -> Path:
    """Quantize an f16/f32 GGUF with llama.cpp's own quantizer (what `llama-quantize` does)."""
    if qtype not in QUANT_TYPES:
        raise ValueError(f"quantization {qtype!r} is not supported: use one of {', '.join(QUANT_TYPES)}")
    lib = _lib()
    dest = Path(dst)
    tmp = dest.with_name(f"{dest.name}.part-{os.getpid()}")
    params = lib.llama_model_quantize_default_params()
    params.ftype = getattr(lib, QUANT_TYPES[qtype])
    params.nthread = n_threads or _threads()
    try:
        rc = lib.llama_model_quantize(str(src).encode("utf-8"), str(tmp).encode("utf-8"), ctypes.byref(params))
        if rc != 0:
            raise LlamaCppError(f"llama.cpp could not quantize {src} to {qtype} (code {rc})")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest
