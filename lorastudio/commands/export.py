"""`lorastudio export`: a trained adapter as a merged model directory or a GGUF (+ Ollama Modelfile)."""

from __future__ import annotations

import argparse

HELP = "Export an adapter as a merged model (--merged DIR) or a GGUF for llama.cpp/Ollama (--gguf FILE)."
ORDER = 46


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", required=True, help="LoRA adapter directory (the output of `lorastudio train`)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--merged", metavar="OUT_DIR", help="write a merged safetensors model directory")
    target.add_argument("--gguf", metavar="OUT.gguf", help="write one GGUF file and a Modelfile beside it")
    parser.add_argument("--gguf-type", choices=["f16", "q8_0"], default="f16",
                        help="GGUF weight type: f16 (exact) or q8_0 (half the size)")
    parser.add_argument("--base", help="base model (default: the one recorded in the adapter)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip loading the export back and comparing its logits with base+adapter")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from lorastudio.commands._using import UsageError, fail
    from lorastudio.export import ExportError, export_gguf, export_merged
    from lorastudio.inference import AdapterError, check_adapter_dir

    try:
        check_adapter_dir(args.adapter)
        if args.merged:
            result = export_merged(args.adapter, args.merged, base=args.base, verify=not args.no_verify)
        else:
            result = export_gguf(args.adapter, args.gguf, args.gguf_type, base=args.base,
                                 verify=not args.no_verify)
    except (AdapterError, ExportError, UsageError) as exc:
        return fail(str(exc))
    except (OSError, RuntimeError) as exc:
        # models.ModelError (a RuntimeError): the recorded base model cannot be found or loaded.
        return fail(f"cannot export: {str(exc).splitlines()[0]}")
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    else:
        print(f"wrote {result.path} ({result.bytes / 1e6:.1f} MB): {', '.join(result.files)}")
        if result.modelfile:
            print(f"Ollama: cd {Path(result.modelfile).parent} && ollama create my-model -f Modelfile")
        if result.check:
            c = result.check
            print(f"check: max |Δlogit| {c['max_abs_diff']:.4g} (logits up to {c['logit_scale']:.3g}), "
                  f"top-1 token agreement {c['top1_agreement']:.0%}", file=sys.stderr)
    if result.check and result.check["top1_agreement"] < 0.9:
        return fail("the exported model's next-token choices differ from base+adapter; do not ship it", 1)
    return 0
