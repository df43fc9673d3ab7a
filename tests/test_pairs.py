"""Sentence pairs: binary and multi-label models of two texts, and the client sending pairs.

Each training test runs train -> export -> load (-> predict -> evaluate) on tiny data with the
tiny modules; the client test talks to the stand-in TF Serving of tests/fake_serving.py.
"""

import bert_tf2  # noqa: F401
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (the export's preprocessing needs its ops)

from bert_tf2 import cli, data, evaluate, predict, train
from tests import task_data
from tests.tiny_fixtures import FIXED_SHAPE_ARGS, tiny_train_args, train_config


def test_binary_pairs_serve_two_texts(tiny_hub_modules, corpus_splits, tmp_path):
    files = task_data.pair_files(tmp_path, corpus_splits, lambda i: i % 2)
    result = train.run(train_config(
        *tiny_train_args(tiny_hub_modules, tmp_path / "model", tmp_path / "export"),
        f"--train_data={files['train']}", f"--eval_data={files['dev']}",
        "--text_column=q1", "--text_b_column=q2", *FIXED_SHAPE_ARGS))
    loaded, outputs = task_data.serve(result.export_path, text=["很好", "很差"], text_b=["不错", ""])
    assert set(outputs) == {"probability", "label"} and outputs["probability"].shape == (2,)
    serve = loaded.signatures["serving_default"]
    assert set(serve.structured_input_signature[1]) == {"text", "text_b"}
    classified = task_data.classify(loaded, text=["很好", "很差"], text_b=["不错", ""])
    np.testing.assert_allclose(classified["scores"][:, 1], outputs["probability"], rtol=1e-5)
    # The second text changes the answer: it is packed as segment 1, not ignored.
    second_texts = list(corpus_splits["test"].texts[:32])
    answers = serve(text=tf.constant(["很好"] * 32), text_b=tf.constant(second_texts))
    assert answers["probability"].numpy().std() > 1e-4


def test_multilabel_pairs_train_predict_and_evaluate(tiny_hub_modules, corpus_splits,
                                                     tmp_path):
    labels = ("a|b", "b", "c|a", "a")
    files = task_data.pair_files(tmp_path, corpus_splits, lambda i: labels[i % 4])
    result = train.run(train_config(
        *tiny_train_args(tiny_hub_modules, tmp_path / "model", tmp_path / "export"),
        f"--train_data={files['train']}", f"--eval_data={files['dev']}", "--task=multilabel",
        "--text_column=q1", "--text_b_column=q2", *FIXED_SHAPE_ARGS))
    assert result.class_names == ("a", "b", "c")
    assert {"micro_f1", "macro_f1", "subset_accuracy", "auc"} <= set(result.metrics["dev"])
    loaded, outputs = task_data.serve(result.export_path, text=["很好", "很差"], text_b=["不错", "差"])
    assert set(outputs) == {"probabilities", "labels"}
    np.testing.assert_array_equal(outputs["labels"], outputs["probabilities"] >= 0.5)
    assert task_data.classify(loaded, text=["很好"], text_b=["不错"])["scores"].shape == (1, 3)

    predict.run(task_data.predict_config(result.export_path, f"--input={files['dev']}",
                                "--text_column=q1", "--text_b_column=q2",
                                f"--output={tmp_path / 'p.csv'}"))
    header, first = (tmp_path / "p.csv").read_text(encoding="utf-8").splitlines()[:2]
    assert header == "line,text,text_b,labels,probabilities"
    report = evaluate.run(task_data.evaluate_config(
        result.export_path, f"--data={files['dev']}", "--text_column=q1", "--text_b_column=q2",
        f"--output_dir={tmp_path / 'eval'}"))
    assert report["task"] == "multilabel" and report["num_examples"] == 32
    assert set(report["per_label"]) == {"a", "b", "c"}
    assert 0.0 <= report["subset_accuracy"] <= 1.0
    # One line with the tool's name (cli.UserError), not the module's whole help.
    for tool, run_tool, args in (
            ("predict", predict.run, task_data.predict_config(
                result.export_path, f"--input={files['dev']}", "--text_column=q1",
                f"--output={tmp_path / 'q.csv'}")),
            ("evaluate", evaluate.run, task_data.evaluate_config(
                result.export_path, f"--data={files['dev']}", "--text_column=q1",
                f"--output_dir={tmp_path / 'eval2'}"))):
        with pytest.raises(cli.UserError, match=r"^--saved_model: .* classifies pairs of "
                           r"texts: pass --text_b_column$"):
            run_tool(args)
    assert not (tmp_path / "q.csv").exists()


# ---------------------------------------------------------------------------------------------
# The client, on a multi-class model of pairs
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pair_topics_export(tmp_path_factory, tiny_hub_modules, corpus_splits):
    return task_data.pair_topics_export(tmp_path_factory.mktemp("pair_topics"),
                                        tiny_hub_modules, corpus_splits)


PAIRS = [("比赛很精彩", "球队赢了"), ("股市大涨", ""), ("新手机", "很好用")]


@pytest.fixture(scope="module")
def pair_topics_served(pair_topics_export):
    """The loaded export and its serving_default outputs for PAIRS."""
    return task_data.serve(pair_topics_export, text=[a for a, _ in PAIRS],
                           text_b=[b for _, b in PAIRS])


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
@pytest.mark.parametrize("signature", ["serving_default", "classify"])
def test_the_client_sends_pairs_and_reads_class_names(pair_topics_served, protocol, signature):
    from bert_tf2.serving import client as client_lib
    from tests import fake_serving

    loaded, expected = pair_topics_served
    backend = fake_serving.SavedModelBackend(loaded, "topics")
    server = fake_serving.grpc_server if protocol == "grpc" else fake_serving.rest_server
    with server(backend) as address, client_lib.make_client(
            protocol, address, "topics", timeout=30, retries=0) as client:
        predictions = client.classify_texts(PAIRS, signature)
    assert [(p.text, p.text_b) for p in predictions] == PAIRS
    names = sorted(task_data.TOPICS)
    assert [p.label for p in predictions] == [names[i] for i in expected["label_id"]]
    np.testing.assert_allclose([p.probability for p in predictions],
                               expected["probabilities"].max(axis=1), atol=1e-5)
    assert predictions[0].as_dict()["text_b"] == "球队赢了"


def test_the_client_reads_pairs_from_text_b_flags_and_tab_separated_lines(tmp_path):
    from bert_tf2.serving import client as client_lib
    path = tmp_path / "pairs.txt"
    path.write_text("好\t不错\n\n坏\t\n", encoding="utf-8")
    assert client_lib.read_texts(["甲"], str(path), texts_b=["乙"]) == [
        ("甲", "乙"), ("好", "不错"), ("坏", "")]
    assert client_lib.read_texts([], str(path)) == ["好\t不错", "坏\t"]
    with pytest.raises(cli.UserError, match="2 --text but 1 --text_b"):
        client_lib.read_texts(["a", "b"], None, texts_b=["c"])
    path.write_text("没有第二句\n", encoding="utf-8")
    with pytest.raises(data.DataError, match=r"pairs\.txt:1: no tab; with --pairs"):
        client_lib.read_texts([], str(path), pairs=True)
