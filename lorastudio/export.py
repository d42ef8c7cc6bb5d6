"""Exports of a trained adapter: a merged model directory, and a GGUF file with an Ollama Modelfile.

```python
from lorastudio.export import export_merged, export_gguf
export_merged("runs/yunzhan", "out/yunzhan-merged")         # plain transformers loads it
r = export_gguf("runs/yunzhan", "out/yunzhan.gguf", dtype="q8_0")  # + out/Modelfile for `ollama create`
r.fidelity["passed"]   # the file run in llama.cpp answers like the adapter (lorastudio/export_check.py)
```

Merging folds each LoRA product into its base weight (W' = W + (alpha/r)·B·A) in float32, then
saves in the base model's own dtype. The GGUF writer covers the Qwen2 architecture (the `default`
model's family, and every `tiny-random` model): llama.cpp's tensor names from the `gguf` package's
name map, the byte-level BPE vocabulary with merges and token types, the special token ids and
the chat template, so llama.cpp, Ollama and `transformers` (`gguf_file=`) all read it.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GGUF_TYPES = ("f16", "q8_0", "q4_K_M")


class ExportError(ValueError):
    """The export cannot be done (unsupported architecture, bad output path…); says what to do."""


@dataclass
class ExportResult:
    path: str
    files: list[str]
    base: str
    adapter: str
    bytes: int
    modelfile: str | None = None
    check: dict[str, Any] | None = None  # verification numbers when a check ran
    fidelity: dict[str, Any] | None = None  # the llama.cpp fidelity gate's report (export_check.check_gguf)
    fidelity_file: str | None = None  # where that report was written (<name>.fidelity.json)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# --------------------------------------------------------------------------------------------
# merge


def adapter_base(adapter_dir: str | os.PathLike, base: str | None = None) -> str:
    """The base model an adapter belongs to: `base` if given, else the one recorded at training time."""
    if base:
        return base
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))
    recorded = cfg.get("base_model_name_or_path")
    if not recorded:
        raise ExportError(f"{adapter_dir}: adapter_config.json records no base model; pass --base")
    return recorded


def load_peft(adapter_dir: str | os.PathLike, base: str | None = None) -> tuple[Any, Any, str]:
    """(base + adapter as an unmerged float32 PEFT model on the CPU, tokenizer, base id)."""
    import torch
    from peft import PeftModel

    from lorastudio.inference import AdapterError, check_adapter_dir
    from lorastudio.models import load_model

    path = check_adapter_dir(adapter_dir)
    base_id = adapter_base(path, base)
    model, tokenizer = load_model(base_id, dtype=torch.float32, device="cpu")
    from safetensors import SafetensorError

    try:
        peft_model = PeftModel.from_pretrained(model, str(path))
    except SafetensorError as exc:  # a truncated or damaged adapter_model.safetensors
        raise AdapterError(f"adapter {str(path)!r}: its weights file cannot be read ({str(exc)[:200]}); "
                           "the adapter is damaged: train again or restore it from a checkpoint") from None
    except (RuntimeError, ValueError, KeyError) as exc:
        raise AdapterError(f"adapter {str(path)!r} does not fit base model {base_id!r}: "
                           f"{str(exc).splitlines()[0][:300]}") from None
    peft_model.eval()
    return peft_model, tokenizer, base_id


def merge_adapter(adapter_dir: str | os.PathLike, base: str | None = None,
                  probe: str | None = None) -> tuple[Any, Any, str, Any]:
    """(merged float32 model, tokenizer, base id, probe logits of base+adapter before merging or None).

    Merging in float32 avoids bf16 rounding of W + BA. The probe logits come from the unmerged PEFT
    model, so a check against them tests the whole merge, not just a save/load round trip.
    """
    peft_model, tokenizer, base_id = load_peft(adapter_dir, base)
    reference = _probe_logits(peft_model, tokenizer, probe)
    merged = peft_model.merge_and_unload()
    merged.eval()
    return merged, tokenizer, base_id, reference


def _probe_logits(model: Any, tokenizer: Any, probe: str | None) -> Any:
    if probe is None:
        return None
    import torch

    with torch.inference_mode():
        return model(_probe_ids(tokenizer, probe)).logits.float()


PROBE = "工单超过多久会升级？ What is the return policy?"


def _probe_ids(tokenizer: Any, prompt: str) -> Any:
    from lorastudio.inference import render_prompt

    text = render_prompt([{"role": "user", "content": prompt}], tokenizer)
    return tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]


def compare_logits(reference: Any, model: Any, tokenizer: Any, prompt: str = PROBE) -> dict[str, Any]:
    """max |Δlogit| vs the logit scale, and how often the top-1 token agrees (what greedy depends on)."""
    import torch

    ids = _probe_ids(tokenizer, prompt)
    with torch.inference_mode():
        b = model(ids).logits.float()
    return {
        "max_abs_diff": round(float((reference - b).abs().max()), 6),
        "logit_scale": round(float(reference.abs().max()), 4),
        "top1_agreement": round(float((reference.argmax(-1) == b.argmax(-1)).float().mean()), 4),
        "tokens": int(ids.shape[1]),
    }


def _stored_dtype(model: Any) -> Any:
    """The dtype the base model's files use (config.dtype), so a merge does not double the size."""
    import torch

    name = getattr(model.config, "dtype", None) or getattr(model.config, "torch_dtype", None)
    if isinstance(name, torch.dtype):
        return name
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(str(name), torch.float32)


def export_merged(adapter_dir: str | os.PathLike, out_dir: str | os.PathLike, *, base: str | None = None,
                  dtype: Any = None, verify: bool = False) -> ExportResult:
    """A standalone model directory (safetensors + tokenizer + README) with the adapter folded in.

    With `verify`, the saved directory is loaded back by plain transformers and its logits are
    compared with base+adapter (unmerged) on a probe prompt; numbers in `result.check`.
    """
    from lorastudio.inference import adapter_system_prompt, check_adapter_dir

    out = _fresh_dir(out_dir)
    merged, tokenizer, base_id, reference = merge_adapter(adapter_dir, base, PROBE if verify else None)
    target = dtype or _stored_dtype(merged)
    merged.to(target)
    merged.config.dtype = target
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    adapter = check_adapter_dir(adapter_dir)
    system = adapter_system_prompt(adapter)
    (out / "README.md").write_text(_merged_readme(base_id, adapter, str(target).replace("torch.", ""), system),
                                   encoding="utf-8")
    files = sorted(p.name for p in out.iterdir())
    check = None
    if verify:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        del merged  # keep one copy of the weights in memory at a time
        loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        check = compare_logits(reference, loaded, AutoTokenizer.from_pretrained(out))
        check["dtype"] = str(target).replace("torch.", "")
    return ExportResult(path=str(out), files=files, base=base_id, adapter=str(adapter),
                        bytes=sum(p.stat().st_size for p in out.iterdir() if p.is_file()), check=check)


def _merged_readme(base: str, adapter: Path, dtype: str, system: str | None) -> str:
    lines = [
        f"# {adapter.name} (merged)",
        "",
        f"A LoRA fine-tune of `{base}` made with LoRA Studio; the adapter `{adapter}` is folded into the",
        f"weights, so this directory loads without PEFT. Weights: safetensors, {dtype}.",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'model = AutoModelForCausalLM.from_pretrained("<this directory>")',
        'tokenizer = AutoTokenizer.from_pretrained("<this directory>")',
        "```",
        "",
        "Ask questions through the tokenizer's chat template, as during training.",
    ]
    if system:
        lines += ["", "The adapter was trained with this system message; send it as the first message:", "",
                  "```", system, "```"]
    return "\n".join(lines) + "\n"


def _fresh_dir(out_dir: str | os.PathLike) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file; give a directory for the merged model")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "config.json").is_file():
            # Never wipe a folder that is not one of our exports.
            raise ExportError(f"{out} is not empty; choose a new or empty directory")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


# --------------------------------------------------------------------------------------------
# GGUF


def export_gguf(adapter_dir: str | os.PathLike, out_file: str | os.PathLike, dtype: str = "f16", *,
                base: str | None = None, modelfile: bool = True, verify: bool = False, check: bool = True,
                check_questions: int = 5, check_tokens: int = 16,
                questions_file: str | os.PathLike | None = None) -> ExportResult:
    """Write the merged model as one GGUF file (f16, q8_0 or q4_K_M) plus a `Modelfile` for Ollama beside it.

    With `check` (the default), the written file is run in llama.cpp on the adapter's own questions
    (`export_check.check_questions`) and its first `check_tokens` greedy tokens compared with base +
    adapter in transformers; the Modelfile's TEMPLATE and stops are checked against the training chat
    template. The report is `result.fidelity` (its `passed` is False when the export answers
    differently beyond the type's threshold) and `<name>.fidelity.json` beside the file. The export is
    still written when the check fails: the caller decides what to do with it (the CLI exits 1).
    When llama.cpp is not installed, `result.fidelity` says the check did not run.

    With `verify`, the file is also read back by transformers (`gguf_file=`) and its logits compared
    with base+adapter (unmerged) on a probe prompt; it checks the GGUF's tokenizer encodes the probe
    to the same ids.
    """
    import time

    from lorastudio import export_check
    from lorastudio.inference import adapter_system_prompt, check_adapter_dir

    if dtype not in GGUF_TYPES:
        raise ExportError(f"GGUF type {dtype!r} is not supported: use one of {', '.join(GGUF_TYPES)}")
    out = Path(out_file)
    if out.suffix.lower() != ".gguf":
        raise ExportError(f"{out}: the GGUF file name must end in .gguf")
    if out.is_dir():
        raise ExportError(f"{out} is a directory; give a file name ending in .gguf")
    adapter = check_adapter_dir(adapter_dir)
    system = adapter_system_prompt(adapter)
    started = time.perf_counter()
    questions, source, skipped = [], "", None
    if check:
        try:
            questions, source = export_check.check_questions(adapter, check_questions, questions_file)
        except export_check.CheckError as exc:
            raise ExportError(str(exc)) from None
        skipped = export_check.prepare_llamacpp()  # before torch, so llama.cpp's threads wait politely
    peft_model, tokenizer, base_id = load_peft(adapter, base)
    reference = _probe_logits(peft_model, tokenizer, PROBE if verify else None)
    greedy = None
    if check and skipped is None:
        greedy = export_check.reference_greedy(peft_model, tokenizer, questions, system, check_tokens)
    seconds_reference = time.perf_counter() - started
    merged = peft_model.merge_and_unload()
    merged.eval()
    del peft_model
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_gguf_file(merged, tokenizer, out, dtype, adapter.name)
    files = [out.name]
    modelfile_path = None
    if modelfile:
        modelfile_path = out.parent / "Modelfile"
        modelfile_path.write_text(ollama_modelfile(tokenizer, out.name, system), encoding="utf-8")
        files.append(modelfile_path.name)
    seconds_export = time.perf_counter() - started
    verified = None
    if verify:
        del merged
        loaded, gguf_tokenizer = load_gguf(out)
        verified = compare_logits(reference, loaded, tokenizer)
        verified["dtype"] = dtype
        verified["tokenizer_match"] = bool(
            _probe_ids(gguf_tokenizer, PROBE).tolist() == _probe_ids(tokenizer, PROBE).tolist())
    fidelity = fidelity_file = None
    if check:
        if greedy is None:
            fidelity = {"gguf": str(out), "type": dtype, "passed": None, "skipped": skipped}
        else:
            fidelity = export_check.check_gguf(out, dtype, greedy, tokenizer, modelfile=modelfile_path, system=system,
                                               tokens=check_tokens, source=source)
            fidelity["seconds"] = {"reference": round(seconds_reference, 2),
                                   "merge_and_write": round(seconds_export - seconds_reference, 2),
                                   "llamacpp": fidelity.pop("seconds_llamacpp"),
                                   "total": round(time.perf_counter() - started, 2)}
        fidelity_file = str(export_check.write_report(fidelity, out))
        files.append(Path(fidelity_file).name)
    return ExportResult(path=str(out), files=files, base=base_id, adapter=str(adapter),
                        bytes=out.stat().st_size, modelfile=str(modelfile_path) if modelfile_path else None,
                        check=verified, fidelity=fidelity, fidelity_file=fidelity_file)


def _write_gguf_file(model: Any, tokenizer: Any, out: Path, dtype: str, name: str) -> None:
    """`out` written whole or not at all; q4_K_M goes through an f16 file and llama.cpp's quantizer."""
    tmp = out.with_name(out.name + ".part")
    f16 = out.with_name(out.name + ".f16.part")
    try:
        if dtype == "q4_K_M":
            from lorastudio import llamacpp

            write_gguf(model, tokenizer, f16, "f16", name=name)
            try:
                llamacpp.quantize_gguf(f16, tmp, "q4_K_M")
            except llamacpp.LlamaCppError as exc:
                raise ExportError(f"q4_K_M needs llama.cpp's quantizer: {exc}") from None
        else:
            write_gguf(model, tokenizer, tmp, dtype, name=name)
        os.replace(tmp, out)  # never leave a half-written .gguf under the final name
    finally:
        tmp.unlink(missing_ok=True)
        f16.unlink(missing_ok=True)


def write_gguf(model: Any, tokenizer: Any, path: str | os.PathLike, dtype: str = "f16", name: str = "model") -> None:
    """Write a Qwen2 causal LM (any size) as GGUF."""
    import gguf
    import numpy as np

    cfg = model.config
    if getattr(cfg, "model_type", None) != "qwen2":
        raise ExportError(f"GGUF export supports the Qwen2 architecture (the default model's family); this "
                          f"model is {getattr(cfg, 'model_type', '?')!r}. Export --merged and convert it with "
                          "llama.cpp's convert_hf_to_gguf.py")
    arch = gguf.MODEL_ARCH.QWEN2
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(name)
    writer.add_context_length(int(cfg.max_position_embeddings))
    writer.add_embedding_length(int(cfg.hidden_size))
    writer.add_block_count(int(cfg.num_hidden_layers))
    writer.add_feed_forward_length(int(cfg.intermediate_size))
    writer.add_head_count(int(cfg.num_attention_heads))
    writer.add_head_count_kv(int(cfg.num_key_value_heads))
    writer.add_rope_freq_base(float(_rope_theta(cfg)))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if dtype == "q8_0" else gguf.LlamaFileType.MOSTLY_F16)
    _add_tokenizer(writer, tokenizer, int(cfg.vocab_size))

    names = gguf.get_tensor_name_map(arch, int(cfg.num_hidden_layers))
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when output.weight is absent
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ExportError(f"no GGUF name for tensor {hf_name!r}")
        data = tensor.detach().to("cpu").float().numpy()
        if data.ndim == 1:
            # Norms and biases stay float32, as llama.cpp's converter keeps them.
            writer.add_tensor(gguf_name, data.astype(np.float32))
        elif dtype == "q8_0" and data.shape[-1] % 32 == 0:
            q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(gguf_name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(gguf_name, data.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _rope_theta(cfg: Any) -> float:
    theta = getattr(cfg, "rope_theta", None)
    if theta is None:  # transformers 5 keeps it in rope_parameters
        theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return theta


def _add_tokenizer(writer: Any, tokenizer: Any, vocab_size: int) -> None:
    import gguf

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    model = state.get("model", {})
    if model.get("type") != "BPE":
        raise ExportError("GGUF export needs a byte-level BPE tokenizer (Qwen2's)")
    added = {t["id"]: t for t in state.get("added_tokens", [])}
    vocab = tokenizer.get_vocab()
    by_id = {i: tok for tok, i in vocab.items()}
    tokens: list[str] = []
    types: list[int] = []
    # The embedding matrix is usually padded past the tokenizer (Qwen: 151936 rows, 151665 tokens);
    # llama.cpp wants one entry per row, so the gap is filled with unused placeholders.
    for i in range(max(vocab_size, len(by_id))):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    # Qwen has no BOS; llama.cpp's own conversion records <|endoftext|> and add_bos=false.
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else vocab.get("<|endoftext|>", pad)
    if bos is not None:
        writer.add_bos_token_id(int(bos))
    if eos is not None:
        writer.add_eos_token_id(int(eos))
    if pad is not None:
        writer.add_pad_token_id(int(pad))
    writer.add_add_bos_token(tokenizer.bos_token_id is not None and bool(getattr(tokenizer, "add_bos_token", False)))
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def ollama_modelfile(tokenizer: Any, gguf_name: str, system: str | None = None) -> str:
    """An Ollama Modelfile whose TEMPLATE renders prompts as the model's chat template does.

    Qwen's ChatML template is written in Ollama's Go-template syntax. The default system message
    that the chat template inserts when none is given is recovered by rendering a probe conversation,
    so Ollama users get the same prompt as `lorastudio generate`; an adapter trained with a system
    prompt uses that one instead.
    """
    from lorastudio.inference import render_prompt

    probe = render_prompt([{"role": "user", "content": "\x00"}], tokenizer, system_prompt=system)
    if "<|im_start|>" not in probe:
        raise ExportError("the Modelfile template supports ChatML chat templates (Qwen's); "
                          "write the Modelfile by hand for this model")
    default_system = None
    head = "<|im_start|>system\n"
    if probe.startswith(head):
        default_system = probe[len(head):probe.index("<|im_end|>")]
    # Ollama keeps system messages in .Messages (and prepends SYSTEM there when a chat brings none),
    # so the template ranges over the messages only: printing .System as well would say it twice.
    template = (
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
        "<|im_start|>assistant\n"
    )
    lines = [f"FROM ./{gguf_name}", "", f'TEMPLATE """{template}"""']
    if default_system:
        lines.append(f'SYSTEM """{default_system}"""')
    stops = [t for t in ("<|im_end|>", "<|endoftext|>") if t in tokenizer.get_vocab()]
    lines += [f'PARAMETER stop "{t}"' for t in stops]
    # Greedy decoding, as `lorastudio generate` uses: facts come out verbatim.
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"


def load_gguf(gguf_file: str | os.PathLike) -> tuple[Any, Any]:
    """(model, tokenizer) read back from a GGUF by plain transformers (float32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(gguf_file)
    model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32)
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
