"""The bert_original tokenizer gives the original BERT tokenizer's ids; tf_hub gives TF Hub's.

The reference is Google's own code, `bert.tokenization` from the bert-tensorflow package (a
test-only dependency), with two shims: its `preserve_unused_tokens` flag is read as its default
(False) without parsing absl flags, and `_is_control` is the November 2018 rule (all of C*) that
this project follows, where the packaged later code drops only Cc and Cf (see
`test_packaged_reference_keeps_private_use_and_unassigned_chars`).
"""

import random
import unicodedata

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import pytest
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras
from official.nlp.modeling import layers

from bert_tf2 import hub_modules, tokenization

TINY_VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "\u2028",  # As in the real vocab: a line that str.strip() empties.
    "hello", "world", "un", "##aff", "##able", "naive", "cafe", "resume", "istanbul",
    "1", "2", "3", "12", "##2", "##3", "好", "书", "很", "（", "）", "，", "！", "(", ")", ",",
    "!", ".", "[", "]", "#", "ａ", "ｂ", "a", "##a", "b", "c", "d", "e", "f", "g", "h", "x", "##x",
    "u", "##u", "σ", "ς", "α", "ο", "##δο", "##ς", "##σ", "i", "##stanbul", "ss", "ß", "😀", "🏻",
]

TARGETED_CASES = {
    "latin_words_and_wordpieces": "Hello WORLD unaffable Unaffable xyz",
    "digits": "12 123 1 2 3 2024 1.5",
    "accents": "Naïve CAFÉ Résumé e\u0301 \u0301",
    "full_width_forms": "（很好），！ＡＢ ab１２",
    "emoji": "好😀书 👍🏻 😀😀 x😀",
    "zero_width_and_control_chars": "好\u200b书\u200d很\x01\x7f\u0085a\u00adb\ufeffc\x00d\ufffde",
    "private_use_chars": "好\ue000书 a\U000f0000b \U00100000",
    "unassigned_code_points": "a\u0378b \U000e0080x",
    "whitespace_kinds": "a\u2028b\u2029c\u3000d\u00a0e\tf\ng\rh\x0bx\x1cx\u200ba",
    "greek_final_sigma": "ΟΔΟΣ ΑΣ.Α ΑΣ Σ ΑΣΑ ΑΣ\u00adΑ ΑΣ\x01Α",
    "dotted_capital_i_and_sharp_s": "İstanbul ISTANBUL ß ẞ",
    "cjk_ideographs_compatibility_and_extensions": "\uf900\U00020000\u3400\u2f00好书",
    "special_token_lookalikes": "[UNK] [CLS] # ##a",
    "empty": "",
    "whitespace_only": " \t\u3000 \u2028",
    "word_of_200_chars": "ü" * 200,
    "word_of_201_chars": "ü" * 201,
    "word_over_200_chars_before_accent_stripping": "u\u0308" * 150,
    "long_uncoverable_word": "a" * 300 + " hello",
}
INVALID_UTF8 = [b"\xff\xfe\xe4\xbd\xa0\xe5\xa5\xbd\xc3 abc\xed\xa0\x80",
                b"\xe5\xa5\xbd\xe4\xbd\xe5\xa5\xbd", b"\xc0\xaf\xf4\x90\x80\x80x", b"\x80"]


def _is_control_2018(char: str) -> bool:
    return char not in "\t\n\r" and unicodedata.category(char).startswith("C")


@pytest.fixture(scope="module")
def google():
    """google-research/bert's tokenization module, shimmed as the module docstring says."""
    from bert import tokenization as google_tokenization
    packaged_is_control = google_tokenization._is_control
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(google_tokenization, "preserve_token", lambda token, vocab: False)
        patch.setattr(google_tokenization, "_is_control", _is_control_2018)
        patch.setattr(google_tokenization, "packaged_is_control", packaged_is_control,
                      raising=False)
        yield google_tokenization


@pytest.fixture(scope="module")
def tiny_vocab(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tokenization") / "vocab.txt"
    path.write_text("".join(token + "\n" for token in TINY_VOCAB), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def real_vocab(real_layout_dir) -> str:
    return str(real_layout_dir / "vocab.txt")


def reference_ids(full_tokenizer, text) -> list:
    return full_tokenizer.convert_tokens_to_ids(full_tokenizer.tokenize(text))


def our_ids(layer, texts, batch_size=4096) -> list:
    ids = []
    for start in range(0, len(texts), batch_size):
        batch = tf.constant(list(texts[start:start + batch_size]), tf.string)
        ids.extend(layer(batch).merge_dims(1, 2).to_list())
    return ids


def assert_same_ids(texts, expected, got):
    mismatches = [(text, want, have) for text, want, have in zip(texts, expected, got)
                  if want != have]
    for text, want, have in mismatches[:5]:
        print(f"{text!r}\n  original: {want}\n  ours:     {have}")
    assert not mismatches, f"{len(mismatches)} of {len(texts)} texts get other ids"


# ---------------------------------------------------------------------------------------------
# (a) Parity on the whole built-in corpus, with the real Chinese vocab
# ---------------------------------------------------------------------------------------------

def test_whole_builtin_corpus_gets_the_original_ids(google, real_vocab, corpus_splits):
    texts = [text for split in corpus_splits.values() for text in split.texts]
    assert len(texts) > 17000
    reference = google.FullTokenizer(real_vocab, do_lower_case=True)
    expected = [reference_ids(reference, text) for text in texts]
    assert_same_ids(texts, expected, our_ids(tokenization.make_tokenizer(real_vocab), texts))


def test_tf_hub_normalization_gives_most_reviews_other_ids(real_vocab, corpus_splits):
    texts = [text for split in corpus_splits.values() for text in split.texts]
    original = our_ids(tokenization.make_tokenizer(real_vocab), texts)
    tf_hub = our_ids(tokenization.make_tokenizer(real_vocab, "tf_hub"), texts)
    rate = sum(a != b for a, b in zip(original, tf_hub)) / len(texts)
    print(f"tf_hub differs from bert_original on {rate:.1%} of the built-in corpus")
    assert rate > 0.5


def test_special_tokens_of_the_real_vocab(real_vocab):
    layer = tokenization.make_tokenizer(real_vocab)
    assert layer.get_special_tokens_dict() == {
        "vocab_size": 21128, "start_of_sequence_id": 101, "end_of_segment_id": 102,
        "padding_id": 0, "mask_id": 103}
    hub_style = tokenization.make_tokenizer(real_vocab, "tf_hub")
    assert layer.get_special_tokens_dict() == hub_style.get_special_tokens_dict()
    assert layer.vocab_size == 21128


# ---------------------------------------------------------------------------------------------
# (b) Targeted cases, each rule of the original
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_layer(tiny_vocab):
    return tokenization.make_tokenizer(tiny_vocab)


@pytest.fixture(scope="module")
def tiny_reference(google, tiny_vocab):
    return google.FullTokenizer(tiny_vocab, do_lower_case=True)


@pytest.mark.parametrize("name", sorted(TARGETED_CASES))
def test_targeted_case_gets_the_original_ids(name, tiny_layer, tiny_reference):
    text = TARGETED_CASES[name]
    assert our_ids(tiny_layer, [text]) == [reference_ids(tiny_reference, text)]


def test_targeted_cases_in_one_batch(tiny_layer, tiny_reference):
    texts = list(TARGETED_CASES.values()) + INVALID_UTF8
    expected = [reference_ids(tiny_reference, text) for text in texts]
    assert_same_ids(texts, expected, our_ids(tiny_layer, texts))


@pytest.mark.parametrize("text, tokens", [
    ("Unaffable HELLO", ["un", "##aff", "##able", "hello"]),
    ("Naïve CAFÉ", ["naive", "cafe"]),
    ("（好），ＡＢ", ["（", "好", "）", "，", "[UNK]"]),
    ("ａｂ １2", ["[UNK]", "[UNK]"]),
    ("12 123 1.5", ["12", "12", "##3", "1", ".", "[UNK]"]),
    ("好\u200b书\ue000好 a\u0378b", ["好", "书", "好", "[UNK]"]),
    ("a\u2028b\u3000c", ["a", "b", "c"]),
    ("ΟΔΟΣ Σ", ["ο", "##δο", "##ς", "σ"]),
    ("İstanbul", ["istanbul"]),
    ("[UNK]#", ["[", "[UNK]", "]", "#"]),
    ("x😀 👍🏻", ["[UNK]", "[UNK]"]),
    ("ü" * 200, ["u"] + ["##u"] * 199),
    ("ü" * 201, ["[UNK]"]),
    (b"\xe5\xa5\xbd\xff\xe4\xbd\xe4\xb9\xa6", ["好", "书"]),
    ("u\u0308" * 150, ["u"] + ["##u"] * 149),
])
def test_rules_give_the_expected_tokens(text, tokens, tiny_layer, tiny_reference):
    """The rules' tokens written out by hand, so the reference itself is checked too."""
    ids = our_ids(tiny_layer, [text])[0]
    assert [TINY_VOCAB[i] for i in ids] == tokens
    assert tiny_reference.convert_ids_to_tokens(reference_ids(tiny_reference, text)) == tokens


def test_every_code_point_splits_like_the_original(google):
    """Words of "Ab<c>Σ<c>" for each code point c (unassigned planes 4-13 sampled).

    A mismatch is allowed only where TensorFlow's ICU and Python disagree on lower() of that
    very text (characters newer than TensorFlow's ICU, see bert_tf2/tokenization.py).
    """
    code_points = [cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF
                   and (cp < 0x40000 or cp >= 0xE0000 or cp % 97 == 0)]
    texts = [f"Ab{chr(cp)}Σ{chr(cp)}" for cp in code_points]
    basic = google.BasicTokenizer(do_lower_case=True)
    got = []
    for start in range(0, len(texts), 1 << 16):
        words = tokenization.basic_tokenize(tf.constant(texts[start:start + (1 << 16)]))
        got.extend([word.decode("utf-8") for word in row] for row in words.to_list())
    mismatched = [text for text, words in zip(texts, got) if basic.tokenize(text) != words]
    lowered = tf.strings.lower(tf.constant(mismatched or [""]), encoding="utf-8").numpy()
    unexplained = [f"U+{ord(text[2]):04X}" for text, low in zip(mismatched, lowered)
                   if low.decode("utf-8") == text.lower()]
    print(f"{len(mismatched)} code points differ, all through lower(), on Unicode "
          f"{unicodedata.unidata_version}")
    assert not unexplained, unexplained[:20]


def test_random_bytes_are_decoded_like_the_original(google, tiny_layer, tiny_reference):
    rng = random.Random(3)
    parts = [b"\xff", b"\xc0\xaf", b"\xe4\xbd", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
             b"\xf0\x9f\x98", b"\x80", b"\xc3", "好".encode(), b"a", "Σ".encode(), b" ",
             "é".encode(), b"\xef\xbf\xbd", "😀".encode(), b"U"]
    texts = [b"".join(rng.choice(parts) for _ in range(rng.randint(0, 12))) for _ in range(2000)]
    texts += [bytes(rng.randrange(256) for _ in range(rng.randint(0, 24))) for _ in range(2000)]
    expected = [reference_ids(tiny_reference, text) for text in texts]
    assert_same_ids(texts, expected, our_ids(tiny_layer, texts))


def _truncate_seq_pair(tokens_a, tokens_b, max_length):
    """run_classifier.py's truncation in the original BERT: trim the longer one first."""
    while len(tokens_a) + len(tokens_b) > max_length:
        (tokens_a if len(tokens_a) > len(tokens_b) else tokens_b).pop()


@pytest.mark.parametrize("first, second", [
    ("hello 好书 " * 300, None),
    ("hello", None),
    ("hello 好书 " * 300, "naive cafe " * 200),
    ("好", "naive cafe " * 200),
    ("hello world", "好书很好"),
])
def test_packing_matches_the_original_classifier_inputs(first, second, tiny_layer,
                                                        tiny_reference):
    seq_length = 16
    specials = tiny_layer.get_special_tokens_dict()
    pack = layers.BertPackInputs(seq_length=seq_length, special_tokens_dict=specials)
    segments = [tiny_layer(tf.constant([text])) for text in (first, second) if text is not None]
    packed = {key: value.numpy()[0].tolist() for key, value in pack(segments).items()}

    ids_a = reference_ids(tiny_reference, first)
    ids_b = reference_ids(tiny_reference, second) if second is not None else []
    if second is None:
        ids_a = ids_a[:seq_length - 2]
    else:
        _truncate_seq_pair(ids_a, ids_b, seq_length - 3)
    cls, sep = specials["start_of_sequence_id"], specials["end_of_segment_id"]
    word_ids = [cls] + ids_a + [sep] + (ids_b + [sep] if second is not None else [])
    padding = seq_length - len(word_ids)
    assert packed["input_word_ids"] == word_ids + [specials["padding_id"]] * padding
    assert packed["input_mask"] == [1] * len(word_ids) + [0] * padding
    type_ids = [0] * (len(ids_a) + 2) + [1] * (len(word_ids) - len(ids_a) - 2)
    assert packed["input_type_ids"] == type_ids + [0] * padding


def test_packaged_reference_keeps_private_use_and_unassigned_chars(google, tiny_layer,
                                                                  tiny_vocab, monkeypatch):
    """bert-tensorflow 1.0.4 drops only Cc/Cf; the 2018 rule (ours, HF's) drops all of C*."""
    from tokenizers import BertWordPieceTokenizer
    text = "好\ue000书 a\u0378b"
    ours = our_ids(tiny_layer, [text])[0]
    hf = BertWordPieceTokenizer(tiny_vocab, clean_text=True, handle_chinese_chars=True,
                                strip_accents=True, lowercase=True)
    assert hf.encode(text, add_special_tokens=False).ids == ours
    monkeypatch.setattr(google, "_is_control", google.packaged_is_control)
    packaged = google.FullTokenizer(tiny_vocab, do_lower_case=True)
    assert [TINY_VOCAB[i] for i in reference_ids(packaged, text)] == [
        "好", "[UNK]", "书", "[UNK]"]
    assert [TINY_VOCAB[i] for i in ours] == ["好", "书", "[UNK]"]


# ---------------------------------------------------------------------------------------------
# (c) The tf_hub normalization, and the layer's interface
# ---------------------------------------------------------------------------------------------

def test_tf_hub_normalization_turns_full_width_punctuation_into_ascii(tiny_vocab, tiny_layer):
    text = ["（好），！"]
    hub_style = tokenization.make_tokenizer(tiny_vocab, "tf_hub")
    assert isinstance(hub_style, layers.BertTokenizer)
    to_tokens = lambda ids: [TINY_VOCAB[i] for i in ids]  # noqa: E731
    assert to_tokens(our_ids(hub_style, text)[0]) == ["(", "好", ")", ",", "!"]
    assert to_tokens(our_ids(tiny_layer, text)[0]) == ["（", "好", "）", "，", "！"]
    assert tokenization.basic_tokenize(tf.constant(text), "tf_hub").to_list() == [
        [b"(", "好".encode(), b")", b",", b"!"]]
    assert tokenization.basic_tokenize(tf.constant(text)).to_list() == [
        [word.encode() for word in "（好），！"]]


def test_basic_tokenize_gives_the_original_words(google):
    texts = list(TARGETED_CASES.values())
    basic = google.BasicTokenizer(do_lower_case=True)
    words = tokenization.basic_tokenize(tf.constant(texts))
    assert words.shape.rank == 2 and words.dtype == tf.string
    assert [[word.decode() for word in row] for row in words.to_list()] == [
        basic.tokenize(text) for text in texts]


def test_layer_output_is_a_ragged_batch_of_words_of_wordpieces(tiny_layer):
    tokens = tiny_layer(tf.constant(["Unaffable 好", "", "ｂ"]))
    assert isinstance(tokens, tf.RaggedTensor) and tokens.dtype == tf.int32
    assert tokens.shape.rank == 3 and tokens.ragged_rank == 2
    assert tokens.to_list() == [[[8, 9, 10], [21]], [], [[37]]]


def test_layer_runs_inside_tf_data(tiny_layer):
    texts = list(TARGETED_CASES.values())
    dataset = tf.data.Dataset.from_tensor_slices(texts).batch(4).map(
        lambda batch: tiny_layer(batch).merge_dims(1, 2).to_tensor(-1))
    mapped = [row[row >= 0].tolist() for batch in dataset for row in batch.numpy()]
    assert mapped == our_ids(tiny_layer, texts)


def test_special_tokens_are_looked_up_by_string(tiny_layer, tmp_path):
    assert tiny_layer.get_special_tokens_dict() == {
        "vocab_size": len(TINY_VOCAB), "start_of_sequence_id": 2, "end_of_segment_id": 3,
        "padding_id": 0, "mask_id": 4}
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[UNK]\n[SEP]\n[CLS]\na\n", encoding="utf-8")
    assert tokenization.make_tokenizer(str(vocab)).get_special_tokens_dict() == {
        "vocab_size": 4, "start_of_sequence_id": 2, "end_of_segment_id": 1}


def test_vocab_errors_are_explicit(tmp_path):
    duplicated = tmp_path / "dup.txt"
    duplicated.write_text("[UNK]\na\n a \n", encoding="utf-8")
    with pytest.raises(tokenization.VocabError, match=r"dup\.txt:3: token 'a' occurs twice"):
        tokenization.make_tokenizer(str(duplicated))
    no_unk = tmp_path / "no_unk.txt"
    no_unk.write_text("[CLS]\na\n", encoding="utf-8")
    with pytest.raises(tokenization.VocabError,
                       match=r"no_unk\.txt lacks the unknown token \[UNK\]"):
        tokenization.make_tokenizer(str(no_unk))
    with pytest.raises(ValueError, match="normalization must be one of"):
        tokenization.make_tokenizer(str(no_unk), "nfkc")


def test_config_names_the_vocab(tiny_layer, tiny_vocab):
    config = tiny_layer.get_config()
    assert config["vocab_file"] == tiny_vocab
    assert tokenization.OriginalBertTokenizer.from_config(config).get_special_tokens_dict() == (
        tiny_layer.get_special_tokens_dict())


def test_saved_preprocess_module_keeps_the_tokenizer(tmp_path, tiny_vocab, tiny_layer):
    export_dir = tmp_path / "preprocess"
    hub_modules.export_preprocess(str(export_dir), vocab_file=tiny_vocab,
                                  normalization="bert_original", seq_length=16)
    assert (export_dir / "assets" / "vocab.txt").read_text(encoding="utf-8") == "".join(
        token + "\n" for token in TINY_VOCAB)
    texts = list(TARGETED_CASES.values())
    preprocessor = hub.load(str(export_dir))
    assert preprocessor.tokenize(tf.constant(texts)).to_list() == tiny_layer(
        tf.constant(texts)).to_list()
    specials = {key: int(value) for key, value in
                preprocessor.tokenize.get_special_tokens_dict().items()}
    assert specials == tiny_layer.get_special_tokens_dict()

    sentences = tf_keras.Input(shape=(), dtype=tf.string)
    model = tf_keras.Model(sentences, hub.KerasLayer(str(export_dir))(sentences))
    inputs = model(tf.constant(["hello 好书", "ΟΔΟΣ"]))
    assert inputs["input_word_ids"].numpy()[:, :5].tolist() == [[2, 6, 21, 22, 3],
                                                               [2, 54, 55, 56, 3]]
