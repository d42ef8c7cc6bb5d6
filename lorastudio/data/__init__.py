"""The data layer: any Q&A file a business has → clean Conversations plus a report of every problem.

No torch and no web imports here (see docs/ARCHITECTURE.md).
"""

from lorastudio.data.checks import estimate_tokens, repair_mojibake
from lorastudio.data.readers import read_table
from lorastudio.data.split import split_train_val
from lorastudio.data.types import (
    Conversation,
    DataError,
    DatasetIssue,
    Message,
    RejectedRow,
    ValidationIssue,
)
from lorastudio.data.validate import ValidationReport, validate

__all__ = [
    "Conversation",
    "DataError",
    "DatasetIssue",
    "Message",
    "RejectedRow",
    "ValidationIssue",
    "ValidationReport",
    "estimate_tokens",
    "read_table",
    "repair_mojibake",
    "split_train_val",
    "validate",
]
