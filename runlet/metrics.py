"""Every Prometheus metric Runlet exports, defined once, named `runlet_<thing>_<unit>`.

They are made on first use (`metrics.JOBS` …), all at once: prometheus_client is not imported
by a process that never touches one, such as a one-shot `runlet run`. `define_all()` makes
them before an endpoint serves them, so every metric is listed from the start. A `runlet
start` process with no endpoint to serve them (no `[metrics]`) calls `count_nothing()`
first: nobody could ever read what it counted, and prometheus_client with the HTTP server it
brings is about 2 MiB of a small board's memory.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram

    JOBS: Counter
    JOBS_RUNNING: Gauge
    QUEUE_DEPTH: Gauge
    DISPATCH_TO_START: Histogram
    OUTPUT_BYTES: Counter
    INPUT_BYTES: Counter
    REJECTED: Counter
    RECONNECTS: Counter
    PUBLISH_RETRIES: Counter
    PUBLISH_FAILURES: Counter
    ACTOR_RESTARTS: Counter
    UNEXPECTED_MESSAGES: Counter
    UPLOAD_BACKLOG: Gauge
    UPLOADS: Counter
    INPUT_ROUNDTRIP: Histogram
    LEDGER_EVENTS: Counter
    NODES_ONLINE: Gauge
    LEDGER_JOBS: Gauge

NAMES = (
    "JOBS",
    "JOBS_RUNNING",
    "QUEUE_DEPTH",
    "DISPATCH_TO_START",
    "OUTPUT_BYTES",
    "INPUT_BYTES",
    "REJECTED",
    "RECONNECTS",
    "PUBLISH_RETRIES",
    "PUBLISH_FAILURES",
    "ACTOR_RESTARTS",
    "UNEXPECTED_MESSAGES",
    "UPLOAD_BACKLOG",
    "UPLOADS",
    "INPUT_ROUNDTRIP",
    "LEDGER_EVENTS",
    "NODES_ONLINE",
    "LEDGER_JOBS",
)
"""Every metric's name here, as `define_all()` makes them."""

_lock = threading.Lock()
_defined: dict[str, Any] | None = None


def _define() -> dict[str, Any]:
    from prometheus_client import Counter, Gauge, Histogram

    JOBS = Counter("runlet_jobs_total", "Job state changes on this node", ["state"])
    JOBS_RUNNING = Gauge("runlet_jobs_running", "Jobs running now on this node")
    QUEUE_DEPTH = Gauge("runlet_queue_depth_jobs", "Jobs accepted and waiting for a slot")
    DISPATCH_TO_START = Histogram(
        "runlet_dispatch_to_start_seconds",
        "Time from submission by the client to the child starting",
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    )
    OUTPUT_BYTES = Counter("runlet_output_bytes_total", "Terminal output bytes produced by jobs")
    INPUT_BYTES = Counter("runlet_input_bytes_total", "Keystroke bytes written into jobs")
    REJECTED = Counter(
        "runlet_rejected_messages_total", "Messages dead-lettered as invalid", ["queue", "reason"]
    )
    RECONNECTS = Counter("runlet_broker_reconnects_total", "Broker connections re-established")
    PUBLISH_RETRIES = Counter("runlet_publish_retries_total", "Durable publishes retried")
    PUBLISH_FAILURES = Counter("runlet_publish_failures_total", "Publishes given up", ["kind"])
    ACTOR_RESTARTS = Counter("runlet_actor_restarts_total", "Actors that crashed", ["actor"])
    UNEXPECTED_MESSAGES = Counter(
        "runlet_unexpected_messages_total", "Messages an actor had no case for", ["actor"]
    )
    UPLOAD_BACKLOG = Gauge("runlet_upload_backlog_logs", "Finished logs waiting for their upload")
    UPLOADS = Counter("runlet_uploads_total", "Log uploads to the object store", ["kind", "result"])
    INPUT_ROUNDTRIP = Histogram(
        "runlet_input_roundtrip_seconds",
        "From a keystroke written into a job's terminal to the job's next output (its echo)",
        buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
    )
    LEDGER_EVENTS = Counter(
        "runlet_ledger_events_total", "Job state events the server handled", ["result"]
    )
    NODES_ONLINE = Gauge("runlet_nodes_online", "Nodes whose heartbeat is current", ["user"])
    LEDGER_JOBS = Gauge("runlet_ledger_jobs", "Jobs in the ledger by state", ["state"])
    return {name: value for name, value in locals().items() if name.isupper()}


class _Nothing:
    """Stands in for every metric of a process that serves none: takes every call, keeps nothing."""

    def labels(self, *args: object, **kwargs: object) -> _Nothing:
        return self

    def inc(self, amount: float = 1) -> None:
        return None

    def dec(self, amount: float = 1) -> None:
        return None

    def set(self, value: float) -> None:
        return None

    def observe(self, amount: float) -> None:
        return None


def count_nothing() -> bool:
    """Make every metric a stand-in that keeps nothing, unless they are made already (True if
    it took effect). For a process that will never serve them."""
    global _defined  # noqa: PLW0603 - the module's one lazily made table
    with _lock:
        if _defined is not None:
            return False
        nothing = _Nothing()
        _defined = dict.fromkeys(NAMES, nothing)
        globals().update(_defined)
        return True


def define_all() -> dict[str, Any]:
    """Make every metric now (once; thread-safe) and return them by name."""
    global _defined  # noqa: PLW0603 - the module's one lazily made table
    with _lock:
        if _defined is None:
            _defined = _define()
            globals().update(_defined)
        return _defined


def __getattr__(name: str) -> Any:
    if not name.isupper():
        raise AttributeError(name)
    try:
        return define_all()[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
