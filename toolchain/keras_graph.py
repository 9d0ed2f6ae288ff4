"""Keras' private graph internals, in one place.

Truncation, MAC counting and the sweep walk a Functional model's nodes. Keras 3 has no
public API for that, so they read private attributes (`_functional`, `_nodes_by_depth`,
`_inbound_nodes`, `_keras_history`). Every such access lives here, so a Keras release
that renames one breaks this module alone (export also reads `_flatten_layers`,
`_build_shapes_dict` and `_called`, as Keras' own export does, to trace subclassed models);
tests/test_keras_internals.py checks each attribute on the installed Keras and pyproject.toml
caps the Keras version we checked.

Keras' `Node` objects are used through their (undocumented) attributes `operation`,
`input_tensors`, `outputs` and `is_input`; those are checked by the same test.
"""

from __future__ import annotations

from typing import Any

# the private attributes this module reads, checked on the installed Keras by the tests
PRIVATE_ATTRIBUTES = ("_functional", "_nodes_by_depth", "_inbound_nodes", "_keras_history", "_flatten_layers",
                      "_build_shapes_dict", "_called")
NODE_ATTRIBUTES = ("operation", "input_tensors", "outputs", "is_input")


def sequential_graph(model: Any) -> Any | None:
    """The Functional graph behind a built Sequential model; None when it has no input shape yet."""
    return getattr(model, "_functional", None)


def has_graph(model: Any) -> bool:
    """A Functional model declares its graph; a subclassed keras.Model does not."""
    return hasattr(model, "_nodes_by_depth")


def nodes_in_order(graph: Any) -> list[Any]:
    """The nodes of a Functional graph from the inputs to the outputs (a topological order)."""
    by_depth = graph._nodes_by_depth
    return [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]]


def tensor_history(tensor: Any) -> Any | None:
    """(operation, node_index, tensor_index) of the layer call that produced a symbolic tensor, or None."""
    return getattr(tensor, "_keras_history", None)


def producing_operation(tensor: Any) -> Any | None:
    """The layer (or InputLayer) that produced a symbolic tensor, or None."""
    return getattr(tensor_history(tensor), "operation", None)


def producing_node(tensor: Any) -> Any | None:
    """The graph node (one layer call) that produced a symbolic tensor, or None for a plain value."""
    history = tensor_history(tensor)
    if history is None or history.operation is None:
        return None
    return history.operation._inbound_nodes[history.node_index]


def sublayers(layer: Any, recursive: bool = True) -> list[Any]:
    """Every layer inside `layer` (nested models' layers too when `recursive`), without itself."""
    return list(layer._flatten_layers(include_self=False, recursive=recursive))


def build_shapes(model: Any) -> dict[str, Any]:
    """The input shapes a subclassed model was built with ({} when it never was)."""
    return getattr(model, "_build_shapes_dict", None) or {}


def was_called(model: Any) -> bool:
    """Whether a model has been called once (so its input shapes are known)."""
    return bool(getattr(model, "_called", False))
