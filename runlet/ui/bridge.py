"""One terminal tab's websocket: a job's output to the page, the page's keys and size to the job.

The page's first frame says what to follow, as JSON::

    {"type": "attach", "job_id": ID, "read_only": false, "from_seq": 0}

`from_seq` is 0 for a new tab (the node replays everything, so a full-screen program's screen
is rebuilt) or the next chunk the tab lacks when it reconnects after a dropped connection: the
output resumes with no gap and no duplicate. Then, from the page:

- binary frames are keystrokes (UTF-8, as xterm.js gives them); pastes are cut into pieces;
- `{"type": "resize", "rows": R, "cols": C}` follows the window.

A read-only tab's keys and resizes are dropped here, in the bridge — what the page hides is not
what protects the job. To the page: binary output frames, each `len(job_id)` (1 byte), the job
id, the chunk's sequence number (8 bytes, big-endian) and its plaintext; JSON frames
`attached`, `state` (with the shell-style `status` once it ended) and `error`. A frame the page
should never send (not JSON, an unknown type, a bad size, an attach that is not first) closes
the socket with code 4400 and says why; a broker failure closes it with 1011 (the page tries
again). No node answering for the job within a few seconds is said once. Once the job's end
and its last chunk are shown, the bridge closes the socket (1000) and the watch. A slow page
bounds what waits for it: the tab's watch holds a few hundred messages and the bridge a window
of chunks ahead of the next one the page needs; output past either is dropped here and comes
back by a replay from the node once the page catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import time
from typing import Any

import structlog
from aiohttp import WSMsgType, web

from runlet.client.stream import JobStream, State
from runlet.errors import RunletError
from runlet.protocol.addresses import valid_job_id
from runlet.protocol.messages import OutputChunk
from runlet.protocol.payloads import Control
from runlet.ui.api import FLEET

log = structlog.get_logger(__name__)

MAX_FRAME = 256 * 1024  # a paste of this much is fine; more is refused by aiohttp (1009)
INPUT_PIECE = 16 * 1024  # keystrokes leave in sealed pieces of at most this much
ATTACH_SECONDS = 10.0  # a socket that says nothing this long is closed
POLL_SECONDS = 0.25
BAD_FRAME = 4400
TRY_AGAIN = 1011  # the bridge could not reach the broker: the page reconnects later
WINDOW = 256  # chunks held ahead of the next one the page needs; later ones come by replay
NOT_FOUND_SECONDS = 4.0  # no node answered for the job this long: the page is told, once


class BadFrame(ValueError):
    """A frame the page should never send."""


def output_frame(job_id: str, seq: int, data: bytes) -> bytes:
    ident = job_id.encode("ascii")
    return bytes([len(ident)]) + ident + struct.pack(">Q", seq) + data


def parse_attach(text: str) -> tuple[str, bool, int]:
    """(job id, read only, from seq) from the first frame; BadFrame if it is not an attach."""
    frame = _json(text)
    if frame.get("type") != "attach":
        raise BadFrame("the first frame must be an attach")
    job_id = frame.get("job_id")
    if not isinstance(job_id, str) or not valid_job_id(job_id):
        raise BadFrame("attach: not a job id")
    read_only = frame.get("read_only", False)
    from_seq = frame.get("from_seq", 0)
    if not isinstance(read_only, bool):
        raise BadFrame("attach: read_only must be true or false")
    if isinstance(from_seq, bool) or not isinstance(from_seq, int) or not 0 <= from_seq < 2**63:
        raise BadFrame("attach: from_seq must be a whole number")
    return job_id, read_only, from_seq


def parse_control(text: str) -> Control:
    """A resize from the page; BadFrame for anything else."""
    frame = _json(text)
    if frame.get("type") != "resize":
        raise BadFrame(f"unknown frame type {str(frame.get('type'))[:20]!r}")
    return Control("resize", _size(frame, "rows"), _size(frame, "cols"))


def _size(frame: dict[str, Any], name: str) -> int:
    value = frame.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        raise BadFrame("resize: rows and cols must be whole numbers from 1 to 1000")
    return value


def _json(text: str) -> dict[str, Any]:
    try:
        frame = json.loads(text)
    except ValueError:
        raise BadFrame("not JSON") from None
    if not isinstance(frame, dict):
        raise BadFrame("a frame must be a JSON object")
    return frame


def state_frame(state: State) -> dict[str, Any]:
    return {
        "type": "state",
        "state": state.state,
        "node": state.node,
        "exit_code": state.exit_code,
        "signal": state.signal,
        "detail": state.detail,
        "status": state.status(),
    }


async def terminal(request: web.Request) -> web.StreamResponse:
    """GET /ws: one tab's terminal, as described above."""
    ws = web.WebSocketResponse(max_msg_size=MAX_FRAME, heartbeat=20.0)
    await ws.prepare(request)
    try:
        first = await ws.receive(timeout=ATTACH_SECONDS)
    except TimeoutError:
        await ws.close(code=BAD_FRAME, message=b"no attach frame")
        return ws
    if first.type != WSMsgType.TEXT:
        await _refuse(ws, "the first frame must be an attach")
        return ws
    try:
        job_id, read_only, from_seq = parse_attach(first.data)
    except BadFrame as exc:
        await _refuse(ws, str(exc))
        return ws
    await Tab(request, ws, job_id, read_only=read_only, from_seq=from_seq).run()
    return ws


async def _refuse(ws: web.WebSocketResponse, text: str) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.send_json({"type": "error", "message": text})
    await ws.close(code=BAD_FRAME, message=text[:120].encode())


class Tab:
    """One attached tab: follows the job until the page leaves or the job's end is shown."""

    def __init__(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        job_id: str,
        *,
        read_only: bool,
        from_seq: int,
    ) -> None:
        self.fleet = request.app[FLEET]
        self.ws = ws
        self.job_id = job_id
        self.read_only = read_only
        self.stream = JobStream(self.fleet.key, job_id, from_seq)
        self.dropped_keys = 0  # read-only: keystrokes the page sent anyway
        self.size: Control | None = None  # the page's last size, sent once the job runs
        self.beyond_window = 0  # chunks dropped for being too far ahead (a slow page)

    async def run(self) -> None:
        try:
            view = await self.fleet.view(self.job_id)
        except RunletError as exc:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.send_json({"type": "error", "message": f"cannot watch it: {exc}"})
            await self.ws.close(code=TRY_AGAIN, message=b"broker unavailable")
            return
        reader = asyncio.get_running_loop().create_task(self._read(view))
        try:
            await view.replay(self.stream.next_seq)
            self.stream.asked()
            await self.ws.send_json(
                {"type": "attached", "job_id": self.job_id, "read_only": self.read_only}
            )
            await self._follow(view, reader)
        except (ConnectionError, RuntimeError):
            pass  # the page went away mid-send
        except RunletError as exc:  # the broker failed us: the page tries again later
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.send_json({"type": "error", "message": str(exc)})
                await self.ws.close(code=TRY_AGAIN, message=b"broker unavailable")
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, RuntimeError):
                await reader
            await view.close()
            if not self.ws.closed:
                await self.ws.close()
            log.info(
                "ui_tab_closed",
                job=self.job_id,
                dropped_keys=self.dropped_keys,
                beyond_window=self.beyond_window,
            )

    async def _follow(self, view: Any, reader: asyncio.Task[None]) -> None:
        started = time.monotonic()
        told = False
        while not self.ws.closed and not reader.done():
            if (
                not told
                and not self.stream.found
                and time.monotonic() - started > NOT_FOUND_SECONDS
            ):
                told = True  # it may still be in an offline node's queue: keep watching
                text = "no online node holds this job (yet); still watching"
                await self.ws.send_json({"type": "error", "message": text})
            try:
                msg = await asyncio.wait_for(view.inbox.get(), POLL_SECONDS)
            except TimeoutError:
                msg = None
            if isinstance(msg, OutputChunk) and msg.seq >= self.stream.next_seq + WINDOW:
                self.beyond_window += 1  # far ahead of what the page took: replayed later
                self.stream.missed()
                msg = None
            if msg is not None:
                pieces, state = self.stream.take(msg)
                for seq, data in pieces:
                    await self.ws.send_bytes(output_frame(self.job_id, seq, data))
                if state is not None:
                    await self.ws.send_json(state_frame(state))
                    if state.state == "running" and self.size is not None:
                        await view.control(self.size)
            if self.stream.complete:
                return  # the end and every chunk are shown: the watch is no longer needed
            if self.stream.replay_due():
                self.stream.asked()
                await view.replay(self.stream.next_seq)

    async def _read(self, view: Any) -> None:
        async for msg in self.ws:
            try:
                if msg.type == WSMsgType.BINARY:
                    await self._keys(view, msg.data)
                elif msg.type == WSMsgType.TEXT:
                    control = parse_control(msg.data)
                    if not self.read_only:
                        self.size = control
                        if self.stream.running:
                            await view.control(control)
                else:
                    return
            except BadFrame as exc:
                await _refuse(self.ws, str(exc))
                return
            except RunletError as exc:  # one key or size lost to the broker: the tab goes on
                text = f"not delivered to the job: {exc}"
                await self.ws.send_json({"type": "error", "message": text})

    async def _keys(self, view: Any, data: bytes) -> None:
        if self.read_only:
            self.dropped_keys += 1
            return
        if not self.stream.running:
            await self.ws.send_json({"type": "error", "message": "the job is not running"})
            return
        for start in range(0, len(data), INPUT_PIECE):
            await view.send(data[start : start + INPUT_PIECE])
