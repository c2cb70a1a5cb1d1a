"""The wire codec (protocol.wire): every message round-trips, and hostile bytes only ever raise
ProtocolError with a clear sentence, never another exception."""

from __future__ import annotations

import dataclasses
import random
import typing
from dataclasses import dataclass
from typing import Any, cast

import msgpack  # type: ignore[import-untyped, unused-ignore]
import pytest

from runlet.errors import ProtocolError
from runlet.protocol import messages as m
from runlet.protocol import wire

JOB = "0123456789abcdef0123456789abcdef"
CHILD = f"{JOB}.edge-2"
SEED = 20240611

TYPICAL: list[object] = [
    m.StartJob(JOB, "alice", "node:edge-2", "laptop", b"\x01sealed", 1_700_000_000.5),
    m.JobStateChanged(JOB, "edge-2", "running", 1, 1_700_000_001.25),
    m.OutputChunk(JOB, 3, 0, b"sealed output"),
    m.InputSent(JOB, "laptop", 4, b"sealed keys"),
    m.ControlSent(JOB, "laptop", 5, b"sealed control"),
    m.ReplayRequested(JOB, 10),
    m.ReplayFinished(JOB, "edge-2", 11, "running"),
    m.NodeHeartbeat("edge-2", 1_700_000_002.0, "0.1.0", "linux-aarch64", ("gpu", "arm"), 2, 1),
    m.Query("jobs", node="edge-2", state="exited", since=1_700_000_000.0, limit=50),
    m.QueryAnswered(True, b"\x90"),
    m.LogStored(JOB, "edge-2", f"alice/edge-2/{JOB}.rlog", "ab" * 32),
    m.Ping(1, 1_700_000_003.0),
    m.SendHeartbeat(1_700_000_004.0),
    m.PairRequested("abababababababababababababababab", "laptop", b"A" * 33),
    m.PairAnswered("abababababababababababababababab", "pi-1", b"B" * 33, b"p" * 32),
    m.PairConfirmed("abababababababababababababababab", b"p" * 32, b"s" * 120),
    m.PairEnded("abababababababababababababababab", True, "", "0123456789abcdef"),
    m.Pong("edge-2", 1, 1_700_000_003.0),
    m.KeyGranted("edge-2", "runlet-sealed-key-v1:" + "A" * 120),
]

EDGE: list[object] = [
    m.StartJob(
        CHILD,
        "a" * 64,
        "tag:gpu",
        "x",
        b"\0" * (256 * 1024),
        0.0,
        deadline=1e300,
        rows=1000,
        cols=1,
    ),
    m.StartJob(JOB, "u", "all", "o", b"", -1.5, deadline=None, rows=1, cols=1000),
    m.StartJob(JOB, "u", "any", "o", b"x", 3),
    m.JobStateChanged(
        CHILD,
        "n",
        "exited",
        2**63 - 1,
        0.0,
        target="all",
        exit_code=255,
        signal=127,
        detail="ünïcødé ✓ \n\0 " * 100,
    ),
    m.JobStateChanged(JOB, "n", "killed", 0, 1.0, signal=1, detail=""),
    m.OutputChunk(JOB, 0, 255, b""),
    m.OutputChunk(JOB, 2**63 - 1, 1, b"\xff" * m.MAX_SEALED),
    m.InputSent(CHILD, "v" * 64, 0, b""),
    m.ControlSent(JOB, "v", 2**63 - 1, b"c" * 4096),
    m.ReplayRequested(CHILD),
    m.ReplayFinished(JOB, "n", 0, "exited", exit_code=0, signal=None),
    m.ReplayFinished(CHILD, "n", 2**63 - 1, "killed", exit_code=255, signal=127),
    m.NodeHeartbeat("n", 0.0, "", "", (), 0, 0),
    m.NodeHeartbeat("n", 1.0, "v" * 1000, "p", tuple(f"t{i}" for i in range(wire.MAX_ITEMS))),
    m.Query("job", job_id=CHILD, limit=10_000),
    m.QueryAnswered(False, b"", error="e" * 1000),
    m.LogStored(CHILD, "n", "x.rlog", "0" * 64),
    m.Ping(2**63 - 1, 0.0),
    m.SendHeartbeat(0.0),
    m.PairRequested("ffffffffffffffffffffffffffffffff", "n" * 64, b""),
    m.PairAnswered("00000000000000000000000000000000", "x", b"", b""),
    m.PairConfirmed("00000000000000000000000000000000", b""),
    m.PairEnded("00000000000000000000000000000000", False, "r" * 200, "f" * 64),
    m.Pong("n", 0, -1.0),
    m.KeyGranted("n", "runlet-sealed-key-v1:"),
    m.KeyGranted("n" * 64, "runlet-sealed-key-v1:" + "-" * (m.MAX_SEALED_KEY - 21)),
]

ALL = TYPICAL + EDGE


def _raw(msg: Any) -> dict[str, Any]:
    """The msgpack map a message encodes to, as a plain dict."""
    raw: dict[str, Any] = msgpack.unpackb(wire.encode(msg), raw=False)
    return raw


def _pack(raw: object) -> bytes:
    data: bytes = msgpack.packb(raw, use_bin_type=True)
    return data


def _sample(cls: type[Any]) -> Any:
    return next(msg for msg in TYPICAL if type(msg) is cls)


def _tag(msg: object) -> str:
    """The type tag the codec writes for `msg` (the wire format's `t`)."""
    tag = _raw(msg)["t"]
    assert isinstance(tag, str)
    return tag


def _rejects(data: bytes, *needles: str) -> str:
    """Decoding `data` raises ProtocolError whose message contains every needle."""
    with pytest.raises(ProtocolError) as info:
        wire.decode(data)
    text = str(info.value)
    assert text, "a ProtocolError must say what is wrong"
    assert ": )" not in text, "the detail of a ProtocolError is never empty"
    for needle in needles:
        assert needle in text
    return text


def _decodes_or_rejects(data: bytes) -> None:
    """Anything may come in; only a valid message or ProtocolError may come out."""
    try:
        msg = wire.decode(data)
    except ProtocolError as exc:
        problem = str(exc)
    else:
        assert type(msg) in wire._TAGS
        assert wire.decode(wire.encode(msg)) == msg
        return
    assert problem, "a ProtocolError must say what is wrong"
    assert ": )" not in problem, "the detail of a ProtocolError is never empty"


# --- round trips ---------------------------------------------------------------------------


def test_samples_cover_every_registered_message() -> None:
    """The round-trip samples include at least one of every registered message class."""
    assert {type(msg) for msg in TYPICAL} == set(wire._TAGS)
    assert {type(msg) for msg in EDGE} == set(wire._TAGS)


@pytest.mark.parametrize("msg", ALL, ids=lambda msg: type(msg).__name__)
def test_round_trip(msg: object) -> None:
    """Decoding an encoded message gives back an equal message of the same class."""
    decoded = wire.decode(wire.encode(msg))
    assert type(decoded) is type(msg)
    assert decoded == msg


@pytest.mark.parametrize("msg", ALL, ids=lambda msg: type(msg).__name__)
def test_encoding_is_tagged_map(msg: Any) -> None:
    """A message is a msgpack map with its tag, the wire version and every field."""
    raw = _raw(msg)
    assert raw["t"] == _tag(msg)
    assert raw["v"] == wire.WIRE_VERSION
    assert type(raw["v"]) is int
    assert set(raw) == {"t", "v"} | {f.name for f in dataclasses.fields(msg)}


def test_tuples_travel_as_lists_and_come_back_as_tuples() -> None:
    """Tuple fields are encoded as msgpack arrays and decoded as tuples again."""
    msg = m.NodeHeartbeat("n", 1.0, "v", "p", ("a", "b"))
    assert _raw(msg)["tags"] == ["a", "b"]
    decoded = wire.decode(wire.encode(msg))
    assert isinstance(decoded.tags, tuple)


def test_integer_for_float_field_decodes_as_float() -> None:
    """An integer where a float is expected is accepted and becomes a float."""
    raw = _raw(_sample(m.JobStateChanged)) | {"at": 7}
    decoded = wire.decode(_pack(raw))
    assert decoded.at == 7.0
    assert type(decoded.at) is float


def test_optional_fields_may_be_absent() -> None:
    """A field with a default may be left out and takes its default."""
    raw = _raw(m.JobStateChanged(JOB, "n", "exited", 1, 2.0, exit_code=3))
    for name in ("target", "exit_code", "signal", "detail"):
        del raw[name]
    assert wire.decode(_pack(raw)) == m.JobStateChanged(JOB, "n", "exited", 1, 2.0)


def test_bytearray_and_memoryview_input() -> None:
    """Decode takes any bytes-like body, as delivered by the broker client."""
    data = wire.encode(_sample(m.OutputChunk))
    assert (
        wire.decode(cast(Any, bytearray(data)))
        == wire.decode(cast(Any, memoryview(data)))
        == wire.decode(data)
    )


def test_extra_unknown_fields_are_ignored() -> None:
    """Fields a newer peer may add are ignored, whatever their value."""
    msg = _sample(m.StartJob)
    raw = _raw(msg) | {"zz_new": [1, {"a": b"x"}, None], "priority": 9}
    assert wire.decode(_pack(raw)) == msg


def test_decode_as_checks_the_class() -> None:
    """decode_as returns the message of the asked class and rejects any other."""
    data = wire.encode(_sample(m.ReplayRequested))
    assert wire.decode_as(data, m.ReplayRequested) == _sample(m.ReplayRequested)
    with pytest.raises(ProtocolError, match="expected output, got replay"):
        wire.decode_as(data, m.OutputChunk)


def test_a_message_is_written_under_its_registered_tag() -> None:
    """The encoding's type tag is the one its class was registered under."""
    assert _tag(_sample(m.StartJob)) == "start_job"
    assert _tag(_sample(m.OutputChunk)) == "output"


# --- encode errors -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Unregistered:
    job_id: str


@pytest.mark.parametrize("thing", [_Unregistered(JOB), 1, "start_job", {"t": "replay"}, None])
def test_encode_unregistered_raises_type_error(thing: object) -> None:
    """Encoding anything that is not a registered message is a programming error."""
    with pytest.raises(TypeError, match="not a registered wire message"):
        wire.encode(thing)


def test_encode_oversize_raises_protocol_error() -> None:
    """A message that would encode past MAX_MESSAGE is refused by the sender."""
    msg = m.JobStateChanged(JOB, "n", "exited", 0, 1.0, detail="x" * (wire.MAX_MESSAGE + 1))
    with pytest.raises(ProtocolError, match="over the"):
        wire.encode(msg)


def test_register_same_tag_twice_fails() -> None:
    """A tag can only be registered once."""
    with pytest.raises(RuntimeError, match="registered twice"):

        @wire.message("output")
        @dataclass(frozen=True, slots=True)
        class Again:
            x: int


def test_register_unsupported_field_type_fails() -> None:
    """A field type the codec cannot check is refused when the class is registered."""
    with pytest.raises(TypeError, match="unsupported"):

        @wire.message("test-unsupported-field")
        @dataclass(frozen=True, slots=True)
        class Bad:
            x: list[int]

    assert "test-unsupported-field" not in wire._REGISTRY


# --- hostile framing -------------------------------------------------------------------------


def test_empty_bytes() -> None:
    """An empty body is rejected as an empty message."""
    _rejects(b"", "empty")


@pytest.mark.parametrize("body", ["text", None, 5, [b"x"]])
def test_non_bytes_body(body: Any) -> None:
    """A body that is not bytes is rejected, naming its type."""
    _rejects(body, "must be bytes")


def test_oversize() -> None:
    """A body over MAX_MESSAGE bytes is rejected before it is parsed."""
    _rejects(b"\xc0" * (wire.MAX_MESSAGE + 1), "over the", str(wire.MAX_MESSAGE))


@pytest.mark.parametrize("msg", ALL, ids=lambda msg: type(msg).__name__)
def test_trailing_bytes(msg: object) -> None:
    """Anything after the message is rejected as trailing bytes."""
    data = wire.encode(msg)
    for extra in (b"\x00", b"\xc0", data):
        _rejects(data + extra, "trailing bytes")


@pytest.mark.parametrize("msg", TYPICAL, ids=lambda msg: type(msg).__name__)
def test_every_truncation_is_rejected(msg: object) -> None:
    """Every proper prefix of a valid encoding is rejected with ProtocolError."""
    data = wire.encode(msg)
    for length in range(len(data)):
        _rejects(data[:length])


@pytest.mark.parametrize(
    ("raw", "kind"),
    [([], "list"), (["t", "replay"], "list"), (1, "int"), ("replay", "str"), (None, "NoneType")],
)
def test_top_level_must_be_a_map(raw: object, kind: str) -> None:
    """A top level that is not a map is rejected, naming what it is."""
    _rejects(_pack(raw), "must be a map", kind)


@pytest.mark.parametrize("tag", ["nope", "", "START_JOB", 1, None, b"output", ["output"]])
def test_unknown_tag(tag: object) -> None:
    """An unknown or mistyped tag is rejected as an unknown message type."""
    raw = _raw(_sample(m.OutputChunk)) | {"t": tag}
    _rejects(_pack(raw), "unknown message type")


def test_missing_tag() -> None:
    """A map without a tag is rejected as an unknown message type."""
    raw = _raw(_sample(m.OutputChunk))
    del raw["t"]
    _rejects(_pack(raw), "unknown message type")


@pytest.mark.parametrize("version", [0, 2, -1, "1", None, 2**64 - 1, [1], True, 1.0, 1.5])
def test_wrong_version(version: object) -> None:
    """Any version but the integer WIRE_VERSION (not true, not 1.0) is rejected, naming the tag."""
    raw = _raw(_sample(m.OutputChunk)) | {"v": version}
    _rejects(_pack(raw), "output", "unsupported wire version")


def test_missing_version() -> None:
    """A message without a version is rejected."""
    raw = _raw(_sample(m.OutputChunk))
    del raw["v"]
    _rejects(_pack(raw), "unsupported wire version")


def test_non_text_map_keys() -> None:
    """Integer map keys are rejected (strict map keys)."""
    _rejects(_pack({1: "output", "v": 1}), "not a valid msgpack")


def test_bad_utf8_string() -> None:
    """A string that is not UTF-8 is rejected as invalid msgpack."""
    data = b"\x82\xa1t\xa2\xff\xfe\xa1v\x01"
    _rejects(data, "not a valid msgpack")


def test_reserved_byte() -> None:
    """The never-used msgpack byte 0xc1 is rejected, with a detail even though msgpack has none."""
    _rejects(b"\xc1", "not a valid msgpack", "malformed data")


@pytest.mark.parametrize("data", [b"\x81", b"\x92\xc0", b"\xa5abc"])
def test_incomplete_input_names_the_problem(data: bytes) -> None:
    """A body cut short is rejected as invalid msgpack that says the input is incomplete."""
    _rejects(data, "not a valid msgpack", "incomplete")


@pytest.mark.parametrize("depth", [2000, 100_000])
def test_deeply_nested_arrays(depth: int) -> None:
    """Arrays nested thousands deep are rejected as too deep, not a RecursionError or crash."""
    _rejects(b"\x91" * depth + b"\xc0", "message nested too deeply")


def test_deeply_nested_value_in_a_field() -> None:
    """A deeply nested value in an extra field of a valid message is rejected."""
    packed = _pack(_raw(_sample(m.ReplayRequested)) | {"x": None})
    assert packed.endswith(b"\xc0")  # the None of "x", the last entry
    _rejects(packed[:-1] + b"\x91" * 5000 + b"\xc0", "message nested too deeply")


@pytest.mark.parametrize(
    "header",
    [
        b"\xdd\xff\xff\xff\xff",  # array32 of 4 billion items
        b"\xdf\xff\xff\xff\xff",  # map32 of 4 billion pairs
        b"\xdb\xff\xff\xff\xff",  # str32 of 4 GiB
        b"\xc6\xff\xff\xff\xff",  # bin32 of 4 GiB
        b"\xdc\x10\x01",  # array16 one past MAX_ITEMS
        b"\xde\x01\x01",  # map16 of 257 pairs
    ],
)
def test_huge_headers(header: bytes) -> None:
    """Length headers far beyond the limits are rejected without allocating."""
    _rejects(header + b"\x00" * 16, "not a valid msgpack")


def test_too_many_fields() -> None:
    """A map with more than 256 entries is rejected even if the rest is valid."""
    raw = _raw(_sample(m.ReplayRequested)) | {f"x{i}": i for i in range(300)}
    _rejects(_pack(raw), "not a valid msgpack")


def test_string_over_cap() -> None:
    """A string longer than MAX_STR is rejected at decoding."""
    raw = _raw(_sample(m.JobStateChanged)) | {"detail": "x" * (wire.MAX_STR + 1)}
    _rejects(_pack(raw), "not a valid msgpack")


def test_string_at_cap() -> None:
    """A string of exactly MAX_STR characters is accepted."""
    raw = _raw(_sample(m.JobStateChanged)) | {"detail": "x" * wire.MAX_STR}
    assert wire.decode(_pack(raw)).detail == "x" * wire.MAX_STR


@pytest.mark.parametrize("field", ["running", "queued"])
def test_heartbeat_with_a_negative_count_is_rejected(field: str) -> None:
    """A heartbeat claiming a negative running or queued count is a ProtocolError."""
    raw = _raw(_sample(m.NodeHeartbeat)) | {field: -1}
    _rejects(_pack(raw), "presence:", "cannot be negative")


def test_tuple_over_cap() -> None:
    """A list of more than MAX_ITEMS items is rejected at decoding."""
    raw = _raw(_sample(m.NodeHeartbeat)) | {"tags": ["t"] * (wire.MAX_ITEMS + 1)}
    _rejects(_pack(raw), "not a valid msgpack")


@pytest.mark.parametrize(
    "ext",
    [
        msgpack.ExtType(5, b"abc"),
        msgpack.Timestamp(0),  # the one predefined extension, type -1
        msgpack.ExtType(0, b"x" * 100),
    ],
)
def test_ext_types(ext: object) -> None:
    """Extension types are rejected, at the top level and inside a field."""
    _rejects(_pack(ext), "not a valid msgpack")
    raw = _raw(_sample(m.OutputChunk)) | {"sealed": ext}
    _rejects(_pack(raw), "not a valid msgpack")


def test_empty_ext_in_a_field_is_a_type_error() -> None:
    """A zero-length extension value where bytes are expected is rejected by type."""
    raw = _raw(_sample(m.OutputChunk)) | {"sealed": msgpack.ExtType(1, b"")}
    _rejects(_pack(raw), "output.sealed", "expected bytes")


# --- fields ----------------------------------------------------------------------------------


def _fields(cls: type[Any]) -> list[tuple[str, Any, bool]]:
    hints = typing.get_type_hints(cls)
    return [
        (f.name, hints[f.name], f.default is dataclasses.MISSING) for f in dataclasses.fields(cls)
    ]


_CASES_MISSING = [
    pytest.param(cls, name, id=f"{cls.__name__}.{name}")
    for cls in wire._TAGS
    for name, _, required in _fields(cls)
    if required
]


@pytest.mark.parametrize(("cls", "name"), _CASES_MISSING)
def test_missing_required_field(cls: type[Any], name: str) -> None:
    """Leaving out a required field is rejected, naming the field."""
    raw = _raw(_sample(cls))
    del raw[name]
    _rejects(_pack(raw), _tag(_sample(cls)), f"missing field {name!r}")


NAN = float("nan")
INF = float("inf")
WRONG: dict[str, list[object]] = {
    "str": [1, 0, True, 1.5, b"text", ["a"], {"a": "b"}],
    "int": [True, False, 1.0, 1.5, "1", b"1", [1], {"1": 1}, NAN, INF],
    "float": [True, False, "1.0", b"1", [1.0], {"a": 1}, NAN, INF, -INF],
    "bytes": ["text", 1, True, 1.5, [1, 2], {"a": b"x"}],
    "bool": [1, 0, "true", b"1", 1.0, [True], {"a": True}],
    "tuple[str, ...]": ["a", b"a", 1, {"a": 1}, [1], ["a", 2], [b"a"], [None], [True], [["a"]]],
}


def _kind(tp: Any) -> tuple[str, bool]:
    """The WRONG key for an annotation and whether None is allowed."""
    args = typing.get_args(tp)
    optional = type(None) in args
    if optional:
        (tp,) = (a for a in args if a is not type(None))
    name = "tuple[str, ...]" if typing.get_origin(tp) is tuple else tp.__name__
    return name, optional


_CASES_WRONG = [
    pytest.param(cls, name, value, id=f"{cls.__name__}.{name}={value!r}")
    for cls in wire._TAGS
    for name, tp, _ in _fields(cls)
    for value in WRONG[_kind(tp)[0]] + ([] if _kind(tp)[1] else [None])
]


@pytest.mark.parametrize(("cls", "name", "value"), _CASES_WRONG)
def test_every_field_with_a_wrong_type(cls: type[Any], name: str, value: object) -> None:
    """A value of the wrong type in any field is rejected, naming tag and field."""
    raw = _raw(_sample(cls)) | {name: value}
    _rejects(_pack(raw), f"{_tag(_sample(cls))}.{name}")


def test_every_field_type_is_covered() -> None:
    """Every field annotation in the registry has wrong values to try."""
    kinds = {_kind(tp)[0] for cls in wire._TAGS for _, tp, _ in _fields(cls)}
    assert kinds <= set(WRONG)


@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_non_finite_floats_are_rejected(value: float) -> None:
    """NaN and infinities in a float field are rejected as not finite."""
    raw = _raw(_sample(m.StartJob)) | {"deadline": value}
    _rejects(_pack(raw), "start_job.deadline", "finite")


@pytest.mark.parametrize("value", [None, 5.0, 5])
def test_optional_float_accepts_none_and_numbers(value: float | None) -> None:
    """An optional float field takes None, floats and integers."""
    raw = _raw(_sample(m.StartJob)) | {"deadline": value}
    assert wire.decode(_pack(raw)).deadline == value


def test_tuple_item_error_names_its_index() -> None:
    """A bad item in a list field is reported with its index."""
    raw = _raw(_sample(m.NodeHeartbeat)) | {"tags": ["ok", 7]}
    _rejects(_pack(raw), "presence.tags[1]", "expected text")


# --- values checked by the message classes ---------------------------------------------------

BAD_JOB_IDS = [
    "",
    "abc",
    JOB.upper(),
    JOB[:-1],
    JOB + "0",
    JOB + ".",
    JOB + ".a.b",
    JOB + ".é",
    JOB + "." + "n" * 65,
    JOB + "\n",
    "g" * 32,
    "../" + JOB,
]
BAD_NAMES = ["", "a.b", "n" * 65, "é", "a b", "a\n", "a/b", "*", "#", "tag:x"]


_WITH_JOB_ID = [cls for cls in wire._TAGS if "job_id" in {f.name for f in dataclasses.fields(cls)}]


@pytest.mark.parametrize("job_id", BAD_JOB_IDS)
@pytest.mark.parametrize("cls", _WITH_JOB_ID, ids=lambda cls: cls.__name__)
def test_invalid_job_id(cls: type[Any], job_id: str) -> None:
    """Every message with a job id rejects an invalid one, by decoding or by construction."""
    raw = _raw(_sample(cls)) | {"job_id": job_id}
    _rejects(_pack(raw), _tag(_sample(cls)), "invalid job id")
    with pytest.raises(ValueError, match="invalid job id"):
        dataclasses.replace(_sample(cls), job_id=job_id)


def test_every_message_but_presence_queries_and_pings_has_a_job_id() -> None:
    """The job-id checks above reach every message class that carries a job."""
    assert set(wire._TAGS) - set(_WITH_JOB_ID) == {
        m.NodeHeartbeat,
        m.SendHeartbeat,
        m.PairRequested,
        m.PairAnswered,
        m.PairConfirmed,
        m.PairEnded,
        m.QueryAnswered,
        m.Ping,
        m.Pong,
        m.KeyGranted,
    }


_NAME_FIELDS = [
    (m.StartJob, "user"),
    (m.StartJob, "origin"),
    (m.JobStateChanged, "node"),
    (m.InputSent, "viewer"),
    (m.ControlSent, "viewer"),
    (m.ReplayFinished, "node"),
    (m.NodeHeartbeat, "node"),
    (m.KeyGranted, "node"),
]


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize(
    ("cls", "field"), _NAME_FIELDS, ids=[f"{c.__name__}.{f}" for c, f in _NAME_FIELDS]
)
def test_invalid_names(cls: type[Any], field: str, name: str) -> None:
    """Node, user, origin and viewer names must be routing-key words."""
    raw = _raw(_sample(cls)) | {field: name}
    _rejects(_pack(raw), _tag(_sample(cls)), "invalid")
    with pytest.raises(ValueError, match="invalid"):
        dataclasses.replace(_sample(cls), **{field: name})


@pytest.mark.parametrize("tag", BAD_NAMES)
def test_invalid_tag_names(tag: str) -> None:
    """Every tag of a heartbeat must be a valid name."""
    raw = _raw(_sample(m.NodeHeartbeat)) | {"tags": ["ok", tag]}
    _rejects(_pack(raw), "presence", "invalid tag")


@pytest.mark.parametrize("target", ["", "node:", "tag:", "edge-2", "node:a.b", "anything", "tag"])
def test_invalid_start_target(target: str) -> None:
    """A StartJob's target must be node:N, any, all or tag:T."""
    raw = _raw(_sample(m.StartJob)) | {"target": target}
    _rejects(_pack(raw), "start_job", "invalid target")


_SEQ_FIELDS = [
    (m.JobStateChanged, "seq"),
    (m.OutputChunk, "seq"),
    (m.InputSent, "seq"),
    (m.ControlSent, "seq"),
    (m.ReplayRequested, "from_seq"),
    (m.ReplayFinished, "next_seq"),
]


@pytest.mark.parametrize("seq", [-1, -(2**63), 2**63, 2**64 - 1])
@pytest.mark.parametrize(
    ("cls", "field"), _SEQ_FIELDS, ids=[f"{c.__name__}.{f}" for c, f in _SEQ_FIELDS]
)
def test_seq_out_of_range(cls: type[Any], field: str, seq: int) -> None:
    """Sequence numbers must be in 0..2**63-1."""
    raw = _raw(_sample(cls)) | {field: seq}
    _rejects(_pack(raw), _tag(_sample(cls)), "out of range")


@pytest.mark.parametrize("flags", [-1, 256, 2**32])
def test_flags_out_of_range(flags: int) -> None:
    """Output chunk flags must fit in one byte."""
    raw = _raw(_sample(m.OutputChunk)) | {"flags": flags}
    _rejects(_pack(raw), "output", "flags")


@pytest.mark.parametrize("state", ["", "RUNNING", "done", "running ", "exited\0"])
@pytest.mark.parametrize("cls", [m.JobStateChanged, m.ReplayFinished])
def test_unknown_state(cls: type[Any], state: str) -> None:
    """A state outside STATES is rejected."""
    raw = _raw(_sample(cls)) | {"state": state}
    _rejects(_pack(raw), _tag(_sample(cls)), "unknown state")


_STATUS_CLASSES = [m.JobStateChanged, m.ReplayFinished]


@pytest.mark.parametrize("exit_code", [-1, 256, -(2**63), 2**64 - 1])
@pytest.mark.parametrize("cls", _STATUS_CLASSES)
def test_exit_code_out_of_range(cls: type[Any], exit_code: int) -> None:
    """An exit code outside 0..255 is rejected when decoding, naming the range."""
    raw = _raw(_sample(cls)) | {"exit_code": exit_code}
    _rejects(_pack(raw), _tag(_sample(cls)), f"exit code {exit_code} out of range 0..255")


@pytest.mark.parametrize("signal", [0, -1, 128, 2**64 - 1])
@pytest.mark.parametrize("cls", _STATUS_CLASSES)
def test_signal_out_of_range(cls: type[Any], signal: int) -> None:
    """A signal outside 1..127 is rejected when decoding, naming the range."""
    raw = _raw(_sample(cls)) | {"signal": signal}
    _rejects(_pack(raw), _tag(_sample(cls)), f"signal {signal} out of range 1..127")


@pytest.mark.parametrize(("exit_code", "signal"), [(0, 1), (255, 127), (None, None)])
@pytest.mark.parametrize("cls", _STATUS_CLASSES)
def test_status_bounds_decode(cls: type[Any], exit_code: int | None, signal: int | None) -> None:
    """Exit codes 0 and 255, signals 1 and 127, and None all decode."""
    raw = _raw(_sample(cls)) | {"exit_code": exit_code, "signal": signal}
    decoded = wire.decode(_pack(raw))
    assert (decoded.exit_code, decoded.signal) == (exit_code, signal)


@pytest.mark.parametrize(("rows", "cols"), [(0, 80), (24, 0), (1001, 80), (24, 1001), (-1, -1)])
def test_terminal_size_out_of_range(rows: int, cols: int) -> None:
    """A StartJob's terminal size must be 1..1000 in each direction."""
    raw = _raw(_sample(m.StartJob)) | {"rows": rows, "cols": cols}
    _rejects(_pack(raw), "start_job", "terminal size")


@pytest.mark.parametrize(
    ("cls", "field", "limit"),
    [
        (m.StartJob, "sealed_command", 256 * 1024),
        (m.OutputChunk, "sealed", m.MAX_SEALED),
        (m.InputSent, "sealed", m.MAX_SEALED),
        (m.ControlSent, "sealed", 4096),
    ],
)
def test_sealed_size_caps(cls: type[Any], field: str, limit: int) -> None:
    """Sealed payloads one byte over their cap are rejected; at the cap they pass."""
    at_cap = _raw(_sample(cls)) | {field: b"x" * limit}
    assert getattr(wire.decode(_pack(at_cap)), field) == b"x" * limit
    over = _raw(_sample(cls)) | {field: b"x" * (limit + 1)}
    _rejects(_pack(over), _tag(_sample(cls)), "over the", str(limit))


# --- fuzzing ---------------------------------------------------------------------------------


def test_random_bytes() -> None:
    """2000 random byte strings each decode to a valid message or raise ProtocolError."""
    rng = random.Random(SEED)
    first_bytes = [0x80 | n for n in range(16)] + [0xDE, 0xDF]  # often start like a map
    for i in range(2000):
        data = rng.randbytes(rng.randrange(1, 200))
        if i % 2:
            data = bytes([rng.choice(first_bytes)]) + data
        _decodes_or_rejects(data)


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    match rng.randrange(6):
        case 0:
            return bytes(buf[: rng.randrange(len(buf))])
        case 1:
            for _ in range(rng.randrange(1, 4)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
        case 2:
            pos = rng.randrange(len(buf))
            buf[pos] ^= 1 << rng.randrange(8)
        case 3:
            pos = rng.randrange(len(buf) + 1)
            buf[pos:pos] = rng.randbytes(rng.randrange(1, 8))
        case 4:
            pos = rng.randrange(len(buf))
            del buf[pos : pos + rng.randrange(1, 8)]
        case _:
            a, b = sorted(rng.randrange(len(buf)) for _ in range(2))
            buf[a:b] = buf[a:b][::-1]
    return bytes(buf)


def test_random_mutations_of_valid_encodings() -> None:
    """2000 mutated or truncated valid encodings each decode validly or raise ProtocolError."""
    rng = random.Random(SEED + 1)
    encodings = [wire.encode(msg) for msg in TYPICAL]
    decoded_some = False
    for _ in range(2000):
        data = _mutate(rng, rng.choice(encodings))
        try:
            wire.decode(data)
            decoded_some = True
        except ProtocolError:
            pass
        _decodes_or_rejects(data)
    assert decoded_some, "some single-byte mutations (e.g. in a sealed blob) stay valid"


def test_random_field_values() -> None:
    """Random msgpack values in every field each decode validly or raise ProtocolError."""
    rng = random.Random(SEED + 2)
    pool: list[object] = [
        None, True, False, 0, -1, 1, 2**63, 2**64 - 1, -(2**63), 0.5, NAN, INF, "", "x",
        "a" * 70, JOB, "node:x", b"", b"\xff", [], ["a"], [1], {}, {"a": 1}, "exited",
    ]  # fmt: skip
    for _ in range(2000):
        msg = rng.choice(TYPICAL)
        raw = _raw(msg)
        for name in rng.sample(sorted(raw), rng.randrange(1, 3)):
            raw[name] = rng.choice(pool)
        _decodes_or_rejects(_pack(raw))


# --- encode checks what decode checks ---------------------------------------------------------


@pytest.mark.parametrize(
    ("msg", "problem"),
    [
        (m.JobStateChanged(JOB, "n", "exited", 0, NAN), "job_state.at: expected a finite number"),
        (m.JobStateChanged(JOB, "n", "exited", 0, -INF), "job_state.at: expected a finite"),
        (
            m.StartJob(JOB, "u", "any", "o", b"", 1.0, deadline=INF),
            "start_job.deadline: expected a finite number",
        ),
        (
            m.JobStateChanged(JOB, "n", "exited", 0, 1.0, detail="x" * (wire.MAX_STR + 1)),
            f"job_state.detail: text of {wire.MAX_STR + 1} UTF-8 bytes, over the {wire.MAX_STR}",
        ),
        (
            m.NodeHeartbeat("n", 1.0, "v", "p", ("t",) * (wire.MAX_ITEMS + 1)),
            f"presence.tags: {wire.MAX_ITEMS + 1} items, over the {wire.MAX_ITEMS} limit",
        ),
    ],
    ids=["nan", "-inf", "inf", "long-string", "long-tuple"],
)
def test_encode_refuses_what_decode_rejects(msg: object, problem: str) -> None:
    """Encode refuses non-finite floats and oversize fields, naming tag and field."""
    with pytest.raises(ProtocolError) as info:
        wire.encode(msg)
    assert problem in str(info.value)


def test_encode_accepts_fields_at_their_caps() -> None:
    """A string of MAX_STR characters and a tuple of MAX_ITEMS items still encode and decode."""
    msg = m.JobStateChanged(JOB, "n", "exited", 0, 1.0, detail="x" * wire.MAX_STR)
    assert wire.decode(wire.encode(msg)) == msg
    beat = m.NodeHeartbeat("n", 1.0, "v", "p", ("t",) * wire.MAX_ITEMS)
    assert wire.decode(wire.encode(beat)) == beat


def test_encode_refuses_text_over_the_byte_cap() -> None:
    """Text under MAX_STR characters but over MAX_STR UTF-8 bytes is refused by encode too."""
    msg = m.JobStateChanged(JOB, "n", "exited", 0, 1.0, detail="é" * (wire.MAX_STR // 2 + 1))
    with pytest.raises(ProtocolError, match=f"{wire.MAX_STR + 2} UTF-8 bytes, over the"):
        wire.encode(msg)


def test_encode_accepts_non_ascii_text_at_the_byte_cap() -> None:
    """Text of exactly MAX_STR UTF-8 bytes is sent, and every receiver takes it."""
    msg = m.JobStateChanged(JOB, "n", "exited", 0, 1.0, detail="é" * (wire.MAX_STR // 2))
    assert wire.decode(wire.encode(msg)) == msg


def test_encode_refuses_a_long_text_with_a_lone_surrogate() -> None:
    """A lone surrogate (which UTF-8 cannot carry) in a long text is a ProtocolError."""
    msg = m.JobStateChanged(JOB, "n", "exited", 0, 1.0, detail="x" * 20_000 + chr(0xD800))
    with pytest.raises(ProtocolError, match=r"job_state\.detail: text is not valid Unicode"):
        wire.encode(msg)


@pytest.mark.parametrize("value", [2**64, 10**30])
def test_encode_refuses_integers_outside_64_bits(value: int) -> None:
    """An integer msgpack cannot carry is a ProtocolError naming the field, not an overflow."""
    beat = m.NodeHeartbeat("n", 1.0, "v", "p", (), running=value)
    with pytest.raises(ProtocolError, match=r"presence\.running: integer out of the 64-bit range"):
        wire.encode(beat)


# --- regressions: each of these once failed ---------------------------------------------------


@pytest.mark.parametrize(
    "text", [chr(0xD800), "x" + chr(0xDFFF), "a" * 16_383 + chr(0xDC00)], ids=["1", "2", "16384"]
)
def test_encode_refuses_a_short_text_with_a_lone_surrogate(text: str) -> None:
    """A lone surrogate in a short text is a ProtocolError too, like in a long one."""
    msg = m.JobStateChanged(JOB, "n", "exited", 0, 1.0, detail=text)
    with pytest.raises(ProtocolError, match=r"job_state\.detail: text is not valid Unicode"):
        wire.encode(msg)
