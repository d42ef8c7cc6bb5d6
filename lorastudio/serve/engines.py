"""Model names → (base, adapter) and one lazily loaded chat engine per base model."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from lorastudio.serve.errors import APIError
from lorastudio.serve.store import Store


def base_model_ids() -> list[str]:
    """Ids a client may name as a base: the catalog's (which includes `default` and `tiny-random`).

    Arbitrary local paths are deliberately not accepted over HTTP: a remote client must not make the
    server load whatever directory it names.
    """
    from lorastudio.models import catalog

    return [entry["id"] for entry in catalog()]


def model_not_found(name: str, param: str = "model") -> APIError:
    return APIError(404, f"The model '{name}' does not exist. Use a base id from GET /v1/models (e.g. "
                    "'default' or 'tiny-random') or the fine_tuned_model of a succeeded job.",
                    param=param, code="model_not_found")


def _unavailable(base: str, exc: Exception) -> Exception:
    """A base that is in the catalog but cannot be loaded here (not downloaded, no hub) is the
    client's to fix (pick another model), not a server crash."""
    from lorastudio.models import ModelError

    if isinstance(exc, ModelError | OSError):
        return APIError(400, f"The base model '{base}' cannot be loaded on this server: {exc}", param="model",
                        code="model_unavailable")
    return exc


class EnginePool:
    """One ChatEngine per base in memory; adapters are switched per request by the engine's LRU."""

    def __init__(self, store: Store, max_adapters: int = 4,
                 factory: Callable[[str], Any] | None = None) -> None:
        self.store = store
        self.max_adapters = max_adapters
        self._factory = factory
        self._engines: dict[str, Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def resolve(self, name: str, param: str = "model") -> tuple[str, str | None]:
        """`(base id, adapter dir or None)` for a model name, or a 404 `model_not_found`."""
        if not isinstance(name, str) or not name:
            raise APIError(400, "'model' must be a non-empty string.", param=param, code="invalid_value")
        tuned = self.store.get_model(name)
        if tuned is not None:
            return tuned["base"], tuned["adapter_dir"]
        ckpt = self.store.get_checkpoint_by_model(name)
        if ckpt is not None:
            job = self.store.get_job(ckpt["job_id"])
            if job is not None:
                return job["model"], ckpt["path"]
        if name in base_model_ids():
            return name, None
        raise model_not_found(name, param)

    def get(self, base: str) -> Any:
        """The engine for `base`, loading it on first use (blocking: call from a worker thread)."""
        with self._guard:
            if base in self._engines:
                return self._engines[base]
            lock = self._locks.setdefault(base, threading.Lock())
        with lock:  # two first requests for one base must not load it twice
            if base not in self._engines:
                try:
                    engine = self._factory(base) if self._factory else self._default_factory(base)
                except Exception as exc:
                    raise _unavailable(base, exc) from exc
                with self._guard:
                    self._engines[base] = engine
            return self._engines[base]

    def _default_factory(self, base: str) -> Any:
        from lorastudio.inference import ChatEngine

        return ChatEngine(base=base, max_adapters=self.max_adapters)

    def loaded(self) -> list[str]:
        with self._guard:
            return list(self._engines)
