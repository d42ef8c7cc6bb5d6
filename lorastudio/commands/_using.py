"""Shared bits of the commands that use a trained adapter (generate, compare, eval, export, demo).

Kept light: no torch at import time (the CLI imports every command module for `--help`).
"""

from __future__ import annotations

import json
import sys
import unicodedata
from pathlib import Path
from typing import Any

from lorastudio.i18n import current_lang

# (English, Chinese). Terminal labels of these commands; the language follows lorastudio.i18n.
_TEXT: dict[str, tuple[str, str]] = {
    "base": ("Base model", "基础模型"),
    "tuned": ("Fine-tuned", "微调后"),
    "question": ("Question", "问题"),
    "prompt": ("Question (empty line or Ctrl-D to quit)", "问题（空行或 Ctrl-D 退出）"),
    "loading": ("Loading {base} …", "正在加载 {base} …"),
}


def lang() -> str:
    return current_lang()


def text(key: str, **params: object) -> str:
    en, zh = _TEXT[key]
    return (zh if lang() == "zh" else en).format(**params)


def fail(message: str, code: int = 2) -> int:
    """One clear line on stderr (no traceback) and the exit code."""
    print(f"error: {message}", file=sys.stderr)
    return code


def base_for(base: str | None, adapter: str | None) -> str:
    """`--base` if given; else the base recorded in the adapter (when it is loadable); else `default`."""
    if base:
        return base
    if adapter:
        try:
            cfg = json.loads((Path(adapter) / "adapter_config.json").read_text(encoding="utf-8"))
            recorded = cfg.get("base_model_name_or_path")
            if recorded and Path(recorded).is_dir():
                return recorded
        except (OSError, ValueError):
            pass
    return "default"


def add_knowledge_flag(parser: Any) -> None:
    parser.add_argument("--no-knowledge", dest="knowledge", action="store_false",
                        help="answer from the adapter's weights alone: without its closest training rows beside each "
                             "question (as an exported GGUF answers; docs/QUALITY.md says what the rows add)")


def load_engine(base: str, max_adapters: int = 4, knowledge: bool = True) -> Any:
    """A ChatEngine, or raise `UsageError` with a one-line reason (unknown model, broken files)."""
    from lorastudio.inference import ChatEngine

    print(text("loading", base=base), file=sys.stderr, flush=True)
    try:
        return ChatEngine(base, max_adapters=max_adapters, knowledge=knowledge)
    except (OSError, ValueError, RuntimeError) as exc:
        # models.ModelError is a RuntimeError; a bad local directory is an OSError/ValueError.
        raise UsageError(f"cannot load base model {base!r}: {str(exc).splitlines()[0]}") from None


class UsageError(Exception):
    """Bad command input: printed as one line, exit code 2."""


def display_width(s: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in s)


def wrap(s: str, width: int) -> list[str]:
    """Wrap by display width (a Chinese character takes two columns), keeping explicit newlines."""
    lines: list[str] = []
    for para in s.split("\n") or [""]:
        line, w = "", 0
        for c in para:
            cw = 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1
            if w + cw > width:
                lines.append(line)
                line, w = "", 0
            line += c
            w += cw
        lines.append(line)
    return lines


def side_by_side(left_title: str, left: str, right_title: str, right: str, total: int | None = None) -> str:
    """Two answers in two columns; one under the other when the terminal is narrow."""
    import shutil

    total = total or shutil.get_terminal_size((100, 20)).columns
    if total < 60:
        return f"── {left_title} ──\n{left}\n── {right_title} ──\n{right}"
    col = (total - 3) // 2
    lcol, rcol = wrap(left, col), wrap(right, col)
    rows = [_pad(left_title, col) + " │ " + right_title, "─" * col + "─┼─" + "─" * col]
    for i in range(max(len(lcol), len(rcol))):
        lt = lcol[i] if i < len(lcol) else ""
        rt = rcol[i] if i < len(rcol) else ""
        rows.append(_pad(lt, col) + " │ " + rt)
    return "\n".join(rows)


def _pad(s: str, width: int) -> str:
    return s + " " * max(0, width - display_width(s))
