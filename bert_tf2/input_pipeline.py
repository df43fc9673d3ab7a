"""The tf.data input pipeline: labelled examples -> padded, length-bucketed encoder batches.

Tokenization runs inside the pipeline with the same preprocessing SavedModel that the exported
model carries, so training overlaps tokenization with the train step and the served model still
takes raw strings. Fine-tuning (`make_dataset`) and masked-LM pretraining (`bert_tf2.pretrain`)
batch this way.
"""

import dataclasses
from typing import Dict, Optional, Sequence, Tuple

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf
import tensorflow_text as text

from bert_tf2 import data

# Upper bounds, in tokens ([CLS] and [SEP] included), of the length buckets; those below
# --seq_length are used, and --seq_length itself closes the last one.
LENGTH_BUCKET_BOUNDARIES = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512)
# Texts tokenized per call when bucketing (one large call is far cheaper than many small ones).
_TOKENIZE_BATCH = 1024


def length_buckets(seq_length: int) -> Tuple[int, ...]:
    """The upper bounds of the length buckets for `seq_length`, ascending, ending with it."""
    return tuple(b for b in LENGTH_BUCKET_BOUNDARIES if b < seq_length) + (seq_length,)


@dataclasses.dataclass(frozen=True)
class Packer:
    """Tokenizes one or two text segments and packs them as the encoder's inputs.

    `preprocessor` is a loaded TF Hub preprocessing module (`hub.load(handle)`); its
    `.tokenize` and `.bert_pack_inputs` do the work, so the official online modules work too.
    Segments longer than `seq_length` allows are cut by `truncation` (`trim_segments`).
    With `dynamic_padding` a batch is padded only to its longest member (with
    `length_boundaries`, ascending, to the first boundary that holds it), else to `seq_length`.
    """

    preprocessor: object
    seq_length: int
    truncation: str = "head"
    dynamic_padding: bool = True
    length_boundaries: Optional[Sequence[int]] = None

    def tokenize(self, segments: Sequence[tf.Tensor]) -> Tuple[tf.RaggedTensor, ...]:
        """String batches -> ragged [batch, (words), (wordpieces)] token batches."""
        return tuple(self.preprocessor.tokenize(texts) for texts in segments)

    def lengths(self, tokens: Sequence[tf.RaggedTensor]) -> tf.Tensor:
        """The packed length of each example ([CLS] and each [SEP] included), capped."""
        lengths = sum(tf.cast(_wordpieces(t).row_lengths(), tf.int32) for t in tokens)
        return tf.minimum(lengths + 1 + len(tokens), self.seq_length)

    def trim(self, tokens: Sequence[tf.RaggedTensor]) -> Sequence[tf.RaggedTensor]:
        """`tokens` cut to fit `seq_length` by `truncation` (`trim_segments`)."""
        return trim_segments(tokens, self.seq_length, self.truncation)

    def pack(self, tokens: Sequence[tf.RaggedTensor], *,
             trimmed: bool = False) -> Dict[str, tf.Tensor]:
        """The encoder inputs (input_word_ids, input_mask, input_type_ids) of a token batch.

        `trimmed` says `tokens` come from `trim` already: a caller that packs one request in
        several parts trims it once, since trimming other than 'head' takes many ops.
        """
        length = tf.constant(self.seq_length, tf.int32)
        if self.dynamic_padding:
            longest = tf.reduce_max(tf.concat([self.lengths(tokens), [1 + len(tokens)]], 0))
            length = longest
            if self.length_boundaries:
                boundaries = tf.constant(list(self.length_boundaries) + [self.seq_length],
                                         tf.int32)
                length = boundaries[tf.searchsorted(boundaries, tf.reshape(longest, [1]))[0]]
            length = tf.minimum(length, self.seq_length)
        segments = tokens if trimmed else self.trim(tokens)
        return self.preprocessor.bert_pack_inputs(list(segments), seq_length=length)


def _wordpieces(tokens: tf.RaggedTensor) -> tf.RaggedTensor:
    """[batch, (wordpieces)] of [batch, (words), (wordpieces)] or of itself."""
    return tokens.merge_dims(-2, -1) if tokens.shape.rank == 3 else tokens


def trim_segments(tokens: Sequence[tf.RaggedTensor], seq_length: int,
                  truncation: str) -> Sequence[tf.RaggedTensor]:
    """`tokens` cut to fit `seq_length` by `truncation`; as they are for 'head'.

    Each segment keeps as many tokens as `bert_pack_inputs` would keep (its round-robin
    trimmer): for 'head' it cuts them itself. 'tail' keeps a segment's last tokens instead of
    its first; 'head_tail' its first quarter and last three quarters of what it keeps.
    """
    if truncation == "head":
        return tokens
    pieces = [_wordpieces(t) for t in tokens]
    budget = seq_length - 1 - len(pieces)
    kept = text.RoundRobinTrimmer(max_seq_length=budget).generate_mask(pieces)
    trimmed = []
    for segment, mask in zip(pieces, kept):
        keep = tf.reduce_sum(tf.cast(mask, tf.int64), axis=1)
        head = keep // 4 if truncation == "head_tail" else tf.zeros_like(keep)
        positions = tf.ragged.range(segment.row_lengths())
        from_end = tf.expand_dims(segment.row_lengths() - (keep - head), 1)
        trimmed.append(tf.ragged.boolean_mask(
            segment, (positions < tf.expand_dims(head, 1)) | (positions >= from_end)))
    return trimmed


def make_dataset(examples: data.Examples, *, batch_size: int, preprocessor, seq_length: int,
                 training: bool, seed: int = 0, dynamic_padding: bool = True,
                 input_context=None, skip_batches: int = 0, bucket_by_length: bool = False,
                 pad_to_bucket_boundary: bool = False, truncation: str = "head",
                 class_weights: Optional[Sequence[float]] = None, static_shapes: bool = False):
    """Batches of (encoder inputs, labels[, weights]) for `model.build_classifier`.

    The texts (and `examples.texts_b`, for pairs) are tokenized and packed by a `Packer` over
    `preprocessor`, in the input pipeline and in parallel with training. With
    `dynamic_padding` a batch is padded only to its longest member (capped at `seq_length`), so
    short reviews do not pay for the longest possible one.

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

    `class_weights` (by class id) adds each example's weight to its batch, for training.

    `static_shapes` gives what a TPU compiles for: every batch full (`batch_size` rows, static)
    and padded to a bucket boundary (as `pad_to_bucket_boundary`): a fixed set of lengths.
    Training batches are full anyway; an evaluation split's short batches are filled with rows
    of weight 0 (`full_batches`), so its batches are (inputs, labels, weights), and the steps
    of this pipeline are whole (`whole_steps`, for the replicas `input_context` gives it).
    """
    dataset = tf.data.Dataset.from_tensor_slices(_tensors(examples, class_weights))
    if input_context is not None and input_context.num_input_pipelines > 1:
        dataset = dataset.shard(input_context.num_input_pipelines,
                                input_context.input_pipeline_id)
    return batch_examples(
        dataset, shuffle_buffer=len(examples), batch_size=batch_size,
        preprocessor=preprocessor, seq_length=seq_length, training=training, seed=seed,
        dynamic_padding=dynamic_padding, input_context=input_context,
        skip_batches=skip_batches, bucket_by_length=bucket_by_length,
        pad_to_bucket_boundary=pad_to_bucket_boundary, truncation=truncation,
        static_shapes=static_shapes)


def batch_examples(dataset: tf.data.Dataset, *, shuffle_buffer: int, batch_size: int,
                   preprocessor, seq_length: int, training: bool, seed: int = 0,
                   dynamic_padding: bool = True, input_context=None, skip_batches: int = 0,
                   bucket_by_length: bool = False, pad_to_bucket_boundary: bool = False,
                   truncation: str = "head", static_shapes: bool = False):
    """`make_dataset`'s batches from `dataset`, this input pipeline's single examples
    ((texts[, texts_b]), label[, weight]): shuffled through `shuffle_buffer` examples and
    repeated for `training`, then tokenized, bucketed, padded and batched (see
    `make_dataset` for the arguments). The streamed splits of `bert_tf2.prepared_data` are
    batched here too."""
    packer = Packer(preprocessor, seq_length, truncation=truncation,
                    dynamic_padding=dynamic_padding,
                    length_boundaries=length_buckets(seq_length)
                    if pad_to_bucket_boundary or static_shapes else None)
    if training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.repeat()
    if not bucket_by_length:
        dataset = dataset.batch(batch_size, drop_remainder=training)
        if skip_batches:
            dataset = dataset.skip(skip_batches)
        dataset = dataset.map(lambda segments, *rest: (packer.pack(packer.tokenize(segments)),
                                                       *rest),
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        dataset = bucket_by_token_length(dataset, packer, batch_size=batch_size,
                                         drop_remainder=training)
        if skip_batches:
            dataset = dataset.skip(skip_batches)
        dataset = dataset.map(lambda tokens, *rest: (packer.pack(tokens), *rest),
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if static_shapes and not training:
        dataset = whole_steps(full_batches(dataset, batch_size),
                              replicas_per_pipeline(input_context))
    return dataset.prefetch(tf.data.AUTOTUNE)


def replicas_per_pipeline(input_context) -> int:
    """The replicas that one input pipeline feeds (1 without a context)."""
    if input_context is None:
        return 1
    return max(input_context.num_replicas_in_sync // input_context.num_input_pipelines, 1)


def full_batches(dataset: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
    """(x, labels[, weights]) batches as (x, labels, weights) of exactly `batch_size` rows.

    A short batch is filled with copies of its first row (real inputs, so the model computes
    finite numbers on them) of weight 0: they count in no weighted metric and no loss. The
    weights of the other rows are theirs, or 1.
    """
    def fill(x, labels, *weights):
        count = tf.shape(labels)[0]
        rows = tf.concat([tf.range(count), tf.zeros([batch_size - count], tf.int32)], 0)

        def take(tensor):
            return tf.ensure_shape(tf.gather(tensor, rows), [batch_size] + tensor.shape[1:])

        weight = weights[0] if weights else tf.ones([count], tf.float32)
        weight = tf.concat([weight, tf.zeros([batch_size - count], tf.float32)], 0)
        return (tf.nest.map_structure(take, x), take(labels),
                tf.ensure_shape(weight, [batch_size]))

    return dataset.map(fill, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def whole_steps(dataset: tf.data.Dataset, replicas: int) -> tf.data.Dataset:
    """`dataset` (of (x, labels, weights) batches) followed by as many copies of its first
    batch, of weight 0, as make its length a multiple of `replicas`: a step takes one batch
    for each replica, so the last step gives none of them an empty batch."""
    if replicas == 1:
        return dataset
    filler = (dataset.take(1).map(lambda x, labels, weights: (x, labels, tf.zeros_like(weights)))
              .cache().repeat())
    tagged = (dataset.map(lambda *batch: (batch, True))
              .concatenate(filler.map(lambda *batch: (batch, False))))
    return (tagged.enumerate()
            .take_while(lambda index, item: item[1] | (index % replicas != 0))
            .map(lambda index, item: item[0]))


def _tensors(examples: data.Examples, class_weights: Optional[Sequence[float]]):
    """((texts[, texts_b]), labels[, weights]): what the dataset is sliced from."""
    segments = (examples.texts,) + ((examples.texts_b,) if examples.texts_b else ())
    # Class ids and 0/1 rows are int32; float rows (a distillation's targets) stay float32.
    labels = tf.constant(examples.labels)
    if labels.dtype.is_integer:
        labels = tf.cast(labels, tf.int32)
    tensors = (tuple(tf.constant(texts, tf.string) for texts in segments), labels)
    if class_weights is None:
        return tensors
    return tensors + (tf.gather(tf.constant(class_weights, tf.float32), labels),)


def bucket_by_token_length(dataset, packer: Packer, *, batch_size: int, drop_remainder: bool):
    """Batches of (tokens, *rest) from a dataset of single (segments, *rest) examples.

    `segments` is a tuple of one or two string scalars. The texts are tokenized in large
    batches (one large call is far cheaper than many small ones) and split into examples
    again, then grouped by packed token length (`length_buckets(packer.seq_length)`): every
    batch holds examples of one bucket, in the order they arrive. `tokens` is a tuple of the
    preprocessor's ragged [batch, (words), (wordpieces)] outputs, one per segment.
    Fine-tuning (`make_dataset`) and masked-LM pretraining (`bert_tf2.pretrain`) batch this way.
    """
    buckets = tf.constant(length_buckets(packer.seq_length), tf.int32)

    def tokenize(segments, *rest):
        tokens = packer.tokenize(segments)
        return (tokens, *rest, packer.lengths(tokens))

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
