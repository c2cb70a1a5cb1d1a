"""The composition root of the server role: the Ledger actor under a supervisor.

Like the daemon's root (`runlet.daemon`), it is one of the only two modules that import
`actors`. The server never loads a fleet key.
"""

from __future__ import annotations

import signal
import threading

import structlog

from actors.ledger import Ledger
from runlet.aio import LoopThread
from runlet.config import Config
from runlet.errors import ConfigError
from runlet.exposition import MetricsEndpoint
from runlet.runtime import Context, Router, start_supervisor, supervise

log = structlog.get_logger(__name__)


class Server:
    """A running server: `start()`, then `wait()` or `stop()`."""

    def __init__(self, config: Config) -> None:
        if config.server is None:
            raise ConfigError(
                "server", "role server needs a [server] section", source=config.source
            )
        self.config = config
        self.loop = LoopThread("runlet-aio-server")
        self.ctx = Context(router=Router(), loop=self.loop, settings=config)
        self.metrics = MetricsEndpoint(config.metrics)

    def start(self) -> None:
        ctx = self.ctx
        self.metrics.start()
        start_supervisor(ctx)
        supervise(ctx, "ledger", lambda: Ledger.start(ctx))
        log.info("server_started", node=self.config.node, metrics=self.metrics.url)

    def wait(self, timeout: float | None = None) -> bool:
        return self.ctx.stopping.wait(timeout)

    def stop(self) -> int:
        self.ctx.stopping.set()
        self.ctx.router.stop_all()
        self.loop.close()
        self.metrics.stop()
        log.info("server_stopped", node=self.config.node)
        return self.ctx.exit_code[0] if self.ctx.exit_code else 0


def run_server(config: Config) -> int:
    """Run the server in the foreground until SIGTERM/SIGINT; returns the exit status."""
    server = Server(config)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("server_signal_received", signal=signal.Signals(signum).name)
        stop.set()
        server.ctx.stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    while not server.wait(0.5):
        pass
    return server.stop()
