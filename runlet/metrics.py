"""Every Prometheus metric Runlet exports, defined once, named `runlet_<thing>_<unit>`."""

from __future__ import annotations

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
