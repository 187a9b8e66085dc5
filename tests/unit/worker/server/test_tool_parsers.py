"""The tool-call parsers (hermes, llama3_json) on recorded model text, whole and streamed split at every
boundary."""

from __future__ import annotations

import json

import pytest

from mili.worker.server.tool_parsers import (
    TOOL_PARSERS,
    HermesToolStream,
    merge_tool_deltas,
    parse_tool_calls,
)

WEATHER = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>'
)
TWO_CALLS = (
    "I will check both.\n"
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Tokyo \\"東京\\"", "days": [1, 2]}}\n'
    "</tool_call>\n"
    '<tool_call>\n{"name": "search", "arguments": {"query": "a } b { c", "nested": {"k": []}}}\n</tool_call>'
)
ARGUMENTS_FIRST = '<tool_call>{"arguments": {"x": 1}, "name": "f"}</tool_call>'
STRING_ARGUMENTS = '<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call>'
NOT_A_CALL = "Use <tool_call>like this</tool_call> tags."
PLAIN = "  The capital of France is Paris. <tool"
UNTERMINATED = '<tool_call>\n{"name": "f", "arguments": {"a": "b"}}'


LLAMA_CALL = '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}'
LLAMA_TWO = (
    '<|python_tag|>{"name": "search", "parameters": {"query": "a ; } b"}}; '
    '{"name": "get_time", "parameters": {"zone": 2}}'
)
LLAMA_PLAIN = "The weather is {sunny} today."
LLAMA_THEN_TEXT = '  {"name": "f", "parameters": {}} and then some words'
LLAMA_NOT_A_CALL = '{"answer": 42}'
LLAMA_PARTIAL_TAG = "<|python"
LLAMA_TEXTS = [LLAMA_CALL, LLAMA_TWO, LLAMA_PLAIN, LLAMA_THEN_TEXT, LLAMA_NOT_A_CALL, LLAMA_PARTIAL_TAG, ""]


def streamed(text: str, cut: int, parser: str = "hermes") -> tuple[str, list]:
    """Feed ``text`` in pieces of ``cut`` characters, collecting content and call deltas."""
    stream = TOOL_PARSERS[parser]()
    content, deltas = "", []
    for start in range(0, len(text), cut):
        delta = stream.feed(text[start : start + cut])
        content += delta.content
        deltas += delta.calls
    last = stream.finish()
    return content + last.content, deltas + last.calls


def as_comparable(calls) -> list[tuple[str, object]]:
    return [(call.name, json.loads(call.arguments)) for call in calls]


def assert_any_split_gives_the_whole_text_result(text: str, parser: str) -> None:
    whole_content, whole_calls = parse_tool_calls(text, parser)
    for cut in range(1, len(text) + 1):
        content, deltas = streamed(text, cut, parser)
        assert (content or None) == whole_content, cut
        assert as_comparable(merge_tool_deltas(deltas)) == as_comparable(whole_calls), cut
    # and split at every single boundary (two pieces)
    for boundary in range(len(text) + 1):
        stream = TOOL_PARSERS[parser]()
        pieces = [stream.feed(text[:boundary]), stream.feed(text[boundary:]), stream.finish()]
        assert ("".join(p.content for p in pieces) or None) == whole_content
        calls = merge_tool_deltas([d for p in pieces for d in p.calls])
        assert as_comparable(calls) == as_comparable(whole_calls)


@pytest.mark.parametrize(
    "text", [WEATHER, TWO_CALLS, ARGUMENTS_FIRST, STRING_ARGUMENTS, NOT_A_CALL, PLAIN, UNTERMINATED]
)
def test_streaming_at_any_split_gives_the_whole_text_result(text):
    assert_any_split_gives_the_whole_text_result(text, "hermes")


def test_calls_and_content_are_parsed():
    content, calls = parse_tool_calls(TWO_CALLS)
    assert content == "I will check both."
    assert as_comparable(calls) == [
        ("get_weather", {"city": 'Tokyo "東京"', "days": [1, 2]}),
        ("search", {"query": "a } b { c", "nested": {"k": []}}),
    ]
    assert all(call.id.startswith("call_") for call in calls) and calls[0].id != calls[1].id


def test_only_content_when_the_model_calls_nothing():
    assert parse_tool_calls(PLAIN) == ("The capital of France is Paris. <tool", [])
    assert parse_tool_calls(NOT_A_CALL) == (NOT_A_CALL, [])


def test_odd_but_valid_calls_are_calls():
    assert as_comparable(parse_tool_calls(ARGUMENTS_FIRST)[1]) == [("f", {"x": 1})]
    assert as_comparable(parse_tool_calls(STRING_ARGUMENTS)[1]) == [("f", {"x": 1})]
    assert as_comparable(parse_tool_calls(UNTERMINATED)[1]) == [("f", {"a": "b"})]


def test_streaming_sends_the_header_first_then_argument_pieces():
    stream = HermesToolStream()
    deltas = [d for char in WEATHER for d in stream.feed(char).calls] + stream.finish().calls
    first, rest = deltas[0], deltas[1:]
    assert (first.index, first.name, first.arguments) == (0, "get_weather", "")
    assert first.id.startswith("call_")
    assert all(d.id is None and d.name is None and d.arguments for d in rest)
    assert len(rest) > 10  # arguments arrive as they are generated, not at the end
    assert json.loads("".join(d.arguments for d in rest)) == {"city": "Paris", "unit": "celsius"}


@pytest.mark.parametrize("text", LLAMA_TEXTS)
def test_llama3_json_streaming_at_any_split_gives_the_whole_text_result(text):
    assert_any_split_gives_the_whole_text_result(text, "llama3_json")


def test_llama3_json_calls_and_content():
    assert as_comparable(parse_tool_calls(LLAMA_CALL, "llama3_json")[1]) == [
        ("get_weather", {"city": "Paris", "unit": "celsius"})
    ]
    content, calls = parse_tool_calls(LLAMA_TWO, "llama3_json")
    assert content is None
    assert as_comparable(calls) == [("search", {"query": "a ; } b"}), ("get_time", {"zone": 2})]
    assert parse_tool_calls(LLAMA_PLAIN, "llama3_json") == (LLAMA_PLAIN, [])
    content, calls = parse_tool_calls(LLAMA_THEN_TEXT, "llama3_json")
    assert content == "and then some words" and as_comparable(calls) == [("f", {})]
    assert parse_tool_calls(LLAMA_NOT_A_CALL, "llama3_json") == (LLAMA_NOT_A_CALL, [])
    assert parse_tool_calls(LLAMA_PARTIAL_TAG, "llama3_json") == (LLAMA_PARTIAL_TAG, [])
