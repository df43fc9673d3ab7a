"""Loads the checkpoints users bring into the `BertEncoder` that `bert_tf2.hub_modules` exports.

Three kinds of checkpoint reach `--init_checkpoint`, and each is recognised from its index:

  TF1 Google BERT (name-based)   Google's `chinese_L-12_H-768_A-12/bert_model.ckpt`, which is
                                 also what keras-bert loads: variables named
                                 `bert/encoder/layer_N/attention/self/query/kernel`, ...
  Model Garden TF2 encoder       object-based, the `BertEncoder` under the root `encoder` or
                                 `model` (what `tf2_bert_encoder_checkpoint_converter` writes)
  bert_tf2.train classifier      `MODEL_DIR/checkpoints/final`, the fine-tuned classifier of
                                 `bert_tf2.model.build_classifier`; its encoder is re-exported

Each kind is mapped variable by variable onto the encoder's weights by name (the TF1 names
through a fixed table; object-based checkpoints by the names their object graph records) and
checked as a whole before a single weight is assigned: every checkpoint variable is either
loaded or skipped for a stated reason (pretraining heads, optimizer state, the classifier
head), and a missing variable, an unexpected one or a shape that disagrees with the bert_config
stops the conversion with a `CheckpointError` that names the checkpoint and the variables.
"""

import dataclasses
import math
import re
from typing import Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from absl import logging
import numpy as np
import tensorflow as tf
import tf_keras
from tensorflow.core.protobuf import trackable_object_graph_pb2

from bert_tf2 import cli
from bert_tf2 import io_utils

TF1_GOOGLE_BERT = "TF1 Google BERT checkpoint (name-based)"
MODEL_GARDEN_ENCODER = "Model Garden TF2 encoder checkpoint (object-based)"
BERT_TF2_CLASSIFIER = "bert_tf2.train classifier checkpoint (object-based)"

Shape = Tuple[int, ...]

# Encoder weight name -> Google BERT variable name, and which axes of the encoder weight the
# TF1 variable has merged into one. Google's attention projections are plain [in, heads*size]
# dense layers; the BertEncoder keeps the heads as an axis of their own. Row-major reshaping
# between the two is exact (it is how Google's `transpose_for_scores` splits them).
_TF1_NAMES = (
    (r"word_embeddings/embeddings", r"bert/embeddings/word_embeddings", None),
    (r"position_embedding/embeddings", r"bert/embeddings/position_embeddings", None),
    (r"type_embeddings/embeddings", r"bert/embeddings/token_type_embeddings", None),
    (r"embeddings/layer_norm/(gamma|beta)", r"bert/embeddings/LayerNorm/\1", None),
    (r"transformer/layer_(\d+)/self_attention/(query|key|value)/kernel",
     r"bert/encoder/layer_\1/attention/self/\2/kernel", (1, 3)),
    (r"transformer/layer_(\d+)/self_attention/(query|key|value)/bias",
     r"bert/encoder/layer_\1/attention/self/\2/bias", (0, 2)),
    (r"transformer/layer_(\d+)/self_attention/attention_output/kernel",
     r"bert/encoder/layer_\1/attention/output/dense/kernel", (0, 2)),
    (r"transformer/layer_(\d+)/self_attention/attention_output/bias",
     r"bert/encoder/layer_\1/attention/output/dense/bias", None),
    (r"transformer/layer_(\d+)/self_attention_layer_norm/(gamma|beta)",
     r"bert/encoder/layer_\1/attention/output/LayerNorm/\2", None),
    (r"transformer/layer_(\d+)/intermediate/(kernel|bias)",
     r"bert/encoder/layer_\1/intermediate/dense/\2", None),
    (r"transformer/layer_(\d+)/output/(kernel|bias)", r"bert/encoder/layer_\1/output/dense/\2",
     None),
    (r"transformer/layer_(\d+)/output_layer_norm/(gamma|beta)",
     r"bert/encoder/layer_\1/output/LayerNorm/\2", None),
    (r"pooler_transform/(kernel|bias)", r"bert/pooler/dense/\1", None),
)

# Google BERT variables that are not part of the encoder, and why they are left out.
_TF1_SKIPPED = (
    (r"cls/predictions/.*", "masked-LM pretraining head"),
    (r"cls/seq_relationship/.*", "next-sentence pretraining head"),
    (r"global_step", "training step counter"),
    (r".*/adam_[mv]", "optimizer state"),
)

_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_OPTIMIZER_SLOT = "/.OPTIMIZER_SLOT/"
_MODEL_GARDEN_ROOTS = ("encoder", "model")
# The variable that tells where the encoder is in an object-based checkpoint.
_ENCODER_MARKER = "word_embeddings/embeddings"
# In a classifier checkpoint the hub encoder layer also holds the module's unnamed
# `do_lower_case` flag (see `hub_modules.export_encoder`).
_CLASSIFIER_ENCODER_SKIPPED = {"Variable": "do_lower_case flag of the encoder module"}

_PREFIX_FILE_SUFFIX = re.compile(r"\.(index|meta|data-\d{5}-of-\d{5})$")
_LISTED = 10  # Names shown per problem in an error message.


class CheckpointError(cli.UserError, ValueError):
    """A checkpoint that cannot be found or does not fit the encoder; says which and why."""


class Assignment(NamedTuple):
    """One checkpoint variable and the encoder weight it fills."""

    key: str  # The tensor's key in the checkpoint.
    weight: tf.Variable
    stored_shape: Shape  # Its shape in the checkpoint; reshaped to the weight's on loading.


@dataclasses.dataclass(frozen=True)
class CheckpointPlan:
    """How a checkpoint goes into an encoder, worked out and checked before loading.

    Every variable of the checkpoint is in `assignments` or in `skipped`, by its name: the TF1
    name, or for object-based checkpoints the name the variable had when it was saved.
    """

    prefix: str
    kind: str
    assignments: Mapping[str, Assignment]
    skipped: Mapping[str, str]  # Checkpoint variable -> why it is not loaded.


def load_encoder_weights(network: tf_keras.Model, path: str) -> CheckpointPlan:
    """Loads the checkpoint at `path` into `network` (a built `BertEncoder`); logs what it did.

    Raises `CheckpointError` before touching any weight if the checkpoint cannot be found or
    does not fit the encoder.
    """
    plan = plan_checkpoint(path, network)
    _assign(plan)
    _log_plan(plan)
    return plan


def plan_checkpoint(path: str, network: tf_keras.Model) -> CheckpointPlan:
    """Finds the checkpoint, recognises its kind and checks it against `network`'s weights.

    A TF1 checkpoint is planned from its index alone, so its data file need not be there.
    """
    prefix = resolve_checkpoint_prefix(path)
    shapes = {name: tuple(shape)
              for name, shape in reader(prefix).get_variable_to_shape_map().items()}
    if _OBJECT_GRAPH_KEY not in shapes:
        if any(name.startswith("bert/") for name in shapes):
            return _plan_tf1(prefix, shapes, network)
    else:
        variables = _object_variables(prefix, shapes)
        group = next((key.split("/")[0] for key, (name, _) in variables.items()
                      if name == _ENCODER_MARKER and _OPTIMIZER_SLOT not in key), None)
        if group in _MODEL_GARDEN_ROOTS:
            return _plan_object_based(prefix, MODEL_GARDEN_ENCODER, variables, network, group,
                                      outside=f"outside the encoder root {group!r}",
                                      skipped_inside={})
        if group:
            return _plan_object_based(prefix, BERT_TF2_CLASSIFIER, variables, network, group,
                                      outside="classifier head",
                                      skipped_inside=_CLASSIFIER_ENCODER_SKIPPED)
    raise CheckpointError(
        f"{prefix}: not a checkpoint kind this tool reads ({TF1_GOOGLE_BERT}; "
        f"{MODEL_GARDEN_ENCODER} with root {' or '.join(_MODEL_GARDEN_ROOTS)}; "
        f"{BERT_TF2_CLASSIFIER}). Its variables: {_listing(sorted(shapes))}")


def resolve_checkpoint_prefix(path: str) -> str:
    """The checkpoint prefix that `path` stands for.

    Takes the prefix itself (`chinese_L-12_H-768_A-12/bert_model.ckpt`) and the near misses
    users type: one of the prefix's files (`.index`, `.data-*`, `.meta`), or a directory
    holding one checkpoint: a `bert_tf2.train` model_dir (its `checkpoints/final`), a directory
    with a `checkpoint` state file (its latest), or one with a single `*.index`.
    """
    if _is_prefix(path):
        return path
    if io_utils.isdir(path):
        prefix = _prefix_in_directory(path)
    else:
        prefix = _PREFIX_FILE_SUFFIX.sub("", path)
        if prefix == path or not _is_prefix(prefix):
            raise CheckpointError(
                f"{path}: no checkpoint there ({path}.index does not exist). Pass the "
                "checkpoint prefix, the path without .index/.data-*, e.g. "
                f"chinese_L-12_H-768_A-12/bert_model.ckpt.{_suggestions(path)}")
    logging.info("Checkpoint %s: using the prefix %s", path, prefix)
    return prefix


def reader(prefix: str):
    """A reader of the checkpoint with this prefix (local or a URL).

    Not tf.train.load_checkpoint: that takes a prefix that is also a directory for one (on
    `ram://` any beginning of a file's name is), and then finds no checkpoint in it.
    """
    return tf.compat.v1.train.NewCheckpointReader(prefix)


def _is_prefix(path: str) -> bool:
    return io_utils.isfile(path + ".index")


def _prefixes_in(directory: str) -> Sequence[str]:
    if not io_utils.isdir(directory):
        return []
    return sorted(io_utils.join(directory, name[:-len(".index")])
                  for name in io_utils.listdir(directory) if name.endswith(".index"))


def _prefix_in_directory(directory: str) -> str:
    model_dir_checkpoint = io_utils.join(directory, "checkpoints", "final")
    if _is_prefix(model_dir_checkpoint):
        return model_dir_checkpoint
    latest = tf.train.latest_checkpoint(directory)
    if latest:
        return latest
    prefixes = _prefixes_in(directory)
    if len(prefixes) == 1:
        return prefixes[0]
    if prefixes:
        raise CheckpointError(f"{directory} is a directory holding {len(prefixes)} "
                              f"checkpoints; pass one prefix: {', '.join(prefixes)}")
    raise CheckpointError(f"{directory} is a directory without a checkpoint (no *.index "
                          "file); pass the checkpoint prefix, e.g. "
                          "chinese_L-12_H-768_A-12/bert_model.ckpt")


def _suggestions(path: str) -> str:
    prefixes = _prefixes_in(io_utils.dirname(path))
    return f" Checkpoints next to it: {', '.join(prefixes)}" if prefixes else ""


def _plan_tf1(prefix: str, shapes: Mapping[str, Shape],
              network: tf_keras.Model) -> CheckpointPlan:
    """Maps a Google BERT checkpoint onto the encoder's weights and checks it."""
    assignments, unmapped = {}, []
    for weight in network.weights:
        counterpart = _tf1_counterpart(weight)
        if counterpart:
            assignments[counterpart.key] = counterpart
        else:
            unmapped.append(weight.name)
    if unmapped:
        raise CheckpointError(
            f"{prefix}: the encoder the bert_config describes has weights a Google BERT "
            f"checkpoint does not have (is embedding_size set?): {_listing(unmapped)}")
    skipped = {name: reason for name in shapes for pattern, reason in _TF1_SKIPPED
               if re.fullmatch(pattern, name)}
    plan = CheckpointPlan(prefix, TF1_GOOGLE_BERT, assignments, skipped)
    _check_against_index(plan, shapes)
    return plan


def _tf1_counterpart(weight: tf.Variable) -> Optional[Assignment]:
    """The Google BERT variable that holds `weight`, or None if there is none."""
    name = weight.name.split(":")[0]
    for pattern, template, merged_axes in _TF1_NAMES:
        match = re.fullmatch(pattern, name)
        if match:
            shape = tuple(weight.shape)
            if merged_axes:
                start, stop = merged_axes
                shape = shape[:start] + (math.prod(shape[start:stop]),) + shape[stop:]
            return Assignment(match.expand(template), weight, shape)
    return None


def _object_variables(prefix: str,
                      shapes: Mapping[str, Shape]) -> Dict[str, Tuple[str, Shape]]:
    """{checkpoint key: (name the variable had when saved, shape)} of an object-based checkpoint.

    The names come from the checkpoint's object graph, which records each variable's name.
    """
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(
        _read_tensor(reader(prefix), prefix, _OBJECT_GRAPH_KEY))
    return {attribute.checkpoint_key: (attribute.full_name, shapes[attribute.checkpoint_key])
            for node in graph.nodes for attribute in node.attributes}


def _plan_object_based(prefix: str, kind: str, variables: Mapping[str, Tuple[str, Shape]],
                       network: tf_keras.Model, group: str, *, outside: str,
                       skipped_inside: Mapping[str, str]) -> CheckpointPlan:
    """Maps the encoder's variables, those under `group/`, onto the encoder by name.

    Skipped: optimizer state anywhere, every variable outside `group` (giving `outside` as the
    reason) and the variables named in `skipped_inside`.
    """
    stored, keys, skipped = {}, {}, {}
    for key, (name, shape) in variables.items():
        if _OPTIMIZER_SLOT in key or key.startswith("optimizer/"):
            skipped[name] = "optimizer state"
        elif not key.startswith(group + "/"):
            skipped[name] = outside
        elif name in skipped_inside:
            skipped[name] = skipped_inside[name]
        else:
            stored[name], keys[name] = shape, key
    assignments = {}
    for weight in network.weights:
        name = weight.name.split(":")[0]
        assignments[name] = Assignment(keys.get(name), weight, tuple(weight.shape))
    plan = CheckpointPlan(prefix, kind, assignments, skipped)
    _check_against_index(plan, stored)
    return plan


def _check_against_index(plan: CheckpointPlan, shapes: Mapping[str, Shape]) -> None:
    """Raises one CheckpointError listing every missing, unexpected or misshapen variable.

    `shapes` maps the names that `plan.assignments` and `plan.skipped` use to stored shapes.
    """
    missing = [name for name in plan.assignments if name not in shapes]
    unexpected = [name for name in shapes
                  if name not in plan.assignments and name not in plan.skipped]
    misshapen = [f"{name}: expected {list(a.stored_shape)}, found {list(shapes[name])}"
                 for name, a in plan.assignments.items()
                 if name in shapes and shapes[name] != a.stored_shape]
    problems = [f"  {title} ({len(names)}): {_listing(sorted(names))}"
                for title, names in (("missing variables", missing),
                                     ("unexpected variables", unexpected),
                                     ("shape mismatches", misshapen)) if names]
    if problems:
        raise CheckpointError(
            f"{plan.prefix}: this {plan.kind} does not fit the encoder the bert_config "
            "describes:\n" + "\n".join(problems) + "\nThe expected shapes follow vocab_size, "
            "hidden_size, num_attention_heads, num_hidden_layers, intermediate_size, "
            "max_position_embeddings and type_vocab_size: check that the bert_config "
            "belongs to this checkpoint.")


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f", ... and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def _read_tensor(reader, prefix: str, key: str) -> np.ndarray:
    try:
        return reader.get_tensor(key)
    except tf.errors.OpError as error:
        raise CheckpointError(f"{prefix}: cannot read {key}: {error.message}") from error


def _assign(plan: CheckpointPlan) -> None:
    prefix_reader = reader(plan.prefix)
    for assignment in plan.assignments.values():
        value = _read_tensor(prefix_reader, plan.prefix, assignment.key)
        assignment.weight.assign(np.reshape(value, assignment.weight.shape))


def _log_plan(plan: CheckpointPlan) -> None:
    logging.info("Encoder: %d weights loaded from %s, a %s", len(plan.assignments), plan.prefix,
                 plan.kind)
    by_reason: Dict[str, list] = {}
    for name, reason in sorted(plan.skipped.items()):
        by_reason.setdefault(reason, []).append(name)
    for reason, names in by_reason.items():
        logging.info("  skipped %d (%s): %s", len(names), reason, ", ".join(names))
