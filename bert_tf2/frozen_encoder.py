"""The head trained alone over a wholly frozen encoder (--trainable_encoder_layers=0), fast.

With the whole encoder frozen, nothing below the head changes from step to step, and the
encoder runs in inference mode (a frozen hub layer calls its module with training=False, as
Keras does for BatchNormalization). So each example's pooled output is computed once, in one
inference pass over the training (and dev) split (`pooled_outputs`), and the head
(`model.head_model`: the classifier's own dropout and dense layers) trains on those vectors
(`dataset`): an epoch is a few hundred steps of a dense layer instead of as many encoder passes.
The head's dropout still applies in training. The head's weights are the classifier's, so
evaluation and export run the whole classifier as usual.

A backup holds the head and the optimizer; a resumed run computes the pooled outputs again
(the same values) and skips the batches already trained on, as a full run does: the shuffled
order is fixed by the seed.

The pooled outputs are held in memory: 4 bytes x hidden size per example (about 3 KB for
BERT-base).
"""

import dataclasses
from typing import Optional, Sequence

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import numpy as np
import tensorflow as tf
import tf_keras

from bert_tf2 import input_pipeline
from bert_tf2 import model as model_lib


@dataclasses.dataclass(frozen=True)
class PooledOutputs:
    """Each example's pooled encoder output and its label."""

    pooled: np.ndarray  # float32 [examples, hidden]
    labels: np.ndarray  # int32 [examples], or [examples, classes] (multilabel)

    def __len__(self) -> int:
        return len(self.labels)


def pooled_outputs(strategy: tf.distribute.Strategy, classifier: tf_keras.Model,
                   batches: tf.distribute.DistributedDataset) -> PooledOutputs:
    """The pooled output `classifier`'s encoder computes (in inference mode, as float32) for
    each example of `batches` (`strategy`'s batches of (encoder inputs, label)).

    Each worker gets those of its own input pipeline's examples, which `dataset` then batches
    for that pipeline.
    """
    encoder = model_lib.pooled_output_model(classifier)

    def pool(inputs, labels, weights=None):
        pooled = encoder(model_lib.at_least_one_position(inputs), training=False)
        kept = tf.ones([tf.shape(labels)[0]], tf.bool) if weights is None else weights > 0
        return tf.cast(pooled, tf.float32), labels, kept

    @tf.function(input_signature=[batches.element_spec])
    def step(batch):
        return strategy.run(pool, args=batch)

    pooled, labels = [], []
    for batch in batches:
        outputs = [strategy.experimental_local_results(output) for output in step(batch)]
        for vectors, labelled, kept in zip(*outputs):  # rows of weight 0 only fill a batch
            kept = kept.numpy()
            pooled.append(vectors.numpy()[kept])
            labels.append(labelled.numpy()[kept])
    return PooledOutputs(np.concatenate(pooled), np.concatenate(labels))


def dataset(outputs: PooledOutputs, *, batch_size: int, training: bool, seed: int,
            skip_batches: int = 0, class_weights: Optional[Sequence[float]] = None,
            static_shapes: bool = False, replicas: int = 1) -> tf.data.Dataset:
    """Batches of (pooled output, label[, weight]) for `model.head_model`.

    For training, shuffled each epoch (the order fixed by `seed`), repeated, and only full
    batches; `skip_batches` drops that many from the start, for a resumed run. Otherwise every
    example once, in order. `class_weights` (by class id) adds each example's weight.
    `static_shapes` fills the short evaluation batch and the last step of the `replicas` this
    pipeline feeds with rows of weight 0 (`input_pipeline.full_batches`, `whole_steps`).
    """
    tensors = (outputs.pooled, outputs.labels)
    if class_weights is not None:
        tensors += (np.asarray(class_weights, np.float32)[outputs.labels],)
    batches = tf.data.Dataset.from_tensor_slices(tensors)
    if training:
        batches = batches.shuffle(len(outputs), seed=seed, reshuffle_each_iteration=True)
        batches = batches.repeat()
    batches = batches.batch(batch_size, drop_remainder=training).skip(skip_batches)
    if static_shapes and not training:
        batches = input_pipeline.whole_steps(input_pipeline.full_batches(batches, batch_size),
                                             replicas)
    return batches.prefetch(tf.data.AUTOTUNE)
