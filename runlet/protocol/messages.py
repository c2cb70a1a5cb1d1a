"""Every message Runlet sends, as frozen typed classes registered with the wire codec.

Past-tense names are facts (`JobStateChanged`), imperative names are requests (`StartJob`).
Routing metadata (ids, node names, states, sizes) is clear; what is the user's business —
command, environment, input, output, control — travels sealed under the job's key
(`runlet.protocol.crypto`), so the broker never sees it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from runlet.protocol.addresses import valid_job_id, valid_name
from runlet.protocol.states import STATES, TERMINAL
from runlet.protocol.wire import message

MAX_CHUNK = 64 * 1024  # plaintext bytes of one output chunk
MAX_SEALED = MAX_CHUNK + 1024


def _job(job_id: str) -> None:
    if not valid_job_id(job_id):
        raise ValueError(f"invalid job id {job_id[:80]!r}")


def _name(what: str, name: str) -> None:
    if not valid_name(name):
        raise ValueError(f"invalid {what} {name[:80]!r}")


def _size(what: str, data: bytes, limit: int = MAX_SEALED) -> None:
    if len(data) > limit:
        raise ValueError(f"{what} is {len(data)} bytes, over the {limit} limit")


def _seq(seq: int) -> None:
    if not 0 <= seq < 2**63:
        raise ValueError(f"sequence number {seq} out of range")


def _status(exit_code: int | None, signal: int | None) -> None:
    if exit_code is not None and not 0 <= exit_code <= 255:
        raise ValueError(f"exit code {exit_code} out of range 0..255")
    if signal is not None and not 1 <= signal <= 127:
        raise ValueError(f"signal {signal} out of range 1..127")


def parse_target(target: str) -> tuple[str, str]:
    """Split a target (`node:N`, `any`, `all`, `tag:T`) into (kind, name); ValueError if bad."""
    if target in ("any", "all"):
        return target, ""
    kind, sep, name = target.partition(":")
    if sep and kind in ("node", "tag") and valid_name(name):
        return kind, name
    raise ValueError(f"invalid target {target[:80]!r}: use a node name, any, all or tag:TAG")


@message("start_job")
@dataclass(frozen=True, slots=True)
class StartJob:
    """A request to run a job; the command is sealed under the job's key."""

    job_id: str
    user: str
    target: str
    origin: str
    sealed_command: bytes
    submitted_at: float
    deadline: float | None = None
    rows: int = 24
    cols: int = 80

    def __post_init__(self) -> None:
        _job(self.job_id)
        _name("user", self.user)
        _name("origin node", self.origin)
        parse_target(self.target)
        _size("sealed command", self.sealed_command, 256 * 1024)
        if not (1 <= self.rows <= 1000 and 1 <= self.cols <= 1000):
            raise ValueError(f"terminal size {self.rows}x{self.cols} out of range")

    @property
    def fans_out(self) -> bool:
        return parse_target(self.target)[0] in ("all", "tag")


@message("job_state")
@dataclass(frozen=True, slots=True)
class JobStateChanged:
    """A job moved to a new state on a node; `seq` orders one job's changes."""

    job_id: str
    node: str
    state: str
    seq: int
    at: float
    target: str = ""
    exit_code: int | None = None
    signal: int | None = None
    detail: str | None = None

    def __post_init__(self) -> None:
        _job(self.job_id)
        _name("node", self.node)
        _seq(self.seq)
        if self.state not in STATES:
            raise ValueError(f"unknown state {self.state[:40]!r}")
        _status(self.exit_code, self.signal)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


@message("output")
@dataclass(frozen=True, slots=True)
class OutputChunk:
    """Sealed terminal output number `seq` of a job: the same bytes as in its log."""

    job_id: str
    seq: int
    flags: int
    sealed: bytes

    def __post_init__(self) -> None:
        _job(self.job_id)
        _seq(self.seq)
        _size("output chunk", self.sealed)
        if not 0 <= self.flags <= 255:
            raise ValueError(f"flags {self.flags} out of range")


@message("input")
@dataclass(frozen=True, slots=True)
class InputSent:
    """Sealed keystrokes for a job from one viewer; (viewer, seq) is unique."""

    job_id: str
    viewer: str
    seq: int
    sealed: bytes

    def __post_init__(self) -> None:
        _job(self.job_id)
        _name("viewer", self.viewer)
        _seq(self.seq)
        _size("input", self.sealed)


@message("control")
@dataclass(frozen=True, slots=True)
class ControlSent:
    """A sealed control request (resize, signal, cancel) for a job from one viewer."""

    job_id: str
    viewer: str
    seq: int
    sealed: bytes

    def __post_init__(self) -> None:
        _job(self.job_id)
        _name("viewer", self.viewer)
        _seq(self.seq)
        _size("control", self.sealed, 4096)


@message("replay")
@dataclass(frozen=True, slots=True)
class ReplayRequested:
    """Ask the node holding a job for its output from `from_seq` on, then its state."""

    job_id: str
    from_seq: int = 0

    def __post_init__(self) -> None:
        _job(self.job_id)
        _seq(self.from_seq)


@message("send_heartbeat")
@dataclass(frozen=True, slots=True)
class SendHeartbeat:
    """The server, just started, asks every node for a heartbeat now (not at its next beat)."""

    asked_at: float


@message("replay_done")
@dataclass(frozen=True, slots=True)
class ReplayFinished:
    """End of a replay: the next live chunk's seq and the job's state at that moment."""

    job_id: str
    node: str
    next_seq: int
    state: str
    exit_code: int | None = None
    signal: int | None = None

    def __post_init__(self) -> None:
        _job(self.job_id)
        _name("node", self.node)
        _seq(self.next_seq)
        if self.state not in STATES:
            raise ValueError(f"unknown state {self.state[:40]!r}")
        _status(self.exit_code, self.signal)


@message("presence")
@dataclass(frozen=True, slots=True)
class NodeHeartbeat:
    """A daemon says it is alive, with what it runs and its vitals (None: not known there).

    The vitals came later: an older daemon's heartbeat has none, and an older server ignores
    them (the codec drops fields it does not know).
    """

    node: str
    at: float
    version: str
    platform: str
    tags: tuple[str, ...] = ()
    running: int = 0
    queued: int = 0
    cpu_percent: float | None = None
    mem_used: int | None = None  # bytes
    mem_total: int | None = None
    load1: float | None = None
    uptime: float | None = None  # seconds
    temperature: float | None = None  # degrees Celsius

    def __post_init__(self) -> None:
        _name("node", self.node)
        for tag in self.tags:
            _name("tag", tag)
        if self.running < 0 or self.queued < 0:
            raise ValueError("running and queued counts cannot be negative")
        _vital("cpu_percent", self.cpu_percent, 0, 100)
        _vital("mem_used", self.mem_used, 0, 2**62)
        _vital("mem_total", self.mem_total, 0, 2**62)
        _vital("load1", self.load1, 0, 1e6)
        _vital("uptime", self.uptime, 0, 1e10)
        _vital("temperature", self.temperature, -100, 300)
        used, total = self.mem_used, self.mem_total
        if used is not None and total is not None and used > total:
            raise ValueError("memory used cannot exceed memory total")


def _vital(name: str, value: float | None, low: float, high: float) -> None:
    if value is not None and not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{name} {value!r} out of range {low}..{high}")


QUERY_KINDS = ("jobs", "job", "nodes")


@message("query")
@dataclass(frozen=True, slots=True)
class Query:
    """A question for the server: `jobs` (filtered), one `job`'s history, or the `nodes`."""

    kind: str
    job_id: str | None = None
    node: str | None = None
    state: str | None = None
    since: float | None = None
    limit: int = 100

    def __post_init__(self) -> None:
        if self.kind not in QUERY_KINDS:
            raise ValueError(f"unknown query {self.kind[:20]!r}")
        if self.kind == "job" and self.job_id is None:
            raise ValueError("a job query needs a job id")
        if self.job_id is not None:
            _job(self.job_id)
        if self.node is not None:
            _name("node", self.node)
        if self.state is not None and self.state not in STATES:
            raise ValueError(f"unknown state {self.state[:40]!r}")
        if not 1 <= self.limit <= 10_000:
            raise ValueError(f"limit {self.limit} out of range 1..10000")


@message("answer")
@dataclass(frozen=True, slots=True)
class QueryAnswered:
    """The server's answer: rows as a msgpack list of maps, or an error."""

    ok: bool
    rows: bytes = b""
    error: str | None = None


@message("log_stored")
@dataclass(frozen=True, slots=True)
class LogStored:
    """A job's finished log is in the object store under `key`, with this ciphertext hash."""

    job_id: str
    node: str
    key: str
    hash: str

    def __post_init__(self) -> None:
        _job(self.job_id)
        _name("node", self.node)
        if len(self.key) > 1024 or not self.key.endswith(".rlog"):
            raise ValueError("log key must be an .rlog object key")
        if len(self.hash) != 64 or any(c not in "0123456789abcdef" for c in self.hash):
            raise ValueError("log hash must be 64 hex digits")


@message("ping")
@dataclass(frozen=True, slots=True)
class Ping:
    """A latency probe for a node's daemon; answered at once with a Pong."""

    seq: int
    sent_at: float

    def __post_init__(self) -> None:
        _seq(self.seq)


@message("pong")
@dataclass(frozen=True, slots=True)
class Pong:
    """A daemon's answer to a Ping, echoing its seq and send time."""

    node: str
    seq: int
    sent_at: float

    def __post_init__(self) -> None:
        _name("node", self.node)
        _seq(self.seq)


MAX_SEALED_KEY = 4096  # a sealed keyring of 16 keys is about 1 KiB of text


@message("key_granted")
@dataclass(frozen=True, slots=True)
class KeyGranted:
    """A rotated fleet key for one node, sealed to that node's own key pair
    (`protocol.identity`): only that node can open it, and it takes it on only when it keeps
    the node's current key among its older ones."""

    node: str
    sealed: str

    def __post_init__(self) -> None:
        _name("node", self.node)
        if not self.sealed.startswith("runlet-sealed-key-v1:"):
            raise ValueError("a granted key must be a sealed key (runlet-sealed-key-v1:...)")
        if len(self.sealed) > MAX_SEALED_KEY:
            raise ValueError(f"a sealed key is at most {MAX_SEALED_KEY} characters")


# -- pairing a new device (runlet.protocol.pairing): what the broker may see of it ----------

_ATTEMPT = re.compile(r"[0-9a-f]{32}")


def _attempt(attempt: str) -> None:
    if not _ATTEMPT.fullmatch(attempt):
        raise ValueError(f"invalid pairing attempt id {attempt[:80]!r}")


@message("pair_requested")
@dataclass(frozen=True, slots=True)
class PairRequested:
    """The device holding the fleet key starts an attempt: its name and SPAKE2 message."""

    attempt: str
    node: str
    spake: bytes

    def __post_init__(self) -> None:
        _attempt(self.attempt)
        _name("node", self.node)
        _size("spake", self.spake, 64)


@message("pair_answered")
@dataclass(frozen=True, slots=True)
class PairAnswered:
    """The new device answers: its name, its SPAKE2 message and its proof of the agreed key."""

    attempt: str
    node: str
    spake: bytes
    proof: bytes

    def __post_init__(self) -> None:
        _attempt(self.attempt)
        _name("node", self.node)
        _size("spake", self.spake, 64)
        _size("proof", self.proof, 64)


@message("pair_confirmed")
@dataclass(frozen=True, slots=True)
class PairConfirmed:
    """The holder's proof and the fleet key sealed under the agreed key (empty: declined)."""

    attempt: str
    proof: bytes
    sealed: bytes = b""

    def __post_init__(self) -> None:
        _attempt(self.attempt)
        _size("proof", self.proof, 64)
        _size("sealed", self.sealed, 512)


@message("pair_ended")
@dataclass(frozen=True, slots=True)
class PairEnded:
    """How the attempt ended, said by the new device; `fingerprint` of the key it stored."""

    attempt: str
    ok: bool
    reason: str = ""
    fingerprint: str = ""

    def __post_init__(self) -> None:
        _attempt(self.attempt)
        if len(self.reason) > 200 or len(self.fingerprint) > 64:
            raise ValueError("a pairing end's reason or fingerprint is too long")
