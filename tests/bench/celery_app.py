"""The Celery baseline of #4: a task that runs `true`, over the same local RabbitMQ.

Workers: `celery -A tests.bench.celery_app worker -c 1` (twice). Broker
amqp://guest:guest@127.0.0.1//, result backend rpc://. The queue (and its exchange) is named
by BENCH_CELERY_QUEUE so a run never meets another run's tasks, and remote control is off so
no pidbox queues or exchanges are left behind. Everything else is Celery's defaults.
"""

from __future__ import annotations

import os
import subprocess
import time

from celery import Celery  # type: ignore[import-untyped, import-not-found, unused-ignore]

QUEUE = os.environ.get("BENCH_CELERY_QUEUE", "runlet-bench-celery")

app = Celery(
    "runlet_bench",
    broker=os.environ.get("BENCH_CELERY_BROKER", "amqp://guest:guest@127.0.0.1//"),
    backend="rpc://",
)
app.conf.update(
    task_default_queue=QUEUE,
    task_default_exchange=QUEUE,
    task_default_routing_key=QUEUE,
    worker_enable_remote_control=False,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    result_expires=600,
)


@app.task(name="runlet_bench.run_true")  # type: ignore[untyped-decorator, misc, unused-ignore]
def run_true() -> tuple[float, float]:
    """Run `true` as a child process; returns (started, finished) wall-clock times."""
    started = time.time()
    subprocess.run(["true"], check=True)
    return started, time.time()
