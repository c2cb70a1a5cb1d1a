"""What the page's handlers need from the fleet (`FleetPort`), and the real one over the broker.

The handlers ask the server (the ledger) for nodes and jobs — or, with no server answering,
take what this process heard on the broker (`runlet.client.sightings`) — start jobs, and open
one `View` per terminal tab: a private watch queue on a job's states and output, through which
the tab asks for replays and types. `LiveFleet` does all of it over one `runlet.client.Client`
connection; unit tests give the handlers a fake of the same shape, with no network.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any, Protocol

from runlet.client.commands import LogReader, discover, stored_log
from runlet.client.queries import Asker
from runlet.client.session import Client, Submitted, Watch
from runlet.client.sightings import Sightings
from runlet.protocol.addresses import new_job_id
from runlet.protocol.crypto import FleetKey
from runlet.protocol.messages import Query, parse_target
from runlet.protocol.payloads import Control, JobSpec

VIEW_BACKLOG = 512  # messages a tab's watch holds while its page is slow (output past: replayed)


class View(Protocol):
    """One terminal tab's watch on one job."""

    inbox: asyncio.Queue[object]

    async def replay(self, from_seq: int) -> None:
        """Ask the node holding the job for its output from `from_seq`, then its state."""

    async def send(self, data: bytes) -> None:
        """Type `data` into the job."""

    async def control(self, control: Control) -> None:
        """Resize (or signal) the job."""

    async def close(self) -> None:
        """Stop watching; idempotent."""


class FleetPort(Protocol):
    """The fleet as the page's handlers see it."""

    key: FleetKey
    node: str  # this client's node name: the default target

    async def ask(self, query: Query) -> list[dict[str, Any]]:
        """The server's answer rows (ServerUnavailable, RunletError)."""

    def heard(self, query: Query) -> list[dict[str, Any]]:
        """The same answer from what this process heard on the broker (no server needed)."""

    async def submit(
        self, spec: JobSpec, target: str, *, deadline: float | None, rows: int, cols: int
    ) -> Submitted:
        """Send a job (NoSuchTarget when nothing would run it)."""

    async def children(self, submitted: Submitted) -> list[str]:
        """A fanned-out job's executions (`JOB.NODE`) heard of in the first seconds."""

    async def cancel(self, job_id: str) -> None:
        """SIGTERM, grace, SIGKILL on its node; NoSuchTarget when no node holds it."""

    async def view(self, job_id: str) -> View:
        """A new watch on the job, bound before anything is asked."""

    async def stored_log(self, job_id: str) -> Path | None:
        """A finished copy of the job's log on this device (fetched if need be), or None."""


class LiveView:
    """A `View` over a client's watch queue."""

    def __init__(self, client: Client, job_id: str, watch: Watch) -> None:
        self.client = client
        self.job_id = job_id
        self.watch = watch
        self.inbox = watch.inbox
        self._closed = False

    async def replay(self, from_seq: int) -> None:
        await self.client.request_replay(self.job_id, self.watch, from_seq)

    async def send(self, data: bytes) -> None:
        await self.client.send_input(self.job_id, data)

    async def control(self, control: Control) -> None:
        await self.client.control(self.job_id, control)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self.client.unwatch(self.watch)


class LiveFleet:
    """The fleet over one client connection: queries through an `Asker`, views as watches."""

    def __init__(
        self, client: Client, asker: Asker, sightings: Sightings, reader: LogReader
    ) -> None:
        self.client = client
        self.reader = reader  # this process's Sync Reconciler (runlet.roots.reader)
        self.asker = asker
        self.sightings = sightings
        self.key = client.key
        self.node = client.config.node
        self._tabs = itertools.count(1)
        self._fanouts: dict[str, Watch] = {}  # fanned-out jobs being discovered

    async def ask(self, query: Query) -> list[dict[str, Any]]:
        return await self.asker.ask(query)

    def heard(self, query: Query) -> list[dict[str, Any]]:
        return self.sightings.answer(query)

    async def submit(
        self, spec: JobSpec, target: str, *, deadline: float | None, rows: int, cols: int
    ) -> Submitted:
        job_id = new_job_id()
        fans_out = parse_target(target)[0] in ("all", "tag")
        if fans_out:  # bound before the job leaves: no execution's first state is missed
            viewer = f"{self.client.viewer}-f{next(self._tabs)}"
            self._fanouts[job_id] = await self.client.watch(job_id, fans_out=True, viewer=viewer)
        try:
            return await self.client.submit(
                spec, target, job_id=job_id, deadline=deadline, rows=rows, cols=cols
            )
        except BaseException:
            await self._forget(job_id)
            raise

    async def children(self, submitted: Submitted) -> list[str]:
        watch = self._fanouts.get(submitted.job_id)
        if watch is None:
            return []
        try:
            return await discover(watch, submitted.job_id)
        finally:
            await self._forget(submitted.job_id)

    async def cancel(self, job_id: str) -> None:
        await self.client.control(job_id, Control("cancel"), confirm=True)

    async def _forget(self, job_id: str) -> None:
        watch = self._fanouts.pop(job_id, None)
        if watch is not None:
            await self.client.unwatch(watch)

    async def stored_log(self, job_id: str) -> Path | None:
        return await stored_log(self.client.config, self.reader, job_id)

    async def view(self, job_id: str) -> View:
        viewer = f"{self.client.viewer}-t{next(self._tabs)}"
        watch = await self.client.watch(job_id, viewer=viewer, limit=VIEW_BACKLOG)
        return LiveView(self.client, job_id, watch)
