"""Calibration / evaluation data sources and the checks that run before any conversion."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest

from toolchain.config import parse_config
from toolchain.data import (
    CalibrationReader,
    Dataset,
    Preprocess,
    load_source,
    prepare_run_data,
    split_shared,
)
from toolchain.errors import ConfigError, DataError
from toolchain.keras_io import TensorInfo

IMAGE = [TensorInfo("image", (8, 8, 1), "float32")]
RGB = [TensorInfo("pixels", (6, 6, 3), "float32")]
TWO = [TensorInfo("a", (3,), "float32"), TensorInfo("b", (2,), "float32")]


def data_section(tmp_path, **data):
    """A validated [data] section with paths relative to tmp_path."""
    from toolchain.config import resolve_source

    config = parse_config({"model": {"path": "m.keras"}, "data": data})
    config.data.eval = resolve_source(config.data.eval, tmp_path)
    config.data.calibration.source = resolve_source(config.data.calibration.source, tmp_path)
    return config.data


def digits_like(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (count, 8, 8, 1)).astype(np.float32)


# ---- npy / npz ------------------------------------------------------------------

def test_npz_keyed_by_input_name_for_multi_input_models(tmp_path):
    np.savez(tmp_path / "d.npz", a=np.ones((4, 3), np.float32), b=np.zeros((4, 2), np.float32))
    data = load_source(str(tmp_path / "d.npz"), TWO)
    assert sorted(data.inputs) == ["a", "b"] and len(data) == 4
    np.save(tmp_path / "single.npy", np.ones((4, 3), np.float32))
    with pytest.raises(DataError, match="a .npy file holds one array but the model has 2 inputs"):
        load_source(str(tmp_path / "single.npy"), TWO)


def test_npy_for_single_input_model_with_limit(tmp_path):
    np.save(tmp_path / "x.npy", digits_like(10, 0))
    data = load_source(str(tmp_path / "x.npy"), IMAGE, limit=3)
    assert data.inputs["image"].shape == (3, 8, 8, 1) and data.labels is None


def test_shape_and_dtype_mismatch_are_refused(tmp_path):
    np.savez(tmp_path / "bad_shape.npz", image=np.zeros((4, 8, 7, 1), np.float32))
    with pytest.raises(DataError, match=r"shape \(4, 8, 7, 1\) does not fit input 'image'"):
        load_source(str(tmp_path / "bad_shape.npz"), IMAGE)
    np.savez(tmp_path / "strings.npz", image=np.full((4, 8, 8, 1), "x"))
    with pytest.raises(DataError, match="is not numeric; input 'image' takes float32"):
        load_source(str(tmp_path / "strings.npz"), IMAGE)
    ints = [TensorInfo("ids", (3,), "int32")]
    np.savez(tmp_path / "floats.npz", ids=np.zeros((2, 3), np.float32))
    with pytest.raises(DataError, match="float data for integer input 'ids'"):
        load_source(str(tmp_path / "floats.npz"), ints)


# ---- image folders ----------------------------------------------------------------

def write_image_folder(root, size=(10, 12), classes=("cat", "dog"), per_class=3, mode="RGB"):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            channels = 3 if mode == "RGB" else 1
            pixels = rng.integers(0, 256, (*size, channels), dtype=np.uint8)
            image = Image.fromarray(pixels if mode == "RGB" else pixels[..., 0], mode)
            image.save(root / c / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def test_image_folder_with_class_subfolders_and_preprocessing(tmp_path):
    folder = write_image_folder(tmp_path / "images")
    spec = Preprocess(size=None, color="rgb", scale=1 / 255, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    data = load_source(str(folder), RGB, preprocess=spec)
    x = data.inputs["pixels"]
    assert x.shape == (6, 6, 6, 3) and x.dtype == np.float32
    assert -1.0 <= x.min() and x.max() <= 1.0 and x.min() < -0.5  # (x/255 - 0.5) / 0.5
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert "cat, dog" in data.notes[0]


def test_image_folder_grayscale_and_limit(tmp_path):
    folder = write_image_folder(tmp_path / "gray", classes=("a", "b", "c"), per_class=4, mode="L")
    data = load_source(str(folder), IMAGE, preprocess=Preprocess(color="grayscale"), limit=6)
    assert data.inputs["image"].shape == (6, 8, 8, 1)
    assert set(data.labels.tolist()) == {0, 1, 2}  # an even pick keeps every class


@pytest.mark.parametrize(
    ("specs", "preprocess", "match"),
    [
        (TWO, Preprocess(), "an image folder feeds one input but the model has 2"),
        ([TensorInfo("v", (4,), "float32")], Preprocess(), r"not \(height, width, channels\)"),
        ([TensorInfo("p", (None, None, 3), "float32")], Preprocess(), "has no fixed size"),
        (IMAGE, Preprocess(color="rgb"), "gives 3 channel"),
        (RGB, Preprocess(mean=(0.1, 0.2)), r"mean needs 1 or 3 values, got 2"),
    ],
)
def test_image_folder_refusals(tmp_path, specs, preprocess, match):
    folder = write_image_folder(tmp_path / "images", per_class=1)
    with pytest.raises(DataError, match=match):
        load_source(str(folder), specs, preprocess=preprocess)


def test_image_folder_without_images_or_with_a_broken_one(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    with pytest.raises(DataError, match="no .png/.jpg/.jpeg images found"):
        load_source(str(tmp_path / "empty"), RGB)
    folder = write_image_folder(tmp_path / "images", per_class=1)
    (folder / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png: not a readable image"):
        load_source(str(folder), RGB)


# ---- module:function ----------------------------------------------------------------

CALLABLE_MODULE = textwrap.dedent("""
    import numpy as np

    def batches():
        rng = np.random.default_rng(0)
        for _ in range(5):
            yield {"image": rng.uniform(0, 1, (4, 8, 8, 1)).astype(np.float32)}

    def labelled():
        for i in range(3):
            yield np.zeros((2, 8, 8, 1), np.float32), np.full(2, i)

    def half_labelled():
        yield np.zeros((2, 8, 8, 1), np.float32), np.zeros(2)
        yield np.zeros((2, 8, 8, 1), np.float32)

    def not_iterable():
        return 3

    def lists():
        yield [np.zeros((2, 8, 8, 1), np.float32)]

    def wrong_key():
        yield {"img": np.zeros((2, 8, 8, 1), np.float32)}

    def empty():
        return []

    def broken():
        raise RuntimeError("dataset server down")

    def wrong_shape():
        yield {"image": np.zeros((2, 8, 8), np.float32)}
""")


@pytest.fixture
def data_module(tmp_path, monkeypatch):
    (tmp_path / "my_batches.py").write_text(CALLABLE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_batches"
    sys.modules.pop("my_batches", None)


def test_callable_source_reads_batches_up_to_the_limit(data_module):
    data = load_source(f"{data_module}:batches", IMAGE, limit=10)
    assert data.inputs["image"].shape == (10, 8, 8, 1)
    labelled = load_source(f"{data_module}:labelled", IMAGE)
    assert labelled.labels.tolist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize(
    ("function", "match"),
    [
        ("not_iterable", "must return or yield batches"),
        ("lists", "batch 0 is a list; yield a dict keyed by input name"),
        ("wrong_key", r"batch 0 has no array for input\(s\) image \(it has img\)"),
        ("empty", "yielded no samples"),
        ("broken", "raised RuntimeError: dataset server down"),
        ("wrong_shape", r"batch 0: shape \(2, 8, 8\) does not fit input 'image'"),
        ("half_labelled", "some batches carry labels and some do not"),
        ("missing", "has no function 'missing'"),
    ],
)
def test_callable_source_errors(data_module, function, match):
    with pytest.raises(DataError, match=match):
        load_source(f"{data_module}:{function}", IMAGE)


def test_callable_source_unknown_module():
    with pytest.raises(DataError, match="cannot import module 'no_such_module_xyz'"):
        load_source("no_such_module_xyz:batches", IMAGE)


# ---- calibration / evaluation pairs -------------------------------------------------

def test_random_calibration_is_refused_unless_allowed(tmp_path, capsys):
    np.savez(tmp_path / "eval.npz", image=digits_like(20, 0))
    section = data_section(tmp_path, eval="eval.npz")
    with pytest.raises(DataError, match="random data gives meaningless int8 ranges and is refused"):
        prepare_run_data(section, IMAGE, needs_calibration=True)
    section = data_section(tmp_path, eval="eval.npz", calibration={"allow_random": True, "samples": 8})
    run = prepare_run_data(section, IMAGE, needs_calibration=True)
    assert run.calibration.source == "random" and len(run.calibration) == 8
    assert run.record["calibration"]["random"] is True
    assert "RANDOM CALIBRATION DATA" in run.record["warning"]
    assert "RANDOM CALIBRATION DATA" in capsys.readouterr().err
    # float recipes only: nothing to calibrate, nothing refused
    assert prepare_run_data(data_section(tmp_path, eval="eval.npz"), IMAGE,
                            needs_calibration=False).calibration is None


def test_overlapping_calibration_and_eval_sets_are_refused(tmp_path):
    x = digits_like(30, 0)
    np.savez(tmp_path / "eval.npz", image=x[:20])
    np.savez(tmp_path / "cal.npz", image=x[15:])  # 5 samples in both
    section = data_section(tmp_path, eval="eval.npz", calibration={"source": "cal.npz"})
    with pytest.raises(DataError, match=r"share 5 sample\(s\)"):
        prepare_run_data(section, IMAGE, needs_calibration=True)
    section = data_section(tmp_path, eval="eval.npz", calibration={"source": "eval.npz"})
    with pytest.raises(DataError, match='set source = "eval" to split it deterministically'):
        prepare_run_data(section, IMAGE, needs_calibration=True)


def test_one_source_is_split_deterministically_and_recorded(tmp_path):
    np.savez(tmp_path / "all.npz", image=digits_like(40, 0), y=np.arange(40) % 10)
    section = data_section(tmp_path, eval="all.npz", samples=100,
                           calibration={"source": "eval", "fraction": 0.25, "samples": 100, "seed": 3})
    first = prepare_run_data(section, IMAGE, needs_calibration=True)
    second = prepare_run_data(section, IMAGE, needs_calibration=True)
    assert len(first.calibration) == 10 and len(first.evaluation) == 30
    assert first.record["split"] == second.record["split"]
    assert first.record["split"]["seed"] == 3 and first.record["split"]["samples_in_source"] == 40
    np.testing.assert_array_equal(first.calibration.inputs["image"], second.calibration.inputs["image"])
    json.dumps(first.record)  # recorded as plain JSON in the manifest
    # disjoint by construction
    cal = {x.tobytes() for x in first.calibration.inputs["image"]}
    assert not cal & {x.tobytes() for x in first.evaluation.inputs["image"]}
    with pytest.raises(DataError, match=r"needs \[data\] eval to be set"):
        prepare_run_data(data_section(tmp_path, calibration={"source": "eval"}), IMAGE, needs_calibration=True)
    with pytest.raises(DataError, match="cannot be split into calibration and eval"):
        split_shared(Dataset({"image": digits_like(1, 0)}), 0.5, 0, 10, 10)


def test_value_range_and_preprocessing_mismatch(tmp_path):
    np.savez(tmp_path / "eval.npz", image=digits_like(20, 0))
    np.savez(tmp_path / "raw.npz", image=digits_like(20, 1) * 255)  # forgot to scale to [0, 1]
    section = data_section(tmp_path, eval="eval.npz", calibration={"source": "raw.npz"})
    with pytest.raises(DataError, match="calibration data spans .* but evaluation data spans .*preprocessed"):
        prepare_run_data(section, IMAGE, needs_calibration=True)
    section = data_section(tmp_path, eval="eval.npz", value_range=[0.0, 1.0], calibration={"source": "raw.npz"})
    with pytest.raises(DataError, match=r"outside value_range \[0, 1\]"):
        prepare_run_data(section, IMAGE, needs_calibration=True)
    with pytest.raises(DataError, match="the low end must be below the high end"):
        prepare_run_data(data_section(tmp_path, eval="eval.npz", value_range=[1.0, 0.0]), IMAGE,
                         needs_calibration=False)


def test_preprocess_config_refuses_zero_std():
    with pytest.raises(ConfigError, match="std values must be non-zero"):
        parse_config({"model": {"path": "m.keras"}, "data": {"preprocess": {"std": [0.0]}}})


def test_calibration_reader_protocol_pads_the_last_batch():
    dataset = Dataset({"a": np.arange(5, dtype=np.float32)[:, None], "b": np.zeros((5, 2), np.float32)})
    reader = CalibrationReader(dataset, batch_size=2)
    batches = []
    while (batch := reader.get_next()) is not None:
        batches.append(batch)
    assert len(batches) == 3 and batches[-1]["a"].ravel().tolist() == [4.0, 4.0]
    assert reader.get_next() is None
    reader.rewind()
    assert reader.get_next()["a"].ravel().tolist() == [0.0, 1.0]
    assert len(list(reader)) == 3  # iterating rewinds first
