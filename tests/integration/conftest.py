"""Integration fixtures: a fresh Runlet user per test against the real local RabbitMQ."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.s3 import moto_server, private_s3_server, s3_server, storage_config  # noqa: F401
from tests.integration.tls_broker import tls_broker  # noqa: F401 - a session fixture
from tests.support import Fleet, broker_is_up  # noqa: F401 - autouse, fails without a broker


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path)
    try:
        yield f
    finally:
        f.close()
