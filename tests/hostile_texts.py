"""Texts that a served model must survive: hostile Unicode (HOSTILE) and invalid UTF-8
(INVALID_UTF8), shared by the tests of every tokenizer and export."""

HOSTILE = {
    "empty": "",
    "spaces": " ",
    "whitespace": " \t\n\r\v\f\u00a0\u2000\u2003\u3000\u2028\u2029",
    "zero_width": "\u200b\u200c\u200d\u2060\ufeff",
    "emoji": "😀🤖👍🏽👨‍👩‍👧‍👦🏳️‍🌈🇨🇳" * 5,
    "emoji_in_review": "好评👍👍👍，物流超快🚀",
    "c0_controls": "".join(map(chr, range(0x00, 0x20))) + "\x7f",
    "c1_controls": "".join(map(chr, range(0x80, 0xa0))),
    "nul_inside": "很好\x00很好",
    "private_use": "\ue000\uf8ff\U000f0000\U0010fffd",
    "noncharacters": "\ufdd0\ufffe\uffff\U0001fffe",
    "replacement": "\ufffd" * 10,
    "bidi_override": "\u202e好评\u202c\u2066差评\u2069",
    "combining_zalgo": "好" + "\u0301\u0302\u0303\u0336" * 50,
    "html": "<script>alert('x')</script><b onclick=\"x()\">好</b>&amp;&#x597D;",
    "json_and_sql": '{"text": "x"}\'; DROP TABLE reviews; --',
    "bert_special_tokens": "[CLS] [SEP] [MASK] [PAD] [UNK] ##好 ##",
    "format_string": "%s%n%x {0} ${HOME} \\x00 \\u0000",
    "long_word": "a" * 10_000,
    "mixed_scripts": "Ünïcödé Ελληνικά русский العربية हिन्दी 日本語 한국어",
    "cjk_extension_b": "\U00020000\U0002a6d6\U0002b734",
}
INVALID_UTF8 = {
    "lone_continuation": b"\x80\x81\xbf",
    "truncated_sequence": "好".encode("utf-8")[:2],
    "cut_in_review": "很好".encode("utf-8")[:-1] + "看".encode("utf-8"),
    "overlong_slash": b"\xc0\xaf",
    "encoded_surrogate": b"\xed\xa0\x80",
    "beyond_unicode": b"\xf4\x90\x80\x80",
    "ff_fe": b"\xff\xfe\xfd",
    "latin1": "très bien, café".encode("latin-1"),
    "gbk": "质量很差".encode("gbk"),
    "utf16": "好评".encode("utf-16"),
}
