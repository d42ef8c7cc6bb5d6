"""The generation backends behind `lorastudio.inference.ChatEngine`.

- `common`: what both share: the error types, messages → prompt, adapter directories, the
  incremental decoder and `Backend` (one lock, the adapter LRU, end-of-turn ids).
- `hf`: transformers (PEFT adapters switched on one model).
- `llama`: llama.cpp (`lorastudio.llamacpp`; GGUF LoRA adapters switched per call).

`lorastudio.inference` chooses one and keeps the public API; these modules never import it back.
"""
