"""`mili-gateway`'s arguments: defaults, and bad values refused naming the flag."""

from __future__ import annotations

import pytest

from mili.gateway.cli import parse_args


def test_defaults_hold_for_a_five_minute_cold_start():
    args = parse_args(["--router-url", "http://127.0.0.1:8001"])
    assert (args.port, args.hold_timeout, args.max_held_requests, args.metrics_port) == (
        8000,
        300.0,
        256,
        29001,
    )


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--hold-timeout", "0"), ("--max-held-requests", "-1"), ("--readiness-interval", "-2")],
)
def test_bad_values_are_refused_naming_the_flag(flag, value, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--router-url", "http://r:8001", flag, value])
    assert flag in capsys.readouterr().err


def test_the_router_url_is_required(capsys):
    with pytest.raises(SystemExit):
        parse_args([])
    assert "--router-url" in capsys.readouterr().err
