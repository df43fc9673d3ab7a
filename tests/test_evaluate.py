"""Evaluation: metrics against hand-computed values, the plots, and the CLI on the tiny model."""

import json
import math
import os
import pathlib
import re
import shutil

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from absl import flags
import numpy as np
from PIL import Image
import pytest

from bert_tf2 import cli, data, evaluate, io_utils, plots, predict
from bert_tf2 import config as config_lib
from tests.tiny_fixtures import evaluate_config

# The hand-worked fixture. Sorted by probability:
#
#   index        0    1    2    3    4    5
#   label        0    1    0    1    1    1        4 positives, 2 negatives
#   probability 0.1  0.2  0.4  0.6  0.7  0.9
#   p >= 0.5     0    0    0    1    1    1
#
# At 0.5: TP = 3 (0.6, 0.7, 0.9), FP = 0, FN = 1 (index 1), TN = 2 (0.1, 0.4).
LABELS = [0, 1, 0, 1, 1, 1]
PROBABILITIES = [0.1, 0.2, 0.4, 0.6, 0.7, 0.9]


def test_classification_metrics_match_hand_computed_values():
    m = evaluate.classification_metrics(LABELS, PROBABILITIES)
    assert m["accuracy"] == pytest.approx(5 / 6)                  # 3 TP + 2 TN of 6
    pos, neg = m["per_class"]["positive"], m["per_class"]["negative"]
    assert pos["precision"] == pytest.approx(1.0)                 # 3 / (3 + 0)
    assert pos["recall"] == pytest.approx(0.75)                   # 3 / (3 + 1)
    assert pos["f1"] == pytest.approx(6 / 7)                      # 2 * 1 * .75 / 1.75
    assert neg["precision"] == pytest.approx(2 / 3)               # TN / (TN + FN) = 2 / 3
    assert neg["recall"] == pytest.approx(1.0)                    # TN / (TN + FP) = 2 / 2
    assert neg["f1"] == pytest.approx(0.8)                        # 2 * (2/3) * 1 / (5/3)
    assert (pos["support"], neg["support"]) == (4, 2)
    assert m["macro"]["precision"] == pytest.approx(5 / 6)        # (1 + 2/3) / 2
    assert m["macro"]["recall"] == pytest.approx(0.875)           # (.75 + 1) / 2
    assert m["macro"]["f1"] == pytest.approx(29 / 35)             # (6/7 + 4/5) / 2
    # ROC-AUC: of the 4 x 2 (positive, negative) pairs, the positive scores higher in all but
    # (0.2, 0.4): 7 / 8.
    assert m["roc_auc"] == pytest.approx(7 / 8)
    # Average precision: ranked 0.9+ 0.7+ 0.6+ 0.4- 0.2+ 0.1-; recall rises by 1/4 at ranks
    # 1, 2, 3 (precision 1) and 5 (precision 4/5): (1 + 1 + 1 + 4/5) / 4 = 0.95.
    assert m["pr_auc"] == pytest.approx(0.95)
    # Log loss: mean of -ln P(true label) = -ln(0.9 * 0.2 * 0.6 * 0.6 * 0.7 * 0.9) / 6.
    assert m["log_loss"] == pytest.approx(-math.log(0.9 * 0.2 * 0.6 * 0.6 * 0.7 * 0.9) / 6)
    # Brier: mean (p - y)^2 = (.01 + .64 + .16 + .16 + .09 + .01) / 6.
    assert m["brier_score"] == pytest.approx(1.07 / 6)
    assert m["confusion_matrix"] == [[2, 0], [1, 3]]              # rows true, columns predicted


def test_calibration_error_by_hand():
    # 2 bins. [0, .5): p .1 .2 .4, labels 0 1 0 -> mean p 0.7/3, fraction positive 1/3,
    # gap 0.1. [.5, 1]: p .6 .7 .9, labels 1 1 1 -> mean p 2.2/3, fraction 1, gap 0.8/3.
    # ECE = 3/6 * 0.1 + 3/6 * 0.8/3 = 11/60; MCE = 0.8/3.
    result = evaluate.calibration(LABELS, PROBABILITIES, num_bins=2)
    assert result["ece"] == pytest.approx(11 / 60)
    assert result["mce"] == pytest.approx(0.8 / 3)
    low, high = result["bins"]
    assert (low["lower"], low["upper"], low["count"]) == (0.0, 0.5, 3)
    assert low["mean_probability"] == pytest.approx(0.7 / 3)
    assert low["fraction_positive"] == pytest.approx(1 / 3)
    assert high["fraction_positive"] == pytest.approx(1.0)
    # 10 bins: every example alone in its bin, so ECE = mean |y - p|
    # = (.1 + .8 + .4 + .4 + .3 + .1) / 6 = 0.35; 4 bins are empty.
    result = evaluate.calibration(LABELS, PROBABILITIES)
    assert result["ece"] == pytest.approx(0.35)
    assert sum(b["count"] == 0 for b in result["bins"]) == 4
    assert all(b["mean_probability"] is None for b in result["bins"] if not b["count"])
    # p = 1.0 falls in the last bin, p = 0.0 in the first; perfect calibration gives 0.
    result = evaluate.calibration([0, 1], [0.0, 1.0])
    assert result["bins"][0]["count"] == result["bins"][-1]["count"] == 1
    assert result["ece"] == 0.0


def test_best_thresholds_by_hand():
    # Cuts from the top (k predicted positive) and the midpoint thresholds:
    #   k  threshold  TP FP FN TN  accuracy  F1 = 2TP / (2TP + FP + FN)
    #   0  .95         0  0  4  2   2/6      0
    #   1  .8          1  0  3  2   3/6      2/5
    #   2  .65         2  0  2  2   4/6      4/6
    #   3  .5          3  0  1  2   5/6      6/7
    #   4  .3          3  1  1  1   4/6      6/8
    #   5  .15         4  1  0  1   5/6      8/9   <- best F1
    #   6  .05         4  2  0  0   4/6      8/10
    # Best accuracy 5/6 at k = 3 and k = 5: the tie goes to the threshold nearer 0.5.
    sweep = evaluate.threshold_sweep(LABELS, PROBABILITIES)
    np.testing.assert_allclose(sweep["threshold"], [.95, .8, .65, .5, .3, .15, .05])
    np.testing.assert_array_equal(sweep["tp"], [0, 1, 2, 3, 3, 4, 4])
    np.testing.assert_allclose(sweep["f1"], [0, 2 / 5, 4 / 6, 6 / 7, 6 / 8, 8 / 9, 8 / 10])
    best = evaluate.best_thresholds(LABELS, PROBABILITIES)
    assert best["f1"]["threshold"] == pytest.approx(0.15)
    assert best["f1"]["f1"] == pytest.approx(8 / 9)
    assert (best["f1"]["precision"], best["f1"]["recall"]) == (pytest.approx(0.8), 1.0)
    assert best["accuracy"]["threshold"] == pytest.approx(0.5)
    assert best["accuracy"]["accuracy"] == pytest.approx(5 / 6)
    # The chosen threshold reproduces its metric with the same `p >= t` rule.
    predicted = np.asarray(PROBABILITIES) >= best["f1"]["threshold"]
    assert predicted.tolist() == [False, True, True, True, True, True]


def test_thresholds_with_ties_and_saturated_probabilities():
    # Ties are never split: with p = [1, 1, 0, 0] the cuts are 0, 2 and 4 examples.
    sweep = evaluate.threshold_sweep([1, 0, 0, 1], [1.0, 1.0, 0.0, 0.0])
    assert len(sweep["threshold"]) == 3
    assert sweep["threshold"][0] > 1.0                 # "nothing positive" must beat p = 1
    assert sweep["threshold"][-1] == 0.0               # "all positive": p >= 0
    assert sweep["threshold"][1] == pytest.approx(0.5)


def test_most_confidently_wrong_order():
    # All four wrong at 0.5; confidence in the wrong label: .7, .9, .6, .55.
    assert evaluate.most_confidently_wrong([1, 0, 0, 1], [0.3, 0.9, 0.6, 0.45], 10) == [
        1, 0, 2, 3]
    assert evaluate.most_confidently_wrong([1, 0, 0, 1], [0.3, 0.9, 0.6, 0.45], 2) == [1, 0]
    assert evaluate.most_confidently_wrong(LABELS, PROBABILITIES, 10) == [1]


def test_undefined_metrics_are_none_and_bad_input_is_refused():
    m = evaluate.classification_metrics([1, 1], [0.9, 0.4])
    assert m["roc_auc"] is None and m["pr_auc"] == pytest.approx(1.0)
    assert evaluate.classification_metrics([0, 0], [0.1, 0.6])["pr_auc"] is None
    for labels, probabilities in (([0, 2], [.1, .2]), ([0, 1], [.1, 1.5]), ([0], [.1, .2]),
                                  ([], []), ([0, 1], [.1, float("nan")])):
        with pytest.raises(ValueError):
            evaluate.classification_metrics(labels, probabilities)


def test_default_threshold_is_the_served_one():
    from bert_tf2 import export
    assert evaluate.DEFAULT_THRESHOLD == export.DECISION_THRESHOLD


def _assert_png(path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        assert image.size[0] >= 300 and image.size[1] >= 300
        assert len(set(image.convert("L").getdata())) > 10, f"{path} looks blank"


def test_report_plots_are_valid_pngs(tmp_path):
    report = evaluate.evaluate_predictions(LABELS, PROBABILITIES, texts=list("abcdef"))
    written = evaluate.write_plots(LABELS, PROBABILITIES, report, str(tmp_path))
    assert set(written) == {"roc", "precision_recall", "confusion_matrix", "reliability"}
    for name in written.values():
        _assert_png(tmp_path / name)
    json.dumps(report, allow_nan=False)  # JSON-ready
    table = evaluate.format_report(report)
    assert "macro" in table and "ECE 0.350" in table and "p=0.200  b" in table


def _write_history(path: pathlib.Path, with_dev: bool = True) -> None:
    header = "epoch,accuracy,auc,loss" + (",val_accuracy,val_auc,val_loss" if with_dev else "")
    rows = ["0,0.6,0.65,0.69,0.62,0.66,0.68", "1,0.7,0.75,0.6,0.7,0.74,0.61",
            # epoch 1 again: a resumed run appends; the last row wins
            "1,0.72,0.77,0.58,0.71,0.75,0.6", "2,0.8,0.85,0.45,NA,0.8,0.5"]
    if not with_dev:
        rows = [",".join(row.split(",")[:4]) for row in rows]
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")


def test_training_curves_from_history_csv(tmp_path):
    history = tmp_path / "history.csv"
    _write_history(history)
    columns = plots.read_history(str(history))
    assert columns["epoch"] == [1, 2, 3]
    assert columns["loss"] == [0.69, 0.58, 0.45]
    assert math.isnan(columns["val_accuracy"][2])
    _assert_png(plots.plot_training_curves(str(history), str(tmp_path / "curves.png")))
    _write_history(history, with_dev=False)
    _assert_png(plots.plot_training_curves(str(history), str(tmp_path / "train_only.png")))
    history.write_text("epoch,loss\n", encoding="utf-8")
    with pytest.raises(data.DataError, match="no epochs logged"):
        plots.plot_training_curves(str(history), str(tmp_path / "x.png"))


def test_default_output_dir_is_beside_the_saved_model():
    assert evaluate.default_output_dir("/e/export/3/") == "/e/export/eval-3"
    assert io_utils.is_inside("/e/export/3/eval", "/e/export/3")
    assert not io_utils.is_inside("/e/export/eval-3", "/e/export/3")


def test_default_output_dir_on_a_store_is_beside_the_saved_model_there():
    assert evaluate.default_output_dir("gs://b/e/export/3/") == "gs://b/e/export/eval-3"
    assert evaluate.default_output_dir("ram://b/m.tflite") == "ram://b/eval-m"
    assert io_utils.is_inside("gs://b/e/export/3//eval/", "gs://b/e/export/3")
    assert io_utils.is_inside("GS://b/e/export/x/../3/eval", "gs://b/e/export/3/")
    assert not io_utils.is_inside("gs://b/e/export/eval-3", "gs://b/e/export/3")
    assert not io_utils.is_inside("/b/e/export/3/eval", "gs://b/e/export/3")


def _evaluate_command_line_error(capsys, *args: str) -> str:
    """What `python -m bert_tf2.evaluate ARGS` says when it refuses its flags (one line)."""
    flag_values = flags.FlagValues()
    evaluate.define_flags(flag_values)
    with pytest.raises(SystemExit) as exited:
        cli.parse_flags("evaluate", ["evaluate", *args], flag_values,
                        other_commands_flags=config_lib.EVALUATE_OTHER_FLAGS)
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_a_seed_or_a_training_split_is_not_a_flag_of_evaluate(capsys):
    assert _evaluate_command_line_error(capsys, "--saved_model=x", "--seed=7") == (
        "evaluate: --seed is not a flag of evaluate: the built-in corpus's split is fixed "
        "whatever the seed, so evaluate has no other test split to pick; drop --seed, or pass "
        "--data (docs/evaluate_predict.md)\n")
    assert _evaluate_command_line_error(capsys, "--saved_model=x", "--test_data=t.csv") == (
        "evaluate: --test_data is not a flag of evaluate: it is a training flag; evaluate "
        "reads --data\n")
    assert "--task is not a flag of evaluate: evaluate reads the task and classes off the " \
        "model" in _evaluate_command_line_error(capsys, "--task=multiclass")


def test_history_alone_only_plots_curves(tmp_path, capsys):
    history = tmp_path / "model" / "history.csv"
    history.parent.mkdir()
    _write_history(history)
    result = evaluate.run(evaluate_config(f"--history={history}"))
    assert result["training_curves"] == str(tmp_path / "model" / "training_curves.png")
    _assert_png(result["training_curves"])
    with pytest.raises(cli.UserError, match=r"--saved_model is required.* \(or --history"):
        evaluate.run(evaluate_config())


def test_a_missing_model_or_an_unusable_output_dir_fails_before_the_model_loads(tmp_path):
    with pytest.raises(predict.SavedModelError, match=r"^--saved_model=.*missing: no "
                       r"saved_model\.pb there"):
        evaluate.run(evaluate_config(f"--saved_model={tmp_path / 'missing'}"))
    # Not a loadable model: were it loaded, that would fail differently.
    (tmp_path / "export" / "1").mkdir(parents=True)
    (tmp_path / "export" / "1" / "saved_model.pb").write_bytes(b"not loaded")
    (tmp_path / "a_file").write_text("")
    for output_dir in (tmp_path / "a_file", tmp_path / "a_file" / "eval"):
        with pytest.raises(cli.UserError, match=rf"^--output_dir={re.escape(str(output_dir))} "
                           "is not a writable directory"):
            evaluate.run(evaluate_config(f"--saved_model={tmp_path / 'export'}",
                                              f"--output_dir={output_dir}"))
    # A usable output directory is checked, not made: the model that then fails to load
    # leaves nothing behind.
    with pytest.raises(predict.SavedModelError):
        evaluate.run(evaluate_config(f"--saved_model={tmp_path / 'export'}",
                                          f"--output_dir={tmp_path / 'new' / 'eval'}"))
    assert not (tmp_path / "new").exists()


def test_evaluate_cli_on_the_tiny_model(tiny_training_run, tmp_path, capsys):
    # A copy of the export, so the default output directory (E/eval-1) lands in tmp_path and
    # not beside the shared fixture's versions.
    export_dir = tmp_path / "export"
    shutil.copytree(tiny_training_run["saved_model"], export_dir / "1")
    test_csv = tmp_path / "test.csv"
    splits = data.builtin_corpus_splits()
    rows = list(zip(splits["test"].texts, splits["test"].labels))
    rows = [row for row in rows if row[1]][:15] + [row for row in rows if not row[1]][:15]
    with open(test_csv, "w", encoding="utf-8-sig", newline="") as f:
        f.write("id,评论,评价\n")
        for i, (text, label) in enumerate(rows):
            f.write(f'{i},"{text.replace(chr(34), chr(34) * 2)}",{"好评" if label else "差评"}\n')

    report = evaluate.run(evaluate_config(
        f"--saved_model={export_dir}", f"--data={test_csv}", "--text_column=评论",
        "--label_column=评价", "--label_map=差评:0,好评:1", "--batch_size=8", "--num_wrong=3",
        f"--history={tiny_training_run['model_dir']}/history.csv"))

    output_dir = export_dir / "eval-1"
    assert report["saved_model"] == str(export_dir / "1")
    assert report["output_dir"] == str(output_dir)
    assert sorted(os.listdir(export_dir / "1")) == sorted(
        os.listdir(tiny_training_run["saved_model"])), "wrote inside the SavedModel"
    on_disk = json.loads((output_dir / "report.json").read_text(encoding="utf-8"))
    assert on_disk == json.loads(json.dumps(report))
    assert on_disk["num_examples"] == 30 and on_disk["num_positive"] == 15
    for key in ("accuracy", "roc_auc", "pr_auc", "log_loss"):
        assert 0.0 <= on_disk[key] <= (1.0 if key != "log_loss" else 10.0), key
    assert set(on_disk["per_class"]) == {"negative", "positive"}
    assert on_disk["calibration"]["num_bins"] == 10
    assert {"f1", "accuracy"} == set(on_disk["best_thresholds"])
    assert len(on_disk["most_confidently_wrong"]) <= 3
    for example in on_disk["most_confidently_wrong"]:
        assert example["text"] == rows[example["index"]][0]
        assert example["predicted"] != example["label"]
    assert set(on_disk["plots"]) == {"roc", "precision_recall", "confusion_matrix",
                                     "reliability", "training_curves"}
    for name in on_disk["plots"].values():
        _assert_png(output_dir / name)
    printed = capsys.readouterr().out
    assert "precision" in printed and "ROC-AUC" in printed and "best threshold" in printed
    assert str(output_dir) in printed

    with pytest.raises(cli.UserError, match="inside the SavedModel"):
        evaluate.run(evaluate_config(f"--saved_model={export_dir}/1",
                                          f"--output_dir={export_dir}/1/eval"))


# ---------------------------------------------------------------------------------------------
# No --data: the test split the model records
# ---------------------------------------------------------------------------------------------

def test_reading_flags_without_data_are_refused():
    with pytest.raises(cli.UserError, match=r"^--text_column, --encoding say\(s\) how --data "
                       "is read, but no --data is given"):
        evaluate_config("--saved_model=x", "--text_column=review", "--encoding=gb18030")
    assert evaluate_config("--saved_model=x", "--data=d.csv",
                           "--text_column=review").reader.text_column == "review"


def _copied_export(tiny_training_run, root: pathlib.Path) -> pathlib.Path:
    export_dir = root / "export"
    shutil.copytree(tiny_training_run["saved_model"], export_dir / "1")
    return export_dir


def test_a_model_trained_on_files_is_evaluated_on_its_test_file(tiny_training_run, tmp_path):
    from bert_tf2 import export
    export_dir = _copied_export(tiny_training_run, tmp_path)
    record_file = export_dir / "1" / export.TEST_DATA_FILE
    record = json.loads(record_file.read_text(encoding="utf-8"))
    # The fixture's run was written to a scratch directory and renamed: its test file moved.
    with pytest.raises(cli.UserError, match=rf"^{re.escape(record['source'])}, the test data "
                       ".* is not there: pass --data="):
        evaluate.run(evaluate_config(f"--saved_model={export_dir}"))

    test_file = tmp_path / "test.jsonl"
    shutil.copy(pathlib.Path(tiny_training_run["model_dir"]).parent / "test.jsonl", test_file)
    record_file.write_text(json.dumps({**record, "source": str(test_file)}), encoding="utf-8")
    report = evaluate.run(evaluate_config(f"--saved_model={export_dir}"))
    assert report["data"] == str(test_file)
    trained = tiny_training_run["metrics"]["test"]
    assert report["num_examples"] == trained["examples"] == 160
    # The training run's own test accuracy, up to one example on the 0.5 boundary.
    assert report["accuracy"] == pytest.approx(trained["accuracy"], abs=1.01 / 160)

    lines = test_file.read_text(encoding="utf-8").splitlines(keepends=True)
    test_file.write_text("".join(lines[:-1]), encoding="utf-8")  # one review fewer
    with pytest.raises(cli.UserError, match=rf"^{re.escape(str(test_file))}, the test data .* "
                       r"has changed since \(160 examples then, 159 now.*pass --data="):
        evaluate.run(evaluate_config(f"--saved_model={export_dir}"))


def test_evaluate_without_data_refuses_a_model_without_test_data(tiny_training_run, tmp_path):
    from bert_tf2 import export
    export_dir = _copied_export(tiny_training_run, tmp_path)
    record_file = export_dir / "1" / export.TEST_DATA_FILE
    record_file.write_text(json.dumps({"source": None}), encoding="utf-8")
    with pytest.raises(cli.UserError, match="trained without --test_data.*: pass --data="):
        evaluate.run(evaluate_config(f"--saved_model={export_dir}"))
    record_file.unlink()
    with pytest.raises(cli.UserError, match=r"does not record the test data it was trained "
                       r"with \(assets/test_data.json\): pass --data="):
        evaluate.run(evaluate_config(f"--saved_model={export_dir}"))
    assert not (export_dir / "eval-1").exists()


def test_a_model_trained_on_the_builtin_corpus_is_evaluated_on_its_test_split(
        tiny_hub_modules, corpus_splits, tmp_path):
    from bert_tf2 import train
    from tests import tiny_fixtures
    result = train.run(tiny_fixtures.train_config(*tiny_fixtures.tiny_train_args(
        tiny_hub_modules, tmp_path / "model", tmp_path / "export")))
    report = evaluate.run(evaluate_config(f"--saved_model={tmp_path / 'export'}"))
    assert report["data"] == corpus_splits["test"].source
    assert report["num_examples"] == result.metrics["test"]["examples"] == len(
        corpus_splits["test"])
    assert report["accuracy"] == pytest.approx(result.metrics["test"]["accuracy"],
                                               abs=1.01 / len(corpus_splits["test"]))
