"""The composition root of the daemon role; with the other roots, the only importer of `actors`.

It loads the fleet key, this device's key pair (made at the first start) and the broker's
secrets (`BrokerSecurity`), starts the I/O loop, the supervisor and the actors in dependency
order (the Key Keeper last: it takes on a rotated fleet key sent to this node), and runs until
SIGTERM/SIGINT or until the supervisor gives up on a crashing actor.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import structlog

from actors.broker_gateway import BrokerGateway
from actors.governor import Governor
from actors.job_queue import JobQueue
from actors.key_keeper import KeyKeeper
from actors.log_vault import LogVault
from actors.pty_session import PtySession
from actors.sync_reconciler import SyncReconciler
from runlet.adapters.broker import Broker, BrokerSecurity
from runlet.config import Config
from runlet.protocol.crypto import FleetKey
from runlet.protocol.identity import DEVICE_KEY_FILE, DeviceKey
from runlet.roots.role import Role, run_in_foreground
from runlet.runtime.actor import Context, Router, start_supervisor, supervise
from runlet.runtime.local_messages import StartSession
from runlet.runtime.loop import LoopThread
from runlet.runtime.names import GATEWAY, GOVERNOR, JOB_QUEUE, KEY_KEEPER, RECONCILER, VAULT

log = structlog.get_logger(__name__)


def _session(ctx: Context, name: str, start: StartSession) -> Any:
    return PtySession.start(ctx, name, start)


class Daemon(Role):
    """A running daemon: `start()`, then `wait()` or `stop()`."""

    name = "daemon"

    def __init__(self, config: Config, fleet_key: FleetKey | None = None) -> None:
        key = fleet_key if fleet_key is not None else FleetKey.load(config.key_file)
        device = DeviceKey.load_or_make(config.data_dir / DEVICE_KEY_FILE)  # from the first start
        # the broker's password and TLS files are read here, so a bad one stops the start
        security = BrokerSecurity.of(config.broker)
        loop = LoopThread(f"runlet-aio-{config.node}")
        ctx = Context(
            router=Router(),
            loop=loop,
            settings=config,
            services={
                "fleet_key": key,
                "device_key": device,
                "session_factory": _session,
                "broker_factory": partial(Broker, security=security),
            },
        )
        super().__init__(config, ctx, loop)

    def start(self) -> None:
        ctx = self.ctx
        config = self.config
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.metrics.start()
        start_supervisor(ctx)
        supervise(ctx, GATEWAY, lambda: BrokerGateway.start(ctx))
        supervise(ctx, VAULT, lambda: LogVault.start(ctx))
        supervise(ctx, RECONCILER, lambda: SyncReconciler.start(ctx))
        supervise(ctx, GOVERNOR, lambda: Governor.start(ctx))
        supervise(ctx, JOB_QUEUE, lambda: JobQueue.start(ctx))
        supervise(ctx, KEY_KEEPER, lambda: KeyKeeper.start(ctx))
        log.info(
            "daemon_started",
            node=config.node,
            user=config.user,
            tags=list(config.tags),
            max_parallel=config.jobs.max_parallel,
        )


def run_daemon(config: Config) -> int:
    """Run the daemon in the foreground until a signal; returns the exit status."""
    return run_in_foreground(Daemon(config))
