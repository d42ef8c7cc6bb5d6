"""The data layer's value types: one internal conversation type, and problems as values."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

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

    @property
    def system(self) -> str | None:
        return self.messages[0].content if self.messages and self.messages[0].role == "system" else None

    def to_dict(self) -> dict:
        return {"messages": [asdict(m) for m in self.messages]}

    @classmethod
    def from_messages(cls, messages: list[dict], row: int | None = None) -> Conversation:
        return cls([Message(m["role"], m["content"]) for m in messages], row=row)


@dataclass
class ValidationIssue:
    """One problem with one row (or with the whole file when ``row`` is None)."""

    row: int | None
    severity: Severity
    kind: str
    field: str | None
    message: str
    hint: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DatasetIssue:
    severity: Severity
    kind: str
    message: str
    hint: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RejectedRow:
    row: int
    raw: object  # what the reader saw: a dict of fields, a list of cells, or a text line
    reasons: list[ValidationIssue] = field(default_factory=list)
