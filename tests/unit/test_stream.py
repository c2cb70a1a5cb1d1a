"""JobStream, the core the CLI's Follower and the page's tabs share: order, states, replays."""

from __future__ import annotations

import time

import pytest

from runlet.adapters.logfile import seal_output
from runlet.client import stream as stream_module
from runlet.client.stream import JobStream, State
from runlet.protocol.crypto import FleetKey
from runlet.protocol.messages import JobStateChanged, OutputChunk, ReplayFinished

JOB = "0123456789abcdef0123456789abcdef"
OTHER = "f" * 32
KEY = FleetKey.generate()


def chunk(seq: int, data: bytes, *, final: bool = False, job: str = JOB) -> OutputChunk:
    flags, sealed = seal_output(KEY.job_key(job), seq, time.time(), data, final=final)
    return OutputChunk(job, seq, flags, sealed)


def state(name: str, seq: int, **extra: object) -> JobStateChanged:
    return JobStateChanged(JOB, "edge-1", name, seq, 1.0, **extra)  # type: ignore[arg-type]


def test_pieces_come_numbered_in_order() -> None:
    """Out-of-order chunks come out in order, each with its own seq; duplicates never."""
    s = JobStream(KEY, JOB)
    assert s.take(chunk(1, b"b")) == ([], None)
    assert s.take(chunk(0, b"a")) == ([(0, b"a"), (1, b"b")], None)
    assert s.take(chunk(1, b"b")) == ([], None)
    assert s.next_seq == 2


def test_a_stream_from_a_seq_drops_what_came_before() -> None:
    """A resumed tab starts at its seq: earlier chunks are not shown again."""
    s = JobStream(KEY, JOB, start=3)
    assert s.take(chunk(2, b"old")) == ([], None)
    assert s.take(chunk(3, b"new")) == ([(3, b"new")], None)


def test_other_jobs_and_forgeries_are_ignored() -> None:
    """Another job's messages and a chunk sealed under another key change nothing."""
    s = JobStream(KEY, JOB)
    assert s.take(chunk(0, b"x", job=OTHER)) == ([], None)
    flags, sealed = seal_output(FleetKey.generate().job_key(JOB), 0, 1.0, b"forged")
    assert s.take(OutputChunk(JOB, 0, flags, sealed)) == ([], None)
    assert s.take(JobStateChanged(OTHER, "n", "running", 1, 1.0)) == ([], None)
    assert not s.found
    assert s.reasm.bad_chunks == 1


def test_states_count_once_and_a_late_older_one_not_at_all() -> None:
    """running, a duplicate, a late queued; then the end with its status, which stays."""
    s = JobStream(KEY, JOB)
    assert s.take(state("running", 1))[1] == State("running", "edge-1")
    assert s.take(state("running", 1))[1] is None
    assert s.take(state("queued", 0))[1] is None
    ended = s.take(state("killed", 2, signal=9))[1]
    assert ended is not None
    assert (ended.ended, ended.status()) == (True, 137)
    assert s.take(state("exited", 3, exit_code=0))[1] is None
    assert s.running is False


def test_a_replay_says_where_live_output_resumes_and_the_state() -> None:
    """A replay's end gives the next live seq and the state (an ended job's status)."""
    s = JobStream(KEY, JOB)
    got = s.take(ReplayFinished(JOB, "edge-1", 4, "exited", exit_code=3))[1]
    assert (s.replayed_to, s.found) == (4, True)
    assert got is not None
    assert got.status() == 3


def test_complete_needs_the_end_and_the_final_chunk() -> None:
    """Complete only once the job ended and its FINAL chunk is shown."""
    s = JobStream(KEY, JOB)
    s.take(state("running", 1))
    s.take(state("exited", 2, exit_code=0))
    assert not s.complete
    s.take(chunk(0, b"bye", final=True))
    assert s.complete


def test_replays_are_due_for_a_gap_a_missing_final_and_a_job_not_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not found yet, a gap that stays, an end without its FINAL chunk: ask the node again."""
    clock = [1000.0]
    monkeypatch.setattr("runlet.client.stream.time.monotonic", lambda: clock[0])
    monkeypatch.setattr("runlet.client.session.time.monotonic", lambda: clock[0])
    s = JobStream(KEY, JOB)
    assert not s.replay_due()
    clock[0] += stream_module.FIND_REPLAY_SECONDS + 0.1
    assert s.replay_due()  # nobody answered yet
    s.asked()
    s.take(chunk(1, b"b"))  # chunk 0 missing
    assert not s.replay_due()
    clock[0] += stream_module.GAP_REPLAY_SECONDS + 0.1
    assert s.replay_due()
    s.asked()
    s.take(chunk(0, b"a"))
    s.take(state("running", 1))
    s.take(state("exited", 2, exit_code=0))  # ended, FINAL not in
    assert not s.replay_due()
    clock[0] += stream_module.FIND_REPLAY_SECONDS + 0.1
    assert s.replay_due()


def test_a_missed_chunk_makes_a_replay_due(monkeypatch: pytest.MonkeyPatch) -> None:
    """Output dropped before it reached the stream counts as a gap."""
    clock = [1000.0]
    monkeypatch.setattr("runlet.client.stream.time.monotonic", lambda: clock[0])
    s = JobStream(KEY, JOB)
    s.take(chunk(0, b"a"))
    s.missed()
    assert not s.replay_due()
    clock[0] += stream_module.GAP_REPLAY_SECONDS + 0.1
    assert s.replay_due()
