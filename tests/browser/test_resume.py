"""A terminal tab whose websocket is slowed and cut: it resumes with no gap and no duplicate.

Playwright routes the page's websocket through the test, which relays every frame both ways
like a TCP proxy: in order, each after a pause (a slow link), and twice cuts the connection
in the middle of the job's output. The tab reconnects by itself, asks to resume from the
next chunk it lacks, and the screen ends up with every line exactly once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, WebSocketRoute

from tests.browser.conftest import UiProcess, chromium, start_from_form, wait_state
from tests.integration.test_server import ServerUnderTest
from tests.support import Fleet, run

pytestmark = pytest.mark.timeout(300)
LINES = 300
JOB = f"seq 1 {LINES} | while read i; do echo line-$i; sleep 0.02; done"
CUT_AFTER = (4, 12)  # output frames relayed (over all connections) when the link is cut
PAUSE = 0.01  # seconds before each frame to the page


class Link:
    """The slow, breakable link between the page and `runlet ui`."""

    def __init__(self) -> None:
        self.attaches: list[dict[str, Any]] = []
        self.frames = 0
        self.cuts = 0
        self.tasks: set[asyncio.Task[None]] = set()

    async def route(self, page: Page) -> None:
        await page.route_web_socket(re.compile(r"/ws$"), self.connect)

    def connect(self, ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()
        queue: asyncio.Queue[str | bytes] = asyncio.Queue()

        def from_page(message: str | bytes) -> None:
            if isinstance(message, str) and '"attach"' in message:
                self.attaches.append(json.loads(message))
            server.send(message)

        ws.on_message(from_page)
        server.on_message(queue.put_nowait)
        task = asyncio.get_running_loop().create_task(self._to_page(ws, server, queue))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _to_page(self, ws: WebSocketRoute, server: Any, queue: asyncio.Queue[Any]) -> None:
        while True:
            message = await queue.get()
            await asyncio.sleep(PAUSE)
            if isinstance(message, bytes):
                self.frames += 1
                if self.frames in CUT_AFTER:  # this frame is lost with the connection
                    self.cuts += 1
                    await ws.close(code=4000, reason="cut")
                    await server.close()
                    return
            ws.send(message)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def test_a_cut_and_slow_websocket_resumes_with_no_gap_and_no_duplicate(
    fleet: Fleet, server: ServerUnderTest, ui: UiProcess, tmp_path: Path
) -> None:
    """Two cuts mid-output: the tab resumes from the next chunk each time; every line once."""
    fleet.start_daemon("edge-1", presence=0.5)
    link = Link()

    async def scenario() -> None:
        async with chromium(tmp_path / "screenshots") as pages:
            try:
                page = await pages.open(ui.url, setup=link.route)
                job_id = await start_from_form(page, JOB, "edge-1")
                await wait_state(page, job_id, "status 0")
                text = await page.evaluate("id => window.runletTabs.get(id).allText()", job_id)
                await pages.shot(page, "resumed")
            finally:
                await link.close()
        numbers = [int(n) for n in re.findall(r"^line-(\d+)$", text, re.MULTILINE)]
        assert numbers == list(range(1, LINES + 1))
        assert link.cuts == len(CUT_AFTER)
        resumed = [a["from_seq"] for a in link.attaches[1:]]
        assert len(resumed) >= len(CUT_AFTER)
        assert all(seq > 0 for seq in resumed), link.attaches

    run(scenario())
