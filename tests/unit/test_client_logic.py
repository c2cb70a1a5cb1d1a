"""The client's pure logic: output reassembly, exit statuses, targets (client.session) and the
escapes of `runlet send` (client.commands.unescape)."""

from __future__ import annotations

import pytest

from runlet.adapters.logfile import FLAG_FINAL, seal_output
from runlet.client.commands import unescape
from runlet.client.session import Reassembler, exit_status, target_of
from runlet.errors import UsageError
from runlet.protocol.crypto import FleetKey, Kind
from runlet.protocol.messages import JobStateChanged, OutputChunk
from runlet.protocol.states import STATES

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
    monkeypatch.setattr("runlet.client.session.time.monotonic", fake)
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
    """A chunk sealed with another fleet key is counted as bad, never shown, and frees its seq."""
    r = Reassembler(FLEET, JOB)
    assert r.feed(chunk(0, b"forged text", fleet=STRANGER)) == []
    assert r.bad_chunks == 1
    assert r.next_seq == 0
    assert r.pending == {}
    assert r.feed(chunk(1, b"b")) == []
    assert r.feed(chunk(0, b"a")) == [b"a", b"b"]
    assert r.bad_chunks == 1


def test_chunk_of_another_job_counted_and_hidden() -> None:
    """A chunk moved from another job of the same fleet does not authenticate."""
    r = Reassembler(FLEET, JOB)
    other = "f" * 32
    assert r.feed(chunk(0, b"other job", job=other)) == []
    assert r.bad_chunks == 1
    assert r.feed(chunk(0, b"mine")) == [b"mine"]


def test_chunk_moved_to_another_seq_counted_and_hidden() -> None:
    """A chunk replayed under another sequence number does not authenticate."""
    r = Reassembler(FLEET, JOB)
    assert r.feed(chunk(0, b"a")) == [b"a"]
    moved = chunk(0, b"again")
    assert r.feed(OutputChunk(JOB, 1, moved.flags, moved.sealed)) == []
    assert r.bad_chunks == 1
    assert r.next_seq == 1
    assert r.feed(chunk(1, b"b")) == [b"b"]


def test_stripped_final_flag_counted() -> None:
    """Removing the FINAL flag from a chunk makes it fail (flags are authenticated)."""
    r = Reassembler(FLEET, JOB)
    final = chunk(0, b"end", final=True)
    assert r.feed(OutputChunk(JOB, 0, 0, final.sealed)) == []
    assert r.bad_chunks == 1
    assert not r.finished
    assert r.feed(final) == [b"end"]
    assert r.finished


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


def test_pending_holds_opened_plaintext() -> None:
    """A held chunk is kept already opened, as its plaintext and whether it is final."""
    r = Reassembler(FLEET, JOB)
    assert r.feed(chunk(2, b"end", final=True)) == []
    assert r.feed(chunk(1, b"b")) == []
    assert r.pending == {1: (b"b", False), 2: (b"end", True)}
    assert r.feed(chunk(0, b"a")) == [b"a", b"b", b"end"]
    assert r.pending == {}
    assert r.finished


def test_forged_chunk_ahead_opens_no_gap(clock: FakeClock) -> None:
    """A forged chunk beyond the next seq is not held, so no gap is reported for it."""
    r = Reassembler(FLEET, JOB)
    assert r.feed(chunk(5, b"forged", fleet=STRANGER)) == []
    clock.now += 10.0
    assert r.gap_age() == 0.0
    assert r.pending == {}
    assert r.bad_chunks == 1


def test_every_forgery_is_counted() -> None:
    """Each chunk that fails to open is counted, even several at the same seq."""
    r = Reassembler(FLEET, JOB)
    for _ in range(3):
        assert r.feed(chunk(0, b"forged", fleet=STRANGER)) == []
    assert r.bad_chunks == 3
    assert r.feed(chunk(0, b"a")) == [b"a"]


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
        ("exited", None, None, 1),
        ("exited", None, 9, 1),
        ("killed", None, 9, 137),
        ("killed", None, 15, 143),
        ("killed", None, 1, 129),
        ("killed", None, 127, 255),
        ("killed", None, None, 1),
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
    """An unknown or incomplete escape is a UsageError naming it and the valid ones."""
    with pytest.raises(UsageError, match="unknown escape") as info:
        unescape(text)
    assert bad in str(info.value)
    assert r"\xNN" in str(info.value)


def test_unescape_size_limit() -> None:
    """Up to 60000 bytes may be sent at once; one more is a UsageError."""
    assert len(unescape("x" * 60_000)) == 60_000
    assert len(unescape(r"\e" * 60_000)) == 60_000
    with pytest.raises(UsageError, match="at most 60000"):
        unescape("x" * 60_001)


def test_unescape_size_counts_bytes_not_characters() -> None:
    """The limit is on the UTF-8 bytes: 30001 two-byte characters are too many."""
    assert len(unescape("é" * 30_000)) == 60_000
    with pytest.raises(UsageError, match="at most 60000"):
        unescape("é" * 30_001)


# --- forged and malformed chunks -------------------------------------------------------------


def test_forged_final_does_not_finish() -> None:
    """A chunk that does not authenticate cannot mark the stream finished."""
    r = Reassembler(FLEET, JOB)
    assert r.feed(chunk(0, b"x", final=True, fleet=STRANGER)) == []
    assert r.bad_chunks == 1
    assert not r.finished
    assert r.feed(chunk(0, b"real", final=True)) == [b"real"]
    assert r.finished


@pytest.mark.parametrize("forged_seq", [0, 1])
def test_forged_chunk_does_not_shadow_genuine(forged_seq: int) -> None:
    """A forged chunk arriving first does not stop the genuine one from being shown."""
    r = Reassembler(FLEET, JOB)
    assert r.feed(chunk(forged_seq, b"forged", fleet=STRANGER)) == []
    shown = r.feed(chunk(1, b"one")) + r.feed(chunk(0, b"zero"))
    assert b"".join(shown) == b"zeroone"
    assert r.bad_chunks == 1


@pytest.mark.parametrize("final", [False, True])
def test_authentic_chunk_without_timestamp(final: bool) -> None:
    """A well-sealed chunk too short to hold a timestamp is counted bad and frees its seq."""
    r = Reassembler(FLEET, JOB)
    flags = FLAG_FINAL if final else 0
    sealed = FLEET.job_key(JOB).seal(Kind.OUTPUT, 0, b"abc", flags=flags)
    assert r.feed(OutputChunk(JOB, 0, flags, sealed)) == []
    assert r.bad_chunks == 1
    assert r.next_seq == 0
    assert not r.finished
    assert r.feed(chunk(0, b"a")) == [b"a"]


def test_authentic_chunk_of_just_a_timestamp() -> None:
    """A well-sealed chunk of exactly 8 bytes is an empty piece of output."""
    r = Reassembler(FLEET, JOB)
    sealed = FLEET.job_key(JOB).seal(Kind.OUTPUT, 0, bytes(8))
    assert r.feed(OutputChunk(JOB, 0, 0, sealed)) == [b""]
    assert r.bad_chunks == 0


# --- exit statuses at the message bounds -------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "exit_code", "signal"),
    [
        ("exited", 256, None),
        ("exited", -1, None),
        ("killed", None, -128),
        ("killed", None, 0),
        ("killed", None, 128),
        ("cancelled", None, 2**40),
    ],
)
def test_out_of_range_status_is_refused_by_the_message(
    state: str, exit_code: int | None, signal: int | None
) -> None:
    """Exit codes outside 0..255 and signals outside 1..127 never reach exit_status."""
    with pytest.raises(ValueError, match="out of range"):
        _event(state, exit_code, signal)


@pytest.mark.parametrize(
    ("state", "exit_code", "signal"),
    [
        ("exited", 1, None),
        ("exited", 255, None),
        ("exited", None, None),
        ("killed", None, 1),
        ("killed", None, 127),
        ("killed", None, None),
        ("cancelled", None, 1),
        ("cancelled", None, 127),
    ],
)
def test_exit_status_fits_a_process_status(
    state: str, exit_code: int | None, signal: int | None
) -> None:
    """At the bounds a message allows, a failed job's status is 1..255, never 0."""
    assert 1 <= exit_status(_event(state, exit_code, signal)) <= 255


# --- unescape of argv bytes that are not UTF-8 ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "data"),
    [
        ("\udcff", b"\xff"),
        ("\udc80", b"\x80"),
        ("a\udcc3(b", b"a\xc3(b"),
        ("\udcff\\r", b"\xff\r"),
    ],
)
def test_unescape_undecodable_argv_byte(text: str, data: bytes) -> None:
    """A surrogate-escaped argv byte is sent as that very byte."""
    assert unescape(text) == data


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"caf\xe9", b"\xed\xa0\x80", bytes(range(128, 256))])
def test_unescape_round_trips_argv_bytes(raw: bytes) -> None:
    """Whatever bytes the shell passed as argv, decoded the way Python does, are sent unchanged."""
    assert unescape(raw.decode("utf-8", "surrogateescape")) == raw


@pytest.mark.parametrize("text", [chr(0xD800), chr(0xDC00), "x" + chr(0xDFFF)], ids=ascii)
def test_unescape_lone_surrogate(text: str) -> None:
    """A lone surrogate that stands for no byte is refused as a UsageError."""
    with pytest.raises(UsageError, match=f"invalid character at position {len(text) - 1}"):
        unescape(text)
