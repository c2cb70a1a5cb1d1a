"""A finished job's log in real Chromium: played back, a damaged one's banner, and the node's
replay when no copy is stored here."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from runlet.adapters.logfile import LogWriter, Record, read_records
from runlet.client.session import Client
from runlet.protocol.addresses import new_job_id
from runlet.protocol.payloads import JobSpec
from tests.browser.conftest import WAIT_MS, UiProcess, chromium, wait_screen
from tests.integration.test_server import ServerUnderTest
from tests.support import Fleet, follow_to_end, run

pytestmark = pytest.mark.timeout(300)
JOB = "echo one; sleep 0.3; echo two; sleep 0.3; echo three"


def run_to_end(fleet: Fleet) -> str:
    """Run JOB on edge-1 to its end; its id."""

    async def go() -> str:
        async with Client(fleet.client_config("starter"), fleet.key) as client:
            job_id = new_job_id()
            watch = await client.watch(job_id)
            await client.submit(JobSpec((JOB,)), "node:edge-1", job_id=job_id)
            out, final = await follow_to_end(client, watch, job_id)
            assert final.state == "exited", out
            return job_id

    return run(go())


def copy_log(fleet: Fleet, job_id: str, *, flip: int | None = None) -> None:
    """Put the node's log where the UI's device keeps fetched logs; `flip` damages a chunk."""
    source = fleet.root / "edge-1" / "vault" / f"{job_id}.rlog"
    target = fleet.root / "laptop" / "logs" / f"{job_id}.rlog"
    target.parent.mkdir(parents=True, exist_ok=True)
    if flip is None:
        shutil.copyfile(source, target)
        return
    records = list(read_records(source, job_id=job_id))
    assert len(records) > flip, f"the job wrote {len(records)} chunks"
    with LogWriter(target, job_id) as writer:
        for record in records:
            sealed = bytearray(record.sealed)
            if record.seq == flip:
                sealed[len(sealed) // 2] ^= 1
            writer.append(Record(record.seq, record.flags, bytes(sealed)))


async def open_log(page: Page, job_id: str) -> None:
    await page.click("#tab-jobs")
    await page.locator(f"#jobs tr[data-job='{job_id}'] button.log").click(timeout=WAIT_MS)
    await page.wait_for_function("id => window.runletTabs.has(id)", arg=job_id, timeout=WAIT_MS)


def tab(page: Page, job_id: str) -> str:
    return f"section.terminal-view[data-job='{job_id}']"


def test_logs_play_back_name_damage_and_fall_back_to_the_node(
    fleet: Fleet, server: ServerUnderTest, ui: UiProcess, tmp_path: Path
) -> None:
    """An intact copy plays back verified, in real time on request; a damaged copy shows a
    banner naming the chunk; with no copy here the node that ran the job replays it."""
    fleet.start_daemon("edge-1", presence=0.5)
    intact, damaged, remote = (run_to_end(fleet) for _ in range(3))
    copy_log(fleet, intact)
    copy_log(fleet, damaged, flip=1)

    async def scenario() -> None:
        async with chromium(tmp_path / "screenshots") as pages:
            page = await pages.open(ui.url)
            await open_log(page, intact)
            await expect(page.locator(f"{tab(page, intact)} .badge.state")).to_contain_text(
                "verified", timeout=WAIT_MS
            )
            await wait_screen(page, intact, "three")
            await page.select_option(f"{tab(page, intact)} select.speed", "1")
            await page.click(f"{tab(page, intact)} button.replay")
            badge = page.locator(f"{tab(page, intact)} .badge.state")
            await expect(badge).to_have_attribute("data-played", "1", timeout=WAIT_MS)
            await wait_screen(page, intact, "three")
            assert await page.locator(f"{tab(page, intact)} .banner").is_hidden()

            await open_log(page, damaged)
            banner = page.locator(f"{tab(page, damaged)} .banner")
            await expect(banner).to_contain_text("chunk 1 did not authenticate", timeout=WAIT_MS)
            await expect(page.locator(f"{tab(page, damaged)} .badge.state")).to_contain_text(
                "damaged"
            )
            await pages.shot(page, "damaged-log")

            await open_log(page, remote)
            await wait_screen(page, remote, "three")
            await expect(page.locator(f"{tab(page, remote)} .badge.state")).to_contain_text(
                "status 0", timeout=WAIT_MS
            )

    run(scenario())
