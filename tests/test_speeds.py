"""Training speeds remembered per machine (`lorastudio.train.speeds`): what a run records, what the next estimate
uses, and what it ignores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from train_fixtures import fake_step_clock, write_rows

from lorastudio.train import TrainConfig, read_events, recommend, speeds, train
from lorastudio.train.recommend import Hardware, int8_switched_off

KIND = dict(machine="avx2-fp32|2|Test CPU", base="default", dtype="fp32", int8=True, question_loss=True)


@pytest.fixture
def speed_file(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "speeds.json"
    monkeypatch.setenv(speeds.ENV, str(path))
    return path


def _record(rate: float, batch_tokens: int = 704, **kind) -> bool:
    return speeds.record(**{**KIND, **kind}, batch_tokens=batch_tokens, tokens=int(rate * 100), seconds=100.0,
                         steps=20)


def test_the_median_of_the_last_runs_of_the_same_kind(speed_file):
    assert speeds.recall(**KIND, batch_tokens=704) is None  # nothing yet
    for rate in (80, 95, 200, 90, 97, 99):  # six runs: the first falls out (KEEP = 5)
        assert _record(rate)
    remembered = speeds.recall(**KIND, batch_tokens=704)
    assert remembered == speeds.Remembered(tokens_per_s=97.0, runs=5, same_packs=True)
    stored = json.loads(speed_file.read_text(encoding="utf-8"))["runs"]
    assert [r["tokens_per_s"] for r in stored] == [95, 200, 90, 97, 99]
    # another machine, model, dtype, int8 or question loss is another kind
    for other in ({"machine": "avx2-fp32|4|Test CPU"}, {"base": "qwen"}, {"dtype": "bf16"}, {"int8": False},
                  {"question_loss": False}):
        assert speeds.recall(**{**KIND, **other}, batch_tokens=704) is None, other


def test_another_pack_size_is_carried_over_and_said(speed_file):
    _record(100.0, batch_tokens=704)
    _record(60.0, batch_tokens=4096)
    same = speeds.recall(**KIND, batch_tokens=704)
    assert same.same_packs and same.tokens_per_s == 100.0
    # 1280-token packs: from the closest size remembered (704), slower per token by the pack exponent
    longer = speeds.recall(**KIND, batch_tokens=1280)
    assert not longer.same_packs
    assert longer.tokens_per_s == pytest.approx(100.0 * (704 / 1280) ** speeds.PACK_EXPONENT, abs=0.05)
    assert longer.tokens_per_s < 100.0


def test_short_runs_a_broken_file_and_the_switch(speed_file, monkeypatch):
    assert not speeds.record(**KIND, batch_tokens=704, tokens=10_000, seconds=30.0, steps=50)  # too short a time
    assert not speeds.record(**KIND, batch_tokens=704, tokens=10_000, seconds=300.0, steps=3)  # too few steps
    assert not speed_file.exists()
    speed_file.write_text("{not json", encoding="utf-8")
    assert speeds.recall(**KIND, batch_tokens=704) is None  # unreadable: nothing remembered, no error
    assert _record(90.0)  # and the next run writes a good file
    assert speeds.recall(**KIND, batch_tokens=704).tokens_per_s == 90.0
    monkeypatch.setenv(speeds.ENV, "off")
    assert speeds.recall(**KIND, batch_tokens=704) is None and not _record(50.0)


def test_the_estimate_uses_this_machines_remembered_speed_and_says_so(speed_file):
    from lorastudio.data import validate

    rows = list(validate(str(Path(__file__).parent.parent / "lorastudio/assets/demo/yunzhan_train.jsonl")).conversations)
    here = Hardware(device="cpu", cpu_cores=2, cpu_class="avx2-fp32", this_machine=True)
    before = recommend(rows, "default", hardware=here, tokenizer=None)
    assert before.reason_codes["device"]["code"] == "rec.device.cpu"
    s = before.settings
    kind = dict(machine=speeds.machine_id("avx2-fp32", 2), base="default", dtype="fp32",
                int8=not int8_switched_off(), question_loss=True)
    speeds.record(**kind, batch_tokens=s["batch_tokens"], tokens=30_000, seconds=200.0, steps=40)  # 150 tok/s
    after = recommend(rows, "default", hardware=here, tokenizer=None)
    assert after.settings == before.settings
    assert after.estimate["tokens_per_s"] == 150.0
    assert after.estimate["stages"]["train"] == pytest.approx(after.estimate["tokens"] / 150.0, abs=1)
    assert after.estimate["seconds"] < before.estimate["seconds"]
    assert after.reason_codes["device"] == {"code": "rec.device.cpu_remembered",
                                            "params": {"cores": 2, "cpu_class": "avx2-fp32", "tokens_per_s": 150,
                                                       "runs": 1}}
    assert "last 1 run(s) here" in after.reasons["device"]
    # hardware described, not detected (another machine, the API's what-if): the class figure, as before
    described = recommend(rows, "default", hardware={"device": "cpu", "cpu_cores": 2, "cpu_class": "avx2-fp32"},
                          tokenizer=None)
    assert described.estimate == before.estimate
    # another pack size: carried over, and the reason says so
    speed_file.write_text(speed_file.read_text(encoding="utf-8").replace(f'"batch_tokens": {s["batch_tokens"]}',
                                                                         '"batch_tokens": 4096'), encoding="utf-8")
    carried = recommend(rows, "default", hardware=here, tokenizer=None)
    assert carried.reason_codes["device"]["code"] == "rec.device.cpu_remembered_other_packs"
    assert carried.estimate["tokens_per_s"] > 150.0  # shorter packs than the remembered run's: faster per token


def test_a_cpu_run_remembers_its_speed_without_its_first_step(tmp_path, small_model_dir, monkeypatch):
    """A fake clock: the first step takes 100 s, every later one 10 s. The remembered speed is the later steps'
    tokens over their seconds; a short run (fewer steps than `MIN_STEPS`) is not remembered."""
    path = tmp_path / "speeds.json"
    monkeypatch.setenv(speeds.ENV, str(path))
    clock = fake_step_clock(monkeypatch, 100.0, 10.0)
    data = write_rows(tmp_path / "faq.jsonl")
    cfg = TrainConfig(data=str(data), base=small_model_dir, output_dir=str(tmp_path / "run"), max_steps=20,
                      batch_tokens=128, max_length=128, learning_rate=5e-3, lora_r=4, lora_alpha=8, save_every=0,
                      dtype="fp32", seed=3, question_loss_weight=0.3)
    result = train(cfg)
    assert clock["calls"] == 20  # one micro-batch a step: 100 s, then 19 × 10 s
    runs = json.loads(path.read_text(encoding="utf-8"))["runs"]
    assert len(runs) == 1
    run = runs[0]
    assert run["base"] == small_model_dir and run["batch_tokens"] == 128 and run["dtype"] == "fp32"
    assert run["question_loss"] is True and run["seconds"] == 190.0
    assert run["tokens"] < result.metrics["trained_tokens"]  # the first step's tokens are not in it
    assert run["tokens_per_s"] == pytest.approx(run["tokens"] / 190.0, abs=0.01)
    metrics = [e for e in read_events(Path(cfg.output_dir) / "events.jsonl") if e["type"] == "metrics"]
    assert run["tokens_per_s"] == pytest.approx(metrics[-1]["tokens_per_s"], rel=0.02)  # what the run itself said

    clock.update(now=1_000.0, calls=0)
    train(TrainConfig(**{**cfg.to_dict(), "output_dir": str(tmp_path / "short"), "max_steps": speeds.MIN_STEPS}))
    assert len(json.loads(path.read_text(encoding="utf-8"))["runs"]) == 1  # 7 timed steps: not remembered
