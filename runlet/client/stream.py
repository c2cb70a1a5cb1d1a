"""One job's stream as a viewer sees it, with no terminal attached: output in order, states.

The desktop manager (`runlet ui`) follows each terminal tab's job with a `JobStream`: it takes
the messages of the tab's watch queue and turns them into numbered output pieces and the job's
state, and says when the node should be asked for a replay (a gap that does not close by
itself, or a job not found yet). Live and replayed chunks may interleave; a viewer that starts
at `start` (a tab resuming after a dropped connection) never sees a chunk twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from runlet.client.session import Reassembler
from runlet.protocol.crypto import FleetKey
from runlet.protocol.messages import JobStateChanged, OutputChunk, ReplayFinished
from runlet.protocol.states import TERMINAL, shell_status

GAP_REPLAY_SECONDS = 1.0  # a gap older than this is filled by asking the node
FIND_REPLAY_SECONDS = 2.0  # a job nobody answered for yet is asked about again this often


@dataclass(frozen=True, slots=True)
class State:
    """The job's state as shown: the shell-style status once it ended."""

    state: str
    node: str
    exit_code: int | None = None
    signal: int | None = None
    detail: str | None = None

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL

    def status(self) -> int | None:
        """What `runlet run` would exit with, once the job ended."""
        if not self.ended:
            return None
        return shell_status(self.state, self.exit_code, self.signal)


class JobStream:
    """Turns one job's messages into ordered output pieces and states."""

    def __init__(self, key: FleetKey, job_id: str, start: int = 0) -> None:
        self.job_id = job_id
        self.reasm = Reassembler(key, job_id, start)
        self.state: State | None = None
        self.state_seq = -1
        self.found = False
        self.replayed_to: int | None = None  # the next live chunk's seq, once a replay ended
        self.saw_running = False
        self.asked_at = time.monotonic()

    @property
    def next_seq(self) -> int:
        return self.reasm.next_seq

    @property
    def running(self) -> bool:
        return self.state is not None and self.state.state == "running"

    def take(self, msg: object) -> tuple[list[tuple[int, bytes]], State | None]:
        """Output pieces now ready, as (seq, bytes), and the new state if it changed."""
        match msg:
            case OutputChunk(job_id=job_id) if job_id == self.job_id:
                bad = self.reasm.bad_chunks
                ready = self.reasm.feed(msg)
                self.found = self.found or self.reasm.bad_chunks == bad  # a forgery finds nothing
                first = self.reasm.next_seq - len(ready)
                return [(first + i, piece) for i, piece in enumerate(ready)], None
            case JobStateChanged(job_id=job_id) if job_id == self.job_id:
                self.found = True
                if msg.seq < self.state_seq and not msg.terminal:
                    return [], None  # an older state arriving late: what we show stands
                self.state_seq = max(self.state_seq, msg.seq)
                return [], self._set(
                    State(msg.state, msg.node, msg.exit_code, msg.signal, msg.detail)
                )
            case ReplayFinished(job_id=job_id) if job_id == self.job_id:
                self.found = True
                self.replayed_to = msg.next_seq
                if self.state is not None and self.state.ended:
                    return [], None
                return [], self._set(State(msg.state, msg.node, msg.exit_code, msg.signal))
        return [], None

    def _set(self, state: State) -> State | None:
        if self.state is not None and (self.state.ended or state == self.state):
            return None
        self.state = state
        self.saw_running = self.saw_running or state.state == "running"
        return state

    @property
    def complete(self) -> bool:
        """The job ended and every chunk up to its FINAL one is shown."""
        return self.state is not None and self.state.ended and self.reasm.finished

    def replay_due(self) -> bool:
        """Time to ask the node for what is missing (call `asked` once asked)."""
        now = time.monotonic()
        if not self.found:
            return now - self.asked_at > FIND_REPLAY_SECONDS
        if self.reasm.gap_age() > GAP_REPLAY_SECONDS:
            return True
        ended = self.state is not None and self.state.ended
        has_output = self.saw_running or self.reasm.next_seq > 0  # so a FINAL chunk will come
        waiting = ended and has_output and not self.reasm.finished
        return waiting and now - self.asked_at > FIND_REPLAY_SECONDS

    def missed(self) -> None:
        """Output was dropped before it got here (a slow viewer): treat it as a gap."""
        if self.reasm.gap_since is None:
            self.reasm.gap_since = time.monotonic()

    def asked(self) -> None:
        self.asked_at = time.monotonic()
        if self.reasm.gap_since is not None:
            self.reasm.gap_since = time.monotonic()
