"""The private Keras internals behind toolchain/keras_graph.py, checked on the installed Keras.

When one of these fails, Keras changed a private attribute the toolchain relies on:
update toolchain/keras_graph.py (and only it) for the new Keras, then raise the upper
bound on keras in pyproject.toml.
"""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

from toolchain import keras_graph

ROOT = Path(__file__).resolve().parent.parent
HINT = "Keras changed a private attribute toolchain/keras_graph.py reads: update that module for Keras {}"


def _keras_requirement() -> Requirement:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return next(Requirement(r) for r in project["dependencies"] if Requirement(r).name == "keras")


def test_pyproject_caps_the_keras_version_and_the_installed_one_fits():
    requirement = _keras_requirement()
    assert any(spec.operator == "<" for spec in requirement.specifier), (
        "pyproject.toml must give keras an upper bound: the private internals are checked per release")
    assert requirement.specifier.contains(version("keras")), (
        f"installed keras {version('keras')} is outside pyproject's {requirement.specifier}")


def test_every_private_attribute_exists(small_cnn, sequential_model):
    keras_version = version("keras")
    holders = {
        "_functional": sequential_model,
        "_nodes_by_depth": small_cnn,
        "_inbound_nodes": small_cnn.get_layer("conv"),
        "_keras_history": small_cnn.get_layer("conv").output,
        "_flatten_layers": small_cnn,
        "_build_shapes_dict": small_cnn,
        "_called": small_cnn,
    }
    assert set(holders) == set(keras_graph.PRIVATE_ATTRIBUTES)
    missing = [name for name, holder in holders.items() if not hasattr(holder, name)]
    assert not missing, HINT.format(keras_version) + f" (missing: {', '.join(missing)})"
    node = small_cnn.get_layer("conv")._inbound_nodes[0]
    missing = [name for name in keras_graph.NODE_ATTRIBUTES if not hasattr(node, name)]
    assert not missing, HINT.format(keras_version) + f" (Node lost: {', '.join(missing)})"


def test_nodes_come_in_topological_order(small_cnn):
    nodes = keras_graph.nodes_in_order(small_cnn)
    names = [node.operation.name for node in nodes]
    assert names == ["pixels", "conv", "flatten", "scores"]
    assert nodes[0].is_input and not nodes[1].is_input
    assert nodes[1].input_tensors[0] is nodes[0].outputs[0]


def test_producers_of_tensors(small_cnn):
    output = small_cnn.outputs[0]
    assert keras_graph.producing_operation(output).name == "scores"
    node = keras_graph.producing_node(output)
    assert node.operation.name == "scores"
    assert keras_graph.producing_operation(node.input_tensors[0]).name == "flatten"
    assert keras_graph.producing_operation(small_cnn.inputs[0]).name == "pixels"
    assert keras_graph.producing_node("not a tensor") is None


def test_graph_of_sequential_and_subclassed_models(sequential_model):
    import keras

    graph = keras_graph.sequential_graph(sequential_model)
    assert graph is not None and keras_graph.has_graph(graph)
    assert len(keras_graph.nodes_in_order(graph)) == 3  # input + two Dense
    assert keras_graph.sequential_graph(keras.Sequential([keras.layers.Dense(2)])) is None  # not built

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    assert not keras_graph.has_graph(Subclassed())


def test_no_private_keras_attribute_outside_keras_graph():
    offenders = []
    for path in sorted((ROOT / "toolchain").rglob("*.py")):
        if path.name == "keras_graph.py":
            continue
        source = path.read_text()
        offenders += [f"{path.relative_to(ROOT)} reads {name}" for name in keras_graph.PRIVATE_ATTRIBUTES
                      if re.search(rf"\.{name}\b|[\"']{name}[\"']", source)]
    assert not offenders, "; ".join(offenders) + ": go through toolchain/keras_graph.py"
