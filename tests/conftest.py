"""Shared fixtures. Models come from configs or the local cache, never from a hub.

- `tiny_random_dir`: the catalog's `tiny-random` (real Qwen2.5 tokenizer, 151k vocab), materialised
  once in the model cache ($LORASTUDIO_HOME, default ~/.cache/lorastudio).
- `small_model_dir`: a 2-layer Qwen2 with a 420-token BPE tokenizer (tests/inference_fixtures.py):
  the same code paths, ~100× less lm-head work, for tests that run many training steps.
- every test: training speeds remembered in a file of the session's own (`_own_speed_file`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session", autouse=True)
def _own_speed_file(tmp_path_factory) -> None:
    """Training speeds remembered by the tests' runs (`lorastudio.train.speeds`) go to a file of this session,
    and the machine's own (from real runs) never reach the tests' estimates."""
    import os

    from lorastudio.train import speeds

    os.environ[speeds.ENV] = str(tmp_path_factory.mktemp("speeds") / "speeds.json")


@pytest.fixture(scope="session")
def tiny_random_dir() -> str:
    from lorastudio.models import resolve_model

    return resolve_model("tiny-random")


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory) -> str:
    from inference_fixtures import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("small-model") / "base"))
