"""Another site in the same browser cannot drive the desktop manager.

A hostile page is served from another port of 127.0.0.1 (the same site for cookies, so the
browser sends the desktop manager's cookie along): its POST to start a job and its websocket
to a terminal are refused by the Origin check, and nothing reaches the node.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web
from playwright.async_api import expect

from tests.browser.conftest import WAIT_MS, UiProcess, chromium, start_from_form, wait_state
from tests.integration.test_server import ServerUnderTest
from tests.support import Fleet, run

pytestmark = pytest.mark.timeout(300)

HOSTILE = """<!doctype html><title>hostile</title><script>
window.results = {};
fetch("http://127.0.0.1:UI_PORT/api/jobs", {method: "POST", credentials: "include",
  mode: "no-cors", headers: {"Content-Type": "text/plain"},
  body: JSON.stringify({command: "touch MARKER", target: "edge-1"})})
  .then(() => { window.results.post = "sent"; }, () => { window.results.post = "failed"; });
fetch("http://127.0.0.1:UI_PORT/api/nodes", {credentials: "include"}).then(r => r.text())
  .then(t => { window.results.read = t; }, () => { window.results.read = "blocked"; });
const ws = new WebSocket("ws://127.0.0.1:UI_PORT/ws");
ws.onopen = () => { ws.send(JSON.stringify({type: "attach", job_id: "0".repeat(32)}));
  window.results.ws = "open"; };
ws.onerror = () => { window.results.ws = "refused"; };
</script>"""


def test_another_origin_can_neither_start_a_job_nor_open_a_terminal(
    fleet: Fleet, server: ServerUnderTest, ui: UiProcess, tmp_path: Path
) -> None:
    """With the cookie set in the browser, another origin's POST, read and websocket fail;
    the node never runs its job, and the real page still works."""
    fleet.start_daemon("edge-1", presence=0.5)
    marker = tmp_path / "hostile-was-here"

    async def scenario() -> None:
        hostile = web.Application()
        html = HOSTILE.replace("UI_PORT", str(ui.port)).replace("MARKER", str(marker))

        async def page_handler(request: web.Request) -> web.Response:
            return web.Response(text=html, content_type="text/html")

        hostile.router.add_get("/", page_handler)
        runner = web.AppRunner(hostile)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with chromium(tmp_path / "screenshots") as pages:
                real = await pages.open(ui.url)  # the cookie is now in this browser context
                evil = await real.context.new_page()
                await evil.goto(f"http://127.0.0.1:{port}/")
                await evil.wait_for_function(
                    "() => ['post', 'read', 'ws'].every(k => k in window.results)",
                    timeout=WAIT_MS,
                )
                results = await evil.evaluate("() => window.results")
                assert results["ws"] == "refused"
                assert results["read"] == "blocked"  # no CORS: the answer is not readable
                await evil.close()
                job_id = await start_from_form(real, "echo real-job", "edge-1")
                await wait_state(real, job_id, "status 0")
                await real.click("#tab-jobs")
                await expect(real.locator("#jobs tbody tr")).to_have_count(1, timeout=WAIT_MS)
            assert not marker.exists()
        finally:
            await runner.cleanup()

    run(scenario())
