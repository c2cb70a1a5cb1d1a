"""The client's pure logic: output reassembly, exit statuses, targets (runlet.client) and the
escapes of `runlet send` (runlet.commands.unescape)."""

from __future__ import annotations

import contextlib

import pytest

from runlet.client import Reassembler, exit_status, target_of
from runlet.commands import unescape
from runlet.crypto import FleetKey, Kind
from runlet.errors import ProtocolError
from runlet.logfile import seal_output
from runlet.messages import STATES, JobStateChanged, OutputChunk

JOB = "0123456789abcdef0123456789abcdef"
FLEET = FleetKey(bytes(range(32)))
STRANGER = FleetKey(bytes(32))


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr("runlet.client.time.monotonic", fake)
    return fake


def chunk(
    seq: int, data: bytes, *, final: bool = False, fleet: FleetKey = FLEET, job: str = JOB
) -> OutputChunk:
    """An output chunk sealed exactly as a daemon seals it."""
    flags, sealed = seal_output(fleet.job_key(job), seq, 1_700_000_000.0 + seq, data, final=final)
    return OutputChunk(JOB, seq, flags, sealed)


# --- Reassembler -----------------------------------------------------------------------------


def test_in_order() -> None:
    """Chunks arriving in order are shown at once, one piece each."""
    r = Reassembler(FLEET, JOB)
    assert r.feed(chunk(0, b"a")) == [b"a"]
    assert r.feed(chunk(1, b"b")) == [b"b"]
    assert r.feed(chunk(2, b"c")) == [b"c"]
    assert r.next_seq == 3
    assert not r.finished
    assert r.bad_chunks == 0


def test_out_of_order() -> None:
    """Early chunks are held until the gap before them fills, then shown in order."""
    r = Reassembler(FLEET, JOB)
    assert r.feed(chunk(2, b"c")) == []
    assert r.feed(chunk(1, b"b")) == []
    assert r.feed(chunk(0, b"a")) == [b"a", b"b", b"c"]
    assert r.pending == {}
    assert r.next_seq == 3


def test_duplicates_dropped_after_delivery() -> None:
    """A chunk already shown is dropped when it comes again (live and replay overlap)."""
    r = Reassembler(FLEET, JOB)
    assert r.feed(chunk(0, b"a")) == [b"a"]
    assert r.feed(chunk(0, b"a")) == []
    assert r.feed(chunk(1, b"b")) == [b"b"]
    assert r.feed(chunk(0, b"a")) == []
    assert r.feed(chunk(1, b"b")) == []


def test_duplicates_dropped_while_pending() -> None:
    """A held chunk that comes again is not shown twice once the gap fills."""
    r = Reassembler(FLEET, JOB)
    assert r.feed(chunk(1, b"b")) == []
    assert r.feed(chunk(1, b"b")) == []
    assert r.feed(chunk(0, b"a")) == [b"a", b"b"]


def test_final_sets_finished() -> None:
    """The FINAL chunk, once shown, marks the stream finished."""
    r = Reassembler(FLEET, JOB)
    assert r.feed(chunk(0, b"a")) == [b"a"]
    assert not r.finished
    assert r.feed(chunk(1, b"bye", final=True)) == [b"bye"]
    assert r.finished


def test_final_waits_for_the_gap() -> None:
    """A FINAL chunk that arrives early does not finish the stream before its gap fills."""
    r = Reassembler(FLEET, JOB)
    assert r.feed(chunk(1, b"end", final=True)) == []
    assert not r.finished
    assert r.feed(chunk(0, b"a")) == [b"a", b"end"]
    assert r.finished


def test_chunk_with_wrong_key_counted_and_hidden() -> None:
    """A chunk sealed with another fleet key is counted as bad and its bytes never shown."""
    r = Reassembler(FLEET, JOB)
    ready = r.feed(chunk(0, b"forged text", fleet=STRANGER))
    assert b"".join(ready) == b""
    assert r.bad_chunks == 1
    assert r.feed(chunk(1, b"b")) == [b"b"]
    assert r.bad_chunks == 1


def test_chunk_of_another_job_counted_and_hidden() -> None:
    """A chunk moved from another job of the same fleet does not authenticate."""
    r = Reassembler(FLEET, JOB)
    other = "f" * 32
    ready = r.feed(chunk(0, b"other job", job=other))
    assert b"other job" not in b"".join(ready)
    assert r.bad_chunks == 1


def test_chunk_moved_to_another_seq_counted_and_hidden() -> None:
    """A chunk replayed under another sequence number does not authenticate."""
    r = Reassembler(FLEET, JOB)
    assert r.feed(chunk(0, b"a")) == [b"a"]
    moved = chunk(0, b"again")
    ready = r.feed(OutputChunk(JOB, 1, moved.flags, moved.sealed))
    assert b"again" not in b"".join(ready)
    assert r.bad_chunks == 1


def test_stripped_final_flag_counted() -> None:
    """Removing the FINAL flag from a chunk makes it fail (flags are authenticated)."""
    r = Reassembler(FLEET, JOB)
    final = chunk(0, b"end", final=True)
    ready = r.feed(OutputChunk(JOB, 0, 0, final.sealed))
    assert b"end" not in b"".join(ready)
    assert r.bad_chunks == 1
    assert not r.finished


def test_gap_age(clock: FakeClock) -> None:
    """gap_age grows while a gap is open and is 0 once it closes."""
    r = Reassembler(FLEET, JOB)
    assert r.gap_age() == 0.0
    r.feed(chunk(0, b"a"))
    assert r.gap_age() == 0.0
    r.feed(chunk(2, b"c"))
    clock.now += 1.5
    assert r.gap_age() == pytest.approx(1.5)
    r.feed(chunk(3, b"d"))  # a later chunk does not restart the gap's clock
    clock.now += 1.0
    assert r.gap_age() == pytest.approx(2.5)
    assert r.feed(chunk(1, b"b")) == [b"b", b"c", b"d"]
    assert r.gap_age() == 0.0
    clock.now += 5.0
    assert r.gap_age() == 0.0


def test_start_offset() -> None:
    """A reassembler started at seq N drops earlier chunks and shows N first."""
    r = Reassembler(FLEET, JOB, start=5)
    assert r.feed(chunk(4, b"old")) == []
    assert r.feed(chunk(0, b"older")) == []
    assert r.feed(chunk(6, b"g")) == []
    assert r.feed(chunk(5, b"f")) == [b"f", b"g"]
    assert r.next_seq == 7


def test_empty_chunk() -> None:
    """A chunk of zero bytes is valid and advances the stream."""
    r = Reassembler(FLEET, JOB)
    assert r.feed(chunk(0, b"", final=True)) == [b""]
    assert r.finished
    assert r.bad_chunks == 0


# --- exit_status -----------------------------------------------------------------------------


def _event(state: str, exit_code: int | None = None, signal: int | None = None) -> JobStateChanged:
    return JobStateChanged(JOB, "edge-2", state, 3, 1.0, exit_code=exit_code, signal=signal)


@pytest.mark.parametrize(
    ("state", "exit_code", "signal", "status"),
    [
        ("exited", 0, None, 0),
        ("exited", 3, None, 3),
        ("exited", 255, None, 255),
        ("exited", None, None, 0),
        ("killed", None, 9, 137),
        ("killed", None, 15, 143),
        ("killed", None, 1, 129),
        ("cancelled", None, 15, 143),
        ("cancelled", None, 9, 137),
        ("cancelled", None, None, 130),
        ("timed_out", None, None, 124),
        ("timed_out", None, 9, 124),
        ("expired", None, None, 75),
        ("interrupted", None, None, 75),
        ("lost", None, None, 75),
        ("rejected", None, None, 65),
    ],
)
def test_exit_status(state: str, exit_code: int | None, signal: int | None, status: int) -> None:
    """Each final state maps to its shell-style exit status."""
    assert exit_status(_event(state, exit_code, signal)) == status


def test_exit_status_covers_every_terminal_state() -> None:
    """No terminal state falls through to the generic failure status 1."""
    for state in STATES:
        event = _event(state, exit_code=0 if state == "exited" else None, signal=9)
        if event.terminal:
            assert exit_status(event) != 1, state


@pytest.mark.parametrize("state", ["submitted", "queued", "running"])
def test_exit_status_of_live_state_is_failure(state: str) -> None:
    """A job that is still live when the client gives up reports failure (1)."""
    assert exit_status(_event(state)) == 1


# --- target_of -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "target"),
    [
        ("", "node:laptop"),
        ("edge-2", "node:edge-2"),
        ("node:edge-2", "node:edge-2"),
        ("any", "any"),
        ("all", "all"),
        ("tag:gpu", "tag:gpu"),
        ("laptop", "node:laptop"),
        ("tag", "node:tag"),
    ],
)
def test_target_of(spec: str, target: str) -> None:
    """An empty --on means this node, a bare name means that node, the rest stays as is."""
    assert target_of(spec, "laptop") == target


@pytest.mark.parametrize(
    "spec",
    ["a.b", "node:", "tag:", "node:a.b", "tag:a b", "x:y", "edge 2", "é", "n" * 65, "any\n", "*"],
)
def test_target_of_rejects_bad_names(spec: str) -> None:
    """Targets that are not node names, any, all or tag:T are a ValueError."""
    with pytest.raises(ValueError, match="invalid target"):
        target_of(spec, "laptop")


# --- unescape ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "data"),
    [
        ("", b""),
        ("plain", b"plain"),
        (r"\r", b"\r"),
        (r"\n", b"\n"),
        (r"\t", b"\t"),
        (r"\e", b"\x1b"),
        (r"\0", b"\0"),
        ("\\\\", b"\\"),
        (r"y\r", b"y\r"),
        (r"\e[A\e[B", b"\x1b[A\x1b[B"),
        (r"\x00\x7f\xff\xAb", b"\x00\x7f\xff\xab"),
        (r"\x41BC", b"ABC"),
        ("\\\\n", b"\\n"),
        ("\\", b"\\"),
        ("abc\\", b"abc\\"),
        ("héllo ✓", "héllo ✓".encode()),
        ("ünï\\r", "ünï\r".encode()),
        ("\x03", b"\x03"),
    ],
)
def test_unescape(text: str, data: bytes) -> None:
    """Each escape becomes its byte, other text its UTF-8, and a trailing backslash stays."""
    assert unescape(text) == data


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        (r"\q", r"\q"),
        (r"\a", r"\a"),
        (r"ok\N", r"\N"),
        (r"\x", r"\x"),
        (r"\x4", r"\x"),
        (r"\xg0", r"\x"),
        (r"\x 1", r"\x"),
        (r"\u0041", r"\u"),
        ("\\\n", "\\\n"),
    ],
)
def test_unescape_unknown_escape(text: str, bad: str) -> None:
    """An unknown or incomplete escape is a ProtocolError naming it and the valid ones."""
    with pytest.raises(ProtocolError, match="unknown escape") as info:
        unescape(text)
    assert bad in str(info.value)
    assert r"\xNN" in str(info.value)


def test_unescape_size_limit() -> None:
    """Up to 60000 bytes may be sent at once; one more is a ProtocolError."""
    assert len(unescape("x" * 60_000)) == 60_000
    assert len(unescape(r"\e" * 60_000)) == 60_000
    with pytest.raises(ProtocolError, match="at most 60000"):
        unescape("x" * 60_001)


def test_unescape_size_counts_bytes_not_characters() -> None:
    """The limit is on the UTF-8 bytes: 30001 two-byte characters are too many."""
    assert len(unescape("é" * 30_000)) == 60_000
    with pytest.raises(ProtocolError, match="at most 60000"):
        unescape("é" * 30_001)


# --- known bugs: strict xfails, so a fix turns them into failures to un-mark -------------------


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="BUG client.py:272: FINAL is taken from the unauthenticated flags even when the "
    "chunk failed to open, so a forged chunk ends the stream",
)
def test_forged_final_does_not_finish() -> None:
    """A chunk that does not authenticate cannot mark the stream finished."""
    r = Reassembler(FLEET, JOB)
    r.feed(chunk(0, b"x", final=True, fleet=STRANGER))
    assert r.bad_chunks == 1
    assert not r.finished


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="BUG client.py:259-271: a chunk that fails to open still uses up its seq (and "
    "blocks it while pending), so the genuine chunk arriving later is dropped as a duplicate",
)
@pytest.mark.parametrize("forged_seq", [0, 1])
def test_forged_chunk_does_not_shadow_genuine(forged_seq: int) -> None:
    """A forged chunk arriving first does not stop the genuine one from being shown."""
    r = Reassembler(FLEET, JOB)
    r.feed(chunk(forged_seq, b"forged", fleet=STRANGER))
    shown = r.feed(chunk(1, b"one")) + r.feed(chunk(0, b"zero"))
    assert b"".join(shown) == b"zeroone"


@pytest.mark.xfail(
    strict=True,
    raises=ProtocolError,
    reason="BUG client.py:266-267: open_output's ProtocolError (plaintext under 8 bytes) is "
    "not caught: feed raises after popping the chunk, and the stream is stuck at that seq",
)
def test_authentic_chunk_without_timestamp() -> None:
    """A well-sealed chunk too short to hold a timestamp is counted bad and skipped."""
    r = Reassembler(FLEET, JOB)
    sealed = FLEET.job_key(JOB).seal(Kind.OUTPUT, 0, b"abc")
    assert r.feed(OutputChunk(JOB, 0, 0, sealed)) == [b""]
    assert r.bad_chunks == 1


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="BUG client.py:75,77: exit_code and signal are not bounded (neither by the message "
    "nor here); a process status is taken mod 256, so exit_code 256 or signal -128 "
    "makes a failed job exit 0",
)
@pytest.mark.parametrize(
    ("state", "exit_code", "signal"),
    [("exited", 256, None), ("killed", None, -128), ("cancelled", None, 2**40)],
)
def test_exit_status_fits_a_process_status(
    state: str, exit_code: int | None, signal: int | None
) -> None:
    """Whatever a daemon reports, a failed job's status is 1..255, never 0 after truncation."""
    assert 1 <= exit_status(_event(state, exit_code, signal)) <= 255


@pytest.mark.xfail(
    strict=True,
    raises=UnicodeEncodeError,
    reason="BUG commands.py:210: `ch.encode()` fails on surrogates, which is how Python "
    "decodes non-UTF-8 bytes in argv (runlet send ID $'\\xff' ends in a traceback)",
)
def test_unescape_undecodable_argv_byte() -> None:
    """A surrogate-escaped argv byte is sent as that byte (or refused as ProtocolError)."""
    with contextlib.suppress(ProtocolError):
        assert unescape("\udcff") == b"\xff"
