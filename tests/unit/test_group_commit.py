"""Group commit: effects wait for one sync that covers them, run in order, on the sync thread."""

from __future__ import annotations

import threading
from functools import partial
from pathlib import Path

from structlog.testing import capture_logs

from runlet.adapters.group_commit import GroupCommit
from runlet.adapters.journal import Journal
from runlet.errors import StorageError
from tests.unit.fakes import DEADLINE, Inbox


class GatedSync:
    """A sync the test lets finish; counts its calls."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls = 0
        self.error: StorageError | None = None

    def __call__(self) -> None:
        self.calls += 1
        self.entered.set()
        assert self.gate.wait(DEADLINE)
        if self.error is not None:
            raise self.error


def test_effects_run_only_after_the_sync_and_in_order() -> None:
    """Nothing runs before the sync has returned; then every effect, in the order queued."""
    sync, ran = GatedSync(), Inbox()
    commits = GroupCommit(sync)
    try:
        for n in range(3):
            commits.after(partial(ran.put, n))
        assert ran.all() == []  # not even handed over yet
        commits.commit()
        assert sync.entered.wait(DEADLINE)
        assert ran.all() == []
        sync.gate.set()
        ran.wait(lambda items: len(items) == 3)
        assert ran.all() == [0, 1, 2]
    finally:
        sync.gate.set()
        commits.close()


def test_batches_waiting_together_share_one_sync() -> None:
    """Batches committed while a sync runs are covered by a single next sync."""
    sync, ran = GatedSync(), Inbox()
    commits = GroupCommit(sync)
    try:
        commits.after(lambda: ran.put("first"))
        commits.commit()
        assert sync.entered.wait(DEADLINE)  # the first sync is under way
        for n in range(10):
            commits.after(partial(ran.put, n))
            commits.commit()
        sync.gate.set()
        ran.wait(lambda items: len(items) == 11)
        assert sync.calls == 2
        assert ran.all() == ["first", *range(10)]
    finally:
        sync.gate.set()
        commits.close()


def test_a_failed_sync_is_logged_and_the_effects_still_run() -> None:
    """A sync error is reported; the effects (their changes are committed) are not held back."""
    sync, ran = GatedSync(), Inbox()
    sync.error = StorageError("journal /x could not be read or written")
    sync.gate.set()
    commits = GroupCommit(sync)
    with capture_logs() as logs:
        commits.after(lambda: ran.put("acked"))
        commits.close()
    assert ran.all() == ["acked"]
    assert [e["event"] for e in logs] == ["journal_sync_failed"]


def test_close_syncs_and_runs_what_was_queued_and_is_idempotent() -> None:
    """close() commits what is pending, waits for it, and may be called again."""
    sync, ran = GatedSync(), Inbox()
    sync.gate.set()
    commits = GroupCommit(sync)
    commits.after(lambda: ran.put("last"))
    commits.close()
    commits.close()
    assert ran.all() == ["last"]
    assert sync.calls == 1


def test_a_journal_with_group_commit_syncs_its_log_from_another_thread(tmp_path: Path) -> None:
    """`sync()` needs no SQLite connection: any thread may call it, with or without a log."""
    path = tmp_path / "journal.sqlite3"
    with Journal(path, group_commit=True) as journal:
        errors: list[BaseException] = []

        def sync() -> None:
            try:
                journal.sync()
            except BaseException as exc:
                errors.append(exc)

        assert journal.accept("a" * 32, b"sealed", 1.0)
        thread = threading.Thread(target=sync)
        thread.start()
        thread.join(DEADLINE)
        assert errors == []
    with Journal(path) as reopened:
        entry = reopened.get("a" * 32)
        assert entry is not None
        assert entry.state == "queued"


def test_wait_idle_returns_once_everything_committed_has_run() -> None:
    """wait_idle() is False while a batch waits for its sync, True once it has run."""
    sync, ran = GatedSync(), Inbox()
    commits = GroupCommit(sync)
    try:
        assert commits.wait_idle(0)  # nothing committed: idle at once
        commits.after(partial(ran.put, "x"))
        commits.commit()
        assert not commits.wait_idle(0.05)
        sync.gate.set()
        assert commits.wait_idle(DEADLINE)
        assert ran.all() == ["x"]
    finally:
        sync.gate.set()
        commits.close()
