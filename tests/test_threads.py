"""TensorFlow's thread pools (`maskspine.threads`): set before TensorFlow starts, refused
with a warning after, and the host's peaks calibrated with the default pools whatever the
process asked for; `intra_op_threads: auto` by the host's cores (affinity, cgroup quota);
TensorFlow's default pools sized to a CPU quota below the affinity by `import maskspine`.
The checks that set pools run in a fresh Python, since the pools hold per process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from maskspine import threads
from maskspine.config import ConfigError, load_config
from maskspine.threads import host_cores, resolve_intra_op_threads

SCRIPT = textwrap.dedent(
    """
    import logging, sys
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(message)s")
    import tensorflow as tf
    from maskspine.threads import (
        configured_threads, describe_threads, run_with_default_threads, set_threads
    )

    print("before", configured_threads())
    print("set", set_threads(1, 2))
    print("now", configured_threads())
    print("described:", describe_threads(1))
    print("fresh process", run_with_default_threads(configured_threads))
    tf.constant(1.0) + 1.0  # TensorFlow starts
    print("same again", set_threads(1, 2))
    print("other", set_threads(2, 0))
    print("after", configured_threads())
    """
)


def test_pools_are_set_before_tensorflow_starts_and_refused_with_a_warning_after():
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert "before (0, 0)" in lines
    assert "set True" in lines
    assert "now (1, 2)" in lines
    assert "described: 1 per op, 2 ops at once" in lines
    # the calibration's process: TensorFlow's own defaults, not this process's pools
    assert "fresh process (0, 0)" in lines
    assert "same again True" in lines  # asking for what it has is not a change
    assert "other False" in lines
    warning = [line for line in lines if line.startswith("intra_op_threads: 2 not applied")]
    assert warning and "intra-op 1, inter-op 2" in warning[0], run.stdout
    assert "after (1, 2)" in lines


@pytest.mark.parametrize("key", ["intra_op_threads", "inter_op_threads"])
def test_a_negative_thread_count_names_the_key(tmp_path, key):
    path = tmp_path / "config.yaml"
    path.write_text(f"{key}: -1\n")
    with pytest.raises(ConfigError, match=rf"{key} = -1 is out of range"):
        load_config(path)


@pytest.mark.parametrize(("cores", "asked"), [(16, []), (2, [1]), (1, [1])])
def test_set_threads_auto_asks_tensorflow_by_the_host_cores(monkeypatch, caplog, cores, asked):
    """`set_threads("auto")` hands TensorFlow one thread per op on a host of 1 or 2 cores and
    nothing (its default) on 16; recorded in place of TensorFlow's setters, which would
    change this test process's pools."""
    import tensorflow as tf

    calls = []
    monkeypatch.setattr(tf.config.threading, "set_intra_op_parallelism_threads", calls.append)
    monkeypatch.setattr(threads, "host_cores", lambda: cores)
    with caplog.at_level("INFO", logger="maskspine.threads"):
        assert threads.set_threads("auto", 0)
    assert calls == asked
    chosen = "1 per op" if asked else "TensorFlow's default"
    assert f"intra_op_threads auto: {chosen} on {cores} cores" in caplog.text
    # what training's log and the benchmark's header say (this process keeps its pools)
    intra, inter = threads.configured_threads()
    assert threads.describe_threads("auto") == (
        f"{intra or 'default'} per op, {inter or 'default'} ops at once "
        f"(intra_op_threads auto on {cores} cores)"
    )


@pytest.mark.parametrize(
    ("value", "cores", "expected"),
    [
        ("auto", 1, 1),
        ("auto", 2, 1),  # the demo's measured host: one thread per op
        ("auto", 3, 0),  # beyond two cores: TensorFlow's default
        ("auto", 64, 0),
        (0, 2, 0),  # counts as they are, whatever the host
        (3, 64, 3),
    ],
)
def test_resolve_intra_op_threads(value, cores, expected):
    assert resolve_intra_op_threads(value, cores=cores) == expected


@pytest.mark.parametrize("value", ["fast", -1, True, 1.5])
def test_resolve_refuses_what_is_not_a_count_or_auto(value):
    with pytest.raises(ValueError, match="intra_op_threads must be a thread count"):
        resolve_intra_op_threads(value, cores=2)


def test_host_cores_follows_the_affinity_and_a_cpu_quota(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: None)
    assert host_cores() == 3
    assert resolve_intra_op_threads("auto") == 0
    # a container allowed 2 CPUs of a larger machine counts as a 2-core host
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 2)
    assert host_cores() == 2
    assert resolve_intra_op_threads("auto") == 1
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 8)  # more than the affinity
    assert host_cores() == 3


def _fake_root(tmp_path, cgroup_lines: str, files: dict[str, str]):
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text(cgroup_lines)
    for name, text in files.items():
        path = tmp_path / "sys/fs/cgroup" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("cgroup_lines", "files", "expected"),
    [
        # cgroup v2: quota / period, rounded up
        ("0::/job\n", {"job/cpu.max": "150000 100000\n"}, 2),
        ("0::/job\n", {"job/cpu.max": "max 100000\n"}, None),
        ("0::/\n", {"cpu.max": "400000 100000\n"}, 4),
        ("0::/job\n", {"job/cpu.max": "50000 100000\n"}, 1),  # half a CPU: at least one
        # cgroup v1, the cpu controller mounted with cpuacct
        (
            "4:memory:/x\n2:cpu,cpuacct:/docker/abc\n",
            {
                "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "300000\n",
                "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
            },
            3,
        ),
        (
            "2:cpu,cpuacct:/\n",
            {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"},
            None,
        ),
        ("0::/\n", {}, None),  # nothing to read
    ],
)
def test_cgroup_cpu_limit(tmp_path, cgroup_lines, files, expected):
    root = _fake_root(tmp_path, cgroup_lines, files)
    assert threads.cgroup_cpu_limit(root) == expected


def test_config_takes_auto_and_names_the_key_for_another_word(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("intra_op_threads: auto\n")
    assert load_config(path).intra_op_threads == "auto"
    path.write_text("intra_op_threads: fast\n")
    with pytest.raises(ConfigError, match=r"intra_op_threads must be .* or 'auto'.*'fast'"):
        load_config(path)


@pytest.mark.parametrize(
    ("environ", "cores", "limit", "expected_environ", "returned"),
    [
        # a container allowed 2 CPUs of an 8-core affinity: both default pools to 2
        ({}, 8, 2, {"TF_NUM_INTRAOP_THREADS": "2", "TF_NUM_INTEROP_THREADS": "2"}, 2),
        # what the user set is kept, the other pool sized to the quota
        (
            {"TF_NUM_INTRAOP_THREADS": "3"},
            8,
            2,
            {"TF_NUM_INTRAOP_THREADS": "3", "TF_NUM_INTEROP_THREADS": "2"},
            2,
        ),
        ({}, 8, None, {}, None),  # no quota: TensorFlow's defaults
        ({}, 2, 2, {}, None),  # a quota of the whole affinity changes nothing
        ({}, 2, 4, {}, None),  # nor one above it
    ],
)
def test_default_pools_are_sized_to_a_cpu_quota_below_the_affinity(
    environ, cores, limit, expected_environ, returned
):
    environ = dict(environ)
    assert threads.fit_pools_to_cpu_quota(environ, cores=cores, limit=limit) == returned
    assert environ == expected_environ


POOLS_SCRIPT = textwrap.dedent(
    """
    import os
    import maskspine  # before TensorFlow, as users import it
    import tensorflow as tf
    from maskspine.threads import describe_threads

    tf.function(lambda x: tf.matmul(x, x) + 1.0)(tf.ones([64, 64]))  # TensorFlow starts
    names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
    print("inter-op threads:", names.count("tf_Compute"))
    print("python-named threads:", names.count("python"))
    print("environment:", [os.environ.get(n) for n in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")])
    print("described:", describe_threads())
    """
)


def _pools(env: dict[str, str], prefix: list[str] | None = None) -> dict[str, str]:
    """What POOLS_SCRIPT prints, run in a fresh Python with `env` added (and the command
    prefixed by `prefix`)."""
    run = subprocess.run(
        [*(prefix or []), sys.executable, "-c", POOLS_SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
        # the pools' variables only as `env` gives them (not as this process has them)
        env={
            **{k: v for k, v in os.environ.items() if k not in threads.POOL_ENVIRONMENT},
            **env,
        },
    )
    assert run.returncode == 0, run.stderr[-2000:]
    keys = ("inter-op threads", "python-named threads", "environment", "described")
    return dict(line.split(": ", 1) for line in run.stdout.splitlines() if line.startswith(keys))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/task is Linux's")
def test_tensorflow_sizes_its_default_pools_by_the_environment_variables():
    """The mechanism the quota sizing relies on, checked against TensorFlow itself: its
    inter-op pool's threads (named tf_Compute) and its intra-op pool's (the threads named
    python besides the main one and a helper) follow TF_NUM_INTEROP_THREADS and
    TF_NUM_INTRAOP_THREADS when they are set before it starts."""
    one = _pools({"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"})
    more = _pools({"TF_NUM_INTRAOP_THREADS": "4", "TF_NUM_INTEROP_THREADS": "3"})
    assert int(one["inter-op threads"]) == 1
    assert int(more["inter-op threads"]) == 3
    assert int(more["python-named threads"]) - int(one["python-named threads"]) == 3


def _cpu_quota_group(quota_cpus: int):
    """A cgroup v1 `cpu` group holding `quota_cpus` CPUs, or None where this machine gives
    none to make (not root, cgroup v2 only, a read-only /sys/fs/cgroup)."""
    base = "/sys/fs/cgroup/cpu"
    group = os.path.join(base, f"maskspine-test-{os.getpid()}")
    try:
        os.mkdir(group)
    except OSError:
        return None
    try:
        with open(os.path.join(group, "cpu.cfs_period_us"), "w") as f:
            f.write("100000")
        with open(os.path.join(group, "cpu.cfs_quota_us"), "w") as f:
            f.write(str(100000 * quota_cpus))
    except OSError:
        os.rmdir(group)
        return None
    return group


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs at least 2 cores to hold a process to fewer",
)
def test_a_process_held_to_one_cpu_by_a_quota_runs_pools_of_one():
    """`import maskspine` in a process of a 1-CPU cgroup quota on a host of more cores:
    TensorFlow's default pools are one thread each, and the threads' description says why.
    Runs where the test may make a cgroup (root, cgroup v1's cpu controller), as on CI."""
    group = _cpu_quota_group(1)
    if group is None:
        pytest.skip("no cgroup v1 cpu controller to make a quota in")
    try:
        enter = ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh"]
        held = _pools({}, prefix=enter)
        user = _pools({"TF_NUM_INTEROP_THREADS": "2"}, prefix=enter)
    finally:
        os.rmdir(group)
    assert held["environment"] == "['1', '1']"
    assert int(held["inter-op threads"]) == 1
    cores = len(os.sched_getaffinity(0))
    assert held["described"] == (
        "default per op, default ops at once; default pools TF_NUM_INTRAOP_THREADS=1, "
        f"TF_NUM_INTEROP_THREADS=1 (a CPU quota of 1 on {cores} cores)"
    )
    # what the user set stays theirs
    assert user["environment"] == "['1', '2']"
    assert int(user["inter-op threads"]) == 2
    if threads.quota_pools is not None:
        return  # the tests themselves run under a quota: there is no outside to compare
    # outside the quota: TensorFlow's own defaults, one thread per core
    free = _pools({})
    assert free["environment"] == "[None, None]"
    assert int(free["inter-op threads"]) == cores
