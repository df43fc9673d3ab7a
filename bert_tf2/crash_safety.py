"""Crash safety: output checks before training, backups, resume and the NaN guard.

What a user can count on is in docs/crash_safety.md. `bert_tf2.train` uses these callbacks in
this order: StopOnNonFiniteLoss first (a NaN step never reaches a backup), the loggers,
StopAtStep, then Backup last (an epoch is backed up only once it is logged).
"""

import math
import os
import shutil
import signal
import tempfile
from typing import Dict, List, Mapping, Optional

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf
import tf_keras

from bert_tf2 import checkpoints
from bert_tf2 import cli
from bert_tf2 import compat
from bert_tf2 import config as config_lib
from bert_tf2 import data
from bert_tf2 import distribution
from bert_tf2 import flags as project_flags
from bert_tf2 import io_utils
from bert_tf2 import prepared_data

# model_dir/run_data.json: {split: data.fingerprint(...)} of the data a run trains on, written
# beside run_config.json, so that a resume can tell it is given the same data.
RUN_DATA_FILE = "run_data.json"
# What a run leaves in model_dir; --overwrite removes these (and nothing else there).
RUN_OUTPUTS = (config_lib.RUN_CONFIG_FILE, RUN_DATA_FILE, "backup", "best", "checkpoints",
               "logs", "history.csv", "metrics.json", "training_curves.png", "classes.txt",
               "pretrain")
# Only a finished run leaves these (a run still to resume has its backup instead).
_FINISHED_RUN_OUTPUTS = ("metrics.json", "checkpoints/final.index")
FINGERPRINTED_SPLITS = ("train", "dev")


class StopAtStep(tf_keras.callbacks.Callback):
    """Stops `fit` once the optimizer has taken `total_steps` steps (the --train_steps cap)."""

    def __init__(self, total_steps: int):
        super().__init__()
        self.total_steps = total_steps

    def on_train_batch_end(self, batch, logs=None):
        del batch, logs
        if int(self.model.optimizer.iterations.numpy()) >= self.total_steps:
            self.model.stop_training = True


class StepProgress(tf_keras.callbacks.ProgbarLogger):
    """Keras' progress bar (one line an epoch when not on a terminal), each epoch as long as
    the run's step plan makes it: the last epoch of a --train_steps cap ends where the cap
    does, where Keras would show it full."""

    def __init__(self, steps_per_epoch: int, total_steps: int):
        super().__init__(count_mode="steps")
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps

    def on_epoch_begin(self, epoch, logs=None):
        self.target = min(self.steps_per_epoch,
                          self.total_steps - epoch * self.steps_per_epoch)
        super().on_epoch_begin(epoch, logs)


# --model_dir or --export_dir cannot take the run's output; found before training starts.
OutputDirError = io_utils.OutputError


class NonFiniteLossError(cli.UserError, RuntimeError):
    """The training loss became NaN or infinite; the message names the step."""


# Space for TensorBoard logs, history, plots and the vocab, on top of the weights.
_FREE_SPACE_SLACK_BYTES = 64 << 20


def check_free_space(num_params: int, model_dir: str, export_dir: Optional[str]) -> None:
    """Raises if a directory's disk has less room than the run will write there.

    Backups hold the float32 weights and AdamW's two slots (12 bytes a parameter) and a new
    one is written before the old one is removed; an export holds the weights once.
    """
    needs = [("--model_dir", model_dir, 2 * 12 * num_params + _FREE_SPACE_SLACK_BYTES)]
    if export_dir:
        needs.append(("--export_dir", export_dir, 4 * num_params + _FREE_SPACE_SLACK_BYTES))
    for flag, path, needed in needs:
        where = f"{flag}={path}"
        if io_utils.is_remote(path):
            if flag != "--export_dir":
                continue  # a store's quota is not known here
            # An export to a store is staged on the local disk first (io_utils).
            path = tempfile.gettempdir()
            where += f" (staged in {path})"
        free = shutil.disk_usage(path).free
        if free < needed:
            raise OutputDirError(
                f"{where}: only {free / 2**20:.0f} MiB free on its disk, but the run "
                f"writes about {needed / 2**20:.0f} MiB there ({num_params:,} parameters); "
                "free some space or choose another directory")


def _latest_backup(backup_dir: str) -> Optional[str]:
    """The checkpoint `fit` resumes from (BackupAndRestore keeps the chief's under chief/)."""
    return tf.train.latest_checkpoint(io_utils.join(backup_dir, "chief"))


def backed_up_step(backup_dir: str) -> Optional[int]:
    """The optimizer step of the backup that `fit` will resume from, or None if there is none."""
    checkpoint = _latest_backup(backup_dir)
    if not checkpoint:
        return None
    reader = checkpoints.reader(checkpoint)
    names = sorted(reader.get_variable_to_shape_map())
    # model/optimizer/iter, or .../base_optimizer/iter under a LossScaleOptimizer.
    for name in names:
        if name.startswith("model/optimizer/") and name.endswith(
                "/iter/.ATTRIBUTES/VARIABLE_VALUE"):
            return int(reader.get_tensor(name))
    return int(reader.get_tensor("train_counter/.ATTRIBUTES/VARIABLE_VALUE"))


class BackupMismatchError(cli.UserError, ValueError):
    """The backup in the model directory was written by a run of another model."""


def check_backup_fits(backup_dir: str, model: tf_keras.Model) -> None:
    """Raises if the backup `fit` would resume from lacks some of `model`'s weights.

    Keras restores a backup without checking that it matches, so a backup of another model
    (another encoder, or the same one built another way) would leave those weights as they
    were initialised, silently.
    """
    checkpoint = _latest_backup(backup_dir)
    if not checkpoint:
        return
    try:
        tf.train.Checkpoint(model=model).read(checkpoint).assert_existing_objects_matched()
    except AssertionError:
        raise BackupMismatchError(
            f"{backup_dir}: this backup is of another model than this run builds (some of "
            "its weights are not in it); resume with the command that wrote it "
            "(docs/crash_safety.md), or delete the backup to start over") from None


# The exit status of every worker of a multi-worker run that stopped for a preemption (a
# SIGTERM to one of them) once all have backed up the same step: TensorFlow's preemption
# handling exits with it by default, and a scheduler restarts the same commands on it.
PREEMPTED_EXIT_STATUS = 42


class Preempted(cli.UserError):
    """A worker of the cluster got SIGTERM; every worker backed up the same step and stops."""

    exit_status = PREEMPTED_EXIT_STATUS


@compat.always_call_train_batch_hooks  # records the batch, checks for preemption
class Backup(tf_keras.callbacks.BackupAndRestore):
    """Backs up at every epoch end and, with `checkpoint_steps`, every N optimizer steps.

    Keras' integer `save_freq` (which also makes `fit` resume mid-epoch) counts batches since
    `fit` started and then drops the epoch-end backup; this counts optimizer steps, so backups
    fall on the same steps after a resume, and keeps the epoch-end one. It also records the
    last batch a `steps_per_execution` call ran (Keras records the first), so a resume starts
    right after it.

    Under MultiWorkerMirroredStrategy a SIGTERM to any worker (a preemption) makes every worker
    back up after the same step and end with `Preempted`, through TensorFlow's
    PreemptionCheckpointHandler (which Keras enables only on GCP).
    """

    def __init__(self, backup_dir: str, checkpoint_steps: Optional[int] = None):
        # `run` deletes the backup once the model is evaluated and exported, not `fit`.
        super().__init__(backup_dir, save_freq=checkpoint_steps or "epoch",
                         delete_checkpoint=False)
        self.checkpoint_steps = checkpoint_steps
        self.steps: List[int] = []  # the optimizer steps backed up, in order
        self._last_step = self._backed_up_step = None
        self._previous_sigterm_handler = None

    def on_train_begin(self, logs=None):
        check_backup_fits(self.backup_dir, self.model)
        super().on_train_begin(logs)  # restores the backup, if any
        self._last_step = self._backed_up_step = int(self.model.optimizer.iterations.numpy())
        if isinstance(self.model.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
            self._catch_preemption()

    def _catch_preemption(self) -> None:
        """Has TensorFlow's handler back up every worker at one step when one gets SIGTERM."""
        self._previous_sigterm_handler = signal.getsignal(signal.SIGTERM) or signal.SIG_DFL
        handler = tf.distribute.experimental.PreemptionCheckpointHandler(
            self.model.distribute_strategy.cluster_resolver, compat.backup_write_manager(self),
            termination_config=tf.distribute.experimental.TerminationConfig(
                exit_fn=self._preempted, grace_period=0))
        if not compat.handler_watches_preemption(handler):
            return  # not on a CPU VM of GCP, which TensorFlow's handler declines (and says so)
        compat.let_handler_drive_backups(self, handler)  # and `fit` resume mid-epoch

    def on_train_batch_end(self, batch, logs=None):
        compat.record_backed_up_batch(self, batch)  # the call's last batch
        if not self.model.stop_training:  # `fit` cannot resume from its last step
            compat.back_up_if_preempted(self)  # may end the run: `_preempted`
        step = int(self.model.optimizer.iterations.numpy())
        if (self.checkpoint_steps
                and step // self.checkpoint_steps > self._last_step // self.checkpoint_steps):
            self.back_up(step, compat.current_epoch(self))
        self._last_step = step

    def _preempted(self) -> None:
        """The handler's exit: every worker has just backed up the same step."""
        signal.signal(signal.SIGTERM, self._previous_sigterm_handler)
        compat.remove_temp_backup_directory(  # a non-chief's copy of the backup
            compat.backup_write_directory(self), self.model.distribute_strategy)
        step = int(self.model.optimizer.iterations.numpy())
        raise Preempted(
            f"preempted (a worker got SIGTERM): every worker backed up step {step} in "
            f"{self.backup_dir} and stopped with status {PREEMPTED_EXIT_STATUS}; rerunning "
            "the same commands resumes from it")

    def on_train_end(self, logs=None):
        if self._previous_sigterm_handler is not None:  # SIGTERM kills the process again
            signal.signal(signal.SIGTERM, self._previous_sigterm_handler)
        super().on_train_end(logs)

    def on_epoch_end(self, epoch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step != self._backed_up_step:
            self.back_up(step, epoch)

    def back_up(self, step: int, epoch: int) -> None:
        """Backs up the state after `step`, unless it is the run's last or holds NaN/Inf.

        Not the last step (`StopAtStep` has just stopped `fit`): `fit` cannot resume from
        there (it would take a step more), so a run killed after it, in evaluation or export,
        resumes from the backup before and retakes the steps since. The loss guard sees a
        step's loss, computed before its update; this sees the update.
        """
        if self.model.stop_training:
            return
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(weight))
                                for weight in self.model.trainable_weights])
        if not bool(finite):
            raise non_finite_error("the weights hold NaN or Inf", step, epoch, self.backup_dir)
        compat.write_backup(self, epoch)
        self._backed_up_step = step
        self.steps.append(step)


class StopOnNonFiniteLoss(tf_keras.callbacks.Callback):
    """Raises NonFiniteLossError at the first NaN/Inf loss, before anything saves the weights.

    Unlike Keras' TerminateOnNaN, which ends `fit` normally (whose BackupAndRestore then deletes
    the backup and whose epoch end would back up the NaN weights), raising keeps the last good
    backup for a resume.
    """

    def __init__(self, backup_dir: str):
        super().__init__()
        self.backup_dir = backup_dir
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._check(logs)

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs)

    def _check(self, logs) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise non_finite_error(f"the training loss is {float(loss)}",
                                   int(self.model.optimizer.iterations.numpy()), self._epoch,
                                   self.backup_dir)


def non_finite_error(what: str, step: int, epoch: int, backup_dir: str) -> NonFiniteLossError:
    """The error for NaN/Inf at `step`, saying which backup a rerun resumes from."""
    last_good = backed_up_step(backup_dir)
    return NonFiniteLossError(
        f"{what} at optimizer step {step} (epoch {epoch + 1}); training stopped and these "
        "weights were not saved. "
        + (f"The last good backup, of step {last_good}, is kept in {backup_dir}: the same "
           "command resumes from it (fix the cause first, e.g. with a lower --learning_rate; "
           "delete it to start over)." if last_good is not None else
           "No backup had been written yet; try a lower --learning_rate."))


class ModelDirInUseError(cli.UserError):
    """--model_dir holds another run (finished, or interrupted with other settings or data)."""


def check_model_dir(config: config_lib.TrainConfig, splits: Mapping[str, data.Examples],
                    *, overwrite: bool = False) -> None:
    """Refuses, before anything trains, a run that would silently mix with the one in
    model_dir: a finished run (its checkpoints, metrics and run_config.json would be
    replaced), or an interrupted one that this run would resume with other model settings or
    other data. With `overwrite` the earlier run's outputs are removed and this one starts
    afresh (on the chief; the other workers of a cluster leave them to it)."""
    model_dir = config.model_dir
    if overwrite:
        if distribution.is_chief():
            clear_run_outputs(model_dir)
        return
    if backed_up_step(io_utils.join(model_dir, "backup")) is not None:
        _check_resume(config, splits)
    elif any(io_utils.exists(io_utils.join(model_dir, name)) for name in _FINISHED_RUN_OUTPUTS):
        raise ModelDirInUseError(
            f"--model_dir={model_dir} holds a finished run (its checkpoints, metrics.json and "
            f"{config_lib.RUN_CONFIG_FILE}); pass --overwrite to replace it, or choose another "
            "--model_dir")


def _check_resume(config: config_lib.TrainConfig,
                  splits: Mapping[str, data.Examples]) -> None:
    """Refuses to resume the backup in model_dir with settings or data that change the model."""
    model_dir = config.model_dir
    path = io_utils.join(model_dir, config_lib.RUN_CONFIG_FILE)
    try:
        interrupted = config_lib.load(path, type(config),
                                      defaults=project_flags.training_default)
    except cli.UserError as error:
        raise ModelDirInUseError(
            f"--model_dir={model_dir} holds a backup to resume, but its run cannot be compared "
            f"with this one ({error}); pass --overwrite to start afresh, or choose another "
            "--model_dir") from error
    recorded = read_run_data(model_dir)
    differences = [f"--{name} ({before!r}, now {after!r})" for name, (before, after) in
                   config_lib.resume_differences(interrupted, config,
                                                 compare_reading=recorded is None).items()]
    if recorded is not None:
        differences += _data_differences(recorded, data_fingerprints(splits))
    if differences:
        raise ModelDirInUseError(
            f"--model_dir={model_dir} holds an interrupted run that this one would resume, but "
            f"with other settings or data: {'; '.join(differences)}. Rerun its own command "
            f"(--run_config={path}) to resume it, or pass --overwrite to start afresh, or "
            "choose another --model_dir")


def _data_differences(recorded: Mapping[str, Mapping[str, object]],
                      current: Mapping[str, Mapping[str, object]]) -> List[str]:
    """'the train data (1200 examples, now 800)' for each split whose fingerprint changed."""
    def described(fingerprint):
        return f"{fingerprint['examples']} examples" if fingerprint else "none"

    return [f"the {split} data ({described(recorded.get(split))}, now "
            f"{described(current.get(split))}"
            + (", other contents)" if recorded.get(split) and current.get(split) and
               recorded[split]["examples"] == current[split]["examples"] else ")")
            for split in FINGERPRINTED_SPLITS if recorded.get(split) != current.get(split)]


def data_fingerprints(splits: Mapping[str, data.Examples]) -> Dict[str, Dict[str, object]]:
    """`data.fingerprint` of the splits that make the model (train; dev picks the best epoch),
    held in memory or streamed (`prepared_data.fingerprint`: the same for the same data)."""
    return {split: prepared_data.fingerprint(splits[split]) for split in FINGERPRINTED_SPLITS
            if split in splits}


def read_run_data(model_dir: str) -> Optional[Dict[str, Dict[str, object]]]:
    """The fingerprints a run wrote to model_dir (`RUN_DATA_FILE`), or None."""
    return io_utils.read_json(io_utils.join(model_dir, RUN_DATA_FILE))


def clear_run_outputs(model_dir: str) -> None:
    """Removes what a run left in model_dir (`RUN_OUTPUTS`), nothing else."""
    for name in RUN_OUTPUTS:
        path = io_utils.join(model_dir, name)
        if io_utils.isdir(path) and not os.path.islink(path):
            io_utils.rmtree(path)
        elif io_utils.exists(path):
            io_utils.remove(path)
