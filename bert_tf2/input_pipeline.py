"""The tf.data input pipeline: labelled examples -> padded, length-bucketed encoder batches.

Tokenization runs inside the pipeline with the same preprocessing SavedModel that the exported
model carries, so training overlaps tokenization with the train step and the served model still
takes raw strings. Fine-tuning (`make_dataset`) and masked-LM pretraining (`bert_tf2.pretrain`)
batch this way.
"""

from typing import Callable, Dict, Optional, Sequence, Tuple

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf

from bert_tf2 import data

# Upper bounds, in tokens ([CLS] and [SEP] included), of the length buckets; those below
# --seq_length are used, and --seq_length itself closes the last one.
LENGTH_BUCKET_BOUNDARIES = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512)
# Texts tokenized per call when bucketing (one large call is far cheaper than many small ones).
_TOKENIZE_BATCH = 1024


def length_buckets(seq_length: int) -> Tuple[int, ...]:
    """The upper bounds of the length buckets for `seq_length`, ascending, ending with it."""
    return tuple(b for b in LENGTH_BUCKET_BOUNDARIES if b < seq_length) + (seq_length,)


def make_dataset(examples: data.Examples, *, batch_size: int, preprocessor, seq_length: int,
                 training: bool, seed: int = 0, dynamic_padding: bool = True,
                 input_context=None, skip_batches: int = 0, bucket_by_length: bool = False,
                 pad_to_bucket_boundary: bool = False):
    """Batches of (encoder inputs, label) for `model.build_classifier`.

    `preprocessor` is a loaded TF Hub preprocessing module (`hub.load(handle)`): batches are
    tokenized with its `.tokenize` and packed with `.bert_pack_inputs`, in the input pipeline
    and in parallel with training. With `dynamic_padding` a batch is padded only to its longest
    member (capped at `seq_length`), so short reviews do not pay for the longest possible one.

    With `bucket_by_length` each batch is made of examples from one length bucket
    (`bucket_by_token_length`), so with `dynamic_padding` a batch of short reviews stays short
    instead of being padded to the longest review that a random batch happens to hold. Training
    still shuffles every example each epoch before bucketing, so batches are random within a
    bucket and the buckets interleave at random. Without `training` every example comes out
    exactly once (the last batch of each bucket may be smaller), in another order.

    `pad_to_bucket_boundary` pads each batch to the next bucket boundary rather than to its
    longest member: a handful of shapes instead of one per length, which XLA needs.

    `input_context` (a `tf.distribute.InputContext`) shards the data for one input pipeline and
    `batch_size` is then the per-replica batch size.

    `skip_batches` drops that many batches from the start of the stream (before they are
    tokenized, or with bucketing once they are formed): a resumed run passes the batches it
    already trained on, so it goes on where the interrupted run stopped (the shuffled order is
    fixed by `seed`).
    """
    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.constant(examples.texts, tf.string), tf.constant(examples.labels, tf.int32)))
    if input_context is not None and input_context.num_input_pipelines > 1:
        dataset = dataset.shard(input_context.num_input_pipelines,
                                input_context.input_pipeline_id)
    if training:
        dataset = dataset.shuffle(len(examples), seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.repeat()
    boundaries = length_buckets(seq_length) if pad_to_bucket_boundary else None
    if not bucket_by_length:
        dataset = dataset.batch(batch_size, drop_remainder=training)
        if skip_batches:
            dataset = dataset.skip(skip_batches)
        pack = make_pack_fn(preprocessor, seq_length, dynamic_padding,
                            length_boundaries=boundaries)
        dataset = dataset.map(lambda texts, labels: (pack(texts), labels),
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return dataset.prefetch(tf.data.AUTOTUNE)

    dataset = bucket_by_token_length(dataset, preprocessor, seq_length=seq_length,
                                     batch_size=batch_size, drop_remainder=training)
    if skip_batches:
        dataset = dataset.skip(skip_batches)
    dataset = dataset.map(
        lambda tokens, labels: (_pack_tokens(preprocessor, tokens, seq_length,
                                             dynamic_padding, boundaries), labels),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def bucket_by_token_length(dataset, preprocessor, *, seq_length: int, batch_size: int,
                           drop_remainder: bool):
    """Batches of (tokens, *rest) from a dataset of single (text, *rest) examples.

    The texts are tokenized in large batches (one large call is far cheaper than many small
    ones) and split into examples again, then grouped by packed token length
    (`length_buckets(seq_length)`): every batch holds examples of one bucket, in the order they
    arrive. `tokens` is the preprocessor's ragged [batch, (words), (wordpieces)] output.
    Fine-tuning (`make_dataset`) and masked-LM pretraining (`bert_tf2.pretrain`) batch this way.
    """
    buckets = tf.constant(length_buckets(seq_length), tf.int32)

    def tokenize(texts, *rest):
        tokens = preprocessor.tokenize(texts)
        return (tokens, *rest, _token_lengths(tokens, seq_length))

    def bucket_of(*example):
        return tf.cast(tf.searchsorted(buckets, tf.reshape(example[-1], [1]))[0], tf.int64)

    return (dataset.batch(_TOKENIZE_BATCH)
            .map(tokenize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .unbatch()
            .group_by_window(
                bucket_of, window_size=batch_size,
                reduce_func=lambda _, window: window.batch(batch_size,
                                                           drop_remainder=drop_remainder))
            .map(lambda *batch: batch[:-1]))  # the lengths have served


def make_pack_fn(preprocessor, seq_length: int, dynamic_padding: bool, *,
                 length_boundaries: Optional[Sequence[int]] = None,
                 ) -> Callable[[Sequence[str]], Dict[str, object]]:
    """A function from a string batch to the encoder's input dict, using the hub module.

    With `length_boundaries` (ascending, the last >= seq_length) a dynamically padded batch is
    padded to the first boundary that holds its longest member.
    """
    def pack(texts):
        return _pack_tokens(preprocessor, preprocessor.tokenize(texts), seq_length,
                            dynamic_padding, length_boundaries)

    return pack


def _token_lengths(tokens, seq_length: int):
    """Packed length of each example of a [batch, (words), (wordpieces)] batch, capped."""
    lengths = tf.cast(tokens.merge_dims(-2, -1).row_lengths(), tf.int32) + 2  # [CLS], [SEP]
    return tf.minimum(lengths, seq_length)


def _pack_tokens(preprocessor, tokens, seq_length: int, dynamic_padding: bool,
                 length_boundaries: Optional[Sequence[int]] = None):
    length = tf.constant(seq_length, tf.int32)
    if dynamic_padding:
        longest = tf.reduce_max(tf.concat([_token_lengths(tokens, seq_length), [2]], axis=0))
        length = longest
        if length_boundaries:
            boundaries = tf.constant(list(length_boundaries) + [seq_length], tf.int32)
            length = boundaries[tf.searchsorted(boundaries, tf.reshape(longest, [1]))[0]]
        length = tf.minimum(length, seq_length)
    return preprocessor.bert_pack_inputs([tokens], seq_length=length)
