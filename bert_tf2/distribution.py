"""tf.distribute strategies behind `--distribution_strategy`, batch sizes, and who writes what.

  one_device             the default strategy: one device, the first GPU if there is one
  mirrored               synchronous data parallelism over the local GPUs (all, or --num_gpus);
                         on a machine without GPUs, over its logical CPU devices
  multi_worker_mirrored  the same across machines; the cluster comes from TF_CONFIG
  tpu                    a Cloud TPU (--tpu=NAME or grpc://HOST:PORT) or the local TPU VM;
                         it implies --static_shapes (full batches of a few fixed lengths:
                         `input_pipeline.make_dataset`), which a TPU compiles for

The strategy must exist before any other TensorFlow op runs (multi-worker and TPU set up the
cluster when they are created), so `train` creates it first.

`--batch_size` is the global batch: each optimizer step sees that many examples, split evenly
over the replicas, so it must be a multiple of their number (`per_replica_batch_size`).

In a multi-worker cluster every worker runs the same program and must take part in every
collective (training, evaluation, checkpoint saves), but only the chief keeps what it writes:
the others write TensorBoard logs, history.csv, metrics.json and checkpoints into a private
scratch directory (`writable_dir`) and never export. Keras' BackupAndRestore is the exception:
it is given the shared model_dir on every worker and sorts out itself who writes.

Testing hook: the environment variable BERT_TF2_LOGICAL_CPUS=N splits the CPU into N logical
devices before TensorFlow initialises them, so `mirrored` can be exercised on a machine without
GPUs (it must be set before the process runs any TensorFlow op).
"""

import atexit
import contextlib
import functools
import json
import os
import shutil
import socket
import tempfile
from typing import Optional
from urllib.parse import urlparse

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from absl import logging
import tensorflow as tf
import tf_keras

from bert_tf2 import cli
from bert_tf2.config import STRATEGIES

LOGICAL_CPUS_ENV = "BERT_TF2_LOGICAL_CPUS"
_TPU_PROBE_TIMEOUT_S = 5.0


class StrategyError(cli.UserError, RuntimeError):
    """The requested strategy (or batch split) cannot run here; says why and what to do."""


def get_strategy(name: str, *, num_gpus: Optional[int] = None,
                 tpu: Optional[str] = None) -> tf.distribute.Strategy:
    """Creates the strategy `name`: one_device, mirrored, multi_worker_mirrored or tpu."""
    configure_logical_cpus()
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
        # No GPU: mirror over the logical CPU devices (see BERT_TF2_LOGICAL_CPUS).
        cpus = tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in cpus])
    if name == "multi_worker_mirrored":
        if "TF_CONFIG" not in os.environ:
            raise StrategyError("multi_worker_mirrored needs the TF_CONFIG environment "
                                "variable describing the cluster and this worker's task")
        try:
            json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError as error:
            raise StrategyError(f"TF_CONFIG is not valid JSON: {error}") from error
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        return _tpu_strategy(tpu)
    raise StrategyError(f"unknown --distribution_strategy {name!r}; expected one of "
                        f"{', '.join(STRATEGIES)}")


def configure_logical_cpus() -> None:
    """Splits the CPU into $BERT_TF2_LOGICAL_CPUS logical devices (a testing hook)."""
    count = os.environ.get(LOGICAL_CPUS_ENV)
    if not count:
        return
    try:
        count = int(count)
    except ValueError:
        raise StrategyError(f"{LOGICAL_CPUS_ENV}={count!r}: expected a number") from None
    cpu = tf.config.list_physical_devices("CPU")[0]
    wanted = [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
    if len(tf.config.get_logical_device_configuration(cpu) or [None]) == count:
        return  # Already done (get_strategy was called before in this process).
    try:
        tf.config.set_logical_device_configuration(cpu, wanted)
    except RuntimeError as error:
        raise StrategyError(f"{LOGICAL_CPUS_ENV}={count}: TensorFlow's devices are already "
                            "initialised in this process; set it before the process runs "
                            "any TensorFlow op") from error
    logging.info("CPU split into %d logical devices (%s)", count, LOGICAL_CPUS_ENV)


def _tpu_strategy(tpu: Optional[str]) -> tf.distribute.Strategy:
    """TPUStrategy for `tpu`, failing at once, with what to do, where no TPU can be reached.

    Without --tpu it uses the TPU of this machine (a TPU VM) if there is one. A grpc://
    address is probed first: connecting to an address where nothing listens would otherwise
    wait for minutes.
    """
    if not tpu:
        if not tf.config.list_physical_devices("TPU") and not os.environ.get("TPU_NAME"):
            raise StrategyError(
                "--distribution_strategy=tpu but this machine has no TPU and --tpu is not set. "
                "Pass --tpu with the Cloud TPU's name or grpc://HOST:8470 address, run on a "
                "TPU VM, or pick another --distribution_strategy")
        tpu = os.environ.get("TPU_NAME") or "local"
    if tpu.startswith("grpc://"):
        _probe(tpu)
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        if tpu != "local":
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError, RuntimeError, OSError) as error:
        raise StrategyError(f"no TPU reachable (--tpu={tpu!r}): {error}. Pass --tpu with the "
                            "TPU name or grpc:// address, or pick another "
                            "--distribution_strategy") from error
    return tf.distribute.TPUStrategy(resolver)


def _probe(address: str) -> None:
    parsed = urlparse(address)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 8470),
                                      timeout=_TPU_PROBE_TIMEOUT_S):
            pass
    except (OSError, ValueError) as error:
        raise StrategyError(f"no TPU reachable at --tpu={address!r}: {error}. Check the "
                            "address (grpc://HOST:8470), or pick another "
                            "--distribution_strategy") from error


def per_replica_batch_size(global_batch_size: int, num_replicas: int,
                           flag: str = "--batch_size") -> int:
    """`global_batch_size` / `num_replicas`, or a StrategyError saying which sizes would work."""
    if global_batch_size < num_replicas or global_batch_size % num_replicas:
        lower = max(num_replicas, global_batch_size // num_replicas * num_replicas)
        upper = (global_batch_size // num_replicas + 1) * num_replicas
        options = sorted({lower, upper})
        raise StrategyError(
            f"{flag}={global_batch_size} is the global batch size and must be a multiple of "
            f"the {num_replicas} replicas it is split over (each gets the same share); use "
            f"{' or '.join(map(str, options))}")
    return global_batch_size // num_replicas


def check_precision_policy(policy: str, strategy: tf.distribute.Strategy) -> None:
    """Warns when `policy` is slower than float32 on the hardware the strategy runs on."""
    on_accelerator = bool(tf.config.list_physical_devices("GPU")) or isinstance(
        strategy, tf.distribute.TPUStrategy)
    if policy == "mixed_float16" and not on_accelerator:
        logging.warning("--mixed_precision=mixed_float16 without a GPU: CPUs compute float16 "
                        "slowly; use float32, or mixed_bfloat16 on a CPU with bfloat16 units")
    if policy == "mixed_bfloat16" and not on_accelerator and not cpu_has_bfloat16():
        logging.warning("--mixed_precision=mixed_bfloat16 on a CPU without bfloat16 units "
                        "(AVX512_BF16 or AMX): it is emulated and slower than float32")


@contextlib.contextmanager
def dtype_policy(name: str):
    """The global Keras dtype policy is `name` inside the block and what it was after it.

    For models that must compute in another policy than the run's: the encoder module and the
    export are always float32, whatever --mixed_precision trains in.
    """
    previous = tf_keras.mixed_precision.global_policy()
    tf_keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        tf_keras.mixed_precision.set_global_policy(previous)


@functools.lru_cache(maxsize=None)
def cpu_has_bfloat16() -> bool:
    """Whether this CPU has bfloat16 dot-product units (x86 AVX512_BF16 / AMX, Arm BF16)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            words = set(f.read().split())
    except OSError:
        return False
    return bool(words & {"avx512_bf16", "amx_bf16", "bf16"})


def is_chief() -> bool:
    """True unless TF_CONFIG names this process as a non-chief worker.

    In a cluster without an explicit chief, worker 0 is the chief (Keras' convention).
    """
    config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task = config.get("task", {})
    task_type, task_id = task.get("type"), task.get("index", 0)
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in config.get("cluster", {})
    return task_type == "worker" and task_id == 0 and not has_chief


def writable_dir(path: str) -> str:
    """`path` on the chief; a private scratch directory on other workers.

    All workers must write checkpoints (the save is collective) but only the chief's copy is
    kept, so the others write where they cannot clobber it. The scratch directory is removed
    when the process exits.
    """
    if is_chief():
        return path
    scratch = tempfile.mkdtemp(prefix="bert_tf2_worker_")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    logging.info("Not the chief: writing %s's files to the scratch directory %s", path, scratch)
    return scratch
