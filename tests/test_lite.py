"""The TFLite export: its tokenizer's ids, its outputs against the SavedModel's for every task,
its quantizations, and predict/evaluate reading a .tflite file.

The exports are of untrained tiny classifiers (the tiny encoder under a head with large random
weights, so that any difference in the tokens moves the outputs), one per task, built once.
"""

import json
import logging
import pathlib
import subprocess
import sys

import bert_tf2  # noqa: F401
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (the export's preprocessing needs its ops)

from bert_tf2 import (cli, config, evaluate, export, export_lite, lite, lite_tokenization,
                      model, predict, tokenization)
from tests import task_data, tiny_fixtures
from tests.conftest import REPO_ROOT
from tests.hostile_texts import HOSTILE, INVALID_UTF8

EXTRA_TEXTS = (
    "ＡＢＣ，！？（）：；“”【】《》、。～％＃＠",  # full-width punctuation and letters
    "Café ÉCOLE naïve Ångström Ελληνικά ΟΔΟΣ İstanbul ß ǅ ﬁ Ⅻ",  # accents, case mapping
    "好评👍🏽👨‍👩‍👧‍👦🇨🇳，物流🚀",  # emoji with modifiers and joiners
    "很\x00好\x01\x1f\x7f\x85\u200b\u200e\ufeff看\ue000\U000f0000\ufffd",  # controls
    "a" * 199 + " " + "b" * 201,  # the longest word WordPiece splits, and a longer one
)
# (task, pairs, truncation, class names) of the exports built here; "binary" is the tiny
# training run's export.
EXPORTS = {
    "multiclass_pairs": ("multiclass", True, "tail", tuple(sorted(task_data.TOPICS))),
    "multilabel": ("multilabel", False, "head_tail", ("a", "b", "c", "d")),
}


def _texts(corpus_splits, n: int = 120):
    return list(corpus_splits["test"].texts[:n]) + list(HOSTILE.values()) + list(EXTRA_TEXTS)


def _export(root: pathlib.Path, modules, task: str, pairs: bool, truncation: str,
            class_names) -> str:
    tf.keras.utils.set_random_seed(1)
    classifier = model.build_classifier_for(
        config.ModelConfig(dropout=0.1, trainable_encoder_layers=-1,
                           rebuild_encoder_under_policy=True, rebuild_encoder=True),
        modules.encoder, task=task, num_classes=len(class_names))
    head = classifier.get_layer("classifier")
    head.kernel.assign(tf.random.normal(head.kernel.shape, stddev=3.0))
    text_classifier = model.build_text_classifier(
        model.load_preprocessor(modules.preprocess), classifier,
        seq_length=tiny_fixtures.TINY_SEQ_LENGTH, pairs=pairs, truncation=truncation)
    return export.export_text_classifier(text_classifier, str(root / "export"), task=task,
                                         class_names=class_names, pairs=pairs)


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_hub_modules, tiny_training_run):
    """Per task: the SavedModel and its TFLite file (`none`); for binary also `dynamic` and
    `int8` files."""
    made = {}
    for name in ("binary", *EXPORTS):
        root = tmp_path_factory.mktemp(name)
        saved_model = (tiny_training_run["saved_model"] if name == "binary" else
                       _export(root, tiny_hub_modules, *EXPORTS[name]))
        spec = export_lite.read_spec(saved_model)
        module, _ = export_lite.build_lite_module(saved_model, spec)
        files = {}
        for quantization in ("none",) + (("dynamic", "int8") if name == "binary" else ()):
            calibration = (export_lite.calibration_data(
                [f"{i}很好看的书，值得一读" for i in range(20)], spec.pairs)
                if quantization == "int8" else None)
            files[quantization] = str(root / f"model_{quantization}.tflite")
            export_lite.write_lite(module, spec, files[quantization], quantization, calibration)
        made[name] = {"saved_model": saved_model, "files": files, "spec": spec}
    return made


def _serve(saved_model: str, texts, pairs: bool):
    feeds = {"text": tf.constant(texts)}
    if pairs:
        feeds["text_b"] = tf.constant(texts[1:] + texts[:1])
    outputs = tf.saved_model.load(saved_model).signatures["serving_default"](**feeds)
    return {name: value.numpy() for name, value in outputs.items()}


@pytest.mark.slow  # tokenizes the whole corpus twice
def test_tflite_tokenizer_gives_the_project_tokenizers_ids(corpus_splits, tiny_vocab_file):
    """Every text of the built-in corpus, the hostile-input strings and the extra cases, with
    the tokenizer converted to TFLite and run by LiteRT with the TF Text ops."""
    tokenizer = lite_tokenization.LiteBertTokenizer(tiny_vocab_file, export.MAX_TEXT_BYTES)
    serve = tf.function(lambda text: dict(zip(("ids", "splits"), tokenizer(text))),
                        input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [serve.get_concrete_function()], tokenizer)
    converter.allow_custom_ops = True
    runner = lite.interpreter_of(converter.convert()).get_signature_runner()
    texts = [text.encode("utf-8") for split in corpus_splits.values() for text in split.texts]
    texts += [text.encode("utf-8") for text in [*HOSTILE.values(), *EXTRA_TEXTS]]
    texts += list(INVALID_UTF8.values())
    reference = tokenization.OriginalBertTokenizer(vocab_file=tiny_vocab_file)
    mismatches = []
    for start in range(0, len(texts), 4096):
        batch = texts[start:start + 4096]
        expected = reference(tf.constant(batch)).merge_dims(-2, -1).to_list()
        got = runner(text=np.array(batch, dtype=object))
        actual = tf.RaggedTensor.from_row_splits(got["ids"], got["splits"]).to_list()
        mismatches += [text for text, a, b in zip(batch, actual, expected) if a != b]
    assert len(texts) > 17_000
    assert not mismatches, mismatches[:5]


def test_final_sigma_follows_pythons_rule(real_layout_dir):
    """Capital sigma lower-cases to final sigma after a cased letter, case-ignorable
    characters skipped (an apostrophe, a removed zero-width space, a combining accent)."""
    vocab = str(real_layout_dir / "vocab.txt")
    texts = ["ΟΔΟΣ", "ΑΣ'", "Α\u200bΣ", "ΑΣ'Α", "Σ", "ΑΣΑ", "Α\u0301Σ", "ΑΣ.Β", "好ΑΣ好"]
    tokenizer = lite_tokenization.LiteBertTokenizer(vocab, export.MAX_TEXT_BYTES)
    ids, splits = tokenizer(tf.constant(texts))
    tokens = tokenization.read_vocab(vocab)
    rows = tf.RaggedTensor.from_row_splits(ids, splits).to_list()
    got = [[tokens[i] for i in row] for row in rows]
    assert got == [["ο", "##δ", "##ο", "##ς"], ["α", "##ς", "'"], ["α", "##ς"],
                   ["α", "##σ", "'", "α"], ["σ"], ["α", "##σ", "##α"], ["α", "##ς"],
                   ["α", "##σ", ".", "β"], ["好", "α", "##ς", "好"]]
    assert got == [[tokens[i] for i in row]
                   for row in lite_tokenization.reference_ids(texts, vocab)]


@pytest.mark.parametrize("name", ["binary", *EXPORTS])
def test_every_task_gives_the_exports_outputs(exports, corpus_splits, name):
    made = exports[name]
    spec = made["spec"]
    classifier = lite.LiteClassifier(made["files"]["none"])
    assert (classifier.task, classifier.pairs, classifier.class_names) == (
        spec.task, spec.pairs, spec.class_names)
    texts = _texts(corpus_splits)
    expected = _serve(made["saved_model"], texts, spec.pairs)
    actual = classifier.predict(texts, texts[1:] + texts[:1] if spec.pairs else None)
    assert set(actual) == set(expected)
    for output, value in expected.items():
        assert actual[output].shape == value.shape, output
        if value.dtype == np.float32:
            np.testing.assert_allclose(actual[output], value, atol=1e-4, err_msg=output)
        else:
            np.testing.assert_array_equal(actual[output], value, err_msg=output)
    spread = np.ptp(expected["probability" if spec.task == "binary" else "probabilities"])
    assert spread > 1e-3  # outputs that tell the texts apart


def test_one_signature_with_the_exports_inputs_and_no_flex_ops(exports):
    for name, made in exports.items():
        interpreter = lite.interpreter_of(open(made["files"]["none"], "rb").read())
        signatures = interpreter.get_signature_list()
        assert list(signatures) == ["serving_default"]
        assert sorted(signatures["serving_default"]["inputs"]) == (
            ["text", "text_b"] if made["spec"].pairs else ["text"]), name
        # pylint: disable-next=protected-access
        ops = {op["op_name"] for op in interpreter._get_ops_details()}
        assert not any(op.startswith("Flex") for op in ops), ops


def test_a_batch_of_no_texts(exports):
    outputs = lite.LiteClassifier(exports["binary"]["files"]["none"]).predict([])
    assert outputs["probability"].shape == (0,)


@pytest.mark.parametrize("quantization,tolerance", [("dynamic", 0.05), ("int8", 0.15)])
def test_quantized_files_stay_close_to_float(exports, corpus_splits, quantization, tolerance):
    files = exports["binary"]["files"]
    texts = _texts(corpus_splits)
    float_ = lite.LiteClassifier(files["none"]).predict(texts)["probability"]
    quantized = lite.LiteClassifier(files[quantization]).predict(texts)["probability"]
    assert 0 < np.max(np.abs(quantized - float_)) < tolerance


def test_predict_and_evaluate_read_a_tflite_file(exports, corpus_splits, tmp_path):
    made = exports["multiclass_pairs"]
    rows = [{"text": text, "text_b": text[::-1], "label": task_data.TOPICS[i % 3]}
            for i, text in enumerate(corpus_splits["test"].texts[:40])]
    data_file = task_data.write(tmp_path / "pairs.jsonl",
                                [json.dumps(row, ensure_ascii=False) for row in rows])
    written = {}
    for kind, path in (("saved_model", made["saved_model"]), ("lite", made["files"]["none"])):
        output = tmp_path / f"{kind}.jsonl"
        predict.run(task_data.predict_config(path, f"--input={data_file}", f"--output={output}",
                                             "--text_b_column=text_b"))
        written[kind] = [json.loads(line) for line in output.read_text("utf-8").splitlines()]
    assert len(written["lite"]) == 40
    for saved, mine in zip(written["saved_model"], written["lite"]):
        assert mine == {**saved, "probability": pytest.approx(saved["probability"], abs=1e-4),
                        "probabilities": pytest.approx(saved["probabilities"], abs=1e-4)}
    report = evaluate.run(task_data.evaluate_config(
        made["files"]["none"], f"--data={data_file}", "--text_b_column=text_b",
        f"--output_dir={tmp_path / 'eval'}"))
    assert report["saved_model"] == made["files"]["none"]
    assert report["accuracy"] == pytest.approx(np.mean(
        [row["label"] == truth["label"] for row, truth in zip(written["saved_model"], rows)]))


def test_an_export_without_its_packing_is_refused(exports, tmp_path):
    import shutil
    copy = tmp_path / "old"
    shutil.copytree(exports["binary"]["saved_model"], copy)
    (copy / export.PACKING_FILE).unlink()
    with pytest.raises(cli.UserError, match="seq_length and truncation"):
        export_lite.export_lite(str(copy), str(tmp_path / "m.tflite"), "none")


def test_int8_needs_calibration_texts_of_the_models_own_kind(exports, caplog):
    with pytest.raises(cli.UserError, match="--representative_data"):
        export_lite.representative_texts(None, exports["multilabel"]["spec"])
    with caplog.at_level(logging.INFO):
        texts = export_lite.representative_texts(None, exports["binary"]["spec"])
    assert len(texts) == export_lite.REPRESENTATIVE_TEXTS
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("built-in corpus" in message for message in warnings), caplog.records


def test_calibration_texts_are_read_as_predict_reads_them(exports, tmp_path):
    """A headerless TSV of pairs, its columns named by --column_names; a JSONL field named
    by --text_column."""
    pairs = exports["multiclass_pairs"]["spec"]
    tsv = task_data.write(tmp_path / "pairs.tsv", [f"问题{i}\t回答{i}\t体育" for i in range(400)])
    texts = export_lite.representative_texts(str(tsv), pairs, text_column="q",
                                             text_b_column="a", column_names=("q", "a", "y"))
    assert texts[:2] == [("问题0", "回答0"), ("问题1", "回答1")]
    assert len(texts) == export_lite.REPRESENTATIVE_TEXTS
    with pytest.raises(cli.UserError, match="pairs of texts: pass --text_b_column"):
        export_lite.representative_texts(str(tsv), pairs, column_names=("text", "a", "y"))
    jsonl = task_data.write(tmp_path / "reviews.jsonl", ['{"评论": "很好看"}'])
    assert export_lite.representative_texts(str(jsonl), exports["binary"]["spec"],
                                            text_column="评论") == ["很好看"]


@pytest.mark.slow  # starts the command
@pytest.mark.parametrize("args, expected", [
    (["--saved_model=E", "--output=model.lite"],
     "--output must name a .tflite file (the file to write), got 'model.lite'"),
    (["--saved_model=E", "--output=m.tflite", "--representative_data=train.tsv"],
     "--representative_data calibrates --quantization=int8 only; --quantization=dynamic "
     "would ignore it: drop it, or pass --quantization=int8"),
    (["--saved_model=E", "--output=m.tflite", "--text_b_column=q2"],
     "--text_b_column says how --representative_data is read, and there is none: drop it, or "
     "pass --representative_data with --quantization=int8"),
])
def test_export_lite_refuses_flag_mistakes_in_one_line(args, expected, tmp_path):
    result = subprocess.run([sys.executable, "-m", "bert_tf2.export_lite", *args],
                            cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1:] == [f"export_lite: {expected}"]
    assert "USAGE" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "m.tflite").exists()


def test_a_directory_or_a_path_for_content_is_answered_in_one_line(exports):
    path = exports["binary"]["files"]["none"]
    with pytest.raises(lite.LiteModelError, match=r"is a directory: LiteClassifier takes the "
                                                  r"\.tflite file"):
        lite.LiteClassifier(str(pathlib.Path(path).parent))
    with pytest.raises(TypeError, match=r"takes the file's content \(bytes: open\(path, 'rb'\)"):
        lite.read_metadata(path)
    with open(path, "rb") as f:
        assert lite.read_metadata(f.read())["task"] == "binary"
    with pytest.raises(lite.LiteModelError, match="is not a TFLite file"):
        lite.read_metadata(b"not a flatbuffer")


def test_a_single_string_or_pair_is_one_text_not_its_characters(exports):
    text, text_b = "很好吃", "一般般"
    binary, pairs = exports["binary"], exports["multiclass_pairs"]
    for predictor in (predict.Predictor(binary["saved_model"]),
                      predict.LitePredictor(binary["files"]["none"])):
        one, batch = predictor(text), predictor([text])
        assert [output.shape for output in one] == [(1,), (1,)]
        np.testing.assert_allclose(one[0], batch[0], atol=1e-6)
        with pytest.raises(lite.TextsError, match=r"texts\[1\] is bytes b'\\xe5.*not str"):
            predictor([text, text.encode()])
    for predictor in (predict.Predictor(pairs["saved_model"]),
                      predict.LitePredictor(pairs["files"]["none"])):
        one, batch = predictor((text, text_b)), predictor([(text, text_b)])
        assert [output.shape for output in one] == [(1, 3), (1,)]
        np.testing.assert_allclose(one[0], batch[0], atol=1e-6)
        with pytest.raises(lite.TextsError, match="classifies pairs of texts: pass a"):
            predictor(text)
        with pytest.raises(lite.TextsError, match=r"texts\[1\] is str '一般般', not a \(text, "):
            predictor([(text, text_b), text_b])
    classifier = lite.LiteClassifier(binary["files"]["none"])
    assert classifier.predict(text)["probability"].shape == (1,)
    with pytest.raises(lite.TextsError, match=r"texts\[0\] is int 3, not str"):
        classifier.predict([3])
    outputs = lite.LiteClassifier(pairs["files"]["none"]).predict(text, text_b)
    assert outputs["label_id"].shape == (1,) and outputs["probabilities"].shape == (1, 3)


def test_a_graph_that_packs_otherwise_than_the_export_is_refused(exports):
    """The check export_lite runs before converting: here against a wrong seq_length."""
    made = exports["binary"]
    wrong = export_lite.LiteSpec(**{**made["spec"].__dict__, "seq_length": 16})
    module, loaded = export_lite.build_lite_module(made["saved_model"], wrong)
    with pytest.raises(cli.UserError, match="other probabilities"):
        export_lite.check_against_export(module, loaded, wrong, export.warmup_texts(32))


def test_predict_refuses_a_file_that_is_not_an_export_lite_model(tmp_path):
    bogus = tmp_path / "x.tflite"
    bogus.write_bytes(b"not a flatbuffer")
    with pytest.raises(predict.SavedModelError):
        predict.load_predictor(str(bogus))
    with pytest.raises(predict.SavedModelError, match="no such TFLite file"):
        predict.load_predictor(str(tmp_path / "missing.tflite"))
