"""End-to-end fixtures: real `runlet` processes in real pseudo-terminals, and what users see.

A `Terminal` runs one program (mostly `runlet`) under pexpect in its own pseudo-terminal and feeds
every byte the terminal receives into a pyte screen, so tests assert on the screen a user
would look at. `Terminal.key` sends what a real xterm sends for a key, including the
application cursor mode (DECCKM) that curses programs switch on. Every terminal a test opens
is closed (force) when it ends; the daemons are stopped by the `fleet` fixture.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pexpect
import pyte
import pytest

from tests.support import REPO, Fleet, broker_is_up  # noqa: F401 - autouse, fails without a broker

TERM = "xterm-256color"
DECCKM = 1 << 5  # pyte keeps private mode N as N << 5; mode 1 is the cursor keys' mode
# A bound on what a user would see at once: a `runlet` process starts (a whole Python, on a
# busy 2-core machine that can take seconds) and the screen shows the effect.
WAIT_SECONDS = 30.0
CURSES_APP = Path(__file__).resolve().parent / "curses_app.py"

# What xterm sends for each key; arrows depend on the cursor keys' mode (normal, application).
_ARROWS = {"up": "A", "down": "B", "right": "C", "left": "D"}
_KEYS = {
    "f2": b"\x1bOQ",
    "f10": b"\x1b[21~",
    "enter": b"\r",
    "ctrl-c": b"\x03",
    "ctrl-]": b"\x1d",
}


def client_env() -> dict[str, str]:
    """The environment of a client process: no RUNLET_* leaking in, a known terminal type."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLET_")}
    env["TERM"] = TERM
    return env


def runlet_argv(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "runlet", "-c", str(config), *args]


class Terminal:
    """One program (mostly `runlet`) in a real pseudo-terminal, with the screen its user sees."""

    def __init__(
        self, argv: list[str], rows: int, cols: int, env: dict[str, str] | None = None
    ) -> None:
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
        self.received = bytearray()
        self.eof = False
        self.child = pexpect.spawn(
            argv[0],
            argv[1:],
            env=client_env() if env is None else env,
            cwd=str(REPO),
            dimensions=(rows, cols),
        )
        self.child.delaybeforesend = None  # keys leave when pressed: timing can be under test

    # -- what the user sees ------------------------------------------------------------------

    def lines(self) -> list[str]:
        """The screen, one string per row, trailing blanks removed."""
        return [str(line).rstrip() for line in self.screen.display]

    def text(self) -> str:
        return "\n".join(self.lines())

    def reversed_text(self) -> list[str]:
        """The text shown in reverse video (a highlighted cursor), one string per row."""
        rows = []
        for y in range(self.screen.lines):
            row = self.screen.buffer[y]
            text = "".join(row[x].data for x in range(self.screen.columns) if row[x].reverse)
            if text.strip():
                rows.append(text.strip())
        return rows

    def pump(self, timeout: float = 0.05) -> None:
        """Move what the terminal received so far onto the screen."""
        if self.eof:
            return
        try:
            while True:
                data = self.child.read_nonblocking(65536, timeout)
                self.received += data
                self.stream.feed(data)
                timeout = 0
        except pexpect.TIMEOUT:
            return
        except pexpect.EOF:
            self.eof = True

    def wait_until(
        self, predicate: Callable[[], bool], what: str, timeout: float = WAIT_SECONDS
    ) -> None:
        """Pump output until `predicate` holds; fail showing the screen when it never does."""
        end = time.monotonic() + timeout
        while True:
            self.pump()
            if predicate():
                return
            if self.eof or time.monotonic() > end:
                state = "the program ended" if self.eof else f"timed out after {timeout} s"
                raise AssertionError(f"{state} waiting for {what}; screen:\n{self.text()}")

    def wait_text(self, text: str, timeout: float = WAIT_SECONDS) -> None:
        self.wait_until(lambda: text in self.text(), repr(text), timeout)

    def wait_raw(self, timeout: float = WAIT_SECONDS) -> None:
        """Wait until the program put its terminal in raw mode (echo off): ready for keys."""
        if not self.child.waitnoecho(timeout):
            raise AssertionError(f"the terminal never left cooked mode; screen:\n{self.text()}")

    def wait_exit(self, timeout: float = WAIT_SECONDS) -> int:
        """Wait for the program to end; its exit status (128+N if signal N killed it)."""
        end = time.monotonic() + timeout
        while not self.eof:
            if time.monotonic() > end:
                raise AssertionError(f"still running after {timeout} s; screen:\n{self.text()}")
            self.pump(0.1)
        while self.child.isalive():  # the terminal's end can come a moment before the process's
            if time.monotonic() > end:
                raise AssertionError(
                    f"its terminal closed, but it still runs after {timeout} s; screen:\n"
                    f"{self.text()}"
                )
            time.sleep(0.05)
        self.child.close()
        if self.child.signalstatus is not None:
            return 128 + int(self.child.signalstatus)
        return int(self.child.exitstatus)

    # -- what the user does ------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.child.send(data)

    def key(self, name: str) -> None:
        """Press a key as xterm would send it in the terminal's current mode."""
        if name in _ARROWS:
            self.pump()
            lead = b"\x1bO" if DECCKM in self.screen.mode else b"\x1b["
            self.send(lead + _ARROWS[name].encode())
        else:
            self.send(_KEYS[name])

    def detach(self, pause: float = 0.6) -> None:
        """Press the detach key alone: nothing else typed for a moment after it."""
        self.key("ctrl-]")
        time.sleep(pause)  # the rule under test is "a lone press, then a pause"

    def resize(self, rows: int, cols: int) -> None:
        """Resize the window, as a terminal emulator does (the kernel sends SIGWINCH)."""
        self.pump()
        self.screen.resize(rows, cols)
        self.child.setwinsize(rows, cols)

    def close(self) -> None:
        """End the program if it still runs (SIGHUP, then harder) and close the terminal."""
        self.child.close(force=True)


class Terminals:
    """Opens programs in new pseudo-terminals and closes every one of them at the end."""

    def __init__(self) -> None:
        self.opened: list[Terminal] = []

    def __call__(self, config: Path, *args: str, rows: int = 24, cols: int = 80) -> Terminal:
        """`runlet -c CONFIG ARGS...` in a new terminal of `rows` x `cols`."""
        return self.program(runlet_argv(config, *args), rows=rows, cols=cols)

    def program(
        self,
        argv: list[str],
        *,
        rows: int = 24,
        cols: int = 80,
        env: dict[str, str] | None = None,
    ) -> Terminal:
        """Any program (a shell around runlet, say) in a new terminal; `env` replaces the
        usual client environment (a device with a HOME of its own, say)."""
        term = Terminal(argv, rows, cols, env)
        self.opened.append(term)
        return term

    def close(self) -> None:
        for term in self.opened:
            term.close()


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    """A fresh user; daemons started from it see TERM=xterm-256color unless a test says not."""
    monkeypatch.setenv("TERM", TERM)
    f = Fleet(tmp_path)
    try:
        yield f
    finally:
        f.close()


@pytest.fixture
def terminal() -> Iterator[Terminals]:
    """`terminal(CONFIG, ARGS...)` opens `runlet` in a new pseudo-terminal; all closed after."""
    terminals = Terminals()
    try:
        yield terminals
    finally:
        terminals.close()


def runlet(config: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run a non-interactive `runlet` command (no terminal) to its end."""
    try:
        return subprocess.run(
            runlet_argv(config, *args),
            env=client_env(),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"`runlet {' '.join(args)}` still running after {timeout} s; its output so far:"
            f" {exc.stdout!r} {exc.stderr!r}"
        ) from None
