"""Prepared data: labelled files read once into TFRecord shards that training streams.

With --data_cache=DIR, `bert_tf2.train` does not hold its examples in memory. The
--train_data/--eval_data/--test_data files are read once, by `data.iter_examples` (the one
reader: header checks, label validation, bad rows named by file:line or skipped and counted,
encodings, every task), in constant memory, into DIR/prepared-<key>/:

  manifest.json                 counts per split and class, the fingerprint a resumed run
                                compares (equal to `data.fingerprint` of the same data held
                                in memory), the reader settings and the source files' identity
  <split>-00000-of-00008.tfrecord ...  tf.train.Examples of raw texts and a label value id

`<key>` is a hash of the files' paths, sizes and modification times, the reading flags and
--num_shards: a changed file or flag makes another key, so a stale preparation is never
served (several preparations sit side by side; delete DIR to reclaim them). A preparation
is written to a scratch directory and published whole (`io_utils.atomic_directory`). The
fingerprint hashes all texts before all labels, with class names known only at the end, so
the texts and label ids are spooled to a local temporary directory (about the size of the
data) and hashed from there once the split is read.

Example j of a split goes to shard j % N, so reading the N shards round-robin
(`tf.data` interleave, block length 1) gives the examples in the order they were read, and
each input pipeline of a multi-worker run reads its own shards (`examples_dataset`).
Tokenization stays in the graph, after streaming (`input_pipeline.batch_examples`).
"""

import dataclasses
import hashlib
import json
import tempfile
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from absl import logging
import tensorflow as tf

from bert_tf2 import cli
from bert_tf2 import config as config_lib
from bert_tf2 import data
from bert_tf2 import input_pipeline
from bert_tf2 import io_utils

# Bumped when what a preparation holds changes: older ones are then never reused.
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
_SPLIT_FLAGS = {"train": "train_data", "dev": "eval_data", "test": "test_data"}
_CHUNK = 1 << 20
# Records parsed per call when streaming.
_PARSE_BATCH = 256


@dataclasses.dataclass(frozen=True)
class StreamedSplit:
    """A prepared split: what training needs of it, its examples left in the shards.

    `label_table[v]` is the label (class id, or 0/1 row for multilabel) of label value id v
    as the shards hold it; `label_counts[c]` the examples of class c (multilabel: that carry
    it); `shard_counts[i]` the examples of `files[i]`.
    """

    source: str
    files: Tuple[str, ...]
    shard_counts: Tuple[int, ...]
    class_names: Tuple[str, ...]
    label_table: Tuple[object, ...]
    label_counts: Tuple[int, ...]
    fingerprint: Mapping[str, object]
    pairs: bool
    skipped_rows: int = 0

    def __len__(self) -> int:
        return sum(self.shard_counts)


def fingerprint(split) -> Dict[str, object]:
    """`data.fingerprint` of a split, held in memory (`data.Examples`) or streamed."""
    if isinstance(split, StreamedSplit):
        return dict(split.fingerprint)
    return data.fingerprint(split)


# ---------------------------------------------------------------------------------------------
# Finding or making the preparation
# ---------------------------------------------------------------------------------------------

def load_splits(data_config, data_cache: str, num_shards: int) -> Dict[str, StreamedSplit]:
    """The train/dev/test splits of `data_config` (a `config.DataConfig`) as prepared in
    `num_shards` shards under `data_cache`, prepared first where no preparation of these
    files and flags is there."""
    if not data_config.train_data:
        raise cli.UserError("--data_cache prepares the --train_data/--eval_data/--test_data "
                            "files; the built-in corpus is held in memory: drop --data_cache "
                            "or pass --train_data")
    io_utils.check_writable_dir(data_cache, "--data_cache")
    patterns = {split: getattr(data_config, flag) for split, flag in _SPLIT_FLAGS.items()
                if getattr(data_config, flag)}
    identity = cache_identity(data_config, patterns, num_shards)
    directory = io_utils.join(data_cache, cache_key(identity))
    manifest = _find_or_prepare(directory, identity, patterns,
                                data.reader_options(data_config), num_shards)
    splits = splits_of(manifest, directory)
    data.warn_about_label_coverage({name: _summary(split) for name, split in splits.items()})
    for name, split in splits.items():
        logging.info("%s split: %d rows (%s) from %s, streamed from %d shards", name,
                     len(split), data.described_counts(split.class_names, split.label_counts),
                     split.source, len(split.files))
    return splits


def _find_or_prepare(directory: str, identity: Mapping[str, object],
                     patterns: Mapping[str, str], reader: Mapping[str, object],
                     num_shards: int) -> Dict[str, object]:
    """The manifest of the preparation in `directory`, made first where there is none."""
    manifest = io_utils.read_json(io_utils.join(directory, MANIFEST_FILE))
    if manifest is not None:
        logging.info("Using the data prepared in %s", directory)
        return manifest
    logging.info("Preparing %s into %s", ", ".join(patterns.values()), directory)
    try:
        with io_utils.atomic_directory(directory) as scratch:
            return prepare(patterns, reader, num_shards, scratch, identity)
    except FileExistsError:  # another run published the same preparation meanwhile
        manifest = io_utils.read_json(io_utils.join(directory, MANIFEST_FILE))
    if manifest is None:
        raise cli.UserError(f"{directory} holds no {MANIFEST_FILE}: another run is still "
                            f"copying it there, or stopped doing so; wait for that run, or "
                            f"delete {directory} to prepare the data again")
    return manifest


def cache_identity(data_config, patterns: Mapping[str, str],
                   num_shards: int) -> Dict[str, object]:
    """What a preparation is of: the reading flags, --num_shards, and for each split its
    pattern and the files it matches (absolute path, size, modification time in ns)."""
    reader = {name: value for name, value in dataclasses.asdict(data_config).items()
              if name not in _SPLIT_FLAGS.values()}
    return {"format": FORMAT_VERSION, "reader": reader, "num_shards": num_shards,
            "splits": {split: {"pattern": pattern,
                               "files": [_file_identity(path)
                                         for path in data.matching_files(pattern)]}
                       for split, pattern in patterns.items()}}


def cache_key(identity: Mapping[str, object]) -> str:
    """The directory name of the preparation `identity` describes."""
    text = json.dumps(identity, sort_keys=True, ensure_ascii=False)
    return "prepared-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def _file_identity(path: str) -> List[object]:
    try:
        size, mtime_ns = io_utils.stat(path)
    except OSError as error:
        raise data.DataError(f"{path}: cannot read file: {error.strerror or error}") from error
    return [io_utils.abspath(path), size, mtime_ns]


def splits_of(manifest: Mapping[str, object], directory: str) -> Dict[str, StreamedSplit]:
    """The splits a manifest describes, their shards under `directory` (checked present)."""
    splits = {}
    for name, entry in manifest["splits"].items():
        files = tuple(io_utils.join(directory, file) for file in entry["files"])
        missing = [path for path in files if not io_utils.exists(path)]
        if missing:
            raise cli.UserError(f"{missing[0]}: a shard of the prepared data is missing (still "
                                f"being copied by another run, or deleted): wait for that "
                                f"run, or delete {directory} to prepare it again")
        splits[name] = StreamedSplit(
            source=entry["source"], files=files, shard_counts=tuple(entry["shard_counts"]),
            class_names=tuple(manifest["class_names"]),
            label_table=tuple(tuple(v) if isinstance(v, list) else v
                              for v in entry["label_table"]),
            label_counts=tuple(entry["label_counts"]), fingerprint=entry["fingerprint"],
            pairs=manifest["pairs"], skipped_rows=entry["skipped_rows"])
    return splits


def _summary(split: StreamedSplit) -> data.Examples:
    """An Examples with one row per class that `split` holds (for the label-coverage
    warnings, which look only at which labels occur)."""
    present = tuple(i for i, count in enumerate(split.label_counts) if count)
    return data.Examples(texts=("",) * len(present), labels=present, source=split.source,
                         class_names=split.class_names)


# ---------------------------------------------------------------------------------------------
# Preparing
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Written:
    """What writing one split's shards saw: its examples' label values (raw label -> value
    id, in order of first occurrence, with the row it first occurs in and its count)."""

    source: str
    files: List[str]
    shard_counts: List[int]
    values: Dict[object, int] = dataclasses.field(default_factory=dict)
    first_origins: List[str] = dataclasses.field(default_factory=list)
    value_counts: List[int] = dataclasses.field(default_factory=list)
    skipped_rows: int = 0


def prepare(patterns: Mapping[str, str], reader: Mapping[str, object], num_shards: int,
            directory: str, identity: Mapping[str, object]) -> Dict[str, object]:
    """Writes the shards and manifest of `patterns`' splits (read with `reader`, as
    `data.reader_options` gives) into local `directory`; returns the manifest."""
    spec = reader["labels"]
    with tempfile.TemporaryDirectory(prefix="bert_tf2-prepare-") as spool:
        written = {split: _write_split(split, pattern, reader, num_shards, directory,
                                       io_utils.join(spool, split))
                   for split, pattern in patterns.items()}
        # encode_labels on one row per label value: its checks and messages (the first row
        # of a label training never shows, fewer than two classes) are those of the data.
        encoded = data.encode_labels({split: _label_values(w) for split, w in written.items()},
                                     spec)
        class_names = encoded["train"].class_names
        manifest = {"format": FORMAT_VERSION, "identity": identity,
                    "class_names": list(class_names),
                    "pairs": bool(reader["text_b_column"]), "splits": {}}
        for split, w in written.items():
            table = encoded[split].labels
            manifest["splits"][split] = {
                "source": w.source, "files": [io_utils.basename(f) for f in w.files],
                "shard_counts": w.shard_counts, "skipped_rows": w.skipped_rows,
                "label_table": table,
                "label_counts": _class_counts(table, w.value_counts, len(class_names)),
                "fingerprint": _fingerprint(io_utils.join(spool, split), class_names, table,
                                            sum(w.shard_counts),
                                            pairs=bool(reader["text_b_column"]))}
    io_utils.write_json(manifest, io_utils.join(directory, MANIFEST_FILE))
    return manifest


def _write_split(split: str, pattern: str, reader: Mapping[str, object], num_shards: int,
                 directory: str, spool: str) -> _Written:
    """Streams `pattern`'s examples into `num_shards` TFRecord files (example j into shard
    j % num_shards) and spools their texts and label value ids for the fingerprint."""
    files = [io_utils.join(directory, f"{split}-{i:05d}-of-{num_shards:05d}.tfrecord")
             for i in range(num_shards)]
    w = _Written(source=pattern, files=files, shard_counts=[0] * num_shards)
    bad_row = data.BadRows(skip=reader["skip_bad_rows"])
    options = {key: value for key, value in reader.items() if key != "skip_bad_rows"}
    writers = [tf.io.TFRecordWriter(path) for path in files]
    spooled = [io_utils.open(io_utils.join(spool, name), "w", encoding="utf-8")
               for name in ("texts", "texts_b", "values")]
    try:
        for j, (text, text_b, label, origin) in enumerate(
                data.iter_examples(pattern, bad_row=bad_row, **options)):
            value = _value_id(w, label, origin)
            writers[j % num_shards].write(_record(text, text_b, value))
            w.shard_counts[j % num_shards] += 1
            separator = ", " if j else ""
            spooled[0].write(separator + json.dumps(text, ensure_ascii=False))
            if text_b is not None:
                spooled[1].write(separator + json.dumps(text_b, ensure_ascii=False))
            spooled[2].write(f"{value}\n")
    finally:
        for f in writers + spooled:
            f.close()
    w.skipped_rows = bad_row.count
    return w


def _value_id(w: _Written, label: object, origin: str) -> int:
    value = w.values.setdefault(label, len(w.values))
    if value == len(w.first_origins):
        w.first_origins.append(origin)
        w.value_counts.append(0)
    w.value_counts[value] += 1
    return value


def _record(text: str, text_b: Optional[str], value: int) -> bytes:
    features = {"text": _bytes_feature(text), "value": tf.train.Feature(
        int64_list=tf.train.Int64List(value=[value]))}
    if text_b is not None:
        features["text_b"] = _bytes_feature(text_b)
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def _bytes_feature(text: str) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode("utf-8")]))


def _label_values(w: _Written) -> data.Examples:
    """One example per label value of a written split, in order of first occurrence."""
    values = tuple(w.values)
    return data.Examples(texts=("",) * len(values), labels=values, source=w.source,
                         origins=tuple(w.first_origins))


def _class_counts(table: Sequence[object], value_counts: Sequence[int],
                  num_classes: int) -> List[int]:
    counts = [0] * num_classes
    for label, count in zip(table, value_counts):
        for class_id in (label,) if isinstance(label, int) else (
                i for i, on in enumerate(label) if on):
            counts[class_id] += count
    return counts


def _fingerprint(spool: str, class_names: Sequence[str], table: Sequence[object],
                 count: int, *, pairs: bool) -> Dict[str, object]:
    """`data.fingerprint` of the spooled split, computed by streaming the same bytes."""
    digest = hashlib.sha256()

    def part(pieces: Iterable[str]) -> None:
        for piece in pieces:
            digest.update(piece.encode("utf-8"))
        digest.update(b"\0")

    part([json.dumps(tuple(class_names), ensure_ascii=False)])
    part(["[", *_chunks(io_utils.join(spool, "texts")), "]"])
    part(["[", *_chunks(io_utils.join(spool, "texts_b")), "]"] if pairs else ["null"])
    labels = [json.dumps(label, ensure_ascii=False) for label in table]
    with io_utils.open(io_utils.join(spool, "values"), encoding="utf-8") as values:
        part(["[", *_joined(labels[int(v)] for v in values), "]"])
    return {"examples": count, "sha256": digest.hexdigest()}


def _joined(pieces: Iterable[str]) -> Iterable[str]:
    for i, piece in enumerate(pieces):
        yield (", " if i else "") + piece


def _chunks(path: str) -> Iterable[str]:
    with io_utils.open(path, encoding="utf-8") as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                return
            yield chunk


# ---------------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------------

def examples_dataset(split: StreamedSplit, *, training: bool, seed: int = 0,
                     input_context=None,
                     class_weights: Optional[Sequence[float]] = None) -> tf.data.Dataset:
    """This input pipeline's examples of `split`, as `input_pipeline.make_dataset` slices
    them from memory: ((text[, text_b]), label[, weight]).

    The pipeline reads shards input_pipeline_id, +num_input_pipelines, ... (its own, none
    another reads); in order for evaluation (one pipeline: the examples as read), in an order
    shuffled by `seed` each epoch for `training`.
    """
    pipelines, pipeline = ((input_context.num_input_pipelines, input_context.input_pipeline_id)
                           if input_context is not None else (1, 0))
    files, counts = split.files[pipeline::pipelines], split.shard_counts[pipeline::pipelines]
    if not sum(counts) and (training or not files):
        raise cli.UserError(
            f"{split.source}: prepared as {len(split.files)} shards holding {len(split)} "
            f"examples, which leaves input pipeline {pipeline} of {pipelines} none: pass "
            f"--num_shards={pipelines} or more (and data with at least one example a shard)")
    dataset = tf.data.Dataset.from_tensor_slices(list(files))
    if training:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.interleave(tf.data.TFRecordDataset, cycle_length=len(files),
                                 block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
                                 deterministic=True)
    # Parsed a batch of records at a time (far cheaper than one by one), then single again.
    dataset = dataset.batch(_PARSE_BATCH).map(
        _parser(split, class_weights), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True).unbatch()
    options = tf.data.Options()
    # Shared out by file: by this function per input pipeline, or by tf.distribute when
    # one dataset is distributed (`experimental_distribute_dataset`).
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.FILE if input_context is None
        else tf.data.experimental.AutoShardPolicy.OFF)
    return dataset.with_options(options)


def _parser(split: StreamedSplit, class_weights: Optional[Sequence[float]]):
    spec = {"text": tf.io.FixedLenFeature([], tf.string),
            "value": tf.io.FixedLenFeature([], tf.int64)}
    if split.pairs:
        spec["text_b"] = tf.io.FixedLenFeature([], tf.string)
    table = tf.constant(split.label_table, tf.int32)
    weights = None if class_weights is None else tf.constant(class_weights, tf.float32)

    def parse(records):
        features = tf.io.parse_example(records, spec)
        segments = (features["text"],) + ((features["text_b"],) if split.pairs else ())
        label = tf.gather(table, features["value"])
        if weights is None:
            return segments, label
        return segments, label, tf.gather(weights, label)

    return parse


def make_dataset(split: StreamedSplit, *, batch_size: int, preprocessor, seq_length: int,
                 training: bool, seed: int = 0,
                 shuffle_buffer: int = config_lib.DEFAULT_SHUFFLE_BUFFER, input_context=None,
                 class_weights: Optional[Sequence[float]] = None,
                 **batching) -> tf.data.Dataset:
    """`input_pipeline.make_dataset`'s batches of a streamed split (`batching`: its padding,
    bucketing, truncation, static shapes and skip_batches), shuffled for `training`
    through `shuffle_buffer` examples."""
    return input_pipeline.batch_examples(
        examples_dataset(split, training=training, seed=seed, input_context=input_context,
                         class_weights=class_weights),
        shuffle_buffer=max(1, min(shuffle_buffer, len(split))), batch_size=batch_size,
        preprocessor=preprocessor, seq_length=seq_length, training=training, seed=seed,
        input_context=input_context, **batching)


def texts_dataset(split: StreamedSplit, *, seed: int, shuffle_buffer: int) -> tf.data.Dataset:
    """The first texts of `split`, shuffled through `shuffle_buffer` and repeated: what
    masked-LM pretraining (`bert_tf2.pretrain`) streams."""
    texts = examples_dataset(split, training=True, seed=seed).map(
        lambda segments, *_: segments[0])
    return texts.shuffle(max(1, min(shuffle_buffer, len(split))), seed=seed).repeat()
