"""edge-toolchain device runner: one self-contained file, copied to a device and run there.

Needs Python >= 3.9, numpy (1.x or 2.x) and one inference backend: ai_edge_litert,
tflite_runtime or tensorflow.lite for .tflite files; onnxruntime for .onnx files.
Imports nothing else from edge-toolchain.

Usage:
    python runner.py REQUEST.json      # request from a file
    python runner.py '{"model": ...}'  # request inline
    python runner.py -                 # request on stdin

The request is a JSON object:
    model           path of the .tflite or .onnx file (required)
    mode            "benchmark" (default), "infer" or "probe"
    backend         "auto" (default) or one of BACKENDS
    threads         inference threads (default 1)
    warmup_runs, warmup_seconds, min_runs, min_seconds, max_seconds
    inputs          .npz file keyed by input name (default: random data)
    outputs         infer mode: .npz path to write outputs to
    dequantize      infer mode: quantize float inputs / dequantize outputs (default true)
    seed            seed of the random inputs (default 0)
    session_options .onnx only: onnxruntime session options, an object with any of
                    graph_optimization_level  "disable", "basic", "extended" or "all" (default "all")
                    execution_mode            "sequential" (default) or "parallel"
                    allow_spinning            true (default) or false: intra-op threads spin while idle
                    (absent or null: the defaults; a runner before protocol 2 refuses the key)

One JSON object is printed on stdout: {"ok": true, ...} or {"ok": false, "error": {...}}.
Logs go to stderr. Exit codes: 0 ok, 1 inference failed, 2 bad request, 3 backend missing.
"""

import json
import os
import platform
import subprocess
import sys
import time

RUNNER_PROTOCOL = 2  # 2: session_options
BACKENDS = ("ai_edge_litert", "tflite_runtime", "tensorflow", "onnxruntime")
TFLITE_BACKENDS = ("ai_edge_litert", "tflite_runtime", "tensorflow")
BACKEND_PACKAGES = {
    "ai_edge_litert": "ai-edge-litert",
    "tflite_runtime": "tflite-runtime",
    "tensorflow": "tensorflow",
    "onnxruntime": "onnxruntime",
}
DEFAULTS = {
    "mode": "benchmark",
    "backend": "auto",
    "threads": 1,
    "warmup_runs": 5,
    "warmup_seconds": 0.2,
    "min_runs": 50,
    "min_seconds": 1.0,
    "max_seconds": 30.0,
    "inputs": None,
    "outputs": None,
    "dequantize": True,
    "seed": 0,
    "session_options": None,
}
SESSION_OPTIONS = {
    "graph_optimization_level": ("disable", "basic", "extended", "all"),
    "execution_mode": ("sequential", "parallel"),
    "allow_spinning": (True, False),
}
SESSION_DEFAULTS = {"graph_optimization_level": "all", "execution_mode": "sequential", "allow_spinning": True}


class RunnerError(Exception):
    def __init__(self, kind, message, exit_code=1):
        super().__init__(message)
        self.kind = kind
        self.exit_code = exit_code


def log(message):
    sys.stderr.write("[runner] %s\n" % message)
    sys.stderr.flush()


# ---- request -----------------------------------------------------------------

def parse_request(argv, stdin):
    if len(argv) != 2:
        raise RunnerError("bad_request", "usage: runner.py REQUEST.json | JSON | -", 2)
    arg = argv[1]
    if arg == "-":
        try:
            text = stdin.read()
        except ValueError as e:  # not UTF-8
            raise RunnerError("bad_request", "cannot read the request on stdin: %s" % e, 2)
    elif arg.lstrip().startswith("{"):
        text = arg
    else:
        try:
            with open(arg) as f:
                text = f.read()
        except (OSError, ValueError) as e:  # ValueError: a NUL in the name, or not UTF-8
            raise RunnerError("bad_request", "cannot read request file %r: %s" % (arg, e), 2)
    try:
        request = json.loads(text)
    except (ValueError, RecursionError) as e:  # RecursionError: nested deeper than the parser's limit
        raise RunnerError("bad_request", "request is not valid JSON: %s" % e, 2)
    return validate_request(request)


def validate_request(request):
    if not isinstance(request, dict):
        raise RunnerError("bad_request", "request must be a JSON object", 2)
    unknown = sorted(set(request) - set(DEFAULTS) - {"model"})
    if unknown:
        raise RunnerError("bad_request", "unknown request keys: %s" % ", ".join(unknown), 2)
    if not isinstance(request.get("model"), str) or not request["model"]:
        raise RunnerError("bad_request", "request needs 'model': the path of a .tflite or .onnx file", 2)
    merged = dict(DEFAULTS)
    merged.update(request)
    _check_choices(merged)
    _check_counts(merged)
    _check_seconds(merged)
    _check_paths(merged)
    _check_session_options(merged)
    return merged


def _check_choices(merged):
    if merged["mode"] not in ("benchmark", "infer", "probe"):
        raise RunnerError("bad_request", "mode must be benchmark, infer or probe", 2)
    if merged["backend"] != "auto" and merged["backend"] not in BACKENDS:
        raise RunnerError("bad_request", "backend must be auto or one of %s" % ", ".join(BACKENDS), 2)
    if not isinstance(merged["dequantize"], bool):
        raise RunnerError("bad_request", "dequantize must be true or false", 2)


def _check_counts(merged):
    for key in ("threads", "warmup_runs", "min_runs", "seed"):
        value = merged[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise RunnerError("bad_request", "%s must be a non-negative integer" % key, 2)
    if merged["threads"] < 1 or merged["min_runs"] < 1:
        raise RunnerError("bad_request", "threads and min_runs must be >= 1", 2)


def _check_seconds(merged):
    for key in ("warmup_seconds", "min_seconds", "max_seconds"):
        value = merged[key]
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value != value
                or value == float("inf")):
            raise RunnerError("bad_request", "%s must be a finite non-negative number" % key, 2)
    if merged["max_seconds"] <= 0:
        raise RunnerError("bad_request", "max_seconds must be > 0", 2)


def _check_paths(merged):
    for key in ("inputs", "outputs"):
        if merged[key] is not None and not isinstance(merged[key], str):
            raise RunnerError("bad_request", "%s must be a path string or null" % key, 2)
    if merged["mode"] == "infer" and not merged["outputs"]:
        raise RunnerError("bad_request", "infer mode needs 'outputs': an .npz path to write", 2)


def _check_session_options(merged):
    options = merged["session_options"]
    if options is None:
        return
    if not isinstance(options, dict):
        raise RunnerError("bad_request", "session_options must be an object or null", 2)
    unknown = sorted(str(k) for k in options if k not in SESSION_OPTIONS)
    if unknown:
        raise RunnerError("bad_request", "unknown session_options: %s (known: %s)"
                          % (", ".join(unknown), ", ".join(SESSION_OPTIONS)), 2)
    for key, value in options.items():
        if not any(value is choice or (isinstance(value, str) and value == choice) for choice in SESSION_OPTIONS[key]):
            raise RunnerError("bad_request", "session_options %s must be one of %s"
                              % (key, ", ".join(json.dumps(c) for c in SESSION_OPTIONS[key])), 2)
    if options and not str(merged["model"]).lower().endswith(".onnx"):
        raise RunnerError("bad_request", "session_options apply to onnxruntime (.onnx models) only", 2)


# ---- memory and environment ----------------------------------------------------

def memory_kib():
    """Current and peak resident set size of this process, in KiB."""
    current = peak = None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    current = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1])
    except OSError:
        pass
    if peak is None:
        import resource

        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = maxrss // 1024 if sys.platform == "darwin" else maxrss
    return {"rss_kib": current, "peak_rss_kib": peak}


def read_text(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def cpu_model():
    text = read_text("/proc/cpuinfo") or ""
    fields = {}
    for line in text.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            fields.setdefault(key.strip().lower(), value.strip())
    for key in ("model name", "model", "hardware", "cpu part"):
        if fields.get(key):
            return fields[key]
    return platform.processor() or None


def temperatures_c():
    temps = {}
    base = "/sys/class/thermal"
    try:
        zones = sorted(z for z in os.listdir(base) if z.startswith("thermal_zone"))
    except OSError:
        return temps
    for zone in zones:
        raw = read_text(os.path.join(base, zone, "temp"))
        kind = read_text(os.path.join(base, zone, "type")) or zone
        try:
            temps[kind] = int(raw) / 1000.0
        except (TypeError, ValueError):
            continue
    return temps


VCGENCMD_BITS = (
    (0x1, "under_voltage_now"), (0x2, "freq_capped_now"), (0x4, "throttled_now"),
    (0x8, "soft_temp_limit_now"), (0x10000, "under_voltage_since_boot"),
    (0x20000, "freq_capped_since_boot"), (0x40000, "throttled_since_boot"),
    (0x80000, "soft_temp_limit_since_boot"),
)


def throttled_flags():
    """Raspberry Pi firmware throttling flags (vcgencmd get_throttled), or None where not readable."""
    try:
        out = subprocess.run(
            ["vcgencmd", "get_throttled"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if "=" not in out:
        return None
    try:
        value = int(out.split("=", 1)[1], 16)
    except ValueError:
        return None
    flags = {"raw": hex(value)}
    for bit, name in VCGENCMD_BITS:
        flags[name] = bool(value & bit)
    return flags


def throttle_counts():
    """Linux thermal throttle event counters per CPU (x86), summed; None where not readable."""
    total = None
    base = "/sys/devices/system/cpu"
    try:
        cpus = [c for c in os.listdir(base) if c.startswith("cpu") and c[3:].isdigit()]
    except OSError:
        return None
    for cpu in cpus:
        for name in ("core_throttle_count", "package_throttle_count"):
            raw = read_text(os.path.join(base, cpu, "thermal_throttle", name))
            if raw is not None and raw.isdigit():
                total = (total or 0) + int(raw)
    return total


def throttle_snapshot():
    return {"vcgencmd": throttled_flags(), "thermal_throttle_events": throttle_counts()}


def throttling_reasons(before, after):
    """Why a run's figures cannot be trusted as the device's sustained speed (empty: none seen)."""
    reasons = []
    for label, snap in (("before", before["vcgencmd"]), ("after", after["vcgencmd"])):
        if snap:
            for name in ("under_voltage_now", "freq_capped_now", "throttled_now", "soft_temp_limit_now"):
                if snap[name]:
                    reasons.append("%s %s runs (vcgencmd %s)" % (name[:-4], label, snap["raw"]))
    if before["vcgencmd"] and after["vcgencmd"]:
        for _, name in VCGENCMD_BITS[4:]:
            if after["vcgencmd"][name] and not before["vcgencmd"][name]:
                reasons.append("%s during the runs" % name[: -len("_since_boot")])
    a, b = before["thermal_throttle_events"], after["thermal_throttle_events"]
    if a is not None and b is not None and b > a:
        reasons.append("%d thermal throttle events during the runs" % (b - a))
    return reasons


def cpu_frequencies_mhz():
    base = "/sys/devices/system/cpu/cpu0/cpufreq"
    result = {}
    for key, name in (("current", "scaling_cur_freq"), ("max", "cpuinfo_max_freq"), ("min", "cpuinfo_min_freq")):
        raw = read_text(os.path.join(base, name))
        if raw and raw.isdigit():
            result[key] = int(raw) / 1000.0
    return result


def os_name():
    for line in (read_text("/etc/os-release") or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return platform.platform()


def memory_total_mb():
    for line in (read_text("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return None


def environment(backend_name, backend_version, threads):
    import numpy

    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = None
    board = read_text("/proc/device-tree/model")
    return {
        "machine": platform.machine(),
        "system": platform.system(),
        "release": platform.release(),
        "os": os_name(),
        "hostname": platform.node(),
        "board": board.rstrip("\x00") if board else None,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_mhz": cpu_frequencies_mhz(),
        "governor": read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "load_average": load,
        "memory_total_mb": memory_total_mb(),
        "temperatures_c": temperatures_c(),
        "throttled": throttled_flags(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "numpy": numpy.__version__,
        "backend": backend_name,
        "backend_version": backend_version,
        "threads": threads,
        "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTEROP_THREADS",
                                                   "TF_NUM_INTRAOP_THREADS") if k in os.environ},
        "runner_protocol": RUNNER_PROTOCOL,
    }


# ---- backends ------------------------------------------------------------------

def import_backend(name):
    if name == "ai_edge_litert":
        import ai_edge_litert
        from ai_edge_litert import interpreter as module

        return module.Interpreter, getattr(ai_edge_litert, "__version__", None) or _dist_version("ai-edge-litert")
    if name == "tflite_runtime":
        import tflite_runtime
        from tflite_runtime import interpreter as module

        return module.Interpreter, getattr(tflite_runtime, "__version__", None) or _dist_version("tflite-runtime")
    if name == "tensorflow":
        import tensorflow as tf

        return tf.lite.Interpreter, tf.__version__
    if name == "onnxruntime":
        import onnxruntime

        return onnxruntime, onnxruntime.__version__
    raise RunnerError("bad_request", "unknown backend %s" % name, 2)


def _dist_version(dist):
    try:
        from importlib import metadata

        return metadata.version(dist)
    except Exception:
        return None


def pick_backend(model_path, requested):
    is_onnx = model_path.lower().endswith(".onnx")
    candidates = ("onnxruntime",) if is_onnx else TFLITE_BACKENDS
    if requested != "auto":
        if requested not in candidates:
            raise RunnerError(
                "bad_request",
                "backend %s cannot run %s files" % (requested, "ONNX" if is_onnx else "TFLite"),
                2,
            )
        candidates = (requested,)
    errors = []
    for name in candidates:
        try:
            module, version = import_backend(name)
            return name, module, version
        except ImportError as e:
            errors.append("%s: %s" % (name, e))
    packages = " or ".join("'%s'" % BACKEND_PACKAGES[c] for c in candidates)
    raise RunnerError(
        "backend_missing",
        "no inference backend for %s on this device's Python (%s); install one into it: "
        "%s -m pip install %s (tried: %s)"
        % (model_path, sys.executable, sys.executable, packages, "; ".join(errors)),
        3,
    )


class TFLiteModel:
    def __init__(self, interpreter_class, path, threads):
        self.interpreter = interpreter_class(model_path=path, num_threads=threads)
        self.interpreter.allocate_tensors()
        inputs = outputs = None
        try:
            signatures = self.interpreter.get_signature_list()
        except Exception:
            signatures = {}
        if signatures:
            key = sorted(signatures)[0]
            runner = self.interpreter.get_signature_runner(key)
            try:
                inputs = runner.get_input_details()
                outputs = runner.get_output_details()
            except AttributeError:
                inputs = outputs = None
            del runner  # a live SignatureRunner makes ai-edge-litert refuse interpreter.invoke()
        if inputs is None:
            inputs = {d["name"]: d for d in self.interpreter.get_input_details()}
            outputs = {d["name"]: d for d in self.interpreter.get_output_details()}
        self.inputs = [describe_tflite_tensor(n, d) for n, d in inputs.items()]
        self.outputs = [describe_tflite_tensor(n, d) for n, d in outputs.items()]

    def set_inputs(self, arrays):
        for info in self.inputs:
            self.interpreter.set_tensor(info["index"], arrays[info["name"]])

    def invoke(self):
        self.interpreter.invoke()

    def get_outputs(self):
        return {o["name"]: self.interpreter.get_tensor(o["index"]).copy() for o in self.outputs}


def describe_tflite_tensor(name, details):
    import numpy

    scale, zero_point = details.get("quantization", (0.0, 0)) or (0.0, 0)
    return {
        "name": name,
        "index": details["index"],
        "shape": [int(d) for d in details["shape"]],
        "dtype": numpy.dtype(details["dtype"]).name,
        "quantization": {"scale": float(scale), "zero_point": int(zero_point)} if scale else None,
    }


class OnnxModel:
    TYPES = {
        "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
        "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16",
        "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(bool)": "bool",
    }

    LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}

    def __init__(self, ort, path, threads, session_options=None):
        self.session_options = dict(SESSION_DEFAULTS)
        self.session_options.update(session_options or {})
        chosen = self.session_options
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if chosen["execution_mode"] == "parallel"
                                  else ort.ExecutionMode.ORT_SEQUENTIAL)
        level = self.LEVELS[chosen["graph_optimization_level"]]
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if chosen["allow_spinning"] else "0")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = [self._describe(i) for i in self.session.get_inputs()]
        self.outputs = [self._describe(o) for o in self.session.get_outputs()]
        self.feed = {}
        self.result = None

    def _describe(self, node):
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in node.shape]
        return {"name": node.name, "shape": shape, "dtype": self.TYPES.get(node.type, node.type),
                "quantization": None}

    def set_inputs(self, arrays):
        self.feed = {i["name"]: arrays[i["name"]] for i in self.inputs}

    def invoke(self):
        self.result = self.session.run(None, self.feed)

    def get_outputs(self):
        return {o["name"]: r for o, r in zip(self.outputs, self.result)}


def load_model(backend_name, module, path, threads, session_options=None):
    try:
        if backend_name == "onnxruntime":
            return OnnxModel(module, path, threads, session_options)
        return TFLiteModel(module, path, threads)
    except Exception as e:
        raise RunnerError(
            "load_failed",
            "%s cannot load %s: %s: %s (is the file complete, and does this runtime version support its ops?)"
            % (backend_name, path, type(e).__name__, str(e).strip()[:1500]),
            1,
        )


# ---- inputs --------------------------------------------------------------------

def random_inputs(model, seed):
    import numpy

    rng = numpy.random.RandomState(seed)
    arrays = {}
    for info in model.inputs:
        dtype = numpy.dtype(info["dtype"])
        shape = info["shape"]
        if dtype.kind == "f":
            arrays[info["name"]] = rng.uniform(0.0, 1.0, size=shape).astype(dtype)
        elif dtype.kind in "iu":
            limits = numpy.iinfo(dtype)
            low, high = max(int(limits.min), -128), min(int(limits.max), 127)
            arrays[info["name"]] = rng.randint(low, high + 1, size=shape).astype(dtype)
        elif dtype.kind == "b":
            arrays[info["name"]] = rng.randint(0, 2, size=shape).astype(bool)
        else:
            raise RunnerError("unsupported_input", "cannot make random data of dtype %s" % dtype, 1)
    return arrays


def load_inputs(model, path, dequantize):
    import numpy

    try:
        data = numpy.load(path)
    except Exception as e:
        raise RunnerError("bad_inputs", "cannot read inputs %s: %s" % (path, e), 2)
    samples = {}
    for info in model.inputs:
        if info["name"] not in data:
            raise RunnerError(
                "bad_inputs",
                "inputs file %s has no array '%s' (it has: %s)"
                % (path, info["name"], ", ".join(sorted(data.files))),
                2,
            )
        array = numpy.asarray(data[info["name"]])
        samples[info["name"]] = array
    counts = {len(a) for a in samples.values()}
    if len(counts) != 1:
        raise RunnerError("bad_inputs", "input arrays have different sample counts", 2)
    return samples, counts.pop()


def prepare_sample(model, samples, index, dequantize):
    """One batch-sized slice of every input, quantized when the model takes integers."""
    import numpy

    arrays = {}
    for info in model.inputs:
        batch = info["shape"][0] if info["shape"] else 1
        array = samples[info["name"]][index:index + batch]
        target = numpy.dtype(info["dtype"])
        quant = info["quantization"]
        if dequantize and quant and target.kind in "iu" and array.dtype.kind == "f":
            limits = numpy.iinfo(target)
            array = numpy.clip(
                numpy.round(array / quant["scale"] + quant["zero_point"]), limits.min, limits.max
            )
        if list(array.shape) != list(info["shape"]):
            raise RunnerError(
                "bad_inputs",
                "input '%s' has shape %s per step, the model wants %s"
                % (info["name"], list(array.shape), info["shape"]),
                2,
            )
        arrays[info["name"]] = array.astype(target)
    return arrays


# ---- modes ---------------------------------------------------------------------

def percentile(sorted_values, q):
    if not sorted_values:
        return None
    position = (len(sorted_values) - 1) * q
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


MAX_LATENCY_SAMPLES = 1000


def bounded_samples(times_ms, limit=MAX_LATENCY_SAMPLES):
    """At most `limit` timed runs, evenly strided in run order: enough for a histogram."""
    if len(times_ms) <= limit:
        return [round(t, 6) for t in times_ms]
    step = len(times_ms) / float(limit)
    return [round(times_ms[int(i * step)], 6) for i in range(limit)]


def latency_stats(times_ms):
    values = sorted(times_ms)
    count = len(values)
    mean = sum(values) / count
    variance = sum((v - mean) ** 2 for v in values) / (count - 1) if count > 1 else 0.0
    return {
        "count": count,
        "mean": mean,
        "std": variance ** 0.5,
        "min": values[0],
        "p50": percentile(values, 0.50),
        "p90": percentile(values, 0.90),
        "p95": percentile(values, 0.95),
        "p99": percentile(values, 0.99),
        "max": values[-1],
    }


def io_description(model):
    def strip(info):
        return {k: v for k, v in info.items() if k != "index"}

    return {"inputs": [strip(i) for i in model.inputs], "outputs": [strip(o) for o in model.outputs]}


MAX_BENCH_SAMPLES = 64  # given inputs: this many steps are prepared up front and cycled


def benchmark_inputs(model, request):
    """Input steps to cycle through: from the request's .npz file, or one random step."""
    if not request["inputs"]:
        return [random_inputs(model, request["seed"])]
    samples, count = load_inputs(model, request["inputs"], True)
    batch = model.inputs[0]["shape"][0] if model.inputs and model.inputs[0]["shape"] else 1
    batch = max(batch, 1)
    if count < batch:
        raise RunnerError("bad_inputs", "inputs file %s has %d samples, the model's batch is %d"
                          % (request["inputs"], count, batch), 2)
    starts = list(range(0, count - batch + 1, batch))[:MAX_BENCH_SAMPLES]
    return [prepare_sample(model, samples, index, True) for index in starts]


def run_benchmark(request, backend_name, module, version):
    memory_before = memory_kib()
    temps_before = temperatures_c()
    throttle_before = throttle_snapshot()
    started = time.perf_counter()
    model = load_model(backend_name, module, request["model"], request["threads"], request["session_options"])
    load_ms = (time.perf_counter() - started) * 1000.0
    steps = benchmark_inputs(model, request)
    model.set_inputs(steps[0])
    memory_init = memory_kib()

    started = time.perf_counter()
    model.invoke()
    first_ms = (time.perf_counter() - started) * 1000.0

    step = 0
    warmup_count = 0
    warmup_start = time.perf_counter()
    while warmup_count < request["warmup_runs"] or (
        time.perf_counter() - warmup_start < request["warmup_seconds"]
    ):
        step = (step + 1) % len(steps)
        model.set_inputs(steps[step])
        model.invoke()
        warmup_count += 1
        if time.perf_counter() - warmup_start > request["max_seconds"]:
            break

    # Timed: invoke() only; setting inputs happens outside the clock (as benchmark_model does).
    times_ms = []
    timed_start = time.perf_counter()
    capped = False
    while True:
        elapsed = time.perf_counter() - timed_start
        if len(times_ms) >= request["min_runs"] and elapsed >= request["min_seconds"]:
            break
        if elapsed >= request["max_seconds"] and times_ms:
            capped = True
            break
        step = (step + 1) % len(steps)
        model.set_inputs(steps[step])
        t0 = time.perf_counter()
        model.invoke()
        times_ms.append((time.perf_counter() - t0) * 1000.0)
    timed_seconds = time.perf_counter() - timed_start
    memory_after = memory_kib()
    throttle_after = throttle_snapshot()
    reasons = throttling_reasons(throttle_before, throttle_after)
    if reasons:
        log("throttled: " + "; ".join(reasons))
    env = environment(backend_name, version, request["threads"])
    env["temperatures_before_c"] = temps_before
    env["throttled_before"] = throttle_before["vcgencmd"]

    def delta(a, b):
        return None if a is None or b is None else b - a

    return {
        "ok": True,
        "mode": "benchmark",
        "protocol": RUNNER_PROTOCOL,
        "model": request["model"],
        "threads": request["threads"],
        "load_ms": load_ms,
        "first_inference_ms": first_ms,
        "warmup_runs": warmup_count,
        "timed_seconds": timed_seconds,
        "capped_by_max_seconds": capped,
        "latency_ms": latency_stats(times_ms),
        "latency_samples_ms": bounded_samples(times_ms),
        "memory": {
            "peak_rss_before_load_kib": memory_before["peak_rss_kib"],
            "peak_rss_after_init_kib": memory_init["peak_rss_kib"],
            "peak_rss_after_runs_kib": memory_after["peak_rss_kib"],
            "init_delta_kib": delta(memory_before["peak_rss_kib"], memory_init["peak_rss_kib"]),
            "runs_delta_kib": delta(memory_init["peak_rss_kib"], memory_after["peak_rss_kib"]),
            "total_delta_kib": delta(memory_before["peak_rss_kib"], memory_after["peak_rss_kib"]),
        },
        "throttled": bool(reasons),
        "throttling": reasons,
        "inputs": "file" if request["inputs"] else "random",
        "input_steps": len(steps),
        "io": io_description(model),
        "session_options": getattr(model, "session_options", None),
        "environment": env,
    }


def run_infer(request, backend_name, module, version):
    import numpy

    model = load_model(backend_name, module, request["model"], request["threads"], request["session_options"])
    if request["inputs"]:
        samples, count = load_inputs(model, request["inputs"], request["dequantize"])
    else:
        samples = {k: v for k, v in random_inputs(model, request["seed"]).items()}
        count = 1
    batch = model.inputs[0]["shape"][0] if model.inputs and model.inputs[0]["shape"] else 1
    collected = {o["name"]: [] for o in model.outputs}
    for index in range(0, count, max(batch, 1)):
        model.set_inputs(prepare_sample(model, samples, index, request["dequantize"]))
        model.invoke()
        for name, value in model.get_outputs().items():
            info = next(o for o in model.outputs if o["name"] == name)
            quant = info["quantization"]
            if request["dequantize"] and quant and value.dtype.kind in "iu":
                value = (value.astype(numpy.float32) - quant["zero_point"]) * quant["scale"]
            collected[name].append(value)
    outputs = {name: numpy.concatenate(parts) for name, parts in collected.items()}
    tmp = request["outputs"] + ".tmp.npz"
    numpy.savez(tmp, **outputs)
    os.replace(tmp, request["outputs"])
    return {
        "ok": True,
        "mode": "infer",
        "protocol": RUNNER_PROTOCOL,
        "model": request["model"],
        "samples": count,
        "outputs": request["outputs"],
        "io": io_description(model),
        "environment": environment(backend_name, version, request["threads"]),
    }


def run_probe(request, backend_name, module, version):
    return {
        "ok": True,
        "mode": "probe",
        "protocol": RUNNER_PROTOCOL,
        "environment": environment(backend_name, version, request["threads"]),
    }


def main(argv=None, stdin=None, stdout=None):
    argv = sys.argv if argv is None else argv
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    try:
        request = parse_request(argv, stdin)
        if request["mode"] != "probe" and not os.path.isfile(request["model"]):
            raise RunnerError("bad_request", "model file not found on the device: %s" % request["model"], 2)
        backend_name, module, version = pick_backend(request["model"], request["backend"])
        log("backend %s %s, mode %s" % (backend_name, version, request["mode"]))
        handler = {"benchmark": run_benchmark, "infer": run_infer, "probe": run_probe}[request["mode"]]
        try:
            result = handler(request, backend_name, module, version)
        except RunnerError:
            raise
        except Exception as e:
            raise RunnerError(
                "inference_failed", "%s failed on %s: %s: %s" % (
                    request["mode"], backend_name, type(e).__name__, str(e).strip()[:2000]), 1)
        stdout.write(json.dumps(result) + "\n")
        stdout.flush()
        return 0
    except RunnerError as e:
        stdout.write(json.dumps({"ok": False, "protocol": RUNNER_PROTOCOL,
                                 "error": {"type": e.kind, "message": str(e)}}) + "\n")
        stdout.flush()
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
