"""`tiny-random`: the default model's architecture (Qwen2) and tokenizer, 2 layers, hidden 64, random weights.

It learns nothing useful; it exists so tests and smoke runs exercise the real code paths in seconds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lorastudio.models.cache import build_once
from lorastudio.models.default import ensure_default_tokenizer

TINY_NAME = "tiny-random"
TINY_SEED = 0
# The layer shape (a Qwen2Config's keywords); the tests' own tiny model (tests/inference_fixtures.py) uses it too.
TINY_SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "chat_template.jinja", "vocab.json", "merges.txt", "added_tokens.json")


def build_tiny_into(out_dir: Path) -> None:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer_dir = ensure_default_tokenizer()
    for name in _TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, out_dir / name)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = Qwen2Config(
        # The full vocabulary, so every token the tokenizer emits has an embedding row (151k × 64 is small).
        vocab_size=len(tokenizer),
        **TINY_SHAPE,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        # Tied like the real 0.5B checkpoint, which halves this model's size.
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=im_end,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(TINY_SEED)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(out_dir)
    GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=[im_end, config.bos_token_id],
        pad_token_id=tokenizer.pad_token_id, do_sample=False,
    ).save_pretrained(out_dir)
    (out_dir / "SOURCE.txt").write_text(
        "tiny-random: Qwen2, 2 layers, hidden 64, seed 0, random weights. A smoke-test model: it learns nothing.\n",
        encoding="utf-8",
    )


def ensure_tiny() -> Path:
    return build_once(TINY_NAME, build_tiny_into)
