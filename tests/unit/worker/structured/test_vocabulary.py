"""Our tokenizer's vocabulary as xgrammar reads it: byte-level BPE and sentencepiece-style byte fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import xgrammar
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, trainers

from mili.worker.structured.vocabulary import tokenizer_info
from mili.worker.tokenizer import Tokenizer
from mili_testing.tiny_models import CORPUS, save_tokenizer


@pytest.fixture(scope="module")
def byte_level(tmp_path_factory) -> Tokenizer:
    directory = tmp_path_factory.mktemp("byte-level")
    save_tokenizer(directory)
    return Tokenizer.from_pretrained(directory)


@pytest.fixture(scope="module")
def sentencepiece_style(tmp_path_factory) -> Tokenizer:
    """A Llama-2-style tokenizer: ▁ for spaces, <0xNN> byte-fallback tokens."""
    directory: Path = tmp_path_factory.mktemp("byte-fallback")
    backend = HFTokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    byte_tokens = [f"<0x{byte:02X}>" for byte in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens], show_progress=False
    )
    backend.train_from_iterator(CORPUS * 4, trainer=trainer)
    backend.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "bos_token": "<s>"}))
    return Tokenizer.from_pretrained(directory)


def test_byte_level_vocabulary_decodes_like_the_tokenizer(byte_level):
    info = tokenizer_info(byte_level, byte_level.vocab_size + 7, byte_level.eos_token_ids)
    assert info.vocab_type == xgrammar.VocabType.BYTE_LEVEL
    assert info.vocab_size == byte_level.vocab_size + 7
    for token_id in range(byte_level.vocab_size):
        if not byte_level.is_special(token_id):
            expected = byte_level.decode([token_id]).encode()
            if "\ufffd" not in byte_level.decode([token_id]):  # partial UTF-8 byte tokens decode to U+FFFD
                assert info.decoded_vocab[token_id] == expected, token_id
    assert info.decoded_vocab[-1] == b""  # padding ids are never allowed
    assert info.stop_token_ids == byte_level.eos_token_ids


def test_sentencepiece_style_vocabulary_has_bytes_and_spaces(sentencepiece_style):
    info = tokenizer_info(
        sentencepiece_style, sentencepiece_style.vocab_size, sentencepiece_style.eos_token_ids
    )
    assert info.vocab_type == xgrammar.VocabType.BYTE_FALLBACK
    newline = sentencepiece_style.token_to_id("<0x0A>")
    assert info.decoded_vocab[newline] == b"\n"
    spaced = next(
        token_id
        for token_id in range(sentencepiece_style.vocab_size)
        if sentencepiece_style.convert_ids_to_tokens(token_id).startswith("▁")
        and len(sentencepiece_style.convert_ids_to_tokens(token_id)) > 2
    )
    assert (
        info.decoded_vocab[spaced]
        == sentencepiece_style.convert_ids_to_tokens(spaced).replace("▁", " ").encode()
    )


def test_a_grammar_compiles_for_both_kinds(byte_level, sentencepiece_style):
    for tokenizer in (byte_level, sentencepiece_style):
        info = tokenizer_info(tokenizer, tokenizer.vocab_size, tokenizer.eos_token_ids)
        # sentencepiece-style encoding prepends "▁" (a space): generated after a prompt, it is one
        compiled = xgrammar.GrammarCompiler(info).compile_regex(" ?[0-9]{2} apples")
        matcher = xgrammar.GrammarMatcher(compiled)
        for token_id in tokenizer.encode("42 apples", add_special_tokens=False):
            assert matcher.accept_token(token_id)
        assert matcher.is_completed()
