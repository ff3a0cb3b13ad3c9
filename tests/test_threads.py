"""TensorFlow's thread pools (`maskspine.threads`): set before TensorFlow starts, refused
with a warning after, and the host's peaks calibrated with the default pools whatever the
process asked for. Each check runs in a fresh Python, since the pools hold per process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from maskspine.config import ConfigError, load_config

SCRIPT = textwrap.dedent(
    """
    import logging, sys
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(message)s")
    import tensorflow as tf
    from maskspine.threads import configured_threads, run_with_default_threads, set_threads

    print("before", configured_threads())
    print("set", set_threads(1, 2))
    print("now", configured_threads())
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
