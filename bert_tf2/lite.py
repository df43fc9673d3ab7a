"""Runs a TFLite file of `bert_tf2.export_lite` in Python: raw texts in, numpy outputs out.

  from bert_tf2.lite import LiteClassifier
  classifier = LiteClassifier("model.tflite")
  classifier.predict(["这本书写得太好了"])     # {"probability": [...], "label": [...]}
  classifier.predict("这本书写得太好了")       # one text: the same, a batch of one
  classifier.predict(questions, answers)      # sentence pairs: text and text_b

The interpreter is LiteRT's (`ai_edge_litert.interpreter.InterpreterWithCustomOps`, the
maintained successor of `tf.lite.Interpreter`), given TF Text's TFLite op registrar
(`tensorflow_text.tflite_registrar.SELECT_TFTEXT_OPS`), which adds the TF Text ops the file's
tokenizer uses (ByteSplit, FastWordpieceDetokenize, FastWordpieceTokenize).
"""

import json
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from bert_tf2 import cli
from bert_tf2 import compat
from bert_tf2 import io_utils

LITE_SUFFIX = ".tflite"
SIGNATURE = "serving_default"
# The file's metadata entry (JSON): task, pairs, class_names, seq_length, truncation.
METADATA_NAME = "bert_tf2"
# One text, or a sequence of them.
Texts = Union[str, Sequence[str]]


class TextsError(cli.UserError, ValueError):
    """Texts a classifier cannot take as given (bytes, numbers, a pair model without its
    text_b); the message says which element and what to pass."""


class LiteModelError(cli.UserError, ValueError):
    """A path or content that is not a TFLite file of bert_tf2.export_lite."""


def is_lite_model(path: str) -> bool:
    """Whether `path` names a TFLite file (what predict and evaluate run with LiteClassifier)."""
    return path.lower().endswith(LITE_SUFFIX)


def text_batch(texts: Texts, name: str = "texts") -> List[str]:
    """`texts` as a list of str: a single str is one text (not a sequence of characters);
    a TextsError for any element that is not a str (bytes too: decode them first)."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray)) or not hasattr(texts, "__iter__"):
        raise TextsError(f"{name} must be a str or a sequence of str, got "
                         f"{type(texts).__name__}")
    batch = list(texts)
    for i, text in enumerate(batch):
        if not isinstance(text, str):
            raise TextsError(f"{name}[{i}] is {type(text).__name__} {_short(text)}, not str: "
                             "pass texts as str (bytes decoded)")
    return batch


def _first_line(error: Exception) -> str:
    return (str(error).splitlines() or [""])[0]


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class LiteClassifier:
    """A TFLite text classifier: `predict(texts[, texts_b])` -> the export's outputs by name.

    `task`, `pairs`, `class_names` and `seq_length` come from the file's metadata.
    """

    def __init__(self, path: str, num_threads: Optional[int] = None):
        self.path = path
        if io_utils.isdir(path):
            raise LiteModelError(f"{path} is a directory: LiteClassifier takes the .tflite "
                                 "file that bert_tf2.export_lite wrote (its --output); an "
                                 "export directory is run by bert_tf2.predict.Predictor")
        with io_utils.open(path, "rb") as f:  # a local path or a URL (gs://, ram://)
            content = f.read()
        metadata = read_metadata(content, source=path)
        self.task, self.pairs = metadata["task"], metadata["pairs"]
        self.class_names: Tuple[str, ...] = tuple(metadata["class_names"])
        self.seq_length = metadata["seq_length"]
        self._interpreter = interpreter_of(content, num_threads)
        self._runner = self._interpreter.get_signature_runner(SIGNATURE)

    def predict(self, texts: Texts, texts_b: Optional[Texts] = None) -> Dict[str, np.ndarray]:
        """The outputs for n >= 0 texts (and their text_b, for a model of pairs); a single
        str is one text (its outputs have the shapes of a batch of one)."""
        if (texts_b is not None) != self.pairs:
            raise TextsError(f"{self.path} classifies {'pairs' if self.pairs else 'single'} "
                             "texts: " + ("pass texts_b" if self.pairs else "drop texts_b"))
        feeds = {"text": _strings(text_batch(texts, "texts"))}
        if self.pairs:
            batch_b = text_batch(texts_b, "texts_b")
            if len(batch_b) != len(feeds["text"]):
                raise TextsError(f"{len(feeds['text'])} texts but {len(batch_b)} texts_b")
            feeds["text_b"] = _strings(batch_b)
        return self._runner(**feeds)


def read_metadata(flatbuffer: bytes, source: str = "the flatbuffer") -> Dict[str, object]:
    """The METADATA_NAME entry of the content (bytes) of a file export_lite wrote; a
    LiteModelError where there is none (`source` names the file in the message)."""
    if not isinstance(flatbuffer, (bytes, bytearray, memoryview)):
        raise TypeError(f"read_metadata takes the file's content (bytes: open(path, 'rb')"
                        f".read()), not a {type(flatbuffer).__name__} {_short(flatbuffer)}")
    schema = compat.tflite_schema()
    try:
        model = schema.Model.GetRootAsModel(flatbuffer, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name().decode() == METADATA_NAME:
                return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    except Exception as error:  # pylint: disable=broad-except  (any garbage in the bytes)
        raise LiteModelError(f"{source} is not a TFLite file ({type(error).__name__}: "
                             f"{_first_line(error)}); pass a file that bert_tf2.export_lite "
                             "wrote") from error
    raise LiteModelError(f"{source} has no {METADATA_NAME!r} metadata entry: it is a TFLite "
                         "file, but not one that bert_tf2.export_lite wrote")


def interpreter_of(content: bytes, num_threads: Optional[int] = None):
    """A LiteRT interpreter of the flatbuffer `content`, with TF Text's TFLite ops."""
    import tensorflow_text  # pylint: disable=g-import-not-at-top
    from ai_edge_litert import interpreter  # pylint: disable=g-import-not-at-top
    return interpreter.InterpreterWithCustomOps(
        model_content=content, num_threads=num_threads,
        custom_op_registerers=tensorflow_text.tflite_registrar.SELECT_TFTEXT_OPS)


def _strings(texts: List[str]) -> np.ndarray:
    # "replace" only matters for lone surrogates (a JSON "\ud800" escape): they become "?".
    return np.array([text.encode("utf-8", "replace") for text in texts], dtype=object)
