"""Runs a TFLite file of `bert_tf2.export_lite` in Python: raw texts in, numpy outputs out.

  from bert_tf2.lite import LiteClassifier
  classifier = LiteClassifier("model.tflite")
  classifier.predict(["这本书写得太好了"])     # {"probability": [...], "label": [...]}
  classifier.predict(questions, answers)      # sentence pairs: text and text_b

The interpreter is LiteRT's (`ai_edge_litert.interpreter.InterpreterWithCustomOps`, the
maintained successor of `tf.lite.Interpreter`), given TF Text's TFLite op registrar
(`tensorflow_text.tflite_registrar.SELECT_TFTEXT_OPS`), which adds the TF Text ops the file's
tokenizer uses (ByteSplit, FastWordpieceDetokenize, FastWordpieceTokenize).
"""

import json
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

LITE_SUFFIX = ".tflite"
SIGNATURE = "serving_default"
# The file's metadata entry (JSON): task, pairs, class_names, seq_length, truncation.
METADATA_NAME = "bert_tf2"


def is_lite_model(path: str) -> bool:
    """Whether `path` names a TFLite file (what predict and evaluate run with LiteClassifier)."""
    return path.lower().endswith(LITE_SUFFIX)


class LiteClassifier:
    """A TFLite text classifier: `predict(texts[, texts_b])` -> the export's outputs by name.

    `task`, `pairs`, `class_names` and `seq_length` come from the file's metadata.
    """

    def __init__(self, path: str, num_threads: Optional[int] = None):
        self.path = path
        with open(path, "rb") as f:
            content = f.read()
        metadata = read_metadata(content)
        self.task, self.pairs = metadata["task"], metadata["pairs"]
        self.class_names: Tuple[str, ...] = tuple(metadata["class_names"])
        self.seq_length = metadata["seq_length"]
        self._interpreter = interpreter_of(content, num_threads)
        self._runner = self._interpreter.get_signature_runner(SIGNATURE)

    def predict(self, texts: Sequence[str],
                texts_b: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
        """The outputs for n >= 0 texts (and their text_b, for a model of pairs)."""
        if (texts_b is not None) != self.pairs:
            raise ValueError(f"{self.path} classifies {'pairs' if self.pairs else 'single'} "
                             "texts: " + ("pass texts_b" if self.pairs else "drop texts_b"))
        feeds = {"text": _strings(texts)}
        if self.pairs:
            if len(texts_b) != len(texts):
                raise ValueError(f"{len(texts)} texts but {len(texts_b)} texts_b")
            feeds["text_b"] = _strings(texts_b)
        return self._runner(**feeds)


def read_metadata(flatbuffer: bytes) -> Dict[str, object]:
    """The METADATA_NAME entry of a file export_lite wrote; KeyError where there is none."""
    # pylint: disable-next=g-import-not-at-top
    from tensorflow.lite.python import schema_py_generated as schema
    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name().decode() == METADATA_NAME:
            return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    raise KeyError(METADATA_NAME)


def interpreter_of(content: bytes, num_threads: Optional[int] = None):
    """A LiteRT interpreter of the flatbuffer `content`, with TF Text's TFLite ops."""
    import tensorflow_text  # pylint: disable=g-import-not-at-top
    from ai_edge_litert import interpreter  # pylint: disable=g-import-not-at-top
    return interpreter.InterpreterWithCustomOps(
        model_content=content, num_threads=num_threads,
        custom_op_registerers=tensorflow_text.tflite_registrar.SELECT_TFTEXT_OPS)


def _strings(texts: Sequence[str]) -> np.ndarray:
    # "replace" only matters for lone surrogates (a JSON "\ud800" escape): they become "?".
    return np.array([text.encode("utf-8", "replace") for text in texts], dtype=object)
