"""Walking a traced TensorFlow graph: every op, the ops of the functions it calls (nested
`tf.function`s, while-loop bodies and conditions, conditional branches) included, each
function once. Used to count FLOPs (`maskspine.flops`) and to check which ops a device runs
(tests/modeling/test_gpu_readiness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

#: The attributes through which an op calls functions of the graph's library.
_FUNCTION_ATTRIBUTES = ("f", "body", "cond", "then_branch", "else_branch")


def graph_ops(graph: Any) -> Iterator[Any]:
    """Every op of `graph` (a `tf.Graph`, e.g. a concrete function's `.graph`) and of the
    functions its ops call, depth first; a function called twice is walked once."""
    seen: set[int] = set()

    def walk(current: Any) -> Iterator[Any]:
        if id(current) in seen:
            return
        seen.add(id(current))
        # The graph's function library (private in TensorFlow; absent, nothing nested).
        functions = getattr(current, "_functions", {})
        for op in current.get_operations():
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
