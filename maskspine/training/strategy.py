"""Choosing the tf.distribute strategy: a TPU, all GPUs, several workers, or split CPUs."""

from __future__ import annotations

import json
import logging
import os

import tensorflow as tf

from maskspine.errors import TrainingError

logger = logging.getLogger(__name__)


def split_cpu(replicas: int) -> None:
    """Splits the CPU into `replicas` logical devices (before TensorFlow starts its runtime).

    Raises:
        RuntimeError: TensorFlow's devices were already initialised with another split.
    """
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * replicas
        )
    except RuntimeError:
        have = len(tf.config.list_logical_devices("CPU"))
        if have < replicas:
            raise RuntimeError(
                f"TensorFlow already started with {have} CPU device(s); --cpu-replicas {replicas} "
                "must be set before anything runs on TensorFlow"
            ) from None


def workers_in_tf_config() -> int:
    """Number of workers TF_CONFIG names (0 when unset or malformed)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
    except json.JSONDecodeError:
        raise ValueError("TF_CONFIG is set but is not valid JSON") from None
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def tpu_strategy(tpu: str = "") -> tf.distribute.TPUStrategy:
    """`tf.distribute.TPUStrategy` on the TPU `tpu` names (`TPUClusterResolver`: a TPU name, a
    `grpc://` address, or "" for the TPU attached to this machine or named by the
    environment), connected and initialised. Training on it is always compiled (XLA).

    Raises:
        TrainingError: no such TPU is reachable (one line naming it), before anything is built.
    """
    name = tpu or "the local TPU (--tpu '')"
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or None)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, OSError, tf.errors.OpError) as error:
        # OSError: the metadata server that resolves TPU names is not reachable (URLError)
        reason = " ".join(str(getattr(error, "reason", None) or error).split())[:200]
        raise TrainingError(
            f"no TPU found: looked for {name} ({reason}); name a reachable TPU with --tpu NAME "
            "or train without strategy: tpu"
        ) from None
    return tf.distribute.TPUStrategy(resolver)


def choose_strategy(
    cpu_replicas: int = 0, *, kind: str = "auto", tpu: str = ""
) -> tf.distribute.Strategy:
    """The strategy for this machine.

    - `kind` "tpu" (config `strategy: tpu`, `maskspine train --tpu NAME`): `tpu_strategy(tpu)`;
    - `cpu_replicas` > 1: MirroredStrategy over that many logical CPU devices (tests, demos);
    - TF_CONFIG naming several workers: MultiWorkerMirroredStrategy;
    - one or more GPUs: MirroredStrategy over all of them;
    - otherwise the default (one device) strategy.
    """
    if kind == "tpu":
        return tpu_strategy(tpu)
    if cpu_replicas > 1:
        split_cpu(cpu_replicas)
        devices = [d.name for d in tf.config.list_logical_devices("CPU")][:cpu_replicas]
        return tf.distribute.MirroredStrategy(devices)
    if workers_in_tf_config() > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return tf.distribute.MirroredStrategy([d.name for d in gpus])
    return tf.distribute.get_strategy()


def describe(strategy: tf.distribute.Strategy) -> str:
    """e.g. 'MirroredStrategy over 2 replicas (/device:CPU:0, /device:CPU:1)'."""
    if isinstance(strategy, tf.distribute.TPUStrategy):
        name = "TPUStrategy"
    elif isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        name = "MultiWorkerMirroredStrategy"  # its class is CollectiveAllReduceStrategy
    elif isinstance(strategy, tf.distribute.MirroredStrategy):
        name = "MirroredStrategy"
    else:
        return "one device (no distribution)"
    devices = getattr(strategy.extended, "worker_devices", ())
    return f"{name} over {strategy.num_replicas_in_sync} replicas ({', '.join(devices)})"
