"""Evaluates an exported model on labelled data: metrics, plots and its worst mistakes.

  python -m bert_tf2.evaluate --saved_model=E/1                 # the model's own test split
  python -m bert_tf2.evaluate --saved_model=E/1 --data=test.csv --text_column=评论 \
      --label_column=评价 --label_map=差评:0,好评:1
  python -m bert_tf2.evaluate --saved_model=E/1 --history=M/history.csv   # + training curves
  python -m bert_tf2.evaluate --history=M/history.csv           # only the training curves

Without --data it reads the test split the model was scored on in training, as that run read
it (the built-in corpus's, or the --test_data file), which the export records
(`bert_tf2.export.TEST_DATA_FILE`); a model that records none, or whose test file has changed
since, is refused with a request for --data.

The model runs through its `serving_default` signature, as TF Serving runs it, and its
predicted label is `probability >= 0.5`, the served `label`. Writes into --output_dir (default
E/eval-<version>, beside the SavedModel and never inside it; TF Serving ignores non-numeric
names there):

  report.json                 every number below, the reliability bins, the worst mistakes
  roc.png, precision_recall.png, confusion_matrix.png, reliability.png
  training_curves.png         with --history

and prints a short table. The metric functions are pure functions of numpy arrays (0/1 labels,
P(positive)) so they can be tested against hand-computed values.
"""

import dataclasses
import json
import sys
import time
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from absl import flags, logging
import numpy as np
from sklearn import metrics as sk_metrics

from bert_tf2 import cli
from bert_tf2 import config as config_lib
from bert_tf2 import data
from bert_tf2 import flags as project_flags
from bert_tf2 import io_utils
from bert_tf2 import lite
from bert_tf2 import plots
from bert_tf2 import predict

FLAGS = flags.FLAGS
CLASS_NAMES = ("negative", "positive")  # label 0, label 1
# The served model's cut: label = probability >= it.
DEFAULT_THRESHOLD = config_lib.DECISION_THRESHOLD
REPORT_FILE = "report.json"
PLOT_FILES = {"roc": "roc.png", "precision_recall": "precision_recall.png",
              "confusion_matrix": "confusion_matrix.png", "reliability": "reliability.png"}
TRAINING_CURVES_FILE = "training_curves.png"


# ---------------------------------------------------------------------------------------------
# Metrics: pure functions of 0/1 labels and P(positive)
# ---------------------------------------------------------------------------------------------

def _validated(labels, probabilities) -> Tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    p = np.asarray(probabilities, dtype=np.float64)
    if y.ndim != 1 or p.shape != y.shape:
        raise ValueError(f"labels and probabilities must be 1-D and of one length, got shapes "
                         f"{y.shape} and {p.shape}")
    if not len(y):
        raise ValueError("no examples to evaluate")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        raise ValueError("probabilities must be finite and within [0, 1]")
    return y.astype(np.int64), p


def classification_metrics(labels, probabilities,
                           threshold: float = DEFAULT_THRESHOLD) -> Dict[str, object]:
    """Accuracy, per-class and macro precision/recall/F1, ROC-AUC, PR-AUC, log loss, Brier.

    The predicted label is `probability >= threshold`. PR-AUC is the average precision of
    the positive class (the step-wise area, not the trapezoidal one, which is optimistic).
    ROC-AUC needs both classes and PR-AUC a positive: each is None when it is undefined.
    The confusion matrix has true labels as rows and predicted labels as columns.
    """
    y, p = _validated(labels, probabilities)
    predicted = (p >= threshold).astype(np.int64)
    precision, recall, f1, support = sk_metrics.precision_recall_fscore_support(
        y, predicted, labels=[0, 1], zero_division=0)
    per_class = {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                        "f1": float(f1[i]), "support": int(support[i])}
                 for i, name in enumerate(CLASS_NAMES)}
    both_classes = len(np.unique(y)) == 2
    return {
        "threshold": float(threshold),
        "accuracy": float(sk_metrics.accuracy_score(y, predicted)),
        "per_class": per_class,
        "macro": {"precision": float(np.mean(precision)), "recall": float(np.mean(recall)),
                  "f1": float(np.mean(f1))},
        "roc_auc": float(sk_metrics.roc_auc_score(y, p)) if both_classes else None,
        "pr_auc": float(sk_metrics.average_precision_score(y, p)) if y.any() else None,
        "log_loss": float(sk_metrics.log_loss(y, p, labels=[0, 1])),
        "brier_score": float(sk_metrics.brier_score_loss(y, p, pos_label=1)),
        "confusion_matrix": sk_metrics.confusion_matrix(y, predicted, labels=[0, 1]).tolist(),
    }


def calibration(labels, probabilities, num_bins: int = 10) -> Dict[str, object]:
    """Expected calibration error (ECE) of P(positive) and the reliability curve behind it.

    Bins are equal-width: bin i holds i/num_bins <= p < (i+1)/num_bins (the last one also
    p = 1). In each bin, the mean predicted probability is compared with the fraction of
    positives; ECE = sum over bins of (examples in bin / all examples) * |gap|, and MCE is the
    largest gap. Empty bins have count 0 and None for the means.
    """
    if num_bins < 1:
        raise ValueError(f"num_bins must be at least 1, got {num_bins}")
    y, p = _validated(labels, probabilities)
    index = np.minimum((p * num_bins).astype(np.int64), num_bins - 1)
    counts = np.bincount(index, minlength=num_bins)
    sum_p = np.bincount(index, weights=p, minlength=num_bins)
    sum_y = np.bincount(index, weights=y, minlength=num_bins)
    gaps = np.abs(sum_y - sum_p) / np.maximum(counts, 1)
    bins = [{"lower": i / num_bins, "upper": (i + 1) / num_bins, "count": int(counts[i]),
             "mean_probability": float(sum_p[i] / counts[i]) if counts[i] else None,
             "fraction_positive": float(sum_y[i] / counts[i]) if counts[i] else None}
            for i in range(num_bins)]
    return {"ece": float(np.sum(counts * gaps) / len(y)), "mce": float(np.max(gaps)),
            "num_bins": num_bins, "bins": bins}


def threshold_sweep(labels, probabilities) -> Dict[str, np.ndarray]:
    """Every distinct way a threshold splits the examples, with its confusion counts.

    Sorting by probability, descending, the cut after the k highest is predicted positive
    (ties never split). Each cut's threshold is the midpoint between the probabilities on
    either side of it (half of the lowest for "all positive"; halfway from the highest to 1,
    or just above 1, for "all negative"), so `p >= threshold` reproduces it on this data with
    the widest margin. Returns arrays: threshold, tp, fp, fn, tn, accuracy, f1.
    """
    y, p = _validated(labels, probabilities)
    order = np.argsort(-p, kind="stable")
    p_sorted, y_sorted = p[order], y[order]
    n = len(p)
    cuts = np.concatenate([[0], np.flatnonzero(p_sorted[:-1] > p_sorted[1:]) + 1, [n]])
    tp = np.concatenate([[0], np.cumsum(y_sorted)])[cuts]
    fp = cuts - tp
    positives = int(y.sum())
    fn, tn = positives - tp, (n - positives) - fp
    above = np.concatenate([[1.0], p_sorted])[cuts]   # lowest probability predicted positive
    below = np.concatenate([p_sorted, [0.0]])[cuts]   # highest probability predicted negative
    thresholds = (above + below) / 2
    thresholds[0] = (p_sorted[0] + 1) / 2 if p_sorted[0] < 1 else np.nextafter(1.0, 2.0)
    thresholds[-1] = p_sorted[-1] / 2
    inner = slice(1, len(cuts) - 1)  # a midpoint can round onto `below`: fall back to `above`
    thresholds[inner] = np.where(thresholds[inner] > below[inner], thresholds[inner],
                                 above[inner])
    denominator = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros(len(cuts)), where=denominator > 0)
    return {"threshold": thresholds, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "accuracy": (tp + tn) / n, "f1": f1}


def best_thresholds(labels, probabilities) -> Dict[str, Dict[str, float]]:
    """The thresholds that maximise F1 (of the positive class) and accuracy on this data.

    Of thresholds that tie, the one closest to 0.5 wins (then the lower). Each entry also gives
    accuracy, F1, precision and recall at that threshold.
    """
    sweep = threshold_sweep(labels, probabilities)
    result = {}
    for metric in ("f1", "accuracy"):
        values = sweep[metric]
        tied = np.flatnonzero(values >= values.max() - 1e-12)
        best = min(tied, key=lambda i: (abs(sweep["threshold"][i] - DEFAULT_THRESHOLD),
                                        sweep["threshold"][i]))
        tp, fp, fn = (int(sweep[k][best]) for k in ("tp", "fp", "fn"))
        result[metric] = {"threshold": float(sweep["threshold"][best]),
                          "accuracy": float(sweep["accuracy"][best]),
                          "f1": float(sweep["f1"][best]),
                          "precision": tp / (tp + fp) if tp + fp else 0.0,
                          "recall": tp / (tp + fn) if tp + fn else 0.0}
    return result


def most_confidently_wrong(labels, probabilities, count: int,
                           threshold: float = DEFAULT_THRESHOLD) -> List[int]:
    """Indices of up to `count` misclassified examples, most confident (in the wrong label) first.

    Confidence in the predicted label is p for a positive prediction and 1 - p for a negative
    one. Ties keep data order.
    """
    y, p = _validated(labels, probabilities)
    predicted = (p >= threshold).astype(np.int64)
    wrong = np.flatnonzero(predicted != y)
    confidence = np.where(predicted == 1, p, 1 - p)[wrong]
    return wrong[np.argsort(-confidence, kind="stable")][:max(count, 0)].tolist()


def curves(labels, probabilities) -> Dict[str, np.ndarray]:
    """ROC (fpr, tpr) and precision-recall (precision, recall) curve points, for the plots."""
    y, p = _validated(labels, probabilities)
    result = {}
    if len(np.unique(y)) == 2:
        result["fpr"], result["tpr"], _ = sk_metrics.roc_curve(y, p)
    if y.any():
        result["precision"], result["recall"], _ = sk_metrics.precision_recall_curve(y, p)
    return result


def evaluate_predictions(labels, probabilities, *, texts: Optional[Sequence[str]] = None,
                         threshold: float = DEFAULT_THRESHOLD, num_bins: int = 10,
                         num_wrong: int = 10) -> Dict[str, object]:
    """Everything above in one report dict (JSON-ready; the curves are left out)."""
    y, p = _validated(labels, probabilities)
    report = {"num_examples": int(len(y)), "num_positive": int(y.sum())}
    report.update(classification_metrics(y, p, threshold))
    report["calibration"] = calibration(y, p, num_bins)
    report["best_thresholds"] = best_thresholds(y, p)
    report["most_confidently_wrong"] = [
        {"index": i, "text": texts[i] if texts is not None else None, "label": int(y[i]),
         "probability": float(p[i]), "predicted": int(p[i] >= threshold)}
        for i in most_confidently_wrong(y, p, num_wrong, threshold)]
    return report


# ---------------------------------------------------------------------------------------------
# Metrics of K classes: multiclass (class ids, [n, K] probabilities) and multilabel ([n, K] 0/1)
# ---------------------------------------------------------------------------------------------

def _per_class(class_names: Sequence[str], precision, recall, f1, support) -> Dict[str, object]:
    return {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                   "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(class_names)}


def multiclass_report(labels, probabilities, class_names: Sequence[str], *,
                      texts: Optional[Sequence[object]] = None,
                      num_wrong: int = 10) -> Dict[str, object]:
    """Accuracy, macro/micro F1, per-class precision/recall/F1/support, the K x K confusion
    matrix (true classes as rows), log loss, and each class's most confident errors."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    if y.ndim != 1 or p.shape != (len(y), len(class_names)) or not len(y):
        raise ValueError(f"expected {len(class_names)} probabilities per label, got shapes "
                         f"{y.shape} and {p.shape}")
    predicted = p.argmax(axis=1)
    ids = list(range(len(class_names)))
    scores = sk_metrics.precision_recall_fscore_support(y, predicted, labels=ids,
                                                        zero_division=0)
    errors = {}
    for i, name in enumerate(class_names):
        wrong = np.flatnonzero((y == i) & (predicted != i))
        wrong = wrong[np.argsort(-p[wrong, predicted[wrong]], kind="stable")][:num_wrong]
        errors[name] = [{"index": int(j), "text": texts[j] if texts is not None else None,
                         "predicted": class_names[predicted[j]],
                         "probability": float(p[j, predicted[j]])} for j in wrong]
    return {
        "task": "multiclass", "num_examples": int(len(y)), "class_names": list(class_names),
        "accuracy": float(sk_metrics.accuracy_score(y, predicted)),
        "macro_f1": float(sk_metrics.f1_score(y, predicted, average="macro", zero_division=0)),
        "micro_f1": float(sk_metrics.f1_score(y, predicted, average="micro", zero_division=0)),
        "per_class": _per_class(class_names, *scores),
        "log_loss": float(sk_metrics.log_loss(y, p / p.sum(axis=1, keepdims=True),
                                              labels=ids)),
        "confusion_matrix": sk_metrics.confusion_matrix(y, predicted, labels=ids).tolist(),
        "most_confidently_wrong": errors,
    }


def multilabel_report(labels, probabilities, class_names: Sequence[str], *,
                      threshold: float = DEFAULT_THRESHOLD) -> Dict[str, object]:
    """Micro/macro F1, subset accuracy (every label right), Hamming loss, and per label its
    precision/recall/F1/support and ROC-AUC (None where a label is always or never on)."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    if y.ndim != 2 or p.shape != y.shape or y.shape[1] != len(class_names) or not len(y):
        raise ValueError(f"expected [n, {len(class_names)}] labels and probabilities, got "
                         f"shapes {y.shape} and {p.shape}")
    predicted = (p >= threshold).astype(np.int64)
    per_label = _per_class(class_names, *sk_metrics.precision_recall_fscore_support(
        y, predicted, zero_division=0))
    for i, name in enumerate(class_names):
        both = 0 < y[:, i].sum() < len(y)
        per_label[name]["roc_auc"] = (float(sk_metrics.roc_auc_score(y[:, i], p[:, i]))
                                      if both else None)
        per_label[name]["f1_by_threshold"] = {
            f"{t:.1f}": float(sk_metrics.f1_score(y[:, i], p[:, i] >= t, zero_division=0))
            for t in SWEPT_THRESHOLDS}
    return {
        "task": "multilabel", "num_examples": int(len(y)), "class_names": list(class_names),
        "threshold": float(threshold),
        "micro_f1": float(sk_metrics.f1_score(y, predicted, average="micro", zero_division=0)),
        "macro_f1": float(sk_metrics.f1_score(y, predicted, average="macro", zero_division=0)),
        "subset_accuracy": float(sk_metrics.accuracy_score(y, predicted)),
        "label_accuracy": float(1.0 - sk_metrics.hamming_loss(y, predicted)),
        "hamming_loss": float(sk_metrics.hamming_loss(y, predicted)),
        "never_predicted": [name for i, name in enumerate(class_names)
                            if not predicted[:, i].any()],
        "per_label": per_label,
    }


# The thresholds a multilabel report scores each label's F1 at (`f1_by_threshold`): a label
# never predicted at 0.5 may be at a lower one.
SWEPT_THRESHOLDS = tuple(i / 10 for i in range(1, 10))


def format_class_report(report: Mapping[str, object]) -> str:
    """The short table printed for a multiclass or multilabel report."""
    per_class = report.get("per_class") or report["per_label"]
    width = max(10, *(len(name) + 2 for name in per_class))
    lines = [f"Model {report.get('saved_model', '?')}",
             f"Data  {report.get('data', '?')}: {report['num_examples']} examples, "
             f"{len(per_class)} classes ({report['task']})"]
    summary = _multilabel_summary(report) if report["task"] == "multilabel" else []
    lines += summary[:2 if report.get("never_predicted") else 1]  # the headline first
    lines.append(f"{'':{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
    for name, m in per_class.items():
        lines.append(f"{name:{width}}{m['precision']:10.3f}{m['recall']:10.3f}{m['f1']:10.3f}"
                     f"{m['support']:10d}")
    if report["task"] == "multiclass":
        lines.append(f"accuracy {report['accuracy']:.3f}  macro F1 {report['macro_f1']:.3f}  "
                     f"micro F1 {report['micro_f1']:.3f}  log loss {report['log_loss']:.3f}")
        for name, errors in report["most_confidently_wrong"].items():
            for error in errors[:3]:
                lines.append(f"  {name} -> {error['predicted']} p={error['probability']:.3f}  "
                             f"{_one_line(_joined(error['text']))}")
    else:
        lines += summary[2 if report.get("never_predicted") else 1:]  # the threshold sweep
    return "\n".join(lines)


def _multilabel_summary(report: Mapping[str, object]) -> List[str]:
    """The headline figures of a multilabel report, the labels it never predicts, and each
    label's F1 over the swept thresholds."""
    lines = [f"micro F1 {report['micro_f1']:.3f}  macro F1 {report['macro_f1']:.3f}  subset "
             f"accuracy {report['subset_accuracy']:.3f}  (per-label accuracy "
             f"{report['label_accuracy']:.3f}, Hamming loss {report['hamming_loss']:.3f})"]
    never = report["never_predicted"]
    if never:
        lines.append(f"NEVER PREDICTED at threshold {report['threshold']}: {len(never)} of "
                     f"{len(report['class_names'])} labels ({', '.join(never)})")
    per_label = report["per_label"]
    width = max(10, *(len(name) + 2 for name in per_label))
    thresholds = list(next(iter(per_label.values()))["f1_by_threshold"])
    lines.append(f"{'F1 at':{width}}" + "".join(f"{t:>6}" for t in thresholds))
    for name, m in per_label.items():
        lines.append(f"{name:{width}}" + "".join(f"{f1:6.2f}"
                                                 for f1 in m["f1_by_threshold"].values()))
    return lines


def _joined(text: object) -> Optional[str]:
    """A text, or a (text, text_b) pair as 'text ‖ text_b'."""
    return " ‖ ".join(text) if isinstance(text, (tuple, list)) else text


# ---------------------------------------------------------------------------------------------
# Report: plots, JSON, the printed table
# ---------------------------------------------------------------------------------------------

def write_plots(labels, probabilities, report: Mapping[str, object],
                output_dir: str) -> Dict[str, str]:
    """The ROC, PR, confusion-matrix and reliability PNGs; returns {plot: file name}.

    ROC needs both classes and PR a positive example; a plot that is undefined is left out.
    """
    points = curves(labels, probabilities)
    written = {}
    path = lambda name: io_utils.join(output_dir, PLOT_FILES[name])  # noqa: E731
    if "fpr" in points:
        plots.plot_roc(points["fpr"], points["tpr"], report["roc_auc"], path("roc"))
        written["roc"] = PLOT_FILES["roc"]
    if "precision" in points:
        plots.plot_precision_recall(points["recall"], points["precision"], report["pr_auc"],
                                    report["num_positive"] / report["num_examples"],
                                    path("precision_recall"))
        written["precision_recall"] = PLOT_FILES["precision_recall"]
    plots.plot_confusion_matrix(report["confusion_matrix"], CLASS_NAMES,
                                path("confusion_matrix"), threshold=report["threshold"])
    written["confusion_matrix"] = PLOT_FILES["confusion_matrix"]
    plots.plot_reliability(report["calibration"]["bins"], report["calibration"]["ece"],
                           path("reliability"))
    written["reliability"] = PLOT_FILES["reliability"]
    return written


def _number(value: Optional[float], digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _one_line(text: Optional[str], width: int = 60) -> str:
    text = " ".join((text or "").split())  # newlines and runs of spaces -> one space
    return text if len(text) <= width else text[:width - 1] + "…"


def format_report(report: Mapping[str, object]) -> str:
    """The short table printed at the end of a run."""
    lines = []
    if "saved_model" in report:
        lines.append(f"Model {report['saved_model']}")
    lines.append(f"Data  {report.get('data', '?')}: {report['num_examples']} examples "
                 f"({report['num_positive']} positive)"
                 + (f", {report['skipped_rows']} bad rows skipped"
                    if report.get("skipped_rows") else ""))
    lines.append(f"{'':10}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
    for name in CLASS_NAMES:
        m = report["per_class"][name]
        lines.append(f"{name:10}{m['precision']:10.3f}{m['recall']:10.3f}{m['f1']:10.3f}"
                     f"{m['support']:10d}")
    m = report["macro"]
    lines.append(f"{'macro':10}{m['precision']:10.3f}{m['recall']:10.3f}{m['f1']:10.3f}"
                 f"{report['num_examples']:10d}")
    lines.append(f"accuracy {_number(report['accuracy'])}  ROC-AUC {_number(report['roc_auc'])}"
                 f"  PR-AUC {_number(report['pr_auc'])}  log loss {_number(report['log_loss'])}"
                 f"  ECE {_number(report['calibration']['ece'])}")
    (tn, fp), (fn, tp) = report["confusion_matrix"]
    lines.append(f"confusion (threshold {report['threshold']:g}; rows true, columns predicted)")
    lines.append(f"{'':10}{CLASS_NAMES[0]:>10}{CLASS_NAMES[1]:>10}")
    lines.append(f"{CLASS_NAMES[0]:10}{tn:10d}{fp:10d}")
    lines.append(f"{CLASS_NAMES[1]:10}{fn:10d}{tp:10d}")
    best = report["best_thresholds"]
    lines.append(f"best threshold for F1: {best['f1']['threshold']:.4f} (F1 "
                 f"{best['f1']['f1']:.3f}); for accuracy: {best['accuracy']['threshold']:.4f} "
                 f"(accuracy {best['accuracy']['accuracy']:.3f})")
    wrong = report["most_confidently_wrong"]
    if wrong:
        lines.append(f"most confidently wrong ({len(wrong)}):")
        for example in wrong:
            lines.append(f"  label {example['label']}  p={example['probability']:.3f}  "
                         f"{_one_line(_joined(example['text']))}")
    return "\n".join(lines)


def default_output_dir(saved_model: str) -> str:
    """eval-<version> beside the SavedModel directory: E/1 -> E/eval-1 (M.tflite ->
    eval-M beside it)."""
    name = io_utils.basename(saved_model)
    if lite.is_lite_model(name):
        name = name[:-len(lite.LITE_SUFFIX)]
    return io_utils.join(io_utils.dirname(saved_model), f"eval-{name}")


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------

def run(config: config_lib.EvaluateConfig) -> Dict[str, object]:
    """Evaluates --saved_model on --data (or the test split it records); returns the report.

    With only --history, plots the training curves and returns {"training_curves": path}.
    """
    if not config.saved_model:
        output_dir = config.output_dir or io_utils.dirname(config.history)
        path = plots.plot_training_curves(config.history,
                                          io_utils.join(output_dir, TRAINING_CURVES_FILE))
        print(f"Training curves: {path}")
        return {"training_curves": path}

    saved_model = (config.saved_model if lite.is_lite_model(config.saved_model)
                   else predict.resolve_saved_model(config.saved_model))
    output_dir = config.output_dir or default_output_dir(saved_model)
    if io_utils.is_inside(output_dir, saved_model):
        raise cli.UserError(f"--output_dir={output_dir} is inside the SavedModel "
                             f"{saved_model}; TF Serving loads that directory")
    io_utils.check_writable_dir(output_dir, "--output_dir")  # before the model loads
    predictor = predict.load_predictor(saved_model)
    examples = _labelled_examples(config, predictor)
    texts = (list(zip(examples.texts, examples.texts_b)) if examples.texts_b
             else examples.texts)

    start = time.perf_counter()
    probabilities = np.concatenate([
        batch_probabilities for _, batch_probabilities, _ in predict.predict_in_batches(
            predictor, texts, config.batch_size, total=len(examples), progress=True)])
    seconds = time.perf_counter() - start

    report = {"saved_model": predictor.path, "data": examples.source,
              "skipped_rows": examples.skipped_rows}
    io_utils.makedirs(output_dir)
    if predictor.task == "binary":
        report.update(evaluate_predictions(examples.labels, probabilities, texts=texts,
                                           num_bins=config.calibration_bins,
                                           num_wrong=config.num_wrong))
        report["plots"] = write_plots(examples.labels, probabilities, report, output_dir)
    else:
        report.update(
            multiclass_report(examples.labels, probabilities, predictor.class_names,
                              texts=texts, num_wrong=config.num_wrong)
            if predictor.task == "multiclass" else
            multilabel_report(examples.labels, probabilities, predictor.class_names))
        report["plots"] = {}
        if predictor.task == "multiclass":
            plots.plot_confusion_matrix(report["confusion_matrix"], predictor.class_names,
                                        io_utils.join(output_dir, PLOT_FILES["confusion_matrix"]),
                                        threshold=None)
            report["plots"]["confusion_matrix"] = PLOT_FILES["confusion_matrix"]
    report["examples_per_second"] = len(examples) / seconds if seconds > 0 else None
    if config.history:
        plots.plot_training_curves(config.history,
                                   io_utils.join(output_dir, TRAINING_CURVES_FILE))
        report["plots"]["training_curves"] = TRAINING_CURVES_FILE
    report["output_dir"] = io_utils.abspath(output_dir)
    io_utils.write_json(report, io_utils.join(output_dir, REPORT_FILE))
    print(format_report(report) if predictor.task == "binary" else format_class_report(report))
    print(f"Report and plots: {report['output_dir']}/ ({REPORT_FILE}, "
          f"{', '.join(report['plots'].values())})")
    return report


def _labelled_examples(config: config_lib.EvaluateConfig,
                       predictor: "predict.Predictor") -> data.Examples:
    """--data (or the test split the model records), labels read and encoded as the model's
    task and classes say."""
    if not config.data:
        return _recorded_test_split(config, predictor)
    return _read_labelled(config.data, config.reader, predictor)


def _read_labelled(pattern: str, reader: config_lib.DataConfig,
                   predictor: "predict.Predictor") -> data.Examples:
    predictor.check_text_b_column(reader.text_b_column)
    overrides = {"task": predictor.task}
    if predictor.task != "binary":
        overrides.update(class_names=predictor.class_names,
                         class_names_source=f"the classes of the model {predictor.path}")
    options = data.reader_options(reader, **overrides)
    examples = data.read_examples(pattern, **options)
    return data.encode_labels({"train": examples}, options["labels"])["train"]


def recorded_test_data(model_path: str) -> Optional[Dict[str, object]]:
    """The test split a model records (`export.test_data_record`: an export's TEST_DATA_FILE,
    a .tflite file's metadata entry `test_data`), or None where it records none."""
    if lite.is_lite_model(model_path):
        with io_utils.open(model_path, "rb") as f:
            return lite.read_metadata(f.read(), source=model_path).get("test_data")
    from bert_tf2 import export  # pylint: disable=g-import-not-at-top  (TensorFlow)
    return export.read_test_data(model_path)


def _recorded_test_split(config: config_lib.EvaluateConfig,
                         predictor: "predict.Predictor") -> data.Examples:
    """The test split the model was scored on in training, read as training read it; a
    UserError asking for --data where the model records none, or the file has changed."""
    from bert_tf2 import export  # pylint: disable=g-import-not-at-top  (TensorFlow)
    record = recorded_test_data(predictor.path)
    if record is None:
        raise cli.UserError(f"{predictor.path} does not record the test data it was trained "
                            f"with ({export.TEST_DATA_FILE}): pass --data=your labelled test "
                            "file")
    if record["source"] is None:
        raise cli.UserError(f"{predictor.path} was trained without --test_data, so it has no "
                            "test data to be evaluated on: pass --data=your labelled test file")
    if record["source"] == export.BUILTIN_TEST_DATA:
        examples = data.encode_labels(data.builtin_corpus_splits(), data.LabelSpec())["test"]
    else:
        if not all(map(io_utils.isfile, data.matching_files(record["source"]) or [""])):
            raise cli.UserError(f"{record['source']}, the test data {predictor.path} was "
                                "trained with, is not there: pass --data=where it is now")
        examples = _read_labelled(record["source"],
                                  dataclasses.replace(config.reader, **record["reader"]),
                                  predictor)
    read, recorded = data.fingerprint(examples), record["fingerprint"]
    if read != recorded:
        raise cli.UserError(
            f"{examples.source}, the test data {predictor.path} was trained with, has changed "
            f"since ({recorded['examples']} examples then, {read['examples']} now, or other "
            f"texts or labels): pass --data={examples.source} to evaluate on it as it is")
    logging.info("No --data: evaluating on the model's test data, %s", examples.source)
    return examples


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Defines every flag `run` reads: model, data and evaluation flags."""
    project_flags.define_inference_flags(flag_values)
    project_flags.define_labelled_reading_flags(flag_values)
    project_flags.define_evaluation_flags(flag_values)


def main(argv):
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    sys.stdout.reconfigure(encoding="utf-8", errors="backslashreplace")
    run(config_lib.EvaluateConfig.from_flags(FLAGS))


if __name__ == "__main__":
    cli.run("evaluate", main, define_flags,
            other_commands_flags=config_lib.EVALUATE_OTHER_FLAGS)
