"""The pipeline's one progress display for units on a cluster: queued / running / done per stage, with the node."""

from __future__ import annotations

import io
import re

from rich.console import Console

from toolchain.pipeline import StageLog


def test_the_progress_line_counts_queued_running_and_done_units(monkeypatch):
    screen = io.StringIO()
    log = StageLog(Console(file=screen, width=300, force_terminal=True))
    updates: list[str] = []
    with log.stage("export"):
        original = log._status.update
        monkeypatch.setattr(log._status, "update", lambda text: (updates.append(text), original(text)))
        for unit in ("tflite fp32", "onnx fp32"):
            log.unit_event({"stage": "export", "unit": unit, "status": "queued"})
        log.unit_event({"stage": "export", "unit": "onnx fp32", "status": "running", "node": "127.0.0.1/ab"})
        log.unit_event({"stage": "export", "unit": "onnx fp32", "status": "done", "node": "127.0.0.1/ab"})
    assert updates[-2] == "[bold]export[/] … 1 queued, 1 running, 0 done · onnx fp32 running on 127.0.0.1/ab"
    assert updates[-1] == "[bold]export[/] … 1 queued, 0 running, 1 done · onnx fp32 done on 127.0.0.1/ab"
    assert "· onnx fp32 (on 127.0.0.1/ab)" in re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", screen.getvalue())
