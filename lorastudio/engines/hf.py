"""The transformers backend: one model in memory, PEFT adapters loaded under generated names and
switched per call (`set_adapter`; `disable_adapter()` for the base)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorastudio.engines.common import Backend, OnIds, check_sampling


class _IdsStreamer:
    """A `generate()` streamer that forwards new token ids to a callback (the consumer decodes)."""

    def __init__(self, on_ids: OnIds):
        self.on_ids = on_ids
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate() first pushes the prompt
            self.prompt_seen = True
            return
        self.on_ids(value.reshape(-1).tolist())

    def end(self) -> None:
        pass


def _cancel_criteria(cancel: threading.Event):
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Cancel(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool,
                              device=input_ids.device)

    return StoppingCriteriaList([_Cancel()])


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(self, model: Any, tokenizer: Any, max_adapters: int, base_id: str):
        model.eval()
        self.model = model  # becomes a PeftModel once the first adapter is loaded
        super().__init__(tokenizer, max_adapters, base_id, getattr(model, "generation_config", None))
        self._counter = 0

    def context_length(self) -> int | None:
        return getattr(getattr(self.model, "config", None), "max_position_embeddings", None)

    def _device(self) -> Any:
        return next(self.model.parameters()).device

    def _sampling(self, max_new_tokens: int, temperature: float, top_p: float) -> dict[str, Any]:
        check_sampling(temperature, top_p)
        kw: dict[str, Any] = dict(max_new_tokens=max_new_tokens, eos_token_id=sorted(self.eos_token_ids),
                                  pad_token_id=self.tokenizer.pad_token_id)
        if temperature > 0:
            kw.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=None)
        else:
            # Explicit so a generation_config that asks for sampling cannot make "greedy" random.
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw

    # -- adapters ----------------------------------------------------------------------------

    def activate(self, adapter_path: Path | None, strength: float = 1.0):
        """A context manager in which `self.model` computes with the requested adapter (or none), its LoRA
        update scaled by `strength` (restored on leaving)."""
        from peft import PeftModel

        if adapter_path is None:
            if isinstance(self.model, PeftModel):
                return self.model.disable_adapter()
            return contextlib.nullcontext()
        name = self.acquire(adapter_path)  # first: the first adapter turns self.model into a PeftModel
        self.model.set_adapter(name)
        return self._scaled(name, strength) if strength != 1.0 else contextlib.nullcontext()

    @contextlib.contextmanager
    def _scaled(self, name: str, strength: float):
        scaled = [m for m in self.model.modules() if isinstance(getattr(m, "scaling", None), dict) and name in m.scaling]
        saved = [m.scaling[name] for m in scaled]
        for m, value in zip(scaled, saved, strict=True):
            m.scaling[name] = value * strength
        try:
            yield
        finally:
            for m, value in zip(scaled, saved, strict=True):
                m.scaling[name] = value

    def _load(self, path: Path) -> str:
        from peft import PeftModel

        name = f"adapter_{self._counter}"
        self._counter += 1
        try:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(path), adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
                self.model.eval()
        except (RuntimeError, ValueError, KeyError) as exc:
            # Typically a shape mismatch: the adapter was trained on another base model.
            raise self._misfit(path, str(exc).splitlines()[0][:300]) from None
        return name

    def _drop(self, name: str) -> None:
        remaining = [n for n, _ in self.adapters.values()]
        if remaining:
            # PEFT refuses to delete the active adapter's layers cleanly otherwise.
            self.model.set_adapter(remaining[-1])
            self.model.delete_adapter(name)
        else:
            # Last adapter gone: unwrap back to the plain base model (LoRA layers removed).
            self.model = self.model.unload()
            self.model.eval()

    # -- generation --------------------------------------------------------------------------

    def generate_ids(self, prompt_ids: list[int], adapter_path: Path | None, max_new_tokens: int,
                     temperature: float, top_p: float, seed: int | None, on_ids: OnIds,
                     cancel: threading.Event, *, strength: float = 1.0) -> list[int]:
        import torch

        with self.lock, torch.inference_mode():
            if cancel.is_set():  # gone while it waited for the lock
                return []
            with self.activate(adapter_path, strength):
                if seed is not None:
                    torch.manual_seed(seed)
                ids = torch.tensor([prompt_ids], device=self._device())
                out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                          streamer=_IdsStreamer(on_ids), stopping_criteria=_cancel_criteria(cancel),
                                          **self._sampling(max_new_tokens, temperature, top_p))
        return out[0, len(prompt_ids):].tolist()

    def generate_many(self, encoded: list[list[int]], adapter_path: Path | None, budget: Callable[[int], int],
                      temperature: float, top_p: float, seed: int | None, batch_size: int, *,
                      strength: float = 1.0) -> list[list[int]]:
        """Left-padded batches of similar lengths (less padding: wasted compute on a CPU); the lock
        is taken per batch so interactive requests are not starved by a long evaluation."""
        import torch

        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        outs: list[list[int]] = [[] for _ in encoded]
        pad_id = self.tokenizer.pad_token_id
        for start in range(0, len(order), max(1, batch_size)):
            idx = order[start:start + batch_size]
            width = max(len(encoded[i]) for i in idx)
            n_new = budget(width)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                seq = encoded[i]
                ids[row, width - len(seq):] = torch.tensor(seq)
                mask[row, width - len(seq):] = 1
            with self.lock, torch.inference_mode(), self.activate(adapter_path, strength):
                if seed is not None:
                    torch.manual_seed(seed)
                out = self.model.generate(input_ids=ids.to(self._device()), attention_mask=mask.to(self._device()),
                                          **self._sampling(n_new, temperature, top_p))
            for row, i in enumerate(idx):
                outs[i] = out[row, width:].tolist()
        return outs
