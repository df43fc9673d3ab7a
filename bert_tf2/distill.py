"""Distils a fine-tuned classifier (an export) into a smaller student, with unlabeled text.

  python -m bert_tf2.distill --flagfile=configs/quickstart_distill.flags
  python -m bert_tf2.distill --run_config=M/run_config.json     # the same run again

A distillation is a training run (`bert_tf2.train`'s flags, phases and outputs) whose
classifier is a student and whose training rows carry the teacher's probabilities:

  check    --teacher is an export of --task (of pairs exactly when --text_b_column is set)
           and every --unlabeled_data row reads, before anything is written; unlabeled
           texts that are dev or test texts are left out (counted in the log and in
           metrics.json's "unlabeled_data"), a file that is mostly such texts is refused;
  student  its encoder module is built in model_dir/student/encoder: with the teacher's
           hidden size from the teacher's embeddings, pooler and every k-th transformer layer
           (k = teacher layers / student layers); else it is --student_encoder, or random;
  label    the teacher labels the training texts and the unlabeled texts once, batched as
           predict does; model_dir/teacher_labels.json keeps its probabilities, so a resumed
           run reads them instead of labelling again;
  train    `train.prepare` and `train.run_prepared` with the distillation loss: the student is
           rebuilt from its module as training rebuilds encoders, backed up, resumed, scored on
           the dev/test hard labels and exported with the teacher's signatures and outputs.

The loss of a row (`DistillationLoss`): the cross-entropy to the teacher's distribution at
--temperature T (softmax for multiclass, a sigmoid per label for binary and multilabel; times
T^2, so its gradients keep their scale), mixed with the hard-label cross-entropy as
w * hard + (1 - w) * soft (w = --hard_label_weight) where the row has a label; an unlabeled
row learns from the soft term alone.
"""

import collections
import dataclasses
import functools
import hashlib
import json
import time
from typing import Dict, List, Optional, Sequence, Tuple

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from absl import flags, logging
import numpy as np
import tensorflow as tf
import tf_keras

from bert_tf2 import cli
from bert_tf2 import config as config_lib
from bert_tf2 import crash_safety
from bert_tf2 import data
from bert_tf2 import distribution
from bert_tf2 import export
from bert_tf2 import flags as project_flags
from bert_tf2 import hub_modules
from bert_tf2 import io_utils
from bert_tf2 import model as model_lib
from bert_tf2 import predict
from bert_tf2 import train

FLAGS = flags.FLAGS
# model_dir/...: the student's encoder module and the teacher's probabilities.
STUDENT_DIR = "student"
STUDENT_ENCODER = f"{STUDENT_DIR}/encoder"
TEACHER_LABELS_FILE = "teacher_labels.json"
# metrics.json's entry for --unlabeled_data: {"texts": the texts the teacher labelled,
# "dropped_dev_test_texts": those left out for being dev or test texts}.
UNLABELED_METRICS = "unlabeled_data"
# Probabilities are clipped this far from 0 and 1 before they are turned back into logits.
_EPSILON = 1e-7
_LAYER = "transformer/layer_"


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

def run(config: config_lib.DistillConfig,
        callbacks: Sequence[tf_keras.callbacks.Callback] = (), *, overwrite: bool = False,
        export_new_task: bool = False) -> train.TrainResult:
    """Checks the teacher and the unlabeled data, builds the student, has the teacher label
    the texts and trains the student as `train.run` trains a classifier."""
    check_settings(config)
    teacher = load_teacher(config)
    unlabeled, dropped = read_unlabeled(config)
    config = with_student_encoder(config)
    prepare_model_dir(config, overwrite=overwrite)
    head = build_student(config, teacher)
    labels = TeacherLabels(config, teacher, unlabeled)
    prepared = train.prepare(config, overwrite=overwrite, export_new_task=export_new_task,
                             training_split=labels.training_split)
    labels.save()
    prepared = dataclasses.replace(prepared, objective=functools.partial(
        objective, config.distill.temperature, config.distill.hard_label_weight))
    start_head = [] if head is None else [StartHeadFrom(head, teacher.path)]
    result = train.run_prepared(config, prepared, [*start_head, *callbacks])
    if not config.distill.unlabeled_data:
        return result
    metrics = {**result.metrics, UNLABELED_METRICS: {"texts": len(unlabeled),
                                                     "dropped_dev_test_texts": dropped}}
    io_utils.write_json(metrics, io_utils.join(prepared.model_dir, "metrics.json"),
                        sort_keys=True)
    return dataclasses.replace(result, metrics=metrics)


def check_settings(config: config_lib.DistillConfig) -> None:
    """Refuses settings a distillation cannot honour, before anything is read."""
    if not config.distill.teacher:
        raise cli.UserError("--teacher is required: the export of the classifier to distil")
    if config.trainer.class_weights != "none":
        raise cli.UserError(f"--class_weights={config.trainer.class_weights}: the teacher's "
                            "probabilities are the targets; leave --class_weights=none")
    if config.model.trainable_encoder_layers == 0:
        raise cli.UserError("--trainable_encoder_layers=0 would train only the student's "
                            "head; pass -1 (all of it) or N (its top N layers)")
    if not config.distill.student_encoder and not config.distill.student_num_layers:
        raise cli.UserError("--student_num_layers is required (or --student_encoder, a "
                            "module whose sizes are the student's)")


def load_teacher(config: config_lib.DistillConfig) -> predict.Predictor:
    """The teacher's serving signature, once it is known to classify as this run does."""
    try:
        teacher = predict.Predictor(config.distill.teacher)
    except predict.SavedModelError as error:
        raise cli.UserError(str(error).replace("--saved_model", "--teacher")) from error
    if teacher.task != config.data.task:
        raise cli.UserError(f"--teacher={teacher.path} is a {teacher.task} classifier, and "
                            f"this run has --task={config.data.task}: pass "
                            f"--task={teacher.task}, or the export of a {config.data.task} "
                            "classifier")
    if teacher.pairs != bool(config.data.text_b_column):
        raise cli.UserError(f"--teacher={teacher.path} classifies "
                            + ("pairs of texts: pass --text_b_column" if teacher.pairs else
                               "single texts: leave --text_b_column unset"))
    if (config.export.export_dir
            and io_utils.same_path(config.export.export_dir, io_utils.dirname(teacher.path))):
        # The student would become the newest version there: the one TF Serving serves and
        # that --teacher=export_dir names on the next run.
        raise cli.UserError(f"--export_dir={config.export.export_dir} holds the teacher "
                            f"({teacher.path}): the student would replace it as the version "
                            "TF Serving and --teacher pick up; pass another --export_dir")
    return teacher


def read_unlabeled(config: config_lib.DistillConfig) -> Tuple[data.Examples, int]:
    """The texts of --unlabeled_data (comma-separated files or globs), read as predict reads
    them under the one bad-row policy (--skip_bad_rows), and how many were dropped for being
    dev or test texts. Blank texts are left out (logged); so are texts (pairs) of the dev or
    test split, which the student is scored on; a file that is the --eval_data/--test_data
    file, or mostly their texts, is refused."""
    texts, origins, blank, dropped = [], [], 0, 0
    bad_rows = data.BadRows(skip=config.data.skip_bad_rows)
    patterns = [p.strip() for p in (config.distill.unlabeled_data or "").split(",") if p.strip()]
    held_out = held_out_texts(config) if patterns else {}
    for pattern in patterns:
        paths = data.matching_files(pattern)
        if not paths or not all(io_utils.isfile(path) for path in paths):
            raise data.DataError(f"--unlabeled_data: {pattern}: no such file; pass files or "
                                 "globs of texts, separated by commas")
        for path in paths:
            check_not_held_out_file(config, path)
            read, splits = 0, collections.Counter()
            for line, text in predict.read_texts(
                    path, input_format=config.distill.unlabeled_input_format,
                    text_column=config.data.text_column,
                    text_b_column=config.data.text_b_column or None,
                    column_names=data.parse_names(config.data.column_names, "--column_names"),
                    bad_rows=bad_rows, encoding=config.data.encoding):
                if not "".join(text if isinstance(text, tuple) else (text,)).strip():
                    blank += 1
                    continue
                read += 1
                split = held_out.get(_text_key(text))
                if split:
                    splits[split] += 1
                    continue
                texts.append(text)
                origins.append(f"{path}:{line}")
            check_mostly_new(path, read, splits)
            dropped += sum(splits.values())
    if patterns:
        logging.info("Unlabeled data: %d texts from %s (%d blank left out, %d bad rows "
                     "skipped)", len(texts), ", ".join(patterns), blank, bad_rows.count)
    if dropped:
        logging.warning("Unlabeled data: %d texts left out that are dev or test texts (the "
                        "student is scored on them, so the teacher must not label them)",
                        dropped)
    if patterns and not texts:
        raise data.DataError(f"--unlabeled_data={config.distill.unlabeled_data}: no texts")
    pairs = bool(config.data.text_b_column)
    return data.Examples(
        texts=tuple(text[0] if pairs else text for text in texts), labels=(),
        source=config.distill.unlabeled_data or "", skipped_rows=bad_rows.count,
        texts_b=tuple(text[1] for text in texts) if pairs else None,
        origins=tuple(origins)), dropped


def held_out_texts(config: config_lib.DistillConfig) -> Dict[object, str]:
    """{text, or (text, text_b) pair, as `_text_key` writes it: "dev" or "test"} for every
    example of the run's dev and test splits (read here as `train.prepare` reads them)."""
    if config.data.train_data:
        splits = {name: data.read_examples(pattern, **data.reader_options(config.data))
                  for name, pattern in (("dev", config.data.eval_data),
                                        ("test", config.data.test_data)) if pattern}
    else:
        splits = {name: split for name, split in data.builtin_corpus_splits().items()
                  if name != "train"}
    held_out = {}
    for name, split in splits.items():
        items = zip(split.texts, split.texts_b) if split.texts_b else split.texts
        held_out.update((_text_key(item), name) for item in items)
    return held_out


def _text_key(text: object) -> object:
    """What two texts (pairs) share when they are the same text, spaces around it aside."""
    return tuple(t.strip() for t in text) if isinstance(text, tuple) else text.strip()


def check_not_held_out_file(config: config_lib.DistillConfig, path: str) -> None:
    """Refuses an --unlabeled_data file that is the --eval_data or --test_data file."""
    for flag, pattern in (("--eval_data", config.data.eval_data),
                          ("--test_data", config.data.test_data)):
        if pattern and any(io_utils.exists(held) and io_utils.same_path(path, held)
                           for held in data.matching_files(pattern)):
            raise cli.UserError(
                f"--unlabeled_data: {path} is the {flag} file: the student would learn the "
                "teacher's answers on the texts it is scored on; leave it out of "
                "--unlabeled_data")


# An --unlabeled_data file more than this share of whose texts are dev/test texts is refused:
# it is a copy of a held-out split, not unlabeled data that happens to repeat a few.
MOST_HELD_OUT = 0.5


def check_mostly_new(path: str, read: int, held_out: Dict[str, int]) -> None:
    """Refuses a file of `read` texts of which `held_out` ({split: texts}) are mostly."""
    count = sum(held_out.values())
    if read and count > MOST_HELD_OUT * read:
        splits = " and ".join(f"{n} of the {split} split" for split, n in sorted(held_out.items()))
        raise cli.UserError(
            f"--unlabeled_data: {path}: {count} of its {read} texts are dev/test texts "
            f"({splits}): a copy of a split the student is scored on; leave it out of "
            "--unlabeled_data")


def prepare_model_dir(config: config_lib.DistillConfig, *, overwrite: bool) -> None:
    """Clears what a distillation left in model_dir with `overwrite`; else refuses a finished
    run there now, before the student's module is written (`train.prepare` checks again)."""
    if overwrite:
        if distribution.is_chief():
            io_utils.rmtree(io_utils.join(config.model_dir, STUDENT_DIR), ignore_errors=True)
            with_labels = io_utils.join(config.model_dir, TEACHER_LABELS_FILE)
            if io_utils.exists(with_labels):
                io_utils.remove(with_labels)
    elif not _resuming(config):
        crash_safety.check_model_dir(config, {})


def _resuming(config: config_lib.TrainConfig) -> bool:
    return crash_safety.backed_up_step(io_utils.join(config.model_dir, "backup")) is not None


# ---------------------------------------------------------------------------------------------
# The student
# ---------------------------------------------------------------------------------------------

def with_student_encoder(config: config_lib.DistillConfig) -> config_lib.DistillConfig:
    """`config` training the student's encoder module: --student_encoder, else the one this
    run builds in model_dir (nothing else is built: the preprocess module must exist)."""
    handle = config.distill.student_encoder or io_utils.join(config.model_dir, STUDENT_ENCODER)
    return config.replace(**{"modules.encoder_handle": handle,
                             "modules.build_missing": False})


def build_student(config: config_lib.DistillConfig, teacher_model: predict.Predictor
                  ) -> Optional[List[np.ndarray]]:
    """Writes the student's encoder module (unless it is --student_encoder, or a resumed run
    has it already), from the teacher's layers where the hidden sizes match, else random.

    Returns the teacher's head (kernel, bias) where the student's pooled output is as wide
    as the teacher's: the student's head starts from it.
    """
    distill, teacher_path = config.distill, teacher_model.path
    try:
        weights = {v.name.split(":")[0]: v for v in export.weights_of(teacher_model.loaded,
                                                                       teacher_path)}
        teacher = hub_modules.bert_config_from_variables(list(weights.values()),
                                                         source=f"--teacher={teacher_path}")
    except ValueError as error:  # a text classifier, but not a BERT one this project exported
        raise cli.UserError(f"{error}; pass an export of bert_tf2.train as --teacher"
                            ) from error
    check_vocab(config, teacher_path)
    head = [weights[f"classifier/{name}"].numpy() for name in ("kernel", "bias")
            if f"classifier/{name}" in weights] or None
    if distill.student_encoder:
        hidden = _check_student_encoder(config, teacher)
        return head if hidden == teacher.hidden_size else None
    student = student_bert_config(teacher, distill.student_num_layers,
                                  distill.student_hidden_size)
    head = head if student.hidden_size == teacher.hidden_size else None
    path = config.modules.encoder_handle
    if io_utils.isdir(path) and _resuming(config):
        logging.info("Student encoder: %s, as the interrupted run built it", path)
        return head
    with distribution.dtype_policy("float32"):
        encoder = hub_modules.build_encoder(student)
    if student.hidden_size == teacher.hidden_size:
        layers = copy_teacher_layers(encoder.network, weights, teacher.num_hidden_layers)
        logging.info("Student encoder: %d of %d layers (teacher layers %s), hidden %d, its "
                     "embeddings, layers and pooler from --teacher=%s",
                     student.num_hidden_layers, teacher.num_hidden_layers,
                     ", ".join(map(str, layers)), student.hidden_size, teacher_path)
    else:
        logging.info("Student encoder: %d layers, hidden %d (the teacher's is %d): random "
                     "weights; pass --student_encoder to start from a module",
                     student.num_hidden_layers, student.hidden_size, teacher.hidden_size)
    if io_utils.isdir(path):  # built by a run that stopped before its first backup
        io_utils.rmtree(path)
    hub_modules.save_encoder(encoder, path,
                             vocab_file=io_utils.join(teacher_path, "assets", "vocab.txt"))
    return head


class StartHeadFrom(tf_keras.callbacks.Callback):
    """Sets the student's head (its `classifier` Dense layer) to the teacher's `head` when
    training begins, before a resumed run's backup is restored over it (`crash_safety.Backup`
    comes last)."""

    def __init__(self, head: Sequence[np.ndarray], teacher_path: str):
        super().__init__()
        self.head, self.teacher_path = head, teacher_path

    def on_train_begin(self, logs=None):
        self.model.get_layer("classifier").set_weights(self.head)
        logging.info("Student head: the teacher's (--teacher=%s)", self.teacher_path)


def student_bert_config(teacher, num_layers: int, hidden_size: Optional[int]):
    """The teacher's BertConfig with the student's layers (and hidden size, split between
    the teacher's attention heads; the feed-forward 4x wide, as BERT's). A UserError for a
    hidden size the heads do not divide."""
    student = teacher.__class__.from_dict(teacher.to_dict())
    student.num_hidden_layers = num_layers
    if hidden_size and hidden_size != teacher.hidden_size:
        heads = teacher.num_attention_heads
        if hidden_size % heads:
            below, above = hidden_size // heads * heads, (hidden_size // heads + 1) * heads
            raise cli.UserError(
                f"--student_hidden_size={hidden_size}: the student keeps the teacher's "
                f"{heads} attention heads, which split the hidden size evenly; pass a "
                f"multiple of {heads}, e.g. " + (f"{below} or " if below else "") + f"{above}")
        student.hidden_size, student.intermediate_size = hidden_size, 4 * hidden_size
        student.embedding_size = None
    elif num_layers > teacher.num_hidden_layers:
        raise cli.UserError(f"--student_num_layers={num_layers}, but the teacher has "
                            f"{teacher.num_hidden_layers} layers: a student of its hidden size "
                            "starts from its layers; pass at most "
                            f"{teacher.num_hidden_layers}, or another --student_hidden_size")
    return student


def teacher_layers(teacher_layers_count: int, student_layers: int) -> List[int]:
    """The teacher layer each student layer starts from: every k-th from the bottom,
    k = teacher layers // student layers (DistilBERT's choice)."""
    step = teacher_layers_count // student_layers
    return [i * step for i in range(student_layers)]


def copy_teacher_layers(network: tf_keras.Model, weights: Dict[str, tf.Variable],
                        teacher_layer_count: int) -> List[int]:
    """Sets every weight of the student `network` from the teacher's of the same name, its
    transformer layer i from teacher layer `teacher_layers(...)[i]`; returns those layers."""
    count = sum(1 for layer in network.layers if layer.name.startswith(_LAYER))
    chosen = teacher_layers(teacher_layer_count, count)
    for weight in network.weights:
        name = weight.name.split(":")[0]
        if name.startswith(_LAYER):
            index, rest = name[len(_LAYER):].split("/", 1)
            name = f"{_LAYER}{chosen[int(index)]}/{rest}"
        weight.assign(weights[name])
    return chosen


def _check_student_encoder(config: config_lib.DistillConfig, teacher) -> int:
    """Refuses --student_num_layers/--student_hidden_size that the module does not have, and
    a module of another vocab than the teacher's; returns its hidden size."""
    student = hub_modules.read_encoder_config(config.distill.student_encoder)
    for flag, wanted, actual in (
            ("student_num_layers", config.distill.student_num_layers, student.num_hidden_layers),
            ("student_hidden_size", config.distill.student_hidden_size, student.hidden_size),
            ("vocab size of --teacher's encoder", teacher.vocab_size, student.vocab_size)):
        if wanted and wanted != actual:
            raise cli.UserError(f"--student_encoder={config.distill.student_encoder} has "
                                f"{actual}, not --{flag}={wanted}: leave the flag unset, or "
                                "pass a module of that size")
    logging.info("Student encoder: --student_encoder=%s (%d layers, hidden %d)",
                 config.distill.student_encoder, student.num_hidden_layers, student.hidden_size)
    return student.hidden_size


def check_vocab(config: config_lib.TrainConfig, teacher_path: str) -> None:
    """Refuses a --preprocess_handle whose vocab is not the teacher's: the student would read
    other token ids than the embeddings it starts from. A hub URL is resolved (downloaded to
    TF Hub's cache, where training loads it from); a module without an assets/vocab.txt, or
    one that cannot be resolved (training then says why), is not compared."""
    import tensorflow_hub as hub  # pylint: disable=g-import-not-at-top
    try:
        module_dir = hub.resolve(config.modules.preprocess_handle)
    except Exception:  # pylint: disable=broad-except
        return
    ours = io_utils.join(module_dir, "assets", "vocab.txt")
    theirs = io_utils.join(teacher_path, "assets", "vocab.txt")
    if not (io_utils.isfile(ours) and io_utils.isfile(theirs)):
        return
    with io_utils.open(ours, "rb") as a, io_utils.open(theirs, "rb") as b:
        if a.read() != b.read():
            raise cli.UserError(f"--preprocess_handle={config.modules.preprocess_handle} has "
                                f"another vocab than --teacher={teacher_path}: pass the "
                                "preprocess module the teacher was trained with")


# ---------------------------------------------------------------------------------------------
# The teacher's labels
# ---------------------------------------------------------------------------------------------

class TeacherLabels:
    """The teacher's probabilities of the training and unlabeled texts, as training targets.

    `training_split` (for `train.prepare`) labels the texts, or reads model_dir's
    teacher_labels.json when it holds this teacher's labels of these texts; `save` writes the
    file once `train.prepare` has accepted the run.
    """

    def __init__(self, config: config_lib.DistillConfig, teacher: predict.Predictor,
                 unlabeled: data.Examples):
        self.config, self.teacher, self.unlabeled = config, teacher, unlabeled
        self.path = io_utils.join(config.model_dir, TEACHER_LABELS_FILE)
        self._new: Optional[Dict[str, object]] = None

    def training_split(self, train_split: data.Examples) -> data.Examples:
        """`train_split` and the unlabeled texts, each labelled [hard, soft, has_hard]."""
        if self.teacher.class_names != train_split.class_names:
            raise cli.UserError(
                f"--teacher={self.teacher.path} has the classes "
                f"{','.join(self.teacher.class_names)}, the training data "
                f"{','.join(train_split.class_names)}: pass --class_names="
                f"{','.join(self.teacher.class_names)}")
        items = list(zip(train_split.texts, train_split.texts_b)) if train_split.texts_b else \
            list(train_split.texts)
        items += (list(zip(self.unlabeled.texts, self.unlabeled.texts_b))
                  if self.unlabeled.texts_b else list(self.unlabeled.texts))
        probabilities = self._probabilities(items)
        width = probabilities.shape[1]
        hard = [_dense_label(label, width) for label in train_split.labels]
        hard += [(0.0,) * width] * len(self.unlabeled)
        has_hard = [1.0] * len(train_split) + [0.0] * len(self.unlabeled)
        targets = tuple(tuple(h) + tuple(float(p) for p in soft) + (flag,)
                        for h, soft, flag in zip(hard, probabilities, has_hard))
        texts_b = (train_split.texts_b + self.unlabeled.texts_b) if train_split.texts_b else None
        logging.info("Training on %d labelled and %d unlabeled texts, with the teacher's "
                     "probabilities", len(train_split), len(self.unlabeled))
        return dataclasses.replace(
            train_split, texts=train_split.texts + self.unlabeled.texts, labels=targets,
            texts_b=texts_b, source=" + ".join(filter(None, (train_split.source,
                                                             self.unlabeled.source))),
            origins=(train_split.origins or ()) + (self.unlabeled.origins or ()))

    def _probabilities(self, items: Sequence[object]) -> np.ndarray:
        """[texts, width] float32: read from the file if it holds them, else labelled now."""
        digest = hashlib.sha256(json.dumps([self.teacher.path, items], ensure_ascii=False)
                                .encode("utf-8")).hexdigest()
        kept = _read_json(self.path)
        if kept and kept.get("sha256") == digest:
            logging.info("Teacher labels of %d texts read from %s", len(items), self.path)
            return np.asarray(kept["probabilities"], np.float32).reshape(len(items), -1)
        probabilities = label(self.teacher, items, self.config.trainer.eval_batch_size)
        self._new = {"teacher": self.teacher.path, "texts": len(items), "sha256": digest,
                     "probabilities": probabilities.tolist()}
        return probabilities

    def save(self) -> None:
        if self._new is not None and distribution.is_chief():
            io_utils.write_json(self._new, self.path)


def label(teacher: predict.Predictor, items: Sequence[object], batch_size: int) -> np.ndarray:
    """The teacher's probabilities of `items`, [texts, 1 or classes], batched as predict does."""
    start = time.monotonic()
    batches = [probabilities for _, probabilities, _ in
               predict.predict_in_batches(teacher, items, batch_size)]
    probabilities = np.concatenate(batches).astype(np.float32)
    logging.info("The teacher labelled %d texts in %.1f s", len(items), time.monotonic() - start)
    return probabilities.reshape(len(items), -1)


def _dense_label(label_value, width: int) -> Tuple[float, ...]:
    """A binary 0/1, a class id or a 0/1 row, as `width` floats."""
    if isinstance(label_value, tuple):
        return tuple(float(v) for v in label_value)
    if width == 1:
        return (float(label_value),)
    return tuple(float(i == label_value) for i in range(width))


def _read_json(path: str) -> Optional[Dict[str, object]]:
    try:
        return io_utils.read_json(path)
    except ValueError:
        return None  # half a file is no labels: label again


# ---------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------

def objective(temperature: float, hard_label_weight: float, task: str, num_classes: int):
    """The loss and metrics a student compiles with (`train.Prepared.objective`): the
    distillation loss, and the task's metrics on the rows' hard labels."""
    width = 1 if task == "binary" else num_classes
    _, metrics = model_lib.loss_and_metrics(task, num_classes)
    return (DistillationLoss(task, width, temperature, hard_label_weight),
            [OnHardLabels(metric, task, width) for metric in metrics])


def _logits(probabilities: tf.Tensor, task: str) -> tf.Tensor:
    """The logits (up to a constant, for softmax) of the head's probabilities."""
    probabilities = tf.cast(probabilities, tf.float32)
    if task == "multiclass":
        return tf.math.log(tf.clip_by_value(probabilities, _EPSILON, 1.0))
    p = tf.clip_by_value(probabilities, _EPSILON, 1.0 - _EPSILON)
    return tf.math.log(p) - tf.math.log1p(-p)


def _cross_entropy(task: str, targets: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """[batch]: softmax cross-entropy (multiclass), else the mean sigmoid one per label."""
    if task == "multiclass":
        return tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=targets,
                                                                  logits=logits), axis=-1)


class DistillationLoss(tf_keras.losses.Loss):
    """Per row: w * hard + (1 - w) * T^2 * soft where it has a label, T^2 * soft where not.

    Training rows are float [hard (width), teacher probabilities (width), has_hard]; dev and
    test rows are the task's integer labels, scored by the hard term alone, as training
    scores them.
    """

    def __init__(self, task: str, width: int, temperature: float, hard_label_weight: float):
        super().__init__(name="distillation")
        self.task, self.width = task, width
        self.temperature, self.hard_label_weight = temperature, hard_label_weight

    def call(self, y_true, y_pred):
        logits = _logits(y_pred, self.task)
        if y_true.dtype.is_integer:
            return _cross_entropy(self.task, _dense(y_true, self.task, self.width), logits)
        width, t, w = self.width, self.temperature, self.hard_label_weight
        hard = _cross_entropy(self.task, y_true[:, :width], logits)
        teacher = _logits(y_true[:, width:2 * width], self.task) / t
        targets = (tf.nn.softmax(teacher) if self.task == "multiclass"
                   else tf.sigmoid(teacher))
        soft = _cross_entropy(self.task, targets, logits / t) * (t * t)
        has_hard = y_true[:, 2 * width]
        return has_hard * (w * hard + (1.0 - w) * soft) + (1.0 - has_hard) * soft

    def get_config(self):
        return {"task": self.task, "width": self.width, "temperature": self.temperature,
                "hard_label_weight": self.hard_label_weight}


def _dense(labels: tf.Tensor, task: str, width: int) -> tf.Tensor:
    """Integer labels ([batch] or [batch, 1] ids, or 0/1 rows) as float [batch, width]."""
    if task == "multiclass":
        return tf.one_hot(tf.reshape(labels, [-1]), width, dtype=tf.float32)
    return tf.reshape(tf.cast(labels, tf.float32), [-1, width])


class OnHardLabels(tf_keras.metrics.Metric):
    """`metric` on the hard labels: of the rows that have one, in training batches (float
    [hard, soft, has_hard] rows); of every row in dev and test batches (integer labels)."""

    def __init__(self, metric: tf_keras.metrics.Metric, task: str, width: int, **kwargs):
        super().__init__(name=metric.name, **kwargs)
        self.metric, self.task, self.width = metric, task, width

    def update_state(self, y_true, y_pred, sample_weight=None):
        if not y_true.dtype.is_integer:
            labelled = y_true[:, 2 * self.width] > 0.5
            y_true = tf.boolean_mask(y_true[:, :self.width], labelled)
            y_pred = tf.boolean_mask(y_pred, labelled)
            if self.task == "multiclass":
                y_true = tf.argmax(y_true, axis=-1, output_type=tf.int32)
        return self.metric.update_state(y_true, y_pred, sample_weight=sample_weight)

    def result(self):
        return self.metric.result()

    def reset_state(self):
        self.metric.reset_state()


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------

def main(argv):
    del argv
    train.run_command(config_lib.DistillConfig, run)


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Defines every flag `DistillConfig.from_flags` reads: training's, and the teacher's,
    the student's and the loss's."""
    train.define_flags(flag_values)
    project_flags.define_distillation_flags(flag_values)


if __name__ == "__main__":
    cli.run("distill", main, define_flags)
