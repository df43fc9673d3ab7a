"""Masked-LM self-pretraining: BERT's masking in tf.data, and a checkpoint the encoder loads."""

import bert_tf2  # noqa: F401
import numpy as np
import tensorflow as tf
import tensorflow_hub as hub

from bert_tf2 import data, hub_modules, model, pretrain


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
    assert len({int(np.searchsorted(data.length_buckets(32), n)) for n in lengths}) == 1
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
        tmp_path, tiny_vocab_file, tiny_bert_config_file, corpus_splits, monkeypatch):
    configs_built, seen = [], {}
    original = hub_modules.build_encoder
    monkeypatch.setattr(hub_modules, "build_encoder",
                        lambda config: configs_built.append(config) or original(config))

    def pretrain_fn(preprocess_path, bert_config):
        seen["checkpoint"] = pretrain.pretrain_encoder(
            bert_config, model.load_preprocessor(preprocess_path),
            corpus_splits["train"].texts[:64], output_prefix=str(tmp_path / "mlm" / "encoder"),
            epochs=1, batch_size=16, seq_length=32, learning_rate=1e-3, seed=3)
        return seen["checkpoint"]

    modules = hub_modules.build_hub_modules(str(tmp_path / "hub"), vocab_file=tiny_vocab_file,
                                            bert_config_file=tiny_bert_config_file,
                                            seq_length=32, pretrain=pretrain_fn)
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
