"""scripts/cluster.sh brings a fully stopped cluster back up, every time.

RabbitMQ 3.10 nodes that boot together can race in the feature-flag sync and one dies with
`incompatible_feature_flags`; a restarted node waits for the peers it last saw. The script
records which node stopped last, boots it first and the others one at a time after it (see its
header). These tests run on a cluster of their own (prefix `s`, ports 7701-7703 and up, folder
/tmp/runlet-cluster-script-test), so the session cluster of the other reliability tests (c1..c3
on 5701-5703) is never touched; the cluster is destroyed at the end.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.cluster import Cluster

PREFIX = "s"
PORT_BASE = 7700
BASE_DIR = Path("/tmp/runlet-cluster-script-test")
RESTARTS = 3


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[Cluster]:
    """A separate 3-node cluster, blank at the start (leftovers destroyed), destroyed at the end."""
    c = Cluster(base_dir=BASE_DIR, prefix=PREFIX, port_base=PORT_BASE)
    c.destroy()  # a run that was killed may have left its cluster behind
    try:
        yield c
    finally:
        c.destroy()


def _all_names(c: Cluster) -> list[str]:
    return sorted(c.node_name(n) for n in (1, 2, 3))


def _timed_up(c: Cluster) -> tuple[float, str]:
    start = time.monotonic()
    out = c.up()  # raises ClusterError (with the script's output) when `up` fails
    return time.monotonic() - start, out


@pytest.mark.timeout(900)
def test_up_after_full_stop_succeeds_every_time(own_cluster: Cluster) -> None:
    """`up` after `down` (all three stopped) succeeds every time and 3 nodes run, clustered."""
    took, _ = _timed_up(own_cluster)
    assert own_cluster.running_nodes() == _all_names(own_cluster)
    times = [took]
    for _ in range(RESTARTS):
        own_cluster.down()
        assert not any(own_cluster.running(n) for n in (1, 2, 3))
        took, out = _timed_up(own_cluster)
        times.append(took)
        # down stops 3, 2, 1: node 1 stopped last, so it boots first
        assert f"booting {own_cluster.node_name(1)} first" in out
        for n in (1, 2, 3):
            assert own_cluster.running(n)
            assert own_cluster.running_nodes(n) == _all_names(own_cluster)
    sys.stderr.write("up took " + ", ".join(f"{t:.1f} s" for t in times) + "\n")


@pytest.mark.timeout(600)
def test_last_node_to_stop_boots_first(own_cluster: Cluster) -> None:
    """Nodes stopped one by one in another order: the last one to stop boots first, all 3 run."""
    own_cluster.up()
    for n in (1, 3, 2):  # node 2 is the last to stop
        own_cluster.stop(n)
    assert (BASE_DIR / "last-stopped").read_text().strip() == "2"
    _, out = _timed_up(own_cluster)
    assert f"booting {own_cluster.node_name(2)} first" in out
    assert own_cluster.running_nodes(2) == _all_names(own_cluster)
