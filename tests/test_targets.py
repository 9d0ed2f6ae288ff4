"""Target profiles: the shipped ones, user folders, validation errors, `edge-toolchain targets`."""

from __future__ import annotations

import json

import pytest

from toolchain.cli import main
from toolchain.config import BenchSection, ConfigError, find_profile, list_profiles, load_config, load_profile
from toolchain.stages.bench import resolve_settings, resolve_threads

SHIPPED = ("local", "x86-64-ci-runner", "raspberry-pi-4", "raspberry-pi-5")


def test_shipped_profiles_load_with_their_facts():
    assert set(SHIPPED) <= set(list_profiles())
    for name in SHIPPED:
        assert find_profile(name).name == name
    pi4, pi5 = find_profile("raspberry-pi-4"), find_profile("raspberry-pi-5")
    for pi in (pi4, pi5):
        assert pi.connection.kind == "ssh" and pi.connection.accept_new_host_key is False
        assert pi.runtime.tflite_backend == "tflite_runtime" and pi.runtime.tflite_version == "2.14.0"
        assert pi.hardware.arch == "aarch64" and pi.hardware.cores == 4
    # 4 cores x 1.8 GHz x 8 FLOP/cycle (A72); 4 x 2.4 GHz x 16 (A76)
    assert pi4.hardware.peak_gflops == pytest.approx(4 * 1.8 * 8)
    assert pi5.hardware.peak_gflops == pytest.approx(4 * 2.4 * 16)
    assert pi4.hardware.memory_bandwidth_gbs < pi5.hardware.memory_bandwidth_gbs
    assert find_profile("x86-64-ci-runner").connection.kind == "local"


def write_profile(folder, name, text):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "message"), [
    ('[connection]\nkind = "ssh"\nhots = "pi"\n', r"unknown key 'connection.hots' \(did you mean 'host'\?\)"),
    ('[connection]\nkind = "ssh"\n', r"'connection': kind = 'ssh' needs 'host'"),
    ('[connection]\nkind = "local"\nport = 22\n', r"'connection': port only apply to kind = 'ssh'"),
    ('[connection]\nkind = "telnet"\n', r"'connection.kind' must be one of 'local'"),
    ('[budgets]\nmax_p90_ms = -1\n', r"'budgets.max_p90_ms': Input should be greater than 0"),
    ('[budgets]\nmin_accuracy = 95\n', r"'budgets.min_accuracy': Input should be less than or equal to 1"),
    ('threads = [0]\n', r"'threads': thread counts must be between 1 and 1024"),
    ('[bench]\nmin_runs = "many"\n', r"'bench.min_runs' must be an integer"),
    ('[hardware]\npeak_gflops = 0\n', r"'hardware.peak_gflops': Input should be greater than 0"),
])
def test_bad_profile_is_a_config_error_naming_file_and_key(tmp_path, text, message):
    path = write_profile(tmp_path, "board", text)
    with pytest.raises(ConfigError, match=message) as info:
        load_profile(path)
    assert str(path) in str(info.value)


def test_profile_name_must_match_file_and_toml_must_parse(tmp_path):
    with pytest.raises(ConfigError, match=r"'name' is 'other' but the file is board.toml"):
        load_profile(write_profile(tmp_path, "board", 'name = "other"\n'))
    with pytest.raises(ConfigError, match=r"broken.toml: not valid TOML"):
        load_profile(write_profile(tmp_path, "broken", "[connection\n"))


def test_ssh_paths_resolve_against_the_profile_folder(tmp_path):
    path = write_profile(tmp_path / "profiles", "pi", '[connection]\nkind = "ssh"\nhost = "pi.lan"\n'
                         'identity = "keys/id"\nknown_hosts = "~/kh"\n')
    profile = load_profile(path)
    assert profile.connection.identity == (tmp_path / "profiles" / "keys" / "id").resolve()
    assert profile.connection.known_hosts.is_absolute() and "~" not in str(profile.connection.known_hosts)


def test_targets_cli_lists_and_shows_user_profiles(tmp_path, capsys):
    folder = tmp_path / "mine"
    write_profile(folder, "bench-pi", 'description = "lab Pi"\nthreads = [2]\n[connection]\nkind = "ssh"\n'
                  'host = "lab-pi"\nuser = "ci"\n[budgets]\nmax_p90_ms = 12.5\n')
    assert main(["targets", "--targets-dir", str(folder), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(SHIPPED) | {"bench-pi"} <= set(rows)
    assert rows["bench-pi"]["where"] == "ssh ci@lab-pi" and rows["bench-pi"]["threads"] == "2"
    assert main(["targets", "show", "bench-pi", "--targets-dir", str(folder), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["budgets"]["max_p90_ms"] == 12.5 and shown["file"] == str(folder / "bench-pi.toml")
    assert main(["targets", "show", "raspberry-pi-5"]) == 0
    text = capsys.readouterr().out
    assert "[hardware]" in text and "peak_gflops = 153.6" in text
    assert main(["targets"]) == 0
    assert "raspberry-pi-4" in capsys.readouterr().out


def test_targets_cli_errors(tmp_path, capsys):
    assert main(["targets", "show", "raspbery-pi-4"]) == 2
    assert "did you mean 'raspberry-pi-4'" in capsys.readouterr().err
    assert main(["targets", "--targets-dir", str(tmp_path / "absent")]) == 2
    assert "target profile folder not found" in capsys.readouterr().err
    write_profile(tmp_path / "bad", "typo", '[runtime]\ntflite_backend = "tflite-runtime"\n')
    assert main(["targets", "--targets-dir", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "typo.toml" in err and "'runtime.tflite_backend' must be one of" in err


def test_pipeline_targets_dir_key_resolves_against_the_config(tmp_path):
    config_path = tmp_path / "pipeline.toml"
    config_path.write_text('[model]\npath = "m.keras"\n[bench]\ntargets = ["bench-pi"]\ntargets_dir = "profiles"\n')
    config, _ = load_config(config_path)
    assert config.bench.targets_dir == tmp_path / "profiles"


def test_settings_precedence_flags_then_pipeline_then_profile(tmp_path):
    profile = load_profile(write_profile(tmp_path, "board", "threads = [1, 4]\n[bench]\nmin_runs = 7\n"
                                         "max_seconds = 9.0\ntimeout_seconds = 99.0\n"))
    assert resolve_settings(profile)["min_runs"] == 7
    assert resolve_settings(profile)["warmup_runs"] == BenchSection().warmup_runs
    pipeline = BenchSection(min_runs=11)
    used = resolve_settings(profile, pipeline, {"max_seconds": 3.0, "min_runs": None})
    assert used["min_runs"] == 11 and used["max_seconds"] == 3.0 and used["timeout_seconds"] == 99.0
    assert resolve_threads(profile, BenchSection(), None) == [1, 4]
    assert resolve_threads(profile, BenchSection(threads=[2]), None) == [2]
    assert resolve_threads(profile, BenchSection(threads=[2]), [3]) == [3]


def test_bench_cli_rejects_bad_threads_and_missing_artifacts(tmp_path, capsys):
    artifact = tmp_path / "m.tflite"
    artifact.write_bytes(b"x")
    assert main(["bench", str(artifact), "--threads", "1,x"]) == 2
    assert "--threads must be comma-separated positive integers" in capsys.readouterr().err
    assert main(["bench", str(tmp_path / "absent.onnx")]) == 2
    assert "artifact not found" in capsys.readouterr().err
    (tmp_path / "m.keras").write_bytes(b"x")
    assert main(["bench", str(tmp_path / "m.keras")]) == 2
    assert "expected a .tflite or .onnx file" in capsys.readouterr().err
    assert main(["bench", str(artifact), "--inputs", str(tmp_path / "none.npz")]) == 2
    assert "inputs file not found" in capsys.readouterr().err


def test_runner_stays_python_39_compatible():
    import ast

    from toolchain.targets.local import RUNNER_PATH

    tree = ast.parse(RUNNER_PATH.read_text(), feature_version=(3, 9))  # devices run Python >= 3.9
    annotations = [n for n in ast.walk(tree) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr)
                   and any(isinstance(side, ast.Name) and side.id == "None" for side in (n.left, n.right))]
    assert annotations == []  # `X | None` needs 3.10 when evaluated
    imports = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imports |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    allowed = {"json", "os", "platform", "subprocess", "sys", "time", "resource", "importlib", "numpy",
               "ai_edge_litert", "tflite_runtime", "tensorflow", "onnxruntime"}
    assert imports <= allowed, imports - allowed
