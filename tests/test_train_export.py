"""End to end: a tiny run trains, evaluates, checkpoints and exports a raw-text SavedModel."""

import importlib
import json
import logging
import os
import pathlib
import re
import subprocess
import sys

import bert_tf2  # noqa: F401
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (the export's preprocessing needs its ops)
from absl import flags

from bert_tf2 import cli, config, export, io_utils, pretrain, train
from tests.conftest import REPO_ROOT
from tests.tiny_fixtures import (FIXED_SHAPE_ARGS, corpus_data_flags, distill_config,
                                 parse_train_flags, tiny_train_args, train_config)


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
    assert path.endswith("/2") and io_utils.existing_versions(str(tmp_path)) == [1, 2]
    with pytest.raises(FileExistsError):
        export.export_text_classifier(Wrapper(), str(tmp_path), version=1)


def test_failed_write_leaves_no_partial_directory(tmp_path):
    with pytest.raises(RuntimeError):
        with io_utils.atomic_directory(str(tmp_path / "7")) as scratch:
            pathlib.Path(scratch, "saved_model.pb").write_bytes(b"half")
            raise RuntimeError("disk full")
    assert os.listdir(tmp_path) == []


def test_tensorflow_cpp_log_is_kept_to_warnings_unless_the_user_set_it(monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    importlib.reload(bert_tf2)
    # Errors alone where no NVIDIA driver is: TensorFlow's failed CUDA probe is no error there.
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == (
        "2" if os.path.exists("/proc/driver/nvidia") else "3")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    importlib.reload(bert_tf2)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"


@pytest.mark.slow
def test_tensorflow_starts_without_an_error_line_on_a_machine_without_gpus():
    process = subprocess.run(
        [sys.executable, "-c", "import bert_tf2, tensorflow as tf; tf.constant(1).numpy()"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=True,
        env={key: value for key, value in os.environ.items()
             if key != "TF_CPP_MIN_LOG_LEVEL"})
    if not os.path.exists("/proc/driver/nvidia"):
        assert "cuInit" not in process.stderr, process.stderr


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
        elif "distill" in flagfile.name:  # flags of bert_tf2.distill
            distilled = distill_config(f"--flagfile={flagfile}")
            assert distilled.distill.teacher and distilled.distill.student_num_layers, flagfile
        else:
            flag_values = parse_train_flags(f"--flagfile={flagfile}", "--model_dir=/tmp/x")
            assert flag_values.batch_size > 0, flagfile
            if flagfile.name == "quickstart.flags":
                pretraining_inputs.add(flag_values.init_checkpoint)
    # The quickstart, and a pretraining run that continues another, start from what a
    # pretraining flag file writes: the files say how the shipped encoder was made.
    assert pretraining_inputs <= pretraining_outputs


def test_run_config_round_trips_and_flags_beside_it_override(tmp_path):
    quickstart = f"--flagfile={REPO_ROOT / 'configs' / 'quickstart.flags'}"
    recorded = train_config(quickstart)
    path = tmp_path / config.RUN_CONFIG_FILE
    path.write_text(recorded.to_json(), encoding="utf-8")
    assert config.load(str(path)) == recorded
    assert train_config(f"--run_config={path}") == recorded
    # A flag beside it overrides its value, and what that flag implies is derived again.
    changed = train_config(f"--run_config={path}", "--jit_compile", "--seed=7")
    assert changed == recorded.replace(**{"runtime.jit_compile": True, "seed": 7})
    assert changed.input.pad_to_bucket_boundary and not recorded.input.pad_to_bucket_boundary


def test_a_run_config_of_an_earlier_version_takes_todays_defaults_in_one_warning(
        tmp_path, caplog):
    recorded = train_config("--seq_length=64", "--static_shapes")
    older = recorded.to_dict()
    del older["input"]["static_shapes"], older["input"]["pad_to_bucket_boundary"]
    del older["pretrain"]  # a whole group of flags it did not have
    path = tmp_path / config.RUN_CONFIG_FILE
    path.write_text(json.dumps(older), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="absl"):
        loaded = train_config(f"--run_config={path}")
    assert loaded == recorded.replace(**{"input.static_shapes": False})
    assert loaded.input.seq_length == 64 and not loaded.input.pad_to_bucket_boundary
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and all(f"--{flag}=" in warnings[0] for flag in (
        "static_shapes", "pretrain_epochs", "pretrain_learning_rate", "pretrain_batch_size"))
    assert str(path) in warnings[0] and "--seq_length" not in warnings[0]


def test_a_resume_compares_with_the_run_config_of_an_earlier_version(tmp_path, caplog):
    from bert_tf2 import crash_safety
    model_dir = tmp_path / "model"
    # A backup of step 3 (what `crash_safety.backed_up_step` reads) and an older run config.
    iteration = tf.Variable(3, dtype=tf.int64)
    tf.train.Checkpoint(model=tf.train.Checkpoint(optimizer=tf.train.Checkpoint(
        iter=iteration))).write(str(model_dir / "backup" / "chief" / "ckpt-1"))
    # tf.train.latest_checkpoint reads the directory's state file.
    (model_dir / "backup" / "chief" / "checkpoint").write_text(
        'model_checkpoint_path: "ckpt-1"\n', encoding="utf-8")
    interrupted = train_config(f"--model_dir={model_dir}", "--seq_length=64")
    older = interrupted.to_dict()
    del older["input"]["static_shapes"]
    (model_dir / config.RUN_CONFIG_FILE).write_text(json.dumps(older), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="absl"):
        crash_safety.check_model_dir(interrupted.replace(**{"input.static_shapes": True}), {})
    assert "lacks --static_shapes" in caplog.text
    with pytest.raises(crash_safety.ModelDirInUseError, match=r"--seq_length \(64, now 128\)"):
        crash_safety.check_model_dir(interrupted.replace(**{"input.seq_length": 128}), {})


def test_static_shapes_are_forced_under_tpu_and_pad_to_bucket_boundaries():
    assert not train_config().input.static_shapes
    tpu = train_config("--distribution_strategy=tpu").input
    assert tpu.static_shapes and tpu.pad_to_bucket_boundary
    assert train_config("--static_shapes").input.pad_to_bucket_boundary


def test_implied_settings_are_derived_in_the_config():
    assert train_config().model.rebuild_encoder  # its last layer computed at [CLS] alone
    assert not train_config("--norebuild_encoder_under_policy").model.rebuild_encoder
    assert train_config("--mixed_precision=mixed_bfloat16").model.rebuild_encoder
    assert not train_config("--mixed_precision=mixed_bfloat16",
                            "--norebuild_encoder_under_policy").model.rebuild_encoder
    assert train_config("--jit_compile").input.pad_to_bucket_boundary


@pytest.mark.parametrize("content, message", [
    ("{not json", "not a run_config.json"),
    ('{"model_dir": "m", "colour": "red"}', "unknown fields colour"),
    ('{"input": {"seq_length": 64, "pad_everything": true}}', "input: unknown fields pad_every"),
])
def test_a_bad_run_config_is_a_user_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "run_config.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(cli.UserError, match=rf"--run_config={re.escape(str(path))}: .*{message}"):
        train_config(f"--run_config={path}")
    with pytest.raises(cli.UserError, match="cannot read it"):
        train_config(f"--run_config={tmp_path / 'missing.json'}")


@pytest.mark.parametrize("flag, value, in_words", [
    ("learning_rate", "0", "> 0"),
    ("learning_rate", "-2e-5", "> 0"),
    ("seq_length", "7", ">= 8"),
    ("epochs", "0", ">= 1"),
    ("train_steps", "-1", r">= 0 \(0: no cap\)"),
    ("batch_size", "0", ">= 1"),
    ("eval_batch_size", "-64", ">= 1"),
    ("warmup_fraction", "1", r"in \[0, 1\)"),
    ("warmup_fraction", "-0.1", r"in \[0, 1\)"),
    ("dropout", "1.0", r"in \[0, 1\)"),
    ("dropout", "nan", r"in \[0, 1\)"),
])
def test_out_of_range_training_values_are_refused_naming_flag_value_and_range(
        flag, value, in_words):
    with pytest.raises(cli.UserError,
                       match=rf"^--{flag}=\S+ is out of range: it must be {in_words}$"):
        train_config(f"--{flag}={value}")


def test_an_out_of_range_value_in_a_run_config_is_refused_too(tmp_path):
    path = tmp_path / config.RUN_CONFIG_FILE
    path.write_text(train_config().replace(**{"optimizer.learning_rate": 0.0}).to_json(),
                    encoding="utf-8")
    with pytest.raises(cli.UserError, match=r"--learning_rate=0.0 is out of range"):
        train_config(f"--run_config={path}")
    assert train_config(f"--run_config={path}", "--learning_rate=1e-5")


def test_train_steps_0_means_no_cap(tmp_path):
    assert "0 (like unset) means no cap" in parse_train_flags()["train_steps"].help
    for steps in ("--train_steps=0", "--epochs=2"):
        trainer = train_config(steps, "--epochs=2", "--batch_size=10").trainer
        assert train.plan_steps(trainer, 100, str(tmp_path / "backup")).total_steps == 20
    trainer = train_config("--train_steps=5", "--batch_size=10").trainer
    assert train.plan_steps(trainer, 100, str(tmp_path / "backup")).total_steps == 5


def test_seq_length_beyond_the_encoders_positions_fails_before_training(
        tiny_hub_modules, corpus_splits, tmp_path):
    args = tiny_train_args(tiny_hub_modules, tmp_path / "model", tmp_path / "export",
                           *corpus_data_flags(tmp_path, corpus_splits, {"train": 32}))
    with pytest.raises(cli.UserError, match=r"^--seq_length=129 is longer than the encoder "
                       r"takes: its max_position_embeddings is 128 .* pass --seq_length=128 "):
        train.run(train_config(*args, "--seq_length=129"))
    assert os.listdir(tmp_path / "model") == [] and os.listdir(tmp_path / "export") == []


def test_a_run_config_restarts_the_same_run(dropout_free_modules, corpus_splits, tmp_path):
    data_flags = corpus_data_flags(tmp_path, corpus_splits, {"train": 64, "dev": 32})
    first = train.run(train_config(*tiny_train_args(dropout_free_modules, tmp_path / "a", ""),
                                   *data_flags, "--train_steps=4", *FIXED_SHAPE_ARGS))
    recorded = tmp_path / "a" / config.RUN_CONFIG_FILE
    assert config.load(str(recorded)) == first.config
    again = train.run(train_config(f"--run_config={recorded}", f"--model_dir={tmp_path / 'b'}"))
    assert again.config == first.config.replace(model_dir=str(tmp_path / "b"))
    assert again.optimizer_steps == first.optimizer_steps == 4
    assert again.metrics == first.metrics


def test_the_optimizer_log_line_says_how_gradients_are_clipped(caplog):
    caplog.set_level(logging.INFO, logger="absl")
    optimizer = train.create_optimizer(train_config("--model_dir=/tmp/m").optimizer, 100)
    assert optimizer.global_clipnorm == train.GRADIENT_CLIP_NORM
    assert "gradient_clip_norm=0" not in caplog.text
    assert ("AdamW: peak learning rate 2e-05, 10 warmup steps of 100, weight decay 0.01, "
            "gradients clipped to a global norm of 1 once summed over the replicas"
            in caplog.text)
