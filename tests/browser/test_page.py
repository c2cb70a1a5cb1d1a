"""The page around the terminals in real Chromium: tabs, theme and font size remembered,
search in the scrollback, the key bar on a small screen, the warning before leaving, and
nothing of a job's in the browser's storage."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.async_api import Dialog, expect

from tests.browser.conftest import (
    WAIT_MS,
    UiProcess,
    chromium,
    start_from_form,
    wait_screen,
    wait_state,
)
from tests.integration.test_server import ServerUnderTest
from tests.support import Fleet, run

pytestmark = pytest.mark.timeout(300)
MARK = "s3cr3t-output-7781"


def test_tabs_theme_font_search_keybar_and_storage(
    fleet: Fleet, server: ServerUnderTest, ui: UiProcess, tmp_path: Path
) -> None:
    """Two tabs each keep their own job; dark theme and a larger font survive a reload; the
    search finds text in the scrollback; the key bar's Tab and Ctrl keys work on a
    phone-sized screen; leaving while attached asks first; localStorage holds no output."""
    fleet.start_daemon("edge-1", presence=0.5)

    async def scenario() -> None:
        async with chromium(tmp_path / "screenshots") as pages:
            page = await pages.open(ui.url)
            first = await start_from_form(page, f"echo {MARK}; cat", "edge-1")
            second = await start_from_form(page, "echo other-tab; cat", "edge-1")
            await wait_screen(page, second, "other-tab")
            await page.click(f"#tabs button[data-job='{first}']")
            await wait_screen(page, first, MARK)
            await wait_state(page, first, "running")
            await page.keyboard.type("typed-in-first\r")
            await wait_screen(page, first, "typed-in-first")
            latency = page.locator(f"section.terminal-view[data-job='{first}'] .badge.latency")
            await expect(latency).to_have_text(re.compile(r"^\d+ ms$"), timeout=WAIT_MS)

            capture = page.locator(f"section.terminal-view[data-job='{first}']")
            await capture.locator("button.capture-keys").click()
            await expect(capture).to_have_class(re.compile(r"\bcapture\b"))
            await page.keyboard.type("abc")
            await page.keyboard.press("Control+w")  # the job's terminal erases the word
            await page.keyboard.type("zed\r")
            await wait_screen(page, first, "zed\nzed")  # the echo, then cat's copy: no abc
            assert "abc" not in await page.evaluate(
                "id => window.runletTabs.get(id).allText()", first
            )
            await page.keyboard.press("Escape")
            await page.keyboard.press("Escape")  # twice: leave the capture mode
            await expect(capture).not_to_have_class(re.compile(r"\bcapture\b"))
            assert "typed-in-first" not in await page.evaluate(
                "id => window.runletTabs.get(id).allText()", second
            )

            view = f"section.terminal-view[data-job='{first}']"
            await page.fill(f"{view} input.search", MARK)
            await page.press(f"{view} input.search", "Enter")
            selected = await page.evaluate(
                "id => window.runletTabs.get(id).term.getSelection()", first
            )
            assert selected == MARK

            await page.click("#theme")
            await page.click("#font-up")
            await page.click("#font-up")
            size = await page.evaluate(
                "id => window.runletTabs.get(id).term.options.fontSize", first
            )
            assert size == 16
            stored = await page.evaluate("() => JSON.stringify(Object.assign({}, localStorage))")
            assert MARK not in stored
            assert "typed-in-first" not in stored

            dialogs: list[str] = []

            async def on_dialog(dialog: Dialog) -> None:
                dialogs.append(dialog.type)
                await dialog.accept()

            page.on("dialog", on_dialog)
            await page.reload()  # attached tabs: the page asks before it goes
            await page.wait_for_selector("body[data-ready='1']", timeout=WAIT_MS)
            assert dialogs == ["beforeunload"]
            assert await page.evaluate("() => document.documentElement.classList.contains('dark')")
            job = await start_from_form(page, "cat", "edge-1")
            await wait_state(page, job, "running")
            size = await page.evaluate("id => window.runletTabs.get(id).term.options.fontSize", job)
            assert size == 16
            await pages.shot(page, "dark")

            await page.set_viewport_size({"width": 420, "height": 760})
            keybar = page.locator(f"section.terminal-view[data-job='{job}'] .keybar")
            await expect(keybar).to_be_visible()
            await keybar.locator("button", has_text="Tab").click()
            await page.keyboard.press("Enter")
            await keybar.locator("button", has_text="Ctrl").click()
            await page.keyboard.type("d")  # Ctrl then d at a line's start: end of input
            await wait_state(page, job, "status 0")
            await pages.shot(page, "phone")

    run(scenario())
