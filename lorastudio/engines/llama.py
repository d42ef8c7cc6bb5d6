"""The llama.cpp backend: one GGUF model (`lorastudio.llamacpp.LlamaCppModel`), adapters converted
once to GGUF LoRA and switched per call on the one loaded base. It receives the token ids the
transformers backend would (same tokenizer, same prompt) and stops on the same end-of-turn ids."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorastudio.engines.common import Backend, OnIds, check_sampling


class LlamaBackend(Backend):
    name = "llama.cpp"

    def __init__(self, llama: Any, tokenizer: Any, max_adapters: int, base_id: str):
        self.llama = llama  # a lorastudio.llamacpp.LlamaCppModel
        super().__init__(tokenizer, max_adapters, base_id)

    def context_length(self) -> int | None:
        return self.llama.n_ctx

    def _load(self, path: Path) -> Path:
        from lorastudio.llamacpp import LoraConversionError, adapter_gguf

        try:
            return self.llama.load_lora(adapter_gguf(path, arch=self.llama.arch))
        except LoraConversionError as exc:
            raise self._misfit(path, str(exc), verb="cannot be used with") from None

    def _drop(self, key: Path) -> None:
        # Two directories holding the same adapter share one converted file and handle.
        if all(other != key for other, _ in self.adapters.values()):
            self.llama.unload_lora(key)

    def generate_ids(self, prompt_ids: list[int], adapter_path: Path | None, max_new_tokens: int,
                     temperature: float, top_p: float, seed: int | None, on_ids: OnIds,
                     cancel: threading.Event, *, strength: float = 1.0) -> list[int]:
        check_sampling(temperature, top_p)
        generated: list[int] = []
        with self.lock:
            if cancel.is_set():  # gone while it waited for the lock
                return generated
            lora = self.acquire(adapter_path) if adapter_path is not None else None
            for token in self.llama.generate(prompt_ids, lora=lora, lora_scale=strength, max_new_tokens=max_new_tokens,
                                             temperature=temperature, top_p=top_p, seed=seed,
                                             stop_ids=self.eos_token_ids, cancel=cancel):
                generated.append(token)
                on_ids([token])
        return generated

    def generate_many(self, encoded: list[list[int]], adapter_path: Path | None, budget: Callable[[int], int],
                      temperature: float, top_p: float, seed: int | None, batch_size: int, *,
                      strength: float = 1.0) -> list[list[int]]:
        """Up to `batch_size` prompts decode together (continuous batching: a finished answer's
        place goes to the next prompt). The lock is taken per group of 2 × batch_size prompts, so
        interactive requests are not starved by a long evaluation."""
        check_sampling(temperature, top_p)
        budgets = [budget(len(ids)) for ids in encoded]  # all checked up front
        group = max(1, batch_size) * 2
        outs: list[list[int]] = []
        for start in range(0, len(encoded), group):
            with self.lock:
                lora = self.acquire(adapter_path) if adapter_path is not None else None
                outs += self.llama.generate_many(encoded[start:start + group], lora=lora, lora_scale=strength,
                                                 max_new_tokens=budgets[start:start + group],
                                                 temperature=temperature, top_p=top_p, seed=seed,
                                                 stop_ids=self.eos_token_ids, parallel=max(1, batch_size))
        return outs
