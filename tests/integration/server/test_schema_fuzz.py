"""schemathesis against the server's own OpenAPI schema: whatever it sends, no 5xx.

Each operation of the schema gets a bounded hypothesis run (valid and invalid inputs). The schema is
loaded from the running server, so the test drives it through hypothesis directly rather than through
``schemathesis.pytest.from_fixture`` (whose node-id handling breaks on pytest 9).
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

EXAMPLES_PER_OPERATION = 25


@pytest.fixture(scope="module")
def fuzz_server(start_server, tiny_config):
    """A short context (48 tokens) keeps every generated request quick."""
    return start_server(tiny_config(max_model_len=48))


def test_no_input_gets_a_server_error(fuzz_server):
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/completions", "/v1/chat/completions", "/v1/models"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck),
            derandomize=True, database=None,
        )  # fmt: skip
        def run(case):
            case.call_and_validate(checks=[not_a_server_error], timeout=60)

        run()
    assert fuzz_server.sample("mili_prompt_tokens_total") > 0, "no generated request reached the engine"
    assert httpx.get(f"{fuzz_server.url}/health").json()["status"] == "ok"
    response = httpx.post(
        f"{fuzz_server.url}/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=30
    )
    assert response.status_code == 200
