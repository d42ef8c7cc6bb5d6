"""`llamacpp.load_library()`: the public "load llama.cpp now" (before torch, for the short OpenMP
spin), with a clear error when the binding is missing or its library does not load; the export
fidelity gate uses it instead of the private `_lib()`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lorastudio import llamacpp

REPO = Path(__file__).resolve().parents[1]


def _run(code: str, pythonpath: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    return subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": pythonpath},
                          capture_output=True, text=True, timeout=120)


def test_missing_binding_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(llamacpp, "available", lambda: False)
    with pytest.raises(llamacpp.LlamaCppError, match=r"llama-cpp-python is not installed; install it with .*pip"):
        llamacpp.load_library()
    assert llamacpp.preload() == llamacpp.omp_wait


def test_a_library_that_does_not_load_is_a_clear_error(tmp_path):
    fake = tmp_path / "llama_cpp"
    fake.mkdir()
    (fake / "__init__.py").write_text("", encoding="utf-8")
    (fake / "llama_cpp.py").write_text(
        "raise RuntimeError(\"Failed to load shared library '/x/libllama.so': undefined symbol: ggml_x\")\n",
        encoding="utf-8")
    code = ("from lorastudio import llamacpp\n"
            "try:\n    llamacpp.load_library()\nexcept llamacpp.LlamaCppError as exc:\n    print('ERROR', exc)\n"
            "print('preload', llamacpp.preload())\n")
    result = _run(code, f"{tmp_path}{os.pathsep}{REPO}")
    assert result.returncode == 0, result.stderr
    assert "ERROR llama-cpp-python is installed but its library does not load (Failed to load shared library" \
        in result.stdout and "reinstall it" in result.stdout
    assert "preload not loaded" in result.stdout


@pytest.mark.skipif(not llamacpp.available(), reason="llama-cpp-python is not installed")
def test_load_library_loads_it_with_the_short_spin_before_torch():
    code = ("import sys\nfrom lorastudio import llamacpp\nprint(llamacpp.load_library())\n"
            "print('llama_cpp' in sys.modules, 'torch' in sys.modules)\nprint(llamacpp.load_library())\n")
    result = _run(code, str(REPO))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["GOMP_SPINCOUNT=1000", "True False", "GOMP_SPINCOUNT=1000"]


def test_the_export_check_loads_llamacpp_through_it(monkeypatch):
    from lorastudio import export_check

    def broken() -> str:
        raise llamacpp.LlamaCppError("llama-cpp-python is installed but its library does not load (x); reinstall it")

    monkeypatch.setattr(llamacpp, "available", lambda: True)
    monkeypatch.setattr(llamacpp, "load_library", broken)
    assert export_check.prepare_llamacpp() == \
        "llama-cpp-python is installed but its library does not load (x); reinstall it"
    monkeypatch.setattr(llamacpp, "load_library", lambda: "GOMP_SPINCOUNT=1000")
    assert export_check.prepare_llamacpp() is None
    # nothing outside lorastudio/llamacpp.py reaches for its private loader
    users = [p for p in (REPO / "lorastudio").rglob("*.py") if p.name != "llamacpp.py" and "._lib()" in p.read_text("utf-8")]
    assert users == []
