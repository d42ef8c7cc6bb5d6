"""Content checks that need no schema knowledge: mojibake, length, emptiness keys."""

from __future__ import annotations

import math
import re
import unicodedata

# CJK ideographs, kana, hangul, CJK/full-width punctuation: roughly one token each or a bit less.
_CJK = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef]")
_DIGIT = re.compile(r"[0-9]")
_FFFD_RUN = re.compile("\ufffd+")
PER_MESSAGE_OVERHEAD = 5  # chat-template tokens around each message (<|im_start|>role\n … <|im_end|>\n)


def estimate_tokens(text: str) -> int:
    """Token estimate without a tokenizer, calibrated on the default model's (Qwen2.5) tokenizer.

    Qwen-family tokenizers spend about 0.7–0.8 tokens per Chinese character, one token per digit
    (digits are split), and ~0.28 tokens per other ASCII character (3–4 characters per English
    token). Measured (docs/DATA.md): 1.09× the real count on the Yunzhan Q&A, 0.97× on a
    3430-character fact sheet, 1.26× on English prose. Never more than one token per character,
    which lets ``validate`` skip rows that are short enough without estimating at all.
    """
    if not text:
        return 0
    cjk = len(_CJK.findall(text))
    digits = len(_DIGIT.findall(text))
    ascii_chars = len(text.encode("ascii", "ignore"))
    other = len(text) - ascii_chars - cjk
    return math.ceil(0.8 * cjk + digits + 0.3 * (ascii_chars - digits) + 1.0 * max(other, 0))


def estimate_conversation_tokens(texts: list[str]) -> int:
    return sum(estimate_tokens(t) + PER_MESSAGE_OVERHEAD for t in texts)


def count_tokens(tokenizer: object, messages: list[dict]) -> int | None:
    """Exact count with the model's tokenizer (chat template when it has one); None if it fails."""
    try:
        if getattr(tokenizer, "chat_template", None):
            ids = tokenizer.apply_chat_template(messages, tokenize=True)  # type: ignore[attr-defined]
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            if hasattr(ids, "shape"):
                return int(ids.shape[-1])
            if ids and isinstance(ids[0], list):
                ids = ids[0]
            return len(ids)
        encode = tokenizer.encode  # type: ignore[attr-defined]
        return sum(len(encode(m["content"], add_special_tokens=False)) + PER_MESSAGE_OVERHEAD for m in messages)
    except Exception:
        # A tokenizer that cannot handle this text must not make validation crash; the
        # caller falls back to the character estimate.
        return None


def dedup_key(text: str) -> str:
    """Same text for duplicate detection: NFKC (full-width = half-width), whitespace, case."""
    return " ".join(unicodedata.normalize("NFKC", text).split()).casefold()


# --- mojibake -----------------------------------------------------------------------------------

def _non_ascii(text: str) -> int:
    return len(text) - len(text.encode("ascii", "ignore"))  # C speed; this runs on every field


def _encode_cp1252(text: str) -> bytes | None:
    try:
        return text.encode("cp1252")
    except UnicodeEncodeError as exc:
        if ord(text[exc.start]) >= 256:
            return None  # CJK and most other scripts: cannot be cp1252 garble, decided at once
    out = bytearray()
    for ch in text:
        try:
            out += ch.encode("cp1252")
        except UnicodeEncodeError:
            # latin-1 decoders pass the five bytes cp1252 leaves undefined through as C1 controls.
            if ord(ch) < 256:
                out.append(ord(ch))
            else:
                return None
    return bytes(out)


def _encode_gb(text: str) -> bytes | None:
    try:
        return text.encode("gb18030")
    except UnicodeEncodeError:
        return None


_CODECS = (("Windows-1252/Latin-1", _encode_cp1252), ("GBK", _encode_gb))


def repair_mojibake(text: str) -> tuple[str, str] | None:
    """(codec it was mis-read as, repaired text) when ``text`` is UTF-8 read with a wrong codec.

    Re-encode with the suspected codec and decode as UTF-8. Accept only when that is clearly
    better: nearly everything decodes (U+FFFD in the garble marks bytes that were already lost)
    and multi-byte sequences collapse into fewer characters. Normal Chinese, English or emoji
    text re-encodes to invalid UTF-8 and is left alone.
    """
    if text.isascii():
        return None
    for label, encode in _CODECS:
        parts = [encode(p) for p in text.split("\ufffd")]
        if any(p is None for p in parts):
            continue
        repaired = b"\xff".join(parts).decode("utf-8", errors="replace")  # type: ignore[arg-type]
        if repaired == text:
            continue
        # Each byte lost in the original garble (shown there as U+FFFD) damages one spot of the
        # repair; damage beyond that means the bytes were never UTF-8 to begin with.
        damaged = len(_FFFD_RUN.findall(repaired))
        new_damage = damaged - text.count("\ufffd")
        good = _non_ascii(repaired) - repaired.count("\ufffd")
        before = _non_ascii(text)
        if good >= 2 and good >= 2 * damaged and new_damage <= max(1, good // 10) and good + damaged < before:
            return label, _FFFD_RUN.sub("\ufffd", repaired)
    return None
