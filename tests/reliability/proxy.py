"""A TCP proxy on loopback for failure injection: cut every connection, add latency, heal.

    with Proxy(5701) as proxy:               # listens on 127.0.0.1:<free port>
        url = proxy.url()                    # amqp://guest:guest@127.0.0.1:<port>/
        proxy.delay(0.2)                     # every chunk forwarded from now on waits 0.2 s
        proxy.cut()                          # abort every live connection, both sides
        proxy.refuse()                       # new connections are dropped at once
        proxy.heal()                         # no more latency, and new connections are served

The proxy runs its own asyncio loop in a daemon thread, so a test drives it from any thread
(its own event loop included: each call only waits for the proxy's loop to do a little work).
Latency is added per chunk, in order, without throttling: a chunk read at time t is written at
t + delay. A cut aborts both sockets of every connection (the peers see it at once, as after a
crash of the far side); new connections are accepted as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

T = TypeVar("T")
HOST = "127.0.0.1"
CHUNK = 65536
CALL_TIMEOUT = 10.0


class _Link:
    """One proxied connection: the client's socket and ours to the target."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class Proxy:
    """Forwards 127.0.0.1:<port> to `target_host:target_port`; see the module docstring."""

    def __init__(self, target_port: int, target_host: str = HOST) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.accepted = 0  # connections accepted so far
        self.cuts = 0  # connections aborted by cut()
        self.refused = 0  # connections dropped while refusing
        self._delay = 0.0
        self._refusing = False
        self._links: set[_Link] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"proxy-{target_port}", daemon=True
        )
        self._server: asyncio.Server | None = None

    # -- driving it (any thread) ------------------------------------------------------------

    def start(self) -> Self:
        self._thread.start()
        self._call(self._listen())
        return self

    def url(self, userinfo: str = "guest:guest", vhost: str = "/") -> str:
        """An AMQP URL (`userinfo` is "user:password") that reaches the target through here."""
        return f"amqp://{userinfo}@{HOST}:{self.port}{vhost}"

    def delay(self, seconds: float) -> None:
        """Hold every chunk read from now on for `seconds` before forwarding it."""
        if seconds < 0:
            raise ValueError(f"a delay cannot be negative, got {seconds}")
        self._call(self._set_delay(seconds))

    def refuse(self, refusing: bool = True) -> None:
        """Drop every new connection at once (as if the target were down), or stop doing so."""
        self._call(self._set_refusing(refusing))

    def heal(self) -> None:
        """No more added latency (chunks already held keep their time), no more refusing."""
        self.delay(0.0)
        self.refuse(False)

    def cut(self) -> int:
        """Abort every live connection, both sides; returns how many there were."""
        return self._call(self._cut())

    @property
    def connections(self) -> int:
        """Connections open right now."""
        return self._call(self._count())

    def close(self) -> None:
        """Stop listening, abort every connection, stop the loop; idempotent."""
        if self._loop.is_closed():
            return
        if self._thread.is_alive():
            self._call(self._shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(CALL_TIMEOUT)
        self._loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(CALL_TIMEOUT)

    # -- on the proxy's loop ----------------------------------------------------------------

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _set_delay(self, seconds: float) -> None:
        self._delay = seconds

    async def _set_refusing(self, refusing: bool) -> None:
        self._refusing = refusing

    async def _count(self) -> int:
        return len(self._links)

    async def _cut(self) -> int:
        links = list(self._links)
        for link in links:
            link.abort()
        self._links.clear()
        self.cuts += len(links)
        return len(links)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [task for link in self._links for task in link.tasks]
        await self._cut()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            self.refused += 1
            writer.transport.abort()
            return
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        link.tasks = [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ]
        try:
            await asyncio.wait(link.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # one side ended (or the link was cut): end the other side too
            link.abort()
            self._links.discard(link)
            for task in link.tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy `reader` to `writer`, each chunk `delay` s after it was read, in order."""
        loop = asyncio.get_running_loop()
        held: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def forward() -> None:
            while (item := await held.get()) is not None:
                due, data = item
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(forward())
        try:
            while data := await reader.read(CHUNK):
                held.put_nowait((loop.time() + self._delay, data))
                if sender.done():
                    break
            held.put_nowait(None)  # end of stream: forward what is held, then stop
            await sender
        except (ConnectionError, OSError):
            return
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await sender
