"""From OpenAI requests to engine inputs: tool-call history for templates that know no tools."""

from __future__ import annotations

import json

from mili.worker.server.inputs import tool_calls_as_text


def test_tool_calls_become_the_json_a_required_call_writes():
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    message = {
        "role": "assistant",
        "tool_calls": [call, {"function": {"name": "g", "arguments": "not json"}}],
    }
    rendered = tool_calls_as_text(message)
    assert "tool_calls" not in rendered and rendered["role"] == "assistant"
    assert json.loads(rendered["content"]) == [
        {"name": "f", "arguments": {"x": 1}},
        {"name": "g", "arguments": "not json"},
    ]
    with_content = tool_calls_as_text({**message, "content": "Let me look."})
    assert with_content["content"].startswith("Let me look.\n[")
