"""Truncation: cut a Keras model at layers, drop inner layers or residual blocks, attach a head.

The rewrite re-runs the model's graph on new inputs, calling the ORIGINAL layer objects,
so every kept layer shares its trained weights. It is the loop of Keras'
`Function._run_through_graph` (what `clone_model(call_function=...)` drives), written out
so each layer call (node) is at hand: a dropped layer returns its input, a dropped
residual block returns its shortcut, a sub-model addressed as `outer/inner` is inlined.
Tensors always come from the new graph, never from `layer.output` (a reused layer keeps
its first call's output there).

Addresses: a layer name, `outer/inner` for a layer inside a sub-model, or an integer
index into `model.layers` (negative counts from the end), as Keras numbers them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import keras_graph
from ..errors import DataError, InputError, StageError
from ..keras_graph import has_graph, nodes_in_order, producing_node, producing_operation, sequential_graph
from ..keras_io import did_you_mean

HEAD_SYNTAX = (
    "gap | gmp | flatten | dense:UNITS[:ACTIVATION] | dropout:RATE | activation:NAME | "
    "classes:N[:softmax|linear]"
)
HEAD_ITEMS = ("gap", "gmp", "flatten", "dense", "dropout", "activation", "classes")
TRUST_HINT = "pass trust=True (--trust-model) only if you trust the model's author"


# ---- head spec ---------------------------------------------------------------------


@dataclass(frozen=True)
class HeadLayer:
    kind: str
    units: int | None = None
    activation: str | None = None
    rate: float | None = None


HEAD_ARITY = {"gap": (0, 0), "gmp": (0, 0), "flatten": (0, 0), "dense": (1, 2), "dropout": (1, 1),
              "activation": (1, 1), "classes": (1, 2)}  # (fewest, most) arguments after the item's kind


def parse_head(spec: str | Sequence[str]) -> list[HeadLayer]:
    """Parse "gap,dense:64:relu,dropout:0.2,classes:10" (or a list of those items)."""
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    if not items or not all(items):
        raise InputError(f"head spec {spec!r} has an empty item; write items as {HEAD_SYNTAX}")
    return [_parse_head_item(item, last=position == len(items) - 1) for position, item in enumerate(items)]


def _parse_head_item(item: str, last: bool) -> HeadLayer:
    """One head item: its kind and argument count checked, then its arguments by kind."""
    kind, *args = item.split(":")
    kind = kind.lower()
    if kind not in HEAD_ITEMS:
        raise InputError(f"unknown head item '{item}'{did_you_mean(kind, list(HEAD_ITEMS))}; items: {HEAD_SYNTAX}")
    fewest, most = HEAD_ARITY[kind]
    if not fewest <= len(args) <= most:
        raise InputError(f"head item '{item}' has {len(args)} argument(s); write it as {_syntax_of(kind)}")
    if kind in ("dense", "classes"):
        return _units_item(kind, args, item, last)
    if kind == "dropout":
        return HeadLayer(kind, rate=_dropout_rate(args[0], item))
    if kind == "activation":
        return HeadLayer(kind, activation=_activation(args[0], item))
    return HeadLayer(kind)


def _units_item(kind: str, args: list[str], item: str, last: bool) -> HeadLayer:
    """dense:UNITS[:ACTIVATION] or classes:N[:softmax|linear] (classes only as the last item)."""
    units = _positive_int(args[0], item, kind)
    activation = args[1] if len(args) > 1 else ("softmax" if kind == "classes" else None)
    if kind == "classes" and activation not in ("softmax", "linear"):
        raise InputError(f"head item '{item}': the classes activation must be softmax or linear")
    if kind == "classes" and not last:
        raise InputError(f"head item '{item}' must be the last item of the head")
    return HeadLayer(kind, units=units, activation=_activation(activation, item))


def _dropout_rate(text: str, item: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        rate = -1.0
    if not 0 <= rate < 1:
        raise InputError(f"head item '{item}': RATE must be a number in [0, 1)")
    return rate


def _syntax_of(kind: str) -> str:
    return next(part.strip() for part in HEAD_SYNTAX.split("|") if part.strip().split(":")[0] == kind)


def _positive_int(text: str, item: str, kind: str) -> int:
    if not re.fullmatch(r"[0-9]+", text) or int(text) < 1:
        raise InputError(f"head item '{item}': {'N' if kind == 'classes' else 'UNITS'} must be a positive integer")
    return int(text)


def _activation(name: str | None, item: str) -> str | None:
    if name is None:
        return None
    import keras

    try:
        keras.activations.get(name)
    except ValueError as e:
        raise InputError(f"head item '{item}': unknown activation '{name}'") from e
    return name


def head_classes(head: Sequence[HeadLayer]) -> int | None:
    return head[-1].units if head and head[-1].kind == "classes" else None


# ---- graph analysis --------------------------------------------------------------


@dataclass
class _Graph:
    """The nodes of one Functional graph, with producer and consumer maps."""

    model: Any
    prefix: str
    nodes: list[Any]
    producer: dict[int, Any]
    consumers: dict[int, list[Any]]
    by_name: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def inputs(self) -> list[Any]:
        return list(self.model.inputs)

    @property
    def outputs(self) -> list[Any]:
        return list(self.model.outputs)


def _functional_of(model: Any, what: str) -> Any:
    import keras

    if isinstance(model, keras.Sequential):
        if sequential_graph(model) is None:
            raise InputError(
                f"{what} '{model.name}' is a Sequential model without an input shape; "
                "build it (give it a keras.Input) before truncating"
            )
        return sequential_graph(model)
    if isinstance(model, keras.Model) and has_graph(model):
        return model
    raise InputError(
        f"{what} '{getattr(model, 'name', type(model).__name__)}' is not a Functional or Sequential "
        "Keras model: a subclassed model has no declared graph to cut; rebuild it functionally to "
        "truncate it (export and verify take it whole, traced from its first call)"
    )


def _is_submodel(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.Model)


def _analyse(model: Any, prefix: str = "") -> _Graph:
    graph_model = _functional_of(model, "sub-model" if prefix else "model")
    nodes = nodes_in_order(graph_model)
    producer: dict[int, Any] = {}
    consumers: dict[int, list[Any]] = {}
    by_name: dict[str, list[Any]] = {}
    for node in nodes:
        for t in node.outputs:
            producer[id(t)] = node
        for t in node.input_tensors:
            consumers.setdefault(id(t), []).append(node)
        if node.operation is not None:
            by_name.setdefault(node.operation.name, []).append(node)
    return _Graph(graph_model, prefix, nodes, producer, consumers, by_name)


def _ancestors(graph: _Graph, tensor: Any) -> set[int]:
    """ids of the nodes that `tensor` depends on (its producer included)."""
    seen: set[int] = set()
    stack = [graph.producer.get(id(tensor))]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(graph.producer.get(id(t)) for t in node.input_tensors)
    return seen


@dataclass
class _Block:
    """A droppable residual block: merge = shortcut + branch(shortcut)."""

    merge: Any  # the Add node
    shortcut: Any  # KerasTensor of the original graph
    branch: set[int]  # ids of the branch's nodes


def _residual_block(graph: _Graph, node: Any) -> tuple[_Block | None, str]:
    """The block whose merge is `node`, or None and the reason it cannot be dropped."""
    name = node.operation.name
    if type(node.operation).__name__ != "Add" or len(node.input_tensors) != 2:
        return None, f"'{name}' is not the Add layer of a residual block"
    a, b = node.input_tensors
    for shortcut, branch_end in ((a, b), (b, a)):
        ancestors = _ancestors(graph, branch_end)
        shortcut_node = graph.producer.get(id(shortcut))
        if shortcut_node is None or id(shortcut_node) not in ancestors:
            continue
        shortcut_ancestors = _ancestors(graph, shortcut)
        branch = ancestors - shortcut_ancestors
        if tuple(shortcut.shape[1:]) != tuple(node.outputs[0].shape[1:]):
            return None, f"'{name}': the shortcut's shape differs from the block's output shape"
        for member in graph.nodes:
            if id(member) not in branch:
                continue
            for t in member.outputs:
                for user in graph.consumers.get(id(t), []):
                    if id(user) not in branch and user is not node:
                        return None, (
                            f"'{name}': layer '{user.operation.name}' outside the block uses "
                            f"'{member.operation.name}' of its branch, so removing the branch "
                            "would disconnect the graph"
                        )
        return _Block(node, shortcut, branch), ""
    return None, (
        f"'{name}' adds two branches that both transform the block input (a projection "
        "shortcut): there is no identity shortcut to keep"
    )


def droppable_blocks(model: Any) -> list[str]:
    """Addresses of the residual blocks (their Add layers) that `drop` can remove."""
    found: list[str] = []

    def visit(graph: _Graph) -> None:
        for node in graph.nodes:
            layer = node.operation
            if layer is None or node.is_input:
                continue
            if _is_submodel(layer):
                visit(_analyse(layer, graph.prefix + layer.name + "/"))
            elif type(layer).__name__ == "Add" and _residual_block(graph, node)[0] is not None:
                found.append(graph.prefix + layer.name)

    visit(_analyse(model))
    return found


def droppable_layers(model: Any) -> list[str]:
    """Addresses of the single layers `drop` can bypass: one input, one output of the same shape and dtype."""
    found: list[str] = []

    def visit(graph: _Graph) -> None:
        for node in graph.nodes:
            layer = node.operation
            if layer is None or node.is_input:
                continue
            ins, outs = node.input_tensors, node.outputs
            if (len(ins) == 1 and len(outs) == 1 and tuple(ins[0].shape[1:]) == tuple(outs[0].shape[1:])
                    and ins[0].dtype == outs[0].dtype):
                found.append(graph.prefix + layer.name)
            if _is_submodel(layer):
                visit(_analyse(layer, graph.prefix + layer.name + "/"))

    visit(_analyse(model))
    return found


def layer_addresses(model: Any) -> list[str]:
    """Every address `at` and `drop` accept, in graph order (sub-models expanded)."""
    found: list[str] = []

    def visit(graph: _Graph) -> None:
        for node in graph.nodes:
            layer = node.operation
            if layer is None:
                continue
            address = graph.prefix + layer.name
            if address not in found:
                found.append(address)
            if _is_submodel(layer) and not node.is_input:
                visit(_analyse(layer, address + "/"))

    visit(_analyse(model))
    return found


def untrusted_layers(model: Any) -> list[str]:
    """'name (Class)' of Lambda layers and of layers defined outside Keras, sub-models included."""
    found = []
    for layer in _all_layers(model):
        cls = type(layer)
        if cls.__name__ == "Lambda" or not cls.__module__.startswith("keras."):
            found.append(f"{layer.name} ({cls.__name__})")
    return found


def _all_layers(model: Any) -> list[Any]:
    out = []
    for layer in getattr(model, "layers", []):
        out.append(layer)
        if _is_submodel(layer):
            out.extend(_all_layers(layer))
    return out


# ---- the rewrite ------------------------------------------------------------------


@dataclass
class _Plan:
    bypass: set[str]
    blocks: dict[str, _Block]  # merge address -> block
    removed: dict[str, str]  # address -> why it is gone (for "no path reaches" errors)
    enter: set[str]  # sub-model addresses to inline


def _resolve(model: Any, ref: str | int, addresses: list[str], what: str) -> str:
    if isinstance(ref, (int, np.integer)) and not isinstance(ref, bool):
        layers = model.layers
        if not -len(layers) <= int(ref) < len(layers):
            raise InputError(
                f"{what} index {ref} is out of range: the model has {len(layers)} layers "
                f"(indices {-len(layers)}..{len(layers) - 1} of model.layers)"
            )
        return layers[int(ref)].name
    if not isinstance(ref, str):
        raise InputError(f"a {what} must be a layer name or an integer index, got {ref!r} ({type(ref).__name__})")
    if re.fullmatch(r"-?[0-9]+", ref):
        return _resolve(model, int(ref), addresses, what)
    if ref not in addresses:
        _refuse_inside_recurrent(model, ref, what)
        raise InputError(
            f"unknown {what} '{ref}'{did_you_mean(ref, addresses)}; "
            "address a layer inside a sub-model as outer/inner"
        )
    return ref


def _refuse_inside_recurrent(model: Any, ref: str, what: str) -> None:
    """A recurrent layer's cell (or a Bidirectional's direction) runs inside the time loop: no cut point."""
    import keras

    for layer in keras_graph.sublayers(model):
        if not isinstance(layer, (keras.layers.RNN, keras.layers.Bidirectional)):
            continue
        inner = {sub.name for sub in keras_graph.sublayers(layer)}
        if ref in inner or ref.split("/")[0] == layer.name:
            raise InputError(
                f"cannot use '{ref}' as a {what}: it is inside recurrent layer '{layer.name}' "
                f"({type(layer).__name__}), which runs it once per time step in a loop; cut at "
                f"'{layer.name}' itself (it gives {_recurrent_outputs(layer)})"
            )


def _recurrent_outputs(layer: Any) -> str:
    rnn = getattr(layer, "forward_layer", layer)
    what = "the whole sequence" if rnn.return_sequences else "the last step's output"
    return f"{what} and its states" if rnn.return_state else what


def _find_node(model: Any, address: str) -> tuple[_Graph, Any]:
    graph = _analyse(model)
    parts = address.split("/")
    for depth, part in enumerate(parts):
        nodes = graph.by_name.get(part, [])
        node = next((n for n in nodes if not n.is_input), nodes[0] if nodes else None)
        if node is None:  # _resolve checked the address; defensive
            raise InputError(f"unknown layer '{address}'")
        if depth == len(parts) - 1:
            return graph, node
        graph = _analyse(node.operation, graph.prefix + part + "/")
    raise InputError(f"unknown layer '{address}'")


def _plan(model: Any, drops: list[str], cuts: list[str]) -> _Plan:
    plan = _Plan(set(), {}, {}, set())
    blocks_cache: list[str] | None = None

    def blocks_hint() -> str:
        nonlocal blocks_cache
        if blocks_cache is None:
            blocks_cache = droppable_blocks(model)
        return ("droppable residual blocks: " + ", ".join(blocks_cache)) if blocks_cache else (
            "this model has no droppable residual blocks"
        )

    for address in drops:
        graph, node = _find_node(model, address)
        layer = node.operation
        if node.is_input:
            raise InputError(f"cannot drop '{address}': it is a model input; {blocks_hint()}")
        if type(layer).__name__ == "Add":
            block, reason = _residual_block(graph, node)
            if block is None:
                raise InputError(f"cannot drop {reason}; {blocks_hint()}")
            plan.blocks[address] = block
            plan.removed[address] = "dropped"
            for member in graph.nodes:
                if id(member) in block.branch and member.operation is not None:
                    plan.removed[graph.prefix + member.operation.name] = f"on the branch of dropped block '{address}'"
        else:
            ins, outs = node.input_tensors, node.outputs
            if len(ins) != 1 or len(outs) != 1:
                raise InputError(
                    f"cannot drop '{address}': it takes {len(ins)} inputs and gives {len(outs)} outputs; "
                    f"only single-input layers whose output shape equals their input shape, and "
                    f"residual blocks named by their Add layer, can be dropped; {blocks_hint()}"
                )
            in_shape, out_shape = tuple(ins[0].shape[1:]), tuple(outs[0].shape[1:])
            if in_shape != out_shape or ins[0].dtype != outs[0].dtype:
                raise InputError(
                    f"cannot drop '{address}': its output shape {out_shape} differs from its input "
                    f"shape {in_shape}, so the layers after it would break; only shape-preserving "
                    f"layers and residual blocks (by their Add layer) can be dropped; {blocks_hint()}"
                )
            plan.bypass.add(address)
            plan.removed[address] = "dropped"
    for address in [*drops, *cuts]:
        parts = address.split("/")
        plan.enter.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return plan


def _depends_on(model: Any, cut: str, dropped: str) -> bool:
    """Whether the layer at `cut` is computed from the layer `dropped` (addresses as outer/inner)."""
    graph = _analyse(model)
    cut_parts, drop_parts = cut.split("/"), dropped.split("/")
    for depth in range(min(len(cut_parts), len(drop_parts))):
        cut_node, drop_node = _named_node(graph, cut_parts[depth]), _named_node(graph, drop_parts[depth])
        if cut_node is not drop_node:
            return any(id(drop_node) in _ancestors(graph, t) for t in cut_node.outputs)
        if depth + 1 < min(len(cut_parts), len(drop_parts)):
            graph = _analyse(cut_node.operation, graph.prefix + cut_parts[depth] + "/")
    return True  # the same layer, or one inside the other


def _named_node(graph: _Graph, name: str) -> Any:
    nodes = graph.by_name[name]
    return next((n for n in nodes if not n.is_input), nodes[0])


def _flat(value: Any) -> list[Any]:
    from keras import tree

    return list(tree.flatten(value))


def _run(graph: _Graph, inputs: list[Any], plan: _Plan, produced: dict[str, list[Any]]) -> list[Any | None]:
    """Run the graph on `inputs` under the plan; returns the new graph's output tensors."""
    tensors = {id(x): y for x, y in zip(graph.inputs, inputs, strict=True) if y is not None}
    for node in graph.nodes:
        layer = node.operation
        if node.is_input or layer is None:
            continue
        address = graph.prefix + layer.name
        outputs = _node_outputs(node, address, tensors, plan, produced)
        if outputs is None:
            continue
        for x, y in zip(node.outputs, outputs, strict=True):
            tensors[id(x)] = y
        if address not in plan.removed:
            produced.setdefault(address, list(outputs))  # a shared layer: its first call
    return [tensors.get(id(x)) for x in graph.outputs]


def _node_outputs(node: Any, address: str, tensors: dict[int, Any], plan: _Plan,
                  produced: dict[str, list[Any]]) -> list[Any] | None:
    """The new tensors one layer call gives under the plan; None when it gives none."""
    if address in plan.blocks:  # the block's output is its shortcut
        shortcut = tensors.get(id(plan.blocks[address].shortcut))
        return None if shortcut is None else [shortcut]
    if address in plan.removed and address not in plan.bypass:
        return None  # on a dropped block's branch
    if any(id(x) not in tensors for x in node.input_tensors):
        return None  # not reachable from the inputs we have
    args, kwargs = node.arguments.fill_in(tensors)
    if address in plan.bypass:
        return [tensors[id(node.input_tensors[0])]]
    if _is_submodel(node.operation) and address in plan.enter:
        return _run_submodel(node.operation, address, args, plan, produced)
    return _flat(node.operation(*args, **kwargs))


def _run_submodel(layer: Any, address: str, args: Any, plan: _Plan,
                  produced: dict[str, list[Any]]) -> list[Any] | None:
    """Inline a sub-model the plan enters; None when the cut stops inside it."""
    from keras import KerasTensor

    inner = _analyse(layer, address + "/")
    inner_inputs = [t for t in _flat(args) if isinstance(t, KerasTensor)]
    outputs = _run(inner, inner_inputs, plan, produced)
    return None if any(o is None for o in outputs) else outputs


def _used_inputs(outputs: list[Any], new_inputs: list[Any]) -> set[int]:
    """ids of `new_inputs` that some output depends on (walking the new graph's history)."""
    wanted = {id(t) for t in new_inputs}
    used: set[int] = set()
    seen: set[int] = set()
    stack = list(outputs)
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        if id(t) in wanted:
            used.add(id(t))
        node = producing_node(t)
        if node is None:
            continue
        stack.extend(node.input_tensors)
    return used


def truncate(
    model: Any,
    *,
    at: str | int | Sequence[str | int] | None = None,
    drop: str | Sequence[str] | None = None,
    head: str | Sequence[str] | Sequence[HeadLayer] | None = None,
    train_data: Any = None,
    eval_data: Any = None,
    epochs: int = 10,
    seed: int = 0,
    batch_size: int = 32,
    learning_rate: float = 1e-2,
    trust: bool = False,
    name: str | None = None,
    progress: ProgressCallback | None = None,
) -> Any:
    """A new Functional model: `model` cut at `at`, without `drop`, with an optional new `head`.

    `at`: one or more layer addresses (several give a multi-output model, in that order);
    None keeps the model's outputs. `drop`: shape-preserving layers, or residual blocks
    named by their Add layer. `head`: a spec (see HEAD_SYNTAX) put on top of the single
    cut output. `train_data` (a data.Dataset with labels, or (x, y)) trains the head only,
    seeded, for `epochs`; the base is frozen (it runs once, in inference mode and in
    batches, to compute the features the head learns from); `eval_data` is scored after
    each epoch; `progress` gets HeadProgress events. Kept layers are the original layer objects, so
    they share the original's weights.
    """
    import keras

    _check_eval_has_train(train_data, eval_data)
    graph = _analyse(model)
    _check_trusted(model, trust)
    cuts, drops = _resolved_addresses(model, graph, at, drop)
    head_layers = _head_layers(head)
    if head_layers and len(cuts) > 1:
        raise InputError(f"a head goes on one output, but {len(cuts)} cut points were given; cut at one layer")
    plan = _plan(model, drops, cuts)
    new_inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=_input_name(t)) for t in graph.inputs]
    produced: dict[str, list[Any]] = {}
    final = _run(graph, new_inputs, plan, produced)
    if cuts:
        outputs = _cut_outputs(model, cuts, drops, plan, produced)
    else:
        outputs = [t for t in final if t is not None]
    if head_layers and len(outputs) != 1:
        raise InputError(
            f"a head goes on one output, but the cut layer gives {len(outputs)} outputs"
            f"{_states_hint(model, cuts)}"
        )
    _check_inputs_used(outputs, new_inputs)
    base = _functional(new_inputs, outputs, name or f"{model.name}_truncated")
    if not head_layers:
        if train_data is not None:
            raise InputError("train_data was given without a head: only a new head is trained")
        return base
    return attach_head(base, head_layers, train_data, eval_data=eval_data, epochs=epochs, seed=seed,
                       batch_size=batch_size, learning_rate=learning_rate, name=name or f"{model.name}_truncated",
                       progress=progress)


def _check_trusted(model: Any, trust: bool) -> None:
    """Truncation runs every kept layer's Python code: Lambda and custom layers need trust."""
    unsafe = untrusted_layers(model)
    if unsafe and not trust:
        raise InputError(
            f"model '{model.name}' has Lambda or custom layers: {', '.join(unsafe)}; truncation runs "
            f"their Python code and the saved result needs it to load; {TRUST_HINT}"
        )


def _cut_outputs(model: Any, cuts: list[str], drops: list[str], plan: _Plan,
                 produced: dict[str, list[Any]]) -> list[Any]:
    """The new tensors of each cut point, in order; each must still be computed under the plan."""
    outputs = []
    for address in cuts:
        if address not in produced:
            why = plan.removed.get(address) or _removed_reason(address, plan)
            raise InputError(
                f"no path from the model's inputs reaches layer '{address}' in the truncated model"
                f" ({why}); cut at a layer that is kept"
            )
        outputs.extend(produced[address])
    _check_drops_are_kept(model, drops, cuts)
    return outputs


def _check_inputs_used(outputs: list[Any], new_inputs: list[Any]) -> None:
    used = _used_inputs(outputs, new_inputs)
    unused = [t.name for t in new_inputs if id(t) not in used]
    if unused:
        raise InputError(
            f"the cut leaves model input(s) {', '.join(repr(n) for n in unused)} unused (no kept layer "
            "reads them); add a cut point on their branch, or cut the model that takes only the inputs you use"
        )


def _functional(inputs: list[Any], outputs: list[Any], name: str) -> Any:
    """The truncated base model; Keras' duplicate-name error explained for inlined sub-models."""
    import keras

    try:
        return keras.Model(_one_or_list(inputs), _one_or_list(outputs), name=name)
    except ValueError as e:  # Keras: "The name "x" is used 2 times in the model"
        raise InputError(
            f"cannot build the truncated model: {str(e).strip().splitlines()[0][:300]} (a sub-model addressed as "
            "outer/inner is inlined, so its layer names must differ from the outer model's)"
        ) from e


def _resolved_addresses(model: Any, graph: _Graph, at: Any, drop: Any) -> tuple[list[str], list[str]]:
    """(cut points, dropped layers) as addresses: each once, no cut at a model input."""
    addresses = layer_addresses(model)
    cut_refs = [] if at is None else ([at] if isinstance(at, (str, int, np.integer)) else list(at))
    drop_refs = [] if drop is None else ([drop] if isinstance(drop, str) else list(drop))
    cuts = [_resolve(model, ref, addresses, "cut point") for ref in cut_refs]
    drops = [_resolve(model, ref, addresses, "layer to drop") for ref in drop_refs]
    for kind, names in (("cut point", cuts), ("dropped layer", drops)):
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise InputError(f"{kind} '{twice[0]}' is given more than once")
    input_names = {_input_name(t) for t in graph.inputs}
    for address in cuts:
        if address in input_names:
            raise InputError(f"cannot cut at '{address}': it is a model input, the cut would keep no layers")
    return cuts, drops


def _check_drops_are_kept(model: Any, drops: list[str], cuts: list[str]) -> None:
    """A drop after the cut would be ignored: refuse it rather than let it pass unnoticed."""
    for address in drops if cuts else []:
        if not any(_depends_on(model, cut, address) for cut in cuts):
            raise InputError(
                f"dropping '{address}' has no effect: the cut at {', '.join(repr(c) for c in cuts)} already "
                "removes it (no kept layer depends on it); drop only layers the cut keeps"
            )


def _states_hint(model: Any, cuts: list[str]) -> str:
    """For a cut at an RNN with return_state: which outputs those are and how to get one."""
    import keras

    layer = next((lay for lay in keras_graph.sublayers(model) if lay.name in cuts), None)
    rnn = getattr(layer, "forward_layer", layer)
    if not isinstance(rnn, keras.layers.RNN) or not rnn.return_state:
        return ""
    return (f" (recurrent layer '{layer.name}' returns {_recurrent_outputs(layer)}); cut at a layer that "
            "reads the one you want, or rebuild it with return_state=False")


def _input_name(tensor: Any) -> str:
    """The InputLayer's name: the tensor's own name may be a generic 'keras_tensor_N'."""
    operation = producing_operation(tensor)
    return operation.name if operation is not None else tensor.name


def _removed_reason(address: str, plan: _Plan) -> str:
    for prefix in (address.rsplit("/", i)[0] for i in range(1, address.count("/") + 1)):
        if prefix in plan.removed:
            return f"inside '{prefix}', which is {plan.removed[prefix]}"
    return "it depends on nothing the inputs feed"


def _head_layers(head: Any) -> list[HeadLayer]:
    if head is None:
        return []
    if isinstance(head, str):
        return parse_head(head)
    head = list(head)
    if all(isinstance(h, HeadLayer) for h in head):
        return head
    return parse_head([str(h) for h in head])


def _build_head(head: list[HeadLayer], rank: int) -> list[Any]:
    import keras

    pools = {3: ("GlobalAveragePooling1D", "GlobalMaxPooling1D"), 4: ("GlobalAveragePooling2D", "GlobalMaxPooling2D"),
             5: ("GlobalAveragePooling3D", "GlobalMaxPooling3D")}
    layers: list[Any] = []
    counts: dict[str, int] = {}
    for item in head:
        counts[item.kind] = counts.get(item.kind, 0) + 1
        layer_name = f"head_{item.kind}" + (f"_{counts[item.kind]}" if counts[item.kind] > 1 else "")
        if item.kind in ("gap", "gmp"):
            if rank not in pools:
                raise InputError(
                    f"head item '{item.kind}' pools over space, but the cut output has rank {rank} "
                    "(batch included); use it on a (N, ..., channels) feature map"
                )
            layers.append(getattr(keras.layers, pools[rank][item.kind == "gmp"])(name=layer_name))
            rank = 2
        elif item.kind == "flatten":
            layers.append(keras.layers.Flatten(name=layer_name))
            rank = 2
        elif item.kind in ("dense", "classes"):
            if item.kind == "classes" and rank != 2:
                raise InputError(
                    f"head item 'classes:{item.units}' needs flat (N, features) input, but the cut output "
                    f"has rank {rank}; start the head with gap, gmp or flatten"
                )
            layers.append(keras.layers.Dense(item.units, activation=item.activation, name=layer_name))
        elif item.kind == "dropout":
            layers.append(keras.layers.Dropout(item.rate, name=layer_name))
        else:
            layers.append(keras.layers.Activation(item.activation, name=layer_name))
    return layers


def _training_arrays(base: Any, train_data: Any) -> tuple[list[np.ndarray], np.ndarray]:
    from ..data import Dataset

    names = [t.name for t in base.inputs]
    if isinstance(train_data, Dataset):
        if train_data.labels is None:
            raise DataError("the head's training data has no labels; give integer class labels (key 'y')")
        missing = [n for n in names if n not in train_data.inputs]
        if missing:
            raise DataError(f"the head's training data has no array for input(s) {missing}")
        return [train_data.inputs[n] for n in names], np.asarray(train_data.labels)
    if isinstance(train_data, tuple) and len(train_data) == 2:
        x, y = train_data
        if isinstance(x, dict):
            x = [x[n] for n in names]
        return (list(x) if isinstance(x, (list, tuple)) else [x]), np.asarray(y).reshape(-1)
    raise InputError(f"train_data must be a Dataset or an (x, y) tuple, got {type(train_data).__name__}")


@dataclass
class HeadProgress:
    """What head training reports as it goes: feature batches, then each epoch's metrics."""

    stage: str  # "features" (the frozen base runs on the data) or "epoch"
    done: int
    total: int
    metrics: dict[str, float] = field(default_factory=dict)  # loss, accuracy[, eval_loss, eval_accuracy]
    what: str = "train"  # which data the features are computed for: "train" or "eval"


ProgressCallback = Callable[[HeadProgress], None]
FEATURE_BATCH = 16  # images per call of the frozen base: its activations bound the memory, not the data
# leading head items without weights that act the same in training: computed with the base
FROZEN_HEAD_ITEMS = ("gap", "gmp", "flatten", "activation")


def attach_head(
    base: Any,
    head: list[HeadLayer],
    train_data: Any = None,
    *,
    eval_data: Any = None,
    epochs: int = 10,
    seed: int = 0,
    batch_size: int = 32,
    learning_rate: float = 1e-2,
    name: str | None = None,
    progress: ProgressCallback | None = None,
) -> Any:
    """`base` with `head` on its single output; trains the head on `train_data` if given.

    Training streams the data through the frozen base in batches into one feature array
    (pooled when the head starts with gap/gmp), so memory does not grow with the images.
    """
    import keras

    keras.utils.set_random_seed(seed)
    feature = base.outputs[0]
    layers = _build_head(head, len(feature.shape))
    taken = {layer.name for layer in base.layers}
    clash = [layer.name for layer in layers if layer.name in taken]
    if clash:
        raise InputError(f"the model already has a layer named '{clash[0]}'; head layer names must be new")
    _check_eval_has_train(train_data, eval_data)
    if train_data is not None:
        _train_head(base, head, layers, train_data, eval_data, epochs=epochs, batch_size=batch_size,
                    learning_rate=learning_rate, progress=progress or (lambda event: None))
    t = feature
    for layer in layers:
        t = layer(t)
    return keras.Model(_one_or_list(base.inputs), t, name=name or base.name)


def _check_eval_has_train(train_data: Any, eval_data: Any) -> None:
    if eval_data is not None and train_data is None:
        raise InputError("eval_data was given without train_data: it scores the head trained on train_data")


def _checked_labels(y: np.ndarray, classes: int, what: str) -> np.ndarray:
    if y.dtype.kind not in "iu" or (len(y) and (y.min() < 0 or y.max() >= classes)):
        raise DataError(
            f"head labels{what} must be integer class ids in [0, {classes}), got values "
            f"{y.min() if len(y) else '-'}..{y.max() if len(y) else '-'} ({y.dtype})"
        )
    return y


def _train_head(base: Any, head: list[HeadLayer], layers: list[Any], train_data: Any, eval_data: Any, *,
                epochs: int, batch_size: int, learning_rate: float, progress: ProgressCallback) -> None:
    """Fit the head's layers (in place) on features of the frozen base; report metrics per epoch."""
    import keras

    classes = head_classes(head)
    if classes is None:
        raise InputError("training the head needs a 'classes:N' item at its end (the loss needs classes)")
    if epochs < 1:
        raise InputError(f"epochs must be >= 1, got {epochs}")
    x, y = _training_arrays(base, train_data)
    y = _checked_labels(y, classes, "")
    evaluation = None
    if eval_data is not None:
        eval_x, eval_y = _training_arrays(base, eval_data)
        evaluation = (eval_x, _checked_labels(eval_y, classes, " of the eval data"))
    frozen = 0
    while head[frozen].kind in FROZEN_HEAD_ITEMS:
        frozen += 1
    t = base.outputs[0]
    for layer in layers[:frozen]:
        t = layer(t)
    extractor = keras.Model(_one_or_list(base.inputs), t, name="head_features")
    features = stream_features(extractor, x, progress, "train")
    validation = None
    if evaluation is not None:
        validation = (stream_features(extractor, evaluation[0], progress, "eval"), evaluation[1])
    feature_input = keras.Input(features.shape[1:], name="features")
    t = feature_input
    for layer in layers[frozen:]:
        t = layer(t)
    trainer = keras.Model(feature_input, t, name="head_trainer")
    trainer.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=head[-1].activation == "linear"),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    try:
        trainer.fit(features, y, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0,
                    validation_data=validation, callbacks=[keras.callbacks.LambdaCallback(
                        on_epoch_end=lambda epoch, logs: progress(
                            HeadProgress("epoch", epoch + 1, epochs, _epoch_metrics(logs))))])
    except Exception as e:
        raise StageError(f"training the head failed: {str(e).strip().splitlines()[0][:300]}") from e


def _epoch_metrics(logs: dict[str, Any] | None) -> dict[str, float]:
    """Keras' epoch logs as loss, accuracy, eval_loss, eval_accuracy (validation = the eval data)."""
    return {key.replace("val_", "eval_"): float(value) for key, value in (logs or {}).items()
            if key.removeprefix("val_") in ("loss", "accuracy")}


def stream_features(model: Any, arrays: list[np.ndarray], progress: ProgressCallback | None = None,
                    what: str = "train", batch_size: int = FEATURE_BATCH) -> np.ndarray:
    """`model`'s single output on all samples, computed batch by batch into one preallocated array."""
    count = len(arrays[0])
    shape = tuple(model.outputs[0].shape[1:])
    if any(d is None for d in shape):
        raise InputError(f"the head's features have an undefined dimension {(None, *shape)}; give the model a "
                         "fixed input size to train a head")
    features = np.empty((count, *shape), dtype=np.float32)
    call = traced_call(model)
    for start in range(0, count, batch_size):
        chunk = [a[start:start + batch_size] for a in arrays]
        features[start:start + len(chunk[0])] = np.asarray(call(*chunk)[0])
        if progress is not None:
            progress(HeadProgress("features", min(start + batch_size, count), count, what=what))
    return features


def predict_arrays(model: Any, arrays: list[np.ndarray], batch_size: int = FEATURE_BATCH) -> list[np.ndarray]:
    """All outputs of `model` on positional input arrays, in batches through one traced graph."""
    call = traced_call(model)
    parts = [[np.asarray(r) for r in call(*[a[start:start + batch_size] for a in arrays])]
             for start in range(0, len(arrays[0]), batch_size)]
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


def traced_call(model: Any) -> Callable[..., list[Any]]:
    """The model in inference mode as one tf.function for every batch size.

    Eager calls of a large model grow the heap batch after batch (ResNet50 to conv4, 16
    images of 224x224: +2.6 GB after four calls, +0.3 GB traced), and memory must not grow
    with the data.
    """
    import tensorflow as tf

    specs = [tf.TensorSpec((None, *t.shape[1:]), t.dtype) for t in model.inputs]

    @tf.function(input_signature=specs)
    def call(*arrays: Any) -> list[Any]:
        result = model(_one_or_list(list(arrays)), training=False)
        return list(result) if isinstance(result, (list, tuple)) else [result]

    return call


def _one_or_list(tensors: list[Any]) -> Any:
    """A single tensor stays unwrapped, so the model takes and returns a plain array."""
    return tensors[0] if len(tensors) == 1 else list(tensors)


def truncate_file(
    model_path: str | Path,
    output: str | Path,
    *,
    at: Sequence[str | int] | None = None,
    drop: Sequence[str] | None = None,
    head: str | None = None,
    train: str | Path | None = None,
    eval_file: str | Path | None = None,
    labels_key: str = "y",
    epochs: int = 10,
    seed: int = 0,
    trust: bool = False,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Load, truncate and save atomically to `output` (.keras); returns what was written,
    with the trained head's last-epoch loss and accuracy (train, and eval when given)."""
    from ..data import load_npz
    from ..fileio import atomic_output, sha256_file
    from ..keras_io import input_signature, load_model, output_signature
    from ..model_stats import count_macs, count_params

    output = Path(output)
    if output.suffix != ".keras":
        raise InputError(f"the truncated model is saved as a Keras 3 file: give an output path ending in .keras, "
                         f"got {output}")
    if not (at or drop or head):
        raise InputError("nothing to do: give at least one of --at, --drop or --head")
    if train is not None and not head:
        raise InputError("--train trains a new head: give --head too")
    if eval_file is not None and train is None:
        raise InputError("--eval scores the head trained with --train: give --train too")
    model = load_model(model_path, trust=trust)
    train_data = eval_data = None
    if train is not None:
        train_data = load_npz(train, input_signature(model), labels_key=labels_key)
    if eval_file is not None:
        eval_data = load_npz(eval_file, input_signature(model), labels_key=labels_key)
    last_epoch: dict[str, float] = {}

    def report(event: HeadProgress) -> None:
        if event.stage == "epoch":
            last_epoch.update(event.metrics)
        if progress is not None:
            progress(event)

    result = truncate(model, at=at or None, drop=drop or None, head=head, train_data=train_data,
                      eval_data=eval_data, epochs=epochs, seed=seed, trust=trust, progress=report)
    with atomic_output(output, suffix=".keras") as tmp:
        result.save(tmp)
    return {
        "path": str(output),
        "sha256": sha256_file(output),
        "bytes": output.stat().st_size,
        "parent": sha256_file(model_path),
        "outputs": [{"name": t.name, "shape": [None, *t.shape], "dtype": t.dtype} for t in output_signature(result)],
        "params": {"before": count_params(model), "after": count_params(result)},
        "macs": {"before": _macs_or_none(count_macs, model), "after": _macs_or_none(count_macs, result)},
        "head_trained": train_data is not None,
        "head_metrics": last_epoch or None,
    }


def _macs_or_none(count: Any, model: Any) -> int | None:
    try:
        return count(model)
    except InputError:  # dynamic spatial dimensions: MACs are not defined
        return None


# ---- pipeline stage ---------------------------------------------------------------------


@dataclass
class Truncation:
    """A truncated model made from the pipeline's [truncate] section, before it is saved."""

    model: Any
    settings: dict[str, Any]  # the [truncate] section, for the manifest
    key: str  # sha256 of parent model + settings + training data: the cache key of what follows
    keeps_labels: bool  # False when a cut without a classes head makes the outputs features


def truncate_from_config(model: Any, section: Any, *, parent_sha256: str, trust: bool = False) -> Truncation:
    """Run the [truncate] section (a config.TruncateSection) on the loaded model."""
    import hashlib
    import json

    from ..data import load_npz
    from ..fileio import sha256_file
    from ..keras_io import input_signature

    train = section.train
    train_data = data_sha256 = None
    if train is not None:
        train_data = load_npz(train.data, input_signature(model), labels_key=train.labels_key)
        data_sha256 = sha256_file(train.data)
    result = truncate(
        model, at=list(section.at) or None, drop=list(section.drop) or None, head=section.head,
        train_data=train_data, epochs=train.epochs if train else 10, seed=train.seed if train else 0,
        batch_size=train.batch_size if train else 32, learning_rate=train.learning_rate if train else 1e-2,
        trust=trust,
    )
    settings = section.model_dump(mode="json")
    digest = hashlib.sha256(json.dumps({"parent": parent_sha256, "settings": settings, "train_data": data_sha256},
                                       sort_keys=True).encode()).hexdigest()
    has_classes = bool(section.head) and head_classes(parse_head(section.head)) is not None
    return Truncation(result, settings, digest, keeps_labels=not section.at or has_classes)


def save_truncated(truncation: Truncation, path: Path, parent_sha256: str) -> dict[str, Any]:
    """Save atomically; the manifest record of the saved model (path as given)."""
    from ..fileio import atomic_output, sha256_file
    from ..keras_io import input_signature, output_signature
    from ..model_stats import count_macs, count_params

    with atomic_output(path, suffix=".keras") as tmp:
        truncation.model.save(tmp)

    def tensors(infos: list[Any]) -> list[dict[str, Any]]:
        return [{"name": i.name, "shape": [None, *i.shape], "dtype": i.dtype} for i in infos]

    return {
        "name": path.name,
        "path": str(path),
        "stage": "truncate",
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "parent": parent_sha256,
        "settings": truncation.settings,
        "params": count_params(truncation.model),
        "macs": _macs_or_none(count_macs, truncation.model),
        "inputs": tensors(input_signature(truncation.model)),
        "outputs": tensors(output_signature(truncation.model)),
    }
