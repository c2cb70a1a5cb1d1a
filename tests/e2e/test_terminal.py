"""Whole `runlet` processes driven through real terminals: what a user types and sees.

The daemon is a real `runlet start` process (edge-2); the clients are real `runlet run`,
`attach`, `send` and `cancel` processes with their own configs (edge-1, edge-3, ...), so
every keystroke and every byte of output crosses RabbitMQ. Keys are sent as xterm sends
them: a curses program switches the cursor keys to application mode, so Down is ESC O B.
"""

from __future__ import annotations

import shlex
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest

from tests.e2e.conftest import CURSES_APP, Terminal, Terminals, runlet, runlet_argv
from tests.support import Fleet

# Each test starts several whole Python processes (a daemon and clients): on a busy 2-core
# machine that alone can take a minute, more than pytest's default 120 s leaves for the waits.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CURSES = (sys.executable, str(CURSES_APP))
SEND_SECONDS = 60.0  # a bound: `runlet send` works as soon as the job runs


def menu_cursor(term: Terminal) -> list[str]:
    """The menu rows the curses app marks with its cursor (">") on the screen."""
    return [line for line in term.lines() if line.startswith("> item")]


def wait_cursor(term: Terminal, item: str) -> None:
    term.wait_until(lambda: menu_cursor(term) == [item], f"the cursor on {item!r}")


def echoed_ctrl_brackets(term: Terminal, count: int) -> bool:
    """True when the job has echoed exactly `count` Ctrl-] bytes, one per line."""
    return term.lines().count(r"b'\x1d'") == count


def run_on_edge_2(
    terminal: Terminals, client: Path, *argv: str, rows: int = 24, cols: int = 80
) -> Terminal:
    """`runlet run --on edge-2 -- ARGV` in a new terminal."""
    return terminal(client, "run", "--on", "edge-2", "--", *argv, rows=rows, cols=cols)


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


def test_curses_program_through_a_real_terminal(fleet: Fleet, terminal: Terminals) -> None:
    """Arrows, F2, a window resize and F10 reach a remote curses app; its status comes back."""
    fleet.start_process("edge-2")
    client = fleet.config_file("edge-1", role="client")
    term = run_on_edge_2(terminal, client, *CURSES, rows=24, cols=80)
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


def test_late_join_sees_the_current_screen(fleet: Fleet, terminal: Terminals) -> None:
    """A late `attach` shows the screen as it is, types live, detaches; the job goes on."""
    fleet.start_process("edge-2")
    starter = fleet.config_file("edge-1", role="client")
    job_id = start_detached(starter, *CURSES)
    # the app has drawn its menu, so it reads keys (in keypad mode) from now on: a key typed
    # before that would meet a terminal curses has not set up yet
    first_look = terminal(starter, "attach", "--read-only", job_id)
    wait_cursor(first_look, "> item 1 alpha")
    first_look.detach()
    assert first_look.wait_exit() == 0
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

    watcher = terminal(
        fleet.config_file("edge-4", role="client"), "attach", "--read-only", job_id, cols=120
    )
    wait_cursor(watcher, "> item 3 charlie")
    send_when_running(starter, job_id, r"\e[21~")  # F10
    assert watcher.wait_exit() == 7
    assert f"job {job_id} on edge-2 exited with status 7" in watcher.text()


def test_read_only_viewer_cannot_type(fleet: Fleet, terminal: Terminals) -> None:
    """Keys typed into `attach --read-only` never reach the job; its output still shows."""
    fleet.start_process("edge-2")
    job_id = start_detached(
        fleet.config_file("edge-1", role="client"),
        "sh",
        "-c",
        'echo ready; read x; echo "got=$x"; read y; echo "then=$y"',
    )
    watcher = terminal(fleet.config_file("edge-3", role="client"), "attach", "--read-only", job_id)
    typist = terminal(fleet.config_file("edge-4", role="client"), "attach", job_id)
    watcher.wait_text("ready")
    typist.wait_text("ready")

    watcher.send(b"secret\r")
    typist.send(b"typed\r")  # had the watcher's line gone in, it would show in got= or then=
    for term in (watcher, typist):
        term.wait_text("got=typed")
    typist.send(b"done\r")
    for term in (watcher, typist):
        term.wait_text("then=done")
        assert term.wait_exit() == 0
        assert "got=typed" in term.lines()
        assert "then=done" in term.lines()
    assert "secret" not in typist.text()  # the job's terminal never echoed it


def test_three_viewers_type_in_turn(fleet: Fleet, terminal: Terminals) -> None:
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


def test_ctrl_c_goes_to_the_job(fleet: Fleet, terminal: Terminals) -> None:
    """Ctrl-C in `runlet run` interrupts the remote job, not runlet: the job's trap runs."""
    fleet.start_process("edge-2")
    script = 'trap "echo caught INT; exit 5" INT; echo ready; while :; do sleep 0.1; done'
    term = run_on_edge_2(terminal, fleet.config_file("edge-1", role="client"), "sh", "-c", script)
    term.wait_text("ready")
    term.key("ctrl-c")
    term.wait_text("caught INT")
    assert term.wait_exit() == 5
    assert "exited with status 5" in term.text()


def test_detach_key_twice_sends_it_once(fleet: Fleet, terminal: Terminals) -> None:
    """Ctrl-] pressed twice reaches the job as one Ctrl-] byte, and runlet stays attached."""
    fleet.start_process("edge-2")
    reader = (
        "import sys, tty; tty.setraw(0); sys.stdout.write('ready\\r\\n'); sys.stdout.flush(); "
        "sys.stdout.write(repr(sys.stdin.buffer.read(2)) + '\\r\\n')"
    )
    term = run_on_edge_2(
        terminal, fleet.config_file("edge-1", role="client"), sys.executable, "-c", reader
    )
    term.wait_text("ready")
    term.send(b"\x1d\x1d")
    term.send(b"x")  # a marker: the job reads two bytes, so a second Ctrl-] would show
    term.wait_text(r"b'\x1dx'")
    assert term.wait_exit() == 0


def test_cancel_escalates_to_sigkill(fleet: Fleet, terminal: Terminals) -> None:
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
    with ThreadPoolExecutor(2) as pool:  # both at once: only the stubborn one waits the grace
        futures = {job_id: pool.submit(runlet, client, "cancel", job_id) for job_id in watchers}
        done = {job_id: future.result() for job_id, future in futures.items()}
    assert time.monotonic() - started >= 1.0
    for job_id, how in ((stubborn, "SIGKILL"), (polite, "SIGTERM")):
        assert done[job_id].returncode == 0, done[job_id].stderr
        assert f"job {job_id} cancelled (ended by {how})" in done[job_id].stderr
        assert watchers[job_id].wait_exit() == 128 + getattr(signal, how)
        shown = f"[runlet] job {job_id} on edge-2 cancelled (ended by {how})"
        assert shown in watchers[job_id].lines()


# -- regressions: each of these once failed --


def test_read_only_viewer_swallows_keystrokes(fleet: Fleet, terminal: Terminals) -> None:
    """Keys typed into a read-only viewer are neither echoed nor left for the shell after it."""
    fleet.start_process("edge-2")
    starter = fleet.config_file("edge-1", role="client")
    job_id = start_detached(starter, "sh", "-c", "echo ready; read x; echo got=$x")
    attach = shlex.join(
        runlet_argv(fleet.config_file("edge-3", role="client"), "attach", "--read-only", job_id)
    )
    # the user's shell: after the viewer, it reads the next line the user types
    shell = terminal.program(
        ["sh", "-c", f'{attach}; echo "viewer ended"; read line; echo "shell read [$line]"']
    )
    shell.wait_text("ready")
    shell.send(b"whoami\r")
    send_when_running(starter, job_id, r"typed\r")
    shell.wait_text("viewer ended")
    shell.send(b"next\r")
    shell.wait_text("shell read [")
    assert "shell read [next]" in shell.lines()
    assert "whoami" not in shell.text()


def test_read_only_viewer_detaches_with_the_detach_key(fleet: Fleet, terminal: Terminals) -> None:
    """Ctrl-] alone detaches a read-only viewer too, as `runlet --help` says for attach."""
    fleet.start_process("edge-2")
    client = fleet.config_file("edge-1", role="client")
    job_id = start_detached(client, "sh", "-c", "echo ready; while :; do sleep 0.1; done")
    watcher = terminal(client, "attach", "--read-only", job_id)
    watcher.wait_text("ready")
    watcher.detach()
    # no time limit of its own: a viewer that does not detach never ends (the job runs on)
    assert watcher.wait_exit() == 0
    assert f"detached; job {job_id} goes on" in watcher.text()


def test_lone_detach_key_detaches_while_output_streams(fleet: Fleet, terminal: Terminals) -> None:
    """A lone Ctrl-] then a pause detaches even while the job prints without a break."""
    fleet.start_process("edge-2")
    ticking = "while :; do echo tick; sleep 0.05; done"
    term = run_on_edge_2(terminal, fleet.config_file("edge-1", role="client"), "sh", "-c", ticking)
    term.wait_text("tick")
    term.detach()
    # no time limit of its own: a viewer that does not detach never ends (the job ticks on)
    assert term.wait_exit() == 0
    assert "detached; job" in term.text()


def test_quick_double_press_never_detaches(fleet: Fleet, terminal: Terminals) -> None:
    """Ctrl-] twice 0.1 s apart always sends one Ctrl-], whenever it comes after output."""
    fleet.start_process("edge-2")
    echo = (
        "import os, sys, tty; tty.setraw(0); sys.stdout.write('ready\\r\\n'); sys.stdout.flush()\n"
        "while True: sys.stdout.write(repr(os.read(0, 16)) + '\\r\\n'); sys.stdout.flush()"
    )
    term = run_on_edge_2(
        terminal, fleet.config_file("edge-1", role="client"), sys.executable, "-c", echo
    )
    term.wait_text("ready")
    # the pauses are the scenario: a fast double press, at several moments after output
    for count, delay in enumerate((0.0, 0.03, 0.06, 0.09, 0.12, 0.15, 0.18, 0.21, 0.24), 1):
        time.sleep(delay)
        term.key("ctrl-]")
        pressed = time.monotonic()
        time.sleep(0.1)
        term.key("ctrl-]")
        # how far apart the presses really were: a test process held up by a busy machine
        # for more than the lone-key pause (0.4 s) pressed twice slowly, not quickly
        apart = time.monotonic() - pressed
        term.wait_until(
            partial(echoed_ctrl_brackets, term, count),
            f"Ctrl-] number {count} echoed by the job (the presses were {apart:.2f} s apart)",
        )


def test_job_gets_the_terminal_type_it_runs_in(
    fleet: Fleet, terminal: Terminals, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job's TERM is that of the terminal running `runlet run`, not the daemon's own."""
    monkeypatch.setenv("TERM", "vt100")  # the environment the daemon was started from
    fleet.start_process("edge-2")
    client = fleet.config_file("edge-1", role="client")
    term = run_on_edge_2(terminal, client, "sh", "-c", "echo term=$TERM")  # TERM=xterm-256color
    assert term.wait_exit() == 0
    assert "term=xterm-256color" in term.lines()
