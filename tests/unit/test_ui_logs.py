"""GET /api/logs/{job}: a finished job's log verified chunk by chunk, damage named, for playback."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from runlet.adapters.logfile import LogWriter, Record, seal_output
from runlet.ui import logs
from tests.support import run
from tests.unit.ui_fakes import JOB, FakeFleet, page


def write_log(
    fleet: FakeFleet, path: Path, count: int, *, flip: int | None = None, final: bool = True
) -> Path:
    """A log of `count` chunks one second apart; `flip` alters one bit of that chunk."""
    key = fleet.key.job_key(JOB)
    with LogWriter(path, JOB) as writer:
        for seq in range(count):
            last = final and seq == count - 1
            flags, sealed = seal_output(
                key, seq, 1000.0 + seq, f"line {seq}\r\n".encode(), final=last
            )
            if seq == flip:
                damaged = bytearray(sealed)
                damaged[len(damaged) // 2] ^= 1
                sealed = bytes(damaged)
            writer.append(Record(seq, flags, sealed))
    return path


def _fleet_with_log(tmp_path: Path, count: int, **options: object) -> FakeFleet:
    fleet = FakeFleet()
    fleet.log_path = write_log(fleet, tmp_path / f"{JOB}.rlog", count, **options)  # type: ignore[arg-type]
    return fleet


def test_an_intact_log_comes_with_each_chunks_seq_and_time(tmp_path: Path) -> None:
    """Every chunk, in order, with its time for playback; verified and finished."""

    async def scenario() -> None:
        async with page(_fleet_with_log(tmp_path, 3)) as p:
            response = await p.client.get(f"/api/logs/{JOB}", headers=p.headers())
            assert response.status == 200
            body = await response.json()
            assert [(seq, t) for seq, t, _ in body["chunks"]] == [
                (0, 1000.0),
                (1, 1001.0),
                (2, 1002.0),
            ]
            assert base64.b64decode(body["chunks"][1][2]) == b"line 1\r\n"
            assert (body["intact"], body["finished"], body["problems"]) == (True, True, [])

    run(scenario())


def test_a_damaged_chunk_is_named_and_the_rest_shown(tmp_path: Path) -> None:
    """Chunk 1 altered: it is left out and named; chunks 0 and 2 are shown."""

    async def scenario() -> None:
        async with page(_fleet_with_log(tmp_path, 3, flip=1)) as p:
            body = await (await p.client.get(f"/api/logs/{JOB}", headers=p.headers())).json()
            assert [seq for seq, _, _ in body["chunks"]] == [0, 2]
            assert body["intact"] is False
            assert body["problems"] == [
                "chunk 1 did not authenticate (altered, or from another log)"
            ]

    run(scenario())


def test_a_log_without_its_final_chunk_says_so(tmp_path: Path) -> None:
    """A cut-off log is shown, and reported incomplete."""

    async def scenario() -> None:
        async with page(_fleet_with_log(tmp_path, 2, final=False)) as p:
            body = await (await p.client.get(f"/api/logs/{JOB}", headers=p.headers())).json()
            assert len(body["chunks"]) == 2
            assert "FINAL" in body["problems"][0]

    run(scenario())


def test_a_log_that_is_not_a_log_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    """Garbage where the log should be: an answer with the problem, no chunks."""

    async def scenario() -> None:
        fleet = FakeFleet(log_path=tmp_path / "garbage.rlog")
        (tmp_path / "garbage.rlog").write_bytes(b"\x00garbage" * 100)
        async with page(fleet) as p:
            response = await p.client.get(f"/api/logs/{JOB}", headers=p.headers())
            assert response.status == 200
            body = await response.json()
            assert body["chunks"] == []
            assert body["problems"]

    run(scenario())


def test_no_stored_copy_says_so_and_a_store_down_is_503() -> None:
    """No copy: `stored` false (the page asks the node instead); the store unreachable: 503."""

    async def scenario() -> None:
        async with page(FakeFleet()) as p:
            response = await p.client.get(f"/api/logs/{JOB}", headers=p.headers())
            assert response.status == 200
            assert (await response.json()) == {"job_id": JOB, "stored": False}
        async with page(FakeFleet(store_down=True)) as p:
            assert (await p.client.get(f"/api/logs/{JOB}", headers=p.headers())).status == 503

    run(scenario())


@pytest.mark.parametrize("job_id", ["x", "0" * 33, "../../etc/passwd", "%2e%2e"])
def test_bad_job_ids_are_400(job_id: str) -> None:
    """A malformed id never reaches the store."""

    async def scenario() -> None:
        async with page(FakeFleet(store_down=True)) as p:
            response = await p.client.get(f"/api/logs/{job_id}", headers=p.headers())
            assert response.status in (400, 404)
            assert response.status != 503

    run(scenario())


def test_a_huge_log_is_413(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over the size a page takes: 413, naming `runlet logs`."""
    monkeypatch.setattr(logs, "MAX_LOG_BYTES", 10)

    async def scenario() -> None:
        async with page(_fleet_with_log(tmp_path, 3)) as p:
            response = await p.client.get(f"/api/logs/{JOB}", headers=p.headers())
            assert response.status == 413
            assert "runlet logs" in (await response.json())["error"]

    run(scenario())
