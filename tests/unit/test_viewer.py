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


def test_a_replay_ends_without_a_line_and_its_end_state_counts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A replay saying `running` prints nothing (the screen is the job's); one saying `exited 4`
    ends the follow with that status, as the page's tab does (they share JobStream)."""
    from runlet.protocol.messages import ReplayFinished

    f = follower()
    f._take(ReplayFinished(JOB, "edge-1", 3, "running"))
    assert (f.state, f.stream.replayed_to, f.running.is_set()) == ("running", 3, True)
    f._take(ReplayFinished(JOB, "edge-1", 5, "exited", exit_code=4))
    assert f.final is not None
    assert f.final.status() == 4
    assert capsys.readouterr().err == ""
