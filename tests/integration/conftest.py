"""Fixtures shared by the integration suites: kmock's emulated API server and a client for it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from integration.operator.conftest import Api, EmulatedCluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmulatedCluster]:
    emulated = EmulatedCluster()
    emulated.start()
    yield emulated
    emulated.stop()


@pytest.fixture(scope="module")
def api(cluster: EmulatedCluster) -> Iterator[Api]:
    client = Api(cluster.url)
    yield client
    client.http.close()
