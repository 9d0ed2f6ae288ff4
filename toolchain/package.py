"""Release bundles: one reproducible .tar.gz per target, for flashing scripts.

A bundle `packages/<model>-<version>-<target>.tar.gz` holds one folder of the same name:

    manifest.json      what is inside and what it needs (schema: schemas/bundle.schema.json)
    SHA256SUMS         `sha256sum -c` format, for every other file
    models/<artifact>  the chosen artifact(s)

Same run + same options -> same bytes: entries sorted, mtimes fixed (SOURCE_DATE_EPOCH,
else `[package] source_date_epoch`, else the run's creation time), uid/gid 0 with empty
owner names, modes 0644/0755, gzip header without timestamp or file name.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import tarfile
import zlib
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

from .budgets import budgets_from_manifest, evaluate_budgets, profile_limits
from .config import PackageSection, PreprocessSection, TargetProfile, _did_you_mean, find_profile
from .data import CALLABLE_SOURCE
from .errors import BudgetError, BundleError, ConfigError, InputError
from .fileio import atomic_output, atomic_write_text, sha256_bytes, sha256_file
from .stages.report import load_run

BUNDLE_SCHEMA_VERSION = "2.0"  # 2.0: safe file names, device checks, golden files, preprocessing
CLASSES_NOTE = "classes (label ids in order): "  # data.load_image_folder writes it
SUMS = "SHA256SUMS"
SUMS_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")
BUNDLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")

MIB = 1 << 20
GIB = 1 << 30
MAX_MEMBERS = 1000
MAX_FILE_BYTES = 2 * GIB  # TFLite flatbuffers and ONNX protobufs cannot be larger
MAX_TOTAL_BYTES = 4 * GIB  # all files together, uncompressed
MAX_METADATA_BYTES = 16 * MIB  # manifest.json and SHA256SUMS are read into memory
METADATA_FILES = (SUMS, "manifest.json")
BUNDLE_FOLDERS = ("models", "golden")
# the only file names a bundle may hold below its folder: no quotes, spaces, slashes or dot-files,
# so a device script can use them without quoting (examples/flash.sh checks them again)
SAFE_FILE = re.compile(r"(models|golden)/[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_CLASS_NAMES_BYTES = MIB
SPECIAL_MODE_BITS = 0o7022  # setuid, setgid, sticky, group- and world-writable


@dataclass
class PackageResult:
    path: Path
    sha256: str
    artifacts: list[str]
    reason: str


def _read_verify(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "verify.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e}); re-run the pipeline to rewrite it") from e


def package_settings(manifest: dict[str, Any]) -> PackageSection:
    raw = (manifest.get("config") or {}).get("package", {})
    return PackageSection.model_validate(raw)


def source_date_epoch(manifest: dict[str, Any], settings: PackageSection) -> int:
    """SOURCE_DATE_EPOCH (reproducible-builds.org), else the config, else the run's creation time."""
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env is not None:
        if not env.strip().isdigit():
            raise ConfigError(f"SOURCE_DATE_EPOCH must be a whole number of seconds, got {env!r}")
        return int(env)
    if settings.source_date_epoch is not None:
        return settings.source_date_epoch
    return int(datetime.fromisoformat(manifest["created_utc"]).timestamp())


def _runtime_requirements(artifact: dict[str, Any], profile: TargetProfile) -> dict[str, Any]:
    runtime = profile.runtime
    req: dict[str, Any] = {"format": artifact["format"], "arch": profile.hardware.arch}
    if artifact["format"] == "tflite":
        req["backend"] = (runtime.tflite_backend if runtime.tflite_backend != "auto"
                          else "any of ai_edge_litert, tflite_runtime, tensorflow.lite")
        req["backend_version"] = runtime.tflite_version
        req["ops"] = [op["name"] + (f" v{op['version']}" if "version" in op else "")
                      for op in artifact.get("ops", [])]
    else:
        req["backend"] = "onnxruntime"
        req["backend_version"] = runtime.onnxruntime_version
        req["opset"] = _onnx_opset(artifact)
        req["max_onnx_opset"] = runtime.max_onnx_opset
        req["ops"] = [op["name"] for op in artifact.get("ops", [])]
    req["python"] = ">=3.9 with numpy (for toolchain/device/runner.py)"
    req["threads"] = profile.threads
    return req


def _onnx_opset(artifact: dict[str, Any]) -> int | None:
    """The default-domain opset; the manifest records {domain: version}."""
    opset = artifact.get("opset")
    return opset.get("ai.onnx") if isinstance(opset, dict) else opset


def _incompatible(artifact: dict[str, Any], profile: TargetProfile) -> str | None:
    limit = profile.runtime.max_onnx_opset
    opset = _onnx_opset(artifact)
    if artifact["format"] == "onnx" and limit is not None and opset is not None and opset > limit:
        return f"ONNX opset {opset} > the target's max_onnx_opset {limit}"
    return None


# budget metrics only a benchmark on the target measures: a device check may stand in for them
UNMEASURED_WITHOUT_BENCH = ("p90_latency_ms", "peak_memory_mb")


def _same_runtime(record: dict[str, Any], artifact: dict[str, Any], profile: TargetProfile) -> bool:
    """The record's backend and version are the ones the target profile declares for this format."""
    runtime = profile.runtime
    if artifact["format"] == "onnx":
        backend, version = "onnxruntime", runtime.onnxruntime_version
    else:
        backend = None if runtime.tflite_backend == "auto" else runtime.tflite_backend
        version = runtime.tflite_version
    if backend is not None and record.get("backend") != backend:
        return False
    if version is None:
        return True
    wanted = str(version).split(".")
    return str(record.get("backend_version") or "").split(".")[:len(wanted)] == wanted


def device_checks(artifact: dict[str, Any], profile: TargetProfile) -> list[dict[str, Any]]:
    """The run's checks that ran this artifact on the target's own runtime: a device check
    (stages/compat.py) on the target itself, or the emulator gate on the target's CPU model
    (the board's core named in the profile's hardware.cpu) with the same backend and version."""
    cpu = (profile.hardware.cpu or "").lower()
    found = []
    for name, record in sorted((artifact.get("compat") or {}).items()):
        if not isinstance(record, dict):
            continue
        if "board" in record:
            qemu_cpu = str(record.get("qemu_cpu") or "")
            if not (qemu_cpu and qemu_cpu.lower() in cpu and _same_runtime(record, artifact, profile)):
                continue
            kind = "emulator-gate"
        elif name == profile.name:
            kind = "device-check"
        else:
            continue
        found.append({"kind": kind, "target": name, **{k: record.get(k) for k in (
            "board", "qemu_cpu", "backend", "backend_version", "verdict", "summary", "tolerance", "golden")
            if record.get(k) is not None}})
    return found


def _waivable(verdict: dict[str, Any]) -> list[str]:
    """The budget failures that are only "not benchmarked on the target" ([] if any other fails)."""
    failing = [c for c in verdict["checks"] if not c["passed"]]
    if all(c["metric"] in UNMEASURED_WITHOUT_BENCH and c["value"] is None for c in failing):
        return [c["reason"] for c in failing]
    return []


def _judge(artifact: dict[str, Any], profile: TargetProfile, verdict: dict[str, Any]) -> str | None:
    """Why `artifact` may not ship to `profile` (None: it may)."""
    problem = _incompatible(artifact, profile)
    if problem:
        return problem
    if (artifact.get("verify") or {}).get("verdict") == "fail":
        return "failed verification"
    checks = device_checks(artifact, profile)
    failed = [c for c in checks if c["verdict"] != "pass"]
    if failed:
        return f"fails the {failed[0]['kind'].replace('-', ' ')} on {failed[0]['target']}: {failed[0].get('summary')}"
    if verdict["passed"] or (checks and _waivable(verdict)):
        return None
    hint = (" (a run with export.targets = an emulated profile of this board gates it instead)"
            if _waivable(verdict) else "")
    return "; ".join(verdict["failures"]) + hint


def _explicit_selection(manifest: dict[str, Any], profile: TargetProfile, requested: list[str],
                        verdicts: dict[str, dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    by_name = {a["name"]: a for a in manifest["artifacts"]}
    missing = [n for n in requested if n not in by_name]
    if missing:
        raise InputError(
            f"--artifact {missing[0]!r} is not an artifact of this run"
            f"{_did_you_mean(missing[0], sorted(by_name))}; artifacts: {', '.join(by_name)}"
        )
    chosen = [by_name[n] for n in dict.fromkeys(requested)]
    failing = [n for n in requested if not verdicts[n]["passed"]]
    reason = "chosen with --artifact" + (
        f" (fails budgets on {profile.name}: " + "; ".join(
            f for n in failing for f in verdicts[n]["failures"]) + ")" if failing else "")
    return chosen, {"mode": "explicit", "reason": reason}


def select_artifacts(
    manifest: dict[str, Any], profile: TargetProfile, requested: list[str] | None
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, dict[str, Any]]]:
    """(chosen artifact records, selection record, budget result per artifact) for one target."""
    evaluation = evaluate_budgets(manifest, budgets_from_manifest(manifest),
                                  {profile.name: profile_limits(profile)})
    verdicts = {r["artifact"]: r for r in evaluation["results"]}
    if requested:
        chosen, selection = _explicit_selection(manifest, profile, requested, verdicts)
        return chosen, selection, verdicts

    rejected: dict[str, str] = {}
    candidates = []
    for a in manifest["artifacts"]:
        problem = _judge(a, profile, verdicts[a["name"]])
        if problem:
            rejected[a["name"]] = problem
        else:
            candidates.append(a)
    if not candidates:
        raise BudgetError(
            f"no artifact passes the budgets for target '{profile.name}': "
            + "; ".join(f"{n}: {why}" for n, why in rejected.items())
            + " (choose one anyway with --artifact NAME, or relax [budgets])"
        )
    best = min(candidates, key=lambda a: _rank(a, profile, verdicts[a["name"]]))
    reason = f"{best['name']}: {_why_chosen(best, profile, verdicts[best['name']])}, " \
             f"best of {len(candidates)} passing artifact(s)"
    return [best], {"mode": "best-passing-budgets", "reason": reason, "rejected": rejected}, verdicts


def _rank(artifact: dict[str, Any], profile: TargetProfile, verdict: dict[str, Any]) -> tuple:
    """Fastest measured first; unmeasured ones checked on the target's runtime before others; then size."""
    p90 = verdict["values"]["p90_latency_ms"]
    checked = any(c["verdict"] == "pass" for c in device_checks(artifact, profile))
    return (p90 if p90 is not None else float("inf"), not checked, artifact["bytes"], artifact["name"])


def _why_chosen(artifact: dict[str, Any], profile: TargetProfile, verdict: dict[str, Any]) -> str:
    p90 = verdict["values"]["p90_latency_ms"]
    if p90 is not None:
        return (f"passes the budgets for {profile.name} with the lowest p90 on {profile.name} "
                f"({p90:.3f} ms at {verdict['threads']} thread(s))")
    checks = [c for c in device_checks(artifact, profile) if c["verdict"] == "pass"]
    size = f"smallest file ({artifact['bytes']:,} bytes)"
    if not checks:
        return f"passes the budgets for {profile.name}; not benchmarked on {profile.name}; {size}"
    waived = _waivable(verdict)
    return (f"not benchmarked on {profile.name}; accepted on the {checks[0]['kind'].replace('-', ' ')} "
            f"({checks[0]['target']}: {checks[0].get('summary')})"
            + (f" in place of the unmeasured budget(s) {', '.join(w.split(':')[0] for w in waived)}"
               if waived else "") + f"; {size}")


def _input_layouts(artifact: dict[str, Any], manifest: dict[str, Any]) -> dict[str, str | None]:
    """NHWC or NCHW per 4-D input (ONNX exports with export.onnx.nchw are channels-first)."""
    nchw = bool((((manifest.get("config") or {}).get("export") or {}).get("onnx") or {}).get("nchw"))
    layout = "NCHW" if artifact["format"] == "onnx" and nchw else "NHWC"
    return {t["name"]: (layout if len(t.get("shape") or []) == 4 else None) for t in artifact["inputs"]}


def preprocessing(manifest: dict[str, Any], verify_doc: dict[str, Any] | None) -> dict[str, Any]:
    """What a device script must do to raw inputs, as far as the run knows it."""
    data_config = (manifest.get("config") or {}).get("data") or {}
    evaluation = (manifest.get("data") or {}).get("evaluation") or {}
    source = str(evaluation.get("source") or "")
    image_folder = bool(source) and not CALLABLE_SOURCE.fullmatch(source) \
        and Path(source).suffix.lower() not in (".npz", ".npy")
    settings = None
    if image_folder:
        settings = PreprocessSection.model_validate(data_config.get("preprocess") or {}).model_dump()
        settings["formula"] = "resize to size (bilinear), convert to color, then (pixel * scale - mean) / std"
    return {
        "value_range": data_config.get("value_range"),
        "observed_range": evaluation.get("range"),
        "image_folder": settings,
        "class_names": class_names(verify_doc),
    }


def class_names(verify_doc: dict[str, Any] | None) -> list[str] | None:
    """Class names, known when the evaluation data was an image folder (one sub-folder per class)."""
    for note in (verify_doc or {}).get("notes", []):
        if isinstance(note, str) and note.startswith(CLASSES_NOTE):
            return note[len(CLASSES_NOTE):].split(", ")
    return None


def read_class_names(path: Path, artifact: dict[str, Any]) -> list[str]:
    """One class name per line (label id = line number from 0), as many as the first output has classes."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_CLASS_NAMES_BYTES:
            raise InputError(f"--class-names {path}: over {MAX_CLASS_NAMES_BYTES:,} bytes; give one name per line")
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except FileNotFoundError as e:
        raise InputError(f"--class-names {path}: no such file") from e
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--class-names {path}: not a UTF-8 text file ({e})") from e
    while names and not names[-1]:
        names.pop()
    bad = next((i for i, n in enumerate(names) if not n or not n.isprintable()), None)
    if bad is not None:
        raise InputError(f"--class-names {path}: line {bad + 1} is empty or holds control characters")
    output = artifact["outputs"][0] if artifact["outputs"] else {}
    classes = (output.get("shape") or [None])[-1]
    if classes is not None and len(names) != classes:
        raise InputError(f"--class-names {path} has {len(names)} name(s), but output '{output['name']}' "
                         f"scores {classes} classes; give one name per class, in label order")
    return names


def _golden_files(run_dir: Path, checks: list[dict[str, Any]]) -> dict[str, bytes]:
    """The gate's golden inputs/outputs (.npz) for the checks that passed: bundle name -> bytes."""
    files = {}
    for check in checks:
        golden = check.get("golden")
        if check["verdict"] != "pass" or not golden:
            continue
        if not SAFE_FILE.fullmatch(golden) or not golden.startswith("golden/"):
            raise InputError(f"{run_dir / 'manifest.json'}: golden file {golden!r} is not a plain "
                             "golden/<name> path; re-run the pipeline")
        path = run_dir / golden
        if not path.is_file():
            raise InputError(f"golden file {path} named by the run is missing; re-run the pipeline")
        files[golden] = path.read_bytes()
    return files


def _artifact_entry(a: dict[str, Any], profile: TargetProfile, manifest: dict[str, Any],
                    verdict: dict[str, Any], golden: dict[str, bytes]) -> dict[str, Any]:
    checks = device_checks(a, profile)
    session_options = ((a.get("optimize") or {}).get("settings") or {}).get("session_options")
    return {
        **({"session_options": session_options} if session_options else {}),  # as measured: run it so
        "name": a["name"],
        "file": f"models/{a['name']}",
        "format": a["format"],
        "recipe": a["recipe"],
        "bytes": a["bytes"],
        "sha256": a["sha256"],
        "inputs": a["inputs"],
        "outputs": a["outputs"],
        "input_layout": _input_layouts(a, manifest),
        "runtime_requirements": _runtime_requirements(a, profile),
        "verify": a.get("verify"),
        "bench": (a.get("bench") or {}).get(profile.name, []),
        "budgets": {"passed": verdict["passed"], "failures": verdict["failures"],
                    "checks": [c["reason"] for c in verdict["checks"]]},
        "device_checks": checks,
        "golden": [{"file": name, "bytes": len(data), "sha256": sha256_bytes(data),
                    "target": c["target"], "backend": c.get("backend"), "backend_version": c.get("backend_version")}
                   for c in checks for name, data in golden.items() if c.get("golden") == name],
    }


def bundle_manifest(
    manifest: dict[str, Any], profile: TargetProfile, version: str, name: str,
    chosen: list[dict[str, Any]], selection: dict[str, Any], verdicts: dict[str, dict[str, Any]],
    golden: dict[str, bytes] | None = None, verify_doc: dict[str, Any] | None = None,
) -> dict[str, Any]:
    source = manifest["source_model"]
    return {
        "bundle_schema_version": BUNDLE_SCHEMA_VERSION,
        "name": name,
        "model": source.get("name") or Path(source["path"]).stem,
        "version": version,
        "toolchain_version": manifest["toolchain_version"],
        "target": {"name": profile.name, "description": profile.description, "arch": profile.hardware.arch,
                   "cores": profile.hardware.cores, "ram_mb": profile.hardware.ram_mb},
        "source_model": {"name": source.get("name") or Path(source["path"]).stem, "sha256": source["sha256"]},
        "run": {"created_utc": manifest["created_utc"], "config_sha256": manifest["config_sha256"]},
        "selection": selection,
        "primary": {"name": chosen[0]["name"], "file": f"models/{chosen[0]['name']}",
                    "sha256": chosen[0]["sha256"]},
        "preprocessing": preprocessing(manifest, verify_doc),
        "artifacts": [_artifact_entry(a, profile, manifest, verdicts[a["name"]], golden or {}) for a in chosen],
    }


def sha256sums(digests: dict[str, str]) -> bytes:
    """`sha256sum -c` lines for {file name: sha256}, sorted by name."""
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(digests.items())).encode()


class _HashingReader:
    """Hashes what tarfile copies from a file, so the bytes packed are the bytes checked."""

    def __init__(self, stream: Any):
        self.stream, self.digest = stream, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        chunk = self.stream.read(size)
        self.digest.update(chunk)
        return chunk


def write_tar_gz(out: Any, prefix: str, files: dict[str, bytes | Path], mtime: int) -> dict[str, str]:
    """Stream a .tar.gz of `files` (bytes, or a path read in chunks) under `prefix/` into `out`,
    byte-identical for identical input. Returns the sha256 of every file packed from a path."""
    entries: dict[str, bytes | Path | None] = {prefix: None}
    for name, data in files.items():
        parts = name.split("/")
        for i in range(1, len(parts)):
            entries[f"{prefix}/{'/'.join(parts[:i])}"] = None
        entries[f"{prefix}/{name}"] = data
    packed = {}
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=9, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(entries):
            data = entries[name]
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif isinstance(data, Path):
                info.mode, info.size = 0o644, data.stat().st_size
                with open(data, "rb") as f:
                    reader = _HashingReader(f)
                    tar.addfile(info, reader)
                packed[name.split("/", 1)[1]] = reader.digest.hexdigest()
            else:
                info.mode, info.size = 0o644, len(data)
                tar.addfile(info, io.BytesIO(data))
    return packed


def deterministic_tar_gz(prefix: str, files: dict[str, bytes], mtime: int) -> bytes:
    """A .tar.gz of `files` under `prefix/`, byte-identical for identical input."""
    out = io.BytesIO()
    write_tar_gz(out, prefix, dict(files), mtime)
    return out.getvalue()


def update_packages_sums(folder: Path) -> Path:
    """packages/SHA256SUMS over every bundle in the folder, sorted by name."""
    lines = [f"{sha256_file(p)}  {p.name}\n" for p in sorted(folder.glob("*.tar.gz"))]
    path = folder / SUMS
    atomic_write_text(path, "".join(lines))
    path.chmod(0o644)
    return path


def package_run(
    run_dir: Path,
    target: str,
    artifacts: list[str] | None = None,
    version: str | None = None,
    profile_dirs: list[Path] | None = None,
    class_names_file: Path | None = None,
    recommended: bool = False,
) -> PackageResult:
    """`recommended`: ship the artifact the run's [optimize] search recommends for `target`."""
    run_dir = Path(run_dir)
    docs = load_run(run_dir)
    manifest = docs.manifest
    settings = package_settings(manifest)
    version = version or settings.version
    if not BUNDLE_NAME.fullmatch(version):
        raise InputError(f"--version {version!r}: use letters, digits and . _ + - (e.g. 1.2.0)")
    profile = find_profile(target, profile_dirs)
    if recommended:
        artifacts = [recommended_artifact(manifest, profile, artifacts, run_dir)]
    chosen, selection, verdicts = select_artifacts(manifest, profile, artifacts)
    if recommended:
        note = chosen[0]["optimize"]["notes"].get(profile.name, "")
        selection = {**selection, "reason": f"{chosen[0]['name']}: recommended for {profile.name} by the optimize "
                                            f"search (fastest within its accuracy budget; {note})"}
    name = _bundle_name(manifest, version, profile)
    files: dict[str, bytes | Path] = {}
    digests: dict[str, str] = {}
    for a in chosen:
        files[f"models/{a['name']}"] = _artifact_file(run_dir, a)
        digests[f"models/{a['name']}"] = a["sha256"]
        golden = _golden_files(run_dir, device_checks(a, profile))
        files.update(golden)
        digests.update({k: sha256_bytes(v) for k, v in golden.items()})
    golden = {k: v for k, v in files.items() if k.startswith("golden/") and isinstance(v, bytes)}
    doc = bundle_manifest(manifest, profile, version, name, chosen, selection, verdicts, golden,
                          _read_verify(run_dir))
    if class_names_file is not None:
        doc["preprocessing"]["class_names"] = read_class_names(class_names_file, chosen[0])
    files["manifest.json"] = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
    digests["manifest.json"] = sha256_bytes(files["manifest.json"])
    files[SUMS] = sha256sums(digests)

    folder = run_dir / "packages"
    bundle = folder / f"{name}.tar.gz"
    with atomic_output(bundle, suffix=".tar.gz") as tmp:
        with open(tmp, "wb") as out:
            packed = write_tar_gz(out, name, files, source_date_epoch(manifest, settings))
        for file, digest in packed.items():
            if digest != digests[file]:
                raise _changed_after_run(files[file], run_dir)
        tmp.chmod(0o644)
    update_packages_sums(folder)
    return PackageResult(bundle, sha256_file(bundle), [a["name"] for a in chosen], selection["reason"])


def recommended_artifact(manifest: dict[str, Any], profile: TargetProfile, requested: list[str] | None,
                         run_dir: Path) -> str:
    """The name of the artifact the [optimize] search recommends for this target."""
    if requested:
        raise InputError("--recommended and --artifact both choose the artifact; give one of them")
    for artifact in manifest["artifacts"]:
        if profile.name in (artifact.get("optimize") or {}).get("recommended_on", []):
            return artifact["name"]
    raise InputError(f"{run_dir / 'manifest.json'} has no optimize recommendation for target '{profile.name}': add an "
                     f"[optimize] section and '{profile.name}' to [bench] targets, and run the pipeline again")


def _bundle_name(manifest: dict[str, Any], version: str, profile: TargetProfile) -> str:
    """<model>-<version>-<target>: the bundle's file and folder name, so a plain one."""
    model = manifest["source_model"].get("name") or Path(manifest["source_model"]["path"]).stem
    name = f"{model}-{version}-{profile.name}"
    if not BUNDLE_NAME.fullmatch(name):
        raise InputError(f"bundle name {name!r} (model-version-target) is not a plain file name: use letters, "
                         "digits and . _ + - in [model] name")
    return name


def _changed_after_run(path: Path, run_dir: Path) -> BundleError:
    return BundleError(f"{path} does not match the sha256 in {run_dir / 'manifest.json'}: it changed "
                       "after the run; re-run the pipeline instead of packaging a modified file")


def _artifact_file(run_dir: Path, artifact: dict[str, Any]) -> Path:
    """The artifact's file inside the run directory, with the size the run recorded."""
    if not SAFE_FILE.fullmatch(f"models/{artifact['name']}"):
        raise InputError(f"artifact name {artifact['name']!r} is not safe in a bundle: use letters, digits "
                         "and . _ - (set [model] name)")
    path = run_dir / artifact["path"]
    if not path.resolve().is_relative_to(run_dir.resolve()):
        raise InputError(f"{run_dir / 'manifest.json'}: artifact path {artifact['path']!r} leaves the run "
                         "directory; re-run the pipeline")
    if not path.is_file():
        raise InputError(f"artifact {artifact['name']} is missing from {run_dir / 'artifacts'}; re-run the pipeline")
    if path.stat().st_size != artifact["bytes"]:
        raise _changed_after_run(path, run_dir)
    return path


# ---- verify-bundle --------------------------------------------------------------
# Bundles are hostile input until checked. Every member is checked (name, type, mode, size)
# before any of its bytes are read; model files are hashed in chunks, never held in memory.

def _schema() -> dict[str, Any]:
    return json.loads(resources.files("toolchain").joinpath("schemas/bundle.schema.json").read_text())


class _BoundedReads(io.RawIOBase):
    """A read-only view of the decompressed tar that refuses any single read above `limit`:
    tarfile reads a member's extended (pax) header in one call, so a header declaring
    gigabytes must fail here instead of allocating them."""

    def __init__(self, stream: Any, limit: int, path: Path):
        self.stream, self.limit, self.path = stream, limit, path

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > self.limit:
            raise BundleError(f"{self.path}: a tar header asks to read {size or -1:,} bytes at once "
                              f"(limit {self.limit:,}): not a bundle written by `package`")
        return self.stream.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.stream.seek(offset, whence)

    def tell(self) -> int:
        return self.stream.tell()


@dataclass
class BundleContents:
    """What one pass over a bundle found: file sizes and hashes, the small metadata files, problems."""

    top: str = ""
    files: dict[str, tuple[int, str]] | None = None  # relative name -> (bytes, sha256)
    metadata: dict[str, bytes] | None = None
    problems: list[str] | None = None
    total_bytes: int = 0


def _member_problem(member: tarfile.TarInfo, relative: str) -> str | None:
    """Why this member may not be in a bundle (None: it may)."""
    name = member.name
    if member.mode & SPECIAL_MODE_BITS:
        return (f"{name!r} has mode {member.mode:04o}: setuid, setgid, sticky and writable-by-others "
                "bits are not allowed")
    if member.isdir():
        return None if relative in ("", *BUNDLE_FOLDERS) else f"unexpected folder {name!r}"
    if not member.isfile() or member.issparse():
        return f"{name!r} is not a regular file (links, devices and sparse files are not allowed)"
    if relative in METADATA_FILES or SAFE_FILE.fullmatch(relative):
        return None
    return (f"unexpected member {name!r}: bundle files are SHA256SUMS, manifest.json and "
            "models/ or golden/ files named with letters, digits and . _ -")


def _check_size(member: tarfile.TarInfo, relative: str, seen: BundleContents) -> None:
    """Refuse oversized members before reading them (a bomb stops the scan: nothing else matters)."""
    limit = MAX_METADATA_BYTES if relative in METADATA_FILES else MAX_FILE_BYTES
    if member.size > limit:
        raise BundleError(f"bundle member {member.name!r} declares {member.size:,} bytes, over the "
                          f"{limit:,}-byte limit for that file: refusing to read it")
    seen.total_bytes += member.size
    if seen.total_bytes > MAX_TOTAL_BYTES:
        raise BundleError(f"bundle files add up to more than {MAX_TOTAL_BYTES:,} bytes at {member.name!r}: "
                          "refusing to read further")


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, relative: str, seen: BundleContents) -> None:
    extracted = tar.extractfile(member)
    digest = hashlib.sha256()
    chunks = []
    size = 0
    for chunk in iter(lambda: extracted.read(MIB), b""):
        digest.update(chunk)
        size += len(chunk)
        if relative in METADATA_FILES:
            chunks.append(chunk)
    seen.files[relative] = (size, digest.hexdigest())
    if relative in METADATA_FILES:
        seen.metadata[relative] = b"".join(chunks)


def _scan_member(tar: tarfile.TarFile, member: tarfile.TarInfo, seen: BundleContents,
                 names: set[str], tops: set[str]) -> None:
    name = member.name
    parts = name.rstrip("/").split("/")
    if name.startswith("/") or "\\" in name or not name or any(p in ("", ".", "..") for p in parts):
        seen.problems.append(f"unsafe path {name!r}")
        return
    if name.rstrip("/") in names:
        seen.problems.append(f"duplicate member {name!r} (a later copy would replace the checked one)")
        return
    names.add(name.rstrip("/"))
    tops.add(parts[0])
    relative = "/".join(parts[1:])
    if not member.isdir() and not relative:
        seen.problems.append(f"{name!r} is outside the bundle's folder")
        return
    if member.isfile():
        _check_size(member, relative, seen)
    problem = _member_problem(member, relative)
    if problem:
        seen.problems.append(problem)
    elif member.isfile():
        _read_member(tar, member, relative, seen)


def scan_bundle(path: Path) -> BundleContents:
    """One streaming pass over the bundle; BundleError at once for anything unreadable or too big."""
    seen = BundleContents(files={}, metadata={}, problems=[])
    names: set[str] = set()
    tops: set[str] = set()
    try:
        with gzip.open(path, "rb") as raw, tarfile.open(fileobj=_BoundedReads(raw, MAX_METADATA_BYTES, path),
                                                        mode="r:") as tar:
            for count, member in enumerate(tar, start=1):
                if count > MAX_MEMBERS:
                    raise BundleError(f"bundle {path} has more than {MAX_MEMBERS} members: "
                                      "not a bundle written by `package`")
                _scan_member(tar, member, seen, names, tops)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise BundleError(f"{path}: not a readable .tar.gz bundle ({e}); the file is damaged or incomplete") from e
    if len(tops) != 1:
        seen.problems.append(f"expected one top folder, found {sorted(tops) or 'none'}")
    seen.top = next(iter(tops)) if len(tops) == 1 else ""
    return seen


def _check_sums(seen: BundleContents) -> None:
    """Every file listed in SHA256SUMS with its hash, and nothing unlisted."""
    problems = seen.problems
    sums_text = seen.metadata.get(SUMS)
    listed: dict[str, str] = {}
    if sums_text is None:
        problems.append(f"no {SUMS} in the bundle")
        return
    for line in sums_text.decode("utf-8", "replace").splitlines():
        match = SUMS_LINE.match(line)
        if not match:
            problems.append(f"{SUMS}: malformed line {line!r}")
        elif match.group(2) in listed:
            problems.append(f"{SUMS} lists {match.group(2)!r} twice")
        else:
            listed[match.group(2)] = match.group(1)
    for name, digest in sorted(listed.items()):
        if name not in seen.files:
            problems.append(f"{name!r} is listed in {SUMS} but missing")
        elif seen.files[name][1] != digest:
            problems.append(f"{name}: sha256 does not match {SUMS}")
    for name in sorted(set(seen.files) - set(listed) - {SUMS}):
        problems.append(f"{name} is not listed in {SUMS}")


def _load_manifest(seen: BundleContents) -> dict[str, Any]:
    import jsonschema

    if "manifest.json" not in seen.metadata:
        seen.problems.append("no manifest.json in the bundle")
        return {}
    try:
        doc = json.loads(seen.metadata["manifest.json"])
        version = doc.get("bundle_schema_version") if isinstance(doc, dict) else None
        if version is not None and version != BUNDLE_SCHEMA_VERSION:
            seen.problems.append(f"manifest.json has bundle schema {version!r}; this toolchain reads "
                                 f"{BUNDLE_SCHEMA_VERSION!r}: re-package the run with this version")
            return {}
        jsonschema.validate(doc, _schema())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        seen.problems.append(f"manifest.json is not valid JSON: {e}")
        return {}
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        seen.problems.append(f"manifest.json breaks the bundle schema at {where}: {e.message}")
        return {}
    return doc


def _check_manifest(seen: BundleContents, doc: dict[str, Any]) -> None:
    """The manifest's files exist with its sizes and hashes; primary is one of its artifacts."""
    problems = seen.problems
    declared = [(a["file"], a["bytes"], a["sha256"]) for a in doc["artifacts"]]
    declared += [(g["file"], g["bytes"], g["sha256"]) for a in doc["artifacts"] for g in a.get("golden", [])]
    for file, size, digest in declared:
        if file not in seen.files:
            problems.append(f"manifest.json names {file}, which is not in the bundle")
        elif seen.files[file] != (size, digest):
            problems.append(f"{file}: size or sha256 does not match manifest.json")
    artifact_files = [a["file"] for a in doc["artifacts"]]
    if len(set(artifact_files)) != len(artifact_files):
        problems.append("manifest.json lists the same artifact file twice")
    primary = doc["primary"]
    if not any((a["name"], a["file"], a["sha256"]) == (primary["name"], primary["file"], primary["sha256"])
               for a in doc["artifacts"]):
        problems.append(f"manifest.json primary {primary['file']!r} is not one of its artifacts[] "
                        "(same name, file and sha256)")
    unlisted = sorted(set(seen.files) - set(METADATA_FILES) - {file for file, _, _ in declared})
    if unlisted:
        problems.append(f"manifest.json does not describe {', '.join(unlisted)}")
    if doc.get("name") != seen.top:
        problems.append(f"manifest.json name {doc.get('name')!r} does not match the folder {seen.top!r}")


def _outer_checksum(path: Path, problems: list[str]) -> str:
    """The bundle's own hash against the packages/SHA256SUMS beside it, when there is one."""
    sums_beside = path.parent / SUMS
    if not sums_beside.is_file():
        return "no SHA256SUMS beside the bundle"
    if sums_beside.stat().st_size > MAX_METADATA_BYTES:
        problems.append(f"{sums_beside} is over {MAX_METADATA_BYTES:,} bytes: not a list of bundle checksums")
        return "unreadable"
    entries = {}
    for line in sums_beside.read_text(encoding="utf-8", errors="replace").splitlines():
        match = SUMS_LINE.match(line)
        if match:
            entries[match.group(2)] = match.group(1)
    if path.name not in entries:
        return f"not listed in {sums_beside}"
    if entries[path.name] != sha256_file(path):
        problems.append(f"the bundle's sha256 does not match {sums_beside}")
        return "mismatch"
    return "ok"


def verify_bundle(path: Path) -> dict[str, Any]:
    """Check a bundle's members, SHA256SUMS, manifest (schema, file sizes and hashes, primary)
    and, when a SHA256SUMS file beside it lists it, the bundle's own hash. Raises BundleError (exit 5).

    Integrity only: anyone who can write a bundle can write a consistent one; only the outer
    SHA256SUMS, obtained over a channel you trust, ties it to the run that made it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"bundle not found: {path}")
    seen = scan_bundle(path)
    if seen.top and path.name != f"{seen.top}.tar.gz":
        seen.problems.append(f"the top folder {seen.top!r} does not match the file name {path.name!r}")
    _check_sums(seen)
    doc = _load_manifest(seen)
    if doc:
        _check_manifest(seen, doc)
    outer = _outer_checksum(path, seen.problems)
    if seen.problems:
        raise BundleError(f"bundle {path} failed verification: " + "; ".join(seen.problems))
    return {"bundle": str(path), "sha256": sha256_file(path), "name": seen.top, "files": len(seen.files),
            "target": doc["target"]["name"], "version": doc["version"],
            "artifacts": [a["name"] for a in doc["artifacts"]], "outer_checksum": outer}
