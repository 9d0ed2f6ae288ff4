"""TensorFlow's and LiteRT's C++ chatter, kept off the progress lines.

The TFLite converter prints `fully_quantize: 0, inference_type: 6, ...` and absl `I0000 ...`
lines, and LiteRT prints `INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`, straight
to file descriptor 2 from C++: no Python log level reaches them, and LiteRT ignores
TF_CPP_MIN_LOG_LEVEL (tensorflow/tensorflow#58050, google-ai-edge/LiteRT#7420). So while
native code runs, fd 2 is a pipe read by a thread that drops those known lines and passes
every other line on at once: real warnings and crash messages still reach the terminal.
Python's own stderr writes (progress) bypass the pipe.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CHATTER = re.compile(
    r"INFO: "  # LiteRT / TFLite minimal logger at INFO severity
    r"|fully_quantize: \d"  # the MLIR quantizer's settings dump
    r"|I\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] "  # absl INFO lines (seconds unbounded before absl init)
    r"|W\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] Ignored (output_format|drop_control_dependency)\."
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
)
TF_LOG_DEFAULTS = {"TF_CPP_MIN_LOG_LEVEL": "2"}  # TensorFlow's C++ warnings and errors only


def quiet_tensorflow() -> None:
    """Call before TensorFlow is first imported (its C++ logging reads the level once); a user's setting wins.

    Then imports it with the filter on: on CPUs with AVX-512 TensorFlow announces "oneDNN custom
    operations are on" through absl before logging is initialised, whatever the level says."""
    for key, value in TF_LOG_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if "tensorflow" not in sys.modules:
        with filtered_native_stderr():
            import tensorflow  # noqa: F401


def is_chatter(line: str) -> bool:
    return CHATTER.match(line) is not None


def _forward(read_fd: int, target_fd: int) -> None:
    """Copy lines from the pipe to the real stderr, without the chatter."""
    with os.fdopen(read_fd, "rb") as pipe:
        for line in pipe:
            if not is_chatter(line.decode("utf-8", "replace")):
                try:
                    os.write(target_fd, line)
                except OSError:
                    break
    os.close(target_fd)


def _python_stderr_is_fd2() -> bool:
    try:
        return sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # replaced by a capture object (pytest, notebooks)
        return False


_LOCK = threading.Lock()
_ACTIVE: dict[str, Any] = {"depth": 0, "restore": None}


@contextmanager
def filtered_native_stderr() -> Iterator[None]:
    """While the block runs, drop known TensorFlow / LiteRT chatter written to fd 2.

    Re-entrant and thread-safe: the first block to enter installs the filter, the last to leave removes it.
    """
    with _LOCK:
        if _ACTIVE["depth"] == 0:
            _ACTIVE["restore"] = _install()
        _ACTIVE["depth"] += 1
    try:
        yield
    finally:
        with _LOCK:
            _ACTIVE["depth"] -= 1
            if _ACTIVE["depth"] == 0:
                _ACTIVE["restore"]()


def _install() -> Any:
    """Point fd 2 at a filtering pipe; returns the function that undoes it."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    saved = os.dup(2)
    python_stderr: Any = None
    if _python_stderr_is_fd2():  # Python's writes go straight to the real stderr, unfiltered and unbuffered
        python_stderr = sys.stderr
        sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1, encoding=python_stderr.encoding,
                               errors=python_stderr.errors)
    read_fd, write_fd = os.pipe()
    forwarder = threading.Thread(target=_forward, args=(read_fd, os.dup(saved)), daemon=True,
                                 name="native-stderr-filter")
    forwarder.start()
    os.dup2(write_fd, 2)
    os.close(write_fd)

    def restore() -> None:
        os.dup2(saved, 2)  # closes the pipe's last write end: the forwarder reads to the end and stops
        os.close(saved)
        forwarder.join(timeout=10)
        if python_stderr is not None:
            sys.stderr.close()
            sys.stderr = python_stderr

    return restore
