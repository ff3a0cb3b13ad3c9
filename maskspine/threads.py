"""TensorFlow's thread pools: how many threads one op uses (intra-op) and how many ops run
at once (inter-op).

TensorFlow sizes both pools to the host's cores by default. A thin model's training step
(the shapes demo: 16-64 channels at 256x256) runs faster with one thread per op and two ops
at a time on a 2-core host (each op too small to split well, and the step's graph wide enough
to keep both cores busy); a full-size model's step does not (`benchmarks/README.md`,
"Thread pools"). The config keys `intra_op_threads` and `inter_op_threads` set them for
`maskspine train` and `maskspine benchmark --what train`; 0 keeps TensorFlow's default.

`intra_op_threads: auto` (the demo's) is one thread per op on a host of at most
`AUTO_ONE_THREAD_MAX_CORES` cores (`host_cores`: the CPU affinity, or a container's CPU quota
where it allows fewer) and TensorFlow's default on a larger one: the demo's step
keeps about two ops running at a time whatever the inter-op pool (`benchmarks/op_profile.py`,
mean 1.95-2.07 ops in flight with 8 or 16 inter-op threads), so with one thread per op it
would leave every core beyond about two idle.

The pools can be set only before TensorFlow runs its first op, and hold for the process.

TensorFlow sizes its default pools by the CPU affinity, not by a container's CPU quota
(Docker `--cpus`, a Kubernetes CPU limit): under a quota of fewer CPUs than the affinity it
starts more threads than it may run and the kernel throttles them. `import maskspine`
therefore sizes the default pools to the quota there (`fit_pools_to_cpu_quota`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: `intra_op_threads: auto` is one thread per op on hosts with at most this many cores.
AUTO_ONE_THREAD_MAX_CORES = 2

#: The environment variables TensorFlow sizes its default intra-op and inter-op pools by
#: (read when it starts; unset: one thread per core of the CPU affinity).
POOL_ENVIRONMENT = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")

#: The CPUs `fit_pools_to_cpu_quota` sized this process's default pools to, or None.
quota_pools: int | None = None

#: `fit_pools_to_cpu_quota`'s default `limit`: read the quota from the system.
_READ: Any = object()


def affinity_cores() -> int:
    """The cores of this process's CPU affinity (as TensorFlow counts cores for its default
    pools; `os.cpu_count()` where the platform has no affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def host_cores() -> int:
    """The cores this process may run on: `affinity_cores()`, or fewer where a container's
    CPU quota allows fewer (`cgroup_cpu_limit`)."""
    cores = affinity_cores()
    limit = cgroup_cpu_limit()
    return min(cores, limit) if limit is not None else cores


def cgroup_cpu_limit(root: str | Path = "/") -> int | None:
    """The CPUs a cgroup quota allows this process (quota / period, rounded up), or None
    where no quota is set or none can be read. cgroup v2: `cpu.max` ("max 100000" or
    "200000 100000") of the process's group, then of the root; v1: `cpu.cfs_quota_us`
    (-1: none) over `cpu.cfs_period_us` in the `cpu` hierarchy. `root`: the file system
    root to read under (tests)."""
    root = Path(root)
    groups: dict[str, str] = {}  # controller ("" for v2) -> the process's group path
    try:
        for line in (root / "proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(","):
                groups[controller] = path.lstrip("/")
    except (OSError, ValueError):
        pass
    cgroup = root / "sys/fs/cgroup"
    for base in ([groups[""]] if "" in groups else []) + [""]:  # v2
        try:
            quota, period = (cgroup / base / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else _quota_cpus(quota, period)
        except (OSError, ValueError, ZeroDivisionError):
            continue
    for folder in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):  # v1
        for base in ([groups["cpu"]] if "cpu" in groups else []) + [""]:
            directory = cgroup / folder / base
            try:
                quota = (directory / "cpu.cfs_quota_us").read_text().strip()
                period = (directory / "cpu.cfs_period_us").read_text().strip()
                return None if int(quota) < 0 else _quota_cpus(quota, period)
            except (OSError, ValueError, ZeroDivisionError):
                continue
    return None


def _quota_cpus(quota: str, period: str) -> int:
    """CPUs of a cgroup quota (microseconds per period), rounded up, at least 1."""
    return max(1, math.ceil(int(quota) / int(period)))


def fit_pools_to_cpu_quota(
    environ: MutableMapping[str, str] | None = None,
    *,
    cores: int | None = None,
    limit: int | None = _READ,
) -> int | None:
    """Sizes TensorFlow's default pools to a container's CPU quota where it allows fewer
    CPUs than the affinity: sets `POOL_ENVIRONMENT` to the quota's CPUs, each variable only
    where the user has not set it. `import maskspine` calls it, before TensorFlow starts.

    TensorFlow counts the affinity's cores for its default pools, so under a quota (Docker
    `--cpus`, a Kubernetes CPU limit) it runs one thread per affinity core for each op, and as
    many ops at once, on fewer CPUs (`benchmarks/README.md`, "Thread pools under a CPU
    quota").

    Args:
        environ: the environment to set (default `os.environ`).
        cores: the affinity's cores (default `affinity_cores()`).
        limit: the quota's CPUs, None for no quota (default `cgroup_cpu_limit()`).

    Returns:
        The quota's CPUs where the quota is below the affinity, else None.
    """
    global quota_pools
    cores = affinity_cores() if cores is None else cores
    limit = cgroup_cpu_limit() if limit is _READ else limit
    if limit is None or limit >= cores:
        return None
    target = os.environ if environ is None else environ
    for name in POOL_ENVIRONMENT:
        target.setdefault(name, str(limit))
    if environ is None:
        quota_pools = limit
    return limit


def resolve_intra_op_threads(value: int | str, cores: int | None = None) -> int:
    """The intra-op thread count of the config value `intra_op_threads`: an int as it is (0:
    TensorFlow's default), "auto" 1 on a host of at most `AUTO_ONE_THREAD_MAX_CORES` cores
    (`cores`, default `host_cores()`), else 0.

    Raises:
        ValueError: for another string or a negative count.
    """
    if value == "auto":
        cores = host_cores() if cores is None else cores
        return 1 if cores <= AUTO_ONE_THREAD_MAX_CORES else 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"intra_op_threads must be a thread count >= 0 (0: TensorFlow's default) or "
            f"'auto', got {value!r}"
        )
    return value


def configured_threads() -> tuple[int, int]:
    """(intra-op, inter-op) threads this process asked TensorFlow for; 0 = its default (one
    per core)."""
    import tensorflow as tf

    return (
        tf.config.threading.get_intra_op_parallelism_threads(),
        tf.config.threading.get_inter_op_parallelism_threads(),
    )


def set_threads(intra_op: int | str = 0, inter_op: int = 0) -> bool:
    """Sizes TensorFlow's thread pools for this process (0 leaves a pool as it is;
    `intra_op` "auto": `resolve_intra_op_threads`).

    Returns:
        True when the pools are as asked; False when TensorFlow had already started with
        others (they cannot change then): a warning names the setting and what to do.
    """
    import tensorflow as tf

    if intra_op == "auto":
        cores = host_cores()
        intra_op = resolve_intra_op_threads(intra_op, cores)
        logger.info(
            "intra_op_threads auto: %s on %d cores",
            "1 per op" if intra_op else "TensorFlow's default",
            cores,
        )
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


def describe_threads(intra_op_setting: int | str = 0) -> str:
    """The pools in effect as "1 per op, default ops at once", with
    " (intra_op_threads auto on N cores)" where the config asked for "auto", and the default
    pools' sizes where `fit_pools_to_cpu_quota` set them."""
    intra, inter = configured_threads()
    text = f"{intra or 'default'} per op, {inter or 'default'} ops at once"
    if intra_op_setting == "auto":
        text += f" (intra_op_threads auto on {host_cores()} cores)"
    if quota_pools is not None:
        sizes = ", ".join(f"{name}={os.environ.get(name)}" for name in POOL_ENVIRONMENT)
        text += (
            f"; default pools {sizes} (a CPU quota of {quota_pools} on {affinity_cores()} cores)"
        )
    return text


def threads_restricted() -> bool:
    """Whether this process asked TensorFlow for other than its default pools."""
    return configured_threads() != (0, 0)


def run_with_default_threads(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)`, run where TensorFlow has its default thread pools: here when this
    process has them, else in a fresh (spawned) process. `function` must be importable
    at module level and its result picklable."""
    if not threads_restricted():
        return function(*args)
    # here, not at the top: `import maskspine` imports this module, and these two cost
    # about 15 ms of that import
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(function, *args).result()
