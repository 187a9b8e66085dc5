"""Structured outputs, tool calls and reasoning through the official openai client, on the tiny random
Qwen3: with a grammar even random weights must produce output that validates."""

from __future__ import annotations

import json

import jsonschema
import openai
import pydantic
import pytest

from mili.worker.server.chat_choices import ChatOptions

MESSAGES = [{"role": "user", "content": "Fill in the form."}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 12},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "integer", "minimum": -12, "maximum": 14}},
            "required": ["zone"],
        },
    },
}
SHORT = {"type": "string", "maxLength": 10}
# Nested objects, arrays, enums, number ranges, patterns, required fields; strings and arrays are
# bounded so that random weights finish within max_tokens.
SCHEMAS = [
    {"type": "object", "properties": {"name": SHORT}, "required": ["name"]},
    {
        "type": "object",
        "properties": {"age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["age"],
    },
    {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
    {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"]},
    {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}},
        "required": ["code"],
    },
    {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": SHORT, "maxItems": 3}},
        "required": ["tags"],
    },
    {
        "type": "object",
        "properties": {
            "point": {
                "type": "object",
                "properties": {
                    "x": {"type": "integer", "minimum": 0, "maximum": 9},
                    "y": {"type": "integer", "minimum": 0, "maximum": 9},
                },
                "required": ["x", "y"],
            }
        },
        "required": ["point"],
    },
    {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 5}, "minItems": 1, "maxItems": 4},
    {
        "type": "object",
        "properties": {"level": {"type": "integer", "enum": [1, 2, 3]}},
        "required": ["level"],
    },
    {"type": "object", "properties": {"nothing": {"type": "null"}}, "required": ["nothing"]},
    {
        "type": "object",
        "properties": {
            "id": {"type": "string", "pattern": "^[a-f0-9]{8}$"},
            "n": {"type": "integer", "minimum": 10, "maximum": 20},
        },
        "required": ["id", "n"],
    },
    {"type": "object", "properties": {"kind": {"const": "fixed"}}, "required": ["kind"]},
    {
        "type": "object",
        "properties": {
            "v": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 3}, {"type": "boolean"}]}
        },
        "required": ["v"],
    },
    {
        "type": "object",
        "properties": {
            "people": {
                "type": "array",
                "maxItems": 2,
                "items": {
                    "type": "object",
                    "properties": {"name": SHORT, "role": {"enum": ["admin", "user"]}},
                    "required": ["name", "role"],
                },
            }
        },
        "required": ["people"],
    },
    {
        "type": "object",
        "properties": {
            "a": {
                "type": "object",
                "properties": {
                    "b": {"type": "object", "properties": {"c": {"enum": [True, False]}}, "required": ["c"]}
                },
                "required": ["b"],
            }
        },
        "required": ["a"],
    },
    {
        "type": "object",
        "properties": {"date": {"type": "string", "pattern": "^20[0-9]{2}-(0[1-9]|1[0-2])-[0-2][0-9]$"}},
        "required": ["date"],
    },
    {
        "type": "object",
        "properties": {
            "matrix": {
                "type": "array",
                "maxItems": 2,
                "items": {
                    "type": "array",
                    "maxItems": 2,
                    "items": {"type": "integer", "minimum": 0, "maximum": 1},
                },
            }
        },
        "required": ["matrix"],
    },
    {
        "type": "object",
        "properties": {"name": SHORT, "nick": SHORT},
        "required": ["name"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "status": {"enum": ["on", "off"]},
            "count": {"type": "integer", "minimum": 0, "maximum": 5},
            "label": {"type": "string", "minLength": 2, "maxLength": 4},
        },
        "required": ["status", "count", "label"],
    },
    {"type": "string", "enum": ["yes", "no", "maybe"]},
    {
        "type": "object",
        "properties": {
            "range": {
                "type": "array",
                "prefixItems": [
                    {"type": "integer", "minimum": 0, "maximum": 9},
                    {"type": "integer", "minimum": 10, "maximum": 19},
                ],
                "items": False,
            }
        },
        "required": ["range"],
    },
    {
        "type": "object",
        "properties": {"temp": {"type": "number", "minimum": -5, "maximum": 5}},
        "required": ["temp"],
    },
]


class Person(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=10)
    age: int = pydantic.Field(ge=0, le=130)
    role: str = pydantic.Field(pattern="^(admin|user)$")


@pytest.fixture(scope="module")
def tool_server(start_server, tiny_config):
    """A server with the hermes tool-call parser and the qwen3 reasoning parser."""
    return start_server(tiny_config(), chat=ChatOptions(tool_call_parser="hermes", reasoning_parser="qwen3"))


@pytest.fixture(scope="module")
def client(tool_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{tool_server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def json_schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}


def test_parse_with_a_pydantic_model(client):
    completion = client.chat.completions.parse(
        model="tiny", messages=MESSAGES, response_format=Person, max_tokens=120, temperature=1.0, seed=7
    )
    message = completion.choices[0].message
    assert isinstance(message.parsed, Person)
    assert completion.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("index", range(len(SCHEMAS)))
def test_random_weights_follow_every_schema(client, index):
    schema = SCHEMAS[index]
    completion = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        response_format=json_schema_format(schema),
        max_tokens=150,
        temperature=1.0,
        seed=index,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    jsonschema.validate(json.loads(choice.message.content), schema)


def test_json_schema_with_n_2_streamed(client):
    schema = SCHEMAS[-3]
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=MESSAGES,
            response_format=json_schema_format(schema),
            max_tokens=150,
            n=2,
            seed=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = {0: "", 1: ""}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    for text in texts.values():
        jsonschema.validate(json.loads(text), schema)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_json_object_and_vllm_structured_outputs_on_completions(client):
    free = client.completions.create(
        model="tiny",
        prompt="Answer:",
        max_tokens=300,
        n=8,
        extra_body={"response_format": {"type": "json_object"}},
        seed=1,
    )
    # any object: random weights may write an endless string, but every finished one is an object
    assert all(choice.text.startswith("{") for choice in free.choices)
    finished = [choice.text for choice in free.choices if choice.finish_reason == "stop"]
    assert finished and all(isinstance(json.loads(text), dict) for text in finished)
    regex = client.completions.create(
        model="tiny",
        prompt="Code:",
        max_tokens=20,
        extra_body={"structured_outputs": {"regex": "[0-9]{3}-[a-z]{2}"}},
    )
    assert regex.choices[0].text[:3].isdigit() and len(regex.choices[0].text) == 6
    choice = client.completions.create(
        model="tiny",
        prompt="Pick:",
        max_tokens=10,
        extra_body={"structured_outputs": {"choice": ["left", "right"]}},
    )
    assert choice.choices[0].text in ("left", "right")
    grammar = 'root ::= "(" [0-9]+ ")"'
    ebnf = client.completions.create(
        model="tiny", prompt="G:", max_tokens=10, extra_body={"structured_outputs": {"grammar": grammar}}
    )
    text = ebnf.choices[0].text
    assert text.startswith("(") and (text.endswith(")") or ebnf.choices[0].finish_reason == "length")


def test_constrained_and_free_requests_share_batches(client):
    from concurrent.futures import ThreadPoolExecutor

    def constrained(seed):
        return client.chat.completions.create(
            model="tiny",
            messages=MESSAGES,
            response_format=json_schema_format(SCHEMAS[0]),
            max_tokens=100,
            seed=seed,
        )

    def free(seed):
        return client.completions.create(
            model="tiny", prompt="The quick brown fox", max_tokens=24, seed=seed, temperature=0
        )

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: (constrained if i % 2 else free)(i), range(8)))
    for i, result in enumerate(results):
        if i % 2:
            jsonschema.validate(json.loads(result.choices[0].message.content), SCHEMAS[0])
        else:
            assert result.choices[0].text == results[0].choices[0].text  # greedy, unaffected by masks


def test_forced_tool_call(client):
    completion = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=100,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_TOOL["function"]["parameters"])


def test_required_tool_calls_stream_as_openai_does(client):
    stream = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Weather and time?"}],
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice="required",
        max_tokens=200,
        seed=5,
        stream=True,
    )
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                if delta.index not in calls:
                    assert delta.id and delta.function.name and delta.type == "function"
                    calls[delta.index] = {"name": delta.function.name, "arguments": ""}
                else:
                    assert delta.id is None
                calls[delta.index]["arguments"] += delta.function.arguments or ""
    assert finish == "tool_calls" and calls
    tools = {"get_weather": WEATHER_TOOL, "get_time": TIME_TOOL}
    for call in calls.values():
        jsonschema.validate(json.loads(call["arguments"]), tools[call["name"]]["function"]["parameters"])


def test_parallel_tool_calls_false_makes_one_call(client):
    completion = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=200,
        seed=2,
    )
    assert len(completion.choices[0].message.tool_calls) == 1


def test_full_tool_round_trip(client):
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.chat.completions.create(
        model="tiny", messages=messages, tools=[WEATHER_TOOL], tool_choice="required", max_tokens=100
    )
    call = first.choices[0].message.tool_calls[0]
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21})},
    ]
    second = client.chat.completions.create(
        model="tiny", messages=messages, tools=[WEATHER_TOOL], tool_choice="none", max_tokens=8, temperature=0
    )
    assert second.choices[0].message.tool_calls in (None, [])
    assert second.usage.prompt_tokens > first.usage.prompt_tokens  # the tool result reached the prompt


def test_bad_requests_are_400_naming_the_field(client, server):
    bare = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    cases = [
        (
            client,
            dict(response_format={"type": "json_schema", "json_schema": {"name": "x"}}),
            "response_format",
        ),
        (client, dict(response_format=json_schema_format({"type": "nonsense"})), "response_format"),
        (client, dict(extra_body={"structured_outputs": {"regex": "("}}), "structured_outputs"),
        (
            client,
            dict(extra_body={"structured_outputs": {"regex": "a", "choice": ["b"]}}),
            "structured_outputs",
        ),
        (
            client,
            dict(tools=[WEATHER_TOOL], tool_choice={"type": "function", "function": {"name": "nope"}}),
            "tool_choice",
        ),
        (client, dict(tool_choice="required"), "tool_choice"),
        (bare, dict(tools=[WEATHER_TOOL]), "tool_choice"),  # auto without --tool-call-parser
        (
            client,
            dict(response_format={"type": "json_object"}, tools=[WEATHER_TOOL], tool_choice="required"),
            "tool_choice",
        ),
        (client, dict(logit_bias={"100000": 1}), "logit_bias"),
        (client, dict(logit_bias={"1": 101}), "logit_bias"),
        (client, dict(extra_body={"allowed_token_ids": [10**6]}), "allowed_token_ids"),
        (client, dict(store=True), "store"),
        (client, dict(reasoning_effort="high"), "reasoning_effort"),
        (client, dict(extra_body={"use_beam_search": True}), "use_beam_search"),
        (client, dict(extra_body={"guided_json": {}}), "guided_json"),
        (client, dict(stream_options={"include_usage": True}), "stream_options"),
    ]
    for target, fields, param in cases:
        with pytest.raises(openai.BadRequestError) as raised:
            target.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4, **fields)
        assert raised.value.body["param"] == param, (fields, raised.value.body)
        assert raised.value.body["message"]


def test_a_grammar_slower_than_the_timeout_is_a_400_naming_the_field(client, tool_server, monkeypatch):
    monkeypatch.setattr(tool_server.engine.grammars, "timeout_s", 1e-6)
    schema = {"type": "object", "properties": {"never_compiled_before": SHORT}, "required": ["x"]}
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=4, response_format=json_schema_format(schema)
        )
    assert raised.value.body["param"] == "response_format"
    assert "did not compile within" in raised.value.body["message"]


def test_logit_bias_allowed_token_ids_and_bad_words(client, tool_server):
    tokenizer = tool_server.engine.tokenizer
    target = tokenizer.encode(" fox", add_special_tokens=False)[0]
    biased = client.completions.create(
        model="tiny", prompt="hi", max_tokens=4, temperature=0, logit_bias={str(target): 100}
    )
    assert biased.choices[0].text == tokenizer.decode([target] * 4)
    allowed = client.completions.create(
        model="tiny", prompt="hi", max_tokens=6, temperature=1, extra_body={"allowed_token_ids": [target]}
    )
    assert allowed.choices[0].text == tokenizer.decode([target] * 6)
    free = client.completions.create(model="tiny", prompt="The quick brown", max_tokens=12, temperature=0)
    word = free.choices[0].text.split()[0]
    banned = client.completions.create(
        model="tiny", prompt="The quick brown", max_tokens=12, temperature=0, extra_body={"bad_words": [word]}
    )
    assert word not in banned.choices[0].text.split()


def test_echo_truncate_and_continue_final_message(client, tool_server):
    echoed = client.completions.create(
        model="tiny", prompt="The quick brown", max_tokens=3, echo=True, temperature=0
    )
    assert echoed.choices[0].text.startswith("The quick brown")
    truncated = client.completions.create(
        model="tiny",
        prompt="The quick brown fox jumps",
        max_tokens=1,
        extra_body={"truncate_prompt_tokens": 2},
    )
    assert truncated.usage.prompt_tokens == 2
    tokenizer = tool_server.engine.tokenizer
    ids = tokenizer.encode("The quick brown fox jumps")
    for side, kept in (("left", ids[-2:]), ("right", ids[:2])):
        echoed_part = client.completions.create(
            model="tiny",
            prompt="The quick brown fox jumps",
            max_tokens=1,
            echo=True,
            extra_body={"truncate_prompt_tokens": 2, "truncation_side": side},
        )
        assert echoed_part.choices[0].text.startswith(tokenizer.decode(kept, skip_special_tokens=False))
    continued = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "The quick"}],
        max_tokens=3,
        temperature=0,
        extra_body={"continue_final_message": True, "add_generation_prompt": False},
    )
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    expected = len(tokenizer.encode(rendered + "The quick", add_special_tokens=False))
    assert continued.usage.prompt_tokens == expected


def test_reasoning_content_is_split_off(client, tool_server):
    """The tiny model does not think, so the think block is forced with a grammar."""
    grammar = 'root ::= "<think>" [a-z ]{1,12} "</think>" [a-z ]{1,8}'
    body = dict(
        model="tiny",
        messages=MESSAGES,
        max_tokens=40,
        extra_body={"structured_outputs": {"grammar": grammar}},
    )
    whole = client.chat.completions.create(**body, seed=4)
    message = whole.choices[0].message
    assert message.reasoning_content and "<think>" not in (message.content or "")
    streamed = list(client.chat.completions.create(**body, seed=4, stream=True))
    reasoning = "".join(
        getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in streamed if c.choices
    )
    content = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert (reasoning, content) == (message.reasoning_content, message.content)
    body["extra_body"] = {**body["extra_body"], "include_reasoning": False}
    without = client.chat.completions.create(**body, seed=4).choices[0].message
    assert getattr(without, "reasoning_content", None) is None and without.content == message.content
