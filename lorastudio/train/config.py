"""`TrainConfig`: every setting of one fine-tune, validated, saved as YAML beside the adapter."""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

Task = Literal["qa", "copywriting", "consulting"]
TASKS: tuple[str, ...] = ("qa", "copywriting", "consulting")


# Bounds that keep every setting inside what a run can do (the schedule is built up front: a billion
# epochs would fill the memory before the first step). Epochs: OpenAI's 1–50 range, with room for tiny
# data; the seed feeds torch.manual_seed after mixing with the step number.
MAX_EPOCHS = 100
MAX_STEPS = 1_000_000
MAX_SEED = 2**31 - 1
MAX_NUMBER = 1e12


class ConfigError(ValueError):
    """A setting is unknown or out of range; the message names it and says what is allowed, `setting` is its
    name where one setting is at fault (an API names it in its error's `param`)."""

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


_FLOAT_FIELDS = {"lora_dropout", "learning_rate", "lora_plus_ratio", "warmup_ratio", "weight_decay", "num_epochs",
                 "neftune_alpha", "val_fraction", "price_per_hour", "contrast_random",
                 "question_loss_weight", "protect_general", "knowledge_strength"}
_INT_FIELDS = {"lora_r", "lora_alpha", "max_steps", "batch_tokens", "gradient_accumulation", "max_length",
               "seed", "eval_every", "save_every", "keep_checkpoints", "early_stopping_patience", "augment_paraphrases",
               "replay_rows", "gpus", "contrast_passes", "key_token_weight", "contrast_neighbours", "knowledge_rows"}


def _resume(default: Any) -> Any:
    """A setting that changes what a training step computes: `--resume` refuses a changed value (it
    would not continue the interrupted run but start another one from its middle)."""
    return field(default=default, metadata={"resume": True})


def resume_keys() -> tuple[str, ...]:
    """The settings a resumed run must share with its checkpoint (declared on the fields below)."""
    return tuple(f.name for f in fields(TrainConfig) if f.metadata.get("resume"))


def _coerce(key: str, value: Any) -> Any:
    """YAML reads `1e-3` as a string and users type `16.0`; accept both where a number is meant."""
    if value is None or isinstance(value, bool):
        return value
    try:
        if key in _FLOAT_FIELDS:
            return float(value)
        if key in _INT_FIELDS:
            number = float(value)
            if number != int(number):
                raise ConfigError(f"{key}={value!r} is invalid: must be a whole number", key)
            return int(number)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} is invalid: must be a number", key) from None
    return value


@dataclass
class TrainConfig:
    # --- what to train on -------------------------------------------------------------------
    data: str = _resume("")
    """Training file (any format of lorastudio.data)."""
    base: str = _resume("default")
    """Model id (`default`, `tiny-random`), a local HF directory, a .gguf file or a hub id."""
    output_dir: str = "runs/latest"
    validation_data: str | None = _resume(None)
    """Optional validation file; otherwise a seeded split of the training data (if big enough)."""
    task: Task = _resume("qa")
    system_prompt: str | None = _resume(None)
    """Used for rows that bring no system message of their own."""

    # --- LoRA ---------------------------------------------------------------------------------
    lora_r: int = _resume(16)
    lora_alpha: int = _resume(32)
    lora_dropout: float = _resume(0.0)
    target_modules: list[str] | str = _resume("all-linear")
    """"all-linear", "all-mlp" (the linear layers of the feed-forward blocks) or a list of module names."""

    # --- optimisation -------------------------------------------------------------------------
    learning_rate: float = _resume(5e-4)
    lora_plus_ratio: float = _resume(1.0)
    """LoRA+ (Hayou et al., 2024): the LoRA B matrices learn at this many times `learning_rate`, the A
    matrices at `learning_rate`; 1 = plain LoRA (one rate for both)."""
    lr_scheduler: Literal["linear", "cosine", "constant"] = _resume("linear")
    warmup_ratio: float = _resume(0.05)
    weight_decay: float = _resume(0.0)
    num_epochs: float = _resume(4.0)
    max_steps: int | None = _resume(None)
    """Overrides num_epochs when set."""
    batch_tokens: int = _resume(4096)
    """Real (unpadded) tokens packed into one micro-batch."""
    gradient_accumulation: int = _resume(1)
    max_length: int = _resume(1024)
    """Longest conversation in tokens; longer ones are reported and skipped, never cut silently."""
    key_token_weight: int = _resume(1)
    """How often the key tokens of a training answer count in the loss: the first tokens of every answer
    and every token written with a digit (`tokenize.KeyTokens`); 1 = every target token once. The train
    loss shown is that weighted mean; validation loss counts every token once."""
    question_loss_weight: float = _resume(0.0)
    """How much each token of a user's question counts in the loss, beside the answer's (0–1; 0 = the
    answers only, the usual assistant-only loss). The template's role headers and system text never count.
    The train loss shown includes the questions at this weight; validation loss counts the answers only."""
    neftune_alpha: float | None = _resume(None)
    protect_general: float = _resume(0.0)
    """Keeps LoRA off the directions general text takes: for each adapted linear, this share of its input
    dimensions (the top principal directions of its inputs on the replay rows, base model) is removed from
    the LoRA A matrix at the start and after every step, so the adapter reads only what general text
    barely uses (0 = off). Needs replay rows."""
    seed: int = _resume(0)

    # --- validation, checkpoints, early stopping ------------------------------------------------
    val_fraction: float = _resume(0.1)
    eval_every: int = 0
    """Steps between validation passes; 0 = once per epoch."""
    save_every: int = 0
    """Steps between checkpoints; 0 = once per epoch."""
    keep_checkpoints: int = 2
    """Newest step checkpoints kept on disk (older ones are deleted as new ones land; the job API lists
    exactly these). Each holds the LoRA weights and optimizer state: a few MB to a few hundred."""
    early_stopping_patience: int | None = None
    """Stop after this many validation passes without improvement and keep the best checkpoint."""

    # --- data augmentation and forgetting guard --------------------------------------------------
    augment_paraphrases: int = _resume(0)
    """Paraphrases of each training question written by the base model itself (0 = off)."""
    augment_same_fact: bool = _resume(False)
    """Also train each question with the answer of another row stating the same fact (found by answer
    similarity; no generation). Added by the quality work (lorastudio/train/augment.py, docs/QUALITY.md)."""
    augment_turns: bool = _resume(False)
    """Multi-turn rows: also train each later turn as a question of its own (system message kept), so a
    fact stated in turn 3 is found by a question asked without that conversation before it."""
    replay_rows: int = _resume(0)
    """Rows of the base model's own answers to built-in general prompts mixed in (0 = off)."""
    augment_per_epoch: bool = _resume(False)
    """A fresh variant each epoch instead of repeating one: same-fact pairs borrow another sibling's
    answer and replay takes new general prompts every epoch (same tokens per epoch, more variety)."""
    augment_contrast: bool = _resume(False)
    """Also train pairs of neighbouring facts asked in one question ("…？另外，…？"), each part answered
    with its own row's answer, so close facts are told apart (half the questions each epoch; no generation;
    runs with the augmentation hook, i.e. with augment_same_fact, augment_turns or augment_paraphrases on)."""
    contrast_passes: int = _resume(0)
    """Passes that train the contrastive pairs: 0 = every pass; N = the first N passes only, so the last
    passes train each question on its own (needs augment_per_epoch, which schedules rows by pass)."""
    contrast_random: float = _resume(0.0)
    """Share of the contrastive pairs whose second question is from a fact that is no neighbour (0–1, drawn
    per pair; 0 = neighbours only): aimed at two unrelated facts asked at once."""
    contrast_neighbours: int = _resume(2)
    """How many neighbouring facts (the closest by wording) each question's pairs are drawn from (1–8)."""
    contrast_joiners: str = _resume("varied")
    """How a pair's two questions are joined: "varied" (a joiner drawn per pair: "…？…？", "…？还有，…？",
    "…？顺便问下，…？" …; the default since session 10: "two facts at once" questions +1.6 of 13 on the demo
    file, +1.0 on the multi-turn one, general answers unchanged, docs/QUALITY.md) or "also" (always
    "…？另外，…？" / "… Also, …?", sessions 5–9)."""
    augment_cases: bool = _resume(False)
    """Also train new cases of the rules the rows state: a case question's amount moved within its rule's
    bounds, and rule questions framed with a concrete amount past their threshold (no generation; runs
    with the augmentation hook like augment_contrast)."""
    augment_grounded: float = _resume(0.0)
    """Share of the user's turns also trained, each pass, with their closest rows in the system message
    (0–1; 0 = off): exactly what the tuned model reads when it answers with `knowledge_rows`, the rows in a
    shuffled order, so it learns to find the one the question asks about among its neighbours. Each such
    copy is a few hundred tokens longer (raise max_length to fit them; copies that do not fit are skipped).
    Measured (docs/QUALITY.md, session 23): +3.5 of 40 whole facts on a conversations-only file, but −2.8 whole
    and −6.5 of 75 harder on the demo fact file at twice the tokens: off by default."""
    knowledge_rows: int = 6
    """Rows of the training file put beside each question when the tuned model answers (the closest by
    wording, from `<adapter>/knowledge.jsonl`; lorastudio/knowledge.py): the model reads the facts as well as
    remembers them; 0 = answers from the weights alone. Exported GGUFs always answer from the weights alone."""
    knowledge_strength: float = 1.0
    """The adapter's strength (0–1: its LoRA update scaled) whenever it answers with its rows on (`knowledge_rows`;
    also for a question no row is close to, as measured); 1 = as trained, 0 = the base model reading the rows.
    Answers from the weights alone (`--no-knowledge`, exports) always use the full adapter.
    The recommender picks 0.5 for files that tell each fact about once (a conversations file): there the weights
    learn little of each fact and pull the model's reading off its rows (docs/QUALITY.md, session 25)."""
    replay_prompts: str | None = _resume(None)
    """Your own general prompts for replay instead of the built-in set: a .txt (one per line) or .jsonl
    (`prompt` per line), the first `replay_rows` used; answers cached per base model like the built-in ones."""

    # --- hardware -----------------------------------------------------------------------------
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    quantize_base: Literal["auto", "none", "4bit"] = _resume("auto")
    """4-bit NF4 base weights through bitsandbytes (QLoRA): "4bit" always, "auto" only when the bf16
    base does not fit the GPU (auto-fit, bitsandbytes installed), "none" never."""
    gpus: int = 1
    price_per_hour: float = 0.0
    """Price of the device per hour, for the cost shown during training (CPU: 0)."""

    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes carried into the saved config (e.g. the recommender's reasons)."""

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------------------------------
    def validate(self) -> None:
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ConfigError(f"{name}={getattr(self, name)!r} is invalid: {what}", name)

        for name in sorted(_FLOAT_FIELDS | _INT_FIELDS):  # no inf/NaN, no numbers beyond any sane run
            value = getattr(self, name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                need(math.isfinite(value), name, "must be a finite number")
        need(self.task in TASKS, "task", f"choose one of {', '.join(TASKS)}")
        need(self.lora_r >= 1, "lora_r", "must be ≥ 1 (typical: 8–64)")
        need(self.lora_alpha > 0, "lora_alpha", "must be > 0 (typical: 2 × lora_r)")
        need(0.0 <= self.lora_dropout < 1.0, "lora_dropout", "must be in [0, 1)")
        need(0.0 < self.learning_rate < 1.0, "learning_rate", "must be in (0, 1) (typical: 1e-4–1e-3)")
        need(1.0 <= self.lora_plus_ratio <= 64.0, "lora_plus_ratio",
             "must be 1–64 (1 = plain LoRA; LoRA+ uses 4–16)")
        need(self.lr_scheduler in ("linear", "cosine", "constant"), "lr_scheduler", "linear, cosine or constant")
        need(0.0 <= self.warmup_ratio < 1.0, "warmup_ratio", "must be in [0, 1)")
        need(0 < self.num_epochs <= MAX_EPOCHS, "num_epochs", f"must be > 0 and ≤ {MAX_EPOCHS}")
        need(self.max_steps is None or 1 <= self.max_steps <= MAX_STEPS, "max_steps", f"must be 1–{MAX_STEPS:,} or unset")
        need(0 <= self.seed <= MAX_SEED, "seed", f"must be a whole number from 0 to {MAX_SEED}")
        need(self.batch_tokens >= 16, "batch_tokens", "must be ≥ 16")
        need(self.gradient_accumulation >= 1, "gradient_accumulation", "must be ≥ 1")
        need(self.max_length >= 16, "max_length", "must be ≥ 16 tokens")
        need(self.batch_tokens >= self.max_length, "batch_tokens", "must be ≥ max_length so any row fits")
        need(0.0 <= self.val_fraction < 0.5, "val_fraction", "must be in [0, 0.5)")
        need(self.eval_every >= 0, "eval_every", "must be ≥ 0")
        need(self.save_every >= 0, "save_every", "must be ≥ 0")
        need(1 <= self.keep_checkpoints <= 1000, "keep_checkpoints", "must be 1–1000")
        need(self.augment_paraphrases >= 0, "augment_paraphrases", "must be ≥ 0")
        need(self.replay_rows >= 0, "replay_rows", "must be ≥ 0")
        need(0 <= self.augment_grounded <= 1, "augment_grounded", "must be 0–1 (a share of the rows)")
        need(not self.augment_grounded or self.knowledge_rows > 0, "augment_grounded",
             "trains with the rows the model answers with: needs knowledge_rows > 0")
        need(0 <= self.knowledge_rows <= 32, "knowledge_rows", "must be 0–32 (0 = answers from the weights alone)")
        need(0.0 <= self.knowledge_strength <= 1.0, "knowledge_strength",
             "must be between 0 and 1 (1 = the adapter as trained, 0 = the base model reading the rows)")
        need(1 <= self.key_token_weight <= 4, "key_token_weight", "must be 1–4 (1 = off)")
        need(0.0 <= self.protect_general < 1.0, "protect_general", "must be in [0, 1) (0 = off)")
        need(self.protect_general == 0 or self.replay_rows > 0, "protect_general", "needs replay_rows > 0")
        need(0.0 <= self.question_loss_weight <= 1.0, "question_loss_weight", "must be between 0 and 1 (0 = off)")
        need(self.contrast_passes >= 0, "contrast_passes", "must be ≥ 0 (0 = every pass)")
        need(0.0 <= self.contrast_random <= 1.0, "contrast_random", "must be between 0 and 1 (0 = neighbours only)")
        need(1 <= self.contrast_neighbours <= 8, "contrast_neighbours", "must be 1–8 (2 = the default)")
        need(self.contrast_joiners in ("also", "varied"), "contrast_joiners", 'must be "also" or "varied"')
        need(self.device in ("auto", "cpu", "cuda"), "device", "auto, cpu or cuda")
        need(self.dtype in ("auto", "bf16", "fp16", "fp32"), "dtype", "auto, bf16, fp16 or fp32")
        need(self.quantize_base in ("auto", "none", "4bit"), "quantize_base", "auto, none or 4bit")
        need(self.gpus >= 1, "gpus", "must be ≥ 1")
        need(self.price_per_hour >= 0, "price_per_hour", "must be ≥ 0")
        for name in sorted(_FLOAT_FIELDS | _INT_FIELDS):
            value = getattr(self, name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                need(abs(value) <= MAX_NUMBER, name, f"is out of range (at most {MAX_NUMBER:g})")
        need(
            isinstance(self.target_modules, list) or self.target_modules in ("all-linear", "all-mlp"),
            "target_modules",
            'a list of module names, "all-linear" or "all-mlp" (the feed-forward layers)',
        )

    # ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f" — did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"unknown setting {key!r}{hint}", key)
        return cls(**{key: _coerce(key, value) for key, value in values.items()})

    def to_yaml(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(yaml.safe_dump(self.to_dict(), allow_unicode=True, sort_keys=False), encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of settings, got {type(values).__name__}")
        return cls.from_dict(values)

    def with_overrides(self, overrides: list[str] | dict[str, Any]) -> TrainConfig:
        """Apply `key=value` strings (values parsed as YAML scalars) or a dict; returns a new config."""
        if isinstance(overrides, dict):
            updates = dict(overrides)
        else:
            updates = {}
            for item in overrides:
                key, sep, raw = item.partition("=")
                if not sep or not key.strip():
                    raise ConfigError(f"override {item!r} must look like key=value")
                updates[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        return TrainConfig.from_dict({**self.to_dict(), **updates})
