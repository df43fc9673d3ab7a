"""End to end: a tiny run trains, evaluates, checkpoints and exports a raw-text SavedModel."""

import json
import os
import pathlib

import bert_tf2  # noqa: F401
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (the export's preprocessing needs its ops)
from absl import flags

from bert_tf2 import export, io_utils, pretrain
from tests.conftest import REPO_ROOT
from tests.tiny_fixtures import parse_train_flags


def test_run_writes_metrics_history_and_checkpoint(tiny_training_run):
    model_dir = pathlib.Path(tiny_training_run["model_dir"])
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics == tiny_training_run["metrics"]
    for split in ("dev", "test"):
        assert {"accuracy", "auc", "loss"} <= set(metrics[split])
        assert 0.0 <= metrics[split]["accuracy"] <= 1.0
    assert (model_dir / "history.csv").read_text().startswith("epoch,")
    assert list((model_dir / "checkpoints").glob("final.index"))
    assert list((model_dir / "logs" / "train").iterdir()), "no TensorBoard events"


def test_export_serves_raw_strings(tiny_training_run):
    loaded = tf.saved_model.load(tiny_training_run["saved_model"])
    serve = loaded.signatures["serving_default"]
    assert set(serve.structured_input_signature[1]) == {"text"}
    outputs = serve(text=tf.constant(["这本书很好看，推荐！", "太差了", "", "  "]))
    assert outputs["probability"].dtype == tf.float32
    assert outputs["label"].dtype == tf.int64
    probability = outputs["probability"].numpy()
    assert probability.shape == (4,) and np.all((probability >= 0) & (probability <= 1))
    np.testing.assert_array_equal(outputs["label"].numpy(), (probability >= 0.5).astype(int))


def test_a_second_export_adds_a_version_and_keeps_the_first(tiny_training_run, tmp_path):
    loaded = tf.saved_model.load(tiny_training_run["saved_model"])
    first = os.listdir(tiny_training_run["export_dir"])
    assert first == ["1"]

    class Wrapper(tf.Module):
        def __init__(self):
            super().__init__()
            self.loaded = loaded  # tracked, so the new export can save what it captures

        def __call__(self, text, training=False):
            return tf.reshape(
                self.loaded.signatures["serving_default"](text=text)["probability"], [-1, 1])

    path = export.export_text_classifier(Wrapper(), str(tmp_path))
    assert path.endswith("/1")
    path = export.export_text_classifier(Wrapper(), str(tmp_path))
    assert path.endswith("/2") and export.existing_versions(str(tmp_path)) == [1, 2]
    with pytest.raises(FileExistsError):
        export.export_text_classifier(Wrapper(), str(tmp_path), version=1)


def test_failed_write_leaves_no_partial_directory(tmp_path):
    with pytest.raises(RuntimeError):
        with io_utils.atomic_directory(str(tmp_path / "7")) as scratch:
            pathlib.Path(scratch, "saved_model.pb").write_bytes(b"half")
            raise RuntimeError("disk full")
    assert os.listdir(tmp_path) == []


def test_flag_files_parse():
    pretraining_outputs, pretraining_inputs = set(), set()
    for flagfile in sorted((REPO_ROOT / "configs").glob("*.flags")):
        if flagfile.name.startswith("pretrain_"):  # flags of bert_tf2.pretrain
            flag_values = flags.FlagValues()
            pretrain.define_flags(flag_values)
            flag_values(["pretrain", f"--flagfile={flagfile}"])
            assert flag_values.pretrain_epochs > 0 and flag_values.output_checkpoint, flagfile
            pretraining_outputs.add(flag_values.output_checkpoint)
            if flag_values.init_checkpoint:
                pretraining_inputs.add(flag_values.init_checkpoint)
        else:
            flag_values = parse_train_flags(f"--flagfile={flagfile}", "--model_dir=/tmp/x")
            assert flag_values.batch_size > 0, flagfile
            if flagfile.name == "quickstart.flags":
                pretraining_inputs.add(flag_values.init_checkpoint)
    # The quickstart, and a pretraining run that continues another, start from what a
    # pretraining flag file writes: the files say how the shipped encoder was made.
    assert pretraining_inputs <= pretraining_outputs
