"""Paired summary of product sweeps: each recipe's means over its seeds, and its difference from a
baseline recipe run with the same seeds (mean ± standard error), overall and per kind of the hard set.

    python bench/quality/paired.py bench/quality/results/product_sweep14a.jsonl [more.jsonl …] [--base n_default]

Recipes are named NAME or NAME_sN (seed N; no suffix = seed 0), as `product_sweep.py` writes them.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict

KINDS = ("apply", "neighbour", "two", "scenario")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _delta(values: list[float]) -> str:
    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
    return f"{_mean(values):+.1f}±{se:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--base", default="n_default")
    a = ap.parse_args()
    runs: dict[str, dict[int, dict]] = defaultdict(dict)
    for path in a.files:
        for line in open(path, encoding="utf-8"):
            row = json.loads(line)
            if "error" in row:  # a run that failed (out of memory, …): no scores
                continue
            name, seed = re.match(r"(.*?)(?:_s(\d+))?$", row["recipe"]).groups()
            runs[name][int(seed or 0)] = row
    base = runs.get(a.base, {})
    first = next(iter(next(iter(runs.values())).values()))
    print(f"recipe n hard({first['hard_n']}) [apply neighbour two scenario] old({first['facts_n']}) "
          f"whole({first['facts_n'] // 2}) general({first['general_n']}) | paired: "
          "n d_hard d_old d_whole d_general [d_apply d_neighbour d_two d_scenario]")
    for name, seeds in runs.items():
        rows = list(seeds.values())
        kinds = " ".join(f"{_mean([r['hard_by_kind'][k][0] for r in rows]):4.1f}" for k in KINDS)
        line = (f"{name:12s} {len(rows):2d} {_mean([r['hard'] for r in rows]):5.1f}±"
                f"{statistics.pstdev([r['hard'] for r in rows]):3.1f} [{kinds}] "
                f"{_mean([r['facts'] for r in rows]):5.1f} {_mean([r['whole_facts'] for r in rows]):4.1f} "
                f"{_mean([r['general'] for r in rows]):4.1f}")
        common = sorted(s for s in seeds if s in base)
        if name != a.base and common:
            def d(get, seeds=seeds, common=common) -> str:
                return _delta([get(seeds[s]) - get(base[s]) for s in common])
            line += (f" | n{len(common)} {d(lambda r: r['hard'])} {d(lambda r: r['facts'])} "
                     f"{d(lambda r: r['whole_facts'])} {d(lambda r: r['general'])} ["
                     + " ".join(d(lambda r, k=k: r["hard_by_kind"][k][0]) for k in KINDS) + "]")
        print(line)


if __name__ == "__main__":
    main()
