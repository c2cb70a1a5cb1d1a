"""Sealed payloads (protocol.payloads): commands, control requests and keystrokes open only with
the right key and position, and hostile plaintext under valid crypto is a ProtocolError."""

from __future__ import annotations

import math
import re
import threading
from typing import Any

import msgpack  # type: ignore[import-untyped, unused-ignore]
import pytest

from runlet.errors import CryptoError, ProtocolError
from runlet.protocol.crypto import OVERHEAD, FleetKey, JobKey, Kind
from runlet.protocol.payloads import (
    MAX_ARGV,
    MAX_ENV,
    MAX_TIMEOUT,
    Control,
    JobSpec,
    open_input,
    seal_input,
)

JOB = "0123456789abcdef0123456789abcdef"
OTHER_JOB = "fedcba9876543210fedcba9876543210"
BAD_TIMEOUT = re.escape(f"timeout must be a number of seconds in (0, {MAX_TIMEOUT:.0f}]")


@pytest.fixture
def fleet() -> FleetKey:
    return FleetKey(bytes(range(32)))


@pytest.fixture
def key(fleet: FleetKey) -> JobKey:
    return fleet.job_key(JOB)


def _seal_command(key: JobKey, body: object) -> bytes:
    """Seal hand-made msgpack as a command: valid crypto, whatever plaintext."""
    return key.seal(Kind.COMMAND, 0, msgpack.packb(body, use_bin_type=True))


def _seal_control(key: JobKey, body: object, viewer: str = "laptop", seq: int = 1) -> bytes:
    return key.seal(Kind.CONTROL, seq, msgpack.packb(body, use_bin_type=True), sender=viewer)


# --- JobSpec -------------------------------------------------------------------------------

SPECS = [
    JobSpec(("uptime",)),
    JobSpec(("ls", "-l", "/tmp")),
    JobSpec(("echo hi | tr a-z A-Z",), {"LANG": "C.UTF-8", "EMPTY": ""}, "/srv", 30.0),
    JobSpec(("printf", "%s\n", "ünïcødé ✓", ""), {}, None, 0.001),
    JobSpec(tuple(f"a{i}" for i in range(MAX_ARGV)), {f"K{i}": "v" for i in range(MAX_ENV)}),
]


@pytest.mark.parametrize("spec", SPECS, ids=range(len(SPECS)))
def test_job_spec_round_trip(key: JobKey, spec: JobSpec) -> None:
    """A sealed JobSpec opens to an equal JobSpec with the same key."""
    assert JobSpec.open(key, spec.seal(key)) == spec


def test_job_spec_integer_timeout_becomes_float(key: JobKey) -> None:
    """An integer timeout is accepted and opened as a float."""
    spec = JobSpec.open(key, _seal_command(key, {"argv": ["x"], "timeout": 5}))
    assert spec.timeout == 5.0
    assert isinstance(spec.timeout, float)


def test_job_spec_minimal_body(key: JobKey) -> None:
    """Only argv is required; env, cwd and timeout default to empty, None and None."""
    assert JobSpec.open(key, _seal_command(key, {"argv": ["x"]})) == JobSpec(("x",))


def test_job_spec_is_encrypted(key: JobKey) -> None:
    """The command line does not appear in the sealed bytes."""
    sealed = JobSpec(("echo supersecret",), {"TOKEN": "hunter2"}).seal(key)
    assert b"supersecret" not in sealed
    assert b"hunter2" not in sealed


def test_job_spec_other_fleet_key(key: JobKey) -> None:
    """A command sealed under another fleet key does not open."""
    other = FleetKey(bytes(32)).job_key(JOB)
    with pytest.raises(CryptoError):
        JobSpec.open(key, JobSpec(("uptime",)).seal(other))


def test_job_spec_other_job(fleet: FleetKey, key: JobKey) -> None:
    """A command sealed for another job cannot be replayed under this one."""
    sealed = JobSpec(("uptime",)).seal(fleet.job_key(OTHER_JOB))
    with pytest.raises(CryptoError):
        JobSpec.open(key, sealed)


def test_job_spec_other_kind(key: JobKey) -> None:
    """Keystrokes sealed for the job cannot be opened as its command."""
    sealed = seal_input(key, "", 0, msgpack.packb({"argv": ["rm", "-rf", "/"]}))
    with pytest.raises(CryptoError):
        JobSpec.open(key, sealed)


def test_job_spec_tampered(key: JobKey) -> None:
    """Flipping any single byte of a sealed command makes it fail to open."""
    sealed = JobSpec(("uptime",)).seal(key)
    for i in range(len(sealed)):
        tampered = bytearray(sealed)
        tampered[i] ^= 0x01
        with pytest.raises(CryptoError):
            JobSpec.open(key, bytes(tampered))


@pytest.mark.parametrize("length", [0, 1, OVERHEAD - 1, OVERHEAD])
def test_job_spec_truncated(key: JobKey, length: int) -> None:
    """A sealed command cut short fails to open."""
    with pytest.raises(CryptoError):
        JobSpec.open(key, JobSpec(("uptime",)).seal(key)[:length])


HOSTILE_COMMANDS: list[tuple[object, str]] = [
    (["uptime"], "must be a map"),
    ("uptime", "must be a map"),
    (None, "must be a map"),
    (7, "must be a map"),
    ({}, "argv must be a non-empty list"),
    ({"argv": []}, "argv must be a non-empty list"),
    ({"argv": "uptime"}, "argv must be a non-empty list"),
    ({"argv": None}, "argv must be a non-empty list"),
    ({"argv": {"0": "x"}}, "argv must be a non-empty list"),
    ({"argv": ["a\0b"]}, "without NUL"),
    ({"argv": ["ok", "\0"]}, "without NUL"),
    ({"argv": [1]}, "argv items must be text"),
    ({"argv": [None]}, "argv items must be text"),
    ({"argv": [["x"]]}, "argv items must be text"),
    ({"argv": ["x", True]}, "argv items must be text"),
    ({"argv": ["x"], "env": "A=1"}, "env must be a map"),
    ({"argv": ["x"], "env": ["A=1"]}, "env must be a map"),
    ({"argv": ["x"], "env": {"A": 1}}, "env value of 'A' must be text"),
    ({"argv": ["x"], "env": {"A": None}}, "env value of 'A' must be text"),
    ({"argv": ["x"], "env": {"A": ["b"]}}, "env value of 'A' must be text"),
    ({"argv": ["x"], "env": {"A=B": "c"}}, "env names must be non-empty text without '='"),
    ({"argv": ["x"], "env": {"=": "c"}}, "env names must be non-empty text without '='"),
    ({"argv": ["x"], "env": {"A\0": "c"}}, "env names and values must not contain NUL"),
    ({"argv": ["x"], "env": {"A": "c\0"}}, "env names and values must not contain NUL"),
    ({"argv": ["x"], "cwd": 1}, "cwd must be text"),
    ({"argv": ["x"], "cwd": ["/"]}, "cwd must be text"),
    ({"argv": ["x"], "cwd": "\0"}, "cwd must be text without NUL"),
    ({"argv": ["x"], "timeout": -1}, BAD_TIMEOUT),
    ({"argv": ["x"], "timeout": -0.5}, BAD_TIMEOUT),
    ({"argv": ["x"], "timeout": 0}, BAD_TIMEOUT),
    ({"argv": ["x"], "timeout": True}, BAD_TIMEOUT),
    ({"argv": ["x"], "timeout": "10"}, BAD_TIMEOUT),
    ({"argv": ["x"], "timeout": [10]}, BAD_TIMEOUT),
    ({"argv": ["x"], "timeout": -math.inf}, BAD_TIMEOUT),
]


@pytest.mark.parametrize(
    ("body", "problem"), HOSTILE_COMMANDS, ids=[repr(b)[:50] for b, _ in HOSTILE_COMMANDS]
)
def test_hostile_command_plaintext(key: JobKey, body: object, problem: str) -> None:
    """A well-sealed but malformed command is a ProtocolError that says what is wrong."""
    with pytest.raises(ProtocolError, match=problem):
        JobSpec.open(key, _seal_command(key, body))


@pytest.mark.parametrize(
    "plaintext",
    [
        b"",
        b"\xc1",
        b"\x81",  # a map cut short
        b"\x81\xa4argv\x91\xa1x\x00",  # trailing bytes
        b"\x81\x01\x02",  # an integer map key
        b"\x81\xa4argv\x91\xa2\xff\xfe",  # not UTF-8
        b"\x81\xa4argv\x91\xc4\x01x",  # bytes in argv
        b"\x91" * 100_000,  # nested too deeply
        b"\xdd\xff\xff\xff\xff",  # a 4-billion item array header
        b"\xdf\xff\xff\xff\xff",  # a 4-billion pair map header
        b"\xd4\x01\x00",  # an ext type
    ],
)
def test_undecodable_command_plaintext(key: JobKey, plaintext: bytes) -> None:
    """Plaintext that is not a msgpack map is a ProtocolError, never another exception."""
    with pytest.raises(ProtocolError, match="command"):
        JobSpec.open(key, key.seal(Kind.COMMAND, 0, plaintext))


def test_huge_argv_list(key: JobKey) -> None:
    """An argv longer than MAX_ARGV items is refused."""
    with pytest.raises(ProtocolError, match="command"):
        JobSpec.open(key, _seal_command(key, {"argv": ["x"] * (MAX_ARGV + 1)}))


def test_huge_env(key: JobKey) -> None:
    """An environment of more than MAX_ENV variables is refused."""
    env = {f"K{i}": "v" for i in range(MAX_ENV + 1)}
    with pytest.raises(ProtocolError, match="command"):
        JobSpec.open(key, _seal_command(key, {"argv": ["x"], "env": env}))


def test_job_spec_env_may_be_absent_or_empty(key: JobKey) -> None:
    """A command without env, or with an empty env map, opens with an empty environment."""
    for body in ({"argv": ["x"]}, {"argv": ["x"], "env": {}}):
        assert JobSpec.open(key, _seal_command(key, body)).env == {}


def test_job_spec_tiny_finite_timeout(key: JobKey) -> None:
    """The smallest positive timeout is finite and accepted."""
    body = {"argv": ["x"], "timeout": 5e-324}
    assert JobSpec.open(key, _seal_command(key, body)).timeout == 5e-324


def test_unknown_command_fields_are_ignored(key: JobKey) -> None:
    """Extra fields in a command body are ignored, like on the wire."""
    body = {"argv": ["x"], "priority": 5, "future": {"a": [1]}}
    assert JobSpec.open(key, _seal_command(key, body)) == JobSpec(("x",))


@pytest.mark.parametrize(
    "command",
    [
        "echo hi",
        "ls|wc",
        "a;b",
        "a&&b",
        "echo $HOME",
        "cat <in",
        "echo >out",
        "(sub)",
        "echo 'q'",
        'echo "q"',
        "ls *.py",
        "ls ?.py",
        "echo `date`",
        "a\nb",
        "a\tb",
        "~/bin/tool",
        "ls [ab].py",
        "echo {a,b}",
        "make#comment",
        "#",
        "!!",
        "FOO=bar",
    ],
)
def test_argv_for_shell_syntax(command: str) -> None:
    """A single argument with shell syntax runs through the configured shell."""
    assert JobSpec((command,)).argv_for("/bin/sh") == ["/bin/sh", "-c", command]


@pytest.mark.parametrize(
    "argv",
    [
        ("uptime",),
        ("/usr/bin/uptime",),
        ("ls", "-l"),
        ("echo", "a b", "$HOME", "|"),
        ("sh", "-c", "echo hi; exit 3"),
        ("./run-it_2.sh",),
        ("a,b:c@d%e+f",),
        ("ls", "~", "[ab]", "{a,b}", "#", "!", "A=b"),
    ],
)
def test_argv_for_plain(argv: tuple[str, ...]) -> None:
    """A plain word, or several arguments whatever they hold, run as an argv, no shell."""
    assert JobSpec(argv).argv_for("/bin/sh") == list(argv)


def test_argv_for_uses_the_given_shell() -> None:
    """The shell comes from the caller, not a hard-coded path."""
    assert JobSpec(("a b",)).argv_for("/bin/bash")[0] == "/bin/bash"


# --- Control -------------------------------------------------------------------------------

CONTROLS = [
    Control("cancel"),
    Control("resize", rows=1, cols=1),
    Control("resize", rows=1000, cols=1000),
    Control("resize", rows=50, cols=132),
    Control("signal", signal=1),
    Control("signal", signal=2),
    Control("signal", signal=64),
]


@pytest.mark.parametrize("control", CONTROLS, ids=repr)
def test_control_round_trip(key: JobKey, control: Control) -> None:
    """Every op seals and opens back to an equal Control for the same viewer and seq."""
    sealed = control.seal(key, "laptop", 9)
    assert Control.open(key, "laptop", 9, sealed) == control


def test_control_wrong_sender(key: JobKey) -> None:
    """A control request sealed by one viewer does not open as another's."""
    sealed = Control("cancel").seal(key, "laptop", 1)
    with pytest.raises(CryptoError):
        Control.open(key, "phone", 1, sealed)


def test_control_wrong_seq(key: JobKey) -> None:
    """A control request cannot be replayed under another sequence number."""
    sealed = Control("cancel").seal(key, "laptop", 1)
    with pytest.raises(CryptoError):
        Control.open(key, "laptop", 2, sealed)


def test_control_other_job(fleet: FleetKey, key: JobKey) -> None:
    """A control request for one job cannot be moved to another."""
    sealed = Control("cancel").seal(fleet.job_key(OTHER_JOB), "laptop", 1)
    with pytest.raises(CryptoError):
        Control.open(key, "laptop", 1, sealed)


def test_control_other_fleet(key: JobKey) -> None:
    """A control request sealed with another fleet key does not open."""
    sealed = Control("cancel").seal(FleetKey(bytes(32)).job_key(JOB), "laptop", 1)
    with pytest.raises(CryptoError):
        Control.open(key, "laptop", 1, sealed)


def test_control_tampered(key: JobKey) -> None:
    """A flipped bit in a sealed control request makes it fail to open."""
    sealed = bytearray(Control("signal", signal=9).seal(key, "laptop", 1))
    sealed[-1] ^= 0x80
    with pytest.raises(CryptoError):
        Control.open(key, "laptop", 1, bytes(sealed))


HOSTILE_CONTROLS: list[tuple[object, str]] = [
    (["cancel"], "must be a map"),
    ("cancel", "must be a map"),
    ({}, "unknown op"),
    ({"op": "kill"}, "unknown op"),
    ({"op": "CANCEL"}, "unknown op"),
    ({"op": 1}, "unknown op"),
    ({"op": None}, "unknown op"),
    ({"op": ["cancel"]}, "unknown op"),
    ({"op": "resize"}, "out of range"),
    ({"op": "resize", "rows": 0, "cols": 80}, "out of range"),
    ({"op": "resize", "rows": 24, "cols": 0}, "out of range"),
    ({"op": "resize", "rows": 1001, "cols": 80}, "out of range"),
    ({"op": "resize", "rows": 24, "cols": 1001}, "out of range"),
    ({"op": "resize", "rows": -24, "cols": -80}, "out of range"),
    ({"op": "resize", "rows": True, "cols": 80}, "must be integers"),
    ({"op": "resize", "rows": 24.0, "cols": 80}, "must be integers"),
    ({"op": "resize", "rows": "24", "cols": 80}, "must be integers"),
    ({"op": "signal"}, "out of range"),
    ({"op": "signal", "signal": 0}, "out of range"),
    ({"op": "signal", "signal": 65}, "out of range"),
    ({"op": "signal", "signal": -9}, "out of range"),
    ({"op": "signal", "signal": 2**63}, "out of range"),
    ({"op": "signal", "signal": None}, "must be integers"),
    ({"op": "signal", "signal": 9.0}, "must be integers"),
    ({"op": "cancel", "signal": "x"}, "must be integers"),
]


@pytest.mark.parametrize(
    ("body", "problem"), HOSTILE_CONTROLS, ids=[repr(b)[:50] for b, _ in HOSTILE_CONTROLS]
)
def test_hostile_control_plaintext(key: JobKey, body: object, problem: str) -> None:
    """A well-sealed but malformed control request is a ProtocolError saying what is wrong."""
    with pytest.raises(ProtocolError, match=problem):
        Control.open(key, "laptop", 1, _seal_control(key, body))


@pytest.mark.parametrize("plaintext", [b"", b"\xc1", b"\x91" * 100_000, b"\xc4\x01x"])
def test_undecodable_control_plaintext(key: JobKey, plaintext: bytes) -> None:
    """Control plaintext that is not a msgpack map is a ProtocolError."""
    sealed = key.seal(Kind.CONTROL, 1, plaintext, sender="laptop")
    with pytest.raises(ProtocolError, match="control"):
        Control.open(key, "laptop", 1, sealed)


def test_control_ignores_unused_fields(key: JobKey) -> None:
    """Unknown fields in a control body are ignored."""
    body: dict[str, Any] = {"op": "cancel", "extra": "x", "future": [1, 2]}
    assert Control.open(key, "laptop", 1, _seal_control(key, body)) == Control("cancel")


# --- input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"y\r", b"\x1b[A", bytes(range(256)) * 100])
def test_input_round_trip(key: JobKey, data: bytes) -> None:
    """Keystrokes sealed by a viewer open to the same bytes for that viewer and seq."""
    sealed = seal_input(key, "laptop", 3, data)
    assert len(sealed) == len(data) + OVERHEAD
    assert open_input(key, "laptop", 3, sealed) == data


def test_input_bound_to_sender(key: JobKey) -> None:
    """Keystrokes from one viewer cannot be passed off as another viewer's."""
    sealed = seal_input(key, "laptop", 3, b"rm -rf /\r")
    with pytest.raises(CryptoError):
        open_input(key, "phone", 3, sealed)


def test_input_bound_to_seq(key: JobKey) -> None:
    """Keystrokes cannot be replayed under another sequence number."""
    sealed = seal_input(key, "laptop", 3, b"y\r")
    with pytest.raises(CryptoError):
        open_input(key, "laptop", 4, sealed)


def test_input_bound_to_job(fleet: FleetKey, key: JobKey) -> None:
    """Keystrokes for one job cannot be sent into another."""
    sealed = seal_input(fleet.job_key(OTHER_JOB), "laptop", 3, b"y\r")
    with pytest.raises(CryptoError):
        open_input(key, "laptop", 3, sealed)


def test_input_not_a_control(key: JobKey) -> None:
    """Sealed keystrokes do not open as a control request (kind is bound)."""
    sealed = seal_input(key, "laptop", 1, msgpack.packb({"op": "cancel"}))
    with pytest.raises(CryptoError):
        Control.open(key, "laptop", 1, sealed)


# --- hostile values the previous source let through ----------------------------------------


@pytest.mark.parametrize("timeout", [math.nan, math.inf])
def test_non_finite_timeout(key: JobKey, timeout: float) -> None:
    """A NaN or infinite timeout is refused (a timer thread cannot wait for it)."""
    with pytest.raises(ProtocolError, match=BAD_TIMEOUT):
        JobSpec.open(key, _seal_command(key, {"argv": ["x"], "timeout": timeout}))


@pytest.mark.parametrize("env", [[], 0, "", False, None])
def test_falsy_env_of_wrong_type(key: JobKey, env: object) -> None:
    """An env that is not a map is refused even when it is empty, zero or nil."""
    with pytest.raises(ProtocolError, match="env must be a map"):
        JobSpec.open(key, _seal_command(key, {"argv": ["x"], "env": env}))


def test_empty_env_name(key: JobKey) -> None:
    """An environment variable with an empty name is refused."""
    with pytest.raises(ProtocolError, match="env names must be non-empty"):
        JobSpec.open(key, _seal_command(key, {"argv": ["x"], "env": {"": "v"}}))


def test_cwd_with_nul(key: JobKey) -> None:
    """A working directory containing NUL is refused like argv and env items with NUL."""
    with pytest.raises(ProtocolError, match="cwd must be text without NUL"):
        JobSpec.open(key, _seal_command(key, {"argv": ["x"], "cwd": "/tmp\0x"}))


@pytest.mark.parametrize("timeout", [threading.TIMEOUT_MAX * 2, 1e300])
def test_timeout_a_timer_can_wait_for(key: JobKey, timeout: float) -> None:
    """A timeout longer than a timer thread can wait is refused."""
    with pytest.raises(ProtocolError, match=BAD_TIMEOUT):
        JobSpec.open(key, _seal_command(key, {"argv": ["x"], "timeout": timeout}))


def test_timeout_limit_is_inclusive(key: JobKey) -> None:
    """MAX_TIMEOUT itself is accepted (and a timer can wait that long); a hair more is not."""
    assert MAX_TIMEOUT <= threading.TIMEOUT_MAX
    spec = JobSpec.open(key, _seal_command(key, {"argv": ["x"], "timeout": MAX_TIMEOUT}))
    assert spec.timeout == MAX_TIMEOUT
    above = math.nextafter(MAX_TIMEOUT, math.inf)
    with pytest.raises(ProtocolError, match=BAD_TIMEOUT):
        JobSpec.open(key, _seal_command(key, {"argv": ["x"], "timeout": above}))
