"""Structured outputs and tool calls through the official openai client against a real `mili serve`
process on the default model (the builtin SmolLM2-135M-Instruct, whose chat template knows no tools):
a trained model following grammars, where the tiny-Qwen3 tests (`test_structured_outputs.py`) check
random weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import openai
import pydantic
import pytest

from mili.worker.builtin_models import BUILTIN_MODELS, BuiltinModelError
from mili.worker.model_source import DEFAULT_MODEL
from mili_testing import CI_STRICT, answers_ok, fail_if_exited, free_port, stop_process

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 20},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
CITY_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "country": {"type": "string", "maxLength": 20},
    },
    "required": ["city", "country"],
    "additionalProperties": False,
}


class Capital(pydantic.BaseModel):
    city: str = pydantic.Field(max_length=20)
    population_millions: int = pydantic.Field(ge=0, le=100)


@pytest.fixture(scope="module")
def default_server(tmp_path_factory, poll):
    """`mili serve` with no --model (the default model), the hermes tool-call parser; ready."""
    try:
        BUILTIN_MODELS[DEFAULT_MODEL.removeprefix("builtin:")].gguf_path()
    except BuiltinModelError as error:
        if CI_STRICT:
            pytest.fail(f"{error} (MILI_CI_STRICT=1: .ci/run should have installed it)")
        pytest.skip(str(error))
    port, log_path = free_port(), tmp_path_factory.mktemp("default-serve") / "serve.log"
    command = [sys.executable, "-m", "mili.worker.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--served-name", "default", "--device", "cpu", "--max-model-len", "1024"]
    command += ["--tool-call-parser", "hermes"]
    env = {k: v for k, v in os.environ.items() if k != "MILI_API_KEY"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            fail_if_exited(process, "mili serve", Path(log_path))
            return answers_ok(f"{url}/ready")

        poll(ready, 300, "mili serve on the default model became ready", interval=0.2)
        yield url
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def client(default_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{default_server}/v1", api_key="unused", max_retries=0, timeout=300)


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_parse_with_a_pydantic_model(client):
    completion = client.chat.completions.parse(
        model="default",
        messages=ask("What is the capital of France and its population in millions? Answer in JSON."),
        response_format=Capital,
        max_tokens=40,
        temperature=0,
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Capital) and completion.choices[0].finish_reason == "stop"
    assert "Paris" in parsed.city  # a trained model, not just valid JSON


def test_json_schema_with_n_2_streamed(client):
    response_format = {"type": "json_schema", "json_schema": {"name": "place", "schema": CITY_SCHEMA}}
    chunks = list(
        client.chat.completions.create(
            model="default",
            messages=ask("Name a city and its country in JSON."),
            response_format=response_format,
            max_tokens=60,
            n=2,
            temperature=0.7,
            seed=1,
            stream=True,
        )
    )
    texts = {0: "", 1: ""}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    for text in texts.values():
        jsonschema.validate(json.loads(text), CITY_SCHEMA)


def test_forced_and_required_tool_calls(client):
    for tool_choice in ({"type": "function", "function": {"name": "get_weather"}}, "required"):
        completion = client.chat.completions.create(
            model="default",
            messages=ask("What is the weather in Paris?"),
            tools=[WEATHER_TOOL],
            tool_choice=tool_choice,
            max_tokens=40,
            temperature=0,
        )
        choice = completion.choices[0]
        assert choice.finish_reason == "tool_calls", tool_choice
        (call,) = choice.message.tool_calls
        assert call.function.name == "get_weather" and call.id
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, WEATHER_TOOL["function"]["parameters"])
        assert "Paris" in arguments["city"]


def test_full_tool_round_trip(client):
    """Call, tool result, final answer: the template (which knows no tools) still renders the call (as
    the JSON the grammar made the model write) and the tool's result."""
    messages = ask("What is the weather in Paris?")
    first = client.chat.completions.create(
        model="default",
        messages=messages,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        max_tokens=40,
        temperature=0,
    )
    call = first.choices[0].message.tool_calls[0]
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 31, "sky": "sunny"})},
    ]
    final = client.chat.completions.create(
        model="default", messages=messages, tools=[WEATHER_TOOL], max_tokens=30, temperature=0
    )
    choice = final.choices[0]
    assert choice.finish_reason in ("stop", "length") and not choice.message.tool_calls
    assert final.usage.prompt_tokens > first.usage.prompt_tokens + 10  # the call and the result
    assert choice.message.content
