"""The composition root of a process that reads logs without being a daemon: `runlet logs`.

It runs what such a process needs of the runtime — an I/O loop thread, a supervisor and the
Sync Reconciler (`actors.sync_reconciler`) — and offers the client one coroutine, `read`, that
asks the reconciler through its mailbox and awaits the answer on the caller's own event loop
(the client never imports the runtime or the actors: the CLI hands it a `Reader`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from actors.sync_reconciler import SyncReconciler
from runlet.config import Config
from runlet.errors import ClosedError
from runlet.runtime.actor import Context, Router, start_supervisor, supervise
from runlet.runtime.local_messages import LogRead, ReadLog
from runlet.runtime.loop import LoopThread
from runlet.runtime.names import RECONCILER


class Reader:
    """A running Sync Reconciler for this process: `with Reader(config) as r: await r.read(…)`."""

    def __init__(self, config: Config, services: dict[str, Any] | None = None) -> None:
        self.ctx = Context(
            router=Router(),
            loop=LoopThread(f"runlet-reader-{config.node}"),
            settings=config,
            services=dict(services or {}),
        )
        self._started = False

    def start(self) -> None:
        ctx = self.ctx
        start_supervisor(ctx)
        ctx.router.restarting(RECONCILER)  # hold what is asked until the reconciler has started
        supervise(ctx, RECONCILER, lambda: SyncReconciler.start(ctx))
        self._started = True

    def stop(self) -> None:
        """Stop the reconciler (it closes its store), then the loop; idempotent."""
        self.ctx.stopping.set()
        self.ctx.router.stop_all()
        self.ctx.loop.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def read(
        self,
        job_id: str,
        path: Path,
        *,
        node: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[Path, str, bool]:
        """(the copy to read, the rule's decision, whether it is a finished log).

        Raises what the reconciler met: JobNotFound when no copy exists anywhere,
        BlobStoreUnavailable when the store failed and there is no local copy, StorageError,
        ConfigError (the store's credentials), ClosedError once stopped.
        """
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[LogRead] = loop.create_future()

        def reply(answer: LogRead) -> None:
            with suppress(RuntimeError):  # the asking loop is gone: nobody waits any more
                loop.call_soon_threadsafe(_settle, answered, answer)

        ask = ReadLog(job_id, path, reply, node=node, progress=progress)
        if not self._started or not self.ctx.router.tell(RECONCILER, ask):
            raise ClosedError("the log reader is not running")
        answer = await answered
        if answer.error is not None:
            raise answer.error
        return answer.path, answer.decision, answer.final


def _settle(future: asyncio.Future[LogRead], answer: LogRead) -> None:
    if not future.done():  # cancelled meanwhile: the asker gave up
        future.set_result(answer)
