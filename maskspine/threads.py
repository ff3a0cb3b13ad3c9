"""TensorFlow's thread pools: how many threads one op uses (intra-op) and how many ops run
at once (inter-op).

TensorFlow sizes both pools to the host's cores by default. A thin model's training step
(the shapes demo: 16-64 channels at 256x256) runs faster with one thread per op and two ops
at a time on a 2-core host (each op too small to split well, and the step's graph wide enough
to keep both cores busy); a full-size model's step does not (`benchmarks/README.md`,
"Thread pools"). The config keys `intra_op_threads` and `inter_op_threads` set them for
`maskspine train` and `maskspine benchmark --what train`; 0 keeps TensorFlow's default.

The pools can be set only before TensorFlow runs its first op, and hold for the process.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
from collections.abc import Callable
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


def configured_threads() -> tuple[int, int]:
    """(intra-op, inter-op) threads this process asked TensorFlow for; 0 = its default (one
    per core)."""
    import tensorflow as tf

    return (
        tf.config.threading.get_intra_op_parallelism_threads(),
        tf.config.threading.get_inter_op_parallelism_threads(),
    )


def set_threads(intra_op: int = 0, inter_op: int = 0) -> bool:
    """Sizes TensorFlow's thread pools for this process (0 leaves a pool as it is).

    Returns:
        True when the pools are as asked; False when TensorFlow had already started with
        others (they cannot change then): a warning names the setting and what to do.
    """
    import tensorflow as tf

    wanted = {
        "intra_op_threads": (intra_op, tf.config.threading.set_intra_op_parallelism_threads),
        "inter_op_threads": (inter_op, tf.config.threading.set_inter_op_parallelism_threads),
    }
    ok = True
    for key, (count, setter) in wanted.items():
        if count <= 0:
            continue
        try:
            setter(count)
        except RuntimeError:
            ok = False
            intra, inter = configured_threads()
            logger.warning(
                "%s: %d not applied: TensorFlow already runs with its thread pools set "
                "(intra-op %d, inter-op %d); set it before anything runs on TensorFlow (a "
                "fresh process: maskspine train)",
                key,
                count,
                intra,
                inter,
            )
    return ok


def threads_restricted() -> bool:
    """Whether this process asked TensorFlow for other than its default pools."""
    return configured_threads() != (0, 0)


def run_with_default_threads(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)`, run where TensorFlow has its default thread pools: here when this
    process has them, else in a fresh (spawned) process. `function` must be importable
    at module level and its result picklable."""
    if not threads_restricted():
        return function(*args)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(function, *args).result()
