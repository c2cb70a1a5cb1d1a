"""`runlet nodes` with no server: the nodes heard on the real broker, with their vitals."""

from __future__ import annotations

import json

from tests.e2e.conftest import runlet
from tests.support import Fleet


def test_nodes_without_a_server_lists_the_nodes_heard(fleet: Fleet) -> None:
    """No server: `runlet nodes --json` listens a heartbeat and a half and lists the live
    daemons with their tags and vitals, saying on stderr why it listened."""
    fleet.start_daemon("edge-1", tags=("pi",), presence=0.5)
    fleet.start_daemon("edge-2", presence=0.5)
    done = runlet(fleet.config_file("laptop", role="client", presence=0.5), "nodes", "--json")
    assert done.returncode == 0, done.stderr
    assert "no Runlet server" in done.stderr
    assert "listening" in done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert set(rows) == {"edge-1", "edge-2"}
    assert rows["edge-1"]["tags"] == ["pi"]
    assert all(row["online"] for row in rows.values())
    assert all(row["mem_total"] > 0 for row in rows.values())
