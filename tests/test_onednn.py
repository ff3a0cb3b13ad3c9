"""maskspine asks TensorFlow for oneDNN's kernels on every CPU (TensorFlow's own default
turns them on only on CPUs with AVX512-VNNI / AVX512-BF16 / AMX), and keeps a user's choice."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = (
    "import maskspine, tensorflow\n"
    "from tensorflow.python.util import _pywrap_util_port as port\n"
    "print('onednn', port.IsMklEnabled())\n"
)


def _onednn_after_import(setting: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split("onednn", 1)[1].strip()


@pytest.mark.parametrize(("setting", "expected"), [(None, "True"), ("0", "False"), ("1", "True")])
def test_importing_maskspine_before_tensorflow_turns_onednn_on_unless_the_user_says(
    setting, expected
):
    assert _onednn_after_import(setting) == expected
