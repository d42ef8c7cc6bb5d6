"""What a run trains on: the validated file (or given conversations), the train/validation split, the
augmented rows, and the tokenized, packed examples with their step schedule."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lorastudio.train.config import TrainConfig
from lorastudio.train.events import EventLog
from lorastudio.train.schedule import Schedule
from lorastudio.train.tokenize import Example, encode_dataset


class DataUnusable(ValueError):
    """The data cannot train anything (no usable rows, every row too long…); the CLI exits 2."""


def validate_file(path: str) -> tuple[list[Any], dict[str, Any]]:
    """The service's validation of a file (`lorastudio.data.validate`); lengths are left to `tokenize`,
    which counts every row's tokens exactly anyway (counting them here too made reading a 200 MB file
    take minutes where the service's validation took 19 s: issue 16)."""
    from lorastudio.data import DataError, validate

    try:
        report = validate(path, max_length=None)
    except DataError as error:
        raise DataUnusable(str(error)) from error
    except FileNotFoundError as error:
        raise DataUnusable(f"{path}: no such file") from error
    if not report.conversations:
        # Name the commonest problems right here: the user should not need a second command to learn why.
        kinds: dict[str, dict[str, Any]] = {}
        for issue in report.to_dict().get("issues", []):
            if issue.get("severity") == "error":
                kinds.setdefault(issue["kind"], {"count": 0, "first": issue})["count"] += 1
        top = sorted(kinds.items(), key=lambda kv: -kv[1]["count"])[:3]
        reasons = "; ".join(f"{kind} ×{v['count']} (row {v['first']['row']}: {v['first']['message']} "
                            f"{v['first']['hint']})" for kind, v in top)
        raise DataUnusable(f"{path}: no usable rows ({report.rows_rejected} rejected)"
                           + (f": {reasons}" if reasons else "") + f"; details: `lorastudio validate {path}`")
    return list(report.conversations), report.to_dict()


def load_conversations(cfg: TrainConfig, given_train: Sequence[Any] | None,
                       given_val: Sequence[Any] | None) -> tuple[list[Any], list[Any], dict[str, Any]]:
    """(training conversations, validation conversations, data report)."""
    from lorastudio.data import split_train_val

    if given_train is not None:
        train = list(given_train)
        report: dict[str, Any] = {"file": cfg.data or None, "rows_ok": len(train), "source": "in-memory"}
    else:
        if not cfg.data:
            raise DataUnusable("no training data given (cfg.data is empty)")
        train, report = validate_file(cfg.data)
    if given_val is not None:
        val = list(given_val)
    elif cfg.validation_data:
        val, report["validation"] = validate_file(cfg.validation_data)
    else:
        train, val = (list(part) for part in split_train_val(train, val_fraction=cfg.val_fraction, seed=cfg.seed))
    return train, val, report


def augment(conversations: list[Any], *, model, tokenizer, cfg: TrainConfig,
            log: EventLog) -> tuple[list[Any], list[Any]]:
    """Same-fact pairs, paraphrases, standalone turns (augment.py) and self-replay rows (replay.py), as asked:
    (every training conversation, the replay rows among them)."""
    from lorastudio.train.augment import augment_conversations
    from lorastudio.train.replay import replay_conversations

    def forward(event: dict[str, Any]) -> None:
        if "type" in event:
            log.emit(**event)

    wanted = cfg.augment_paraphrases or cfg.augment_same_fact or cfg.augment_turns or cfg.augment_contrast \
        or cfg.augment_cases or cfg.augment_grounded
    steps = ((wanted, "augment", augment_conversations),
             (cfg.replay_rows, "replay", replay_conversations))
    replay: list[Any] = []
    for wanted, name, func in steps:
        if not wanted:
            continue
        added = func(conversations, model=model, tokenizer=tokenizer, cfg=cfg, on_event=forward)
        log.stage("prepare", f"{name}: +{len(added) - len(conversations)} rows")
        if name == "replay":
            replay = list(added[len(conversations):])
        conversations = list(added)
    return conversations, replay


@dataclass
class Tokenized:
    train: list[Example]
    val: list[Example]
    schedule: Schedule


def tokenize(train_convs: list[Any], val_convs: list[Any], *, tokenizer, cfg: TrainConfig, log: EventLog,
             report: dict[str, Any]) -> Tokenized:
    """Chat template, assistant-only labels, the packed step schedule; adds `report["tokens"]`."""
    log.stage("tokenize", f"rendering {len(train_convs)} training and {len(val_convs)} "
                          "validation conversations with the model's chat template")
    train = encode_dataset(train_convs, tokenizer, cfg.max_length, cfg.system_prompt, cfg.key_token_weight,
                           cfg.question_loss_weight)
    val = encode_dataset(val_convs, tokenizer, cfg.max_length, cfg.system_prompt)
    skipped = train.too_long + val.too_long
    if skipped:
        rows = ", ".join(str(s["row"]) for s in skipped[:10]) + (" …" if len(skipped) > 10 else "")
        log.stage("tokenize", f"skipped {len(skipped)} conversation(s) longer than max_length="
                              f"{cfg.max_length} tokens (rows {rows}); raise max_length to keep them")
    if not train.examples:
        too_long = ", ".join(f"row {s['row']}: {s['tokens']} tokens" for s in train.too_long[:3])
        raise DataUnusable(f"no conversation fits max_length={cfg.max_length} tokens with an assistant "
                           "answer to learn" + (f" (too_long ×{len(train.too_long)}: {too_long})" if too_long else "")
                           + "; raise max_length or shorten the rows")
    lengths = [e.num_tokens for e in train.examples]
    report["tokens"] = {
        "train_conversations": len(train.examples), "validation_conversations": len(val.examples),
        "train_tokens": sum(lengths), "train_target_tokens": sum(e.num_target_tokens for e in train.examples),
        "max_tokens": max(lengths), "mean_tokens": round(sum(lengths) / len(lengths), 1),
        "skipped_too_long": skipped, "skipped_no_answer": train.no_targets + val.no_targets,
    }
    schedule = Schedule(lengths, cfg, [e.rotation for e in train.examples])
    variants = sum(1 for e in train.examples if e.rotation)
    log.stage("tokenize", f"{len(lengths)} examples, {sum(lengths):,} tokens"
                          + (f" ({variants} of them variants trained in one epoch each)" if variants else "")
                          + f", {len(schedule)} optimizer steps of ≤ {cfg.batch_tokens} tokens")
    return Tokenized(train.examples, val.examples, schedule)
