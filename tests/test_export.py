"""Exports on a tiny Qwen2: merged logits equal base+adapter; GGUF round trip; Modelfile; CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from inference_fixtures import build_adapter, build_tiny_model  # noqa: E402

from lorastudio.cli import main  # noqa: E402
from lorastudio.export import ExportError, export_gguf, export_merged, load_gguf  # noqa: E402

PROMPTS = ["工单超过多久会升级？", "What is the price of YZ-LD2406?"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tinyexport")
    base = build_tiny_model(root / "base")
    return {"base": base, "adapter": build_adapter(base, root / "adapter", seed=1), "root": root}


def _reference_logits(tiny, ids):
    """base + adapter through PEFT, unmerged, float32: what every export must reproduce."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny["base"], dtype=torch.float32)
    with torch.inference_mode():
        plain = base(ids).logits
    model = PeftModel.from_pretrained(base, str(tiny["adapter"])).eval()
    with torch.inference_mode():
        return model(ids).logits, plain


def _ids(tokenizer_dir, prompt):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]


def test_merged_model_loads_in_plain_transformers_with_equal_logits(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    result = export_merged(tiny["adapter"], out, verify=True)
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert (out / "README.md").read_text().startswith("# adapter (merged)")
    assert not (out / "adapter_config.json").exists()  # really merged, no PEFT needed
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    for prompt in PROMPTS:
        ids = _ids(out, prompt)
        ref, plain = _reference_logits(tiny, ids)
        with torch.inference_mode():
            got = merged(ids).logits
        assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4)
        assert (got - plain).abs().max() > 0.1  # the adapter is in there, not the bare base
    assert result.check["max_abs_diff"] < 1e-4 and result.check["top1_agreement"] == 1.0


def test_merged_export_refuses_to_overwrite_unrelated_folder(tiny, tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not empty"):
        export_merged(tiny["adapter"], tmp_path)
    assert (tmp_path / "precious.txt").exists()


@pytest.mark.parametrize("gguf_type, atol, min_top1", [("f16", 0.05, 1.0), ("q8_0", 1.5, 0.85)])
def test_gguf_round_trip_reproduces_merged_logits(tiny, tmp_path, gguf_type, atol, min_top1):
    out = tmp_path / "gguf" / f"tiny-{gguf_type}.gguf"
    result = export_gguf(tiny["adapter"], out, gguf_type, verify=True)
    assert out.is_file() and not out.with_name(out.name + ".part").exists()
    model, tok = load_gguf(out)
    assert tok.chat_template  # the template travels inside the GGUF
    for prompt in PROMPTS:
        ids = _ids(tiny["base"], prompt)
        # The GGUF's own tokenizer encodes the chat prompt to the same ids.
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True)
        assert tok(text, add_special_tokens=False)["input_ids"] == ids[0].tolist()
        ref, _ = _reference_logits(tiny, ids)
        with torch.inference_mode():
            got = model(ids).logits
        assert (got - ref).abs().max() < atol
        assert (got.argmax(-1) == ref.argmax(-1)).float().mean() >= min_top1
    assert result.check["tokenizer_match"] is True
    if gguf_type == "q8_0":
        f16_size = export_gguf(tiny["adapter"], tmp_path / "f16.gguf", "f16").bytes
        assert result.bytes < 0.75 * f16_size


def test_gguf_metadata_and_modelfile(tiny, tmp_path):
    import gguf

    out = tmp_path / "m.gguf"
    result = export_gguf(tiny["adapter"], out)
    reader = gguf.GGUFReader(str(out))
    fields = reader.fields

    def scalar(key):
        f = fields[key]
        return f.parts[f.data[0]].tolist()[0]

    assert bytes(fields["general.architecture"].parts[-1]).decode() == "qwen2"
    assert scalar("qwen2.block_count") == 2 and scalar("qwen2.embedding_length") == 64
    assert scalar("qwen2.attention.head_count_kv") == 2
    names = {t.name for t in reader.tensors}
    assert {"token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_q.bias", "blk.1.ffn_down.weight",
            "output_norm.weight"} <= names
    assert "output.weight" not in names  # tied embeddings are not duplicated
    modelfile = Path(result.modelfile).read_text()
    assert modelfile.startswith("FROM ./m.gguf\n")
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    assert 'SYSTEM """You are a helpful assistant."""' in modelfile
    assert "<|im_start|>assistant\n" in modelfile


def test_modelfile_uses_the_adapters_training_system_prompt(tiny, tmp_path):
    import shutil

    adapter = tmp_path / "adapter"
    shutil.copytree(tiny["adapter"], adapter)
    (adapter / "train_config.yaml").write_text("system_prompt: 你是云栈科技的客服助手。\n", encoding="utf-8")
    result = export_gguf(adapter, tmp_path / "out" / "x.gguf")
    assert 'SYSTEM """你是云栈科技的客服助手。"""' in Path(result.modelfile).read_text(encoding="utf-8")


def test_export_bad_inputs(tiny, tmp_path):
    with pytest.raises(ExportError, match="must end in .gguf"):
        export_gguf(tiny["adapter"], tmp_path / "x.bin")
    with pytest.raises(ExportError, match="not supported"):
        export_gguf(tiny["adapter"], tmp_path / "x.gguf", "q4_k")


def test_a_damaged_adapter_file_is_an_adapter_error(tiny, tmp_path):
    """A truncated adapter_model.safetensors says the adapter is damaged (an AdapterError the service
    turns into a 409), not a raw safetensors exception."""
    import shutil

    from lorastudio.export import load_peft
    from lorastudio.inference import AdapterError

    damaged = tmp_path / "damaged"
    shutil.copytree(tiny["adapter"], damaged)
    (damaged / "adapter_model.safetensors").write_bytes(b"\x01\x00")
    with pytest.raises(AdapterError, match="damaged"):
        load_peft(damaged, str(tiny["base"]))


def test_export_cli(tiny, tmp_path, capsys):
    out = tmp_path / "cli.gguf"
    assert main(["export", "--adapter", str(tiny["adapter"]), "--gguf", str(out), "--gguf-type", "q8_0",
                 "--json", "--no-check"]) == 0  # the fidelity gate: tests/test_export_fidelity.py
    data = json.loads(capsys.readouterr().out)
    assert data["path"] == str(out) and data["check"]["top1_agreement"] >= 0.85 and data["fidelity"] is None
    assert (tmp_path / "Modelfile").is_file()
    assert main(["export", "--adapter", str(tiny["adapter"]), "--merged", str(tmp_path / "m")]) == 0
    assert "check: max |Δlogit|" in capsys.readouterr().err
    assert main(["export", "--adapter", str(tmp_path / "missing"), "--merged", str(tmp_path / "m2")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as info:  # argparse: one of --merged/--gguf is required
        main(["export", "--adapter", str(tiny["adapter"])])
    assert info.value.code == 2


def test_gguf_with_the_real_qwen_tokenizer_on_tiny_random(tmp_path):
    """tiny-random carries the default model's tokenizer (151k tokens, padded embedding rows)."""
    from lorastudio.models import resolve_model

    base = Path(resolve_model("tiny-random"))
    adapter = build_adapter(base, tmp_path / "adapter", seed=3)
    result = export_gguf(adapter, tmp_path / "tr.gguf", "f16", verify=True)
    assert result.check["tokenizer_match"] is True
    assert result.check["top1_agreement"] == 1.0
    assert result.check["max_abs_diff"] < 0.05
    modelfile = Path(result.modelfile).read_text(encoding="utf-8")
    assert 'SYSTEM """You are Qwen, created by Alibaba Cloud. You are a helpful assistant."""' in modelfile
