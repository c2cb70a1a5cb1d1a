"""What travels sealed: the job's command, control requests and keystrokes.

Each payload is a small msgpack map, sealed under the job's key (`crypto.JobKey`) with
its kind, sender and sequence number as associated data, and validated as strictly as the
clear wire messages once opened.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any

import msgpack

from runlet.errors import ProtocolError
from runlet.protocol.crypto import JobKey, Kind

MAX_ARGV = 4096
MAX_ENV = 512
MAX_TEXT = 128 * 1024
MAX_TIMEOUT = min(threading.TIMEOUT_MAX, 30 * 86400.0)  # seconds; a timer takes no more
SHELL_SYNTAX = frozenset(" \t\n;|&$<>()'\"*?`~[]{}#!=")


@dataclass(frozen=True, slots=True)
class JobSpec:
    """The command to run: an argv (a lone argument is a shell command line), env and cwd."""

    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    timeout: float | None = None

    def seal(self, key: JobKey) -> bytes:
        body = {"argv": list(self.argv), "env": self.env, "cwd": self.cwd, "timeout": self.timeout}
        return key.seal(Kind.COMMAND, 0, _pack(body))

    @classmethod
    def open(cls, key: JobKey, sealed: bytes) -> JobSpec:
        raw = _unpack(key.open(Kind.COMMAND, 0, sealed), "command")
        argv = raw.get("argv")
        if not isinstance(argv, list) or not argv or len(argv) > MAX_ARGV:
            raise ProtocolError("command: argv must be a non-empty list")
        if not all(isinstance(a, str) and "\0" not in a for a in argv):
            raise ProtocolError("command: argv items must be text without NUL")
        env = raw.get("env", {})
        if not isinstance(env, dict) or len(env) > MAX_ENV:
            raise ProtocolError("command: env must be a map")
        for k, v in env.items():
            if not isinstance(k, str) or not k or "=" in k:
                raise ProtocolError("command: env names must be non-empty text without '='")
            if not isinstance(v, str):
                raise ProtocolError(f"command: env value of {k[:40]!r} must be text")
            if "\0" in k + v:
                raise ProtocolError("command: env names and values must not contain NUL")
        cwd = raw.get("cwd")
        if cwd is not None and (not isinstance(cwd, str) or "\0" in cwd):
            raise ProtocolError("command: cwd must be text without NUL")
        timeout = raw.get("timeout")
        if timeout is not None and not _positive_finite(timeout):
            raise ProtocolError(
                f"command: timeout must be a number of seconds in (0, {MAX_TIMEOUT:.0f}]"
            )
        return cls(tuple(argv), dict(env), cwd, None if timeout is None else float(timeout))

    def argv_for(self, shell: str) -> list[str]:
        """The argv to exec: a single argument with spaces runs through the shell."""
        if len(self.argv) == 1 and any(c in self.argv[0] for c in SHELL_SYNTAX):
            return [shell, "-c", self.argv[0]]
        return list(self.argv)


@dataclass(frozen=True, slots=True)
class Control:
    """A control request: op is resize (rows, cols), signal (signal) or cancel."""

    op: str
    rows: int = 0
    cols: int = 0
    signal: int = 0

    def seal(self, key: JobKey, viewer: str, seq: int) -> bytes:
        body = {"op": self.op, "rows": self.rows, "cols": self.cols, "signal": self.signal}
        return key.seal(Kind.CONTROL, seq, _pack(body), sender=viewer)

    @classmethod
    def open(cls, key: JobKey, viewer: str, seq: int, sealed: bytes) -> Control:
        raw = _unpack(key.open(Kind.CONTROL, seq, sealed, sender=viewer), "control")
        op = raw.get("op")
        values = [raw.get(k, 0) for k in ("rows", "cols", "signal")]
        if op not in ("resize", "signal", "cancel"):
            raise ProtocolError(f"control: unknown op {str(op)[:20]!r}")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ProtocolError("control: rows, cols and signal must be integers")
        rows, cols, sig = values
        if op == "resize" and not (1 <= rows <= 1000 and 1 <= cols <= 1000):
            raise ProtocolError(f"control: terminal size {rows}x{cols} out of range")
        if op == "signal" and not 1 <= sig <= 64:
            raise ProtocolError(f"control: signal {sig} out of range")
        return cls(op, rows, cols, sig)


def seal_input(key: JobKey, viewer: str, seq: int, data: bytes) -> bytes:
    return key.seal(Kind.INPUT, seq, data, sender=viewer)


def open_input(key: JobKey, viewer: str, seq: int, sealed: bytes) -> bytes:
    return key.open(Kind.INPUT, seq, sealed, sender=viewer)


def _positive_finite(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and 0 < value <= MAX_TIMEOUT


def _pack(body: dict[str, Any]) -> bytes:
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


def _unpack(data: bytes, what: str) -> dict[str, Any]:
    try:
        raw = msgpack.unpackb(
            data,
            raw=False,
            max_str_len=MAX_TEXT,
            max_array_len=MAX_ARGV,
            max_map_len=MAX_ENV,
            max_bin_len=0,
            max_ext_len=0,
        )
    except (ValueError, msgpack.UnpackException, TypeError, RecursionError) as exc:
        raise ProtocolError(f"{what}: not a valid payload") from exc
    if not isinstance(raw, dict):
        raise ProtocolError(f"{what}: payload must be a map")
    return raw
