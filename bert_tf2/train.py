"""Fine-tunes a BERT sentiment classifier, evaluates it and exports it for TF Serving.

  python -m bert_tf2.train --flagfile=configs/quickstart.flags --model_dir=M --export_dir=E
  python -m bert_tf2.train --run_config=M/run_config.json     # the same run again

The flags are read once, into a `config.TrainConfig`; `run(config)` is the whole job, in named
phases: prepare (strategy, output checks, data, modules, step plan) -> fit -> evaluate ->
export. Everything a run leaves behind is under model_dir (run_config.json, checkpoints,
TensorBoard logs, history.csv, metrics.json) and export_dir (SavedModel versions).

A run killed at any point and started again with the same command resumes from its last
backup (model, optimizer, step and data position) instead of starting over; see
`bert_tf2.crash_safety` and docs/crash_safety.md.
"""

import collections
import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from absl import flags, logging
import tensorflow as tf
import tf_keras
from official.nlp import optimization

from bert_tf2 import cli
from bert_tf2 import config as config_lib
from bert_tf2 import crash_safety
from bert_tf2 import data
from bert_tf2 import distribution
from bert_tf2 import export
from bert_tf2 import flags as project_flags
from bert_tf2 import frozen_encoder
from bert_tf2 import hub_modules
from bert_tf2 import input_pipeline
from bert_tf2 import io_utils
from bert_tf2 import model as model_lib
from bert_tf2 import plots
from bert_tf2 import prepared_data
from bert_tf2 import pretrain as pretrain_lib

FLAGS = flags.FLAGS
# A positive and a negative review from each kind the built-in corpus holds (hotels,
# electronics, books), printed with their P(positive) at the end of a run.
EXAMPLE_REVIEWS = ("房间很干净，服务很周到，下次还会再来。",
                   "房间又小又脏，服务态度很差，再也不会来了。",
                   "屏幕很清晰，运行速度快，性价比很高，非常满意。",
                   "电池不耐用，做工粗糙，客服也不理人，后悔买了。",
                   "这本书写得太好了，强烈推荐，值得一读！",
                   "书的内容很空洞，纸张也差，不值这个价。")
Metrics = Dict[str, Dict[str, float]]
# model_dir/classes.txt: the class names, one a line, in the order of the probabilities.
CLASSES_FILE = "classes.txt"
# The global norm gradients are clipped to (BERT's).
GRADIENT_CLIP_NORM = 1.0
# The dev score --export_best maximises, by task.
BEST_METRIC = {"binary": "val_accuracy", "multiclass": "val_macro_f1", "multilabel": "val_auc"}


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """How many optimizer steps the run takes, and where a resumed run starts."""

    steps_per_epoch: int
    total_steps: int
    epochs: int        # what `fit` is given: enough epochs to hold total_steps
    resume_step: int   # the backed-up step a resumed run starts after; 0 for a new run


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What the `prepare` phase sets up for the others."""

    strategy: tf.distribute.Strategy
    model_dir: str     # where this process writes: model_dir, or a scratch dir on non-chiefs
    backup_dir: str    # the shared backup every worker restores from
    # Labels encoded; each knows its class names. Held in memory, or with --data_cache
    # streamed from prepared shards (`prepared_data.StreamedSplit`).
    splits: Dict[str, data.Examples]
    preprocessor: object
    plan: StepPlan
    # (task, classes) -> (loss, metrics) the classifier is compiled with; None:
    # `model.loss_and_metrics` (`bert_tf2.distill` gives its own).
    objective: Optional[Callable] = None

    @property
    def class_names(self) -> Tuple[str, ...]:
        return self.splits["train"].class_names


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a run made: the trained models, their metrics, the export and the backups."""

    config: config_lib.TrainConfig
    classifier: tf_keras.Model        # encoder inputs -> probabilities, as trained
    text_classifier: tf_keras.Model   # raw strings -> probabilities, float32, what is exported
    class_names: Tuple[str, ...]      # what the probabilities' columns stand for
    metrics: Metrics                  # {"dev"|"test": {metric: value}}, as in metrics.json
    export_path: Optional[str]        # export_dir/<version>, or None without an export
    optimizer_steps: int
    backed_up_steps: Tuple[int, ...]  # the steps this run backed up, in order


def run(config: config_lib.TrainConfig,
        callbacks: Sequence[tf_keras.callbacks.Callback] = (), *, overwrite: bool = False,
        export_new_task: bool = False) -> TrainResult:
    """Runs the whole job `config` describes.

    `callbacks` run in `fit` after the loggers and before the backup, so one that stops or
    fails at step N does so before step N is backed up. `overwrite` replaces the run that
    model_dir holds (--overwrite); `export_new_task` exports even over a newest version of
    another contract (--export_new_task).
    """
    prepared = prepare(config, overwrite=overwrite, export_new_task=export_new_task)
    return run_prepared(config, prepared, callbacks)


def run_prepared(config: config_lib.TrainConfig, prepared: Prepared,
                 callbacks: Sequence[tf_keras.callbacks.Callback] = ()) -> TrainResult:
    """The phases after `prepare`: fit -> evaluate -> export (see `run`)."""
    classifier, backed_up_steps = fit(config, prepared, callbacks)
    metrics = evaluate(config, prepared, classifier)
    text_classifier = model_lib.build_text_classifier(
        prepared.preprocessor, export_copy(config, classifier, len(prepared.class_names)),
        seq_length=config.input.seq_length, pairs=bool(config.data.text_b_column),
        truncation=config.input.truncation)
    export_path = export_model(config, text_classifier, prepared.class_names,
                               prepared.splits.get("test"))
    if distribution.is_chief():  # kept until now, so a run killed in evaluation or export
        io_utils.rmtree(prepared.backup_dir, ignore_errors=True)  # resumes, not starts over
    if config.data.task == "binary" and not config.data.text_b_column:
        print_examples(text_classifier)
    return TrainResult(config=config, classifier=classifier, text_classifier=text_classifier,
                       class_names=prepared.class_names, metrics=metrics,
                       export_path=export_path,
                       optimizer_steps=int(classifier.optimizer.iterations.numpy()),
                       backed_up_steps=backed_up_steps)


# ---------------------------------------------------------------------------------------------
# The phases
# ---------------------------------------------------------------------------------------------

def prepare(config: config_lib.TrainConfig, *, overwrite: bool = False,
            export_new_task: bool = False,
            training_split: Optional[Callable[[data.Examples], data.Examples]] = None
            ) -> Prepared:
    """Strategy and dtype policy, output checks, the data, the checks that this run does not
    silently replace or mix with another (model_dir, export_dir), the modules and the step
    plan.

    `training_split` turns the training split as read into what the run trains on (before
    the model_dir checks, which compare its fingerprint, and the step plan).
    """
    runtime = config.runtime
    strategy = distribution.get_strategy(runtime.distribution_strategy,
                                         num_gpus=runtime.num_gpus, tpu=runtime.tpu)
    tf_keras.utils.set_random_seed(config.seed)
    tf_keras.mixed_precision.set_global_policy(runtime.mixed_precision)
    logging.info("Strategy %s with %d replica(s) (%s); dtype policy %s",
                 runtime.distribution_strategy, strategy.num_replicas_in_sync,
                 type(strategy).__name__, runtime.mixed_precision)
    distribution.check_precision_policy(runtime.mixed_precision, strategy)
    # Batch sizes are global: each replica gets an equal share.
    for flag, size in (("--batch_size", config.trainer.batch_size),
                       ("--eval_batch_size", config.trainer.eval_batch_size)):
        distribution.per_replica_batch_size(size, strategy.num_replicas_in_sync, flag)
    model_dir = distribution.writable_dir(config.model_dir)
    outputs = {"--model_dir": model_dir}
    if config.export.export_dir and distribution.is_chief():
        outputs["--export_dir"] = config.export.export_dir
    for flag, path in outputs.items():
        io_utils.check_writable_dir(path, flag)
    for path in outputs.values():  # all checked first: a refused run creates nothing
        io_utils.makedirs(path)

    splits = load_splits(config)
    if training_split:
        if isinstance(splits["train"], prepared_data.StreamedSplit):
            raise cli.UserError("--data_cache streams the training split, which this command "
                                "rewrites in memory: drop --data_cache")
        splits = {**splits, "train": training_split(splits["train"])}
    if config.export.export_best and "dev" not in splits:
        raise cli.UserError("--export_best picks the epoch with the best dev score: pass "
                            "--eval_data too")
    crash_safety.check_model_dir(config, splits, overwrite=overwrite)
    if "--export_dir" in outputs and not export_new_task:
        export.check_contract(config.export.export_dir, export.Contract(
            task=config.data.task, pairs=bool(config.data.text_b_column),
            class_names=splits["train"].class_names))
    if config.modules.build_missing:
        build_missing_modules(config, splits["train"], model_dir)
    check_seq_length(config.input.seq_length, config.modules.encoder_handle)
    # Every worker restores the chief's backup (Keras writes only the chief's copy there).
    backup_dir = io_utils.join(config.model_dir, "backup")
    return Prepared(strategy=strategy, model_dir=model_dir, backup_dir=backup_dir,
                    splits=splits,
                    preprocessor=model_lib.load_preprocessor(config.modules.preprocess_handle),
                    plan=plan_steps(config.trainer, len(splits["train"]), backup_dir))


def load_splits(config: config_lib.TrainConfig) -> Dict[str, data.Examples]:
    """The splits, read into memory, or with --data_cache prepared once and streamed."""
    if config.input.data_cache:
        return prepared_data.load_splits(config.data, config.input.data_cache,
                                         config.input.num_shards)
    splits = data.load_splits(config.data.train_data, config.data.eval_data,
                              config.data.test_data, **data.reader_options(config.data))
    data.warn_about_label_coverage(splits)
    return splits


def fit(config: config_lib.TrainConfig, prepared: Prepared,
        callbacks: Sequence[tf_keras.callbacks.Callback] = ()
        ) -> Tuple[tf_keras.Model, Tuple[int, ...]]:
    """Trains the classifier for the planned steps, resuming from a backup; saves it.

    Returns the classifier and the optimizer steps backed up on the way.
    """
    plan, trainer = prepared.plan, config.trainer
    classifier = compile_classifier(config.modules.encoder_handle, config.model,
                                    config.optimizer, config.runtime, prepared.strategy,
                                    plan.total_steps, task=config.data.task,
                                    num_classes=len(prepared.class_names),
                                    objective=prepared.objective)
    crash_safety.check_free_space(
        classifier.count_params(), prepared.model_dir,
        config.export.export_dir if distribution.is_chief() else None)
    # Once the checks have passed, before any training: how this model_dir is being made.
    io_utils.write_json(config.to_dict(),
                        io_utils.join(prepared.model_dir, config_lib.RUN_CONFIG_FILE),
                        sort_keys=True)
    io_utils.write_json(crash_safety.data_fingerprints(prepared.splits),
                        io_utils.join(prepared.model_dir, crash_safety.RUN_DATA_FILE))
    export.write_class_names(io_utils.join(prepared.model_dir, CLASSES_FILE),
                             prepared.class_names)
    start = time.monotonic()
    trained, train_data, dev_data = what_to_fit(config, prepared, classifier)
    backup = crash_safety.Backup(prepared.backup_dir,
                                 checkpoint_steps=trainer.checkpoint_steps)
    best = KeepBestEpoch(io_utils.join(prepared.model_dir, "best"),
                         BEST_METRIC[config.data.task], classifier, fresh=not plan.resume_step)
    trained.fit(
        train_data, epochs=plan.epochs, steps_per_epoch=plan.steps_per_epoch,
        validation_data=dev_data,
        callbacks=[
            crash_safety.StopOnNonFiniteLoss(prepared.backup_dir),  # first: before any save
            crash_safety.StepProgress(plan.steps_per_epoch, plan.total_steps),
            tf_keras.callbacks.TensorBoard(io_utils.join(prepared.model_dir, "logs")),
            tf_keras.callbacks.CSVLogger(io_utils.join(prepared.model_dir, "history.csv"),
                                         append=True),
            crash_safety.StopAtStep(plan.total_steps),
            *([best] if config.export.export_best else []),
            *callbacks,
            backup,  # last: an epoch is backed up only once it is logged (and its best kept)
        ],
        # A progress bar within each epoch on a terminal; one line an epoch in a log.
        verbose=1 if sys.stdout.isatty() else 2)
    logging.info("Finished after %d optimizer steps in %.1f s",
                 int(classifier.optimizer.iterations.numpy()), time.monotonic() - start)
    if config.export.export_best:
        best.restore()
    classifier.save_weights(io_utils.join(prepared.model_dir, "checkpoints", "final"))
    plots.plot_training_curves(io_utils.join(prepared.model_dir, "history.csv"),
                               io_utils.join(prepared.model_dir, "training_curves.png"))
    return classifier, tuple(backup.steps)


def what_to_fit(config: config_lib.TrainConfig, prepared: Prepared,
                classifier: tf_keras.Model):
    """The model `fit` trains, its training batches and its dev batches (None without dev).

    That is the classifier on batches of text, or over a wholly frozen encoder its head on
    pooled outputs computed once (`bert_tf2.frozen_encoder`).
    """
    class_weights = balanced_class_weights(prepared.splits["train"], config.data.task,
                                           config.trainer.class_weights)

    def texts(split, batch_size, training, skip_steps=0):
        return distributed_dataset(prepared.strategy, prepared.preprocessor,
                                   prepared.splits[split], batch_size, config.input,
                                   training=training, seed=config.seed, skip_steps=skip_steps,
                                   class_weights=class_weights if training else None)

    trained, batches = classifier, texts
    if config.model.trainable_encoder_layers == 0:
        trained, batches = _head_over_pooled_outputs(config, prepared, classifier, texts,
                                                     class_weights)
    trainer = config.trainer
    return (trained, batches("train", trainer.batch_size, True, prepared.plan.resume_step),
            batches("dev", trainer.eval_batch_size, False) if "dev" in prepared.splits else None)


def _head_over_pooled_outputs(config: config_lib.TrainConfig, prepared: Prepared,
                              classifier: tf_keras.Model, texts,
                              class_weights: Optional[Sequence[float]]):
    """`classifier`'s head, compiled, and a `texts`-like function of batches of the pooled
    outputs of the train and dev splits (computed here, from `texts`' batches)."""
    strategy, start = prepared.strategy, time.monotonic()
    pooled = {split: frozen_encoder.pooled_outputs(
                  strategy, classifier, texts(split, config.trainer.eval_batch_size, False))
              for split in ("train", "dev") if split in prepared.splits}
    logging.info("Frozen encoder: pooled outputs of %s examples computed in %.1f s; only the "
                 "head trains, on them", " and ".join(f"{len(pooled[split]):,} {split}"
                                                      for split in pooled),
                 time.monotonic() - start)

    def batches(split, batch_size, training, skip_steps=0):
        return _distribute(strategy, batch_size, skip_steps, lambda context, size, skip: (
            frozen_encoder.dataset(pooled[split], batch_size=size, training=training,
                                   seed=config.seed, skip_batches=skip,
                                   class_weights=class_weights if training else None,
                                   static_shapes=config.input.static_shapes,
                                   replicas=input_pipeline.replicas_per_pipeline(context))))

    with strategy.scope():
        head = model_lib.head_model(classifier)
        compile_model(head, classifier.optimizer, config.runtime, task=config.data.task,
                      num_classes=len(prepared.class_names), objective=prepared.objective)
    return head, batches


class MiscountError(cli.UserError, RuntimeError):
    """An evaluation counted another number of examples than its split holds: a dropped or
    doubled example, which would make every figure of that split wrong."""


def evaluate(config: config_lib.TrainConfig, prepared: Prepared,
             classifier: tf_keras.Model) -> Metrics:
    """The task's metrics on the dev and test splits, each with the number of `examples` it
    rests on (checked against the rows read: `MiscountError`); written to
    model_dir/metrics.json."""
    metrics = {}
    for name in ("dev", "test"):
        if name in prepared.splits:
            values = classifier.evaluate(
                distributed_dataset(prepared.strategy, prepared.preprocessor,
                                    prepared.splits[name], config.trainer.eval_batch_size,
                                    config.input, training=False, seed=config.seed),
                return_dict=True, verbose=0)
            metrics[name] = {key: float(value) for key, value in values.items()}
            metrics[name]["examples"] = counted(metrics[name], len(prepared.splits[name]),
                                                name, prepared.strategy)
            logging.info("%s: %d examples", name, metrics[name]["examples"])
    io_utils.write_json(metrics, io_utils.join(prepared.model_dir, "metrics.json"),
                        sort_keys=True)
    logging.info("Metrics: %s", json.dumps(metrics, sort_keys=True))
    return metrics


def counted(values: Dict[str, float], rows: int, split: str,
            strategy: tf.distribute.Strategy) -> int:
    """The examples an evaluation of `split` counted, once checked to be its `rows`."""
    examples = int(round(values["examples"]))
    if examples != rows:
        raise MiscountError(
            f"the {split} metrics counted {examples} examples but {rows} rows were read (under "
            f"{type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s)): an "
            "example was dropped or counted twice, so its figures are wrong; please report it")
    return examples


def export_model(config: config_lib.TrainConfig, text_classifier: tf_keras.Model,
                 class_names: Sequence[str],
                 test_split: Optional[data.Examples] = None) -> Optional[str]:
    """Exports `export_dir/<version>` (on the chief, with an export_dir), recording its test
    split (`export.test_data_record`); returns its path."""
    if not config.export.export_dir or not distribution.is_chief():
        return None
    return export.export_text_classifier(text_classifier, config.export.export_dir,
                                         keep=config.export.keep_exports,
                                         task=config.data.task, class_names=class_names,
                                         pairs=bool(config.data.text_b_column),
                                         test_data=export.test_data_record(config.data,
                                                                           test_split))


def print_examples(text_classifier: tf_keras.Model) -> None:
    """Prints P(positive) of each of EXAMPLE_REVIEWS."""
    probabilities = text_classifier(tf.constant(EXAMPLE_REVIEWS), training=False)
    for review, probability in zip(EXAMPLE_REVIEWS, probabilities.numpy()[:, 0]):
        print(f"P(positive)={probability:.3f}  {review}")


# ---------------------------------------------------------------------------------------------
# What the phases are made of
# ---------------------------------------------------------------------------------------------

def plan_steps(trainer: config_lib.TrainerConfig, num_examples: int,
               backup_dir: str) -> StepPlan:
    """The run's optimizer steps (epochs, capped by train_steps) and its resume point."""
    steps_per_epoch = num_examples // trainer.batch_size
    if steps_per_epoch == 0:
        raise cli.UserError(f"--batch_size={trainer.batch_size} is larger than the "
                            f"{num_examples} training examples")
    total_steps = steps_per_epoch * trainer.epochs
    if trainer.train_steps:
        total_steps = min(total_steps, trainer.train_steps)
    logging.info("Training for %d optimizer steps (%d per epoch)", total_steps, steps_per_epoch)
    resume_step = crash_safety.backed_up_step(backup_dir) or 0
    if resume_step >= total_steps:  # backups stop short of the last step
        raise cli.UserError(
            f"the backup in {backup_dir} is of step {resume_step}, but this run has only "
            f"{total_steps} steps: raise --train_steps/--epochs, or delete the backup to "
            "start over")
    if resume_step:
        logging.info("Resuming from step %d (epoch %d) with the backup in %s", resume_step,
                     resume_step // steps_per_epoch + 1, backup_dir)
    return StepPlan(steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                    epochs=math.ceil(total_steps / steps_per_epoch), resume_step=resume_step)


def balanced_class_weights(train: data.Examples, task: str,
                           class_weights: str) -> Optional[List[float]]:
    """n / (classes * count) for each class of `train` with --class_weights=balanced."""
    if class_weights == "none":
        return None
    if task == "multilabel":
        raise cli.UserError("--class_weights=balanced weighs an example by its one class; "
                            "for --task=multilabel leave it at none")
    counts = (train.label_counts if isinstance(train, prepared_data.StreamedSplit)
              else collections.Counter(train.labels))
    names = train.class_names
    weights = [len(train) / (len(names) * max(counts[i], 1)) for i in range(len(names))]
    logging.info("Class weights: %s", ", ".join(f"{name} {weight:.3g}"
                                                for name, weight in zip(names, weights)))
    return weights


class KeepBestEpoch(tf_keras.callbacks.Callback):
    """Keeps `classifier`'s weights of the epoch with the highest `monitor` in `directory`.

    (`fit` may train only the classifier's head, which shares its weights.)
    `directory/best.json` names the epoch, its score and its weights (`epoch-N/weights`),
    written after them: a run killed and resumed still knows its best epoch. A `fresh` run
    starts without one.
    """

    def __init__(self, directory: str, monitor: str, classifier: tf_keras.Model, *,
                 fresh: bool):
        super().__init__()
        self.directory, self.monitor, self.classifier = directory, monitor, classifier
        if fresh:
            io_utils.rmtree(directory, ignore_errors=True)

    def best(self) -> Optional[Dict[str, object]]:
        return io_utils.read_json(io_utils.join(self.directory, "best.json"))

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        best = self.best()
        if value is None or (best is not None and value <= best["value"]):
            return
        weights = f"epoch-{epoch + 1}/weights"  # relative, `/`-separated on every store
        self.classifier.save_weights(io_utils.join(self.directory, weights))
        io_utils.write_json({"epoch": epoch + 1, "metric": self.monitor, "value": float(value),
                             "weights": weights}, io_utils.join(self.directory, "best.json"))
        if best is not None:
            io_utils.rmtree(io_utils.join(self.directory, os.path.dirname(best["weights"])),
                          ignore_errors=True)

    def restore(self) -> None:
        """Loads the best epoch's weights into the classifier, if an epoch was scored."""
        best = self.best()
        if best is None:
            logging.warning("--export_best: no epoch had a %s; keeping the last weights",
                            self.monitor)
            return
        self.classifier.load_weights(io_utils.join(self.directory, best["weights"]))
        logging.info("Keeping epoch %d, the best by %s (%.4f)", best["epoch"], best["metric"],
                     best["value"])


def check_seq_length(seq_length: int, encoder_handle: str) -> None:
    """Refuses a --seq_length beyond the encoder's position embeddings: the run would train
    its whole schedule on shorter batches and then fail to export."""
    try:
        limit = hub_modules.read_encoder_config(encoder_handle).max_position_embeddings
    except ValueError as error:  # not a BERT encoder whose variables tell its sizes
        logging.warning("--seq_length not checked against the encoder: %s", error)
        return
    if seq_length > limit:
        raise cli.UserError(f"--seq_length={seq_length} is longer than the encoder takes: its "
                            f"max_position_embeddings is {limit} (--encoder_handle="
                            f"{encoder_handle}); pass --seq_length={limit} or less")


def compile_classifier(encoder_handle: str, model_config: config_lib.ModelConfig,
                       optimizer_config: config_lib.OptimizerConfig,
                       runtime: config_lib.RuntimeConfig, strategy: tf.distribute.Strategy,
                       total_steps: int, *, task: str = "binary",
                       num_classes: int = 2, objective: Optional[Callable] = None
                       ) -> tf_keras.Model:
    """The classifier, built and compiled in `strategy`'s scope under the global dtype policy.

    AdamW with warmup and decay over `total_steps` (wrapped for dynamic loss scaling under
    mixed_float16), the task's loss and metrics (`model.loss_and_metrics`), XLA and steps per
    execution as `runtime` says. The training benchmark compiles its cases through here too.
    """
    with strategy.scope():
        classifier = model_lib.build_classifier_for(model_config, encoder_handle, task=task,
                                                    num_classes=num_classes)
        optimizer = create_optimizer(optimizer_config, total_steps)
        if runtime.mixed_precision == "mixed_float16":  # float16 needs loss scaling
            optimizer = tf_keras.mixed_precision.LossScaleOptimizer(optimizer, dynamic=True)
        compile_model(classifier, optimizer, runtime, task=task, num_classes=num_classes,
                      objective=objective)
    logging.info("--trainable_encoder_layers=%d: %s", model_config.trainable_encoder_layers,
                 model_lib.describe_trainable(classifier))
    return classifier


def compile_model(model: tf_keras.Model, optimizer, runtime: config_lib.RuntimeConfig, *,
                  task: str = "binary", num_classes: int = 2,
                  objective: Optional[Callable] = None) -> None:
    """Compiles the classifier (or its head) in the strategy's scope: `optimizer`, the task's
    loss and metrics (`objective`, by default `model.loss_and_metrics`), XLA and steps per
    execution as `runtime` says."""
    loss, metrics = (objective or model_lib.loss_and_metrics)(task, num_classes)
    # The metrics see the weights of the filling rows as a mask (`model.Classifier`), not
    # the class weights: none is a weighted metric.
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics, weighted_metrics=[],
                  jit_compile=runtime.jit_compile,
                  steps_per_execution=runtime.steps_per_execution)


def create_optimizer(optimizer_config: config_lib.OptimizerConfig, total_steps: int):
    """AdamW with linear warmup then linear decay to 0 (BERT's recipe, from Model Garden)."""
    learning_rate = optimizer_config.learning_rate
    schedule = tf_keras.optimizers.schedules.PolynomialDecay(
        initial_learning_rate=learning_rate, decay_steps=total_steps, end_learning_rate=0.0)
    warmup_steps = int(total_steps * optimizer_config.warmup_fraction)
    if warmup_steps:
        schedule = optimization.WarmUp(initial_learning_rate=learning_rate,
                                       decay_schedule_fn=schedule, warmup_steps=warmup_steps)
    # Gradients are clipped to BERT's global norm of 1 once summed over the replicas, so that
    # a step is the same on one device and on several. Model Garden's own clipping
    # (`gradient_clip_norm`) clips each replica's share before the sum: its steps change with
    # the number of replicas.
    # Its own "gradient_clip_norm=0" line would say clipping is off.
    with _dropped_log_lines("AdamWeightDecay gradient_clip_norm"):
        optimizer = optimization.AdamWeightDecay(
            learning_rate=schedule, weight_decay_rate=optimizer_config.weight_decay,
            epsilon=1e-6, exclude_from_weight_decay=["LayerNorm", "layer_norm", "bias"],
            gradient_clip_norm=0.0, global_clipnorm=GRADIENT_CLIP_NORM)
    logging.info("AdamW: peak learning rate %g, %d warmup steps of %d, weight decay %g, "
                 "gradients clipped to a global norm of %g once summed over the replicas",
                 learning_rate, warmup_steps, total_steps, optimizer_config.weight_decay,
                 GRADIENT_CLIP_NORM)
    return optimizer


@contextlib.contextmanager
def _dropped_log_lines(prefix: str):
    """Leaves out of absl's log the lines that start with `prefix`, within the block."""
    def keep(record) -> bool:
        return not str(record.msg).startswith(prefix)

    logger = logging.get_absl_logger()
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def distributed_dataset(strategy: tf.distribute.Strategy, preprocessor,
                        examples: data.Examples, batch_size: int,
                        input_config: config_lib.InputConfig, *, training: bool, seed: int,
                        skip_steps: int = 0, class_weights: Optional[Sequence[float]] = None,
                        ) -> tf.distribute.DistributedDataset:
    """`examples` as `strategy`'s dataset: each input pipeline makes its replicas' batches.

    `batch_size` is global (`input_pipeline.make_dataset` gets the per-replica share).
    `skip_steps` optimizer steps' worth of batches are skipped, for a resumed run.
    `class_weights` (by class id) weigh the training examples. A streamed split
    (`prepared_data.StreamedSplit`) is read from its shards, each pipeline its own.
    """
    make_dataset, streaming = input_pipeline.make_dataset, {}
    if isinstance(examples, prepared_data.StreamedSplit):
        make_dataset = prepared_data.make_dataset
        streaming = {"shuffle_buffer": input_config.shuffle_buffer}
    return _distribute(strategy, batch_size, skip_steps, lambda context, size, skip: (
        make_dataset(
            examples, batch_size=size, preprocessor=preprocessor,
            seq_length=input_config.seq_length, training=training, seed=seed,
            dynamic_padding=input_config.dynamic_padding,
            bucket_by_length=input_config.bucket_by_length,
            pad_to_bucket_boundary=input_config.pad_to_bucket_boundary,
            truncation=input_config.truncation, class_weights=class_weights,
            static_shapes=input_config.static_shapes, input_context=context,
            skip_batches=skip, **streaming)))


def _distribute(strategy: tf.distribute.Strategy, batch_size: int, skip_steps: int, make
                ) -> tf.distribute.DistributedDataset:
    """`strategy`'s dataset whose input pipelines each make their replicas' batches:
    `make(input_context, per-replica batch size, batches to skip)`, for the global
    `batch_size` and `skip_steps` optimizer steps."""
    def fn(input_context):
        # A step takes one batch per replica; this pipeline feeds its share of them.
        return make(input_context, input_context.get_per_replica_batch_size(batch_size),
                    skip_steps * strategy.num_replicas_in_sync
                    // input_context.num_input_pipelines)
    return strategy.distribute_datasets_from_function(fn)


def export_copy(config: config_lib.TrainConfig, classifier: tf_keras.Model,
                num_classes: int) -> tf_keras.Model:
    """`classifier`, or a plain float32 copy of it, for the export.

    The export computes in float32 whatever the training policy: float16 and bfloat16 are slow
    or emulated on many serving machines, and float32 gives the same numbers everywhere. And it
    holds plain variables, made outside the strategy: saving a strategy's distributed variables
    reads the sync-on-read ones collectively, which would wait forever for the workers of a
    multi-worker cluster that do not export.
    """
    runtime = config.runtime
    computes_in_float32 = (runtime.mixed_precision == "float32"
                           or not config.model.rebuild_encoder)  # a hub encoder, float32 head
    if computes_in_float32 and runtime.distribution_strategy == "one_device":
        return classifier
    with distribution.dtype_policy("float32"):
        copy = model_lib.build_classifier_for(config.model, config.modules.encoder_handle,
                                              task=config.data.task, num_classes=num_classes,
                                              load_encoder_weights=False)
    copy.set_weights(classifier.get_weights())
    logging.info("Exporting a float32 copy of the classifier trained under %s with %s",
                 runtime.mixed_precision, runtime.distribution_strategy)
    return copy


def build_missing_modules(config: config_lib.TrainConfig, train: data.Examples,
                          model_dir: str) -> None:
    """Builds the hub modules at the local handle paths if they are not there yet.

    With pretraining epochs the new encoder is first pretrained with masked LM on the training
    texts (never the dev or test texts).
    """
    modules, pretraining = config.modules, config.pretrain
    output_dir = io_utils.dirname(modules.encoder_handle)
    expected = hub_modules.HubModules(io_utils.join(output_dir, "preprocess"),
                                      io_utils.join(output_dir, "encoder"))
    if (io_utils.abspath(modules.preprocess_handle),
            io_utils.abspath(modules.encoder_handle)) != (expected.preprocess, expected.encoder):
        raise hub_modules.ModuleInputError(
            "--build_missing_modules needs --preprocess_handle=D/preprocess and "
            "--encoder_handle=D/encoder in one directory D")
    if io_utils.exists(expected.preprocess) and io_utils.exists(expected.encoder):
        logging.info("Using the existing hub modules in %s", output_dir)
        return
    if io_utils.exists(expected.preprocess) or io_utils.exists(expected.encoder):
        # What a build killed between the two modules leaves (a pretraining one among them).
        raise hub_modules.ModuleInputError(
            f"{output_dir} holds only one of preprocess/ and encoder/ (a build of the modules "
            "that did not finish): remove it, and run the same command again to rebuild both")

    def pretrain(preprocess_path, bert_config):
        return pretrain_lib.pretrain_encoder(
            bert_config, model_lib.load_preprocessor(preprocess_path),
            train if isinstance(train, prepared_data.StreamedSplit) else train.texts,
            output_prefix=io_utils.join(model_dir, "pretrain", "encoder"),
            epochs=pretraining.epochs, batch_size=pretraining.batch_size,
            seq_length=config.input.seq_length, learning_rate=pretraining.learning_rate,
            seed=config.seed, shuffle_buffer=config.input.shuffle_buffer)

    hub_modules.build_hub_modules(output_dir, vocab_file=modules.vocab_file,
                                  bert_config_file=modules.bert_config_file,
                                  init_checkpoint=modules.init_checkpoint,
                                  normalization=modules.normalization,
                                  seq_length=config.input.seq_length,
                                  pretrain=pretrain if pretraining.epochs else None)


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------

def main(argv):
    del argv
    run_command(config_lib.TrainConfig, run)


def run_command(config_class, run_config: Callable[..., TrainResult]) -> None:
    """The run the parsed flags describe (`config_class.from_flags`), by `run_config` (`run`,
    or `bert_tf2.distill.run`); a Ctrl-C ends in the line that says how to resume."""
    config = config_class.from_flags(FLAGS)
    options = config_lib.RunOptions.from_flags(FLAGS)
    if not config.model_dir:
        raise cli.UserError("--model_dir is required: where the run keeps its checkpoints, "
                            "backup and metrics")
    start = time.time()
    try:
        run_config(config, overwrite=options.overwrite,
                   export_new_task=options.export_new_task)
    except KeyboardInterrupt:
        raise interrupted(config) from None
    logging.info("Done in %.1f s", time.time() - start)


def interrupted(config: config_lib.TrainConfig) -> cli.Interrupted:
    """The one line a Ctrl-C ends with: where the backup is and how to resume from it."""
    backup_dir = io_utils.join(config.model_dir, "backup")
    step = crash_safety.backed_up_step(backup_dir)
    if step is None:
        return cli.Interrupted("interrupted before the first backup; rerunning the same "
                               "command starts over")
    return cli.Interrupted(f"interrupted; the backup of step {step} is in {backup_dir}: "
                           "rerunning the same command resumes from it")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Defines every flag `TrainConfig.from_flags` and `RunOptions.from_flags` read."""
    project_flags.define_train_command_flags(flag_values)


if __name__ == "__main__":
    cli.run("train", main, define_flags)
