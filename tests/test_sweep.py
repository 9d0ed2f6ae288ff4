"""The cut-point sweep: candidate points, Pareto front, recommendation, and real sweeps on digits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from toolchain.cli import main
from toolchain.data import Dataset
from toolchain.errors import BudgetError, InputError
from toolchain.sweep import Budget, block_boundaries, pareto_front, recommend, run_sweep, sweep_file

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# a sweep is about what is measured, not how long: keep the benchmark short
QUICK_BENCH = {"min_runs": 5, "min_seconds": 0.05, "warmup_runs": 1}


def _point(at, latency, accuracy):
    return {"at": at, "kind": "cut", "latency_ms": {"p50": latency}, "accuracy": accuracy}


def test_pareto_front_and_recommendation():
    points = [_point("a", 1.0, 0.50), _point("b", 2.0, 0.80), _point("c", 3.0, 0.70), _point("d", 4.0, 0.95)]
    assert pareto_front(points) == [0, 1, 3]  # c is slower and less accurate than b
    assert recommend(points, Budget(max_latency_ms=3.5))["at"] == "b"
    assert recommend(points, Budget(min_accuracy=0.75))["at"] == "b"
    assert recommend(points, Budget(max_latency_ms=3.5, min_accuracy=0.85)) is None
    assert recommend(points, Budget()) is None


@pytest.mark.heavy
def test_block_boundaries_of_resnet50_are_its_block_outputs(resnet50_64):
    points = block_boundaries(resnet50_64)
    assert points[:3] == ["pool1_pool", "conv2_block1_out", "conv2_block2_out"]
    assert points[-1] == "avg_pool"
    assert all(p.endswith("_out") for p in points[1:-1])
    assert len(points) == 18 - 1  # 16 blocks, pool1_pool and avg_pool; no layer inside a block


@pytest.mark.heavy
def test_block_boundaries_never_split_a_residual_block(mobilenet_v2_96):
    points = block_boundaries(mobilenet_v2_96)
    assert "block_14_add" in points and "block_13_project_BN" in points
    assert not any(p.startswith("block_14_") and p != "block_14_add" for p in points)


@pytest.fixture(scope="module")
def digits_data(demo_inputs):
    from toolchain.data import load_npz
    from toolchain.keras_io import input_signature, load_model

    model = load_model(demo_inputs / "digits_cnn.keras")
    specs = input_signature(model)
    return (load_npz(demo_inputs / "digits_train.npz", specs),
            load_npz(demo_inputs / "digits_eval.npz", specs))


def test_demo_sweep_writes_json_table_and_plot_and_meets_the_budget(demo_inputs, tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(["sweep", str(demo_inputs / "digits_cnn.keras"), "--data", str(demo_inputs / "digits_train.npz"),
                 "--eval", str(demo_inputs / "digits_eval.npz"), "--out", str(out), "--epochs", "5",
                 "--min-seconds", "0.05", "--max-latency-ms", "1000", "--min-accuracy", "0.9"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "cut at flatten: training the head classes:10" in captured.err
    assert "features of the train data: 1297/1297" in captured.err and "epoch 5/5: loss " in captured.err
    assert "flatten: accuracy 0." in captured.err and "full model: accuracy 0." in captured.err
    document = json.loads((out / "sweep.json").read_text())
    assert document["metric"] == "accuracy"
    assert [p["at"] for p in document["points"]] == [None, "conv1", "flatten", "dropout"]
    full = document["points"][0]
    assert full["kind"] == "full" and full["accuracy"] > 0.9  # the demo CNN reaches ~97%
    assert full["params"] == 38282 and full["macs"] == 337536
    for p in document["points"]:
        assert p["latency_ms"]["p50"] > 0 and p["tflite_bytes"] > 0
        assert 0 <= p["accuracy"] <= 1
    flatten = document["points"][2]
    assert flatten["head"] == "classes:10" and flatten["accuracy"] > 0.9  # conv features + linear head
    assert flatten["macs"] < full["macs"] and flatten["params"] < full["params"]
    assert any(p["pareto"] for p in document["points"])
    chosen = next(p for p in document["points"] if p["at"] == document["recommended"]["at"])
    assert chosen["latency_ms"]["p50"] <= 1000 and chosen["accuracy"] >= 0.9
    assert chosen["pareto"]
    assert document["drops"] == []  # the demo CNN has no residual blocks
    table = (out / "sweep.md").read_text()
    assert "| flatten | classes:10 |" in table and "Recommended: **" in table
    assert (out / "sweep.png").read_bytes()[:8] == PNG_MAGIC
    assert not list(out.glob(".*")), "no temp files left behind"
    assert "recommended" in captured.out


@pytest.fixture(scope="module")
def residual_digits(digits_data):
    """A small residual CNN trained briefly on digits: one droppable block."""
    import keras

    train, _ = digits_data
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="stem")(inputs)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="res_conv1")(x)
    h = keras.layers.Conv2D(16, 3, padding="same", name="res_conv2")(h)
    x = keras.layers.Add(name="res_add")([x, h])
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="probs")(x)
    model = keras.Model(inputs, outputs, name="residual_digits")
    model.compile(optimizer=keras.optimizers.Adam(5e-3), loss="sparse_categorical_crossentropy")
    model.fit(train.inputs["image"], train.labels, epochs=4, batch_size=64, verbose=0)
    return model


def test_sweep_without_labels_scores_agreement_prices_blocks_and_enforces_the_budget(
        residual_digits, digits_data, tmp_path):
    train, evaluation = digits_data
    unlabelled = [Dataset(d.inputs, None, d.source) for d in (train.head(600), evaluation.head(200))]
    assert block_boundaries(residual_digits) == ["stem", "gap"]
    with pytest.raises(BudgetError, match=r"no cut point meets the budget \(p50 latency <= 1e-06 ms\)") as info:
        run_sweep(residual_digits, *unlabelled, tmp_path, points=["stem"], epochs=2,
                  bench_overrides=QUICK_BENCH, budget=Budget(max_latency_ms=1e-6))
    assert info.value.exit_code == 7
    document = json.loads((tmp_path / "sweep.json").read_text())  # written before the budget check
    assert document["metric"] == "agreement" and document["recommended"] is None
    assert document["points"][0]["accuracy"] == 1.0  # the full model agrees with itself
    [drop] = document["drops"]
    assert drop["block"] == "res_add" and drop["macs_saved"] == 2 * 8 * 8 * 16 * 16 * 9
    assert drop["accuracy_cost"] == pytest.approx(1.0 - drop["accuracy"])
    assert "none: no point meets it" in (tmp_path / "sweep.md").read_text()
    assert "res_add" in (tmp_path / "sweep.md").read_text()


def test_sweep_input_errors(residual_digits, digits_data, tmp_path):
    import keras

    train, evaluation = digits_data
    with pytest.raises(InputError, match="end --head with classes:N"):
        run_sweep(residual_digits, train, evaluation, tmp_path, head="gap,dense:4")
    inputs = keras.Input((3,), name="x")
    flat = keras.Model(inputs, keras.layers.Dense(1, name="only")(inputs), name="one_layer")
    data = Dataset({"x": np.zeros((4, 3), np.float32)}, np.array([0, 1, 0, 1]), "zeros")
    with pytest.raises(InputError, match="'one_layer' has no block boundaries"):
        run_sweep(flat, data, data, tmp_path)
    regression = keras.Model(inputs, keras.layers.Reshape((3, 1), name="seq")(inputs), name="seq_out")
    unlabelled = Dataset({"x": np.zeros((4, 3), np.float32)}, None, "zeros")
    with pytest.raises(InputError, match=r"needs one \(N, classes\) output; 'seq_out' has outputs"):
        run_sweep(regression, unlabelled, unlabelled, tmp_path)
    assert not (tmp_path / "sweep.json").exists()


def test_sweep_file_data_errors(demo_inputs, tmp_path):
    model = demo_inputs / "digits_cnn.keras"
    few = tmp_path / "few.npz"
    np.savez(few, image=np.zeros((1, 8, 8, 1), np.float32), y=np.zeros(1, np.int64))
    with pytest.raises(InputError, match="1 sample\\(s\\) are too few to hold some out; give --eval"):
        sweep_file(model, few, tmp_path / "out")
    with pytest.raises(InputError, match=r"eval fraction must be in \(0, 1\)"):
        sweep_file(model, demo_inputs / "digits_train.npz", tmp_path / "out", eval_fraction=1.5)
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, image=np.zeros((4, 8, 8, 1), np.float32))
    with pytest.raises(InputError, match="labels under 'y' are in only one of"):
        sweep_file(model, demo_inputs / "digits_train.npz", tmp_path / "out", eval_data=unlabelled)
    assert not (tmp_path / "out").exists()


def test_sweep_of_a_feature_extractor_trains_a_head_on_the_full_model_too(residual_digits, digits_data, tmp_path):
    import keras

    train, evaluation = digits_data
    features = keras.Model(residual_digits.inputs[0], residual_digits.get_layer("res_add").output, name="features")
    document = run_sweep(features, train.head(600), evaluation.head(200), tmp_path, points=["stem"], epochs=3,
                         bench_overrides=QUICK_BENCH)
    full, stem = document["points"]
    assert full["at"] is None and full["head"] == "gap,classes:10" and stem["head"] == "gap,classes:10"
    assert full["accuracy"] > 0.5  # a linear head on the trained residual features
    assert document["drops"] == [] and "residual blocks were not priced" in document["notes"][0]
    assert "Note: residual blocks were not priced" in (tmp_path / "sweep.md").read_text()


def test_default_cut_points_skip_cuts_before_any_weights():
    import keras

    inputs = keras.Input((8, 8, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 255, name="rescaling")(inputs)
    x = keras.layers.Conv2D(4, 3, name="conv1")(x)
    x = keras.layers.Conv2D(4, 3, name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="probs")(x), name="scaled")
    assert block_boundaries(model) == ["conv1", "gap"]  # not 'rescaling': a head on raw pixels


def test_sweep_heads_take_the_class_count_from_the_labels(digits_data, tmp_path, capsys):
    import keras

    train, evaluation = digits_data
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    wide = keras.Model(inputs, keras.layers.Dense(1000, activation="softmax", name="probs")(x), name="wide")
    small = (train.head(200), evaluation.head(100))  # labels 0-9 under a 1000-class output
    document = run_sweep(wide, *small, tmp_path / "a", points=["stem"], epochs=1, bench_overrides=QUICK_BENCH)
    assert document["points"][1]["head"] == "gap,classes:10"
    document = run_sweep(wide, *small, tmp_path / "b", points=["stem"], epochs=1, bench_overrides=QUICK_BENCH,
                         classes=12)
    assert document["points"][1]["head"] == "gap,classes:12"
    with pytest.raises(InputError, match="--classes 5 is too few: the labels go up to 9; give --classes 10"):
        run_sweep(wide, *small, tmp_path / "c", points=["stem"], classes=5)
    assert not (tmp_path / "c").exists()


def _sweep_document(points):
    return {"points": points, "recommended": None, "budget": {"max_latency_ms": None, "min_accuracy": None},
            "target": "local", "metric": "accuracy", "model": {"name": "crowded"}}


def test_plot_labels_do_not_overlap_and_the_legend_hides_no_point():
    from toolchain.sweep import plot_figure

    cluster = [{**_point(f"conv{i}_block_out", 1.0 + 0.01 * i, 0.90 + 0.002 * i), "pareto": i % 2 == 0}
               for i in range(6)]
    full = {**_point(None, 3.0, 0.99), "kind": "full", "pareto": True}  # top right, where legends go
    figure = plot_figure(_sweep_document([full, *cluster, {**_point("pool", 0.2, 0.30), "pareto": True}]))
    renderer = figure.canvas.get_renderer()
    axes = figure.axes[0]
    boxes = [t.get_window_extent(renderer) for t in axes.texts]
    assert sorted(t.get_text() for t in axes.texts) == sorted(["full model", "pool"]
                                                               + [f"conv{i}_block_out" for i in range(6)])
    for i, a in enumerate(boxes):
        assert not any(a.overlaps(b) for b in boxes[i + 1:]), "two point labels overlap"
    legend = axes.get_legend()
    assert "full model" in [t.get_text() for t in legend.get_texts()]
    legend_box = legend.get_window_extent(renderer)
    for x, y in [axes.transData.transform((p["latency_ms"]["p50"], p["accuracy"])) for p in [full, *cluster]]:
        assert not legend_box.contains(x, y), "the legend covers a point"
