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

Without the default model (any machine, e.g. an idle one to read the engines' own speed):

    python bench/cpu_generate.py synthetic --workdir /tmp/synth --cores 0,1 [--rounds 2]

builds a random-weight model of the default's shape (Qwen2.5-0.5B), writes it as f16 GGUF
(`lorastudio.export.write_gguf`) and quantizes it to Q4_K_M (`lorastudio.llamacpp.quantize_gguf`), adds
a random r16 LoRA on the MLP linears (as our trainer's), and times in child processes pinned to
`--cores` (taskset): llama.cpp (default libgomp spinning, GOMP_SPINCOUNT=1000, OMP_WAIT_POLICY=PASSIVE)
and transformers (fp32, PEFT adapter): first token for a 50-token prompt, decode tok/s over 128 tokens
with the adapter, and 8 prompts × 64 tokens one by one and batched. Random weights never stop early, so
every answer runs to its limit.
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


SHAPE = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
             num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
             rms_norm_eps=1e-6, tie_word_embeddings=True)


def synthetic_build(work: Path) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    sys.path.insert(0, str(ROOT / "tests"))
    from inference_fixtures import build_tokenizer

    from lorastudio.export import write_gguf
    from lorastudio.llamacpp import quantize_gguf

    paths = {"hf": work / "hf", "f16": work / "synthetic-f16.gguf", "q4": work / "synthetic-q4_K_M.gguf",
             "adapter": work / "adapter"}
    if paths["q4"].is_file() and (paths["adapter"] / "adapter_model.safetensors").is_file():
        return paths
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    tokenizer = build_tokenizer(paths["hf"])
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**SHAPE)).eval()
    model.save_pretrained(paths["hf"])
    write_gguf(model, tokenizer, paths["f16"], "f16", name="synthetic")
    quantize_gguf(paths["f16"], paths["q4"], "q4_K_M", n_threads=os.cpu_count())
    peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["gate_proj", "up_proj", "down_proj"],
                                            init_lora_weights=False))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.mul_(0.01)
    peft.save_pretrained(paths["adapter"])
    print(f"synthetic model built in {time.perf_counter() - t:.0f} s", flush=True)
    return paths


def synthetic_child(engine: str, work: Path, threads: int) -> dict:
    """One engine's timings on the synthetic model (run pinned by the parent)."""
    import random

    rng = random.Random(0)
    prompt = [rng.randrange(400) for _ in range(50)]
    batch = [[rng.randrange(400) for _ in range(rng.randrange(30, 70))] for _ in range(8)]
    paths = {"hf": work / "hf", "q4": work / "synthetic-q4_K_M.gguf", "adapter": work / "adapter"}
    out: dict = {}
    if engine == "llama.cpp":
        from lorastudio import llamacpp

        m = llamacpp.LlamaCppModel(paths["q4"], n_threads=threads)
        lora = llamacpp.adapter_gguf(paths["adapter"])
        out["omp_wait"] = llamacpp.omp_wait
        m.greedy(prompt, 2, lora=lora)  # warm up (repacking, first graph)
        for label, adapter in (("base", None), ("adapter", lora)):
            m._forget()
            t = time.perf_counter()
            first = None
            n = 0
            for _ in m.generate(prompt, lora=adapter, max_new_tokens=128):
                first = first if first is not None else time.perf_counter() - t
                n += 1
            total = time.perf_counter() - t
            out[f"{label}_first_token_s"] = round(first, 3)
            out[f"{label}_decode_tok_s"] = round((n - 1) / (total - first), 1)
        t = time.perf_counter()
        for p in batch:
            m.generate_many([p], lora=lora, max_new_tokens=64)
        out["one_by_one_8x64_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        m.generate_many(batch, lora=lora, max_new_tokens=64, parallel=8)
        out["batched_8x64_s"] = round(time.perf_counter() - t, 2)
    else:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(paths["hf"], dtype=torch.float32),
                                          str(paths["adapter"])).eval()
        kw = dict(do_sample=False, eos_token_id=None, pad_token_id=0)
        with torch.inference_mode():
            ids = torch.tensor([prompt])
            model.generate(input_ids=ids, max_new_tokens=2, min_new_tokens=2, **kw)
            t = time.perf_counter()
            model.generate(input_ids=ids, max_new_tokens=1, min_new_tokens=1, **kw)
            first = time.perf_counter() - t
            t = time.perf_counter()
            model.generate(input_ids=ids, max_new_tokens=64, min_new_tokens=64, **kw)
            total = time.perf_counter() - t
            out["adapter_first_token_s"] = round(first, 3)
            out["adapter_decode_tok_s"] = round(63 / (total - first), 1)
            width = max(len(p) for p in batch)
            bi = torch.zeros((8, width), dtype=torch.long)
            mask = torch.zeros((8, width), dtype=torch.long)
            for r, p in enumerate(batch):
                bi[r, width - len(p):] = torch.tensor(p)
                mask[r, width - len(p):] = 1
            t = time.perf_counter()
            model.generate(input_ids=bi, attention_mask=mask, max_new_tokens=64, min_new_tokens=64, **kw)
            out["batched_8x64_s"] = round(time.perf_counter() - t, 2)
    return out


def synthetic(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="cpu_generate.py synthetic")
    ap.add_argument("--workdir", default="/tmp/lorastudio-synthetic")
    ap.add_argument("--cores", default="0,1", help="CPUs the timed children are pinned to (taskset -c)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-transformers", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    work = Path(args.workdir)
    threads = len(args.cores.split(","))
    if args.child:
        print("RESULT " + json.dumps(synthetic_child(args.child, work, threads)), flush=True)
        return 0
    synthetic_build(work)
    variants = [("llama.cpp", "default spinning", {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "300000"}),
                ("llama.cpp", "GOMP_SPINCOUNT=1000 (lorastudio)", {}),
                ("llama.cpp", "OMP_WAIT_POLICY=PASSIVE", {"OMP_WAIT_POLICY": "PASSIVE"})]
    if not args.no_transformers:
        variants.append(("transformers", "fp32 + PEFT", {}))
    print(f"CPU: {cpu_line()}; children pinned to CPUs {args.cores}", flush=True)
    for r in range(args.rounds):
        for engine, label, env_set in variants:
            env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
            env.update({k: v for k, v in env_set.items() if v is not None})
            cmd = ["taskset", "-c", args.cores, sys.executable, __file__, "synthetic", "--workdir", str(work),
                   "--cores", args.cores, "--child", engine]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            res = json.loads(line[7:]) if line else {"error": proc.stderr[-800:]}
            print(f"round {r + 1} {engine:>12} {label:<34} {res}", flush=True)
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "synthetic":
        return synthetic(sys.argv[2:])
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
