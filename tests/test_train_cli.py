"""`lorastudio train` and `lorastudio models`: exit codes, settings precedence, SIGTERM → checkpoint + 130."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_train_trainer import write_rows

from lorastudio.cli import main
from lorastudio.train import TrainConfig, read_events

REPO = Path(__file__).resolve().parents[1]


def test_unusable_inputs_exit_2_with_one_line(tmp_path, small_model_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "", "response": ""}\n', encoding="utf-8")
    out = str(tmp_path / "out")
    assert main(["train", str(bad), "--base", small_model_dir, "-o", out, "--no-recommend", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no usable rows" in err and "empty_instruction" in err and len(err.splitlines()) == 1

    assert main(["train", str(tmp_path / "missing.jsonl"), "--base", small_model_dir, "-o", out]) == 2
    assert "no such file" in capsys.readouterr().err

    good = write_rows(tmp_path / "good.jsonl")
    assert main(["train", str(good), "--base", small_model_dir, "-o", out, "--no-recommend",
                 "--set", "lora_rank=8"]) == 2
    assert "did you mean 'lora_r'" in capsys.readouterr().err

    assert main(["train", str(good), "--base", str(tmp_path / "nowhere"), "-o", out, "--no-recommend"]) == 2
    assert "not found" in capsys.readouterr().err


def test_settings_precedence_flags_over_config_file(tmp_path, small_model_dir, capsys):
    good = write_rows(tmp_path / "good.jsonl")
    config = tmp_path / "settings.yaml"
    TrainConfig(learning_rate=1e-4, lora_r=4, lora_alpha=8, batch_tokens=128, max_length=128).to_yaml(config)
    out = tmp_path / "out"
    code = main(["train", str(good), "--base", small_model_dir, "-o", str(out), "--config", str(config),
                 "--lr", "2e-3", "--max-steps", "2", "--set", "seed=7", "-q"])
    assert code == 0, capsys.readouterr().err
    saved = TrainConfig.from_yaml(out / "train_config.yaml")
    assert (saved.learning_rate, saved.lora_r, saved.max_steps, saved.seed) == (2e-3, 4, 2, 7)
    assert saved.data == str(good) and saved.output_dir == str(out)
    assert "adapter:" in capsys.readouterr().err


def test_recommended_settings_are_printed_and_used(tmp_path, small_model_dir, capsys):
    good = write_rows(tmp_path / "good.jsonl")
    out = tmp_path / "out"
    # Augmentation/replay (their own tests cover them) off: this test is about the recommender's hand-off.
    assert main(["train", str(good), "--base", small_model_dir, "-o", str(out), "--max-steps", "1",
                 "--set", "augment_paraphrases=0", "--set", "augment_same_fact=false", "--set", "replay_rows=0"]) == 0
    err = capsys.readouterr().err
    assert "Recommended settings:" in err and "learning_rate" in err
    assert (out / "adapter_model.safetensors").is_file()


def test_changed_settings_get_their_own_estimate(tmp_path, small_model_dir, capsys):
    """`--epochs` (or any `--set` the time depends on) after the recommendation: the time of what runs is
    printed beside the recommendation's and kept as the estimate the run is compared with."""
    from lorastudio.train.recommend import recommend

    good = write_rows(tmp_path / "good.jsonl")
    out = tmp_path / "out"
    assert main(["train", str(good), "--base", small_model_dir, "-o", str(out), "--epochs", "9", "--max-steps", "1",
                 "--set", "replay_rows=0", "--set", "augment_paraphrases=0", "--set", "lora_r=4"]) == 0
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "with your changes" in x)
    assert "num_epochs" in line and "→ 9.0" in line and "replay_rows" in line and "lora_r" not in line
    # a setting the time does not depend on: named as the user's, since the list shows the recommended value
    over = next(x for x in err.splitlines() if "instead of the recommended" in x)
    assert "lora_r 16 → 4" in over and "num_epochs" not in over and "replay_rows" not in over
    saved = TrainConfig.from_yaml(out / "train_config.yaml")
    assert saved.extra["estimate"]["tokens"] == saved.batch_tokens  # 9 passes, but --max-steps 1 stops it
    assert saved.extra["recommended_estimate"]["tokens"] > saved.extra["estimate"]["tokens"]
    # changes the time does not depend on: the recommendation's estimate stays, nothing more is printed
    from lorastudio.commands.train import _estimate_changes
    from lorastudio.data import validate

    rows = validate(str(good)).conversations
    rec = recommend(rows, small_model_dir, hardware="cpu")
    recommended = {**saved.to_dict(), "lora_r": 16, "seed": 0}
    assert _estimate_changes(saved, recommended, rec, quiet=False) is saved
    assert "with your changes" not in capsys.readouterr().err
    assert rec.estimate_for(saved.to_dict())["tokens"] == saved.batch_tokens


def test_device_cpu_on_a_gpu_machine_gets_the_cpus_settings_and_estimate(tmp_path, small_model_dir, capsys,
                                                                        monkeypatch):
    """`--device cpu` where a GPU exists: the settings and the estimate are the CPU's (they were the GPU's:
    paraphrases on, "about 51 s on NVIDIA H200" printed before a 5-minute CPU run)."""
    import importlib

    rec_mod = importlib.import_module("lorastudio.train.recommend")

    gpu = rec_mod.Hardware(device="cuda", gpu_memory_gb=140.0, gpu_name="NVIDIA H200", cpu_cores=2)
    monkeypatch.setattr(rec_mod, "detect_hardware", lambda: gpu)
    good = write_rows(tmp_path / "good.jsonl")
    for flags in (["--device", "cpu"], ["--set", "device=cpu"]):
        out = tmp_path / f"out{len(flags[0])}"
        assert main(["train", str(good), "--base", small_model_dir, "-o", str(out), "--max-steps", "1",
                     "--set", "replay_rows=0", *flags]) == 0
        err = capsys.readouterr().err
        settings = TrainConfig.from_yaml(out / "train_config.yaml")
        assert "H200" not in err and "estimate: about" in err
        assert settings.augment_paraphrases == 0 and settings.extra["estimate"]["device"] != "cuda"
    # no choice: the machine's best, the GPU
    from lorastudio.commands.train import _recommended

    assert _recommended(str(good), small_model_dir, "qa", quiet=True)["device"] == "cuda"


def test_sigterm_saves_a_checkpoint_exits_130_and_resume_finishes(tmp_path, tiny_random_dir):
    good = write_rows(tmp_path / "good.jsonl")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lorastudio", "train", str(good), "--base", "tiny-random", "-o", str(out),
         "--no-recommend", "--max-steps", "12", "--set", "batch_tokens=128", "--set", "max_length=128",
         "--set", "dtype=fp32"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events_path = out / "events.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if any(e["type"] == "metrics" for e in read_events(events_path)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 130, stderr
    assert "--resume" in stderr

    events = read_events(events_path)
    stopped_at = max(e["step"] for e in events if e["type"] == "metrics")
    assert stopped_at < 12
    checkpoint = out / "checkpoints" / f"step-{stopped_at:08d}"
    assert (checkpoint / "trainer_state.pt").is_file() and (checkpoint / "adapter_model.safetensors").is_file()
    assert any(e["type"] == "checkpoint" and e["step"] == stopped_at for e in events)
    assert any(e["type"] == "stage" and "interrupted (SIGTERM)" in e["message"] for e in events)
    assert not list(out.glob("checkpoints/.tmp-*"))  # no half-written checkpoint left behind

    assert main(["train", str(good), "-o", str(out), "--resume", "-q"]) == 0
    events = read_events(events_path)
    assert [e["step"] for e in events if e["type"] == "resumed"] == [stopped_at]
    assert [e["step"] for e in events if e["type"] == "metrics"] == list(range(1, 13))
    assert events[-1]["type"] == "done"


def test_models_lists_the_catalog(capsys, monkeypatch):
    import importlib

    availability = importlib.import_module("lorastudio.models.availability")
    monkeypatch.setattr(availability, "has_gpu", lambda: False)  # a CPU-only, offline machine
    monkeypatch.setattr(availability, "hub_reachable", lambda wait_s=1.5: False)
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert text.index("default") < text.index("tiny-random") and "SMOKE TEST" in text
    lines = text.splitlines()
    default = next(line for line in lines if line.startswith("default "))
    assert "CANNOT RUN HERE" not in default  # the embedded default always runs
    seven_b = next(line for line in lines if line.startswith("Qwen/Qwen2.5-7B-Instruct "))
    assert "CANNOT RUN HERE" in seven_b and "GPU" in seven_b, text  # shown, with why it cannot run
    assert main(["models", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)["data"]
    assert data[0]["id"] == "default" and any(e["id"] == "tiny-random" and e["smoke_test"] for e in data)
