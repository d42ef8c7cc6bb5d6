"""CPU generation: the llama.cpp engine against the transformers engine (docs/ENGINE.md).

    python bench/cpu_generate.py --adapter runs/faq [--tf-questions 55] [--json out.json]

Needs the default model (`lorastudio models --prepare default`), `llama-cpp-python`, and a LoRA
adapter trained on `default`. One run, three parts, each interleaving the two engines (A B A B …) so
the neighbours' load on a shared machine hits both alike:

1. single stream, default model + adapter, through `ChatEngine.stream`: first-token latency for a
   ~50-token prompt, cold (KV cache empty: the adapter was just switched) and warm (the chat
   template's system prompt still cached), and decode tok/s over 128 new tokens;
2. `lorastudio generate --max-new-tokens 64` over 55 questions (31 reworded fact questions from
   evalsets/yunzhan_paraphrase.jsonl + the 24 of evalsets/general.jsonl), the whole command timed
   (model load included) for `--engine llama.cpp` and `--engine transformers`; `--tf-questions N` times
   the transformers command on the first N questions only (said in the output) when 55 take too long;
3. agreement: greedy answers (96 new tokens, as `lorastudio demo`) of both engines to the bundled demo
   questions, with the adapter: per question, whether the same key strings (`must_contain`) are
   present in both answers, and whether the answers are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LONG_ANSWER = ("请详细介绍云栈客服系统的工单处理流程，包括工单创建、分配、升级、回访和关单的每个环节，"
               "以及每个环节需要注意的事项。")


def cpu_line() -> str:
    from lorastudio.hardware import cpu_class, physical_cores

    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{model}, {physical_cores()} cores, class {cpu_class()}, load average {load:.1f}"


def questions_55(out: Path) -> Path:
    rows = [json.loads(line) for line in (ROOT / "evalsets" / "yunzhan_paraphrase.jsonl").read_text().splitlines()
            if line.strip()][:31]
    rows += [json.loads(line) for line in (ROOT / "evalsets" / "general.jsonl").read_text().splitlines()
             if line.strip()]
    out.write_text("".join(json.dumps({"question": r["question"]}, ensure_ascii=False) + "\n" for r in rows),
                   encoding="utf-8")
    return out


def prompt_of(engine, tokens: int) -> str:
    """A question whose rendered prompt is about `tokens` tokens (the chat template included)."""
    base = LONG_ANSWER
    q = base
    while len(engine._encode([{"role": "user", "content": q}])) < tokens:
        q += "请说明。"
    while len(engine._encode([{"role": "user", "content": q}])) > tokens and len(q) > 4:
        q = q[:-1]
    return q


def single_stream(engine, question: str, adapter: str, max_new: int) -> dict:
    stats: dict = {}
    start = time.perf_counter()
    first = None
    for _ in engine.stream(question, adapter=adapter, max_new_tokens=max_new, stats=stats):
        if first is None:
            first = time.perf_counter() - start
    total = time.perf_counter() - start
    n = stats["completion_tokens"]
    return {"first_token_s": round(first, 3), "tokens": n, "total_s": round(total, 2),
            "decode_tok_s": round((n - 1) / (total - first), 1) if n > 1 and total > first else None,
            "prompt_tokens": stats["prompt_tokens"]}


def part_single(adapter: str, rounds: int, tf: bool) -> dict:
    from lorastudio.inference import ChatEngine

    t = time.perf_counter()
    fast = ChatEngine("default", engine="llama.cpp")
    load_fast = time.perf_counter() - t
    print(f"llama.cpp engine loaded in {load_fast:.1f} s: {fast.engine_reason}", flush=True)
    slow = None
    if tf:
        t = time.perf_counter()
        slow = ChatEngine("default", engine="transformers")
        print(f"transformers engine loaded in {time.perf_counter() - t:.1f} s", flush=True)
    q = prompt_of(fast, 50)
    fast.generate("hi", adapter=adapter, max_new_tokens=1)  # converts + loads the adapter once
    if slow is not None:
        slow.generate("hi", adapter=adapter, max_new_tokens=1)
    out: dict = {"llama.cpp": {"cold": [], "warm": []}, "transformers": {"cold": []}}
    for r in range(rounds):
        fast.generate("hi", max_new_tokens=1)  # base model: switching back to the adapter empties the cache
        cold = single_stream(fast, q, adapter, 128)
        warm = single_stream(fast, q + "谢谢。", adapter, 128)  # shares the system prompt with the last call
        out["llama.cpp"]["cold"].append(cold)
        out["llama.cpp"]["warm"].append(warm)
        print(f"round {r + 1} llama.cpp    cold {cold}\n                     warm {warm}", flush=True)
        if slow is not None:
            s = single_stream(slow, q, adapter, 64)
            out["transformers"]["cold"].append(s)
            print(f"round {r + 1} transformers      {s}", flush=True)
    return out


def run_generate(engine: str, adapter: str, qfile: Path, workdir: Path) -> float:
    out = workdir / f"answers-{engine}.jsonl"
    cmd = [sys.executable, "-m", "lorastudio", "generate", "--base", "default", "--adapter", adapter,
           "--input", str(qfile), "--output", str(out), "--max-new-tokens", "64", "--engine", engine]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    took = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    line = next((x for x in proc.stderr.splitlines() if x.startswith("engine:")), "?")
    print(f"  {engine:>12}: {took:7.1f} s  ({line})", flush=True)
    return took


def part_generate(adapter: str, tf_questions: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        q55 = questions_55(work / "q55.jsonl")
        lines = q55.read_text(encoding="utf-8").splitlines()
        qtf = q55
        if tf_questions < len(lines):
            qtf = work / f"q{tf_questions}.jsonl"
            qtf.write_text("\n".join(lines[:tf_questions]) + "\n", encoding="utf-8")
        res: dict = {"questions": len(lines), "tf_questions": min(tf_questions, len(lines)),
                     "llama.cpp_s": [], "transformers_s": []}
        for r in range(rounds):
            print(f"round {r + 1}: lorastudio generate --max-new-tokens 64", flush=True)
            res["llama.cpp_s"].append(round(run_generate("llama.cpp", adapter, q55, work), 1))
            res["transformers_s"].append(round(run_generate("transformers", adapter, qtf, work), 1))
        return res


def part_agreement(adapter: str) -> dict:
    from lorastudio.evaluate import load_questions, normalize
    from lorastudio.inference import ChatEngine

    questions = load_questions(ROOT / "lorastudio" / "assets" / "demo" / "demo_questions.jsonl")
    msgs = [q.question for q in questions]
    fast = ChatEngine("default", engine="llama.cpp")
    a = fast.generate_batch(msgs, adapter=adapter, max_new_tokens=96)
    del fast
    slow = ChatEngine("default", engine="transformers")
    b = slow.generate_batch(msgs, adapter=adapter, max_new_tokens=96)
    rows = []
    for q, x, y in zip(questions, a, b, strict=True):
        kx = [k for k in q.must_contain if normalize(k) in normalize(x)]
        ky = [k for k in q.must_contain if normalize(k) in normalize(y)]
        rows.append({"question": q.question, "keys": q.must_contain, "llama.cpp_keys": kx, "transformers_keys": ky,
                     "keys_agree": kx == ky, "identical": x == y, "llama.cpp": x, "transformers": y})
    n = len(rows)
    summary = {
        "questions": n,
        "key_facts_agree": sum(r["keys_agree"] for r in rows),
        "identical_answers": sum(r["identical"] for r in rows),
        "all_keys_llama.cpp": sum(len(r["llama.cpp_keys"]) == len(r["keys"]) for r in rows),
        "all_keys_transformers": sum(len(r["transformers_keys"]) == len(r["keys"]) for r in rows),
        "key_strings_agree": sum((k in r["llama.cpp_keys"]) == (k in r["transformers_keys"])
                                 for r in rows for k in r["keys"]),
        "key_strings": sum(len(r["keys"]) for r in rows),
    }
    for r in rows:
        mark = "=" if r["identical"] else ("~" if r["keys_agree"] else "≠")
        print(f" {mark} {r['question'][:30]}  keys llama.cpp {r['llama.cpp_keys']} / transformers "
              f"{r['transformers_keys']}", flush=True)
    print(f"agreement: {summary}", flush=True)
    return {"summary": summary, "rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", required=True, help="a LoRA adapter trained on `default`")
    ap.add_argument("--rounds", type=int, default=3, help="single-stream rounds (A B A B …)")
    ap.add_argument("--generate-rounds", type=int, default=1)
    ap.add_argument("--tf-questions", type=int, default=55,
                    help="questions for the transformers `generate` run (fewer when 55 take too long)")
    ap.add_argument("--skip", action="append", default=[], choices=("single", "generate", "agreement"))
    ap.add_argument("--no-tf-single", action="store_true", help="single stream on llama.cpp only")
    ap.add_argument("--json", help="write every number here")
    args = ap.parse_args()
    adapter = str(Path(args.adapter).resolve())
    result: dict = {"cpu": cpu_line()}
    print(f"CPU: {result['cpu']}", flush=True)
    if "single" not in args.skip:
        result["single"] = part_single(adapter, args.rounds, not args.no_tf_single)
    if "generate" not in args.skip:
        result["generate"] = part_generate(adapter, args.tf_questions, args.generate_rounds)
        g = result["generate"]
        fast = min(g["llama.cpp_s"])
        slow = min(g["transformers_s"]) * g["questions"] / g["tf_questions"]
        note = "" if g["tf_questions"] == g["questions"] else \
            f" (transformers timed on {g['tf_questions']} questions, scaled to {g['questions']})"
        print(f"generate 55 × ≤64 tokens: llama.cpp {fast:.1f} s, transformers {slow:.1f} s → "
              f"{slow / fast:.1f}× faster{note}", flush=True)
    if "agreement" not in args.skip:
        result["agreement"] = part_agreement(adapter)
    result["cpu_after"] = cpu_line()
    if args.json:
        Path(args.json).write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
