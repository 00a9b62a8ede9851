"""Word-level tokenizers built offline, for models whose vocabulary is a fixed list of words.

The default model (trained on the shapes world) and the tests' tiny models both need a real
tokenizer that `AutoProcessor` can save and load, without downloading one: each word is one token.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast


def word_level_tokenizer(
    vocab: dict[str, int], chat_template: str, split_punctuation: bool = False
) -> PreTrainedTokenizerFast:
    """Words -> ids; `vocab` must hold <pad>, <s>, </s>, <unk> and <image>.

    Words are split on whitespace; with `split_punctuation` punctuation runs are words of their own
    (``What color?`` -> ``What``, ``color``, ``?``), as in prompts written for real LLMs.
    """
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace() if split_punctuation else pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",  # FastV scores with the last prompt token: it must be the last column
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = chat_template
    return fast
