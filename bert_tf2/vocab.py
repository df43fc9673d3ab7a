"""Builds a small WordPiece vocab from training texts, for encoders trained from scratch.

The quickstart trains a tiny BERT from random init on the built-in corpus, where the 21,128-token
Google vocab would be mostly unused rows of the embedding table. This builds a vocab from the
words the project's own tokenizer produces (`tokenization.basic_tokenize`, so the vocab and the
preprocessing module agree on what a word is):

  - the special tokens [PAD] [UNK] [CLS] [SEP] [MASK] first;
  - every word seen at least `min_count` times (for Chinese: single characters);
  - every character of the remaining words, alone and as a `##` continuation, so that any word
    spelled with known characters is covered piece by piece instead of becoming [UNK].

Order is by frequency, ties broken by the token itself, so the output is deterministic.

  python -m bert_tf2.vocab --output=configs/vocab_snownlp.txt
"""

import collections
from typing import Iterable, List

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from absl import flags, logging
import tensorflow as tf

from bert_tf2 import cli
from bert_tf2 import data
from bert_tf2 import flags as project_flags
from bert_tf2 import io_utils
from bert_tf2 import tokenization

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_BATCH = 1024


def count_words(texts: Iterable[str]) -> collections.Counter:
    """How often each word of the tokenizer's basic (pre-WordPiece) split occurs."""
    texts = list(texts)
    counts = collections.Counter()
    for start in range(0, len(texts), _BATCH):
        words = tokenization.basic_tokenize(tf.constant(texts[start:start + _BATCH]))
        counts.update(word.decode("utf-8") for word in words.flat_values.numpy())
    return counts


def build_vocab(texts: Iterable[str], *, min_count: int = 2) -> List[str]:
    """The vocab (list of tokens, id = position) for `texts`; see the module docstring."""
    word_counts = count_words(texts)
    token_counts = collections.Counter()
    for word, count in word_counts.items():
        if count >= min_count:
            token_counts[word] += count
        if len(word) > 1 or count < min_count:
            token_counts[word[0]] += count
            for char in word[1:]:
                token_counts["##" + char] += count
    ranked = sorted((token for token, count in token_counts.items()
                     if count >= min_count and token not in SPECIAL_TOKENS),
                    key=lambda token: (-token_counts[token], token))
    return list(SPECIAL_TOKENS) + ranked


def write_vocab(tokens: List[str], path: str) -> None:
    with io_utils.atomic_file(path) as f:
        f.writelines(token + "\n" for token in tokens)


def main(argv):
    del argv
    flags_ = flags.FLAGS
    if flags_.train_data:
        texts = data.read_examples(flags_.train_data, **data.reader_options(flags_)).texts
    else:
        texts = data.builtin_corpus_splits()["train"].texts
    tokens = build_vocab(texts, min_count=flags_.min_count)
    write_vocab(tokens, flags_.output)
    logging.info("Wrote %d tokens to %s", len(tokens), flags_.output)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    project_flags.define_data_flags(flag_values)
    project_flags.define_vocab_flags(flag_values)
    flags.mark_flag_as_required("output", flag_values=flag_values)


if __name__ == "__main__":
    cli.run("vocab", main, define_flags)
