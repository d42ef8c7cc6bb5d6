"""`lorastudio compare`: the same question to the base model and the fine-tuned one, side by side."""

from __future__ import annotations

import argparse
import sys

HELP = "Ask the base model and the fine-tuned model the same question, side by side."
ORDER = 42


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", help="base model id or directory (default: the adapter's base, else `default`)")
    parser.add_argument("--adapter", required=True, help="LoRA adapter directory")
    parser.add_argument("--question", action="append",
                        help="question to ask (repeatable); without it, an interactive loop")
    parser.add_argument("--system", help="optional system message")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--json", action="store_true", help="print JSON lines {question, base_answer, tuned_answer}")


def run(args: argparse.Namespace) -> int:
    import json

    from lorastudio.commands._using import UsageError, base_for, fail, load_engine, side_by_side, text
    from lorastudio.inference import AdapterError, PromptError, check_adapter_dir

    try:
        check_adapter_dir(args.adapter)
        # One base model in memory: the adapter is switched off for the base answer, on for the tuned.
        engine = load_engine(base_for(args.base, args.adapter), max_adapters=1)
    except (AdapterError, UsageError) as exc:
        return fail(str(exc))

    def ask(question: str) -> None:
        msgs = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": question}]
        base_answer = engine.generate(msgs, max_new_tokens=args.max_new_tokens)
        tuned_answer = engine.generate(msgs, adapter=args.adapter, max_new_tokens=args.max_new_tokens)
        if args.json:
            print(json.dumps({"question": question, "base_answer": base_answer, "tuned_answer": tuned_answer},
                             ensure_ascii=False), flush=True)
        else:
            print(f"\n{text('question')}: {question}")
            print(side_by_side(text("base"), base_answer, text("tuned"), tuned_answer), flush=True)

    try:
        if args.question:
            for q in args.question:
                ask(q)
            return 0
        while True:
            try:
                q = input(f"\n{text('prompt')}> ").strip()
            except EOFError:
                print(file=sys.stderr)
                return 0
            if not q:
                return 0
            ask(q)
    except (AdapterError, PromptError) as exc:
        return fail(str(exc))
