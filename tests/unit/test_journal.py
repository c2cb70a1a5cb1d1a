"""The daemon's job journal: FIFO, durable, strict about states, clear about broken files."""

from __future__ import annotations

import ctypes
import os
import random
import sqlite3
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runlet.adapters.journal import STATES, TERMINAL_STATES, Journal
from runlet.errors import ClosedError, JobNotFound, StorageError

# Paths from queued to each state, for tests that need a job in that state.
PATHS = {
    "queued": [],
    "running": ["running"],
    "exited": ["running", "exited"],
    "killed": ["running", "killed"],
    "timed_out": ["running", "timed_out"],
    "cancelled": ["running", "cancelled"],
    "interrupted": ["running", "interrupted"],
    "expired": ["expired"],
    "rejected": ["rejected"],
}


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "node" / "journal.db"


@pytest.fixture
def journal(path: Path) -> Iterator[Journal]:
    with Journal(path) as opened:
        yield opened


def bring_to(journal: Journal, job_id: str, state: str, now: float = 10.0) -> None:
    """Accept `job_id` and walk it to `state` along its usual path."""
    assert journal.accept(job_id, b"sealed", now)
    for step in PATHS[state]:
        journal.mark(job_id, step, now)


def test_accept_records_a_queued_job(journal: Journal) -> None:
    """An accepted job is queued, with its sealed request bytes and accept time, untouched."""
    assert journal.accept("job-1", b"\x00sealed\xff", 5.0)
    entry = journal.get("job-1")
    assert entry is not None
    assert (entry.state, entry.request, entry.accepted_at) == ("queued", b"\x00sealed\xff", 5.0)
    assert (entry.started_at, entry.ended_at, entry.state_seq) == (None, None, 0)


def test_accept_of_a_known_id_changes_nothing(journal: Journal) -> None:
    """A redelivered dispatch (same job id) is refused and leaves the first one as it was."""
    assert journal.accept("job-1", b"first", 1.0)
    journal.mark("job-1", "running", 2.0)
    assert not journal.accept("job-1", b"second", 3.0)
    entry = journal.get("job-1")
    assert entry is not None
    assert (entry.state, entry.request, entry.accepted_at) == ("running", b"first", 1.0)
    assert journal.statistics()["queued"] == 0


def test_accept_is_committed_before_it_returns(journal: Journal, path: Path) -> None:
    """Another connection sees an accepted job at once: the dispatch may be acked now."""
    journal.accept("job-1", b"sealed", 1.0)
    with sqlite3.connect(path) as other:
        rows = other.execute("SELECT job_id, state FROM jobs").fetchall()
    other.close()
    assert rows == [("job-1", "queued")]


def test_queued_is_in_accept_order_over_many_jobs(journal: Journal) -> None:
    """queued() lists jobs in the order they were accepted, not by id or time given."""
    ids = [f"job-{n:04d}" for n in range(300)]
    random.Random(7).shuffle(ids)
    for n, job_id in enumerate(ids):
        journal.accept(job_id, b"sealed", float(1000 - n))
    assert [entry.job_id for entry in journal.queued()] == ids


def test_queued_keeps_accept_order_after_some_are_marked(journal: Journal) -> None:
    """Jobs that leave the queue drop out of queued(); the rest keep their order."""
    ids = [f"job-{n}" for n in range(20)]
    for job_id in ids:
        journal.accept(job_id, b"sealed", 1.0)
    for job_id in ids[::3]:
        journal.mark(job_id, "running", 2.0)
    journal.mark(ids[1], "cancelled", 2.0)
    journal.mark(ids[4], "expired", 2.0)
    left = [job_id for n, job_id in enumerate(ids) if n % 3 and n not in (1, 4)]
    assert [entry.job_id for entry in journal.queued()] == left
    assert [entry.job_id for entry in journal.running()] == ids[::3]


def test_reopen_sees_queued_and_running_jobs(path: Path) -> None:
    """After close and reopen, queued and running jobs are all there, in order, as left."""
    with Journal(path) as journal:
        for job_id in ("a", "b", "c", "d"):
            journal.accept(job_id, f"sealed-{job_id}".encode(), 1.0)
        journal.mark("b", "running", 2.0)
        journal.mark("d", "running", 3.0)
        before = [journal.get(job_id) for job_id in "abcd"]
    with Journal(path) as reopened:
        assert [entry.job_id for entry in reopened.queued()] == ["a", "c"]
        assert [entry.job_id for entry in reopened.running()] == ["b", "d"]
        assert [reopened.get(job_id) for job_id in "abcd"] == before
        assert reopened.accept("e", b"sealed", 4.0)
        assert [entry.job_id for entry in reopened.queued()] == ["a", "c", "e"]


def test_mark_running_then_exited_records_times_and_code(journal: Journal) -> None:
    """running sets started_at; a terminal state sets ended_at and keeps what it is given."""
    journal.accept("job-1", b"sealed", 1.0)
    running = journal.mark("job-1", "running", 2.0)
    assert (running.state, running.started_at, running.ended_at, running.state_seq) == (
        "running",
        2.0,
        None,
        1,
    )
    exited = journal.mark("job-1", "exited", 7.5, exit_code=3, detail="done")
    assert (exited.started_at, exited.ended_at, exited.exit_code, exited.detail) == (
        2.0,
        7.5,
        3,
        "done",
    )
    assert exited.state_seq == 2
    assert journal.get("job-1") == exited


@pytest.mark.parametrize("state", sorted(TERMINAL_STATES))
def test_every_terminal_state_sets_ended_at(journal: Journal, state: str) -> None:
    """Reaching any terminal state stamps ended_at with that moment, and only then."""
    journal.accept("job-1", b"sealed", 1.0)
    *steps, last = PATHS[state]
    for step in steps:
        assert journal.mark("job-1", step, 2.0).ended_at is None
    entry = journal.mark("job-1", last, 9.0, signal=15 if state == "killed" else None)
    assert (entry.state, entry.ended_at, entry.state_seq) == (state, 9.0, len(PATHS[state]))
    assert entry.started_at == (2.0 if "running" in PATHS[state] else None)


ILLEGAL = [
    ("queued", "queued"),
    ("queued", "exited"),
    ("queued", "killed"),
    ("queued", "timed_out"),
    ("running", "running"),
    ("running", "queued"),
    ("running", "expired"),
    ("running", "rejected"),
] + [(done, to) for done in sorted(TERMINAL_STATES) for to in STATES]


@pytest.mark.parametrize(("start", "target"), ILLEGAL)
def test_illegal_transition_is_refused(journal: Journal, start: str, target: str) -> None:
    """A move the job's life does not allow raises ValueError and changes nothing."""
    bring_to(journal, "job-1", start)
    before = journal.get("job-1")
    with pytest.raises(ValueError, match=f"from {start} to {target}"):
        journal.mark("job-1", target, 99.0, exit_code=1)
    assert journal.get("job-1") == before


def test_unknown_state_name_is_refused(journal: Journal) -> None:
    """A state outside the job's life is a ValueError, not a new row value."""
    journal.accept("job-1", b"sealed", 1.0)
    with pytest.raises(ValueError, match="unknown job state"):
        journal.mark("job-1", "lost", 2.0)


def test_unknown_job_is_job_not_found(journal: Journal) -> None:
    """Marking a job the journal never accepted raises JobNotFound carrying its id."""
    with pytest.raises(JobNotFound) as caught:
        journal.mark("nobody", "running", 1.0)
    assert caught.value.job_id == "nobody"
    assert journal.get("nobody") is None


def test_forget_finished_deletes_only_old_terminal_jobs(journal: Journal) -> None:
    """Terminal jobs that ended before the cut are deleted; live and newer ones stay."""
    bring_to(journal, "old-exited", "exited", now=10.0)
    bring_to(journal, "old-rejected", "rejected", now=10.0)
    bring_to(journal, "new-exited", "exited", now=30.0)
    bring_to(journal, "old-queued", "queued", now=1.0)
    bring_to(journal, "old-running", "running", now=1.0)
    assert journal.forget_finished(older_than=20.0) == 2
    kept = ("old-running", "old-queued", "new-exited")
    assert all(journal.get(job_id) is not None for job_id in kept)
    assert journal.get("old-exited") is None
    assert journal.get("old-rejected") is None
    assert journal.forget_finished(older_than=20.0) == 0


def test_statistics_counts_every_state(journal: Journal) -> None:
    """statistics() counts jobs per state and lists every state, zeros included."""
    bring_to(journal, "a", "queued")
    bring_to(journal, "b", "queued")
    bring_to(journal, "c", "running")
    bring_to(journal, "d", "killed")
    expected = dict.fromkeys(STATES, 0) | {"queued": 2, "running": 1, "killed": 1}
    assert journal.statistics() == expected


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_missing_folders_are_created_private(tmp_path: Path) -> None:
    """The journal's missing parent folders are created 0o700 and the file 0o600."""
    path = tmp_path / "a" / "b" / "journal.db"
    Journal(path).close()
    for item, mode in ((tmp_path / "a", 0o700), (path.parent, 0o700), (path, 0o600)):
        assert stat.S_IMODE(item.stat().st_mode) & ~mode == 0, item


def test_garbage_file_is_storage_error_and_left_alone(path: Path) -> None:
    """A file that is not a database is refused with its name, and is not overwritten."""
    path.parent.mkdir()
    garbage = b"this is a shopping list, not a journal\n" * 200
    path.write_bytes(garbage)
    with pytest.raises(StorageError, match="is not a database") as caught:
        Journal(path)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value.__cause__, sqlite3.Error)
    assert path.read_bytes() == garbage


def test_truncated_journal_is_storage_error(path: Path) -> None:
    """A journal cut short (a torn copy, a full disk) is refused as corrupt when opened."""
    with Journal(path) as journal:
        for n in range(200):
            journal.accept(f"job-{n}", bytes(500), 1.0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StorageError, match="is corrupt") as caught:
        Journal(path)
    assert str(path) in str(caught.value)


def test_journal_from_a_newer_schema_is_refused(path: Path) -> None:
    """A journal written by a newer Runlet is refused rather than misread."""
    Journal(path).close()
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE meta SET value = 2 WHERE key = 'schema_version'")
    raw.close()
    with pytest.raises(StorageError, match="newer Runlet"):
        Journal(path)


def test_some_other_sqlite_database_is_refused(path: Path) -> None:
    """A SQLite file that is not a journal is refused, not extended with our tables."""
    path.parent.mkdir()
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE recipes (name TEXT)")
    raw.close()
    with pytest.raises(StorageError, match="some other SQLite database"):
        Journal(path)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    version: int
    pid: int


class _CapData(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in ("effective", "permitted", "inheritable")]
    effective: int


@pytest.fixture
def modes_enforced() -> Iterator[Callable[[Path, int], None]]:
    """A chmod whose modes bind this thread, even as root, and are undone at the end.

    Root writes anywhere because it holds CAP_DAC_OVERRIDE; the fixture lowers that (and
    CAP_DAC_READ_SEARCH) from this thread's effective set for the test and raises it again.
    """
    if os.name != "posix":
        pytest.skip("file modes are POSIX")
    changed: list[tuple[Path, int]] = []
    saved = None
    if os.geteuid() == 0:
        if sys.platform != "linux":
            pytest.skip("running as root, and capabilities can only be lowered on Linux")
        libc = ctypes.CDLL(None, use_errno=True)
        header, saved = _CapHeader(0x20080522, 0), (_CapData * 2)()  # _LINUX_CAPABILITY_VERSION_3
        assert libc.capget(ctypes.byref(header), saved) == 0
        lowered = (_CapData * 2)(*saved)
        lowered[0].effective &= ~(1 << 1 | 1 << 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        assert libc.capset(ctypes.byref(header), lowered) == 0, os.strerror(ctypes.get_errno())

    def chmod(item: Path, mode: int) -> None:
        changed.append((item, stat.S_IMODE(item.stat().st_mode)))
        item.chmod(mode)

    try:
        yield chmod
    finally:
        if saved is not None:
            assert libc.capset(ctypes.byref(_CapHeader(0x20080522, 0)), saved) == 0
        for item, mode in reversed(changed):
            item.chmod(mode)


def test_read_only_folder_for_a_new_journal(
    path: Path, modes_enforced: Callable[[Path, int], None]
) -> None:
    """A journal that cannot be created in a read-only folder is a StorageError naming it."""
    path.parent.mkdir()
    modes_enforced(path.parent, 0o500)
    with pytest.raises(StorageError, match="read-only") as caught:
        Journal(path)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value.__cause__, OSError | sqlite3.Error)


def test_read_only_folder_for_an_existing_journal(
    path: Path, modes_enforced: Callable[[Path, int], None]
) -> None:
    """An existing journal whose folder is read-only (no room for its WAL) is refused."""
    Journal(path).close()
    modes_enforced(path.parent, 0o500)
    with pytest.raises(StorageError) as caught:
        Journal(path)
    assert str(path) in str(caught.value)


def test_read_only_journal_file_is_refused_when_opened(
    path: Path, modes_enforced: Callable[[Path, int], None]
) -> None:
    """A read-only journal file fails at open, not at the first accept after a dispatch."""
    with Journal(path) as journal:
        journal.accept("job-1", b"sealed", 1.0)
    modes_enforced(path, 0o400)
    with pytest.raises(StorageError, match="read-only") as caught:
        Journal(path)
    assert str(path) in str(caught.value)


def test_use_after_close_is_closed_error(path: Path) -> None:
    """Every operation on a closed journal raises ClosedError; closing again is harmless."""
    journal = Journal(path)
    journal.accept("job-1", b"sealed", 1.0)
    journal.close()
    journal.close()
    calls: list[Callable[[], object]] = [
        lambda: journal.accept("job-2", b"sealed", 2.0),
        lambda: journal.mark("job-1", "running", 2.0),
        journal.queued,
        journal.running,
        lambda: journal.get("job-1"),
        lambda: journal.forget_finished(5.0),
        journal.statistics,
    ]
    for call in calls:
        with pytest.raises(ClosedError):
            call()
