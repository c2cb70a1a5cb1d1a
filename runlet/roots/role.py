"""What the daemon and the server roles share: running in the foreground until a signal.

The composition roots (`roots.daemon`, `roots.server`) build their actors; this module only
knows the shape every role has — a context, an I/O loop, a metrics endpoint — and how to stop
it cleanly on SIGTERM/SIGINT, returning the process exit status.
"""

from __future__ import annotations

import gc
import signal

import structlog

from runlet import metrics
from runlet.adapters.metrics_http import MetricsEndpoint
from runlet.config import Config
from runlet.runtime.actor import Context
from runlet.runtime.loop import LoopThread

log = structlog.get_logger(__name__)


class Role:
    """A running role: `start()` (in the subclass), then `wait()` or `stop()`."""

    name = "role"

    def __init__(self, config: Config, ctx: Context, loop: LoopThread) -> None:
        self.config = config
        self.ctx = ctx
        self.loop = loop
        self.metrics = MetricsEndpoint(config.metrics)

    def start(self) -> None:
        raise NotImplementedError

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the role is asked to stop; True if it was."""
        return self.ctx.stopping.wait(timeout)

    def stop(self) -> int:
        """Stop every actor, then the loop and the metrics endpoint; the exit status."""
        self.ctx.stopping.set()
        self.ctx.router.stop_all()
        self.loop.close()
        self.metrics.stop()
        log.info(f"{self.name}_stopped", node=self.config.node)
        return self.ctx.exit_code[0] if self.ctx.exit_code else 0


def run_in_foreground(role: Role) -> int:
    """Start `role`, run until SIGTERM/SIGINT (or a fatal crash), stop it; the exit status."""

    def on_signal(signum: int, _frame: object) -> None:
        log.info(f"{role.name}_signal_received", signal=signal.Signals(signum).name)
        role.ctx.stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if role.config.metrics is None:
        metrics.count_nothing()  # a whole process with no endpoint: nobody could read them
    role.start()
    # What lives as long as the process (modules, classes, config) leaves the collector's
    # sight: a full collection no longer walks it (about 10 ms on a small machine, enough to
    # show in a keystroke's p99), and what comes later is collected as before.
    gc.collect()
    gc.freeze()
    while not role.wait(0.5):
        pass
    return role.stop()
