"""What a per-question adapter strength would have answered, from answers already scored (no model run).

Session 27's question: general answers rise when the adapter reads at a lower strength (docs/QUALITY.md), but the
harder fact questions fall. Would a router keep both, answering at the lower strength only the questions that look
unlike every training row (the TF-IDF top score of `lorastudio.knowledge.Retriever` below a threshold)? Each
product-sweep record scored with `--scales` holds, for every question, whether the answer was right at full and at
the lower strength, so the router's outcome is a pick per question; this prints its Δ against full strength (mean ±
standard error over the records' seeds) for each threshold.

    python bench/quality/reading_router.py --data lorastudio/assets/demo/yunzhan_train.jsonl --evals yunzhan \
        --scale 0.6 bench/quality/results/product_sweep32_demo10.jsonl.xz
"""

from __future__ import annotations

import argparse
import json
import lzma
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def read_jsonl(path: str | Path) -> list[dict]:
    opener = lzma.open if str(path).endswith(".xz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def whole_facts(ok: list[bool], items: list[dict]) -> int:
    facts: dict = {}
    for good, item in zip(ok, items, strict=True):
        facts.setdefault(item.get("fact"), []).append(good)
    return sum(all(v) for v in facts.values())


def mean_se(xs: list[float]) -> str:
    if len(xs) < 2:
        return f"{xs[0]:+.2f}" if xs else "-"
    return f"{statistics.mean(xs):+.2f} ± {statistics.stdev(xs) / len(xs) ** 0.5:.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", help="product_sweep results (.jsonl or .jsonl.xz)")
    ap.add_argument("--data", required=True, help="the training file the adapters learnt (their knowledge rows)")
    ap.add_argument("--evals", required=True, help="evalsets/EVALS_paraphrase.jsonl and EVALS_hard.jsonl")
    ap.add_argument("--scale", required=True, help="the lower strength, as the records name it (e.g. 0.6)")
    ap.add_argument("--thresholds", default="0.12,0.15,0.18,0.2,0.25")
    args = ap.parse_args()

    from lorastudio.data import validate
    from lorastudio.knowledge import Retriever, rows_of

    retriever = Retriever(rows_of(validate(args.data).conversations))

    def top(question: str) -> float:
        return max(retriever.scores(question).values(), default=0.0)

    sets = {"fact": read_jsonl(ROOT / f"evalsets/{args.evals}_paraphrase.jsonl"),
            "hard": read_jsonl(ROOT / f"evalsets/{args.evals}_hard.jsonl"),
            "general": read_jsonl(ROOT / "evalsets/general.jsonl")}
    tops = {name: [top(item["question"]) for item in items] for name, items in sets.items()}
    records = [r for path in args.results for r in read_jsonl(path)
               if "error" not in r and "hard_ok" in r.get("scaled", {}).get(args.scale, {})]
    if not records:
        print(f"no record scored at x{args.scale} with its harder set", file=sys.stderr)
        return 1
    print(f"{len(records)} adapters at full strength: whole facts {statistics.mean(r['whole_facts'] for r in records):.1f}, "
          f"harder {statistics.mean(r['hard'] for r in records):.1f}, general {statistics.mean(r['general'] for r in records):.1f}")
    print("threshold | general read weaker | fact questions read weaker | Δ whole facts | Δ harder | Δ general")
    for tau in [None, *(float(t) for t in args.thresholds.split(","))]:
        deltas: dict[str, list[float]] = {"whole": [], "hard": [], "general": []}
        for r in records:
            weak = r["scaled"][args.scale]

            def pick(name: str, key: str, r=r, weak=weak, tau=tau) -> list[bool]:
                return [w if tau is None or t < tau else f for f, w, t in zip(r[key], weak[key], tops[name], strict=True)]

            deltas["whole"].append(whole_facts(pick("fact", "fact_ok"), sets["fact"]) - r["whole_facts"])
            deltas["hard"].append(sum(pick("hard", "hard_ok")) - r["hard"])
            deltas["general"].append(sum(pick("general", "general_ok")) - r["general"])
        facts_tops = tops["fact"] + tops["hard"]
        weak_general = 1.0 if tau is None else sum(t < tau for t in tops["general"]) / len(tops["general"])
        weak_facts = 1.0 if tau is None else sum(t < tau for t in facts_tops) / len(facts_tops)
        print(f"{'all' if tau is None else tau} | {weak_general:.0%} | {weak_facts:.0%} | {mean_se(deltas['whole'])} | "
              f"{mean_se(deltas['hard'])} | {mean_se(deltas['general'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
