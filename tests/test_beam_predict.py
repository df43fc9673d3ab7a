"""Batch prediction on Apache Beam: predict's rows from every file of a pattern, sharded out,
unreadable rows in the dead letter, the hurried user's mistakes refused before the job."""

import csv
import glob
import io
import json
import os
import subprocess
import sys

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from absl import flags
import numpy as np
import pytest

from bert_tf2 import beam_predict, cli, config, predict
from tests import task_data
from tests.conftest import REPO_ROOT
from tests.tiny_fixtures import predict_config

TWO_WORKERS = ("--direct_num_workers=2", "--direct_running_mode=multi_processing")


@pytest.fixture(scope="module")
def saved_model(tiny_training_run):
    return tiny_training_run["saved_model"]


@pytest.fixture(scope="module")
def pair_topics_export(tmp_path_factory, tiny_hub_modules, corpus_splits):
    """A multi-class model of sentence pairs: both the pairs and the classes of a handler."""
    root = tmp_path_factory.mktemp("pair_topics")
    return (task_data.pair_topics_export(root, tiny_hub_modules, corpus_splits),
            str(root / "dev.tsv"))


def run_beam(*args: str):
    """`python -m bert_tf2.beam_predict ARGS`, in this process: its flags split as the command
    splits them, Beam's options passed on."""
    flag_values = flags.FlagValues()
    beam_predict.define_flags(flag_values)
    rest = beam_predict.parse_flags(["beam_predict", "--noprogress", *args], flag_values)
    return beam_predict.run(config.PredictConfig.from_flags(flag_values), rest[1:])


def shards(prefix) -> list:
    return sorted(glob.glob(f"{prefix}-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9]"))


def read_jsonl(paths) -> list:
    return [json.loads(line) for path in paths
            for line in open(path, encoding="utf-8").read().splitlines()]


def predict_rows(saved_model, path, *args) -> list:
    stdout = io.StringIO()
    predict.run(predict_config(f"--saved_model={saved_model}", f"--input={path}",
                               "--noprogress", *args), stdout=stdout)
    return [json.loads(line) for line in stdout.getvalue().splitlines()]


def write_reviews(path, texts, *, extra: str = "") -> str:
    """A CSV file 'id,评论' with `texts` (quoted: commas, quotes and newlines are fine)."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "评论"])
        writer.writerows(enumerate(texts))
        f.write(extra)
    return str(path)


@pytest.fixture(scope="module")
def two_files(tmp_path_factory, corpus_splits):
    root = tmp_path_factory.mktemp("reviews")
    texts = list(corpus_splits["test"].texts[:90])
    texts[3], texts[50] = "", "第一行\n第二行，有\"引号\""
    return [write_reviews(root / "a.csv", texts[:40]), write_reviews(root / "b.csv", texts[40:])]


def check_same_as_predict(rows, saved_model, files, *predict_args):
    """`rows` are predict's rows of `files`, each once, with the file they came from."""
    expected = {(path, row["line"]): row for path in files
                for row in predict_rows(saved_model, path, *predict_args)}
    got = {(row["file"], row["line"]): row for row in rows}
    assert len(got) == len(rows) == len(expected) and set(got) == set(expected)
    for key, row in got.items():
        want = expected[key]
        assert list(row) == ["file", *want] and row["text"] == want["text"]
        assert row.get("label") == want.get("label") and row.get("labels") == want.get("labels")
        if "probability" in want:
            np.testing.assert_allclose(row["probability"], want["probability"], atol=1e-6)
        for name, probability in want.get("probabilities", {}).items():
            np.testing.assert_allclose(row["probabilities"][name], probability, atol=1e-6)


@pytest.mark.slow  # starts two worker processes
def test_two_workers_over_two_csv_files_give_predicts_rows(saved_model, two_files, tmp_path):
    pattern = os.path.join(os.path.dirname(two_files[0]), "*.csv")
    summary = run_beam(f"--saved_model={saved_model}", f"--input={pattern}",
                       "--text_column=评论", f"--output={tmp_path / 'out' / 'p'}",
                       "--batch_size=8", *TWO_WORKERS)
    rows = read_jsonl(shards(tmp_path / "out" / "p"))
    check_same_as_predict(rows, saved_model, two_files, "--text_column=评论")
    assert summary["rows"] == len(rows) == 90 and summary["bad_rows"] == 0
    assert {row["file"] for row in rows} == set(two_files)
    assert "" in {row["text"] for row in rows}  # an empty text is answered
    (dead_letter,) = shards(tmp_path / "out" / "p.bad-rows")
    assert os.path.getsize(dead_letter) == 0


def bad_files(root):
    """Two files with unreadable rows: a wrong field count, a quote open at the end of the
    file, undecodable bytes, a JSON error."""
    a = write_reviews(root / "a.csv", ["好", "坏"], extra="9,多,一列\n10,还好\n11,\"没有关上\n")
    b = root / "b.jsonl"
    b.write_bytes('{"评论": "好"}\n{"评论": \n{"评论": "ok"}\n'.encode("utf-8")
                  + "差\n".encode("gbk") + '{"评论": "after"}\n'.encode("utf-8"))
    return a, str(b)


def test_bad_rows_go_to_the_dead_letter_with_file_and_line(saved_model, tmp_path):
    a, b = bad_files(tmp_path)
    prefix = tmp_path / "p"
    summary = run_beam(f"--saved_model={saved_model}", f"--input={tmp_path}/[ab].*",
                       "--text_column=评论", "--skip_bad_rows", f"--output={prefix}")
    letters = sorted(read_jsonl(shards(f"{prefix}.bad-rows")),
                     key=lambda letter: (letter["file"], letter["line"]))
    assert [(letter["file"], letter["line"]) for letter in letters] == [
        (a, 4), (a, 6), (b, 2), (b, 4)]
    assert "3 fields" in letters[0]["error"] and "unexpected end of data" in letters[1]["error"]
    assert "not a JSON object" in letters[2]["error"]
    assert "not valid UTF-8" in letters[3]["error"] and "rest of the file" in letters[3]["error"]
    rows = read_jsonl(shards(prefix))
    assert sorted((row["file"], row["line"], row["text"]) for row in rows) == [
        (a, 2, "好"), (a, 3, "坏"), (a, 5, "还好"), (b, 1, "好"), (b, 3, "ok")]
    assert (summary["rows"], summary["bad_rows"]) == (5, 4)


def test_without_skip_bad_rows_the_first_bad_row_fails_the_job(saved_model, tmp_path):
    a, _ = bad_files(tmp_path)
    with pytest.raises(cli.UserError, match=r"a\.csv:4: 3 fields .*--skip_bad_rows"):
        run_beam(f"--saved_model={saved_model}", f"--input={tmp_path}/a.csv",
                 "--text_column=评论", f"--output={tmp_path / 'p'}")
    assert not shards(tmp_path / "p")


@pytest.mark.slow  # trains a model of pairs
def test_a_multiclass_pairs_export_runs_through_the_handler(pair_topics_export, tmp_path):
    export, dev = pair_topics_export
    args = ("--text_column=q1", "--text_b_column=q2", "--top_k=2")
    run_beam(f"--saved_model={export}", f"--input={dev}", *args, f"--output={tmp_path / 'p'}")
    rows = read_jsonl(shards(tmp_path / "p"))
    check_same_as_predict(rows, export, [dev], *args)
    assert len(rows) == 32 and all(len(row["probabilities"]) == 2 for row in rows)
    with pytest.raises(cli.UserError, match="classifies pairs of texts: pass --text_b_column"):
        run_beam(f"--saved_model={export}", f"--input={dev}", "--text_column=q1",
                 f"--output={tmp_path / 'q'}")
    with pytest.raises(cli.UserError, match="plain text holds one text a line"):
        run_beam(f"--saved_model={export}", f"--input={dev}", *args, "--input_format=text",
                 f"--output={tmp_path / 'q'}")


def test_csv_output_has_a_header_in_every_shard(saved_model, two_files, tmp_path):
    run_beam(f"--saved_model={saved_model}", f"--input={two_files[0]}", "--text_column=评论",
             f"--output={tmp_path / 'p'}", "--format=csv")
    rows = [row for path in shards(tmp_path / "p")
            for row in csv.DictReader(open(path, encoding="utf-8", newline=""))]
    assert len(rows) == 40 and list(rows[0]) == ["file", "line", "text", "probability", "label"]
    assert {row["file"] for row in rows} == {two_files[0]}


@pytest.mark.parametrize("args, message", [
    (("--input={tmp}/nothing*.csv",), r"--input=.*nothing\*\.csv: no file matches"),
    (("--input=-",), "does not read stdin"),
    (("--input={tmp}",), "is a directory: pass a pattern of the files in it"),
    (("--input={a}", "--output=-"), "pass a prefix for the output files"),
    (("--input={a}", "--output={tmp}"), "is a directory"),
    (("--input={a}", "--text_colum=评论"), "--text_colum=评论: neither a beam_predict flag"),
    (("--input={a}", "--text_column=review"), r"a\.csv:2: no column 'review'"),
    (("--input={a}", "--text_column=评论", "--text_b_column=id"),
     "classifies single texts: leave --text_b_column unset"),
    (("--input={tmp}/*", "--output={tmp}/p"),
     r"matches .*/p-00000-of-00001, an output shard or dead letter of beam_predict"),
    (("--input={a}", "--output={tmp}/p"), r"1 shards of it exist .*pass --overwrite"),
])
def test_hurried_mistakes_are_refused_before_the_job(saved_model, two_files, tmp_path, args,
                                                     message):
    (tmp_path / "p-00000-of-00001").write_text("")
    args = [arg.format(tmp=tmp_path, a=two_files[0]) for arg in args]
    output = [] if any(arg.startswith("--output") for arg in args) else [f"--output={tmp_path}/q"]
    with pytest.raises(cli.UserError, match=message):
        run_beam(f"--saved_model={saved_model}", *args, *output)


def test_existing_shards_are_kept_unless_overwrite(saved_model, two_files, tmp_path):
    stale = [tmp_path / f"p-0000{i}-of-00003" for i in range(3)]
    for path in stale:
        path.write_text('{"stale": true}\n')
    args = (f"--saved_model={saved_model}", f"--input={two_files[0]}", "--text_column=评论",
            f"--output={tmp_path / 'p'}")
    with pytest.raises(cli.UserError, match=r"3 shards of it exist.*--overwrite"):
        run_beam(*args)
    run_beam(*args, "--overwrite")
    rows = read_jsonl(shards(tmp_path / "p"))
    assert len(rows) == 40 and not any("stale" in row for row in rows)


def test_a_missing_or_broken_export_fails_before_the_job(two_files, tmp_path):
    args = (f"--input={two_files[0]}", "--text_column=评论", f"--output={tmp_path / 'p'}")
    with pytest.raises(cli.UserError, match="no saved_model.pb there"):
        run_beam(f"--saved_model={tmp_path / 'missing'}", *args)
    broken = tmp_path / "broken"
    (broken / "variables").mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    (broken / "variables" / "variables.index").write_bytes(b"")
    with pytest.raises(cli.UserError, match=r"--saved_model=.*broken: cannot be loaded"):
        run_beam(f"--saved_model={broken}", *args)


@pytest.mark.slow  # starts the command and its workers
def test_the_command_runs_offline_on_two_processes_and_fails_in_one_line(saved_model, tmp_path):
    a, _ = bad_files(tmp_path)
    command = [sys.executable, "-m", "bert_tf2.beam_predict", f"--saved_model={saved_model}",
               f"--input={a}", "--text_column=评论", f"--output={tmp_path / 'p'}"]
    # Any download (Prism's binary, say) would fail through this proxy; Prism's cache would be
    # under this HOME.
    home = tmp_path / "home"
    env = {**os.environ, "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "HOME": str(home)}
    done = subprocess.run(command + ["--skip_bad_rows", *TWO_WORKERS], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[-1].startswith("beam_predict: 3 rows of 1 files answered")
    assert "2 rows in the dead letter" in done.stderr and "prism" not in done.stderr.lower()
    assert not (home / ".apache_beam").exists()
    failed = subprocess.run(command + ["--overwrite"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert failed.returncode == 1
    assert failed.stderr.splitlines()[-1].startswith(f"beam_predict: {a}:4: 3 fields")


def test_the_default_runner_is_the_fn_api_runner_and_flags_pass_through():
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions
    from apache_beam.runners import runner
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    options = beam_predict.pipeline_options(TWO_WORKERS)
    assert isinstance(runner.create_runner(options.view_as(StandardOptions).runner),
                      fn_runner.FnApiRunner)  # not DirectRunner, which may try Prism first
    assert options.view_as(DirectOptions).direct_num_workers == 2
    chosen = beam_predict.pipeline_options(["--runner=DataflowRunner", "--project=p"])
    assert chosen.view_as(StandardOptions).runner == "DataflowRunner"
