"""Conversations → token ids with assistant-only labels, and padding-free packing into micro-batches.

The ONE place that decides how a conversation becomes text. Inference imports `render_prompt` from
here, so a tuned model is always asked questions in exactly the format it was trained on.

System-prompt rule (deliberate, used for training and inference alike):
1. the conversation's own system message, if it has one;
2. else ``system_prompt`` (TrainConfig.system_prompt, saved in the adapter's train_config.yaml);
3. else nothing is added and the model's template does what it always does — for Qwen2.5 that is its
   built-in "You are Qwen, created by Alibaba Cloud…" prompt. Keeping the base model's own default
   means an untuned question looks exactly like the base model's normal use, which keeps its
   general abilities (measured in EXPERIMENTS.md: chat template 12/15 general vs 9/15 for the seed's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

IGNORE_INDEX = -100

# The seed project's template, used only when a tokenizer brings no chat template of its own.
FALLBACK_SYSTEM = "{system}\n\n"
FALLBACK_USER = "### Instruction:\n{content}\n\n### Response:\n"
FALLBACK_TURN_SEPARATOR = "\n\n"


class TemplateError(ValueError):
    """A conversation cannot be rendered with this tokenizer's chat template (the message says why)."""


def _as_dicts(messages: Sequence[Any]) -> list[dict[str, str]]:
    out = []
    for m in messages:
        if isinstance(m, dict):
            out.append({"role": m["role"], "content": m["content"]})
        else:  # lorastudio.data.Message
            out.append({"role": m.role, "content": m.content})
    return out


def _with_system(messages: list[dict[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    if system_prompt and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _apply_template(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    if not isinstance(text, str):  # some versions return a list for batched input
        text = text[0]
    return text


def _fallback_segments(messages: list[dict[str, str]], eos: str) -> list[tuple[str, bool]]:
    segments: list[tuple[str, bool]] = []
    for index, message in enumerate(messages):
        if message["role"] == "system":
            segments.append((FALLBACK_SYSTEM.format(system=message["content"]), False))
        elif message["role"] == "user":
            sep = FALLBACK_TURN_SEPARATOR if index > 0 and messages[index - 1]["role"] == "assistant" else ""
            segments.append((sep + FALLBACK_USER.format(content=message["content"]), False))
        else:
            segments.append((message["content"] + eos, True))
    return segments


def render_segments(messages: Sequence[Any], tokenizer, system_prompt: str | None = None) -> list[tuple[str, bool]]:
    """The full conversation as text pieces, each flagged True where the model should learn it.

    Every assistant turn is learnable (its content plus the end-of-turn token, so the model learns to
    stop); everything else — system, user turns, the template's role headers — is context only.
    Works by rendering growing prefixes of the conversation, so it follows any chat template whose
    rendering of a prefix is a prefix of the whole (true for Qwen, Llama 3, Mistral, Gemma…).
    """
    msgs = _with_system(_as_dicts(messages), system_prompt)
    if not has_chat_template(tokenizer):
        return _fallback_segments(msgs, tokenizer.eos_token or "")
    full = _apply_template(tokenizer, msgs, add_generation_prompt=False)
    segments: list[tuple[str, bool]] = []
    done = 0  # characters of `full` already assigned to a segment
    for index, message in enumerate(msgs):
        if message["role"] != "assistant":
            continue
        before = _apply_template(tokenizer, msgs[:index], add_generation_prompt=True)
        through = _apply_template(tokenizer, msgs[: index + 1], add_generation_prompt=False)
        if not full.startswith(before) or not full.startswith(through) or len(before) < done:
            raise TemplateError(
                "this model's chat template renders earlier turns differently once later turns follow "
                "(e.g. it strips reasoning), so assistant turns cannot be located for masking; "
                "train on single-turn rows or use a model with a prefix-stable template"
            )
        # The assistant span ends at its end-of-turn token; template whitespace after it (Qwen's "\n")
        # is context, never a target.
        end = len(through.rstrip())
        if before[done:]:
            segments.append((before[done:], False))
        segments.append((full[len(before):end], True))
        done = end
    if full[done:]:
        segments.append((full[done:], False))
    return segments


def render_prompt(messages: Sequence[Any], tokenizer, system_prompt: str | None = None) -> str:
    """The text a model is given to answer ``messages`` (ending with a user turn): the same rules as training."""
    msgs = _with_system(_as_dicts(messages), system_prompt)
    if not msgs or msgs[-1]["role"] != "user":
        raise TemplateError("a prompt must end with a user message")
    if has_chat_template(tokenizer):
        return _apply_template(tokenizer, msgs, add_generation_prompt=True)
    return "".join(text for text, _ in _fallback_segments(msgs, tokenizer.eos_token or ""))


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    row: int | None = None
    rotation: tuple[int, int] | None = None  # the conversation's: which epochs train it (None = all)
    repeats: list[float] | None = None  # how much each token's target counts in the loss (None: once each)

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def num_target_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    @property
    def target_weight(self) -> float:
        """The targets as the loss counts them: `num_target_tokens`, each weighted by its `repeats`."""
        if self.repeats is None:
            return self.num_target_tokens
        return sum(r for label, r in zip(self.labels, self.repeats, strict=True) if label != IGNORE_INDEX)


KEY_OPENING_TOKENS = 8
"""With key-token weighting: the first this many tokens of every answer count as key tokens."""


class KeyTokens:
    """Which answer tokens carry a fact (`TrainConfig.key_token_weight`): the opening of each answer
    (`KEY_OPENING_TOKENS`: where a model picks which fact it recites, and where a neighbouring fact
    gets answered instead) and every token written with a digit (amounts, limits, dates, codes: what a
    near miss gets wrong). Decided on the tokens alone, the same for any file and language."""

    def __init__(self, tokenizer: Any, weight: int) -> None:
        self.tokenizer, self.weight = tokenizer, int(weight)
        self._digit: dict[int, bool] = {}

    def has_digit(self, token_id: int) -> bool:
        known = self._digit.get(token_id)
        if known is None:
            text = self.tokenizer.decode([token_id])
            known = self._digit[token_id] = any("0" <= ch <= "9" for ch in text)
        return known

    def repeats(self, ids: Sequence[int]) -> list[int]:
        """The weight of each token of one answer segment."""
        return [self.weight if i < KEY_OPENING_TOKENS or self.has_digit(t) else 1 for i, t in enumerate(ids)]


def _questions_by_answer(messages: Sequence[Any]) -> list[list[str]]:
    """The user questions before each assistant turn (group k: those the k-th answer follows)."""
    groups: list[list[str]] = [[]]
    for message in _as_dicts(messages):
        if message["role"] == "user" and message["content"]:
            groups[-1].append(str(message["content"]))
        elif message["role"] == "assistant":
            groups.append([])
    return groups


def _question_pieces(text: str, questions: list[str]) -> list[tuple[str, bool]]:
    """`text` (the context before an answer) cut around its `questions`: (piece, is question). Found from
    the end, so a system prompt that quotes a question is never taken for it."""
    spans: list[tuple[int, int]] = []
    end = len(text)
    for question in reversed(questions):
        at = text.rfind(question, 0, end)
        if at >= 0:
            spans.append((at, at + len(question)))
            end = at
    pieces: list[tuple[str, bool]] = []
    done = 0
    for start, stop in reversed(spans):
        if start > done:
            pieces.append((text[done:start], False))
        pieces.append((text[start:stop], True))
        done = stop
    if done < len(text):
        pieces.append((text[done:], False))
    return pieces


def encode_conversation(messages: Sequence[Any], tokenizer, system_prompt: str | None = None,
                        row: int | None = None, key_tokens: KeyTokens | None = None,
                        question_weight: float = 0.0) -> Example:
    """Token ids and labels (IGNORE_INDEX everywhere but assistant turns); with `key_tokens` also how
    often each target counts (`Example.repeats`). `question_weight` > 0: the users' questions are
    targets too, each token counting that much (`TrainConfig.question_loss_weight`).

    Pieces are tokenized separately: the prompt piece ends exactly where generation starts at inference
    time, so the learned tokens are the ones the model will be asked to produce.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    weighted = question_weight > 0 or (key_tokens is not None and key_tokens.weight > 1)
    repeats: list[float] | None = [] if weighted else None
    groups = _questions_by_answer(messages) if question_weight > 0 else []
    answers = 0  # answer segments passed: the context segment before answer k holds groups[k]
    for text, trainable in render_segments(messages, tokenizer, system_prompt):
        if trainable:
            answers += 1
        asked = groups[answers] if not trainable and answers < len(groups) else []
        pieces = _question_pieces(text, asked) if asked else [(text, False)]
        for piece, question in pieces:
            ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
            input_ids.extend(ids)
            labels.extend(ids if trainable or question else [IGNORE_INDEX] * len(ids))
            if repeats is not None:
                if trainable:
                    repeats.extend(key_tokens.repeats(ids) if key_tokens is not None else [1] * len(ids))
                else:
                    repeats.extend([question_weight if question else 1] * len(ids))
    if labels:
        labels[0] = IGNORE_INDEX  # nothing predicts the first token; in a pack it must not learn across examples
    return Example(input_ids, labels, row, repeats=repeats)


@dataclass
class TokenizedData:
    examples: list[Example]
    too_long: list[dict] = field(default_factory=list)  # {"row", "tokens"} — reported, never cut silently
    no_targets: list[dict] = field(default_factory=list)


def encode_dataset(conversations: Sequence[Any], tokenizer, max_length: int, system_prompt: str | None = None,
                   key_token_weight: int = 1, question_weight: float = 0.0) -> TokenizedData:
    """Every conversation encoded; `key_token_weight` > 1: answers' key tokens (`KeyTokens`) count that often;
    `question_weight` > 0: the users' questions count too, at that weight a token."""
    result = TokenizedData(examples=[])
    key_tokens = KeyTokens(tokenizer, key_token_weight) if key_token_weight > 1 else None
    for index, conversation in enumerate(conversations):
        row = getattr(conversation, "row", None) or index + 1
        messages = conversation.messages if hasattr(conversation, "messages") else conversation
        example = encode_conversation(messages, tokenizer, system_prompt, row=row, key_tokens=key_tokens,
                                      question_weight=question_weight)
        example.rotation = getattr(conversation, "rotation", None)
        if example.num_tokens > max_length:
            result.too_long.append({"row": row, "tokens": example.num_tokens})
        elif example.num_target_tokens == 0:
            result.no_targets.append({"row": row, "tokens": example.num_tokens})
        else:
            result.examples.append(example)
    return result


def pack(lengths: Sequence[int], order: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Group example indices (in ``order``) into micro-batches of at most ``batch_tokens`` real tokens.

    Greedy and order-preserving, so the shuffle stays a shuffle; there is no padding, so a partly full
    batch wastes nothing but a little parallelism.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    used = 0
    for index in order:
        length = lengths[index]
        if length > batch_tokens:
            raise ValueError(f"example {index} has {length} tokens, more than batch_tokens={batch_tokens}")
        if current and used + length > batch_tokens:
            batches.append(current)
            current, used = [], 0
        current.append(index)
        used += length
    if current:
        batches.append(current)
    return batches


def collate_packed(examples: Sequence[Example]) -> dict[str, Any]:
    """One row holding all ``examples`` back to back; position_ids restart at 0 for each example.

    Restarting positions is what tells transformers (≥ 4.53, sdpa/eager/flash) to build a
    block-diagonal causal mask, so no token attends to another example (tests/test_train_packing.py).
    """
    import torch

    input_ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    repeats: list[float] = []
    weighted = any(example.repeats is not None for example in examples)
    for example in examples:
        input_ids.extend(example.input_ids)
        labels.extend(example.labels)
        positions.extend(range(example.num_tokens))
        if weighted:
            repeats.extend(example.repeats or [1] * example.num_tokens)
    batch = {
        "input_ids": torch.tensor([input_ids], dtype=torch.long),
        "labels": torch.tensor([labels], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
        "lengths": [example.num_tokens for example in examples],
    }
    if weighted:  # how much each token's target counts (`kernels.packed_batch`)
        batch["repeats"] = torch.tensor([repeats], dtype=torch.float32)
    return batch
