"""What the knowledge rows cost an answer on this machine: one engine, one adapter, each question asked with its
closest training rows and without them, alternately (A B A B …, so a neighbour's load hits both alike).

    python bench/knowledge_latency.py --adapter runs/yunzhan [--questions 24] [--json out.json]

Prints, per mode, the median prompt length in tokens, time to the first answer token (the prompt's processing,
where the rows cost) and the whole answer's time (64 new tokens at most, greedy), through `ChatEngine.stream`
as the CLI, the studio and the HTTP API call it. The questions: the first N of evalsets/yunzhan_hard.jsonl.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> None:
    from lorastudio.inference import ChatEngine

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="default")
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--questions", type=int, default=24)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    items = [json.loads(line) for line in (ROOT / "evalsets/yunzhan_hard.jsonl").read_text(encoding="utf-8").splitlines()]
    questions = [item["question"] for item in items[:args.questions]]
    engine = ChatEngine(args.base)
    engine.generate("你好", adapter=args.adapter, max_new_tokens=4)  # load and convert the adapter first
    runs: dict[str, list[dict]] = {"rows": [], "weights": []}
    for q in questions:
        for mode in ("rows", "weights"):
            engine.knowledge = mode == "rows"
            stats: dict = {}
            t0 = time.perf_counter()
            first = None
            for piece in engine.stream(q, adapter=args.adapter, max_new_tokens=args.max_new_tokens, stats=stats):
                if first is None and piece:
                    first = time.perf_counter() - t0
            runs[mode].append({"prompt_tokens": stats["prompt_tokens"], "first_s": first or 0.0,
                               "total_s": time.perf_counter() - t0, "new_tokens": stats["completion_tokens"]})
    out = {"engine": engine.engine, "engine_reason": engine.engine_reason, "machine": platform.processor() or
           platform.machine(), "questions": len(questions), "max_new_tokens": args.max_new_tokens}
    for mode, rs in runs.items():
        out[mode] = {key: round(statistics.median(r[key] for r in rs), 3)
                     for key in ("prompt_tokens", "first_s", "total_s", "new_tokens")}
        print(f"{mode:8s} median prompt {out[mode]['prompt_tokens']:.0f} tokens, first token {out[mode]['first_s']:.2f} s, "
              f"answer {out[mode]['total_s']:.2f} s ({out[mode]['new_tokens']:.0f} new tokens)", flush=True)
    print(f"engine: {engine.engine} ({engine.engine_reason})")
    if args.json:
        Path(args.json).write_text(json.dumps({**out, "runs": runs}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
