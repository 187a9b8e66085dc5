"""IncrementalDetokenizer: streamed deltas add up to the full decode and never split a character."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from mili.worker.detokenizer import IncrementalDetokenizer
from mili.worker.tokenizer import Tokenizer

MULTILINGUAL = [
    "Emoji 🤖🎉 and families 👨‍👩‍👧‍👦, flags 🇫🇷🇯🇵.",
    "中文测试：你好，世界！日本語のテキストと한국어 텍스트.",
    "Ünïcödé ăccents, ελληνικά, русский, עברית, العربية.",
    "Math ∑∫√∞ ≠ ≤ and arrows →⇒ ⟶ 𝔸𝕓𝕔",
    "plain ascii with  double  spaces\nand\ttabs 12345",
]


@pytest.fixture(scope="module")
def smollm2(smollm2_dir: Path) -> Tokenizer:
    return Tokenizer.from_pretrained(smollm2_dir)


def stream(tokenizer: Tokenizer, prompt: list[int], generated: list[int], skip_special_tokens: bool = True):
    detokenizer = IncrementalDetokenizer(tokenizer, prompt, skip_special_tokens=skip_special_tokens)
    deltas = [detokenizer.add_token(token_id) for token_id in generated]
    deltas.append(detokenizer.flush())
    return deltas


@pytest.mark.parametrize("text", MULTILINGUAL)
def test_deltas_of_real_text_add_up_and_never_hold_a_broken_character(smollm2, text):
    ids = smollm2.encode(text, add_special_tokens=False)
    deltas = stream(smollm2, smollm2.encode("Say:", add_special_tokens=False), ids)
    assert "".join(deltas) == smollm2.decode(ids) == text
    assert not any("\ufffd" in delta for delta in deltas)
    assert deltas[-1] == ""  # nothing was left over for flush


def test_characters_split_across_tokens_are_held_back_until_complete(smollm2):
    ids = smollm2.encode("🤖", add_special_tokens=False)
    assert len(ids) > 1, "the test needs an emoji that spans tokens"
    detokenizer = IncrementalDetokenizer(smollm2, [])
    deltas = [detokenizer.add_token(token_id) for token_id in ids]
    assert deltas == [""] * (len(ids) - 1) + ["🤖"]


def test_random_token_sequences_add_up_to_the_full_decode(smollm2):
    rng = random.Random(7)
    for _ in range(200):
        prompt = [rng.randrange(smollm2.vocab_size) for _ in range(rng.randrange(0, 8))]
        generated = [rng.randrange(smollm2.vocab_size) for _ in range(rng.randrange(1, 30))]
        for skip in (True, False):
            deltas = stream(smollm2, prompt, generated, skip_special_tokens=skip)
            assert "".join(deltas) == smollm2.decode(generated, skip_special_tokens=skip)


def test_random_byte_fragments_add_up_to_the_full_decode(smollm2):
    # Tokens that are single bytes of multi-byte characters, shuffled: lots of incomplete and invalid UTF-8.
    fragments = sorted({i for text in MULTILINGUAL for i in smollm2.encode(text, add_special_tokens=False)})
    rng = random.Random(11)
    for _ in range(200):
        generated = [rng.choice(fragments) for _ in range(rng.randrange(1, 25))]
        assert "".join(stream(smollm2, [], generated)) == smollm2.decode(generated)


def test_special_tokens_are_skipped_or_kept(smollm2):
    ids = [*smollm2.encode("Paris.", add_special_tokens=False), 2]
    assert "".join(stream(smollm2, [1], ids)) == "Paris."
    assert "".join(stream(smollm2, [1], ids, skip_special_tokens=False)) == "Paris.<|im_end|>"


def test_first_delta_keeps_its_leading_space(smollm2):
    prompt = smollm2.encode("The capital of France is", add_special_tokens=False)
    generated = smollm2.encode(" Paris, of course.", add_special_tokens=False)
    deltas = stream(smollm2, prompt, generated)
    assert deltas[0] == " Paris"
    assert "".join(deltas) == " Paris, of course."


@pytest.fixture(scope="module")
def metaspace_tokenizer(tmp_path_factory) -> Tokenizer:
    """A SentencePiece-style tokenizer: its decoder drops the space of a leading '▁', so context matters."""
    backend = BackendTokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    corpus = ["the cat sat on the mat", "hello world, hello there", "a b c d e f g"] * 20
    backend.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "</s>"]))
    directory = tmp_path_factory.mktemp("metaspace")
    backend.save(str(directory / "tokenizer.json"))
    return Tokenizer.from_pretrained(directory)


def test_metaspace_words_keep_their_spaces_between_deltas(metaspace_tokenizer):
    prompt = metaspace_tokenizer.encode("hello")
    generated = metaspace_tokenizer.encode("hello the cat sat on the mat")[len(prompt) :]
    deltas = stream(metaspace_tokenizer, prompt, generated)
    assert "".join(deltas) == " the cat sat on the mat"
    # Token by token decoding would have glued the words together:
    assert "".join(metaspace_tokenizer.decode([i]) for i in generated) == "thecatsatonthemat"
