"""Score an adapter (or the base model) on the quality eval sets, with greedy answers, the sweep's way.

  .venv/bin/python bench/quality/score.py --base default --adapter /tmp/q_final --out /tmp/q_final/quality.json

evalsets/yunzhan_paraphrase.jsonl: an answer counts when it contains every `must_contain` string;
evalsets/general.jsonl: the same, where an item of `must_contain` may be a list of alternatives;
evalsets/yunzhan_hard.jsonl (issue 13's harder set: rules applied to new cases, two facts at once,
neighbouring facts, colloquial scenarios): the same, also counted per `kind` (`--no-hard` skips it).
(`lorastudio eval` scores the same files, normalised; this script keeps the sweep's exact matching so
numbers compare with bench/quality/results/.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    import torch
    from sweep import read_jsonl

    from lorastudio.models import load_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="default")
    ap.add_argument("--adapter", default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--no-hard", action="store_true", help="skip evalsets/yunzhan_hard.jsonl")
    ap.add_argument("--scales", default="1", help="comma-separated LoRA strengths to score the adapter at "
                    "(1 = as trained); each after the first writes OUT with _x<scale> before .json")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model, tok = load_model(args.base)
    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter)
    model.eval()
    facts = read_jsonl(ROOT / "evalsets/yunzhan_paraphrase.jsonl")
    general = read_jsonl(ROOT / "evalsets/general.jsonl")
    hard = [] if args.no_hard else read_jsonl(ROOT / "evalsets/yunzhan_hard.jsonl")
    layers = [m for m in model.modules() if isinstance(getattr(m, "scaling", None), dict)]
    trained = [dict(m.scaling) for m in layers]
    for i, scale in enumerate(float(x) for x in args.scales.split(",")):
        for m, orig in zip(layers, trained, strict=True):
            m.scaling = {k: v * scale for k, v in orig.items()}
        out = Path(args.out)
        answer(model, tok, facts, general, args, out if i == 0 else out.with_name(f"{out.stem}_x{scale:g}.json"),
               scale, hard)


def answer(model, tok, facts, general, args, out: Path, scale: float, hard: list[dict] | None = None) -> None:
    """Greedy answers of `model` (its LoRA at `scale`) to both sets, scored the sweep's way, into `out`."""
    from sweep import fact_score, score  # the sweep's scoring, unchanged

    from lorastudio.train.augment import generate_batch

    t0 = time.time()
    fa = generate_batch(model, tok, [[{"role": "user", "content": f["question"]}] for f in facts],
                        max_new_tokens=128, batch_size=args.batch_size)
    ga = generate_batch(model, tok, [[{"role": "user", "content": g["question"]}] for g in general],
                        max_new_tokens=160, batch_size=args.batch_size)
    ha = generate_batch(model, tok, [[{"role": "user", "content": h["question"]}] for h in hard],
                        max_new_tokens=128, batch_size=args.batch_size) if hard else []
    fs, fok = score(fa, facts)
    gs, gok = score(ga, general)
    res = {"base": args.base, "adapter": args.adapter, "scale": scale, "facts": fs, "facts_n": len(facts),
           "facts_a": sum(fok[0::2]), "facts_b": sum(fok[1::2]), "facts_by_fact": fact_score(fok, facts),
           "general": gs, "general_n": len(general), "eval_s": round(time.time() - t0, 1),
           "fact_answers": fa, "fact_ok": fok, "general_answers": ga, "general_ok": gok}
    if hard:
        hs, hok = score(ha, hard)
        kinds: dict[str, list[int]] = {}
        for good, item in zip(hok, hard, strict=True):
            kinds.setdefault(item.get("kind", "?"), [0, 0])
            kinds[item.get("kind", "?")][0] += int(good)
            kinds[item.get("kind", "?")][1] += 1
        res.update(hard=hs, hard_n=len(hard), hard_by_kind=kinds, hard_answers=ha, hard_ok=hok)
    out.write_text(json.dumps(res, ensure_ascii=False, indent=1), encoding="utf-8")
    hard_line = f"hard {res['hard']}/{res['hard_n']} {res['hard_by_kind']}, " if hard else ""
    print(f"x{scale:g}: {hard_line}facts {fs}/{len(facts)} (whole facts {res['facts_by_fact']}/40), "
          f"general {gs}/{len(general)}, {res['eval_s']} s")


if __name__ == "__main__":
    main()
