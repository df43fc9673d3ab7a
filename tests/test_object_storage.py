"""Object storage: the file layer (`bert_tf2.io_utils`) on local paths and on `ram://`,
TensorFlow's in-memory file system (one process), which stands in for `gs://` here; a run whose
model_dir and export_dir are on it; schemes without a file system and unreachable stores
refused in one line before anything is written.
"""

import os
import pathlib
import re
import subprocess
import sys
import tempfile
import uuid

import bert_tf2  # noqa: F401
import pytest
import tensorflow as tf

from bert_tf2 import cli, crash_safety, export, io_utils, train
from tests.conftest import REPO_ROOT
from tests.tiny_fixtures import (TINY_SEQ_LENGTH, Crash, CrashAtStep, train_config,
                                 write_jsonl)


@pytest.fixture(params=["local", "ram"])
def root(request, tmp_path) -> str:
    """A fresh directory: local, or on ram:// (a new name each test: ram:// lives as long as
    the process)."""
    if request.param == "local":
        return str(tmp_path / "store")
    return f"ram://{uuid.uuid4().hex}/store"


def _ram_named_entries(directory) -> list:
    """Entries of `directory` that a URL taken for a local path would have made."""
    return [name for name in os.listdir(directory) if name.endswith(":")]


# ---------------------------------------------------------------------------------------------
# The layer
# ---------------------------------------------------------------------------------------------

def test_open_reads_and_writes_as_builtin_open_does(root):
    path = io_utils.join(root, "sub", "reviews.txt")
    with io_utils.open(path, "w", encoding="gbk") as f:
        f.write("房间很干净\r\n第二行\n")
    with io_utils.open(path, encoding="gbk", newline="") as f:
        assert f.read() == "房间很干净\r\n第二行\n"
    with io_utils.open(path, encoding="gbk") as f:
        assert list(f) == ["房间很干净\n", "第二行\n"]
    with io_utils.open(path, "rb") as f:
        assert f.read() == "房间很干净\r\n第二行\n".encode("gbk")
    with io_utils.open(path, "a", encoding="gbk") as f:
        f.write("第三行\n")
    with io_utils.open(path, encoding="gbk") as f:
        assert f.read().splitlines()[-1] == "第三行"
    with pytest.raises(FileNotFoundError):
        io_utils.open(io_utils.join(root, "missing.txt"))
    with pytest.raises(FileExistsError):
        io_utils.open(path, "x")


def test_directory_operations(root):
    for name in ("a.json", "b.json", "c.txt"):
        with io_utils.open(io_utils.join(root, name), "w") as f:
            f.write(name)
    assert io_utils.isdir(root) and not io_utils.isfile(root)
    assert io_utils.isfile(io_utils.join(root, "a.json"))
    assert sorted(io_utils.listdir(root)) == ["a.json", "b.json", "c.txt"]
    assert io_utils.glob(io_utils.join(root, "*.json")) == [
        io_utils.join(root, "a.json"), io_utils.join(root, "b.json")]
    io_utils.copy(io_utils.join(root, "a.json"), io_utils.join(root, "d", "copy.json"))
    with pytest.raises(FileExistsError):
        io_utils.copy(io_utils.join(root, "b.json"), io_utils.join(root, "d", "copy.json"))
    io_utils.rename(io_utils.join(root, "c.txt"), io_utils.join(root, "a.json"),
                    overwrite=True)
    with io_utils.open(io_utils.join(root, "a.json")) as f:
        assert f.read() == "c.txt"
    io_utils.remove(io_utils.join(root, "b.json"))
    assert not io_utils.exists(io_utils.join(root, "b.json"))
    io_utils.rmtree(root)
    assert not io_utils.exists(io_utils.join(root, "a.json"))
    io_utils.rmtree(root, ignore_errors=True)  # gone already: no error


def test_write_json_and_read_json(root):
    path = io_utils.join(root, "run", "metrics.json")
    assert io_utils.read_json(path) is None
    io_utils.write_json({"dev": {"accuracy": 0.5}, "标签": "正面"}, path)
    io_utils.write_json({"dev": {"accuracy": 0.75}, "标签": "正面"}, path)
    assert io_utils.read_json(path) == {"dev": {"accuracy": 0.75}, "标签": "正面"}
    assert io_utils.listdir(io_utils.join(root, "run")) == ["metrics.json"]


def test_atomic_file_leaves_the_old_file_when_its_block_fails(root):
    path = io_utils.join(root, "classes.txt")
    with io_utils.atomic_file(path) as f:
        f.write("负面\n正面\n")
    with pytest.raises(RuntimeError):
        with io_utils.atomic_file(path) as f:
            f.write("half")
            raise RuntimeError("killed")
    with io_utils.open(path, encoding="utf-8") as f:
        assert f.read() == "负面\n正面\n"
    assert io_utils.listdir(root) == ["classes.txt"]  # no scratch sibling left


def _finished_export(directory: pathlib.Path) -> str:
    """A stand-in for an export's scratch directory: saved_model.pb, variables, assets."""
    (directory / "variables").mkdir(parents=True)
    (directory / "assets").mkdir()
    (directory / "saved_model.pb").write_bytes(b"graph")
    (directory / "variables" / "variables.index").write_bytes(b"index")
    (directory / "variables" / "variables.data-00000-of-00001").write_bytes(b"data")
    (directory / "assets" / "vocab.txt").write_text("[PAD]\n", encoding="utf-8")
    return str(directory)


def test_publish_next_version_numbers_versions_and_never_overwrites(root, tmp_path):
    export_dir = io_utils.join(root, "export")
    for expected in (1, 2):
        with io_utils.scratch_directory(export_dir, "export") as scratch:
            _finished_export(pathlib.Path(scratch))
            final = io_utils.publish_next_version(scratch, export_dir)
        assert final == io_utils.join(export_dir, str(expected))
    assert io_utils.existing_versions(export_dir) == [1, 2]
    with io_utils.open(io_utils.join(export_dir, "2", "variables", "variables.index"),
                       "rb") as f:
        assert f.read() == b"index"
    with pytest.raises(FileExistsError):
        io_utils.publish_directory(_finished_export(tmp_path / "again"),
                                   io_utils.join(export_dir, "2"))
    assert sorted(io_utils.listdir(export_dir)) == ["1", "2"]  # no scratch left behind


def test_a_version_on_a_store_gets_its_saved_model_pb_last(tmp_path, monkeypatch):
    """Copied file by file, a version has no saved_model.pb until all else is there: a loader
    polling the store cannot load a part of it."""
    export_dir = f"ram://{uuid.uuid4().hex}/export"
    copied = []
    real_copy = io_utils.copy

    def recording_copy(source, destination, **kwargs):
        copied.append(destination[len(export_dir) + 1:])
        real_copy(source, destination, **kwargs)

    monkeypatch.setattr(io_utils, "copy", recording_copy)
    io_utils.publish_next_version(_finished_export(tmp_path / "scratch"), export_dir)
    assert copied[-1] == "1/saved_model.pb"
    assert sorted(copied) == ["1/assets/vocab.txt", "1/saved_model.pb",
                              "1/variables/variables.data-00000-of-00001",
                              "1/variables/variables.index"]


def test_a_copy_that_fails_leaves_no_version(tmp_path, monkeypatch):
    export_dir = f"ram://{uuid.uuid4().hex}/export"
    io_utils.makedirs(export_dir)
    real_copy = io_utils.copy

    def failing_copy(source, destination, **kwargs):
        if destination.endswith("variables.index"):
            raise OSError(5, "connection reset", destination)
        real_copy(source, destination, **kwargs)

    monkeypatch.setattr(io_utils, "copy", failing_copy)
    with pytest.raises(OSError, match="connection reset"):
        io_utils.publish_next_version(_finished_export(tmp_path / "scratch"), export_dir)
    assert io_utils.existing_versions(export_dir) == []


def test_pruning_on_a_store_removes_saved_model_pb_first(tmp_path, monkeypatch):
    export_dir = f"ram://{uuid.uuid4().hex}/export"
    for n in range(3):
        io_utils.publish_next_version(_finished_export(tmp_path / str(n)), export_dir)
    removed = []
    real_remove = io_utils.remove
    monkeypatch.setattr(io_utils, "remove",
                        lambda path: (removed.append(path), real_remove(path)))
    assert export.prune_versions(export_dir, keep=1) == [1, 2]
    assert removed[0] == io_utils.join(export_dir, "1", "saved_model.pb")
    assert io_utils.existing_versions(export_dir) == [3]


# ---------------------------------------------------------------------------------------------
# Refused before anything is written
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["s3://bucket/model", "hdfs://namenode/model",
                                 "az://account/model", "foo://bucket/model"])
def test_a_scheme_without_a_file_system_is_refused_in_one_line(url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(io_utils.NoFileSystemError) as refused:
        io_utils.check_writable_dir(url, "--model_dir")
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"--model_dir={url}: TensorFlow {tf.__version__} has no file "
                              f"system for {url.split(':')[0]}://")
    if not url.startswith("foo"):
        assert "tensorflow-io" in message
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("path", ["gs:/bucket/model", "s3:bucket/model"])
def test_a_url_missing_a_slash_is_refused_not_made_a_local_folder(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(io_utils.OutputError, match="with a slash missing; write "):
        io_utils.check_writable_dir(path, "--export_dir")
    assert os.listdir(tmp_path) == []


def test_an_unreachable_store_is_one_line_naming_the_url(tmp_path, monkeypatch):
    """No network here (and no credentials): TensorFlow's GCS client fails, or retries until
    the probe gives up; either way one line that names the URL."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(io_utils, "STORE_PROBE_SECONDS", 20.0)
    url = f"gs://bert-tf2-unreachable-{uuid.uuid4().hex[:8]}/model"
    with pytest.raises(io_utils.UnreachableStoreError) as refused:
        io_utils.check_writable_dir(url, "--model_dir")
    assert str(refused.value).startswith(f"--model_dir={url}: ")
    assert "\n" not in str(refused.value)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# Training on a store
# ---------------------------------------------------------------------------------------------

def _args(modules, model_dir, export_dir, train_data, *extra):
    return [f"--preprocess_handle={modules.preprocess}", f"--encoder_handle={modules.encoder}",
            f"--model_dir={model_dir}", f"--export_dir={export_dir}",
            f"--train_data={train_data}", f"--seq_length={TINY_SEQ_LENGTH}",
            "--batch_size=16", "--learning_rate=1e-3", *extra]


@pytest.fixture(scope="module")
def train_file(tmp_path_factory, corpus_splits) -> str:
    """160 examples: 10 steps an epoch at --batch_size=16."""
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl",
                       corpus_splits["train"], 160)


@pytest.mark.slow
def test_a_run_on_ram_is_interrupted_resumed_and_exported_there(
        tmp_path, monkeypatch, tiny_hub_modules, train_file):
    monkeypatch.chdir(tmp_path)
    temp_before = set(os.listdir(tempfile.gettempdir()))
    store = f"ram://{uuid.uuid4().hex}"
    model_dir, export_dir = f"{store}/model", f"{store}/export"
    config = train_config(*_args(tiny_hub_modules, model_dir, export_dir, train_file,
                                 "--train_steps=15", "--checkpoint_steps=4", "--epochs=2"))
    with pytest.raises(Crash):
        train.run(config, callbacks=[CrashAtStep(11)])
    assert crash_safety.backed_up_step(f"{model_dir}/backup") == 10
    assert io_utils.existing_versions(export_dir) == []

    result = train.run(config)
    assert result.backed_up_steps == (12,)
    assert result.optimizer_steps == 15
    assert result.export_path == f"{export_dir}/1"
    assert io_utils.existing_versions(export_dir) == [1]
    for name in ("run_config.json", "run_data.json", "classes.txt", "history.csv",
                 "metrics.json", "training_curves.png", "checkpoints/final.index"):
        assert io_utils.isfile(f"{model_dir}/{name}"), name
    assert not io_utils.exists(f"{model_dir}/backup")  # removed once the run is exported
    assert io_utils.read_json(f"{model_dir}/run_config.json") == config.to_dict()
    with io_utils.open(f"{model_dir}/history.csv") as f:
        assert [line.split(",")[0] for line in f.read().splitlines()[1:]] == ["0", "1"]

    served = tf.saved_model.load(result.export_path)
    texts = tf.constant(["房间很干净，服务很周到。", "房间又小又脏。"])
    outputs = served.signatures[export.SERVING_SIGNATURE](**{export.TEXT_INPUT: texts})
    expected = result.text_classifier(texts).numpy()[:, -1]
    assert outputs[export.PROBABILITY_OUTPUT].numpy().ravel() == pytest.approx(expected,
                                                                               abs=1e-5)
    assert export.read_class_names(result.export_path) == result.class_names

    assert os.listdir(tmp_path) == []  # nothing written to the working directory
    assert _ram_named_entries(tempfile.gettempdir()) == []
    staged = [name for name in set(os.listdir(tempfile.gettempdir())) - temp_before
              if name.startswith("bert_tf2-")]
    assert staged == []  # the export's local staging is removed


def _train_command(cwd, *args):
    return subprocess.run([sys.executable, "-m", "bert_tf2.train", *args], cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_train_command_on_ram_exits_0_and_creates_no_local_folder(
        tmp_path, tiny_hub_modules, train_file):
    store = f"ram://{uuid.uuid4().hex}"
    finished = _train_command(tmp_path, *_args(tiny_hub_modules, f"{store}/model",
                                               f"{store}/export", train_file,
                                               "--train_steps=4"))
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert os.listdir(tmp_path) == []
    assert _ram_named_entries(tempfile.gettempdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("store, expected", [
    ("s3://my-bucket/sentiment", r"--model_dir=s3://my-bucket/sentiment/model: TensorFlow "
                                 r"\S+ has no file system for s3:// .*tensorflow-io.*"),
    ("gs://bert-tf2-unreachable/sentiment", r"--model_dir=gs://bert-tf2-unreachable/"
                                            r"sentiment/model: .+"),
])
def test_train_command_refuses_a_store_it_cannot_write_before_writing(
        store, expected, tmp_path, tiny_hub_modules, train_file):
    finished = _train_command(tmp_path, *_args(tiny_hub_modules, f"{store}/model",
                                               f"{store}/export", train_file))
    assert finished.returncode == 1
    last_line = finished.stderr.strip().splitlines()[-1]
    assert re.fullmatch("train: " + expected, last_line), finished.stderr[-2000:]
    assert "Traceback" not in finished.stderr
    assert os.listdir(tmp_path) == []
