"""The model card (README.md) written beside every adapter: base, data, settings, metrics, how to use it."""

from __future__ import annotations

from typing import Any

from lorastudio.train.config import TrainConfig


def model_card(cfg: TrainConfig, data: dict[str, Any], metrics: dict[str, Any]) -> str:
    tokens = data.get("tokens", {})

    def fmt(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = [
        "# LoRA adapter (LoRA Studio)", "",
        f"Base model: `{cfg.base}` (`{cfg.extra.get('resolved_base', '')}`). Task: {cfg.task}.", "",
        "## Data", "",
        f"- file: `{cfg.data or data.get('file')}`",
        f"- rows usable / rejected: {data.get('rows_ok', '?')} / {data.get('rows_rejected', 0)}",
        f"- training / validation conversations: {tokens.get('train_conversations', '?')} / "
        f"{tokens.get('validation_conversations', 0)}",
        f"- training tokens: {tokens.get('train_tokens', '?')} ({tokens.get('train_target_tokens', '?')} "
        f"answer tokens learned), longest {tokens.get('max_tokens', '?')}",
        f"- skipped as longer than max_length={cfg.max_length}: {len(tokens.get('skipped_too_long', []))}", "",
        "## Settings", "",
        f"- LoRA r={cfg.lora_r}, alpha={cfg.lora_alpha}, dropout={cfg.lora_dropout}, targets={cfg.target_modules}",
        f"- learning rate {cfg.learning_rate} ({cfg.lr_scheduler}, warmup {cfg.warmup_ratio}), "
        f"epochs {cfg.num_epochs}, max_steps {cfg.max_steps}, batch_tokens {cfg.batch_tokens}, "
        f"accumulation {cfg.gradient_accumulation}, seed {cfg.seed}",
        f"- device {metrics['device']}, dtype {metrics['dtype']}", "",
        "## Metrics", "",
        *(f"- {key}: {fmt(metrics[key])}" for key in ("steps", "epochs", "first_train_loss", "train_loss",
                                                      "valid_loss", "best_valid_loss", "elapsed_s",
                                                      "tokens_per_s", "cost")),
        "",
        "## Use", "",
        "```bash",
        f"lorastudio compare --base {cfg.base} --adapter {cfg.output_dir}",
        "```", "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM",
        f"base = AutoModelForCausalLM.from_pretrained({cfg.extra.get('resolved_base', cfg.base)!r})",
        f"model = PeftModel.from_pretrained(base, {str(cfg.output_dir)!r})",
        "```", "",
        "The full settings are in `train_config.yaml`; every step's loss is in `events.jsonl`.", "",
    ]
    return "\n".join(lines)
