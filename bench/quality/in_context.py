"""The base model with the facts in front of it: how many of the eval questions can it answer at all?

A ceiling for what LoRA can teach the same model. No training (or, with `--adapter`, a trained adapter reading the
rows; its own knowledge file is not used): each question is asked with training rows
of the data file pasted into a system message, then scored exactly as `score.py` scores an adapter
(same sets, caps, greedy llama.cpp answers on a CPU, the same JSON). Two ways to pick the rows:

- `oracle`: the rows of the facts the question is about (its `fact`/`facts`), found through the keys of the
  paraphrase set's questions about each fact (the `fact_groups` groups whose answers hold them): the right
  fact is always there, so a miss is the model failing to read or apply it, not to remember it.
- `retrieve`: the `--k` rows most like the question (TF-IDF cosine of character bigrams over question +
  answer: `lorastudio.knowledge.Retriever`, the product's own), as a plain retrieval would give it: the right
  fact may be missing, neighbours are present.
- `whole`: every row of the file (about 10,000 tokens for the demo file; meant for a GPU).

Engines: llama.cpp on a CPU (as `score.py`), transformers where CUDA is (`--engine` to choose).

  .venv/bin/python bench/quality/in_context.py --mode oracle --out /tmp/ic_oracle.json
  .venv/bin/python bench/quality/in_context.py --mode retrieve --k 6 --out /tmp/ic_retrieve.json
  (--data bench/quality/data/beichen_train.jsonl --evals beichen for another company's facts)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

def _keys(items: list[dict]) -> list[list[str]]:
    return [key if isinstance(key, list) else [key] for item in items for key in item["must_contain"]]


def oracle_rows(facts: list, fact_items: dict, answers: list[str], groups: list[int], cap: int = 12) -> list[int]:
    """The rows of each fact in `facts`: the fact groups whose answers hold the most of that fact's keys
    (every `must_contain` of the paraphrase set's questions about it), until they hold all of them."""
    chosen: list[int] = []
    for fact in facts:
        keys = _keys(fact_items[fact])
        cover: dict[int, set[int]] = {}
        for k, alts in enumerate(keys):
            for i, answer in enumerate(answers):
                if any(alt in answer for alt in alts):
                    cover.setdefault(groups[i], set()).add(k)
        missing = set(range(len(keys)))
        for group in sorted(cover, key=lambda g: -len(cover[g])):
            if not cover[group] & missing:
                continue
            chosen += [i for i, g in enumerate(groups) if g == group and i not in chosen]
            missing -= cover[group]
            if not missing:
                break
    return chosen[:cap]


def scaled_copy(adapter: str, scale: float) -> str:
    """A copy of `adapter` (its config and weights, in a temporary folder) whose LoRA B matrices are multiplied by
    `scale`: the adapter at that strength for an engine that applies adapters as trained (llama.cpp). Removed when
    this process ends."""
    import atexit
    import shutil
    import tempfile

    from safetensors.torch import load_file, save_file

    src = Path(adapter)
    dst = Path(tempfile.mkdtemp(prefix=f"lora-x{scale:g}-"))
    atexit.register(shutil.rmtree, dst, ignore_errors=True)
    shutil.copy(src / "adapter_config.json", dst)
    weights = load_file(src / "adapter_model.safetensors")
    scaled = sum(".lora_B." in name for name in weights)
    if not scaled:
        raise SystemExit(f"in_context.py: {src / 'adapter_model.safetensors'} holds no lora_B matrices to scale")
    save_file({k: v * scale if ".lora_B." in k else v for k, v in weights.items()}, dst / "adapter_model.safetensors")
    print(f"adapter at x{scale:g}: {scaled} B matrices scaled, in {dst}", flush=True)
    return str(dst)


def main(argv: list[str] | None = None) -> None:
    from score import SETS, set_file, write
    from sweep import read_jsonl

    from lorastudio.data import validate
    from lorastudio.data.facts import fact_groups
    from lorastudio.data.types import Conversation, Message
    from lorastudio.engines.batch import run_llamacpp_batch
    from lorastudio.knowledge import HEADER, ROW, Retriever, language, rows_of

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="default")
    ap.add_argument("--data", default=str(ROOT / "lorastudio/assets/demo/yunzhan_train.jsonl"))
    ap.add_argument("--evals", default="yunzhan")
    ap.add_argument("--mode", choices=("oracle", "retrieve", "whole"), default="oracle")
    ap.add_argument("--k", type=int, default=6, help="rows retrieved per question (--mode retrieve)")
    ap.add_argument("--order", dest="row_order", choices=("closest-first", "closest-last"), default="closest-first",
                    help="the retrieved rows' order (--mode retrieve): the closest first, as the product, or last")
    ap.add_argument("--sets", default="facts,hard")
    ap.add_argument("--engine", choices=("auto", "llama.cpp", "transformers"), default="auto")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--adapter", default=None, help="a trained adapter to read the rows with (default: the base model)")
    ap.add_argument("--lora-scale", type=float, default=1.0,
                    help="the adapter at this strength (its LoRA B matrices scaled in a copy; any engine)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.lora_scale != 1.0 and not args.adapter:
        ap.error("--lora-scale needs --adapter")
    reader = scaled_copy(args.adapter, args.lora_scale) if args.lora_scale != 1.0 else args.adapter
    args.limit = None
    args.rows = args.k if args.mode == "retrieve" else None  # recorded beside the scores (score.write)

    rows = rows_of(validate(args.data).conversations)  # the product's rows (a follow-up turn with its context)
    answers = [a for _, a in rows]
    lang = language(answers)
    groups = fact_groups([Conversation([Message("user", q), Message("assistant", a)]) for q, a in rows])
    retriever = Retriever(rows)
    fact_items: dict = {}
    for item in read_jsonl(set_file("facts", args.evals)):
        fact_items.setdefault(item["fact"], []).append(item)
    items = {name: read_jsonl(set_file(name, args.evals)) for name in args.sets.split(",")}
    if args.mode == "oracle" and any("fact" not in item for questions in items.values() for item in questions):
        raise SystemExit("in_context.py: --mode oracle needs sets whose questions name their fact (facts, hard), "
                         "not general")
    prompts, caps, sizes = [], [], []
    for name, questions in items.items():
        for item in questions:
            if args.mode == "oracle":
                picked = oracle_rows(item.get("facts") or [item["fact"]], fact_items, answers, groups)
            elif args.mode == "retrieve":
                picked = retriever.top(item["question"], args.k)
                if args.row_order == "closest-last":
                    picked = picked[::-1]
            else:
                picked = list(range(len(rows)))
            sizes.append(len(picked))
            context = "\n\n".join(ROW[lang].format(q=rows[i][0], a=rows[i][1]) for i in picked)
            prompts.append([{"role": "system", "content": HEADER[lang] + context},
                            {"role": "user", "content": item["question"]}])
            caps.append(SETS[name][1])
    print(f"{args.mode}: {len(prompts)} questions, {sum(sizes) / len(sizes):.1f} rows of context each "
          f"({min(sizes)}–{max(sizes)})", flush=True)
    engine = args.engine
    if engine == "auto":
        import torch

        engine = "transformers" if torch.cuda.is_available() else "llama.cpp"
    t0 = time.time()
    if engine == "llama.cpp":
        flat = run_llamacpp_batch(args.base, prompts, max_new_tokens=caps, batch_size=min(8, args.batch_size),
                                  adapter=reader, knowledge=False)
    else:
        from lorastudio.models import load_model
        from lorastudio.train.generation import generate_batch

        model, tok = load_model(args.base)
        if reader:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, reader)
        model.eval()
        flat = []
        for cap in sorted(set(caps)):  # one call per answer cap, answers put back in order
            at = [i for i, c in enumerate(caps) if c == cap]
            got = generate_batch(model, tok, [prompts[i] for i in at], max_new_tokens=cap, batch_size=args.batch_size)
            flat += list(zip(at, got, strict=True))
        flat = [answer for _, answer in sorted(flat)]
    out, at = {}, 0
    for name, questions in items.items():
        out[name], at = flat[at:at + len(questions)], at + len(questions)
    write(args, items, out, Path(args.out), args.lora_scale, time.time() - t0, engine, f"in context: {args.mode}")


if __name__ == "__main__":
    main()
