"""Stopping a run: SIGINT/SIGTERM or a `threading.Event` ask for a graceful stop (checkpoint, then
`TrainingInterrupted`); a second Ctrl-C means "now"."""

from __future__ import annotations

import contextlib
import signal
import threading
import warnings
from collections.abc import Iterator
from typing import Any


class TrainingInterrupted(Exception):
    """Stopped by SIGINT/SIGTERM (or a stop event) after saving ``checkpoint``; the CLI exits 130."""

    def __init__(self, step: int, checkpoint: str | None):
        super().__init__(f"training interrupted at step {step}; checkpoint saved to {checkpoint}")
        self.step = step
        self.checkpoint = checkpoint


class StepAborted(Exception):
    """Raised inside a step (by a decoder-layer hook) when a stop was requested."""


class StopFlag:
    """Set by SIGINT/SIGTERM or an external threading.Event; checked between (and inside) steps."""

    def __init__(self, external: threading.Event | None):
        self.external = external
        self.signal: int | None = None
        self.peer = False  # several ranks: another rank was asked to stop (known at the step's all-reduce)

    @property
    def requested(self) -> bool:
        return self.signal is not None or self.peer or bool(self.external and self.external.is_set())

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set from the main thread; the stop event still works
            return

        def handler(signum, _frame):
            # Only a second Ctrl-C is a person insisting. Repeated SIGTERMs come from process managers
            # (a dying server's group, a launcher forwarding its own): the first one already asked for
            # the graceful stop, and the checkpoint it is writing must not be abandoned.
            if self.signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            if self.signal is None:
                self.signal = signum

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


def install_abort_hooks(model: Any, stop: StopFlag) -> None:
    """On CPU a step can take minutes: let a stop request cut into it at the next decoder layer (forward
    or backward, raising StepAborted) instead of waiting for the step to finish. Not for CUDA, where steps
    are short and module backward hooks would get in the way of compiled/fused kernels, nor for several
    ranks, which stop together at a step's all-reduce."""
    layers = getattr(model.get_base_model().get_decoder(), "layers", None)
    if layers is None:
        return
    # The first layer's input needs no gradient, so torch notes that its hook sees outputs only: exactly
    # what we want here, and noise in a user's terminal.
    warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)

    def check(*_args) -> None:
        if stop.requested:
            raise StepAborted

    for layer in layers:
        layer.register_forward_pre_hook(check)
        layer.register_full_backward_pre_hook(check)
