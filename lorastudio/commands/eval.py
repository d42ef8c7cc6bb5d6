"""`lorastudio eval`: a question file answered before (base) and after (adapter), scored side by side."""

from __future__ import annotations

import argparse
import sys

from lorastudio.commands._using import add_knowledge_flag

HELP = "Score a question file before vs after fine-tuning (key facts, exact match, similarity)."
ORDER = 44


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", help="base model id or directory (default: the adapter's base, else `default`)")
    parser.add_argument("--adapter", help="LoRA adapter directory; without it only the base is scored")
    parser.add_argument("--questions", required=True,
                        help="JSONL/JSON/CSV/TSV/TXT with `question` and optional `expected`, `must_contain`")
    parser.add_argument("--json", action="store_true", help="print the whole report as one JSON object")
    parser.add_argument("--output", help="also write the report (with every answer) to this .json file")
    parser.add_argument("--details", action="store_true", help="print every question with both answers")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    add_knowledge_flag(parser)
    parser.add_argument("--engine", choices=("auto", "llama.cpp", "transformers"), default=None,
                        help="inference engine (default: llama.cpp on a CPU for GGUF bases, else transformers; "
                             "also LORASTUDIO_ENGINE)")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from lorastudio.commands._using import UsageError, base_for, fail, lang, load_engine
    from lorastudio.commands.compare import engine_choice, engine_line
    from lorastudio.evaluate import EvalFileError, evaluate, load_questions
    from lorastudio.inference import AdapterError, PromptError, check_adapter_dir

    def error(message: str) -> int:
        if args.json:
            print(json.dumps({"error": message}, ensure_ascii=False))
        return fail(message)

    try:
        questions = load_questions(args.questions)  # before loading the model: bad files fail fast
        if args.adapter:
            check_adapter_dir(args.adapter)
        with engine_choice(args.engine):
            engine = load_engine(base_for(args.base, args.adapter), max_adapters=1, knowledge=args.knowledge)
        print(engine_line(engine), file=sys.stderr, flush=True)

        def progress(done: int, total: int) -> None:
            print(f"\r{done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)

        report = evaluate(engine, args.adapter, questions, max_new_tokens=args.max_new_tokens,
                          batch_size=args.batch_size, on_progress=progress if sys.stderr.isatty() else None)
    except (EvalFileError, AdapterError, PromptError, UsageError) as exc:
        return error(str(exc))
    data = report.to_dict()
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(data, ensure_ascii=False))
        return 0
    if args.details:
        print(report.details(lang()) + "\n")
    print(report.table(lang()))
    if args.output:
        print(f"report: {args.output}", file=sys.stderr)
    return 0
