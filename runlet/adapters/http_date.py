"""The clock of an HTTP server, read from its `Date` header (RFC 9110 §6.6.1, 1 s resolution).

`runlet doctor` uses it to compare this device's clock with the broker host's, through the
RabbitMQ management listener: AMQP itself carries no time. Any failure (nothing listening,
no Date header, a bad one) is None: the skew is then simply not measurable. Only the status
line and headers are read; the body is never.
"""

from __future__ import annotations

import email.utils
import http.client
import time
import urllib.parse
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ClockReading:
    """The server's time against ours, taken at the middle of the request's round trip."""

    url: str
    skew: float  # server minus local, seconds; its resolution is the header's, 1 s
    round_trip: float


def read_clock(url: str, timeout: float = 2.0) -> ClockReading | None:
    """A HEAD request to `url` (http or https); None when no usable Date header comes back."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = kind(parts.hostname, parts.port, timeout=timeout)
    try:
        started = time.time()
        conn.request("HEAD", parts.path or "/")
        response = conn.getresponse()
        ended = time.time()
        stamp = response.getheader("Date")
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    if not stamp or len(stamp) > 64:
        return None
    try:
        remote = email.utils.parsedate_to_datetime(stamp).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    middle = (started + ended) / 2
    return ClockReading(url, remote - middle, ended - started)
