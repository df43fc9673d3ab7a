"""The offline-built modules have TF Hub's Preprocessor and Encoder interfaces."""

import json
import os
import re
import subprocess
import sys

import bert_tf2  # noqa: F401
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
import tensorflow_text  # noqa: F401
import tf_keras

from official.legacy.bert import configs
from official.nlp.tools import export_tfhub_lib

from bert_tf2 import cli, hub_modules, model
from tests.conftest import REPO_ROOT
from tests.tiny_fixtures import TINY_SEQ_LENGTH, write_bert_config


def test_preprocess_module_has_the_tf_hub_interface(tiny_hub_modules):
    preprocessor = hub.load(tiny_hub_modules.preprocess)
    inputs = preprocessor(tf.constant(["这本书很好", "差"]))
    assert sorted(inputs) == ["input_mask", "input_type_ids", "input_word_ids"]
    for value in inputs.values():
        assert value.dtype == tf.int32 and value.shape == (2, TINY_SEQ_LENGTH)
    assert inputs["input_mask"].numpy().sum(axis=1).tolist() == [7, 3]

    tokens = preprocessor.tokenize(tf.constant(["好书", "差"]))
    assert isinstance(tokens, tf.RaggedTensor) and tokens.ragged_rank == 2
    pair = preprocessor.bert_pack_inputs([tokens, preprocessor.tokenize(tf.constant(["a", "b"]))],
                                         seq_length=10)
    assert pair["input_word_ids"].shape == (2, 10)
    assert pair["input_type_ids"].numpy()[0].tolist() == [0, 0, 0, 0, 1, 1, 0, 0, 0, 0]


def test_encoder_module_has_the_tf_hub_interface(tiny_hub_modules):
    preprocessor = hub.load(tiny_hub_modules.preprocess)
    encoder = hub.KerasLayer(tiny_hub_modules.encoder, trainable=True)
    inputs = preprocessor(tf.constant(["这本书很好", "差"]))
    outputs = encoder(inputs, training=False)
    assert sorted(outputs) == ["default", "encoder_outputs", "pooled_output", "sequence_output"]
    assert outputs["pooled_output"].shape == (2, 16)
    assert outputs["sequence_output"].shape == (2, TINY_SEQ_LENGTH, 16)
    np.testing.assert_array_equal(outputs["default"], outputs["pooled_output"])
    assert encoder.trainable_weights
    again = encoder(inputs, training=False)["pooled_output"]
    np.testing.assert_array_equal(again, outputs["pooled_output"])
    with_dropout = encoder(inputs, training=True)["pooled_output"]
    assert not np.allclose(with_dropout, outputs["pooled_output"])


def test_the_tiny_classifier_tells_reviews_apart(tiny_hub_modules, corpus_splits):
    # The tests compare probabilities to 1e-5 (served against fixed padding, one strategy
    # against another, an export against its model): that only means something when different
    # reviews get probabilities much further apart, untrained as the test modules are: here
    # 30 times that, at least.
    preprocessor = model.load_preprocessor(tiny_hub_modules.preprocess)
    tf_keras.utils.set_random_seed(0)  # the head's initial weights
    classifier = model.build_classifier(tiny_hub_modules.encoder)
    one, pairs = (model.build_text_classifier(preprocessor, classifier, pairs=pairs,
                                              seq_length=TINY_SEQ_LENGTH)
                  for pairs in (False, True))
    texts = tf.constant(corpus_splits["test"].texts[:400])
    assert one(texts).numpy().std() > 30 * 1e-5
    # Pairs that differ only in their second text too: it reaches [CLS] only through attention.
    assert pairs([tf.fill([400], "很好"), texts]).numpy().std() > 30 * 1e-5


def test_dense_layers_compute_as_matmuls_and_as_model_gardens_einsums():
    config = configs.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=32)
    encoder = hub_modules.build_encoder(config)
    reference = export_tfhub_lib.get_bert_encoder(config)
    reference.set_weights(encoder.network.get_weights())
    rng = np.random.default_rng(0)
    inputs = {"input_word_ids": tf.constant(rng.integers(0, 50, [3, 9]), tf.int32),
              "input_mask": tf.constant([[1] * 9, [1] * 5 + [0] * 4, [1] * 2 + [0] * 7]),
              "input_type_ids": tf.zeros([3, 9], tf.int32)}
    for key in ("sequence_output", "pooled_output"):
        np.testing.assert_allclose(encoder(inputs)[key], reference(inputs)[key], atol=1e-5)

    graph = tf.function(encoder).get_concrete_function(inputs).graph.as_graph_def()
    ops = [node.op for node in graph.node] + [
        node.op for function in graph.library.function for node in function.node_def]
    assert ops.count("Einsum") == 2 * 2  # per layer, only the attention scores and their use
    assert ops.count("MatMul") >= 6 * 2  # per layer, Q, K, V, attention output and the FFN


def test_vocab_and_config_must_agree(tmp_path, tiny_vocab_file):
    config = write_bert_config(tmp_path / "c.json", vocab_size=7)
    with pytest.raises(ValueError, match=r"has \d+ tokens but .*c\.json says vocab_size=7"):
        hub_modules.build_hub_modules(str(tmp_path / "m"), vocab_file=tiny_vocab_file,
                                      bert_config_file=config)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("content, message", [
    ("{not json", r"c\.json:1: not valid JSON"),
    (json.dumps({"vocab_size": 5}), r"c\.json: BERT config lacks hidden_size"),
    (json.dumps(dict(vocab_size=5, hidden_size=10, num_hidden_layers=1, num_attention_heads=3,
                     intermediate_size=8)), "not a multiple of num_attention_heads 3"),
])
def test_bad_bert_config_is_named(tmp_path, content, message):
    path = tmp_path / "c.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        hub_modules.read_bert_config(str(path))


def test_everything_is_checked_before_anything_is_built(tmp_path, tiny_vocab_file):
    config = write_bert_config(tmp_path / "c.json", vocab_size=hub_modules.count_vocab(
        tiny_vocab_file))
    output_dir = tmp_path / "hub"

    def build(**kwargs):
        arguments = {"vocab_file": tiny_vocab_file, "bert_config_file": config, **kwargs}
        with pytest.raises(cli.UserError) as error:
            hub_modules.build_hub_modules(str(output_dir), **arguments)
        return str(error.value)

    assert re.match(rf"--vocab_file={re.escape(str(tmp_path))}/missing.txt: cannot read it: No "
                    "such file", build(vocab_file=str(tmp_path / "missing.txt")))
    assert "no checkpoint there" in build(init_checkpoint=str(tmp_path / "bert_model.ckpt"))
    assert "--seq_length=129 exceeds max_position_embeddings=128" in build(seq_length=129)
    assert not output_dir.exists()
    (output_dir / "encoder").mkdir(parents=True)  # left by an earlier build
    assert build() == (f"{output_dir / 'encoder'} already exists; remove it, or build into "
                       "another --output_dir")
    assert os.listdir(output_dir) == ["encoder"]


@pytest.mark.slow
def test_the_command_reports_a_missing_vocab_in_one_line(tmp_path):
    config = write_bert_config(tmp_path / "c.json", vocab_size=7)
    result = subprocess.run(
        [sys.executable, "-m", "bert_tf2.hub_modules", f"--vocab_file={tmp_path / 'v.txt'}",
         f"--bert_config_file={config}", f"--output_dir={tmp_path / 'hub'}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"hub_modules: --vocab_file={tmp_path / 'v.txt'}: cannot read it: No such file or "
        "directory")
    assert not (tmp_path / "hub").exists()


def test_train_names_a_half_built_modules_directory_in_one_line(tmp_path):
    # What a `train --build_missing_modules` killed between the two modules leaves behind.
    from bert_tf2 import train
    from tests.tiny_fixtures import train_config
    (tmp_path / "hub" / "preprocess").mkdir(parents=True)
    config = train_config("--build_missing_modules", f"--vocab_file={tmp_path / 'vocab.txt'}",
                          f"--preprocess_handle={tmp_path / 'hub' / 'preprocess'}",
                          f"--encoder_handle={tmp_path / 'hub' / 'encoder'}",
                          f"--model_dir={tmp_path / 'model'}")
    with pytest.raises(cli.UserError, match=rf"^{re.escape(str(tmp_path / 'hub'))} holds only "
                       r"one of preprocess/ and encoder/ .*: remove it, and run the same "
                       "command again"):
        train.build_missing_modules(config, ["很好"], str(tmp_path / "model"))
    assert os.listdir(tmp_path / "hub") == ["preprocess"]
    elsewhere = config.replace(**{"modules.encoder_handle": str(tmp_path / "other" / "encoder")})
    with pytest.raises(cli.UserError, match="in one directory D$"):
        train.build_missing_modules(elsewhere, ["很好"], str(tmp_path / "model"))
