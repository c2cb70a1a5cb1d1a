"""Live terminals in real Chromium: jobs started from the form, typed into, watched, resized.

The daemon runs in the test process (its PTYs are real), the server and `runlet ui` are real,
and every key pressed in the page crosses the websocket, the UI process, RabbitMQ and the
daemon's PTY before its echo comes back the same way.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from playwright.async_api import expect

from tests.browser.conftest import (
    WAIT_MS,
    UiProcess,
    chromium,
    open_tab,
    screen,
    start_from_form,
    wait_screen,
    wait_state,
)
from tests.e2e.conftest import Terminals
from tests.e2e.curses_app import __file__ as CURSES_APP
from tests.integration.test_server import ServerUnderTest
from tests.support import Fleet, run

pytestmark = pytest.mark.timeout(300)
PROMPT = "printf 'Continue? [y/N] '; read a; echo answer=$a; exit 3"
CURSES = f"{sys.executable} {CURSES_APP}"


def test_a_job_from_the_form_answers_a_prompt(
    fleet: Fleet, server: ServerUnderTest, ui: UiProcess, tmp_path: Path
) -> None:
    """Start a job from the form: its tab opens, the prompt shows, y+Enter answer it, and
    the tab shows the exit status `runlet run` would exit with."""
    fleet.start_daemon("edge-1", presence=0.5)

    async def scenario() -> None:
        async with chromium(tmp_path / "screenshots") as pages:
            page = await pages.open(ui.url)
            job_id = await start_from_form(page, PROMPT, "edge-1")
            await wait_screen(page, job_id, "Continue? [y/N]")
            await page.keyboard.type("y")
            await page.keyboard.press("Enter")
            await wait_screen(page, job_id, "answer=y")
            await wait_state(page, job_id, "status 3")
            await pages.shot(page, "prompt")

    run(scenario())


def test_curses_program_driven_from_the_page(
    fleet: Fleet, server: ServerUnderTest, ui: UiProcess, tmp_path: Path, terminals: Terminals
) -> None:
    """Arrows, F2, a window resize and F10 from the page reach a curses program; a CLI
    viewer's pyte screen and the page's xterm.js screen are the same."""
    fleet.start_daemon("edge-1", presence=0.5)
    client = fleet.config_file("watcher", role="client")

    async def scenario() -> None:
        async with chromium(tmp_path / "screenshots") as pages:
            page = await pages.open(ui.url)
            job_id = await start_from_form(page, CURSES, "edge-1")
            await wait_screen(page, job_id, "> item 1 alpha")
            rows, cols = await page.evaluate(
                "id => { const t = window.runletTabs.get(id).term; return [t.rows, t.cols]; }",
                job_id,
            )
            await wait_screen(page, job_id, f"size={rows}x{cols}")
            await page.keyboard.press("ArrowDown")
            await page.keyboard.press("ArrowDown")
            await page.keyboard.press("F2")
            await wait_screen(page, job_id, "F2 pressed")
            await wait_screen(page, job_id, "> item 3 charlie")
            await pages.shot(page, "curses")
            # a CLI viewer of the same size sees the very same screen (pyte against xterm.js)
            viewer = terminals(client, "attach", "--read-only", job_id, rows=rows, cols=cols)
            viewer.wait_until(
                lambda: "> item 3 charlie" in viewer.lines(), "the CLI viewer's screen"
            )
            browser_lines = [line.rstrip() for line in (await screen(page, job_id)).split("\n")]
            assert viewer.lines() == browser_lines
            viewer.close()

            await page.set_viewport_size({"width": 900, "height": 500})
            await page.wait_for_function(
                "([id, c]) => window.runletTabs.get(id).term.cols < c", arg=[job_id, cols]
            )
            rows, cols = await page.evaluate(
                "id => { const t = window.runletTabs.get(id).term; return [t.rows, t.cols]; }",
                job_id,
            )
            await wait_screen(page, job_id, f"size={rows}x{cols}")
            assert "> item 3 charlie" in await screen(page, job_id)
            await page.keyboard.press("F10")
            await wait_state(page, job_id, "status 7")

    run(scenario())


def test_two_pages_see_the_same_output_and_a_read_only_one_cannot_type(
    fleet: Fleet, server: ServerUnderTest, ui: UiProcess, tmp_path: Path, terminals: Terminals
) -> None:
    """A second page attaches late and sees the screen so far; a read-only page's keys never
    reach the node, whatever it types; the typing page's keys reach both, and a CLI viewer."""
    fleet.start_daemon("edge-1", presence=0.5)
    marker = tmp_path / "typed.txt"

    async def scenario() -> None:
        async with chromium(tmp_path / "screenshots") as pages:
            writer = await pages.open(ui.url)
            # every line the job reads is appended to a file on the node, and echoed
            command = f'while read line; do echo "got:$line"; echo "$line" >> {marker}; done'
            job_id = await start_from_form(writer, command, "edge-1")
            await wait_state(writer, job_id, "running")
            await writer.keyboard.type("first")
            await writer.keyboard.press("Enter")
            await wait_screen(writer, job_id, "got:first")

            watcher = await pages.open(ui.url)
            await open_tab(watcher, job_id, read_only=True)
            await wait_screen(watcher, job_id, "got:first")  # late join: the screen so far
            await watcher.click(f"section.terminal-view[data-job='{job_id}'] .term-host")
            await watcher.keyboard.type("sneaky")
            await watcher.keyboard.press("Enter")
            # force the keys past the page's own guard: the bridge must drop them too
            await watcher.evaluate(
                "id => window.runletTabs.get(id).ws.send(new TextEncoder().encode('forced\\r'))",
                job_id,
            )
            cli = terminals(
                fleet.config_file("watcher", role="client"), "attach", "--read-only", job_id
            )
            cli.wait_text("got:first")
            await writer.keyboard.type("second")
            await writer.keyboard.press("Enter")
            await wait_screen(watcher, job_id, "got:second")
            await wait_screen(writer, job_id, "got:second")
            cli.wait_text("got:second")
            await pages.shot(watcher, "read-only")
            assert marker.read_text().splitlines() == ["first", "second"]

    run(scenario())


def test_the_form_passes_env_cwd_and_the_clipboard_works(
    fleet: Fleet, server: ServerUnderTest, ui: UiProcess, tmp_path: Path
) -> None:
    """Environment and working folder from the form reach the job; Ctrl+Shift+C copies the
    selection, Ctrl+Shift+V and Shift+Insert paste into the job."""
    fleet.start_daemon("edge-1", presence=0.5)
    folder = tmp_path / "work here"
    folder.mkdir()

    async def scenario() -> None:
        async with chromium(tmp_path / "screenshots") as pages:
            page = await pages.open(ui.url)
            await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
            await page.click("#tab-jobs")
            await page.fill("#start-env", "GREETING=hello from the form\nEMPTY=")
            await page.fill("#start-cwd", str(folder))
            job_id = await start_from_form(page, 'echo "$GREETING"; pwd; cat', "edge-1")
            await wait_screen(page, job_id, "hello from the form")
            await wait_screen(page, job_id, str(folder))
            await wait_state(page, job_id, "running")

            await page.evaluate("id => window.runletTabs.get(id).term.selectAll()", job_id)
            await page.keyboard.press("Control+Shift+C")
            copied = await page.evaluate("() => navigator.clipboard.readText()")
            assert "hello from the form" in copied

            await page.evaluate("() => navigator.clipboard.writeText('pasted-once\\r')")
            await page.keyboard.press("Control+Shift+V")
            await wait_screen(page, job_id, "pasted-once")
            await page.evaluate("() => navigator.clipboard.writeText('pasted-twice\\r')")
            await page.keyboard.press("Shift+Insert")
            await wait_screen(page, job_id, "pasted-twice")

    run(scenario())


def test_a_job_for_all_nodes_opens_a_tab_per_node(
    fleet: Fleet, server: ServerUnderTest, ui: UiProcess, tmp_path: Path
) -> None:
    """`all` from the form: one tab per node's execution, each with that node's output."""
    fleet.start_daemon("edge-1", presence=0.5)
    fleet.start_daemon("edge-2", presence=0.5)

    async def scenario() -> None:
        async with chromium(tmp_path / "screenshots") as pages:
            page = await pages.open(ui.url)
            await page.click("#tab-jobs")
            await page.fill("#start-command", "echo ran-on-$RUNLET_TEST_NODE")
            await page.fill("#start-target", "all")
            await page.fill("#start-env", "RUNLET_TEST_NODE=x")
            await page.click("#start-button")
            await page.wait_for_function("() => window.runletTabs.size === 2", timeout=WAIT_MS)
            ids = sorted(await page.evaluate("() => [...window.runletTabs.keys()]"))
            assert [i.rsplit(".", 1)[1] for i in ids] == ["edge-1", "edge-2"]
            for job_id in ids:
                await page.click(f"#tabs button[data-job='{job_id}']")
                await wait_screen(page, job_id, "ran-on-x")
                await wait_state(page, job_id, "status 0")

    run(scenario())


def test_a_job_is_cancelled_from_its_tab_and_from_the_list(
    fleet: Fleet, server: ServerUnderTest, ui: UiProcess, tmp_path: Path
) -> None:
    """Cancel in a tab ends its job (SIGTERM): the tab shows it; Cancel in the list too."""
    fleet.start_daemon("edge-1", presence=0.5)

    async def scenario() -> None:
        async with chromium(tmp_path / "screenshots") as pages:
            page = await pages.open(ui.url)
            first = await start_from_form(page, "sleep 300", "edge-1")
            await wait_state(page, first, "running")
            await page.click(f"section.terminal-view[data-job='{first}'] button.cancel-job")
            await wait_state(page, first, "cancelled")
            second = await start_from_form(page, "sleep 300", "edge-1")
            await wait_state(page, second, "running")
            await page.click("#tab-jobs")
            row = page.locator(f"#jobs tr[data-job='{second}']")
            await row.locator("button.cancel").click(timeout=WAIT_MS)
            await expect(row).to_contain_text("cancelled", timeout=WAIT_MS)

    run(scenario())
