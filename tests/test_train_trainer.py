"""The trainer end to end on tiny models: outputs, plain-PEFT loading, events, resume, learning."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import pytest
import torch
from train_fixtures import ROWS, fake_step_clock, write_rows

from lorastudio.train import (
    ConfigError,
    DataUnusable,
    TrainConfig,
    TrainingInterrupted,
    latest_checkpoint,
    read_events,
    train,
)
from lorastudio.train.config import MAX_EPOCHS, MAX_STEPS
from lorastudio.train.schedule import Schedule, build_schedule

METRIC_KEYS = {"time", "type", "step", "total_steps", "epoch", "percent", "eta_s", "tokens_per_s", "loss",
               "lr", "elapsed_s", "cost"}


def lora_weights(adapter_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(adapter_dir / "adapter_model.safetensors"))


def test_end_to_end_on_tiny_random_loads_in_plain_peft(tmp_path, tiny_random_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    data = write_rows(tmp_path / "faq.jsonl")
    events = []
    cfg = TrainConfig(data=str(data), base="tiny-random", output_dir=str(tmp_path / "run"), max_steps=3,
                      batch_tokens=256, max_length=128, learning_rate=1e-2, dtype="fp32")
    result = train(cfg, on_event=events.append)
    out = Path(result.adapter_dir)
    for name in ("adapter_config.json", "adapter_model.safetensors", "train_config.yaml", "events.jsonl",
                 "README.md", "data_report.json", "knowledge.jsonl"):
        assert (out / name).is_file(), name
    # every row of the file, as written (validation rows too): what the engine reads beside each question
    knowledge = [json.loads(line) for line in (out / "knowledge.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted((k["question"], k["answer"]) for k in knowledge) == sorted(ROWS)
    assert result.steps == 3 and result.metrics["train_loss"] is not None

    # Plain PEFT + transformers, no lorastudio: base_model_name_or_path is a loadable directory.
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert Path(adapter_config["base_model_name_or_path"]) == Path(tiny_random_dir).resolve()
    base = AutoModelForCausalLM.from_pretrained(adapter_config["base_model_name_or_path"])
    tuned = PeftModel.from_pretrained(base, str(out))
    assert any("lora_B" in name and p.abs().sum() > 0 for name, p in tuned.named_parameters())
    with torch.no_grad():
        tuned(input_ids=torch.tensor([[1, 2, 3]]))

    # The resolved config round-trips and reproduces the run's settings.
    again = TrainConfig.from_yaml(out / "train_config.yaml")
    assert again.max_steps == 3 and again.learning_rate == 1e-2 and again.extra["resolved_base"]
    report = json.loads((out / "data_report.json").read_text())
    assert report["rows_ok"] == len(ROWS) and report["tokens"]["train_conversations"] == len(ROWS)
    assert "## Metrics" in (out / "README.md").read_text()

    # Events: the same objects went to the callback and to events.jsonl, in the documented schema.
    logged = read_events(out / "events.jsonl")
    assert logged == events
    stages = [e["stage"] for e in logged if e["type"] == "stage"]
    order = ["prepare", "tokenize", "train", "save", "done"]
    assert [s for s in dict.fromkeys(stages) if s in order] == order
    metrics = [e for e in logged if e["type"] == "metrics"]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        assert set(m) == METRIC_KEYS and m["total_steps"] == 3 and m["cost"] == 0.0
    assert metrics[-1]["percent"] == 100.0 and metrics[-1]["eta_s"] == 0.0
    assert logged[-1]["type"] == "done" and logged[-1]["adapter_dir"] == str(out)
    assert all(isinstance(e["time"], float) for e in logged)


def test_training_actually_learns(tmp_path, small_model_dir):
    data = write_rows(tmp_path / "faq.jsonl")
    cfg = TrainConfig(data=str(data), base=small_model_dir, output_dir=str(tmp_path / "run"), num_epochs=30,
                      batch_tokens=1024, max_length=256, learning_rate=1e-2, lora_r=8, lora_alpha=16,
                      warmup_ratio=0.0, dtype="fp32")
    result = train(cfg)
    assert result.metrics["train_loss"] < 0.5 * result.metrics["first_train_loss"]


def _config(tmp_path: Path, model_dir: str, name: str, **overrides) -> TrainConfig:
    data = write_rows(tmp_path / "faq.jsonl")
    values = dict(data=str(data), base=model_dir, output_dir=str(tmp_path / name), max_steps=6,
                  batch_tokens=128, max_length=128, learning_rate=5e-3, lora_r=4, lora_alpha=8,
                  lora_dropout=0.1, save_every=2, dtype="fp32", seed=3)
    values.update(overrides)
    return TrainConfig(**values)


def test_resume_after_interruption_equals_uninterrupted(tmp_path, small_model_dir):
    full = train(_config(tmp_path, small_model_dir, "full"))

    cfg = _config(tmp_path, small_model_dir, "broken")
    stop = threading.Event()

    def stop_after_three(event):
        if event["type"] == "metrics" and event["step"] == 3:
            stop.set()

    with pytest.raises(TrainingInterrupted) as info:
        train(cfg, on_event=stop_after_three, stop=stop)
    assert info.value.step == 3
    assert latest_checkpoint(cfg.output_dir).path.name == "step-00000003"
    assert not (Path(cfg.output_dir) / "adapter_model.safetensors").exists()

    resumed = train(cfg, resume=True)
    assert resumed.steps == full.steps == 6
    events = read_events(Path(cfg.output_dir) / "events.jsonl")
    assert any(e["type"] == "resumed" and e["step"] == 3 for e in events)
    assert [e["step"] for e in events if e["type"] == "metrics"] == [1, 2, 3, 4, 5, 6]
    a, b = lora_weights(Path(full.adapter_dir)), lora_weights(Path(resumed.adapter_dir))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-7, msg=name)


def test_resume_refuses_changed_settings_and_missing_checkpoint(tmp_path, small_model_dir):
    cfg = _config(tmp_path, small_model_dir, "run", max_steps=2)
    with pytest.raises(ConfigError, match="no checkpoint"):
        train(cfg, resume=True)
    train(cfg)
    with pytest.raises(ConfigError, match="learning_rate"):
        train(cfg.with_overrides({"learning_rate": 1e-4}), resume=True)


def test_unusable_data_is_a_clear_error(tmp_path, small_model_dir):
    bad = tmp_path / "empty.jsonl"
    bad.write_text('{"instruction": "", "response": ""}\n', encoding="utf-8")
    with pytest.raises(DataUnusable):
        train(TrainConfig(data=str(bad), base=small_model_dir, output_dir=str(tmp_path / "r")))
    long_rows = write_rows(tmp_path / "long.jsonl", [("长" * 300, "好")])
    with pytest.raises(DataUnusable, match="too_long"):
        train(TrainConfig(data=str(long_rows), base=small_model_dir, output_dir=str(tmp_path / "r2"),
                          max_length=32, batch_tokens=32))


def test_validation_split_and_early_stopping_keep_the_best_adapter(tmp_path, small_model_dir):
    val = write_rows(tmp_path / "val.jsonl", [("完全不同的问题？", "完全不同的回答，与训练数据无关。")])
    cfg = _config(tmp_path, small_model_dir, "es", validation_data=str(val), max_steps=12, eval_every=1,
                  early_stopping_patience=2, learning_rate=5e-2, lora_dropout=0.0, save_every=0)
    result = train(cfg)
    events = read_events(Path(cfg.output_dir) / "events.jsonl")
    evals = [e["valid_loss"] for e in events if e["type"] == "eval"]
    assert evals, "a validation file must produce eval events"
    # lr 5e-2 on unrelated validation data overfits within a few steps (seeded, so deterministic).
    assert result.early_stopped, evals
    assert len(evals) < 12
    best = Path(cfg.output_dir) / "checkpoints" / "best"
    final = lora_weights(Path(cfg.output_dir))
    assert lora_weights(best).keys() == final.keys()
    for name, tensor in lora_weights(best).items():
        assert torch.equal(tensor, final[name])
    assert result.metrics["best_valid_loss"] == pytest.approx(min(evals), abs=1e-4)
    assert min(evals) < evals[-1]  # the kept adapter is better than the last one trained


def test_schedule_epochs_accumulation_and_max_steps():
    cfg = TrainConfig(num_epochs=2.5, batch_tokens=100, max_length=100, gradient_accumulation=2)
    lengths = [40] * 10  # 2 examples per micro-batch → 5 micro-batches per epoch → 3 steps per epoch
    steps = build_schedule(lengths, cfg)
    assert len(steps) == 3 + 3 + 2  # the half epoch: ceil(2.5) micro-batches → 2 steps
    assert [s.epoch_end for s in steps].count(True) == 3
    assert steps[2].epoch == pytest.approx(1.0) and steps[-1].epoch == pytest.approx(2.6)
    seen = [i for s in steps[:3] for mb in s.micro_batches for i in mb]
    assert sorted(seen) == list(range(10))  # one epoch = every example exactly once
    assert build_schedule(lengths, cfg) == steps  # deterministic: resume replays the same order
    capped = build_schedule(lengths, cfg.with_overrides({"max_steps": 7}))
    assert len(capped) == 7 and capped[-1].epoch_end


def test_schedule_rotation_trains_each_variant_in_its_epochs_only():
    cfg = TrainConfig(num_epochs=3, batch_tokens=100, max_length=100)
    lengths = [30] * 7
    rotation = [None, None, None, (0, 2), (1, 2), (0, 3), (2, 3)]
    steps = build_schedule(lengths, cfg, rotation)
    epochs: list[set[int]] = [set(), set(), set()]
    for step in steps:
        for mb in step.micro_batches:
            epochs[math.ceil(step.epoch) - 1].update(mb)  # step.epoch: epochs done when it ends
    assert epochs == [{0, 1, 2, 3, 5}, {0, 1, 2, 4}, {0, 1, 2, 3, 6}]
    assert build_schedule(lengths, cfg, [None] * 7) == build_schedule(lengths, cfg)


def test_all_mlp_targets_the_feed_forward_linears_only(tiny_random_dir):
    from transformers import AutoModelForCausalLM

    from lorastudio.train.adapters import mlp_linears

    names = mlp_linears(AutoModelForCausalLM.from_pretrained(tiny_random_dir))
    assert names and all(".mlp." in n for n in names)
    assert {n.rsplit(".", 1)[1] for n in names} == {"gate_proj", "up_proj", "down_proj"}
    assert TrainConfig(target_modules="all-mlp").target_modules == "all-mlp"
    with pytest.raises(ConfigError, match="all-mlp"):
        TrainConfig(target_modules="all-attention")


def test_neftune_noise_only_while_training():
    import torch.nn as nn

    from lorastudio.train.adapters import neftune_hook

    embed = nn.Embedding(10, 8)
    lengths = [[2, 3]]
    embed.register_forward_hook(neftune_hook(5.0, lengths))
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    clean = embed.weight[ids].detach()
    embed.train()
    noisy = embed(ids).detach()
    # Per-example scale alpha / sqrt(L·d): the 2-token example gets larger noise bounds than the 3-token one.
    bound_a, bound_b = 5.0 / (2 * 8) ** 0.5, 5.0 / (3 * 8) ** 0.5
    assert (noisy - clean)[0, :2].abs().max() <= bound_a + 1e-6
    assert (noisy - clean)[0, 2:].abs().max() <= bound_b + 1e-6
    assert (noisy - clean).abs().max() > 0
    embed.eval()
    assert torch.equal(embed(ids).detach(), clean)


def test_stop_in_the_middle_of_a_step_checkpoints_the_last_finished_step(tmp_path, small_model_dir, monkeypatch):
    """A stop request cuts into a running step (CPU steps can take minutes); the half step is dropped and
    resuming redoes it, reproducing the uninterrupted run."""
    from lorastudio.train import device

    full = train(_config(tmp_path, small_model_dir, "full", gradient_accumulation=2))

    stop = threading.Event()
    calls = {"n": 0}
    real_loss = device.causal_lm_loss

    def loss_that_stops_during_step_3(model, batch):
        calls["n"] += 1
        if calls["n"] == 6:  # step 3's second micro-batch (2 per step): its forward is cut off
            stop.set()
        return real_loss(model, batch)

    monkeypatch.setattr(device, "causal_lm_loss", loss_that_stops_during_step_3)
    cfg = _config(tmp_path, small_model_dir, "cut", gradient_accumulation=2)
    with pytest.raises(TrainingInterrupted) as info:
        train(cfg, stop=stop)
    assert info.value.step == 2 and latest_checkpoint(cfg.output_dir).path.name == "step-00000002"
    events = read_events(Path(cfg.output_dir) / "events.jsonl")
    assert max(e["step"] for e in events if e["type"] == "metrics") == 2

    monkeypatch.setattr(device, "causal_lm_loss", real_loss)
    resumed = train(cfg, resume=True)
    a, b = lora_weights(Path(full.adapter_dir)), lora_weights(Path(resumed.adapter_dir))
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-7, msg=name)


def test_qlora_trains_on_a_4bit_base_and_the_adapter_applies_to_the_full_base(tmp_path, small_model_dir):
    pytest.importorskip("bitsandbytes")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    data = write_rows(tmp_path / "faq.jsonl")
    events = []
    cfg = TrainConfig(data=str(data), base=small_model_dir, output_dir=str(tmp_path / "q"), num_epochs=20,
                      batch_tokens=1024, max_length=256, learning_rate=1e-2, lora_r=8, lora_alpha=16,
                      warmup_ratio=0.0, dtype="bf16", quantize_base="4bit")
    result = train(cfg, on_event=events.append)
    assert any("QLoRA" in e.get("message", "") for e in events if e["type"] == "stage")
    assert result.metrics["train_loss"] < 0.6 * result.metrics["first_train_loss"]  # it learns
    # The adapter is an ordinary one: it loads onto the bf16 base with plain PEFT.
    base = AutoModelForCausalLM.from_pretrained(small_model_dir, dtype=torch.bfloat16)
    tuned = PeftModel.from_pretrained(base, result.adapter_dir)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        tuned_logits = tuned(input_ids=ids).logits
        with tuned.disable_adapter():
            base_logits = tuned(input_ids=ids).logits
    assert not torch.equal(tuned_logits, base_logits)
    assert TrainConfig.from_yaml(Path(result.adapter_dir) / "train_config.yaml").quantize_base == "4bit"


def test_qlora_without_bitsandbytes_is_a_clear_error(tmp_path, small_model_dir, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    cfg = TrainConfig(data=str(write_rows(tmp_path / "faq.jsonl")), base=small_model_dir,
                      output_dir=str(tmp_path / "q"), max_steps=1, quantize_base="4bit")
    with pytest.raises(ConfigError, match="bitsandbytes"):
        train(cfg)


def _schedule_peak(lengths: list[int], cfg: TrainConfig) -> tuple[int, int]:
    """(steps, peak bytes allocated while the schedule is made and its first steps taken)."""
    import tracemalloc

    tracemalloc.start()
    try:
        schedule = Schedule(lengths, cfg)
        steps = schedule.iterate()
        assert [next(steps)[0] for _ in range(3)] == [1, 2, 3]
        return len(schedule), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("field, short, long, rows", [("num_epochs", 1, MAX_EPOCHS, 800),
                                                      ("max_steps", 1000, MAX_STEPS // 5, 20)])
def test_the_schedule_is_lazy_its_memory_does_not_grow_with_its_length(field, short, long, rows):
    """Issue 16: a list of every step grew ~10 MB/s for n_epochs=1e9. The schedule keeps one epoch at a
    time, so the longest schedule a config allows needs no more memory than a short one."""
    lengths = [17 + (i * 7919) % 40 for i in range(rows)]
    cfg = TrainConfig(batch_tokens=64, max_length=64)
    short_steps, short_peak = _schedule_peak(lengths, cfg.with_overrides({field: short}))
    long_steps, long_peak = _schedule_peak(lengths, cfg.with_overrides({field: long}))
    assert long_steps >= 99 * short_steps and long_steps >= 50_000
    # A list of every step (the old schedule) needs ~100x more for the long one.
    assert long_peak < 1.5 * short_peak + 65_536, (short_peak, long_peak, long_steps)


def test_the_run_re_estimates_its_time_without_the_first_steps_one_off_costs(tmp_path, small_model_dir, monkeypatch):
    """The first step pays one-off costs (the CPU path's int8 weight packs, lazy kernel set-up): the
    re-estimate and the ETA measure from the end of the first step. A fake clock: the first step takes
    100 s, every later one 1 s; with the first step counted the ETA would be ~13× too long."""
    from lorastudio.train import trainer

    clock = fake_step_clock(monkeypatch, 100.0, 1.0)
    cfg = _config(tmp_path, small_model_dir, "eta", max_steps=20, save_every=0, lora_dropout=0.0)
    train(cfg)
    events = read_events(Path(cfg.output_dir) / "events.jsonl")
    estimate = next(e for e in events if e["type"] == "estimate")
    assert estimate["steps_measured"] >= trainer.CALIBRATION_STEPS
    step = 1 + estimate["steps_measured"]
    remaining_steps = 20 - step
    # one fake second a step from here on: the ETA says about that (steps differ in tokens a little)
    assert 0.3 * remaining_steps <= estimate["remaining_s"] <= 3 * remaining_steps
    metrics = {e["step"]: e for e in events if e["type"] == "metrics"}
    assert metrics[step]["eta_s"] == estimate["remaining_s"]
    assert metrics[1]["eta_s"] > 10 * (20 - 1)  # no estimate given: after step 1 only the slow step is known

    # with the recommender's estimate (as `lorastudio train` and the studio pass it), step 1's ETA is the estimate's
    # rate over what remains (its one-off costs say nothing of the steps after), and the measurement takes over from
    # step 2 on
    clock.update(now=1_000.0, calls=0)
    cfg = _config(tmp_path, small_model_dir, "eta_planned", max_steps=20, save_every=0, lora_dropout=0.0,
                  extra={"estimate": {"seconds": 60, "tokens": 5000, "stages": {"train": 50}}})
    train(cfg)
    planned = [e for e in read_events(Path(cfg.output_dir) / "events.jsonl") if e["type"] == "metrics"]
    assert planned[0]["step"] == 1 and planned[0]["tokens_per_s"] == metrics[1]["tokens_per_s"]  # the same slow step
    # the same remaining tokens at the estimate's 5000 / 50 = 100 tok/s instead of the slow step's rate (≈ 1 tok/s,
    # reported to 0.1: hence the tolerance)
    assert planned[0]["eta_s"] == pytest.approx(metrics[1]["eta_s"] * metrics[1]["tokens_per_s"] / 100, rel=0.08)
    assert planned[0]["eta_s"] < 10 * (20 - 1)
    assert planned[1]["eta_s"] == metrics[2]["eta_s"]  # step 2 on: measured without the first step, as before


def test_lora_plus_moves_the_b_matrices_at_ratio_times_the_rate(tmp_path, small_model_dir):
    """One AdamW step from B = 0: every B entry moves by about the learning rate (Adam's first step is
    sign-like), so LoRA+ at ratio 8 moves B 8× as far; A's gradient is zero while B is, so A stays put."""
    weights = {}
    for ratio in (1.0, 8.0):
        cfg = _config(tmp_path, small_model_dir, f"plus{ratio:g}", max_steps=1, save_every=0, lora_dropout=0.0,
                      warmup_ratio=0.0, lr_scheduler="constant", learning_rate=1e-3, lora_plus_ratio=ratio)
        weights[ratio] = lora_weights(Path(train(cfg).adapter_dir))
    b_keys = [k for k in weights[1.0] if "lora_B" in k]
    a_keys = [k for k in weights[1.0] if "lora_A" in k]
    assert b_keys and a_keys
    plain = torch.cat([weights[1.0][k].flatten().abs() for k in b_keys]).mean().item()
    plus = torch.cat([weights[8.0][k].flatten().abs() for k in b_keys]).mean().item()
    assert plain > 0 and plus / plain == pytest.approx(8.0, rel=0.05)
    assert all(torch.equal(weights[1.0][k], weights[8.0][k]) for k in a_keys)


def test_lora_plus_groups_and_its_bounds():
    from lorastudio.train.trainer import optimizer_groups

    a, b, bias = torch.zeros(4, 2), torch.zeros(2, 4), torch.zeros(4)
    plain = optimizer_groups([a, b, bias], TrainConfig(learning_rate=1e-3), {id(b)})
    assert [len(g["params"]) for g in plain] == [2, 1] and all("lr" not in g for g in plain)
    plus = optimizer_groups([a, b, bias], TrainConfig(learning_rate=1e-3, lora_plus_ratio=4), {id(b)})
    assert [g["params"] for g in plus][1] == [b] and plus[1]["lr"] == pytest.approx(4e-3)
    assert "lora_plus_ratio" in TrainConfig().__dataclass_fields__
    for bad in (0.5, 100):
        with pytest.raises(ConfigError, match="lora_plus_ratio"):
            TrainConfig(lora_plus_ratio=bad).validate()
