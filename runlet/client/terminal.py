"""The user's side of a remote terminal: raw mode, the window size and the detach key.

POSIX only (termios). Nothing here reads from or writes to the terminal: callers move the
bytes, and this module decides what the terminal mode is and which keystrokes are ours.
"""

from __future__ import annotations

import os
import string
import termios
import tty
from typing import Any, Self

DETACH_KEY_DEFAULT = "ctrl-]"
"""The detach key unless configured otherwise (telnet's escape key)."""

FALLBACK_SIZE = (24, 80)
"""(rows, cols) assumed when the fd is not a terminal or reports no size."""

_CTRL_SYMBOLS = {"@": 0x00, "[": 0x1B, "\\": 0x1C, "]": 0x1D, "^": 0x1E, "_": 0x1F}
_KEY_FORMS = "'ctrl-' followed by a letter a-z or one of @ [ \\ ] ^ _ (for example 'ctrl-]')"


class RawMode:
    """Context manager: the terminal on `fd` in raw mode inside, as it was after.

    Raw mode passes every byte through (no echo, no line editing, no Ctrl-C signal), which
    is what a remote terminal needs. The saved settings come back on exit even when the
    body raises. When `fd` is not a terminal, entering and leaving do nothing.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._saved: list[Any] | None = None

    @property
    def active(self) -> bool:
        """True while raw mode is on (never for a non-terminal fd)."""
        return self._saved is not None

    def __enter__(self) -> Self:
        if self._saved is not None:
            raise RuntimeError("raw mode is already on for this RawMode")
        if os.isatty(self._fd):
            saved = termios.tcgetattr(self._fd)
            # TCSADRAIN, as ssh does: the default TCSAFLUSH would discard typed-ahead keys.
            tty.setraw(self._fd, termios.TCSADRAIN)
            self._saved = saved
        return self

    def __exit__(self, *exc_info: object) -> None:
        saved, self._saved = self._saved, None
        if saved is not None:
            termios.tcsetattr(self._fd, termios.TCSADRAIN, saved)


def terminal_size(fd: int) -> tuple[int, int]:
    """(rows, cols) of the terminal on `fd`; FALLBACK_SIZE parts when it can't say."""
    try:
        size = os.get_terminal_size(fd)
    except OSError:  # not a terminal, or not an open fd
        return FALLBACK_SIZE
    return (size.lines or FALLBACK_SIZE[0], size.columns or FALLBACK_SIZE[1])


def parse_key(spec: str) -> bytes:
    """The byte a key spec like "ctrl-]" or "Ctrl-A" sends; ValueError if it is not one."""
    prefix, dash, rest = spec.partition("-")
    # isascii first: str.lower() maps some non-ASCII letters to ASCII ("\u212a" -> "k").
    if spec.isascii() and prefix.lower() == "ctrl" and dash and len(rest) == 1:
        char = rest.lower()
        if char in string.ascii_lowercase:
            return bytes([ord(char) - ord("a") + 1])
        if char in _CTRL_SYMBOLS:
            return bytes([_CTRL_SYMBOLS[char]])
    shown = spec if len(spec) <= 20 else spec[:20] + "..."
    raise ValueError(f"invalid key {shown!r}: use {_KEY_FORMS}")


class DetachScanner:
    """Finds the detach key in what the user types, and passes everything else on.

    How it behaves for the user:

    - Press the detach key once to detach. Whatever you typed before it still reaches the
      job; whatever comes right after it is dropped.
    - Press it twice in a row to send the key itself to the job once (no detach).
    - After a single press we wait for your next keystroke to tell the two apart: that
      keystroke detaches (and is dropped) unless it is the detach key again. A caller that
      sees `pending` may call `idle()` after a short quiet spell so that a lone press
      detaches without a second keystroke.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != 1:
            raise ValueError(f"the detach key must be exactly one byte, not {key!r}")
        self._key = key
        self._pending = False

    @property
    def pending(self) -> bool:
        """True when the last input ended with one press of the key, not yet decided."""
        return self._pending

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """Scan one read of user input: (bytes to forward to the job, detach requested)."""
        key = self._key
        forward = bytearray()
        start = 0
        if self._pending and data:
            self._pending = False
            if data[:1] != key:
                return b"", True
            forward += key
            start = 1
        while (found := data.find(key, start)) >= 0:
            forward += data[start:found]
            if found + 1 == len(data):
                self._pending = True
                return bytes(forward), False
            if data[found + 1 : found + 2] != key:
                return bytes(forward), True
            forward += key
            start = found + 2
        forward += data[start:]
        return bytes(forward), False

    def idle(self) -> bool:
        """No more input came after a pending press: True (detach) if one was pending."""
        pending, self._pending = self._pending, False
        return pending
