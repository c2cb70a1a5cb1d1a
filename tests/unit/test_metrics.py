"""runlet.metrics: made on first use, all at once; a process that serves none counts nothing.

Import-time behaviour is checked in fresh interpreters (this one has the metrics made long ago).
"""

from __future__ import annotations

import subprocess
import sys

from runlet import metrics


def fresh(code: str) -> str:
    """Run `code` in a new interpreter; returns what it printed."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


def test_every_named_metric_is_made_and_nothing_else() -> None:
    """NAMES lists exactly the metrics define_all() makes."""
    assert sorted(metrics.NAMES) == sorted(metrics.define_all())


def test_the_client_and_the_roots_import_no_prometheus_until_a_metric_is_touched() -> None:
    """A one-shot client, and a daemon or server before it starts, leave prometheus_client out."""
    printed = fresh(
        "import sys, runlet.cli, runlet.client.commands, runlet.roots.daemon, runlet.roots.server\n"
        "print('prometheus_client' in sys.modules)\n"
        "from runlet import metrics\n"
        "metrics.JOBS.labels(state='queued').inc()\n"
        "print('prometheus_client' in sys.modules)\n"
        "from prometheus_client import REGISTRY\n"
        "print(REGISTRY.get_sample_value('runlet_jobs_running') == 0.0)"
    )
    assert printed.splitlines() == ["False", "True", "True"]  # touching one made them all


def test_count_nothing_makes_stand_ins_that_take_every_call() -> None:
    """Before any metric is made, count_nothing() swaps in stand-ins; prometheus stays out."""
    printed = fresh(
        "import sys\nfrom runlet import metrics\n"
        "print(metrics.count_nothing())\n"
        "metrics.JOBS.labels(state='x').inc(); metrics.JOBS_RUNNING.set(3)\n"
        "metrics.JOBS_RUNNING.dec(); metrics.INPUT_ROUNDTRIP.observe(0.1)\n"
        "print('prometheus_client' in sys.modules, metrics.count_nothing())"
    )
    assert printed.splitlines() == ["True", "False False"]


def test_count_nothing_keeps_metrics_that_are_made_already() -> None:
    """Once real metrics exist (a test process, say), count_nothing() changes nothing."""
    before = metrics.JOBS
    assert metrics.count_nothing() is False
    assert metrics.JOBS is before
