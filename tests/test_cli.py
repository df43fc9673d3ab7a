"""What every command line shares: one-line user errors and their exit statuses."""

import pytest

from bert_tf2 import cli


def _failing(error: BaseException):
    def main():
        raise error
    return cli.one_line_errors("tool")(main)


@pytest.mark.parametrize("error, status", [
    (cli.UserError("--x=1 is out of range; pass --x=2"), 1),
    (cli.Interrupted("interrupted; nothing was written to out.jsonl"), 130),
])
def test_a_user_error_is_one_line_on_stderr_and_an_exit_status(error, status, capsys):
    with pytest.raises(SystemExit) as exited:
        _failing(error)()
    assert exited.value.code == status
    assert capsys.readouterr().err == f"tool: {error}\n"


def test_any_other_error_keeps_its_traceback():
    with pytest.raises(ZeroDivisionError):
        _failing(ZeroDivisionError("a bug"))()


# ---------------------------------------------------------------------------------------------
# Each command defines only the flags it reads, and every one reaches it through its config
# ---------------------------------------------------------------------------------------------

class _RecordingFlags:
    """Parsed FlagValues that note every flag a `from_flags` reads."""

    def __init__(self, flag_values):
        self._flag_values, self.read = flag_values, set()

    def __getitem__(self, name):
        self.read.add(name)
        return self._flag_values[name]

    def __getattr__(self, name):
        self.read.add(name)
        return getattr(self._flag_values, name)


def _defined_and_read(command: str, config_classes, *args: str):
    """(the flags `python -m bert_tf2.COMMAND` defines, those its configs' from_flags read)."""
    import importlib  # pylint: disable=g-import-not-at-top
    from absl import flags  # pylint: disable=g-import-not-at-top
    module = importlib.import_module(f"bert_tf2.{command}")
    flag_values = flags.FlagValues()
    module.define_flags(flag_values)
    flag_values([command, *args])
    recording = _RecordingFlags(flag_values)
    for config_class in config_classes:
        config_class.from_flags(recording)
    return set(flag_values), recording.read


def _commands():
    from bert_tf2 import config  # pylint: disable=g-import-not-at-top
    model = ("--saved_model=x",)
    return {
        "predict": ((config.PredictConfig,), model),
        "beam_predict": ((config.PredictConfig,), model),
        "evaluate": ((config.EvaluateConfig,), model),
        "export_lite": ((config.LiteExportConfig,), model + ("--output=m.tflite",)),
        "train": ((config.TrainConfig, config.RunOptions), ()),
        "distill": ((config.DistillConfig, config.RunOptions), ()),
    }


@pytest.mark.parametrize("command", ["predict", "beam_predict", "evaluate", "export_lite",
                                     "train", "distill"])
def test_every_flag_a_command_defines_reaches_it_through_its_config(command):
    config_classes, args = _commands()[command]
    defined, read = _defined_and_read(command, config_classes, *args)
    assert defined == read, (f"defined, not read: {sorted(defined - read)}; "
                             f"read, not defined: {sorted(read - defined)}")


@pytest.mark.parametrize("command", ["predict", "beam_predict", "evaluate", "export_lite"])
def test_inference_commands_define_no_training_flag(command):
    config_classes, args = _commands()[command]
    defined, _ = _defined_and_read(command, config_classes, *args)
    training_only = {"train_data", "eval_data", "test_data", "task", "class_names", "seed",
                     "epochs", "learning_rate", "model_dir", "export_dir", "run_config",
                     "export_new_task", "preprocess_handle", "encoder_handle"}
    assert not defined & training_only
    if command in ("predict", "beam_predict", "export_lite"):
        assert not defined & {"label_map", "label_column", "label_separator",
                              "allow_single_label_rows"}


def test_a_flag_of_another_command_ends_in_one_line_with_advice(capsys):
    from absl import flags  # pylint: disable=g-import-not-at-top
    from bert_tf2 import config, predict  # pylint: disable=g-import-not-at-top
    flag_values = flags.FlagValues()
    predict.define_flags(flag_values)
    for argv, expected in (
            (["--task=multiclass"], "predict: --task is not a flag of predict: predict reads no "
             "labels; the task and classes are the model's (its export)\n"),
            (["--noallow_single_label_rows"], "predict: --noallow_single_label_rows is not a "
             "flag of predict: predict reads no labels; the task and classes are the model's "
             "(its export)\n"),
            (["--bogus=1"], "predict: --bogus is not a flag of predict: `python -m "
             "bert_tf2.predict --helpfull` lists them\n")):
        with pytest.raises(SystemExit) as exited:
            cli.parse_flags("predict", ["predict", *argv], flag_values,
                            other_commands_flags=config.PREDICT_OTHER_FLAGS)
        assert exited.value.code == 1
        assert capsys.readouterr().err == expected


def test_a_library_usage_error_is_one_line_too(capsys):
    from absl import app  # pylint: disable=g-import-not-at-top
    with pytest.raises(SystemExit) as exited:
        _failing(app.UsageError("--x is wrong"))()
    assert exited.value.code == 1
    assert capsys.readouterr().err == "tool: --x is wrong\n"


# Through the real command lines: each kind of user error is one line on stderr and status 1,
# with no traceback and no module docstring.
@pytest.mark.slow
@pytest.mark.parametrize("command, args, expected", [
    # a flag the command does not define (with advice, or where to look)
    ("predict", ["--saved_model=x", "--label_map=差:0,好:1"],
     "predict: --label_map is not a flag of predict: predict reads no labels"),
    ("evaluate", ["--saved_model=x", "--seed=7"],
     "evaluate: --seed is not a flag of evaluate: the built-in corpus's split is fixed"),
    ("export_lite", ["--saved_model=x", "--task=binary"],
     "export_lite: --task is not a flag of export_lite: `python -m bert_tf2.export_lite "
     "--helpfull` lists them"),
    # a value absl's flag parsing refuses, and a required flag left out
    ("predict", ["--encoding=no-such-codec"], "predict: flag --encoding=no-such-codec: not a "
     "text encoding"),
    ("vocab", [], "vocab: flag --output=None: Flag --output must have a value other than None"),
    # errors the command raises (absl's UsageError printed the module docstring first)
    ("predict", [], "predict: --saved_model is required"),
    ("export_lite", ["--saved_model=x", "--output=m.tflite", "extra"],
     "export_lite: unexpected arguments: extra"),
    ("serving.config", [], "serving.config: --export_dir is required"),
])
def test_each_kind_of_user_error_is_one_line_through_the_cli(command, args, expected):
    import os  # pylint: disable=g-import-not-at-top
    import subprocess  # pylint: disable=g-import-not-at-top
    import sys  # pylint: disable=g-import-not-at-top
    result = subprocess.run([sys.executable, "-m", f"bert_tf2.{command}", *args],
                            capture_output=True, encoding="utf-8", stdin=subprocess.DEVNULL,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert result.returncode == 1
    lines = result.stderr.splitlines()  # TensorFlow's own logs are off (TF_CPP_MIN_LOG_LEVEL)
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr
