"""The Follower shows a job's states as they happened, whatever order copies arrive in."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from runlet.client.follow import Follower, Options
from runlet.protocol.crypto import FleetKey
from runlet.protocol.messages import JobStateChanged

JOB = "0123456789abcdef0123456789abcdef"


def follower() -> Follower:
    client: Any = SimpleNamespace(key=FleetKey.generate())
    watch: Any = SimpleNamespace()
    return Follower(client, JOB, watch, Options(interactive=False))


def event(state: str, seq: int, code: int | None = None) -> JobStateChanged:
    return JobStateChanged(JOB, "edge-1", state, seq, 1.0, exit_code=code)


def test_a_late_older_state_does_not_undo_a_newer_one(capsys: pytest.CaptureFixture[str]) -> None:
    """`queued` arriving after `running` (a retried publish) is not shown and changes nothing."""
    f = follower()
    f._take(event("running", 1))
    f._take(event("queued", 0))
    assert f.state == "running"
    f._take(event("exited", 2, code=0))
    assert f.final is not None
    assert f.final.state == "exited"
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"[runlet] job {JOB} running on edge-1"]


def test_states_in_order_are_each_shown_once(capsys: pytest.CaptureFixture[str]) -> None:
    """queued then running print one line each; a duplicate of either prints nothing more."""
    f = follower()
    for e in (event("queued", 0), event("queued", 0), event("running", 1), event("running", 1)):
        f._take(e)
    assert capsys.readouterr().err.splitlines() == [
        f"[runlet] job {JOB} queued on edge-1",
        f"[runlet] job {JOB} running on edge-1",
    ]
