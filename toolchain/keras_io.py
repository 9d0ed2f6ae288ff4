"""Safe Keras model loading, layer lookup and the model's I/O signature."""

from __future__ import annotations

import contextlib
import difflib
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import keras_graph
from .errors import ConfigError, ModelLoadError, StageError
from .fileio import zip_size_problem
from .keras_graph import producing_operation

UNSAFE_LAYER_CLASSES = ("Lambda",)
TRUST_HINT = "re-run with --trust-model (or trust = true under [model]) only if you trust its author"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int | None, ...]  # without the batch dimension
    dtype: str


def load_model(path: str | Path, *, trust: bool = False) -> Any:
    """Load a `.keras` or `.h5` model in safe mode.

    Lambda layers run arbitrary Python when deserialized, so a model that has one is
    refused unless the caller says the model is trusted.
    """
    path = Path(path)
    config = read_model_config(path)
    unsafe = sorted(find_layer_classes(config, UNSAFE_LAYER_CLASSES))
    if unsafe and not trust:
        raise ModelLoadError(
            f"{path}: refusing to load a model with {', '.join(unsafe)} layers "
            f"(they execute arbitrary code when loaded); {TRUST_HINT}"
        )
    from .native_chatter import quiet_tensorflow

    quiet_tensorflow()  # before Keras imports TensorFlow
    import keras

    try:
        if trust:
            keras.config.enable_unsafe_deserialization()
        return keras.models.load_model(path, compile=False, safe_mode=not trust)
    except Exception as e:  # keras raises many types for corrupt archives
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(
            f"{path}: could not load the Keras model ({type(e).__name__}: {reason[:300]}); "
            "check that the file was saved with model.save() by Keras 3 and that any custom "
            "layers are registered"
        ) from e


def read_model_config(path: Path) -> dict:
    """Read the architecture config without building the model (cheap, no code runs)."""
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelLoadError(f"model path is not a file: {path}")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"model file is empty: {path}")
    suffix = path.suffix.lower()
    if suffix == ".keras":
        return _read_keras_archive_config(path)
    if suffix in (".h5", ".hdf5"):
        return _read_h5_config(path)
    raise ModelLoadError(
        f"{path}: unsupported model file type '{suffix}'; give a Keras 3 '.keras' file "
        "(or a legacy '.h5')"
    )


# config.json of the largest keras.applications model is under 1 MiB; a 1 MB zip that declared
# a 1 GiB config.json took 2.7 GB of memory to read.
MAX_CONFIG_BYTES = 64 * 2**20


def _read_keras_archive_config(path: Path) -> dict:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if "config.json" not in names:
                raise ModelLoadError(
                    f"{path}: this zip file is not a Keras model (no config.json inside; "
                    f"it holds {', '.join(repr(n[:80]) for n in names[:5]) or 'nothing'})"
                )
            check_archive_sizes(path, archive)
            with archive.open("config.json") as member:  # reads at most the checked declared size
                return json.loads(member.read())
    except zipfile.BadZipFile as e:
        raise ModelLoadError(
            f"{path}: not a valid .keras file (not a zip archive, or truncated); "
            "re-save the model with model.save('model.keras')"
        ) from e
    except (json.JSONDecodeError, UnicodeDecodeError, zipfile.LargeZipFile, OSError, EOFError,
            RecursionError) as e:
        raise ModelLoadError(f"{path}: corrupt .keras file: unreadable config.json ({type(e).__name__}: "
                             f"{str(e)[:200]})") from e


def check_archive_sizes(path: Path, archive: zipfile.ZipFile) -> None:
    """Declared sizes against the file and against what compression can do, before inflating."""
    problem = zip_size_problem(path, archive)
    if problem:
        raise ModelLoadError(f"{path}: corrupt .keras file: {problem}; re-save the model")
    config_bytes = archive.getinfo("config.json").file_size
    if config_bytes > MAX_CONFIG_BYTES:
        raise ModelLoadError(f"{path}: refusing a config.json of {config_bytes:,} bytes (over "
                             f"{MAX_CONFIG_BYTES // 2**20} MiB; a real model's config is under 1 MiB): "
                             "a decompression bomb, or not a Keras model")


def _read_h5_config(path: Path) -> dict:
    with open(path, "rb") as f:
        if f.read(8) != b"\x89HDF\r\n\x1a\n":
            raise ModelLoadError(f"{path}: not an HDF5 file (bad signature); is it really an .h5 model?")
    try:
        import h5py

        with h5py.File(path, "r") as h5:
            raw = h5.attrs.get("model_config")
    except Exception as e:
        raise ModelLoadError(f"{path}: corrupt HDF5 model file ({e})") from e
    if raw is None:
        raise ModelLoadError(f"{path}: HDF5 file holds no model config (weights-only file?)")
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    return json.loads(raw)


def find_layer_classes(config: Any, classes: tuple[str, ...]) -> set[str]:
    found: set[str] = set()
    if isinstance(config, dict):
        if config.get("class_name") in classes:
            found.add(config["class_name"])
        for value in config.values():
            found |= find_layer_classes(value, classes)
    elif isinstance(config, list):
        for value in config:
            found |= find_layer_classes(value, classes)
    return found


def did_you_mean(word: str, candidates: list[str], n: int = 3) -> str:
    close = difflib.get_close_matches(word, candidates, n=n, cutoff=0.5)
    if not close:
        return ""
    return " (did you mean " + ", ".join(f"'{c}'" for c in close) + "?)"


def input_signature(model: Any) -> list[TensorInfo]:
    model = as_functional(model)
    return [
        TensorInfo(_tensor_name(t), tuple(t.shape[1:]), _dtype_name(t.dtype)) for t in model.inputs
    ]


def output_names(model: Any) -> list[str]:
    """One unique name per output tensor.

    Keras names outputs by the layer that made them, so the outputs of one layer (an LSTM's
    sequence and states) share a name; Sequential models have no `output_names` at all.
    Repeats become `<name>_1`, `<name>_2`, ... so no output is merged away in a name-keyed dict.
    """
    model = as_functional(model)
    names = getattr(model, "output_names", None)
    return unique_names(list(names) if names else [_layer_name(t) for t in model.outputs])


def unique_names(names: list[str]) -> list[str]:
    """`names` with each repeat suffixed `_1`, `_2`, ..., skipping names already in the list."""
    taken = set(names)
    result: list[str] = []
    for name in names:
        candidate, n = name, 0
        while candidate in result or (n and candidate in taken):
            n += 1
            candidate = f"{name}_{n}"
        result.append(candidate)
    return result


def output_signature(model: Any) -> list[TensorInfo]:
    model = as_functional(model)
    names = output_names(model)
    return [
        TensorInfo(name, tuple(t.shape[1:]), _dtype_name(t.dtype))
        for name, t in zip(names, model.outputs, strict=True)
    ]


def check_outputs_kept(expected: list[str], produced: list[str], what: str) -> None:
    """The artifact must have exactly the model's outputs: a lost output is data loss, not a detail."""
    if sorted(expected) != sorted(produced):
        missing = [n for n in expected if n not in produced]
        extra = [n for n in produced if n not in expected]
        raise StageError(
            f"{what} has {len(produced)} outputs but the model has {len(expected)} "
            f"(missing: {', '.join(missing) or 'none'}; unexpected: {', '.join(extra) or 'none'}); "
            "refusing to write an artifact that drops or renames outputs"
        )


_FUNCTIONAL_VIEWS: Any = None


def as_functional(model: Any) -> Any:
    """The model itself, or for a subclassed model (no `inputs`) a functional model around it.

    Export, verify and the manifest need named, shaped inputs and outputs; a subclassed model
    only knows the shapes of its first call, so the view is traced from those (as Keras'
    own export does). The view reuses the model's layers and weights; one per model.
    """
    global _FUNCTIONAL_VIEWS
    if hasattr(model, "inputs") or not hasattr(model, "call"):
        return model
    import weakref

    if _FUNCTIONAL_VIEWS is None:
        _FUNCTIONAL_VIEWS = weakref.WeakKeyDictionary()
    if model not in _FUNCTIONAL_VIEWS:
        _FUNCTIONAL_VIEWS[model] = _trace_first_call(model)
    return _FUNCTIONAL_VIEWS[model]


def _trace_first_call(model: Any) -> Any:
    import keras

    shapes = keras_graph.build_shapes(model)
    if not keras_graph.was_called(model) or not shapes:
        kind = "Sequential model without a keras.Input" if isinstance(model, keras.Sequential) else "subclassed model"
        raise ConfigError(
            f"{kind} '{model.name}' has never been called, so its input shapes are unknown: call it "
            "once on an example batch (model(x)) before exporting, or wrap it in a functional model "
            "(keras.Model(keras.Input(shape), model(keras.Input(shape))))"
        )
    if not all(_is_shape(shape) for shape in shapes.values()):
        raise ConfigError(
            f"subclassed model '{model.name}' takes nested inputs ({', '.join(shapes)}); export "
            "traces tensor arguments only: wrap it in a functional model with one keras.Input per tensor"
        )
    inputs = [
        keras.Input(tuple(shape[1:]), dtype=model.input_dtype, name=key.removesuffix("_shape"))
        for key, shape in shapes.items()
    ]
    try:
        outputs = model(*inputs)
        return keras.Model(inputs, outputs, name=model.name)
    except Exception as e:
        raise ConfigError(
            f"subclassed model '{model.name}' cannot be traced on symbolic inputs "
            f"({type(e).__name__}: {_first_line(e)}); wrap it in a functional model or make its "
            "call() work on keras.Input tensors"
        ) from e


def _is_shape(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and all(isinstance(d, (int, type(None))) for d in value)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _tensor_name(tensor: Any) -> str:
    """The InputLayer's name: stable across save/load, unlike auto-named `keras_tensor_N`."""
    return _layer_name(tensor)


def _layer_name(tensor: Any) -> str:
    name = getattr(producing_operation(tensor), "name", None)
    name = name or getattr(tensor, "name", None) or "input"
    return name.split(":")[0]


def _dtype_name(dtype: Any) -> str:
    return getattr(dtype, "name", str(dtype))


def run_keras(model: Any, inputs: dict[str, Any], batch_size: int = 32) -> dict[str, Any]:
    """Run the model on named inputs and return named numpy outputs."""
    import numpy as np

    model = as_functional(model)
    names = [t.name for t in input_signature(model)]
    args = [inputs[n] for n in names]
    result = model.predict(args if len(args) > 1 else args[0], batch_size=batch_size, verbose=0)
    if isinstance(result, dict):
        outputs = [result[k] for k in output_names(model)]
    else:
        outputs = result if isinstance(result, (list, tuple)) else [result]
    return {
        name: np.asarray(out) for name, out in zip(output_names(model), outputs, strict=True)
    }


def serving_function(model: Any, batch_size: int | None = 1) -> tuple[Any, list[Any]]:
    """A tf.function with named inputs and a dict of named outputs.

    Converters keep these names (TFLite signature keys, ONNX graph I/O names), which
    `from_keras_model` and tf2onnx's `from_keras` do not do reliably under Keras 3.
    """
    import tensorflow as tf

    model = as_functional(model)
    inputs = input_signature(model)
    specs = [
        tf.TensorSpec((batch_size, *info.shape), tf.as_dtype(info.dtype), name=info.name)
        for info in inputs
    ]
    names_out = output_names(model)

    def serve(*args):
        result = model(list(args) if len(args) > 1 else args[0], training=False)
        if isinstance(result, dict):
            result = [result[k] for k in names_out]
        elif not isinstance(result, (list, tuple)):
            result = [result]
        return dict(zip(names_out, result, strict=True))

    return tf.function(serve, input_signature=specs), specs


def frozen_serving_function(model: Any, batch_size: int | None = 1, *,
                            tanh_gelu_as_sigmoid: bool = False) -> tuple[Any, list[Any]]:
    """The serving tf.function with everything it captures frozen to constants, outputs named.

    Both converters need it. TFLite: converting the unfrozen function with the model as
    trackable keeps Keras 3's weights as resource variables (VAR_HANDLE/READ_VARIABLE)
    that nothing initializes, so the artifact outputs NaN. tf2onnx: it takes every
    captured tensor that is not a variable for a graph input, so constants a layer holds
    as plain tensors (the Normalization mean and variance in EfficientNet) become extra
    ONNX inputs the caller would have to feed. Freezing drops the output names, so a thin
    wrapper restores them. Control flow stays as While/If ops: lowered into Switch/Merge,
    a recurrent layer's loop is neither a valid ONNX Loop nor a TFLite WHILE.
    `tanh_gelu_as_sigmoid`: see `sigmoid_tanh_gelu()`.
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    function, specs = serving_function(model, batch_size)
    with sigmoid_tanh_gelu() if tanh_gelu_as_sigmoid else contextlib.nullcontext():
        concrete = function.get_concrete_function()
    frozen = convert_variables_to_constants_v2(concrete, lower_control_flow=False)
    structure = concrete.structured_outputs

    @tf.function(input_signature=specs)
    def named(*args):
        flat = frozen(*args)
        return tf.nest.pack_sequence_as(structure, tf.nest.flatten(flat))

    return named, specs


@contextlib.contextmanager
def sigmoid_tanh_gelu() -> Iterator[None]:
    """While tracing, emit tanh-approximate GELU as x * sigmoid(2z), the same function.

    TF writes both GELUs as 0.5 * x * (...). Applied to one tensor, the graph optimizers
    share that product between them, which breaks the converters' GELU patterns: TFLite
    then leaves the exact GELU's Erfc without a kernel, tf2onnx writes a node whose input
    it removed. Without 0.5 * x in the approximate one, nothing is shared.
    """
    import math

    import tensorflow as tf

    original = tf.nn.gelu
    scale = 2.0 * math.sqrt(2.0 / math.pi)

    def gelu(features: Any, approximate: bool = False, name: str | None = None) -> Any:
        if not approximate:
            return original(features, approximate=False, name=name)
        x = tf.convert_to_tensor(features)
        cube = tf.cast(0.044715, x.dtype) * x * x * x
        return x * tf.sigmoid(tf.cast(scale, x.dtype) * (x + cube))

    tf.nn.gelu = gelu
    try:
        yield
    finally:
        tf.nn.gelu = original
