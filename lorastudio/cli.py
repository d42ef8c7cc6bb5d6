"""The `lorastudio` command line.

Every subcommand lives in `lorastudio/commands/<name>.py` and exposes:

- ``HELP``: one line for `lorastudio --help`;
- ``ORDER``: its position in that list;
- ``add_arguments(parser)``: its flags (argparse);
- ``run(args) -> int``: the exit code. It calls one entry function of the library.

Command modules import nothing heavy at module level (no torch, no FastAPI) so `--help` stays fast.

A reader that goes away (`lorastudio train … 2>&1 | head`) does not stop a command:
`main` wraps stdout and stderr so that, once a write finds the pipe closed, the rest of that stream's
output is discarded and the command carries on (a training run finishes and saves its adapter).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import pkgutil
import sys
from collections.abc import Iterator
from typing import Any

from lorastudio import __version__, commands


def _command_modules():
    found = []
    for info in pkgutil.iter_modules(commands.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"lorastudio.commands.{info.name}")
        found.append((getattr(module, "ORDER", 100), info.name.replace("_", "-"), module))
    return sorted(found, key=lambda item: (item[0], item[1]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lorastudio",
        description="LoRA Studio: turn business Q&A data into a fine-tuned model (local-first).",
    )
    parser.add_argument("--version", action="version", version=f"lorastudio {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for _order, name, module in _command_modules():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


class ClosedPipeSafe:
    """A text stream whose reader may leave: the first write (or flush) that meets a closed pipe
    points the file descriptor at /dev/null (so the interpreter's own flush at exit is quiet too),
    and that and every later write is dropped instead of raising `BrokenPipeError`."""

    def __init__(self, stream: Any):
        self._stream = stream
        self.reader_gone = False

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._discard()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._discard()

    def _discard(self) -> None:
        self.reader_gone = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self._stream.fileno())
            finally:
                os.close(devnull)
        except (OSError, ValueError, AttributeError):  # no real file descriptor: swap the stream itself
            self._stream = open(os.devnull, "w", encoding="utf-8")  # lives as long as the process

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def survive_closed_output() -> Iterator[None]:
    """sys.stdout and sys.stderr as `ClosedPipeSafe` streams for the duration (restored afterwards)."""
    saved = sys.stdout, sys.stderr
    safe = [s if isinstance(s, ClosedPipeSafe) or s is None else ClosedPipeSafe(s) for s in saved]
    sys.stdout, sys.stderr = safe
    try:
        yield
    finally:
        for stream in safe:  # what is still buffered, while a closed pipe is still handled
            if stream is not None:
                with contextlib.suppress(ValueError, OSError):  # a stream closed meanwhile
                    stream.flush()
        sys.stdout, sys.stderr = saved


def main(argv: list[str] | None = None) -> int:
    with survive_closed_output():
        parser = build_parser()
        args = parser.parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # a command may relaunch itself (train --gpus)
        if not getattr(args, "_run", None):
            parser.print_help()
            return 2
        try:
            return int(args._run(args) or 0)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
