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
sys.path[:0] = [str(ROOT), str(ROOT / "bench/quality")]

from paired import _delta  # noqa: E402  (mean ± standard error, as the paired tables print it)
from sweep import fact_score  # noqa: E402  (whole facts, as score.py counts them)


def read_jsonl(path: str | Path) -> list[dict]:
    opener = lzma.open if str(path).endswith(".xz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def routed(full: list[bool], weak: list[bool], tops: list[float], tau: float | None) -> list[bool]:
    """Per question: the weaker reading's result where its top score is below `tau` (every question when None)."""
    return [w if tau is None or t < tau else f for f, w, t in zip(full, weak, tops, strict=True)]


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
            facts = routed(r["fact_ok"], weak["fact_ok"], tops["fact"], tau)
            deltas["whole"].append(fact_score(facts, sets["fact"]) - r["whole_facts"])
            deltas["hard"].append(sum(routed(r["hard_ok"], weak["hard_ok"], tops["hard"], tau)) - r["hard"])
            deltas["general"].append(sum(routed(r["general_ok"], weak["general_ok"], tops["general"], tau)) - r["general"])
        facts_tops = tops["fact"] + tops["hard"]
        weak_general = 1.0 if tau is None else sum(t < tau for t in tops["general"]) / len(tops["general"])
        weak_facts = 1.0 if tau is None else sum(t < tau for t in facts_tops) / len(facts_tops)
        print(f"{'all' if tau is None else tau} | {weak_general:.0%} | {weak_facts:.0%} | {_delta(deltas['whole'])} | "
              f"{_delta(deltas['hard'])} | {_delta(deltas['general'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
