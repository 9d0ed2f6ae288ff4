"""Calibration and evaluation data: arrays keyed by model input name, checked against the model.

Sources: an .npy/.npz file, a folder of PNG/JPEG images with a preprocessing spec, or a
Python callable `module:function` that yields batches. Calibration and evaluation sets
never overlap; random calibration data is refused unless explicitly allowed.
"""

from __future__ import annotations

import hashlib
import importlib
import re
import sys
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError
from .fileio import available_memory, zip_size_problem


@dataclass
class Dataset:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    source: str = ""
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def head(self, count: int) -> Dataset:
        return Dataset(
            {k: v[:count] for k, v in self.inputs.items()},
            None if self.labels is None else self.labels[:count],
            self.source,
            list(self.notes),
        )

    def take(self, indices: np.ndarray) -> Dataset:
        return Dataset(
            {k: v[indices] for k, v in self.inputs.items()},
            None if self.labels is None else self.labels[indices],
            self.source,
            list(self.notes),
        )


def load_npz(
    path: str | Path,
    input_specs: list[Any],
    *,
    labels_key: str | None = "y",
    limit: int | None = None,
) -> Dataset:
    """Read an .npz (or a single-input .npy) file and check it against the model's inputs.

    `input_specs` are keras_io.TensorInfo (name, shape without batch, dtype). A single-
    input model also accepts the array under the key 'x'.
    """
    path = Path(path)
    arrays = _read_arrays(path, input_specs)
    inputs: dict[str, np.ndarray] = {}
    for spec in input_specs:
        key = spec.name if spec.name in arrays else ("x" if len(input_specs) == 1 else None)
        if key is None or key not in arrays:
            raise DataError(
                f"{path}: no array for model input '{spec.name}' "
                f"(found keys: {', '.join(sorted(arrays)) or 'none'}); key arrays by input name"
            )
        inputs[spec.name] = check_array(arrays[key], spec, f"{path}['{key}']")
    counts = {name: len(a) for name, a in inputs.items()}
    if len(set(counts.values())) != 1:
        raise DataError(f"{path}: inputs have different sample counts: {counts}")
    labels = None
    if labels_key and labels_key in arrays:
        labels = _class_ids(path, arrays[labels_key], labels_key, next(iter(counts.values())))
    dataset = Dataset(inputs, labels, str(path))
    if limit is not None:
        dataset = dataset.head(limit)
    if len(dataset) == 0:
        raise DataError(f"{path}: holds no samples")
    return dataset


def _read_arrays(path: Path, input_specs: list[Any]) -> dict[str, np.ndarray]:
    """Every array of an .npz by key (a .npy: its one array under the only input's name)."""
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    check_array_sizes(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz/.npy file ({e})") from e
    if isinstance(loaded, np.ndarray):
        if len(input_specs) != 1:
            raise DataError(
                f"{path}: a .npy file holds one array but the model has {len(input_specs)} "
                "inputs; use an .npz keyed by input name"
            )
        return {input_specs[0].name: loaded}
    try:
        return {k: loaded[k] for k in loaded.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: corrupt .npz file ({e})") from e


def _class_ids(path: Path, array: np.ndarray, labels_key: str, samples: int) -> np.ndarray:
    """Labels as one integer class id per sample (one-hot rows become their argmax)."""
    labels = np.asarray(array)
    if labels.ndim == 2 and labels.shape[1] > 1:
        labels = labels.argmax(axis=1)
    labels = labels.reshape(-1)
    if len(labels) != samples:
        raise DataError(f"{path}: {len(labels)} labels under '{labels_key}' for {samples} samples")
    if labels.dtype.kind not in "iu":
        raise DataError(f"{path}: labels '{labels_key}' must be integer class ids, got {labels.dtype}")
    return labels


def check_array_sizes(path: Path) -> None:
    """What each array's header declares, against the file and free memory, before numpy allocates it.

    A 1 KB .npz whose header declares a 64 GiB array made numpy fail with _ArrayMemoryError.
    """
    try:
        with open(path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"
        if is_zip:
            with zipfile.ZipFile(path) as archive:
                problem = zip_size_problem(path, archive)
                if problem:
                    raise DataError(f"{path}: corrupt .npz file: {problem}")
                declared = 0
                for info in archive.infolist():
                    if info.filename.endswith(".npy"):
                        with archive.open(info) as handle:
                            declared += _declared_bytes(path, info.filename, handle, info.file_size)
        else:
            with open(path, "rb") as handle:
                declared = _declared_bytes(path, path.name, handle, path.stat().st_size)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz/.npy file ({type(e).__name__}: {str(e)[:200]})") from e
    available = available_memory()
    if available is not None and declared > available:
        raise DataError(f"{path}: its arrays need {declared / 2**30:,.1f} GiB of memory but "
                        f"{available / 2**30:,.1f} GiB is available; use a smaller file (fewer samples)")


def _declared_bytes(path: Path, name: str, handle: Any, stored_bytes: int) -> int:
    """Bytes the .npy header at `handle` declares; refused when more than the member holds."""
    version = np.lib.format.read_magic(handle)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, _, dtype = read_header(handle)
    header_bytes = handle.tell()
    count = 1
    for size in shape:
        count *= int(size)
    declared = count * dtype.itemsize
    if header_bytes + declared > stored_bytes:
        raise DataError(f"{path}: array {name[:80]!r} declares shape {shape} ({declared:,} bytes of "
                        f"{dtype}) but holds {max(0, stored_bytes - header_bytes):,} bytes; the file is "
                        "truncated or its header lies")
    return declared


def check_array(array: np.ndarray, spec: Any, what: str) -> np.ndarray:
    """Shape, dtype and finiteness of one input array, with the fix in the message."""
    array = np.asarray(array)
    expected = tuple(spec.shape)
    if array.ndim != len(expected) + 1:
        raise DataError(
            f"{what}: shape {array.shape} does not fit input '{spec.name}' which takes "
            f"(N, {', '.join('?' if d is None else str(d) for d in expected)})"
        )
    for got, want in zip(array.shape[1:], expected, strict=True):
        if want is not None and got != want:
            raise DataError(
                f"{what}: shape {array.shape} does not fit input '{spec.name}' which takes "
                f"(N, {', '.join('?' if d is None else str(d) for d in expected)})"
            )
    want_dtype = np.dtype(spec.dtype)
    if array.dtype.kind not in "fiub":
        raise DataError(f"{what}: dtype {array.dtype} is not numeric; input '{spec.name}' takes {want_dtype}")
    if want_dtype.kind == "f" and array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise DataError(f"{what}: contains {bad} NaN/inf values; clean the data before using it")
    if want_dtype.kind in "iu" and array.dtype.kind == "f":
        raise DataError(f"{what}: float data for integer input '{spec.name}' ({want_dtype})")
    return array.astype(want_dtype, copy=False)


# ---- sources ----------------------------------------------------------------

CALLABLE_SOURCE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class Preprocess:
    """Image folder -> array: resize to `size` (H, W), colour mode, then (x * scale - mean) / std."""

    size: tuple[int, int] | None = None
    color: str = "rgb"
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)


def load_source(
    source: str,
    input_specs: list[Any],
    *,
    labels_key: str | None = "y",
    preprocess: Preprocess | None = None,
    limit: int | None = None,
) -> Dataset:
    """Load any supported source: 'module:function', an image folder, or an .npy/.npz file."""
    if CALLABLE_SOURCE.fullmatch(source) and not Path(source).exists():
        return load_callable(source, input_specs, limit=limit)
    path = Path(source)
    if path.is_dir():
        return load_image_folder(path, input_specs, preprocess or Preprocess(), limit=limit)
    return load_npz(path, input_specs, labels_key=labels_key, limit=limit)


def load_image_folder(
    folder: Path, input_specs: list[Any], preprocess: Preprocess, *, limit: int | None = None
) -> Dataset:
    """PNG/JPEG files; one sub-folder per class gives labels (class ids in sorted name order)."""
    spec = _image_input(folder, input_specs)
    files, classes = _image_files(folder, limit)
    size, want_channels = _image_size(folder, spec, preprocess)
    mean = np.asarray(preprocess.mean, np.float32)
    std = np.asarray(preprocess.std, np.float32)
    for name, values in (("mean", mean), ("std", std)):
        if values.size not in (1, want_channels):
            raise DataError(f"[data.preprocess] {name} needs 1 or {want_channels} values, got {values.size}")
    images = []
    for file, _ in files:
        array = _read_image(file, "L" if want_channels == 1 else "RGB", size)
        if array.ndim == 2:
            array = array[..., None]
        images.append((array * preprocess.scale - mean) / std)
    array = check_array(np.stack(images), spec, str(folder))
    labels = np.asarray([label for _, label in files], np.int64) if classes else None
    notes = [f"classes (label ids in order): {', '.join(classes)}"] if classes else []
    return Dataset({spec.name: array}, labels, str(folder), notes)


def _image_input(folder: Path, input_specs: list[Any]) -> Any:
    """The one (height, width, channels) input an image folder can feed."""
    if len(input_specs) != 1:
        raise DataError(
            f"{folder}: an image folder feeds one input but the model has {len(input_specs)}; "
            "use an .npz keyed by input name or a module:function source"
        )
    spec = input_specs[0]
    if len(spec.shape) != 3:
        raise DataError(
            f"{folder}: input '{spec.name}' has shape {spec.shape}, not (height, width, channels); "
            "an image folder cannot feed it"
        )
    return spec


def _image_size(folder: Path, spec: Any, preprocess: Preprocess) -> tuple[tuple[int, int], int]:
    """(height, width) images are resized to, and the channels their colour mode gives."""
    height, width, channels = spec.shape
    size = preprocess.size or (height, width)
    if None in size:
        raise DataError(f"{folder}: input '{spec.name}' has no fixed size; set [data.preprocess] size")
    want_channels = 1 if preprocess.color == "grayscale" else 3
    if channels is not None and channels != want_channels:
        raise DataError(
            f"{folder}: color = '{preprocess.color}' gives {want_channels} channel(s) but input "
            f"'{spec.name}' takes {channels}; set [data.preprocess] color"
        )
    return size, want_channels


def _image_files(folder: Path, limit: int | None) -> tuple[list[tuple[Path, int]], list[str]]:
    """(image file, class id or -1) in sorted order, `limit` of them spread evenly; the class names."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if classes:
        files = [(f, i) for i, c in enumerate(classes) for f in sorted((folder / c).iterdir())
                 if f.suffix.lower() in IMAGE_SUFFIXES]
    else:
        files = [(f, -1) for f in sorted(folder.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DataError(f"{folder}: no .png/.jpg/.jpeg images found (directly or in class sub-folders)")
    if limit is not None and len(files) > limit:
        # take evenly across the sorted list so every class is represented
        picks = np.linspace(0, len(files) - 1, limit).round().astype(int)
        files = [files[i] for i in picks]
    return files, classes


def _read_image(file: Path, mode: str, size: tuple[int, int]) -> np.ndarray:
    """One image, converted and resized; a header declaring more pixels than PIL's limit is refused."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file) as image:
                if image.width * image.height > Image.MAX_IMAGE_PIXELS:
                    raise DataError(f"{file}: refusing a decompression bomb: {image.width}x{image.height} pixels "
                                    f"is over the {Image.MAX_IMAGE_PIXELS:,}-pixel limit; resize the image")
                image = image.convert(mode).resize((size[1], size[0]), Image.Resampling.BILINEAR)
                return np.asarray(image, np.float32)
    except Image.DecompressionBombError as e:
        raise DataError(f"{file}: refusing a decompression bomb ({e})") from e
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{file}: not a readable image ({e})") from e


MAX_CALLABLE_SAMPLES = 1_000_000  # the most [data] samples allows; an endless generator stops here


def load_callable(source: str, input_specs: list[Any], *, limit: int | None = None) -> Dataset:
    """`module:function` returning an iterable of batches.

    A batch is a dict {input name: array}, a bare array (single-input models), or a tuple
    (inputs, labels). Batches are read until `limit` samples are collected. The function is
    code: config validation runs it only with [data] allow_code = true, and it must return data.
    """
    function = _import_function(source)
    names = [spec.name for spec in input_specs]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    label_parts: list[np.ndarray] = []
    count = 0
    for number, batch in enumerate(_batches(source, function)):
        inputs, labels = _split_batch(source, number, batch, names)
        for spec in input_specs:
            parts[spec.name].append(check_array(inputs[spec.name], spec, f"{source} batch {number}"))
        if labels is not None:
            label_parts.append(np.asarray(labels).reshape(-1))
        count += len(parts[names[0]][-1])
        if limit is not None and count >= limit:
            break
        if count > MAX_CALLABLE_SAMPLES:
            raise DataError(f"data source '{source}' yielded over {MAX_CALLABLE_SAMPLES:,} samples without end; "
                            "make it finite or set [data] samples")
    if count == 0:
        raise DataError(f"data source '{source}' yielded no samples")
    inputs = {n: np.concatenate(p) for n, p in parts.items()}
    labels = None
    if label_parts:
        if len(label_parts) != len(parts[names[0]]):
            raise DataError(f"data source '{source}': some batches carry labels and some do not")
        labels = np.concatenate(label_parts)
    dataset = Dataset(inputs, labels, source)
    return dataset.head(limit) if limit is not None else dataset


def _import_function(source: str) -> Any:
    module_name, func_name = source.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise DataError(
            f"data source '{source}': cannot import module '{module_name}' ({e}); "
            "put its folder on PYTHONPATH"
        ) from e
    function = getattr(module, func_name, None)
    if not callable(function):
        raise DataError(f"data source '{source}': module '{module_name}' has no function '{func_name}'")
    return function


def _batches(source: str, function: Any) -> Iterator[Any]:
    """The function's batches; its exceptions, and an exit() it calls, become a DataError."""
    try:
        batches = function()
        if not isinstance(batches, Iterable) or isinstance(batches, (dict, np.ndarray, str, bytes)):
            raise DataError(f"data source '{source}' must return or yield batches (an iterable), "
                            f"got {type(batches).__name__}")
        yield from batches
    except DataError:
        raise
    except SystemExit as e:  # `sys:exit` once ended the run with exit 0 and nothing done
        raise DataError(f"data source '{source}' called exit({e.code!r}) instead of returning data; "
                        "a data source must return or yield batches") from e
    except Exception as e:
        raise DataError(f"data source '{source}' raised {type(e).__name__}: {str(e)[:300]}") from e


def _split_batch(source: str, number: int, batch: Any, names: list[str]) -> tuple[dict[str, Any], Any]:
    """(inputs by name, labels or None) of one batch, or a DataError saying what to yield."""
    labels = None
    if isinstance(batch, tuple) and len(batch) == 2:
        batch, labels = batch
    if isinstance(batch, np.ndarray) and len(names) == 1:
        batch = {names[0]: batch}
    if not isinstance(batch, dict):
        raise DataError(
            f"data source '{source}': batch {number} is a {type(batch).__name__}; yield a dict "
            f"keyed by input name ({', '.join(names)})"
        )
    missing = [n for n in names if n not in batch]
    if missing:
        raise DataError(
            f"data source '{source}': batch {number} has no array for input(s) {', '.join(missing)} "
            f"(it has {', '.join(map(str, batch)) or 'none'})"
        )
    return batch, labels


# ---- checks -----------------------------------------------------------------

def check_value_range(dataset: Dataset, value_range: tuple[float, float], role: str) -> None:
    """Every float input lies inside the range the model was trained on."""
    low, high = value_range
    for name, array in dataset.inputs.items():
        if array.dtype.kind != "f" or array.size == 0:
            continue
        got_low, got_high = float(array.min()), float(array.max())
        slack = 1e-6 * max(1.0, abs(high - low))
        if got_low < low - slack or got_high > high + slack:
            raise DataError(
                f"{role} data {dataset.source}['{name}'] spans [{got_low:g}, {got_high:g}], outside "
                f"value_range [{low:g}, {high:g}]; check its preprocessing (scale/mean/std)"
            )


def check_labels(dataset: Dataset | None, output_specs: list[Any]) -> None:
    """Accuracy compares labels with the first output's argmax: a label outside its classes never matches."""
    if dataset is None or dataset.labels is None or not output_specs or not output_specs[0].shape:
        return
    classes = output_specs[0].shape[-1]
    if classes is None or classes < 2:  # not a class-scores output
        return
    labels = dataset.labels
    bad = labels[(labels < 0) | (labels >= classes)]
    if bad.size:
        raise DataError(
            f"{dataset.source}: {bad.size} label(s) outside the {classes} classes of output "
            f"'{output_specs[0].name}' (0 to {classes - 1}), e.g. {int(bad[0])}; check labels_key and "
            "how the labels are numbered"
        )


def check_same_preprocessing(calibration: Dataset, evaluation: Dataset) -> None:
    """Calibration data scaled differently from evaluation data gives wrong int8 ranges."""
    for name, cal in calibration.inputs.items():
        ev = evaluation.inputs.get(name)
        if ev is None or cal.dtype.kind != "f" or ev.dtype.kind != "f":
            continue
        cal_low, cal_high = float(cal.min()), float(cal.max())
        ev_low, ev_high = float(ev.min()), float(ev.max())
        cal_width, ev_width = cal_high - cal_low, ev_high - ev_low
        disjoint = cal_high < ev_low or ev_high < cal_low
        ratio = max(cal_width, ev_width) / max(min(cal_width, ev_width), 1e-12)
        if disjoint or ratio > 4:
            raise DataError(
                f"input '{name}': calibration data spans [{cal_low:g}, {cal_high:g}] but evaluation "
                f"data spans [{ev_low:g}, {ev_high:g}]; the two sets are preprocessed differently"
            )


def sample_digests(dataset: Dataset) -> list[str]:
    """One hash per sample over all its inputs: finds shared samples between two sets."""
    names = sorted(dataset.inputs)
    digests = []
    for i in range(len(dataset)):
        h = hashlib.sha1()
        for name in names:
            h.update(np.ascontiguousarray(dataset.inputs[name][i]).tobytes())
        digests.append(h.hexdigest())
    return digests


def check_disjoint(calibration: Dataset, evaluation: Dataset) -> None:
    shared = set(sample_digests(calibration)) & set(sample_digests(evaluation))
    if shared:
        raise DataError(
            f"calibration data ({calibration.source}) and evaluation data ({evaluation.source}) share "
            f"{len(shared)} sample(s); accuracy measured on calibration samples is optimistic. Use "
            "disjoint sets, or set [data.calibration] source = \"eval\" to split one source"
        )


def split_shared(dataset: Dataset, fraction: float, seed: int,
                 calibration_limit: int, eval_limit: int) -> tuple[Dataset, Dataset, dict[str, Any]]:
    """A deterministic calibration/evaluation split of one source, and its record."""
    if len(dataset) < 2:
        raise DataError(f"{dataset.source}: {len(dataset)} sample(s) cannot be split into calibration and eval")
    order = np.random.default_rng(seed).permutation(len(dataset))
    cut = min(max(1, int(round(len(dataset) * fraction))), len(dataset) - 1)
    cal_idx = np.sort(order[:cut])[:calibration_limit]
    eval_idx = np.sort(order[cut:])[:eval_limit]
    calibration, evaluation = dataset.take(cal_idx), dataset.take(eval_idx)
    record = {
        "source": dataset.source,
        "method": "numpy.random.default_rng(seed).permutation; first `fraction` calibrates",
        "seed": seed,
        "fraction": fraction,
        "samples_in_source": len(dataset),
        "calibration_count": len(calibration),
        "eval_count": len(evaluation),
        "calibration_indices_sha256": hashlib.sha256(cal_idx.astype(np.int64).tobytes()).hexdigest(),
    }
    return calibration, evaluation, record


def random_calibration(input_specs: list[Any], count: int, value_range: tuple[float, float] | None,
                       seed: int = 0) -> Dataset:
    low, high = value_range or (0.0, 1.0)
    rng = np.random.default_rng(seed)
    inputs = {
        spec.name: rng.uniform(low, high, size=(count, *[d or 1 for d in spec.shape])).astype(spec.dtype)
        for spec in input_specs
    }
    return Dataset(inputs, None, "random", [RANDOM_WARNING])


RANDOM_WARNING = (
    "RANDOM CALIBRATION DATA (allow_random = true): quantization ranges come from uniform noise, "
    "not real inputs; quantized artifacts' accuracy is not representative"
)


# ---- the calibration/evaluation pair a run uses -----------------------------

@dataclass
class RunData:
    calibration: Dataset | None
    evaluation: Dataset | None
    record: dict[str, Any]


def prepare_run_data(data_config: Any, input_specs: list[Any], *, needs_calibration: bool) -> RunData:
    """Load, check and (if they share a source) split calibration and evaluation data.

    `data_config` is config.DataSection. Every check runs before any conversion.
    """
    preprocess = Preprocess(
        tuple(data_config.preprocess.size) if data_config.preprocess.size else None,
        data_config.preprocess.color, data_config.preprocess.scale,
        tuple(data_config.preprocess.mean), tuple(data_config.preprocess.std),
    )
    value_range = tuple(data_config.value_range) if data_config.value_range else None
    if value_range and value_range[0] >= value_range[1]:
        raise DataError(f"[data] value_range {list(value_range)}: the low end must be below the high end")

    def load(source: str, limit: int | None) -> Dataset:
        return load_source(source, input_specs, labels_key=data_config.labels_key,
                           preprocess=preprocess, limit=limit)

    calibration, evaluation, split = _calibration_and_evaluation(data_config, input_specs, load,
                                                                 needs_calibration, value_range)
    for role, dataset in (("calibration", calibration), ("evaluation", evaluation)):
        if dataset is not None and value_range and dataset.source != "random":
            check_value_range(dataset, value_range, role)
    if calibration is not None and evaluation is not None and calibration.source != "random":
        check_same_preprocessing(calibration, evaluation)
        check_disjoint(calibration, evaluation)
    record: dict[str, Any] = {"calibration": _data_record(calibration), "evaluation": _data_record(evaluation),
                              "split": split}
    if calibration is not None and calibration.source == "random":
        record["warning"] = RANDOM_WARNING
    return RunData(calibration, evaluation, record)


def _calibration_and_evaluation(data_config: Any, input_specs: list[Any], load: Any, needs_calibration: bool,
                                value_range: tuple | None) -> tuple[Dataset | None, Dataset | None, Any]:
    """(calibration, evaluation, split record): a shared source split, separate sources, or random."""
    cal_config = data_config.calibration
    evaluation = load(data_config.eval, data_config.samples) if data_config.eval else None
    if cal_config.source == "eval":
        if data_config.eval is None:
            raise DataError("[data.calibration] source = \"eval\" needs [data] eval to be set")
        whole = load(data_config.eval, None)
        return split_shared(whole, cal_config.fraction, cal_config.seed, cal_config.samples, data_config.samples)
    if cal_config.source is not None:
        if data_config.eval is not None and Path(cal_config.source) == Path(data_config.eval):
            raise DataError(
                f"[data.calibration] source is the eval source {data_config.eval}; set source = \"eval\" "
                "to split it deterministically into disjoint calibration and evaluation sets"
            )
        return load(cal_config.source, cal_config.samples), evaluation, None
    if not needs_calibration:
        return None, evaluation, None
    if not cal_config.allow_random:
        raise DataError(
            "quantized recipes need calibration data: set [data.calibration] source (an .npz, an "
            "image folder, module:function, or \"eval\"); random data gives meaningless int8 "
            "ranges and is refused unless allow_random = true"
        )
    print(f"WARNING: {RANDOM_WARNING}", file=sys.stderr)
    return random_calibration(input_specs, cal_config.samples, value_range, cal_config.seed), evaluation, None


def _data_record(dataset: Dataset | None) -> dict[str, Any] | None:
    if dataset is None:
        return None
    return {
        "source": dataset.source,
        "samples": len(dataset),
        "labelled": dataset.labels is not None,
        "random": dataset.source == "random",
        "range": {n: [float(a.min()), float(a.max())] for n, a in dataset.inputs.items() if a.size},
    }


# ---- calibration reader (onnxruntime's CalibrationDataReader protocol) --------

class CalibrationReader:
    """`get_next() -> {input name: batch} | None`, plus `rewind()`; batches of `batch_size`."""

    def __init__(self, dataset: Dataset, batch_size: int = 1):
        self.dataset = dataset
        self.batch_size = max(1, batch_size)
        self._position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._position >= len(self.dataset):
            return None
        start, stop = self._position, self._position + self.batch_size
        self._position = stop
        batch = {}
        for name, array in self.dataset.inputs.items():
            chunk = array[start:stop]
            if len(chunk) < self.batch_size:  # fixed-batch models: repeat the last sample
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch_size - len(chunk), axis=0)])
            batch[name] = chunk
        return batch

    def rewind(self) -> None:
        self._position = 0

    def __iter__(self):
        self.rewind()
        while (batch := self.get_next()) is not None:
            yield batch
