"""The user's terminal: raw mode on a real pty, window size, detach key parsing and scanning."""

from __future__ import annotations

import fcntl
import itertools
import os
import struct
import termios
from collections.abc import Iterator

import pytest

from runlet.client.terminal import (
    DETACH_KEY_DEFAULT,
    FALLBACK_SIZE,
    DetachScanner,
    RawMode,
    parse_key,
    terminal_size,
)

KEY = b"\x1d"  # ctrl-]


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, int]]:
    """A (master, slave) pair from os.openpty(), closed after the test."""
    master, slave = os.openpty()
    yield master, slave
    os.close(master)
    os.close(slave)


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    """A (read, write) pipe: an fd that is not a terminal."""
    read, write = os.pipe()
    yield read, write
    os.close(read)
    os.close(write)


# --- parse_key ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        ("ctrl-]", b"\x1d"),
        ("ctrl-a", b"\x01"),
        ("Ctrl-A", b"\x01"),
        ("CTRL-z", b"\x1a"),
        ("ctrl-@", b"\x00"),
        ("ctrl-[", b"\x1b"),
        ("ctrl-\\", b"\x1c"),
        ("ctrl-^", b"\x1e"),
        ("ctrl-_", b"\x1f"),
    ],
)
def test_parse_key_valid(spec: str, key: bytes) -> None:
    """Every documented ctrl-X form maps to its control byte, in any case."""
    assert parse_key(spec) == key


def test_default_detach_key_is_ctrl_close_bracket() -> None:
    """The default detach key parses to 0x1d."""
    assert parse_key(DETACH_KEY_DEFAULT) == b"\x1d"


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "ctrl-",
        "ctrl",
        "ctrl-1",
        "ctrl-ab",
        "ctrl--",
        "ctrl-?",
        "alt-a",
        "a",
        "]",
        " ctrl-a",
        "ctrl-a ",
        "ctrl+a",
        "ctrl-é",
        "ctrl-\u212a",  # KELVIN SIGN: lower() turns it into an ASCII "k"
        "\u0441trl-a",  # CYRILLIC SMALL LETTER ES in place of the "c"
        "ctrl-\x00",
        "ctrl-]" * 10_000,
    ],
)
def test_parse_key_invalid(spec: str) -> None:
    """Anything but ctrl-<letter or @[\\]^_> is a ValueError that lists the valid forms."""
    with pytest.raises(ValueError, match=r"use 'ctrl-' followed by a letter a-z") as info:
        parse_key(spec)
    assert len(str(info.value)) < 200  # a hostile spec is not echoed in full


# --- DetachScanner -------------------------------------------------------------------------


def feed_all(chunks: list[bytes]) -> tuple[bytes, bool, bool]:
    """Feed chunks until a detach: (forwarded, detached, still pending)."""
    scanner = DetachScanner(KEY)
    forwarded = b""
    for chunk in chunks:
        out, detach = scanner.feed(chunk)
        forwarded += out
        if detach:
            return forwarded, True, scanner.pending
    return forwarded, False, scanner.pending


def splits(data: bytes) -> Iterator[list[bytes]]:
    """Every way to cut `data` into consecutive reads (up to three cuts)."""
    for count in range(4):
        for cuts in itertools.combinations(range(1, len(data)), count):
            bounds = [0, *cuts, len(data)]
            yield [data[a:b] for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize(
    ("typed", "forwarded", "detached", "pending"),
    [
        (b"hello", b"hello", False, False),
        (b"ls" + KEY + b"x", b"ls", True, False),
        (KEY + b"x", b"", True, False),
        (KEY + b"xyz", b"", True, False),
        (KEY + KEY, KEY, False, False),
        (b"a" + KEY + KEY + b"b", b"a" + KEY + b"b", False, False),
        (KEY + KEY + KEY + b"x", KEY, True, False),
        (KEY + KEY + KEY + KEY, KEY + KEY, False, False),
        (b"ab" + KEY, b"ab", False, True),
        (KEY, b"", False, True),
    ],
    ids=[
        "no key",
        "bytes before key forwarded",
        "key then other",
        "rest after key dropped",
        "key twice is one literal",
        "literal key mid-stream",
        "literal then detach",
        "two literals",
        "key at end is held",
        "key alone is held",
    ],
)
def test_detach_scanner_every_split(
    typed: bytes, forwarded: bytes, detached: bool, pending: bool
) -> None:
    """However the input is cut into reads, the forwarded bytes and the decision are the same."""
    for chunks in splits(typed):
        assert feed_all(chunks) == (forwarded, detached, pending), chunks


def test_held_key_decided_by_next_read() -> None:
    """A key at the end of a read is held; the next read's first byte decides."""
    scanner = DetachScanner(KEY)
    assert scanner.feed(b"abc" + KEY) == (b"abc", False)
    assert scanner.pending
    assert scanner.feed(b"") == (b"", False)  # an empty read decides nothing
    assert scanner.pending
    assert scanner.feed(KEY + b"def") == (KEY + b"def", False)
    assert not scanner.pending
    assert scanner.feed(KEY) == (b"", False)
    assert scanner.feed(b"q") == (b"", True)


def test_idle_after_a_lone_press_detaches() -> None:
    """idle() after a held key means detach, and is False when nothing is held."""
    scanner = DetachScanner(KEY)
    assert scanner.idle() is False
    scanner.feed(KEY)
    assert scanner.idle() is True
    assert not scanner.pending
    assert scanner.feed(b"x") == (b"x", False)


@pytest.mark.parametrize("key", [b"", b"ab", KEY + KEY])
def test_detach_scanner_needs_one_byte(key: bytes) -> None:
    """A detach key is exactly one byte."""
    with pytest.raises(ValueError, match="exactly one byte"):
        DetachScanner(key)


# --- RawMode -------------------------------------------------------------------------------


def local_flags(fd: int) -> int:
    flags: int = termios.tcgetattr(fd)[3]
    return flags


def test_raw_mode_on_a_pty(pty_pair: tuple[int, int]) -> None:
    """Inside RawMode ICANON and ECHO are off; afterwards the old settings are back."""
    _, slave = pty_pair
    before = termios.tcgetattr(slave)
    assert local_flags(slave) & termios.ICANON
    assert local_flags(slave) & termios.ECHO
    raw = RawMode(slave)
    assert not raw.active
    with raw as entered:
        assert entered is raw
        assert raw.active
        assert local_flags(slave) & (termios.ICANON | termios.ECHO | termios.ISIG) == 0
    assert not raw.active
    assert termios.tcgetattr(slave) == before


def test_raw_mode_restores_when_the_body_raises(pty_pair: tuple[int, int]) -> None:
    """An exception inside RawMode still restores the terminal, and propagates."""
    _, slave = pty_pair
    before = termios.tcgetattr(slave)
    raw = RawMode(slave)
    seen: list[int] = []

    def body() -> None:
        with raw:
            seen.append(local_flags(slave))
            raise KeyError("boom")

    with pytest.raises(KeyError):
        body()
    assert seen[0] & termios.ICANON == 0
    assert not raw.active
    assert termios.tcgetattr(slave) == before


def test_raw_mode_can_be_entered_again_after_exit(pty_pair: tuple[int, int]) -> None:
    """A RawMode is reusable after exit but refuses to nest in itself."""
    _, slave = pty_pair
    raw = RawMode(slave)
    with raw, pytest.raises(RuntimeError, match="already on"), raw:
        pass
    with raw:
        assert raw.active
    assert local_flags(slave) & termios.ICANON


def test_raw_mode_on_a_non_tty_does_nothing(pipe: tuple[int, int]) -> None:
    """On a pipe RawMode neither fails nor becomes active."""
    read, _ = pipe
    with RawMode(read) as raw:
        assert not raw.active
    assert not raw.active


# --- terminal_size -------------------------------------------------------------------------


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def test_terminal_size_of_a_pty(pty_pair: tuple[int, int]) -> None:
    """terminal_size reports (rows, cols) after TIOCSWINSZ, on either side of the pty."""
    master, slave = pty_pair
    set_size(master, 40, 100)
    assert terminal_size(slave) == (40, 100)
    assert terminal_size(master) == (40, 100)


def test_terminal_size_fallbacks(pty_pair: tuple[int, int], pipe: tuple[int, int]) -> None:
    """A non-tty, a closed fd, or a pty that reports 0x0 gives (24, 80)."""
    _, slave = pty_pair
    set_size(slave, 0, 0)
    assert terminal_size(slave) == FALLBACK_SIZE == (24, 80)
    set_size(slave, 0, 132)
    assert terminal_size(slave) == (24, 132)
    assert terminal_size(pipe[0]) == (24, 80)
    spare = os.dup(pipe[0])
    os.close(spare)
    assert terminal_size(spare) == (24, 80)
