"""Checkpoints users bring become hub encoders that compute what the original model computed.

A tiny checkpoint with exactly the variable names of Google's `chinese_L-12_H-768_A-12` (taken
from the real index in ../shared when present) and random weights is converted, and the hub
encoder's outputs are compared with Google BERT's forward pass written out in NumPy, which
reads the same weights by their TF1 names and shares no code with the converter.
"""

import logging
import math
import pathlib
import re
import shutil
import types

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
from official.nlp import optimization
from official.nlp.tools import tf2_bert_encoder_checkpoint_converter

from bert_tf2 import checkpoints, hub_modules, model
from tests.conftest import REAL_LAYOUT_DIR
from tests.tiny_fixtures import write_bert_config

TINY_SIZES = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=40, type_vocab_size=2)
# Google's Chinese BERT-base dimension -> the tiny one. Its sizes are all distinct, so a real
# shape shrinks dimension by dimension (2 = type_vocab_size = NSP classes stays).
SHRINK = {21128: 50, 768: 32, 3072: 64, 512: 40}
PRETRAINING_HEADS = {
    "cls/predictions/output_bias", "cls/predictions/transform/LayerNorm/beta",
    "cls/predictions/transform/LayerNorm/gamma", "cls/predictions/transform/dense/bias",
    "cls/predictions/transform/dense/kernel", "cls/seq_relationship/output_bias",
    "cls/seq_relationship/output_weights"}
TOLERANCE = 1e-5


def standard_google_bert_layout(layers=12, hidden=768, intermediate=3072, vocab=21128,
                                positions=512, types_=2):
    """Variable names and shapes of Google's BERT checkpoints (google-research/bert's names)."""
    layout = {"bert/embeddings/word_embeddings": (vocab, hidden),
              "bert/embeddings/token_type_embeddings": (types_, hidden),
              "bert/embeddings/position_embeddings": (positions, hidden),
              "bert/embeddings/LayerNorm/gamma": (hidden,),
              "bert/embeddings/LayerNorm/beta": (hidden,),
              "bert/pooler/dense/kernel": (hidden, hidden), "bert/pooler/dense/bias": (hidden,),
              "cls/predictions/output_bias": (vocab,),
              "cls/predictions/transform/dense/kernel": (hidden, hidden),
              "cls/predictions/transform/dense/bias": (hidden,),
              "cls/predictions/transform/LayerNorm/gamma": (hidden,),
              "cls/predictions/transform/LayerNorm/beta": (hidden,),
              "cls/seq_relationship/output_weights": (2, hidden),
              "cls/seq_relationship/output_bias": (2,)}
    dense = {"attention/self/query": (hidden, hidden), "attention/self/key": (hidden, hidden),
             "attention/self/value": (hidden, hidden),
             "attention/output/dense": (hidden, hidden),
             "intermediate/dense": (hidden, intermediate),
             "output/dense": (intermediate, hidden)}
    for layer in range(layers):
        prefix = f"bert/encoder/layer_{layer}/"
        for name, kernel in dense.items():
            layout[f"{prefix}{name}/kernel"] = kernel
            layout[f"{prefix}{name}/bias"] = kernel[1:]
        for norm in ("attention/output/LayerNorm", "output/LayerNorm"):
            layout[f"{prefix}{norm}/gamma"] = (hidden,)
            layout[f"{prefix}{norm}/beta"] = (hidden,)
    return layout


def read_index_layout(index_file: pathlib.Path, scratch: pathlib.Path):
    """{name: shape} of a checkpoint index (list_variables needs it beside a prefix)."""
    shutil.copy(index_file, scratch / "bert_model.ckpt.index")
    return {name: tuple(shape)
            for name, shape in tf.train.list_variables(str(scratch / "bert_model.ckpt"))}


@pytest.fixture(scope="module")
def google_layout(tmp_path_factory):
    """Google's Chinese BERT layout: the real index when present, else the standard names."""
    index = REAL_LAYOUT_DIR / "bert_model.ckpt.index"
    if index.is_file():
        return read_index_layout(index, tmp_path_factory.mktemp("real_index"))
    return standard_google_bert_layout()


def tiny_layout(layout):
    """The layout's first two layers, every dimension shrunk to TINY_SIZES."""
    kept = {name: shape for name, shape in layout.items()
            if not name.startswith("bert/encoder/layer_")
            or int(name.split("/")[2][len("layer_"):]) < TINY_SIZES["num_hidden_layers"]}
    return {name: tuple(SHRINK.get(d, d) for d in shape) for name, shape in kept.items()}


def random_weights(layout, seed=0):
    """Weights large enough that activations reach where GELU's tanh and erf forms differ."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in layout.items():
        if name.endswith("/gamma"):
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith(("/beta", "bias")):
            value = 0.1 * rng.standard_normal(shape)
        else:
            value = 0.2 * rng.standard_normal(shape)
        weights[name] = value.astype(np.float32)
    return weights


def write_tf1_checkpoint(prefix: pathlib.Path, weights) -> str:
    """A name-based checkpoint as TF1's Saver writes it (what Google released)."""
    with tf.Graph().as_default():
        variables = {name: tf.compat.v1.Variable(value, name=name)
                     for name, value in weights.items()}
        saver = tf.compat.v1.train.Saver(variables)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            saver.save(session, str(prefix), write_meta_graph=False, write_state=False)
    return str(prefix)


def gelu_tanh(x):
    """google-research/bert modeling.py's gelu (the tanh approximation)."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def gelu_erf(x):
    """The exact GELU, which the first BERT release and keras-bert on tf.keras use."""
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def numpy_bert(weights, word_ids, mask, type_ids, *, num_layers, num_heads, gelu=gelu_tanh):
    """google-research/bert's BertModel at inference, in float64: (sequence, pooled) output."""
    w = {name: value.astype(np.float64) for name, value in weights.items()}
    batch, seq = word_ids.shape

    def dense(x, name):
        return x @ w[name + "/kernel"] + w[name + "/bias"]

    def layer_norm(x, name):
        mean = x.mean(-1, keepdims=True)
        variance = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(variance + 1e-12) * w[name + "/gamma"] + w[name + "/beta"]

    x = (w["bert/embeddings/word_embeddings"][word_ids]
         + w["bert/embeddings/token_type_embeddings"][type_ids]
         + w["bert/embeddings/position_embeddings"][:seq])
    x = layer_norm(x, "bert/embeddings/LayerNorm")
    adder = (1.0 - mask[:, None, None, :]) * -10000.0
    for layer in range(num_layers):
        prefix = f"bert/encoder/layer_{layer}/"

        def heads(name):  # [batch, seq, hidden] -> [batch, heads, seq, size]
            return dense(x, prefix + "attention/self/" + name).reshape(
                batch, seq, num_heads, -1).transpose(0, 2, 1, 3)

        query, key, value = heads("query"), heads("key"), heads("value")
        scores = query @ key.transpose(0, 1, 3, 2) / math.sqrt(query.shape[-1]) + adder
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ value).transpose(0, 2, 1, 3).reshape(batch, seq, -1)
        x = layer_norm(dense(context, prefix + "attention/output/dense") + x,
                       prefix + "attention/output/LayerNorm")
        intermediate = gelu(dense(x, prefix + "intermediate/dense"))
        x = layer_norm(dense(intermediate, prefix + "output/dense") + x,
                       prefix + "output/LayerNorm")
    return x, np.tanh(dense(x[:, 0], "bert/pooler/dense"))


def encoder_inputs():
    """Three examples of lengths 10, 6 and 3 (padded to 10), each with two segments."""
    rng = np.random.default_rng(1)
    lengths, seq = (10, 6, 3), 10
    word_ids = rng.integers(1, TINY_SIZES["vocab_size"], size=(len(lengths), seq))
    mask = np.zeros((len(lengths), seq), np.int32)
    type_ids = np.zeros((len(lengths), seq), np.int32)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
        type_ids[row, length // 2:length] = 1
    word_ids = word_ids * mask
    return {"input_word_ids": word_ids.astype(np.int32), "input_mask": mask,
            "input_type_ids": type_ids}


def max_differences(outputs, reference, mask):
    """Largest |difference| of sequence_output on real tokens and of pooled_output."""
    sequence, pooled = reference
    real = mask.astype(bool)
    return (np.abs(np.asarray(outputs["sequence_output"])[real] - sequence[real]).max(),
            np.abs(np.asarray(outputs["pooled_output"]) - pooled).max())


@pytest.fixture(scope="module")
def tiny_google(tmp_path_factory, google_layout):
    """vocab.txt, bert_config.json and bert_model.ckpt of a tiny Google BERT, and its weights."""
    root = tmp_path_factory.mktemp("chinese_tiny")
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += [chr(0x4E00 + i) for i in range(TINY_SIZES["vocab_size"] - len(tokens))]
    (root / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    weights = random_weights(tiny_layout(google_layout))
    return types.SimpleNamespace(
        root=root, vocab=str(root / "vocab.txt"), weights=weights,
        config=write_bert_config(root / "bert_config.json", **TINY_SIZES),
        prefix=write_tf1_checkpoint(root / "bert_model.ckpt", weights))


@pytest.fixture(scope="module")
def converted(tmp_path_factory, tiny_google) -> str:
    """The tiny checkpoint converted into an encoder module, as the one command does it."""
    path = str(tmp_path_factory.mktemp("converted") / "encoder")
    hub_modules.export_encoder(path, bert_config=hub_modules.read_bert_config(tiny_google.config),
                               vocab_file=tiny_google.vocab, init_checkpoint=tiny_google.prefix)
    return path


def fresh_encoder(config_file):
    return hub_modules.build_encoder(hub_modules.read_bert_config(config_file))


def reference_outputs(tiny_google, gelu=gelu_tanh):
    inputs = encoder_inputs()
    return numpy_bert(tiny_google.weights, inputs["input_word_ids"], inputs["input_mask"],
                      inputs["input_type_ids"], num_layers=TINY_SIZES["num_hidden_layers"],
                      num_heads=TINY_SIZES["num_attention_heads"], gelu=gelu)


def test_converted_hub_encoder_computes_what_google_bert_computes(tiny_google, converted):
    inputs = encoder_inputs()
    outputs = hub.KerasLayer(converted)(inputs, training=False)
    sequence_diff, pooled_diff = max_differences(outputs, reference_outputs(tiny_google),
                                                 inputs["input_mask"])
    print(f"max |hub encoder - NumPy BERT|: sequence_output {sequence_diff:.2e}, "
          f"pooled_output {pooled_diff:.2e}")
    assert sequence_diff < TOLERANCE and pooled_diff < TOLERANCE
    # The weights are large enough for the comparison to tell GELU's two forms apart.
    erf_diffs = max_differences(outputs, reference_outputs(tiny_google, gelu_erf),
                                inputs["input_mask"])
    assert min(erf_diffs) > 10 * TOLERANCE


def test_conversion_loads_every_encoder_variable_and_logs_the_skipped_heads(
        tiny_google, caplog):
    encoder = fresh_encoder(tiny_google.config)
    with caplog.at_level(logging.INFO, logger="absl"):
        plan = checkpoints.load_encoder_weights(encoder.network, tiny_google.prefix)
    assert plan.kind == checkpoints.TF1_GOOGLE_BERT
    assert len(plan.assignments) == len(encoder.network.weights) == 5 + 16 * 2 + 2
    assert set(plan.skipped) == PRETRAINING_HEADS
    log = caplog.text
    assert f"{len(encoder.network.weights)} weights loaded from {tiny_google.prefix}" in log
    assert "skipped 5 (masked-LM pretraining head)" in log
    assert "skipped 2 (next-sentence pretraining head)" in log
    assert all(name in log for name in PRETRAINING_HEADS)


def model_garden_checkpoint(tiny_google, directory: pathlib.Path, root: str) -> str:
    """The tiny checkpoint through Model Garden's own TF1 -> TF2 encoder converter."""
    tf2_bert_encoder_checkpoint_converter.convert_checkpoint(
        hub_modules.read_bert_config(tiny_google.config), str(directory / "ckpt"),
        tiny_google.prefix, checkpoint_model_name=root)
    return str(directory)


@pytest.mark.parametrize("root", ["encoder", "model"])
def test_model_garden_tf2_checkpoint_loads_to_the_same_model(tmp_path, tiny_google, root):
    """Model Garden's converter also cross-checks our TF1 name map."""
    encoder = fresh_encoder(tiny_google.config)
    plan = checkpoints.load_encoder_weights(encoder.network,
                                            model_garden_checkpoint(tiny_google, tmp_path, root))
    assert plan.kind == checkpoints.MODEL_GARDEN_ENCODER
    assert len(plan.assignments) == len(encoder.network.weights)
    assert plan.skipped == {"save_counter": f"outside the encoder root {root!r}"}
    inputs = encoder_inputs()
    differences = max_differences(encoder(inputs, training=False),
                                  reference_outputs(tiny_google), inputs["input_mask"])
    assert max(differences) < TOLERANCE


def test_model_garden_checkpoint_with_more_layers_than_the_config_is_rejected(
        tmp_path, tiny_google):
    one_layer = write_bert_config(tmp_path / "bert_config.json",
                                  **{**TINY_SIZES, "num_hidden_layers": 1})
    with pytest.raises(checkpoints.CheckpointError,
                       match=r"unexpected variables \(16\): transformer/layer_1/"):
        checkpoints.load_encoder_weights(fresh_encoder(one_layer).network,
                                         model_garden_checkpoint(tiny_google, tmp_path, "encoder"))


def test_checkpoint_of_our_training_reexports_its_fine_tuned_encoder(tmp_path, tiny_google,
                                                                     converted):
    classifier = model.build_classifier(converted)
    classifier.compile(optimizer=optimization.AdamWeightDecay(learning_rate=1e-3),
                       loss="binary_crossentropy")
    inputs = encoder_inputs()
    classifier.train_on_batch(inputs, np.array([[1.0], [0.0], [1.0]]))
    encoder_layer = classifier.get_layer("encoder")
    kernel = next(w for w in encoder_layer.weights
                  if w.name == "transformer/layer_1/intermediate/kernel:0")
    kernel.assign_add(tf.ones_like(kernel))
    model_dir = tmp_path / "model"
    classifier.save_weights(str(model_dir / "checkpoints" / "final"))

    bert_config = hub_modules.read_bert_config(tiny_google.config)
    plan = checkpoints.plan_checkpoint(str(model_dir), fresh_encoder(tiny_google.config).network)
    assert plan.kind == checkpoints.BERT_TF2_CLASSIFIER
    assert set(plan.skipped.values()) == {"optimizer state", "classifier head",
                                          "do_lower_case flag of the encoder module"}
    hub_modules.export_encoder(str(tmp_path / "encoder"), bert_config=bert_config,
                               vocab_file=tiny_google.vocab, init_checkpoint=str(model_dir))
    reexported_layer = hub.KerasLayer(str(tmp_path / "encoder"))
    reexported = reexported_layer(inputs, training=False)

    fine_tuned_weights = {w.name: w.numpy() for w in encoder_layer.weights}
    for weight in reexported_layer.weights:
        np.testing.assert_array_equal(weight.numpy(), fine_tuned_weights[weight.name])
    fine_tuned = encoder_layer(inputs, training=False)
    for name in ("sequence_output", "pooled_output"):
        np.testing.assert_allclose(reexported[name], fine_tuned[name], atol=TOLERANCE, rtol=0)
    assert max(max_differences(reexported, reference_outputs(tiny_google),
                               inputs["input_mask"])) > 0.01  # The edit went through.


def corrupted_checkpoint(tiny_google, directory: pathlib.Path, *, drop=(), add=None,
                         replace=None) -> str:
    weights = {name: value for name, value in tiny_google.weights.items() if name not in drop}
    weights.update(add or {})
    weights.update(replace or {})
    directory.mkdir()
    return write_tf1_checkpoint(directory / "bert_model.ckpt", weights)


@pytest.mark.parametrize("change, message", [
    (dict(replace={"bert/encoder/layer_1/intermediate/dense/kernel": np.zeros((32, 48))}),
     r"shape mismatches \(1\): bert/encoder/layer_1/intermediate/dense/kernel: "
     r"expected \[32, 64\], found \[32, 48\]"),
    (dict(drop=["bert/pooler/dense/kernel"]),
     r"missing variables \(1\): bert/pooler/dense/kernel"),
    (dict(add={"bert/encoder/layer_2/output/dense/bias": np.zeros(32),
               "global_step": np.int64(7),
               "bert/pooler/dense/kernel/adam_m": np.zeros((32, 32))}),
     r"unexpected variables \(1\): bert/encoder/layer_2/output/dense/bias\n"),
    (dict(replace={"bert/embeddings/word_embeddings": np.zeros((60, 32))}),
     r"shape mismatches \(1\): bert/embeddings/word_embeddings: "
     r"expected \[50, 32\], found \[60, 32\](.|\n)*vocab_size"),
], ids=["shape", "missing", "extra", "vocab_size"])
def test_a_checkpoint_that_does_not_fit_is_rejected_before_export(tmp_path, tiny_google, change,
                                                                  message):
    prefix = corrupted_checkpoint(tiny_google, tmp_path / "ckpt", **change)
    with pytest.raises(checkpoints.CheckpointError, match=message) as error:
        hub_modules.export_encoder(str(tmp_path / "encoder"),
                                   bert_config=hub_modules.read_bert_config(tiny_google.config),
                                   vocab_file=tiny_google.vocab, init_checkpoint=prefix)
    assert str(error.value).startswith(f"{prefix}: this {checkpoints.TF1_GOOGLE_BERT}")
    assert not (tmp_path / "encoder").exists()


def test_a_prefix_that_does_not_exist_is_reported_with_the_ones_beside_it(tiny_google):
    wrong = str(tiny_google.root / "bert_model")
    with pytest.raises(checkpoints.CheckpointError,
                       match=rf"^{re.escape(wrong)}: no checkpoint there(.|\n)*Checkpoints "
                             rf"next to it: {re.escape(tiny_google.prefix)}$"):
        checkpoints.resolve_checkpoint_prefix(wrong)
    with pytest.raises(checkpoints.CheckpointError, match="nowhere/bert_model.ckpt: no checkpo"):
        checkpoints.resolve_checkpoint_prefix(str(tiny_google.root / "nowhere/bert_model.ckpt"))


@pytest.mark.parametrize("given", ["", ".index", ".data-00000-of-00001"])
def test_the_folder_or_a_file_of_the_checkpoint_resolves_to_its_prefix(tiny_google, given):
    path = str(tiny_google.root) if not given else tiny_google.prefix + given
    assert checkpoints.resolve_checkpoint_prefix(path) == tiny_google.prefix


def test_a_folder_with_several_checkpoints_asks_for_one(tmp_path, tiny_google):
    for name in ("a", "b"):
        write_tf1_checkpoint(tmp_path / name, {"bert/x": np.zeros(1, np.float32)})
    expected = f"holding 2 checkpoints; pass one prefix: {tmp_path}/a, {tmp_path}/b"
    with pytest.raises(checkpoints.CheckpointError, match=re.escape(expected)):
        checkpoints.resolve_checkpoint_prefix(str(tmp_path))


def test_the_real_layout_is_fully_accounted_for(tmp_path, real_layout_dir):
    index = real_layout_dir / "bert_model.ckpt.index"
    if not index.is_file():
        pytest.skip(f"{index} not found")
    layout = read_index_layout(index, tmp_path)
    assert layout == standard_google_bert_layout()  # The fallback above is the real layout.
    network = fresh_encoder(str(real_layout_dir / "bert_config.json")).network
    plan = checkpoints.plan_checkpoint(str(tmp_path / "bert_model.ckpt"), network)

    assert len(layout) == 206 and len(plan.assignments) == len(network.weights) == 199
    assert set(plan.skipped) == PRETRAINING_HEADS
    assert set(plan.assignments) | set(plan.skipped) == set(layout)
    for name, assignment in plan.assignments.items():
        assert assignment.stored_shape == layout[name]
        assert math.prod(assignment.stored_shape) == math.prod(assignment.weight.shape)
    # The index alone has no weights: loading says so instead of failing inside TensorFlow.
    with pytest.raises(checkpoints.CheckpointError, match="cannot read bert/"):
        checkpoints.load_encoder_weights(network, str(tmp_path / "bert_model.ckpt"))
