"""Batch prediction: every input row answered, in order, from text, CSV, JSONL and stdin."""

import bz2
import csv
import gzip
import io
import json
import os
import re
import subprocess
import sys
import uuid

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import numpy as np
import pytest

from bert_tf2 import cli, data, io_utils, predict
from tests.conftest import REPO_ROOT
from tests.tiny_fixtures import predict_config


@pytest.fixture(scope="module")
def predictor(tiny_training_run):
    return predict.Predictor(tiny_training_run["saved_model"])


@pytest.fixture
def run_predict(tiny_training_run, predictor, monkeypatch):
    """Runs the CLI in process, with the model loaded once for the module."""
    monkeypatch.setattr(predict, "Predictor", lambda path: predictor)

    def run(*args, stdin: bytes = None):
        stdout = io.StringIO()
        summary = predict.run(predict_config(f"--saved_model={tiny_training_run['saved_model']}",
                                             *args),
                              stdin=io.BytesIO(stdin) if stdin is not None else None,
                              stdout=stdout)
        return summary, stdout.getvalue()

    return run


def _check_answers(rows, predictor, texts):
    """Rows are the texts in order, each with the probability the model gives it alone."""
    assert [row["text"] for row in rows] == texts
    probabilities, labels = predictor(texts)
    np.testing.assert_allclose([float(row["probability"]) for row in rows], probabilities,
                               rtol=1e-5, atol=1e-6)
    assert [int(row["label"]) for row in rows] == labels.tolist()
    for row in rows:
        assert 0.0 <= float(row["probability"]) <= 1.0
        assert int(row["label"]) == int(float(row["probability"]) >= 0.5)


ODD_TEXTS = ["这本书很好看，推荐！", "", "   ", "表情😀👍", "零宽\u200b空格", "nul\x00字符",
             "分隔\u2028符", "tab\tand \"quotes\", commas", "\ufeff中间的BOM", "最后一行没有换行"]


def test_plain_text_from_stdin_answers_blank_lines_and_odd_characters(run_predict, predictor):
    # Mixed line endings; a BOM at the start; the last line has no line ending.
    raw = "\ufeff" + "".join(text + ("\r\n" if i % 2 else "\n")
                             for i, text in enumerate(ODD_TEXTS[:-1])) + ODD_TEXTS[-1]
    summary, out = run_predict("--input=-", "--batch_size=4", stdin=raw.encode("utf-8"))
    rows = [json.loads(line) for line in out.splitlines()]  # splitlines: JSON escapes U+2028
    assert len(out.strip().split("\n")) == len(ODD_TEXTS) == summary["rows"]
    assert [row["line"] for row in rows] == list(range(1, len(ODD_TEXTS) + 1))
    assert list(rows[0]) == ["line", "text", "probability", "label"]
    _check_answers(rows, predictor, ODD_TEXTS)
    assert summary["skipped_rows"] == 0 and summary["texts_per_second"] > 0
    # The batch size changes nothing.
    _, out_one = run_predict("--input=-", "--batch_size=1", stdin=raw.encode("utf-8"))
    np.testing.assert_allclose([json.loads(line)["probability"] for line in out_one.splitlines()],
                               [row["probability"] for row in rows], rtol=1e-5, atol=1e-6)


def test_csv_with_bom_quoted_newlines_and_extra_columns_to_csv(run_predict, predictor,
                                                               tmp_path):
    source = tmp_path / "reviews.csv"
    source.write_bytes(("\ufeffid,评论,stars\n"
                        '1,"好，很好",5\n'
                        '2,"第一行\n第二行，有""引号""",1\n'
                        "3,,3\n"                           # an empty text is still a text
                        '4,"多,逗,号",4\n').encode("utf-8"))
    output = tmp_path / "out" / "predictions.csv"
    summary, stdout = run_predict(f"--input={source}", "--text_column=评论",
                                  f"--output={output}", "--batch_size=3")
    assert stdout == "" and summary["rows"] == 4
    with open(output, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["line"] for row in rows] == ["2", "3", "5", "6"]  # where each row starts
    _check_answers(rows, predictor, ["好，很好", '第一行\n第二行，有"引号"', "", "多,逗,号"])
    assert os.listdir(output.parent) == ["predictions.csv"]  # no scratch file left behind


def test_jsonl_to_jsonl_with_format_flag(run_predict, predictor, tmp_path):
    source = tmp_path / "texts.jsonl"
    lines = [json.dumps({"text": "很好", "id": 1}, ensure_ascii=False),
             "",  # a blank line in JSONL is not a row
             json.dumps({"id": 2, "text": ""}),
             json.dumps({"text": "行\u2028分隔"}, ensure_ascii=False),  # raw U+2028 in a string
             '{"text": "lone \\ud800 surrogate"}']
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    output = tmp_path / "predictions.out"
    summary, _ = run_predict(f"--input={source}", f"--output={output}", "--format=jsonl")
    rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert summary["rows"] == len(rows) == 4
    assert [row["line"] for row in rows] == [1, 3, 4, 5]
    assert rows[3]["text"] == "lone \ud800 surrogate"  # written back as the JSON escape
    _check_answers(rows[:3], predictor, ["很好", "", "行\u2028分隔"])


@pytest.mark.parametrize("name, content, message", [
    ("r.jsonl", '{"text": "好"}\n{"text": "坏"}\n{"text": "断了\n{"text": "差"}\n',
     r"r\.jsonl:3: not a JSON object"),
    ("r.jsonl", '{"text": "好"}\n[1, 2]\n', r"r\.jsonl:2: expected a JSON object"),
    ("r.jsonl", '{"text": "好"}\n{"text": 5}\n', r"r\.jsonl:2: column 'text' must be text"),
    ("r.csv", 'text,id\n好,1\n"多行\n文本",2\n坏,3,extra\n', r"r\.csv:5: 3 fields"),
    ("r.txt", "好\n坏\n".encode("utf-8") + "差\n".encode("gbk"), r"r\.txt:3: not valid UTF-8"),
])
def test_a_bad_row_stops_the_run_naming_file_and_line(run_predict, tmp_path, name, content,
                                                      message):
    source = tmp_path / name
    if isinstance(content, bytes):
        source.write_bytes(content)
    else:
        source.write_text(content, encoding="utf-8")
    output = tmp_path / "out" / "p.jsonl"
    with pytest.raises(data.DataError, match=message):
        run_predict(f"--input={source}", f"--output={output}", "--batch_size=1")
    assert not output.exists() and os.listdir(output.parent) == []  # nothing half-written


def test_skip_bad_rows_counts_them_and_answers_the_rest(run_predict, tmp_path):
    source = tmp_path / "r.jsonl"
    source.write_text('{"text": "好"}\n{"text": "断了\n{"text": null}\n[3]\n{"text": "差"}\n',
                      encoding="utf-8")
    summary, out = run_predict(f"--input={source}", "--skip_bad_rows")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(row["line"], row["text"]) for row in rows] == [(1, "好"), (5, "差")]
    assert summary["skipped_rows"] == 3
    source = tmp_path / "r.csv"
    source.write_text('text\n好\n坏,extra\n差\n', encoding="utf-8")
    summary, out = run_predict(f"--input={source}", "--skip_bad_rows", "--format=csv")
    assert [row["text"] for row in csv.DictReader(io.StringIO(out))] == ["好", "差"]
    assert summary["skipped_rows"] == 1


def test_a_missing_column_stops_even_with_skip_bad_rows(run_predict, tmp_path):
    source = tmp_path / "r.csv"
    source.write_text("review,id\n好,1\n", encoding="utf-8")
    with pytest.raises(data.DataError, match=r"r\.csv:2: no column 'text'.*--text_column"):
        run_predict(f"--input={source}", "--skip_bad_rows")


def test_batches_are_read_as_needed_not_all_at_once():
    consumed = []

    def rows():
        for i in range(10):
            consumed.append(i)
            yield str(i)

    def fake_predictor(texts):
        return np.full(len(texts), 0.75, np.float32), np.ones(len(texts), np.int64)

    batches = predict.predict_in_batches(fake_predictor, rows(), 4, read_ahead=2)
    first, probabilities, _ = next(batches)
    assert first == ["0", "1", "2", "3"] and len(consumed) == 8  # a window of 2 batches
    assert [len(batch) for batch, _, _ in batches] == [4, 2]
    with pytest.raises(ValueError):
        next(predict.predict_in_batches(fake_predictor, rows(), 0))


def test_a_window_is_predicted_by_length_and_answered_in_input_order():
    calls = []

    def by_length(texts):
        calls.append([len(text) for text in texts])
        return np.array([len(text) / 100 for text in texts], np.float32), np.zeros(len(texts))

    texts = ["a" * n for n in (9, 1, 5, 3, 7, 2, 8)]
    answered = [(item, float(p)) for batch, probabilities, _ in predict.predict_in_batches(
        by_length, texts, 3) for item, p in zip(batch, probabilities)]
    assert [item for item, _ in answered] == texts
    assert [p for _, p in answered] == pytest.approx([len(t) / 100 for t in texts])
    assert calls == [[1, 2, 3], [5, 7, 8], [9]]  # each call holds texts of similar length


def test_line_endings_and_formats_when_reading(tmp_path):
    path = tmp_path / "mac.txt"
    path.write_bytes(b"one\rtwo\r\n\rthree")  # lone CR, CRLF, a blank line, no final newline
    assert list(predict.read_texts(str(path))) == [(1, "one"), (2, "two"), (3, ""),
                                                   (4, "three")]
    assert data.file_format("x.JSONL") == data.file_format("x.json.bz2") == "jsonl"
    assert data.file_format("-") == data.file_format("x.txt") == "text"
    assert predict.output_format_of("x.tsv") == "tsv"
    assert predict.output_format_of("x.txt") == "jsonl"
    stream = io.BytesIO("\ufefftext\tid\n好\t1\n".encode("utf-8"))
    assert list(predict.read_texts("<stdin>", input_format="tsv", stream=stream)) == [(2, "好")]


def test_a_headerless_txt_with_column_names_is_scored_by_its_text_column_as_train_reads_it(
        run_predict, predictor, tmp_path):
    source = tmp_path / "news.txt"
    source.write_text("好吃\t1\n难吃\t0\n\t1\n", encoding="utf-8")
    summary, out = run_predict(f"--input={source}", "--column_names=text,label")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [row["line"] for row in rows] == [1, 2, 3] and summary["rows"] == 3
    _check_answers(rows, predictor, ["好吃", "难吃", ""])
    examples = data.read_examples(str(source), column_names=("text", "label"),
                                  skip_bad_rows=True)
    assert examples.texts == ("好吃", "难吃")  # the texts train and evaluate read (not the empty)
    # Without --column_names a .txt is plain text in every command: train refuses it.
    _, out = run_predict(f"--input={source}")
    assert [json.loads(line)["text"] for line in out.splitlines()] == ["好吃\t1", "难吃\t0", "\t1"]
    with pytest.raises(data.DataError, match="a .txt file is plain text"):
        data.read_examples(str(source))


@pytest.mark.parametrize("name, args, message", [
    ("r.txt", ("--input_format=text", "--column_names=text,label"),
     r"r\.txt: --input_format=text reads one text a line, which has no columns: drop "
     "--column_names"),
    ("r.jsonl", ("--column_names=text,label",), r"r\.jsonl: JSONL rows name their fields; drop "
     "--column_names"),
    ("r.txt", ("--text_b_column=b",), r"r\.txt: plain text holds one text a line; a pair model"),
    ("r.csv", ("--output={tmp}/p.jsonl.gz",), r"--output=.*p\.jsonl\.gz: predict writes "
     r"uncompressed text; write to stdout and compress that \(--output=- \| gzip > "),
])
def test_a_flag_that_cannot_apply_is_refused_before_the_model_loads(run_constant, tmp_path,
                                                                    name, args, message):
    source = tmp_path / name
    source.write_text("text,label\n", encoding="utf-8")
    with pytest.raises(cli.UserError, match=message):
        run_constant(f"--input={source}", *[arg.format(tmp=tmp_path) for arg in args])
    assert run_constant.loads == []


@pytest.mark.parametrize("name, compress", [("reviews.csv.gz", gzip.compress),
                                            ("reviews.txt.gz", gzip.compress),
                                            ("reviews.jsonl.bz2", bz2.compress)])
def test_compressed_input_is_read_as_what_it_holds(run_predict, predictor, tmp_path, name,
                                                   compress):
    texts = ["好,很好", "", "差"]
    content = {".csv": "text,id\n" + "".join(f'"{t}",{i}\n' for i, t in enumerate(texts)),
               ".txt": "\n".join(texts) + "\n",
               ".jsonl": "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n"
                                 for t in texts)}[os.path.splitext(data.uncompressed_name(name))[1]]
    source = tmp_path / name
    source.write_bytes(compress(content.encode("utf-8")))
    _, out = run_predict(f"--input={source}")
    rows = [json.loads(line) for line in out.splitlines()]
    _check_answers(rows, predictor, texts)
    if name.endswith(".txt.gz"):  # stdin too: by its first bytes
        _, piped = run_predict("--input=-", stdin=source.read_bytes())
        assert piped == out


def test_resolve_saved_model_picks_the_highest_version(tmp_path):
    for version in ("1", "2", "10", "eval-10"):
        (tmp_path / version).mkdir()
        (tmp_path / version / "saved_model.pb").write_bytes(b"")
    assert predict.resolve_saved_model(str(tmp_path)) == str(tmp_path / "10")
    assert predict.resolve_saved_model(str(tmp_path / "2")) == str(tmp_path / "2")
    with pytest.raises(FileNotFoundError, match="no saved_model.pb"):
        predict.resolve_saved_model(str(tmp_path / "eval-10" / "missing"))


def test_stdin_to_stdout_as_a_command(tiny_training_run):
    """The one subprocess test: the real entry point, the export dir, a pipe in and out."""
    result = subprocess.run(
        [sys.executable, "-m", "bert_tf2.predict",
         f"--saved_model={tiny_training_run['export_dir']}", "--batch_size=2"],
        input="很好\n\n太差了\n".encode("utf-8"), capture_output=True, timeout=300,
        cwd=REPO_ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, check=False)
    assert result.returncode == 0, result.stderr.decode("utf-8", "replace")[-3000:]
    rows = [json.loads(line) for line in result.stdout.decode("utf-8").splitlines()]
    assert [row["text"] for row in rows] == ["很好", "", "太差了"]
    assert "texts/s" in result.stderr.decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------
# Nothing lost, nothing misleading: outputs checked first, an early stop said out loud
# ---------------------------------------------------------------------------------------------

class _ConstantPredictor:
    """A binary model of single texts that answers 0.75 to everything."""

    path, task, pairs, class_names = "constant", "binary", False, ("0", "1")

    def check_text_b_column(self, text_b_column):
        assert not text_b_column

    def __call__(self, texts):
        return np.full(len(texts), 0.75, np.float32), np.ones(len(texts), np.int64)


@pytest.fixture
def run_constant(monkeypatch):
    """Runs the CLI in process with a model that answers 0.75 to everything, counting loads."""
    loads = []
    monkeypatch.setattr(predict, "Predictor",
                        lambda path: loads.append(path) or _ConstantPredictor())

    def run(*args, stdin: bytes = b"", stdout=None):
        stream = stdin if hasattr(stdin, "read") else io.BytesIO(stdin)
        return predict.run(predict_config("--saved_model=unused", *args), stdin=stream,
                           stdout=stdout if stdout is not None else io.StringIO())

    run.loads = loads
    return run


def test_an_output_that_is_the_input_is_refused_before_anything_is_read(run_constant, tmp_path):
    source = tmp_path / "texts.txt"
    source.write_text("很好\n太差了\n", encoding="utf-8")
    (tmp_path / "link.txt").symlink_to(source)
    os.link(source, tmp_path / "hard.txt")
    for output in (source, tmp_path / "link.txt", tmp_path / "hard.txt",
                   tmp_path / "." / "texts.txt"):
        with pytest.raises(cli.UserError, match=rf"^--output={re.escape(str(output))} is the "
                           "--input file: .* choose another --output$"):
            run_constant(f"--input={source}", f"--output={output}", "--overwrite")
    assert source.read_text(encoding="utf-8") == "很好\n太差了\n" and run_constant.loads == []


def test_an_existing_output_is_replaced_only_with_overwrite(run_constant, tmp_path):
    output = tmp_path / "p.jsonl"
    output.write_text("earlier predictions\n", encoding="utf-8")
    with pytest.raises(cli.UserError, match=rf"^--output={re.escape(str(output))} already "
                       "exists; pass --overwrite to replace it"):
        run_constant("--input=-", f"--output={output}", stdin="好\n".encode())
    assert output.read_text(encoding="utf-8") == "earlier predictions\n"
    assert run_constant.loads == []
    summary = run_constant("--input=-", f"--output={output}", "--overwrite",
                           stdin="好\n".encode())
    assert summary["rows"] == 1 and json.loads(output.read_text(encoding="utf-8"))["text"] == "好"


def test_an_output_that_cannot_be_written_fails_before_the_model_loads(run_constant, tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(cli.UserError, match=rf"^--output={re.escape(str(tmp_path))} is a "
                       "directory; name a file$"):
        run_constant(f"--output={tmp_path}")
    output = tmp_path / "a_file" / "p.jsonl"
    with pytest.raises(cli.UserError, match=rf"^--output={re.escape(str(output))} cannot be "
                       rf"written: {re.escape(str(tmp_path / 'a_file'))} is not a writable "
                       r"directory \(.*\)$") as error:
        run_constant(f"--output={output}")
    assert ".tmp-" not in str(error.value) and run_constant.loads == []


class _PipeClosedAfter(io.StringIO):
    """stdout of a pipe whose reader goes away after `rows` rows."""

    def __init__(self, rows: int):
        super().__init__()
        self.rows = rows

    def write(self, text):
        if self.getvalue().count("\n") >= self.rows:
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)


class _InterruptedAfter(io.BytesIO):
    """stdin on which the user presses Ctrl-C after `lines` lines."""

    def __init__(self, content: bytes, lines: int):
        super().__init__(content)
        self.lines = lines

    def __next__(self):
        if self.lines == 0:
            raise KeyboardInterrupt
        self.lines -= 1
        return super().__next__()


def test_a_run_to_stdout_that_stops_early_says_how_many_rows_it_wrote(run_constant, tmp_path):
    texts = "".join(f"第{i}条\n" for i in range(10)).encode()
    with pytest.raises(cli.UserError, match=r"^stdout was closed \(broken pipe\); only the "
                       r"first 3 rows were written to stdout: the output is incomplete$"):
        run_constant("--batch_size=2", stdin=texts, stdout=_PipeClosedAfter(3))
    # Rows are read a window of READ_AHEAD_BATCHES batches at a time, and written a window at a
    # time: interrupted while reading the second window, the first one has been written.
    window = 2 * predict.READ_AHEAD_BATCHES
    many = "".join(f"第{i}条\n" for i in range(3 * window)).encode()
    with pytest.raises(cli.Interrupted, match=rf"^interrupted; only the first {window} rows "
                       "were written to stdout: the output is incomplete$") as interrupted:
        run_constant("--batch_size=2", stdin=_InterruptedAfter(many, window + 5))
    assert interrupted.value.exit_status == 130  # as a shell reports a command ended by Ctrl-C
    source = tmp_path / "r.jsonl"
    good = "".join('{"text": "好"}\n' for _ in range(window + 3))
    source.write_text(good + '{"text": "断了\n', encoding="utf-8")
    with pytest.raises(data.DataError, match=rf"r\.jsonl:{window + 4}: not a JSON object: "
                       rf".*--skip_bad_rows.*; only the first {window} rows were written to "
                       r"stdout: the output is incomplete$"):
        run_constant(f"--input={source}", "--batch_size=2")
    output = tmp_path / "p.jsonl"
    with pytest.raises(data.DataError,
                       match=rf"; nothing was written to {re.escape(str(output))}$"):
        run_constant(f"--input={source}", "--batch_size=2", f"--output={output}")
    assert not output.exists()


def test_a_missing_or_half_written_saved_model_is_named(tmp_path):
    with pytest.raises(predict.SavedModelError, match=r"no saved_model\.pb there, .* \(it does "
                       r"not exist\); pass an export_dir/<version>"):
        predict.Predictor(str(tmp_path / "missing"))
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "saved_model.pb").write_bytes(b"copied before its variables")
    with pytest.raises(predict.SavedModelError, match=rf"{re.escape(str(tmp_path / '1'))} is a "
                       r"half-written export \(no variables/variables\.index"):
        predict.Predictor(str(tmp_path))


def test_a_tf_hub_module_is_not_taken_for_a_classifier(tiny_hub_modules):
    with pytest.raises(predict.SavedModelError, match=r"is not a text classifier .* takes "
                       r"\['sentences'\], not \['text'\]"):
        predict.Predictor(tiny_hub_modules.preprocess)
    with pytest.raises(predict.SavedModelError, match=r"takes \['input_mask', 'input_type_ids', "
                       r"'input_word_ids'\]"):
        predict.Predictor(tiny_hub_modules.encoder)


def test_a_single_string_is_one_text_and_a_text_that_is_not_str_is_refused(predictor):
    """A str is a sequence of characters: scored as a batch it would be one text each."""
    probabilities, labels = predictor("很好吃")
    assert probabilities.shape == labels.shape == (1,)
    np.testing.assert_allclose(probabilities, predictor(["很好吃"])[0], atol=1e-6)
    assert predictor([])[0].shape == (0,)
    for texts, expected in ((["很好吃", b"\xe5\xa5\xbd"], r"texts\[1\] is bytes .*, not str: "
                             r"pass texts as str \(bytes decoded\)$"),
                            ([None], r"texts\[0\] is NoneType None, not str"),
                            (b"bytes", "texts must be a str or a sequence of str, got bytes$"),
                            (7, "texts must be a str or a sequence of str, got int$")):
        with pytest.raises(cli.UserError, match=expected):
            predictor(texts)


@pytest.mark.slow
def test_a_closed_pipe_ends_the_command_with_a_last_line_and_status_1(tiny_training_run):
    process = subprocess.Popen(
        [sys.executable, "-m", "bert_tf2.predict",
         f"--saved_model={tiny_training_run['export_dir']}", "--batch_size=2"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO_ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    process.stdin.write("".join(f"第{i}条评论\n" for i in range(2000)).encode("utf-8"))
    process.stdin.close()
    first = process.stdout.readline()  # like `| head -1`
    process.stdout.close()
    stderr = process.stderr.read().decode("utf-8", "replace")
    assert process.wait(timeout=300) == 1, stderr[-3000:]
    assert json.loads(first)["line"] == 1
    last_line = stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"predict: stdout was closed \(broken pipe\); only the first \d+ rows "
                        r"were written to stdout: the output is incomplete", last_line), stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr


def test_top_k_on_a_binary_model_is_refused_not_ignored(tiny_training_run, tmp_path):
    with pytest.raises(cli.UserError, match=r"--top_k=2: .* is a binary model, whose rows hold "
                       r"P\(positive\) and the label, no classes to rank; drop --top_k"):
        predict.run(predict_config(f"--saved_model={tiny_training_run['saved_model']}",
                                   "--top_k=2", f"--output={tmp_path / 'p.jsonl'}",
                                   "--noprogress"))
    assert not (tmp_path / "p.jsonl").exists()


def test_an_export_input_and_output_on_a_store_give_the_local_rows(tiny_training_run, predictor,
                                                                   tmp_path, monkeypatch):
    """ram://, TensorFlow's in-memory file system, stands in for gs://: the export, the input
    and the output there, nothing on the local disk, the rows a local run writes."""
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    store = f"ram://{uuid.uuid4().hex}"
    io_utils.publish_next_version(tiny_training_run["saved_model"], f"{store}/export")
    texts = ["好，很好", '第一行\n第二行，有"引号"', "", "多,逗,号", "太差了"] * 30
    source = tmp_path / "reviews.csv.gz"
    with gzip.open(source, "wt", encoding="utf-8", newline="") as f:
        csv.writer(f, lineterminator="\r\n").writerows([["id", "评论"], *enumerate(texts)])
    io_utils.copy(str(source), f"{store}/in/reviews.csv.gz")
    args = ("--text_column=评论", "--batch_size=16", "--noprogress")
    local = io.StringIO()
    predict.run(predict_config(f"--saved_model={tiny_training_run['export_dir']}",
                               f"--input={source}", *args), stdout=local)

    output = f"{store}/out/predictions.jsonl"
    summary = predict.run(predict_config(f"--saved_model={store}/export",
                                         f"--input={store}/in/reviews.csv.gz",
                                         f"--output={output}", *args))
    assert summary["saved_model"] == f"{store}/export/1" and summary["rows"] == len(texts)
    with io_utils.open(output, encoding="utf-8") as f:
        assert f.read() == local.getvalue()
    assert io_utils.listdir(f"{store}/out") == ["predictions.jsonl"]  # no scratch sibling
    with pytest.raises(cli.UserError, match="already exists; pass --overwrite"):
        predict.run(predict_config(f"--saved_model={store}/export",
                                   f"--input={store}/in/reviews.csv.gz", f"--output={output}",
                                   *args))
    with pytest.raises(cli.UserError, match="is the --input file"):
        predict.run(predict_config(f"--saved_model={store}/export", f"--input={output}",
                                   f"--output={output}", "--overwrite", *args))
    assert os.listdir(tmp_path / "cwd") == []
