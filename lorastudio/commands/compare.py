"""`lorastudio compare`: the same question to the base model and the fine-tuned one.

At a terminal both answers are streamed as they are generated, the base model's first, then the
fine-tuned one's, each followed by the time it took; piped output (or `--layout columns`) prints them
side by side once both are done.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator

from lorastudio.commands._using import add_knowledge_flag

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
    parser.add_argument("--layout", choices=("auto", "stream", "columns"), default="auto",
                        help="stream: answers printed as they are generated, one after the other; columns: "
                             "side by side when both are done; auto (default): stream at a terminal")
    add_knowledge_flag(parser)
    parser.add_argument("--engine", choices=("auto", "llama.cpp", "transformers"), default=None,
                        help="inference engine (default: llama.cpp on a CPU for GGUF bases, else transformers; "
                             "also LORASTUDIO_ENGINE)")


def run(args: argparse.Namespace) -> int:
    import json
    import time

    from lorastudio.commands._using import UsageError, base_for, fail, load_engine, side_by_side, text
    from lorastudio.inference import AdapterError, PromptError, check_adapter_dir

    try:
        check_adapter_dir(args.adapter)
        # One base model in memory: the adapter is switched off for the base answer, on for the tuned.
        with engine_choice(args.engine):
            engine = load_engine(base_for(args.base, args.adapter), max_adapters=1, knowledge=args.knowledge)
    except (AdapterError, UsageError, ValueError) as exc:
        return fail(str(exc))
    print(engine_line(engine), file=sys.stderr, flush=True)
    stream = args.layout == "stream" or (args.layout == "auto" and sys.stdout.isatty())

    def answer(msgs: list[dict[str, str]], adapter: str | None, show: bool) -> tuple[str, str]:
        """The answer, and a 'time taken' line; printed piece by piece when `show`."""
        stats: dict = {}
        start = time.monotonic()
        first = None
        pieces = []
        for piece in engine.stream(msgs, adapter=adapter, max_new_tokens=args.max_new_tokens, stats=stats):
            if first is None:
                first = time.monotonic() - start
            pieces.append(piece)
            if show:
                print(piece, end="", flush=True)
        return "".join(pieces), timing_line(time.monotonic() - start, first, stats.get("completion_tokens", 0))

    def ask(question: str) -> None:
        msgs = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": question}]
        if args.json:
            base_answer, _ = answer(msgs, None, False)
            tuned_answer, _ = answer(msgs, args.adapter, False)
            print(json.dumps({"question": question, "base_answer": base_answer, "tuned_answer": tuned_answer},
                             ensure_ascii=False), flush=True)
            return
        print(f"\n{text('question')}: {question}", flush=True)
        if stream:
            for title, adapter in ((text("base"), None), (text("tuned"), args.adapter)):
                print(f"── {title} ──", flush=True)
                _, took = answer(msgs, adapter, True)
                print(f"\n({took})", flush=True)
            return
        base_answer, base_took = answer(msgs, None, False)
        tuned_answer, tuned_took = answer(msgs, args.adapter, False)
        print(side_by_side(text("base"), f"{base_answer}\n({base_took})",
                           text("tuned"), f"{tuned_answer}\n({tuned_took})"), flush=True)

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


@contextlib.contextmanager
def engine_choice(engine: str | None) -> Iterator[None]:
    """`--engine` for the ChatEngine built inside (through LORASTUDIO_ENGINE, restored afterwards)."""
    if not engine:
        yield
        return
    before = os.environ.get("LORASTUDIO_ENGINE")
    os.environ["LORASTUDIO_ENGINE"] = engine
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("LORASTUDIO_ENGINE", None)
        else:
            os.environ["LORASTUDIO_ENGINE"] = before


def engine_line(engine) -> str:
    """One line naming the engine that answers and why (stderr of compare, generate and eval)."""
    name = getattr(engine, "engine", "transformers")
    reason = getattr(engine, "engine_reason", "")
    return f"engine: {name}" + (f" — {reason}" if reason else "")


def timing_line(seconds: float, first_token: float | None, tokens: int) -> str:
    rate = f", {tokens / seconds:.1f} tok/s" if seconds > 0 and tokens else ""
    first = f", first token {first_token:.2f} s" if first_token is not None else ""
    return f"{seconds:.1f} s, {tokens} tokens{rate}{first}"
