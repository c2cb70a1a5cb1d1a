"""The Fleet and Jobs views and the start form, in real Chromium against a real fleet."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import expect

from tests.browser.conftest import WAIT_MS, UiProcess, chromium
from tests.integration.test_server import ServerUnderTest
from tests.support import Fleet, run


def test_fleet_view_shows_the_nodes(
    fleet: Fleet, server: ServerUnderTest, ui: UiProcess, tmp_path: Path
) -> None:
    """Two daemons appear online with their tags, platform, job counts and vitals."""
    fleet.start_daemon("edge-1", tags=("pi", "lab"), presence=0.5)
    fleet.start_daemon("edge-2", presence=0.5)

    async def scenario() -> None:
        async with chromium(tmp_path / "screenshots") as pages:
            page = await pages.open(ui.url)
            for name in ("edge-1", "edge-2"):
                row = page.locator(f"#nodes tr[data-node='{name}']")
                await expect(row.locator(".node-status")).to_have_text("online", timeout=WAIT_MS)
            await expect(page.locator("#nodes tr[data-node='edge-1']")).to_contain_text("pi")
            await expect(page.locator("#fleet-summary")).to_have_text("2 of 2 online")
            for name in ("edge-1", "edge-2"):  # this machine's vitals, from each heartbeat
                row = page.locator(f"#nodes tr[data-node='{name}']")
                await expect(row.locator(".memory")).to_contain_text("GiB", timeout=WAIT_MS)
                await expect(row.locator(".cpu")).to_contain_text("%", timeout=WAIT_MS)
            await pages.shot(page, "fleet")

    run(scenario())
