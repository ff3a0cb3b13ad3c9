"""Walking a traced TensorFlow graph: every op, or only the ops that run (`live_only`), the
ops of the functions it calls (nested `tf.function`s, while-loop bodies and conditions,
conditional branches) included, each function once. Used to count FLOPs
(`maskspine.flops`) and to check which ops a device runs
(tests/modeling/test_gpu_readiness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

#: The attributes through which an op calls functions of the graph's library.
_FUNCTION_ATTRIBUTES = ("f", "body", "cond", "then_branch", "else_branch")


def _live(graph: Any) -> set[int] | None:
    """ids of the ops of `graph` that its outputs, control outputs or a stateful op depend
    on: what TensorFlow's function runtime keeps (it prunes the rest before running); None
    for a graph without outputs (a plain `tf.Graph`: all its ops count)."""
    outputs = getattr(graph, "outputs", None)
    if outputs is None:
        return None
    stack = [tensor.op for tensor in outputs]
    stack += list(getattr(graph, "control_outputs", []))
    stack += [
        op for op in graph.get_operations() if op.op_def is not None and op.op_def.is_stateful
    ]
    live: set[int] = set()
    while stack:
        op = stack.pop()
        if id(op) in live:
            continue
        live.add(id(op))
        stack += [tensor.op for tensor in op.inputs]
        stack += list(op.control_inputs)
    return live


def graph_ops(graph: Any, live_only: bool = False) -> Iterator[Any]:
    """Every op of `graph` (a `tf.Graph`, e.g. a concrete function's `.graph`) and of the
    functions its ops call, depth first; a function called twice is walked once.
    `live_only`: only the ops that run (`_live`), e.g. not a convolution whose output nothing
    uses (a Conv2D whose BatchNorm folds it: `maskspine.modeling.layers.Conv2D`)."""
    seen: set[int] = set()

    def walk(current: Any) -> Iterator[Any]:
        if id(current) in seen:
            return
        seen.add(id(current))
        live = _live(current) if live_only else None
        # The graph's function library (private in TensorFlow; absent, nothing nested).
        functions = getattr(current, "_functions", {})
        for op in current.get_operations():
            if live is not None and id(op) not in live:
                continue
            yield op
            for attribute in _FUNCTION_ATTRIBUTES:
                try:
                    name = op.get_attr(attribute).name
                except (ValueError, AttributeError):
                    continue
                function = functions.get(name)
                if function is not None and hasattr(function, "graph"):
                    yield from walk(function.graph)

    yield from walk(graph)
