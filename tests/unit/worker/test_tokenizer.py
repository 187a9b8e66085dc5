"""Tokenizer: same ids, text and chat prompts as transformers, on SmolLM2 and on a tiny tokenizer."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from mili.worker.tokenizer import ChatTemplateError, Tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = [
    "Hello world",
    "The year 2024, pi = 3.14159!",
    "abc 123 4567 x=[1, 22, 333]",
    "日本語のテキスト 🤖🎉 émoji café naïve",
    "Привет мир, γειά σου κόσμε",
    "\n\n  \t tabs and\r\nnewlines\n",
    "a  b   c    ",
    "   leading spaces",
    "don't I'll we've THEY'RE",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "text with <|endoftext|> in the middle",
    "def f(x):\n    return x ** 2  # comment\n",
    "ｆｕｌｌｗｉｄｔｈ and zero\u200bwidth",
    "😀😃😄 👨‍👩‍👧‍👦 🇫🇷",
    "",
]
# Whitespace runs right before a digit: the only texts where transformers' GGUF tokenizer differs (see below).
WHITESPACE_BEFORE_DIGIT = ["  1", "x  2", "total:   42"]

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Count to 3 in 日本語 🤖"},
    ],
    [{"role": "user", "content": "  spaces around  "}, {"role": "assistant", "content": "ok\n"}],
]


@pytest.fixture(scope="module")
def smollm2(smollm2_dir: Path) -> Tokenizer:
    return Tokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module")
def hf_gguf_tokenizer(smollm2_gguf: Path):
    """transformers building the tokenizer from the GGUF itself: the independent reference."""
    return transformers.AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)


@pytest.fixture(scope="module")
def hf_converted_tokenizer(smollm2_dir: Path):
    """transformers reading our converted files: proves the directory is a valid HF checkpoint."""
    return transformers.AutoTokenizer.from_pretrained(smollm2_dir)


# --- SmolLM2 ---


@pytest.mark.parametrize("text", TEXTS)
def test_smollm2_encode_matches_transformers_gguf_tokenizer(smollm2, hf_gguf_tokenizer, text):
    assert smollm2.encode(text) == hf_gguf_tokenizer.encode(text)
    assert smollm2.encode(text, add_special_tokens=False) == hf_gguf_tokenizer.encode(
        text, add_special_tokens=False
    )


@pytest.mark.parametrize("text", TEXTS + WHITESPACE_BEFORE_DIGIT)
def test_smollm2_encode_matches_transformers_on_the_converted_files(smollm2, hf_converted_tokenizer, text):
    assert smollm2.encode(text) == hf_converted_tokenizer.encode(text)


def test_smollm2_splits_digits_after_whitespace_like_llama_cpp(smollm2, hf_gguf_tokenizer):
    # SmolLM2's pre-tokenizer ("smollm" in the GGUF, StarCoder-style) splits off every digit first and
    # then applies GPT-2's regex, so "  1" is ["ĠĠ", "1"] (llama.cpp does the same). transformers'
    # GGUF loader skips the digit split and gives ["Ġ", "Ġ", "1"]; we follow the model, not that loader.
    assert smollm2.convert_ids_to_tokens(smollm2.encode("  1")) == ["ĠĠ", "1"]
    assert hf_gguf_tokenizer.convert_ids_to_tokens(hf_gguf_tokenizer.encode("  1")) == ["Ġ", "Ġ", "1"]
    assert smollm2.convert_ids_to_tokens(smollm2.encode("2024")) == ["2", "0", "2", "4"]


def test_smollm2_decode_matches_transformers_on_random_ids(smollm2, hf_gguf_tokenizer):
    rng = random.Random(1234)
    for _ in range(50):
        ids = [rng.randrange(smollm2.vocab_size) for _ in range(rng.randrange(1, 40))]
        ids[rng.randrange(len(ids))] = rng.randrange(17)  # a special token somewhere
        for skip in (True, False):
            assert smollm2.decode(ids, skip_special_tokens=skip) == hf_gguf_tokenizer.decode(
                ids, skip_special_tokens=skip
            )


@pytest.mark.parametrize("text", TEXTS)
def test_smollm2_round_trips_text(smollm2, text):
    assert smollm2.decode(smollm2.encode(text), skip_special_tokens=False) == text


def test_smollm2_special_tokens(smollm2, hf_gguf_tokenizer):
    assert smollm2.vocab_size == len(hf_gguf_tokenizer) == 49152
    assert smollm2.bos_token_id == hf_gguf_tokenizer.bos_token_id == 1
    assert smollm2.eos_token_ids == [2]
    assert [smollm2.is_special(i) for i in (0, 1, 2, 16, 17, 504)] == [True] * 4 + [False] * 2
    the = smollm2.token_to_id("Ġthe")
    assert smollm2.encode(" the") == [the]
    assert smollm2.convert_ids_to_tokens([1, the, 2]) == ["<|im_start|>", "Ġthe", "<|im_end|>"]
    assert smollm2.convert_ids_to_tokens([1, the, 2], skip_special_tokens=True) == ["Ġthe"]
    assert smollm2.convert_ids_to_tokens(the) == "Ġthe"
    assert smollm2.encode("Hello")[0] != smollm2.bos_token_id  # the GGUF says add_bos_token false


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_smollm2_chat_template_matches_transformers(
    smollm2, hf_gguf_tokenizer, messages, add_generation_prompt
):
    assert smollm2.has_chat_template
    expected = hf_gguf_tokenizer.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=False
    )
    assert smollm2.apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == expected


def test_smollm2_chat_prompt_encodes_like_transformers(smollm2, hf_gguf_tokenizer):
    messages = CONVERSATIONS[1]
    expected = hf_gguf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(expected, dict) or hasattr(expected, "keys"):
        expected = expected["input_ids"]
    assert smollm2.encode(smollm2.apply_chat_template(messages), add_special_tokens=False) == list(expected)


def test_text_parts_are_joined_into_string_content(smollm2):
    parts = [
        {"role": "user", "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]}
    ]
    joined = [{"role": "user", "content": "first\nsecond"}]
    assert smollm2.apply_chat_template(parts) == smollm2.apply_chat_template(joined)


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ([], "non-empty list"),
        ("hello", "non-empty list"),
        (["hello"], r"messages\[0\] must be an object"),
        (
            [{"role": "robot", "content": "x"}],
            r"messages\[0\]\.role must be one of system, user, assistant, tool",
        ),
        ([{"role": "user"}], r"messages\[0\]\.content is required"),
        ([{"role": "user", "content": 7}], "string or a list of text parts"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            r"messages\[0\]\.content\[0\] must be .*only text content",
        ),
    ],
)
def test_invalid_messages_are_refused_with_a_clear_message(smollm2, messages, problem):
    with pytest.raises(ChatTemplateError, match=problem):
        smollm2.apply_chat_template(messages)


# --- a tiny tokenizer with a demanding template ---

TINY_TEMPLATE = """{{- bos_token -}}
{%- set ns = namespace(system=none, turns=0) -%}
{%- if messages[0].role == 'system' -%}{%- set ns.system = messages[0].content -%}{%- endif -%}
{%- if tools -%}
<|system|>
{{ ns.system or 'You may call these tools.' }}
{{ tools | tojson(indent=2) }}
{% elif ns.system -%}
<|system|>
{{ ns.system }}
{% endif %}
{%- for message in messages %}
    {%- if message.role == 'system' %}
        {%- if not loop.first %}{{ raise_exception('A system message must come first') }}{% endif %}
        {%- continue %}
    {%- endif %}
    {%- set ns.turns = ns.turns + 1 %}
    {%- if message.role == 'user' %}
<|user|>
{{ message.content | trim }}
    {% elif message.role == 'assistant' %}
<|assistant|>
{% generation %}{{ message.content | default('') }}
        {%- for call in message.tool_calls | default([]) %}
<tool_call>{{ call.function | tojson }}</tool_call>
        {%- endfor %}{{ eos_token }}{% endgeneration %}

    {% elif message.role == 'tool' %}
<|tool|>
{{ message.content }}
    {% endif %}
    {%- if max_turns is defined and ns.turns >= max_turns %}{% break %}{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|assistant|>
{% if enable_thinking is defined and not enable_thinking %}<think></think>
{% endif %}
{%- endif %}
{%- if date_format is defined %}{{ strftime_now(date_format) | length > 0 }}{% endif %}"""

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city, e.g. Zürich",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]

TINY_CONVERSATIONS = [
    ([{"role": "user", "content": "  Hello there!  "}], {}),
    (
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Zürich?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}
                ],
            },
            {"role": "tool", "content": '{"temp": 21}'},
            {"role": "assistant", "content": "21 °C."},
        ],
        {"tools": TOOLS},
    ),
    (
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
        ],
        {"max_turns": 2},
    ),
    ([{"role": "user", "content": "think?"}], {"enable_thinking": False, "date_format": "%Y-%m-%d"}),
]


def _write_tiny_tokenizer(directory: Path, tokenizer_config: dict, post_processor_bos: bool) -> Path:
    directory.mkdir()
    corpus = [
        "The quick brown fox jumps over the lazy dog.",
        "Hello world! Привет мир. 你好世界 🤖🎉",
        "12345 and 3.14",
    ]
    specials = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|tool|>"]
    backend = BackendTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(corpus * 10, trainer)
    if post_processor_bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B:1", special_tokens=[("<s>", 1)]
        )
    backend.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps({**config, **tokenizer_config}))
    return directory


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny") / "model"
    _write_tiny_tokenizer(
        directory, {"add_bos_token": True, "chat_template": TINY_TEMPLATE}, post_processor_bos=True
    )
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 4]}))
    return directory


@pytest.fixture(scope="module")
def tiny(tiny_dir) -> Tokenizer:
    return Tokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def hf_tiny(tiny_dir):
    return transformers.AutoTokenizer.from_pretrained(tiny_dir)


@pytest.mark.parametrize("text", TEXTS + WHITESPACE_BEFORE_DIGIT)
def test_tiny_encode_decode_match_transformers(tiny, hf_tiny, text):
    assert tiny.encode(text) == hf_tiny.encode(text)
    assert tiny.encode(text)[0] == tiny.bos_token_id == 1
    assert tiny.encode(text, add_special_tokens=False) == hf_tiny.encode(text, add_special_tokens=False)
    ids = tiny.encode(text)
    for skip in (True, False):
        assert tiny.decode(ids, skip_special_tokens=skip) == hf_tiny.decode(ids, skip_special_tokens=skip)


@pytest.mark.parametrize(("messages", "variables"), TINY_CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_tiny_chat_template_matches_transformers(tiny, hf_tiny, messages, variables, add_generation_prompt):
    expected = hf_tiny.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=False, **variables
    )
    assert (
        tiny.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, **variables)
        == expected
    )


def test_template_raise_exception_becomes_chat_template_error(tiny):
    messages = [{"role": "user", "content": "hi"}, {"role": "system", "content": "late"}]
    with pytest.raises(ChatTemplateError, match="A system message must come first"):
        tiny.apply_chat_template(messages)


def test_eos_ids_join_generation_config_and_tokenizer_config(tiny):
    assert tiny.eos_token_ids == [2, 4]
    assert tiny.eos_token_id == 2


def test_add_bos_token_in_tokenizer_config_overrides_the_post_processor(tmp_path):
    # transformers' Llama tokenizers rewrite their post-processor from add_bos_token; so do we.
    adds = Tokenizer.from_pretrained(_write_tiny_tokenizer(tmp_path / "a", {"add_bos_token": True}, False))
    assert adds.encode("Hello")[0] == 1
    drops = Tokenizer.from_pretrained(_write_tiny_tokenizer(tmp_path / "b", {"add_bos_token": False}, True))
    assert drops.encode("Hello")[0] != 1
    follows = Tokenizer.from_pretrained(_write_tiny_tokenizer(tmp_path / "c", {}, True))
    assert follows.encode("Hello")[0] == 1
    assert follows.encode("Hello", add_special_tokens=False)[0] != 1


def test_chat_template_from_jinja_file_and_none_at_all(tmp_path):
    directory = _write_tiny_tokenizer(tmp_path / "m", {}, False)
    plain = Tokenizer.from_pretrained(directory)
    assert not plain.has_chat_template
    with pytest.raises(ChatTemplateError, match="no chat template"):
        plain.apply_chat_template([{"role": "user", "content": "hi"}])
    (directory / "chat_template.jinja").write_text("{% for m in messages %}[{{ m.content }}]{% endfor %}")
    assert (
        Tokenizer.from_pretrained(directory).apply_chat_template([{"role": "user", "content": "hi"}])
        == "[hi]"
    )


def test_broken_template_is_reported(tmp_path):
    directory = _write_tiny_tokenizer(tmp_path / "m", {"chat_template": "{% for m in messages %}"}, False)
    with pytest.raises(ChatTemplateError, match="does not compile"):
        Tokenizer.from_pretrained(directory).apply_chat_template([{"role": "user", "content": "hi"}])


def test_sandbox_blocks_attribute_escapes(tmp_path):
    template = "{{ messages.__class__.__mro__ }}"
    directory = _write_tiny_tokenizer(tmp_path / "m", {"chat_template": template}, False)
    with pytest.raises(ChatTemplateError):
        Tokenizer.from_pretrained(directory).apply_chat_template([{"role": "user", "content": "hi"}])
