"""The export fidelity gate: does the exported GGUF, run in llama.cpp, answer like the adapter?

```python
from lorastudio.export_check import check_questions, reference_greedy, check_gguf
questions = check_questions("runs/faq")                       # ~5 of the adapter's own questions
ref = reference_greedy(peft_model, tokenizer, questions, system)  # base + adapter, transformers
report = check_gguf("out/faq.gguf", "f16", ref, tokenizer, modelfile="out/Modelfile")
report["passed"], report["identical"], report["total"]
```

What is compared, per question: the prompt rendered by the trainer's `render_prompt` (the training
chat template, with the adapter's training system prompt), tokenized by the Hugging Face tokenizer
for transformers and by the GGUF's own tokenizer for llama.cpp; then the first `tokens` (16) greedy
tokens of base + PEFT adapter (unmerged, float32: what `lorastudio generate` answers with) against
the first greedy tokens of the exported file in llama.cpp. Beside the tokens the gate checks what
makes an export answer differently in practice: the GGUF's tokenizer (same prompt ids), its chat
template and end-of-turn token, and the Ollama Modelfile (its TEMPLATE, rendered the way Ollama
renders it, gives the training prompt; its stop tokens end a turn).

Thresholds, of the questions checked: f16 ≥ 80 % (4 of 5) with all first-N tokens identical; q8_0
≥ 60 % (3 of 5) identical; q4_K_M ≥ 60 % (3 of 5) with the same *first* token. f16 only rounds the
merged weights, so a greedy path changes only at a near-tie; 8-bit weights move logits a little more.
4-bit weights move them enough that greedy paths part within a few tokens (measured on the default
model: 1 of 5 identical, first token 4 of 5, docs/ENGINE.md), so for q4_K_M the gate catches a broken
export (template, tokenizer, damaged weights: the first token already differs) but not the quality
lost to 4 bits, which the report's numbers show. Any template, tokenizer or end-of-turn mismatch fails
the gate whatever the type.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

DEFAULT_QUESTIONS = 5
DEFAULT_TOKENS = 16
# type → (what counts as agreeing on a question, the share of questions that must agree)
THRESHOLDS: dict[str, tuple[str, float]] = {"f16": ("identical", 0.8), "q8_0": ("identical", 0.6),
                                            "q4_K_M": ("first_token", 0.6)}

# Used only when the adapter directory names no readable data (documented in docs/ENGINE.md).
FALLBACK_QUESTIONS = [
    "工单超过多久没处理会自动升级？",
    "What is the capital of France?",
    "请用一句话介绍你自己。",
    "How many days are there in a leap year?",
    "满意度评分多少才能关单？",
]


class CheckError(ValueError):
    """The check cannot run (no llama.cpp, an unreadable questions file…); says what to do."""


# --------------------------------------------------------------------------------------------
# which questions


def _resolve_data_path(value: Any, adapter: Path) -> Path | None:
    if not isinstance(value, str) or not value.strip():
        return None
    p = Path(value).expanduser()
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, adapter / p, Path(__file__).resolve().parent.parent / p]
    return next((c for c in candidates if c.is_file()), None)


def _first_questions(conversations: list[Any], n: int) -> list[list[dict[str, str]]]:
    """The first `n` distinct prompts: each conversation up to its first user message (system kept)."""
    out: list[list[dict[str, str]]] = []
    seen: set[str] = set()
    for conv in conversations:
        msgs = conv.messages if hasattr(conv, "messages") else conv
        prompt: list[dict[str, str]] = []
        for m in msgs:
            role, content = (m.role, m.content) if hasattr(m, "role") else (m["role"], m["content"])
            if role == "assistant":
                break
            prompt.append({"role": role, "content": content})
            if role == "user":
                break
        if not prompt or prompt[-1]["role"] != "user":
            continue
        key = json.dumps(prompt, ensure_ascii=False)
        if key in seen:
            continue
        seen.add(key)
        out.append(prompt)
        if len(out) == n:
            break
    return out


def _from_file(path: Path, n: int) -> list[list[dict[str, str]]]:
    from lorastudio.data import DataError, validate

    try:
        report = validate(path)
    except DataError as exc:
        raise CheckError(f"{path}: {exc}") from None
    return _first_questions(report.conversations, n)


def _from_augmented(path: Path, n: int) -> list[list[dict[str, str]]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("messages"), list):
            rows.append([m for m in obj["messages"] if isinstance(m, dict) and "role" in m and "content" in m])
    return _first_questions(rows, n)


def check_questions(adapter_dir: str | os.PathLike, n: int = DEFAULT_QUESTIONS,
                    questions_file: str | os.PathLike | None = None) -> tuple[list[list[dict[str, str]]], str]:
    """(prompts, where they came from): the adapter's own questions, first `n` distinct, in file order.

    Sources, first that yields any: `questions_file` (any format `lorastudio validate` reads); the
    training file named in the adapter's train_config.yaml (`data`); its `validation_data`; the
    adapter's augmented.jsonl; else FALLBACK_QUESTIONS. Each prompt is a row's messages up to its
    first user message.
    """
    adapter = Path(adapter_dir)
    if questions_file is not None:
        p = Path(questions_file)
        if not p.is_file():
            raise CheckError(f"check questions file {str(p)!r} does not exist")
        got = _from_file(p, n)
        if not got:
            raise CheckError(f"{p}: no usable question rows (each row needs a user question)")
        return got, f"{p} (first {len(got)} distinct questions)"
    cfg: dict[str, Any] = {}
    cfg_file = adapter / "train_config.yaml"
    if cfg_file.is_file():
        import yaml

        try:
            cfg = yaml.safe_load(cfg_file.read_text(encoding="utf-8")) or {}
        except (OSError, ValueError):
            cfg = {}
    for key in ("data", "validation_data"):
        path = _resolve_data_path(cfg.get(key) if isinstance(cfg, dict) else None, adapter)
        if path is None:
            continue
        try:
            got = _from_file(path, n)
        except (CheckError, OSError):
            continue
        if got:
            what = "training data" if key == "data" else "validation data"
            return got, f"{what} {path} (first {len(got)} distinct questions)"
    aug = adapter / "augmented.jsonl"
    if aug.is_file():
        got = _from_augmented(aug, n)
        if got:
            return got, f"{aug} (first {len(got)} distinct questions)"
    fixed = [[{"role": "user", "content": q}] for q in FALLBACK_QUESTIONS[:n]]
    return fixed, "built-in questions (the adapter directory names no readable training data)"


# --------------------------------------------------------------------------------------------
# the reference: base + adapter in transformers


def stop_ids(tokenizer: Any) -> set[int]:
    vocab = tokenizer.get_vocab()
    ids = {vocab[t] for t in ("<|im_end|>", "<|endoftext|>") if t in vocab}
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def reference_greedy(model: Any, tokenizer: Any, questions: list[list[dict[str, str]]], system: str | None,
                     tokens: int = DEFAULT_TOKENS) -> list[dict[str, Any]]:
    """Per question: the prompt text, its ids and the first `tokens` greedy ids of `model` (argmax,
    no sampling settings, stops included), with the logits of each step kept for the margin report."""
    import torch
    from transformers import DynamicCache

    from lorastudio.inference import render_prompt

    stops = stop_ids(tokenizer)
    out = []
    for msgs in questions:
        text = render_prompt(msgs, tokenizer, system_prompt=system)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        got: list[int] = []
        margins: list[float] = []
        cache = DynamicCache()  # filled in place by each forward (transformers 5: `cache=`)
        step = torch.tensor([ids])
        with torch.inference_mode():
            for _ in range(tokens):
                res = model(input_ids=step, cache=cache, use_cache=True)
                logits = res.logits[0, -1].float()
                top2 = torch.topk(logits, 2)
                margins.append(float(top2.values[0] - top2.values[1]))
                t = int(top2.indices[0])
                got.append(t)
                if t in stops:
                    break
                step = torch.tensor([[t]])
        out.append({"messages": msgs, "prompt": text, "prompt_ids": ids, "tokens": got, "margins": margins})
    return out


# --------------------------------------------------------------------------------------------
# the export in llama.cpp


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False)


def _metadata_problems(gguf_path: Path, tokenizer: Any) -> list[str]:
    from lorastudio.llamacpp import gguf_metadata

    meta = gguf_metadata(gguf_path, ["tokenizer.ggml.eos_token_id", "tokenizer.chat_template"])
    problems = []
    eos = meta.get("tokenizer.ggml.eos_token_id")
    if tokenizer.eos_token_id is not None and eos != tokenizer.eos_token_id:
        problems.append(f"the GGUF's end-of-sequence token is {eos}, the tokenizer's is {tokenizer.eos_token_id} "
                        f"({tokenizer.eos_token!r}): llama.cpp would not stop where the adapter stops")
    template = getattr(tokenizer, "chat_template", None)
    if template and meta.get("tokenizer.chat_template") != template:
        problems.append("the GGUF's chat template (tokenizer.chat_template) differs from the training tokenizer's")
    return problems


def _modelfile_problems(modelfile: Path, ref: list[dict[str, Any]], tokenizer: Any,
                        system: str | None) -> tuple[list[str], list[bool]]:
    from lorastudio.modelfile import ModelfileError, ollama_prompt, parse_modelfile

    try:
        mf = parse_modelfile(modelfile.read_text(encoding="utf-8"))
    except (OSError, ModelfileError) as exc:
        return [f"{modelfile}: {exc}"], [False] * len(ref)
    problems: list[str] = []
    matches: list[bool] = []
    for r in ref:
        try:
            got = ollama_prompt(mf, r["messages"])
        except ModelfileError as exc:
            problems.append(f"{modelfile}: {exc}")
            return problems, [False] * len(ref)
        matches.append(got == r["prompt"])
    if not all(matches):
        bad = next(i for i, ok in enumerate(matches) if not ok)
        got = ollama_prompt(mf, ref[bad]["messages"])
        at = _common_prefix(list(got), list(ref[bad]["prompt"]))
        problems.append(f"the Modelfile TEMPLATE renders question {bad + 1} differently from the training chat "
                        f"template (first difference at character {at}: Ollama {got[at:at + 40]!r} vs training "
                        f"{ref[bad]['prompt'][at:at + 40]!r})")
    stops = set(mf.parameter("stop"))
    eos = tokenizer.eos_token
    if eos and eos not in stops:
        problems.append(f"the Modelfile has no PARAMETER stop {eos!r} (the end of an answer in training)")
    vocab = tokenizer.get_vocab()
    unknown = [s for s in stops if s not in vocab]
    if unknown:
        problems.append(f"the Modelfile stops on {unknown}, which the tokenizer does not have as tokens")
    temps = mf.parameter("temperature")
    if temps and temps[-1] not in ("0", "0.0"):
        problems.append(f"the Modelfile sets temperature {temps[-1]}; the adapter is checked greedy (temperature 0)")
    return problems, matches


def prepare_llamacpp() -> str | None:
    """Load llama.cpp now (before torch, so its threads get the short OpenMP spin that keeps them fast
    on a shared CPU; see lorastudio/llamacpp.py); None when ready, else why the check cannot run."""
    from lorastudio import llamacpp

    if not llamacpp.available():
        return "llama-cpp-python is not installed, so the export was not run in llama.cpp: " + llamacpp.install_hint()
    try:
        llamacpp.load_library()
    except llamacpp.LlamaCppError as exc:
        return str(exc)
    return None


def check_gguf(gguf_path: str | os.PathLike, dtype: str, reference: list[dict[str, Any]], tokenizer: Any, *,
               modelfile: str | os.PathLike | None = None, system: str | None = None,
               tokens: int = DEFAULT_TOKENS, threshold: tuple[str, float] | None = None,
               source: str = "") -> dict[str, Any]:
    """Run the GGUF in llama.cpp on the reference's prompts; the fidelity report (see module docstring)."""
    from lorastudio import llamacpp

    if not llamacpp.available():
        raise CheckError("llama-cpp-python is not installed, so the export cannot be run in llama.cpp: "
                         + llamacpp.install_hint())
    path = Path(gguf_path)
    criterion, share = threshold or THRESHOLDS.get(dtype, ("first_token", 0.6))
    t0 = time.perf_counter()
    problems = _metadata_problems(path, tokenizer)
    mf_match: list[bool | None] = [None] * len(reference)
    if modelfile is not None:
        mf_problems, matches = _modelfile_problems(Path(modelfile), reference, tokenizer, system)
        problems += mf_problems
        mf_match = list(matches)
    stops = stop_ids(tokenizer)
    longest = max(len(r["prompt_ids"]) for r in reference)
    model = llamacpp.LlamaCppModel(path, n_ctx=max(256, longest + tokens + 16), n_seq_max=1)
    rows = []
    try:
        for r, mf_ok in zip(reference, mf_match, strict=True):
            ids = model.tokenize(r["prompt"], special=True)
            got = model.greedy(ids, tokens, stop_ids=stops)
            want = r["tokens"]
            prefix = _common_prefix(got, want)
            identical = got == want
            row = {
                "question": r["messages"][-1]["content"],
                "identical": identical,
                "common_prefix": prefix,
                "prompt_ids_match": ids == r["prompt_ids"],
                "modelfile_prompt_match": mf_ok,
                "adapter_tokens": want,
                "export_tokens": got,
                "adapter_text": _decode(tokenizer, want),
                "export_text": _decode(tokenizer, got),
            }
            if not identical and prefix < len(r["margins"]):
                # How close the adapter's own choice was where the export left it (a near-tie or not).
                row["adapter_margin_at_divergence"] = round(r["margins"][prefix], 4)
            rows.append(row)
    finally:
        model.close()
    if not all(row["prompt_ids_match"] for row in rows):
        bad = [i + 1 for i, row in enumerate(rows) if not row["prompt_ids_match"]]
        problems.append(f"the GGUF's tokenizer encodes the prompt of question(s) {bad} differently from the "
                        "training tokenizer")
    identical = sum(row["identical"] for row in rows)
    first = sum(row["common_prefix"] > 0 for row in rows)
    agreeing = identical if criterion == "identical" else first
    need = math.ceil(share * len(rows) - 1e-9)
    if agreeing < need:
        what = f"first {tokens} greedy tokens" if criterion == "identical" else "first greedy token"
        problems.append(f"only {agreeing} of {len(rows)} questions have the adapter's {what} in llama.cpp "
                        f"(a {dtype} export needs {need})")
    return {
        "gguf": str(path),
        "type": dtype,
        "passed": not problems,
        "identical": identical,
        "total": len(rows),
        "criterion": criterion,
        "agreeing": agreeing,
        "required": need,
        "tokens": tokens,
        "mean_common_prefix": round(sum(r["common_prefix"] for r in rows) / max(1, len(rows)), 2),
        "first_token_agreement": first,
        "problems": problems,
        "questions_source": source,
        "system_prompt": system,
        "reference": "transformers: base + PEFT adapter (unmerged, float32), greedy",
        "seconds_llamacpp": round(time.perf_counter() - t0, 2),
        "llamacpp_threads_wait": llamacpp.omp_wait,
        "questions": rows,
    }


def fidelity_path(gguf_path: str | os.PathLike) -> Path:
    """Where the report is written: `<name>.fidelity.json` beside `<name>.gguf`."""
    p = Path(gguf_path)
    return p.with_name(p.stem + ".fidelity.json")


def write_report(report: dict[str, Any], gguf_path: str | os.PathLike) -> Path:
    out = fidelity_path(gguf_path)
    tmp = out.with_name(out.name + ".part")
    tmp.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    return out


def summary_lines(report: dict[str, Any], lang: str = "en") -> list[str]:
    """The CLI's lines: per question, then the verdict (and what to do when it failed); en or zh."""
    zh = lang == "zh"
    if zh:
        head = (f"保真检查（{report['type']}，llama.cpp 与 transformers 适配器对比前 {report['tokens']} 个贪心 token；"
                f"问题来源：{report['questions_source']}）：")
    else:
        head = (f"fidelity check ({report['type']}, llama.cpp vs the transformers adapter, first {report['tokens']} "
                f"greedy tokens; questions: {report['questions_source']}):")
    lines = [head]
    for i, q in enumerate(report["questions"], 1):
        if q["identical"]:
            mark = "相同" if zh else "same"
        else:
            mark = f"前 {q['common_prefix']} 个 token 后不同" if zh else f"differs after {q['common_prefix']} tokens"
        extra = "" if q["prompt_ids_match"] else (" [提示词分词不同]" if zh else " [prompt tokenized differently]")
        if q.get("modelfile_prompt_match") is False:
            extra += " [Modelfile 提示词不同]" if zh else " [Modelfile prompt differs]"
        lines.append(f"  {i}. {mark}{extra}: {q['question'][:60]!r}")
    first_only = report.get("criterion") == "first_token"
    if zh:
        need = f"{report['type']} 需要首个 token 相同 {report['required']}" if first_only else \
            f"{report['type']} 需要 {report['required']}"
        verdict = (f"{report['identical']}/{report['total']} 相同（{need}），首个 token 相同 "
                   f"{report.get('first_token_agreement', '?')}/{report['total']}，"
                   f"平均相同前缀 {report['mean_common_prefix']}/{report['tokens']} 个 token")
    else:
        need = (f"a {report['type']} export needs the first token on {report['required']}" if first_only
                else f"a {report['type']} export needs {report['required']}")
        verdict = (f"{report['identical']}/{report['total']} identical ({need}), first token "
                   f"{report.get('first_token_agreement', '?')}/{report['total']}, mean common prefix "
                   f"{report['mean_common_prefix']} of {report['tokens']} tokens")
    if report["passed"]:
        lines.append(("保真检查通过：" if zh else "fidelity PASSED: ") + verdict)
        return lines
    lines.append(("FAILED fidelity（保真检查未通过）：" if zh else "FAILED fidelity: ") + verdict)
    lines += [f"  - {p}" for p in report["problems"]]
    if zh:
        lines.append("  怎么办：不要发布这个文件；换 f16 重新导出（最忠实），对照报告里的回答；"
                     "若模板或分词不同，请作为缺陷报告。")
    else:
        lines.append("  what to do: do not ship this file; re-export as f16 (the most faithful type) and compare "
                     "the answers in the report; a template or tokenizer difference is a bug to report")
    return lines


__all__ = ["CheckError", "DEFAULT_QUESTIONS", "DEFAULT_TOKENS", "FALLBACK_QUESTIONS", "THRESHOLDS", "check_gguf", "prepare_llamacpp",
           "check_questions", "fidelity_path", "reference_greedy", "stop_ids", "summary_lines", "write_report"]
