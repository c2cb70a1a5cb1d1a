"""Browser fixtures: a real fleet, a real server, `runlet ui` as a process, real Chromium.

Chromium is Debian's (`/usr/bin/chromium`, installed by scripts/services.sh), driven by
Playwright's Python package; Playwright never downloads a browser. Every page a test opens
records its console errors and failed requests, and the test fails if there were any; every
test saves screenshots under its own output folder (`tmp_path/screenshots`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, Request, async_playwright, expect
from playwright.async_api import TimeoutError as PlaywrightTimeout

from tests.e2e.conftest import Terminals
from tests.integration.test_server import ServerUnderTest, schema  # noqa: F401 - fixture
from tests.support import REPO, STARTUP_SECONDS, Fleet, broker_is_up  # noqa: F401 - autouse

CHROMIUM = Path(os.environ.get("RUNLET_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
URL = re.compile(r"^http://127\.0\.0\.1:(\d+)/\?token=([A-Za-z0-9_-]+)$")
WAIT_MS = 30_000  # a bound on what a user would see at once, on a busy 2-core machine


class UiProcess:
    """`runlet -c CONFIG ui --no-browser` as a child process; its URL read from stdout."""

    def __init__(self, config: Path, log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLET_")}
        env["BROWSER"] = "false"  # never a browser of its own, whatever the test asks
        self.log_path = log
        self.log_file = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runlet", "-c", str(config), "ui", "--no-browser"],
            stdout=subprocess.PIPE,
            stderr=self.log_file,
            env=env,
            cwd=REPO,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()  # the first line, or EOF if it died
        match = URL.match(line)
        if match is None:
            self.stop()
            raise AssertionError(f"`runlet ui` printed {line!r}; its log:\n{self.log()}")
        self.url = line
        self.port = int(match.group(1))
        self.token = match.group(2)
        self.base = f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STARTUP_SECONDS)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log_file.close()


class Pages:
    """Opens pages in one browser; each records console errors and requests that failed."""

    def __init__(self, browser: Browser, shots: Path) -> None:
        self.browser = browser
        self.shots = shots
        self.problems: list[str] = []

    async def open(
        self,
        url: str,
        *,
        width: int = 1400,
        height: int = 860,
        setup: Callable[[Page], Awaitable[None]] | None = None,
    ) -> Page:
        """A new page at `url`, ready; `setup` runs first (to route its websockets, say)."""
        context = await self.browser.new_context(viewport={"width": width, "height": height})
        page = await context.new_page()
        if setup is not None:
            await setup(page)
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on(
            "requestfailed",
            lambda req: self.problems.append(f"request failed: {req.url} {req.failure}"),
        )
        page.on("request", self._request)
        await page.goto(url)
        await page.wait_for_selector("body[data-ready='1']", timeout=WAIT_MS)
        return page

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            self.problems.append(f"console {msg.type}: {msg.text}")

    def _request(self, request: Request) -> None:
        if not request.url.startswith(("http://127.0.0.1:", "ws://127.0.0.1:", "data:")):
            self.problems.append(f"request outside the page's origin: {request.url}")

    async def shot(self, page: Page, name: str) -> Path:
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{name}.png"
        await page.screenshot(path=str(path))
        return path

    def check(self) -> None:
        assert self.problems == [], "the page had problems:\n" + "\n".join(self.problems)


@asynccontextmanager
async def chromium(shots: Path) -> AsyncIterator[Pages]:
    """Debian's Chromium, headless, for one scenario; fails if any page had a problem.

    Playwright's sync API runs an event loop of its own, which the fleet helpers' own
    `asyncio.run` cannot share, so the browser is driven from the scenario's loop instead.
    """
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            pages = Pages(browser, shots)
            yield pages
        finally:
            await browser.close()
    pages.check()


@pytest.fixture(autouse=True)
def chromium_is_installed() -> None:
    """Fail (never skip) a browser test when Debian's Chromium is missing."""
    if not CHROMIUM.exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: run `make services` (it installs it)")


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path)
    try:
        yield f
    finally:
        f.close()


@pytest.fixture
def server(fleet: Fleet, schema: str) -> Iterator[ServerUnderTest]:  # noqa: F811
    under_test = ServerUnderTest(fleet, schema, presence_timeout=30.0)
    under_test.start()
    try:
        yield under_test
    finally:
        under_test.stop()


@pytest.fixture
def terminals() -> Iterator[Terminals]:
    """`terminals(CONFIG, ARGS...)`: `runlet` in a real pseudo-terminal (a CLI viewer)."""
    opened = Terminals()
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def ui(fleet: Fleet, tmp_path: Path) -> Iterator[UiProcess]:
    process = UiProcess(fleet.config_file("laptop", role="client"), tmp_path / "ui.log")
    try:
        yield process
    finally:
        process.stop()


async def screen(page: Page, job_id: str) -> str:
    """The terminal tab's screen as xterm.js holds it, one line per row."""
    text: str = await page.evaluate("id => window.runletTabs.get(id).screenText()", job_id)
    return text


async def wait_screen(page: Page, job_id: str, text: str, timeout: float = WAIT_MS) -> None:
    """Until `text` is on the tab's screen; fails showing the screen when it never is."""
    try:
        await page.wait_for_function(
            "([id, text]) => window.runletTabs.get(id)?.screenText().includes(text)",
            arg=[job_id, text],
            timeout=timeout,
        )
    except PlaywrightTimeout:
        shown = await screen(page, job_id) if await _has_tab(page, job_id) else "(no tab)"
        raise AssertionError(
            f"{text!r} never showed in the tab of {job_id}; screen:\n{shown}"
        ) from None


async def wait_state(page: Page, job_id: str, text: str) -> None:
    """Until the tab's state badge says `text`."""
    badge = page.locator(f"section.terminal-view[data-job='{job_id}'] .badge.state")
    await expect(badge).to_contain_text(text, timeout=WAIT_MS)


async def _has_tab(page: Page, job_id: str) -> bool:
    found: bool = await page.evaluate("id => window.runletTabs.has(id)", job_id)
    return found


async def start_from_form(page: Page, command: str, target: str) -> str:
    """Fill in and send the Start a job form; the id of the tab that opens for the job."""
    before = set(await page.evaluate("() => [...window.runletTabs.keys()]"))
    await page.click("#tab-jobs")
    await page.fill("#start-command", command)
    await page.fill("#start-target", target)
    await page.click("#start-button")
    await page.wait_for_function(
        "n => window.runletTabs.size > n", arg=len(before), timeout=WAIT_MS
    )
    after = set(await page.evaluate("() => [...window.runletTabs.keys()]"))
    (job_id,) = after - before
    return str(job_id)


async def open_tab(page: Page, job_id: str, *, read_only: bool) -> None:
    """Attach (or watch) a running job from the Jobs list."""
    await page.click("#tab-jobs")
    button = page.locator(
        f"#jobs tr[data-job='{job_id}'] button.{'watch' if read_only else 'attach'}"
    )
    await button.click(timeout=WAIT_MS)
    await page.wait_for_function("id => window.runletTabs.has(id)", arg=job_id, timeout=WAIT_MS)
