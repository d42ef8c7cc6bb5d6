"""`lorastudio models`: the model catalog (embedded default first, the smoke-test model labelled)."""

from __future__ import annotations

import argparse
import json

HELP = "List the base models you can fine-tune (and prepare the embedded default with --prepare)."
ORDER = 15


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the catalog as JSON")
    parser.add_argument("--prepare", metavar="MODEL", help="materialise a model in the cache now "
                                                          "(e.g. `default`: assemble + dequantize, about a minute)")


def run(args: argparse.Namespace) -> int:
    import sys

    from lorastudio.i18n import current_lang
    from lorastudio.models import ModelError, lorastudio_home, resolve_model
    from lorastudio.models.availability import catalog_availability, reasons

    if args.prepare:
        try:
            print(resolve_model(args.prepare))
        except ModelError as error:
            print(f"lorastudio models: {error}", file=sys.stderr)
            return 2
        return 0
    entries = catalog_availability()  # each with whether it can run here, and why not
    if args.json:
        print(json.dumps({"data": entries, "cache": str(lorastudio_home() / "models")}, ensure_ascii=False, indent=2))
        return 0
    print(f"{'ID':42} {'PARAMS':>6} {'DISK':>7} {'MEMORY':>7}  NOTES")
    for entry in entries:
        notes = []
        if entry["smoke_test"]:
            notes.append("SMOKE TEST ONLY — learns nothing")
        notes.append("offline" if entry["offline"] else "hub download")
        if entry.get("cached"):
            notes.append("cached")
        if not entry["available"]:
            notes.append(f"CANNOT RUN HERE: {reasons(entry, current_lang())}")
        print(f"{entry['id']:42} {entry['params']:>6} {entry['disk_gb']:>5.1f}GB {entry['min_memory_gb']:>5}GB  "
              + ", ".join(notes))
        print(f"{'':42} {entry['description']}")
    print(f"\nAlso accepted: a local model directory or a .gguf file. Cache: {lorastudio_home() / 'models'} "
          "(set LORASTUDIO_HOME to move it).")
    return 0
