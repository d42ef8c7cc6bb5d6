"""The `lorastudio` command line.

Every subcommand lives in `lorastudio/commands/<name>.py` and exposes:

- ``HELP``: one line for `lorastudio --help`;
- ``ORDER``: its position in that list;
- ``add_arguments(parser)``: its flags (argparse);
- ``run(args) -> int``: the exit code. It calls one entry function of the library.

Command modules import nothing heavy at module level (no torch, no FastAPI) so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

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


def main(argv: list[str] | None = None) -> int:
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
