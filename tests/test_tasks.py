"""Every task shape: multi-class, multi-label and sentence pairs, from files to the export.

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

from bert_tf2 import config, data, evaluate, export, input_pipeline, predict, train
from tests.tiny_fixtures import FIXED_SHAPE_ARGS, tiny_train_args, train_config

TOPICS = ("体育", "财经", "科技")  # not in sorted order: the model's classes are sorted


def _rows(corpus_splits, split: str, n: int, offset: int = 0):
    examples = corpus_splits[split]
    return [text.replace("\t", " ") for text in examples.texts[offset:offset + n]]


def _write(path: pathlib.Path, lines) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def _serve(saved_model: str, **texts):
    loaded = tf.saved_model.load(saved_model)
    outputs = loaded.signatures["serving_default"](
        **{name: tf.constant(values) for name, values in texts.items()})
    return loaded, {name: value.numpy() for name, value in outputs.items()}


def _classify(loaded, **features):
    examples = [export.text_example(*texts).SerializeToString()
                for texts in zip(*features.values())]
    outputs = loaded.signatures["classify"](inputs=tf.constant(examples))
    return {name: value.numpy() for name, value in outputs.items()}


def _predict_config(saved_model: str, *args: str) -> config.PredictConfig:
    from absl import flags
    flag_values = flags.FlagValues()
    predict.define_flags(flag_values)
    flag_values(["predict", f"--saved_model={saved_model}", "--noprogress", *args])
    return config.PredictConfig.from_flags(flag_values)


def _evaluate_config(saved_model: str, *args: str) -> config.EvaluateConfig:
    from absl import flags
    flag_values = flags.FlagValues()
    evaluate.define_flags(flag_values)
    flag_values(["evaluate", f"--saved_model={saved_model}", *args])
    return config.EvaluateConfig.from_flags(flag_values)


# ---------------------------------------------------------------------------------------------
# Multi-class, from a headerless TSV
# ---------------------------------------------------------------------------------------------

def _topic_files(root: pathlib.Path, corpus_splits, topic_of):
    """Headerless 'text<TAB>topic' .txt files: 96 training and 48 dev rows."""
    files = {}
    for split, n in (("train", 96), ("dev", 48)):
        texts = _rows(corpus_splits, split, n)
        files[split] = _write(root / f"{split}.txt", [f"{text}\t{topic_of(i)}"
                                                      for i, text in enumerate(texts)])
    return files


@pytest.fixture(scope="module")
def multiclass_run(tmp_path_factory, tiny_hub_modules, corpus_splits):
    root = tmp_path_factory.mktemp("multiclass")
    files = _topic_files(root, corpus_splits, lambda i: TOPICS[i % 3])
    result = train.run(train_config(
        *tiny_train_args(tiny_hub_modules, root / "model", root / "export"),
        f"--train_data={files['train']}", f"--eval_data={files['dev']}",
        f"--test_data={files['dev']}", "--task=multiclass", "--column_names=text,label",
        "--class_weights=balanced", "--truncation=head_tail", *FIXED_SHAPE_ARGS))
    return {"result": result, "root": root, "dev": files["dev"]}


def test_multiclass_trains_with_sorted_class_names_and_macro_f1(multiclass_run):
    result = multiclass_run["result"]
    assert result.class_names == tuple(sorted(TOPICS))
    model_dir = pathlib.Path(result.config.model_dir)
    assert (model_dir / "classes.txt").read_text(encoding="utf-8").split() == sorted(TOPICS)
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics == result.metrics
    for split in ("dev", "test"):
        assert {"loss", "accuracy", "macro_f1"} <= set(metrics[split])
        assert 0.0 <= metrics[split]["macro_f1"] <= 1.0


def test_multiclass_export_serves_class_names(multiclass_run):
    saved_model = multiclass_run["result"].export_path
    names = sorted(TOPICS)
    loaded, outputs = _serve(saved_model, text=["比赛很精彩", "股市大涨", "", "新手机发布" * 50])
    assert set(outputs) == {"probabilities", "label", "label_id"}
    assert outputs["probabilities"].shape == (4, 3)
    np.testing.assert_allclose(outputs["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(outputs["label_id"], outputs["probabilities"].argmax(axis=1))
    assert [label.decode() for label in outputs["label"]] == [
        names[i] for i in outputs["label_id"]]
    classified = _classify(loaded, text=["比赛很精彩", "股市大涨"])
    assert classified["classes"].tolist() == [[name.encode() for name in names]] * 2
    np.testing.assert_allclose(classified["scores"], outputs["probabilities"][:2], rtol=1e-5)
    assert export.read_class_names(saved_model) == tuple(names)
    assert os.path.isfile(os.path.join(saved_model, export.WARMUP_FILE))


def test_multiclass_predict_and_evaluate(multiclass_run, tmp_path, capsys):
    saved_model = multiclass_run["result"].export_path
    summary = predict.run(_predict_config(
        saved_model, f"--input={multiclass_run['dev']}", "--input_format=tsv",
        "--column_names=text,label", f"--output={tmp_path / 'p.jsonl'}", "--top_k=2"))
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert summary["rows"] == len(rows) == 48
    assert all(row["label"] in TOPICS and len(row["probabilities"]) == 2 for row in rows)
    assert all(row["probability"] == max(row["probabilities"].values()) for row in rows)

    report = evaluate.run(_evaluate_config(
        saved_model, f"--data={multiclass_run['dev']}", "--column_names=text,label",
        f"--output_dir={tmp_path / 'eval'}"))
    assert report["task"] == "multiclass" and report["num_examples"] == 48
    assert set(report["per_class"]) == set(TOPICS)
    assert sum(m["support"] for m in report["per_class"].values()) == 48
    assert np.asarray(report["confusion_matrix"]).shape == (3, 3)
    assert (tmp_path / "eval" / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "macro F1" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Sentence pairs
# ---------------------------------------------------------------------------------------------

def _pair_files(root: pathlib.Path, corpus_splits, label_of):
    files = {}
    for split, n in (("train", 64), ("dev", 32)):
        first, second = (_rows(corpus_splits, split, n), _rows(corpus_splits, split, n, n))
        files[split] = _write(root / f"{split}.tsv", ["q1\tq2\tlabel"] + [
            f"{a}\t{b}\t{label_of(i)}" for i, (a, b) in enumerate(zip(first, second))])
    return files


def test_binary_pairs_serve_two_texts(tiny_hub_modules, corpus_splits, tmp_path):
    files = _pair_files(tmp_path, corpus_splits, lambda i: i % 2)
    result = train.run(train_config(
        *tiny_train_args(tiny_hub_modules, tmp_path / "model", tmp_path / "export"),
        f"--train_data={files['train']}", f"--eval_data={files['dev']}",
        "--text_column=q1", "--text_b_column=q2", *FIXED_SHAPE_ARGS))
    loaded, outputs = _serve(result.export_path, text=["很好", "很差"], text_b=["不错", ""])
    assert set(outputs) == {"probability", "label"} and outputs["probability"].shape == (2,)
    serve = loaded.signatures["serving_default"]
    assert set(serve.structured_input_signature[1]) == {"text", "text_b"}
    classified = _classify(loaded, text=["很好", "很差"], text_b=["不错", ""])
    np.testing.assert_allclose(classified["scores"][:, 1], outputs["probability"], rtol=1e-5)
    # The second text changes the answer: it is packed as segment 1, not ignored.
    _, swapped = _serve(result.export_path, text=["很好"] * 2, text_b=["很差", "很好很好很好"])
    assert swapped["probability"][0] != swapped["probability"][1]


def test_multilabel_pairs_train_predict_and_evaluate(tiny_hub_modules, corpus_splits,
                                                     tmp_path):
    labels = ("a|b", "b", "c|a", "a")
    files = _pair_files(tmp_path, corpus_splits, lambda i: labels[i % 4])
    result = train.run(train_config(
        *tiny_train_args(tiny_hub_modules, tmp_path / "model", tmp_path / "export"),
        f"--train_data={files['train']}", f"--eval_data={files['dev']}", "--task=multilabel",
        "--text_column=q1", "--text_b_column=q2", "--truncation=tail", *FIXED_SHAPE_ARGS))
    assert result.class_names == ("a", "b", "c")
    assert {"accuracy", "auc"} <= set(result.metrics["dev"])
    loaded, outputs = _serve(result.export_path, text=["很好", "很差"], text_b=["不错", "差"])
    assert set(outputs) == {"probabilities", "labels"}
    np.testing.assert_array_equal(outputs["labels"], outputs["probabilities"] >= 0.5)
    assert _classify(loaded, text=["很好"], text_b=["不错"])["scores"].shape == (1, 3)

    predict.run(_predict_config(result.export_path, f"--input={files['dev']}",
                                "--text_column=q1", "--text_b_column=q2",
                                f"--output={tmp_path / 'p.csv'}"))
    header, first = (tmp_path / "p.csv").read_text(encoding="utf-8").splitlines()[:2]
    assert header == "line,text,text_b,labels,probabilities"
    report = evaluate.run(_evaluate_config(
        result.export_path, f"--data={files['dev']}", "--text_column=q1", "--text_b_column=q2",
        f"--output_dir={tmp_path / 'eval'}"))
    assert report["task"] == "multilabel" and report["num_examples"] == 32
    assert set(report["per_label"]) == {"a", "b", "c"}
    assert 0.0 <= report["subset_accuracy"] <= 1.0
    with pytest.raises(Exception, match="pass --text_b_column"):
        predict.run(_predict_config(result.export_path, f"--input={files['dev']}",
                                    "--text_column=q1", f"--output={tmp_path / 'q.csv'}"))


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
    files = _topic_files(tmp_path, corpus_splits, lambda i: TOPICS[min(i % 5, 2)])
    result = train.run(train_config(
        *tiny_train_args(tiny_hub_modules, tmp_path / "model", tmp_path / "export"),
        f"--train_data={files['train']}", f"--eval_data={files['dev']}", "--task=multiclass",
        "--column_names=text,label", "--trainable_encoder_layers=0", "--class_weights=balanced",
        "--export_best", "--epochs=3", "--train_steps=0", "--learning_rate=1e-2",
        *FIXED_SHAPE_ARGS))
    best = json.loads((tmp_path / "model" / "best" / "best.json").read_text())
    assert best["metric"] == "val_macro_f1" and 1 <= best["epoch"] <= 3
    assert result.metrics["dev"]["macro_f1"] == pytest.approx(best["value"], abs=1e-6)
    _, outputs = _serve(result.export_path, text=["比赛", "股市"])
    assert outputs["probabilities"].shape == (2, 3)


# ---------------------------------------------------------------------------------------------
# The client, on a multi-class model of pairs
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pair_topics_export(tmp_path_factory, tiny_hub_modules, corpus_splits):
    root = tmp_path_factory.mktemp("pair_topics")
    files = _pair_files(root, corpus_splits, lambda i: TOPICS[i % 3])
    return train.run(train_config(
        *tiny_train_args(tiny_hub_modules, root / "model", root / "export"),
        f"--train_data={files['train']}", "--task=multiclass", "--text_column=q1",
        "--text_b_column=q2", *FIXED_SHAPE_ARGS)).export_path


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
@pytest.mark.parametrize("signature", ["serving_default", "classify"])
def test_the_client_sends_pairs_and_reads_class_names(pair_topics_export, protocol, signature):
    from bert_tf2.serving import client as client_lib
    from tests import fake_serving

    loaded = tf.saved_model.load(pair_topics_export)
    pairs = [("比赛很精彩", "球队赢了"), ("股市大涨", ""), ("新手机", "很好用")]
    _, expected = _serve(pair_topics_export, text=[a for a, _ in pairs],
                         text_b=[b for _, b in pairs])
    backend = fake_serving.SavedModelBackend(loaded, "topics")
    server = fake_serving.grpc_server if protocol == "grpc" else fake_serving.rest_server
    with server(backend) as address, client_lib.make_client(
            protocol, address, "topics", timeout=30, retries=0) as client:
        predictions = client.classify_texts(pairs, signature)
    assert [(p.text, p.text_b) for p in predictions] == pairs
    names = sorted(TOPICS)
    assert [p.label for p in predictions] == [names[i] for i in expected["label_id"]]
    np.testing.assert_allclose([p.probability for p in predictions],
                               expected["probabilities"].max(axis=1), atol=1e-5)
    assert predictions[0].as_dict()["text_b"] == "球队赢了"


def test_the_client_reads_pairs_from_text_b_flags_and_tab_separated_lines(tmp_path):
    from absl import app
    from bert_tf2.serving import client as client_lib
    path = tmp_path / "pairs.txt"
    path.write_text("好\t不错\n\n坏\t\n", encoding="utf-8")
    assert client_lib.read_texts(["甲"], str(path), texts_b=["乙"]) == [
        ("甲", "乙"), ("好", "不错"), ("坏", "")]
    assert client_lib.read_texts([], str(path)) == ["好\t不错", "坏\t"]
    with pytest.raises(app.UsageError, match="2 --text but 1 --text_b"):
        client_lib.read_texts(["a", "b"], None, texts_b=["c"])
    path.write_text("没有第二句\n", encoding="utf-8")
    with pytest.raises(data.DataError, match=r"pairs\.txt:1: no tab; with --pairs"):
        client_lib.read_texts([], str(path), pairs=True)
