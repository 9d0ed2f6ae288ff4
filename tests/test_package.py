"""Release bundles: reproducible bytes, manifest and checksums, verify-bundle, and examples/flash.sh."""

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from toolchain.cli import main
from toolchain.config import find_profile
from toolchain.errors import BudgetError
from toolchain.package import class_names, deterministic_tar_gz, select_artifacts

ROOT = Path(__file__).resolve().parent.parent
FLASH = ROOT / "examples" / "flash.sh"


@pytest.fixture
def run_copy(tmp_path, demo_run) -> Path:
    target = tmp_path / "run"
    shutil.copytree(demo_run, target, ignore=shutil.ignore_patterns("packages", "*.lock"))
    return target


def _package(run_dir: Path, *args: str) -> int:
    return main(["package", str(run_dir), "--target", "local", "--version", "1.2.0", *args])


def test_same_run_packaged_twice_gives_identical_bytes(run_copy, monkeypatch, capsys):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    bundle = run_copy / "packages" / "digits-1.2.0-local.tar.gz"
    assert _package(run_copy) == 0
    first = bundle.read_bytes()
    run_manifest = json.loads((run_copy / "manifest.json").read_text())
    p90 = {a["name"]: min(s["p90_ms"] for s in a["bench"]["local"]) for a in run_manifest["artifacts"]}
    best = min(p90, key=p90.get)
    assert f"chose: {best}: passes the budgets for local with the lowest p90" in capsys.readouterr().out
    os.utime(run_copy / "artifacts" / best, (1, 1))  # file times must not leak in
    assert _package(run_copy) == 0
    assert bundle.read_bytes() == first
    sums = (run_copy / "packages" / "SHA256SUMS").read_text()
    assert sums == f"{hashlib.sha256(first).hexdigest()}  digits-1.2.0-local.tar.gz\n"

    assert first[:4] == b"\x1f\x8b\x08\x00", "gzip: no FNAME flag"
    assert first[4:8] == b"\x00\x00\x00\x00", "gzip: no timestamp"
    with tarfile.open(bundle) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names)
        assert names == ["digits-1.2.0-local", "digits-1.2.0-local/SHA256SUMS",
                         "digits-1.2.0-local/manifest.json", "digits-1.2.0-local/models",
                         f"digits-1.2.0-local/models/{best}"]
        run_time = run_manifest["created_utc"]
        from datetime import datetime

        epoch = int(datetime.fromisoformat(run_time).timestamp())
        for m in members:
            assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", epoch)
            assert m.mode == (0o755 if m.isdir() else 0o644)
        manifest = json.loads(tar.extractfile("digits-1.2.0-local/manifest.json").read())
    assert manifest["selection"]["mode"] == "best-passing-budgets"
    assert manifest["primary"]["file"] == f"models/{best}"
    artifact = manifest["artifacts"][0]
    assert artifact["inputs"][0]["name"] == "image" and "quantization" in artifact["inputs"][0]
    assert artifact["verify"]["verdict"] == "pass" and artifact["bench"][0]["p90_ms"] == p90[best]
    assert artifact["sha256"] == hashlib.sha256((run_copy / "artifacts" / best).read_bytes()).hexdigest()


def test_bundle_manifest_carries_quantization_and_runtime(run_copy):
    run_manifest = json.loads((run_copy / "manifest.json").read_text())
    quantized = [a["name"] for a in run_manifest["artifacts"]
                 if a["format"] == "tflite" and a["inputs"][0].get("quantization")]
    if not quantized:
        pytest.skip("the demo run has no artifact with quantized inputs")
    assert _package(run_copy, "--artifact", quantized[0], "--artifact", "digits.fp32.onnx") == 0
    with tarfile.open(run_copy / "packages" / "digits-1.2.0-local.tar.gz") as tar:
        manifest = json.loads(tar.extractfile("digits-1.2.0-local/manifest.json").read())
    int8, onnx = manifest["artifacts"]
    assert int8["inputs"][0]["dtype"] in ("int8", "uint8", "int16")
    assert set(int8["inputs"][0]["quantization"]) >= {"scale", "zero_point"}
    assert int8["runtime_requirements"]["backend"] == "ai_edge_litert"
    assert onnx["runtime_requirements"]["backend"] == "onnxruntime" and onnx["runtime_requirements"]["opset"] == 17


def test_source_date_epoch_sets_the_mtimes(run_copy, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert _package(run_copy, "--artifact", "digits.fp32.onnx", "--artifact", "digits.fp32.tflite") == 0
    with tarfile.open(run_copy / "packages" / "digits-1.2.0-local.tar.gz") as tar:
        assert {m.mtime for m in tar.getmembers()} == {1700000000}
        manifest = json.loads(tar.extractfile("digits-1.2.0-local/manifest.json").read())
    assert [a["name"] for a in manifest["artifacts"]] == ["digits.fp32.onnx", "digits.fp32.tflite"]
    assert manifest["selection"] == {"mode": "explicit", "reason": "chosen with --artifact"}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    assert _package(run_copy) == 2


def test_deterministic_tar_gz_depends_only_on_content():
    files = {"b.txt": b"2", "a/x.bin": b"1"}
    assert deterministic_tar_gz("p", files, 5) == deterministic_tar_gz("p", dict(reversed(files.items())), 5)
    assert deterministic_tar_gz("p", files, 5) != deterministic_tar_gz("p", files, 6)


def test_unmeasured_target_and_no_passing_artifact(demo_run, tmp_path):
    manifest = json.loads((demo_run / "manifest.json").read_text())
    chosen, selection, _ = select_artifacts(manifest, find_profile("raspberry-pi-4"), None)
    assert "not benchmarked on raspberry-pi-4; smallest file" in selection["reason"]
    assert chosen[0]["bytes"] == min(a["bytes"] for a in manifest["artifacts"])
    (tmp_path / "old-ort.toml").write_text("[runtime]\nmax_onnx_opset = 13\n")
    _, selection, _ = select_artifacts(manifest, find_profile("old-ort", [tmp_path]), None)
    assert selection["rejected"]["digits.fp32.onnx"] == "ONNX opset 17 > the target's max_onnx_opset 13"
    manifest["config"] = {**manifest["config"], "budgets": {"max_file_mb": 0.01}}
    with pytest.raises(BudgetError, match="no artifact passes the budgets for target 'local': "
                                          "digits.fp32.tflite: file_size_mb"):
        select_artifacts(manifest, find_profile("local"), None)


def test_unknown_artifact_is_refused(run_copy, capsys):
    assert _package(run_copy, "--artifact", "digits.fp32.tflit") == 2
    assert "did you mean 'digits.fp32.tflite'" in capsys.readouterr().err
    assert not (run_copy / "packages").exists()


def test_modified_artifact_is_not_packaged(run_copy, capsys):
    with open(run_copy / "artifacts" / "digits.fp32.tflite", "ab") as f:
        f.write(b"\0")
    assert _package(run_copy, "--artifact", "digits.fp32.tflite") == 5
    assert "changed after the run" in capsys.readouterr().err


@pytest.fixture
def bundle(run_copy, monkeypatch) -> Path:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert _package(run_copy, "--artifact", "digits.fp32.tflite") == 0
    return run_copy / "packages" / "digits-1.2.0-local.tar.gz"


def _rewrite(bundle: Path, edit) -> None:
    """Re-pack the bundle after `edit(files)` changed its {name: bytes}."""
    with tarfile.open(bundle) as tar:
        files = {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    edit(files)
    bundle.write_bytes(deterministic_tar_gz(bundle.name[:-7], files, 0))


def test_verify_bundle_accepts_a_good_bundle(bundle, capsys):
    assert main(["verify-bundle", str(bundle), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["outer_checksum"] == "ok" and summary["artifacts"] == ["digits.fp32.tflite"]


def test_tampered_model_fails_verify_bundle(bundle, capsys):
    def tamper(files):
        model = bytearray(files["models/digits.fp32.tflite"])
        model[-100] ^= 0xFF
        files["models/digits.fp32.tflite"] = bytes(model)

    _rewrite(bundle, tamper)
    assert main(["verify-bundle", str(bundle)]) == 5
    err = capsys.readouterr().err
    assert "models/digits.fp32.tflite: sha256 does not match SHA256SUMS" in err
    assert "does not match manifest.json" in err


def test_tampering_with_recomputed_sums_is_caught_by_the_outer_sums(bundle, capsys):
    def tamper(files):
        doc = json.loads(files["manifest.json"])
        doc["artifacts"][0]["runtime_requirements"]["backend"] = "anything"
        files["manifest.json"] = json.dumps(doc).encode()
        files["SHA256SUMS"] = "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in sorted(files.items())
                                      if n != "SHA256SUMS").encode()

    _rewrite(bundle, tamper)
    assert main(["verify-bundle", str(bundle)]) == 5
    assert "the bundle's sha256 does not match" in capsys.readouterr().err
    (bundle.parent / "SHA256SUMS").unlink()
    assert main(["verify-bundle", str(bundle)]) == 0  # internally consistent; nothing to compare with
    assert "consistent, not who made it (bundles are not signed)" in capsys.readouterr().out


def test_bundle_structure_problems(bundle, capsys):
    _rewrite(bundle, lambda files: files.update({"extra.sh": b"rm -rf /"}))
    (bundle.parent / "SHA256SUMS").unlink()
    assert main(["verify-bundle", str(bundle)]) == 5
    assert "unexpected member 'digits-1.2.0-local/extra.sh'" in capsys.readouterr().err

    _rewrite(bundle, lambda files: files.pop("SHA256SUMS"))
    assert main(["verify-bundle", str(bundle)]) == 5
    assert "no SHA256SUMS in the bundle" in capsys.readouterr().err

    def break_manifest(files):
        files["manifest.json"] = b'{"bundle_schema_version": "2.0"}'
    _rewrite(bundle, break_manifest)
    assert main(["verify-bundle", str(bundle)]) == 5
    assert "manifest.json breaks the bundle schema" in capsys.readouterr().err

    bundle.write_bytes(bundle.read_bytes()[:200])
    assert main(["verify-bundle", str(bundle)]) == 5
    assert "not a readable .tar.gz bundle" in capsys.readouterr().err


def test_unsafe_paths_are_refused(bundle, capsys):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("../escape")
        tar.addfile(info, io.BytesIO(b""))
    bundle.write_bytes(gzip.compress(raw.getvalue()))
    assert main(["verify-bundle", str(bundle)]) == 5
    assert "unsafe path '../escape'" in capsys.readouterr().err


def test_missing_bundle_is_bad_input(tmp_path, capsys):
    assert main(["verify-bundle", str(tmp_path / "nope.tar.gz")]) == 2
    assert "bundle not found" in capsys.readouterr().err


def _flash(bundle: Path, ssh_server, tmp_path: Path, remote: Path) -> subprocess.CompletedProcess:
    config = ssh_server.write_ssh_config(tmp_path / "ssh_config", alias="device")
    env = {**os.environ, "SSH_OPTS": f"-F {config}"}
    return subprocess.run(["sh", str(FLASH), str(bundle), "device", str(remote)], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.heavy
def test_flash_script_copies_the_model_over_ssh(bundle, ssh_server, tmp_path):
    remote = tmp_path / "device" / "models"
    result = _flash(bundle, ssh_server, tmp_path, remote)
    assert result.returncode == 0, result.stderr
    model = remote / "digits.fp32.tflite"
    manifest = json.loads((remote / "manifest.json").read_text())
    assert hashlib.sha256(model.read_bytes()).hexdigest() == manifest["primary"]["sha256"]
    assert f"flashed digits.fp32.tflite sha256 {manifest['primary']['sha256']}" in result.stdout
    assert not list(remote.glob(".*.part"))

    def tamper(files):
        files["models/digits.fp32.tflite"] = files["models/digits.fp32.tflite"][:-1] + b"!"

    _rewrite(bundle, tamper)
    shutil.rmtree(remote)
    result = _flash(bundle, ssh_server, tmp_path, remote)
    assert result.returncode == 1
    assert "checksum mismatch" in result.stderr
    assert not remote.exists(), "nothing is copied from a tampered bundle"


def test_class_names_come_from_the_image_folder_note():
    assert class_names({"notes": ["classes (label ids in order): cat, dog"]}) == ["cat", "dog"]
    assert class_names({"notes": []}) is None and class_names(None) is None


@pytest.fixture
def emulated_pi_run(tmp_path, demo_inputs, monkeypatch) -> Path:
    """A run that never touched a Pi: fp32 .tflite gated on the emulated Pi 4, a p90 budget."""
    from toolchain.emulator.stack import setup_stack

    cache = Path(os.environ.get("EDGE_TOOLCHAIN_TEST_CACHE", Path.home() / ".cache" / "edge-toolchain-tests"))
    setup_stack(cache / "emulator")
    monkeypatch.setenv("EDGE_TOOLCHAIN_CACHE", str(cache))
    source = tmp_path / "source"
    shutil.copytree(demo_inputs, source)
    (source / "pi.toml").write_text(
        '[model]\npath = "digits_cnn.keras"\nname = "digits"\n'
        '[data]\neval = "digits_eval.npz"\nsamples = 64\nvalue_range = [0.0, 1.0]\n'
        '[export]\nformats = ["tflite"]\ntargets = ["raspberry-pi-4-emulated"]\n'
        '[verify]\nsamples = 64\n[report]\nenabled = false\n[bench]\nenabled = false\n'
        '[budgets]\nmax_p90_ms = 50.0\n'
    )
    run_dir = tmp_path / "run"
    assert main(["run", str(source / "pi.toml"), "--out", str(run_dir), "--quiet"]) == 0
    return run_dir


@pytest.mark.heavy
def test_package_for_a_pi_you_do_not_own(emulated_pi_run, capsys):
    """Unbenchmarked on the Pi, the p90 budget is unmeasured: the emulator gate on the Pi 4's
    core and runtime stands in for it, and the bundle carries the verdict and golden outputs."""
    run = emulated_pi_run
    assert main(["package", str(run), "--target", "raspberry-pi-4", "--version", "1.0.0"]) == 0
    out = capsys.readouterr().out
    assert "accepted on the emulator gate (raspberry-pi-4-emulated:" in out
    assert "in place of the unmeasured budget(s) p90_latency_ms" in out
    bundle = run / "packages" / "digits-1.0.0-raspberry-pi-4.tar.gz"
    assert main(["verify-bundle", str(bundle), "--json"]) == 0
    capsys.readouterr()
    with tarfile.open(bundle) as tar:
        doc = json.loads(tar.extractfile("digits-1.0.0-raspberry-pi-4/manifest.json").read())
        (artifact,) = doc["artifacts"]
        (check,) = artifact["device_checks"]
        assert (check["kind"], check["verdict"], check["qemu_cpu"]) == ("emulator-gate", "pass", "cortex-a72")
        assert (check["backend"], check["backend_version"]) == ("tflite_runtime", "2.14.0")
        (golden,) = artifact["golden"]
        data = tar.extractfile(f"digits-1.0.0-raspberry-pi-4/{golden['file']}").read()
    assert hashlib.sha256(data).hexdigest() == golden["sha256"]
    with np.load(io.BytesIO(data)) as arrays:
        assert {"input:image", "output:probs"} <= set(arrays.files)
    assert artifact["budgets"]["passed"] is False  # stated as is: the budget was not measured
    assert doc["preprocessing"]["value_range"] == [0.0, 1.0]
    assert artifact["input_layout"] == {"image": "NHWC"}

    # the Pi 5's Cortex-A76 was not gated: no stand-in, the budget stays unmeasured
    assert main(["package", str(run), "--target", "raspberry-pi-5", "--version", "1.0.0"]) == 7
    err = capsys.readouterr().err
    assert "p90_latency_ms: not benchmarked on target 'raspberry-pi-5'" in err
    assert "a run with export.targets = an emulated profile of this board gates it instead" in err
