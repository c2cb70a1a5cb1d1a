"""Connecting to the real RabbitMQ: a handshake that fails half-way leaves nothing behind.

aio-pika's Connection closes itself from `__del__` by making a `close()` coroutine; collected
outside the I/O loop's thread, that coroutine is never awaited (and pytest turns the warning
into an error). The adapter closes a connection whose handshake failed itself, on the loop.
"""

from __future__ import annotations

import gc
import threading
import urllib.parse
import warnings

import pytest

from runlet.adapters.broker import Broker
from runlet.errors import BrokerUnavailable
from runlet.runtime.loop import LoopThread
from tests.support import BROKER_URL

pytestmark = pytest.mark.integration


def _with_password(url: str, password: str) -> str:
    parts = urllib.parse.urlsplit(url)
    netloc = f"{parts.username}:{password}@{parts.hostname}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _collected_elsewhere() -> list[str]:
    """Collect garbage on a thread of its own (neither the loop's nor pytest's)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        worker = threading.Thread(target=gc.collect)
        worker.start()
        worker.join()
    return [str(w.message) for w in caught]


def test_a_refused_login_leaves_no_connection_to_the_garbage_collector() -> None:
    """The broker refuses the login after TCP and AMQP started: the error names it, no leak."""
    loop = LoopThread("test-connect")
    try:
        broker = Broker([_with_password(BROKER_URL, "wrong")], "guest", connect_timeout=10)
        with pytest.raises(BrokerUnavailable, match="Login was refused") as caught:
            loop.run_sync(broker.connect(), timeout=30)
        assert "wrong" not in str(caught.value)
        del caught, broker
        assert [m for m in _collected_elsewhere() if "never awaited" in m] == []
    finally:
        loop.close()
