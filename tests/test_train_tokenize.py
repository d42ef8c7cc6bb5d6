"""Chat-template rendering, assistant-only labels (multi-turn too), the fallback template, packing."""

from __future__ import annotations

import pytest

from lorastudio.data import Conversation, Message
from lorastudio.train.tokenize import (
    IGNORE_INDEX,
    TemplateError,
    collate_packed,
    encode_conversation,
    encode_dataset,
    pack,
    render_prompt,
    render_segments,
)


@pytest.fixture(scope="module")
def tokenizer(tiny_random_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_random_dir)


MULTI = [
    {"role": "user", "content": "工单超过多久会升级？"},
    {"role": "assistant", "content": "48小时。"},
    {"role": "user", "content": "升级给谁？"},
    {"role": "assistant", "content": "二线护航组。"},
]


def _learned_text(tokenizer, example) -> list[str]:
    """Decoded runs of consecutive target tokens."""
    runs, current = [], []
    for token, label in zip(example.input_ids, example.labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def test_every_assistant_turn_and_only_those_are_learned(tokenizer):
    example = encode_conversation(MULTI, tokenizer)
    assert _learned_text(tokenizer, example) == ["48小时。<|im_end|>", "二线护航组。<|im_end|>"]
    # The whole text is exactly the model's own chat template rendering (no extra tokens).
    full = tokenizer.apply_chat_template(MULTI, tokenize=False)
    assert tokenizer.decode(example.input_ids) == full


def test_prompt_at_inference_is_the_training_prefix(tokenizer):
    example = encode_conversation(MULTI[:2], tokenizer)
    prompt_ids = tokenizer(render_prompt(MULTI[:1], tokenizer), add_special_tokens=False)["input_ids"]
    first_target = next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)
    assert example.input_ids[:first_target] == prompt_ids


def test_system_prompt_rule(tokenizer):
    # No system anywhere: the template's own default (Qwen's) is kept, at training and inference alike.
    assert "You are Qwen" in render_prompt(MULTI[:1], tokenizer)
    # A configured system prompt replaces it; a row's own system message wins over the configured one.
    assert "Be brief" in render_prompt(MULTI[:1], tokenizer, system_prompt="Be brief")
    own = [{"role": "system", "content": "Row system"}, *MULTI[:2]]
    text = "".join(t for t, _ in render_segments(own, tokenizer, system_prompt="Be brief"))
    assert "Row system" in text and "Be brief" not in text


def test_fallback_template_when_tokenizer_has_none(tokenizer):
    import copy

    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    example = encode_conversation(MULTI, plain)
    assert _learned_text(plain, example) == ["48小时。<|im_end|>", "二线护航组。<|im_end|>"]
    prompt = render_prompt(MULTI[:1], plain)
    assert prompt == "### Instruction:\n工单超过多久会升级？\n\n### Response:\n"


def test_prefix_unstable_template_is_refused_clearly(tokenizer):
    import copy

    odd = copy.deepcopy(tokenizer)
    # A template that renders the last assistant turn differently from earlier ones (like reasoning
    # models that strip thoughts of past turns).
    odd.chat_template = ("{% for m in messages %}{% if loop.last and m['role'] == 'assistant' %}[LAST]{% endif %}"
                         "<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    with pytest.raises(TemplateError, match="prefix"):
        encode_conversation(MULTI, odd)


def test_encode_dataset_reports_too_long_rows_never_cuts(tokenizer):
    convs = [Conversation([Message("user", "短"), Message("assistant", "好")], row=1),
             Conversation([Message("user", "长" * 400), Message("assistant", "好")], row=7)]
    data = encode_dataset(convs, tokenizer, max_length=64)
    assert [e.row for e in data.examples] == [1]
    assert data.too_long and data.too_long[0]["row"] == 7 and data.too_long[0]["tokens"] > 64


def test_pack_respects_budget_and_order():
    lengths = [5, 7, 3, 9, 2, 10]
    batches = pack(lengths, [0, 1, 2, 3, 4, 5], 12)
    assert batches == [[0, 1], [2, 3], [4, 5]]
    assert all(sum(lengths[i] for i in b) <= 12 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(6))
    with pytest.raises(ValueError):
        pack([20], [0], 12)


def test_collate_restarts_positions_and_masks_example_boundaries(tokenizer):
    a = encode_conversation(MULTI[:2], tokenizer)
    b = encode_conversation(MULTI[2:], tokenizer)
    batch = collate_packed([a, b])
    pos = batch["position_ids"][0].tolist()
    assert pos[: a.num_tokens] == list(range(a.num_tokens))
    assert pos[a.num_tokens:] == list(range(b.num_tokens))
    # The first token of b is never a target of a's last position.
    assert batch["labels"][0, a.num_tokens].item() == IGNORE_INDEX
