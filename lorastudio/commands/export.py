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
    parser.add_argument("--gguf-type", choices=["f16", "q8_0", "q4_K_M"], default="f16",
                        help="GGUF weight type: f16 (most faithful), q8_0 (half the size) or q4_K_M "
                             "(about a quarter, llama.cpp's quantizer)")
    parser.add_argument("--base", help="base model (default: the one recorded in the adapter)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip loading the export back in transformers and comparing its logits with "
                             "base+adapter (for --gguf it runs only when the llama.cpp fidelity check does not)")
    parser.add_argument("--no-check", action="store_true",
                        help="GGUF: skip the fidelity check (running the file in llama.cpp on the adapter's own "
                             "questions and comparing its first greedy tokens with base+adapter)")
    parser.add_argument("--check-questions", metavar="FILE",
                        help="GGUF: the questions for the fidelity check (any data file `validate` reads; "
                             "default: the adapter's training file)")
    parser.add_argument("--check-count", type=int, default=5, metavar="N",
                        help="GGUF: how many questions the fidelity check asks (default 5)")
    parser.add_argument("--check-tokens", type=int, default=16, metavar="N",
                        help="GGUF: how many greedy tokens per question must match (default 16)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from lorastudio import llamacpp
    from lorastudio.commands._using import UsageError, fail, lang
    from lorastudio.export import ExportError, export_gguf, export_merged
    from lorastudio.export_check import summary_lines
    from lorastudio.inference import AdapterError, check_adapter_dir

    if args.merged and (args.no_check or args.check_questions):
        return fail("--no-check and --check-questions apply to --gguf exports")
    if not 1 <= args.check_count <= 100 or not 1 <= args.check_tokens <= 256:
        return fail("--check-count must be 1..100 and --check-tokens 1..256")
    try:
        check_adapter_dir(args.adapter)
        if args.merged:
            result = export_merged(args.adapter, args.merged, base=args.base, verify=not args.no_verify)
        else:
            result = export_gguf(args.adapter, args.gguf, args.gguf_type, base=args.base,
                                 verify=not args.no_verify and (args.no_check or not llamacpp.available()),
                                 check=not args.no_check,
                                 check_questions=args.check_count, check_tokens=args.check_tokens,
                                 questions_file=args.check_questions)
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
    fid = result.fidelity
    if fid is not None and not args.json:
        if fid.get("passed") is None:
            print(f"fidelity NOT CHECKED: {fid['skipped']}", file=sys.stderr)
        else:
            for line in summary_lines(fid, lang()):
                print(line, file=sys.stderr if fid["passed"] is False else sys.stdout)
            print(f"report: {result.fidelity_file}")
    if result.check and result.check["top1_agreement"] < 0.9:
        return fail("the exported model's next-token choices differ from base+adapter; do not ship it", 1)
    if fid is not None and fid.get("passed") is False:
        return fail(f"FAILED fidelity: {result.path} answers differently from the adapter in llama.cpp; "
                    f"see {result.fidelity_file}", 1)
    return 0
