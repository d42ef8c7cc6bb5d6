"""`lorastudio validate FILE`: what is wrong with a training file, row by row."""

from __future__ import annotations

import argparse
import json
import sys

HELP = "Check a training file (JSONL/JSON/CSV/TSV/TXT/XLSX) and report every problem, row by row."
ORDER = 10
MAX_TABLE_ROWS = 60


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="the data file to check")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--max-length", type=int, default=2048, metavar="N",
                        help="longest allowed conversation in tokens (default 2048)")
    parser.add_argument("--sheet", metavar="NAME", help="XLSX: the sheet to read (default: the first)")
    parser.add_argument("--rejected", metavar="OUT",
                        help="write rejected rows with their reasons to OUT (.csv or .jsonl) to fix and re-upload")
    parser.add_argument("--tokenizer", metavar="DIR",
                        help="count tokens with this local tokenizer/model directory instead of estimating")


def _fail(args: argparse.Namespace, message: str, kind: str) -> int:
    if args.json:
        print(json.dumps({"error": message, "kind": kind}, ensure_ascii=False))
    print(f"lorastudio validate: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from lorastudio.data import DataError, validate
    from lorastudio.i18n import current_lang, t

    lang = current_lang()
    try:
        tokenizer = _load_tokenizer(args.tokenizer) if args.tokenizer else None
        report = validate(args.file, max_length=args.max_length, tokenizer=tokenizer, sheet=args.sheet)
        written = report.write_rejected(args.rejected) if args.rejected else None
    except DataError as exc:
        message = exc.message if args.json else exc.localized(lang)
        return _fail(args, message.replace("\n", " "), exc.kind)
    except OSError as exc:
        return _fail(args, f"{getattr(exc, 'filename', None) or args.file}: {exc.strerror or exc}", "unreadable")
    except Exception as exc:  # the command boundary: a one-line reason, never a traceback
        return _fail(args, t("cli.internal_error", lang, error=f"{type(exc).__name__}: {exc}"), "internal")

    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False, indent=None))
        if written is not None:
            print(t("cli.rejected_written", lang, n=written, path=args.rejected), file=sys.stderr)
        return 0
    print(render(report, lang))
    if written is not None:
        print(t("cli.rejected_written", lang, n=written, path=args.rejected))
    return 0


def _load_tokenizer(path: str) -> object:
    from pathlib import Path

    from lorastudio.data import DataError

    if not Path(path).is_dir():
        raise DataError(f"--tokenizer {path}: not a directory (give a local model or tokenizer folder)", "bad_argument")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise DataError("--tokenizer needs the 'train' extra (pip install 'lorastudio[train]')", "missing_extra") from None
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        raise DataError(f"cannot load a tokenizer from {path}: {exc}".splitlines()[0], "bad_argument") from None


def _width(text: str) -> int:
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - _width(text))


def render(report: object, lang: str) -> str:
    """The terminal table (also used by tests): summary, one line per problem, then advice."""
    from lorastudio.i18n import t

    r = report
    lines = [
        f"{t('cli.file', lang)}: {r.file}",
        f"{t('cli.format', lang)}: {r.format}   {t('cli.schema', lang)}: {r.schema}   "
        f"{t('cli.encoding', lang)}: {r.encoding or '-'}",
        t("cli.rows", lang, total=r.rows_total, ok=r.rows_ok, rejected=r.rows_rejected),
    ]
    if r.issues:
        lines += ["", t("cli.issues", lang, n=len(r.issues))]
        heads = [t(k, lang) for k in ("cli.col.row", "cli.col.severity", "cli.col.kind", "cli.col.field")]
        shown = r.issues[:MAX_TABLE_ROWS]
        cells = [[str(i.row if i.row is not None else "-"), t(f"cli.{i.severity}", lang), i.kind, i.field or "-"]
                 for i in shown]
        widths = [max(_width(x) for x in col) for col in zip(heads, *cells, strict=False)]
        widths = [min(w, 28) for w in widths]
        lines.append("  " + "  ".join(_pad(h, w) for h, w in zip(heads, widths, strict=True)) + "  "
                     + t("cli.col.message", lang))
        for issue, row in zip(shown, cells, strict=True):
            message, hint = issue.localized(lang)
            lines.append("  " + "  ".join(_pad(c, w) for c, w in zip(row, widths, strict=True)) + "  " + message)
            lines.append("  " + " " * (sum(widths) + 2 * len(widths)) + "→ " + hint)
        if len(r.issues) > MAX_TABLE_ROWS:
            lines.append("  " + t("cli.more", lang, n=len(r.issues) - MAX_TABLE_ROWS))
    else:
        lines += ["", t("cli.no_issues", lang)]
    if r.dataset_issues:
        lines += ["", t("cli.dataset_issues", lang)]
        for d in r.dataset_issues:
            message, hint = d.localized(lang)
            lines.append(f"  [{t(f'cli.{d.severity}', lang)}] {message} {hint}")
    return "\n".join(lines)
