"""The Prometheus /metrics endpoint of a daemon or server (`[metrics] listen`)."""

from __future__ import annotations

from typing import Any

import structlog

from runlet import metrics
from runlet.config import MetricsConfig
from runlet.errors import ConfigError

log = structlog.get_logger(__name__)


class MetricsEndpoint:
    """Serves every metric of `runlet.metrics` over HTTP while started; no-op without config."""

    def __init__(self, config: MetricsConfig | None) -> None:
        self.config = config
        self._server: Any = None
        self._thread: Any = None

    @property
    def url(self) -> str | None:
        return None if self.config is None else f"http://{self.config.listen}/metrics"

    def start(self) -> None:
        if self.config is None or self._server is not None:
            return
        host, port = self.config.address
        from prometheus_client import start_http_server  # only a process that serves them

        metrics.define_all()  # every metric listed from the first scrape on
        try:
            self._server, self._thread = start_http_server(port, addr=host)
        except OSError as exc:
            raise ConfigError(
                "metrics.listen", f"cannot listen on {self.config.listen}: {exc}"
            ) from exc
        log.info("metrics_listening", url=self.url)

    def stop(self) -> None:
        """Stop serving; idempotent."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
