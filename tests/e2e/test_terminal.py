"""Whole `runlet` processes driven through real terminals: what a user types and sees.

The daemon is a real `runlet start` process (edge-2); the clients are real `runlet run`,
`attach`, `send` and `cancel` processes with their own configs (edge-1, edge-3, ...), so
every keystroke and every byte of output crosses RabbitMQ. Keys are sent as xterm sends
them: a curses program switches the cursor keys to application mode, so Down is ESC O B.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import CURSES_APP, OpenTerminal, Terminal, runlet
from tests.support import Fleet

pytestmark = pytest.mark.e2e

CURSES = (sys.executable, str(CURSES_APP))
SEND_SECONDS = 15.0


def menu_cursor(term: Terminal) -> list[str]:
    """The menu rows the curses app marks with its cursor (">") on the screen."""
    return [line for line in term.lines() if line.startswith("> item")]


def wait_cursor(term: Terminal, item: str) -> None:
    term.wait_until(lambda: menu_cursor(term) == [item], f"the cursor on {item!r}")


def start_detached(client: Path, *argv: str) -> str:
    """`runlet run --detach --on edge-2 -- ARGV`: the job id it printed."""
    done = runlet(client, "run", "--detach", "--on", "edge-2", "--", *argv)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    assert len(job_id) == 32, done.stdout
    return job_id


def send_when_running(client: Path, job_id: str, text: str) -> None:
    """`runlet send`, retried while the job is not running yet (exit 68); then it must work."""
    end = time.monotonic() + SEND_SECONDS
    while True:
        done = runlet(client, "send", job_id, text)
        if done.returncode == 0:
            return
        assert done.returncode == 68, done.stderr
        assert time.monotonic() < end, f"job {job_id} never took input: {done.stderr}"


def test_curses_program_through_a_real_terminal(fleet: Fleet, terminal: OpenTerminal) -> None:
    """Arrows, F2, a window resize and F10 reach a remote curses app; its status comes back."""
    fleet.start_process("edge-2")
    client = fleet.config_file("edge-1", role="client")
    term = terminal(client, "run", "--on", "edge-2", "--", *CURSES, rows=24, cols=80)
    term.wait_text("size=24x80")
    assert menu_cursor(term) == ["> item 1 alpha"]

    term.key("down")
    term.key("down")
    term.key("f2")
    term.wait_text("F2 pressed")
    wait_cursor(term, "> item 3 charlie")
    assert term.reversed_text() == ["> item 3 charlie"]

    term.resize(30, 100)
    term.wait_text("size=30x100")
    assert menu_cursor(term) == ["> item 3 charlie"]

    term.key("f10")
    assert term.wait_exit() == 7


def test_late_join_sees_the_current_screen(fleet: Fleet, terminal: OpenTerminal) -> None:
    """A late `attach` shows the screen as it is, types live, detaches; the job goes on."""
    fleet.start_process("edge-2")
    starter = fleet.config_file("edge-1", role="client")
    job_id = start_detached(starter, *CURSES)
    send_when_running(starter, job_id, r"\eOB")  # Down, as xterm sends it in keypad mode

    # same size as the detached job (24x80): nothing redraws, so the screen is the replay
    viewer = terminal(fleet.config_file("edge-3", role="client"), "attach", job_id)
    wait_cursor(viewer, "> item 2 bravo")
    assert "size=24x80" in viewer.lines()
    assert viewer.reversed_text() == ["> item 2 bravo"]

    viewer.key("down")
    wait_cursor(viewer, "> item 3 charlie")
    viewer.detach()
    assert viewer.wait_exit() == 0
    assert f"detached; job {job_id} goes on" in viewer.text()

    watcher = terminal(fleet.config_file("edge-4", role="client"), "attach", "--read-only", job_id)
    wait_cursor(watcher, "> item 3 charlie")
    send_when_running(starter, job_id, r"\e[21~")  # F10
    assert watcher.wait_exit() == 7
    assert f"job {job_id} on edge-2 exited with status 7" in watcher.text()


def test_read_only_viewer_cannot_type(fleet: Fleet, terminal: OpenTerminal) -> None:
    """Keys typed into `attach --read-only` never reach the job; its output still shows."""
    fleet.start_process("edge-2")
    job_id = start_detached(
        fleet.config_file("edge-1", role="client"), "sh", "-c", "echo ready; read x; echo got=$x"
    )
    watcher = terminal(fleet.config_file("edge-3", role="client"), "attach", "--read-only", job_id)
    typist = terminal(fleet.config_file("edge-4", role="client"), "attach", job_id)
    watcher.wait_text("ready")
    typist.wait_text("ready")

    watcher.send(b"secret\r")
    typist.send(b"typed\r")
    for term in (watcher, typist):
        term.wait_text("got=typed")
        assert term.wait_exit() == 0
    assert "got=secret" not in watcher.text()
    assert "secret" not in typist.text()  # the job's terminal never echoed it


def test_three_viewers_type_in_turn(fleet: Fleet, terminal: OpenTerminal) -> None:
    """Three viewers on three devices type one line each; every screen shows all, in order."""
    fleet.start_process("edge-2")
    job_id = start_detached(
        fleet.config_file("edge-1", role="client"),
        "sh",
        "-c",
        'for i in 1 2 3; do read x; echo "line $i: $x"; done',
    )
    viewers = [
        terminal(fleet.config_file(node, role="client"), "attach", job_id)
        for node in ("edge-3", "edge-4", "edge-5")
    ]
    for viewer in viewers:
        viewer.wait_raw()  # the job prints nothing until it reads: no other sign of readiness
    words = ("alpha", "bravo", "charlie")
    for number, (typist, word) in enumerate(zip(viewers, words, strict=True), start=1):
        typist.send(f"{word}\r".encode())
        for viewer in viewers:
            viewer.wait_text(f"line {number}: {word}")

    expected = [line for n, w in enumerate(words, start=1) for line in (w, f"line {n}: {w}")]
    for viewer in viewers:
        assert viewer.wait_exit() == 0
        shown = [line for line in viewer.lines() if line and not line.startswith("[runlet]")]
        assert shown == expected


def test_ctrl_c_goes_to_the_job(fleet: Fleet, terminal: OpenTerminal) -> None:
    """Ctrl-C in `runlet run` interrupts the remote job, not runlet: the job's trap runs."""
    fleet.start_process("edge-2")
    script = 'trap "echo caught INT; exit 5" INT; echo ready; while :; do sleep 0.1; done'
    term = terminal(
        fleet.config_file("edge-1", role="client"),
        "run",
        "--on",
        "edge-2",
        "--",
        "sh",
        "-c",
        script,
    )
    term.wait_text("ready")
    term.key("ctrl-c")
    term.wait_text("caught INT")
    assert term.wait_exit() == 5
    assert "exited with status 5" in term.text()


def test_detach_key_twice_sends_it_once(fleet: Fleet, terminal: OpenTerminal) -> None:
    """Ctrl-] pressed twice reaches the job as one Ctrl-] byte, and runlet stays attached."""
    fleet.start_process("edge-2")
    reader = (
        "import sys, tty; tty.setraw(0); sys.stdout.write('ready\\r\\n'); sys.stdout.flush(); "
        "sys.stdout.write(repr(sys.stdin.buffer.read(2)) + '\\r\\n')"
    )
    term = terminal(
        fleet.config_file("edge-1", role="client"),
        "run",
        "--on",
        "edge-2",
        "--",
        sys.executable,
        "-c",
        reader,
    )
    term.wait_text("ready")
    term.send(b"\x1d\x1d")
    term.send(b"x")  # a marker: the job reads two bytes, so a second Ctrl-] would show
    term.wait_text(r"b'\x1dx'")
    assert term.wait_exit() == 0


def test_cancel_escalates_to_sigkill(fleet: Fleet, terminal: OpenTerminal) -> None:
    """`runlet cancel` ends a job that ignores SIGTERM by SIGKILL after the grace, and says so."""
    fleet.start_process("edge-2", grace=1.0)
    client = fleet.config_file("edge-1", role="client")
    stubborn = start_detached(
        client, "sh", "-c", 'trap "" TERM; echo ignoring; while :; do sleep 0.1; done'
    )
    polite = start_detached(client, "sh", "-c", "echo waiting; while :; do sleep 0.1; done")
    watchers = {}
    for job_id, banner in ((stubborn, "ignoring"), (polite, "waiting")):
        watchers[job_id] = terminal(client, "attach", "--read-only", job_id, cols=120)
        watchers[job_id].wait_text(banner)

    started = time.monotonic()
    done = runlet(client, "cancel", stubborn)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started >= 1.0  # the grace was given
    assert f"job {stubborn} cancelled (ended by SIGKILL)" in done.stderr
    assert watchers[stubborn].wait_exit() == 128 + 9
    assert "cancelled (ended by SIGKILL)" in watchers[stubborn].text()

    done = runlet(client, "cancel", polite)
    assert done.returncode == 0, done.stderr
    assert f"job {polite} cancelled (ended by SIGTERM)" in done.stderr
    assert watchers[polite].wait_exit() == 128 + 15
