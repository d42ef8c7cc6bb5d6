"""Which bases of the catalogue can run on this machine, and why not: a 7B/8B base needs a GPU, a hub
base not downloaded yet needs the network (the service's model list and its refusals, `/studio/models`,
`POST /v1/fine_tuning/jobs`, `POST /studio/recommend`, all ask here). No torch import to ask.

```python
from lorastudio.models.availability import base_availability, catalog_availability, reasons
base_availability("default")   # {"available": True, "unavailable": [], "notes": []}, None for an unknown id
reasons(found, "zh")            # the `unavailable` codes in words, or None
```
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorastudio.models.catalog import catalog

GPU_ONLY_GB = 16
"""A base needing this much memory (GB) trains only on a GPU (the catalogue's 7B/8B models)."""
_hub_probe: dict[str, Any] = {}


def has_gpu() -> bool:
    """A CUDA device, without importing torch just to ask (the NVIDIA driver's /proc entry)."""
    if "torch" in sys.modules:
        return bool(sys.modules["torch"].cuda.is_available())
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def hub_reachable(wait_s: float = 1.5) -> bool:
    """Whether the Hugging Face hub answers (HF_HUB_OFFLINE=1 says no); probed once in the background,
    so a machine without a network never holds the model list up longer than `wait_s`."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    if "thread" not in _hub_probe:
        def probe() -> None:
            try:
                socket.create_connection(("huggingface.co", 443), timeout=3).close()
                _hub_probe["ok"] = True
            except OSError:
                _hub_probe["ok"] = False
        _hub_probe["thread"] = threading.Thread(target=probe, daemon=True)
        _hub_probe["thread"].start()
    _hub_probe["thread"].join(wait_s)
    return bool(_hub_probe.get("ok"))


def hub_cached(hub_id: str) -> bool:
    """The hub model's config is in the local Hugging Face cache (downloaded before)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)


def availability(entry: dict, *, gpu: bool, online: Callable[[], bool]) -> dict[str, Any]:
    """`available`, and why not (`unavailable`: codes no_gpu, offline) or what the first use costs
    (`notes`: not_downloaded), each `{code, params}`. `online` is called only when it matters."""
    unavailable: list[dict] = []
    notes: list[dict] = []
    memory = entry.get("min_memory_gb") or 0
    if memory >= GPU_ONLY_GB and not gpu:
        unavailable.append({"code": "no_gpu", "params": {"memory": memory}})
    hub = entry.get("hub_id")
    if hub and not hub_cached(hub):
        if online():
            notes.append({"code": "not_downloaded", "params": {"disk": entry.get("disk_gb")}})
        else:
            unavailable.append({"code": "offline", "params": {}})
    return {"available": not unavailable, "unavailable": unavailable, "notes": notes}


def catalog_availability() -> list[dict[str, Any]]:
    """`catalog()`, each entry with its `availability` here (the GPU asked once, the hub only when a base
    is not downloaded)."""
    gpu = has_gpu()
    return [{**entry, **availability(entry, gpu=gpu, online=hub_reachable)} for entry in catalog()]


def base_availability(model_id: str) -> dict[str, Any] | None:
    """`availability` of the catalogue base `model_id` here; None when it is not a catalogue id (a local
    directory or a hub id: whether it loads is found out by loading it)."""
    entry = next((e for e in catalog() if e["id"] == model_id), None)
    return None if entry is None else availability(entry, gpu=has_gpu(), online=hub_reachable)


def reasons(found: dict[str, Any], lang: str = "en") -> str | None:
    """The `unavailable` codes of an `availability` answer in words (zh or en), or None if there are none."""
    from lorastudio.i18n import t

    words = [t(f"studio.unavailable.{r['code']}", lang, **r["params"]) for r in found["unavailable"]]
    return ("；" if lang == "zh" else "; ").join(words) or None
