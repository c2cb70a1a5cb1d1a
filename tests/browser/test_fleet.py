"""The Fleet and Jobs views and the start form, in real Chromium against a real fleet."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import expect

from runlet.client.session import Client
from runlet.protocol.payloads import Control, JobSpec
from tests.browser.conftest import WAIT_MS, UiProcess, chromium, start_from_form, wait_state
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


def test_jobs_list_filters_updates_live_and_shows_a_history(
    fleet: Fleet, server: ServerUnderTest, ui: UiProcess, tmp_path: Path
) -> None:
    """Jobs started elsewhere appear without a reload, newest first, with their exit status;
    the state filter narrows the list; a job's history lists its states in order."""
    fleet.start_daemon("edge-1", presence=0.5)

    async def scenario() -> None:
        async with chromium(tmp_path / "screenshots") as pages:
            page = await pages.open(ui.url)
            await page.click("#tab-jobs")
            client = Client(fleet.client_config("laptop"), fleet.key)
            async with client:
                first = await client.submit(JobSpec(("exit 4",)), "node:edge-1")
                row = page.locator(f"#jobs tr[data-job='{first.job_id}']")
                await expect(row).to_contain_text("exit 4", timeout=WAIT_MS)
                second = await client.submit(JobSpec(("sleep 60",)), "node:edge-1")
                running = page.locator(f"#jobs tr[data-job='{second.job_id}']")
                await expect(running).to_contain_text("running", timeout=WAIT_MS)
                ids = await page.locator("#jobs tbody tr").evaluate_all(
                    "rows => rows.map(r => r.dataset.job)"
                )
                assert ids.index(second.job_id) < ids.index(first.job_id)  # newest first
                await page.select_option("#filter-state", "exited")
                await expect(running).to_have_count(0, timeout=WAIT_MS)
                await expect(row).to_have_count(1)
                await row.locator("a.job-link").click()
                history = page.locator("#history tbody tr")
                await expect(history).to_have_count(3, timeout=WAIT_MS)
                states = await history.evaluate_all(
                    "rows => rows.map(r => r.children[1].textContent)"
                )
                assert states == ["queued", "running", "exited"]
                await pages.shot(page, "jobs")
                await client.control(second.job_id, Control("cancel"))

    run(scenario())


def test_without_a_server_the_page_shows_what_it_heard(
    fleet: Fleet, ui: UiProcess, tmp_path: Path
) -> None:
    """No server: the Fleet view lists the daemons heard on the broker, with their vitals and
    a note saying where the rows come from; a job started from the form shows in the list."""
    fleet.start_daemon("edge-1", presence=0.5)
    fleet.start_daemon("edge-2", presence=0.5)

    async def scenario() -> None:
        async with chromium(tmp_path / "screenshots") as pages:
            page = await pages.open(ui.url)
            for name in ("edge-1", "edge-2"):
                row = page.locator(f"#nodes tr[data-node='{name}']")
                await expect(row.locator(".node-status")).to_have_text("online", timeout=WAIT_MS)
                await expect(row.locator(".memory")).to_contain_text("GiB", timeout=WAIT_MS)
            await expect(page.locator("#server-status")).to_contain_text("no server answering")
            job_id = await start_from_form(page, "exit 5", "edge-2")
            await wait_state(page, job_id, "status 5")
            await page.click("#tab-jobs")
            row = page.locator(f"#jobs tr[data-job='{job_id}']")
            await expect(row).to_contain_text("exit 5", timeout=WAIT_MS)
            await row.locator("a.job-link").click()
            history = page.locator("#history tbody tr")
            await expect(history).to_have_count(3, timeout=WAIT_MS)
            await pages.shot(page, "no-server")

    run(scenario())
