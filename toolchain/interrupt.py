"""Ctrl-C that nothing can swallow.

TensorFlow runs Python code in `__del__` methods during a conversion; a KeyboardInterrupt that
lands there is printed as "Exception ignored" and lost, and the run went on to exit 0. The
SIGINT handler here records the interrupt before raising it, and `raise_if_interrupted` (called
before every output file is put in place) raises it again, so a lost interrupt still stops
the run at its next write with nothing half-written.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

_STATE = {"interrupted": False}


def _on_sigint(signum: int, frame: object) -> None:
    _STATE["interrupted"] = True
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigint_recorded() -> Iterator[None]:
    """Record Ctrl-C while the block runs (main thread only: signals are delivered there)."""
    _STATE["interrupted"] = False
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _on_sigint)
    previous_hook = sys.unraisablehook

    def quiet_swallowed_interrupt(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and _STATE["interrupted"]:
            return  # recorded: raised again at the next write, not printed as a traceback
        previous_hook(unraisable)

    sys.unraisablehook = quiet_swallowed_interrupt
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = previous_hook


def interrupted() -> bool:
    return _STATE["interrupted"]


def raise_if_interrupted() -> None:
    """Raise the recorded Ctrl-C again, in case a `__del__` swallowed the first one."""
    if _STATE["interrupted"]:
        raise KeyboardInterrupt
