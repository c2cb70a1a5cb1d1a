"""Reliability fixtures: the real 3-node cluster (scripts/cluster.sh), a fleet on it, results."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.s3 import moto_server, private_s3_server, s3_server, storage_config  # noqa: F401
from tests.reliability.cluster import Cluster, cluster  # noqa: F401
from tests.support import BROKER_URL, Fleet


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """A fresh user whose configs are written by the tests with the cluster's URLs."""
    f = Fleet(tmp_path)
    try:
        yield f
    finally:
        f.close()


@pytest.fixture
def cluster_urls(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """The three nodes' AMQP URLs, every node up (a test that killed one is healed first).

    With RUNLET_RELIABILITY_LOCAL=1 (development only) the local single broker stands in
    for scenarios that do not kill a broker node.
    """
    if os.environ.get("RUNLET_RELIABILITY_LOCAL") == "1":
        return (BROKER_URL,)
    the_cluster: Cluster = request.getfixturevalue("cluster")
    the_cluster.up()
    return tuple(the_cluster.urls)
