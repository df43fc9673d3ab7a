"""The model: a TF Hub BERT encoder with a pooled-[CLS] sigmoid head, and its raw-text wrapper.

Keras functional models that share one set of weights:

  build_classifier:       encoder inputs dict -> encoder -> pooled_output -> dropout -> Dense(1)
  build_text_classifier:  string -> preprocess (tokenize + pack) -> the classifier above
  head_model:             pooled_output -> dropout -> Dense(1), the classifier's own head (over
                          a wholly frozen encoder it trains alone: `bert_tf2.frozen_encoder`)

Training feeds the first from the tf.data pipeline (tokenization there runs in parallel with the
train step and pads each batch only as far as it needs); evaluation on raw strings, export and
serving use the second. The head (dropout, Dense, sigmoid) always computes in float32, whatever
the mixed-precision policy, so the sigmoid and the loss stay numerically safe.

Mixed precision and the encoder: a SavedModel computes in the dtypes it was traced with, so a
`hub.KerasLayer` encoder computes in float32 under every Keras policy (its sequence_output,
pooled_output and every matmul inside are float32; only the layer's nominal compute dtype
changes). `rebuild_encoder` makes mixed precision real: it rebuilds the module as a Model
Garden `BertEncoder` under the global policy (sizes read off the module's variables) and loads
the module's weights into it, through the same by-name mapping `bert_tf2.checkpoints` uses for
our classifier checkpoints.

The rebuilt encoder is also faster: it computes its last layer at the [CLS] position alone
(`rebuild_encoder(pooled_only=True)`), the only one the head reads, with the same pooled
output. So the classifier rebuilds its encoder by default, in float32 too; a module that
cannot be rebuilt exactly then runs as saved.

Freezing the encoder (`ModelConfig.trainable_encoder_layers`): a `hub.KerasLayer` trains all of
its module's variables or none of them. So a wholly frozen encoder (0) is the rebuilt encoder
with every layer frozen (or the hub layer with `trainable=False`, where it is not rebuilt), and
a partly frozen one (N > 0) is the encoder rebuilt as a BertEncoder (`rebuild_encoder`, checked
to compute what the module computes) whose embeddings and lower transformer layers are set
`trainable=False` (`freeze_encoder`). Keras's own trainable flags
then say what trains: the optimizer keeps AdamW slots for, and decays, only trainable weights,
backpropagation stops at the lowest trainable layer, and checkpoints still hold every weight.
Keeping the hub layer trainable and filtering the variables the optimizer updates would leave
all of that (and the trainable counts a run logs) believing the whole encoder trains.
"""

import os
import re
import tempfile
from typing import Dict, Optional

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import numpy as np
import tensorflow as tf
import tensorflow_hub as hub
import tensorflow_text  # noqa: F401  (registers the ops the preprocessing module needs)
import tf_keras
from absl import logging

from bert_tf2 import checkpoints
from bert_tf2 import cli
from bert_tf2 import compat
from bert_tf2 import config as config_lib
from bert_tf2 import hub_modules
from bert_tf2 import input_pipeline

ENCODER_INPUTS = ("input_word_ids", "input_mask", "input_type_ids")
SERVING_SUB_BATCH = config_lib.SERVING_SUB_BATCH
# The BertEncoder's layers that `freeze_encoder` leaves trainable, from the top.
_TRANSFORMER_LAYER = re.compile(r"transformer/layer_(\d+)")
_POOLER = "pooler_transform"


def build_classifier(encoder_handle: str, *, dropout_rate: float = 0.1,
                     encoder: Optional[tf_keras.layers.Layer] = None, task: str = "binary",
                     num_classes: int = 2) -> tf_keras.Model:
    """Encoder inputs (int32 [batch, seq]) -> probabilities.

    binary: P(positive), [batch, 1], by a sigmoid; multiclass: a softmax over the classes,
    [batch, num_classes]; multilabel: a sigmoid per class, [batch, num_classes].
    The encoder is the module at `encoder_handle` as a `hub.KerasLayer`, unless `encoder` (a
    layer with the same interface, e.g. from `rebuild_encoder`) is given.
    """
    inputs = {name: tf_keras.Input(shape=(None,), dtype=tf.int32, name=name)
              for name in ENCODER_INPUTS}
    if encoder is None:
        encoder = hub.KerasLayer(encoder_handle, trainable=True, name="encoder")
    pooled = encoder(inputs)["pooled_output"]
    pooled = tf_keras.layers.Dropout(dropout_rate, dtype="float32", name="dropout")(pooled)
    probability = tf_keras.layers.Dense(
        1 if task == "binary" else num_classes,
        activation="softmax" if task == "multiclass" else "sigmoid", dtype="float32",
        name="classifier",
        kernel_initializer=tf_keras.initializers.TruncatedNormal(stddev=0.02))(pooled)
    return Classifier(inputs, probability, name="bert_classifier")


def build_classifier_for(model_config: config_lib.ModelConfig, encoder_handle: str, *,
                         task: str = "binary", num_classes: int = 2,
                         load_encoder_weights: bool = True) -> tf_keras.Model:
    """The classifier `model_config` describes for `task`, under the global dtype policy.

    With `model_config.rebuild_encoder` (the default) its encoder is the module rebuilt as a
    BertEncoder (`rebuild_encoder`): it computes in the policy, can train in part, and
    computes its last layer at [CLS] alone, the one position the head reads (`pooled_only`).
    Logs in which dtype the encoder computes: a hub encoder is a SavedModel, which computes in
    the dtypes it was saved with (float32) whatever the policy.
    """
    encoder = _classifier_encoder(model_config, encoder_handle, load_encoder_weights)
    return build_classifier(encoder_handle, dropout_rate=model_config.dropout, encoder=encoder,
                            task=task, num_classes=num_classes)


def _classifier_encoder(model_config: config_lib.ModelConfig, encoder_handle: str,
                        load_weights: bool) -> tf_keras.layers.Layer:
    """The rebuilt encoder where `model_config` says so, else the module as a hub layer.

    A rebuild for speed alone (float32, the encoder trained all or none) that cannot be exact
    (a module that is not a BertEncoder, or whose dropout rates it does not record) falls
    back to the module as saved; a rebuild that a mixed policy or a partly frozen encoder
    needs does not.
    """
    policy = tf_keras.mixed_precision.global_policy()
    mixed = policy.compute_dtype != "float32"
    needed = mixed or model_config.trainable_encoder_layers > 0
    if model_config.rebuild_encoder:
        try:
            encoder = rebuild_encoder(encoder_handle, load_weights=load_weights,
                                      pooled_only=True, assume_bert_dropout=needed)
        except ValueError as error:
            if needed:
                raise EncoderRebuildError(
                    f"{error}; {_why_rebuilt(model_config, policy.name)}") from error
            logging.info("%s: the encoder runs as its module was saved", error)
        else:
            freeze_encoder(encoder, model_config.trainable_encoder_layers, source=encoder_handle)
            if mixed:
                logging.info("Mixed precision: the encoder computes in %s (rebuilt under %s); "
                             "the head and the loss in float32", policy.compute_dtype,
                             policy.name)
            return encoder
    elif mixed:
        logging.warning("Mixed precision: the encoder computes in float32 (the hub module as "
                        "saved, --norebuild_encoder_under_policy), and so does the head: %s "
                        "changes nothing", policy.name)
    return hub.KerasLayer(encoder_handle, name="encoder",
                          trainable=model_config.trainable_encoder_layers != 0)


class EncoderRebuildError(cli.UserError, ValueError):
    """The encoder module cannot be rebuilt, and a flag needs it rebuilt; the message says
    which flag and how to train without it."""


def _why_rebuilt(model_config: config_lib.ModelConfig, policy: str) -> str:
    """Which flag needs the encoder rebuilt, and how to train without rebuilding it."""
    layers = model_config.trainable_encoder_layers
    if layers > 0:
        return (f"--trainable_encoder_layers={layers} trains only its top layers, which needs "
                "it rebuilt: pass --trainable_encoder_layers=-1 (all of it) or 0 (none of it) "
                "to train the module as saved")
    return (f"--mixed_precision={policy} computes it in that policy, which needs it rebuilt: "
            "pass --mixed_precision=float32, or --norebuild_encoder_under_policy to run the "
            "module as saved (in float32)")


def loss_and_metrics(task: str, num_classes: int):
    """The training loss and the metrics reported for `task` (the names metrics.json uses),
    `examples` (`ExampleCount`) last."""
    if task == "multiclass":
        return (tf_keras.losses.SparseCategoricalCrossentropy(),
                [tf_keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                 MacroF1(num_classes), ExampleCount()])
    if task == "multilabel":  # the headline figures first; per-label accuracy only beside
        return (tf_keras.losses.BinaryCrossentropy(),  # them (most labels are off: it is high)
                [MultilabelF1("micro", num_classes), MultilabelF1("macro", num_classes),
                 SubsetAccuracy(),
                 tf_keras.metrics.BinaryAccuracy(name="label_accuracy"),
                 tf_keras.metrics.AUC(name="auc", multi_label=True), ExampleCount()])
    return (tf_keras.losses.BinaryCrossentropy(),
            [tf_keras.metrics.BinaryAccuracy(name="accuracy"),
             tf_keras.metrics.AUC(name="auc"), ExampleCount()])


class ExampleCount(tf_keras.metrics.Metric):
    """How many examples the figures rest on: the rows of the batches that count (weight,
    or evaluation mask, above 0). It also counts every row, filling ones included (`rows`):
    `Classifier.evaluate` needs both to report the loss over the examples alone."""

    def __init__(self, name: str = "examples", **kwargs):
        super().__init__(name=name, **kwargs)
        self.examples = self.add_weight(name="examples", initializer="zeros", dtype=tf.float32)
        self.rows = self.add_weight(name="rows", initializer="zeros", dtype=tf.float32)

    def update_state(self, y_true, y_pred, sample_weight=None):
        del y_true
        # After the predictions: a static batch size is a constant, and a count that does not
        # wait for the batch would run again in the step that finds the data at its end.
        with tf.control_dependencies([y_pred]):
            rows = tf.cast(tf.shape(y_pred)[0], tf.float32)
        self.rows.assign_add(rows)
        self.examples.assign_add(rows if sample_weight is None else tf.reduce_sum(
            tf.cast(tf.reshape(tf.cast(sample_weight, tf.float32), [-1]) > 0, tf.float32)))

    def result(self):
        return self.examples

    def reset_state(self):
        self.examples.assign(0.0)
        self.rows.assign(0.0)


def _decisions(y_true, y_pred):
    """The 0/1 labels and the served decisions (probability >= the threshold), as float32."""
    return (tf.cast(y_true, tf.float32),
            tf.cast(y_pred >= config_lib.DECISION_THRESHOLD, tf.float32))


class SubsetAccuracy(tf_keras.metrics.MeanMetricWrapper):
    """Multi-label: the share of examples whose every label is right."""

    def __init__(self, name: str = "subset_accuracy", **kwargs):
        def all_right(y_true, y_pred):
            labels, decided = _decisions(y_true, y_pred)
            return tf.reduce_min(tf.cast(tf.equal(labels, decided), tf.float32), axis=-1)
        super().__init__(all_right, name=name, **kwargs)


class MultilabelF1(tf_keras.metrics.Metric):
    """Multi-label F1 of the served decisions: `micro` over every (example, label) decision,
    or `macro`, the unweighted mean of the labels' F1 (0 for a label neither on nor predicted,
    as scikit-learn's `f1_score(average="macro", zero_division=0)`)."""

    def __init__(self, average: str, num_classes: int, name: str = None, **kwargs):
        super().__init__(name=name or f"{average}_f1", **kwargs)
        self.average, self.num_classes = average, num_classes
        self.counts = self.add_weight(name="counts", shape=(3, num_classes),
                                      initializer="zeros", dtype=tf.float32)

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels, decided = _decisions(y_true, y_pred)
        weight = (tf.ones_like(labels[:, :1]) if sample_weight is None else
                  tf.reshape(tf.cast(sample_weight, tf.float32), [-1, 1]))
        self.counts.assign_add(tf.stack([  # true positives, false positives, false negatives
            tf.reduce_sum(weight * labels * decided, axis=0),
            tf.reduce_sum(weight * (1 - labels) * decided, axis=0),
            tf.reduce_sum(weight * labels * (1 - decided), axis=0)]))

    def result(self):
        counts = self.counts if self.average == "macro" else tf.reduce_sum(
            self.counts, axis=1, keepdims=True)
        true_positives, false_positives, false_negatives = tf.unstack(counts)
        f1 = tf.math.divide_no_nan(2.0 * true_positives,
                                   2.0 * true_positives + false_positives + false_negatives)
        return tf.reduce_mean(f1)

    def reset_state(self):
        self.counts.assign(tf.zeros_like(self.counts))

    def get_config(self):
        return {**super().get_config(), "average": self.average,
                "num_classes": self.num_classes}


class MacroF1(tf_keras.metrics.Metric):
    """The unweighted mean of the per-class F1 scores of the argmax prediction.

    Classes that are neither in the labels nor predicted are left out of the mean (as
    scikit-learn's `f1_score(average="macro")` does); a class's F1 is 0 where it has no
    true positive.
    """

    def __init__(self, num_classes: int, name: str = "macro_f1", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.confusion = self.add_weight(name="confusion", shape=(num_classes, num_classes),
                                         initializer="zeros", dtype=tf.float32)

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = tf.reshape(tf.cast(y_true, tf.int32), [-1])
        predicted = tf.argmax(y_pred, axis=-1, output_type=tf.int32)
        weights = None if sample_weight is None else tf.reshape(
            tf.cast(sample_weight, tf.float32), [-1])
        self.confusion.assign_add(tf.math.confusion_matrix(
            labels, predicted, num_classes=self.num_classes, weights=weights,
            dtype=tf.float32))

    def result(self):
        true_positives = tf.linalg.diag_part(self.confusion)
        labelled = tf.reduce_sum(self.confusion, axis=1)
        predicted = tf.reduce_sum(self.confusion, axis=0)
        f1 = tf.math.divide_no_nan(2.0 * true_positives, labelled + predicted)
        present = tf.cast(labelled + predicted > 0, tf.float32)
        return tf.math.divide_no_nan(tf.reduce_sum(f1 * present), tf.reduce_sum(present))

    def reset_state(self):
        self.confusion.assign(tf.zeros_like(self.confusion))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


def freeze_encoder(encoder: tf_keras.Model, trainable_layers: int, *, source: str) -> None:
    """Leaves only the top `trainable_layers` transformer layers of `encoder` (a
    `rebuild_encoder` result) and its pooler trainable; 0 freezes it all, -1 nothing."""
    if trainable_layers < 0:
        return
    network = encoder.network
    transformer = sorted((layer for layer in network.layers
                          if _TRANSFORMER_LAYER.fullmatch(layer.name)),
                         key=lambda layer: int(_TRANSFORMER_LAYER.fullmatch(layer.name)[1]))
    if trainable_layers > len(transformer):
        raise cli.UserError(
            f"--trainable_encoder_layers={trainable_layers}, but the encoder {source} has "
            f"{len(transformer)} transformer layers: use at most {len(transformer)}, or -1 to "
            "train all of it")
    trainable = transformer[len(transformer) - trainable_layers:]
    if trainable:
        trainable.append(network.get_layer(_POOLER))
    for layer in network.layers:
        layer.trainable = any(layer is kept for kept in trainable)
    logging.info("Encoder %s: %s trainable, everything else frozen", source,
                 ", ".join(layer.name for layer in trainable) or "nothing")


def describe_trainable(model: tf_keras.Model) -> str:
    """How many of `model`'s weights train: 'trainable: 2 variables, 17 parameters; frozen:
    ...' (floating-point weights only: a module's flags are not weights)."""
    def count(weights):
        weights = [w for w in weights if w.dtype.is_floating]
        return (f"{len(weights)} variables, "
                f"{sum(int(np.prod(w.shape)) for w in weights):,} parameters")

    return (f"trainable: {count(model.trainable_weights)}; "
            f"frozen: {count(model.non_trainable_weights)}")


def pooled_output_model(classifier: tf_keras.Model) -> tf_keras.Model:
    """Encoder inputs -> the pooled encoder output that `classifier`'s head reads."""
    # Node 0: the classifier's own call of its dropout layer (`head_model` adds another).
    return tf_keras.Model(classifier.inputs, classifier.get_layer("dropout").get_input_at(0),
                          name="pooled_output")


def head_model(classifier: tf_keras.Model) -> tf_keras.Model:
    """Pooled output (float32 [batch, hidden]) -> probabilities, through
    `classifier`'s own dropout and dense layers: training it trains `classifier`'s head."""
    dense = classifier.get_layer("classifier")
    pooled = tf_keras.Input(shape=(dense.kernel.shape[0],), dtype=tf.float32,
                            name="pooled_output")
    return Classifier(pooled, dense(classifier.get_layer("dropout")(pooled)),
                      name="classifier_head")


class Classifier(tf_keras.Model):
    """A functional model whose evaluation works on any strategy's datasets.

    Keras evaluates a distributed dataset (what `distribute_datasets_from_function` gives
    under mirrored, multi-worker and TPU strategies) only for a given number of steps, and runs
    several batches per execution (compile's `steps_per_execution`) only on data of known size;
    length-bucketed evaluation data has no known size. So:

      evaluate  counts the steps of a distributed dataset in one pass over its input pipeline
                (no model; in step with the other workers) when `steps` is not given, and runs
                one batch per execution (training keeps `steps_per_execution`);
      fit       validates at each epoch end by calling `evaluate` on `validation_data` (adding
                the val_* logs Keras would), with a fresh iterator each time.

    A batch of no examples (a replica's share of a last, short evaluation step) is evaluated
    as one of a single position (`test_step`).

    Evaluation batches with weights (the static-shape ones, `input_pipeline.full_batches`)
    hold rows of weight 0 that only fill a batch: `test_step` masks them out of every metric,
    and `evaluate` reports the loss over the examples that count (Keras' loss mean weighs
    each batch by its rows, filling ones included). The examples counted are reported as
    `examples` (`ExampleCount`).
    """

    # pylint: disable-next=arguments-differ
    def fit(self, *args, validation_data=None, callbacks=None, **kwargs):
        if validation_data is not None:
            callbacks = [_ValidateAtEpochEnd(validation_data), *(callbacks or [])]
        return super().fit(*args, callbacks=callbacks, **kwargs)

    def test_step(self, data):
        x, y, sample_weight = tf_keras.utils.unpack_x_y_sample_weight(data)
        if isinstance(x, dict):  # encoder inputs (a head model takes pooled outputs)
            x = at_least_one_position(x)
        y_pred = self(x, training=False)
        self.compute_loss(x, y, y_pred, sample_weight)
        if sample_weight is not None:  # the metrics (unweighted in Keras) see only these
            compat.mask_for_metrics(y_pred, sample_weight > 0)
        return self.compute_metrics(x, y, y_pred, sample_weight)

    # pylint: disable-next=arguments-differ
    def evaluate(self, x=None, *args, **kwargs):
        if kwargs.get("steps") is None and isinstance(x, tf.distribute.DistributedDataset):
            kwargs["steps"] = count_steps(x)
        variable = compat.steps_per_execution_variable(self)
        saved = 1 if variable is None else int(variable.numpy())
        if saved != 1:
            variable.assign(1)
        try:
            results = super().evaluate(x, *args, **kwargs)
        finally:
            if saved != 1:
                variable.assign(saved)
        return self._loss_over_examples(results)

    def _loss_over_examples(self, results):
        """`results` (a dict) with the loss averaged over the examples that count: Keras
        averages it over every row, so it is scaled by rows / examples (1 without filling)."""
        counts = [metric for metric in self.metrics if isinstance(metric, ExampleCount)]
        if not isinstance(results, dict) or "loss" not in results or not counts:
            return results
        rows, examples = float(counts[0].rows.numpy()), float(counts[0].examples.numpy())
        if examples and rows != examples:
            results = {**results, "loss": results["loss"] * rows / examples}
        return results


def at_least_one_position(inputs: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Encoder inputs with a sequence dimension of at least one position.

    Under a multi-replica strategy, a replica with no share of the last step over evaluation
    data gets a batch of no examples whose every dimension is 0 (tf.distribute fills it in
    from the dataset's [None, None] spec), and the encoder's pooler reads position 0 of it.
    Any real batch holds [CLS] and [SEP] and passes unchanged.
    """
    return {name: tf.pad(ids, [[0, 0], [0, tf.maximum(1 - tf.shape(ids)[1], 0)]])
            for name, ids in inputs.items()}


def count_steps(dataset) -> int:
    """Steps in one pass over a (distributed) dataset: one batch per replica each."""
    return sum(1 for _ in dataset)


class _ValidateAtEpochEnd(tf_keras.callbacks.Callback):
    """Evaluates on `data` at each epoch end and adds val_<metric> to the epoch's logs.

    It must come first among the callbacks, so that the others (CSVLogger, TensorBoard, the
    progress bar) see the val_* entries it adds, as they do after Keras' own validation.
    """

    def __init__(self, data):
        super().__init__()
        self.data = data
        self.steps = None

    def on_epoch_end(self, epoch, logs=None):
        del epoch
        if self.steps is None and isinstance(self.data, tf.distribute.DistributedDataset):
            self.steps = count_steps(self.data)  # once: the data is the same every epoch
        results = self.model.evaluate(self.data, steps=self.steps, return_dict=True, verbose=0)
        if logs is not None:
            logs.update({f"val_{name}": value for name, value in results.items()})


def rebuild_encoder(encoder_handle: str, *, load_weights: bool = True,
                    pooled_only: bool = False, assume_bert_dropout: bool = True
                    ) -> tf_keras.Model:
    """The encoder module at `encoder_handle` rebuilt as a `BertEncoder` under the global policy.

    The sizes are read off the module's variables (`hub_modules.bert_config_from_variables`);
    with `load_weights` the module's weights are loaded into it by name, by way of a temporary
    checkpoint that `bert_tf2.checkpoints` maps and checks like any other, and the rebuilt
    encoder is checked to compute what the module computes (within the policy's precision).
    Without `load_weights` the weights are left random, for a caller that sets them itself.
    `pooled_only` builds it to compute only `pooled_output` exactly (`hub_modules.build_encoder`).
    The dropout rates come from the module's Keras metadata (`hub_modules.saved_dropout_rates`);
    where it has none, BERT's 0.1 is assumed, or with `assume_bert_dropout=False` ValueError
    is raised, as for any module that cannot be rebuilt.
    """
    module = hub.load(encoder_handle)
    bert_config = hub_modules.bert_config_from_variables(module.variables, source=encoder_handle)
    rates = hub_modules.saved_dropout_rates(hub.resolve(encoder_handle))
    if rates:
        bert_config.hidden_dropout_prob, bert_config.attention_probs_dropout_prob = rates
    elif not assume_bert_dropout:
        raise ValueError(f"{encoder_handle}: no dropout rates in its keras_metadata.pb")
    else:
        logging.info("%s: no dropout rates in its keras_metadata.pb; BERT's 0.1 assumed",
                     encoder_handle)
    encoder = hub_modules.build_encoder(bert_config, pooled_only=pooled_only)
    if load_weights:
        with tempfile.TemporaryDirectory(prefix="bert_tf2_rebuild_") as scratch:
            prefix = tf.train.Checkpoint(module=module).write(os.path.join(scratch, "module"))
            checkpoints.load_encoder_weights(encoder.network, prefix)
        _check_same_outputs(module, encoder, encoder_handle, bert_config.vocab_size,
                            "pooled_output" if pooled_only else "sequence_output")
    logging.info("Encoder %s rebuilt as a BertEncoder computing in %s (%d layers, hidden %d)",
                 encoder_handle, tf_keras.mixed_precision.global_policy().compute_dtype,
                 bert_config.num_hidden_layers, bert_config.hidden_size)
    return encoder


# How far the rebuilt encoder's sequence_output may be from the module's, relative to its norm.
_REBUILD_TOLERANCE = {"float32": 1e-4, "bfloat16": 1e-1, "float16": 2e-2}


def _check_same_outputs(module, encoder: tf_keras.Model, source: str, vocab_size: int,
                        output: str) -> None:
    """Runs both on two fixed random sequences (one padded) and compares `output`
    (sequence_output: at the positions that are not padding)."""
    mask = tf.sequence_mask([16, 11], 16, dtype=tf.int32)
    ids = tf.random.stateless_uniform([2, 16], seed=[7, 42], maxval=vocab_size,
                                      dtype=tf.int32) * mask
    inputs = {"input_word_ids": ids, "input_mask": mask, "input_type_ids": tf.zeros_like(ids)}
    valid = tf.cast(mask[:, :, None], tf.float32) if output == "sequence_output" else 1.0

    def both_outputs():
        return (module(inputs, training=False)[output],
                tf.cast(encoder(inputs, training=False)[output], tf.float32))

    # In a replica: a module loaded under a strategy's scope (mirrored, multi-worker) holds
    # distributed variables, which its restored functions can only read from there.
    strategy = tf.distribute.get_strategy()
    expected, actual = (strategy.experimental_local_results(result)[0] * valid
                        for result in strategy.run(both_outputs))
    error = float(tf.norm(actual - expected) / tf.maximum(tf.norm(expected), 1e-6))
    dtype = tf_keras.mixed_precision.global_policy().compute_dtype
    if error > _REBUILD_TOLERANCE.get(dtype, 1e-2):
        raise ValueError(f"{source}: the encoder rebuilt as a BertEncoder computes something "
                         f"else than the module (relative difference {error:.2g} in {dtype}): "
                         "its architecture is not what its variables suggest")
    logging.info("Rebuilt encoder matches the module (relative difference %.2g in %s)",
                 error, dtype)


def load_preprocessor(preprocess_handle: str):
    """The preprocessing module as an object with `.tokenize` and `.bert_pack_inputs`."""
    return hub.load(preprocess_handle)


def build_text_classifier(preprocessor, classifier: tf_keras.Model, *, seq_length: int,
                          pairs: bool = False, truncation: str = "head",
                          dynamic_padding: bool = True) -> "TextClassifier":
    """Raw strings (tf.string [batch]) -> `classifier`'s probabilities, sharing its weights.

    Takes one string tensor, or with `pairs` a list [text, text_b]. See `TextClassifier`.
    """
    return TextClassifier(preprocessor, classifier, seq_length=seq_length, pairs=pairs,
                          truncation=truncation, dynamic_padding=dynamic_padding)


class TextClassifier(tf_keras.Model):
    """Raw strings -> probabilities: tokenize, pack, classify, as the exported model serves.

    Uses the preprocessing module's `tokenize` and `bert_pack_inputs(seq_length=...)` rather
    than its default call, so `seq_length` can differ from the one the module was exported with
    (TF Hub's documented way to change it); long texts are cut by `truncation` as in training
    (`input_pipeline.Packer`).

    With `dynamic_padding` a request pays only for the tokens it holds: its texts are sorted by
    length and classified one length bucket (`input_pipeline.length_buckets`) at a time, at
    most `sub_batch` texts a call, each call padded to its bucket, and the answers come back in
    the request's order (a request of one text goes straight to its bucket). Without it every
    text is padded to `seq_length`, in one call, as TF Hub's preprocess modules do.
    """

    def __init__(self, preprocessor, classifier: tf_keras.Model, *, seq_length: int,
                 pairs: bool = False, truncation: str = "head", dynamic_padding: bool = True,
                 sub_batch: int = SERVING_SUB_BATCH):
        super().__init__(name="text_classifier")
        self.preprocessor = preprocessor
        self.classifier = classifier
        self.pairs, self.dynamic_padding, self.sub_batch = pairs, dynamic_padding, sub_batch
        self.packer = input_pipeline.Packer(
            preprocessor, seq_length, truncation=truncation, dynamic_padding=dynamic_padding,
            length_boundaries=input_pipeline.length_buckets(seq_length))

    def call(self, texts, training=False):  # pylint: disable=arguments-differ
        # Trimmed once for the whole request (other truncations than 'head' take many ops).
        tokens = self.packer.trim(self.packer.tokenize(list(texts) if self.pairs else [texts]))
        if not self.dynamic_padding:
            return self._classify(tokens, training)
        # One text needs no sorting: it is padded to its bucket as it is.
        return tf.cond(tf.shape(tokens[0])[0] == 1, lambda: self._classify(tokens, training),
                       lambda: self._classify_sorted(tokens, training))

    def _classify_sorted(self, tokens, training):
        lengths = self.packer.lengths(tokens)
        order = tf.argsort(lengths, stable=True)
        tokens = [tf.gather(segment, order) for segment in tokens]
        # Sorted, the texts of one length bucket are consecutive: a sub-batch ends where the
        # bucket does (or at `sub_batch` texts), so it is padded exactly to its bucket.
        boundaries = tf.constant(self.packer.length_boundaries, tf.int32)
        buckets = tf.searchsorted(boundaries, tf.gather(lengths, order))
        size = tf.shape(order)[0]
        answers = tf.TensorArray(tf.float32, size=0, dynamic_size=True, infer_shape=False,
                                 element_shape=tf.TensorShape([None]).concatenate(
                                     self.classifier.output_shape[1:]))

        def classify_chunk(i, start, answers):
            bucket_end = tf.searchsorted(buckets, buckets[start:start + 1], side="right")[0]
            end = tf.minimum(start + self.sub_batch, bucket_end)
            chunk = [segment[start:end] for segment in tokens]
            return i + 1, end, answers.write(i, self._classify(chunk, training))

        _, _, answers = tf.while_loop(lambda i, start, _: start < size, classify_chunk,
                                      (tf.constant(0), tf.constant(0), answers))
        classified = tf.cond(size > 0, answers.concat,
                             lambda: self._classify([t[:0] for t in tokens], training))
        return tf.gather(classified, tf.math.invert_permutation(order))

    def _classify(self, trimmed_tokens, training):
        inputs = self.packer.pack(trimmed_tokens, trimmed=True)
        return tf.cast(self.classifier(inputs, training=training), tf.float32)
