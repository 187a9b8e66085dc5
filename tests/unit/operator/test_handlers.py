"""The handlers' retry policy for API errors that may pass (unreachable, 409, 5xx)."""

from __future__ import annotations

from mili.operator.handlers import retry_delay
from mili.operator.kube import ApiError


def test_retries_back_off_exponentially_up_to_two_minutes():
    assert [retry_delay(n) for n in range(8)] == [2, 4, 8, 16, 32, 64, 120, 120]


def test_only_lasting_4xx_answers_are_refusals():
    refusals = {
        status
        for status in (0, 400, 403, 404, 409, 422, 429, 500, 503)
        if ApiError(status, "", "").is_refusal
    }
    assert refusals == {400, 403, 422}
