"""What a training run is, as data: frozen config objects built once from the flags.

  TrainConfig
    model_dir, seed
    data       DataConfig       where the labelled examples come from and how rows are read
    input      InputConfig      how the tf.data pipeline pads and batches them
    modules    ModulesConfig    the TF Hub preprocess/encoder modules (and how to build them)
    pretrain   PretrainConfig   masked-LM pretraining of a newly built encoder
    model      ModelConfig      the classifier over the encoder
    optimizer  OptimizerConfig  AdamW and its warmup/decay schedule
    trainer    TrainerConfig    batch sizes, epochs, step cap, backups
    runtime    RuntimeConfig    strategy, dtype policy, XLA, steps per execution
    export     ExportConfig     where the SavedModel versions go

`DistillConfig` is a training run of a student that learns a teacher's outputs
(`bert_tf2.distill`): a TrainConfig with a `distill` part. `PredictConfig`,
`EvaluateConfig` and `LiteExportConfig` describe a run of `bert_tf2.predict`,
`bert_tf2.evaluate` and `bert_tf2.export_lite` the same way.

`TrainConfig.from_flags(flag_values)` is the one place the training flags are read, and the
place every implied setting is derived (`_with_implied_settings`). Each run writes the result
to `model_dir/run_config.json`; `--run_config=that file` starts the same run again, with the
flags given beside it overriding its values.

This module imports no TensorFlow: the CLIs parse their flags before paying for it.
"""

import dataclasses
import json
import typing
from typing import Any, Callable, Dict, List, Mapping, Optional

from absl import logging

from bert_tf2 import cli
from bert_tf2 import io_utils

# Choices of the enum flags; the modules that implement them check against these.
STRATEGIES = ("one_device", "mirrored", "multi_worker_mirrored", "tpu")
NORMALIZATIONS = ("bert_original", "tf_hub")
TASKS = ("binary", "multiclass", "multilabel")
TRUNCATIONS = ("head", "tail", "head_tail")
CLASS_WEIGHTS = ("none", "balanced")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
QUANTIZATIONS = ("dynamic", "float16", "int8", "none")  # bert_tf2.export_lite

RUN_CONFIG_FILE = "run_config.json"
# The served label is 1 where P(positive) >= this (a multilabel class is on where its
# probability is): the export, evaluate and the client use it.
DECISION_THRESHOLD = 0.5
# Texts a served request classifies at once: a request of any size is cut into sub-batches of
# this many length-sorted texts, so memory stays bounded and short texts stay short.
SERVING_SUB_BATCH = 64
# The binary task's class names: its label ids, as the classify signature reports them.
BINARY_CLASS_NAMES = ("0", "1")
# Salts the hash that splits the built-in corpus into train/dev/test (`data`). The split is
# the same whatever a run's --seed: the shipped quickstart encoder was pretrained on its
# training texts, so any other split would put reviews it has seen into dev and test.
BUILTIN_SPLIT_SALT = 42
# --num_shards and --shuffle_buffer by default: they shape only streamed data (--data_cache).
DEFAULT_NUM_SHARDS = 8
DEFAULT_SHUFFLE_BUFFER = 100_000


def _flag(name: Optional[str] = None) -> dataclasses.Field:
    """A field read from the flag `name` (default: the field's own name)."""
    return dataclasses.field(metadata={"flag": name})


def _derived() -> dataclasses.Field:
    """A field no flag sets: `from_flags` derives it from others."""
    return dataclasses.field(metadata={"derived": True})


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Labelled CSV/TSV/JSONL files (the built-in corpus when `train_data` is unset): which
    columns hold the text(s) and the label, and what a label is (the task)."""

    train_data: Optional[str] = _flag()
    eval_data: Optional[str] = _flag()
    test_data: Optional[str] = _flag()
    column_names: Optional[str] = _flag()  # 'a,b,c': the columns of headerless CSV/TSV files
    text_column: str = _flag()
    text_b_column: Optional[str] = _flag()  # the second text of sentence pairs
    label_column: str = _flag()
    task: str = _flag()  # binary | multiclass | multilabel
    label_map: Optional[str] = _flag()  # binary: '差评:0,好评:1'; None: the default names
    class_names: Optional[str] = _flag()  # 'a,b,c'; None: the training split's labels, sorted
    label_separator: str = _flag()  # multilabel: between the labels of one cell
    allow_single_label_rows: bool = _flag()  # multilabel: no row with two labels is meant so
    skip_bad_rows: bool = _flag()
    encoding: str = _flag()  # a Python codec name, or 'auto' (data.iter_lines)

    @classmethod
    def from_flags(cls, flag_values) -> "DataConfig":
        """The data flags of a command that reads no other part of a TrainConfig."""
        return _build(cls, lambda name: flag_values[name].value)


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """How examples become batches: token budget, padding and length buckets."""

    seq_length: int = _flag()
    truncation: str = _flag()  # head | tail | head_tail: which tokens of a long text stay
    dynamic_padding: bool = _flag()
    bucket_by_length: bool = _flag()
    # Every batch full and padded to a bucket boundary (`input_pipeline.make_dataset`): what a
    # TPU compiles for, so the tpu strategy forces it.
    static_shapes: bool = _flag()
    # Streamed training (`bert_tf2.prepared_data`): where the prepared shards are (None: the
    # examples are held in memory), how many shards a split gets, the shuffle buffer.
    data_cache: Optional[str] = _flag()
    num_shards: int = _flag()
    shuffle_buffer: int = _flag()
    # XLA compiles one program per input shape: under --jit_compile (and with static shapes)
    # a batch is padded to the next bucket boundary instead of its longest member.
    pad_to_bucket_boundary: bool = _derived()


@dataclasses.dataclass(frozen=True)
class ModulesConfig:
    """The preprocess and encoder modules, and what to build them from when missing."""

    preprocess_handle: str = _flag()
    encoder_handle: str = _flag()
    build_missing: bool = _flag("build_missing_modules")
    vocab_file: Optional[str] = _flag()
    bert_config_file: Optional[str] = _flag()
    init_checkpoint: Optional[str] = _flag()
    normalization: str = _flag()


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Masked-LM pretraining of a newly built encoder on the training texts (0 epochs: none)."""

    epochs: int = _flag("pretrain_epochs")
    learning_rate: float = _flag("pretrain_learning_rate")
    batch_size: int = _flag("pretrain_batch_size")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The classifier: encoder -> pooled [CLS] -> dropout -> Dense(1, sigmoid)."""

    dropout: float = _flag()
    # -1: the whole encoder trains; 0: none of it (only the head); N: its top N transformer
    # layers and the pooler.
    trainable_encoder_layers: int = _flag()
    rebuild_encoder_under_policy: bool = _flag()
    # The encoder is rebuilt as a BertEncoder (`model.rebuild_encoder`): with
    # --rebuild_encoder_under_policy (a SavedModel computes in the dtypes it was saved with,
    # and every position of its last layer), and to train only its top layers (a hub layer
    # trains all its variables or none).
    rebuild_encoder: bool = _derived()


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warmup, then linear decay to 0."""

    learning_rate: float = _flag()
    warmup_fraction: float = _flag()
    weight_decay: float = _flag()


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """How long to train, on how large batches, and how often to back up."""

    batch_size: int = _flag()
    eval_batch_size: int = _flag()
    epochs: int = _flag()
    train_steps: Optional[int] = _flag()  # a cap on optimizer steps; None or 0: no cap
    checkpoint_steps: Optional[int] = _flag()
    class_weights: str = _flag()  # none | balanced: weigh examples by 1 / their class's share


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """Where and in what precision the steps run."""

    distribution_strategy: str = _flag()
    num_gpus: Optional[int] = _flag()
    tpu: Optional[str] = _flag()
    mixed_precision: str = _flag()
    jit_compile: bool = _flag()
    steps_per_execution: int = _flag()


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """Where the SavedModel versions go (none without `export_dir`) and how many stay."""

    export_dir: Optional[str] = _flag()
    keep_exports: Optional[int] = _flag()
    export_best: bool = _flag()  # the epoch with the best dev score, not the last


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run, from data to export."""

    model_dir: str = _flag()
    seed: int = _flag()
    data: DataConfig
    input: InputConfig
    modules: ModulesConfig
    pretrain: PretrainConfig
    model: ModelConfig
    optimizer: OptimizerConfig
    trainer: TrainerConfig
    runtime: RuntimeConfig
    export: ExportConfig

    @classmethod
    def from_flags(cls, flag_values) -> "TrainConfig":
        """The run the parsed training flags describe (`bert_tf2.train.define_flags`).

        With --run_config, that file's run, where each flag given on the command line (or in
        a flag file) overrides the value it sets.
        """
        base = {}
        if flag_values.run_config:
            io_utils.check_path(flag_values.run_config, "--run_config")
            base = flag_values_of(load(flag_values.run_config, cls,
                                       defaults=lambda name: flag_values[name].default))

        def value(name: str):
            flag = flag_values[name]
            return flag.value if flag.present or name not in base else base[name]

        config = _checked(_with_implied_settings(_build(cls, value)))
        check_paths(config)
        return config

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with `changes` ("runtime.jit_compile": True, "seed": 1, ...) and the
        settings they imply derived again."""
        config = self
        for path, value in changes.items():
            config = _replace_path(config, path.split("."), value)
        return _with_implied_settings(config)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, values: Mapping[str, Any],
                  defaults: Optional[Callable[[str], Any]] = None,
                  filled: Optional[List[str]] = None) -> "TrainConfig":
        """The config `values` holds. A field it lacks is refused, or with `defaults`
        (flag name -> value) takes `defaults(flag)` and its flag is appended to `filled`;
        derived fields are derived again. Unknown fields are always refused."""
        filled = [] if filled is None else filled
        config = _from_dict(cls, values, "run config", defaults, filled)
        return _with_implied_settings(config) if defaults is not None else config


@dataclasses.dataclass(frozen=True)
class DistillationConfig:
    """The teacher, the texts it labels beside the training split, the student and the loss."""

    teacher: Optional[str] = _flag()  # an export of this project (export_dir[/version])
    unlabeled_data: Optional[str] = _flag()  # comma-separated files or patterns
    unlabeled_input_format: str = _flag()  # auto | text | csv | tsv | jsonl, as predict reads
    student_num_layers: Optional[int] = _flag()
    student_hidden_size: Optional[int] = _flag()  # None: the teacher's
    student_encoder: Optional[str] = _flag()  # a TF Hub-format encoder module
    temperature: float = _flag()
    hard_label_weight: float = _flag()


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How one invocation of bert_tf2.train or bert_tf2.distill treats what earlier ones left.

    Not part of the run (`TrainConfig`): a run_config.json holding --overwrite would wipe the
    run it is meant to resume.
    """

    overwrite: bool = _flag()  # start afresh in a --model_dir holding another run
    export_new_task: bool = _flag()  # export another contract over the served one

    @classmethod
    def from_flags(cls, flag_values) -> "RunOptions":
        return _build(cls, lambda name: flag_values[name].value)


@dataclasses.dataclass(frozen=True)
class DistillConfig(TrainConfig):
    """A training run whose student learns the outputs of `distill.teacher`.

    Its `modules.encoder_handle` is the student's encoder module, which the run builds in
    model_dir (`bert_tf2.distill.student_module_dir`) and then trains as training does.
    """

    distill: DistillationConfig


def _with_implied_settings(config: TrainConfig) -> TrainConfig:
    """`config` with its derived fields set from the settings that imply them (a UserError
    for settings that exclude each other)."""
    mixed = config.runtime.mixed_precision != "float32"
    partly_trainable = config.model.trainable_encoder_layers > 0
    if partly_trainable and mixed and not config.model.rebuild_encoder_under_policy:
        raise cli.UserError(
            f"--trainable_encoder_layers={config.model.trainable_encoder_layers} rebuilds the "
            f"encoder as a BertEncoder, which computes in --mixed_precision="
            f"{config.runtime.mixed_precision}: drop --norebuild_encoder_under_policy, or use "
            "--trainable_encoder_layers=-1 or 0")
    static = config.input.static_shapes or config.runtime.distribution_strategy == "tpu"
    return dataclasses.replace(
        config,
        input=dataclasses.replace(config.input, static_shapes=static,
                                  pad_to_bucket_boundary=config.runtime.jit_compile or static),
        model=dataclasses.replace(config.model, rebuild_encoder=(
            partly_trainable or config.model.rebuild_encoder_under_policy)))


# Flags a resumed run may set otherwise than the run it resumes: where files go and how the
# steps are run, not which model the steps make (`resume_differences`).
RESUMABLE_CHANGES = frozenset({
    "model_dir", "export_dir", "keep_exports", "checkpoint_steps", "eval_batch_size",
    "test_data", "distribution_strategy", "num_gpus", "tpu", "jit_compile",
    "steps_per_execution", "static_shapes", "data_cache"})
# How the data is read: compared through the fingerprints of what was read, when both runs
# have them, so a moved file or another spelling of the same columns may resume.
_READING_FLAGS = frozenset(
    (field.metadata.get("flag") or field.name) for field in dataclasses.fields(DataConfig)
) - {"task", "test_data"}


def resume_differences(interrupted: TrainConfig, resumed: TrainConfig, *,
                       compare_reading: bool = True) -> Dict[str, Any]:
    """{flag: (interrupted value, resumed value)} for each flag that differs between the two
    runs and changes the model the steps make; `compare_reading=False` leaves out how the
    data is read (the caller compares what was read instead)."""
    skipped = RESUMABLE_CHANGES | (frozenset() if compare_reading else _READING_FLAGS)
    before, after = flag_values_of(interrupted), flag_values_of(resumed)
    return {name: (before[name], after[name]) for name in sorted(before)
            if name not in skipped and before[name] != after[name]}


def _checked(config: TrainConfig) -> TrainConfig:
    """`config`, once every number of the run is in its range; else a UserError naming the
    flag, its value and the range. Each of these would otherwise train a broken model (or
    none) and still end with status 0."""
    ranges = (  # flag, value, valid, the range in words
        ("learning_rate", config.optimizer.learning_rate, lambda v: v > 0, "> 0"),
        ("seq_length", config.input.seq_length, lambda v: v >= 8, ">= 8"),
        ("epochs", config.trainer.epochs, lambda v: v >= 1, ">= 1"),
        ("train_steps", config.trainer.train_steps, lambda v: v is None or v >= 0,
         ">= 0 (0: no cap)"),
        ("batch_size", config.trainer.batch_size, lambda v: v >= 1, ">= 1"),
        ("eval_batch_size", config.trainer.eval_batch_size, lambda v: v >= 1, ">= 1"),
        ("warmup_fraction", config.optimizer.warmup_fraction, lambda v: 0 <= v < 1,
         "in [0, 1)"),
        ("dropout", config.model.dropout, lambda v: 0 <= v < 1, "in [0, 1)"),
    )
    if isinstance(config, DistillConfig):
        distill = config.distill
        ranges += (
            ("temperature", distill.temperature, lambda v: v > 0, "> 0"),
            ("hard_label_weight", distill.hard_label_weight, lambda v: 0 <= v <= 1,
             "in [0, 1]"),
            ("student_num_layers", distill.student_num_layers,
             lambda v: v is None or v >= 1, ">= 1"),
            ("student_hidden_size", distill.student_hidden_size,
             lambda v: v is None or v >= 1, ">= 1"))
    for flag, value, valid, in_words in ranges:
        if not valid(value):
            raise cli.UserError(f"--{flag}={value} is out of range: it must be {in_words}")
    _check_streaming_flags(config.input)
    return config


def _check_streaming_flags(input_config: InputConfig) -> None:
    """Refuses --num_shards or --shuffle_buffer without --data_cache: they would do nothing."""
    for flag, value, default in (
            ("num_shards", input_config.num_shards, DEFAULT_NUM_SHARDS),
            ("shuffle_buffer", input_config.shuffle_buffer, DEFAULT_SHUFFLE_BUFFER)):
        if value != default and not input_config.data_cache:
            raise cli.UserError(f"--{flag}={value} shapes streamed data only: pass "
                                "--data_cache=DIR too, or drop it")


# Flags that name files or directories (local, or URLs of a TensorFlow file system), by the
# command's config class; *_data values may be globs, --unlabeled_data's a comma-separated
# list of them; the hub module handles may also be https:// URLs (TF Hub, Kaggle), which
# TF Hub downloads and which are not checked here.
_TRAINING_PATH_FLAGS = ("model_dir", "export_dir", "train_data", "eval_data", "test_data",
                        "preprocess_handle", "encoder_handle", "vocab_file",
                        "bert_config_file", "init_checkpoint", "data_cache")
_PATH_FLAGS = {
    "TrainConfig": _TRAINING_PATH_FLAGS,
    "DistillConfig": _TRAINING_PATH_FLAGS + ("teacher", "unlabeled_data", "student_encoder"),
    "PredictConfig": ("saved_model", "input", "output"),
    "EvaluateConfig": ("saved_model", "data", "output_dir", "history"),
    "LiteExportConfig": ("saved_model", "output", "representative_data"),
}
_LISTS_OF_PATHS = ("unlabeled_data",)


def check_paths(config) -> None:
    """Refuses a path flag of `config` that is a URL missing a slash (`gs:/b/x`, which would
    become a local folder named `gs:`), or whose scheme has no file system, or whose store
    does not answer (`io_utils.check_path`): one line naming the flag, before anything is
    read or written."""
    values = flag_values_of(config)
    for name in _PATH_FLAGS[type(config).__name__]:
        value = values.get(name)
        if not value:
            continue
        for path in (value.split(",") if name in _LISTS_OF_PATHS else [value]):
            if path.strip() and io_utils.scheme(path.strip()) not in ("http", "https"):
                io_utils.check_path(path.strip(), f"--{name}")


def _replace_path(obj, path, value):
    if len(path) == 1:
        return dataclasses.replace(obj, **{path[0]: value})
    return dataclasses.replace(obj, **{path[0]: _replace_path(getattr(obj, path[0]), path[1:],
                                                              value)})


def _build(cls, value):
    """`cls` with each flag field read by `value(flag name)`; derived fields are None."""
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[field.name]):
            values[field.name] = _build(hints[field.name], value)
        elif field.metadata.get("derived"):
            values[field.name] = None
        else:
            values[field.name] = value(field.metadata.get("flag") or field.name)
    return cls(**values)


def flag_values_of(config: TrainConfig) -> Dict[str, Any]:
    """{flag name: value} for every flag field of `config` (derived fields left out)."""
    result = {}

    def collect(obj):
        for field in dataclasses.fields(obj):
            value = getattr(obj, field.name)
            if dataclasses.is_dataclass(value):
                collect(value)
            elif not field.metadata.get("derived"):
                result[field.metadata.get("flag") or field.name] = value

    collect(config)
    return result


def _from_dict(cls, values: Mapping[str, Any], where: str,
               defaults: Optional[Callable[[str], Any]], filled: List[str]):
    if not isinstance(values, Mapping):
        raise ValueError(f"{where}: expected an object, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    missing = sorted(set(fields) - set(values)) if defaults is None else []
    if unknown or missing:
        raise ValueError(f"{where}: " + "; ".join(
            part for part in (f"unknown fields {', '.join(unknown)}" if unknown else "",
                              f"missing fields {', '.join(missing)}" if missing else "")
            if part))
    result = {}
    for name, field in fields.items():
        if dataclasses.is_dataclass(hints[name]):
            result[name] = _from_dict(hints[name], values.get(name, {}), f"{where}.{name}",
                                      defaults, filled)
        elif name in values:
            result[name] = values[name]
        elif field.metadata.get("derived"):
            result[name] = None  # derived again by the caller
        else:
            flag = field.metadata.get("flag") or name
            result[name] = defaults(flag)
            filled.append(flag)
    return cls(**result)


# The command that writes each kind of run config.
_RUN_KINDS = {"TrainConfig": "bert_tf2.train", "DistillConfig": "bert_tf2.distill"}


def load(path: str, cls: type = TrainConfig,
         defaults: Optional[Callable[[str], Any]] = None) -> TrainConfig:
    """The `cls` run (TrainConfig, DistillConfig) in a `run_config.json`; a UserError names the
    file and what is wrong (a run of the other kind included).

    With `defaults` (flag name -> today's default) a file written by an earlier version,
    which lacks the fields of newer flags, loads: those fields take the defaults and one
    warning names them. Unknown fields are refused either way.
    """
    filled: List[str] = []
    try:
        with io_utils.open(path, encoding="utf-8") as f:
            values = json.load(f)
        if isinstance(values, dict) and cls is TrainConfig and "distill" in values:
            raise ValueError("it is a run of bert_tf2.distill; rerun it with that command")
        config = cls.from_dict(values, defaults, filled)
    except OSError as error:
        raise cli.UserError(f"--run_config={path}: cannot read it: "
                            f"{error.strerror or error}") from error
    except (ValueError, TypeError) as error:
        raise cli.UserError(f"--run_config={path}: not a run_config.json that "
                            f"{_RUN_KINDS[cls.__name__]} wrote: {error}") from error
    if filled:
        logging.warning("%s lacks %s (written by an earlier version): today's defaults taken "
                        "(%s)", path, ", ".join(f"--{flag}" for flag in filled),
                        ", ".join(f"--{flag}={defaults(flag)!r}" for flag in filled))
    return config


# ---------------------------------------------------------------------------------------------
# The inference commands
# ---------------------------------------------------------------------------------------------

_TRAINING_DATA_FLAGS = ("train_data", "eval_data", "test_data")
_LABEL_FLAGS = ("task", "label_map", "class_names", "label_column", "label_separator",
                "allow_single_label_rows")

# Flags of other commands that a user may give predict/beam_predict or evaluate by mistake,
# and what to do instead (`cli.run`'s other_commands_flags): those commands do not define them.
PREDICT_OTHER_FLAGS = {
    **{name: "it is a training flag; predict reads --input" for name in _TRAINING_DATA_FLAGS},
    **{name: "predict reads no labels; the task and classes are the model's (its export)"
       for name in _LABEL_FLAGS},
}
EVALUATE_OTHER_FLAGS = {
    **{name: "it is a training flag; evaluate reads --data" for name in _TRAINING_DATA_FLAGS},
    **{name: "evaluate reads the task and classes off the model; --label_map, "
       "--label_separator and --label_column say how --data's labels are written"
       for name in ("task", "class_names")},
    "seed": "the built-in corpus's split is fixed whatever the seed, so evaluate has no "
            "other test split to pick; drop --seed, or pass --data (docs/evaluate_predict.md)",
}
# The fields of evaluate's reader (a DataConfig) that it defines no flag for: the task and
# classes come from the model (`bert_tf2.evaluate`), and it reads no training splits.
_EVALUATE_READER_UNSET = {"train_data": None, "eval_data": None, "test_data": None,
                          "task": None, "class_names": None}


@dataclasses.dataclass(frozen=True)
class PredictConfig:
    """One `bert_tf2.predict` run: which model, what it reads and what it writes."""

    saved_model: str = _flag()
    batch_size: int = _flag()
    input: str = _flag()
    input_format: str = _flag()
    column_names: Optional[str] = _flag()
    text_column: str = _flag()
    text_b_column: Optional[str] = _flag()
    skip_bad_rows: bool = _flag()
    encoding: str = _flag()
    top_k: Optional[int] = _flag()
    output: str = _flag()
    overwrite: bool = _flag()  # replace an existing --output file
    format: Optional[str] = _flag()
    progress: bool = _flag()

    @classmethod
    def from_flags(cls, flag_values, *, tensorflow_paths: bool = True) -> "PredictConfig":
        """The run the parsed flags of `bert_tf2.predict` describe. `tensorflow_paths`: its
        paths are read through TensorFlow's file systems (`check_paths`); bert_tf2.beam_predict
        reads them through Beam's, and checks them there."""
        config = _with_model_checked(_build(cls, lambda name: flag_values[name].value))
        if tensorflow_paths:
            check_paths(config)
        return config


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """One `bert_tf2.evaluate` run: which model, on what data, and where the report goes."""

    saved_model: Optional[str] = _flag()
    batch_size: int = _flag()
    # None: the test split the model records (bert_tf2.export.TEST_DATA_FILE), read as its
    # training run read it
    data: Optional[str] = _flag()
    reader: DataConfig  # --data's columns and labels; the task and classes come from the model
    output_dir: Optional[str] = _flag()
    history: Optional[str] = _flag()
    num_wrong: int = _flag()
    calibration_bins: int = _flag()

    @classmethod
    def from_flags(cls, flag_values) -> "EvaluateConfig":
        """The run the parsed flags of `bert_tf2.evaluate` describe."""
        _reject_reading_flags_without_data(flag_values)
        config = _build(cls, lambda name: _EVALUATE_READER_UNSET[name]
                        if name in _EVALUATE_READER_UNSET else flag_values[name].value)
        if config.saved_model or not config.history:  # else it only plots the training curves
            config = _with_model_checked(config)
        check_paths(config)
        return config


@dataclasses.dataclass(frozen=True)
class LiteExportConfig:
    """One `bert_tf2.export_lite` run: which export, which file, which quantization."""

    saved_model: str = _flag()
    output: str = _flag()
    quantization: str = _flag()
    representative_data: Optional[str] = _flag()  # int8 calibration texts
    # How --representative_data is read, as predict reads --input.
    column_names: Optional[str] = _flag()
    text_column: str = _flag()
    text_b_column: Optional[str] = _flag()
    encoding: str = _flag()
    overwrite: bool = _flag()  # replace an existing --output file

    @classmethod
    def from_flags(cls, flag_values) -> "LiteExportConfig":
        """The run the parsed flags of `bert_tf2.export_lite` describe."""
        config = _build(cls, lambda name: flag_values[name].value)
        if not config.saved_model:
            raise cli.UserError("--saved_model is required: the export to convert")
        if not (config.output or "").endswith(".tflite"):
            raise cli.UserError("--output must name a .tflite file (the file to write), got "
                                f"{config.output!r}")
        if config.representative_data and config.quantization != "int8":
            raise cli.UserError(
                f"--representative_data calibrates --quantization=int8 only; "
                f"--quantization={config.quantization} would ignore it: drop it, or pass "
                "--quantization=int8")
        reading = [name for name in ("column_names", "text_column", "text_b_column",
                                     "encoding") if flag_values[name].present]
        if reading and not config.representative_data:
            raise cli.UserError(f"--{reading[0]} says how --representative_data is read, "
                                "and there is none: drop it, or pass --representative_data "
                                "with --quantization=int8")
        check_paths(config)
        return config


def _reject_reading_flags_without_data(flag_values) -> None:
    """Refuses evaluate flags that say how --data is read when there is no --data: the test
    split the model records is read as its training run read it, so they would be ignored."""
    if flag_values["data"].value:
        return
    given = [f"--{field.metadata.get('flag') or field.name}" for field in
             dataclasses.fields(DataConfig)
             if (field.metadata.get("flag") or field.name) not in _EVALUATE_READER_UNSET
             and flag_values[field.metadata.get("flag") or field.name].present]
    if given:
        raise cli.UserError(
            f"{', '.join(given)} say(s) how --data is read, but no --data is given (the "
            "model's own test split is read as its training run read it): pass --data too, "
            "or drop them")


def _with_model_checked(config):
    """`config`, once its --saved_model and --batch_size are checked."""
    if not config.saved_model:
        raise cli.UserError("--saved_model is required: the export (export_dir, or "
                            "export_dir/VERSION) or .tflite file to run"
                            + (" (or --history, to plot training curves only)"
                               if hasattr(config, "history") else ""))
    if config.batch_size < 1:
        raise cli.UserError(f"--batch_size must be at least 1, got {config.batch_size}")
    return config
