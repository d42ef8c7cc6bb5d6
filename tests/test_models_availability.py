"""Which catalogue bases can run here (lorastudio.models.availability): core knowledge the service's
model list and refusals ask, with no GPU, network or web stack needed to test it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lorastudio.models import availability


@pytest.fixture
def cpu_offline(monkeypatch):
    monkeypatch.setattr(availability, "has_gpu", lambda: False)
    monkeypatch.setattr(availability, "hub_reachable", lambda: False)
    monkeypatch.setattr(availability, "hub_cached", lambda hub_id: False)


def test_a_7b_needs_a_gpu_and_a_hub_base_the_network(cpu_offline, monkeypatch):
    assert availability.base_availability("default") == {"available": True, "unavailable": [], "notes": []}
    seven_b = availability.base_availability("Qwen/Qwen2.5-7B-Instruct")
    assert not seven_b["available"]
    assert seven_b["unavailable"] == [{"code": "no_gpu", "params": {"memory": 24}}, {"code": "offline", "params": {}}]
    assert availability.base_availability("/some/local/dir") is None  # not a catalogue id: loading tells

    monkeypatch.setattr(availability, "has_gpu", lambda: True)
    monkeypatch.setattr(availability, "hub_reachable", lambda: True)
    seven_b = availability.base_availability("Qwen/Qwen2.5-7B-Instruct")
    assert seven_b["available"] and seven_b["notes"] == [{"code": "not_downloaded", "params": {"disk": 15.2}}]


def test_the_hub_is_asked_only_when_a_base_is_not_downloaded(monkeypatch):
    asked = []
    monkeypatch.setattr(availability, "hub_cached", lambda hub_id: True)
    entry = {"id": "x", "min_memory_gb": 8, "hub_id": "org/x", "disk_gb": 3}
    found = availability.availability(entry, gpu=False, online=lambda: asked.append(1) or False)
    assert found["available"] and not found["notes"] and asked == []


def test_reasons_in_words_and_the_catalogue_with_availability(cpu_offline):
    listed = {m["id"]: m for m in availability.catalog_availability()}
    assert listed["tiny-random"]["available"] and availability.reasons(listed["tiny-random"]) is None
    seven_b = listed["Qwen/Qwen2.5-7B-Instruct"]
    assert seven_b["params"] and not seven_b["available"]  # the catalogue entry, plus its availability
    en, zh = availability.reasons(seven_b, "en"), availability.reasons(seven_b, "zh")
    assert en.startswith("needs a GPU with 24 GB of memory") and "; " in en
    assert zh.startswith("需要显存 24 GB 的 GPU") and "；" in zh


def test_core_import_without_the_web_stack():
    code = "import sys, lorastudio.models.availability; assert 'fastapi' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
