"""Builds TF Hub-format BERT modules offline: `OUTPUT_DIR/preprocess` and `OUTPUT_DIR/encoder`.

The two SavedModels have the interface of TF Hub's `bert_zh_preprocess/3` and
`bert_zh_L-12_H-768_A-12/4`, so everything that takes a TF Hub handle takes these paths too:

  preprocess(strings)                    -> {input_word_ids, input_mask, input_type_ids}
  preprocess.tokenize(strings)           -> int32 RaggedTensor [batch, (words), (wordpieces)]
  preprocess.bert_pack_inputs([seg, ...], seq_length=N)  -> the same dict, for 1 or 2 segments
  encoder({input_word_ids, ...}, training=...) -> {pooled_output, sequence_output,
                                                   encoder_outputs, default}

The encoder is tf-models-official's `BertEncoder`, exported the way Model Garden's
`export_tfhub` does it; the sizes come from a Google-style `bert_config.json` and the weights
from `--init_checkpoint` (random init without one).

  python -m bert_tf2.hub_modules --vocab_file=V --bert_config_file=C \
      [--init_checkpoint=CK] --output_dir=D
"""

import dataclasses
import functools
import json
import os
import re
from typing import Callable, Dict, NamedTuple, Optional, Sequence, Tuple

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from absl import flags, logging
import numpy as np
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras
from official.legacy.bert import configs
from official.modeling import tf_utils
from official.nlp.modeling import layers
from official.nlp.modeling import networks
from official.nlp.tools import export_tfhub_lib

from bert_tf2 import checkpoints
from bert_tf2 import cli
from bert_tf2 import compat
from bert_tf2 import distribution
from bert_tf2 import flags as project_flags
from bert_tf2 import io_utils
from bert_tf2 import tokenization

_REQUIRED_CONFIG_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers",
                           "num_attention_heads", "intermediate_size")


class ModuleInputError(cli.UserError, ValueError):
    """What the modules are to be built from cannot make them; found before anything is built."""


@dataclasses.dataclass(frozen=True)
class HubModules:
    """Paths of a built preprocess/encoder pair."""

    preprocess: str
    encoder: str


def read_bert_config(path: str) -> configs.BertConfig:
    """Reads a Google-style bert_config.json, with errors that name the file and the field."""
    try:
        with io_utils.open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except OSError as error:
        raise ModuleInputError(f"{path}: cannot read BERT config: {error.strerror}") from error
    except json.JSONDecodeError as error:
        raise ModuleInputError(f"{path}:{error.lineno}: not valid JSON: {error.msg}") from error
    missing = [name for name in _REQUIRED_CONFIG_FIELDS if name not in raw]
    if missing:
        raise ModuleInputError(f"{path}: BERT config lacks {', '.join(missing)}")
    if raw["hidden_size"] % raw["num_attention_heads"]:
        raise ModuleInputError(f"{path}: hidden_size {raw['hidden_size']} is not a multiple of "
                               f"num_attention_heads {raw['num_attention_heads']}")
    return configs.BertConfig.from_dict(raw)


def count_vocab(vocab_file: str) -> int:
    """Number of tokens in a vocab.txt (one per line, as the original BERT reads it)."""
    try:
        with io_utils.open(vocab_file, encoding="utf-8") as f:
            return sum(1 for _ in f)
    except (OSError, UnicodeDecodeError) as error:
        raise ModuleInputError(f"--vocab_file={vocab_file}: cannot read it: "
                               f"{getattr(error, 'strerror', None) or error}") from error


def export_preprocess(export_dir: str, *, vocab_file: str, normalization: str,
                      seq_length: int) -> None:
    """Writes the preprocessing SavedModel (TF Hub's Preprocessor API for text encoders)."""
    preprocessing = build_preprocess(vocab_file=vocab_file, normalization=normalization,
                                     seq_length=seq_length)
    with io_utils.atomic_directory(export_dir) as scratch:
        preprocessing.save(scratch, include_optimizer=False, save_format="tf")


def build_preprocess(*, vocab_file: str, normalization: str, seq_length: int) -> tf_keras.Model:
    """The Keras model that the preprocessing module saves, usable as the module is.

    Same object layout as Model Garden's `export_tfhub_lib.create_preprocessing`, with the
    tokenizer chosen by `normalization` (see `bert_tf2.tokenization`): called on strings it
    returns the encoder inputs, and it has `.tokenize` and `.bert_pack_inputs`.
    """
    tokenizer = tokenization.make_tokenizer(vocab_file, normalization)
    sentences = tf_keras.Input(shape=(), dtype=tf.string, name="sentences")
    tokens = tokenizer(sentences)
    pack = layers.BertPackInputs(seq_length=seq_length,
                                 special_tokens_dict=tokenizer.get_special_tokens_dict())
    preprocessing = tf_keras.Model(sentences, pack(tokens))
    preprocessing.tokenize = tf_keras.Model(sentences, tokens)
    preprocessing.tokenize.get_special_tokens_dict = _SpecialTokensDict(
        tokenizer.get_special_tokens_dict())
    preprocessing.bert_pack_inputs = export_tfhub_lib.BertPackInputsSavedModelWrapper(pack)
    preprocessing.normalization = tf.Variable(normalization, trainable=False)
    return preprocessing


class _SpecialTokensDict(tf.Module):
    """`tokenize.get_special_tokens_dict()` of TF Hub's API, callable before saving as after."""

    def __init__(self, special_tokens: Dict[str, int]):
        super().__init__()
        self._special_tokens = dict(special_tokens)

    @tf.function(input_signature=[])
    def __call__(self):
        return {key: tf.constant(value) for key, value in self._special_tokens.items()}


def build_encoder(bert_config: configs.BertConfig, *, pooled_only: bool = False
                  ) -> tf_keras.Model:
    """The Keras model that the encoder module saves: dict in, TF Hub's output dict out.

    Its `.network` attribute is the underlying `BertEncoder`, into which weights are loaded.
    It computes in the global Keras dtype policy in force when it is built (its variables are
    float32 under every policy): `bert_tf2.model.rebuild_encoder` builds it under a mixed
    policy for training, `export_encoder` always under float32.

    `pooled_only`: the last transformer layer computes the [CLS] position alone (Model
    Garden's `output_range=1`), the only one `pooled_output` reads: `pooled_output` is
    unchanged, `sequence_output` holds [CLS] only, and the last layer's queries, attention
    output and feed-forward block cost one position instead of every one.
    """
    network = _bert_encoder_network(bert_config, output_range=1 if pooled_only else None)
    dense_einsums_as_matmuls(network)
    inputs = {x.name: x for x in network.inputs}
    outputs = dict(network(inputs))
    outputs["default"] = outputs["pooled_output"]  # Alias, as TF Hub's encoders have it.
    encoder = tf_keras.Model(inputs=inputs, outputs=outputs)
    encoder.network = network
    return encoder


def _bert_encoder_network(bert_config: configs.BertConfig,
                          output_range: Optional[int] = None) -> networks.BertEncoder:
    """Model Garden's `BertEncoder` for `bert_config`, with dict outputs, as Model Garden's
    `export_tfhub_lib.get_bert_encoder` builds it, and its last layer's `output_range`."""
    return networks.BertEncoder(
        vocab_size=bert_config.vocab_size,
        hidden_size=bert_config.hidden_size,
        num_layers=bert_config.num_hidden_layers,
        num_attention_heads=bert_config.num_attention_heads,
        intermediate_size=bert_config.intermediate_size,
        activation=tf_utils.get_activation(bert_config.hidden_act),
        dropout_rate=bert_config.hidden_dropout_prob,
        attention_dropout_rate=bert_config.attention_probs_dropout_prob,
        max_sequence_length=bert_config.max_position_embeddings,
        type_vocab_size=bert_config.type_vocab_size,
        initializer=tf_keras.initializers.TruncatedNormal(
            stddev=bert_config.initializer_range),
        embedding_width=bert_config.embedding_size,
        output_range=output_range,
        dict_outputs=True)


def dense_einsums_as_matmuls(network: tf_keras.Model) -> None:
    """Makes `network`'s dense projections (its `EinsumDense` layers) compute as MatMuls.

    Model Garden's encoder writes its attention projections and feed-forward layers as
    Einsums over [batch, positions, ...] tensors. oneDNN, which runs TensorFlow's CPU kernels,
    computes those about 1.4x slower than one MatMul over the positions flattened into rows at
    BERT-base sizes (docs/benchmarks.md, "What the serving and keras-bert numbers mean"). Each
    such layer here computes the same product as one MatMul of its input and kernel flattened
    to 2-D; its variables, their names and shapes, and so checkpoints and the module's
    signature, are unchanged.
    """
    for layer in network.submodules:
        if isinstance(layer, tf_keras.layers.EinsumDense):
            contracted = _contracted_trailing_axes(layer.equation)
            if contracted:
                compat.replace_layer_call(
                    layer, functools.partial(_dense_as_matmul, layer, contracted))


def _contracted_trailing_axes(equation: str) -> int:
    """How many trailing input axes `equation` contracts, if it is a plain dense product
    ('{batch}{in},{in}{out}->{batch}{out}', as 'abc,cd->abd' or 'abc,cde->abde'); else 0."""
    match = re.fullmatch(r"(\w+),(\w+)->(\w+)", equation)
    if not match:
        return 0
    inputs, kernel, outputs = match.groups()
    count = sum(1 for axis in inputs if axis in kernel and axis not in outputs)
    batch, contracted, kept = inputs[:-count or None], inputs[-count:], kernel[count:]
    plain = (count and kernel.startswith(contracted) and outputs == batch + kept
             and not set(batch) & set(kernel))
    return count if plain else 0


def _dense_as_matmul(layer: tf_keras.layers.EinsumDense, contracted: int,
                     inputs: tf.Tensor) -> tf.Tensor:
    """What `layer` computes, its Einsum done as one MatMul of 2-D reshapes."""
    kernel = layer.kernel
    rows = int(np.prod(kernel.shape[:contracted]))
    out_shape = kernel.shape[contracted:]
    outputs = tf.matmul(tf.reshape(inputs, [-1, rows]),
                        tf.reshape(kernel, [rows, int(np.prod(out_shape))]))
    outputs = tf.reshape(outputs, tf.concat([tf.shape(inputs)[:-contracted], out_shape], 0))
    outputs.set_shape(inputs.shape[:-contracted].concatenate(out_shape))
    if layer.bias is not None:
        outputs += layer.bias
    return layer.activation(outputs) if layer.activation is not None else outputs


def export_encoder(export_dir: str, *, bert_config: configs.BertConfig, vocab_file: str,
                   init_checkpoint: Optional[str] = None) -> None:
    """Writes the encoder SavedModel (TF Hub's Encoder API), random or from a checkpoint.

    `init_checkpoint` may be any kind `bert_tf2.checkpoints` reads (TF1 Google BERT, Model
    Garden TF2 encoder, bert_tf2.train classifier); it is checked before anything is written.

    The module computes in float32 whatever the global dtype policy: a SavedModel keeps the
    dtypes it was traced with, and TF Hub's Encoder API (and every consumer of the module,
    CPUs without bfloat16 units included) expects float32. Mixed precision is applied at
    training time instead, by rebuilding the encoder under the policy
    (`bert_tf2.model.rebuild_encoder`, --rebuild_encoder_under_policy).
    """
    with distribution.dtype_policy("float32"):
        encoder = build_encoder(bert_config)
    if init_checkpoint:
        checkpoints.load_encoder_weights(encoder.network, init_checkpoint)
    else:
        logging.info("Encoder randomly initialised (no --init_checkpoint)")
    save_encoder(encoder, export_dir, vocab_file=vocab_file)


def save_encoder(encoder: tf_keras.Model, export_dir: str, *, vocab_file: str) -> None:
    """Writes `encoder` (a `build_encoder` result, built under float32) as the encoder module
    at `export_dir`, atomically, with `vocab_file`."""
    # Like the official modules, keep the vocab and casing with the encoder for users who
    # tokenize on their own.
    encoder.vocab_file = tf.saved_model.Asset(vocab_file)
    encoder.do_lower_case = tf.Variable(True, trainable=False)
    with io_utils.atomic_directory(export_dir) as scratch:
        encoder.save(scratch, include_optimizer=False, save_format="tf")


def bert_config_from_variables(variables: Sequence[tf.Variable], *,
                               source: str = "the encoder module") -> configs.BertConfig:
    """The BertConfig of a BERT encoder module, read off the names and shapes of its variables.

    Works for the modules `export_encoder` writes and for TF Hub's BERT encoders (both are
    Model Garden `BertEncoder`s, whose variables have the same names). The sizes are exact;
    what shapes cannot tell takes BERT's values: hidden_act gelu, dropout 0.1 (dropout rates do
    not change the weights; `bert_tf2.model.rebuild_encoder` checks the rebuilt encoder
    computes what the module does).
    """
    shapes = {v.name.split(":")[0]: tuple(v.shape) for v in variables}

    def shape_of(suffix: str) -> Tuple[int, ...]:
        found = [shape for name, shape in shapes.items()
                 if name == suffix or name.endswith("/" + suffix)]
        if len(found) != 1:
            raise ModuleInputError(f"{source}: cannot read a BERT config off its variables: "
                                   f"{'no' if not found else 'several'} variable(s) named "
                                   f"*{suffix} (variables: {', '.join(sorted(shapes)[:8])}, ...)")
        return found[0]

    vocab_size, embedding_width = shape_of("word_embeddings/embeddings")
    layers_found = {int(m.group(1)) for name in shapes
                    for m in [re.search(r"transformer/layer_(\d+)/", name)] if m}
    if not layers_found or layers_found != set(range(len(layers_found))):
        raise ModuleInputError(f"{source}: no transformer/layer_N variables numbered from 0")
    hidden_size, num_heads, _ = shape_of("transformer/layer_0/self_attention/query/kernel")
    embedding_size = None
    if embedding_width != hidden_size:
        embedding_size = embedding_width
        shape_of("embedding_projection/kernel")  # Must exist when the widths differ.
    return configs.BertConfig(
        vocab_size=vocab_size, hidden_size=hidden_size,
        num_hidden_layers=len(layers_found), num_attention_heads=num_heads,
        intermediate_size=shape_of("transformer/layer_0/intermediate/kernel")[1],
        max_position_embeddings=shape_of("position_embedding/embeddings")[0],
        type_vocab_size=shape_of("type_embeddings/embeddings")[0],
        embedding_size=embedding_size)


def saved_dropout_rates(module_dir: str) -> Optional[Tuple[float, float]]:
    """(hidden, attention) dropout rates of the BertEncoder in a Keras-saved encoder module.

    Variables do not hold them; the module's `keras_metadata.pb`, which Keras writes beside
    the SavedModel (ours and Model Garden's TF Hub exports), holds each layer's config. None
    where the module has no such file or it names no BertEncoder.
    """
    path = io_utils.join(module_dir, "keras_metadata.pb")
    if not io_utils.exists(path):
        return None
    # pylint: disable-next=g-import-not-at-top
    from tf_keras.protobuf import saved_metadata_pb2
    metadata = saved_metadata_pb2.SavedMetadata()
    with io_utils.open(path, "rb") as f:
        metadata.ParseFromString(f.read())
    for node in metadata.nodes:
        try:
            layer = json.loads(node.metadata)
        except ValueError:
            continue
        config = layer.get("config") if isinstance(layer, dict) else None
        if not (isinstance(config, dict)
                and str(layer.get("class_name", "")).endswith("BertEncoder")):
            continue
        # Model Garden's names, then their older spellings.
        hidden = config.get("output_dropout", config.get("dropout_rate"))
        attention = config.get("attention_dropout", config.get("attention_dropout_rate"))
        if hidden is not None and attention is not None:
            return float(hidden), float(attention)
    return None


class _SavedVariable(NamedTuple):
    name: str
    shape: Tuple[int, ...]


def read_encoder_config(handle: str) -> configs.BertConfig:
    """The BertConfig of the encoder module at `handle` (a path or TF Hub URL), read off the
    variables its saved_model.pb lists, without loading the module (milliseconds, whatever its
    size); `bert_config_from_variables` says what it can tell."""
    from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top
    path = io_utils.join(hub.resolve(handle), "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel()
    try:
        with io_utils.open(path, "rb") as f:
            saved_model.ParseFromString(f.read())
    except OSError as error:
        raise cli.UserError(f"{handle}: not a SavedModel ({path}: {error.strerror})") from error
    return bert_config_from_variables(
        [_SavedVariable(node.variable.name, tuple(dim.size for dim in node.variable.shape.dim))
         for meta_graph in saved_model.meta_graphs
         for node in meta_graph.object_graph_def.nodes if node.WhichOneof("kind") == "variable"],
        source=handle)


def build_hub_modules(output_dir: str, *, vocab_file: str, bert_config_file: str,
                      init_checkpoint: Optional[str] = None,
                      normalization: str = "bert_original",
                      seq_length: int = 128,
                      pretrain: Optional[Callable[[str, configs.BertConfig], str]] = None
                      ) -> HubModules:
    """Builds `output_dir/preprocess` and `output_dir/encoder`; returns their paths.

    `pretrain`, if given, is called with the finished preprocess module's path and the config
    between the two exports, and returns the checkpoint the encoder is exported from (see
    `bert_tf2.pretrain`); it replaces `init_checkpoint`.

    Everything it is given is checked before anything is built, so a mistake leaves no half
    pair behind.
    """
    if pretrain and init_checkpoint:
        raise ModuleInputError("pretraining a new encoder and --init_checkpoint exclude each "
                               "other")
    modules = HubModules(preprocess=io_utils.join(output_dir, "preprocess"),
                         encoder=io_utils.join(output_dir, "encoder"))
    for path in modules.preprocess, modules.encoder:
        if io_utils.exists(path):
            raise ModuleInputError(f"{path} already exists; remove it, or build into another "
                                   "--output_dir")
    bert_config = read_bert_config(bert_config_file)
    vocab_size = count_vocab(vocab_file)
    if vocab_size != bert_config.vocab_size:
        raise ModuleInputError(f"{vocab_file} has {vocab_size} tokens but {bert_config_file} "
                               f"says vocab_size={bert_config.vocab_size}: pass the vocab and "
                               "config of one model")
    if seq_length > bert_config.max_position_embeddings:
        raise ModuleInputError(f"--seq_length={seq_length} exceeds max_position_embeddings="
                               f"{bert_config.max_position_embeddings} in {bert_config_file}")
    if init_checkpoint:
        checkpoints.resolve_checkpoint_prefix(init_checkpoint)  # is it there at all?
    export_preprocess(modules.preprocess, vocab_file=vocab_file, normalization=normalization,
                      seq_length=seq_length)
    if pretrain:
        init_checkpoint = pretrain(modules.preprocess, bert_config)
    export_encoder(modules.encoder, bert_config=bert_config, vocab_file=vocab_file,
                   init_checkpoint=init_checkpoint)
    logging.info("TF Hub modules written: %s, %s", modules.preprocess, modules.encoder)
    return modules


def main(argv):
    del argv
    flags_ = flags.FLAGS
    build_hub_modules(flags_.output_dir, vocab_file=flags_.vocab_file,
                      bert_config_file=flags_.bert_config_file,
                      init_checkpoint=flags_.init_checkpoint,
                      normalization=flags_.normalization, seq_length=flags_.seq_length)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    project_flags.define_module_flags(flag_values)
    project_flags.define_hub_modules_cli_flags(flag_values)
    flags.mark_flags_as_required(["vocab_file", "bert_config_file", "output_dir"],
                                 flag_values=flag_values)


if __name__ == "__main__":
    cli.run("hub_modules", main, define_flags)
