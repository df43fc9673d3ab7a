"""Nothing lost, nothing crashes: resume after a kill, guarded training, atomic exports.

See docs/crash_safety.md for what these guarantee to a user.
"""

import concurrent.futures
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import bert_tf2  # noqa: F401
from absl import logging as absl_logging
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from bert_tf2 import crash_safety, export, plots, train
from tests.conftest import REPO_ROOT
from tests.tiny_fixtures import (FIXED_SHAPE_ARGS, TINY_SEQ_LENGTH, Crash, CrashAtStep,
                                 train_config, write_jsonl)

RESUMING = re.compile(r"Resuming from step (\d+) \(epoch (\d+)\)")
FINISHED = re.compile(r"Finished after (\d+) optimizer steps")
ITER_KEY = "optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE"  # in checkpoints/final


def _args(modules, model_dir, train_data, *extra: str):
    """A tiny run without dev/test data or export (those are not what these tests are about)."""
    return [f"--preprocess_handle={modules.preprocess}", f"--encoder_handle={modules.encoder}",
            f"--model_dir={model_dir}", f"--train_data={train_data}",
            f"--seq_length={TINY_SEQ_LENGTH}", "--batch_size=16", "--learning_rate=1e-3",
            *extra]


def _backup_weights(backup_dir) -> dict:
    checkpoint = tf.train.latest_checkpoint(os.path.join(backup_dir, "chief"))
    assert checkpoint, f"no backup in {backup_dir}"
    reader = tf.train.load_checkpoint(checkpoint)
    return {name: reader.get_tensor(name) for name, dtype in
            reader.get_variable_to_dtype_map().items() if dtype.is_floating}


def _final_checkpoint(model_dir) -> dict:
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints", "final"))
    return {name: np.asarray(reader.get_tensor(name))
            for name in reader.get_variable_to_shape_map()}


@pytest.fixture(scope="module")
def train_file(tmp_path_factory, corpus_splits) -> str:
    """160 examples: 10 steps an epoch at --batch_size=16."""
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl",
                       corpus_splits["train"], 160)


# ---------------------------------------------------------------------------------------------
# Resume
# ---------------------------------------------------------------------------------------------

def test_sigkilled_cli_run_resumes_from_its_last_backup(tmp_path, tiny_hub_modules,
                                                        corpus_splits):
    """SIGKILL a real `python -m bert_tf2.train` once a backup exists, then rerun it."""
    # Killed at its first backup (step 25), the run is 175 steps (seconds) short of its end: the
    # poll below sees the backup within 20 ms.
    total_steps, steps_per_epoch, checkpoint_steps = 200, 40, 25
    train_data = write_jsonl(tmp_path / "train.jsonl", corpus_splits["train"], 640)
    model_dir = tmp_path / "model"
    command = [sys.executable, "-m", "bert_tf2.train",
               *_args(tiny_hub_modules, model_dir, train_data, f"--train_steps={total_steps}",
                      f"--checkpoint_steps={checkpoint_steps}", "--epochs=100",
                      *FIXED_SHAPE_ARGS)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    backup_state = model_dir / "backup" / "chief" / "checkpoint"

    first_log = tmp_path / "first.log"
    with open(first_log, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while not backup_state.exists() and process.poll() is None:
                assert time.monotonic() < deadline, "no backup within 120 s"
                time.sleep(0.02)
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, (
        "the run ended before it could be killed:\n" + first_log.read_text()[-3000:])
    assert not (model_dir / "checkpoints").exists()

    second = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=240, check=False)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-3000:]
    resumed = RESUMING.search(log)
    assert resumed, "no 'Resuming from step N' line:\n" + log[-3000:]
    step, epoch = int(resumed.group(1)), int(resumed.group(2))
    assert 0 < step < total_steps
    assert step % checkpoint_steps == 0 or step % steps_per_epoch == 0, step
    assert epoch == step // steps_per_epoch + 1
    assert [int(n) for n in FINISHED.findall(log)] == [total_steps]
    assert _final_checkpoint(model_dir)[ITER_KEY] == total_steps
    assert not (model_dir / "backup").exists(), "a finished run leaves no backup"


def test_ctrl_c_ends_in_one_line_naming_the_backup_and_status_130(tmp_path, tiny_hub_modules,
                                                                  corpus_splits):
    train_data = write_jsonl(tmp_path / "train.jsonl", corpus_splits["train"], 640)
    model_dir = tmp_path / "model"
    command = [sys.executable, "-m", "bert_tf2.train",
               *_args(tiny_hub_modules, model_dir, train_data, "--train_steps=400",
                      "--checkpoint_steps=10", "--epochs=100", *FIXED_SHAPE_ARGS)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while (not (model_dir / "backup" / "chief" / "checkpoint").exists()
               and process.poll() is None):
            assert time.monotonic() < deadline, "no backup within 300 s"
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    step = crash_safety.backed_up_step(str(model_dir / "backup"))
    assert stderr.rstrip().splitlines()[-1] == (
        f"train: interrupted; the backup of step {step} is in {model_dir / 'backup'}: rerunning "
        "the same command resumes from it")


@pytest.mark.parametrize("streamed", [False, True], ids=["in_memory", "data_cache"])
def test_resume_mid_epoch_continues_exactly_where_the_run_stopped(
        streamed, tmp_path, dropout_free_modules, train_file, caplog):
    """Model, optimizer, step and data position: the resumed run ends bit-identical (its
    examples held in memory, or streamed from shards in a shuffled order fixed by the seed)."""
    caplog.set_level(logging.INFO, logger="absl")
    args = ["--train_steps=25", "--epochs=3", "--checkpoint_steps=4", "--dropout=0",
            *([f"--data_cache={tmp_path / 'cache'}", "--shuffle_buffer=16"] if streamed else [])]
    result = train.run(train_config(*_args(dropout_free_modules, tmp_path / "a", train_file,
                                           *args)))
    # Every 4 steps and at each epoch end (10 steps an epoch), but not the last step (25).
    assert result.backed_up_steps == (4, 8, 10, 12, 16, 20, 24)
    assert result.optimizer_steps == 25
    assert FINISHED.findall(caplog.text) == ["25"]

    resumed_config = train_config(*_args(dropout_free_modules, tmp_path / "b", train_file, *args))
    with pytest.raises(Crash):  # mid epoch 2; the last backup is of step 12
        train.run(resumed_config, callbacks=[CrashAtStep(15)])
    assert crash_safety.backed_up_step(str(tmp_path / "b" / "backup")) == 12
    caplog.clear()
    result = train.run(resumed_config)
    assert result.backed_up_steps == (16, 20, 24)
    assert RESUMING.findall(caplog.text) == [("12", "2")]
    assert FINISHED.findall(caplog.text) == ["25"]

    uninterrupted, resumed = _final_checkpoint(tmp_path / "a"), _final_checkpoint(tmp_path / "b")
    assert resumed[ITER_KEY] == uninterrupted[ITER_KEY] == 25
    assert uninterrupted.keys() == resumed.keys()
    for name, value in uninterrupted.items():
        if value.dtype.kind == "f":  # weights and AdamW slots: the same batches in order
            np.testing.assert_allclose(resumed[name], value, rtol=0, atol=1e-6, err_msg=name)
    history = (tmp_path / "b" / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["0", "1", "2"]


def test_a_backup_of_another_model_is_refused_and_its_own_command_resumes(
        tmp_path, dropout_free_modules, train_file):
    args = _args(dropout_free_modules, tmp_path, train_file, "--train_steps=12",
                 "--checkpoint_steps=4", "--dropout=0")
    as_saved = train_config(*args, "--norebuild_encoder_under_policy")  # a hub-layer encoder
    with pytest.raises(Crash):
        train.run(as_saved, callbacks=[CrashAtStep(6)])
    with pytest.raises(crash_safety.ModelDirInUseError,
                       match=r"--rebuild_encoder_under_policy \(False, now True\)"):
        train.run(train_config(*args))  # the encoder rebuilt: another model
    assert train.run(as_saved).optimizer_steps == 12


def test_run_killed_after_training_resumes_and_takes_no_extra_step(
        tmp_path, tiny_hub_modules, train_file, monkeypatch, caplog):
    """Killed after `fit` returned (plotting, evaluating, exporting): resumed, not restarted."""
    caplog.set_level(logging.INFO, logger="absl")
    args = _args(tiny_hub_modules, tmp_path / "m", train_file, "--train_steps=6",
                 "--checkpoint_steps=3", *FIXED_SHAPE_ARGS)
    with monkeypatch.context() as patch:
        def die(*args, **kwargs):
            raise Crash("killed after training")
        patch.setattr(plots, "plot_training_curves", die)
        with pytest.raises(Crash):
            train.run(train_config(*args))
    assert FINISHED.findall(caplog.text) == ["6"]
    # The last step is not backed up: fit cannot resume from it without taking one more.
    assert crash_safety.backed_up_step(str(tmp_path / "m" / "backup")) == 3
    caplog.clear()
    train.run(train_config(*args))
    assert RESUMING.findall(caplog.text) == [("3", "1")]
    assert FINISHED.findall(caplog.text) == ["6"]
    assert _final_checkpoint(tmp_path / "m")[ITER_KEY] == 6
    assert not (tmp_path / "m" / "backup").exists(), "a finished run leaves no backup"


# ---------------------------------------------------------------------------------------------
# Guarded training
# ---------------------------------------------------------------------------------------------

def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_backup(
        tmp_path, tiny_hub_modules, train_file):
    # Warmup makes step 1 a no-op (learning rate 0), so a good backup exists; then 1e30 blows up.
    model_dir = tmp_path / "m"
    config = train_config(*_args(
        tiny_hub_modules, model_dir, train_file, "--learning_rate=1e30",
        "--warmup_fraction=0.1", "--train_steps=20", "--checkpoint_steps=1",
        *FIXED_SHAPE_ARGS))
    with pytest.raises(crash_safety.NonFiniteLossError) as error:
        train.run(config)
    message = str(error.value)
    match = re.search(r"loss is (nan|-?inf) at optimizer step (\d+) \(epoch 1\).*"
                      r"last good backup, of step (\d+)", message)
    assert match, message
    assert 0 < int(match.group(3)) < int(match.group(2))
    weights = _backup_weights(model_dir / "backup")
    assert weights and all(np.all(np.isfinite(w)) for w in weights.values())
    assert crash_safety.backed_up_step(str(model_dir / "backup")) == int(match.group(3))
    assert not (model_dir / "checkpoints").exists()


def test_backup_refuses_non_finite_weights(tmp_path):
    model = tf_keras.Sequential([tf_keras.layers.Dense(1, input_shape=(2,))])
    model.compile(optimizer="sgd", loss="mse")
    backup = crash_safety.Backup(str(tmp_path / "backup"), checkpoint_steps=1)
    backup.set_model(model)
    backup.on_train_begin()
    model.layers[0].kernel.assign([[np.nan], [1.0]])
    with pytest.raises(crash_safety.NonFiniteLossError,
                       match="weights hold NaN or Inf at optimizer step 0 .*No backup had been "
                             "written"):
        backup.back_up(0, 0)
    assert crash_safety.backed_up_step(str(tmp_path / "backup")) is None
    assert backup.steps == []


@pytest.mark.parametrize("flag", ["model_dir", "export_dir"])
def test_output_dir_that_cannot_be_created_fails_before_training(tmp_path, flag):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    dirs = {"model_dir": tmp_path / "m", "export_dir": tmp_path / "e"}
    dirs[flag] = blocker / "sub"
    config = train_config(f"--model_dir={dirs['model_dir']}",
                          f"--export_dir={dirs['export_dir']}",
                          "--train_data=/nonexistent/never/read.csv")
    with pytest.raises(crash_safety.OutputDirError,
                       match=rf"--{flag}={re.escape(str(blocker / 'sub'))} is not a writable"):
        train.run(config)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod 0o555")
def test_read_only_model_dir_fails_before_training(tmp_path):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        with pytest.raises(crash_safety.OutputDirError, match="is not a writable directory"):
            train.run(train_config(f"--model_dir={read_only}",
                                   "--train_data=/nonexistent/never/read.csv"))
    finally:
        read_only.chmod(0o755)


def test_full_disk_fails_before_training(tmp_path, tiny_hub_modules, train_file, monkeypatch):
    import collections
    import shutil
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 30, 10 << 30, 1 << 20))
    model_dir = tmp_path / "m"
    config = train_config(*_args(tiny_hub_modules, model_dir, train_file, "--train_steps=2"))
    with pytest.raises(crash_safety.OutputDirError,
                       match=rf"--model_dir={re.escape(str(model_dir))}: only 1 MiB free"):
        train.run(config)
    assert sorted(os.listdir(model_dir)) == []  # no backup, logs or history: never trained


def test_free_space_estimate_covers_backups_and_export(tmp_path, monkeypatch):
    import collections
    import shutil
    usage = collections.namedtuple("usage", "total used free")
    free = {str(tmp_path / "m"): 10 << 30, str(tmp_path / "e"): 100 << 20}
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(0, 0, free[str(path)]))
    bert_base = 102_000_000
    with pytest.raises(crash_safety.OutputDirError,
                       match=r"--export_dir=.*: only 100 MiB free.*about 453 MiB"):
        crash_safety.check_free_space(bert_base, str(tmp_path / "m"), str(tmp_path / "e"))
    crash_safety.check_free_space(bert_base, str(tmp_path / "m"), None)
    free[str(tmp_path / "m")] = 2 << 30  # < 2 backups of weights + 2 Adam slots (~2.3 GiB)
    with pytest.raises(crash_safety.OutputDirError, match="--model_dir"):
        crash_safety.check_free_space(bert_base, str(tmp_path / "m"), None)


# ---------------------------------------------------------------------------------------------
# Exports
# ---------------------------------------------------------------------------------------------

class _ConstantClassifier(tf.Module):
    def __call__(self, text, training=False):
        del training
        return tf.fill(tf.stack([tf.shape(text)[0], 1]), 0.5)


def _half_written_save(obj, export_dir, signatures=None, **kwargs):
    del obj, signatures, kwargs
    pathlib.Path(export_dir, "saved_model.pb").write_bytes(b"half")
    os.makedirs(os.path.join(export_dir, "variables"))
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("stage", ["saved_model", "warmup"])
def test_failed_export_leaves_no_version_and_no_scratch(tmp_path, monkeypatch, stage):
    export_dir = tmp_path / "export"
    (export_dir / "1").mkdir(parents=True)
    (export_dir / "1" / "saved_model.pb").write_bytes(b"the served version")
    if stage == "saved_model":
        monkeypatch.setattr(tf.saved_model, "save", _half_written_save)
    else:
        def fail(saved_model_dir, *args, **kwargs):
            pathlib.Path(saved_model_dir, "assets.extra").mkdir()
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(export, "write_warmup_requests", fail)
    with pytest.raises(OSError, match="No space left"):
        export.export_text_classifier(_ConstantClassifier(), str(export_dir), keep=1)
    assert os.listdir(export_dir) == ["1"], "a half-written version or scratch dir remains"
    assert (export_dir / "1" / "saved_model.pb").read_bytes() == b"the served version"


@pytest.fixture
def absl_info_logs(caplog):
    """caplog with absl's INFO lines; saving a model resets the absl logger to the --verbosity
    level, so that is INFO too while the test runs."""
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.INFO)
    caplog.set_level(logging.INFO, logger="absl")
    yield caplog
    absl_logging.set_verbosity(verbosity)


def test_exports_at_the_same_time_into_one_dir_each_get_a_version(tmp_path, monkeypatch,
                                                                    absl_info_logs):
    """Two exports that both start while export_dir is empty: both land, as 1 and 2."""
    export_dir = tmp_path / "export"
    both_written = threading.Barrier(2, timeout=120)
    write_warmup_requests = export.write_warmup_requests

    def write_then_wait(saved_model_dir, *args, **kwargs):
        path = write_warmup_requests(saved_model_dir, *args, **kwargs)
        both_written.wait()  # neither is in place yet: both now claim a version at once
        return path

    monkeypatch.setattr(export, "write_warmup_requests", write_then_wait)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(lambda _: export.export_text_classifier(
            _ConstantClassifier(), str(export_dir)), range(2)))
    assert sorted(os.path.basename(path) for path in paths) == ["1", "2"]
    assert sorted(os.listdir(export_dir)) == ["1", "2"], "a scratch dir was left behind"
    for path in paths:
        assert (pathlib.Path(path) / export.WARMUP_FILE).is_file()
        assert (f"Exported SavedModel version {os.path.basename(path)} to {path}"
                in absl_info_logs.text)


# ---------------------------------------------------------------------------------------------
# The command line: errors are one line, not a traceback
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("case", ["bad_label", "unwritable_model_dir"])
def test_cli_reports_errors_in_one_line_without_a_traceback(tmp_path, case):
    bad_csv = tmp_path / "reviews.csv"
    bad_csv.write_text("text,label\n很好,1\n很差,maybe\n", encoding="utf-8")
    model_dir = tmp_path / "m"
    if case == "unwritable_model_dir":
        (tmp_path / "a_file").write_text("")
        model_dir = tmp_path / "a_file" / "m"
        expected = rf"--model_dir={re.escape(str(model_dir))} is not a writable directory"
    else:
        expected = r"reviews\.csv:3: label 'maybe' in column 'label' is not one of"
    result = subprocess.run(
        [sys.executable, "-m", "bert_tf2.train", f"--model_dir={model_dir}",
         f"--train_data={bad_csv}"], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=120, check=False, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("train: ") and re.search(expected, last_line), last_line


# ---------------------------------------------------------------------------------------------
# A model_dir or export_dir that holds another run
# ---------------------------------------------------------------------------------------------

def test_a_resume_with_other_data_or_settings_is_refused_and_overwrite_starts_afresh(
        tmp_path, tiny_hub_modules, train_file, corpus_splits, caplog, capsys):
    caplog.set_level(logging.INFO, logger="absl")
    model_dir = tmp_path / "m"
    args = _args(tiny_hub_modules, model_dir, train_file, "--train_steps=12",
                 "--checkpoint_steps=4")
    with pytest.raises(Crash):
        train.run(train_config(*args), callbacks=[CrashAtStep(6)])
    other_data = write_jsonl(tmp_path / "other.jsonl", corpus_splits["dev"], 160)
    other = _args(tiny_hub_modules, model_dir, other_data, "--train_steps=12",
                  "--checkpoint_steps=4", "--batch_size=8")
    with pytest.raises(crash_safety.ModelDirInUseError, match=re.escape(
            "holds an interrupted run that this one would resume, but with other settings or "
            "data: --batch_size (16, now 8); the train data (160 examples, now 160 examples, "
            "other contents). Rerun its own command")):
        train.run(train_config(*other))
    assert crash_safety.backed_up_step(str(model_dir / "backup")) == 4  # left as it was

    # Where files go and how often to back up may change: the run resumes.
    caplog.clear()
    result = train.run(train_config(*args, "--checkpoint_steps=5",
                                    f"--export_dir={tmp_path / 'e'}"))
    assert RESUMING.findall(caplog.text) == [("4", "1")] and result.optimizer_steps == 12

    with pytest.raises(crash_safety.ModelDirInUseError, match=re.escape(
            f"--model_dir={model_dir} holds a finished run (its checkpoints, metrics.json and "
            "run_config.json); pass --overwrite to replace it")):
        train.run(train_config(*other))
    caplog.clear()
    capsys.readouterr()
    result = train.run(train_config(*other), overwrite=True)
    assert not RESUMING.findall(caplog.text) and result.optimizer_steps == 12
    # 20 steps an epoch, capped at 12: the progress line counts the 12 steps taken.
    assert re.search(r"^12/12 - ", capsys.readouterr().out, re.MULTILINE)
    history = (model_dir / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["0"]  # this run's epoch alone
    assert json.loads((model_dir / "run_config.json").read_text())["trainer"]["batch_size"] == 8


def test_an_export_of_another_contract_is_refused_before_training(
        tmp_path, tiny_hub_modules, tiny_training_run, train_file):
    export_dir = tmp_path / "e"
    shutil.copytree(tiny_training_run["saved_model"], export_dir / "1")
    served = export.read_contract(str(export_dir / "1"))
    assert served == export.Contract(task="binary", pairs=False, class_names=("0", "1"))

    multiclass = export.Contract(task="multiclass", pairs=False, class_names=("0", "1"))
    with pytest.raises(export.ContractChangeError, match=re.escape(
            f"--export_dir={export_dir}: its version 1 serves binary texts over classes 0,1; "
            "this run would export multiclass texts over classes 0,1 as version 2")):
        export.check_contract(str(export_dir), multiclass)
    export.check_contract(str(export_dir), served)  # the same contract: a new version is fine

    args = [*_args(tiny_hub_modules, tmp_path / "m", train_file, "--train_steps=2"),
            f"--export_dir={export_dir}", "--task=multiclass"]
    with pytest.raises(export.ContractChangeError, match="--export_new_task"):
        train.run(train_config(*args))
    assert not (tmp_path / "m" / "checkpoints").exists()  # refused before training
    result = train.run(train_config(*args), export_new_task=True)
    assert result.export_path == str(export_dir / "2")
    assert export.read_contract(result.export_path).task == "multiclass"
