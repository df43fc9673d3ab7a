"""Prepares labelled files as the TFRecord shards that training streams (--data_cache).

  python -m bert_tf2.prepare_data --flagfile=run.flags --data_cache=gs://bucket/prepared

Takes the flags of `bert_tf2.train` (the same flag file) and does only what a training run
with --data_cache does first: reads --train_data/--eval_data/--test_data once into shards
under --data_cache (`bert_tf2.prepared_data`), or finds them there. Run it once before
the workers of a cluster start, so that they stream one preparation instead of each
making its own. Prints where each split's shards are.
"""

from absl import flags

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from bert_tf2 import cli
from bert_tf2 import config as config_lib
from bert_tf2 import flags as project_flags
from bert_tf2 import io_utils

FLAGS = flags.FLAGS


def main(argv):
    del argv
    config = config_lib.TrainConfig.from_flags(FLAGS)
    if not config.input.data_cache:
        raise cli.UserError("--data_cache is required: the directory the shards go to")
    from bert_tf2 import prepared_data  # pylint: disable=g-import-not-at-top  (TensorFlow)
    for name, split in prepared_data.load_splits(
            config.data, config.input.data_cache, config.input.num_shards).items():
        print(f"{name}: {len(split)} examples ({split.skipped_rows} bad rows skipped) in "
              f"{len(split.files)} shards under {io_utils.dirname(split.files[0])}")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """The flags of `bert_tf2.train`, of which this reads the data flags and --data_cache,
    --num_shards."""
    project_flags.define_train_command_flags(flag_values)


if __name__ == "__main__":
    cli.run("prepare_data", main, define_flags)
