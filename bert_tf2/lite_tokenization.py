"""The original BERT tokenizer (`tokenization.OriginalBertTokenizer`'s ids) from ops TFLite runs.

`tokenization.py` normalizes with regex, case-mapping and Unicode ops that TFLite lacks. This
module computes the same ids from TFLite builtins (integer arithmetic, gathers, masks, cumsums)
and three TF Text ops that TF Text registers for TFLite (`tensorflow_text.tflite_registrar`):
`ByteSplit`, `FastWordpieceDetokenize`, `FastWordpieceTokenize` (in the converted file:
`TFText>ByteSplitWithOffsets`, `TFText>FastWordpieceDetokenize`,
`FastWordpieceTokenizeWithOffsets`) -- no Select TF (Flex) op.

  1. ByteSplit, then UTF-8 decoding in integer ops: a byte that does not start a well-formed
     sequence (continuation, C0/C1/F5-FF, overlong, surrogate, beyond U+10FFFF, cut short) is
     dropped, which is what Python's `decode("utf-8", "ignore")` keeps too.
  2. Per code point, one lookup in a two-level table computed here with Python's `unicodedata`
     (the database the original consults): dropped (U+0000, U+FFFD, category C* but \\t\\n\\r),
     else the characters of `strip_Mn(NFD(c.lower()))` -- at most MAX_EXPANSION -- each with
     whether it is whitespace (`str.isspace`) or a word of its own (CJK ideograph or
     punctuation), and its casing. Capital sigma becomes final sigma where the original's
     `str.lower()` makes it so: after a cased character and not before one, case-ignorable
     characters skipped (Python's rule; cased and case-ignorable as its `str.lower` sees them).
  3. Words: whitespace splits and is dropped, a CJK ideograph or punctuation is a word alone.
  4. Each word becomes a string again by FastWordpieceDetokenize over a vocab of single
     characters (c, ##c): only characters that occur in the WordPiece vocab are kept as
     themselves; any other becomes one placeholder that occurs in no token. A word holding one
     cannot be covered by the vocab either way, so it is [UNK] either way, and so is a word of
     over MAX_CHARS_PER_WORD characters (all placeholders).
  5. FastWordpieceTokenize (no pretokenization): the word's pieces.

One divergence from the original, met by none of the texts tests/test_lite.py compares (every
text of the built-in corpus, the hostile-input strings, full-width punctuation, accents, emoji
and control characters): canonical reordering of non-Mn combining marks (category Mc with a
nonzero combining class) after NFD is not done.
"""

import dataclasses
import functools
import unicodedata
from typing import List, Tuple

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text

from bert_tf2 import tokenization

MAX_EXPANSION = 4  # The most characters one code point becomes (lower, NFD, drop Mn).
_BLOCK_BITS = 8
_BLOCK = 1 << _BLOCK_BITS
_PLACEHOLDER_CANDIDATES = "\ue000\ue001\ue002\uf8ff"
_CAPITAL_SIGMA, _SIGMA, _FINAL_SIGMA = 0x3A3, "\u03c3", "\u03c2"
_REMOVED_ROW = 0
_UNCASED, _CASED, _CASE_IGNORABLE = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class _Tables:
    """Numpy tables of the per-code-point rules (see the module docstring, step 2)."""

    blocks: np.ndarray        # int32 [0x110000 >> 8]: block number -> first row in `rows`
    rows: np.ndarray          # int32 [blocks * 256]: code point -> character class
    chars: np.ndarray         # int32 [classes, MAX_EXPANSION]: character ids, -1 for none
    space: np.ndarray         # bool [classes, MAX_EXPANSION]
    own_word: np.ndarray      # bool [classes, MAX_EXPANSION]
    casing: np.ndarray        # int32 [classes]: _UNCASED, _CASED or _CASE_IGNORABLE
    characters: Tuple[str, ...]  # character id -> character; the last is the placeholder


def _is_own_word(char: str) -> bool:
    cp = ord(char)
    return (any(low <= cp <= high for low, high in
                tokenization._ASCII_PUNCTUATION_RANGES + tokenization._CHINESE_CHAR_RANGES)
            or unicodedata.category(char).startswith("P"))


def _is_removed(cp: int) -> bool:
    if chr(cp) in "\t\n\r":
        return False
    return cp in (0, 0xFFFD) or unicodedata.category(chr(cp)).startswith("C")


def _casing(char: str) -> int:
    """Cased or case-ignorable as Python's final-sigma rule sees `char` (by that rule)."""
    if (char + "\u03a3").lower().endswith(_FINAL_SIGMA):
        return _CASED
    if ("A" + char + "\u03a3").lower().endswith(_FINAL_SIGMA):
        return _CASE_IGNORABLE
    return _UNCASED


def _normalized(cp: int) -> str:
    decomposed = unicodedata.normalize("NFD", chr(cp).lower())
    return "".join(c for c in decomposed if unicodedata.category(c) != "Mn")


@functools.lru_cache(maxsize=4)
def _tables(vocab: Tuple[str, ...]) -> _Tables:
    vocab_chars = {c for token in vocab for c in token}
    placeholder = next(c for c in _PLACEHOLDER_CANDIDATES if c not in vocab_chars)
    characters = tuple(sorted(vocab_chars | {_SIGMA, _FINAL_SIGMA})) + (placeholder,)
    char_id = {c: i for i, c in enumerate(characters[:-1])}
    classes = {(): 0}  # class key -> class id; 0: removed (nothing left)
    keys = [((), _UNCASED)]
    rows = np.zeros(0x110000, np.int32)
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF or _is_removed(cp):
            continue
        out = tuple((char_id.get(c, len(characters) - 1), c.isspace(), _is_own_word(c))
                    for c in _normalized(cp))
        if len(out) > MAX_EXPANSION:
            raise AssertionError(f"U+{cp:04X} expands to {len(out)} characters")
        key = (out, _casing(chr(cp)))
        if key not in classes:
            classes[key] = len(keys)
            keys.append(key)
        rows[cp] = classes[key]
    chars = np.full((len(keys), MAX_EXPANSION), -1, np.int32)
    space = np.zeros((len(keys), MAX_EXPANSION), bool)
    own_word = np.zeros((len(keys), MAX_EXPANSION), bool)
    casing = np.zeros(len(keys), np.int32)
    for index, (out, char_casing) in enumerate(keys):
        casing[index] = char_casing
        for slot, (char, is_space, is_own) in enumerate(out):
            chars[index, slot], space[index, slot], own_word[index, slot] = char, is_space, is_own
    unique, block_of = np.unique(rows.reshape(-1, _BLOCK), axis=0, return_inverse=True)
    return _Tables(blocks=(block_of.reshape(-1) * _BLOCK).astype(np.int32),
                   rows=unique.reshape(-1).astype(np.int32), chars=chars, space=space,
                   own_word=own_word, casing=casing, characters=characters)


class LiteBertTokenizer(tf.Module):
    """strings [batch] -> (int32 wordpiece ids, int64 row_splits [batch + 1]), the ids of
    `tokenization.OriginalBertTokenizer` for the same vocab, from TFLite-runnable ops."""

    def __init__(self, vocab_file: str, max_text_bytes: int):
        super().__init__()
        self.vocab = tuple(tokenization.read_vocab(vocab_file))
        self.max_text_bytes = max_text_bytes
        tables = _tables(self.vocab)
        self._blocks = tf.constant(tables.blocks)
        self._rows = tf.constant(tables.rows)
        self._chars = tf.constant(tables.chars)
        self._space = tf.constant(tables.space)
        self._own_word = tf.constant(tables.own_word)
        self._casing = tf.constant(tables.casing)
        self._num_chars = len(tables.characters)
        self._sigma = tables.characters.index(_SIGMA)
        self._final_sigma = tables.characters.index(_FINAL_SIGMA)
        self._placeholder = self._num_chars - 1
        self._joiner = tf_text.FastWordpieceTokenizer(
            list(tables.characters) + [f"##{c}" for c in tables.characters] + ["[UNK]"],
            token_out_type=tf.int32, unknown_token="[UNK]", no_pretokenization=True,
            support_detokenization=True)
        self._wordpiece = tf_text.FastWordpieceTokenizer(
            list(self.vocab), token_out_type=tf.int32, unknown_token=tokenization.UNKNOWN_TOKEN,
            max_bytes_per_word=tokenization.MAX_CHARS_PER_WORD * 4, no_pretokenization=True)

    def special_tokens(self):
        return tokenization.special_tokens_dict(list(self.vocab))

    def __call__(self, strings: tf.Tensor):
        batch_size = tf.shape(strings)[0]
        code_points, text_of = self._decode(strings)
        chars, space, own_word, text_of = self._normalize(code_points, text_of)
        pieces, pieces_per_word, word_text = self._wordpieces(chars, space, own_word, text_of)
        per_text = tf.math.unsorted_segment_sum(pieces_per_word, word_text, batch_size)
        splits = tf.concat([[0], tf.cumsum(per_text)], 0)
        return pieces, tf.cast(splits, tf.int64)

    def _decode(self, strings):
        """Steps 1: code points (int32) of the texts' first max_text_bytes bytes, and the
        text each belongs to."""
        split = tf_text.ByteSplitter().split(strings)
        data = tf.cast(split.flat_values, tf.int32)
        starts = tf.cast(split.row_splits, tf.int32)
        text_of = segment_ids(starts, tf.shape(data)[0])
        position = tf.range(tf.shape(data)[0]) - tf.gather(starts, text_of)
        kept = tf.where(position < self.max_text_bytes)[:, 0]
        data, text_of = tf.gather(data, kept), tf.gather(text_of, kept)
        n = tf.shape(data)[0]
        padded = tf.concat([data, tf.zeros([3], tf.int32)], 0)
        padded_text = tf.concat([text_of, tf.fill([3], -1)], 0)
        following = [padded[k:k + n] for k in (1, 2, 3)]
        continues = [(b >= 0x80) & (b < 0xC0) for b in following]
        same_text = [padded_text[k:k + n] == text_of for k in (1, 2, 3)]
        b0, (b1, b2, b3) = data, following
        two = (b0 >= 0xC2) & (b0 < 0xE0) & continues[0] & same_text[0]
        three = ((b0 >= 0xE0) & (b0 < 0xF0) & continues[0] & continues[1] & same_text[1]
                 & tf.logical_not((b0 == 0xE0) & (b1 < 0xA0))
                 & tf.logical_not((b0 == 0xED) & (b1 >= 0xA0)))
        four = ((b0 >= 0xF0) & (b0 < 0xF5) & continues[0] & continues[1] & continues[2]
                & same_text[2] & tf.logical_not((b0 == 0xF0) & (b1 < 0x90))
                & tf.logical_not((b0 == 0xF4) & (b1 >= 0x90)))
        c1, c2, c3 = b1 % 64, b2 % 64, b3 % 64
        code_point = tf.where(
            two, (b0 % 32) * 64 + c1,
            tf.where(three, (b0 % 16) * 4096 + c1 * 64 + c2,
                     (b0 % 8) * 262144 + c1 * 4096 + c2 * 64 + c3))
        code_point = tf.where(b0 < 0x80, b0, code_point)
        starts_char = tf.where((b0 < 0x80) | two | three | four)[:, 0]
        return tf.gather(code_point, starts_char), tf.gather(text_of, starts_char)

    def _normalize(self, code_points, text_of):
        """Step 2: the normalized characters (ids into the joiner's characters), with their
        whitespace and own-word flags and texts."""
        classes = tf.gather(self._rows, tf.gather(self._blocks, code_points // _BLOCK)
                            + code_points % _BLOCK)
        kept = tf.where(classes != _REMOVED_ROW)[:, 0]
        code_points, classes, text_of = (tf.gather(x, kept)
                                         for x in (code_points, classes, text_of))
        chars = tf.gather(self._chars, classes)
        final = (code_points == _CAPITAL_SIGMA) & self._final_context(classes, text_of)
        first = tf.where(final, self._final_sigma, chars[:, 0])
        chars = tf.concat([first[:, None], chars[:, 1:]], 1)
        slots = tf.where(tf.reshape(chars, [-1]) >= 0)[:, 0]
        texts = tf.reshape(tf.tile(text_of[:, None], [1, MAX_EXPANSION]), [-1])
        return (tf.gather(tf.reshape(chars, [-1]), slots),
                tf.gather(tf.reshape(tf.gather(self._space, classes), [-1]), slots),
                tf.gather(tf.reshape(tf.gather(self._own_word, classes), [-1]), slots),
                tf.gather(texts, slots))

    def _final_context(self, classes, text_of):
        """Where a capital sigma would be final: the nearest character before that is not
        case-ignorable is cased, and the nearest after is not (in the same text)."""
        casing = tf.gather(self._casing, classes)
        counted = tf.cast(casing != _CASE_IGNORABLE, tf.int32)
        positions = tf.cast(tf.where(counted > 0)[:, 0], tf.int32)
        padded = tf.concat([positions, [0]], 0)  # index len(positions): none after
        through = tf.cumsum(counted)
        before = tf.gather(padded, tf.maximum(through - counted - 1, 0))
        after = tf.gather(padded, through)
        has_before = (through - counted) > 0
        has_after = through < tf.shape(positions)[0]
        cased_at = lambda i: (tf.gather(casing, i) == _CASED) & (tf.gather(text_of, i) == text_of)
        return has_before & cased_at(before) & tf.logical_not(has_after & cased_at(after))

    def _wordpieces(self, chars, space, own_word, text_of):
        """Steps 3-5: wordpiece ids, pieces per word and each word's text."""
        after_break = tf.concat([[True], space[:-1] | own_word[:-1]
                                 | (text_of[1:] != text_of[:-1])], 0)
        letters = tf.where(tf.logical_not(space))[:, 0]
        chars, text_of = tf.gather(chars, letters), tf.gather(text_of, letters)
        starts_word = tf.gather(own_word | after_break, letters)
        word_starts = tf.cast(tf.where(starts_word)[:, 0], tf.int32)
        n = tf.shape(chars)[0]
        word_of = tf.cumsum(tf.cast(starts_word, tf.int32)) - 1
        num_words = tf.shape(word_starts)[0]
        position = tf.range(n) - tf.gather(word_starts, word_of)
        length = tf.math.unsorted_segment_sum(tf.ones_like(chars), word_of, num_words)
        too_long = tf.gather(length, word_of) > tokenization.MAX_CHARS_PER_WORD
        chars = tf.where(too_long, self._placeholder, chars)
        ids = tf.where(position == 0, chars, chars + self._num_chars)
        word_splits = tf.cast(tf.concat([word_starts, tf.reshape(n, [1])], 0), tf.int64)
        words = self._joiner.detokenize(
            tf.RaggedTensor.from_row_splits(ids, word_splits, validate=False))
        pieces = self._wordpiece.tokenize(words)
        pieces_per_word = tf.cast(pieces.row_splits[1:] - pieces.row_splits[:-1], tf.int32)
        return pieces.flat_values, pieces_per_word, tf.gather(text_of, word_starts)


def segment_ids(row_splits, size):
    """int32 [size]: the row of each value, for int32 row_splits."""
    marks = tf.scatter_nd(row_splits[1:-1, None], tf.ones_like(row_splits[1:-1]),
                          tf.reshape(size + 1, [1]))
    return tf.cumsum(marks[:size])


def reference_ids(texts: List[str], vocab_file: str) -> List[List[int]]:
    """The project tokenizer's ids of each text, wordpieces flattened (for tests and checks)."""
    layer = tokenization.OriginalBertTokenizer(vocab_file=vocab_file)
    return layer(tf.constant(texts, tf.string)).merge_dims(-2, -1).to_list()
