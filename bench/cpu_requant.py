"""Would another quantization of the default GGUF decode faster in llama.cpp, and at what cost?

    python bench/cpu_requant.py [--types q8_0,q4_0] [--rounds 3] [--json out.json]

Requantizes the shipped default GGUF (Q4_K_M: mostly Q5_0 and Q8_0 tensors, since the 0.5B model's
896-wide rows do not fit K-quant blocks) with llama.cpp's own quantizer (`allow_requantize`), then, in
one process, A B C A B C …: greedy decode of 128 tokens after a ~45-token prompt on 2 threads
(tok/s after the first token, and the first-token time), and agreement with the shipped file: identical
first 16 greedy tokens and identical first token over 12 general + 8 fact questions (base model, no
adapter; the chat template with Qwen's default system prompt). A requantization from a quantized file
loses precision (Q5_0 → Q4_0), so speed alone decides nothing: the agreement is the price.
Needs the default model (`lorastudio models --prepare default`) and llama-cpp-python.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GOMP_SPINCOUNT", "1000")

PROMPT = ("请详细介绍云栈客服系统的工单处理流程，包括工单创建、分配、升级、回访和关单的每个环节，"
          "以及每个环节需要注意的事项。")
SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def chat(question: str, system: bool = False) -> str:
    head = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n" if system else ""
    return f"{head}<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def requantize(src: Path, dst: Path, qtype: str) -> float:
    from lorastudio import llamacpp

    lib = llamacpp._lib()  # noqa: SLF001 - a bench: the raw quantizer with allow_requantize
    params = lib.llama_model_quantize_default_params()
    params.ftype = getattr(lib, f"LLAMA_FTYPE_MOSTLY_{qtype.upper()}")
    params.nthread = 2
    params.allow_requantize = True
    start = time.perf_counter()
    if lib.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"requantizing to {qtype} failed")
    return time.perf_counter() - start


def greedy(model, prompt: str, limit: int):
    model.reset()
    tokens = model.tokenize(prompt.encode(), special=True)
    out, start, first = [], time.perf_counter(), None
    for tok in model.generate(tokens, temp=0.0, top_k=1):
        if first is None:
            first = time.perf_counter()
        if tok == model.token_eos() or len(out) >= limit:
            break
        out.append(tok)
    return out, len(tokens), first - start, time.perf_counter() - first


def main() -> None:
    from llama_cpp import Llama

    from lorastudio.models import resolve_default_gguf

    ap = argparse.ArgumentParser()
    ap.add_argument("--types", default="q8_0,q4_0")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default="/tmp/lorastudio-requant")
    ap.add_argument("--json")
    a = ap.parse_args()
    shipped = resolve_default_gguf()
    files = {"shipped": shipped}
    Path(a.workdir).mkdir(parents=True, exist_ok=True)
    for qtype in a.types.split(","):
        dst = Path(a.workdir) / f"default-{qtype}.gguf"
        if not dst.exists():
            print(f"requantize {qtype}: {requantize(shipped, dst, qtype):.1f} s", flush=True)
        files[qtype] = dst
    models = {k: Llama(model_path=str(p), n_threads=2, n_ctx=1024, verbose=False) for k, p in files.items()}
    out = {"cpu": os.uname().machine, "sizes_mb": {k: round(p.stat().st_size / 1e6, 1) for k, p in files.items()},
           "decode": {k: [] for k in files}, "agreement": {}}
    for rnd in range(a.rounds):
        for name, model in models.items():
            toks, n_prompt, first_s, rest_s = greedy(model, chat(PROMPT), 128)
            row = {"prompt_tokens": n_prompt, "first_token_s": round(first_s, 3),
                   "decode_tok_s": round((len(toks) - 1) / rest_s, 1)}
            out["decode"][name].append(row)
            print(rnd, name, row, flush=True)
    questions = [json.loads(line)["question"] for line in (ROOT / "evalsets/general.jsonl").open()][:12]
    questions += [json.loads(line)["question"] for line in (ROOT / "evalsets/yunzhan_paraphrase.jsonl").open()][:8]
    reference = [greedy(models["shipped"], chat(q, system=True), 16)[0] for q in questions]
    for name, model in models.items():
        if name == "shipped":
            continue
        answers = [greedy(model, chat(q, system=True), 16)[0] for q in questions]
        out["agreement"][name] = {"questions": len(questions),
                                  "identical_16": sum(x == y for x, y in zip(answers, reference, strict=True)),
                                  "identical_first": sum(x[:1] == y[:1] for x, y in zip(answers, reference, strict=True))}
        print(name, out["agreement"][name], flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
