"""`lorastudio demo`: the whole path on the bundled 云栈 data — validate, train, before/after table.

    lorastudio demo                 # the real thing on `default` (CPU: tens of minutes)
    lorastudio demo --quick         # tiny-random smoke run of every step (seconds; learns nothing)

The held-out questions (lorastudio/assets/demo/demo_questions.jsonl) are reworded questions about
facts in the training file, each with the key strings a correct answer must state; none of them is a
training row, so the table shows recall of taught facts, not memorised wording.
"""

from __future__ import annotations

import argparse
import sys
import time

HELP = "Run the whole path on the bundled 云栈 demo data: validate → train → before/after table."
ORDER = 5

QUICK_STEPS = 4
QUICK_QUESTIONS = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", default=None, help="base model (default: `default`; --quick: `tiny-random`)")
    parser.add_argument("--output", default="runs/demo", help="adapter output directory (default: runs/demo)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run on tiny-random: a few steps, three questions (checks the path, learns nothing)")
    parser.add_argument("--data", help="training file instead of the bundled demo data")
    parser.add_argument("--questions", help="question file instead of the bundled demo questions")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recommended training setting (repeatable), e.g. --set num_epochs=3")


def _assets():
    from importlib import resources

    return resources.files("lorastudio") / "assets" / "demo"


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lorastudio.commands._using import fail, lang, load_engine
    from lorastudio.evaluate import EvalFileError, evaluate, load_questions

    zh = lang() == "zh"
    base = args.base or ("tiny-random" if args.quick else "default")
    data = Path(args.data) if args.data else Path(str(_assets() / "yunzhan_train.jsonl"))
    qfile = Path(args.questions) if args.questions else Path(str(_assets() / "demo_questions.jsonl"))
    # Taught answers are 20–120 characters; 96 tokens holds them and keeps the CPU before/after short.
    max_new = args.max_new_tokens or (8 if args.quick else 96)
    started = time.monotonic()

    def say(en: str, cn: str) -> None:
        print(cn if zh else en, flush=True)

    # 1. validate ---------------------------------------------------------------------------------
    from lorastudio.data import DataError, validate

    try:
        report = validate(data)
        questions = load_questions(qfile)
    except (DataError, EvalFileError, FileNotFoundError) as exc:
        return fail(str(exc))
    if args.quick:
        questions = questions[:QUICK_QUESTIONS]
    d = report.to_dict()
    say(f"1/3 data: {data.name}: {d['rows_ok']} usable rows of {d['rows_total']} ({d['rows_rejected']} rejected)",
        f"1/3 数据：{data.name}：{d['rows_total']} 行中 {d['rows_ok']} 行可用（{d['rows_rejected']} 行被拒）")
    if not report.conversations:
        return fail("no usable rows to train on")

    # 2. train with the recommended settings ---------------------------------------------------------
    from lorastudio.train import ConfigError, DataUnusable, TrainConfig, TrainingInterrupted, train
    from lorastudio.train.recommend import recommend

    rec = recommend(report.conversations, base=base, task="qa")
    settings = dict(rec.settings)
    if args.quick:
        # A smoke run: every stage runs, nothing slow (no replay/paraphrase generation).
        settings.update(max_steps=QUICK_STEPS, augment_paraphrases=0, replay_rows=0)
    try:
        cfg = TrainConfig(**{**settings, "data": str(data), "base": base, "output_dir": args.output})
    except (ConfigError, TypeError) as exc:
        return fail(f"recommended settings were rejected: {exc}", 1)
    try:
        cfg = cfg.with_overrides(args.set) if args.set else cfg
    except ConfigError as exc:
        return fail(str(exc))
    est = rec.estimate or {}
    say(f"2/3 training {base} (LoRA r={cfg.lora_r}, lr={cfg.learning_rate:g}, "
        f"{'max ' + str(cfg.max_steps) + ' steps' if cfg.max_steps else f'{cfg.num_epochs:g} epochs'}; "
        f"estimate ≈ {est.get('seconds', 0) / 60:.0f} min on {est.get('device', '?')})",
        f"2/3 训练 {base}（LoRA r={cfg.lora_r}，学习率 {cfg.learning_rate:g}，"
        f"{'最多 ' + str(cfg.max_steps) + ' 步' if cfg.max_steps else f'{cfg.num_epochs:g} 轮'}；"
        f"预计约 {est.get('seconds', 0) / 60:.0f} 分钟，设备 {est.get('device', '?')}）")
    try:
        result = train(cfg, on_event=_progress_printer())
    except TrainingInterrupted:
        return fail(f"training interrupted; resume with `lorastudio train {data} --base {base} "
                    f"--output {args.output} --resume`", 130)
    except (DataUnusable, ConfigError) as exc:
        return fail(str(exc))
    adapter = result.adapter_dir

    # 3. before / after ---------------------------------------------------------------------------
    say(f"3/3 asking {len(questions)} held-out questions before and after fine-tuning …",
        f"3/3 用 {len(questions)} 个未参与训练的问题对比微调前后 …")
    engine = load_engine(base, max_adapters=1)
    ev = evaluate(engine, adapter, questions, max_new_tokens=max_new)
    print()
    print(ev.details(lang()))
    print()
    print(ev.table(lang()))
    minutes = (time.monotonic() - started) / 60
    say(f"\nAdapter: {adapter}   ({minutes:.1f} min in total)\n"
        f"Next: lorastudio compare --adapter {adapter}\n"
        f"      lorastudio export --adapter {adapter} --gguf {adapter}/model.gguf",
        f"\n适配器：{adapter}（共 {minutes:.1f} 分钟）\n"
        f"下一步：lorastudio compare --adapter {adapter}\n"
        f"        lorastudio export --adapter {adapter} --gguf {adapter}/model.gguf")
    if args.quick:
        say("(--quick used a random tiny model: the answers are noise; run without --quick for the real demo)",
            "（--quick 使用随机初始化的小模型：回答没有意义；去掉 --quick 运行真正的演示）")
    return 0


def _progress_printer():
    """Stage lines, and one progress line that rewrites itself on a terminal."""
    tty = sys.stderr.isatty()
    last = [0.0]

    def on_event(event: dict) -> None:
        kind = event.get("type")
        if kind == "stage":
            if tty:
                print(file=sys.stderr)
            print(f"  · {event.get('stage')}: {event.get('message', '')}", file=sys.stderr, flush=True)
        elif kind == "metrics":
            now = time.monotonic()
            if not tty and now - last[0] < 10 and event.get("step") != event.get("total_steps"):
                return  # logs: one line every 10 s is plenty
            last[0] = now
            line = (f"  step {event.get('step')}/{event.get('total_steps')}  {event.get('percent', 0):.0f}%  "
                    f"loss {event.get('loss', float('nan')):.3f}  ETA {event.get('eta_s', 0):.0f}s")
            print("\r" + line if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
        elif kind == "error":
            print(f"\n  error: {event.get('message')}", file=sys.stderr, flush=True)

    return on_event
