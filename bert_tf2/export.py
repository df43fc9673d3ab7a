"""Export: the raw-text classifier as a versioned SavedModel that TF Serving loads as is.

Layout: `export_dir/<version>/` with a numeric version (TF Serving serves the highest by
default). A new version is written to a hidden scratch directory and renamed into place only
when complete (SavedModel, classify method name and warm-up file all written), existing
versions are never overwritten, and `keep=N` then removes all but the newest N versions.

Signature contract -- the single source of truth; docs/serving.md copies this table:

  signature        method_name     input: dtype shape         outputs: dtype shape
  ---------------  --------------  -------------------------  ---------------------------------
  serving_default  .../predict     text: DT_STRING [-1]       probability: DT_FLOAT [-1]
                                   raw UTF-8 text, any          P(positive)
                                   length                     label: DT_INT64 [-1]
                                                                1 if probability >= 0.5 else 0
  classify         .../classify    inputs: DT_STRING [-1]     scores: DT_FLOAT [-1, 2]
                                   serialized tf.Examples,      [P(negative), P(positive)]
                                   bytes feature "text"       classes: DT_STRING [-1, 2]
                                   (required, one value)        ["0", "1"] on every row

  (method_name ... = tensorflow/serving/)

That is the binary task. Multiclass: serving_default gives `probabilities` DT_FLOAT [-1, K],
`label` DT_STRING [-1] (the argmax's class name) and `label_id` DT_INT64 [-1]; classify gives
`scores` [-1, K] (the probabilities) and `classes` [-1, K] (the class names). Multilabel:
`probabilities` [-1, K] and `labels` DT_INT64 [-1, K] (1 where >= 0.5); classify as
multiclass. Sentence pairs take a second text, `text_b` (a second input of serving_default, a
second bytes feature of classify's tf.Examples). Every version carries its class names, one a
line in the order of the probabilities, in `assets/classes.txt`, and the test split it was
scored on in training, in `assets/test_data.json` (where it is, how it is read, a fingerprint of
what was read): what `bert_tf2.evaluate` reads when it is given no --data.

`classify` is what TF Serving's Classify API (gRPC `PredictionService/Classify`, REST
`:classify`) calls. Its class names are "0" and "1", the same values as serving_default's
`label` and as the training labels, so every API reports the same ids.

Every version also carries `assets.extra/tf_serving_warmup_requests`: a TFRecord of
`PredictionLog`s (PredictRequests for serving_default, one ClassifyRequest for classify) that
TF Serving replays at load time, so the first user request does not pay for lazy
initialization. TF Serving fails the load if a warm-up request fails, so they are real
requests that the tests replay against the exported model.
"""

import dataclasses
import re
from typing import Dict, List, Optional, Sequence, Set, Tuple

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from absl import logging
import tensorflow as tf
import tf_keras

from bert_tf2 import cli
from bert_tf2 import compat
from bert_tf2 import config
from bert_tf2 import data
from bert_tf2 import input_pipeline
from bert_tf2 import io_utils
from bert_tf2 import prepared_data

# serving_default (Predict API).
SERVING_SIGNATURE = "serving_default"
PREDICT_METHOD_NAME = "tensorflow/serving/predict"
TEXT_INPUT = "text"
TEXT_B_INPUT = "text_b"  # sentence pairs: the second text
PROBABILITY_OUTPUT = "probability"  # binary
LABEL_OUTPUT = "label"  # binary: 0/1; multiclass: the class name
PROBABILITIES_OUTPUT = "probabilities"  # multiclass, multilabel
LABEL_ID_OUTPUT = "label_id"  # multiclass
LABELS_OUTPUT = "labels"  # multilabel
DECISION_THRESHOLD = config.DECISION_THRESHOLD
# Each text is cut to its first MAX_TEXT_BYTES bytes before tokenizing. That is far more than
# any seq_length needs (512 tokens of Chinese are ~1.5 KiB) and bounds the time and memory one
# hostile request can cost: tokenizing runs over the whole string before packing truncates it
# to seq_length. A character cut in half is dropped by the tokenizer like any invalid UTF-8.
MAX_TEXT_BYTES = 64 * 1024

# classify (Classify API); the keys and method name TF Serving's classifier requires
# (tf.saved_model.CLASSIFY_* constants).
CLASSIFY_SIGNATURE = "classify"
CLASSIFY_METHOD_NAME = tf.saved_model.CLASSIFY_METHOD_NAME      # tensorflow/serving/classify
CLASSIFY_INPUTS = tf.saved_model.CLASSIFY_INPUTS                # inputs
CLASSIFY_OUTPUT_SCORES = tf.saved_model.CLASSIFY_OUTPUT_SCORES  # scores
CLASSIFY_OUTPUT_CLASSES = tf.saved_model.CLASSIFY_OUTPUT_CLASSES  # classes
TEXT_FEATURE = "text"
TEXT_B_FEATURE = "text_b"
CLASS_NAMES = config.BINARY_CLASS_NAMES  # binary `scores` columns: negative, positive
# The class names, one a line, in the order of the probabilities (every task).
CLASSES_FILE = "assets/classes.txt"
# How the texts are packed (seq_length, truncation): what a re-export of the same classifier
# (bert_tf2.export_lite) must repeat, which the signatures' graphs hold only as constants.
PACKING_FILE = "assets/packing.json"
# The test split of the training run (`test_data_record`): bert_tf2.evaluate's default data.
TEST_DATA_FILE = "assets/test_data.json"
# Its `source` for a model trained on the built-in corpus (whose split is fixed).
BUILTIN_TEST_DATA = "built-in"

# Warm-up.
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
WARMUP_REVIEWS = (
    "这本书写得太好了，强烈推荐，值得一读！",
    "质量很差，用了两天就坏了，非常失望。",
    "物流很快，包装完好，客服态度也不错。",
    "一般般吧，没有想象中那么好。",
    # Longer than any seq_length used here, to warm up the truncation path too.
    "房间干净整洁，早餐丰富，下次还会再来。" * 8,
)


class ServingModule(tf.Module):
    """Holds the text classifier and the signature functions that TF Serving calls.

    `task` and `class_names` choose the outputs (the contract above); with `pairs` both
    signatures take a second text, `text_b`.
    """

    def __init__(self, text_classifier: tf_keras.Model, *, task: str = "binary",
                 class_names: Sequence[str] = CLASS_NAMES, pairs: bool = False):
        super().__init__()
        # The SavedModel holds only what the signatures capture (`_captured_state`): tracking
        # the Keras models would also save every layer's own traced calls, which TF Serving
        # never runs and which make the export several times larger and slower to load.
        object.__setattr__(self, "_text_classifier", text_classifier)
        self.captured_state = _captured_state(text_classifier)
        self.task, self.class_names, self.pairs = task, tuple(class_names), pairs
        text_specs = [tf.TensorSpec([None], tf.string, name=name) for name in self.text_inputs]
        self.serve = tf.function(self._serve_pair if pairs else self._serve_one,
                                 input_signature=text_specs)
        self.classify = tf.function(
            self._classify, input_signature=[tf.TensorSpec([None], tf.string,
                                                            name=CLASSIFY_INPUTS)])

    @property
    def text_inputs(self) -> Sequence[str]:
        return (TEXT_INPUT, TEXT_B_INPUT) if self.pairs else (TEXT_INPUT,)

    def _probabilities(self, texts):
        """[batch] or [batch, classes] float32 probabilities of the texts (one or two lists)."""
        texts = [tf.strings.substr(text, 0, MAX_TEXT_BYTES) for text in texts]  # see there
        probabilities = self._text_classifier(texts if self.pairs else texts[0],
                                              training=False)
        if self.task == "binary":
            probabilities = tf.reshape(probabilities, [-1])
        return tf.cast(probabilities, tf.float32)

    def _serve_one(self, text):
        return self._outputs(self._probabilities([text]))

    def _serve_pair(self, text, text_b):
        return self._outputs(self._probabilities([text, text_b]))

    def _outputs(self, probabilities) -> Dict[str, tf.Tensor]:
        if self.task == "binary":
            return {PROBABILITY_OUTPUT: probabilities,
                    LABEL_OUTPUT: tf.cast(probabilities >= DECISION_THRESHOLD, tf.int64)}
        if self.task == "multilabel":
            return {PROBABILITIES_OUTPUT: probabilities,
                    LABELS_OUTPUT: tf.cast(probabilities >= DECISION_THRESHOLD, tf.int64)}
        label_id = tf.argmax(probabilities, axis=1, output_type=tf.int64)
        return {PROBABILITIES_OUTPUT: probabilities, LABEL_ID_OUTPUT: label_id,
                LABEL_OUTPUT: tf.gather(tf.constant(self.class_names), label_id)}

    def _classify(self, inputs):
        features = tf.io.parse_example(
            inputs, {name: tf.io.FixedLenFeature([], tf.string) for name in self.text_inputs})
        probabilities = self._probabilities([features[name] for name in self.text_inputs])
        scores = (tf.stack([1.0 - probabilities, probabilities], axis=1)
                  if self.task == "binary" else probabilities)
        classes = tf.broadcast_to(tf.constant([self.class_names]),
                                  [tf.shape(scores)[0], len(self.class_names)])
        return {CLASSIFY_OUTPUT_SCORES: scores, CLASSIFY_OUTPUT_CLASSES: classes}

    def signature_functions(self) -> Dict[str, tf.types.experimental.ConcreteFunction]:
        """The functions to save as signatures, by signature key."""
        return {SERVING_SIGNATURE: self.serve.get_concrete_function(),
                CLASSIFY_SIGNATURE: self.classify.get_concrete_function()}


def _captured_state(text_classifier) -> list:
    """What the signatures capture of `text_classifier`, for the SavedModel to hold.

    Of a Keras text classifier (`model.TextClassifier`): its weights and its preprocessing
    module (the vocab table and file); any other module is held as it is.
    """
    if isinstance(text_classifier, tf_keras.Model):
        return [text_classifier.preprocessor, *text_classifier.weights]
    return [text_classifier]


def export_text_classifier(text_classifier: tf_keras.Model, export_dir: str,
                           version: Optional[int] = None,
                           keep: Optional[int] = None, *, task: str = "binary",
                           class_names: Sequence[str] = CLASS_NAMES,
                           pairs: bool = False,
                           test_data: Optional[Dict[str, object]] = None) -> str:
    """Writes `export_dir/<version>` atomically and returns its path.

    `task`, `class_names` and `pairs` choose the signatures' inputs and outputs (`ServingModule`).
    `test_data` (`test_data_record`) is written to TEST_DATA_FILE; None writes none.
    `version` defaults to one more than the highest existing version (1 for the first), taken
    when the finished export is renamed into place; an explicit `version` that exists already
    raises FileExistsError.
    `keep=N` (N >= 1) removes all but the newest N versions, only once the new version is in
    place; None keeps every version.
    """
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be at least 1 (or None to keep all), got {keep}")
    module = ServingModule(text_classifier, task=task, class_names=class_names, pairs=pairs)
    with io_utils.scratch_directory(export_dir, "export") as scratch:
        tf.saved_model.save(module, scratch, signatures=module.signature_functions())
        set_method_names(scratch, {CLASSIFY_SIGNATURE: CLASSIFY_METHOD_NAME})
        write_warmup_requests(scratch, warmup_texts(_seq_length(text_classifier)), pairs=pairs)
        write_class_names(io_utils.join(scratch, CLASSES_FILE), class_names)
        packer = getattr(text_classifier, "packer", None)
        if packer is not None:
            io_utils.write_json({"seq_length": packer.seq_length,
                                 "truncation": packer.truncation},
                                io_utils.join(scratch, PACKING_FILE))
        if test_data is not None:
            io_utils.write_json(test_data, io_utils.join(scratch, TEST_DATA_FILE))
        # The version is claimed only now, by the rename: another export into export_dir
        # running at the same time gets another number.
        final_path = (io_utils.publish_next_version(scratch, export_dir) if version is None
                      else io_utils.publish_directory(scratch,
                                                      io_utils.join(export_dir, str(version))))
    logging.info("Exported SavedModel version %s to %s", io_utils.basename(final_path),
                 final_path)
    if keep is not None:
        prune_versions(export_dir, keep)
    return final_path


def weights_of(loaded, saved_model_dir: str) -> List[tf.Variable]:
    """The classifier weights of an export (`ServingModule.captured_state`), as loaded from
    `saved_model_dir` (`tf.saved_model.load`), with the names they had in training
    (`transformer/layer_0/...`, `classifier/kernel`, ...)."""
    state = getattr(loaded, "captured_state", None)
    if state is None:
        raise ValueError(f"{saved_model_dir}: not an export of bert_tf2 (no captured_state)")
    return [item for item in state if isinstance(item, tf.Variable)]


def set_method_names(saved_model_dir: str, method_names: Dict[str, str]) -> None:
    """Rewrites the `method_name` of the given signatures in `saved_model_dir/saved_model.pb`.

    `tf.saved_model.save` marks every signature `tensorflow/serving/predict`. TF Serving's
    Classify API accepts that only while its `--enable_signature_method_name_check` is off
    (the default); with the check on it requires `tensorflow/serving/classify`. Writing the
    real method name makes the signature work either way; TF2 loading ignores method names.
    The fingerprint (a checksum of saved_model.pb) is recomputed to match.
    """
    saved_model = _read_saved_model(saved_model_dir)
    for meta_graph in saved_model.meta_graphs:
        for key, method_name in method_names.items():
            if key not in meta_graph.signature_def:
                raise KeyError(f"no signature {key!r} in {saved_model_dir}")
            meta_graph.signature_def[key].method_name = method_name
    with io_utils.open(io_utils.join(saved_model_dir, "saved_model.pb"), "wb") as f:
        f.write(saved_model.SerializeToString(deterministic=True))
    _rewrite_fingerprint(saved_model_dir)


def _read_saved_model(saved_model_dir: str):
    """The SavedModel proto of `saved_model_dir/saved_model.pb`, read without loading it."""
    from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top
    saved_model = saved_model_pb2.SavedModel()
    with io_utils.open(io_utils.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    return saved_model


@dataclasses.dataclass(frozen=True)
class Contract:
    """What an export's clients rely on: its task (which outputs), whether it takes pairs
    (which inputs) and its class names (what the outputs' columns and labels mean)."""

    task: str
    pairs: bool
    class_names: Tuple[str, ...]

    def __str__(self) -> str:
        return (f"{self.task} {'sentence pairs' if self.pairs else 'texts'} over classes "
                f"{','.join(self.class_names)}")


def read_contract(saved_model_dir: str) -> Contract:
    """The `Contract` of an export, read off its serving_default signature and class names."""
    signature = _read_saved_model(saved_model_dir).meta_graphs[0].signature_def[
        SERVING_SIGNATURE]
    outputs = set(signature.outputs)
    task = ("binary" if PROBABILITY_OUTPUT in outputs else
            "multiclass" if LABEL_ID_OUTPUT in outputs else "multilabel")
    return Contract(task=task, pairs=TEXT_B_INPUT in signature.inputs,
                    class_names=read_class_names(saved_model_dir))


class ContractChangeError(cli.UserError):
    """An export would become the served version of a directory whose clients expect another
    contract."""


def check_contract(export_dir: str, contract: Contract) -> None:
    """Refuses to export `contract` into `export_dir` when its newest version has another:
    the new version is the one TF Serving and predict pick up, under the same clients."""
    versions = [version for version in io_utils.existing_versions(export_dir)
                if io_utils.isfile(io_utils.join(export_dir, str(version), "saved_model.pb"))]
    if not versions:
        return
    served = read_contract(io_utils.join(export_dir, str(versions[-1])))
    if served != contract:
        raise ContractChangeError(
            f"--export_dir={export_dir}: its version {versions[-1]} serves {served}; this run "
            f"would export {contract} as version {versions[-1] + 1}, which TF Serving and "
            "predict would take in its place. Pass another --export_dir, or --export_new_task "
            "to change the contract under its clients")


def _rewrite_fingerprint(saved_model_dir: str) -> None:
    fingerprint = io_utils.join(saved_model_dir, "fingerprint.pb")
    if not io_utils.exists(fingerprint):
        return
    try:
        compat.write_saved_model_fingerprint(saved_model_dir)
    except (ImportError, AttributeError, ValueError):
        io_utils.remove(fingerprint)  # optional file; a stale checksum would be worse than none


def graph_ops(saved_model_dir: str) -> Set[str]:
    """Every op type in the SavedModel's graphs, function bodies included."""
    ops = set()
    for meta_graph in _read_saved_model(saved_model_dir).meta_graphs:
        ops.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    return ops


def custom_ops(saved_model_dir: str) -> Set[str]:
    """The ops of the SavedModel that core TensorFlow lacks (from TF Text, for this model).

    Whatever runs the export -- TF Serving, saved_model_cli, another program -- must have
    these registered. Core ops are the ones with a `tf.raw_ops` wrapper.
    """
    return {op for op in graph_ops(saved_model_dir) if not hasattr(tf.raw_ops, op)}


def warmup_texts(seq_length: Optional[int] = None) -> Tuple[str, ...]:
    """WARMUP_REVIEWS, and a text that fills each length bucket of `seq_length`.

    The exported model pads each (sub-)batch to the bucket of its longest text, so each bucket
    is one input shape; warming every one up means no user request is the first of its shape.
    """
    if not seq_length:
        return WARMUP_REVIEWS
    # One Chinese character is one token: a text of n - 2 characters packs to n tokens.
    return WARMUP_REVIEWS + tuple("好" * (bucket - 2)
                                  for bucket in input_pipeline.length_buckets(seq_length))


def _seq_length(text_classifier) -> Optional[int]:
    packer = getattr(text_classifier, "packer", None)
    return packer.seq_length if packer is not None else None


def warmup_requests(texts: Sequence[str] = WARMUP_REVIEWS, pairs: bool = False):
    """The `PredictionLog`s written as the warm-up file: real requests for both signatures.

    A full batch and a single text through serving_default (batch sizes 1 and N), and the
    same batch as tf.Examples through classify; with `pairs`, each text goes with the next as
    its `text_b`. `model_spec.name` is left empty: TF Serving runs warm-up records against the
    model being loaded, whatever name it is served under.
    """
    from tensorflow_serving.apis import classification_pb2  # pylint: disable=g-import-not-at-top
    from tensorflow_serving.apis import predict_pb2  # pylint: disable=g-import-not-at-top
    from tensorflow_serving.apis import prediction_log_pb2  # pylint: disable=g-import-not-at-top

    columns = {TEXT_INPUT: list(texts)}
    if pairs:
        columns[TEXT_B_INPUT] = list(texts[1:]) + list(texts[:1])
    logs = []
    for size in (len(texts), 1):
        request = predict_pb2.PredictRequest()
        request.model_spec.signature_name = SERVING_SIGNATURE
        for name, column in columns.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(
                [text.encode("utf-8") for text in column[:size]], dtype=tf.string,
                shape=[size]))
        logs.append(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)))
    request = classification_pb2.ClassificationRequest()
    request.model_spec.signature_name = CLASSIFY_SIGNATURE
    for i, text in enumerate(texts):
        request.input.example_list.examples.add().CopyFrom(
            text_example(text, columns[TEXT_B_INPUT][i] if pairs else None))
    logs.append(prediction_log_pb2.PredictionLog(
        classify_log=prediction_log_pb2.ClassifyLog(request=request)))
    return logs


def text_example(text: str, text_b: Optional[str] = None) -> tf.train.Example:
    """The tf.Example the classify signature reads: bytes feature "text" (and "text_b", for
    pairs) holding UTF-8."""
    values = {TEXT_FEATURE: text, **({TEXT_B_FEATURE: text_b} if text_b is not None else {})}
    return tf.train.Example(features=tf.train.Features(feature={
        name: tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode("utf-8")]))
        for name, value in values.items()}))


def write_warmup_requests(saved_model_dir: str, texts: Sequence[str] = WARMUP_REVIEWS,
                          pairs: bool = False) -> str:
    """Writes `saved_model_dir/assets.extra/tf_serving_warmup_requests`; returns its path."""
    path = io_utils.join(saved_model_dir, WARMUP_FILE)
    io_utils.makedirs(io_utils.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for log in warmup_requests(texts, pairs=pairs):
            writer.write(log.SerializeToString())
    return path


def write_class_names(path: str, class_names: Sequence[str]) -> str:
    """Writes `class_names` to `path`, one a line, atomically; returns `path`.

    An export's are `assets/classes.txt` (CLASSES_FILE) in the version; a training run's are
    `model_dir/classes.txt`.
    """
    with io_utils.atomic_file(path) as f:
        f.writelines(f"{name}\n" for name in class_names)
    return path


def read_class_names(saved_model_dir: str) -> Tuple[str, ...]:
    """The class names an export carries (`write_class_names`); binary's for older exports."""
    path = io_utils.join(saved_model_dir, CLASSES_FILE)
    if not io_utils.isfile(path):
        return CLASS_NAMES
    with io_utils.open(path, encoding="utf-8") as f:
        return tuple(line.rstrip("\n") for line in f)


def read_packing(saved_model_dir: str) -> Optional[Dict[str, object]]:
    """The export's seq_length and truncation (PACKING_FILE), or None where it has none."""
    return io_utils.read_json(io_utils.join(saved_model_dir, PACKING_FILE))


def test_data_record(data_config: config.DataConfig,
                     test_split: Optional[data.Examples]) -> Dict[str, object]:
    """What an export records of the test split a training run scored it on: `source` (the
    absolute --test_data, BUILTIN_TEST_DATA, or None where the run had no test split), the
    `reader` settings it was read with (the data flags but the three split flags) and the
    `fingerprint` (`data.fingerprint`) of what was read."""
    if test_split is None:
        return {"source": None}
    reader = {name: value for name, value in dataclasses.asdict(data_config).items()
              if name not in ("train_data", "eval_data", "test_data")}
    source = (io_utils.abspath(data_config.test_data) if data_config.train_data
              else BUILTIN_TEST_DATA)
    return {"source": source, "reader": reader,
            "fingerprint": prepared_data.fingerprint(test_split)}


def read_test_data(saved_model_dir: str) -> Optional[Dict[str, object]]:
    """The export's `test_data_record` (TEST_DATA_FILE), or None where it has none."""
    return io_utils.read_json(io_utils.join(saved_model_dir, TEST_DATA_FILE))


def prune_versions(export_dir: str, keep: int) -> List[int]:
    """Removes all but the newest `keep` versions under `export_dir`; returns the removed ones.

    The server never sees a loadable half-deleted version (`io_utils.unpublish_directory`).
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    removed = io_utils.existing_versions(export_dir)[:-keep]
    for version in removed:
        io_utils.unpublish_directory(io_utils.join(export_dir, str(version)))
    return removed
