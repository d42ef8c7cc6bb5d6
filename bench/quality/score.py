"""Score an adapter (or the base model) on the quality eval sets, with greedy answers, the sweep's way.

  .venv/bin/python bench/quality/score.py --base default --adapter /tmp/q_final --out /tmp/q_final/quality.json

evalsets/yunzhan_paraphrase.jsonl: an answer counts when it contains every `must_contain` string;
evalsets/general.jsonl: the same, where an item of `must_contain` may be a list of alternatives;
evalsets/yunzhan_hard.jsonl (issue 13's harder set: rules applied to new cases, two facts at once,
neighbouring facts, colloquial scenarios): the same, also counted per `kind` (`--no-hard` skips it;
`--sets hard` scores it alone).
(`lorastudio eval` scores the same files, normalised; this script keeps the sweep's exact matching so
numbers compare with bench/quality/results/.)

Engines (`--engine`, default `auto`, also LORASTUDIO_ENGINE; the rule is `inference.choose_engine`'s,
the one training's replay answers and paraphrases follow): on a CPU that runs the base in llama.cpp
(`default`, a .gguf) the answers come from the llama.cpp engine in a child process
(`lorastudio.engines.batch`, the adapter converted to GGUF LoRA, the prompt rendered by the product's
`render_prompt` with the adapter's training system prompt, if it has one); elsewhere (a GPU, another
base, `--scales` other than 1) from transformers, in this process, as before: base + PEFT adapter,
`generate_batch`, left-padded greedy batches. Same chats, caps and scoring either way. If the llama.cpp
child fails under `auto`, transformers answers and the reason is printed.
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

SETS = {"facts": ("evalsets/{evals}_paraphrase.jsonl", 128), "general": ("evalsets/general.jsonl", 160),
        "hard": ("evalsets/{evals}_hard.jsonl", 128)}
"""name → (file, max new tokens); `{evals}` is `--evals`: whose facts (yunzhan: both demo files; beichen and
harborpine: the held-out companies of bench/quality/data/)"""


def set_file(name: str, evals: str = "yunzhan") -> Path:
    """The file of eval set `name` for the facts of `evals`."""
    return ROOT / SETS[name][0].format(evals=evals)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="default")
    ap.add_argument("--adapter", default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch-size", type=int, default=16, help="transformers' batch; llama.cpp decodes up to 8 at once")
    ap.add_argument("--no-hard", action="store_true", help="skip evalsets/yunzhan_hard.jsonl")
    ap.add_argument("--sets", default="facts,general,hard", help="which sets to answer (comma-separated)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N questions of each set")
    ap.add_argument("--scales", default="1", help="comma-separated LoRA strengths to score the adapter at "
                    "(1 = as trained); each after the first writes OUT with _x<scale> before .json")
    ap.add_argument("--engine", choices=("auto", "llama.cpp", "transformers"), default=None,
                    help="auto (default, also LORASTUDIO_ENGINE): llama.cpp on a CPU when it runs the base, "
                         "else transformers")
    ap.add_argument("--evals", default="yunzhan", help="whose fact sets: evalsets/EVALS_paraphrase.jsonl and "
                    "evalsets/EVALS_hard.jsonl (default yunzhan, the demo files' facts)")
    ap.add_argument("--system", default=None,
                    help="ask every question under this system message (default: none, so the model's "
                         "template adds its own, as the product does without one)")
    ap.add_argument("--no-knowledge", dest="knowledge", action="store_false",
                    help="answer from the adapter's weights alone, without its training rows beside each question "
                         "(lorastudio/knowledge.py; the product puts them there by default)")
    ap.add_argument("--rows", type=int, default=None,
                    help="put this many knowledge rows beside each question instead of the adapter's knowledge_rows")
    ap.add_argument("--row-order", choices=("closest-first", "closest-last"), default="closest-first",
                    help="the rows' order in the prompt: the closest first (the product's) or last, next to the question")
    args = ap.parse_args(argv)
    if args.rows is not None and args.rows < 0:
        ap.error(f"--rows {args.rows}: give 0 or more")
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = [s for s in sets if s not in SETS]
    if unknown:
        ap.error(f"--sets: unknown {unknown}; choose from {', '.join(SETS)}")
    missing = [str(set_file(s, args.evals).relative_to(ROOT)) for s in sets
               if s in SETS and not set_file(s, args.evals).is_file()]
    if missing:
        ap.error(f"--evals {args.evals}: no {', '.join(missing)}")
    args.sets = [s for s in SETS if s in sets and not (s == "hard" and args.no_hard)]
    try:
        args.scale_list = [float(x) for x in args.scales.split(",")]
    except ValueError:
        ap.error(f"--scales {args.scales!r}: give numbers separated by commas, e.g. 1,0.5")
    return args


def pick_engine(args: argparse.Namespace) -> tuple[str, str]:
    """(engine, reason): `inference.choose_engine` for the base, on whatever device this machine has;
    transformers for LoRA strengths other than 1 (llama.cpp applies an adapter as trained)."""
    from lorastudio.inference import choose_engine

    if args.scale_list != [1.0]:
        if args.engine == "llama.cpp":
            raise SystemExit("score.py: --scales other than 1 need --engine transformers "
                             "(the llama.cpp engine applies an adapter at its trained strength)")
        return "transformers", f"--scales {args.scales} (LoRA strengths are set on the transformers model)"
    if rows_changed(args):
        if args.engine == "llama.cpp":
            raise SystemExit("score.py: --rows and --row-order need --engine transformers "
                             "(the llama.cpp child grounds its prompts as the product does)")
        return "transformers", "--rows/--row-order (the prompts are grounded in this process)"
    try:
        choice = choose_engine(args.base, engine=args.engine)
    except ValueError as exc:  # --engine llama.cpp on a base or machine it cannot serve
        raise SystemExit(f"score.py: {exc}") from None
    return choice.name, choice.reason


def main(argv: list[str] | None = None) -> None:
    from sweep import read_jsonl

    args = parse_args(argv)
    items = {name: read_jsonl(set_file(name, args.evals))[:args.limit] for name in args.sets}
    engine, reason = pick_engine(args)
    print(f"engine: {engine} — {reason}", file=sys.stderr, flush=True)
    if engine == "llama.cpp" and args.adapter:
        from lorastudio.inference import adapter_system_prompt

        if adapter_system_prompt(Path(args.adapter)):
            print("note: the adapter was trained with a system prompt; llama.cpp asks with it (as the product "
                  "does), transformers here without it, so the two engines' scores are not comparable",
                  file=sys.stderr, flush=True)
    if engine == "llama.cpp":
        from lorastudio.engines.batch import BatchError

        try:
            answers, seconds = answer_llamacpp(args, items)
        except BatchError as exc:
            if args.engine == "llama.cpp":
                raise SystemExit(f"score.py: the llama.cpp engine failed: {exc}") from None
            reason = f"llama.cpp failed, transformers answered ({exc})"
            print(f"warning: {reason}", file=sys.stderr, flush=True)
        else:
            write(args, items, answers, Path(args.out), 1.0, seconds, engine, reason)
            return
    answer_transformers(args, items, reason)


def chats(questions: list[dict], system: str | None = None) -> list[list[dict[str, str]]]:
    head = [{"role": "system", "content": system}] if system else []
    return [head + [{"role": "user", "content": q["question"]}] for q in questions]


def rows_changed(args: argparse.Namespace) -> bool:
    return args.rows is not None or args.row_order != "closest-first"


def knowledge_for(args: argparse.Namespace):
    """The adapter's rows as the product reads them (`load_knowledge`), with --rows and --row-order applied;
    None when it has none or --no-knowledge."""
    from lorastudio.knowledge import Knowledge, load_knowledge

    if not (args.adapter and args.knowledge):
        return None
    knowledge = load_knowledge(args.adapter)
    if knowledge is None or not rows_changed(args):
        return knowledge
    varied = Knowledge(knowledge.rows, knowledge.k if args.rows is None else args.rows, knowledge.strength)
    if args.row_order == "closest-last":
        picked = varied.picked
        varied.picked = lambda question, shuffle=None: picked(question, shuffle)[::-1]  # type: ignore[method-assign]
    return varied


def grounded_chats(args: argparse.Namespace, questions: list[dict]) -> list[list[dict[str, str]]]:
    """`chats` as the product's engine sends them: with the adapter's knowledge rows unless --no-knowledge."""
    from lorastudio.engines.common import adapter_system_prompt

    knowledge = knowledge_for(args)
    if knowledge is None:
        return chats(questions, args.system)
    system = adapter_system_prompt(Path(args.adapter))
    return [knowledge.ground(chat, system) for chat in chats(questions, args.system)]


def answer_llamacpp(args: argparse.Namespace, items: dict[str, list[dict]]) -> tuple[dict[str, list[str]], float]:
    """Every set's greedy answers from one llama.cpp child (model, tokenizer and adapter loaded once)."""
    from lorastudio.engines.batch import run_llamacpp_batch

    prompts, caps = [], []
    for name, questions in items.items():
        prompts += chats(questions, args.system)
        caps += [SETS[name][1]] * len(questions)
    t0 = time.time()  # the child's start and model load included (transformers' eval_s excludes its load)
    flat = run_llamacpp_batch(args.base, prompts, max_new_tokens=caps, batch_size=min(8, args.batch_size),
                              adapter=args.adapter, knowledge=args.knowledge)
    seconds = time.time() - t0
    out, at = {}, 0
    for name, questions in items.items():
        out[name], at = flat[at:at + len(questions)], at + len(questions)
    return out, seconds


def answer_transformers(args: argparse.Namespace, items: dict[str, list[dict]], reason: str) -> None:
    """Base + PEFT adapter in this process, every `--scales` strength in turn (the script as it was)."""
    from lorastudio.models import load_model
    from lorastudio.train.generation import generate_batch

    # no global torch.set_grad_enabled(False): generate_batch runs under no_grad, and a caller in the
    # same process (the tests) must keep autograd on afterwards
    model, tok = load_model(args.base)
    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter)
    model.eval()
    layers = [m for m in model.modules() if isinstance(getattr(m, "scaling", None), dict)]
    trained = [dict(m.scaling) for m in layers]
    knowledge = knowledge_for(args)
    reading = knowledge.strength if knowledge is not None else 1.0  # its knowledge_strength, as the engine applies it
    for i, scale in enumerate(args.scale_list):
        for m, orig in zip(layers, trained, strict=True):
            m.scaling = {k: v * scale * reading for k, v in orig.items()}
        out = Path(args.out)
        t0 = time.time()
        answers = {name: generate_batch(model, tok, grounded_chats(args, questions), max_new_tokens=SETS[name][1],
                                        batch_size=args.batch_size) if questions else []
                   for name, questions in items.items()}
        write(args, items, answers, out if i == 0 else out.with_name(f"{out.stem}_x{scale:g}.json"), scale,
              time.time() - t0, "transformers", reason)


def write(args: argparse.Namespace, items: dict[str, list[dict]], answers: dict[str, list[str]], out: Path,
          scale: float, seconds: float, engine: str, reason: str) -> None:
    """Score the answers the sweep's way and write `out` (the keys of the sets answered)."""
    from sweep import fact_score, score  # the sweep's scoring, unchanged

    res = {"base": args.base, "adapter": args.adapter, "evals": args.evals, "scale": scale, "engine": engine,
           "engine_reason": reason, "eval_s": round(seconds, 1), "knowledge": bool(getattr(args, "knowledge", False)),
           "rows": getattr(args, "rows", None), "row_order": getattr(args, "row_order", "closest-first")}
    if res["knowledge"] and args.adapter:  # the adapter's strength while it read its rows, beside any --scales
        from lorastudio.knowledge import reading_strength

        res["knowledge_strength"] = reading_strength(args.adapter)
    if args.limit is not None:
        res["limit"] = args.limit
    parts = []
    if "facts" in items:
        facts, fa = items["facts"], answers["facts"]
        fs, fok = score(fa, facts)
        res.update(facts=fs, facts_n=len(facts), facts_a=sum(fok[0::2]), facts_b=sum(fok[1::2]),
                   facts_by_fact=fact_score(fok, facts), fact_answers=fa, fact_ok=fok)
        n_facts = len({item.get("fact") for item in facts})
        parts.append(f"facts {fs}/{len(facts)} (whole facts {res['facts_by_fact']}/{n_facts})")
    if "general" in items:
        gs, gok = score(answers["general"], items["general"])
        res.update(general=gs, general_n=len(items["general"]), general_answers=answers["general"], general_ok=gok)
        parts.append(f"general {gs}/{len(items['general'])}")
    if "hard" in items:
        hard = items["hard"]
        hs, hok = score(answers["hard"], hard)
        kinds: dict[str, list[int]] = {}
        for good, item in zip(hok, hard, strict=True):
            kinds.setdefault(item.get("kind", "?"), [0, 0])
            kinds[item.get("kind", "?")][0] += int(good)
            kinds[item.get("kind", "?")][1] += 1
        res.update(hard=hs, hard_n=len(hard), hard_by_kind=kinds, hard_answers=answers["hard"], hard_ok=hok)
        parts.insert(0, f"hard {hs}/{len(hard)} {kinds}")
    out.write_text(json.dumps(res, ensure_ascii=False, indent=1), encoding="utf-8")
    print(f"x{scale:g} ({engine}): " + ", ".join(parts + [f"{res['eval_s']} s"]), flush=True)


if __name__ == "__main__":
    main()
