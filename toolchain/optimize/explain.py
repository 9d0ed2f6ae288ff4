"""Why an artifact is slow (or slower than another): look at what each file runs.

Used by `edge-toolchain optimize` (one file: `explain_artifact`) and by the benchmark
suite (two files: `explain`). The profile runs in a fresh process on this machine.

- operator counts of both files, and the operators only one of them has
- TFLite: whether the XNNPACK delegate took the graph (DELEGATE nodes after allocation),
  which ops it left between its partitions, and the latency with the default delegates
  switched off (how much XNNPACK buys)
- ONNX: onnxruntime's own profile, time per operator type, for both files
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

PROFILE_SCRIPT = r"""
import collections, json, sys, time
import numpy as np
path, runs, delegates = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
if path.endswith(".onnx"):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = sys.argv[4]
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    first = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in first.shape]
    feed = {first.name: np.random.RandomState(0).uniform(0, 1, shape).astype(np.float32)}
    for _ in range(runs):
        session.run(None, feed)
    events = json.load(open(session.end_profiling()))
    per_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"] / 1000 / runs
    nodes = collections.Counter(e["args"]["op_name"] for e in events
                                if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"))
    qdq = collections.Counter()
    for e in events:
        if (e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
                and e["args"]["op_name"] in ("QuantizeLinear", "DequantizeLinear")):
            qdq[e["name"][:-len("_kernel_time")]] += e["dur"] / 1000 / runs
    print(json.dumps({"ms_per_op_type": dict(per_op.most_common()),
                      "executed_nodes": {k: v // runs for k, v in nodes.items()}, "qdq_ms_per_node": dict(qdq)}))
else:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    resolver = OpResolverType.AUTO if delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = Interpreter(model_path=path, num_threads=1, experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    details = interpreter._get_ops_details()
    ops = collections.Counter(op["op_name"] for op in details)
    # ops the delegate left to the built-in kernels: they feed a delegate partition but
    # are not produced by one (the nodes a delegate took stay listed, their outputs internal)
    delegate_in, delegate_out = set(), set()
    for op in details:
        if op["op_name"] == "DELEGATE":
            delegate_in |= set(op["inputs"])
            delegate_out |= set(op["outputs"])
    outside_ops = [op for op in details if op["op_name"] != "DELEGATE"
                   and set(op["outputs"]) & delegate_in and not set(op["outputs"]) & delegate_out]
    outside = collections.Counter(op["op_name"] for op in outside_ops)
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    outside_tensors = sorted({names.get(i, "") for op in outside_ops for i in op["outputs"]} - {""})
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    for _ in range(3):
        interpreter.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        interpreter.invoke()
        times.append((time.perf_counter() - start) * 1000)
    print(json.dumps({"delegate_nodes": ops.pop("DELEGATE", 0), "outside_delegate": dict(outside),
                      "outside_tensors": outside_tensors, "p50_ms": sorted(times)[len(times) // 2]}))
"""


def op_counts(path: Path) -> dict[str, int]:
    if path.suffix == ".onnx":
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        return dict(collections.Counter(node.op_type for node in model.graph.node))
    from ai_edge_litert import schema_py_generated as fb

    from ..artifact_info import _enum_names

    model = fb.Model.GetRootAs(path.read_bytes(), 0)
    names = _enum_names(fb.BuiltinOperator)
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode()))
        codes.append(names.get(builtin, f"BUILTIN_{builtin}"))
    graph = model.Subgraphs(0)
    return dict(collections.Counter(codes[graph.Operators(i).OpcodeIndex()] for i in range(graph.OperatorsLength())))


def _profile(path: Path, runs: int, delegates: bool = True) -> dict[str, Any]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-c", PROFILE_SCRIPT, str(path), str(runs),
                               "1" if delegates else "0", str(Path(tmp) / "ort")],
                              capture_output=True, text=True, cwd=tmp)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:] or ["failed"]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def explain(ours: Path, theirs: Path, p50_ms: float) -> dict[str, Any]:
    runs = int(min(200, max(5, 1000 / max(p50_ms, 0.01))))  # about a second
    mine, other = op_counts(ours), op_counts(theirs)
    found: dict[str, Any] = {
        "ours": ours.name, "theirs": theirs.name,
        "op_counts": {"ours": mine, "theirs": other},
        "only_ours": {k: v for k, v in mine.items() if other.get(k, 0) < v},
        "only_theirs": {k: v for k, v in other.items() if mine.get(k, 0) < v},
    }
    if ours.suffix == ".tflite":
        found["xnnpack"] = {name: {"with_default_delegates": _profile(path, runs, True),
                                   "without_delegates": _profile(path, runs, False)}
                            for name, path in (("ours", ours), ("theirs", theirs))}
    else:
        found["onnxruntime_profile"] = {"ours": _profile(ours, runs), "theirs": _profile(theirs, runs)}
    return found


def explain_artifact(path: Path, p50_ms: float, max_runs: int = 50) -> dict[str, Any]:
    """What the runtime did not accelerate in one file: XNNPACK partitions and the ops between
    them (TFLite), time per operator type (onnxruntime's profile); `reason` says it in one line."""
    runs = int(min(max_runs, max(3, 300 / max(p50_ms, 0.01))))
    found: dict[str, Any] = {"op_counts": op_counts(path), "explained_on": "this machine", "runs": runs}
    profile = _profile(path, runs)
    if "error" in profile:
        found["error"] = " ".join(profile["error"])[:300]
        found["reason"] = f"no profile: {found['error']}"
        return found
    if path.suffix == ".tflite":
        found["xnnpack"] = {"partitions": profile["delegate_nodes"], "outside_delegate": profile["outside_delegate"]}
        found["outside_delegate_tensors"] = profile["outside_tensors"]  # whose layers a follow-up keeps in float
    else:
        found["onnxruntime"] = {"ms_per_op_type": dict(list(profile["ms_per_op_type"].items())[:8]),
                                "qdq_ms_by_op_type": qdq_by_neighbour(path, profile.get("qdq_ms_per_node", {}))}
    found["reason"] = reason(found)
    return found


def qdq_by_neighbour(path: Path, ms_per_node: dict[str, float]) -> dict[str, float]:
    """Quantize/DequantizeLinear time charged to the op types they surround: a DequantizeLinear to
    the ops that read its output, a QuantizeLinear to the op that wrote its input (what it would
    cost to keep those ops in float). Nodes onnxruntime renamed while optimizing are not charged."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    readers: dict[str, list[str]] = collections.defaultdict(list)
    writer: dict[str, str] = {}
    for node in graph.node:
        for name in node.input:
            readers[name].append(node.op_type)
        for name in node.output:
            writer[name] = node.op_type
    qdq = ("QuantizeLinear", "DequantizeLinear")
    charged: collections.Counter = collections.Counter()
    for node in graph.node:
        ms = ms_per_node.get(node.name)
        if ms is None or node.op_type not in qdq:
            continue
        if node.op_type == "DequantizeLinear":
            neighbours = [op for op in readers[node.output[0]] if op not in qdq]
        else:
            neighbours = [op for op in (writer.get(node.input[0]),) if op and op not in qdq]
        for op in neighbours:
            charged[op] += ms / len(neighbours)
    return {op: round(ms, 6) for op, ms in charged.most_common(8)}


def reason(found: dict[str, Any]) -> str:
    """One line: where the time goes / what the delegate left out."""
    if "xnnpack" in found:
        xnn = found["xnnpack"]
        between = ", ".join(f"{k}×{v}" for k, v in sorted(xnn["outside_delegate"].items()))
        if not xnn["partitions"]:
            return "XNNPACK took no part of the graph: every op runs on the built-in kernels"
        if between:
            return (f"{xnn['partitions']} XNNPACK partition(s) split by ops XNNPACK does not take here "
                    f"({between}): they run on the slower built-in kernels")
        return f"{xnn['partitions']} XNNPACK partition(s), nothing left outside the delegate"
    per_op = found.get("onnxruntime", {}).get("ms_per_op_type", {})
    total = sum(per_op.values()) or 1.0
    top = ", ".join(f"{k} {v / total:.0%}" for k, v in list(per_op.items())[:3])
    qdq = sum(v for k, v in per_op.items() if k in ("QuantizeLinear", "DequantizeLinear"))
    text = f"onnxruntime time by op type: {top}"
    return text + (f"; unfused Quantize/DequantizeLinear take {qdq / total:.0%}" if qdq / total > 0.1 else "")


def _xnnpack_parts(found: dict[str, Any]) -> list[str]:
    parts = []
    for side in ("ours", "theirs") if "xnnpack" in found else ():
        on, off = found["xnnpack"][side]["with_default_delegates"], found["xnnpack"][side]["without_delegates"]
        if "p50_ms" in on and "p50_ms" in off:
            between = ", ".join(f"{k}×{v}" for k, v in sorted(on.get("outside_delegate", {}).items()))
            parts.append(f"{side}: {on['delegate_nodes']} XNNPACK partition(s)"
                         + (f" split by ops XNNPACK does not take ({between})" if between else "")
                         + f", p50 {on['p50_ms']:.3f} ms (without delegates {off['p50_ms']:.3f} ms)")
    return parts


def _onnxruntime_parts(found: dict[str, Any]) -> list[str]:
    parts = []
    for side in ("ours", "theirs") if "onnxruntime_profile" in found else ():
        profile = found["onnxruntime_profile"][side]
        if "error" in profile:
            parts.append(f"{side}: no profile ({' '.join(profile['error'])[:200]})")
            continue
        top = list(profile["ms_per_op_type"].items())[:3]
        parts.append(f"{side} top ops " + ", ".join(f"{k} {v:.3f} ms" for k, v in top))
    return parts


def summary(found: dict[str, Any]) -> str:
    """One line for the results table."""
    parts = []
    diff_ours = ", ".join(f"{k}×{v}" for k, v in sorted(found["only_ours"].items()))
    diff_theirs = ", ".join(f"{k}×{v}" for k, v in sorted(found["only_theirs"].items()))
    if diff_ours or diff_theirs:
        parts.append(f"op counts where they differ: ours {diff_ours or '-'}; theirs {diff_theirs or '-'}")
    else:
        parts.append("same operators, same counts")
    parts += _xnnpack_parts(found) + _onnxruntime_parts(found)
    return "; ".join(parts)
