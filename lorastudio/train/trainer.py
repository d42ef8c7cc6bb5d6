"""The training loop: `train(cfg) -> TrainResult`.

    lorastudio train data.jsonl --base tiny-random --output runs/smoke --set max_steps=5   # seconds
    lorastudio train data.jsonl --base default --output runs/shop                          # CPU, minutes

Lifecycle: prepare (data, model) → tokenize (chat template, assistant-only labels, packing) → train
(AdamW, warmup + linear/cosine decay, grad clipping, bf16 autocast where native) with validation and
checkpoints per epoch → save (PEFT adapter, resolved config, model card). Every step is reported
as an event (lorastudio.train.events). SIGINT/SIGTERM save a checkpoint and stop; `resume=True`
continues from the latest checkpoint exactly (same data order, optimizer, scheduler and RNG state).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import random
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorastudio.train.config import ConfigError, TrainConfig
from lorastudio.train.events import EventCallback, EventLog
from lorastudio.train.tokenize import IGNORE_INDEX, Example, collate_packed, encode_dataset, pack

CHECKPOINTS = "checkpoints"
KEEP_CHECKPOINTS = 2  # newest step checkpoints kept (plus `best` under early stopping); older are pruned
STATE_FILE = "trainer_state.pt"
# Settings that change what a step computes; resuming with any of them changed would not "continue".
_RESUME_KEYS = ("data", "base", "validation_data", "task", "system_prompt", "lora_r", "lora_alpha",
                "lora_dropout", "target_modules", "learning_rate", "lr_scheduler", "warmup_ratio",
                "weight_decay", "num_epochs", "max_steps", "batch_tokens", "gradient_accumulation",
                "max_length", "seed", "val_fraction", "augment_paraphrases", "augment_same_fact", "augment_turns",
                "augment_per_epoch", "replay_rows", "replay_prompts", "quantize_base")


class TrainingInterrupted(Exception):
    """Stopped by SIGINT/SIGTERM (or a stop event) after saving ``checkpoint``; the CLI exits 130."""

    def __init__(self, step: int, checkpoint: str | None):
        super().__init__(f"training interrupted at step {step}; checkpoint saved to {checkpoint}")
        self.step = step
        self.checkpoint = checkpoint


class _StepAborted(Exception):
    """Raised inside a step (by a decoder-layer hook) when a stop was requested."""


class DataUnusable(ValueError):
    """The data cannot train anything (no usable rows, every row too long…); the CLI exits 2."""


@dataclass
class TrainResult:
    adapter_dir: str
    steps: int
    metrics: dict[str, Any] = field(default_factory=dict)
    early_stopped: bool = False


# ----------------------------------------------------------------------------------------------
# Device choices: the one place a backend (lorastudio/train/gpu.py) customises the loop.
# ----------------------------------------------------------------------------------------------
LossFn = Callable[[Any, dict[str, Any]], tuple[Any, int]]


@dataclass
class DeviceSetup:
    device: str
    dtype: Any                         # torch dtype the base weights are loaded in and autocast uses
    autocast: bool                     # run forward under torch.autocast(dtype)
    attn_implementation: str | None    # passed to from_pretrained; must honour packed position_ids
    gradient_checkpointing: bool
    loss_fn: LossFn                    # (peft_model, batch) -> (sum of token losses, number of target tokens)
    prepare_model: Callable[[Any], Any] | None = None  # e.g. kernel patches, applied before LoRA wrapping
    notes: list[str] = field(default_factory=list)
    world: int = 1                     # ranks training together (`--gpus N` under torchrun)
    strategy: str = "ddp"              # several ranks: "ddp" (each holds the base) or "fsdp" (base sharded)
    quantize_4bit: bool = False        # load the base in 4-bit NF4 (QLoRA, bitsandbytes)


def causal_lm_loss(model, batch: dict[str, Any]) -> tuple[Any, int]:
    """Summed next-token cross-entropy over target (assistant) tokens of one packed row.

    The LM head runs only on positions that have a target: with a 151k vocabulary the full logits
    tensor would be the largest thing in memory (4096 tokens × 151,936 × 4 bytes = 2.5 GB).
    """
    import torch.nn.functional as F

    fast = getattr(model, "_lorastudio_loss", None)  # a device fast path (lorastudio/train/cpu.py), same loss
    if fast is not None:
        return fast(model, batch)
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = causal_lm.get_decoder()(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                     use_cache=False).last_hidden_state[0]
    targets = batch["labels"][0, 1:]
    keep = targets != IGNORE_INDEX
    logits = causal_lm.get_output_embeddings()(hidden[:-1][keep]).float()
    return F.cross_entropy(logits, targets[keep], reduction="sum"), int(keep.sum())


def device_setup(cfg: TrainConfig) -> DeviceSetup:
    import torch

    from lorastudio.models import pick_device, pick_dtype
    from lorastudio.train import distributed

    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    checkpointing = cfg.gradient_checkpointing
    if checkpointing == "auto":
        # CPU: memory is rarely the limit at our batch sizes and recomputation costs ~30 % time.
        checkpointing = device == "cuda"
    setup = DeviceSetup(
        device=device,
        dtype=dtype,
        autocast=dtype != torch.float32,
        # sdpa honours packed position_ids (block-diagonal mask) and is the fastest built-in on CPU.
        attn_implementation="sdpa",
        gradient_checkpointing=bool(checkpointing),
        loss_fn=causal_lm_loss,
    )
    _rank, setup.world = distributed.rank_and_world()
    if setup.world > 1:
        setup.strategy = distributed.pick_strategy(cfg.base, device)
    if device == "cuda":
        try:
            gpu = importlib.import_module("lorastudio.train.gpu")
        except ImportError:
            gpu = None
        if gpu is not None and hasattr(gpu, "customize"):
            setup = gpu.customize(cfg, setup)  # may change attention, loss, kernels; returns a DeviceSetup
    elif device == "cpu":
        from lorastudio.train import cpu  # fused LoRA, no autocast copies, per-document attention

        setup = cpu.customize(cfg, setup)
    if cfg.quantize_base == "4bit":
        setup.quantize_4bit = True
    if setup.quantize_4bit:
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError("quantize_base=4bit needs bitsandbytes: `pip install bitsandbytes` (or 'lorastudio[gpu]'), "
                              "or set quantize_base=none")
        setup.notes.append("QLoRA: the base is loaded in 4-bit NF4 (bitsandbytes), LoRA trains in bf16/fp32")
        if setup.strategy == "fsdp":  # a 4-bit base fits one GPU: replicate it instead of sharding
            setup.strategy = "ddp"
    return setup


_MLP_BLOCKS = ("mlp", "feed_forward", "ffn", "block_sparse_moe")


def mlp_linears(model) -> list[str]:
    """Full names of the linear layers inside the feed-forward blocks (`….mlp.gate_proj`, `….mlp.c_fc`),
    the `target_modules="all-mlp"` choice; empty when the model has no block named like one."""
    import torch

    return [name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and any(part in _MLP_BLOCKS for part in name.split(".")[:-1])]


# ----------------------------------------------------------------------------------------------
# The schedule: which examples go in which micro-batch of which step, fixed by the seed up front,
# so the total step count is known for the progress bar and a resumed run replays the same order.
# ----------------------------------------------------------------------------------------------
@dataclass
class Step:
    micro_batches: list[list[int]]
    epoch: float          # epochs completed when this step ends (2.5 = half-way through the third)
    epoch_end: bool


def build_schedule(lengths: Sequence[int], cfg: TrainConfig,
                   rotation: Sequence[tuple[int, int] | None] | None = None) -> list[Step]:
    """`rotation[i]` = (k, n): example i is trained only in epochs e with e % n == k (None: every epoch)."""
    steps: list[Step] = []
    accumulation = cfg.gradient_accumulation
    epoch = 0
    while True:
        order = list(range(len(lengths)))
        random.Random(cfg.seed * 1_000_003 + epoch).shuffle(order)
        if rotation is not None:
            order = [i for i in order if rotation[i] is None or rotation[i][0] == epoch % rotation[i][1]]
        batches = pack(lengths, order, cfg.batch_tokens)
        if cfg.max_steps is None:
            remaining = cfg.num_epochs - epoch
            if remaining <= 0:
                break
            if remaining < 1:
                batches = batches[: max(1, math.ceil(len(batches) * remaining))]
        groups = [batches[i:i + accumulation] for i in range(0, len(batches), accumulation)]
        per_epoch = len(pack(lengths, order, cfg.batch_tokens))
        done = 0
        for index, group in enumerate(groups):
            done += len(group)
            steps.append(Step(group, epoch + done / per_epoch, index == len(groups) - 1))
            if cfg.max_steps is not None and len(steps) >= cfg.max_steps:
                steps[-1].epoch_end = True
                return steps
        epoch += 1
    return steps


def lr_lambda(cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    warmup = int(round(cfg.warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.lr_scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if cfg.lr_scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1.0 - progress)

    return factor


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------
def _validate_file(path: str, max_length: int, tokenizer) -> tuple[list[Any], dict[str, Any]]:
    from lorastudio.data import DataError, validate

    try:
        report = validate(path, max_length=max_length, tokenizer=tokenizer)
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


def _split(conversations: list[Any], cfg: TrainConfig) -> tuple[list[Any], list[Any]]:
    try:
        from lorastudio.data import split_train_val
    except ImportError:  # the data layer decides when data is big enough; this is only a fallback
        split_train_val = None
    if split_train_val is not None:
        train, val = split_train_val(conversations, val_fraction=cfg.val_fraction, seed=cfg.seed)
        return list(train), list(val)
    if cfg.val_fraction <= 0 or len(conversations) < 20:
        return conversations, []
    order = list(range(len(conversations)))
    random.Random(cfg.seed).shuffle(order)
    n_val = max(1, int(round(len(conversations) * cfg.val_fraction)))
    val_idx = set(order[:n_val])
    return ([c for i, c in enumerate(conversations) if i not in val_idx],
            [c for i, c in enumerate(conversations) if i in val_idx])


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------
def _atomic_dir(final: Path, write: Callable[[Path], None]) -> Path:
    """Write into a temporary sibling, then rename: a crash never leaves a half checkpoint."""
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    root = Path(output_dir) / CHECKPOINTS
    found = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file()) if root.is_dir() else []
    return found[-1] if found else None


def _rng_state() -> dict[str, Any]:
    import torch

    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------
# Signals
# ----------------------------------------------------------------------------------------------
class _StopFlag:
    """Set by SIGINT/SIGTERM or an external threading.Event; checked between optimizer steps."""

    def __init__(self, external: threading.Event | None):
        self.external = external
        self.signal: int | None = None
        self.peer = False  # several ranks: another rank was asked to stop (known at the step's all-reduce)

    @property
    def requested(self) -> bool:
        return self.signal is not None or self.peer or bool(self.external and self.external.is_set())

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set from the main thread; the stop event still works
            return

        def handler(signum, _frame):
            if self.signal is not None:  # a second Ctrl-C: the user means it, stop right now
                raise KeyboardInterrupt
            self.signal = signum

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


# ----------------------------------------------------------------------------------------------
# NEFTune: uniform noise on input embeddings while training (Jain et al. 2023), scaled per example.
# ----------------------------------------------------------------------------------------------
def _neftune_hook(alpha: float, lengths_ref: list[list[int]]):
    import torch

    def hook(module, _inputs, output):
        if not module.training:
            return output
        dims = output.shape[-1]
        scale = torch.empty(output.shape[:-1] + (1,), dtype=output.dtype, device=output.device)
        start = 0
        for length in lengths_ref[0] or [output.shape[-2]]:
            scale[..., start:start + length, :] = alpha / math.sqrt(length * dims)
            start += length
        return output + torch.empty_like(output).uniform_(-1, 1) * scale

    return hook


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, on_event: EventCallback | None = None, *, resume: bool = False,
          conversations: Sequence[Any] | None = None, val_conversations: Sequence[Any] | None = None,
          stop: threading.Event | None = None) -> TrainResult:
    """Fine-tune ``cfg.base`` with LoRA on ``cfg.data`` (or ``conversations``) and write ``cfg.output_dir``.

    Raises DataUnusable (nothing to train on), ConfigError (bad/incompatible settings), ModelError
    (model cannot be loaded), TrainingInterrupted (signal/stop event, after saving a checkpoint).
    """
    from lorastudio.train import distributed

    if cfg.device != "cpu":  # before CUDA starts (it may not be used: then this changes nothing)
        from lorastudio.train.gpu import configure_allocator

        configure_allocator()
    # Under torchrun (`lorastudio train --gpus N`): join the group; only rank 0 writes files and events.
    own_group = distributed.is_worker() and int(os.environ.get("WORLD_SIZE", 1)) > 1 and not _group_joined()
    if own_group:
        distributed.init()
    rank, _world = distributed.rank_and_world()
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = latest_checkpoint(output_dir) if resume else None
    if resume and checkpoint is None:
        raise ConfigError(f"--resume: no checkpoint in {output_dir / CHECKPOINTS}; start without --resume")
    if not resume and rank == 0:
        # A fresh run in a reused directory: old events and checkpoints belong to another run and would
        # confuse readers and a later --resume. (The old adapter files are overwritten at the end.)
        (output_dir / "events.jsonl").unlink(missing_ok=True)
        shutil.rmtree(output_dir / CHECKPOINTS, ignore_errors=True)
    log = EventLog(output_dir / "events.jsonl", on_event) if rank == 0 else EventLog(None)
    try:
        return _Run(cfg, log, checkpoint, conversations, val_conversations, stop).run()
    except TrainingInterrupted:
        raise
    except Exception as error:
        log.emit("error", message=f"{type(error).__name__}: {error}")
        raise
    finally:
        log.close()
        if own_group:
            distributed.cleanup()


def _group_joined() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return False
    return dist.is_available() and dist.is_initialized()


class _Run:
    def __init__(self, cfg: TrainConfig, log: EventLog, checkpoint: Path | None,
                 conversations: Sequence[Any] | None, val_conversations: Sequence[Any] | None,
                 stop: threading.Event | None):
        self.cfg = TrainConfig.from_dict(cfg.to_dict())  # our own copy: we record resolved values in it
        self.log = log
        self.checkpoint = checkpoint
        self.given_train = conversations
        self.given_val = val_conversations
        self.stop = _StopFlag(stop)
        self.output_dir = Path(cfg.output_dir)
        self.data_report: dict[str, Any] = {}
        from lorastudio.train.distributed import rank_and_world

        self.rank, self.world = rank_and_world()  # (0, 1) in one process
        self.fsdp = False  # several ranks with the base sharded (set in _prepare)

    # -- prepare -----------------------------------------------------------------------------
    def _prepare(self) -> None:
        import torch

        from lorastudio.models import load_model, load_tokenizer, resolve_model

        cfg = self.cfg
        self.setup = device_setup(cfg)
        self.fsdp = self.world > 1 and self.setup.strategy == "fsdp"
        for note in self.setup.notes:  # auto-fit plan, QLoRA, fast paths: what the device setup decided
            self.log.stage("prepare", note)
        if self.world > 1:
            self._fit_world()
        self.log.stage("prepare", f"reading {cfg.data or 'the given conversations'} and {cfg.base}")
        self.model_dir = resolve_model(cfg.base)
        # Data first (needs only the tokenizer): bad data fails in seconds, not after a model load.
        tokenizer = self.tokenizer = load_tokenizer(self.model_dir)
        if self.given_train is not None:
            train_convs = list(self.given_train)
            self.data_report = {"file": cfg.data or None, "rows_ok": len(train_convs), "source": "in-memory"}
        else:
            if not cfg.data:
                raise DataUnusable("no training data given (cfg.data is empty)")
            train_convs, self.data_report = _validate_file(cfg.data, cfg.max_length, tokenizer)
        if self.given_val is not None:
            val_convs = list(self.given_val)
        elif cfg.validation_data:
            val_convs, val_report = _validate_file(cfg.validation_data, cfg.max_length, tokenizer)
            self.data_report["validation"] = val_report
        else:
            train_convs, val_convs = _split(train_convs, cfg)
        self.log.stage("prepare", f"loading {cfg.base} on {self.setup.device} "
                                  f"({str(self.setup.dtype).split('.')[-1]})")
        quantization = None
        if self.setup.quantize_4bit:
            from lorastudio.train.gpu import qlora_quantization_config

            quantization = qlora_quantization_config()
        model, _ = load_model(self.model_dir, dtype=self.setup.dtype, device=self.setup.device,
                              attn_implementation=self.setup.attn_implementation,
                              quantization_config=quantization)
        train_convs = self._augment(train_convs, model, tokenizer)
        self.train_convs, self.val_convs = train_convs, val_convs

        if self.setup.prepare_model:
            model = self.setup.prepare_model(model) or model
        torch.manual_seed(cfg.seed)  # LoRA A's random init: the same seed gives the same run
        self.model = self._wrap_lora(model)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        for param in self.trainable:  # fp32 master copies of the LoRA weights; autocast computes in bf16
            param.data = param.data.float()
        if cfg.neftune_alpha:
            self._neftune_lengths: list[list[int]] = [[]]
            self.model.get_input_embeddings().register_forward_hook(
                _neftune_hook(cfg.neftune_alpha, self._neftune_lengths))
        if self.fsdp:
            from lorastudio.train.distributed import apply_fsdp

            apply_fsdp(self.model)
            self.trainable = [p for p in self.model.parameters() if p.requires_grad]  # now sharded

    def _fit_world(self) -> None:
        """Several ranks share each optimizer step's micro-batches (micro-batch j → rank j mod world);
        with fewer micro-batches per step than ranks, smaller packs and more accumulation keep the
        tokens per step and give every rank work."""
        cfg = self.cfg
        cfg.gpus = self.world
        note = f"{self.world} ranks ({self.setup.device}); rank 0 writes events, checkpoints and the adapter"
        if cfg.gradient_accumulation < self.world:
            factor = math.ceil(self.world / cfg.gradient_accumulation)
            cfg.batch_tokens = max(cfg.max_length, cfg.batch_tokens // factor)
            cfg.gradient_accumulation *= factor
            note += (f"; batch_tokens {cfg.batch_tokens} × gradient_accumulation {cfg.gradient_accumulation} "
                     "so that every rank has a micro-batch in each step")
        if self.fsdp:
            note += "; FSDP: the base is sharded over the ranks (fully_shard per decoder layer)"
        elif self.setup.device == "cuda":
            note += "; DDP: every GPU holds the whole base, the LoRA gradients are all-reduced"
        self.setup.notes.append(note)
        self.log.stage("prepare", note)

    def _augment(self, conversations: list[Any], model, tokenizer) -> list[Any]:
        """Paraphrases and self-replay rows (lorastudio/train/augment.py, replay.py), when asked for."""
        cfg = self.cfg
        # augment: base-model paraphrases, same-fact pairs and/or standalone turns of multi-turn rows
        augment = cfg.augment_paraphrases or int(bool(cfg.augment_same_fact or cfg.augment_turns))
        for count, module_name, func_name in ((augment, "augment", "augment_conversations"),
                                              (cfg.replay_rows, "replay", "replay_conversations")):
            if not count:
                continue
            try:
                func = getattr(importlib.import_module(f"lorastudio.train.{module_name}"), func_name)
            except (ImportError, AttributeError) as error:
                raise ConfigError(f"{'augment_paraphrases' if module_name == 'augment' else 'replay_rows'}="
                                  f"{count} needs lorastudio.train.{module_name}.{func_name}, which is not "
                                  "available in this installation; set it to 0") from error
            added = func(conversations, model=model, tokenizer=tokenizer, cfg=cfg,
                         on_event=lambda e: self.log.emit(**e) if "type" in e else None)
            self.log.stage("prepare", f"{module_name}: +{len(added) - len(conversations)} rows")
            conversations = list(added)
        return conversations

    def _wrap_lora(self, model):
        from peft import LoraConfig, get_peft_model

        cfg = self.cfg
        if self.setup.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        targets = cfg.target_modules
        if targets == "all-mlp":
            targets = mlp_linears(model)
            if not targets:
                targets = "all-linear"
                self.log.stage("prepare", f"target_modules=all-mlp: {cfg.base} has no recognisable feed-forward "
                                          "blocks, so LoRA goes on all linear layers")
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=targets, task_type="CAUSAL_LM", bias="none")
        try:
            peft_model = get_peft_model(model, lora)
        except ValueError as error:
            raise ConfigError(f"target_modules={cfg.target_modules!r} does not fit {cfg.base}: {error}") from error
        return peft_model

    # -- tokenize ------------------------------------------------------------------------------
    def _tokenize(self) -> None:
        cfg = self.cfg
        self.log.stage("tokenize", f"rendering {len(self.train_convs)} training and {len(self.val_convs)} "
                                   "validation conversations with the model's chat template")
        train = encode_dataset(self.train_convs, self.tokenizer, cfg.max_length, cfg.system_prompt)
        val = encode_dataset(self.val_convs, self.tokenizer, cfg.max_length, cfg.system_prompt)
        skipped = train.too_long + val.too_long
        if skipped:
            rows = ", ".join(str(s["row"]) for s in skipped[:10]) + (" …" if len(skipped) > 10 else "")
            self.log.stage("tokenize", f"skipped {len(skipped)} conversation(s) longer than max_length="
                                       f"{cfg.max_length} tokens (rows {rows}); raise max_length to keep them")
        if not train.examples:
            raise DataUnusable(f"no conversation fits max_length={cfg.max_length} tokens with an assistant "
                               "answer to learn; raise max_length or shorten the rows")
        self.train_examples: list[Example] = train.examples
        self.val_examples: list[Example] = val.examples
        lengths = [e.num_tokens for e in train.examples]
        self.data_report["tokens"] = {
            "train_conversations": len(train.examples), "validation_conversations": len(val.examples),
            "train_tokens": sum(lengths), "train_target_tokens": sum(e.num_target_tokens for e in train.examples),
            "max_tokens": max(lengths), "mean_tokens": round(sum(lengths) / len(lengths), 1),
            "skipped_too_long": skipped, "skipped_no_answer": train.no_targets + val.no_targets,
        }
        self.schedule = build_schedule(lengths, cfg, [e.rotation for e in train.examples])
        self.total_steps = len(self.schedule)
        variants = sum(1 for e in train.examples if e.rotation)
        self.log.stage("tokenize", f"{len(lengths)} examples, {sum(lengths):,} tokens"
                                   + (f" ({variants} of them variants trained in one epoch each)" if variants else "")
                                   + f", {self.total_steps} optimizer steps of ≤ {cfg.batch_tokens} tokens")

    # -- train ---------------------------------------------------------------------------------
    def _autocast(self):
        import torch

        if not self.setup.autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.setup.device, dtype=self.setup.dtype)

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: (v.to(self.setup.device) if hasattr(v, "to") else v) for k, v in batch.items()}

    def _forward_loss(self, indices: list[int], examples: list[Example]):
        batch = self._to_device(collate_packed([examples[i] for i in indices]))
        if self.cfg.neftune_alpha:
            self._neftune_lengths[0] = batch["lengths"]
        with self._autocast():
            return self.setup.loss_fn(self.model, batch)

    def evaluate(self) -> float | None:
        import torch

        if not self.val_examples:
            return None
        self.model.eval()
        total, count = 0.0, 0
        batches = pack([e.num_tokens for e in self.val_examples], range(len(self.val_examples)), self.cfg.batch_tokens)
        share = batches[self.rank::self.world]
        fillers = math.ceil(len(batches) / self.world) - len(share) if self.fsdp else 0
        with torch.no_grad():
            for indices in share:
                loss_sum, n = self._forward_loss(indices, self.val_examples)
                total += float(loss_sum)
                count += n
            for _ in range(fillers):  # FSDP: every rank takes part in every forward's all-gathers
                self._forward_loss(batches[0][:1], self.val_examples)
        if self.world > 1:
            from lorastudio.train.distributed import allreduce_step

            total, count = allreduce_step([], [total, count])
        self.model.train()
        return total / max(1, count)

    def _gathered_weights(self) -> dict[str, Any] | None:
        """FSDP: the full LoRA weights (every rank must call this); else None (the model holds them)."""
        if not self.fsdp:
            return None
        from lorastudio.train.distributed import full_state

        return full_state(self.model)

    def _write_adapter(self, path: Path, weights: dict[str, Any] | None) -> None:
        if weights is None:
            self.model.save_pretrained(path)
        else:
            self.model.save_pretrained(path, state_dict=weights)

    def _save_checkpoint(self, step: int, train_loss: float | None, valid_loss: float | None) -> Path:
        import torch

        weights = self._gathered_weights()
        optimizer = None
        if self.fsdp:
            from lorastudio.train.distributed import full_optimizer_state

            optimizer = full_optimizer_state(self.optimizer)
        if self.rank != 0:  # every rank holds the same state (or its shards); rank 0 writes it
            return self.output_dir / CHECKPOINTS / f"step-{step:08d}"

        def write(tmp: Path) -> None:
            self._write_adapter(tmp, weights)
            torch.save({
                "step": step,
                "optimizer": optimizer if optimizer is not None else self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "rng": _rng_state(),
                "config": self.cfg.to_dict(),
                "best_valid_loss": self.best_valid_loss,
                "bad_evals": self.bad_evals,
                "history": self.history,
                "elapsed_s": self.elapsed_before + (time.time() - self.session_start),
                "tokens_seen": self.tokens_before + self.session_tokens,
            }, tmp / STATE_FILE)

        path = _atomic_dir(self.output_dir / CHECKPOINTS / f"step-{step:08d}", write)
        self.log.emit("checkpoint", step=step, path=str(path), train_loss=train_loss, valid_loss=valid_loss)
        steps = sorted((self.output_dir / CHECKPOINTS).glob("step-*"))
        for old in steps[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
        return path

    def _restore(self, checkpoint: Path) -> int:
        import torch
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=False)
        # A checkpoint written before a setting existed trained with that setting's default.
        saved = {**TrainConfig().to_dict(), **state.get("config", {})}
        current = self.cfg.to_dict()
        changed = [k for k in _RESUME_KEYS if saved.get(k) != current.get(k)]
        if changed:
            details = ", ".join(f"{k}: {saved.get(k)!r} → {current.get(k)!r}" for k in changed)
            raise ConfigError(f"--resume: settings differ from the interrupted run ({details}); "
                              "resume with the same settings, or start a new output directory")
        # Several ranks: load on the CPU ("cuda" would mean GPU 0 for every rank), copied into place below.
        weights = load_file(str(checkpoint / "adapter_model.safetensors"),
                            device="cpu" if self.world > 1 else self.setup.device)
        if self.fsdp:
            from lorastudio.train.distributed import shard_adapter_weights

            weights = shard_adapter_weights(weights, self.trainable)
        result = set_peft_model_state_dict(self.model, weights)
        if getattr(result, "unexpected_keys", None):
            raise ConfigError(f"--resume: {checkpoint} does not match this model's LoRA layout")
        if self.fsdp:
            from lorastudio.train.distributed import load_full_optimizer_state

            load_full_optimizer_state(self.optimizer, state["optimizer"])
        else:
            for param in self.trainable:
                param.data = param.data.float()
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        self.best_valid_loss = state["best_valid_loss"]
        self.bad_evals = state["bad_evals"]
        self.history = state["history"]
        self.elapsed_before = state["elapsed_s"]
        self.tokens_before = state["tokens_seen"]
        self.log.emit("resumed", step=state["step"], path=str(checkpoint))
        return int(state["step"])

    def _train(self) -> tuple[int, bool]:
        import torch

        cfg = self.cfg
        decay = [p for p in self.trainable if p.ndim >= 2]
        no_decay = [p for p in self.trainable if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        if self.setup.device == "cuda":  # one fused kernel for all LoRA params instead of one per tensor
            from lorastudio.train.gpu import fused_adamw

            self.optimizer = fused_adamw(groups, lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8)
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg, self.total_steps))
        self.scaler = torch.amp.GradScaler("cuda") if self.setup.dtype == torch.float16 else None
        self.best_valid_loss: float | None = None
        self.bad_evals = 0
        self.history: list[dict[str, Any]] = []
        self.elapsed_before = 0.0
        self.tokens_before = 0
        self.session_tokens = 0
        self.session_start = time.time()
        start_step = self._restore(self.checkpoint) if self.checkpoint else 0
        self.session_start = time.time()
        session_tokens = 0
        self.log.stage("train", f"training {sum(p.numel() for p in self.trainable):,} LoRA parameters "
                                f"for {self.total_steps} steps" + (f" from step {start_step}" if start_step else ""))
        self._install_abort_hooks()
        self.model.train()
        early_stopped = False
        last_saved = start_step
        step = start_step
        for step in range(start_step + 1, self.total_steps + 1):
            plan = self.schedule[step - 1]
            group_targets = sum(self.train_examples[i].num_target_tokens for mb in plan.micro_batches for i in mb)
            loss_total = 0.0
            step_tokens = 0
            rng_at_start = _rng_state()
            try:
                for micro, indices, weight in self._my_micro_batches(plan):
                    if self.stop.requested and self.world == 1:
                        raise _StepAborted
                    # Dropout/NEFTune noise depend on (seed, step, micro-batch) only: the same on any
                    # number of ranks, and after --resume.
                    torch.manual_seed(cfg.seed * 1_000_003 + step * 1_009 + micro)
                    loss_sum, _n = self._forward_loss(indices, self.train_examples)
                    # Token-level mean over the whole accumulation group, so packing/accumulation never
                    # change what one target token weighs.
                    loss = loss_sum / group_targets
                    if weight != 1:
                        loss = loss * weight
                    (self.scaler.scale(loss) if self.scaler else loss).backward()
                    if weight:
                        loss_total += float(loss_sum.detach())
                        step_tokens += sum(self.train_examples[i].num_tokens for i in indices)
            except _StepAborted:
                # Stop asked mid-step: drop the half-computed gradients and checkpoint the last finished
                # step, with the RNG as it was when this step began, so --resume redoes it identically.
                self.optimizer.zero_grad(set_to_none=True)
                _set_rng_state(rng_at_start)
                self._interrupt(step - 1, last_saved)
            stop_now = self.stop.requested
            if self.world > 1:
                # Sum the LoRA gradients (each rank's share already divided by the step's global target
                # count: the sum is the single-process gradient; FSDP has reduced them in backward), the
                # loss, the tokens and the ranks' stop requests. Decide to stop only on the summed flag,
                # so every rank stops together.
                from lorastudio.train.distributed import allreduce_step

                loss_total, tokens, stops = allreduce_step([] if self.fsdp else self.trainable,
                                                           [loss_total, step_tokens, float(stop_now)])
                step_tokens, stop_now = int(tokens), stops > 0
                self.stop.peer = self.stop.peer or stop_now
            session_tokens += step_tokens
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
            lr = self.scheduler.get_last_lr()[0]
            if self.scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)

            train_loss = loss_total / group_targets
            session_s = time.time() - self.session_start
            elapsed = self.elapsed_before + session_s
            self.session_tokens = session_tokens
            per_step = session_s / (step - start_step)
            metrics = {
                "step": step, "total_steps": self.total_steps, "epoch": round(plan.epoch, 4),
                "percent": round(100.0 * step / self.total_steps, 2),
                "eta_s": round(per_step * (self.total_steps - step), 1),
                "tokens_per_s": round(session_tokens / max(session_s, 1e-9), 1),
                "loss": round(train_loss, 5), "lr": lr, "elapsed_s": round(elapsed, 2),
                "cost": round(elapsed / 3600.0 * cfg.price_per_hour, 4),
            }
            self.history.append({k: metrics[k] for k in ("step", "epoch", "loss", "lr")})
            self.log.emit("metrics", **metrics)

            last = step == self.total_steps
            at_eval = (step % cfg.eval_every == 0) if cfg.eval_every else plan.epoch_end
            valid_loss = None
            if (at_eval or last) and self.val_examples:
                self.log.stage("evaluate", f"validation loss at step {step}")
                try:
                    valid_loss = self.evaluate()
                except _StepAborted:  # stop asked during evaluation: the step itself is complete
                    self.model.train()
                    self._interrupt(step, last_saved, train_loss, None)
                self.history[-1]["valid_loss"] = valid_loss
                self.log.emit("eval", step=step, valid_loss=round(valid_loss, 5))
                early_stopped = self._early_stopping(step, valid_loss)
            at_save = (step % cfg.save_every == 0) if cfg.save_every else plan.epoch_end
            if at_save:
                self._save_checkpoint(step, train_loss, valid_loss)
                last_saved = step
            if stop_now or (self.world == 1 and self.stop.requested):
                self._interrupt(step, last_saved, train_loss, valid_loss)
            if early_stopped:
                break
        return step, early_stopped

    def _my_micro_batches(self, plan: Step) -> list[tuple[int, list[int], float]]:
        """(micro-batch number, example indices, loss weight) of the passes this rank runs in one step:
        micro-batch j goes to rank j mod world. Under FSDP, whose collectives need every rank in every
        pass, a rank short of micro-batches adds zero-weighted passes over one example, and the weight
        is the world size (FSDP averages the ranks' gradients; the step needs their sum)."""
        batches = plan.micro_batches
        weight = float(self.world) if self.fsdp else 1.0
        mine = [(m, batches[m], weight) for m in range(self.rank, len(batches), self.world)]
        if self.fsdp:
            short = math.ceil(len(batches) / self.world) - len(mine)
            mine += [(len(batches) + k, batches[0][:1], 0.0) for k in range(short)]
        return mine

    def _interrupt(self, step: int, last_saved: int, train_loss: float | None = None,
                   valid_loss: float | None = None) -> None:
        """Checkpoint ``step`` (unless just saved), report, and raise TrainingInterrupted."""
        path = self.output_dir / CHECKPOINTS / f"step-{step:08d}"
        # Several ranks decide alike without looking at rank 0's files (FSDP gathers on every rank).
        if last_saved != step or (self.world == 1 and not (path / STATE_FILE).is_file()):
            path = self._save_checkpoint(step, train_loss, valid_loss)
        if self.world > 1:  # no rank leaves (torchrun would stop the others) before rank 0 has saved
            from lorastudio.train.distributed import barrier

            barrier()
        reason = signal.Signals(self.stop.signal).name if self.stop.signal else "stop requested"
        self.log.stage("save", f"interrupted ({reason}) at step {step}; resume with --resume")
        raise TrainingInterrupted(step, str(path))

    def _install_abort_hooks(self) -> None:
        """On CPU a step can take minutes: let a stop request cut into it at the next decoder layer
        (forward or backward) instead of waiting for the step to finish. Not on CUDA, where steps are
        short and module backward hooks would get in the way of compiled/fused kernels."""
        if self.setup.device != "cpu" or self.world > 1:  # ranks stop together, at a step's all-reduce
            return
        causal_lm = self.model.get_base_model()
        layers = getattr(causal_lm.get_decoder(), "layers", None)
        if layers is None:
            return

        # The first layer's input needs no gradient, so torch notes that its hook sees outputs only:
        # exactly what we want here, and noise in a user's terminal.
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)

        def check(*_args) -> None:
            if self.stop.requested:
                raise _StepAborted

        for layer in layers:
            layer.register_forward_pre_hook(check)
            layer.register_full_backward_pre_hook(check)

    def _early_stopping(self, step: int, valid_loss: float) -> bool:
        if self.best_valid_loss is None or valid_loss < self.best_valid_loss - 1e-4:
            self.best_valid_loss = valid_loss
            self.bad_evals = 0
            if self.cfg.early_stopping_patience:
                weights = self._gathered_weights()
                if self.rank == 0:
                    _atomic_dir(self.output_dir / CHECKPOINTS / "best", lambda tmp: self._write_adapter(tmp, weights))
                    (self.output_dir / CHECKPOINTS / "best" / "step.txt").write_text(str(step))
            return False
        self.bad_evals += 1
        patience = self.cfg.early_stopping_patience
        if patience and self.bad_evals >= patience:
            self.log.stage("evaluate", f"early stopping at step {step}: validation loss has not improved for "
                                       f"{patience} evaluation(s); keeping the best adapter")
            return True
        return False

    # -- save ----------------------------------------------------------------------------------
    def _save(self, steps: int, early_stopped: bool) -> TrainResult:
        cfg = self.cfg
        weights = self._gathered_weights()
        if self.rank != 0:  # rank 0 writes the adapter, config, model card and the `done` event
            return TrainResult(adapter_dir=str(self.output_dir), steps=steps, early_stopped=early_stopped)
        self.log.stage("save", f"writing the adapter to {self.output_dir}")
        best = self.output_dir / CHECKPOINTS / "best"
        use_best = bool(cfg.early_stopping_patience and (best / "adapter_model.safetensors").is_file())
        for name in ("adapter_model.safetensors", "adapter_config.json"):
            (self.output_dir / name).unlink(missing_ok=True)
        if use_best:
            for name in ("adapter_model.safetensors", "adapter_config.json"):
                shutil.copy2(best / name, self.output_dir / name)
        else:
            self._write_adapter(self.output_dir, weights)
        # Plain PEFT must find the base: point at the resolved local directory, never a bare "default".
        config_path = self.output_dir / "adapter_config.json"
        adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
        adapter_config["base_model_name_or_path"] = str(Path(self.model_dir).resolve())
        config_path.write_text(json.dumps(adapter_config, indent=2, ensure_ascii=False), encoding="utf-8")

        losses = [h["loss"] for h in self.history]
        valid = [h["valid_loss"] for h in self.history if h.get("valid_loss") is not None]
        elapsed = self.elapsed_before + (time.time() - self.session_start)
        metrics = {
            "steps": steps, "total_steps": self.total_steps,
            "trained_tokens": self.tokens_before + self.session_tokens,  # all sessions (the job's trained_tokens)
            "epochs": self.history[-1]["epoch"] if self.history else 0.0,
            "train_loss": losses[-1] if losses else None,
            "first_train_loss": losses[0] if losses else None,
            "valid_loss": valid[-1] if valid else None,
            "best_valid_loss": self.best_valid_loss,
            "early_stopped": early_stopped, "used_best_checkpoint": use_best,
            "elapsed_s": round(elapsed, 1),
            "tokens_per_s": round(self.session_tokens / max(1e-9, time.time() - self.session_start), 1),
            "device": self.setup.device, "dtype": str(self.setup.dtype).split(".")[-1],
            "cost": round(elapsed / 3600.0 * cfg.price_per_hour, 4),
        }
        if self.setup.device == "cuda":  # this process's (rank 0's) GPU, model load included
            import torch

            metrics["gpu_peak_allocated_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
            metrics["gpu_peak_reserved_gb"] = round(torch.cuda.max_memory_reserved() / 1e9, 2)
        if self.world > 1:
            metrics["strategy"] = self.setup.strategy
        cfg.to_yaml(self.output_dir / "train_config.yaml")
        (self.output_dir / "data_report.json").write_text(
            json.dumps(self.data_report, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
        (self.output_dir / "README.md").write_text(_model_card(cfg, self.data_report, metrics), encoding="utf-8")
        self.log.stage("done", f"adapter saved to {self.output_dir}")
        self.log.emit("done", adapter_dir=str(self.output_dir), metrics=metrics)
        return TrainResult(adapter_dir=str(self.output_dir), steps=steps, metrics=metrics, early_stopped=early_stopped)

    def run(self) -> TrainResult:
        with self.stop.installed():
            self._prepare()
            # Written before training so an interrupted run can be resumed with its own settings.
            self.cfg.extra = {**self.cfg.extra, "resolved_base": str(Path(self.model_dir).resolve()),
                              "device": self.setup.device, "dtype": str(self.setup.dtype).split(".")[-1]}
            if self.rank == 0:
                self.cfg.to_yaml(self.output_dir / "train_config.yaml")
            self._tokenize()
            steps, early_stopped = self._train()
            return self._save(steps, early_stopped)


def _model_card(cfg: TrainConfig, data: dict[str, Any], metrics: dict[str, Any]) -> str:
    tokens = data.get("tokens", {})

    def fmt(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = [
        "# LoRA adapter (LoRA Studio)", "",
        f"Base model: `{cfg.base}` (`{cfg.extra.get('resolved_base', '')}`). Task: {cfg.task}.", "",
        "## Data", "",
        f"- file: `{cfg.data or data.get('file')}`",
        f"- rows usable / rejected: {data.get('rows_ok', '?')} / {data.get('rows_rejected', 0)}",
        f"- training / validation conversations: {tokens.get('train_conversations', '?')} / "
        f"{tokens.get('validation_conversations', 0)}",
        f"- training tokens: {tokens.get('train_tokens', '?')} ({tokens.get('train_target_tokens', '?')} "
        f"answer tokens learned), longest {tokens.get('max_tokens', '?')}",
        f"- skipped as longer than max_length={cfg.max_length}: {len(tokens.get('skipped_too_long', []))}", "",
        "## Settings", "",
        f"- LoRA r={cfg.lora_r}, alpha={cfg.lora_alpha}, dropout={cfg.lora_dropout}, targets={cfg.target_modules}",
        f"- learning rate {cfg.learning_rate} ({cfg.lr_scheduler}, warmup {cfg.warmup_ratio}), "
        f"epochs {cfg.num_epochs}, max_steps {cfg.max_steps}, batch_tokens {cfg.batch_tokens}, "
        f"accumulation {cfg.gradient_accumulation}, seed {cfg.seed}",
        f"- device {metrics['device']}, dtype {metrics['dtype']}", "",
        "## Metrics", "",
        *(f"- {key}: {fmt(metrics[key])}" for key in ("steps", "epochs", "first_train_loss", "train_loss",
                                                      "valid_loss", "best_valid_loss", "elapsed_s",
                                                      "tokens_per_s", "cost")),
        "",
        "## Use", "",
        "```bash",
        f"lorastudio compare --base {cfg.base} --adapter {cfg.output_dir}",
        "```", "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM",
        f"base = AutoModelForCausalLM.from_pretrained({cfg.extra.get('resolved_base', cfg.base)!r})",
        f"model = PeftModel.from_pretrained(base, {str(cfg.output_dir)!r})",
        "```", "",
        "The full settings are in `train_config.yaml`; every step's loss is in `events.jsonl`.", "",
    ]
    return "\n".join(lines)
