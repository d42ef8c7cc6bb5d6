"""recommend(): pure, every setting valid for TrainConfig and explained, sensible across cases."""

from __future__ import annotations

import sys

import pytest

from lorastudio.train.config import TrainConfig
from lorastudio.train.recommend import DataStats, approx_tokens, model_size_b, recommend

CPU = {"device": "cpu", "cpu_cores": 2, "bf16": True}
GPU = {"device": "cuda", "gpu_memory_gb": 80, "gpu_name": "H100", "bf16": True}


def rows(n: int, answer: str = "工单超过48小时未处理，系统会自动升级到二线护航组。") -> list[dict]:
    return [{"instruction": f"问题{i}：工单多久会升级？", "response": answer} for i in range(n)]


@pytest.mark.parametrize("n", [5, 150, 3000, 20000])
@pytest.mark.parametrize("task", ["qa", "copywriting", "consulting"])
@pytest.mark.parametrize("hardware", [CPU, GPU])
def test_settings_are_valid_and_every_one_has_a_reason(n, task, hardware):
    rec = recommend(DataStats(rows=n, mean_tokens=70, max_tokens=150, mean_answer_tokens=40), "default",
                    task, hardware=hardware)
    TrainConfig(**rec.settings)  # validates
    assert set(rec.reasons) == set(rec.settings) - {"task"}
    assert all(isinstance(v, str) and v for v in rec.reasons.values())
    est = rec.estimate
    assert set(est) == {"seconds", "tokens", "device", "cost", "currency"}
    assert est["seconds"] > 0 and est["tokens"] > 0
    d = rec.to_dict()
    assert d["settings"] == rec.settings and d["estimate"] == est


def test_no_torch_import():
    sys.modules.pop("lorastudio.train.recommend", None)
    had_torch = "torch" in sys.modules
    import lorastudio.train.recommend  # noqa: F401

    assert ("torch" in sys.modules) == had_torch


def test_tiny_data_warns_and_skips_validation_split():
    rec = recommend(rows(20), "default", hardware=CPU)
    assert any("20" in w for w in rec.warnings)
    assert rec.settings["val_fraction"] == 0.0
    assert rec.settings["early_stopping_patience"] is None


def test_big_data_fewer_epochs_no_augmentation_early_stopping():
    small = recommend(DataStats(rows=150, mean_tokens=70, max_tokens=120), "default", hardware=GPU)
    big = recommend(DataStats(rows=20000, mean_tokens=70, max_tokens=120), "default", hardware=GPU)
    assert big.settings["num_epochs"] < small.settings["num_epochs"]
    assert big.settings["augment_paraphrases"] == 0
    assert big.settings["early_stopping_patience"]
    assert big.settings["val_fraction"] > 0
    assert big.estimate["tokens"] > small.estimate["tokens"]


def test_cpu_plan_fits_its_budget_and_gpu_is_faster():
    data = rows(150)
    cpu = recommend(data, "default", hardware=CPU)
    gpu = recommend(data, "default", hardware=GPU, price_per_hour=3.0)
    assert cpu.estimate["seconds"] <= 15 * 60
    assert gpu.estimate["seconds"] < cpu.estimate["seconds"]
    assert gpu.settings["device"] == "cuda" and cpu.settings["device"] == "cpu"
    assert gpu.estimate["cost"] > 0 and cpu.estimate["cost"] == 0


def test_big_data_on_cpu_warns_about_time():
    rec = recommend(DataStats(rows=20000, mean_tokens=300, max_tokens=900), "default", hardware=CPU)
    assert any("minutes" in w for w in rec.warnings)


def test_copywriting_vs_qa():
    data = rows(150)
    qa = recommend(data, "default", "qa", hardware=GPU)
    copy = recommend(data, "default", "copywriting", hardware=GPU)
    assert qa.settings["augment_paraphrases"] >= 1
    assert copy.settings["augment_paraphrases"] == 0
    assert copy.settings["num_epochs"] <= qa.settings["num_epochs"]


def test_bigger_models_get_lower_lr():
    data = rows(150)
    small = recommend(data, "default", hardware=GPU)
    big = recommend(data, "Qwen/Qwen2.5-7B-Instruct", hardware=GPU)
    assert big.settings["learning_rate"] < small.settings["learning_rate"]
    assert big.estimate["seconds"] > small.estimate["seconds"]


def test_fp32_cpu_without_bf16():
    rec = recommend(rows(150), "default", hardware={"device": "cpu", "cpu_cores": 2, "bf16": False})
    assert rec.settings["dtype"] == "fp32"


def test_long_rows_raise_max_length():
    rec = recommend(DataStats(rows=100, mean_tokens=900, max_tokens=1500), "default", hardware=GPU)
    assert rec.settings["max_length"] >= 1500
    assert rec.settings["batch_tokens"] >= rec.settings["max_length"]


def test_helpers():
    assert model_size_b("Qwen/Qwen2.5-1.5B-Instruct") == 1.5
    assert model_size_b("some-350m-model") == pytest.approx(0.35)
    assert model_size_b("default") == 0.5
    assert approx_tokens("工单超过48小时") < approx_tokens("工单超过48小时未处理，系统会自动升级")
    assert approx_tokens("hello world, this is English") < len("hello world, this is English")


def test_bad_task_rejected():
    with pytest.raises(ValueError):
        recommend(rows(10), "default", "poetry", hardware=CPU)


def test_same_fact_pairs_for_facts_not_for_copywriting():
    data = rows(150)
    assert recommend(data, "default", "qa", hardware=CPU).settings["augment_same_fact"] is True
    assert recommend(data, "default", "consulting", hardware=CPU).settings["augment_same_fact"] is True
    assert recommend(data, "default", "copywriting", hardware=CPU).settings["augment_same_fact"] is False


def test_standalone_turns_only_for_multi_turn_fact_data():
    single = recommend(rows(150), "default", "qa", hardware=CPU)
    assert single.settings["augment_turns"] is False
    multi = {"rows": 30, "mean_tokens": 220, "max_tokens": 500, "mean_answer_tokens": 120, "turns": 2.2}
    on = recommend(multi, "default", "qa", hardware=CPU)
    assert on.settings["augment_turns"] is True and on.reasons["augment_turns"]
    assert recommend(multi, "default", "copywriting", hardware=CPU).settings["augment_turns"] is False
    off = recommend(multi, "default", "qa", hardware=CPU)
    off.settings["augment_turns"] = False  # the estimate counts the extra rows
    from lorastudio.train.recommend import DataStats, Hardware, _estimate
    stats, hw = DataStats.from_any(multi), Hardware.from_any(CPU)
    assert _estimate(on.settings, stats, hw, 0.5, 0.0, "USD", "default")["tokens"] > \
        _estimate(off.settings, stats, hw, 0.5, 0.0, "USD", "default")["tokens"]


def test_paraphrase_generation_only_where_generation_is_cheap():
    data = rows(150)
    assert recommend(data, "default", hardware=CPU).settings["augment_paraphrases"] == 0
    assert recommend(data, "default", hardware=GPU).settings["augment_paraphrases"] > 0


def test_small_data_gets_about_eight_rows_per_step():
    stats = DataStats(rows=150, mean_tokens=78, max_tokens=120)
    rec = recommend(stats, "default", hardware=CPU)
    assert 6 * 78 <= rec.settings["batch_tokens"] <= 10 * 78


def test_gpu_recommendation_shows_the_auto_fit_plan(tmp_path):
    import json

    qwen7b = {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
              "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False}
    (tmp_path / "config.json").write_text(json.dumps(qwen7b))
    small = recommend(rows(150), str(tmp_path), "qa", hardware={"device": "cuda", "gpu_memory_gb": 24, "bf16": True})
    assert small.settings["gradient_checkpointing"] == "auto"
    assert "auto-fit for 24 GB" in small.reasons["gradient_checkpointing"]
    big = recommend(rows(5000), str(tmp_path), "qa", hardware={"device": "cuda", "gpu_memory_gb": 141, "bf16": True})
    assert "no gradient checkpointing" in big.reasons["gradient_checkpointing"]
    tiny_card = recommend(rows(150), str(tmp_path), "qa", hardware={"device": "cuda", "gpu_memory_gb": 8, "bf16": True})
    assert any("does not fit" in w for w in tiny_card.warnings)
