"""`lorastudio train DATA --base MODEL --output DIR`: LoRA fine-tune with recommended settings.

Settings, later ones winning: TrainConfig defaults → the recommender (data, task, model, hardware)
→ `--config FILE.yaml` → flags (`--epochs`, `--lr`, …) → `--set key=value`. With `--resume` the
interrupted run's own `train_config.yaml` is the starting point instead.

The recommender's schedule is the one that measured best for quality, on every device; it is never
shortened unasked. `--quick` asks for a one-pass preview (its measured cost in recall is printed) and
`--time-budget MIN` lets it shrink passes (down to one), then the neighbour pairs, to fit; each shrink is printed. Reasons
and warnings print in the user's language (lorastudio.i18n).
Exit codes: 0 done, 2 unusable input, 130 interrupted (checkpoint saved), 1 anything else.

`--gpus N` (TrainConfig.gpus, also from `--config`/`--set`/a resumed run's config) runs the same command
under torchrun on N local GPUs (lorastudio.train.distributed); the exit code is rank 0's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from typing import Any

HELP = "Fine-tune a base model with LoRA on a Q&A file (progress bar, checkpoints, --resume)."
ORDER = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", metavar="DATA", help="training file (JSONL, JSON, CSV, TSV, TXT, XLSX)")
    parser.add_argument("--base", default=None, help="model: default, tiny-random, a model directory, a .gguf "
                                                     "file or a hub id (default: default)")
    parser.add_argument("--output", "-o", default=None, help="output directory (default: runs/<data name>)")
    parser.add_argument("--task", choices=("qa", "copywriting", "consulting"), default=None,
                        help="what the model is for; shapes the recommended settings (default: qa)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output")
    parser.add_argument("--config", metavar="FILE", help="YAML file of settings (as in a run's train_config.yaml)")
    parser.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                        help="override one setting, e.g. --set lora_r=32 (repeatable)")
    parser.add_argument("--epochs", type=float, help="passes over the data (num_epochs)")
    parser.add_argument("--lr", type=float, help="learning rate")
    parser.add_argument("--lora-r", type=int, help="LoRA rank")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    parser.add_argument("--validation", metavar="FILE", help="validation file (default: a split of DATA)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where to train (default: auto)")
    parser.add_argument("--gpus", type=int, help="train on this many local GPUs (relaunches under torchrun; "
                                                 "the result equals one GPU's with the same settings)")
    parser.add_argument("--no-recommend", action="store_true",
                        help="start from TrainConfig's defaults instead of the recommender's settings")
    parser.add_argument("--quick", action="store_true",
                        help="quick preview: one pass over the data instead of the full schedule (much faster; "
                             "fewer harder questions answered, far fewer facts in the weights alone; the measured "
                             "cost is printed)")
    parser.add_argument("--time-budget", type=float, metavar="MIN",
                        help="wall-time limit in minutes: the recommender shortens the schedule (passes, then "
                             "the neighbour pairs) to fit it and says what it shortened; without it nothing is shortened")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress output (events.jsonl is still written)")


def _flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    pairs = {"num_epochs": args.epochs, "learning_rate": args.lr, "lora_r": args.lora_r,
             "max_steps": args.max_steps, "validation_data": args.validation, "device": args.device,
             "gpus": getattr(args, "gpus", None),
             "base": args.base, "task": args.task}
    out = {k: v for k, v in pairs.items() if v is not None}
    if args.lora_r is not None and "lora_alpha" not in " ".join(args.overrides):
        out["lora_alpha"] = 2 * args.lora_r  # keep the alpha/r scale the defaults assume
    return out


def _fail(message: str, code: int = 2) -> int:
    print(f"lorastudio train: {message}", file=sys.stderr)
    return code


def _asked_device(args: argparse.Namespace) -> str | None:
    """"cpu"/"cuda" when the user chose where to train (`--device`, or `--set device=…`), else None."""
    asked = args.device
    for item in getattr(args, "overrides", None) or []:
        key, _, value = str(item).partition("=")
        if key.strip() == "device":
            asked = value.strip()
    return asked if asked in ("cpu", "cuda") else None


def _recommended(data: str, base: str, task: str, quiet: bool, quick: bool = False,
                 time_budget_min: float | None = None, device: str | None = None,
                 keep: dict[str, Any] | None = None) -> dict[str, Any]:
    """The recommender's settings for this file (printed with their reasons in the user's language),
    for the device the run will use: `device` when the user chose one (a CPU run on a machine that also
    has a GPU gets the CPU's settings and estimate), else this machine's best. `keep` receives the
    recommendation (`_estimate_changes` estimates the user's changes with it)."""
    from lorastudio.data import validate
    from lorastudio.i18n import current_lang
    from lorastudio.train.recommend import recommend

    report = validate(data)
    rec = recommend(report.conversations, base=base, task=task, quick=quick, hardware=device,
                    time_budget_s=None if time_budget_min is None else time_budget_min * 60)
    settings = dict(rec.settings)
    # full | quick | budget, and the estimate the run's measured speed is compared with (train_config.yaml)
    settings["extra"] = {"schedule": rec.schedule, "estimate": rec.estimate}
    if not quiet:
        _print_recommendation(rec, settings, current_lang())
    if keep is not None:
        keep["rec"] = rec
    return settings


def _estimate_changes(cfg: Any, recommended: dict[str, Any], rec: Any, quiet: bool) -> Any:
    """The user changed a setting the time depends on (`--epochs 4`, `--set replay_rows=0` …): the estimate
    of what will run, printed next to the recommendation's and kept as the one the run is compared with."""
    from lorastudio.i18n import current_lang, t
    from lorastudio.train.recommend import changed_settings, render

    final = cfg.to_dict()
    changes = changed_settings(recommended, final)
    if not changes:
        return cfg
    new = rec.estimate_for(final)
    if not quiet:
        lang = current_lang()
        device_name = render(new["device_code"], lang) if new.get("device_code") else new.get("device", "?")
        print("  " + t("cli.train.estimate_changed", lang, changes=_listed(changes), time=_duration(new["seconds"]),
                       device=device_name), file=sys.stderr)
    extra = dict(cfg.extra or {})
    extra.update(estimate=new, recommended_estimate=(recommended.get("extra") or {}).get("estimate"))
    return cfg.with_overrides({"extra": extra})


def _print_overrides(cfg: Any, recommended: dict[str, Any], quiet: bool) -> None:
    """The user replaced a recommended setting the time does not depend on (`--set learning_rate=1e-3`): say
    so, since the list above shows the recommended value with its reason (time-relevant changes have
    `_estimate_changes`' line)."""
    from lorastudio.i18n import current_lang, t
    from lorastudio.train.recommend import ESTIMATE_SETTINGS, changed_settings

    if quiet:
        return
    others = [k for k in recommended if k != "extra" and k not in ESTIMATE_SETTINGS]
    changes = changed_settings(recommended, cfg.to_dict(), others)
    if changes:
        print("  " + t("cli.train.overridden", current_lang(), changes=_listed(changes)), file=sys.stderr)


def _listed(changes: dict[str, tuple[Any, Any]]) -> str:
    """`changed_settings`' result as the CLI prints it: "num_epochs 4.0 → 9.0, replay_rows 60 → 0"."""
    return ", ".join(f"{k} {before} → {after}" for k, (before, after) in changes.items())


def _print_recommendation(rec: Any, settings: dict[str, Any], lang: str, stream=None) -> None:
    """Settings with their reasons, the estimate, the other schedule (quick preview or full) and the
    warnings, all rendered from the recommender's codes in `lang`."""
    from lorastudio.i18n import t
    from lorastudio.train.recommend import render

    stream = stream or sys.stderr
    reasons = rec.reasons_in(lang)
    print(t("cli.train.recommended", lang), file=stream)
    for key, value in settings.items():
        if key == "extra":
            continue
        reason = reasons.get(key, "")
        print(f"  {key} = {value}" + (f"  — {reason}" if reason else ""), file=stream)
    estimate = rec.estimate or {}
    if estimate.get("seconds"):
        device = render(estimate["device_code"], lang) if estimate.get("device_code") else estimate.get("device", "?")
        key = "cli.train.estimate_cost" if estimate.get("cost") else "cli.train.estimate"
        print("  " + t(key, lang, time=_duration(estimate["seconds"]), device=device, cost=estimate.get("cost"),
                       currency=estimate.get("currency", "")), file=stream)
    alternatives = getattr(rec, "alternatives", {}) or {}
    quick = alternatives.get("quick")
    if rec.schedule == "full" and quick and quick.get("settings_changes"):
        print("  " + t("cli.train.quick_hint", lang, text=render(quick["cost"], lang)), file=stream)
    if "full" in alternatives:
        print("  " + t("cli.train.full_hint", lang, text=render(alternatives["full"]["cost"], lang)), file=stream)
    for warning in rec.warnings_in(lang):
        print("  " + t("cli.train.note", lang, text=warning), file=stream)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class _Progress:
    """A one-line progress bar on a TTY; on a pipe, stage lines and a metrics line every ~5 %."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.last_percent = -100.0
        self.bar_open = False

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "metrics":
            self._metrics(event)
            return
        self._end_bar()
        if kind == "stage":
            print(f"[{event['stage']}] {event['message']}", file=self.stream, flush=True)
        elif kind == "eval":
            print(f"  validation loss at step {event['step']}: {event['valid_loss']:.4f}", file=self.stream)
        elif kind == "checkpoint":
            print(f"  checkpoint: {event['path']}", file=self.stream)
        elif kind == "resumed":
            print(f"  resumed from {event['path']} (step {event['step']})", file=self.stream)
        elif kind == "error":
            print(f"  error: {event['message']}", file=self.stream)

    def _metrics(self, e: dict[str, Any]) -> None:
        loss = "—" if e.get("loss") is None else f"{e['loss']:.4f}"
        text = (f"step {e['step']}/{e['total_steps']} · loss {loss} · lr {e['lr']:.2e} · "
                f"{e['tokens_per_s']:.0f} tok/s · ETA {_duration(e['eta_s'])}")
        if self.tty:
            width = 24
            filled = int(width * e["percent"] / 100)
            print(f"\r[train] {e['percent']:5.1f}% {'█' * filled}{'·' * (width - filled)} {text}\x1b[K",
                  end="", file=self.stream, flush=True)
            self.bar_open = True
        elif e["percent"] - self.last_percent >= 5 or e["step"] == e["total_steps"]:
            self.last_percent = e["percent"]
            print(f"[train] {e['percent']:.0f}% {text}", file=self.stream, flush=True)

    def _end_bar(self) -> None:
        if self.bar_open:
            print(file=self.stream)
            self.bar_open = False


def run(args: argparse.Namespace) -> int:
    from lorastudio.train import distributed

    code = _run(args)
    # Rank 0 under torchrun tells the launching process its exit code. After an interruption every rank
    # has stopped cleanly, so torchrun is told 0 (no "child failed" report on a Ctrl-C); the launcher
    # still exits 130.
    if distributed.report_exit_code(code) and code == 130:
        return 0
    return code


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lorastudio.data import DataError
    from lorastudio.models import ModelError
    from lorastudio.train import (
        ConfigError,
        DataUnusable,
        TrainConfig,
        TrainingInterrupted,
        distributed,
        train,
    )

    if not Path(args.data).is_file():
        return _fail(f"{args.data}: no such file")
    quick, budget = getattr(args, "quick", False), getattr(args, "time_budget", None)
    if budget is not None and not budget > 0:
        return _fail(f"--time-budget {budget:g}: give the limit in minutes, more than 0")
    if (quick or budget is not None) and (args.resume or args.no_recommend or args.config):
        which = "--resume" if args.resume else "--no-recommend" if args.no_recommend else "--config"
        return _fail(f"--quick/--time-budget shape the recommended schedule, which {which} does not use; "
                     "set --epochs instead")
    output = args.output or str(Path("runs") / Path(args.data).stem)
    started = time.time()
    worker = distributed.is_worker()
    rank = int(os.environ.get("RANK", 0)) if worker else 0
    recommended: dict[str, Any] | None = None
    kept: dict[str, Any] = {}
    try:
        if args.resume:
            saved = Path(output) / "train_config.yaml"
            if not saved.is_file():
                return _fail(f"--resume: {saved} not found; was {output} written by `lorastudio train`?")
            cfg = TrainConfig.from_yaml(saved)
        else:
            cfg = TrainConfig()
            if not args.no_recommend and not args.config:
                recommended = _recommended(args.data, args.base or cfg.base, args.task or cfg.task,
                                           args.quiet or worker,  # the launcher printed it
                                           quick=getattr(args, "quick", False),
                                           time_budget_min=getattr(args, "time_budget", None),
                                           device=_asked_device(args), keep=kept)
                cfg = cfg.with_overrides(recommended)
            if args.config:
                cfg = cfg.with_overrides(TrainConfig.from_yaml(args.config).to_dict())
        cfg = cfg.with_overrides({"data": args.data, "output_dir": output, **_flag_overrides(args)})
        cfg = cfg.with_overrides(args.overrides)
        if recommended is not None:
            cfg = _estimate_changes(cfg, recommended, kept["rec"], args.quiet or worker)
            _print_overrides(cfg, recommended, args.quiet or worker)
        if worker:
            cfg = cfg.with_overrides({"gpus": int(os.environ.get("WORLD_SIZE", 1))})
    except (ConfigError, DataError) as error:
        return _fail(str(error)) if rank == 0 else 0
    except (OSError, ValueError) as error:
        return _fail(f"{type(error).__name__}: {error}") if rank == 0 else 0

    if cfg.gpus > 1 and not worker:
        try:
            return distributed.maybe_relaunch(cfg.gpus, list(getattr(args, "argv", None) or sys.argv[1:]))
        except (RuntimeError, ValueError) as error:
            return _fail(str(error))
    if rank != 0:
        return _run_other_rank(cfg, args)

    progress = None if args.quiet else _Progress()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress line is the one to read
    import warnings

    # Library deprecation notices (transformers ↔ peft) say nothing actionable to someone training.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\b")
    try:
        result = train(cfg, on_event=progress, resume=args.resume)
    except TrainingInterrupted as stop:
        if progress:
            progress._end_bar()
        print(f"interrupted at step {stop.step}; checkpoint saved to {stop.checkpoint}\n"
              f"continue with: lorastudio train {args.data} --output {output} --resume", file=sys.stderr)
        return 130
    except (DataUnusable, DataError, ConfigError, ModelError) as error:
        return _fail(str(error))
    except KeyboardInterrupt:
        return _fail("stopped immediately (second Ctrl-C); resume from the last checkpoint with --resume", 130)
    except Exception as error:  # the full story is in events.jsonl; the terminal gets one line
        if os.environ.get("LORASTUDIO_DEBUG"):
            raise
        return _fail(f"{type(error).__name__}: {error} (set LORASTUDIO_DEBUG=1 for the traceback)", 1)
    metrics = result.metrics
    valid = metrics.get("valid_loss")
    print(f"done in {_duration(time.time() - started)}: {result.steps} steps, train loss "
          f"{metrics.get('first_train_loss') or 0:.4f} → {metrics.get('train_loss') or 0:.4f}"
          + (f", validation loss {valid:.4f}" if valid is not None else "")
          + f"\nadapter: {result.adapter_dir}\n"
          f"try it:  lorastudio compare --base {cfg.base} --adapter {result.adapter_dir}", file=sys.stderr)
    return 0


def _run_other_rank(cfg: Any, args: argparse.Namespace) -> int:
    """Ranks 1…N-1: train their share silently. Rank 0 reports (events, messages, exit code). Errors
    every rank meets alike (bad data or settings, an interruption) exit 0 here, so torchrun does not
    stop rank 0 before it has reported them; anything else fails this rank (and torchrun stops all)."""
    from transformers.utils import logging as hf_logging

    from lorastudio.data import DataError
    from lorastudio.models import ModelError
    from lorastudio.train import ConfigError, DataUnusable, TrainingInterrupted, train

    hf_logging.disable_progress_bar()
    # other exceptions propagate: exit 1, and torchrun stops every rank
    with contextlib.suppress(TrainingInterrupted, DataUnusable, DataError, ConfigError, ModelError):
        train(cfg, resume=args.resume)
    return 0
