"""`lorastudio generate`: answer a JSONL file of questions with a base model (+ an adapter)."""

from __future__ import annotations

import argparse
import sys

from lorastudio.commands._using import add_knowledge_flag

HELP = "Answer a JSONL file of questions (base model, optionally with a LoRA adapter)."
ORDER = 40


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", help="base model id or directory (default: the adapter's base, else `default`)")
    parser.add_argument("--adapter", help="LoRA adapter directory (the output of `lorastudio train`)")
    parser.add_argument("--input", required=True, help="JSONL; each line has `question` or `messages`")
    parser.add_argument("--output", required=True, help="JSONL; each input object plus `answer`")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=8, help="prompts generated together")
    add_knowledge_flag(parser)
    parser.add_argument("--engine", choices=("auto", "llama.cpp", "transformers"), default=None,
                        help="inference engine (default: llama.cpp on a CPU for GGUF bases, else transformers; "
                             "also LORASTUDIO_ENGINE)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lorastudio.commands._using import UsageError, base_for, fail, load_engine
    from lorastudio.commands.compare import engine_choice, engine_line
    from lorastudio.inference import AdapterError, PromptError, check_adapter_dir, generate_file

    if not Path(args.input).is_file():
        return fail(f"input file {args.input!r} does not exist")
    try:
        if args.adapter:
            check_adapter_dir(args.adapter)  # fail before the slow model load
        with engine_choice(args.engine):
            engine = load_engine(base_for(args.base, args.adapter), knowledge=args.knowledge)
        print(engine_line(engine), file=sys.stderr, flush=True)
        progress = _progress if sys.stderr.isatty() else None
        result = generate_file(engine, args.input, args.output, args.adapter,
                               max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                               top_p=args.top_p, batch_size=args.batch_size, on_progress=progress)
    except (AdapterError, PromptError, UsageError, FileNotFoundError) as exc:
        return fail(str(exc))
    for err in result.errors:
        print(f"{args.input}: {err.message}", file=sys.stderr)
    print(f"answered {result.answered} of {result.total} lines → {args.output}", file=sys.stderr)
    if result.errors:
        print(f"{len(result.errors)} line(s) could not be answered; they are in the output with an "
              "`error` field — fix them and run again", file=sys.stderr)
        return 2 if result.answered == 0 else 1
    return 0


def _progress(done: int, total: int) -> None:
    print(f"\r{done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)
