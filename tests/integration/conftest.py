"""Integration fixtures: a fresh Runlet user per test against the real local RabbitMQ."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.s3 import moto_server, private_s3_server, s3_server, storage_config  # noqa: F401
from tests.support import BROKER_URL, Fleet


@pytest.fixture(scope="session", autouse=True)
def _broker_is_up() -> None:
    """Fail (never skip) the whole run when RabbitMQ is not reachable."""
    host_port = BROKER_URL.split("@", 1)[-1].split("/", 1)[0]
    host, _, port = host_port.partition(":")
    try:
        socket.create_connection((host, int(port or 5672)), timeout=5).close()
    except OSError as exc:
        pytest.fail(f"RabbitMQ is not reachable at {host_port} ({exc}); run `make services`")


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path)
    try:
        yield f
    finally:
        f.close()
