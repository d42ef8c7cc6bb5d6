"""The data layer's value types: one internal conversation type, and problems as values."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from lorastudio.i18n import MESSAGES, t

Role = Literal["system", "user", "assistant"]
Severity = Literal["error", "warning"]


@dataclass
class Message:
    role: Role
    content: str


@dataclass
class Conversation:
    """system?, user, assistant, user, assistant … — what every input schema becomes."""

    messages: list[Message]
    row: int | None = None  # 1-based row in the source file (see PRODUCT.md for what a row is)
    rotation: tuple[int, int] | None = None
    """(k, n): an augmented row trained only in epochs e with e % n == k (a fresh variant each epoch);
    None: every epoch."""

    @property
    def system(self) -> str | None:
        return self.messages[0].content if self.messages and self.messages[0].role == "system" else None

    def to_dict(self) -> dict:
        return {"messages": [asdict(m) for m in self.messages]}

    @classmethod
    def from_messages(cls, messages: list[dict], row: int | None = None) -> Conversation:
        return cls([Message(m["role"], m["content"]) for m in messages], row=row)


class _Localized:
    """``localized(lang)`` for the issue types: their ``code`` + ``params`` rendered by lorastudio.i18n."""

    code: str
    params: dict
    message: str
    hint: str

    def localized(self, lang: str) -> tuple[str, str]:
        """(message, hint) in ``lang`` ("en"/"zh"); falls back to the stored English text."""
        if not self.code:
            return self.message, self.hint
        return t(self.code, lang, **self.params), t(self.code + ".hint", lang, **self.params)


@dataclass
class ValidationIssue(_Localized):
    """One problem with one row (or with the whole file when ``row`` is None).

    ``message``/``hint`` are English (the stable JSON/API text); ``code`` + ``params`` let a UI or
    the terminal re-render them in another language through ``lorastudio.i18n``. Severity "error"
    means the row is rejected (not in ``report.conversations``); "warning" means it is kept.
    """

    row: int | None
    severity: Severity
    kind: str
    field: str | None
    message: str
    hint: str
    code: str = ""
    params: dict = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        # Exactly PRODUCT.md's issue object: code/params are an internal rendering aid.
        return {"row": self.row, "severity": self.severity, "kind": self.kind, "field": self.field,
                "message": self.message, "hint": self.hint}


@dataclass
class DatasetIssue(_Localized):
    severity: Severity
    kind: str
    message: str
    hint: str
    code: str = ""
    params: dict = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        return {"severity": self.severity, "kind": self.kind, "message": self.message, "hint": self.hint}


@dataclass
class RejectedRow:
    row: int
    raw: object  # what the reader saw: a dict of fields, a list of cells, or a text line
    reasons: list[ValidationIssue] = field(default_factory=list)
    fields: dict | None = None  # the fields read from a text line/block (TXT), for write_rejected


class DataError(Exception):
    """The file cannot be used at all (unreadable, empty, no recognisable columns …).

    ``kind`` is a stable machine name (``unreadable``, ``empty_file``, ``unknown_columns`` …);
    ``str(error)`` is one English line; ``localized(lang)`` renders it in another language.
    """

    def __init__(self, message: str, kind: str = "unreadable", *, code: str = "", params: dict | None = None):
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.code = code or kind
        self.params = params or {}

    @classmethod
    def of(cls, code: str, kind: str | None = None, **params: object) -> DataError:
        return cls(t(code, "en", **params), kind or code.split(".")[0], code=code, params=params)

    def localized(self, lang: str) -> str:
        return t(self.code, lang, **self.params) if self.code in MESSAGES else self.message

    def to_dict(self) -> dict:
        return {"error": self.message, "kind": self.kind}
