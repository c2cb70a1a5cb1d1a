"""Group commit: what must wait until the journal is durable waits for one fsync with the rest.

The journal commits each change at once without syncing it (`Journal(group_commit=True)`);
the effects that may only happen once a change is durable (the ack of a dispatch, the publish
of a state) are queued here with `after()`. `commit()` hands the queued effects to a thread of
its own, which makes the journal durable with one `sync()` for every batch waiting by then,
and only then runs the effects, in the order they were queued. So an fsync costs once per
burst of changes, not once per change, and never stalls the thread that journals: at 2.5 ms
an fsync on a small board's disk, a daemon running short jobs did little else.

`after()` and `commit()` belong to one owner thread. A sync that fails is logged and the
effects still run: the changes are committed and in the OS's hands, only not yet known to be
on the disk; holding the acks back for good would only make the broker redeliver jobs that
the journal holds.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import structlog

from runlet.errors import StorageError

log = structlog.get_logger(__name__)

Effect = Callable[[], object]


class GroupCommit:
    """Runs queued effects on its own thread once one `sync` has covered them."""

    def __init__(self, sync: Callable[[], None], *, name: str = "journal-sync") -> None:
        self._sync = sync
        self._pending: list[Effect] = []  # the owner thread's, until commit()
        self._batches: queue.SimpleQueue[list[Effect] | None] = queue.SimpleQueue()
        self._closed = False
        self._idle = threading.Condition()
        self._handed = 0  # batches handed over by commit(), and run by the sync thread
        self._ran = 0
        self.syncs = 0  # how many fsyncs so far (statistics)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Effects queued since the last commit()."""
        return len(self._pending)

    def after(self, effect: Effect) -> None:
        """Run `effect` once everything journaled so far is durable."""
        self._pending.append(effect)

    def commit(self) -> None:
        """Hand what is queued to the sync thread (nothing happens if nothing is queued)."""
        if self._pending and not self._closed:
            with self._idle:
                self._handed += 1
            self._batches.put(self._pending)
            self._pending = []

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every batch committed so far has run; False if `timeout` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._ran >= self._handed, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued, wait for it to be synced and run; idempotent."""
        if self._closed:
            return
        self.commit()
        self._closed = True
        self._batches.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch = self._batches.get()
            if batch is None:
                return
            batches = [batch]
            while True:  # every batch waiting by now is covered by the same fsync
                try:
                    more = self._batches.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                batches.append(more)
            self._sync_once()
            for effects in batches:
                for effect in effects:
                    try:
                        effect()
                    except Exception:  # one broken effect must not keep the others back
                        log.exception("journal_effect_failed")
            with self._idle:
                self._ran += len(batches)
                self._idle.notify_all()

    def _sync_once(self) -> None:
        try:
            self._sync()
        except StorageError as exc:
            log.error("journal_sync_failed", error=str(exc))
        self.syncs += 1
