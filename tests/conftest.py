"""Shared test set-up: quiet TensorFlow, two logical CPU devices for multi-replica tests,
a tiny model config and hand-made training batches."""

from __future__ import annotations

import contextlib
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# maskspine before TensorFlow, as users import it: it sets what TensorFlow reads when it
# starts (oneDNN's kernels on every CPU, maskspine/__init__.py).
import maskspine  # noqa: E402, F401

# isort: split
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
# RuntimeError: devices already initialised (e.g. a plugin imported TF first)
with contextlib.suppress(RuntimeError):
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )

from model_fixtures import REPO, TINY_OVERRIDES  # noqa: E402


@pytest.fixture
def tiny_config():
    from maskspine.config import load_config

    return load_config(os.path.join(REPO, "configs", "shapes_demo.yaml"), TINY_OVERRIDES)


@pytest.fixture
def inference_config(tiny_config):
    """The tiny config with the category ids of a data set (11, 22, 33) and batches of 2."""
    import dataclasses

    config = dataclasses.replace(tiny_config)
    config.category_ids = [11, 22, 33]
    config.test_batch_size = 2
    return config


# Grappler's graph optimisations take a third of the time of a test that traces a training
# step and change results only by float rounding: tests run without them. The processes the
# tests start (notebook kernels, CLI subprocesses) and every use outside the tests keep them.
tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
