"""The PTY adapter: real children in real pseudo-terminals, exit statuses, signals, errors."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from runlet.adapters.ptys import DEFAULT_TERM, Pty, posix, spawn, windows
from runlet.errors import ClosedError, SpawnFailed
from runlet.protocol.states import ExitStatus

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX backend only")

DEADLINE = 10.0  # seconds; generous for a loaded 2-core CI machine


@pytest.fixture
def start() -> Iterator[Callable[..., Pty]]:
    """spawn(), with every PTY closed (child killed and reaped) when the test ends."""
    started: list[Pty] = []

    def _start(
        *argv: str,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        rows: int = 24,
        cols: int = 80,
    ) -> Pty:
        pty = spawn(argv, env=env, cwd=cwd, rows=rows, cols=cols)
        started.append(pty)
        return pty

    yield _start
    for pty in started:
        pty.close()


def read_until(pty: Pty, done: Callable[[bytes], bool]) -> bytes:
    """Read until `done(output)` holds or EOF, waiting on the fd with select."""
    output = b""
    deadline = time.monotonic() + DEADLINE
    while not done(output):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"timed out; output so far: {output!r}"
        readable, _, _ = select.select([pty.fd], [], [], remaining)
        if not readable:
            continue
        try:
            chunk = pty.read()
        except BlockingIOError:
            continue
        if not chunk:
            break
        output += chunk
    return output


def read_to_eof(pty: Pty) -> bytes:
    return read_until(pty, lambda _: False)


def process_gone(pid: int) -> bool:
    """True when `pid` no longer runs (absent, or a zombie nobody has reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        select.select([], [], [], 0.01)


def test_output_then_exit_code(start: Callable[..., Pty]) -> None:
    """Output is read up to EOF and the exit code comes back as code and shell status."""
    pty = start("sh", "-c", "printf hello; exit 3")
    assert read_to_eof(pty) == b"hello"
    status = pty.wait(DEADLINE)
    assert status == ExitStatus(code=3, signal=None)
    assert status.shell_status() == 3
    assert pty.read() == b""  # EOF stays EOF


def test_killed_by_signal(start: Callable[..., Pty]) -> None:
    """A child killed by SIGTERM reports signal 15 and shell status 143."""
    pty = start("sh", "-c", "kill -TERM $$")
    read_to_eof(pty)
    status = pty.wait(DEADLINE)
    assert status == ExitStatus(code=None, signal=signal.SIGTERM)
    assert status.shell_status() == 143


def test_poll_is_none_while_running_and_stable_after(start: Callable[..., Pty]) -> None:
    """poll() and a short wait() say None while the child runs, then keep the same status."""
    pty = start("sh", "-c", "read line; exit 7")
    assert pty.poll() is None
    assert pty.wait(timeout=0.05) is None
    pty.write(b"go\r")
    assert pty.wait(DEADLINE) == ExitStatus(code=7, signal=None)
    assert pty.poll() == ExitStatus(code=7, signal=None)
    assert pty.wait(0) == ExitStatus(code=7, signal=None)


def test_wait_in_a_thread_while_polling(start: Callable[..., Pty]) -> None:
    """A thread blocked in wait() and a poller agree on the status; neither loses it."""
    pty = start("sh", "-c", "read line; exit 5")
    waited: list[ExitStatus | None] = []
    waiter = threading.Thread(target=lambda: waited.append(pty.wait()))
    waiter.start()
    try:
        pty.write(b"go\r")
        wait_for(lambda: pty.poll() is not None)
    finally:
        pty.signal(signal.SIGKILL)  # never leave the thread blocked if the test fails
        waiter.join(DEADLINE)
    assert waited == [ExitStatus(code=5, signal=None)]
    assert pty.poll() == ExitStatus(code=5, signal=None)


def test_echo_through_cat(start: Callable[..., Pty]) -> None:
    """Bytes written reach the child and come back (terminal echo, then cat's copy)."""
    pty = start("cat")
    assert pty.write(b"abc\r") == 4
    output = read_until(pty, lambda out: out.count(b"abc") >= 2)
    assert output == b"abc\r\nabc\r\n"


def test_resize_is_seen_by_the_child(start: Callable[..., Pty]) -> None:
    """After resize(40, 100) the child's `stty size` prints "40 100"."""
    pty = start("sh", "-c", "stty size; read line; stty size", rows=24, cols=80)
    assert b"24 80" in read_until(pty, lambda out: b"24 80" in out)
    pty.resize(40, 100)
    pty.write(b"\r")  # the child runs the second stty only after this
    assert b"40 100" in read_until(pty, lambda out: b"40 100" in out)


@pytest.mark.parametrize(("rows", "cols"), [(0, 80), (24, 0), (65536, 80), (-1, -1)])
def test_bad_sizes_are_refused(start: Callable[..., Pty], rows: int, cols: int) -> None:
    """Sizes a winsize cannot hold are a ValueError, both at spawn and on resize."""
    with pytest.raises(ValueError, match="must be between"):
        start("true", rows=rows, cols=cols)
    pty = start("true")
    with pytest.raises(ValueError, match="must be between"):
        pty.resize(rows, cols)


def test_signal_reaches_the_whole_process_group(start: Callable[..., Pty]) -> None:
    """signal() kills the child's grandchild too, not only the child."""
    # The grandchild ignores SIGHUP, so the hangup when its parent dies cannot kill it:
    # only the SIGTERM sent to the group can.
    pty = start("sh", "-c", "trap '' HUP; sleep 1000 & echo $!; wait")
    grandchild = int(read_until(pty, lambda out: out.endswith(b"\n")))
    try:
        assert not process_gone(grandchild)
        pty.signal(signal.SIGTERM)
        assert pty.wait(DEADLINE) == ExitStatus(code=None, signal=signal.SIGTERM)
        wait_for(lambda: process_gone(grandchild))
    finally:
        if not process_gone(grandchild):  # the test failed: leave no stray process behind
            os.kill(grandchild, signal.SIGKILL)


def test_signal_after_reap_does_nothing(start: Callable[..., Pty]) -> None:
    """Once reaped, signal() is a no-op: the pid may already belong to someone else."""
    pty = start("true")
    read_to_eof(pty)
    assert pty.wait(DEADLINE) == ExitStatus(code=0, signal=None)
    pty.signal(signal.SIGKILL)
    assert pty.poll() == ExitStatus(code=0, signal=None)


def test_command_not_found() -> None:
    """An unknown command is SpawnFailed naming it, with the OSError as the cause."""
    with pytest.raises(SpawnFailed, match=r"runlet-no-such-command.*command not found") as info:
        spawn(["runlet-no-such-command"])
    assert isinstance(info.value.__cause__, FileNotFoundError)
    assert info.value.job_id is None


def test_command_not_found_in_the_jobs_path(tmp_path: Path) -> None:
    """The command is looked up in the job's PATH, not ours."""
    with pytest.raises(SpawnFailed, match="command not found"):
        spawn(["sh", "-c", "true"], env={"PATH": str(tmp_path)})


def test_not_executable(tmp_path: Path) -> None:
    """A file without the execute bit is SpawnFailed saying so."""
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    with pytest.raises(SpawnFailed, match=r"script.*not executable") as info:
        spawn([str(script)])
    assert isinstance(info.value.__cause__, PermissionError)


def test_directory_as_command(tmp_path: Path) -> None:
    """A directory given as the command is SpawnFailed."""
    with pytest.raises(SpawnFailed, match="Is a directory"):
        spawn([str(tmp_path)])


def test_exec_failure_after_fork(tmp_path: Path) -> None:
    """A file exec refuses (not a program at all) is SpawnFailed from the child's OSError."""
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x7fELF\x00garbage")
    junk.chmod(0o755)
    with pytest.raises(SpawnFailed, match=r"junk.*Exec format error") as info:
        spawn([str(junk)])
    assert isinstance(info.value.__cause__, OSError)


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_bad_cwd(tmp_path: Path, kind: str) -> None:
    """A missing or non-directory cwd is SpawnFailed naming the directory."""
    cwd = tmp_path / "nowhere"
    if kind == "file":
        cwd.write_text("")
    with pytest.raises(SpawnFailed, match=r"working directory.*nowhere") as info:
        spawn(["true"], cwd=str(cwd))
    assert isinstance(info.value.__cause__, OSError)


def test_cwd_failing_in_the_child_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cwd that vanishes before the child enters it is SpawnFailed, not a stray child."""
    monkeypatch.setattr(posix, "_check_cwd", lambda program, cwd: None)  # skip the early check
    with pytest.raises(SpawnFailed, match=r"working directory.*gone") as info:
        spawn(["true"], cwd=str(tmp_path / "gone"))
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_relative_command_is_found_in_cwd(start: Callable[..., Pty], tmp_path: Path) -> None:
    """A relative command (./prog) is resolved against the job's cwd, where it runs."""
    prog = tmp_path / "prog"
    prog.write_text("#!/bin/sh\npwd\n")
    prog.chmod(0o755)
    pty = start("./prog", cwd=str(tmp_path))
    assert read_to_eof(pty).strip() == str(tmp_path).encode()


@pytest.mark.parametrize(
    ("argv", "env", "problem"),
    [
        ([], None, "command is empty"),
        ([""], None, "command is empty"),
        (["echo", "a\0b"], None, "NUL byte"),
        (["true"], {"A=B": "x"}, "bad environment variable"),
        (["true"], {"": "x"}, "bad environment variable"),
        (["true"], {"A": "x\0y"}, "bad environment variable"),
    ],
)
def test_arguments_exec_cannot_pass(
    argv: list[str], env: dict[str, str] | None, problem: str
) -> None:
    """What exec would refuse is refused before forking, as SpawnFailed."""
    with pytest.raises(SpawnFailed, match=problem):
        spawn(argv, env=env)


def test_one_string_is_not_an_argv() -> None:
    """spawn("ls -l") is a TypeError, not the command "l" with argument "s"."""
    with pytest.raises(TypeError, match="not one string"):
        spawn("ls -l")


def test_term_is_set_unless_given(start: Callable[..., Pty]) -> None:
    """TERM defaults to xterm-256color and a caller's TERM is kept."""
    env = {"PATH": os.environ["PATH"]}
    plain = start("sh", "-c", 'printf %s "$TERM"', env=env)
    assert read_to_eof(plain) == DEFAULT_TERM.encode()
    dumb = start("sh", "-c", 'printf %s "$TERM"', env={**env, "TERM": "dumb"})
    assert read_to_eof(dumb) == b"dumb"


def ignored_signals(pty: Pty) -> int:
    output = read_to_eof(pty)
    line = next(ln for ln in output.splitlines() if ln.startswith(b"SigIgn:"))
    return int(line.split()[1], 16)


def test_child_gets_default_signal_handling(start: Callable[..., Pty]) -> None:
    """The child does not inherit Python's ignored SIGPIPE, so pipelines end normally."""
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN  # Python's own setting
    mask = ignored_signals(start("cat", "/proc/self/status"))
    assert mask & (1 << (signal.SIGPIPE - 1)) == 0


def test_spawn_from_a_thread_while_another_runs(start: Callable[..., Pty]) -> None:
    """Spawning from a non-main thread of a multi-threaded process works and resets signals.

    This also records what CPython says about forking with threads alive: nothing before
    3.12, a DeprecationWarning from 3.12 on (see the runlet.adapters.ptys.posix docstring).
    """
    release = threading.Event()
    bystander = threading.Thread(target=release.wait)
    bystander.start()
    results: list[Pty] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spawner = threading.Thread(target=lambda: results.append(start("cat", "/proc/self/status")))
        spawner.start()
        spawner.join(DEADLINE)
    release.set()
    bystander.join(DEADLINE)
    assert ignored_signals(results[0]) & (1 << (signal.SIGPIPE - 1)) == 0
    fork_warnings = [w for w in caught if "multi-threaded" in str(w.message)]
    assert len(fork_warnings) == (1 if sys.version_info >= (3, 12) else 0)


def test_close_kills_a_live_child_and_is_idempotent(start: Callable[..., Pty]) -> None:
    """close() SIGKILLs and reaps a running child, and a second close() is harmless."""
    pty = start("sleep", "1000")
    pid = pty.pid
    pty.close()
    assert pty.poll() == ExitStatus(code=None, signal=signal.SIGKILL)
    assert process_gone(pid)
    assert pty.fd == -1
    pty.close()
    assert pty.poll() == ExitStatus(code=None, signal=signal.SIGKILL)


def test_close_after_exit_keeps_the_status(start: Callable[..., Pty]) -> None:
    """close() after the child exited keeps its real status instead of a SIGKILL."""
    pty = start("sh", "-c", "exit 4")
    read_to_eof(pty)
    pty.close()
    assert pty.poll() == ExitStatus(code=4, signal=None)


@pytest.mark.parametrize(
    "use",
    [
        lambda pty: pty.read(),
        lambda pty: pty.write(b"x"),
        lambda pty: pty.resize(30, 90),
    ],
    ids=["read", "write", "resize"],
)
def test_io_after_close_is_closed_error(
    start: Callable[..., Pty], use: Callable[[Pty], object]
) -> None:
    """Reading, writing or resizing a closed PTY raises ClosedError."""
    pty = start("true")
    pty.close()
    with pytest.raises(ClosedError):
        use(pty)


def test_write_to_a_child_that_does_not_read_never_blocks(start: Callable[..., Pty]) -> None:
    """Writing a large buffer to a child that never reads is partial, then BlockingIOError."""
    pty = start("sleep", "1000")
    data = b"x" * (1 << 20)
    accepted = 0
    with pytest.raises(BlockingIOError):  # noqa: PT012 - the loop is what must end in it
        for _ in range(1000):
            written = pty.write(data)
            assert 0 < written < len(data)
            accepted += written
    assert accepted < len(data)


def test_read_with_nothing_ready_raises_blocking_io_error(start: Callable[..., Pty]) -> None:
    """read() on a quiet child raises BlockingIOError instead of blocking."""
    pty = start("sleep", "1000")
    with pytest.raises(BlockingIOError):
        pty.read()


def test_exit_status_needs_exactly_one_field() -> None:
    """ExitStatus refuses both fields set or neither."""
    with pytest.raises(ValueError, match="exactly one"):
        ExitStatus(code=None, signal=None)
    with pytest.raises(ValueError, match="exactly one"):
        ExitStatus(code=1, signal=9)


def _backends_are_ptys(posix_pty: posix.PosixPty, windows_pty: windows.WindowsPty) -> list[Pty]:
    return [posix_pty, windows_pty]  # mypy checks each backend against the interface here


def test_the_windows_backend_imports_here_without_pywinpty() -> None:
    """The untested Windows backend imports on POSIX and has every method of the interface."""
    interface = {name for name in vars(Pty) if not name.startswith("_")}
    assert interface >= {"pid", "fd", "read", "write", "resize", "signal", "poll", "wait", "close"}
    assert interface <= set(vars(windows.WindowsPty))
    assert interface <= set(vars(posix.PosixPty))


def test_spawn_loads_only_this_platforms_backend() -> None:
    """Importing the adapter loads no backend; spawning on POSIX loads the POSIX one only."""
    code = (
        "import sys; from runlet.adapters import ptys\n"
        "before = {m for m in sys.modules if m.startswith('runlet.adapters.ptys.')}\n"
        "ptys.spawn(['true']).close()\n"
        "after = {m for m in sys.modules if m.startswith('runlet.adapters.ptys.')}\n"
        "print(sorted(before), sorted(after))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[2],  # this checkout's runlet
        capture_output=True,
        text=True,
        check=True,
        timeout=DEADLINE,
    )
    assert result.stdout.split("\n")[0] == "[] ['runlet.adapters.ptys.posix']"


@pytest.mark.parametrize("cwd", [False, True], ids=["spawned", "forked"])
def test_the_terminal_is_the_jobs_controlling_terminal(
    start: Callable[..., Pty], tmp_path: Path, cwd: bool
) -> None:
    """The job leads its own session on the PTY, so Ctrl-C typed into it interrupts the job,
    however it was started (posix_spawn, or ptyprocess's fork when it has a cwd)."""
    pty = start("sh", "-c", "ps -o sid=,tty= -p $$; exec cat", cwd=str(tmp_path) if cwd else None)
    first = read_until(pty, lambda out: b"\n" in out)
    sid, tty = first.split()[:2]
    assert int(sid) == pty.pid
    assert tty.startswith(b"pts/")
    pty.write(b"\x03")
    read_to_eof(pty)
    assert pty.wait(DEADLINE) == ExitStatus(code=None, signal=signal.SIGINT)


def test_no_fd_of_the_daemon_reaches_the_job(start: Callable[..., Pty]) -> None:
    """An fd we hold that is not close-on-exec is closed in the job before it runs."""
    leaky = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(leaky, True)
    try:
        pty = start("sh", "-c", "ls /proc/$$/fd")
        fds = {int(fd) for fd in read_to_eof(pty).split() if fd.isdigit()}
    finally:
        os.close(leaky)
    assert {0, 1, 2} <= fds
    assert leaky not in fds


def test_a_platform_without_posix_spawn_setsid_forks_instead(
    start: Callable[..., Pty], monkeypatch: pytest.MonkeyPatch
) -> None:
    """posix_spawn refusing setsid (an old libc) turns the fast way off: jobs still start."""
    monkeypatch.setattr(posix, "_in_place", [True])

    def refuse(*args: object, **kwargs: object) -> int:
        raise NotImplementedError("setsid is not supported")

    monkeypatch.setattr(os, "posix_spawn", refuse)
    pty = start("sh", "-c", "echo forked")
    assert b"forked" in read_to_eof(pty)
    assert posix._in_place == [False]
