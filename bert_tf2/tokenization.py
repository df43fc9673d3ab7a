"""In-graph tokenization that gives the ids Google's Chinese BERT was pretrained with.

Google pretrained Chinese BERT with the original `tokenization.FullTokenizer(do_lower_case=True)`
of google-research/bert. TF Hub's `bert_zh_preprocess` (Model Garden `layers.BertTokenizer`,
i.e. `tensorflow_text.BertTokenizer(lower_case=True)`) normalizes differently: its NFKC case
folding turns full-width punctuation such as （，！ into ASCII, whose ids differ in the Chinese
vocab, so most real reviews get other ids than the model saw in pretraining. Hence two
normalizations:

  "bert_original"  (default) the original tokenizer's rules, reproduced id for id in the graph
  "tf_hub"         exactly what TF Hub's preprocessing module does

The original rules, in order, and the graph ops that reproduce them:

  1. decode UTF-8, ignoring invalid bytes              unicode_transcode(errors="ignore")
  2. drop U+0000, U+FFFD and category C* but \\t\\n\\r  regex_replace
  3. Python's str.lower() of each word                 tf.strings.lower (ICU full case mapping,
                                                        final sigma included)
  4. NFD, then drop category Mn                        normalize_utf8, regex_replace
  5. split on whitespace (str.split()), and around     SplitMergeTokenizer: splits at and drops
     CJK ideographs and punctuation (ASCII 33-47,       whitespace; a lookup table says which
     58-64, 91-96, 123-126, or category P*)             characters are words of their own
  6. greedy longest-match-first WordPiece; [UNK] for   FastWordpieceTokenizer(no_pretokenization),
     words of over 200 characters or that the vocab     words longer than MAX_CHARS_PER_WORD
     cannot cover                                       replaced by [UNK] first

google-research/bert changed two of these rules over time: the November 2018 code that came with
the Chinese model drops all of C* in step 2 (as HF tokenizers still does) but gives [UNK] from 100
characters on; later code (packaged as bert-tensorflow 1.0.4) drops only Cc and Cf, keeping
private-use and unassigned characters, and allows 200. This module takes C* and 200 (docs/
tokenization.md says why); neither difference touches any text of the built-in corpus.

The character classes come from Python's own `unicodedata`, the database the original consults
(the regex engine's \\p{..} classes follow another Unicode version and cannot name the unassigned
code points that C* includes). Steps 3-5 run on whole strings, not word by word: lower-casing and
NFD neither create nor remove whitespace or ideographs, and final sigma never looks across one.
The one divergence left is TensorFlow's ICU case mapping, which predates Unicode 14: on
Python 3.11 that affects 229 code points new in Unicode 14 (letters it does not lower-case, marks
it does not know to skip when choosing a final sigma); tests/test_tokenization.py checks every
code point and shows that nothing else differs.
"""

import dataclasses
import functools
import unicodedata
from typing import Dict, List

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text
from tensorflow_text.python.ops import bert_tokenizer  # Not exported; Model Garden's route.
import tf_keras
from absl import logging
from official.nlp.modeling import layers

from bert_tf2 import cli
from bert_tf2 import io_utils
from bert_tf2.config import NORMALIZATIONS

UNKNOWN_TOKEN = "[UNK]"
MAX_CHARS_PER_WORD = 200  # The original WordpieceTokenizer's max_input_chars_per_word.
_MAX_UTF8_BYTES_PER_CHAR = 4
_SPECIAL_TOKENS = {"start_of_sequence_id": "[CLS]", "end_of_segment_id": "[SEP]",
                   "padding_id": "[PAD]", "mask_id": "[MASK]"}
# The original `_is_chinese_char`: the CJK Unified/Compatibility Ideographs blocks.
_CHINESE_CHAR_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF),
                        (0x2A700, 0x2B73F), (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF),
                        (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))
_ASCII_PUNCTUATION_RANGES = ((33, 47), (58, 64), (91, 96), (123, 126))
_UNICODE_SIZE = 0x110000
_SURROGATES = (0xD800, 0xDFFF)  # Never characters of a decoded UTF-8 string.

# SplitMergeTokenizer labels: a character starts a word, or continues the one before it.
_SPLIT, _MERGE = 0, 1
_SPLIT_MERGE = tf_text.SplitMergeTokenizer()


class VocabError(cli.UserError, ValueError):
    """A vocab.txt the tokenizer cannot use; the message names the file (and line)."""


def make_tokenizer(vocab_file: str, normalization: str = "bert_original") -> tf_keras.layers.Layer:
    """The tokenizer layer for `normalization` (see NORMALIZATIONS).

    Both have the interface of Model Garden's `layers.BertTokenizer`: strings [batch] ->
    int32 RaggedTensor [batch, (words), (wordpieces)], and `get_special_tokens_dict()`.
    """
    _check_normalization(normalization)
    if normalization == "tf_hub":
        return layers.BertTokenizer(vocab_file=vocab_file, lower_case=True)
    return OriginalBertTokenizer(vocab_file=vocab_file)


def basic_tokenize(strings: tf.Tensor, normalization: str = "bert_original") -> tf.RaggedTensor:
    """The words (string RaggedTensor [batch, (words)]) that WordPiece then splits into pieces."""
    _check_normalization(normalization)
    if normalization == "tf_hub":
        return bert_tokenizer.BasicTokenizer(lower_case=True).tokenize(strings)
    words, _ = _original_words(strings)
    return words


def read_vocab(vocab_file: str) -> List[str]:
    """The tokens of a vocab.txt as the original `load_vocab` reads them (id = line number).

    Lines end at "\\n" only and each is `str.strip()`ed, as there. A token that occurs twice
    would make the original's ids differ from line numbers, so it is an error here.
    """
    with io_utils.open(vocab_file, "rb") as f:
        lines = f.read().decode("utf-8").split("\n")
    if lines[-1] == "":
        lines.pop()
    tokens = [line.strip() for line in lines]
    seen = set()
    for line_number, token in enumerate(tokens, start=1):
        if token in seen:
            raise VocabError(f"{vocab_file}:{line_number}: token {token!r} occurs twice: "
                             "a vocab lists each token once (its id is its line)")
        seen.add(token)
    return tokens


def special_tokens_dict(tokens: List[str], vocab_file: str = "the vocab") -> Dict[str, int]:
    """Model Garden's `get_special_tokens_dict()` for `tokens`, ids looked up by token string."""
    ids = {token: index for index, token in enumerate(tokens)}
    result = {"vocab_size": len(tokens)}
    for key, token in _SPECIAL_TOKENS.items():
        if token in ids:
            result[key] = ids[token]
        else:
            logging.warning("Could not find %s as token %r in %s", key, token, vocab_file)
    return result


class OriginalBertTokenizer(tf_keras.layers.Layer):
    """The original BERT FullTokenizer(do_lower_case=True), in the graph, as a Keras layer.

    A drop-in for Model Garden's `layers.BertTokenizer`. The vocab file is kept as a
    SavedModel asset (attribute `vocab_file`); the WordPiece model built from it is a constant.
    """

    def __init__(self, *, vocab_file: str, **kwargs):
        super().__init__(**kwargs)
        tokens = read_vocab(vocab_file)
        if UNKNOWN_TOKEN not in tokens:
            raise VocabError(f"{vocab_file} lacks the unknown token {UNKNOWN_TOKEN}: add it "
                             "on a line of its own")
        self._vocab_path = vocab_file
        self._special_tokens_dict = special_tokens_dict(tokens, vocab_file)
        self.vocab_file = tf.saved_model.Asset(vocab_file)
        self._wordpiece = tf_text.FastWordpieceTokenizer(
            tokens, token_out_type=tf.int32, unknown_token=UNKNOWN_TOKEN,
            max_bytes_per_word=MAX_CHARS_PER_WORD * _MAX_UTF8_BYTES_PER_CHAR,
            no_pretokenization=True)
        _unicode_tables()  # Built now rather than on the first call.

    @property
    def vocab_size(self) -> int:
        return self._special_tokens_dict["vocab_size"]

    def call(self, inputs: tf.Tensor) -> tf.RaggedTensor:
        """strings [batch] -> int32 wordpiece ids [batch, (words), (wordpieces)]."""
        words, chars_per_word = _original_words(inputs)
        # "[UNK]" is a vocab token that no real word can equal (brackets are split off).
        flat_words = tf.where(chars_per_word > MAX_CHARS_PER_WORD, UNKNOWN_TOKEN,
                              words.flat_values)
        pieces = self._wordpiece.tokenize(flat_words)
        batch_size = tf.shape(inputs, out_type=tf.int64)[0]
        word_splits = tf.reshape(words.row_splits, [batch_size + 1])  # Keeps the static rank.
        return tf.RaggedTensor.from_row_splits(pieces, word_splits, validate=False)

    def get_special_tokens_dict(self) -> Dict[str, int]:
        """Token ids keyed by purpose, with the keys of Model Garden's BertTokenizer."""
        return dict(self._special_tokens_dict)

    def get_config(self) -> Dict[str, object]:
        return {**super().get_config(), "vocab_file": self._vocab_path}


def _check_normalization(normalization: str) -> None:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")


def _original_words(strings: tf.Tensor):
    """Steps 1-5: strings [batch] -> (words [batch, (words)], int32 characters per word)."""
    tables = _unicode_tables()
    text = tf.strings.unicode_transcode(strings, "UTF-8", "UTF-8", errors="ignore")
    text = tf.strings.regex_replace(text, tables.removed_chars, "")
    text = tf.strings.lower(text, encoding="utf-8")
    text = tf_text.normalize_utf8(text, "NFD")
    text = tf.strings.regex_replace(text, tables.nonspacing_marks, "")
    chars = tf.strings.unicode_decode(text, "UTF-8")
    own_word = tf.gather(tables.own_word_chars,
                         tf.minimum(chars.flat_values, tables.last_own_word_char + 1))
    after_own_word = tf.concat([[True], own_word], 0)[:-1]
    # SplitMergeTokenizer also splits at and drops ICU White_Space, which is exactly what
    # str.split() separates on once step 2 has run (the tests check every code point).
    starts_word = chars.with_flat_values(tf.where(own_word | after_own_word, _SPLIT, _MERGE))
    words = _SPLIT_MERGE.tokenize(text, starts_word)
    return words, tf.strings.length(words.flat_values, unit="UTF8_CHAR")


@dataclasses.dataclass(frozen=True)
class _UnicodeTables:
    removed_chars: str  # RE2 character class of what step 2 drops.
    nonspacing_marks: str  # RE2 character class of category Mn.
    own_word_chars: tf.Tensor  # bool [last_own_word_char + 2]: CJK ideograph or punctuation.
    last_own_word_char: int


@functools.lru_cache(maxsize=None)
def _unicode_tables() -> _UnicodeTables:
    """The original's character predicates, evaluated on every code point."""
    # The two-letter general categories as a [code point, letter] byte array: numpy compares
    # bytes far faster than strings.
    categories = np.frombuffer("".join(unicodedata.category(chr(cp))
                                       for cp in range(_UNICODE_SIZE)).encode("ascii"),
                               np.uint8).reshape(_UNICODE_SIZE, 2)
    major, minor = categories[:, 0], categories[:, 1]
    code_points = np.arange(_UNICODE_SIZE)
    removed = (major == ord("C")) | np.isin(code_points, [0, 0xFFFD])
    removed[[ord("\t"), ord("\n"), ord("\r")]] = False
    removed[_SURROGATES[0]:_SURROGATES[1] + 1] = False  # Not in any UTF-8 text.
    own_word = _in_ranges(code_points, _ASCII_PUNCTUATION_RANGES + _CHINESE_CHAR_RANGES)
    own_word |= major == ord("P")
    last_own_word_char = int(np.flatnonzero(own_word)[-1])
    with tf.init_scope():  # An eager constant, also when first called while tracing.
        own_word_chars = tf.constant(own_word[:last_own_word_char + 2])
    return _UnicodeTables(removed_chars=_regex_class(removed),
                          nonspacing_marks=_regex_class((major == ord("M")) & (minor == ord("n"))),
                          own_word_chars=own_word_chars,
                          last_own_word_char=last_own_word_char)


def _in_ranges(code_points: np.ndarray, ranges) -> np.ndarray:
    inside = np.zeros(code_points.shape, bool)
    for low, high in ranges:
        inside |= (code_points >= low) & (code_points <= high)
    return inside


def _regex_class(members: np.ndarray) -> str:
    """An RE2 character class of the code points where `members` is true, as ranges."""
    edges = np.diff(np.concatenate([[0], members.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    body = "".join(f"\\x{{{low:X}}}" if low == high else f"\\x{{{low:X}}}-\\x{{{high:X}}}"
                   for low, high in zip(starts, ends))
    return f"[{body}]"
