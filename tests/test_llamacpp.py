"""The llama.cpp engine on tiny models: PEFT → GGUF LoRA conversion and cache, engine choice, and
ChatEngine on llama.cpp answering like ChatEngine on transformers (same weights, same tokens).

The tiny base (tests/inference_fixtures.py) is written as an f16 GGUF by `lorastudio.export.write_gguf`;
the transformers reference loads the same weights rounded to f16, so the two engines differ only in
how they compute, not in what they compute with.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from inference_fixtures import build_adapter, build_tiny_model  # noqa: E402

from lorastudio import llamacpp  # noqa: E402
from lorastudio.inference import AdapterError, ChatEngine, choose_engine  # noqa: E402

QUESTIONS = ["工单超过多久会升级？", "What is the price of YZ-LD2406?", "满意度低于3分怎么办？"]

needs_llama = pytest.mark.skipif(not llamacpp.available(),
                                 reason="llama-cpp-python is not installed (pip install 'lorastudio[llamacpp]')")


def _f16_copy(src: Path, dst: Path) -> Path:
    """The tiny model with every weight rounded to f16 (what its f16 GGUF holds), saved as f32."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    model.save_pretrained(dst)
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template", "vocab", "merges")):
            shutil.copy(f, dst / f.name)
    return dst


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, monkeypatch_module):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorastudio.export import write_gguf

    root = tmp_path_factory.mktemp("llamacpp")
    monkeypatch_module.setenv("LORASTUDIO_HOME", str(root / "home"))
    base = build_tiny_model(root / "base")
    ref = _f16_copy(base, root / "base16")
    gguf_path = root / "gguf" / "tiny.gguf"
    gguf_path.parent.mkdir()
    write_gguf(AutoModelForCausalLM.from_pretrained(ref, dtype=torch.float32), AutoTokenizer.from_pretrained(ref),
               gguf_path, "f16", name="tiny")
    return {
        "root": root, "base": base, "ref": ref, "gguf": gguf_path,
        "a": build_adapter(ref, root / "adapter_a", seed=1, scale=0.5),
        "b": build_adapter(ref, root / "adapter_b", seed=2, scale=0.5),
        "c": build_adapter(ref, root / "adapter_c", seed=3, scale=0.5),
    }


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def pair(tiny):
    """(llama.cpp engine on the GGUF, transformers engine on the same f16 weights), one tokenizer."""
    # fp32: the transformers engine would pick bf16 on a CPU that computes it natively (AVX-512-bf16), and
    # bf16 rounding changes greedy answers of random weights; llama.cpp computes the f16 GGUF in fp32.
    ref = ChatEngine(str(tiny["ref"]), max_adapters=2, engine="transformers", dtype="fp32")
    if not llamacpp.available():
        pytest.skip("llama-cpp-python is not installed")
    fast = ChatEngine(str(tiny["gguf"]), max_adapters=2, engine="llama.cpp", tokenizer=ref.tokenizer)
    return fast, ref


# --------------------------------------------------------------------------------------------
# conversion


def _read_gguf(path: Path) -> tuple[dict, dict]:
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items() if f.types and f.types[0] != gguf.GGUFValueType.ARRAY}
    tensors = {t.name: t for t in reader.tensors}
    return fields, tensors


def _peft(adapter: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v.float().numpy() for k, v in load_file(str(adapter / "adapter_model.safetensors")).items()}


def test_convert_lora_names_shapes_alpha_and_values(tiny, tmp_path):
    import numpy as np

    out = llamacpp.convert_lora(tiny["a"], tmp_path / "a.gguf")
    fields, tensors = _read_gguf(out)
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["general.architecture"] == "qwen2"
    cfg = json.loads((tiny["a"] / "adapter_config.json").read_text())
    assert fields["adapter.lora.alpha"] == pytest.approx(cfg["lora_alpha"])  # one rank, one alpha: as is
    peft = _peft(tiny["a"])
    assert len(tensors) == len(peft)  # every A and B, nothing else
    a = tensors["blk.1.ffn_gate.weight.lora_a"]
    b = tensors["blk.1.ffn_gate.weight.lora_b"]
    pa = peft["base_model.model.model.layers.1.mlp.gate_proj.lora_A.weight"]
    pb = peft["base_model.model.model.layers.1.mlp.gate_proj.lora_B.weight"]
    # ggml ne = reversed numpy shape: A [in, r], B [r, out].
    assert list(a.shape) == [pa.shape[1], pa.shape[0]] and list(b.shape) == [pb.shape[1], pb.shape[0]]
    np.testing.assert_array_equal(np.asarray(a.data).reshape(pa.shape), pa)
    np.testing.assert_array_equal(np.asarray(b.data).reshape(pb.shape), pb)
    assert "blk.0.attn_q.weight.lora_a" in tensors and "blk.0.ffn_down.weight.lora_b" in tensors


def test_per_module_alpha_is_folded_into_b(tiny, tmp_path):
    import shutil

    import numpy as np

    src = tmp_path / "patterned"
    shutil.copytree(tiny["a"], src)
    cfg = json.loads((src / "adapter_config.json").read_text())
    cfg["alpha_pattern"] = {"down_proj": 2}
    (src / "adapter_config.json").write_text(json.dumps(cfg))
    fields, tensors = _read_gguf(llamacpp.convert_lora(src, tmp_path / "p.gguf"))
    assert fields["adapter.lora.alpha"] == 0.0  # llama.cpp: scale 1, the scales live in B
    peft = _peft(src)
    r = cfg["r"]
    down = peft["base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"]
    up = peft["base_model.model.model.layers.0.mlp.up_proj.lora_B.weight"]
    np.testing.assert_allclose(np.asarray(tensors["blk.0.ffn_down.weight.lora_b"].data).reshape(down.shape),
                               down * 2 / r, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(tensors["blk.0.ffn_up.weight.lora_b"].data).reshape(up.shape),
                               up * cfg["lora_alpha"] / r, rtol=1e-6)


@pytest.mark.parametrize("field,value", [("use_dora", True), ("modules_to_save", ["lm_head"])])
def test_unsupported_adapters_are_refused(tiny, tmp_path, field, value):
    import shutil

    src = tmp_path / "x"
    shutil.copytree(tiny["a"], src)
    cfg = json.loads((src / "adapter_config.json").read_text())
    cfg[field] = value
    (src / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(llamacpp.LoraConversionError, match=field):
        llamacpp.convert_lora(src, tmp_path / "x.gguf")


def test_adapter_gguf_is_cached_by_content(tiny, tmp_path):
    import shutil

    first = llamacpp.adapter_gguf(tiny["b"])
    assert first.parent == Path(tiny["root"] / "home" / "lora-gguf")
    stamp = first.stat().st_mtime_ns
    assert llamacpp.adapter_gguf(tiny["b"]) == first and first.stat().st_mtime_ns == stamp  # not rewritten
    copy = tmp_path / "copy_of_b"
    shutil.copytree(tiny["b"], copy)
    assert llamacpp.adapter_gguf(copy) == first  # same content, same file
    shutil.copy(tiny["c"] / "adapter_model.safetensors", copy / "adapter_model.safetensors")  # "retrained"
    assert llamacpp.adapter_gguf(copy) != first
    assert not list((tiny["root"] / "home" / "lora-gguf").glob("*.part-*"))


def test_gguf_metadata_reads_the_header_like_the_gguf_package(tiny):
    fields, _ = _read_gguf(tiny["gguf"])
    mine = llamacpp.gguf_metadata(tiny["gguf"])
    assert mine == {k: v for k, v in fields.items() if not k.startswith("GGUF.")}
    assert llamacpp.gguf_metadata(tiny["gguf"], ["general.architecture", "{arch}.context_length"]) == {
        k: mine[k] for k in list(mine)[: list(mine).index("qwen2.context_length") + 1]}


# --------------------------------------------------------------------------------------------
# engine choice


def test_engine_choice_rules(tiny, monkeypatch):
    import lorastudio.inference as inference

    monkeypatch.delenv("LORASTUDIO_ENGINE", raising=False)
    monkeypatch.setattr(inference, "_cuda_available", lambda: False)
    hf = str(tiny["ref"])
    gguf = str(tiny["gguf"])
    assert choose_engine(hf).name == "transformers" and "not a GGUF" in choose_engine(hf).reason
    assert choose_engine(gguf, engine="transformers").name == "transformers"
    assert choose_engine(gguf, model_given=True).name == "transformers"
    assert choose_engine(gguf, device="cuda").name == "transformers"
    assert choose_engine(gguf, dtype="fp32").name == "transformers"
    monkeypatch.setenv("LORASTUDIO_ENGINE", "transformers")
    assert choose_engine(gguf).name == "transformers"
    monkeypatch.delenv("LORASTUDIO_ENGINE")
    with pytest.raises(ValueError, match="engine must be one of"):
        choose_engine(gguf, engine="vllm")
    with pytest.raises(ValueError, match="not a GGUF"):
        choose_engine(hf, engine="llama.cpp")
    monkeypatch.setattr(llamacpp, "available", lambda: False)
    off = choose_engine(gguf)
    assert off.name == "transformers" and "not installed" in off.reason
    with pytest.raises(ValueError, match="not installed"):
        choose_engine(gguf, engine="llama.cpp")
    monkeypatch.setattr(llamacpp, "available", lambda: True)
    on = choose_engine(gguf)
    assert on.name == "llama.cpp" and on.gguf == Path(gguf).resolve()
    monkeypatch.setattr(inference, "_cuda_available", lambda: True)
    assert choose_engine(gguf).name == "transformers" and "CUDA" in choose_engine(gguf).reason
    assert choose_engine(gguf, engine="llama.cpp").name == "llama.cpp"  # asked for: used on a GPU machine too


def test_default_base_directory_counts_as_default(monkeypatch, tmp_path):
    import lorastudio.inference as inference

    monkeypatch.setenv("LORASTUDIO_HOME", str(tmp_path))
    (tmp_path / "models" / "default").mkdir(parents=True)
    assert inference._is_default_base("default")
    assert inference._is_default_base(str(tmp_path / "models" / "default"))  # what adapters record
    assert not inference._is_default_base(str(tmp_path / "models" / "tiny-random"))


# --------------------------------------------------------------------------------------------
# ChatEngine on llama.cpp


def _ids(engine: ChatEngine, question, adapter=None, n=12) -> list[int]:
    text = engine.generate(question, adapter=adapter, max_new_tokens=n)
    return engine.tokenizer(text, add_special_tokens=False)["input_ids"]


@needs_llama
def test_engine_is_reported(pair):
    fast, ref = pair
    assert fast.engine == "llama.cpp" and "llama.cpp" in fast.engine_reason and fast.model is None
    assert ref.engine == "transformers" and "asked for" in ref.engine_reason


@needs_llama
def test_greedy_answers_match_transformers_with_and_without_adapters(pair, tiny):
    fast, ref = pair
    for adapter in (None, tiny["a"], tiny["b"]):
        for q in QUESTIONS:
            assert fast.generate(q, adapter=adapter, max_new_tokens=16) == \
                ref.generate(q, adapter=adapter, max_new_tokens=16), (adapter, q)


@needs_llama
def test_adapter_switching_is_stable_and_lru_bounded(pair, tiny):
    fast, _ = pair
    q = QUESTIONS[0]
    first = {k: fast.generate(q, adapter=tiny[k] if k else None, max_new_tokens=12) for k in (None, "a", "b")}
    assert len(set(first.values())) == 3, first
    for k in ("b", None, "a", "a", None, "b"):  # switch back and forth: same answers (no KV cache leak)
        assert fast.generate(q, adapter=tiny[k] if k else None, max_new_tokens=12) == first[k]
    fast.generate(q, adapter=tiny["c"], max_new_tokens=4)  # max_adapters=2: evicts the least recent (a)
    assert fast.loaded_adapters() == [str(tiny["b"].resolve()), str(tiny["c"].resolve())]
    assert len(fast.backend.llama.loaded_loras()) == 2
    assert fast.generate(q, adapter=tiny["a"], max_new_tokens=12) == first["a"]  # reloaded after eviction


@needs_llama
def test_stream_complete_batch_and_stop_token(pair, tiny):
    fast, ref = pair
    for q in QUESTIONS:
        pieces = list(fast.stream(q, adapter=tiny["a"], max_new_tokens=30))
        assert "".join(pieces) == fast.generate(q, adapter=tiny["a"], max_new_tokens=30)
    c, r = fast.complete(QUESTIONS[1], max_new_tokens=5), ref.complete(QUESTIONS[1], max_new_tokens=5)
    assert (c.text, c.prompt_tokens, c.completion_tokens, c.finish_reason) == \
        (r.text, r.prompt_tokens, r.completion_tokens, r.finish_reason)
    batch = fast.generate_batch(QUESTIONS, adapter=tiny["b"], max_new_tokens=10)
    assert batch == [fast.generate(q, adapter=tiny["b"], max_new_tokens=10) for q in QUESTIONS]
    # Stops on the same end-of-turn token as transformers: find a prompt whose answer ends early.
    long = {q: (fast.complete(q, adapter=a, max_new_tokens=60), ref.complete(q, adapter=a, max_new_tokens=60))
            for q in QUESTIONS for a in (None, tiny["a"], tiny["b"], tiny["c"])}
    for f, t in long.values():
        assert (f.text, f.completion_tokens, f.finish_reason) == (t.text, t.completion_tokens, t.finish_reason)


@needs_llama
def test_sampling_is_seeded(pair):
    fast, _ = pair
    s1 = fast.generate(QUESTIONS[0], max_new_tokens=20, temperature=1.5, seed=7)
    assert s1 == fast.generate(QUESTIONS[0], max_new_tokens=20, temperature=1.5, seed=7)
    samples = {fast.generate(QUESTIONS[0], max_new_tokens=20, temperature=1.5, seed=s) for s in range(4)}
    assert len(samples) > 1
    assert fast.generate(QUESTIONS[0], max_new_tokens=20, temperature=1.0, top_p=1e-6, seed=3) == \
        fast.generate(QUESTIONS[0], max_new_tokens=20)  # top_p → 0 keeps only the greedy token


@needs_llama
def test_adapter_of_another_base_is_an_adapter_error(pair, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    fast, _ = pair
    other = Qwen2ForCausalLM(Qwen2Config(vocab_size=420, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1))
    torch.manual_seed(0)
    peft = get_peft_model(other, LoraConfig(r=4, target_modules=["gate_proj"], init_lora_weights=False))
    peft.save_pretrained(tmp_path / "other")
    with pytest.raises(AdapterError, match="another base model"):
        fast.generate(QUESTIONS[0], adapter=tmp_path / "other", max_new_tokens=4)
    assert fast.generate(QUESTIONS[0], max_new_tokens=4)  # still usable


@needs_llama
def test_llamacpp_model_greedy_tokenize_and_quantize(tiny, tmp_path):
    from transformers import AutoTokenizer

    model = llamacpp.LlamaCppModel(tiny["gguf"])
    tok = AutoTokenizer.from_pretrained(tiny["ref"])
    text = "<|im_start|>user\n工单超过多久会升级？<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert model.tokenize(text) == ids  # the GGUF's tokenizer = the Hugging Face one
    assert len(model.greedy(ids, 8)) == 8
    assert model.greedy(ids, 8) == model.greedy(ids, 8)
    q8 = llamacpp.quantize_gguf(tiny["gguf"], tmp_path / "tiny-q8.gguf", "q8_0")
    assert llamacpp.gguf_metadata(q8)["general.file_type"] == 7  # LLAMA_FTYPE_MOSTLY_Q8_0
    model.close()


@needs_llama
def test_cli_compare_streams_and_reports_the_engine(tiny, capsys):
    from lorastudio.cli import main

    code = main(["compare", "--base", str(tiny["gguf"]), "--adapter", str(tiny["a"]), "--engine", "llama.cpp",
                 "--question", "工单超过多久会升级？", "--max-new-tokens", "6", "--layout", "stream"])
    captured = capsys.readouterr()
    assert code == 0
    assert "engine: llama.cpp" in captured.err
    out = captured.out
    assert out.index("──") < out.index(" s, ") and out.count(" tokens") == 2 and "tok/s" in out


def test_no_extra_buffer_types_on_amx_cpus(monkeypatch):
    """llama-cpp-python 0.3.36's AMX matmul dies with SIGILL on every prompt (session 12, an AMX Xeon): CPUs
    with AMX load models without the extra buffer types; the variable forces either choice."""
    monkeypatch.delenv("LORASTUDIO_LLAMACPP_EXTRA_BUFTS", raising=False)
    assert llamacpp.extra_buffer_types({"avx2", "avx512f", "amx_tile", "amx_bf16"}) is False
    assert llamacpp.extra_buffer_types({"avx2", "avx512f", "avx512_bf16"}) is True
    assert llamacpp.extra_buffer_types(set()) is True
    monkeypatch.setenv("LORASTUDIO_LLAMACPP_EXTRA_BUFTS", "1")
    assert llamacpp.extra_buffer_types({"amx_tile"}) is True
    monkeypatch.setenv("LORASTUDIO_LLAMACPP_EXTRA_BUFTS", "0")
    assert llamacpp.extra_buffer_types({"avx2"}) is False


@needs_llama
def test_an_adapter_at_half_strength_answers_as_its_halved_copy_on_both_engines(pair, tiny):
    import threading

    fast, ref = pair
    halved = build_adapter(tiny["ref"], tiny["root"] / "adapter_a_halved", seed=1, scale=0.25)  # adapter a, B / 2
    prompt = ref._encode([{"role": "user", "content": QUESTIONS[0]}])

    def answer(engine, adapter, strength=1.0):
        return engine.backend.generate_ids(prompt, Path(adapter).resolve(), 12, 0.0, 1.0, None, lambda _: None,
                                           threading.Event(), strength=strength)

    full = answer(ref, tiny["a"])
    assert answer(fast, tiny["a"]) == full  # the engines agree as trained …
    assert answer(fast, tiny["a"], 0.5) == answer(ref, tiny["a"], 0.5) == answer(fast, halved) != full  # … and weaker
    assert answer(fast, tiny["a"]) == full  # switched back to the full adapter
    many = fast.backend.generate_many([prompt], Path(tiny["a"]).resolve(), lambda n: 12, 0.0, 1.0, None, 1,
                                      strength=0.5)
    assert [fast.backend.until_eos(x) for x in many] == [fast.backend.until_eos(answer(fast, halved))]
