"""Pipeline config (TOML) -> validated models.

Unknown keys are errors that name the full key path and the nearest valid key;
wrong types name the expected type; relative paths resolve against the config
file's folder.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .recipes import RECIPES, all_recipe_names, calibrated_names, recipe_names

TFLITE_RECIPES = recipe_names("tflite")
ONNX_RECIPES = recipe_names("onnx")
# Recipes whose activation ranges come from calibration data.
CALIBRATED_RECIPES = {"tflite": calibrated_names("tflite"), "onnx": calibrated_names("onnx")}
# Opset 17 (ONNX 1.12, 2022): onnxruntime implements it from 1.13 on, so wheels of the last
# three years run it, including those for Python 3.9-3.11 on aarch64 device images (1.15.0,
# the oldest cp311 wheel, runs our opset-17 files). tf2onnx here emits 13-18 (docs/export.md).
DEFAULT_ONNX_OPSET = 17
# Bounds on benchmark settings. Beyond them a value is a typo, and time arithmetic must stay
# finite (an infinite timeout overflows deep inside the bench stage after outputs were written).
MAX_THREADS = 1024  # more than any board or server this toolchain targets has cores
MAX_SECONDS = 86_400.0  # one day: no single benchmark or timeout should need longer
MAX_RUNS = 10_000_000
# A data source naming a Python function (module:function) instead of a file or folder.
CALLABLE_SOURCE = r"[A-Za-z_][\w.]*:[A-Za-z_]\w*"
# Echoed config values are cut to this many characters: a 10 MB value must not fill the terminal.
MAX_ECHO = 80


# TOML has no path type: accept strings for paths, strictly typed everywhere else.
PathValue = Annotated[Path, Field(strict=False)]


class Section(BaseModel):
    # allow_inf_nan=False: inf and NaN are refused in every float key (a NaN bound disables a
    # check, an infinite limit never ends or overflows)
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True, allow_inf_nan=False)


class ModelSection(Section):
    path: PathValue
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    trust: bool = False


class PreprocessSection(Section):
    """How image folders become input arrays: resize, colour mode, then (x * scale - mean) / std."""

    size: list[int] | None = Field(default=None, min_length=2, max_length=2)  # [height, width]
    color: Literal["rgb", "grayscale"] = "rgb"
    scale: float = 1 / 255
    mean: list[float] = Field(default_factory=lambda: [0.0])  # one value, or one per channel
    std: list[float] = Field(default_factory=lambda: [1.0])

    @field_validator("std")
    @classmethod
    def _nonzero(cls, v: list[float]) -> list[float]:
        if any(s == 0 for s in v):
            raise ValueError("std values must be non-zero")
        return v


class CalibrationSection(Section):
    # .npy/.npz file, image folder, 'module:function', or "eval" to split the eval source
    source: str | None = None
    samples: int = Field(default=200, ge=1, le=100_000)
    fraction: float = Field(default=0.5, gt=0, lt=1)  # share of a shared source used to calibrate
    seed: int = 0
    allow_random: bool = False  # random calibration data: artifacts are not trustworthy


class DataSection(Section):
    # .npy/.npz file, image folder (class sub-folders give labels), or 'module:function'
    eval: str | None = None
    labels_key: str = "y"
    samples: int = Field(default=200, ge=1, le=1_000_000)
    value_range: list[float] | None = Field(default=None, min_length=2, max_length=2)
    preprocess: PreprocessSection = Field(default_factory=PreprocessSection)
    calibration: CalibrationSection = Field(default_factory=CalibrationSection)
    allow_code: bool = False  # module:function sources import and call Python code

    @model_validator(mode="after")
    def _code_sources_allowed(self) -> DataSection:
        for key, source in (("eval", self.eval), ("calibration.source", self.calibration.source)):
            if source is not None and re.fullmatch(CALLABLE_SOURCE, source) and not self.allow_code:
                raise ValueError(
                    f"{key} = {_shown(source)} names a Python function: loading the data imports and runs "
                    "it. Set allow_code = true under [data] if you wrote that code"
                )
        return self


class TFLiteExportSection(Section):
    recipes: list[Literal[TFLITE_RECIPES]] = Field(default_factory=lambda: ["fp32"], min_length=1)
    keep_float: list[str] = Field(default_factory=list)  # Keras layer names left in float

    @model_validator(mode="after")
    def _keep_float_recipes(self) -> TFLiteExportSection:
        refused = [r for r in self.recipes if RECIPES["tflite", r].keep_float_refused]
        if self.keep_float and refused:
            raise ValueError(
                f"keep_float works with the 'int8-float-io' recipe only (TFLite's selective quantization "
                f"keeps float input/output); remove {', '.join(refused)} from recipes or keep_float"
            )
        return self
    allow_flex: bool = False  # Flex (TF Select) ops: tflite-runtime on a device cannot run them


class OnnxExportSection(Section):
    recipes: list[Literal[ONNX_RECIPES]] = Field(default_factory=lambda: ["fp32"], min_length=1)
    opset: int = Field(default=DEFAULT_ONNX_OPSET, ge=13, le=21)
    keep_float: list[str] = Field(default_factory=list)  # Keras layer names left in float
    per_channel: bool = True  # int8: one scale per output channel of each weight
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    nchw: bool = False  # 4-D inputs channels-first (tf2onnx inputs_as_nchw)


class ExportSection(Section):
    formats: list[Literal["tflite", "onnx"]] = Field(
        default_factory=lambda: ["tflite", "onnx"], min_length=1
    )
    batch_size: int = Field(default=1, ge=1, le=4096)
    dynamic_batch: bool = False  # batch dimension left open (None); batch_size then only sizes estimates
    # target profile names (or .toml paths) whose own runtime must load and run every
    # artifact (stages/compat.py); a rejection fails the export for that target
    targets: list[str] = Field(default_factory=list)
    tflite: TFLiteExportSection = Field(default_factory=TFLiteExportSection)
    onnx: OnnxExportSection = Field(default_factory=OnnxExportSection)

    @field_validator("formats")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("each format may appear only once")
        return v


class Tolerance(Section):
    max_abs_error: float | None = Field(default=None, ge=0)
    min_cosine: float | None = Field(default=None, ge=-1, le=1)
    min_top1_agreement: float | None = Field(default=None, ge=0, le=1)
    max_accuracy_drop: float | None = Field(default=None, ge=0, le=1)  # vs Keras, 0.01 = 1 pt


class VerifySection(Section):
    enabled: bool = True
    samples: int = Field(default=100, ge=1, le=100_000)
    tolerances: dict[str, Tolerance] = Field(default_factory=dict)

    @field_validator("tolerances")
    @classmethod
    def _known_recipes(cls, v: dict[str, Tolerance]) -> dict[str, Tolerance]:
        known = sorted(all_recipe_names())
        for key in v:
            if key not in known:
                raise ValueError(f"unknown recipe {key!r}{_did_you_mean(key, known)}")
        return v


class BenchSection(Section):
    enabled: bool = True
    targets: list[str] = Field(default_factory=lambda: ["local"], min_length=1)
    threads: list[int] | None = Field(default=None, min_length=1)  # default: the profile's threads
    warmup_runs: int = Field(default=5, ge=0, le=MAX_RUNS)
    warmup_seconds: float = Field(default=0.2, ge=0, le=MAX_SECONDS)
    min_runs: int = Field(default=50, ge=1, le=MAX_RUNS)
    min_seconds: float = Field(default=1.0, ge=0, le=MAX_SECONDS)
    max_seconds: float = Field(default=30.0, gt=0, le=MAX_SECONDS)
    timeout_seconds: float = Field(default=300.0, gt=0, le=MAX_SECONDS)
    targets_dir: PathValue | None = None  # a folder of your own target profiles (*.toml)

    @field_validator("threads")
    @classmethod
    def _thread_counts(cls, v: list[int] | None) -> list[int] | None:
        return v if v is None else check_thread_counts(v)


class ReportSection(Section):
    enabled: bool = True


class BudgetLimits(Section):
    """Limits an artifact must meet on a target; unset limits are not checked."""

    max_p90_ms: float | None = Field(default=None, gt=0)
    max_peak_memory_mb: float | None = Field(default=None, gt=0)
    max_file_mb: float | None = Field(default=None, gt=0)
    min_accuracy: float | None = Field(default=None, ge=0, le=1)  # fraction, 0.95 = 95%
    max_accuracy_drop: float | None = Field(default=None, ge=0, le=1)  # vs Keras fp32, 0.01 = 1 pt


class BudgetsSection(BudgetLimits):
    """The pipeline's [budgets]: the same keys as a target profile's [budgets], for every target."""

    release_candidate: str | None = None  # artifact name; if it fails a budget, `run` exits 7


class PackageSection(Section):
    version: str = Field(default="0.0.0", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
    source_date_epoch: int | None = Field(default=None, ge=0)  # SOURCE_DATE_EPOCH wins if set


class OptimizeSection(Section):
    """[optimize]: search the fastest artifact within an accuracy budget on each [bench] target."""

    enabled: bool = True
    max_accuracy_drop: float = Field(default=0.01, ge=0, le=1)  # 0.01 = 1 pt vs the Keras model
    max_size_mb: float | None = Field(default=None, gt=0)
    formats: list[Literal["tflite", "onnx"]] = Field(default_factory=lambda: ["tflite", "onnx"], min_length=1)
    candidates: list[str] | None = None  # only these (the fp32 baselines always run)
    time_budget_s: float | None = Field(default=None, gt=0)
    threads: int = Field(default=1, ge=1)
    min_seconds: float | None = Field(default=None, ge=0)  # full benchmark; default: the profile's
    probe_margin: float = Field(default=1.5, gt=1)
    explain: bool = True


class OutputSection(Section):
    dir: PathValue = Path("run")


class TruncateTrainSection(Section):
    """Labelled data to train the new head on (the base stays frozen)."""

    data: PathValue
    labels_key: str = "y"
    epochs: int = Field(default=10, ge=1, le=10_000)
    seed: int = 0
    batch_size: int = Field(default=32, ge=1, le=65_536)
    learning_rate: float = Field(default=1e-2, gt=0, le=10)


class TruncateSection(Section):
    """[truncate]: cut points, dropped layers/blocks and a new head (see docs/truncation.md)."""

    at: list[str | int] = Field(default_factory=list)
    drop: list[str] = Field(default_factory=list)
    head: str | None = None
    train: TruncateTrainSection | None = None

    @model_validator(mode="after")
    def _something_to_do(self) -> TruncateSection:
        if not (self.at or self.drop or self.head):
            raise ValueError("give at least one of 'at', 'drop' or 'head'")
        if self.train is not None and not self.head:
            raise ValueError("'train' trains a new head: give 'head' too")
        return self


class ExecutionSection(Section):
    """Where units of work run: in this process (default), or as tasks on a Ray cluster."""

    backend: Literal["inprocess", "ray"] = "inprocess"
    ray_address: str | None = Field(default=None, pattern=r"^(auto|local|(ray://)?[A-Za-z0-9_.:\[\]-]+)$")
    max_retries: int = Field(default=2, ge=0, le=10)  # a unit whose worker died runs again, at most this often
    cpus_per_unit: float = Field(default=1.0, gt=0)
    memory_mb_per_unit: int | None = Field(default=None, ge=1)  # default: sized from the model file
    connect_timeout_seconds: float = Field(default=60.0, gt=0)
    # device leases: "cluster" (held by the Ray cluster, across drivers) or "local" (flock on this
    # machine); default: cluster when backend is ray, else local
    leases: Literal["cluster", "local"] | None = None
    lease_ttl_seconds: float = Field(default=30.0, gt=0)  # a dead driver's cluster lease expires after this


class PipelineConfig(Section):
    model: ModelSection
    data: DataSection = Field(default_factory=DataSection)
    export: ExportSection = Field(default_factory=ExportSection)
    verify: VerifySection = Field(default_factory=VerifySection)
    bench: BenchSection = Field(default_factory=BenchSection)
    report: ReportSection = Field(default_factory=ReportSection)
    budgets: BudgetsSection = Field(default_factory=BudgetsSection)
    package: PackageSection = Field(default_factory=PackageSection)
    output: OutputSection = Field(default_factory=OutputSection)
    truncate: TruncateSection | None = None
    optimize: OptimizeSection | None = None
    execution: ExecutionSection = Field(default_factory=ExecutionSection)

    @property
    def model_name(self) -> str:
        return self.model.name or self.model.path.stem


def load_config(path: str | Path) -> tuple[PipelineConfig, dict[str, Any]]:
    """Read and validate a pipeline file. Returns the model and the raw TOML dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pipeline config not found: {path} (give the path to a .toml file)")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    config = parse_config(raw, source=str(path))
    return resolve_paths(config, path.parent.resolve()), raw


def parse_config(raw: dict[str, Any], source: str = "pipeline config") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{source}: {format_validation_error(e, PipelineConfig)}") from e


def resolve_paths(config: PipelineConfig, base: Path) -> PipelineConfig:
    def resolve(p: Path | None) -> Path | None:
        if p is None:
            return None
        p = p.expanduser()
        return p if p.is_absolute() else (base / p).resolve()

    def checked(key: str, value: Any, how: Any) -> Any:
        if value is not None:
            check_path_length(key, str(value))
        try:
            return how(value)
        except (ValueError, RuntimeError) as e:  # a NUL byte, '~user' of an unknown user
            raise ConfigError(f"'{key}': {str(value)[:200]!r} is not a usable path ({e})") from e

    config.model.path = checked("model.path", config.model.path, resolve)
    config.data.eval = checked("data.eval", config.data.eval, lambda s: resolve_source(s, base))
    config.data.calibration.source = checked("data.calibration.source", config.data.calibration.source,
                                             lambda s: resolve_source(s, base))
    config.output.dir = checked("output.dir", config.output.dir, resolve)
    config.bench.targets_dir = checked("bench.targets_dir", config.bench.targets_dir, resolve)
    if config.truncate is not None and config.truncate.train is not None:
        config.truncate.train.data = checked("truncate.train.data", config.truncate.train.data, resolve)
    return config


MAX_NAME_BYTES = 255  # per file or folder name (Linux NAME_MAX, and most other file systems)
MAX_PATH_BYTES = 4096  # a whole path (Linux PATH_MAX)


def check_path_length(key: str, path: str) -> None:
    """A name too long for any file system is a config error naming the key, not an OS error later."""
    longest = max((len(part.encode("utf-8", "surrogateescape")) for part in Path(path).parts), default=0)
    if longest > MAX_NAME_BYTES or len(path.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise ConfigError(f"'{key}': {_shown(path)} is too long for a path (names up to {MAX_NAME_BYTES} "
                          f"bytes, paths up to {MAX_PATH_BYTES}); use a shorter one")


def resolve_source(source: str | None, base: Path) -> str | None:
    """Data sources: 'eval' and 'module:function' stay as they are, paths become absolute."""
    if source is None or source == "eval" or re.fullmatch(CALLABLE_SOURCE, source):
        return source
    path = Path(source).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def config_sha256(raw: dict[str, Any]) -> str:
    canonical = json.dumps(raw, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


# ---- error formatting -------------------------------------------------------

_TYPE_NAMES = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a table",
    "model_type": "a table",
    "path_type": "a path string",
}


def format_validation_error(error: ValidationError, root: type[BaseModel]) -> str:
    """One line per problem, each naming the full key path."""
    lines = []
    for err in error.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc) or "(top level)"
        kind = err["type"]
        if kind == "extra_forbidden":
            valid = _valid_keys_at(root, err["loc"][:-1])
            lines.append(f"unknown key {_shown(key)}{_did_you_mean(loc[-1][:MAX_ECHO], valid)}")
        elif kind == "missing":
            lines.append(f"missing required key {_shown(key)}")
        elif kind in _TYPE_NAMES or kind.endswith("_type"):
            expected = _TYPE_NAMES.get(kind, kind.removesuffix("_type"))
            got = err.get("input")
            lines.append(f"{_shown(key)} must be {expected}, got {_shown(got)} ({type(got).__name__})")
        elif kind == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            lines.append(f"{_shown(key)} must be one of {expected}, got {_shown(err.get('input'))}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{_shown(key)}: {msg} (got {_shown(err.get('input'))})")
    return "; ".join(lines)


def _shown(value: Any) -> str:
    """repr() of a value from the config, cut to MAX_ECHO characters."""
    text = repr(value)
    if len(text) <= MAX_ECHO:
        return text
    return f"{text[:MAX_ECHO]}... ({len(text):,} characters)"


def _valid_keys_at(root: type[BaseModel], loc: tuple) -> list[str]:
    model: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        field = model.model_fields.get(str(part))
        if field is None:
            # dict[str, Model]: the part is a user key, keep the value model
            continue
        model = _model_of(field.annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is not None:
        for arg in reversed(get_args(annotation)):
            found = _model_of(arg)
            if found is not None:
                return found
    return None


def _did_you_mean(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.5)
    if close:
        return f" (did you mean '{close[0]}'?)"
    if candidates:
        return f" (valid keys: {', '.join(candidates)})"
    return ""


# ---- target profiles ----------------------------------------------------------

class ConnectionSection(Section):
    """How to reach the device. `ssh` uses the system OpenSSH client (honours ~/.ssh/config)."""

    # fleet: a group of SSH devices ([fleet] lists them); the other keys here are shared by all
    kind: Literal["local", "ssh", "emulated", "fleet"] = "local"
    host: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:\[\]%-]+$")  # name, IP or ssh_config alias
    user: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    port: int | None = Field(default=None, ge=1, le=65535)
    identity: PathValue | None = None  # private key file; default: ssh's own choice (agent, ~/.ssh)
    ssh_config: PathValue | None = None  # an ssh_config file (ssh -F); default ~/.ssh/config
    known_hosts: PathValue | None = None  # known_hosts file; default ssh's own
    accept_new_host_key: bool = False  # StrictHostKeyChecking=accept-new instead of yes
    connect_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    retries: int = Field(default=2, ge=0, le=10)  # extra attempts after a connection failure
    python: str | None = None  # the device's python; default: this interpreter (local), python3 (ssh)
    # emulated: the Raspberry Pi QEMU presents (CPU model, /proc/cpuinfo); see toolchain/emulator
    board: Literal["raspberry-pi-4", "raspberry-pi-5"] | None = None

    @model_validator(mode="after")
    def _ssh_needs_host(self) -> ConnectionSection:
        ssh_only = ("host", "user", "port", "identity", "ssh_config", "known_hosts")
        if self.kind == "ssh" and not self.host:
            raise ValueError("kind = 'ssh' needs 'host' (a host name, address or ssh_config alias)")
        if self.kind == "emulated" and not self.board:
            raise ValueError("kind = 'emulated' needs 'board' (raspberry-pi-4 or raspberry-pi-5)")
        if self.kind != "emulated" and self.board is not None:
            raise ValueError("board only applies to kind = 'emulated'")
        if self.kind in ("local", "emulated"):
            given = [k for k in ssh_only if getattr(self, k) is not None]
            if given:
                raise ValueError(f"{', '.join(given)} only apply to kind = 'ssh'")
        return self


class RuntimeSection(Section):
    """What the device can run: decides which artifacts are worth sending there."""

    tflite_backend: Literal["auto", "ai_edge_litert", "tflite_runtime", "tensorflow"] = "auto"
    tflite_version: str | None = None
    onnxruntime_version: str | None = None
    max_onnx_opset: int | None = Field(default=None, ge=7, le=30)


class HardwareSection(Section):
    cpu: str | None = None
    arch: str | None = None
    cores: int | None = Field(default=None, ge=1)
    ram_mb: int | None = Field(default=None, ge=1)
    peak_gflops: float | None = Field(default=None, gt=0)
    # int8 multiply-accumulate peak (2 ops per MAC); unset: estimates cannot tell int8 from fp32 compute
    peak_int8_gops: float | None = Field(default=None, gt=0)
    memory_bandwidth_gbs: float | None = Field(default=None, gt=0)


class ProfileBenchSection(Section):
    """A target's default benchmark settings; the pipeline's [bench] and CLI flags override them."""

    warmup_runs: int | None = Field(default=None, ge=0, le=MAX_RUNS)
    warmup_seconds: float | None = Field(default=None, ge=0, le=MAX_SECONDS)
    min_runs: int | None = Field(default=None, ge=1, le=MAX_RUNS)
    min_seconds: float | None = Field(default=None, ge=0, le=MAX_SECONDS)
    max_seconds: float | None = Field(default=None, gt=0, le=MAX_SECONDS)
    timeout_seconds: float | None = Field(default=None, gt=0, le=MAX_SECONDS)


class TargetBudgets(Section):
    """Limits an artifact must meet on this target; unset limits are not checked."""

    max_p90_ms: float | None = Field(default=None, gt=0)
    max_peak_memory_mb: float | None = Field(default=None, gt=0)
    max_file_mb: float | None = Field(default=None, gt=0)
    min_accuracy: float | None = Field(default=None, ge=0, le=1)  # fraction, 0.95 = 95%
    max_accuracy_drop: float | None = Field(default=None, ge=0, le=1)  # vs Keras fp32, 0.01 = 1 pt


class FleetDevice(Section):
    """One board of a fleet; unset keys come from the profile's [connection]."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    host: str = Field(pattern=r"^[A-Za-z0-9_.:\[\]%-]+$")
    user: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    port: int | None = Field(default=None, ge=1, le=65535)
    identity: PathValue | None = None
    python: str | None = None


class FleetSection(Section):
    """The devices of a group target: listed here, or a group of an Ansible-style inventory."""

    devices: list[FleetDevice] = Field(default_factory=list)
    inventory: PathValue | None = None  # INI or YAML inventory file (relative to the profile)
    group: str | None = None  # the inventory group (default: the profile's name)
    # a device whose p50 is this many times the group median (or 1/x of it) is flagged an outlier
    outlier_ratio: float = Field(default=1.25, gt=1)

    @model_validator(mode="after")
    def _devices_or_inventory(self) -> FleetSection:
        if not self.devices and self.inventory is None:
            raise ValueError("a fleet needs 'devices' or an 'inventory' file")
        if self.group is not None and self.inventory is None:
            raise ValueError("'group' names a group of the 'inventory' file; set inventory too")
        return self


class TargetProfile(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    connection: ConnectionSection = Field(default_factory=ConnectionSection)
    runtime: RuntimeSection = Field(default_factory=RuntimeSection)
    hardware: HardwareSection = Field(default_factory=HardwareSection)
    threads: list[int] = Field(default_factory=lambda: [1], min_length=1)
    bench: ProfileBenchSection = Field(default_factory=ProfileBenchSection)
    budgets: TargetBudgets = Field(default_factory=TargetBudgets)
    fleet: FleetSection | None = None

    @model_validator(mode="after")
    def _fleet_kind(self) -> TargetProfile:
        if (self.connection.kind == "fleet") != (self.fleet is not None):
            raise ValueError("a [fleet] section and connection.kind = 'fleet' go together")
        return self

    @field_validator("threads")
    @classmethod
    def _thread_counts(cls, v: list[int]) -> list[int]:
        return check_thread_counts(v)


def check_thread_counts(threads: list[int]) -> list[int]:
    if any(not 1 <= t <= MAX_THREADS for t in threads):
        raise ValueError(f"thread counts must be between 1 and {MAX_THREADS}")
    return threads


def builtin_profiles_dir() -> Path:
    """The shipped profiles: `toolchain/profiles` when installed, `targets/` in a checkout."""
    from importlib import resources

    try:
        folder = Path(str(resources.files("toolchain.profiles")))
        if folder.is_dir():
            return folder
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parent.parent / "targets"


def load_profile(path: Path) -> TargetProfile:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"target profile {path}: not valid TOML: {e}") from e
    raw.setdefault("name", path.stem)
    try:
        profile = TargetProfile.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"target profile {path}: {format_validation_error(e, TargetProfile)}") from e
    if profile.name != path.stem:
        raise ConfigError(
            f"target profile {path}: 'name' is {profile.name!r} but the file is {path.name}; "
            "make them agree"
        )
    base = path.resolve().parent
    for key in ("identity", "ssh_config", "known_hosts"):
        value = getattr(profile.connection, key)
        if value is not None:
            value = value.expanduser()
            setattr(profile.connection, key, value if value.is_absolute() else base / value)
    if profile.fleet is not None:
        for holder, key in [(profile.fleet, "inventory"), *[(d, "identity") for d in profile.fleet.devices]]:
            value = getattr(holder, key)
            if value is not None:
                setattr(holder, key, (base / value.expanduser()).resolve())
    return profile


def list_profiles(extra_dirs: list[Path] | None = None) -> dict[str, Path]:
    """Profile name -> file. User folders override shipped profiles of the same name."""
    found: dict[str, Path] = {}
    for folder in [builtin_profiles_dir(), *(extra_dirs or [])]:
        if not folder.is_dir():
            raise ConfigError(f"target profile folder not found: {folder}")
        for file in sorted(folder.glob("*.toml")):
            found[file.stem] = file
    return found


def profile_by_name_or_path(target: str) -> TargetProfile:
    """A shipped profile by name, or a profile file given by path (ending in .toml)."""
    if target.endswith(".toml"):
        path = Path(target).expanduser()
        if not path.is_file():
            raise ConfigError(f"target profile file not found: {path}")
        return load_profile(path)
    return find_profile(target)


def find_profile(name: str, extra_dirs: list[Path] | None = None) -> TargetProfile:
    profiles = list_profiles(extra_dirs)
    if name not in profiles:
        raise ConfigError(
            f"unknown target '{name}'{_did_you_mean(name, sorted(profiles))}; "
            f"known targets: {', '.join(sorted(profiles))}"
        )
    return load_profile(profiles[name])
