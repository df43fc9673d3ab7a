"""Prepared data (--data_cache): the same examples as the in-memory path, never stale, shared
out by file between workers, bad rows as the reader treats them."""

import collections
import json
import os
import pathlib

import bert_tf2  # noqa: F401
import pytest
import tensorflow as tf

from bert_tf2 import data, input_pipeline, io_utils, prepared_data, train
from tests import task_data, tiny_fixtures


def _topics_of(i: int) -> str:
    return "|".join(task_data.TOPICS[(i + k) % 3] for k in range(1 + i % 3))


def _task_files(root: pathlib.Path, corpus_splits, task: str):
    """(files by split, extra flags) of a tiny `task` dataset: 50 training, 20 dev, 20 test."""
    root.mkdir(parents=True, exist_ok=True)
    files, sizes = {}, {"train": 50, "dev": 20, "test": 20}
    for split, n in sizes.items():
        texts = task_data.rows(corpus_splits, split, 2 * n)
        if task == "binary":
            lines = ["text\tlabel"] + [f"{t}\t{'正面' if i % 3 else '负面'}"
                                       for i, t in enumerate(texts[:n])]
        elif task == "multiclass":
            lines = [f"{t}\t{task_data.TOPICS[i % 3]}" for i, t in enumerate(texts[:n])]
        elif task == "multilabel":
            lines = [f"{t}\t{_topics_of(i)}" for i, t in enumerate(texts[:n])]
        else:  # pairs
            lines = ["q1\tq2\tlabel"] + [f"{a}\t{b}\t{i % 2}"
                                         for i, (a, b) in enumerate(zip(texts[:n], texts[n:]))]
        files[split] = task_data.write(root / f"{split}.tsv", lines)
    extra = {"binary": [], "multiclass": ["--task=multiclass", "--column_names=text,label"],
             "multilabel": ["--task=multilabel", "--column_names=text,label"],
             "pairs": ["--text_column=q1", "--text_b_column=q2"]}[task]
    return files, extra


def _config(files, extra, cache, *more):
    return tiny_fixtures.train_config(
        "--model_dir=unused", f"--train_data={files['train']}",
        *([f"--eval_data={files['dev']}"] if "dev" in files else []),
        *([f"--test_data={files['test']}"] if "test" in files else []),
        f"--data_cache={cache}", "--num_shards=3", *extra, *more)


def _in_memory(config):
    return data.load_splits(config.data.train_data, config.data.eval_data,
                            config.data.test_data, **data.reader_options(config.data))


def _streamed(config):
    return prepared_data.load_splits(config.data, config.input.data_cache,
                                     config.input.num_shards)


def _rows(dataset):
    """[((texts...), label)] of a dataset of single examples, as Python values."""
    return [(tuple(t.decode("utf-8") for t in segments),
             tuple(label.tolist()) if label.ndim else int(label))
            for segments, label, *_ in dataset.as_numpy_iterator()]


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel", "pairs"])
def test_streamed_examples_are_the_in_memory_ones(task, tmp_path, corpus_splits):
    files, extra = _task_files(tmp_path / "data", corpus_splits, task)
    config = _config(files, extra, tmp_path / "cache")
    held = _in_memory(config)
    streamed = _streamed(config)
    assert set(streamed) == set(held) == {"train", "dev", "test"}
    for split in held:
        assert len(streamed[split]) == len(held[split])
        assert streamed[split].class_names == held[split].class_names
        # The resume check compares these: the same whether a run streams or not.
        assert prepared_data.fingerprint(streamed[split]) == data.fingerprint(held[split])
        in_order = _rows(tf.data.Dataset.from_tensor_slices(
            input_pipeline._tensors(held[split], None)))
        assert _rows(prepared_data.examples_dataset(streamed[split], training=False)) == in_order
        shuffled = _rows(prepared_data.examples_dataset(streamed[split], training=True,
                                                        seed=3))
        assert sorted(shuffled) == sorted(in_order)
    assert held["train"].class_names == streamed["train"].class_names


def test_label_counts_and_class_weights_match_the_in_memory_split(tmp_path, corpus_splits):
    files, extra = _task_files(tmp_path / "data", corpus_splits, "multiclass")
    config = _config(files, extra, tmp_path / "cache")
    held, streamed = _in_memory(config)["train"], _streamed(config)["train"]
    counts = collections.Counter(held.labels)
    assert list(streamed.label_counts) == [counts[i] for i in range(3)]
    assert (train.balanced_class_weights(streamed, "multiclass", "balanced")
            == train.balanced_class_weights(held, "multiclass", "balanced"))


def _prepared_dirs(cache: pathlib.Path):
    return sorted(p.name for p in cache.iterdir() if p.name.startswith("prepared-"))


def test_a_changed_file_or_reader_flag_is_not_served_from_the_cache(tmp_path, corpus_splits):
    files, extra = _task_files(tmp_path / "data", corpus_splits, "binary")
    cache = tmp_path / "cache"
    first = _streamed(_config(files, extra, cache))
    again = _streamed(_config(files, extra, cache))
    assert again["train"].files == first["train"].files
    assert len(_prepared_dirs(cache)) == 1

    with open(files["train"], "a", encoding="utf-8") as f:
        f.write("新加的一条好评\t正面\n")
    config = _config(files, extra, cache)
    changed = _streamed(config)
    assert len(changed["train"]) == len(first["train"]) + 1
    assert changed["train"].fingerprint == data.fingerprint(_in_memory(config)["train"])
    assert len(_prepared_dirs(cache)) == 2

    relabelled = _config(files, extra, cache, "--label_map=负面:1,正面:0")
    flipped = _streamed(relabelled)
    assert flipped["train"].label_counts == changed["train"].label_counts[::-1]
    assert len(_prepared_dirs(cache)) == 3


def test_two_workers_read_disjoint_shards_that_add_up_to_the_data(tmp_path, corpus_splits):
    files, extra = _task_files(tmp_path / "data", corpus_splits, "binary")
    config = _config(files, extra, tmp_path / "cache", "--num_shards=4")
    split = _streamed(config)["train"]
    read = [_rows(prepared_data.examples_dataset(
                split, training=False,
                input_context=tf.distribute.InputContext(num_input_pipelines=2,
                                                         input_pipeline_id=worker,
                                                         num_replicas_in_sync=2)))
            for worker in range(2)]
    assert all(read) and not set(read[0]) & set(read[1])
    assert sorted(read[0] + read[1]) == sorted(_rows(prepared_data.examples_dataset(
        split, training=False)))
    assert len(read[0]) + len(read[1]) == len(split) == 50


def test_more_workers_than_shards_is_refused(tmp_path, corpus_splits):
    files, extra = _task_files(tmp_path / "data", corpus_splits, "binary")
    config = _config(files, extra, tmp_path / "cache", "--num_shards=1")
    split = _streamed(config)["train"]
    with pytest.raises(prepared_data.cli.UserError, match="--num_shards=2 or more"):
        prepared_data.examples_dataset(split, training=True, input_context=(
            tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1,
                                       num_replicas_in_sync=2)))


def test_a_bad_row_is_named_by_file_and_line_and_nothing_is_prepared(tmp_path, corpus_splits):
    files, extra = _task_files(tmp_path / "data", corpus_splits, "binary")
    with open(files["train"], "a", encoding="utf-8") as f:
        f.write("一条标签写错的评论\t好吧\n")
    config = _config(files, extra, tmp_path / "cache")
    with pytest.raises(data.DataError, match=rf"{files['train']}:52: label '好吧'.*"
                                             "--skip_bad_rows"):
        _streamed(config)
    assert not (tmp_path / "cache").exists() or not os.listdir(tmp_path / "cache")

    skipping = _config(files, extra, tmp_path / "cache", "--skip_bad_rows")
    split = _streamed(skipping)["train"]
    assert (len(split), split.skipped_rows) == (50, 1)
    (directory,) = _prepared_dirs(tmp_path / "cache")
    manifest = json.loads((tmp_path / "cache" / directory / "manifest.json").read_text())
    assert manifest["splits"]["train"]["skipped_rows"] == 1
    assert manifest["splits"]["train"]["fingerprint"] == data.fingerprint(
        _in_memory(skipping)["train"])


def test_a_dev_label_training_never_shows_names_its_row(tmp_path, corpus_splits):
    files, extra = _task_files(tmp_path / "data", corpus_splits, "multiclass")
    with open(files["dev"], "a", encoding="utf-8") as f:
        f.write("一条新话题的文本\t娱乐\n")
    config = _config(files, extra, tmp_path / "cache")
    with pytest.raises(data.DataError) as in_memory:
        _in_memory(config)
    with pytest.raises(data.DataError) as streamed:
        _streamed(config)
    assert str(streamed.value) == str(in_memory.value)
    assert f"{files['dev']}:21" in str(streamed.value)


def test_the_built_in_corpus_is_not_prepared(tmp_path):
    config = tiny_fixtures.train_config("--model_dir=unused", f"--data_cache={tmp_path}")
    with pytest.raises(prepared_data.cli.UserError, match="drop --data_cache"):
        _streamed(config)


def test_streamed_training_scores_dev_and_test_as_the_in_memory_data(
        tmp_path, corpus_splits, tiny_hub_modules):
    files, extra = _task_files(tmp_path / "data", corpus_splits, "binary")
    config = tiny_fixtures.train_config(
        *tiny_fixtures.tiny_train_args(tiny_hub_modules, tmp_path / "model",
                                       tmp_path / "export"),
        f"--train_data={files['train']}", f"--eval_data={files['dev']}",
        f"--test_data={files['test']}", f"--data_cache={tmp_path / 'cache'}")
    result = train.run(config)
    held = _in_memory(config)
    strategy = tf.distribute.get_strategy()
    preprocessor = tiny_hub_modules_preprocessor(tiny_hub_modules)
    for split in ("dev", "test"):
        assert result.metrics[split]["examples"] == len(held[split]) == 20
        values = result.classifier.evaluate(train.distributed_dataset(
            strategy, preprocessor, held[split], config.trainer.eval_batch_size,
            config.input, training=False, seed=config.seed), return_dict=True, verbose=0)
        for name, value in values.items():
            assert result.metrics[split][name] == pytest.approx(value, abs=1e-5), name
    run_data = io_utils.read_json(str(tmp_path / "model" / "run_data.json"))
    assert run_data["train"] == data.fingerprint(held["train"])


def tiny_hub_modules_preprocessor(modules):
    from bert_tf2 import model  # pylint: disable=g-import-not-at-top
    return model.load_preprocessor(modules.preprocess)


def test_pretraining_streams_each_training_text_once_an_epoch(tmp_path, corpus_splits):
    files, extra = _task_files(tmp_path / "data", corpus_splits, "pairs")
    config = _config(files, extra, tmp_path / "cache")
    split = _streamed(config)["train"]
    epoch = [text.decode("utf-8") for text in prepared_data.texts_dataset(
        split, seed=1, shuffle_buffer=8).take(len(split)).as_numpy_iterator()]
    assert sorted(epoch) == sorted(_in_memory(config)["train"].texts)


def test_a_run_resumes_with_or_without_the_cache_on_the_same_data(tmp_path, corpus_splits):
    from bert_tf2 import config as config_lib, crash_safety  # pylint: disable=g-import-not-at-top
    files, extra = _task_files(tmp_path / "data", corpus_splits, "multilabel")
    streamed_config = _config(files, extra, tmp_path / "cache")
    held_config = streamed_config.replace(**{"input.data_cache": None})
    assert config_lib.resume_differences(streamed_config, held_config) == {}
    assert (crash_safety.data_fingerprints(_streamed(streamed_config))
            == crash_safety.data_fingerprints(_in_memory(held_config)))


@pytest.mark.parametrize("flag", ["--num_shards=4", "--shuffle_buffer=10"])
def test_a_streaming_flag_without_data_cache_is_refused(flag):
    with pytest.raises(prepared_data.cli.UserError, match=rf"{flag} shapes streamed data only"):
        tiny_fixtures.train_config("--model_dir=unused", flag)


def test_a_compressed_training_file_is_prepared_as_read(tmp_path, corpus_splits):
    import gzip  # pylint: disable=g-import-not-at-top
    files, extra = _task_files(tmp_path / "data", corpus_splits, "binary")
    compressed = files["train"] + ".gz"
    with open(files["train"], "rb") as plain, gzip.open(compressed, "wb") as packed:
        packed.write(plain.read())
    config = _config({"train": compressed}, extra, tmp_path / "cache")
    split = _streamed(config)["train"]
    assert (len(split), split.fingerprint) == (50, data.fingerprint(_in_memory(config)["train"]))
