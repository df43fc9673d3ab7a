"""Every task shape: multi-class and multi-label, from files to the export (pairs: test_pairs).

Each training test runs train -> export -> load -> predict -> evaluate on tiny data, with the
tiny modules: it checks what each stage writes and serves, not how well the model learns.
"""

import json
import os
import pathlib

import bert_tf2  # noqa: F401
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (the export's preprocessing needs its ops)

from bert_tf2 import data, evaluate, export, input_pipeline, predict, train
from tests import task_data
from tests.tiny_fixtures import FIXED_SHAPE_ARGS, tiny_train_args, train_config


# ---------------------------------------------------------------------------------------------
# Multi-class, from a headerless TSV
# ---------------------------------------------------------------------------------------------

def _topic_files(root: pathlib.Path, corpus_splits, topic_of):
    """Headerless 'text<TAB>topic' .txt files: 96 training and 48 dev rows."""
    files = {}
    for split, n in (("train", 96), ("dev", 48)):
        texts = task_data.rows(corpus_splits, split, n)
        files[split] = task_data.write(root / f"{split}.txt",
                                       [f"{text}\t{topic_of(i)}" for i, text in enumerate(texts)])
    return files


@pytest.fixture(scope="module")
def multiclass_run(tmp_path_factory, tiny_hub_modules, corpus_splits):
    root = tmp_path_factory.mktemp("multiclass")
    files = _topic_files(root, corpus_splits, lambda i: task_data.TOPICS[i % 3])
    result = train.run(train_config(
        *tiny_train_args(tiny_hub_modules, root / "model", root / "export"),
        f"--train_data={files['train']}", f"--eval_data={files['dev']}",
        f"--test_data={files['dev']}", "--task=multiclass", "--column_names=text,label",
        "--class_weights=balanced", "--truncation=head_tail", *FIXED_SHAPE_ARGS))
    return {"result": result, "root": root, "dev": files["dev"]}


def test_multiclass_trains_with_sorted_class_names_and_macro_f1(multiclass_run):
    result = multiclass_run["result"]
    assert result.class_names == tuple(sorted(task_data.TOPICS))
    model_dir = pathlib.Path(result.config.model_dir)
    assert ((model_dir / "classes.txt").read_text(encoding="utf-8").split()
            == sorted(task_data.TOPICS))
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics == result.metrics
    for split in ("dev", "test"):
        assert {"loss", "accuracy", "macro_f1"} <= set(metrics[split])
        assert 0.0 <= metrics[split]["macro_f1"] <= 1.0


def test_multiclass_export_serves_class_names(multiclass_run):
    saved_model = multiclass_run["result"].export_path
    names = sorted(task_data.TOPICS)
    loaded, outputs = task_data.serve(saved_model, text=["比赛很精彩", "股市大涨", "", "新手机发布" * 50])
    assert set(outputs) == {"probabilities", "label", "label_id"}
    assert outputs["probabilities"].shape == (4, 3)
    np.testing.assert_allclose(outputs["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(outputs["label_id"], outputs["probabilities"].argmax(axis=1))
    assert [label.decode() for label in outputs["label"]] == [
        names[i] for i in outputs["label_id"]]
    classified = task_data.classify(loaded, text=["比赛很精彩", "股市大涨"])
    assert classified["classes"].tolist() == [[name.encode() for name in names]] * 2
    np.testing.assert_allclose(classified["scores"], outputs["probabilities"][:2], rtol=1e-5)
    assert export.read_class_names(saved_model) == tuple(names)
    assert os.path.isfile(os.path.join(saved_model, export.WARMUP_FILE))


def test_multiclass_predict_and_evaluate(multiclass_run, tmp_path, capsys):
    saved_model = multiclass_run["result"].export_path
    summary = predict.run(task_data.predict_config(
        saved_model, f"--input={multiclass_run['dev']}", "--input_format=tsv",
        "--column_names=text,label", f"--output={tmp_path / 'p.jsonl'}", "--top_k=2"))
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert summary["rows"] == len(rows) == 48
    assert all(row["label"] in task_data.TOPICS and len(row["probabilities"]) == 2 for row in rows)
    assert all(row["probability"] == max(row["probabilities"].values()) for row in rows)

    report = evaluate.run(task_data.evaluate_config(
        saved_model, f"--data={multiclass_run['dev']}", "--column_names=text,label",
        f"--output_dir={tmp_path / 'eval'}"))
    assert report["task"] == "multiclass" and report["num_examples"] == 48
    assert set(report["per_class"]) == set(task_data.TOPICS)
    assert sum(m["support"] for m in report["per_class"].values()) == 48
    assert np.asarray(report["confusion_matrix"]).shape == (3, 3)
    assert (tmp_path / "eval" / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "macro F1" in capsys.readouterr().out


def test_evaluate_names_the_model_as_where_the_classes_came_from(multiclass_run, tmp_path):
    saved_model = multiclass_run["result"].export_path
    path = task_data.write(tmp_path / "dev.txt", ["比赛很精彩\t体育", "新片上映\t娱乐"])
    with pytest.raises(data.SchemaError) as raised:
        evaluate.run(task_data.evaluate_config(saved_model, f"--data={path}",
                                               "--column_names=text,label",
                                               f"--output_dir={tmp_path / 'eval'}"))
    assert str(raised.value) == (
        f"{path}:2: label '娱乐' in column 'label': '娱乐' is not one of the classes of the "
        f"model {saved_model} (体育, 科技, 财经): the data must be labelled with these classes")


# ---------------------------------------------------------------------------------------------
# Multi-label, one text
# ---------------------------------------------------------------------------------------------

def _topics_of(i: int) -> str:
    """One, two or three topics a row, joined by '|'."""
    return "|".join(task_data.TOPICS[(i + k) % 3] for k in range(1 + i % 3))


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory, tiny_hub_modules, corpus_splits):
    root = tmp_path_factory.mktemp("multilabel")
    files = _topic_files(root, corpus_splits, _topics_of)
    result = train.run(train_config(
        *tiny_train_args(tiny_hub_modules, root / "model", root / "export"),
        f"--train_data={files['train']}", f"--eval_data={files['dev']}",
        "--task=multilabel", "--column_names=text,label", *FIXED_SHAPE_ARGS))
    return {"result": result, "dev": files["dev"]}


def test_multilabel_headline_figures_are_f1_and_subset_accuracy_the_same_everywhere(
        multilabel_run, tmp_path, capsys):
    result = multilabel_run["result"]
    dev = result.metrics["dev"]
    assert {"micro_f1", "macro_f1", "subset_accuracy",
            "label_accuracy", "auc"} <= set(dev)
    assert "accuracy" not in dev  # per-label accuracy is named so, beside the headline
    report = evaluate.run(task_data.evaluate_config(
        result.export_path, f"--data={multilabel_run['dev']}", "--column_names=text,label",
        f"--output_dir={tmp_path / 'eval'}"))
    for name in ("micro_f1", "macro_f1", "subset_accuracy", "label_accuracy"):
        assert dev[name] == pytest.approx(report[name], abs=1e-6), name
    per_label = report["per_label"]
    assert report["never_predicted"] == [name for name in report["class_names"]
                                         if per_label[name]["f1"] == 0.0
                                         and per_label[name]["f1_by_threshold"]["0.5"] == 0.0
                                         and per_label[name]["precision"] == 0.0]
    assert all(len(m["f1_by_threshold"]) == 9 for m in per_label.values())
    out = capsys.readouterr().out
    headline = out.splitlines()[2]
    assert headline.startswith("micro F1 ") and "subset accuracy" in headline


def test_multilabel_predicts_the_labels_that_are_on(multilabel_run, tmp_path):
    saved_model = multilabel_run["result"].export_path
    predict.run(task_data.predict_config(
        saved_model, f"--input={multilabel_run['dev']}", "--input_format=tsv",
        "--column_names=text,label", f"--output={tmp_path / 'p.jsonl'}"))
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == 48
    for row in rows:
        assert set(row["probabilities"]) == set(task_data.TOPICS)
        assert row["labels"] == [name for name in sorted(task_data.TOPICS)
                                 if row["probabilities"][name] >= 0.5]


def test_multilabel_training_metrics_agree_with_scikit_learn():
    from sklearn import metrics as sk_metrics
    from bert_tf2 import model as model_lib
    rng = np.random.default_rng(0)
    labels = (rng.random((200, 4)) < [0.5, 0.2, 0.05, 0.0]).astype(np.float32)
    probabilities = rng.random((200, 4)).astype(np.float32) * [1, 1, 0.4, 1]
    decided = probabilities >= 0.5
    _, keras_metrics = model_lib.loss_and_metrics("multilabel", 4)
    expected = {
        "micro_f1": sk_metrics.f1_score(labels, decided, average="micro", zero_division=0),
        "macro_f1": sk_metrics.f1_score(labels, decided, average="macro", zero_division=0),
        "subset_accuracy": sk_metrics.accuracy_score(labels, decided),
        "label_accuracy": 1 - sk_metrics.hamming_loss(labels, decided)}
    assert [metric.name for metric in keras_metrics][:3] == [
        "micro_f1", "macro_f1", "subset_accuracy"]
    for metric in keras_metrics:
        if metric.name in expected:
            for start in range(0, 200, 64):  # in batches, as Keras feeds them
                metric.update_state(labels[start:start + 64], probabilities[start:start + 64])
            assert float(metric.result()) == pytest.approx(expected[metric.name], abs=1e-6)


# ---------------------------------------------------------------------------------------------
# --export_best
# ---------------------------------------------------------------------------------------------

def test_export_best_keeps_the_epoch_with_the_best_dev_score(tiny_hub_modules, corpus_splits,
                                                             tmp_path):
    from tests.tiny_fixtures import corpus_data_flags
    result = train.run(train_config(
        *tiny_train_args(tiny_hub_modules, tmp_path / "model", tmp_path / "export"),
        *corpus_data_flags(tmp_path, corpus_splits, {"train": 64, "dev": 64}),
        "--epochs=3", "--train_steps=0", "--export_best", *FIXED_SHAPE_ARGS))
    history = (tmp_path / "model" / "history.csv").read_text().splitlines()
    header = history[0].split(",")
    scores = [float(row.split(",")[header.index("val_accuracy")]) for row in history[1:]]
    best = json.loads((tmp_path / "model" / "best" / "best.json").read_text())
    assert best["epoch"] == 1 + int(np.argmax(scores)) and best["value"] == max(scores)
    assert result.metrics["dev"]["accuracy"] == pytest.approx(max(scores), abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Reading: headerless files, classes and bad rows (no training)
# ---------------------------------------------------------------------------------------------

def _read(path, **kwargs):
    return data.read_examples(str(path), **kwargs)


def test_headerless_tsv_reads_every_row_and_bad_rows_name_file_and_line(tmp_path):
    path = tmp_path / "news.txt"
    path.write_text("球赛\t体育\n股票\t财经\n只有一列\n", encoding="utf-8")
    multiclass = data.LabelSpec(task="multiclass")
    with pytest.raises(data.DataError, match=r"news\.txt:3: 1 field but --column_names names 2"):
        _read(path, column_names=("text", "label"), labels=multiclass)
    examples = _read(path, column_names=("text", "label"), labels=multiclass,
                     skip_bad_rows=True)
    assert examples.texts == ("球赛", "股票") and examples.labels == ("体育", "财经")
    assert examples.skipped_rows == 1 and examples.origins[0].endswith("news.txt:1")


@pytest.mark.parametrize("content, spec, message", [
    ("text,label\n好,体育\n坏,娱乐\n", dict(task="multiclass", class_names=("体育", "财经")),
     r"r\.csv:3: label '娱乐' in column 'label': '娱乐' is not one of --class_names"),
    ("text,label\n好,体育|娱乐\n", dict(task="multilabel", class_names=("体育", "财经")),
     r"r\.csv:2: .*'娱乐' is not one of --class_names"),
    ("text,label\n好,\n", dict(task="multilabel"), r"r\.csv:2: label '' .* is empty"),
])
def test_unknown_or_missing_labels_are_bad_rows(tmp_path, content, spec, message):
    path = tmp_path / "r.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(data.DataError, match=message):
        _read(path, labels=data.LabelSpec(**spec))


def test_an_empty_second_text_is_a_bad_row(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("q1\tq2\tlabel\n好\t好的\t1\n坏\t\t0\n", encoding="utf-8")
    with pytest.raises(data.DataError, match=r"pairs\.tsv:3: column 'q2' must be non-empty"):
        _read(path, text_column="q1", text_b_column="q2")
    examples = _read(path, text_column="q1", text_b_column="q2", skip_bad_rows=True)
    assert examples.texts_b == ("好的",) and examples.skipped_rows == 1


def test_class_names_come_from_training_and_unseen_labels_stop_the_run(tmp_path):
    spec = data.LabelSpec(task="multiclass")
    train_file, dev_file = tmp_path / "train.tsv", tmp_path / "dev.tsv"
    train_file.write_text("text\tlabel\n甲\t财经\n乙\t体育\n", encoding="utf-8")
    dev_file.write_text("text\tlabel\n丙\t体育\n丁\t娱乐\n", encoding="utf-8")
    splits = data.load_splits(str(train_file), str(train_file), None, labels=spec)
    assert splits["train"].class_names == ("体育", "财经")
    assert splits["train"].labels == (1, 0)
    with pytest.raises(data.DataError, match=r"dev\.tsv:3: label '娱乐' of the dev split never "
                                             r"occurs in the training data"):
        data.load_splits(str(train_file), str(dev_file), None, labels=spec)
    # Named up front, a class may be missing from training; the order is the one given.
    named = data.LabelSpec(task="multiclass", class_names=("娱乐", "体育", "财经"))
    splits = data.load_splits(str(train_file), str(dev_file), None, labels=named)
    assert splits["dev"].labels == (1, 0) and splits["train"].class_names == named.class_names
    one_class = tmp_path / "one.tsv"
    one_class.write_text("text\tlabel\n甲\t财经\n乙\t财经\n", encoding="utf-8")
    with pytest.raises(data.DataError, match="needs at least two classes"):
        data.load_splits(str(one_class), None, None, labels=spec)


def test_multilabel_labels_become_rows_over_the_classes(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "甲", "label": "b| a"}\n{"text": "乙", "label": "c"}\n',
                    encoding="utf-8")
    splits = data.load_splits(str(path), None, None,
                              labels=data.LabelSpec(task="multilabel"))
    assert splits["train"].class_names == ("a", "b", "c")
    assert splits["train"].labels == ((1, 1, 0), (0, 0, 1))


def test_balanced_class_weights():
    examples = data.Examples(("a",) * 4, (0, 0, 0, 1), "x", class_names=("p", "q"))
    assert train.balanced_class_weights(examples, "multiclass", "balanced") == [4 / 6, 2.0]
    assert train.balanced_class_weights(examples, "multiclass", "none") is None


# ---------------------------------------------------------------------------------------------
# Truncation (no model: token ids stand for wordpieces)
# ---------------------------------------------------------------------------------------------

def _tokens(*rows):
    """A [batch, (words), (wordpieces)] ragged batch with one wordpiece per word."""
    return tf.ragged.constant([[[t] for t in row] for row in rows], dtype=tf.int64)


@pytest.mark.parametrize("truncation, expected", [
    ("head", None),
    ("tail", [[4, 5, 6, 7, 8, 9], [1, 2]]),
    ("head_tail", [[0, 5, 6, 7, 8, 9], [1, 2]]),
])
def test_trim_segments_keeps_the_chosen_end(truncation, expected):
    tokens = _tokens(list(range(10)), [1, 2])
    trimmed = input_pipeline.trim_segments([tokens], seq_length=8, truncation=truncation)
    if expected is None:
        assert trimmed[0] is tokens  # bert_pack_inputs keeps the head itself
    else:
        assert trimmed[0].to_list() == expected


def test_trim_segments_shares_the_budget_between_pairs_round_robin():
    first, second = _tokens(list(range(10))), _tokens(list(range(100, 104)))
    a, b = input_pipeline.trim_segments([first, second], seq_length=9, truncation="tail")
    # 9 - 3 special tokens = 6: round robin gives 3 and 3.
    assert a.to_list() == [[7, 8, 9]] and b.to_list() == [[101, 102, 103]]


def test_a_frozen_encoder_trains_a_weighted_multiclass_head_and_keeps_its_best_epoch(
        tiny_hub_modules, corpus_splits, tmp_path):
    # Skewed: the third topic has three times the examples of each other one.
    files = _topic_files(tmp_path, corpus_splits, lambda i: task_data.TOPICS[min(i % 5, 2)])
    result = train.run(train_config(
        *tiny_train_args(tiny_hub_modules, tmp_path / "model", tmp_path / "export"),
        f"--train_data={files['train']}", f"--eval_data={files['dev']}", "--task=multiclass",
        "--column_names=text,label", "--trainable_encoder_layers=0", "--class_weights=balanced",
        "--export_best", "--epochs=3", "--train_steps=0", "--learning_rate=1e-2",
        *FIXED_SHAPE_ARGS))
    best = json.loads((tmp_path / "model" / "best" / "best.json").read_text())
    assert best["metric"] == "val_macro_f1" and 1 <= best["epoch"] <= 3
    assert result.metrics["dev"]["macro_f1"] == pytest.approx(best["value"], abs=1e-6)
    _, outputs = task_data.serve(result.export_path, text=["比赛", "股市"])
    assert outputs["probabilities"].shape == (2, 3)


