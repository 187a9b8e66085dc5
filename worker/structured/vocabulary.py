"""Our tokenizer's vocabulary as xgrammar's ``TokenizerInfo``.

xgrammar needs every id's vocabulary string in its stored spelling (``Ġthe`` for byte-level BPE,
``▁the`` and ``<0x0A>`` for sentencepiece-style byte fallback) plus how to decode that spelling; it
reads the latter from the ``tokenizer.json`` text, as it does for Hugging Face tokenizers. Ids past
the tokenizer's vocabulary (models pad their embedding to a multiple of 32 or 128) get an empty
string, so they are never allowed by a grammar.
"""

from __future__ import annotations

from collections.abc import Iterable

import xgrammar

from mili.worker.tokenizer import Tokenizer


def tokenizer_info(
    tokenizer: Tokenizer, model_vocab_size: int, stop_token_ids: Iterable[int]
) -> xgrammar.TokenizerInfo:
    """xgrammar's view of ``tokenizer``; bitmasks cover ``model_vocab_size`` ids (the logits' width)."""
    size = max(model_vocab_size, tokenizer.vocab_size)
    encoded = [tokenizer.convert_ids_to_tokens(token_id) or "" for token_id in range(tokenizer.vocab_size)]
    encoded += [""] * (size - len(encoded))
    metadata = xgrammar.TokenizerInfo._detect_metadata_from_hf(tokenizer.backend_json())
    return xgrammar.TokenizerInfo(
        encoded,
        metadata["vocab_type"],
        vocab_size=size,
        stop_token_ids=sorted(set(stop_token_ids)),
        add_prefix_space=metadata["add_prefix_space"],
    )
