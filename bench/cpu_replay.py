"""Replay answers generated inside training on a CPU: the transformers path (the trainer's loaded
model, `augment.generate_batch`, batch 16) against the llama.cpp path (`engines.batch`, a child
process, continuous batching of 8), same prompts, greedy, `replay.MAX_NEW_TOKENS` (192) new tokens.

    python bench/cpu_replay.py [--prompts 16] [--json out.json]

Times only the generation (as training sees it: the trainer has its model loaded already; the
llama.cpp child's start, tokenizer and GGUF load are included). The demo file itself needs none of
this on the default model: all 194 built-in prompts are answered in the shipped cache
(lorastudio/assets/replay/); this is the cost when answers are missing (a user's own
`replay_prompts`, another GGUF, or no shipped cache).
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--json")
    args = ap.parse_args()
    from lorastudio.engines.batch import run_llamacpp_batch
    from lorastudio.hardware import cpu_class
    from lorastudio.train.replay import MAX_NEW_TOKENS, ordered_prompts

    chats = [[{"role": "user", "content": p}] for p in ordered_prompts()[:args.prompts]]
    load = os.getloadavg()
    t = time.perf_counter()
    fast = run_llamacpp_batch("default", chats, max_new_tokens=MAX_NEW_TOKENS, batch_size=8)
    llama_s = time.perf_counter() - t
    print(f"llama.cpp child: {llama_s:.1f} s for {len(chats)} prompts", flush=True)

    from lorastudio.models import load_model
    from lorastudio.train.augment import generate_batch

    model, tokenizer = load_model("default")
    t = time.perf_counter()
    slow = generate_batch(model, tokenizer, chats, max_new_tokens=MAX_NEW_TOKENS, batch_size=16)
    tf_s = time.perf_counter() - t
    print(f"transformers ({next(model.parameters()).dtype}, batch 16): {tf_s:.1f} s", flush=True)
    out = {"cpu": cpu_class(), "prompts": len(chats), "max_new_tokens": MAX_NEW_TOKENS,
           "load_before": [round(x, 1) for x in load], "load_after": [round(x, 1) for x in os.getloadavg()],
           "llama.cpp_s": round(llama_s, 1), "transformers_s": round(tf_s, 1),
           "speedup": round(tf_s / llama_s, 2), "identical_answers": sum(a == b for a, b in zip(fast, slow, strict=True)),
           "chars": {"llama.cpp": sum(map(len, fast)), "transformers": sum(map(len, slow))}}
    print(json.dumps(out, ensure_ascii=False))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({**out, "answers": {"llama.cpp": fast, "transformers": slow}}, fh, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
