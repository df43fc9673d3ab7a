"""tf.distribute strategies behind `--distribution_strategy`, and who writes the artifacts.

The strategy must exist before any other TensorFlow op runs (multi-worker and TPU set up the
cluster when they are created), so `train` creates it first.
"""

import json
import os
import tempfile
from typing import Optional

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf


class StrategyError(RuntimeError):
    """The requested strategy cannot run here; the message says why and what to do."""


def get_strategy(name: str, *, num_gpus: Optional[int] = None,
                 tpu: Optional[str] = None) -> tf.distribute.Strategy:
    """Creates the strategy `name`: one_device, mirrored, multi_worker_mirrored or tpu."""
    gpus = tf.config.list_physical_devices("GPU")
    if name == "one_device":
        # The default strategy runs on one device (the first GPU if any). It is used instead
        # of OneDeviceStrategy because Keras' BackupAndRestore, which makes runs resumable,
        # does not support OneDeviceStrategy.
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if num_gpus is not None:
            if num_gpus > len(gpus):
                raise StrategyError(f"--num_gpus={num_gpus} but this machine has {len(gpus)} "
                                    "GPU(s)")
            return tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(num_gpus)]
                                                  or ["/cpu:0"])
        if gpus:
            return tf.distribute.MirroredStrategy()
        # No GPU: mirror over the logical CPU devices (tests configure two of them).
        cpus = tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in cpus])
    if name == "multi_worker_mirrored":
        if "TF_CONFIG" not in os.environ:
            raise StrategyError("multi_worker_mirrored needs the TF_CONFIG environment "
                                "variable describing the cluster and this worker's task")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        return _tpu_strategy(tpu)
    raise StrategyError(f"unknown --distribution_strategy {name!r}")


def _tpu_strategy(tpu: Optional[str]) -> tf.distribute.Strategy:
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError, RuntimeError) as error:
        raise StrategyError(f"no TPU reachable (--tpu={tpu!r}): {error}. Pass --tpu with the "
                            "TPU name or grpc:// address, or pick another "
                            "--distribution_strategy") from error
    return tf.distribute.TPUStrategy(resolver)


def is_chief() -> bool:
    """True unless TF_CONFIG names this process as a non-chief worker.

    In a cluster without an explicit chief, worker 0 is the chief (Keras' convention).
    """
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
    task_type, task_id = task.get("type"), task.get("index", 0)
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in json.loads(os.environ["TF_CONFIG"]).get("cluster", {})
    return task_type == "worker" and task_id == 0 and not has_chief


def writable_dir(path: str) -> str:
    """`path` on the chief; a private scratch directory on other workers.

    All workers must write checkpoints (the save is collective) but only the chief's copy is
    kept, so the others write where they cannot clobber it.
    """
    return path if is_chief() else tempfile.mkdtemp(prefix="bert_tf2_worker_")
