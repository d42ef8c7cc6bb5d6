"""TrainConfig: every number bounded and finite, resume-relevant settings declared on the fields."""

from __future__ import annotations

import math

import pytest

from lorastudio.train.config import MAX_EPOCHS, ConfigError, TrainConfig, resume_keys


@pytest.mark.parametrize("override, named", [
    ({"num_epochs": 1e9}, "num_epochs"),            # the schedule is built up front: memory would explode
    ({"num_epochs": math.inf}, "num_epochs"),
    ({"learning_rate": math.nan}, "learning_rate"),
    ({"warmup_ratio": -math.inf}, "warmup_ratio"),
    ({"seed": 2**64}, "seed"),                        # torch.manual_seed overflows
    ({"seed": -1}, "seed"),
    ({"max_steps": 10**12}, "max_steps"),
    ({"lora_r": 10**15}, "lora_r"),
    ({"price_per_hour": 1e300}, "price_per_hour"),
    ({"knowledge_strength": 1.5}, "knowledge_strength"),  # a LoRA update scaled up would answer past its training
    ({"knowledge_strength": math.nan}, "knowledge_strength"),
])
def test_out_of_range_and_non_finite_numbers_are_refused_naming_the_setting(override, named):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**override)
    assert str(info.value).startswith(f"{named}=")


def test_values_from_yaml_strings_are_bounded_too():
    with pytest.raises(ConfigError, match="num_epochs"):
        TrainConfig.from_dict({"num_epochs": "1e9"})
    assert TrainConfig.from_dict({"num_epochs": str(MAX_EPOCHS)}).num_epochs == MAX_EPOCHS


def test_resume_keys_are_declared_on_the_fields():
    keys = set(resume_keys())
    # what a step computes …
    assert {"data", "base", "lora_r", "learning_rate", "num_epochs", "seed", "neftune_alpha",
            "augment_per_epoch", "replay_rows"} <= keys
    # … and not how it is run or reported
    assert not keys & {"output_dir", "device", "price_per_hour", "save_every", "eval_every", "gpus", "extra",
                        "knowledge_rows", "knowledge_strength"}  # read when answering: a resumed run may change it


def test_repeated_sigterm_keeps_the_graceful_stop_and_a_second_ctrl_c_means_now():
    """A dying server's process group and a launcher can each forward SIGTERM (71 ms apart in the issue):
    that must not turn into the 'stop immediately, no checkpoint' path. Only a second Ctrl-C does."""
    import os
    import signal

    from lorastudio.train.stopping import StopFlag

    flag = StopFlag(None)
    with flag.installed():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.requested and flag.signal == signal.SIGTERM
    flag = StopFlag(None)
    with flag.installed():
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
