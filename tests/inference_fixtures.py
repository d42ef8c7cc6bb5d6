"""Tiny Qwen2 models, tokenizers and LoRA adapters for the inference/eval/export tests.

Everything is built from a config in a second or two, never downloaded. The tokenizer is a small
byte-level BPE trained here on mixed Chinese/English text with Qwen's ChatML special tokens, so
multi-byte characters, chat templates and GGUF vocab export are all exercised. Adapters use
`init_lora_weights=False` so LoRA B is random (non-zero) and an adapter really changes the outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (loop.first and message['role'] == 'system') %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_CORPUS = [
    "工单超过48小时未处理，系统会自动升级到二线护航组。",
    "满意度评分≥3分才能关单，低于3分自动重开并转质检组复核。",
    "栈台当前版本为V5.3，代号青鸾。观星3.2天枢，型号YZ-LD2406，售价299元。",
    "The quick brown fox jumps over the lazy dog. Hello world, how are you today?",
    "You are a helpful assistant. Answer the question in one sentence.",
    "请问退货需要多久？客服电话分机6021，工作日9点到18点。",
    "中文字符与 English words mixed 123 456 7890 !?,.;:",
]


def build_tokenizer(out_dir: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    )
    tok.train_from_iterator(_CORPUS * 3, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_model(out_dir: Path, *, seed: int = 0, tie: bool = True) -> Path:
    """A 2-layer, hidden-64 Qwen2 with its tokenizer, saved as a normal HF directory."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from lorastudio.models.tiny import TINY_SHAPE

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out_dir)
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        **TINY_SHAPE,
        max_position_embeddings=512,
        tie_word_embeddings=tie,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    # Larger random weights than the default init make greedy outputs vary with the prompt and
    # with the adapter, which is what the switching tests need to see.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    model.generation_config = GenerationConfig(
        eos_token_id=[config.eos_token_id, tokenizer.pad_token_id], pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(out_dir)
    return out_dir


def build_adapter(base_dir: Path, out_dir: Path, *, seed: int, r: int = 4, scale: float = 1.0) -> Path:
    """A PEFT LoRA adapter with random A *and* B, saved like `lorastudio train` saves one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(base, cfg)
    if scale != 1.0:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.mul_(scale)
    model.save_pretrained(out_dir)
    # Point base_model_name_or_path at the directory, as the trainer does.
    cfg_path = Path(out_dir) / "adapter_config.json"
    data = json.loads(cfg_path.read_text())
    data["base_model_name_or_path"] = str(base_dir)
    cfg_path.write_text(json.dumps(data, indent=2))
    return Path(out_dir)
