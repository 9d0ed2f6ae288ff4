"""One export path: `edge-toolchain export` takes every option the pipeline has."""

from __future__ import annotations

import numpy as np
import pytest

from toolchain.cli import main
from toolchain.config import parse_config
from toolchain.export import ExportOptions


@pytest.fixture(scope="module")
def cnn_files(tmp_path_factory, small_cnn):
    folder = tmp_path_factory.mktemp("export-options")
    small_cnn.save(folder / "cnn.keras")
    rng = np.random.default_rng(0)
    np.savez(folder / "data.npz", pixels=rng.uniform(0, 1, (16, 16, 16, 3)).astype(np.float32))
    return folder


def weight_scales(path):
    """Sizes of the scales of every DequantizeLinear fed by an initializer (a quantized weight)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [initializers[n.input[1]].size for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in initializers and n.input[1] in initializers]


def test_cli_export_sets_per_channel_calibration_method_and_keep_float(cnn_files, tmp_path, capsys):
    model, data = str(cnn_files / "cnn.keras"), str(cnn_files / "data.npz")
    default, per_tensor, kept = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "c.onnx"
    base = ["export", model, "-f", "onnx", "--recipe", "int8", "--data", data]
    assert main([*base, "-o", str(default)]) == 0, capsys.readouterr().err
    assert main([*base, "--no-per-channel", "--calibration-method", "entropy", "-o", str(per_tensor)]) == 0, \
        capsys.readouterr().err
    assert main([*base, "--keep-float", "conv", "-o", str(kept)]) == 0, capsys.readouterr().err
    assert max(weight_scales(default)) == 8  # the conv's 8 output channels, one scale each
    assert weight_scales(per_tensor) and max(weight_scales(per_tensor)) == 1
    assert len(weight_scales(kept)) < len(weight_scales(default))  # the conv's weights stay float


def test_pipeline_and_cli_build_the_same_options():
    raw = {"model": {"path": "m.keras"},
           "export": {"formats": ["onnx"], "batch_size": 4,
                      "onnx": {"recipes": ["int8", "fp16"], "per_channel": False, "calibration_method": "entropy",
                               "keep_float": ["conv"], "opset": 15}}}
    config = parse_config(raw)
    assert ExportOptions.from_config(config, "onnx", "int8") == ExportOptions(
        "onnx", "int8", 4, opset=15, keep_float=("conv",), per_channel=False, calibration_method="entropy")
    assert ExportOptions.from_config(config, "onnx", "fp16").keep_float == ()  # fp16: no quantized layers
    ExportOptions.from_config(config, "onnx", "int8").check()
