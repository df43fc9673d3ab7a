"""bert_tf2.quickstart: the shipped flag file resolved from the package, and the rerun rules (it
replaces its own demo run in ./runs/quickstart and nothing else). The whole command runs in
tests/test_packaging.py, from the installed wheel."""

import json
import logging
import os

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import pytest
import tensorflow as tf

from bert_tf2 import cli
from bert_tf2 import quickstart

RUN_DIR = quickstart.RUN_DIR
MODEL_DIR = os.path.join(RUN_DIR, "model")
OUTPUTS = [os.path.join(RUN_DIR, "hub", "preprocess"), os.path.join(RUN_DIR, "hub", "encoder"),
           MODEL_DIR, os.path.join(RUN_DIR, "export")]


def test_the_shipped_flags_name_shipped_files_and_outputs_under_runs_quickstart():
    values = quickstart.flag_values(quickstart.shipped_flags(quickstart.FLAG_FILE))
    for name in ("vocab_file", "bert_config_file"):
        assert os.path.isabs(values[name]) and os.path.isfile(values[name]), name
    assert os.path.isfile(values["init_checkpoint"] + ".index")
    assert [values[name] for name in quickstart.OUTPUT_FLAGS] == OUTPUTS


def test_shipped_flag_files_that_include_the_quickstarts_are_read_in_place():
    args = quickstart.shipped_flags("quickstart_frozen.flags")
    values = quickstart.flag_values(args)
    assert not [arg for arg in args if arg.startswith("--flagfile")]
    assert os.path.isfile(values["vocab_file"])
    assert values["model_dir"] == "runs/quickstart_frozen/model"  # its own, after the included


def _finished_run(run_config: str = '{"data": {}}\n') -> None:
    """What a finished quickstart leaves (enough of it for the rerun rules)."""
    for path in OUTPUTS:
        os.makedirs(path, exist_ok=True)
    with open(os.path.join(MODEL_DIR, "run_config.json"), "w", encoding="utf-8") as f:
        f.write(run_config)
    with open(os.path.join(MODEL_DIR, "metrics.json"), "w", encoding="utf-8") as f:
        f.write("{}\n")


def test_a_rerun_replaces_the_demo_run_and_keeps_everything_else(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    quickstart.prepare_run_dir(OUTPUTS, MODEL_DIR, overwrite=False)  # the first run
    _finished_run()
    quickstart.write_marker(MODEL_DIR)
    with open(os.path.join(RUN_DIR, "notes.txt"), "w", encoding="utf-8") as f:
        f.write("mine\n")

    with caplog.at_level(logging.INFO, logger="absl"):
        quickstart.prepare_run_dir(OUTPUTS, MODEL_DIR, overwrite=False)
    assert not [path for path in OUTPUTS if os.path.exists(path)]
    assert sorted(os.listdir(RUN_DIR)) == ["hub", "notes.txt", quickstart.MARKER_FILE]
    assert [record.getMessage() for record in caplog.records] == [
        f"Replacing the earlier quickstart run in {RUN_DIR} (removing {', '.join(OUTPUTS)})"]


def _interrupted_run() -> None:
    """A quickstart stopped at step 7: its backup, as Keras' BackupAndRestore leaves it."""
    _finished_run()
    os.remove(os.path.join(MODEL_DIR, "metrics.json"))
    checkpoint = tf.train.Checkpoint(train_counter=tf.Variable(7, dtype=tf.int64))
    checkpoint.save(os.path.join(MODEL_DIR, "backup", "chief", "ckpt"))
    quickstart.write_marker(MODEL_DIR)


def test_an_interrupted_run_is_resumed_or_with_overwrite_replaced(tmp_path, monkeypatch,
                                                                  caplog):
    monkeypatch.chdir(tmp_path)
    quickstart.prepare_run_dir(OUTPUTS, MODEL_DIR, overwrite=False)
    _interrupted_run()
    with caplog.at_level(logging.INFO, logger="absl"):
        quickstart.prepare_run_dir(OUTPUTS, MODEL_DIR, overwrite=False)
    assert all(os.path.isdir(path) for path in OUTPUTS)
    assert [record.getMessage() for record in caplog.records] == [
        f"Resuming the interrupted quickstart run in {MODEL_DIR} from its backup of step 7"]

    quickstart.prepare_run_dir(OUTPUTS, MODEL_DIR, overwrite=True)
    assert not [path for path in OUTPUTS if os.path.exists(path)]


def _assert_refused_and_kept(match: str, *, overwrite: bool) -> None:
    """A rerun is refused with `match` and removes none of the demo's outputs."""
    with pytest.raises(cli.UserError, match=match):
        quickstart.prepare_run_dir(OUTPUTS, MODEL_DIR, overwrite=overwrite)
    assert all(os.path.isdir(path) for path in OUTPUTS)


def test_a_run_dir_the_quickstart_did_not_make_is_refused_and_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _finished_run()  # e.g. train --flagfile=configs/quickstart.flags, no marker
    _assert_refused_and_kept(r"^\./runs/quickstart exists and was not made by python -m "
                             r"bert_tf2\.quickstart", overwrite=True)


def test_a_model_dir_another_run_replaced_is_refused_and_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    quickstart.prepare_run_dir(OUTPUTS, MODEL_DIR, overwrite=False)
    _finished_run()
    quickstart.write_marker(MODEL_DIR)
    # train --model_dir=runs/quickstart/model --overwrite on the user's own data
    _finished_run(json.dumps({"data": {"train_data": "mine.csv"}}))
    _assert_refused_and_kept(r"^runs/quickstart/model holds a run that the quickstart did not "
                             r"make", overwrite=False)


def test_a_file_named_runs_quickstart_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.mkdir("runs")
    with open(RUN_DIR, "w", encoding="utf-8") as f:
        f.write("not a directory\n")
    with pytest.raises(cli.UserError, match="is not a directory"):
        quickstart.prepare_run_dir(OUTPUTS, MODEL_DIR, overwrite=False)


def test_an_empty_run_dir_is_taken(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs(RUN_DIR)
    quickstart.prepare_run_dir(OUTPUTS, MODEL_DIR, overwrite=False)
    assert os.listdir(RUN_DIR) == [quickstart.MARKER_FILE]


@pytest.mark.parametrize("name", ["model_dir", "export_dir", "encoder_handle", "run_config"])
def test_flags_that_move_the_outputs_are_refused(name):
    own = quickstart.flag_values(quickstart.shipped_flags(quickstart.FLAG_FILE))
    given = {flag: own.get(flag) for flag in quickstart.FIXED_FLAGS}
    given[name] = "/elsewhere"
    with pytest.raises(cli.UserError, match=rf"^--{name}=/elsewhere: the quickstart keeps its "
                                            r"outputs in \./runs/quickstart"):
        quickstart.check_outputs_unmoved(given, own)
    quickstart.check_outputs_unmoved({flag: own.get(flag) for flag in quickstart.FIXED_FLAGS},
                                     own)
