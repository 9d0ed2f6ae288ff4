"""Truncation: cut outputs equal the original's intermediate outputs, dropped blocks equal
hand-built references with the same weights, refusals say why and what can be dropped."""

from __future__ import annotations

import numpy as np
import pytest

from toolchain.errors import DataError, InputError
from toolchain.stages.truncate import droppable_blocks, parse_head, truncate

# Cut models re-run the very same layers on the same inputs: only graph-level fusion could
# change float results, and Keras runs layer by layer, so 1e-6 is a generous bound.
EXACT = 1e-6


def _max_diff(a, b) -> float:
    a = a if isinstance(a, (list, tuple)) else [a]
    b = b if isinstance(b, (list, tuple)) else [b]
    assert len(a) == len(b)
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(a, b, strict=True))


def _predict(model, x):
    """Eager call: no tf.function tracing per model, which keeps these tests fast."""
    result = model(x, training=False)
    if isinstance(result, (list, tuple)):
        return [np.asarray(r) for r in result]
    return np.asarray(result)


def _intermediate(model, *names):
    import keras

    outs = [model.get_layer(n).output for n in names]
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, outs if len(outs) > 1 else outs[0])


def _rand(shape, count=4, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, size=(count, *shape)).astype(np.float32)


@pytest.fixture(scope="module")
def res_cnn():
    """A functional CNN with one identity residual block, one projection block and a BN."""
    import keras

    keras.utils.set_random_seed(4)
    inputs = keras.Input((12, 12, 3), name="pixels")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="res1_conv1")(x)
    h = keras.layers.Conv2D(8, 3, padding="same", name="res1_conv2")(h)
    x = keras.layers.Add(name="res1_add")([x, h])
    x = keras.layers.BatchNormalization(name="bn")(x)
    p = keras.layers.Conv2D(16, 1, name="proj_short")(x)
    h = keras.layers.Conv2D(16, 3, padding="same", name="proj_conv")(x)
    x = keras.layers.Add(name="proj_add")([p, h])
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(4, activation="softmax", name="scores")(x)
    model = keras.Model(inputs, outputs, name="res_cnn")
    bn = model.get_layer("bn")  # non-trivial BN statistics, so dropping it changes the outputs
    bn.set_weights([w + np.random.default_rng(1).uniform(0.5, 1.0, w.shape).astype(np.float32)
                    for w in bn.get_weights()])
    return model


# ---- cut ------------------------------------------------------------------------------


def test_functional_cut_by_name_index_and_negative_index(res_cnn):
    x = _rand((12, 12, 3))
    cut = truncate(res_cnn, at="res1_add")
    assert cut.output_names == ["res1_add"]
    assert _max_diff(_predict(cut, x), _predict(_intermediate(res_cnn, "res1_add"), x)) <= EXACT
    # model.layers[0] is the InputLayer for a Functional model, as Keras numbers them
    assert truncate(res_cnn, at=1).output_names == ["stem"]
    assert truncate(res_cnn, at="-2").output_names == ["gap"]
    assert truncate(res_cnn, at=-1).output_names == ["scores"]


def test_several_cut_points_give_a_multi_output_model(res_cnn):
    x = _rand((12, 12, 3))
    cut = truncate(res_cnn, at=["proj_add", "stem", "gap"])
    assert cut.output_names == ["proj_add", "stem", "gap"]
    reference = _intermediate(res_cnn, "proj_add", "stem", "gap")
    assert _max_diff(_predict(cut, x), _predict(reference, x)) <= EXACT


def test_cut_model_shares_the_original_weights(res_cnn):
    cut = truncate(res_cnn, at="res1_add")
    assert cut.get_layer("stem") is res_cnn.get_layer("stem")
    assert cut.get_layer("stem").kernel is res_cnn.get_layer("stem").kernel


def test_sequential_cut():
    import keras

    keras.utils.set_random_seed(5)
    model = keras.Sequential([
        keras.Input((10, 10, 1)),
        keras.layers.Conv2D(4, 3, activation="relu", name="c1"),
        keras.layers.Conv2D(6, 3, name="c2"),
        keras.layers.Flatten(name="flat"),
        keras.layers.Dense(5, name="fc"),
    ], name="seq")
    x = _rand((10, 10, 1))
    cut = truncate(model, at="c2")
    assert _max_diff(_predict(cut, x), _predict(_intermediate(model, "c2"), x)) <= EXACT
    # Sequential.layers has no InputLayer: index 0 is the first layer
    assert truncate(model, at=0).output_names == ["c1"]
    assert truncate(model, at=-2).output_names == ["flat"]


@pytest.fixture(scope="module")
def nested():
    """A Sequential wrapping a functional sub-model (with a residual block), plus a head."""
    import keras

    keras.utils.set_random_seed(6)
    inputs = keras.Input((8, 8, 2), name="inner_in")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv_a")(inputs)
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv_b")(x)
    x = keras.layers.Add(name="add")([x, h])
    x = keras.layers.Conv2D(6, 3, name="conv_c")(x)
    inner = keras.Model(inputs, x, name="backbone")
    outer = keras.Sequential([keras.Input((8, 8, 2)), inner, keras.layers.GlobalAveragePooling2D(name="gap"),
                              keras.layers.Dense(3, name="logits")], name="wrapper")
    return outer, inner


def test_nested_cut_outer_inner(nested):
    outer, inner = nested
    x = _rand((8, 8, 2))
    cut = truncate(outer, at="backbone/add")
    assert _max_diff(_predict(cut, x), _predict(_intermediate(inner, "add"), x)) <= EXACT
    both = truncate(outer, at=["backbone/conv_a", "logits"])
    expected = [_predict(_intermediate(inner, "conv_a"), x), _predict(outer, x)]
    assert _max_diff(_predict(both, x), expected) <= EXACT


def test_nested_drop_inner_block(nested):
    import keras

    outer, inner = nested
    assert droppable_blocks(outer) == ["backbone/add"]
    x = _rand((8, 8, 2))
    dropped = truncate(outer, drop="backbone/add")
    inp = keras.Input((8, 8, 2))
    t = inner.get_layer("conv_a")(inp)
    t = inner.get_layer("conv_c")(t)
    t = outer.get_layer("logits")(outer.get_layer("gap")(t))
    assert _max_diff(_predict(dropped, x), _predict(keras.Model(inp, t), x)) <= EXACT
    assert _max_diff(_predict(dropped, x), _predict(outer, x)) > 1e-4  # the drop changed something


def test_drop_that_the_cut_already_removes_is_refused(res_cnn, nested):
    with pytest.raises(InputError, match="dropping 'bn' has no effect: the cut at 'res1_add' already removes it"):
        truncate(res_cnn, at="res1_add", drop="bn")
    with pytest.raises(InputError, match="dropping 'res1_add' has no effect"):
        truncate(res_cnn, at=["stem"], drop="res1_add")
    outer, _ = nested
    with pytest.raises(InputError, match="dropping 'backbone/add' has no effect: the cut at 'backbone/conv_a'"):
        truncate(outer, at="backbone/conv_a", drop="backbone/add")
    # drops before the cut (also inside a sub-model the cut point follows) are kept
    assert truncate(res_cnn, at="proj_add", drop=["bn", "res1_add"]).get_layer("proj_add")
    assert truncate(outer, at="gap", drop="backbone/add").output_names == ["gap"]


def test_unknown_nested_name_suggests_the_outer_inner_address(nested):
    outer, _ = nested
    with pytest.raises(InputError, match=r"unknown cut point 'conv_c'.*did you mean 'backbone/conv_c'"):
        truncate(outer, at="conv_c")


@pytest.fixture(scope="module")
def two_inputs():
    import keras

    keras.utils.set_random_seed(7)
    image = keras.Input((6, 6, 1), name="image")
    meta = keras.Input((3,), name="meta")
    a = keras.layers.Flatten(name="flat")(keras.layers.Conv2D(2, 3, name="conv")(image))
    b = keras.layers.Dense(4, activation="relu", name="meta_fc")(meta)
    x = keras.layers.Concatenate(name="concat")([a, b])
    outputs = keras.layers.Dense(2, name="out")(x)
    return keras.Model([image, meta], outputs, name="two_inputs")


def test_multi_input_cut(two_inputs):
    x = [_rand((6, 6, 1)), _rand((3,), seed=1)]
    cut = truncate(two_inputs, at="concat")
    assert [t.name for t in cut.inputs] == ["image", "meta"]
    assert _max_diff(_predict(cut, x), _predict(_intermediate(two_inputs, "concat"), x)) <= EXACT
    branches = truncate(two_inputs, at=["conv", "meta_fc"])
    assert _max_diff(_predict(branches, x), _predict(_intermediate(two_inputs, "conv", "meta_fc"), x)) <= EXACT


def test_cut_that_leaves_an_input_unused_is_refused(two_inputs):
    with pytest.raises(InputError, match=r"leaves model input\(s\) 'meta' unused"):
        truncate(two_inputs, at="flat")


def test_drop_of_a_multi_input_layer_is_refused(two_inputs):
    with pytest.raises(InputError, match="cannot drop 'concat': it takes 2 inputs.*no droppable residual blocks"):
        truncate(two_inputs, drop="concat")


# ---- drop -----------------------------------------------------------------------------


def test_drop_shape_preserving_layer_equals_model_without_it(res_cnn):
    import keras

    x = _rand((12, 12, 3))  # a cut before the BN is refused: test_drop_that_the_cut_already_removes_is_refused
    dropped = truncate(res_cnn, drop="bn", at="proj_add")
    before = _intermediate(res_cnn, "res1_add")
    inp = keras.Input((12, 12, 3))
    t = before(inp)
    t = res_cnn.get_layer("proj_add")([res_cnn.get_layer("proj_short")(t), res_cnn.get_layer("proj_conv")(t)])
    assert _max_diff(_predict(dropped, x), _predict(keras.Model(inp, t), x)) <= EXACT
    assert _max_diff(_predict(dropped, x), _predict(_intermediate(res_cnn, "proj_add"), x)) > 1e-3


def test_drop_residual_block_equals_hand_built_reference(res_cnn):
    import keras

    x = _rand((12, 12, 3))
    dropped = truncate(res_cnn, drop="res1_add")
    assert "res1_conv1" not in [layer.name for layer in dropped.layers]
    inp = keras.Input((12, 12, 3))
    t = res_cnn.get_layer("bn")(res_cnn.get_layer("stem")(inp))
    t = res_cnn.get_layer("proj_add")([res_cnn.get_layer("proj_short")(t), res_cnn.get_layer("proj_conv")(t)])
    for name in ("pool", "gap", "scores"):
        t = res_cnn.get_layer(name)(t)
    assert _max_diff(_predict(dropped, x), _predict(keras.Model(inp, t), x)) <= EXACT


def test_refused_drop_names_the_droppable_blocks(res_cnn):
    assert droppable_blocks(res_cnn) == ["res1_add"]
    with pytest.raises(InputError, match=r"cannot drop 'stem': its output shape \(12, 12, 8\) differs from its "
                                         r"input shape \(12, 12, 3\).*droppable residual blocks: res1_add"):
        truncate(res_cnn, drop="stem")
    with pytest.raises(InputError, match="'proj_add' adds two branches.*projection.*droppable .* blocks: res1_add"):
        truncate(res_cnn, drop="proj_add")
    with pytest.raises(InputError, match="cannot drop 'pixels': it is a model input"):
        truncate(res_cnn, drop="pixels")


def test_drop_that_would_disconnect_the_graph_is_refused():
    import keras

    inputs = keras.Input((4,), name="x")
    h = keras.layers.Dense(4, name="branch")(inputs)
    s = keras.layers.Add(name="merge")([inputs, h])
    side = keras.layers.Dense(2, name="side")(h)  # reads the block's branch from outside
    model = keras.Model(inputs, [s, side])
    with pytest.raises(InputError, match="layer 'side' outside the block uses 'branch'.*disconnect"):
        truncate(model, drop="merge")


def test_cut_in_a_dropped_branch_is_unreachable(res_cnn):
    with pytest.raises(InputError, match="no path from the model's inputs reaches layer 'res1_conv2'.*"
                                         "branch of dropped block 'res1_add'"):
        truncate(res_cnn, at="res1_conv2", drop="res1_add")
    with pytest.raises(InputError, match="reaches layer 'bn' in the truncated model \\(dropped\\)"):
        truncate(res_cnn, at="bn", drop="bn")


# ---- bad input ------------------------------------------------------------------------


def test_unknown_layer_did_you_mean(res_cnn):
    with pytest.raises(InputError, match=r"unknown cut point 'res1_ad' \(did you mean 'res1_add'"):
        truncate(res_cnn, at="res1_ad")
    with pytest.raises(InputError, match="unknown layer to drop 'bnn'.*did you mean 'bn'"):
        truncate(res_cnn, drop="bnn")


def test_bad_cut_points(res_cnn):
    with pytest.raises(InputError, match=r"cut point index 40 is out of range: the model has 12 layers"):
        truncate(res_cnn, at=40)
    with pytest.raises(InputError, match="cut point 'stem' is given more than once"):
        truncate(res_cnn, at=["stem", "stem"])
    with pytest.raises(InputError, match="cannot cut at 'pixels': it is a model input"):
        truncate(res_cnn, at="pixels")
    with pytest.raises(InputError, match=r"a cut point must be a layer name or an integer index, got 1.5"):
        truncate(res_cnn, at=[1.5])


def test_lambda_and_custom_layers_need_trust():
    import keras

    class Scale(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    inputs = keras.Input((3,), name="x")
    x = keras.layers.Lambda(lambda t: t + 1.0, name="plus_one")(inputs)
    x = Scale(name="scale")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="fc")(x))
    with pytest.raises(InputError, match=r"Lambda or custom layers: plus_one \(Lambda\), scale \(Scale\).*"
                                         "--trust-model"):
        truncate(model, at="scale")
    cut = truncate(model, at="scale", trust=True)
    assert _max_diff(_predict(cut, np.ones((2, 3), np.float32)), np.full((2, 3), 4.0)) <= EXACT


def test_subclassed_model_is_refused():
    import keras

    class Tiny(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(InputError, match="is not a Functional or Sequential Keras model"):
        truncate(Tiny(name="tiny"), at=0)


# ---- head -----------------------------------------------------------------------------


def test_head_spec_parsing():
    head = parse_head("gap, dense:64:relu, dropout:0.2, activation:tanh, classes:10")
    assert [h.kind for h in head] == ["gap", "dense", "dropout", "activation", "classes"]
    assert head[1].units == 64 and head[1].activation == "relu" and head[2].rate == 0.2
    assert head[-1].activation == "softmax"
    for spec, message in [
        ("gap,dens:4", r"unknown head item 'dens:4' \(did you mean 'dense'"),
        ("dense:x", "UNITS must be a positive integer"),
        ("dense", r"has 0 argument\(s\); write it as dense:UNITS\[:ACTIVATION\]"),
        ("dropout:1.5", r"RATE must be a number in \[0, 1\)"),
        ("dense:4:rleu", "unknown activation 'rleu'"),
        ("classes:3,dense:2", "must be the last item"),
        ("classes:3:relu", "classes activation must be softmax or linear"),
        ("gap,,classes:2", "has an empty item"),
    ]:
        with pytest.raises(InputError, match=message):
            parse_head(spec)


def test_head_errors(res_cnn):
    with pytest.raises(InputError, match="a head goes on one output, but 2 cut points"):
        truncate(res_cnn, at=["stem", "bn"], head="gap,classes:2")
    with pytest.raises(InputError, match="'classes:2' needs flat.*start the head with gap"):
        truncate(res_cnn, at="bn", head="classes:2")
    with pytest.raises(InputError, match="'gap' pools over space, but the cut output has rank 2"):
        truncate(res_cnn, at="gap", head="gap,classes:2")
    x, y = _rand((12, 12, 3)), np.array([0, 1, 0, 1])
    with pytest.raises(InputError, match="training the head needs a 'classes:N' item"):
        truncate(res_cnn, at="bn", head="gap,dense:4", train_data=(x, y))
    with pytest.raises(DataError, match=r"head labels must be integer class ids in \[0, 2\), got values 0..5"):
        truncate(res_cnn, at="bn", head="gap,classes:2", train_data=(x, np.array([0, 1, 5, 1])))
    with pytest.raises(InputError, match="train_data was given without a head"):
        truncate(res_cnn, at="bn", train_data=(x, y))


@pytest.fixture(scope="module")
def digits(demo_inputs):
    from toolchain.data import load_npz
    from toolchain.keras_io import input_signature, load_model

    model = load_model(demo_inputs / "digits_cnn.keras")
    train = load_npz(demo_inputs / "digits_train.npz", input_signature(model))
    evaluation = load_npz(demo_inputs / "digits_eval.npz", input_signature(model))
    return model, train, evaluation


def test_head_training_is_seeded_and_keeps_the_base_frozen(digits):
    model, train, evaluation = digits
    before = [w.copy() for w in model.get_layer("conv2").get_weights()]
    head = "flatten,dense:32:relu,classes:10"
    first = truncate(model, at="pool", head=head, train_data=train, epochs=8, seed=3)
    second = truncate(model, at="pool", head=head, train_data=train, epochs=8, seed=3)
    for a, b in zip(first.get_layer("head_dense").get_weights(), second.get_layer("head_dense").get_weights(),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(before, model.get_layer("conv2").get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # the base did not train
    assert first.get_layer("conv2") is model.get_layer("conv2")
    predictions = _predict(first, evaluation.inputs["image"]).argmax(axis=1)
    accuracy = float(np.mean(predictions == evaluation.labels))
    assert accuracy > 0.8  # the pooled conv2 features separate the digits well
    assert first.output_names == ["head_classes"]


def test_truncated_model_exports_and_verifies(digits, tmp_path):
    from toolchain.keras_io import run_keras
    from toolchain.stages.export_onnx import export_onnx
    from toolchain.stages.export_tflite import export_tflite
    from toolchain.stages.verify import tolerance_for, verify_artifact

    model, train, evaluation = digits
    truncated = truncate(model, at="pool", head="flatten,classes:10", train_data=train, epochs=3)
    sample = evaluation.head(64)
    reference = run_keras(truncated, sample.inputs)
    artifacts = [export_tflite(truncated, tmp_path / "t.fp32.tflite"), export_onnx(truncated, tmp_path / "t.fp32.onnx")]
    for path in artifacts:
        result = verify_artifact(path, reference, sample, tolerance_for("fp32"))
        assert result["verdict"] == "pass", result["failures"]
        assert list(result["outputs"]) == ["head_classes"]


def test_truncated_model_saves_and_loads(res_cnn, tmp_path):
    from toolchain.keras_io import load_model

    cut = truncate(res_cnn, at=["res1_add", "gap"], drop="bn")
    cut.save(tmp_path / "cut.keras")
    loaded = load_model(tmp_path / "cut.keras")
    x = _rand((12, 12, 3))
    assert loaded.output_names == ["res1_add", "gap"]
    assert _max_diff(_predict(loaded, x), _predict(cut, x)) <= EXACT


# ---- keras.applications ---------------------------------------------------------------


@pytest.mark.heavy
def test_mobilenet_v2_cuts_and_block_drop(mobilenet_v2_96):
    import keras

    m = mobilenet_v2_96
    x = _rand((96, 96, 3), count=2)
    names = ["block_3_expand_relu", "block_13_expand_relu", "out_relu"]
    cut = truncate(m, at=names)
    assert _max_diff(_predict(cut, x), _predict(_intermediate(m, *names), x)) <= EXACT
    assert _max_diff(_predict(truncate(m, at=-1), x), _predict(m, x)) <= EXACT

    assert "block_14_add" in droppable_blocks(m) and "block_13_add" not in droppable_blocks(m)
    dropped = truncate(m, drop="block_14_add", at="block_15_add")
    inp = keras.Input((96, 96, 3))
    t = _intermediate(m, "block_13_project_BN")(inp)  # block 14 removed: its input goes on
    h = t
    for part in ("expand", "expand_BN", "expand_relu", "depthwise", "depthwise_BN", "depthwise_relu",
                 "project", "project_BN"):
        h = m.get_layer(f"block_15_{part}")(h)
    reference = keras.Model(inp, m.get_layer("block_15_add")([t, h]))
    assert _max_diff(_predict(dropped, x), _predict(reference, x)) <= EXACT


@pytest.mark.heavy
def test_resnet50_cuts_and_block_drop(resnet50_64):
    import keras

    r = resnet50_64
    x = _rand((64, 64, 3), count=2)
    names = ["conv2_block3_out", "conv4_block3_add", "avg_pool"]
    assert _max_diff(_predict(truncate(r, at=names), x), _predict(_intermediate(r, *names), x)) <= EXACT

    dropped = truncate(r, drop="conv4_block3_add", at="conv4_block4_out")
    inp = keras.Input((64, 64, 3))
    t = r.get_layer("conv4_block3_out")(_intermediate(r, "conv4_block2_out")(inp))
    h = t
    for part in ("1_conv", "1_bn", "1_relu", "2_conv", "2_bn", "2_relu", "3_conv", "3_bn"):
        h = r.get_layer(f"conv4_block4_{part}")(h)
    t = r.get_layer("conv4_block4_out")(r.get_layer("conv4_block4_add")([t, h]))
    assert _max_diff(_predict(dropped, x), _predict(keras.Model(inp, t), x)) <= EXACT
    with pytest.raises(InputError, match="'conv4_block1_add' adds two branches.*droppable residual blocks: "
                                         "conv2_block2_add, conv2_block3_add, conv3_block2_add"):
        truncate(r, drop="conv4_block1_add")


# ---- package API and CLI ----------------------------------------------------------------


def test_truncate_is_exported_lazily():
    import subprocess
    import sys

    code = ("import sys, toolchain; assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules; "
            "from toolchain.api import truncate; assert toolchain.truncate is truncate; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]


def test_cli_truncate_writes_a_loadable_model(demo_inputs, digits, tmp_path, capsys):
    import json

    from toolchain.cli import main
    from toolchain.keras_io import load_model

    model, _, evaluation = digits
    out = tmp_path / "cut.keras"
    code = main(["truncate", str(demo_inputs / "digits_cnn.keras"), "-o", str(out), "--at", "pool",
                 "--head", "flatten,classes:10", "--train", str(demo_inputs / "digits_train.npz"), "--epochs", "3"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "parameters: 38,282 → 9,930" in printed and "output head_classes: [None, 10]" in printed
    loaded = load_model(out)
    x = evaluation.inputs["image"][:32]
    np.testing.assert_array_equal(_predict(loaded, x).shape, (32, 10))
    np.testing.assert_allclose(_predict(truncate(loaded, at="pool"), x),
                               _predict(_intermediate(model, "pool"), x), atol=EXACT)

    code = main(["truncate", str(demo_inputs / "digits_cnn.keras"), "-o", str(tmp_path / "b.keras"), "--at=-3",
                 "--json"])
    info = json.loads(capsys.readouterr().out)
    assert code == 0 and info["outputs"] == [{"name": "fc", "shape": [None, 64], "dtype": "float32"}]
    assert info["macs"] == {"before": 337536, "after": 337536 - 64 * 10} and not info["head_trained"]


def test_cli_truncate_errors_leave_no_output(demo_inputs, tmp_path, capsys):
    from toolchain.cli import main

    model = str(demo_inputs / "digits_cnn.keras")
    out = tmp_path / "cut.keras"
    cases = [
        (["--at", "pol"], "unknown cut point 'pol' (did you mean 'pool'"),
        (["--drop", "conv2"], "cannot drop 'conv2'"),
        ([], "nothing to do: give at least one of --at, --drop or --head"),
        (["--at", "pool", "--train", str(demo_inputs / "digits_train.npz")], "--train trains a new head"),
        (["--at", "pool", "--drop", "dropout"], "dropping 'dropout' has no effect: the cut at 'pool' already"),
    ]
    for args, message in cases:
        assert main(["truncate", model, "-o", str(out), *args]) == 2
        assert message in capsys.readouterr().err
    assert main(["truncate", model, "-o", str(tmp_path / "cut.h5"), "--at", "pool"]) == 2
    assert "give an output path ending in .keras" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


TRUNCATE_PIPELINE = """\
[model]
path = "digits_cnn.keras"
name = "digits"

[data]
eval = "digits_eval.npz"
samples = 200

[export]
formats = ["tflite", "onnx"]

[verify]
samples = 200

[bench]
enabled = false

[truncate]
at = ["pool"]
drop = ["conv2"]
head = "flatten,classes:10"

[truncate.train]
data = "digits_train.npz"
epochs = 4
seed = 1
"""


def test_pipeline_truncate_stage_exports_the_truncated_model(pipeline_copy, tmp_path):
    import json

    from toolchain.cli import main
    from toolchain.fileio import sha256_file
    from toolchain.keras_io import load_model
    from toolchain.manifest import validate_manifest

    pipeline_copy.write_text(TRUNCATE_PIPELINE.replace('drop = ["conv2"]\n', ""))
    out = tmp_path / "run"
    assert main(["run", str(pipeline_copy), "--out", str(out), "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    validate_manifest(manifest)
    [model] = manifest["models"]
    assert model["path"] == "models/digits.truncated.keras" and model["stage"] == "truncate"
    assert model["sha256"] == sha256_file(out / model["path"])
    assert model["parent"] == manifest["source_model"]["sha256"]
    assert model["settings"]["at"] == ["pool"] and model["params"] == 9930
    assert model["outputs"][0]["name"] == "head_classes"
    assert load_model(out / model["path"]).output_names == ["head_classes"]
    assert [a["name"] for a in manifest["artifacts"]] == ["digits.fp32.tflite", "digits.fp32.onnx"]
    for artifact in manifest["artifacts"]:
        assert artifact["parent"] == model["sha256"]
        assert artifact["verify"]["verdict"] == "pass"
        assert artifact["outputs"][0]["shape"][-1] == 10
        assert artifact["verify"]["outputs"]["head_classes"]["accuracy"] > 0.85  # retrained head on conv features
    verify = json.loads((out / "verify.json").read_text())
    assert verify["reference"] == "models/digits.truncated.keras"


def test_pipeline_truncate_errors_write_nothing(pipeline_copy, tmp_path, capsys):
    from toolchain.cli import main

    pipeline_copy.write_text(TRUNCATE_PIPELINE)  # conv2 changes the shape: it cannot be dropped
    out = tmp_path / "run"
    assert main(["run", str(pipeline_copy), "--out", str(out), "--quiet"]) == 2
    assert "cannot drop 'conv2'" in capsys.readouterr().err
    assert not (out / "manifest.json").exists() and not (out / "models").exists()
    pipeline_copy.write_text(TRUNCATE_PIPELINE.replace('drop = ["conv2"]\n', "").replace('at = ["pool"]', "at = []")
                             .replace('head = "flatten,classes:10"\n', ""))
    assert main(["run", str(pipeline_copy), "--out", str(out), "--quiet"]) == 2
    assert "give at least one of 'at', 'drop' or 'head'" in capsys.readouterr().err


def test_inlined_sub_model_with_clashing_layer_names_is_refused():
    import keras

    inputs = keras.Input((4,), name="inner_x")
    inner = keras.Model(inputs, keras.layers.Dense(4, name="dense")(inputs), name="inner")
    outer = keras.Sequential([keras.Input((4,)), inner, keras.layers.Dense(2, name="dense")], name="outer")
    with pytest.raises(InputError, match='cannot build the truncated model: The name "dense" is used 2 times.*'
                                         "inlined"):
        truncate(outer, at=["inner/dense", "dense"])


# ---- head training: bounded memory, progress, metrics ------------------------------------


def test_head_training_streams_the_base_in_batches_and_reports_progress_and_metrics(digits):
    import keras

    from toolchain.stages.truncate import FEATURE_BATCH, HeadProgress

    seen_batches: list[int] = []

    class BatchRecorder(keras.layers.Layer):
        """Records how many samples the frozen base gets per call (its memory grows with them)."""

        def call(self, x):
            import tensorflow as tf

            tf.numpy_function(lambda n: seen_batches.append(int(n)) or n, [tf.shape(x)[0]], tf.int32)
            return x

    model, train, evaluation = digits
    inputs = keras.Input((8, 8, 1), name="image")
    features = model.get_layer("conv1")(BatchRecorder(name="recorder")(inputs))
    base = keras.Model(inputs, features, name="recorded")
    events: list[HeadProgress] = []
    truncate(base, head="gap,classes:10", train_data=train.head(200), eval_data=evaluation.head(100), epochs=2,
             trust=True, progress=events.append)
    assert seen_batches and max(seen_batches) <= FEATURE_BATCH  # never the whole data set at once
    assert sum(seen_batches) == 300  # every sample, once
    done = {what: [e.done for e in events if e.stage == "features" and e.what == what] for what in ("train", "eval")}
    assert done["train"][-1] == 200 and done["eval"][-1] == 100
    assert done["train"] == sorted(done["train"]) and len(done["train"]) == -(-200 // FEATURE_BATCH)
    epochs = [e for e in events if e.stage == "epoch"]
    assert [(e.done, e.total) for e in epochs] == [(1, 2), (2, 2)]
    for event in epochs:
        assert set(event.metrics) == {"loss", "accuracy", "eval_loss", "eval_accuracy"}
        assert event.metrics["loss"] > 0 and 0 <= event.metrics["eval_accuracy"] <= 1


def test_head_eval_data_errors(digits):
    model, train, evaluation = digits
    with pytest.raises(InputError, match="eval_data was given without train_data"):
        truncate(model, at="pool", head="flatten,classes:10", eval_data=evaluation)
    wrong = (evaluation.inputs["image"][:8], np.full(8, 12))
    with pytest.raises(DataError, match=r"head labels of the eval data must be integer class ids in \[0, 10\)"):
        truncate(model, at="pool", head="flatten,classes:10", train_data=train.head(32), eval_data=wrong)


def test_cli_truncate_train_prints_epoch_metrics(demo_inputs, tmp_path, capsys):
    import json

    from toolchain.cli import main

    model = str(demo_inputs / "digits_cnn.keras")
    args = ["truncate", model, "--at", "pool", "--head", "flatten,classes:10", "--train",
            str(demo_inputs / "digits_train.npz"), "--eval", str(demo_inputs / "digits_eval.npz"), "--epochs", "2"]
    assert main([*args, "-o", str(tmp_path / "a.keras")]) == 0
    captured = capsys.readouterr()
    assert "features of the train data: 1297/1297" in captured.err
    assert "features of the eval data: 500/500" in captured.err
    assert "epoch 1/2: loss " in captured.err and "epoch 2/2: loss " in captured.err
    assert "; eval loss " in captured.err
    assert "head after 2 epoch(s): loss " in captured.out and "eval loss" in captured.out
    assert main([*args, "-o", str(tmp_path / "b.keras"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)["head_metrics"]
    assert set(metrics) == {"loss", "accuracy", "eval_loss", "eval_accuracy"}
    assert metrics["eval_accuracy"] > 0.5  # flattened conv features: a linear head learns fast
    assert main(["truncate", model, "-o", str(tmp_path / "c.keras"), "--head", "flatten,classes:10", "--eval",
                 str(demo_inputs / "digits_eval.npz")]) == 2
    assert "--eval scores the head trained with --train: give --train too" in capsys.readouterr().err
    assert not (tmp_path / "c.keras").exists()
