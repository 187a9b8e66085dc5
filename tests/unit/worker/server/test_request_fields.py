"""Every field of OpenAI's and vLLM's request schemas is declared implemented or refused, and the
docs' table is the declaration."""

from __future__ import annotations

from pathlib import Path

import pytest
from openai.types import completion_create_params
from openai.types.chat import completion_create_params as chat_create_params

from mili.worker.server.errors import APIError
from mili.worker.server.protocol import ChatCompletionRequest, CompletionRequest
from mili.worker.server.request_fields import FIELDS, fields_of, markdown_table, refuse_unsupported

DOCS = Path(__file__).parents[4] / "docs" / "server.md"
# The request fields of vLLM 0.32.0 (its ChatCompletionRequest and CompletionRequest), recorded.
_VLLM_SHARED = """
    model frequency_penalty logit_bias logprobs max_tokens n presence_penalty response_format seed
    stop stream stream_options temperature top_p thinking_token_budget user use_beam_search top_k
    min_p repetition_penalty watermarking length_penalty stop_token_ids include_stop_str_in_output
    ignore_eos min_tokens skip_special_tokens spaces_between_special_tokens truncate_prompt_tokens
    truncation_side prompt_logprobs logprob_token_ids allowed_token_ids bad_words echo
    add_special_tokens structured_outputs priority request_id session_id return_tokens_as_token_ids
    return_token_ids routed_experts_prompt_start return_token_offsets mm_payload return_mm_kwargs
    cache_salt kv_transfer_params ec_transfer_params vllm_xargs repetition_detection stream_interval
"""
_VLLM_CHAT_ONLY = """
    messages top_logprobs max_completion_tokens tools tool_choice reasoning_effort include_reasoning
    parallel_tool_calls add_generation_prompt continue_final_message documents chat_template
    chat_template_kwargs media_io_kwargs mm_processor_kwargs return_prompt_text
"""
_VLLM_COMPLETIONS_ONLY = """
    prompt suffix prompt_embeds
"""
VLLM_CHAT_FIELDS = (_VLLM_SHARED + _VLLM_CHAT_ONLY).split()
VLLM_COMPLETIONS_FIELDS = (_VLLM_SHARED + _VLLM_COMPLETIONS_ONLY).split()


def test_the_docs_table_is_the_declaration():
    assert markdown_table() in DOCS.read_text()


@pytest.mark.parametrize(
    "endpoint, openai_fields",
    [
        ("chat", chat_create_params.CompletionCreateParamsBase.__annotations__),
        ("completions", completion_create_params.CompletionCreateParamsBase.__annotations__),
    ],
)
def test_every_openai_field_is_declared(endpoint, openai_fields):
    declared = {field.name for field in fields_of(endpoint)}
    assert set(openai_fields) - declared == set()


@pytest.mark.parametrize(
    "endpoint, vllm_fields", [("chat", VLLM_CHAT_FIELDS), ("completions", VLLM_COMPLETIONS_FIELDS)]
)
def test_every_vllm_field_is_declared(endpoint, vllm_fields):
    declared = {field.name for field in fields_of(endpoint)}
    assert [name for name in vllm_fields if name not in declared] == []


def test_implemented_fields_are_in_the_request_models():
    models = {"chat": ChatCompletionRequest, "completions": CompletionRequest}
    for endpoint, model in models.items():
        names = {info.alias or name for name, info in model.model_fields.items()} | {"stream_options", "user"}
        missing = [f.name for f in fields_of(endpoint) if f.implemented and f.name not in names]
        assert missing in ([], ["session_id"], ["prompt_cache_key", "safety_identifier", "session_id"]), (
            missing
        )


def test_refused_fields_are_refused_unless_off():
    refuse_unsupported({"store": False, "service_tier": "auto", "use_beam_search": False}, "chat")
    refuse_unsupported({"store": True}, "completions")  # not a completions field: foreign, ignored
    for body, param in [({"store": True}, "store"), ({"cache_salt": "a"}, "cache_salt")]:
        with pytest.raises(APIError) as raised:
            refuse_unsupported(body, "chat")
        assert raised.value.param == param and param in str(raised.value)
    assert len({(f.name, f.endpoint) for f in FIELDS}) == len(FIELDS)
