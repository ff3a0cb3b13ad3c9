"""The console script's filter of TensorFlow's native log lines (`cli/native_logs.py`)."""

from __future__ import annotations

import os
import subprocess
import sys

from maskspine.cli import native_logs

NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796015074.138626    6109 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.",
    "I0000 00:00:1796014867.896656    4374 cpu_feature_guard.cc:227] This TensorFlow binary is "
    "optimized to use available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow "
    "with the appropriate compiler flags.",
    "E0000 00:00:1796015074.138626    6109 op_level_cost_estimator.cc:699] Error in "
    'PredictCost() for the op: op: "CropAndResize" attr { key: "T" value { type: DT_FLOAT } }',
]
KEPT = [
    "E0000 00:00:1796015074.138626    6109 some_kernel.cc:12] Out of memory while allocating",
    "W0000 00:00:1796015074.138626    6109 allocator.cc:5] Allocation of 9999 exceeds 10%",
    "F0000 00:00:1796015074.138626    6109 check.cc:1] Check failed: x == y",
    "Traceback (most recent call last):",
    "error: something the user should read",
]


def test_noise_lines_are_dropped_and_real_messages_kept():
    assert all(native_logs.is_noise(line) for line in NOISE)
    assert not any(native_logs.is_noise(line) for line in KEPT)


def test_verbose_or_the_environment_variable_turn_the_filter_off(monkeypatch):
    monkeypatch.delenv(native_logs.ENV_VARIABLE, raising=False)
    assert native_logs.wanted(["train", "x.yaml"])
    assert not native_logs.wanted(["--verbose", "train", "x.yaml"])
    monkeypatch.setenv(native_logs.ENV_VARIABLE, "1")
    assert not native_logs.wanted(["train", "x.yaml"])


def test_a_process_with_the_filter_shows_only_what_matters():
    # TensorFlow imported and run in a fresh process whose descriptor 2 goes through the
    # filter; a real native error line and Python's stderr still come through.
    script = (
        "import os, sys\n"
        "from maskspine.cli import native_logs\n"
        "native_logs.install()\n"
        "import tensorflow as tf\n"
        "tf.constant(1.0) + 1.0\n"
        f"os.write(2, {KEPT[0]!r}.encode() + b'\\n')\n"
        f"os.write(2, {NOISE[-1]!r}.encode() + b'\\n')\n"
        "print('error: from python', file=sys.stderr)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_CPP", "MASKSPINE_TF"))}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert KEPT[0] in lines and "error: from python" in lines
    assert not [line for line in lines if native_logs.is_noise(line)], lines
    assert "absl::InitializeLog" not in done.stderr and "cudart_stub" not in done.stderr
