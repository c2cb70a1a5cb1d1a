"""`runlet ui`: serve the desktop manager on loopback until interrupted.

It refuses a server-role config (the server holds no fleet key) and any host that is not a
loopback address (for remote use: `ssh -L PORT:127.0.0.1:PORT`). It connects to the broker
first, so a broker that cannot be reached fails at once (exit 69), then binds the port (0: a
free one), prints the URL with its token (stdout, one line, so scripts can read it), and opens
the browser unless told not to.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
import socket
import sys
import webbrowser

from aiohttp import web

from runlet.client.commands import LogReader
from runlet.client.queries import Asker
from runlet.client.session import Client
from runlet.client.sightings import Sightings
from runlet.config import Config
from runlet.errors import ConfigError, UsageError
from runlet.protocol.crypto import FleetKey
from runlet.ui.app import make_app
from runlet.ui.fleet import LiveFleet
from runlet.ui.guard import Guard


def check_host(host: str) -> str:
    """The host to bind; UsageError unless it is a loopback address."""
    name = "127.0.0.1" if host == "localhost" else host
    try:
        loopback = ipaddress.ip_address(name).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise UsageError(
            f"--host {host[:80]!r} is not a loopback address: the page is served on this "
            "machine only (from elsewhere, use ssh -L PORT:127.0.0.1:PORT)"
        )
    return name


def check_role(config: Config) -> None:
    if config.role == "server":
        raise ConfigError(
            "role",
            "`runlet ui` runs with a device's config (it needs the fleet key); "
            "this one's role is server",
            source=config.source,
        )


async def serve(
    config: Config,
    key: FleetKey,
    reader: LogReader,
    *,
    host: str,
    port: int,
    open_browser: bool,
) -> int:
    check_role(config)
    address = check_host(host)
    sock = listen(address, port)  # before the broker: a port in use fails at once
    try:
        async with Client(config, key) as client:
            asker = Asker(client.broker, config.user, config.node)
            await asker.start()
            online = max(30.0, 3 * config.broker.presence_seconds)
            sightings = Sightings(client.broker, config.user, config.node, online_seconds=online)
            await sightings.start()
            guard = Guard(int(sock.getsockname()[1]), address)
            runner = web.AppRunner(
                make_app(LiveFleet(client, asker, sightings, reader), guard),
                handle_signals=False,
                access_log=None,
            )
            await runner.setup()
            try:
                await web.SockSite(runner, sock).start()
                print(guard.url(), flush=True)
                print(
                    f"[runlet] desktop manager for user {config.user}, on this machine only;"
                    " Ctrl-C stops it",
                    file=sys.stderr,
                    flush=True,
                )
                if open_browser:
                    open_in_browser(guard.url())
                await _wait_for_signal()
            finally:
                await runner.cleanup()
    finally:
        sock.close()
    return 0


def listen(address: str, port: int) -> socket.socket:
    """A listening socket on address:port (0: a free port); UsageError if it cannot be had."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((address, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {address}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


async def _wait_for_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(sig)


def open_in_browser(url: str) -> None:
    with contextlib.suppress(webbrowser.Error):
        webbrowser.open(url)
