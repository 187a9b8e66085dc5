"""The qwen3 reasoning parser on recorded text, whole and streamed split at every boundary."""

from __future__ import annotations

import pytest

from mili.worker.server.reasoning import Qwen3ReasoningStream, parse_reasoning

THINKING = "<think>\nThe user wants 2+2. That is 4.\n</think>\n\nThe answer is 4."
NOT_THINKING = "The answer is 4. <think> is a tag."
STOPPED_WHILE_THINKING = "<think>\nLet me count: 1, 2, 3</thi"
EMPTY_THINK = "\n<think>\n\n</think>\n\nHello!"
LATE_TAG = "<think>a</think>b<think>c</think>"


@pytest.mark.parametrize("text", [THINKING, NOT_THINKING, STOPPED_WHILE_THINKING, EMPTY_THINK, LATE_TAG, ""])
def test_streaming_at_any_boundary_gives_the_whole_text_split(text):
    whole = parse_reasoning(text)
    for boundary in range(len(text) + 1):
        for cut in (boundary, 1):
            stream = Qwen3ReasoningStream()
            pieces = (
                [stream.feed(text[:boundary]), stream.feed(text[boundary:])]
                if cut == boundary
                else [stream.feed(char) for char in text]
            )
            pieces.append(stream.finish())
            reasoning = "".join(piece.reasoning for piece in pieces)
            content = "".join(piece.content for piece in pieces)
            assert (reasoning if stream.thinks else None, content) == whole


def test_the_split():
    assert parse_reasoning(THINKING) == ("\nThe user wants 2+2. That is 4.\n", "\n\nThe answer is 4.")
    assert parse_reasoning(NOT_THINKING) == (None, NOT_THINKING)
    assert parse_reasoning(STOPPED_WHILE_THINKING) == ("\nLet me count: 1, 2, 3</thi", "")
    assert parse_reasoning(EMPTY_THINK) == ("\n\n", "\n\nHello!")
    assert parse_reasoning(LATE_TAG) == ("a", "b<think>c</think>")
