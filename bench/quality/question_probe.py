"""Can the base model write new questions for a row from its answer? A probe, no training.

Each picked row's question and answer go into one prompt asking for N questions a customer could ask that the
answer answers, each about a different point, in the customer's words (a source of new wordings that asks about
an answer's other clauses, unlike `augment_paraphrases`, which rewrites the question). Greedy answers from the
llama.cpp engine on a CPU, printed as they come back; nothing is filtered, so what is printed is what a filter
would have to work with.

  .venv/bin/python bench/quality/question_probe.py [--rows 16,32,44] [--n 3] > probe.txt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

PROMPT = ("下面是一条客服知识库里的回答。请写出{n}个客户可能会问、并且这条回答能够回答的问题。每个问题问回答里不同的要点，"
          "用客户自己的说法，不要照抄原问题，不要回答。每行写一个问题，不要编号，不要其他内容。\n原问题：{q}\n回答：{a}")


def main() -> None:
    from sweep import read_jsonl

    from lorastudio.engines.batch import run_llamacpp_batch

    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="default")
    ap.add_argument("--data", default=str(ROOT / "lorastudio/assets/demo/yunzhan_train.jsonl"))
    ap.add_argument("--rows", default="16,32,44,47,117,5,24,60,100,140", help="0-based rows of --data")
    ap.add_argument("--n", type=int, default=3)
    args = ap.parse_args()
    rows = read_jsonl(args.data)
    picked = [int(x) for x in args.rows.split(",")]
    prompts = [[{"role": "user", "content": PROMPT.format(n=args.n, q=rows[i]["instruction"], a=rows[i]["response"])}]
               for i in picked]
    for i, text in zip(picked, run_llamacpp_batch(args.base, prompts, max_new_tokens=120), strict=True):
        print(f"row {i}: Q: {rows[i]['instruction']} | A: {rows[i]['response']}")
        print("  -> " + " || ".join(line for line in text.splitlines() if line.strip()))


if __name__ == "__main__":
    main()
