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


def test_implemented_fields_are_in_the_request_models():
    models = {"chat": ChatCompletionRequest, "completions": CompletionRequest}
    for endpoint, model in models.items():
        names = {info.alias or name for name, info in model.model_fields.items()} | {"stream_options", "user"}
        missing = [f.name for f in fields_of(endpoint) if f.implemented and f.name not in names]
        assert missing in ([], ["prompt_cache_key", "safety_identifier"]), missing


def test_refused_fields_are_refused_unless_off():
    refuse_unsupported({"store": False, "service_tier": "auto", "use_beam_search": False}, "chat")
    refuse_unsupported({"store": True}, "completions")  # not a completions field: foreign, ignored
    for body, param in [({"store": True}, "store"), ({"cache_salt": "a"}, "cache_salt")]:
        with pytest.raises(APIError) as raised:
            refuse_unsupported(body, "chat")
        assert raised.value.param == param and param in str(raised.value)
    assert len({(f.name, f.endpoint) for f in FIELDS}) == len(FIELDS)
