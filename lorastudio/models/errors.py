from __future__ import annotations


class ModelError(RuntimeError):
    """A model cannot be found, assembled or loaded; the message says which one and what to do."""
