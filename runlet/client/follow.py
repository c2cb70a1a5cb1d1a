"""Following a job in the user's terminal: output out, keystrokes in, states on stderr.

Used by `runlet run` (attached) and `runlet attach`. The terminal is put in raw mode, so every
key — arrows, F-keys, Ctrl-C — goes to the job, except the detach key (default Ctrl-], twice
to send it). A resize of the local terminal reaches the job. A late joiner first gets a
replay of everything the job printed (so a full-screen program's screen is rebuilt), then live
output, with no gap and no duplicate: chunks are put back in order by sequence number, and a
gap that does not close by itself is filled by asking the node for a replay.

What is not about the terminal — putting chunks in order, which state counts, what a replay
said — is `runlet.client.stream.JobStream`, the core the desktop manager's tabs use too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass

from runlet.client.session import Client, Watch
from runlet.client.stream import JobStream, State
from runlet.client.terminal import DetachScanner, RawMode, terminal_size
from runlet.errors import JobNotFound
from runlet.files import write_all
from runlet.protocol.messages import JobStateChanged
from runlet.protocol.payloads import Control

DETACHED = -1
GAP_REPLAY_SECONDS = 1.0
FINAL_WAIT_SECONDS = 3.0
FIND_SECONDS = 4.0
LONE_KEY_SECONDS = 0.4  # a detach key with nothing after it for this long detaches


@dataclass
class Options:
    """How to follow a job."""

    interactive: bool = True  # use the local terminal: raw mode, detach key, resize
    read_only: bool = False  # keys are swallowed, never sent (Ctrl-C and the detach key detach)
    replay: bool = False  # ask for the output so far (attach)
    detach_key: bytes = b"\x1d"
    deadline: float | None = None  # give up waiting for the job to start at this unix time
    quiet: bool = False  # no state lines on stderr
    until_replayed: bool = False  # stop once the replay is shown (logs without --follow)
    out_fd: int = 1
    in_fd: int = 0


class Follower:
    """One job followed in this terminal until it ends or the user detaches."""

    def __init__(self, client: Client, job_id: str, watch: Watch, options: Options) -> None:
        self.client = client
        self.job_id = job_id
        self.watch = watch
        self.opts = options
        self.stream = JobStream(client.key, job_id)
        self.reasm = self.stream.reasm
        self.stream.found = not options.replay
        self.final: State | None = None
        self.final_at = 0.0
        self.running = asyncio.Event()
        self.outbox: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
        self.detached = False
        self.pressed_at: float | None = None  # when a lone detach key was pressed
        self.stdin_open = options.interactive
        self.raw = RawMode(options.in_fd) if options.interactive else None

    def say(self, text: str) -> None:
        if not self.opts.quiet:
            end = "\r\n" if self.raw is not None and self.raw.active else "\n"
            sys.stderr.write(f"[runlet] {text}{end}")
            sys.stderr.flush()

    async def run(self) -> int:
        """Follow until the end; returns the job's exit status, or DETACHED."""
        loop = asyncio.get_running_loop()
        sender = loop.create_task(self._send_loop())
        try:
            with self.raw if self.raw is not None else contextlib.nullcontext():
                self._hook_terminal(loop)
                if self.opts.replay:
                    await self.client.request_replay(self.job_id, self.watch)
                    await self._queue_resize()
                return await self._loop()
        finally:
            self._unhook_terminal(loop)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    async def _loop(self) -> int:
        started = time.monotonic()
        while True:
            try:
                msg = await asyncio.wait_for(self.watch.inbox.get(), self._poll_seconds())
            except TimeoutError:
                msg = None
            if msg is not None:
                self._take(msg)
            if self._lone_detach_key():
                self.detached = True
            if self.detached:
                return DETACHED
            done = await self._check(started)
            if done is not None:
                return done

    def _lone_detach_key(self) -> bool:
        """A detach key pressed alone, with nothing typed after it for a moment, detaches."""
        if self.pressed_at is None or time.monotonic() - self.pressed_at < LONE_KEY_SECONDS:
            return False
        self.pressed_at = None
        return self.scanner.idle()

    def _poll_seconds(self) -> float:
        if self.pressed_at is None:
            return 0.25
        return max(0.01, self.pressed_at + LONE_KEY_SECONDS - time.monotonic())

    @property
    def state(self) -> str:
        return "submitted" if self.stream.state is None else self.stream.state.state

    @property
    def found(self) -> bool:
        return self.stream.found

    def _take(self, msg: object) -> None:
        pieces, state = self.stream.take(msg)
        for _, piece in pieces:
            write_all(self.opts.out_fd, piece)
        if state is None:
            return
        if state.state == "running":
            self.running.set()
        if isinstance(msg, JobStateChanged) and state.state in ("running", "queued"):
            self.say(f"job {self.job_id} {state.state} on {state.node}")  # a replay says nothing
        if state.ended and self.final is None:
            self.final = state
            self.final_at = time.monotonic()

    async def _check(self, started: float) -> int | None:
        if not self.found and time.monotonic() - started > FIND_SECONDS:
            raise JobNotFound(f"no online node holds job {self.job_id}", job_id=self.job_id)
        replayed_to = self.stream.replayed_to
        replayed = replayed_to is not None and self.reasm.next_seq >= replayed_to
        if self.opts.until_replayed and replayed and self.final is None:
            return 0
        if self.final is None:
            if (
                self.opts.deadline is not None
                and self.state == "submitted"
                and time.time() > self.opts.deadline
            ):
                self.say(f"job {self.job_id} did not start before its deadline: expired")
                return 75
            if self.reasm.gap_age() > GAP_REPLAY_SECONDS:
                self.reasm.gap_since = time.monotonic()
                await self.client.request_replay(self.job_id, self.watch, self.reasm.next_seq)
            return None
        waited = time.monotonic() - self.final_at
        needs_output = self.running.is_set() or self.reasm.next_seq > 0  # a FINAL chunk will come
        if self.reasm.finished or not needs_output or waited > 2 * FINAL_WAIT_SECONDS:
            self._report(self.final)
            status = self.final.status()
            assert status is not None  # an ended state has one
            return status
        if waited > FINAL_WAIT_SECONDS / 3 and self.reasm.gap_since is None:
            self.reasm.gap_since = time.monotonic() - GAP_REPLAY_SECONDS - 1
        if self.reasm.gap_age() > GAP_REPLAY_SECONDS:
            self.reasm.gap_since = time.monotonic()
            await self.client.request_replay(self.job_id, self.watch, self.reasm.next_seq)
        return None

    def _report(self, final: State) -> None:
        match final.state:
            case "exited":
                text = f"exited with status {final.exit_code}"
            case "killed":
                text = f"killed by signal {final.signal}"
            case _:
                text = final.state.replace("_", " ")
        detail = f" ({final.detail})" if final.detail else ""
        self.say(f"job {self.job_id} on {final.node} {text}{detail}")

    # -- the local terminal ------------------------------------------------------------------

    def _hook_terminal(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self.opts.interactive:
            return
        self.scanner = DetachScanner(self.opts.detach_key)
        try:
            loop.add_reader(self.opts.in_fd, self._on_stdin)
        except (PermissionError, OSError, ValueError):
            self.stdin_open = False  # a regular file or closed stdin: nothing to forward live
        if os.isatty(self.opts.in_fd):
            loop.add_signal_handler(signal.SIGWINCH, lambda: loop.create_task(self._queue_resize()))

    def _unhook_terminal(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self.opts.interactive:
            return
        if self.stdin_open:
            loop.remove_reader(self.opts.in_fd)
        with contextlib.suppress(ValueError, RuntimeError):
            loop.remove_signal_handler(signal.SIGWINCH)

    def _on_stdin(self) -> None:
        try:
            data = os.read(self.opts.in_fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.opts.in_fd)
            self.stdin_open = False
            return
        if self.raw is None or not self.raw.active:
            forward, detach = data, False  # a pipe: every byte is for the job
        else:
            forward, detach = self.scanner.feed(data)
            self.pressed_at = time.monotonic() if self.scanner.pending else None
        if self.opts.read_only:
            detach = detach or b"\x03" in forward  # a watcher's Ctrl-C leaves; nothing is sent
            forward = b""
        if forward:
            self.outbox.put_nowait(("input", forward))
        if detach:
            self.detached = True

    async def _queue_resize(self) -> None:
        if self.opts.interactive and os.isatty(self.opts.in_fd):
            rows, cols = terminal_size(self.opts.in_fd)
            self.outbox.put_nowait(("control", Control("resize", rows, cols)))

    async def _send_loop(self) -> None:
        """Send keystrokes and controls in order, once the job runs (typed-ahead keys wait)."""
        while True:
            kind, item = await self.outbox.get()
            await self.running.wait()
            if kind == "input":
                assert isinstance(item, bytes)
                await self.client.send_input(self.job_id, item)
            else:
                assert isinstance(item, Control)
                await self.client.control(self.job_id, item)
