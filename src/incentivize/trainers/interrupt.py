"""Ctrl-C during training: finish the current step, save a checkpoint, stop. A second Ctrl-C stops at once."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped at a step boundary after Ctrl-C; the message says where the checkpoint is."""

    def __init__(self, message: str, step: int = 0, checkpoint: Path | None = None) -> None:
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint


class StopRequest:
    """While entered (in the main thread), the first SIGINT only sets `requested` and calls `on_request`.

    The loop checks `requested` between steps. A second SIGINT raises KeyboardInterrupt as usual.
    In another thread, or when SIGINT's handler was not set from Python, it changes nothing.
    """

    def __init__(self, on_request: Callable[[], None] = lambda: None) -> None:
        self.requested = False
        self._on_request = on_request
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            if self._previous is not None:
                signal.signal(signal.SIGINT, self._handle)
                self._installed = True
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self._on_request()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False
