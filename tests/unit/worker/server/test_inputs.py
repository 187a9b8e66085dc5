"""From OpenAI requests to engine inputs: tool-call history for templates that know no tools, template
variables."""

from __future__ import annotations

import json

from mili.worker.server.inputs import chat_prompt, tool_calls_as_text
from mili.worker.server.protocol import ChatCompletionRequest
from mili.worker.tokenizer import Tokenizer


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


THINKING_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}"
)


def test_chat_template_kwargs_reach_the_template(tiny_qwen3_dir):
    """``enable_thinking`` (Qwen3's switch) passes through ``chat_template_kwargs``."""
    tokenizer = Tokenizer.from_pretrained(tiny_qwen3_dir)
    tokenizer.chat_template = THINKING_TEMPLATE
    messages = [{"role": "user", "content": "hi"}]

    def rendered(**kwargs) -> str:
        request = ChatCompletionRequest(messages=messages, **kwargs)
        return tokenizer.decode(chat_prompt(tokenizer, request, 10_000), skip_special_tokens=False)

    assert "<think>" in rendered(chat_template_kwargs={"enable_thinking": False})
    assert "<think>" not in rendered(chat_template_kwargs={"enable_thinking": True})
    assert "<think>" not in rendered()
