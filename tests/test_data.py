"""Reading examples: the built-in corpus split, CSV/TSV/JSONL files, and their errors."""

import bz2
import gzip
import io
import json
import logging
import lzma
import os
import re
import uuid

import bert_tf2  # noqa: F401
from absl import flags
import pytest

from bert_tf2 import data, input_pipeline, io_utils
from tests.tiny_fixtures import train_config

# The first two test reviews of the built-in corpus's fixed split, the one the shipped
# quickstart encoder was pretrained beside (its training texts only).
FIRST_BUILTIN_TEST_TEXTS = (
    "(2)安装了WindowsXP系统后，运行的速度挺快。发热量没有想象中那么大。可能尚未运行很耗资源的程序，"
    "没有感到内存的弊病。不过，1G的内存确实有点小。",
    "....买回来才知道,一点都不好看....")


def test_builtin_corpus_is_clean_and_split_stably(corpus_splits):
    sizes = {name: len(examples) for name, examples in corpus_splits.items()}
    assert sum(sizes.values()) > 17000
    assert 0.75 < sizes["train"] / sum(sizes.values()) < 0.85
    all_texts = [t for examples in corpus_splits.values() for t in examples.texts]
    assert len(all_texts) == len(set(all_texts)), "duplicates or a text in two splits"
    assert all(t == t.strip() and t for t in all_texts)
    for examples in corpus_splits.values():
        assert set(examples.labels) == {0, 1}
    again = data.builtin_corpus_splits()
    assert again["test"].texts == corpus_splits["test"].texts
    # The split the shipped quickstart encoder was pretrained beside: its first test reviews.
    assert corpus_splits["test"].texts[:2] == FIRST_BUILTIN_TEST_TEXTS


def test_split_of_a_text_does_not_depend_on_the_other_texts():
    assert data._split_of("好书", 42, 0.1, 0.1) == data._split_of("好书", 42, 0.1, 0.1)
    splits = [data._split_of(f"text {i}", 42, 0.1, 0.1) for i in range(2000)]
    assert 150 < splits.count("test") < 250 and 150 < splits.count("dev") < 250


def test_reads_csv_with_bom_quotes_newlines_and_extra_columns(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text('\ufeffid,text,label,extra\n1,"好，很好",pos,x\n'
                    '2,"第一行\n第二行，有""引号""",负面,y\n3,一般,1,z\n', encoding="utf-8")
    examples = data.read_examples(str(path))
    assert examples.texts == ("好，很好", '第一行\n第二行，有"引号"', "一般")
    assert examples.labels == (1, 0, 1)


def test_reads_tsv_and_jsonl_and_globs(tmp_path):
    (tmp_path / "a.tsv").write_text("label\ttext\n0\t差\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "好", "label": 1}) + "\n\n",
                                      encoding="utf-8")
    assert data.read_examples(str(tmp_path / "a.tsv")).texts == ("差",)
    assert data.read_examples(str(tmp_path / "b.jsonl")).labels == (1,)
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "还行", "label": 0}) + "\n",
                                      encoding="utf-8")
    assert len(data.read_examples(str(tmp_path / "*.jsonl"))) == 2


def test_custom_columns_and_label_map(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("评论,评价\n不错,好评\n垃圾,差评\n", encoding="utf-8")
    examples = data.read_examples(str(path), text_column="评论", label_column="评价",
                                  label_map=data.parse_label_map("差评:0,好评:1"))
    assert examples.labels == (1, 0)
    with pytest.raises(data.DataError, match="NAME:0"):
        data.parse_label_map("good=1")
    # The same file read the way every command reads it: through the data flags.
    config = train_config("--text_column=评论", "--label_column=评价", "--label_map=差评:0,好评:1")
    assert data.read_examples(str(path), **data.reader_options(config.data)) == examples


@pytest.mark.parametrize("content, message", [
    ("text,label\n好,1\n坏,maybe\n", r"r\.csv:3: label 'maybe' in column 'label'"),
    ("text,label\n好,1\n,0\n", r"r\.csv:3: column 'text' must be non-empty"),
    ("review,label\n好,1\n", r"r\.csv:2: no column 'text' \(columns: review, label\)"),
    ("text,label\n好,1,extra\n", r"r\.csv:2: 3 fields but the header has 2"),
    ("", r"r\.csv: file is empty"),
    ('text,label\n"unterminated,1\n', r"r\.csv:\d+: malformed row"),
])
def test_bad_rows_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "r.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(data.DataError, match=message):
        data.read_examples(str(path))


def test_non_utf8_file_names_the_line(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes("text,label\n好,1\n".encode("utf-8") + "坏,0\n".encode("gbk"))
    with pytest.raises(data.DataError, match=r"r\.csv:3: not valid UTF-8"):
        data.read_examples(str(path))


def test_bad_jsonl_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"text": "好", "label": 1}\n{"text": "坏", \n', encoding="utf-8")
    with pytest.raises(data.DataError, match=r"r\.jsonl:2: not a JSON object"):
        data.read_examples(str(path))


def test_skip_bad_rows_counts_them_but_never_skips_a_missing_column(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("text,label\n好,1\n坏,2\n,0\n差,0\n", encoding="utf-8")
    examples = data.read_examples(str(path), skip_bad_rows=True)
    assert examples.texts == ("好", "差") and examples.labels == (1, 0)
    assert examples.skipped_rows == 2
    with pytest.raises(data.DataError, match="no column 'text2'"):
        data.read_examples(str(path), text_column="text2", skip_bad_rows=True)


def test_missing_file_and_empty_glob(tmp_path):
    with pytest.raises(data.DataError, match="no file matches"):
        data.read_examples(str(tmp_path / "*.csv"))
    with pytest.raises(data.DataError, match="cannot read file"):
        data.read_examples(str(tmp_path / "missing.csv"))


def test_load_splits_from_files_leaves_out_missing_splits(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,label\n好,1\n", encoding="utf-8")
    splits = data.load_splits(str(path), None, None)
    assert list(splits) == ["train"]
    with pytest.raises(data.DataError, match="need --train_data"):
        data.load_splits(None, str(path), None)


def test_dataset_pads_each_batch_only_to_its_longest_member(tiny_hub_modules):
    from bert_tf2 import model
    preprocessor = model.load_preprocessor(tiny_hub_modules.preprocess)
    examples = data.Examples(("好", "很好很好很好", "这本书非常好看，推荐给大家阅读"), (1, 1, 1), "t")
    batches = list(input_pipeline.make_dataset(examples, batch_size=2, preprocessor=preprocessor,
                                               seq_length=12, training=False))
    first, second = batches[0][0], batches[1][0]
    assert first["input_word_ids"].shape == (2, 8)  # 6 characters + [CLS] + [SEP]
    assert second["input_word_ids"].shape == (1, 12)  # capped at seq_length
    assert first["input_mask"].numpy().sum() == 3 + 8
    fixed = list(input_pipeline.make_dataset(examples, batch_size=2, preprocessor=preprocessor,
                                             seq_length=12, training=False,
                                             dynamic_padding=False))
    assert fixed[0][0]["input_word_ids"].shape == (2, 12)


def test_one_label_in_training_or_a_label_it_never_shows_is_warned_about(caplog):
    caplog.set_level(logging.WARNING, logger="absl")
    examples = lambda labels, source: data.Examples(("好",) * len(labels), labels, source)
    data.warn_about_label_coverage({"train": examples((1, 1), "train.csv"),
                                    "dev": examples((1, 0), "dev.csv"),
                                    "test": examples((1,), "test.csv")})
    assert "ONE LABEL ONLY: every row of train.csv is labelled 1" in caplog.text
    assert "THE DEV DATA HAS LABELS TRAINING NEVER SHOWS: 0 (in dev.csv)" in caplog.text
    assert "TEST" not in caplog.text
    caplog.clear()
    data.warn_about_label_coverage({"train": examples((0, 1), "train.csv"),
                                    "test": examples((1,), "test.csv")})
    assert caplog.text == ""


@pytest.mark.parametrize("name", ["r.tsv", "r.TSV"])
def test_tsv_quotes_are_text_so_a_stray_quote_merges_no_rows(tmp_path, name):
    path = tmp_path / name
    # As CSV, the quote of row 2 would open a field that the quote of row 5 closes: one row.
    path.write_text('text\tlabel\n"开头的引号\t1\n一般\t0\n他说还行\t1\n结尾的引号"\t0\n',
                    encoding="utf-8")
    examples = data.read_examples(str(path))
    assert examples.texts == ('"开头的引号', "一般", "他说还行", '结尾的引号"')
    assert examples.labels == (1, 0, 1, 0)
    assert [line for line, _ in data.iter_rows(str(path))] == [2, 3, 4, 5]


def test_csv_fields_of_megabytes_are_read(tmp_path):
    path = tmp_path / "r.csv"
    long_text = "很长的评论" * 1_000_000  # 5 million characters, 15 MB
    path.write_text(f'text,label\n"{long_text}",1\n短,0\n', encoding="utf-8")
    assert data.read_examples(str(path)).texts == (long_text, "短")


@pytest.mark.parametrize("name, content", [
    ("r.csv", "text,label\n好,1.0\n坏, 0.0\n"),
    ("r.tsv", "text\tlabel\n好\t1.0\n坏\t0.00\n"),
    ("r.jsonl", '{"text": "好", "label": 1.0}\n{"text": "坏", "label": "0.0"}\n'),
])
def test_integral_labels_read_the_same_in_every_format(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert data.read_examples(str(path)).labels == (1, 0)
    path.write_text(content.replace("1.0", "0.5"), encoding="utf-8")
    with pytest.raises(data.DataError, match=r":[12]: label '?0\.5'? in column 'label'"):
        data.read_examples(str(path))


def test_a_bad_row_error_says_how_to_go_on_but_a_missing_column_does_not(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("review,label\n好,1\n,0\n", encoding="utf-8")
    with pytest.raises(data.DataError, match=r"r\.csv:3: column 'review' must be non-empty text, "
                       r"got '' \(pass --skip_bad_rows to skip and count such rows\)$"):
        data.read_examples(str(path), text_column="review")
    with pytest.raises(data.MissingColumn) as error:
        data.read_examples(str(path), skip_bad_rows=True)
    assert "--skip_bad_rows" not in str(error.value)


@pytest.mark.parametrize("encoding", ["gb18030", "gbk", "auto"])
def test_gb18030_files_are_read_with_encoding(tmp_path, encoding):
    path = tmp_path / "r.csv"
    path.write_bytes("text,label\n质量很差,0\n很好，推荐😀,1\n".encode("gb18030"))
    if encoding == "gbk":  # GBK has no emoji: the file is not GBK
        with pytest.raises(data.DataError, match=r"r\.csv:3: not valid gbk \(byte offset \d+\); "
                           r"pass the file's --encoding, or re-save it as UTF-8"):
            data.read_examples(str(path), encoding=encoding)
        return
    examples = data.read_examples(str(path), encoding=encoding)
    assert examples.texts == ("质量很差", "很好，推荐😀") and examples.labels == (0, 1)
    with pytest.raises(data.DataError, match=r"r\.csv:2: not valid UTF-8 \(byte offset 11\); "
                       r"re-save it as UTF-8 or pass --encoding=gb18030$"):
        data.read_examples(str(path))


def test_auto_reads_utf8_and_any_codec_is_taken(tmp_path):
    path = tmp_path / "r.tsv"
    path.write_bytes("\ufefftext\tlabel\n好\t1\n坏\t0\n".encode("utf-8"))
    assert data.read_examples(str(path), encoding="auto").texts == ("好", "坏")
    # UTF-8 first, then GBK: not one encoding, so no guess.
    path.write_bytes("text\tlabel\n好\t1\n".encode("utf-8") + "坏\t0\n".encode("gbk"))
    with pytest.raises(data.DataError, match=r"r\.tsv:3: not valid UTF-8"):
        data.read_examples(str(path), encoding="auto")
    # UTF-16: "\n" is two bytes there; lines and their numbers still come out right.
    path.write_bytes("text\tlabel\r\n好\t1\r坏\t0\n".encode("utf-16"))
    assert list(data.iter_rows(str(path), encoding="utf-16")) == [
        (2, {"text": "好", "label": "1"}), (3, {"text": "坏", "label": "0"})]


def test_encoding_is_one_flag_every_reader_gets(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes("text,label\n差,0\n好,1\n".encode("gb18030"))
    config = train_config("--encoding=gb18030")
    assert data.read_examples(str(path), **data.reader_options(config.data)).texts == ("差", "好")
    with pytest.raises(flags.IllegalFlagValueError, match="not a text encoding"):
        train_config("--encoding=base64")
    with pytest.raises(flags.IllegalFlagValueError, match="not a text encoding"):
        train_config("--encoding=no-such-codec")


@pytest.mark.parametrize("name, content", [
    ("r.xlsx", b"anything"),
    ("r.xls", b"anything"),
    ("r.csv", b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00"),  # an .xlsx renamed
    ("r.tsv", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1\x00\x00\n"),  # an .xls renamed
])
def test_a_spreadsheet_is_named_as_one(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(data.DataError, match=rf"{re.escape(name)}: a spreadsheet .* export it "
                       r"as CSV UTF-8"):
        data.read_examples(str(path))
    with pytest.raises(data.DataError, match="a spreadsheet"):
        list(data.iter_lines(str(path)))


# ---------------------------------------------------------------------------------------------
# Mistakes that would read as data: a header as a row, labels joined by another separator
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("first_row", ["cat,label,review", "review,cat,label"])
def test_a_header_read_with_column_names_is_refused_not_trained(tmp_path, first_row):
    path = tmp_path / "news.csv"
    path.write_text(f"{first_row}\n体育,1,比赛很精彩\n财经,0,股市大跌\n", encoding="utf-8")
    with pytest.raises(data.SchemaError, match=re.escape(
            f"{path}:1: the first row ({first_row}) names the columns: the file has a "
            "header; drop --column_names")):
        data.read_examples(str(path), column_names=("cat", "label", "review"),
                           text_column="review")
    if first_row == "cat,label,review":  # the file's own header reads it right
        read = data.read_examples(str(path), text_column="review")  # as the error says
        assert read.texts == ("比赛很精彩", "股市大跌")


def test_a_first_row_that_only_shares_a_word_with_column_names_is_data(tmp_path):
    path = tmp_path / "reviews.tsv"
    path.write_text("text\t1\n很好\t0\n", encoding="utf-8")
    read = data.read_examples(str(path), column_names=("text", "label"))
    assert read.texts == ("text", "很好") and read.labels == (1, 0)


def _multilabel_splits(path, cells, **spec):
    path.write_text("text\tlabel\n" + "".join(f"评论{i}\t{cell}\n" for i, cell in
                                              enumerate(cells)), encoding="utf-8")
    return data.load_splits(str(path), None, None, labels=data.LabelSpec(task="multilabel",
                                                                         **spec))


@pytest.mark.parametrize("separator", ["/", "，", " "])
def test_multilabel_cells_joined_by_another_separator_are_refused(tmp_path, separator):
    cells = [f"书籍{separator}正面", f"书籍{separator}负面", f"酒店{separator}正面"]
    with pytest.raises(data.SchemaError, match=re.escape(
            f"no row has two labels, and every label holds {separator!r} (e.g. "
            f"'书籍{separator}正面'): pass --label_separator={separator!r}")):
        _multilabel_splits(tmp_path / "train.tsv", cells)
    splits = _multilabel_splits(tmp_path / "train.tsv", cells, separator=separator)
    assert splits["train"].class_names == ("书籍", "正面", "负面", "酒店")
    assert splits["train"].labels[0] == (1, 1, 0, 0)


def test_multilabel_data_with_one_label_a_row_trains_when_asked(tmp_path):
    cells = ["书籍/正面", "酒店/正面"]
    splits = _multilabel_splits(tmp_path / "train.tsv", cells, allow_single_label_rows=True)
    assert splits["train"].class_names == ("书籍/正面", "酒店/正面")
    plain = _multilabel_splits(tmp_path / "train.tsv", ["体育", "财经"])  # no separator
    assert plain["train"].class_names == ("体育", "财经")


def test_the_separator_check_is_a_flag_of_every_command_that_reads_labels():
    config = train_config("--model_dir=/tmp/m", "--allow_single_label_rows")
    assert data.reader_options(config.data)["labels"].allow_single_label_rows


# ---------------------------------------------------------------------------------------------
# Schema errors: the flags do not fit the file
# ---------------------------------------------------------------------------------------------

def test_a_wrong_column_names_count_says_to_fix_the_flag_not_to_skip_rows(tmp_path):
    path = tmp_path / "reviews.tsv"
    path.write_text("很好\t1\n很差\t0\n", encoding="utf-8")
    with pytest.raises(data.SchemaError) as raised:
        data.read_examples(str(path), column_names=("id", "text", "label"))
    message = str(raised.value)
    assert message.startswith(f"{path}:1: 2 fields but --column_names names 3 (id, text, label)")
    assert "fix --column_names" in message and "--skip_bad_rows" not in message


def test_a_label_outside_class_names_says_to_fix_them_not_to_skip_rows(tmp_path):
    path = tmp_path / "news.tsv"
    path.write_text("text\tlabel\n比赛\t体育\n股市\t金融\n", encoding="utf-8")
    with pytest.raises(data.SchemaError) as raised:
        data.read_examples(str(path), labels=data.LabelSpec(task="multiclass",
                                                            class_names=("体育", "财经")))
    assert "'金融' is not one of --class_names (体育, 财经): add it to --class_names" in str(
        raised.value)
    assert "--skip_bad_rows" not in str(raised.value)


def test_skipped_rows_are_logged_a_few_then_counted(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="absl")
    path = tmp_path / "reviews.jsonl"
    path.write_text('{"text": "好", "label": 1}\n' + "{not json\n" * 50, encoding="utf-8")
    read = data.read_examples(str(path), skip_bad_rows=True)
    assert read.skipped_rows == 50
    assert caplog.text.count("Skipping bad row") == data.BadRows.LOGGED_ROWS
    assert "skipped 50 bad rows" in caplog.text


# ---------------------------------------------------------------------------------------------
# One meaning of each extension, compressed files
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, input_format, column_names, expected", [
    ("r.txt", "auto", None, "text"),
    ("r.txt", "auto", ("text", "label"), "tsv"),
    ("<stdin>", "auto", None, "text"),
    ("r", "auto", ("text", "label"), "tsv"),
    ("r.CSV.gz", "auto", ("text", "label"), "csv"),
    ("r.jsonl.bz2", "auto", None, "jsonl"),
    ("r.txt.xz", "auto", None, "text"),
    ("r.csv", "tsv", None, "tsv"),
])
def test_file_format_is_one_rule(name, input_format, column_names, expected):
    assert data.file_format(name, input_format, column_names) == expected


def test_txt_is_plain_text_unless_column_names_name_its_tab_separated_columns(tmp_path):
    headerless = tmp_path / "news.txt"
    headerless.write_text("好吃\t1\n难吃\t0\n", encoding="utf-8")
    with pytest.raises(data.DataError, match=r"news\.txt: a \.txt file is plain text, one text "
                       r"a line, with no columns: pass --column_names"):
        data.read_examples(str(headerless))
    examples = data.read_examples(str(headerless), column_names=("text", "label"))
    assert examples.texts == ("好吃", "难吃") and examples.labels == (1, 0)
    with_header = tmp_path / "r.txt"
    with_header.write_text("text\tlabel\n好吃\t1\n", encoding="utf-8")
    with pytest.raises(data.DataError, match="with a header row, name it .tsv"):
        data.read_examples(str(with_header))
    with pytest.raises(data.SchemaError, match="names the columns: the file has a header"):
        data.read_examples(str(with_header), column_names=("text", "label"))


COMPRESSORS = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}


@pytest.mark.parametrize("name, content, column_names", [
    ("r.csv.gz", "text,label\n\"好,吃\",1\n难吃,0\n", None),
    ("r.txt.gz", "好,吃\t1\n难吃\t0\n", ("text", "label")),
    ("r.jsonl.bz2", '{"text": "好,吃", "label": 1}\n{"text": "难吃", "label": 0}\n', None),
    ("r.tsv.xz", "text\tlabel\r\n好,吃\t1\r\n难吃\t0", None),
])
def test_compressed_files_are_read_as_what_they_hold(tmp_path, name, content, column_names):
    path = tmp_path / name
    path.write_bytes(COMPRESSORS[path.suffix](content.encode("utf-8")))
    examples = data.read_examples(str(path), column_names=column_names)
    assert examples.texts == ("好,吃", "难吃") and examples.labels == (1, 0)
    first_line = 1 if column_names or name.endswith("bz2") else 2
    assert examples.origins == (f"{path}:{first_line}", f"{path}:{first_line + 1}")
    assert data.count_lines(str(path)) == len(list(data.iter_lines(str(path))))
    # stdin's bytes too, by their first bytes, whatever the name
    stream = io.BytesIO(path.read_bytes())
    assert "".join(data.iter_lines("<stdin>", stream=stream)) == content


@pytest.mark.parametrize("name, content, message", [
    ("r.csv.zst", b"\x28\xb5\x2f\xfd\x00", r"r\.csv\.zst: zstd-compressed, which is not read: "
     r"decompress it \(zstd -d .*r\.csv\.zst\)"),
    ("r.csv.zip", b"PK\x03\x04\x00", r"r\.csv\.zip: zip-compressed, which is not read"),
    ("r.csv.gz", b"text,label\n", r"r\.csv\.gz: named \.gz but not gzip data"),
    ("r.csv.gz", gzip.compress(("text,label\n" + "好,1\n" * 5000).encode(), mtime=0)[:-40],
     r"r\.csv\.gz:\d+: the gzip data is corrupt or cut short \(Compressed file ended"),
])
def test_compression_not_read_or_not_what_the_name_says_is_named(tmp_path, name, content,
                                                                 message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(data.DataError, match=message) as raised:
        data.read_examples(str(path))
    assert "encoding" not in str(raised.value)  # not taken for text in another encoding


def test_unreadable_text_names_the_line_from_which_the_file_is_lost(tmp_path):
    path = tmp_path / "r.txt"
    path.write_bytes("好\r坏\r\n".encode("utf-8") + "差\n也差\n".encode("gbk"))
    with pytest.raises(data.UnreadableText, match=r"r\.txt:3: not valid UTF-8") as raised:
        list(data.iter_lines(str(path)))
    assert raised.value.line == 3 and data.count_lines(str(path)) == 4


# ---------------------------------------------------------------------------------------------
# Files on a store: ram://, TensorFlow's in-memory file system, stands in for gs://
# ---------------------------------------------------------------------------------------------

def _reviews(rows: int) -> str:
    """A CSV of `rows` reviews, with quoted commas and newlines and CRLF line ends: over
    several of the 8 KiB reads a stream makes, so lines and CRLFs straddle them."""
    lines = ["text,label"] + [f"\"第{i}条,很好\n真的\",1" if i % 7 == 0 else f"第{i}条差评,0"
                              for i in range(rows)]
    return "\r\n".join(lines) + "\r\n"


def test_files_and_globs_on_a_store_are_read_as_local_ones(tmp_path, monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    store = f"ram://{uuid.uuid4().hex}/data"
    local, remote = {}, {}
    for name, content in (("a.csv", _reviews(2000).encode("utf-8")),
                          ("b.csv.gz", gzip.compress(_reviews(300).encode("gbk"))),
                          ("c.csv.xz", lzma.compress("text,label\n还行,1\n".encode("utf-8")))):
        (tmp_path / name).write_bytes(content)
        local[name] = str(tmp_path / name)
        with io_utils.open(f"{store}/{name}", "wb") as f:
            f.write(content)
        remote[name] = f"{store}/{name}"

    for name in local:
        encoding = "auto"  # b.csv.gz is GB18030
        assert (list(data.iter_lines(remote[name], encoding=encoding))
                == list(data.iter_lines(local[name], encoding=encoding)))
        assert data.count_lines(remote[name]) == data.count_lines(local[name])
    a = data.read_examples(remote["a.csv"])
    assert a.texts == data.read_examples(local["a.csv"]).texts and len(a) == 2000
    assert a.texts[7] == "第7条,很好\n真的" and a.origins[7] == f"{store}/a.csv:10"

    matched = data.read_examples(f"{store}/*.csv*", encoding="auto")
    assert data.matching_files(f"{store}/*.csv*") == [remote[n] for n in sorted(remote)]
    assert len(matched) == 2000 + 300 + 1 and matched.texts[-1] == "还行"
    splits = data.load_splits(remote["a.csv"], f"{store}/[bc].csv*", None, encoding="auto")
    assert [len(splits[name]) for name in splits] == [2000, 301]

    with pytest.raises(data.DataError, match="no file matches"):
        data.read_examples(f"{store}/*.tsv")
    with pytest.raises(data.DataError, match=f"^{store}/missing.csv: cannot read file"):
        data.read_examples(f"{store}/missing.csv")
    assert os.listdir(tmp_path / "cwd") == []  # nothing on the local disk
