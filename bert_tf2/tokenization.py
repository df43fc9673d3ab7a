"""In-graph tokenization for the preprocessing modules (placeholder until issue 3 lands).

`make_tokenizer` is the seam `hub_modules` builds on: it returns a Keras layer with the
interface of Model Garden's `layers.BertTokenizer` (strings -> int32 RaggedTensor
[batch, (words), (wordpieces)], plus `get_special_tokens_dict()`).
"""

from official.nlp.modeling import layers

NORMALIZATIONS = ("bert_original", "tf_hub")


def make_tokenizer(vocab_file: str, normalization: str = "bert_original"):
    """The tokenizer layer for `normalization` (see NORMALIZATIONS)."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    return layers.BertTokenizer(vocab_file=vocab_file, lower_case=True)
