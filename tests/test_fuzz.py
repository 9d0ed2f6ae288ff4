"""Property-based and mutation fuzzing: only the declared errors escape, and no process crashes.

Bounded (max_examples, no deadline) so the suite stays fast in CI; each test also runs
hand-picked inputs that once broke (or could break) the code under test.
"""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolchain.config import PipelineConfig, load_config, parse_config, resolve_paths
from toolchain.device import runner
from toolchain.errors import ConfigError

FUZZ = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# ---- the config loader ---------------------------------------------------------------

SECTION_KEYS = {
    name: list(field.annotation.model_fields) if hasattr(field.annotation, "model_fields") else []
    for name, field in PipelineConfig.model_fields.items()
}
ALL_KEYS = sorted({*SECTION_KEYS, *(k for keys in SECTION_KEYS.values() for k in keys)})

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["fp32", "int8", "tflite", "onnx", "local", "m.keras", "eval", "x:y", "\0", "~/x", ""]),
)
keys = st.one_of(st.sampled_from(ALL_KEYS), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(keys, inner, max_size=4)),
                      max_leaves=12)
section = st.dictionaries(keys, values, max_size=6)
configs = st.dictionaries(st.sampled_from(list(SECTION_KEYS)), section, max_size=6).map(
    lambda raw: raw if "model" in raw else {"model": {"path": "m.keras"}, **raw}
)


@FUZZ
@given(raw=st.one_of(configs, st.dictionaries(keys, values, max_size=5)))
def test_config_loader_raises_only_config_errors(raw, tmp_path_factory):
    try:
        config = parse_config(raw)
        resolve_paths(config, tmp_path_factory.getbasetemp())
    except ConfigError as e:
        assert str(e).startswith("pipeline config: ")  # names the problem


@FUZZ
@given(text=st.text(max_size=200))
def test_config_file_text_raises_only_config_errors(text, tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "fuzz.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_config(path)
    except ConfigError:
        pass


@pytest.mark.parametrize("raw,message", [
    ({"model": {"path": "m\0.keras"}}, "'model.path': 'm\\x00.keras' is not a usable path"),
    ({"model": {"path": "m.keras"}, "output": {"dir": "out\0"}}, "'output.dir': 'out\\x00' is not a usable path"),
    ({"model": {"path": "m.keras"}, "data": {"eval": "\0"}}, "'data.eval': '\\x00' is not a usable path"),
    ({"model": {"path": "m.keras"}, "bench": {"threads": [2**70]}},
     "'bench.threads': thread counts must be between 1 and 1024"),
    ({"model": {"path": "m.keras"}, "bench": {"threads": [0]}}, "thread counts must be between 1 and 1024"),
    ({"model": {"path": "m.keras"}, "verify": {"tolerances": {"fp32": {"max_abs_error": float("nan")}}}},
     "'verify.tolerances.fp32.max_abs_error': Input should be a finite number"),
    ({"model": {"path": "m.keras"}, "bench": {"max_seconds": float("inf")}},
     "'bench.max_seconds': Input should be a finite number (got inf)"),
    ({"model": {"path": "m.keras"}, "bench": {"timeout_seconds": float("inf")}},
     "'bench.timeout_seconds': Input should be a finite number (got inf)"),
    ({"model": {"path": "m.keras"}, "bench": {"timeout_seconds": 1e300}},
     "'bench.timeout_seconds': Input should be less than or equal to 86400"),
    ({"model": {"path": "m.keras"}, "bench": {"min_runs": 2**70}}, "'bench.min_runs': Input should be less than"),
    ({"model": {"path": "m.keras"}, "data": {"value_range": [float("nan"), 1.0]}},
     "'data.value_range.0': Input should be a finite number (got nan)"),
    ({"model": {"path": "m.keras"}, "data": {"value_range": [0.0, float("inf")]}},
     "'data.value_range.1': Input should be a finite number (got inf)"),
])
def test_config_edge_values(raw, message, tmp_path):
    with pytest.raises(ConfigError) as caught:
        resolve_paths(parse_config(raw), tmp_path)
    assert message in str(caught.value)


def test_profile_refuses_infinite_and_absurd_bench_values(tmp_path):
    from toolchain.config import load_profile

    path = tmp_path / "board.toml"
    for body, message in [("threads = [4096]", "'threads': thread counts must be between 1 and 1024"),
                          ("[bench]\nmax_seconds = inf", "'bench.max_seconds': Input should be a finite number"),
                          ("[bench]\ntimeout_seconds = nan", "'bench.timeout_seconds': Input should be a finite")]:
        path.write_text(body + "\n")
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
            load_profile(path)


@pytest.mark.parametrize("raw", [
    {"model": {"path": "m.keras"}, "export": {"batch_size": "x" * 10_000_000}},
    {"model": {"path": "m.keras"}, "export": {"formats": ["y" * 10_000_000]}},
    {"model": {"path": "m.keras"}, "bench": {"z" * 10_000_000: 1}},
])
def test_huge_config_values_are_not_echoed_whole(raw):
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    message = str(caught.value)
    assert len(message) < 400 and "0,00" in message and " characters)" in message, message[:400]


# ---- the device runner's JSON protocol ---------------------------------------------

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**65), max_value=2**65),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=16))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=8)
REQUEST_KEYS = ["model", *runner.DEFAULTS]
requests = st.dictionaries(st.sampled_from(REQUEST_KEYS), json_values, max_size=8)
# the valid part of the protocol, so later checks are reached too
near_valid = st.fixed_dictionaries(
    {"model": st.sampled_from(["/nonexistent/m.tflite", "m.onnx", "", "/"]),
     "mode": st.sampled_from(["benchmark", "infer", "probe", "nope"])},
    optional={k: st.one_of(json_scalars, st.just(v)) for k, v in runner.DEFAULTS.items() if k != "mode"},
)


@FUZZ
@given(request=st.one_of(requests, near_valid, json_values))
def test_runner_validate_request_raises_only_bad_request(request):
    try:
        merged = runner.validate_request(request)
    except runner.RunnerError as e:
        assert e.exit_code == 2 and e.kind == "bad_request"
        return
    assert set(merged) == set(runner.DEFAULTS) | {"model"}
    for key in ("warmup_seconds", "min_seconds", "max_seconds"):
        assert merged[key] == merged[key] and merged[key] != float("inf")


def run_runner_main(argv_tail: list[str], stdin_text: str = "") -> tuple[int, dict]:
    stdout = io.StringIO()
    code = runner.main(["runner.py", *argv_tail], io.StringIO(stdin_text), stdout)
    lines = stdout.getvalue().splitlines()
    assert len(lines) == 1, lines
    answer = json.loads(lines[0])
    assert code in (0, 1, 2, 3)
    assert answer["ok"] is (code == 0)
    if code:
        assert answer["error"]["type"] and answer["error"]["message"]
    return code, answer


@FUZZ
@given(request=st.one_of(requests, near_valid, json_values), how=st.sampled_from(["argv", "stdin"]))
def test_runner_main_answers_json_with_a_protocol_exit_code(request, how):
    text = json.dumps(request)
    if how == "argv" and text.lstrip().startswith("{"):
        run_runner_main([text])
    else:
        run_runner_main(["-"], text)


@FUZZ
@given(text=st.text(max_size=80))
def test_runner_main_on_arbitrary_text(text):
    run_runner_main(["-"], text)


@pytest.mark.parametrize("stdin_bytes", [
    b"[" * 100_000,                                    # deeper than the JSON parser's recursion limit
    b'{"model": "m.tflite", "min_seconds": Infinity}',  # would benchmark forever
    b'{"model": "m.tflite", "max_seconds": NaN}',
    b"\xff\xfe not utf-8",
    b'{"model": "a\\u0000b.tflite"}',
])
def test_runner_process_never_prints_a_traceback(stdin_bytes):
    done = subprocess.run([sys.executable, str(Path(runner.__file__)), "-"], input=stdin_bytes,
                          capture_output=True, timeout=120)
    assert done.returncode in (1, 2, 3), done.stderr
    assert b"Traceback" not in done.stderr
    assert json.loads(done.stdout.decode().splitlines()[-1])["ok"] is False


def test_runner_request_file_that_is_not_text(tmp_path):
    path = tmp_path / "request.json"
    path.write_bytes(b"\xff\xfe\x00binary")
    assert run_runner_main([str(path)])[0] == 2
    assert run_runner_main(["bad\0name.json"])[0] == 2
    assert run_runner_main([str(tmp_path)])[0] == 2  # a folder


# ---- mutation fuzzing of `inspect` ---------------------------------------------------

def mutants(data: bytes, count: int, seed: int) -> list[bytes]:
    """Byte flips, truncations, insertions and chunk copies of a valid model file."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        kind = i % 4
        buf = bytearray(data)
        if kind == 0:
            for _ in range(rng.randint(1, 16)):
                buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        elif kind == 1:
            buf = buf[: rng.randrange(1, len(buf))]
        elif kind == 2:
            at = rng.randrange(len(buf))
            buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        else:  # overwrite a region with bytes from elsewhere (plausible offsets and lengths)
            a, b = rng.randrange(len(buf)), rng.randrange(len(buf))
            size = rng.randint(4, 256)
            buf[a:a + size] = buf[b:b + size]
        out.append(bytes(buf))
    return out


INSPECT_ALL = textwrap.dedent("""
    import json, sys, traceback
    from toolchain.artifact_info import describe
    from toolchain.errors import ModelLoadError, ToolchainError
    for path in sys.argv[1:]:
        print(json.dumps({"file": path, "outcome": "started"}), flush=True)
        try:
            info = describe(path)
            json.dumps(info)
            outcome = {"outcome": "ok"}
        except ModelLoadError as e:
            outcome = {"outcome": "error", "type": type(e).__name__, "message": str(e)}
        except Exception as e:
            outcome = {"outcome": "crash", "type": type(e).__name__, "traceback": traceback.format_exc()}
        print(json.dumps({"file": path, **outcome}), flush=True)
""")


@pytest.mark.heavy
@pytest.mark.parametrize("suffix", [".tflite", ".onnx"])
def test_inspect_survives_mutated_files(suffix, demo_run, tmp_path):
    original = (demo_run / "artifacts" / f"digits.fp32{suffix}").read_bytes()
    paths = []
    for i, data in enumerate(mutants(original, 200, seed=8 if suffix == ".tflite" else 9)):
        path = tmp_path / f"mutant{i:03d}{suffix}"
        path.write_bytes(data)
        paths.append(str(path))
    # one separate process, so that a segfault or abort shows up as a failure here, not a dead pytest
    done = subprocess.run([sys.executable, "-c", INSPECT_ALL, *paths], capture_output=True, text=True,
                          timeout=600)
    events = [json.loads(line) for line in done.stdout.splitlines()]
    last = events[-1] if events else {}
    assert done.returncode == 0, (f"inspect process died (exit {done.returncode}) on {last.get('file')}: "
                                  f"{done.stderr[-2000:]}")
    results = [e for e in events if e["outcome"] != "started"]
    assert len(results) == len(paths)
    crashes = [e for e in results if e["outcome"] == "crash"]
    assert not crashes, crashes[0]["traceback"]
    errors = [e for e in results if e["outcome"] == "error"]
    assert errors, "no mutant was rejected: the mutations are too weak to test anything"
    assert all(e["message"].startswith(e["file"]) for e in errors)


@pytest.mark.heavy
def test_inspect_cli_on_mutated_files_exits_cleanly(demo_run, tmp_path):
    for suffix in (".tflite", ".onnx"):
        original = (demo_run / "artifacts" / f"digits.fp32{suffix}").read_bytes()
        for i, data in enumerate(mutants(original, 2, seed=1)):
            path = tmp_path / f"m{i}{suffix}"
            path.write_bytes(data)
            done = subprocess.run([sys.executable, "-m", "toolchain", "inspect", str(path), "--json"],
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode in (0, 2), done.stderr
            assert "Traceback" not in done.stderr
            if done.returncode == 0:
                assert json.loads(done.stdout)["format"] == suffix[1:]


@FUZZ
@given(data=st.data())
def test_describe_tflite_in_process_on_mutations(data, demo_run, tmp_path_factory):
    """TFLite parsing is pure Python (flatbuffers), so in-process fuzzing cannot segfault."""
    from toolchain.artifact_info import describe
    from toolchain.errors import ModelLoadError

    original = (demo_run / "artifacts" / "digits.fp32.tflite").read_bytes()
    seed = data.draw(st.integers(0, 2**32 - 1))
    mutant = mutants(original, 4, seed)[data.draw(st.integers(0, 3))]
    path = tmp_path_factory.getbasetemp() / "in-process.tflite"
    path.write_bytes(mutant)
    try:
        json.dumps(describe(path))
    except ModelLoadError as e:
        assert str(path) in str(e)
