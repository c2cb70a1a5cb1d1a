"""The composition root of the daemon role; with `runlet.server`, the only importer of `actors`.

It loads the fleet key, starts the I/O loop, the supervisor and the actors in dependency order,
and runs until SIGTERM/SIGINT or until the supervisor gives up on a crashing actor.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import structlog

from actors.broker_gateway import BrokerGateway
from actors.governor import Governor
from actors.job_queue import JobQueue
from actors.log_vault import LogVault
from actors.pty_session import PtySession
from runlet.aio import LoopThread
from runlet.config import Config
from runlet.crypto import FleetKey
from runlet.exposition import MetricsEndpoint
from runlet.local import StartSession
from runlet.runtime import Context, Router, start_supervisor, supervise

log = structlog.get_logger(__name__)


def _session(ctx: Context, name: str, start: StartSession) -> Any:
    return PtySession.start(ctx, name, start)


class Daemon:
    """A running daemon: `start()`, then `wait()` or `stop()`."""

    def __init__(self, config: Config, fleet_key: FleetKey | None = None) -> None:
        self.config = config
        key = fleet_key if fleet_key is not None else FleetKey.load(config.key_file)
        self.loop = LoopThread(f"runlet-aio-{config.node}")
        self.ctx = Context(
            router=Router(),
            loop=self.loop,
            settings=config,
            services={"fleet_key": key, "session_factory": _session},
        )
        self.metrics = MetricsEndpoint(config.metrics)

    def start(self) -> None:
        ctx = self.ctx
        config = self.config
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.metrics.start()
        start_supervisor(ctx)
        supervise(ctx, "gateway", lambda: BrokerGateway.start(ctx))
        supervise(ctx, "vault", lambda: LogVault.start(ctx))
        supervise(ctx, "governor", lambda: Governor.start(ctx))
        supervise(ctx, "job_queue", lambda: JobQueue.start(ctx))
        log.info(
            "daemon_started",
            node=config.node,
            user=config.user,
            tags=list(config.tags),
            max_parallel=config.jobs.max_parallel,
        )

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the daemon is asked to stop; True if it was."""
        return self.ctx.stopping.wait(timeout)

    def stop(self) -> int:
        """Stop every actor, then the loop; returns the process exit status."""
        self.ctx.stopping.set()
        self.ctx.router.stop_all()
        self.loop.close()
        self.metrics.stop()
        log.info("daemon_stopped", node=self.config.node)
        return self.ctx.exit_code[0] if self.ctx.exit_code else 0


def run_daemon(config: Config) -> int:
    """Run the daemon in the foreground until a signal; returns the exit status."""
    daemon = Daemon(config)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("daemon_signal_received", signal=signal.Signals(signum).name)
        stop.set()
        daemon.ctx.stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    daemon.start()
    while not daemon.wait(0.5):
        pass
    return daemon.stop()
