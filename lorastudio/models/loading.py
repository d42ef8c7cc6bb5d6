"""Turn any model id into a local directory, and load it (model + tokenizer) on the right device/dtype."""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path
from typing import Any

from lorastudio.models.cache import build_once, is_complete
from lorastudio.models.default import DEFAULT_NAME, dequantize_gguf, ensure_default
from lorastudio.models.errors import ModelError
from lorastudio.models.tiny import TINY_NAME, ensure_tiny

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(16 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_model(model_id: str) -> str:
    """A local directory that ``AutoModelForCausalLM.from_pretrained`` loads, materialising it if needed.

    ``default`` / ``tiny-random`` → the cache; a local HF directory → itself; a ``.gguf`` file →
    dequantized once into the cache (keyed by the file's sha256); ``owner/name`` → a hub download
    (safetensors only), which fails with a clear message offline.
    """
    if not model_id or not str(model_id).strip():
        raise ModelError("no model given: use `default`, `tiny-random`, a local model directory, a .gguf file or a hub id")
    model_id = str(model_id).strip()
    if model_id == "default":
        return str(ensure_default())
    if model_id == "tiny-random":
        return str(ensure_tiny())
    path = Path(model_id).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelError(f"{path}: no such GGUF file")
        key = f"gguf-{_file_sha256(path)[:16]}"
        return str(build_once(key, lambda out: dequantize_gguf(path.resolve(), out)))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: not a model directory (no config.json); point --base at a Hugging Face "
                             "model folder, a .gguf file, `default` or `tiny-random`")
        if not is_complete(path):
            raise ModelError(f"{path}: no *.safetensors weights found; LoRA Studio loads safetensors only "
                             "(convert .bin checkpoints with `transformers` first)")
        return str(path.resolve())
    if path.exists() or model_id.startswith((".", "/", "~")) or not _HUB_ID.match(model_id):
        raise ModelError(f"{model_id}: not found — use `default`, `tiny-random`, a local model directory, "
                         "a .gguf file, or a hub id like Qwen/Qwen2.5-1.5B-Instruct (see `lorastudio models`)")
    return _download_from_hub(model_id)


def _download_from_hub(model_id: str) -> str:
    from huggingface_hub import snapshot_download  # a dependency of transformers

    try:
        # Safetensors only: never a pickle (.bin) checkpoint, which could run code at load time.
        return snapshot_download(model_id, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt",
                                                           "*.model", "tokenizer*"])
    except Exception as error:  # network/auth/not-found all come as different exception types
        raise ModelError(
            f"{model_id}: could not download from the Hugging Face hub ({type(error).__name__}: {error}). "
            "Offline? Use `default` (embedded), a local model directory or a .gguf file; gated model? "
            "accept its licence and run `huggingface-cli login`"
        ) from error


@functools.cache
def cpu_supports_bf16() -> bool:
    """True when a bf16 matmul works and is natively supported (AVX512-BF16 / AMX) on this CPU."""
    import torch

    from lorastudio.hardware import bf16_native, cpu_class

    try:
        native = bf16_native(cpu_class())
        a = torch.ones(8, 8, dtype=torch.bfloat16)
        ok = bool(torch.isfinite(a @ a).all())
        # Without native bf16 the CPU emulates it, which is slower than fp32: use fp32 there.
        return ok and native
    except Exception:
        return False


def pick_device(device: str | None = None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("device=cuda was asked for but no CUDA GPU is visible; use device=cpu or auto")
    return device


def pick_dtype(dtype: Any = None, device: str = "cpu"):
    """``None``/"auto" → bf16 where the hardware runs it natively, else fp32. Accepts names or torch dtypes."""
    import torch

    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "fp32": torch.float32, "float32": torch.float32}
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if str(device).startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_supports_bf16() else torch.float32
    if dtype not in names:
        raise ModelError(f"dtype={dtype!r} is not supported: use auto, bf16, fp16 or fp32")
    return names[dtype]


def load_tokenizer(model_id: str, *, trust_remote_code: bool = False):
    """Just the tokenizer (with its chat template): seconds, no weights read."""
    from transformers import AutoTokenizer

    path = resolve_model(model_id)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise ModelError(f"{model_id}: could not load its tokenizer from {path} ({error})") from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


_LOCAL_TOKENIZERS: dict[str, Any] = {}


def local_tokenizer(model_id: str) -> Any:
    """The model's tokenizer when it is on this machine already, else None: nothing is built, dequantized or
    downloaded (the recommender counts the data's tokens with it instead of estimating them from characters).

    ``default`` / ``tiny-random``: their cache folders once prepared; a local model folder: itself; a hub id:
    the Hugging Face cache only (``local_files_only``); a .gguf file: None (its tokenizer needs the file read).
    """
    model_id = str(model_id or "").strip()
    from lorastudio.models.cache import models_dir

    if model_id in (DEFAULT_NAME, TINY_NAME):
        folder = models_dir() / model_id
        source: str | None = str(folder) if is_complete(folder) else None
    elif Path(model_id).expanduser().is_dir():
        source = str(Path(model_id).expanduser())
    else:
        source = model_id if _HUB_ID.match(model_id) else None
    if source is None:
        return None
    if source in _LOCAL_TOKENIZERS:
        return _LOCAL_TOKENIZERS[source]
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except Exception:  # noqa: BLE001 - absent, partial or unreadable: the character estimate stands in
        return None
    _LOCAL_TOKENIZERS[source] = tokenizer  # only a found one is kept: a model prepared later is found then
    return tokenizer


def load_model(model_id: str, dtype: Any = None, device: str | None = None, *,
               trust_remote_code: bool = False, attn_implementation: str | None = None,
               quantization_config: Any = None):
    """(model, tokenizer) for any model id, in eval mode, on ``device`` (auto: CUDA if present).

    `quantization_config` (e.g. a transformers BitsAndBytesConfig): the weights are quantized while
    loading, straight onto ``device``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(model_id)
    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device)
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantization_config is not None:  # quantized weights cannot be moved afterwards
        kwargs.update(quantization_config=quantization_config, device_map={"": device})
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, **kwargs)
    except ValueError as error:
        if "trust_remote_code" in str(error):
            raise ModelError(f"{model_id}: this model needs custom code from its repository; LoRA Studio does "
                             "not run it unless you pass trust_remote_code=True") from error
        raise ModelError(f"{model_id}: could not load ({error})") from error
    except OSError as error:
        raise ModelError(f"{model_id}: could not load from {path} ({error})") from error
    if tokenizer.pad_token is None:
        # Needed by batched generation; the EOS token is never a training label position we pad with.
        tokenizer.pad_token = tokenizer.eos_token
    if quantization_config is None:
        model.to(device)
    model.eval()
    return model, tokenizer
