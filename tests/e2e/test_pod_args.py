"""The pod runner's reading of a container's args: the pod's own addresses become the fake pod's."""

from __future__ import annotations

from e2e.harness.pod_runner import pod_args


def test_only_whole_pod_local_addresses_are_rewritten():
    args = ["--host", "0.0.0.0", "--router-url", "http://127.0.0.1:8001", "--peer", "127.0.0.12:8000"]
    # A pod on 127.0.0.10: 127.0.0.1 inside the rewritten address must not be rewritten again.
    assert pod_args(args, "127.0.0.10") == [
        "--host", "127.0.0.10",
        "--router-url", "http://127.0.0.10:8001",
        "--peer", "127.0.0.12:8000",
    ]  # fmt: skip
