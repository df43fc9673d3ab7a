"""The model: a TF Hub BERT encoder with a pooled-[CLS] sigmoid head, and its raw-text wrapper.

Two Keras functional models share one set of weights:

  build_classifier:       encoder inputs dict -> encoder -> pooled_output -> dropout -> Dense(1)
  build_text_classifier:  string -> preprocess (tokenize + pack) -> the classifier above

Training feeds the first from the tf.data pipeline (tokenization there runs in parallel with the
train step and pads each batch only as far as it needs); evaluation on raw strings, export and
serving use the second. The head always computes in float32, whatever the mixed-precision
policy, so the sigmoid and the loss stay numerically safe.
"""

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf
import tensorflow_hub as hub
import tensorflow_text  # noqa: F401  (registers the ops the preprocessing module needs)
import tf_keras

ENCODER_INPUTS = ("input_word_ids", "input_mask", "input_type_ids")


def build_classifier(encoder_handle: str, *, dropout_rate: float = 0.1) -> tf_keras.Model:
    """Encoder inputs (int32 [batch, seq]) -> probability of the positive class, [batch, 1]."""
    inputs = {name: tf_keras.Input(shape=(None,), dtype=tf.int32, name=name)
              for name in ENCODER_INPUTS}
    encoder = hub.KerasLayer(encoder_handle, trainable=True, name="encoder")
    pooled = encoder(inputs)["pooled_output"]
    pooled = tf_keras.layers.Dropout(dropout_rate, name="dropout")(pooled)
    probability = tf_keras.layers.Dense(
        1, activation="sigmoid", dtype="float32", name="classifier",
        kernel_initializer=tf_keras.initializers.TruncatedNormal(stddev=0.02))(pooled)
    return tf_keras.Model(inputs, probability, name="bert_classifier")


def load_preprocessor(preprocess_handle: str):
    """The preprocessing module as an object with `.tokenize` and `.bert_pack_inputs`."""
    return hub.load(preprocess_handle)


def build_text_classifier(preprocessor, classifier: tf_keras.Model, *,
                          seq_length: int) -> tf_keras.Model:
    """Raw strings (tf.string [batch]) -> probability [batch, 1], sharing `classifier`'s weights.

    Uses the module's `tokenize` and `bert_pack_inputs(seq_length=...)` rather than its default
    call, so `seq_length` can differ from the one the module was exported with (TF Hub's
    documented way to change it).
    """
    text = tf_keras.Input(shape=(), dtype=tf.string, name="text")
    tokens = hub.KerasLayer(preprocessor.tokenize, name="tokenize")(text)
    encoder_inputs = hub.KerasLayer(preprocessor.bert_pack_inputs,
                                    arguments=dict(seq_length=seq_length),
                                    name="bert_pack_inputs")([tokens])
    return tf_keras.Model(text, classifier(encoder_inputs), name="text_classifier")
