"""The composition root of the server role: the Ledger actor under a supervisor.

Like the daemon's root (`runlet.roots.daemon`), it is one of the only two modules that import
`actors`. The server never loads a fleet key.
"""

from __future__ import annotations

from functools import partial

import structlog

from actors.ledger import Ledger
from runlet.adapters.broker import Broker, BrokerSecurity
from runlet.config import Config
from runlet.errors import ConfigError
from runlet.roots.role import Role, run_in_foreground
from runlet.runtime.actor import Context, Router, start_supervisor, supervise
from runlet.runtime.loop import LoopThread
from runlet.runtime.names import LEDGER

log = structlog.get_logger(__name__)


class Server(Role):
    """A running server: `start()`, then `wait()` or `stop()`."""

    name = "server"

    def __init__(self, config: Config) -> None:
        if config.server is None:
            raise ConfigError(
                "server", "role server needs a [server] section", source=config.source
            )
        security = BrokerSecurity.of(config.broker)  # a bad password or TLS file stops the start
        loop = LoopThread("runlet-aio-server")
        services = {"broker_factory": partial(Broker, security=security)}
        ctx = Context(router=Router(), loop=loop, settings=config, services=services)
        super().__init__(config, ctx, loop)

    def start(self) -> None:
        ctx = self.ctx
        self.metrics.start()
        start_supervisor(ctx)
        supervise(ctx, LEDGER, lambda: Ledger.start(ctx))
        log.info("server_started", node=self.config.node, metrics=self.metrics.url)


def run_server(config: Config) -> int:
    """Run the server in the foreground until SIGTERM/SIGINT; returns the exit status."""
    return run_in_foreground(Server(config))
