"""A real 3-node RabbitMQ cluster for failure-injection tests, driven by `scripts/cluster.sh`.

The nodes c1..c3@localhost listen on 127.0.0.1:5701..5703 (see the script for the other ports)
and keep their data in $RUNLET_CLUSTER_DIR (default /tmp/runlet-cluster). The script needs root.
`Cluster(prefix=..., port_base=..., base_dir=...)` drives a second, separate cluster beside it
(nodes PREFIX1..3@localhost, AMQP port_base+1..3, management port_base+10001..3), e.g. for
tests/reliability/test_cluster_script.py; a second cluster needs all three of its own.
Every call here is bounded: the script bounds its own waits (RUNLET_CLUSTER_TIMEOUT per node),
and each subprocess gets a time limit on top; a call that fails or overruns raises ClusterError
with the script's output.

Use the session fixture by importing it into a conftest.py or a test module:

    from tests.reliability.cluster import Cluster, cluster  # noqa: F401

Tests that kill or stop nodes should leave the cluster whole again (`cluster.up()` starts the
nodes that are down and waits for all three), or call `cluster.up()` first. The fixture's setup
takes about 25-60 s, which counts against the first test's pytest-timeout.
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "cluster.sh"
NODES = (1, 2, 3)
DEFAULT_PREFIX = "c"
DEFAULT_PORT_BASE = 5700


class ClusterError(RuntimeError):
    """scripts/cluster.sh failed or did not finish in time."""


class Cluster:
    """Start, stop, crash and inspect the three local RabbitMQ nodes through scripts/cluster.sh."""

    def __init__(
        self,
        base_dir: str | os.PathLike[str] | None = None,
        node_timeout: int = 120,
        script: Path = SCRIPT,
        prefix: str | None = None,
        port_base: int | None = None,
    ) -> None:
        """`prefix`, `port_base` and `base_dir` default to $RUNLET_CLUSTER_PREFIX,
        $RUNLET_CLUSTER_PORT_BASE and $RUNLET_CLUSTER_DIR, else to the script's defaults (c, 5700,
        /tmp/runlet-cluster). A `prefix` other than the inherited one without a `base_dir` never
        inherits $RUNLET_CLUSTER_DIR: the script then uses /tmp/runlet-cluster-PREFIX.
        """
        self.script = script
        self.node_timeout = node_timeout
        self._env = dict(os.environ)
        self._env["RUNLET_CLUSTER_TIMEOUT"] = str(node_timeout)
        inherited_prefix = self._env.get("RUNLET_CLUSTER_PREFIX", DEFAULT_PREFIX)
        if prefix is not None:
            self._env["RUNLET_CLUSTER_PREFIX"] = prefix
            if base_dir is None and prefix != inherited_prefix:
                self._env.pop("RUNLET_CLUSTER_DIR", None)
        if port_base is not None:
            self._env["RUNLET_CLUSTER_PORT_BASE"] = str(port_base)
        if base_dir is not None:
            self._env["RUNLET_CLUSTER_DIR"] = os.fspath(base_dir)
        self.prefix = self._env.get("RUNLET_CLUSTER_PREFIX", DEFAULT_PREFIX)
        self.port_base = int(self._env.get("RUNLET_CLUSTER_PORT_BASE", str(DEFAULT_PORT_BASE)))

    def _run(self, *args: str, timeout: float, check: bool = True, echo: bool = True) -> str:
        """Run the script with `args` for at most `timeout` s; return its standard output."""
        command = ["bash", str(self.script), *args]
        what = f"scripts/cluster.sh {' '.join(args)}"
        try:
            proc = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=self._env,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(
                f"`{what}` did not finish within {timeout:.0f} s; output so far:\n"
                f"{_text(exc.stdout)}{_text(exc.stderr)}"
            ) from exc
        if echo:  # the progress lands in the test's captured output, shown on failure
            sys.stderr.write(proc.stdout + proc.stderr)
        if check and proc.returncode != 0:
            raise ClusterError(
                f"`{what}` exited with {proc.returncode}:\n{proc.stdout}{proc.stderr}"
            )
        return proc.stdout

    # -- whole cluster --------------------------------------------------------------------

    def up(self) -> str:
        """Start whatever node is down, form the cluster and check 3 running nodes.

        Returns the script's output (its progress, then the three AMQP URLs).
        """
        # Worst case: three boots, each with its feature-flag retries, then a reset and rejoin.
        return self._run("up", timeout=5 * self.node_timeout + 300)

    def down(self) -> None:
        """Stop all three nodes (gracefully, then by pid file); their data is kept."""
        self._run("down", timeout=3 * (self.node_timeout + 60))

    def destroy(self) -> None:
        """Stop all three nodes and delete the cluster folder."""
        self._run("destroy", timeout=3 * (self.node_timeout + 60) + 60)

    @cached_property
    def urls(self) -> list[str]:
        """The AMQP URLs of nodes 1, 2 and 3, in that order."""
        return self._run("urls", timeout=30, echo=False).split()

    def url(self, n: int) -> str:
        return self.urls[_index(n)]

    def node_name(self, n: int) -> str:
        """The Erlang node name of node `n`, e.g. c1@localhost."""
        return f"{self.prefix}{_node(n)}@localhost"

    def management_port(self, n: int) -> int:
        """The port of node `n`'s management HTTP API on 127.0.0.1 (guest/guest)."""
        return self.port_base + 10000 + int(_node(n))

    def running_nodes(self, n: int = 1, timeout: float = 15.0) -> list[str]:
        """The cluster members node `n` reports as running (management API /api/nodes), sorted."""
        conn = http.client.HTTPConnection("127.0.0.1", self.management_port(n), timeout=timeout)
        try:
            auth = base64.b64encode(b"guest:guest").decode()
            conn.request("GET", "/api/nodes", headers={"Authorization": f"Basic {auth}"})
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise ClusterError(f"GET /api/nodes on {self.node_name(n)}: HTTP {response.status}")
        nodes: list[dict[str, object]] = json.loads(body)
        return sorted(str(node["name"]) for node in nodes if node.get("running") is True)

    # -- one node ---------------------------------------------------------------------------

    def kill(self, n: int) -> None:
        """kill -9 node `n` (it must be running)."""
        self._run("kill", _node(n), timeout=60)

    def start(self, n: int) -> None:
        """Start node `n` and wait until it has booted; it rejoins the cluster by itself."""
        self._run("start", _node(n), timeout=self.node_timeout + 90)

    def stop(self, n: int) -> None:
        """Stop node `n` gracefully."""
        self._run("stop", _node(n), timeout=self.node_timeout + 90)

    def running(self, n: int) -> bool:
        """True when node `n`'s VM is alive and its AMQP port accepts connections."""
        out = self._run("status", timeout=60, check=False, echo=False)
        name = self.node_name(n)
        for line in out.splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[0] == name:
                return fields[1] == "running"
        raise ClusterError(f"`status` printed no line for {name}:\n{out}")

    def wait_ready(self, n: int, timeout: float) -> None:
        """Wait up to `timeout` s for node `n` to finish booting (it must have been started)."""
        seconds = max(1, math.ceil(timeout))
        self._run("wait", _node(n), str(seconds), timeout=seconds + 60)


def _index(n: int) -> int:
    if n not in NODES:
        raise ValueError(f"node number must be 1, 2 or 3, got {n!r}")
    return n - 1


def _node(n: int) -> str:
    _index(n)  # validates
    return str(n)


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The 3-node cluster, up for the whole session and brought down (data kept) at its end.

    Set RUNLET_CLUSTER_KEEP=1 to leave it running after the session (faster reruns).
    """
    c = Cluster()
    c.up()
    try:
        yield c
    finally:
        if os.environ.get("RUNLET_CLUSTER_KEEP") != "1":
            c.down()
