"""A real 3-node RabbitMQ cluster for failure-injection tests, driven by `scripts/cluster.sh`.

The nodes c1..c3@localhost listen on 127.0.0.1:5701..5703 (see the script for the other ports)
and keep their data in $RUNLET_CLUSTER_DIR (default /tmp/runlet-cluster). The script needs root.
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


class ClusterError(RuntimeError):
    """scripts/cluster.sh failed or did not finish in time."""


class Cluster:
    """Start, stop, crash and inspect the three local RabbitMQ nodes through scripts/cluster.sh."""

    def __init__(
        self,
        base_dir: str | os.PathLike[str] | None = None,
        node_timeout: int = 120,
        script: Path = SCRIPT,
    ) -> None:
        self.script = script
        self.node_timeout = node_timeout
        self._env = dict(os.environ)
        self._env["RUNLET_CLUSTER_TIMEOUT"] = str(node_timeout)
        if base_dir is not None:
            self._env["RUNLET_CLUSTER_DIR"] = os.fspath(base_dir)

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

    def up(self) -> None:
        """Start whatever node is down, form the cluster and check 3 running nodes."""
        self._run("up", timeout=3 * self.node_timeout + 180)

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
        name = f"c{_node(n)}@localhost"
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
