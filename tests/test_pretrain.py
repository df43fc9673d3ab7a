"""Masked-LM pretraining: BERT's masking in tf.data, the CLI, and checkpoints the encoder loads."""

import shutil
import subprocess
import sys

import bert_tf2  # noqa: F401
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub

from bert_tf2 import checkpoints, hub_modules, input_pipeline, model, pretrain
from tests.conftest import REPO_ROOT
from tests.tiny_fixtures import TINY_SEQ_LENGTH, train_config, write_jsonl


def test_masking_selects_only_real_tokens(tiny_hub_modules, corpus_splits):
    preprocessor = model.load_preprocessor(tiny_hub_modules.preprocess)
    special = preprocessor.tokenize.get_special_tokens_dict()
    texts = corpus_splits["train"].texts[:64]
    inputs, originals, weights = next(iter(pretrain.make_mlm_dataset(
        texts, preprocessor, batch_size=64, seq_length=32, seed=1)))
    word_ids, positions = inputs["input_word_ids"].numpy(), inputs["masked_lm_positions"].numpy()
    weights, originals = weights.numpy(), originals.numpy()
    assert word_ids.shape[1] <= 32 and word_ids.shape[0] == 64
    # One length bucket per batch, padded to its longest member.
    lengths = inputs["input_mask"].numpy().sum(axis=1)
    assert word_ids.shape[1] == lengths.max()
    assert len({int(np.searchsorted(input_pipeline.length_buckets(32), n)) for n in lengths}) == 1
    selected = weights > 0
    assert 0.10 < selected.sum() / inputs["input_mask"].numpy().sum() < 0.20
    masked_positions = positions[selected]
    rows = np.nonzero(selected)[0]
    assert np.all(inputs["input_mask"].numpy()[rows, masked_positions] == 1)
    assert not np.isin(originals[selected], [int(special["start_of_sequence_id"]),
                                             int(special["end_of_segment_id"]),
                                             int(special["padding_id"])]).any()
    replaced = word_ids[rows, masked_positions]
    assert (replaced == int(special["mask_id"])).mean() > 0.6  # 80% become [MASK]
    # The prediction slots are padded to the batch's most selections, not to a fixed 20, and
    # the weights make the loss the mean over the real predictions (BERT's run_pretraining.py).
    assert positions.shape[1] == selected.sum(axis=1).max()
    np.testing.assert_allclose(weights.sum(), weights.size, rtol=1e-5)
    np.testing.assert_allclose(weights[selected], weights[selected][0])


def test_pretrained_encoder_is_exported_from_its_checkpoint_with_its_dropout_back(
        tmp_path, tiny_vocab_file, tiny_bert_config_file, tiny_hub_modules, corpus_splits,
        monkeypatch):
    configs_built, seen = [], {}
    original = hub_modules.build_encoder
    monkeypatch.setattr(hub_modules, "build_encoder",
                        lambda config: configs_built.append(config) or original(config))
    # The preprocessing module of this vocab and length is the tiny one, already built (its
    # export has tests of its own): a copy saves exporting it again.
    def copy_tiny_preprocess(export_dir, **options):
        assert options == dict(vocab_file=tiny_vocab_file, normalization="bert_original",
                               seq_length=TINY_SEQ_LENGTH), options
        shutil.copytree(tiny_hub_modules.preprocess, export_dir)

    monkeypatch.setattr(hub_modules, "export_preprocess", copy_tiny_preprocess)

    def pretrain_fn(preprocess_path, bert_config):
        seen["checkpoint"] = pretrain.pretrain_encoder(
            bert_config, model.load_preprocessor(preprocess_path),
            corpus_splits["train"].texts[:64], output_prefix=str(tmp_path / "mlm" / "encoder"),
            epochs=1, batch_size=16, seq_length=32, learning_rate=1e-3, seed=3)
        return seen["checkpoint"]

    modules = hub_modules.build_hub_modules(str(tmp_path / "hub"), vocab_file=tiny_vocab_file,
                                            bert_config_file=tiny_bert_config_file,
                                            seq_length=TINY_SEQ_LENGTH, pretrain=pretrain_fn)
    encoder = hub.KerasLayer(modules.encoder)
    exported = next(w for w in encoder.weights if "word_embeddings" in w.name)
    reader = tf.train.load_checkpoint(seen["checkpoint"])
    # The object-based checkpoint names the table by position; it is the one of its shape.
    [key] = [k for k, shape in reader.get_variable_to_shape_map().items()
             if k.startswith("encoder/") and "OPTIMIZER" not in k
             and shape == exported.shape.as_list()]
    np.testing.assert_array_equal(exported.numpy(), reader.get_tensor(key))
    # Pretraining ran without dropout; the exported module, which fine-tuning uses, has the
    # config's dropout again, at the same sizes.
    pretrained, exported_config = configs_built[0], configs_built[-1]
    assert (pretrained.hidden_dropout_prob, pretrained.attention_probs_dropout_prob) == (0, 0)
    assert (exported_config.hidden_dropout_prob,
            exported_config.attention_probs_dropout_prob) == (0.1, 0.1)
    assert pretrained.hidden_size == exported_config.hidden_size
    assert pretrained.num_hidden_layers == exported_config.num_hidden_layers


def _encoder_weights(bert_config_file, checkpoint):
    network = hub_modules.build_encoder(hub_modules.read_bert_config(bert_config_file)).network
    checkpoints.load_encoder_weights(network, checkpoint)
    return {w.name: w.numpy() for w in network.weights}


@pytest.mark.parametrize("streamed", [False, True], ids=["in_memory", "data_cache"])
def test_cli_continues_from_init_checkpoint_on_the_training_file(
        streamed, tmp_path, tiny_vocab_file, tiny_bert_config_file, corpus_splits):
    # A checkpoint in the layout pretraining writes, of a randomly initialised encoder.
    network = hub_modules.build_encoder(
        hub_modules.read_bert_config(tiny_bert_config_file)).network
    start = tf.train.Checkpoint(encoder=network).write(str(tmp_path / "start" / "encoder"))
    # At learning rate 0 the CLI's output is its --init_checkpoint, so equal weights show it
    # loaded that checkpoint (not a random init), trained on the file and wrote the result.
    result = subprocess.run(
        [sys.executable, "-m", "bert_tf2.pretrain", f"--vocab_file={tiny_vocab_file}",
         f"--bert_config_file={tiny_bert_config_file}", f"--init_checkpoint={start}",
         f"--train_data={write_jsonl(tmp_path / 'train.jsonl', corpus_splits['train'], 48)}",
         "--seq_length=32", "--pretrain_epochs=1", "--pretrain_batch_size=16",
         "--pretrain_learning_rate=0", f"--output_checkpoint={tmp_path / 'out' / 'encoder'}",
         *([f"--data_cache={tmp_path / 'cache'}"] if streamed else [])],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Masked-LM pretraining of the encoder: 48 texts, 3 steps" in result.stderr
    assert ("streamed from 8 shards" in result.stderr) == streamed
    before = _encoder_weights(tiny_bert_config_file, start)
    after = _encoder_weights(tiny_bert_config_file, str(tmp_path / "out" / "encoder"))
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_allclose(after[name], before[name], err_msg=name)


def test_quickstart_starts_from_the_shipped_pretrained_encoder():
    config = train_config(f"--flagfile={REPO_ROOT / 'configs' / 'quickstart.flags'}")
    assert config.pretrain.epochs == 0  # pretrained beforehand, not in the run
    modules = config.modules
    weights = _encoder_weights(REPO_ROOT / modules.bert_config_file,
                               str(REPO_ROOT / modules.init_checkpoint))
    table = weights["word_embeddings/embeddings:0"]
    assert table.shape == (hub_modules.count_vocab(REPO_ROOT / modules.vocab_file), 128)
    # Trained, not the random init (truncated normal, stddev 0.02).
    assert table.std() > 0.04


def test_pretraining_killed_mid_run_resumes_after_its_last_finished_epoch(
        tmp_path, tiny_hub_modules, tiny_bert_config_file, corpus_splits, monkeypatch, capsys):
    texts = corpus_splits["train"].texts[:32]
    args = dict(output_prefix=str(tmp_path / "mlm" / "encoder"), epochs=3, batch_size=16,
                seq_length=32, learning_rate=1e-3, seed=3)
    preprocessor = model.load_preprocessor(tiny_hub_modules.preprocess)
    config = hub_modules.read_bert_config(tiny_bert_config_file)
    make_dataset = pretrain.make_mlm_dataset

    def failing_in_epoch_2(*a, **kw):  # 2 steps per epoch: the 4th batch fails
        def fail(inputs, originals, weights):
            with tf.control_dependencies([tf.debugging.assert_less(
                    tf.size(originals), 0, message="killed")]):
                return inputs, tf.identity(originals), weights
        batches = make_dataset(*a, **kw)
        return batches.take(3).concatenate(batches.take(1).map(fail))

    monkeypatch.setattr(pretrain, "make_mlm_dataset", failing_in_epoch_2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="killed"):
        pretrain.pretrain_encoder(config, preprocessor, texts, **args)
    assert (tmp_path / "mlm" / "encoder-backup").is_dir()
    monkeypatch.setattr(pretrain, "make_mlm_dataset", make_dataset)
    capsys.readouterr()
    pretrain.pretrain_encoder(config, preprocessor, texts, **args)
    epochs_run = capsys.readouterr().out
    assert "Epoch 2/3" in epochs_run and "Epoch 3/3" in epochs_run
    assert "Epoch 1/3" not in epochs_run
    assert not (tmp_path / "mlm" / "encoder-backup").exists()
    assert tf.train.load_checkpoint(str(tmp_path / "mlm" / "encoder"))
