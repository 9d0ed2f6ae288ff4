"""Names that do not depend on converter luck, so an ONNX file's bytes are the same every run.

TensorFlow's graph optimizer and tf2onnx merge identical constants, and which of the copies
survives (and which `const_fold_opt__N` number a folded constant gets) changes from one run
to the next (onnx/tensorflow-onnx#1789, #2006; measured on MobileNetV3Small: 3 runs, 3
different files). Naming every initializer `const_<sha256 of its value>` and listing them in
that order makes the choice invisible. tf2onnx also numbers the nodes it adds (`<name>__N`)
in an order that varies (EfficientNetB0: the same graph with other numbers); those become
`<name>__n<position of the node>`. The graph's own inputs and outputs keep their names.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

PREFIX = "const_"
GENERATED = re.compile(r"^(.*)__\d+(:\d+)?$")  # tf2onnx's counter suffix, with a tensor's output index


def canonical_names(model_proto: Any) -> None:
    name_constants_by_content(model_proto)
    number_generated_names(model_proto)


def number_generated_names(model_proto: Any) -> None:
    """`<name>__N` nodes and their outputs renamed by the node's position in the graph (in place)."""
    graph = model_proto.graph
    keep = {i.name for i in graph.input} | {o.name for o in graph.output}
    renames: dict[str, str] = {}
    for position, node in enumerate(graph.node):
        for index, output in enumerate(node.output):
            match = GENERATED.match(output)
            if match and output not in keep:
                renames[output] = f"{match.group(1)}__n{position}{match.group(2) or ''}"
                node.output[index] = renames[output]
        match = GENERATED.match(node.name)
        if match:
            node.name = f"{match.group(1)}__n{position}"
    if renames:
        _rename_uses(graph, renames)
        infos = [info for info in graph.value_info if info.name not in renames]
        del graph.value_info[:]
        graph.value_info.extend(infos)


def name_constants_by_content(model_proto: Any) -> None:
    """Rename the main graph's initializers by content (in place); merge copies of one value."""
    graph = model_proto.graph
    keep = {i.name for i in graph.input} | {o.name for o in graph.output}
    renames: dict[str, str] = {}
    kept: dict[str, Any] = {}
    for initializer in graph.initializer:
        if initializer.name in keep:
            kept[initializer.name] = initializer
            continue
        name = PREFIX + _content_digest(initializer)
        renames[initializer.name] = name
        if name not in kept:
            initializer.name = name
            kept[name] = initializer
    if not renames:
        return
    del graph.initializer[:]
    graph.initializer.extend(kept[name] for name in sorted(kept))
    _rename_uses(graph, renames)
    infos = [info for info in graph.value_info if info.name not in renames]  # shape inference re-adds them
    del graph.value_info[:]
    graph.value_info.extend(infos)


def _content_digest(initializer: Any) -> str:
    import onnx

    unnamed = onnx.TensorProto()
    unnamed.CopyFrom(initializer)
    unnamed.name = ""
    unnamed.doc_string = ""
    return hashlib.sha256(unnamed.SerializeToString(deterministic=True)).hexdigest()[:20]


def _rename_uses(graph: Any, renames: dict[str, str]) -> None:
    """Node inputs here and in subgraphs (a Loop body reads outer initializers by name)."""
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in renames:
                node.input[index] = renames[name]
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                _rename_uses(subgraph, renames)
