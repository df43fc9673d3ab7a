"""Scale and speed: strategies, global vs per-replica batches, XLA, length bucketing.

The strategies are exercised on the CPU. Mirrored needs two devices, which TensorFlow can only
be given before it initialises them, so those runs go through the CLI in a subprocess with
BERT_TF2_LOGICAL_CPUS=2; multi-worker runs two CLI processes on loopback ports. Every
subprocess has a timeout and trains the tiny modules for a few steps on a few examples.
"""

import collections
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import bert_tf2  # noqa: F401
import numpy as np
import pytest

from bert_tf2 import crash_safety, data, distribution, input_pipeline
from tests import task_data
from tests.conftest import REPO_ROOT
from tests.tiny_fixtures import corpus_data_flags, tiny_train_args, train_config

SUBPROCESS_TIMEOUT_S = 300


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_data(tmp_path_factory, corpus_splits):
    """Small train/dev/test JSONL files (128/64/64 rows) from the built-in corpus."""
    return corpus_data_flags(tmp_path_factory.mktemp("small_data"), corpus_splits,
                             {"train": 128, "dev": 64, "test": 64}, stride=5)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_train(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                **env) -> subprocess.Popen:
    """`python -m bert_tf2.train ARGS` in the background, with `env` added to the environment."""
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("TF_CONFIG", distribution.LOGICAL_CPUS_ENV)}
    environment.update({"TF_CPP_MIN_LOG_LEVEL": "2", **env})
    return subprocess.Popen([sys.executable, "-m", "bert_tf2.train", *map(str, args)],
                            cwd=REPO_ROOT, env=environment, stdout=stdout, stderr=stderr,
                            text=True)


def finish(process: subprocess.Popen, timeout: float = SUBPROCESS_TIMEOUT_S):
    """Waits for `process` (killing it after `timeout`); returns (returncode, stdout, stderr)."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        pytest.fail(f"bert_tf2.train did not finish in {timeout} s:\n{stderr[-3000:]}")
    return process.returncode, stdout, stderr


def finish_ok(process: subprocess.Popen) -> str:
    returncode, stdout, stderr = finish(process)
    assert returncode == 0, stderr[-5000:]
    return stderr


def read_metrics(model_dir: pathlib.Path):
    return json.loads((model_dir / "metrics.json").read_text())


def serve(saved_model, texts) -> np.ndarray:
    """The export's probabilities of `texts`."""
    return task_data.serve(str(saved_model), text=list(texts))[1]["probability"]


# ---------------------------------------------------------------------------------------------
# Strategy factory, batch sizes, chief
# ---------------------------------------------------------------------------------------------

def test_global_batch_size_must_divide_by_replicas():
    assert distribution.per_replica_batch_size(32, 1) == 32
    assert distribution.per_replica_batch_size(32, 4) == 8
    with pytest.raises(distribution.StrategyError,
                       match=r"--batch_size=10 is the global batch size .* 4 replicas .* use 8 "
                             r"or 12"):
        distribution.per_replica_batch_size(10, 4)
    with pytest.raises(distribution.StrategyError, match="--eval_batch_size=3 .* use 8"):
        distribution.per_replica_batch_size(3, 8, "--eval_batch_size")


def test_tpu_without_a_tpu_fails_at_once_with_what_to_do():
    start = time.monotonic()
    with pytest.raises(distribution.StrategyError, match="no TPU and --tpu is not set"):
        distribution.get_strategy("tpu")
    with pytest.raises(distribution.StrategyError,
                       match=r"no TPU reachable at --tpu='grpc://127\.0\.0\.1:\d+'"):
        distribution.get_strategy("tpu", tpu=f"grpc://127.0.0.1:{free_port()}")
    assert time.monotonic() - start < 20


def test_unknown_strategy_and_multi_worker_without_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(distribution.StrategyError, match="TF_CONFIG"):
        distribution.get_strategy("multi_worker_mirrored")
    with pytest.raises(distribution.StrategyError, match="unknown --distribution_strategy"):
        distribution.get_strategy("parameter_server")


@pytest.mark.parametrize("cluster, task, chief", [
    (None, None, True),
    ({"worker": ["a:1", "b:1"]}, {"type": "worker", "index": 0}, True),
    ({"worker": ["a:1", "b:1"]}, {"type": "worker", "index": 1}, False),
    ({"chief": ["c:1"], "worker": ["a:1"]}, {"type": "chief", "index": 0}, True),
    ({"chief": ["c:1"], "worker": ["a:1"]}, {"type": "worker", "index": 0}, False),
])
def test_only_the_chief_keeps_files(monkeypatch, tmp_path, cluster, task, chief):
    if cluster is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))
    assert distribution.is_chief() is chief
    written = distribution.writable_dir(str(tmp_path / "model"))
    assert (written == str(tmp_path / "model")) is chief
    if not chief:
        assert os.path.isdir(written) and not written.startswith(str(tmp_path))


# ---------------------------------------------------------------------------------------------
# Length bucketing
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_preprocessor(tiny_hub_modules):
    from bert_tf2 import model
    return model.load_preprocessor(tiny_hub_modules.preprocess)


def _lengths(tiny_preprocessor, texts):
    import tensorflow as tf
    tokens = tiny_preprocessor.tokenize(tf.constant(texts))
    return tokens.merge_dims(-2, -1).row_lengths().numpy() + 2


def test_length_buckets_end_at_seq_length():
    assert input_pipeline.length_buckets(128) == (16, 32, 48, 64, 96, 128)
    assert input_pipeline.length_buckets(100) == (16, 32, 48, 64, 96, 100)
    assert input_pipeline.length_buckets(512)[-1] == 512
    assert input_pipeline.length_buckets(8) == (8,)


def test_bucketed_evaluation_keeps_every_example_once(corpus_splits, tiny_preprocessor):
    examples = data.Examples(corpus_splits["dev"].texts[:300], corpus_splits["dev"].labels[:300],
                             "dev")
    seq_length = 128
    lengths = dict(zip(examples.texts, np.minimum(_lengths(tiny_preprocessor, examples.texts),
                                                  seq_length)))
    buckets = input_pipeline.length_buckets(seq_length)
    seen, padded, unbucketed_padded = [], 0, 0
    for inputs, labels in input_pipeline.make_dataset(examples, batch_size=32,
                                            preprocessor=tiny_preprocessor,
                                            seq_length=seq_length, training=False,
                                            bucket_by_length=True):
        mask = inputs["input_mask"].numpy()
        batch_lengths = mask.sum(axis=1)
        # One bucket per batch, padded to its longest member.
        assert mask.shape[1] == batch_lengths.max()
        bucket_ids = {int(np.searchsorted(buckets, n)) for n in batch_lengths}
        assert len(bucket_ids) == 1, batch_lengths
        seen.extend(zip(batch_lengths.tolist(), labels.numpy().tolist()))
        padded += mask.size
    expected = sorted((int(lengths[t]), y) for t, y in zip(examples.texts, examples.labels))
    assert sorted(seen) == expected  # every example exactly once, with its label
    for inputs, _ in input_pipeline.make_dataset(examples, batch_size=32,
                                                 preprocessor=tiny_preprocessor,
                                                 seq_length=seq_length, training=False):
        unbucketed_padded += inputs["input_mask"].numpy().size
    assert padded < 0.6 * unbucketed_padded


def test_bucketed_training_batches_are_full_and_shuffled(corpus_splits, tiny_preprocessor):
    examples = corpus_splits["train"]
    dataset = input_pipeline.make_dataset(examples, batch_size=16, preprocessor=tiny_preprocessor,
                                seq_length=64, training=True, seed=3, bucket_by_length=True)
    widths = collections.Counter()
    first = None
    for inputs, labels in dataset.take(60):
        assert labels.shape == (16,)
        widths[inputs["input_word_ids"].shape[1]] += 1
        if first is None:
            first = inputs["input_word_ids"].numpy()
    assert len(widths) > 3  # short and long batches
    again = next(iter(input_pipeline.make_dataset(
        examples, batch_size=16, preprocessor=tiny_preprocessor, seq_length=64, training=True,
        seed=4, bucket_by_length=True)))
    assert not np.array_equal(first, again[0]["input_word_ids"].numpy()) or (
        first.shape != again[0]["input_word_ids"].shape)


def test_pad_to_bucket_boundary_gives_few_shapes(corpus_splits, tiny_preprocessor):
    examples = data.Examples(corpus_splits["dev"].texts[:300], corpus_splits["dev"].labels[:300],
                             "dev")
    for bucket in (True, False):
        widths = {inputs["input_word_ids"].shape[1]
                  for inputs, _ in input_pipeline.make_dataset(
                      examples, batch_size=16, preprocessor=tiny_preprocessor, seq_length=100,
                      training=False, bucket_by_length=bucket, pad_to_bucket_boundary=True)}
        assert widths <= set(input_pipeline.length_buckets(100)), widths


def test_skip_batches_with_bucketing_resumes_the_same_stream(corpus_splits, tiny_preprocessor):
    examples = corpus_splits["train"]

    def batches(skip):
        dataset = input_pipeline.make_dataset(
            examples, batch_size=8, preprocessor=tiny_preprocessor, seq_length=64,
            training=True, seed=5, bucket_by_length=True, skip_batches=skip)
        return [inputs["input_word_ids"].numpy() for inputs, _ in dataset.take(6)]

    full, resumed = batches(0), batches(3)
    for a, b in zip(full[3:], resumed):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# XLA and steps_per_execution (in process, a couple of steps)
# ---------------------------------------------------------------------------------------------

def test_jit_compile_and_steps_per_execution_run_on_cpu(tiny_hub_modules, small_data, tmp_path,
                                                        monkeypatch):
    from bert_tf2 import train
    # --seq_length=16: one length bucket, so one shape to compile (XLA on the CPU takes
    # seconds per program). LLVM's optimization level only changes how fast the compiled code
    # runs, not what it computes, and level 0 compiles far faster. (XLA reads its flags once per
    # process, at its first compilation; this file holds the only XLA test.)
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
    result = train.run(train_config(
        *tiny_train_args(tiny_hub_modules, tmp_path / "model", ""), *small_data,
        "--jit_compile", "--steps_per_execution=2", "--train_steps=4", "--eval_batch_size=32",
        "--seq_length=16"))
    assert result.config.input.pad_to_bucket_boundary, "XLA implies few shapes"
    classifier, metrics = result.classifier, result.metrics
    assert classifier._jit_compile is True
    assert int(classifier._steps_per_execution.numpy()) == 2
    assert int(classifier.optimizer.iterations) == 4
    assert all(np.isfinite(values["loss"]) for values in metrics.values())
    # Validation still ran at the epoch end (one batch per execution) and was logged.
    header = (tmp_path / "model" / "history.csv").read_text().splitlines()[0].split(",")
    assert {"loss", "val_loss", "val_accuracy", "val_auc"} <= set(header)


# ---------------------------------------------------------------------------------------------
# Mirrored over two logical CPUs, against one device (subprocesses)
# ---------------------------------------------------------------------------------------------

# -1 fine-tunes everything; 0 trains the head alone on pooled outputs, which each replica
# computes for its share of the batches. With length buckets (the default) and
# --static_shapes, on the first.
@pytest.mark.parametrize("trainable_encoder_layers, extra", [(-1, "--static_shapes"),
                                                             (0, "--nostatic_shapes")])
def test_mirrored_on_two_cpus_scores_every_example_once_as_its_export_does(
        dropout_free_modules, small_data, tmp_path, trainable_encoder_layers, extra):
    # 64 evaluation rows in length buckets, in batches of 20 (10 a replica): each bucket's
    # last batch is short, and a step may leave one replica none.
    model_dir, export_dir = tmp_path / "model", tmp_path / "export"
    log = finish_ok(start_train(
        tiny_train_args(dropout_free_modules, model_dir, export_dir, *small_data,
                        "--dropout=0", "--eval_batch_size=20", extra,
                        f"--trainable_encoder_layers={trainable_encoder_layers}",
                        "--distribution_strategy=mirrored"),
        **{distribution.LOGICAL_CPUS_ENV: "2"}))
    assert "Strategy mirrored with 2 replica(s)" in log
    assert ("Frozen encoder: pooled outputs" in log) == (trainable_encoder_layers == 0)
    assert os.listdir(export_dir) == ["1"]
    metrics = read_metrics(model_dir)
    for split, flag in (("dev", "--eval_data="), ("test", "--test_data=")):
        path = next(f[len(flag):] for f in small_data if f.startswith(flag))
        rows = [json.loads(line) for line in open(path, encoding="utf-8")]
        assert metrics[split]["examples"] == len(rows) == 64
        assert f"{split}: 64 examples" in log
        expected = binary_metrics([row["label"] for row in rows],
                                  serve(export_dir / "1", [row["text"] for row in rows]))
        for name, value in expected.items():
            assert metrics[split][name] == pytest.approx(value, abs=1e-5), (split, name)


def test_mirrored_on_two_cpus_trains_the_model_one_device_does(dropout_free_modules, small_data,
                                                               corpus_splits, tmp_path):
    from bert_tf2 import train
    # Without length buckets the two see the same examples at every step, so the mirrored run
    # (gradients summed over the replicas, then clipped) trains the very model one device does.
    common = [*small_data, "--dropout=0", "--eval_batch_size=20", "--nobucket_by_length"]
    mirrored = start_train(
        tiny_train_args(dropout_free_modules, tmp_path / "mirrored" / "model",
                        tmp_path / "mirrored" / "export", *common,
                        "--distribution_strategy=mirrored"),
        **{distribution.LOGICAL_CPUS_ENV: "2"})
    # The one-device baseline runs here meanwhile.
    try:
        one = train.run(train_config(*tiny_train_args(
            dropout_free_modules, tmp_path / "one" / "model", tmp_path / "one" / "export",
            *common)))
    except BaseException:
        mirrored.kill()
        raise
    assert "Strategy mirrored with 2 replica(s)" in finish_ok(mirrored)
    texts = corpus_splits["dev"].texts[:200]
    np.testing.assert_allclose(serve(tmp_path / "mirrored" / "export" / "1", texts),
                               serve(one.export_path, texts), rtol=0, atol=1e-5)
    one_metrics = read_metrics(tmp_path / "one" / "model")
    mirrored_metrics = read_metrics(tmp_path / "mirrored" / "model")
    for split in ("dev", "test"):
        for name in ("loss", "accuracy", "auc", "examples"):
            assert mirrored_metrics[split][name] == pytest.approx(one_metrics[split][name],
                                                                  abs=1e-5), (split, name)


def binary_metrics(labels, probabilities):
    """Keras' loss, accuracy and AUC of `probabilities` (the export's P(positive))."""
    import tf_keras
    labels = np.asarray(labels, np.float32)[:, None]
    probabilities = np.asarray(probabilities, np.float32).reshape(-1, 1)
    return {"loss": float(tf_keras.losses.BinaryCrossentropy()(labels, probabilities)),
            "accuracy": float(tf_keras.metrics.BinaryAccuracy()(labels, probabilities)),
            "auc": float(tf_keras.metrics.AUC()(labels, probabilities))}


# Two optimizer steps from per-replica gradients; one device gets their sums. Clipping each
# replica's share (to norm 1) before the sum would give other weights.
_CLIPPED_STEPS = """
import json
import bert_tf2
import tensorflow as tf
from bert_tf2 import config, distribution, train

STEPS = ([[10.0, 0.0, 0.0], [0.0, 0.1, 0.0]], [[0.0, 0.0, 10.0], [0.1, 0.1, 0.0]])

def weights_after(name):
    strategy = distribution.get_strategy(name)
    with strategy.scope():
        weights = tf.Variable([1.0, 1.0, 1.0])
        optimizer = train.create_optimizer(config.OptimizerConfig(
            learning_rate=0.1, warmup_fraction=0.0, weight_decay=0.0), total_steps=10)
    replicas = strategy.num_replicas_in_sync
    for gradients in STEPS:
        def step():
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            mine = tf.gather(tf.constant(gradients), tf.range(replica, 2, replicas))
            optimizer.apply_gradients([(tf.reduce_sum(mine, axis=0), weights)])
        strategy.run(tf.function(step))
    return weights.numpy().tolist()

print(json.dumps([weights_after(name) for name in ("one_device", "mirrored")]))
"""


def test_gradients_are_clipped_once_summed_over_the_replicas():
    env = {**os.environ, distribution.LOGICAL_CPUS_ENV: "2", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-c", _CLIPPED_STEPS], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    one_device, mirrored = json.loads(result.stdout.strip().splitlines()[-1])
    assert one_device != [1.0, 1.0, 1.0]
    np.testing.assert_allclose(mirrored, one_device, rtol=0, atol=1e-7)


@pytest.mark.slow
def test_mirrored_on_two_cpus_trains_the_top_layer_of_a_rebuilt_encoder(tiny_hub_modules,
                                                                        small_data, tmp_path):
    # --trainable_encoder_layers=N rebuilds the encoder (as a mixed policy does): the rebuilt
    # one is checked against the module, loaded under the strategy with mirrored variables.
    process = start_train(
        tiny_train_args(tiny_hub_modules, tmp_path / "model", tmp_path / "export", *small_data,
                        "--trainable_encoder_layers=1", "--distribution_strategy=mirrored"),
        **{distribution.LOGICAL_CPUS_ENV: "2"})
    log = finish_ok(process)
    assert "Strategy mirrored with 2 replica(s)" in log
    assert "Rebuilt encoder matches the module" in log
    assert os.listdir(tmp_path / "export") == ["1"]
    assert np.isfinite(read_metrics(tmp_path / "model")["test"]["loss"])


@pytest.mark.slow
def test_batch_size_that_does_not_split_over_replicas_is_a_one_line_error(tmp_path):
    process = start_train(["--distribution_strategy=mirrored", "--batch_size=15",
                           f"--model_dir={tmp_path}"],
                          **{distribution.LOGICAL_CPUS_ENV: "2"})
    returncode, _, stderr = finish(process, timeout=120)
    assert returncode == 1
    assert stderr.strip().splitlines()[-1].startswith(
        "train: --batch_size=15 is the global batch size and must be a multiple of the 2 "
        "replicas"), stderr[-2000:]


@pytest.mark.slow
def test_tpu_cli_fails_at_once_with_a_one_line_error(tmp_path):
    start = time.monotonic()
    returncode, _, stderr = finish(start_train(["--distribution_strategy=tpu",
                                                f"--model_dir={tmp_path}"]), timeout=120)
    assert returncode == 1
    assert "train: --distribution_strategy=tpu but this machine has no TPU" in stderr
    assert "Traceback" not in stderr
    assert time.monotonic() - start < 60


# ---------------------------------------------------------------------------------------------
# Multi-worker: two processes on loopback ports
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("streamed", [False, True], ids=["in_memory", "data_cache"])
def test_multi_worker_trains_and_only_the_chief_writes(streamed, tiny_hub_modules, small_data,
                                                       tmp_path):
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    model_dir, export_dir = tmp_path / "model", tmp_path / "export"
    # Dev data, not test data: one collective evaluation shows it as well as two. Its 64 rows,
    # 32 a worker, in length buckets and batches of 10 a replica: the workers' last steps
    # differ, and one of them gets none.
    args = tiny_train_args(tiny_hub_modules, model_dir, export_dir,
                           *[flag for flag in small_data if not flag.startswith("--test_data=")],
                           "--distribution_strategy=multi_worker_mirrored", "--eval_batch_size=20",
                           # Both workers prepare the same shards; one preparation is kept,
                           # and each worker streams its own 4 of the 8 shards.
                           *([f"--data_cache={tmp_path / 'cache'}"] if streamed else []))
    workers = [start_train(args,
                           TF_CONFIG=json.dumps({"cluster": cluster,
                                                 "task": {"type": "worker", "index": index}}))
               for index in range(2)]
    logs = [finish_ok(worker) for worker in workers]
    assert all("Strategy multi_worker_mirrored with 2 replica(s)" in log for log in logs)
    assert "Not the chief" in logs[1] and "Not the chief" not in logs[0]
    assert "Exported SavedModel" in logs[0] and "Exported SavedModel" not in logs[1]
    assert os.listdir(export_dir) == ["1"]
    assert {"metrics.json", "history.csv", "logs", "checkpoints"} <= set(os.listdir(model_dir))
    assert not list(model_dir.rglob("workertemp_*")), "a worker's scratch was left behind"
    metrics = read_metrics(model_dir)
    assert 0.0 <= metrics["dev"]["accuracy"] <= 1.0 and np.isfinite(metrics["dev"]["loss"])
    assert metrics["dev"]["examples"] == 64 and all("dev: 64 examples" in log for log in logs)
    assert all(("streamed from 8 shards" in log) == streamed for log in logs)


def _start_worker(args, cluster, index, log_prefix: pathlib.Path) -> subprocess.Popen:
    """Worker `index` of `cluster` running `bert_tf2.train ARGS`, its stdout and stderr
    written (unbuffered) to LOG_PREFIX.out and LOG_PREFIX.err."""
    with open(f"{log_prefix}.out", "w") as out, open(f"{log_prefix}.err", "w") as err:
        return start_train(args, stdout=out, stderr=err, PYTHONUNBUFFERED="1",
                           TF_CONFIG=json.dumps({"cluster": cluster,
                                                 "task": {"type": "worker", "index": index}}))


def _run_cluster(args, cluster, log_dir: pathlib.Path, name: str, until=None):
    """Runs both workers to their end; with `until` (some text), sends SIGTERM to worker 1
    once its progress output shows that line. Returns [(returncode, stderr)] by worker."""
    prefixes = [log_dir / f"{name}-{index}" for index in range(2)]
    workers = [_start_worker(args, cluster, index, prefix)
               for index, prefix in enumerate(prefixes)]
    try:
        if until:
            progress, deadline = pathlib.Path(f"{prefixes[1]}.out"), time.monotonic() + 120
            while until not in progress.read_text() and workers[1].poll() is None:
                assert time.monotonic() < deadline, f"no {until!r} from worker 1 within 120 s"
                time.sleep(0.05)
            workers[1].send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=SUBPROCESS_TIMEOUT_S)
    finally:
        for worker in workers:
            worker.kill()
    return [(worker.returncode, pathlib.Path(f"{prefix}.err").read_text())
            for worker, prefix in zip(workers, prefixes)]


@pytest.mark.slow
def test_sigterm_to_a_worker_backs_up_all_at_one_step_and_the_rerun_resumes_there(
        dropout_free_modules, small_data, tmp_path):
    import tensorflow as tf
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    # 128 rows in batches of 16: 8 steps an epoch, backed up at epoch ends only (the last at
    # step 16 when the third epoch begins); no dev data. Without dropout a resumed run ends
    # with the weights of an uninterrupted one.
    total_steps = 48

    def args(model_dir):
        return tiny_train_args(dropout_free_modules, model_dir, "", "--dropout=0",
                               *[flag for flag in small_data if flag.startswith("--train_data=")],
                               "--distribution_strategy=multi_worker_mirrored",
                               f"--train_steps={total_steps}", "--epochs=6")

    def final_weights(model_dir):
        reader = tf.train.load_checkpoint(str(model_dir / "checkpoints" / "final"))
        return {name: reader.get_tensor(name) for name, dtype in
                reader.get_variable_to_dtype_map().items() if dtype.is_floating}

    model_dir, backup_dir = tmp_path / "model", tmp_path / "model" / "backup"
    stopped = _run_cluster(args(model_dir), cluster, tmp_path, "preempted", until="Epoch 3/")
    step = crash_safety.backed_up_step(str(backup_dir))
    assert step is not None and 16 < step < total_steps, stopped[1][1][-3000:]
    for returncode, stderr in stopped:
        assert returncode == crash_safety.PREEMPTED_EXIT_STATUS, stderr[-3000:]
        assert stderr.rstrip().splitlines()[-1] == (
            f"train: preempted (a worker got SIGTERM): every worker backed up step {step} in "
            f"{backup_dir} and stopped with status {crash_safety.PREEMPTED_EXIT_STATUS}; "
            "rerunning the same commands resumes from it")
    assert not list(model_dir.rglob("workertemp_*")), "a worker's scratch was left behind"

    resumed = _run_cluster(args(model_dir), cluster, tmp_path, "resumed")
    for returncode, stderr in resumed:
        assert returncode == 0, stderr[-3000:]
        assert f"Resuming from step {step} (epoch {step // 8 + 1})" in stderr
        assert f"Finished after {total_steps} optimizer steps" in stderr
    for _, stderr in _run_cluster(args(tmp_path / "uninterrupted"), cluster, tmp_path,
                                  "uninterrupted"):
        assert f"Finished after {total_steps} optimizer steps" in stderr, stderr[-3000:]
    expected = final_weights(tmp_path / "uninterrupted")
    weights = final_weights(model_dir)
    assert weights.keys() == expected.keys()
    differing = [name for name, value in expected.items()
                 if not np.array_equal(weights[name], value)]
    assert not differing, f"{len(differing)} of {len(expected)} differ, e.g. {differing[:3]}"
