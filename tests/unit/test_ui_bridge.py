"""A terminal tab's websocket: output in order by seq, keys and resizes in, read-only, garbage.

The real app and bridge on loopback; the test plays the node by putting sealed chunks and
state changes into the fake view's inbox, in whatever order a broker might deliver them.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

import pytest
from aiohttp import WSMsgType

from runlet.errors import BrokerUnavailable
from runlet.ui import bridge
from runlet.ui.bridge import BAD_FRAME, MAX_FRAME
from tests.support import run
from tests.unit.ui_fakes import JOB, FakeFleet, FakeView, Page, page, state

WAIT = 10.0


@pytest.fixture(autouse=True)
def _patient(monkeypatch: pytest.MonkeyPatch) -> None:
    """No "no node holds it" notice unless a test asks for one (it would be a stray frame)."""
    monkeypatch.setattr(bridge, "NOT_FOUND_SECONDS", 3600.0)


async def _socket(p: Page) -> Any:
    return await p.client.ws_connect("/ws", headers=p.headers(Origin=p.origin))


async def _attach(p: Page, **fields: Any) -> tuple[Any, FakeView]:
    ws = await _socket(p)
    await ws.send_str(json.dumps({"type": "attach", "job_id": JOB, **fields}))
    frame = await ws.receive_json(timeout=WAIT)
    assert frame == {"type": "attached", "job_id": JOB, "read_only": fields.get("read_only", False)}
    return ws, p.fleet.views[-1]


def _output(data: bytes) -> tuple[str, int, bytes]:
    size = data[0]
    job_id = data[1 : 1 + size].decode()
    (seq,) = struct.unpack(">Q", data[1 + size : 9 + size])
    return job_id, seq, data[9 + size :]


async def _next(ws: Any) -> Any:
    msg = await ws.receive(timeout=WAIT)
    if msg.type == WSMsgType.BINARY:
        return _output(msg.data)
    if msg.type == WSMsgType.TEXT:
        return json.loads(msg.data)
    return msg


def test_output_arrives_in_order_whatever_order_the_chunks_came_in() -> None:
    """Chunks 2, 0, 1 (and a duplicate) become frames 0, 1, 2 with the job id and seq."""

    async def scenario() -> None:
        async with page() as p:
            ws, view = await _attach(p)
            assert view.replays == [0]
            for seq in (2, 0, 0, 1):
                view.inbox.put_nowait(p.fleet.chunk(seq, f"piece{seq} ".encode()))
            got = [await _next(ws) for _ in range(3)]
            assert got == [(JOB, i, f"piece{i} ".encode()) for i in range(3)]
            await ws.close()

    run(scenario())


def test_states_are_sent_with_the_shell_status_at_the_end() -> None:
    """running, then exited 3: the tab is told the status `runlet run` would exit with."""

    async def scenario() -> None:
        async with page() as p:
            ws, view = await _attach(p)
            view.inbox.put_nowait(state("running", 1))
            running = await _next(ws)
            assert (running["state"], running["status"]) == ("running", None)
            view.inbox.put_nowait(state("exited", 2, exit_code=3))
            view.inbox.put_nowait(state("running", 1))  # a retried publish, late: ignored
            ended = await _next(ws)
            assert (ended["state"], ended["exit_code"], ended["status"]) == ("exited", 3, 3)
            await ws.close()

    run(scenario())


def test_keys_and_resizes_reach_the_job_once_it_runs() -> None:
    """Keys typed before the job runs are refused aloud; then keys and sizes go through."""

    async def scenario() -> None:
        async with page() as p:
            ws, view = await _attach(p)
            await ws.send_bytes(b"early")
            assert (await _next(ws))["message"] == "the job is not running"
            await ws.send_str(json.dumps({"type": "resize", "rows": 30, "cols": 100}))
            view.inbox.put_nowait(state("running", 1))
            await _next(ws)
            await view.until(lambda: len(view.controls) == 1, "the remembered size sent", WAIT)
            await ws.send_bytes(b"y\r")
            await ws.send_bytes(b"\x1b[A")
            await view.until(lambda: view.sent == [b"y\r", b"\x1b[A"], "the keys sent", WAIT)
            assert (view.controls[0].rows, view.controls[0].cols) == (30, 100)
            await ws.close()

    run(scenario())


def test_a_paste_leaves_in_pieces() -> None:
    """A large paste is cut into pieces that each fit a sealed input message."""

    async def scenario() -> None:
        async with page() as p:
            ws, view = await _attach(p)
            view.inbox.put_nowait(state("running", 1))
            await _next(ws)
            paste = bytes(range(256)) * 400  # 100 KiB
            await ws.send_bytes(paste)
            await view.until(
                lambda: sum(map(len, view.sent)) == len(paste), "the whole paste", WAIT
            )
            assert b"".join(view.sent) == paste
            assert max(map(len, view.sent)) <= 16 * 1024
            await ws.close()

    run(scenario())


def test_read_only_keys_and_resizes_never_reach_the_job() -> None:
    """The bridge drops a read-only tab's keys and sizes, whatever the page sends."""

    async def scenario() -> None:
        async with page() as p:
            ws, view = await _attach(p, read_only=True)
            view.inbox.put_nowait(state("running", 1))
            await _next(ws)
            await ws.send_bytes(b"rm -rf /\r")
            await ws.send_str(json.dumps({"type": "resize", "rows": 10, "cols": 10}))
            view.inbox.put_nowait(p.fleet.chunk(0, b"still watching"))
            assert await _next(ws) == (JOB, 0, b"still watching")
            await ws.close()
            await asyncio.wait_for(view.closed.wait(), WAIT)
            assert view.sent == []
            assert view.controls == []

    run(scenario())


def test_a_resumed_tab_gets_only_what_it_lacks() -> None:
    """Attaching from seq 2 asks the node for a replay from 2 and drops chunks 0 and 1."""

    async def scenario() -> None:
        async with page() as p:
            ws, view = await _attach(p, from_seq=2)
            assert view.replays == [2]
            for seq in range(4):
                view.inbox.put_nowait(p.fleet.chunk(seq, f"c{seq}".encode()))
            assert [await _next(ws) for _ in range(2)] == [(JOB, 2, b"c2"), (JOB, 3, b"c3")]
            await ws.close()

    run(scenario())


def test_a_gap_is_filled_by_asking_for_a_replay() -> None:
    """Chunk 1 missing for a while: the bridge asks the node again from 1."""

    async def scenario() -> None:
        async with page() as p:
            ws, view = await _attach(p)
            view.inbox.put_nowait(p.fleet.chunk(0, b"a"))
            view.inbox.put_nowait(p.fleet.chunk(2, b"c"))
            assert await _next(ws) == (JOB, 0, b"a")
            await view.until(lambda: 1 in view.replays, "a replay from the gap", WAIT)
            view.inbox.put_nowait(p.fleet.chunk(1, b"b"))
            assert [await _next(ws) for _ in range(2)] == [(JOB, 1, b"b"), (JOB, 2, b"c")]
            await ws.close()

    run(scenario())


def test_a_forged_chunk_is_dropped() -> None:
    """A chunk sealed with another key shows nothing and does not take its seq."""

    async def scenario() -> None:
        async with page() as p:
            from tests.unit.ui_fakes import FakeFleet

            ws, view = await _attach(p)
            view.inbox.put_nowait(FakeFleet().chunk(0, b"forged"))
            view.inbox.put_nowait(p.fleet.chunk(0, b"real"))
            assert await _next(ws) == (JOB, 0, b"real")
            await ws.close()

    run(scenario())


@pytest.mark.parametrize(
    "first",
    [
        "garbage",
        "{",
        "[]",
        '"attach"',
        '{"type": "resize", "rows": 1, "cols": 1}',
        '{"type": "attach"}',
        '{"type": "attach", "job_id": "nope"}',
        '{"type": "attach", "job_id": 7}',
        '{"type": "attach", "job_id": "' + JOB + '", "read_only": "yes"}',
        '{"type": "attach", "job_id": "' + JOB + '", "from_seq": -1}',
        '{"type": "attach", "job_id": "' + JOB + '", "from_seq": 1e30}',
        '{"type": "attach", "job_id": "' + JOB + '", "from_seq": true}',
    ],
)
def test_a_bad_first_frame_closes_the_socket(first: str) -> None:
    """Anything but a good attach first: an error frame, close code 4400, no watch made."""

    async def scenario() -> None:
        async with page() as p:
            ws = await _socket(p)
            await ws.send_str(first)
            error = await _next(ws)
            assert error["type"] == "error"
            closing = await ws.receive(timeout=WAIT)
            assert closing.type == WSMsgType.CLOSE
            assert ws.close_code == BAD_FRAME
            assert p.fleet.views == []

    run(scenario())


def test_a_binary_first_frame_closes_the_socket() -> None:
    """Keys before an attach are garbage."""

    async def scenario() -> None:
        async with page() as p:
            ws = await _socket(p)
            await ws.send_bytes(b"\x00\x01\x02")
            assert (await _next(ws))["type"] == "error"
            await ws.receive(timeout=WAIT)
            assert ws.close_code == BAD_FRAME

    run(scenario())


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        '{"type": "launch"}',
        '{"type": "resize", "rows": 0, "cols": 80}',
        '{"type": "resize", "rows": 24, "cols": 100000}',
        '{"type": "resize", "rows": "24", "cols": 80}',
        '{"type": "resize", "rows": true, "cols": 80}',
        '{"type": "attach", "job_id": "' + JOB + '"}',
    ],
)
def test_garbage_after_attach_closes_the_socket_and_the_watch(frame: str) -> None:
    """A bad control frame closes the tab with 4400; its watch is closed too."""

    async def scenario() -> None:
        async with page() as p:
            ws, view = await _attach(p)
            view.inbox.put_nowait(state("running", 1))
            await _next(ws)
            await ws.send_str(frame)
            error = await _next(ws)
            assert error["type"] == "error"
            await ws.receive(timeout=WAIT)
            assert ws.close_code == BAD_FRAME
            await asyncio.wait_for(view.closed.wait(), WAIT)
            assert view.controls == []

    run(scenario())


def test_an_oversize_frame_closes_the_socket() -> None:
    """A frame over the limit is refused by the websocket layer (1009); nothing is typed."""

    async def scenario() -> None:
        async with page() as p:
            ws, view = await _attach(p)
            view.inbox.put_nowait(state("running", 1))
            await _next(ws)
            await ws.send_bytes(b"x" * (MAX_FRAME + 1))
            msg = await ws.receive(timeout=WAIT)
            while msg.type not in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR):
                msg = await ws.receive(timeout=WAIT)
            assert ws.close_code == 1009
            await asyncio.wait_for(view.closed.wait(), WAIT)
            assert view.sent == []

    run(scenario())


def test_closing_the_tab_closes_its_watch() -> None:
    """The page leaving ends the watch (its queue is deleted)."""

    async def scenario() -> None:
        async with page() as p:
            ws, view = await _attach(p)
            await ws.close()
            await asyncio.wait_for(view.closed.wait(), WAIT)

    run(scenario())


def test_the_tab_closes_once_the_end_and_the_last_chunk_are_shown() -> None:
    """exited and the FINAL chunk: the socket closes normally (1000) and so does the watch."""

    async def scenario() -> None:
        async with page() as p:
            ws, view = await _attach(p)
            view.inbox.put_nowait(state("running", 1))
            view.inbox.put_nowait(p.fleet.chunk(0, b"bye", final=True))
            view.inbox.put_nowait(state("exited", 2, exit_code=0))
            got = [await _next(ws) for _ in range(3)]
            assert got[1] == (JOB, 0, b"bye")
            assert got[2]["status"] == 0
            closing = await ws.receive(timeout=WAIT)
            assert closing.type == WSMsgType.CLOSE
            assert ws.close_code == 1000
            await asyncio.wait_for(view.closed.wait(), WAIT)

    run(scenario())


def test_a_job_nobody_holds_is_said_once_and_still_watched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No node answers: the tab is told once, and the bridge keeps asking for a replay."""
    monkeypatch.setattr(bridge, "NOT_FOUND_SECONDS", 0.2)

    async def scenario() -> None:
        async with page() as p:
            ws, view = await _attach(p)
            notice = await asyncio.wait_for(_next(ws), WAIT)
            assert notice["type"] == "error"
            assert "no online node" in notice["message"]
            await view.until(lambda: len(view.replays) >= 2, "a second replay request", WAIT)
            view.inbox.put_nowait(state("running", 1))
            assert (await _next(ws))["state"] == "running"
            await ws.close()

    run(scenario())


def test_a_broker_failure_closes_the_tab_for_a_retry() -> None:
    """The watch cannot be made (broker down): an error, then close code 1011, not 4400."""

    async def scenario() -> None:
        fleet = FakeFleet()

        async def broken(job_id: str) -> FakeView:
            raise BrokerUnavailable("the broker is down")

        fleet.view = broken  # type: ignore[method-assign]
        async with page(fleet) as p:
            ws = await _socket(p)
            await ws.send_str(json.dumps({"type": "attach", "job_id": JOB}))
            error = await _next(ws)
            assert "broker is down" in error["message"]
            await ws.receive(timeout=WAIT)
            assert ws.close_code == 1011

    run(scenario())


def test_chunks_far_ahead_of_the_page_are_dropped_and_replayed() -> None:
    """A chunk beyond the window is not held: it is dropped, and a replay asked from the gap."""

    async def scenario() -> None:
        async with page() as p:
            ws, view = await _attach(p)
            view.inbox.put_nowait(p.fleet.chunk(0, b"a"))
            assert await _next(ws) == (JOB, 0, b"a")
            far = bridge.WINDOW + 5
            view.inbox.put_nowait(p.fleet.chunk(far, b"far"))
            await view.until(lambda: 1 in view.replays, "a replay from chunk 1", WAIT)
            view.inbox.put_nowait(p.fleet.chunk(1, b"b"))
            assert await _next(ws) == (JOB, 1, b"b")
            await ws.close()

    run(scenario())


def test_a_key_the_broker_refuses_is_said_and_the_tab_goes_on() -> None:
    """A keystroke whose publish fails: the page is told, and the next key goes through."""

    async def scenario() -> None:
        async with page() as p:
            ws, view = await _attach(p)
            view.inbox.put_nowait(state("running", 1))
            await _next(ws)
            sent = view.send

            async def failing_once(data: bytes) -> None:
                view.send = sent  # type: ignore[method-assign]
                raise BrokerUnavailable("the broker is down")

            view.send = failing_once  # type: ignore[method-assign]
            await ws.send_bytes(b"lost")
            error = await _next(ws)
            assert "not delivered" in error["message"]
            await ws.send_bytes(b"kept")
            await view.until(lambda: view.sent == [b"kept"], "the next key", WAIT)
            await ws.close()
            await asyncio.wait_for(view.closed.wait(), WAIT)

    run(scenario())
