"""Export: the raw-text classifier as a versioned SavedModel that TF Serving loads as is.

Layout: `export_dir/<version>/` with a numeric version (TF Serving serves the highest). A new
version is written to a scratch directory and renamed into place only when complete, and
existing versions are never overwritten.

Signature contract (serving_default):
  inputs:  text         tf.string [batch]   raw Chinese text, any length
  outputs: probability  tf.float32 [batch]  P(positive)
           label        tf.int64 [batch]    1 if probability >= 0.5 else 0
"""

import os
import re
from typing import Optional

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf
import tf_keras

from bert_tf2 import io_utils

TEXT_INPUT = "text"
DECISION_THRESHOLD = 0.5


class ServingModule(tf.Module):
    """Holds the text classifier and the signature functions that TF Serving calls."""

    def __init__(self, text_classifier: tf_keras.Model):
        super().__init__()
        self.text_classifier = text_classifier

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=TEXT_INPUT)])
    def serve(self, text):
        probability = tf.reshape(self.text_classifier(text, training=False), [-1])
        probability = tf.cast(probability, tf.float32)
        label = tf.cast(probability >= DECISION_THRESHOLD, tf.int64)
        return {"probability": probability, "label": label}


def existing_versions(export_dir: str):
    """Numeric version directories under `export_dir`, ascending."""
    if not os.path.isdir(export_dir):
        return []
    return sorted(int(name) for name in os.listdir(export_dir)
                  if re.fullmatch(r"\d+", name)
                  and os.path.isdir(os.path.join(export_dir, name)))


def export_text_classifier(text_classifier: tf_keras.Model, export_dir: str,
                           version: Optional[int] = None) -> str:
    """Writes `export_dir/<version>` atomically and returns its path.

    `version` defaults to one more than the highest existing version (1 for the first).
    """
    if version is None:
        version = (existing_versions(export_dir) or [0])[-1] + 1
    final_path = os.path.join(export_dir, str(version))
    module = ServingModule(text_classifier)
    with io_utils.atomic_directory(final_path) as scratch:
        tf.saved_model.save(module, scratch, signatures={"serving_default": module.serve})
    return final_path
