"""Export coverage matrix (issue 15): every model family of tests/keras_families.py, in both
formats, exported by us (batch 1, fixed batch N, dynamic batch) and by Keras' own
`model.export`, each run in its real runtime (ai-edge-litert, onnxruntime) against Keras.

A cell's measured outcome must match tests/keras_families.EXCEPTIONS (a pass where none is listed), which the docs table
(docs/keras-coverage.md) is rendered from. Ours must pass wherever Keras' export passes, and
may only fail with a ToolchainError that leaves no file behind.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import keras_families
import numpy as np
import pytest
from keras_families import FAMILIES, FIXED_BATCH, FORMATS, HEAVY, PASS, SIDES, expected, sample_inputs

# float32 on both sides, but fused kernels and a different summation order (recurrent loops
# accumulate over steps): 1e-4 absolute on activations of order 1
ATOL, RTOL = 1e-4, 1e-3


@functools.cache
def family_model(family: str) -> Any:
    return FAMILIES[family]()


def keras_reference(model: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from toolchain.keras_io import run_keras

    return run_keras(model, inputs)


def run_artifact(path: Path, inputs: dict[str, np.ndarray], by_name: bool) -> list[tuple[str, np.ndarray]]:
    """(name, output) in the artifact's output order. Ours are fed by input name; Keras' own
    artifacts name inputs their own way, so they are fed in the model's input order."""
    if path.suffix == ".tflite":
        from ai_edge_litert.interpreter import Interpreter

        runner = Interpreter(model_path=str(path)).get_signature_runner()
        names = list(runner.get_input_details())
        return sorted(runner(**_feed(names, inputs, by_name)).items())
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, _feed([node.name for node in session.get_inputs()], inputs, by_name))
    return [(node.name, value) for node, value in zip(session.get_outputs(), outputs, strict=True)]


def _feed(names: list[str], inputs: dict[str, np.ndarray], by_name: bool) -> dict[str, np.ndarray]:
    if len(names) != len(inputs):
        raise ValueError(f"the artifact has {len(names)} inputs for the model's {len(inputs)}")
    if by_name:
        return {name: inputs[name] for name in names}
    return dict(zip(names, inputs.values(), strict=True))


def ours(model: Any, fmt: str, batch: int | None, folder: Path) -> str:
    """PASS, or our error message; an export that succeeds must match Keras output for output."""
    from toolchain.errors import ToolchainError
    from toolchain.keras_io import output_names
    from toolchain.stages.export_onnx import export_onnx
    from toolchain.stages.export_tflite import export_tflite

    export = export_tflite if fmt == "tflite" else export_onnx
    path = folder / f"ours-{batch}.{fmt}"
    try:
        export(model, path, batch_size=batch)
    except ToolchainError as e:
        assert not path.exists(), "a failed export left a file behind"
        return f"refused: {e}"
    inputs = sample_inputs(model, batch or 2, seed=batch or 0)
    reference = keras_reference(model, inputs)
    produced = dict(run_artifact(path, inputs, by_name=True))
    assert len(produced) == len(model.outputs if hasattr(model, "inputs") else reference)
    assert sorted(produced) == sorted(output_names(model)), "the artifact's outputs differ from the model's"
    for name, value in reference.items():
        np.testing.assert_allclose(produced[name], value, atol=ATOL, rtol=RTOL, err_msg=name)
    return PASS


def keras_export(model: Any, fmt: str, folder: Path) -> str:
    """PASS, or where Keras' own export fails: exporting, loading, output count, or values."""
    path = folder / f"keras.{fmt}"
    try:
        model.export(str(path), format="litert" if fmt == "tflite" else "onnx", verbose=False)
    except Exception as e:
        return f"export: {type(e).__name__}: {_first_line(e)}"
    inputs = sample_inputs(model, 2, seed=5)
    reference = keras_reference(model, inputs)
    try:
        produced = run_artifact(path, inputs, by_name=False)
    except Exception as e:
        return f"run: {type(e).__name__}: {_first_line(e)}"
    if len(produced) != len(reference):
        return f"outputs: {len(produced)} outputs for the model's {len(reference)}"
    for (_, value), (name, want) in zip(produced, reference.items(), strict=True):
        if value.shape != want.shape or not np.allclose(value, want, atol=ATOL, rtol=RTOL):
            return f"parity: output {name} differs"
    return PASS


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def measure(family: str, fmt: str, folder: Path) -> dict[str, str]:
    model = family_model(family)
    batches = dict(zip(SIDES, (1, FIXED_BATCH, None), strict=False))
    measured = {side: ours(model, fmt, batch, folder) for side, batch in batches.items()}
    measured["keras.export"] = keras_export(model, fmt, folder)
    return measured


CELLS = [
    pytest.param(family, fmt, marks=[pytest.mark.heavy] if family in HEAVY else [])
    for family in FAMILIES for fmt in FORMATS
]


@pytest.mark.parametrize(("family", "fmt"), CELLS)
def test_family_exports(family, fmt, tmp_path):
    measured = measure(family, fmt, tmp_path)
    print(f"{family} {fmt}: {measured}")
    for side, outcome in measured.items():
        want = expected(family, fmt, side)
        if want is None:
            assert outcome == PASS, f"{family} {fmt} {side}: {outcome}"
        else:
            assert want[0] in outcome, f"{family} {fmt} {side}: expected {want[0]!r}, measured {outcome!r}"
    if measured["keras.export"] == PASS:  # ours passes wherever Keras' export passes
        assert measured["dynamic batch"] == PASS


def test_every_exception_names_a_known_cell():
    for family, fmt, side in keras_families.EXCEPTIONS:
        assert family in FAMILIES and fmt in FORMATS and side in SIDES


def test_docs_table_is_rendered_from_the_matrix():
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, str(root / "docs" / "gen_keras_coverage.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_outputs_of_one_layer_get_unique_names():
    from toolchain.keras_io import output_names, unique_names

    assert output_names(family_model("lstm_states")) == [
        "lstm", "lstm_1", "lstm_2", "lstm_top", "lstm_top_1", "lstm_top_2"]
    # a suffix another output already carries is skipped
    assert unique_names(["dense", "dense", "dense_1"]) == ["dense", "dense_2", "dense_1"]


def test_an_artifact_that_loses_an_output_is_refused():
    from toolchain.errors import StageError
    from toolchain.keras_io import check_outputs_kept

    check_outputs_kept(["lstm", "lstm_1"], ["lstm_1", "lstm"], "ONNX export of 'm'")
    lost = r"has 1 outputs but the model has 2 \(missing: lstm_1; unexpected: none\)"
    with pytest.raises(StageError, match=lost) as e:
        check_outputs_kept(["lstm", "lstm_1"], ["lstm"], "ONNX export of 'm'")
    assert e.value.exit_code == 4


def _subclass(call):
    import keras

    class Custom(keras.Model):
        def __init__(self):
            super().__init__(name="custom")
            self.dense = keras.layers.Dense(2)

        def call(self, inputs):
            return call(self, inputs)

    return Custom()


@pytest.mark.parametrize("fmt", FORMATS)
def test_subclassed_model_never_called_is_refused(tmp_path, fmt):
    import keras

    from toolchain.errors import ConfigError
    from toolchain.stages.export_onnx import export_onnx
    from toolchain.stages.export_tflite import export_tflite

    export = export_tflite if fmt == "tflite" else export_onnx
    model = _subclass(lambda self, x: self.dense(x))
    with pytest.raises(ConfigError, match=r"subclassed model 'custom' has never been called.*call it once"):
        export(model, tmp_path / f"m.{fmt}")
    assert not (tmp_path / f"m.{fmt}").exists()
    unbuilt = keras.Sequential([keras.layers.Dense(2)], name="unbuilt")
    with pytest.raises(ConfigError, match=r"Sequential model without a keras.Input 'unbuilt' has never been called"):
        export(unbuilt, tmp_path / f"m.{fmt}")


def test_subclassed_model_with_nested_inputs_is_refused(tmp_path):
    from toolchain.errors import ConfigError
    from toolchain.stages.export_onnx import export_onnx

    model = _subclass(lambda self, x: self.dense(x["a"]) + self.dense(x["b"]))
    model({"a": np.zeros((1, 3), np.float32), "b": np.zeros((1, 3), np.float32)})
    with pytest.raises(ConfigError, match=r"'custom' takes nested inputs .*wrap it in a functional model"):
        export_onnx(model, tmp_path / "m.onnx")


def test_subclassed_model_that_needs_concrete_values_is_refused(tmp_path):
    from toolchain.errors import ConfigError
    from toolchain.stages.export_tflite import export_tflite

    model = _subclass(lambda self, x: self.dense(x) * float(np.asarray(x).max()))
    model(np.ones((1, 3), np.float32))
    with pytest.raises(ConfigError, match=r"'custom' cannot be traced on symbolic inputs"):
        export_tflite(model, tmp_path / "m.tflite")
    assert not (tmp_path / "m.tflite").exists()


# ---- truncation on these families: what it can and cannot cut --------------------------

def test_truncate_at_a_recurrent_layer_keeps_its_states_and_refuses_its_cell():
    from toolchain.errors import InputError
    from toolchain.stages.truncate import truncate

    model = family_model("lstm_states")
    assert [tuple(t.shape) for t in truncate(model, at="lstm").outputs] == [(None, 5, 4), (None, 4), (None, 4)]
    with pytest.raises(InputError, match=r"'lstm/lstm_cell' as a cut point: it is inside recurrent layer 'lstm' "
                                         r"\(LSTM\), which runs it once per time step .*cut at 'lstm' itself"):
        truncate(model, at="lstm/lstm_cell")
    with pytest.raises(InputError, match=r"gives 3 outputs \(recurrent layer 'lstm' returns the whole sequence "
                                         r"and its states\); .*return_state=False"):
        truncate(model, at="lstm", head="classes:3")


def test_truncate_refuses_a_subclassed_model_and_says_export_takes_it_whole():
    from toolchain.errors import InputError
    from toolchain.stages.truncate import truncate

    with pytest.raises(InputError, match=r"'two_heads' is not a Functional .*rebuild it functionally to truncate it "
                                         r"\(export and verify take it whole"):
        truncate(family_model("subclassed"), at=0)


# ---- recurrent artifacts on the device runtimes ------------------------------------------

# LSTM with states as outputs, GRU and SimpleRNN, Bidirectional, states as inputs (the sequence
# length is fixed: the device runner feeds inputs at the artifact's own shape)
DEVICE_FAMILIES = ("lstm_states", "gru_simple_rnn", "bidirectional", "initial_states")


@pytest.fixture(scope="module")
def recurrent_artifacts(tmp_path_factory) -> dict[str, tuple[Any, list[Path]]]:
    """family -> (model, [TFLite at batch 1, and for lstm_states ONNX with a dynamic batch])."""
    from toolchain.stages.export_onnx import export_onnx
    from toolchain.stages.export_tflite import export_tflite

    folder = tmp_path_factory.mktemp("recurrent")
    artifacts = {family: (family_model(family), [export_tflite(family_model(family), folder / f"{family}.fp32.tflite")])
                 for family in DEVICE_FAMILIES}
    artifacts["lstm_states"][1].append(
        export_onnx(family_model("lstm_states"), folder / "lstm_states.fp32.onnx", batch_size=None))
    return artifacts


@pytest.mark.heavy
def test_recurrent_artifacts_run_on_tflite_runtime_214(recurrent_artifacts, device_profile):
    """A WHILE loop and the states as outputs load and match on a Pi's interpreter (device venv)."""
    from toolchain.config import load_profile
    from toolchain.stages.compat import check_compat

    for family, (model, paths) in recurrent_artifacts.items():
        inputs = sample_inputs(model, 1)
        for path in paths:
            host = dict(run_artifact(path, inputs, by_name=True))
            record = check_compat(path, load_profile(device_profile), inputs, host)
            assert record["verdict"] == "pass", (family, path.name, record)
            assert record["max_abs_error_vs_host"] < 1e-4


@pytest.mark.heavy
def test_recurrent_artifacts_pass_the_emulated_pi_gate(recurrent_artifacts, capsys):
    """The aarch64 tflite-runtime 2.14 and onnxruntime of a Raspberry Pi 4, under QEMU."""
    import json
    import os

    from toolchain.cli import main
    from toolchain.emulator.stack import setup_stack

    cache = Path(os.environ.get("EDGE_TOOLCHAIN_TEST_CACHE", Path.home() / ".cache" / "edge-toolchain-tests"))
    setup_stack(cache / "emulator")
    tflite, onnx = recurrent_artifacts["lstm_states"][1]
    bidirectional = recurrent_artifacts["bidirectional"][1][0]
    code = main(["emulator", "check", str(tflite), str(onnx), str(bidirectional),
                 "--cache-dir", str(cache / "emulator"), "--json"])
    document = json.loads(capsys.readouterr().out)
    assert code == 0, document
    for path in (tflite, onnx, bidirectional):
        assert document["artifacts"][path.name]["verdict"] == "pass"
    assert len(document["artifacts"][tflite.name]["outputs"]) == 6  # every state reaches the device
