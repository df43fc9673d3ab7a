"""Export: a bert_tf2 SavedModel as one TFLite file that takes raw strings (phones, edge, CPUs).

  python -m bert_tf2.export_lite --saved_model=EXPORT[/VERSION] --output=FILE.tflite \\
      [--quantization=dynamic|float16|int8|none] [--representative_data=FILE]

The file's one signature, `serving_default`, has the export's inputs (`text`, and `text_b` for
sentence pairs; raw UTF-8 strings [n]) and outputs (binary: `probability` [n], `label` [n];
multiclass: `probabilities` [n, K], `label_id` [n], `label` (the class name) [n];
multilabel: `probabilities` [n, K], `labels` [n, K]). Inside: the tokenizer
(`lite_tokenization`, the same ids as training), packing (seq_length and truncation as the
export packs), the encoder and the head, rebuilt from the export's variables and checked to
compute what the export computes (within 1e-4, before quantization) -- an export this cannot
reproduce is refused. The file's metadata entry `bert_tf2` (JSON) holds the task, pairs,
seq_length and class names in the order of the probabilities (`lite.read_metadata`).

Ops: TFLite builtins and the TF Text custom ops ByteSplit, FastWordpieceDetokenize and
FastWordpieceTokenize, which an interpreter runs once TF Text's registrar has added them
(`bert_tf2.lite.LiteClassifier`; docs/deploy_lite.md for Android/iOS). No Select TF op.

Quantization: `dynamic` (int8 weights, float activations), `float16` (float16 weights), `int8`
(int8 weights and activations, calibrated on --representative_data, read as predict reads
--input with --text_column/--text_b_column/--column_names/--encoding; float where an op has no
int8 kernel), `none` (float32).
"""

import dataclasses
import itertools
import json
import sys
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from absl import flags, logging

from bert_tf2 import cli
from bert_tf2 import compat
from bert_tf2 import config as config_lib
from bert_tf2 import data
from bert_tf2 import flags as project_flags
from bert_tf2 import io_utils
from bert_tf2 import lite

FLAGS = flags.FLAGS
QUANTIZATIONS = config_lib.QUANTIZATIONS
# Texts the rebuilt graph is checked on against the export, and its tolerance there.
CHECK_TOLERANCE = 1e-4
REPRESENTATIVE_TEXTS = 300


@dataclasses.dataclass(frozen=True)
class LiteSpec:
    """What the TFLite file computes: the export's contract and packing."""

    task: str
    pairs: bool
    class_names: Tuple[str, ...]
    seq_length: int
    truncation: str

    def metadata(self) -> Dict[str, object]:
        return {"task": self.task, "pairs": self.pairs, "class_names": list(self.class_names),
                "seq_length": self.seq_length, "truncation": self.truncation}


def read_spec(saved_model: str) -> LiteSpec:
    """The LiteSpec of an export; a UserError for one that does not record its packing."""
    from bert_tf2 import export  # pylint: disable=g-import-not-at-top
    contract = export.read_contract(saved_model)
    packing = export.read_packing(saved_model)
    if packing is None:
        raise cli.UserError(
            f"--saved_model={saved_model}: it does not record its seq_length and truncation "
            f"({export.PACKING_FILE}), which every export of this version of bert_tf2.train "
            "writes; export the model again")
    return LiteSpec(task=contract.task, pairs=contract.pairs,
                    class_names=contract.class_names, seq_length=int(packing["seq_length"]),
                    truncation=str(packing["truncation"]))


def build_lite_module(saved_model: str, spec: LiteSpec):
    """The tf.Module whose `serve` is converted, and the loaded export (to check it against)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import tensorflow_text  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    from bert_tf2 import lite_graph  # pylint: disable=g-import-not-at-top
    from bert_tf2 import export  # pylint: disable=g-import-not-at-top
    loaded = tf.saved_model.load(saved_model)
    try:
        variables = export.weights_of(loaded, saved_model)
    except ValueError as error:
        raise cli.UserError(f"--saved_model={saved_model}: not a text classifier that "
                            "bert_tf2.train exported") from error
    preprocessor = loaded.captured_state[0]
    # A preprocessing module without the variable is TF Hub's own (its normalization).
    normalization = (preprocessor.normalization.numpy().decode()
                     if hasattr(preprocessor, "normalization") else "tf_hub")
    if normalization != "bert_original":
        raise cli.UserError(
            f"--saved_model={saved_model}: it tokenizes with normalization {normalization!r}; "
            "the TFLite tokenizer reproduces only 'bert_original' (the default)")
    vocab_file = _vocab_file(preprocessor, saved_model)
    return lite_graph.LiteTextClassifier(vocab_file, variables, spec, source=saved_model), loaded


def _vocab_file(preprocessor, saved_model: str) -> str:
    """The path of the vocab asset that the export's tokenizer reads."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    seen, todo, assets = set(), [preprocessor], set()
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, tf.saved_model.Asset):
            assets.add(obj.asset_path.numpy().decode())
        todo.extend(tf.train.TrackableView.children(obj).values())
    if len(assets) != 1:
        raise cli.UserError(f"--saved_model={saved_model}: its preprocessing holds "
                            f"{len(assets)} files ({sorted(assets)}), not one vocab")
    return assets.pop()


def check_against_export(module, loaded, spec: LiteSpec, texts: Sequence[str]) -> float:
    """The largest difference between the rebuilt graph's probabilities and the export's;
    a UserError beyond CHECK_TOLERANCE."""
    import numpy as np  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from bert_tf2 import export  # pylint: disable=g-import-not-at-top
    feeds = {export.TEXT_INPUT: tf.constant(list(texts))}
    if spec.pairs:
        feeds[export.TEXT_B_INPUT] = tf.constant(list(texts[1:]) + list(texts[:1]))
    name = export.PROBABILITY_OUTPUT if spec.task == "binary" else export.PROBABILITIES_OUTPUT
    expected = loaded.signatures[export.SERVING_SIGNATURE](**feeds)[name].numpy()
    actual = module.serve(**feeds)[name].numpy()
    error = float(np.max(np.abs(actual - expected)))
    if error > CHECK_TOLERANCE:
        raise cli.UserError(
            f"the TFLite graph rebuilt from its variables computes other probabilities than "
            f"the export (max difference {error:.2g} > {CHECK_TOLERANCE:g}): its encoder is "
            "not a BERT encoder this module can rebuild; serve the SavedModel instead")
    logging.info("Rebuilt graph matches the export (max difference %.2g)", error)
    return error


def representative_texts(path: Optional[str], spec: LiteSpec, *, text_column: str = "text",
                         text_b_column: Optional[str] = None,
                         column_names: Optional[Sequence[str]] = None,
                         encoding: str = "utf-8") -> Sequence[object]:
    """Calibration texts for int8: the first REPRESENTATIVE_TEXTS texts (pairs) of
    --representative_data, read as predict reads --input (`predict.read_texts`: plain text,
    or the --text_column and --text_b_column of CSV/TSV/JSONL); without it, the built-in
    corpus's training texts for a binary single-text model (said in a warning)."""
    from bert_tf2 import predict  # pylint: disable=g-import-not-at-top
    if path is None:
        if spec.task != "binary" or spec.pairs:
            raise cli.UserError(
                "--quantization=int8 calibrates on training texts: pass --representative_data="
                "FILE (a few hundred texts of the model's own training data: plain text, or "
                f"CSV/TSV/JSONL with --text_column{' and --text_b_column' if spec.pairs else ''})")
        logging.warning("int8: no --representative_data, so the activations are calibrated "
                        "on %d reviews of the built-in corpus's training split; pass "
                        "--representative_data=FILE of the model's own training texts if it "
                        "reads other text", REPRESENTATIVE_TEXTS)
        return data.builtin_corpus_splits()["train"].texts[:REPRESENTATIVE_TEXTS]
    if spec.pairs != bool(text_b_column):
        raise cli.UserError(
            "--representative_data: the model classifies "
            + ("pairs of texts: pass --text_b_column (and --text_column) naming its columns"
               if spec.pairs else "single texts: leave --text_b_column unset"))
    rows = predict.read_texts(path, text_column=text_column, text_b_column=text_b_column,
                              column_names=column_names, encoding=encoding)
    texts = [text for _, text in itertools.islice(rows, REPRESENTATIVE_TEXTS)]
    if not texts:
        raise cli.UserError(f"--representative_data={path}: no rows to calibrate on")
    return texts


def convert(module, quantization: str, calibration: Optional[Callable[[], Iterator]]
            ) -> bytes:
    """The TFLite flatbuffer of `module.serve` (one signature, serving_default)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.serve.get_concrete_function()], module)
    converter.allow_custom_ops = True  # the TF Text ops
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantization == "int8":
        import tensorflow_text  # pylint: disable=g-import-not-at-top
        converter.representative_dataset = calibration
        # Calibration runs the model, tokenizer included: its interpreter needs the TF Text
        # ops too (the converter's only way to say so).
        compat.set_tflite_custom_op_registerers(
            converter, tensorflow_text.tflite_registrar.SELECT_TFTEXT_OPS)
    return converter.convert()


def calibration_data(texts: Sequence[object], pairs: bool) -> Callable[[], Iterator]:
    """The converter's representative dataset: one text (pair) a sample."""
    import numpy as np  # pylint: disable=g-import-not-at-top
    from bert_tf2 import export  # pylint: disable=g-import-not-at-top

    def samples():
        for text in texts:
            pair = text if pairs else (text,)
            yield {name: np.array([value.encode("utf-8")], dtype=object)
                   for name, value in zip((export.TEXT_INPUT, export.TEXT_B_INPUT), pair)}
    return samples


def write_lite(module, spec: LiteSpec, output: str, quantization: str,
               calibration: Optional[Callable[[], Iterator]] = None) -> None:
    """Converts `module` (checked) with `quantization` and writes it to `output` atomically
    (a local file or a URL: written to a local file, then copied, `io_utils.atomic_file`)."""
    flatbuffer = with_metadata(convert(module, quantization, calibration), spec.metadata())
    with io_utils.atomic_file(output, newline="") as f:
        f.buffer.write(flatbuffer)
    logging.info("Wrote %s (%s, %.1f MB)", output, quantization, len(flatbuffer) / 1e6)


def with_metadata(flatbuffer: bytes, metadata: Dict[str, object]) -> bytes:
    """`flatbuffer` with a metadata entry lite.METADATA_NAME holding `metadata` as JSON."""
    schema, flatbuffer_utils = compat.tflite_schema(), compat.tflite_flatbuffer_utils()
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    buffer = schema.BufferT()
    buffer.data = list(json.dumps(metadata, ensure_ascii=False).encode("utf-8"))
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = lite.METADATA_NAME, len(model.buffers) - 1
    model.metadata = list(model.metadata or []) + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def export_lite(saved_model: str, output: str, quantization: str = "dynamic",
                representative_data: Optional[str] = None, **reading) -> LiteSpec:
    """Writes the TFLite file of the export `saved_model` to `output` atomically; `reading`
    (text_column, text_b_column, column_names, encoding) says how --representative_data is
    read (`representative_texts`)."""
    from bert_tf2 import export  # pylint: disable=g-import-not-at-top
    if quantization not in QUANTIZATIONS:
        raise cli.UserError(f"--quantization must be one of {', '.join(QUANTIZATIONS)}, "
                            f"got {quantization!r}")
    spec = read_spec(saved_model)
    calibration = None
    if quantization == "int8":
        calibration = calibration_data(
            representative_texts(representative_data, spec, **reading), spec.pairs)
    module, loaded = build_lite_module(saved_model, spec)
    check_against_export(module, loaded, spec, export.warmup_texts(spec.seq_length))
    write_lite(module, spec, output, quantization, calibration)
    return spec


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    flags.DEFINE_string("saved_model", None, "The export (export_dir or export_dir/VERSION) "
                        "to convert.", flag_values=flag_values)
    flags.DEFINE_string("output", None, "The .tflite file to write.", flag_values=flag_values)
    flags.DEFINE_enum("quantization", "dynamic", QUANTIZATIONS,
                      "dynamic: int8 weights; float16: float16 weights; int8: int8 weights "
                      "and activations, calibrated on --representative_data; none: float32.",
                      flag_values=flag_values)
    flags.DEFINE_string("representative_data", None,
                        "int8: training texts, read as predict reads --input (plain text, one "
                        "a line; or CSV/TSV/JSONL: --text_column, --text_b_column, "
                        f"--column_names); its first {REPRESENTATIVE_TEXTS} texts calibrate. "
                        "Default: the built-in corpus's training texts (binary single-text "
                        "models only).", flag_values=flag_values)
    project_flags.define_text_reading_flags(flag_values)
    flags.DEFINE_bool("overwrite", False, "Replace an existing --output file.",
                      flag_values=flag_values)


def main(argv):
    from bert_tf2 import predict  # pylint: disable=g-import-not-at-top
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = config_lib.LiteExportConfig.from_flags(FLAGS)
    saved_model = predict.resolve_saved_model(config.saved_model)
    io_utils.check_writable_file(config.output, "--output", overwrite=config.overwrite)
    spec = export_lite(saved_model, config.output, config.quantization,
                       config.representative_data, text_column=config.text_column,
                       text_b_column=config.text_b_column or None,
                       column_names=data.parse_names(config.column_names, "--column_names"),
                       encoding=config.encoding)
    print(f"export_lite: {config.output} ({config.quantization}, "
          f"{io_utils.getsize(config.output) / 1e6:.1f} MB): {spec.task} "
          f"{'pairs' if spec.pairs else 'texts'}, classes {','.join(spec.class_names)}",
          file=sys.stderr)


if __name__ == "__main__":
    cli.run("export_lite", main, define_flags)
