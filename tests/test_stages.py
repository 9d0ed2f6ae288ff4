"""Stages as objects in one generic loop: a toy stage is one class and one registration line."""

from __future__ import annotations

import json

import pytest

from toolchain import steps
from toolchain.cache import file_digest
from toolchain.config import parse_config
from toolchain.errors import InputError, TargetError
from toolchain.executor import InProcessExecutor
from toolchain.pipeline import run_pipeline
from toolchain.steps import Done, RunState, Stage, Unit


class ToyStage(Stage):
    """Counts each artifact's bytes; cached by the artifact's content."""

    name = "toy"
    only = "toy"
    calls: list[str] = []

    def units(self, run: RunState) -> list[Unit]:
        return [Unit(a.path.name, key=run.context.cache.key("toy", artifact=file_digest(a.path)), spec=a.path,
                     what=a.path.name) for a in run.artifacts]

    def run_unit(self, run: RunState, unit: Unit) -> dict:
        self.calls.append(unit.label)
        return {"bytes": unit.spec.stat().st_size}

    def finish(self, run: RunState, done: list[Done]) -> None:
        run.documents["toy"] = {d.unit.label: d.result for d in done}


@pytest.fixture
def toy_stage(monkeypatch):
    """The one registration line: the toy goes right after export."""
    stage = ToyStage()
    ToyStage.calls = []
    index = next(i for i, s in enumerate(steps.STAGES) if s.name == "export") + 1
    monkeypatch.setattr(steps, "STAGES", [*steps.STAGES[:index], stage, *steps.STAGES[index:]])
    return stage


def tiny_config(model_file, out):
    raw = {"model": {"path": str(model_file), "name": "cnn"}, "output": {"dir": str(out)},
           "export": {"formats": ["tflite"]}, "verify": {"enabled": False}, "bench": {"enabled": False},
           "report": {"enabled": False}}
    return parse_config(raw), raw


def test_a_toy_stage_runs_in_the_loop_with_cache_and_only(toy_stage, small_cnn_file, tmp_path):
    config, raw = tiny_config(small_cnn_file, tmp_path / "run")
    first = run_pipeline(config, raw, quiet=True)
    assert ToyStage.calls == ["cnn.fp32.tflite"]
    names = [s["stage"] for s in first.manifest["stages"]]
    assert names.index("export") < names.index("toy") < names.index("budgets")
    # --only toy: export comes from the cache, the toy's own unit is cached too (its input did not change)
    again = run_pipeline(config, raw, quiet=True, only="toy")
    assert ToyStage.calls == ["cnn.fp32.tflite"]
    assert next(s for s in again.manifest["stages"] if s["stage"] == "toy")["cached"] is True
    run_pipeline(config, raw, quiet=True, only="toy", force=True)
    assert ToyStage.calls == ["cnn.fp32.tflite"] * 2  # --force re-runs the stage --only names
    with pytest.raises(InputError, match=r"--only 'tyo' is not a stage \(did you mean 'toy'\?\); "
                                         r"choose one of export, toy, verify, bench, report"):
        run_pipeline(config, raw, quiet=True, only="tyo")


def test_only_needs_every_earlier_cached_unit_before_writing(toy_stage, small_cnn_file, tmp_path):
    config, raw = tiny_config(small_cnn_file, tmp_path / "run")
    with pytest.raises(InputError, match="--only verify needs the export result for cnn.fp32.tflite"):
        run_pipeline(config, raw, quiet=True, only="verify")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


class CountingExecutor(InProcessExecutor):
    """An executor of our own: the loop hands it every unit that is not in the cache."""

    def __init__(self):
        self.labels = []

    def run(self, units, work, on_done):
        self.labels += [item.unit.label for item in units]
        super().run(units, work, on_done)


def test_log_json_names_the_toy_stage_and_units_go_through_the_executor(toy_stage, small_cnn_file, tmp_path,
                                                                         capsys):
    config, raw = tiny_config(small_cnn_file, tmp_path / "run")
    executor = CountingExecutor()
    run_pipeline(config, raw, log_json=True, executor=executor)
    assert executor.labels == ["tflite fp32", "cnn.fp32.tflite", "", "unmeasured targets"]  # export .. estimate
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert {"stage": "toy", "detail": "", "status": "done"}.items() <= next(
        e for e in events if e["stage"] == "toy" and e["status"] == "done").items()


def test_in_process_executor_runs_lanes_in_parallel_and_reports_every_result():
    class Item:
        def __init__(self, lane, value):
            self.lane, self.value = lane, value

    done = []
    items = [Item("a", 1), Item("b", 2), Item("a", 3)]
    InProcessExecutor().run(items, lambda item: item.value * 10, lambda item, result: done.append((item.lane, result)))
    assert sorted(done) == [("a", 10), ("a", 30), ("b", 20)]
    assert [r for lane, r in done if lane == "a"] == [10, 30]  # one lane runs in order

    def fail(item):
        raise TargetError(f"target '{item.lane}': down")

    with pytest.raises(TargetError, match="target 'a': down; target 'b': down|target 'b': down; target 'a': down"):
        InProcessExecutor().run(items[:2], fail, lambda *_: None)
    with pytest.raises(ZeroDivisionError):  # a bug is not folded into a target error
        InProcessExecutor().run(items[:2], lambda item: 1 / 0 if item.lane == "a" else fail(item), lambda *_: None)
