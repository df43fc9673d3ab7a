"""The graph `bert_tf2.export_lite` converts: raw strings -> the export's outputs, in TFLite ops.

The export's own signatures tokenize with ops TFLite lacks and classify in a while loop over
length buckets; this graph tokenizes with `lite_tokenization.LiteBertTokenizer` (the same ids),
packs every text of a call to the longest one's length (capped at seq_length, trimmed as the
export trims: round robin between the segments, then head, tail or head_tail of each), and runs
the classifier rebuilt from the export's variables (`rebuild_classifier`).
"""

from typing import Dict, Sequence

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf
import tf_keras

from bert_tf2 import cli
from bert_tf2 import export
from bert_tf2 import hub_modules
from bert_tf2 import lite_tokenization
from bert_tf2 import model as model_lib


def rebuild_classifier(variables: Sequence[tf.Variable], task: str, num_classes: int, *,
                       source: str) -> tf_keras.Model:
    """The classifier (encoder inputs -> probabilities) whose weights are `variables` (an
    export's), matched by name; a UserError where they do not all match."""
    try:
        bert_config = hub_modules.bert_config_from_variables(variables, source=source)
    except ValueError as error:
        raise cli.UserError(f"{error}; the TFLite export rebuilds BERT encoders only") from error
    encoder = hub_modules.build_encoder(bert_config, pooled_only=True)
    classifier = model_lib.build_classifier(None, encoder=encoder, task=task,
                                            num_classes=num_classes)
    saved = {v.name: v for v in variables}
    weights = {w.name: w for w in classifier.weights}
    if set(saved) != set(weights):
        raise cli.UserError(f"{source}: its variables are not those of a bert_tf2 classifier "
                            f"(differing: {sorted(set(saved) ^ set(weights))[:4]})")
    for name, weight in weights.items():
        weight.assign(saved[name])
    return classifier


class LiteTextClassifier(tf.Module):
    """`serve(text[, text_b])` -> the export's serving_default outputs, from TFLite ops."""

    def __init__(self, vocab_file: str, variables: Sequence[tf.Variable], spec, *,
                 source: str):
        super().__init__()
        self.spec = spec
        self.tokenizer = lite_tokenization.LiteBertTokenizer(vocab_file, export.MAX_TEXT_BYTES)
        self.classifier = rebuild_classifier(variables, spec.task, len(spec.class_names),
                                             source=source)
        special = self.tokenizer.special_tokens()
        self._cls, self._sep = special["start_of_sequence_id"], special["end_of_segment_id"]
        self._pad = special.get("padding_id", 0)
        names = [export.TEXT_INPUT] + ([export.TEXT_B_INPUT] if spec.pairs else [])
        signature = [tf.TensorSpec([None], tf.string, name=name) for name in names]
        self.serve = tf.function(self._serve_pair if spec.pairs else self._serve_one,
                                 input_signature=signature)

    def _serve_one(self, text):
        return self._outputs(self._probabilities([text]))

    def _serve_pair(self, text, text_b):
        return self._outputs(self._probabilities([text, text_b]))

    def _probabilities(self, texts):
        inputs = self.pack([self.tokenizer(t) for t in texts])
        probabilities = self.classifier(inputs, training=False)
        if self.spec.task == "binary":
            probabilities = tf.reshape(probabilities, [-1])
        return probabilities

    def _outputs(self, probabilities) -> Dict[str, tf.Tensor]:
        if self.spec.task == "binary":
            return {export.PROBABILITY_OUTPUT: probabilities,
                    export.LABEL_OUTPUT: tf.cast(probabilities >= export.DECISION_THRESHOLD,
                                                 tf.int64)}
        if self.spec.task == "multilabel":
            return {export.PROBABILITIES_OUTPUT: probabilities,
                    export.LABELS_OUTPUT: tf.cast(probabilities >= export.DECISION_THRESHOLD,
                                                  tf.int64)}
        label_id = tf.argmax(probabilities, axis=1, output_type=tf.int64)
        return {export.PROBABILITIES_OUTPUT: probabilities, export.LABEL_ID_OUTPUT: label_id,
                export.LABEL_OUTPUT: tf.gather(tf.constant(self.spec.class_names), label_id)}

    def pack(self, segments) -> Dict[str, tf.Tensor]:
        """Encoder inputs [batch, length] of one or two (ids, row_splits) segments."""
        lengths = [tf.cast(splits[1:] - splits[:-1], tf.int32) for _, splits in segments]
        kept = _round_robin(lengths, self.spec.seq_length - 1 - len(segments))
        batch = tf.shape(lengths[0])[0]
        rows = tf.range(batch)
        ends = tf.fill([batch], 0)
        indices, values, types = [tf.stack([rows, ends], 1)], [tf.fill([batch], self._cls)], []
        types.append(tf.zeros([batch], tf.int32))
        for segment, ((ids, splits), length, keep) in enumerate(zip(segments, lengths, kept)):
            row, rank, selected = _kept_pieces(splits, length, keep, self.spec.truncation)
            offset = ends + 1
            indices.append(tf.stack([row, tf.gather(offset, row) + rank], 1))
            values.append(tf.gather(ids, selected))
            types.append(tf.fill(tf.shape(selected), segment))
            ends = offset + keep
            indices.append(tf.stack([rows, ends], 1))
            values.append(tf.fill([batch], self._sep))
            types.append(tf.fill([batch], segment))
        # A batch of no texts still packs to one position.
        width = tf.reshape(tf.reduce_max(tf.concat([ends + 1, [1]], 0)), [1])
        shape = tf.concat([tf.reshape(batch, [1]), width], 0)
        indices = tf.concat(indices, 0)
        word_ids = tf.scatter_nd(indices, tf.concat(values, 0) + 1, shape)  # 0: padding
        mask = tf.cast(tf.range(width[0])[None, :] <= ends[:, None], tf.int32)
        return {"input_word_ids": tf.where(word_ids > 0, word_ids - 1, self._pad),
                "input_mask": mask,
                "input_type_ids": tf.scatter_nd(indices, tf.concat(types, 0), shape)}


def _round_robin(lengths, budget: int):
    """How many pieces of each segment `RoundRobinTrimmer(budget)` keeps."""
    if len(lengths) == 1:
        return [tf.minimum(lengths[0], budget)]
    first, second = lengths
    keep_first = tf.minimum(first, tf.maximum((budget + 1) // 2, budget - second))
    return [keep_first, tf.minimum(second, budget - keep_first)]


def _kept_pieces(splits, length, keep, truncation: str):
    """The pieces a segment keeps: their rows, ranks in the packed segment and flat indices."""
    splits = tf.cast(splits, tf.int32)
    total = splits[-1]
    row = lite_tokenization.segment_ids(splits, total)
    position = tf.range(total) - tf.gather(splits, row)
    length, keep = tf.gather(length, row), tf.gather(keep, row)
    head = (keep // 4 if truncation == "head_tail" else
            tf.zeros_like(keep) if truncation == "tail" else keep)
    tail_start = length - (keep - head)
    selected = tf.where((position < head) | (position >= tail_start))[:, 0]
    selected = tf.cast(selected, tf.int32)
    position, head, tail_start = (tf.gather(x, selected) for x in (position, head, tail_start))
    rank = tf.where(position < head, position, head + position - tail_start)
    return tf.gather(row, selected), rank, selected
