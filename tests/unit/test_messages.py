"""Message classes (protocol.messages) and broker names and id rules (protocol.addresses)."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from runlet.protocol import addresses as a
from runlet.protocol import messages as m
from runlet.protocol import states

JOB = "0123456789abcdef0123456789abcdef"
HOSTILE_NAMES = [
    "",
    "a.b",
    ".",
    "a" * 65,
    "a b",
    " a",
    "a\n",
    "\na",
    "a\r",
    "a\t",
    "a\0",
    "é",
    "nodé",
    "\u0661\u0662",  # Arabic-Indic digits: \d would match them, our names may not
    "\uff41",  # fullwidth letter a
    "a*",
    "a#",
    "*",
    "#",
    "a/b",
    "a:b",
    "node:x",
    "\u200b",
    "a\u200b",
]


# --- targets -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "parsed"),
    [
        ("any", ("any", "")),
        ("all", ("all", "")),
        ("node:edge-2", ("node", "edge-2")),
        ("node:" + "n" * 64, ("node", "n" * 64)),
        ("tag:gpu", ("tag", "gpu")),
        ("tag:A_b-9", ("tag", "A_b-9")),
        ("node:any", ("node", "any")),
    ],
)
def test_parse_target_valid(target: str, parsed: tuple[str, str]) -> None:
    """Valid targets split into their kind and name."""
    assert m.parse_target(target) == parsed


@pytest.mark.parametrize(
    "target",
    [
        "",
        "edge-2",
        "ANY",
        "all ",
        "any:x",
        "all:x",
        "node:",
        "tag:",
        "node",
        "tag",
        ":x",
        "host:x",
        "node:a.b",
        "tag:a b",
        "node:x:y",
        "node:" + "n" * 65,
        "node:é",
        "tag:x\n",
    ],
)
def test_parse_target_invalid(target: str) -> None:
    """Anything but node:N, any, all or tag:T is a ValueError saying what is allowed."""
    with pytest.raises(ValueError, match=r"invalid target .*use a node name, any, all or tag:TAG"):
        m.parse_target(target)


def test_parse_target_error_is_cut_short() -> None:
    """A huge bad target is not echoed whole in the error."""
    with pytest.raises(ValueError, match="invalid target") as info:
        m.parse_target("x" * 10_000)
    assert len(str(info.value)) < 200


def _start(target: str, **kw: object) -> m.StartJob:
    return m.StartJob(JOB, "alice", target, "laptop", b"sealed", 1.0, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("target", "fans_out"),
    [("all", True), ("tag:gpu", True), ("any", False), ("node:edge-2", False)],
)
def test_start_job_fans_out(target: str, fans_out: bool) -> None:
    """Only `all` and `tag:T` fan out to several nodes."""
    assert _start(target).fans_out is fans_out


def test_start_job_defaults() -> None:
    """A StartJob has no deadline and a 24x80 terminal unless told otherwise."""
    job = _start("any")
    assert (job.deadline, job.rows, job.cols) == (None, 24, 80)


def test_start_job_rejects_bad_target() -> None:
    """A StartJob cannot be built for a bare node name (the client normalises first)."""
    with pytest.raises(ValueError, match="invalid target"):
        _start("edge-2")


@pytest.mark.parametrize(("rows", "cols"), [(0, 80), (24, 0), (1001, 80), (24, 1001)])
def test_start_job_terminal_size(rows: int, cols: int) -> None:
    """Terminal sizes outside 1..1000 are refused."""
    with pytest.raises(ValueError, match="terminal size"):
        _start("any", rows=rows, cols=cols)


def test_messages_are_frozen() -> None:
    """Messages are immutable."""
    job = _start("any")
    with pytest.raises(AttributeError):
        job.target = "all"  # type: ignore[misc]


# --- states --------------------------------------------------------------------------------


@pytest.mark.parametrize("state", states.STATES)
def test_job_state_terminal(state: str) -> None:
    """Only states a job never leaves are terminal."""
    event = m.JobStateChanged(JOB, "n", state, 0, 1.0)
    assert event.terminal is (state not in ("submitted", "queued", "running"))


def test_terminal_states_are_known_states() -> None:
    """TERMINAL is a subset of STATES and leaves out exactly the three live ones."""
    assert set(states.STATES) - states.TERMINAL == {"submitted", "queued", "running"}


def test_the_transition_table_leads_from_live_states_to_node_states_only() -> None:
    """NEXT has a row for each live state; every move ends in a state a node records."""
    assert set(states.NEXT) == states.LIVE
    for moves in states.NEXT.values():
        assert moves <= set(states.NODE_STATES)
        assert "submitted" not in moves
    assert "lost" not in states.NODE_STATES  # only the server says lost


def test_job_state_is_its_plain_name() -> None:
    """A JobState compares, hashes and encodes as the plain string that travels."""
    timed_out: str = states.JobState.TIMED_OUT
    assert timed_out == "timed_out"
    by_state: dict[str, int] = {states.JobState.RUNNING: 1}
    assert by_state["running"] == 1
    assert str(states.JobState.LOST) == "lost"


@pytest.mark.parametrize("state", ["", "Running", "finished", "exited\n"])
def test_job_state_unknown(state: str) -> None:
    """A state outside STATES cannot be built."""
    with pytest.raises(ValueError, match="unknown state"):
        m.JobStateChanged(JOB, "n", state, 0, 1.0)


@pytest.mark.parametrize("seq", [-1, 2**63])
def test_seq_range(seq: int) -> None:
    """Sequence numbers are limited to 0..2**63-1."""
    with pytest.raises(ValueError, match="out of range"):
        m.JobStateChanged(JOB, "n", "running", seq, 1.0)
    with pytest.raises(ValueError, match="out of range"):
        m.OutputChunk(JOB, seq, 0, b"")
    with pytest.raises(ValueError, match="out of range"):
        m.ReplayRequested(JOB, seq)


def test_seq_bounds_accepted() -> None:
    """The first and last sequence numbers are valid."""
    assert m.OutputChunk(JOB, 0, 0, b"").seq == 0
    assert m.OutputChunk(JOB, 2**63 - 1, 0, b"").seq == 2**63 - 1


@pytest.mark.parametrize("flags", [-1, 256])
def test_output_flags_range(flags: int) -> None:
    """Output flags must fit in one byte."""
    with pytest.raises(ValueError, match="flags"):
        m.OutputChunk(JOB, 0, flags, b"")


# --- exit codes and signals -------------------------------------------------------------------

StatusBuilder = Callable[[int | None, int | None], m.JobStateChanged | m.ReplayFinished]
_STATUS_BUILDERS: list[StatusBuilder] = [
    lambda code, sig: m.JobStateChanged(JOB, "n", "exited", 0, 1.0, exit_code=code, signal=sig),
    lambda code, sig: m.ReplayFinished(JOB, "n", 0, "exited", exit_code=code, signal=sig),
]
_STATUS_IDS = ["job_state", "replay_done"]


@pytest.mark.parametrize("exit_code", [0, 1, 254, 255, None])
@pytest.mark.parametrize("build", _STATUS_BUILDERS, ids=_STATUS_IDS)
def test_exit_code_in_range(build: StatusBuilder, exit_code: int | None) -> None:
    """Exit codes 0..255 (or none) are accepted."""
    assert build(exit_code, None).exit_code == exit_code


@pytest.mark.parametrize("exit_code", [-1, 256, 257, -(2**63), 2**63 - 1, 2**64 - 1])
@pytest.mark.parametrize("build", _STATUS_BUILDERS, ids=_STATUS_IDS)
def test_exit_code_out_of_range(build: StatusBuilder, exit_code: int) -> None:
    """An exit code outside 0..255 cannot be built."""
    with pytest.raises(ValueError, match=rf"exit code {exit_code} out of range 0\.\.255"):
        build(exit_code, None)


@pytest.mark.parametrize("signal", [1, 9, 64, 126, 127, None])
@pytest.mark.parametrize("build", _STATUS_BUILDERS, ids=_STATUS_IDS)
def test_signal_in_range(build: StatusBuilder, signal: int | None) -> None:
    """Signals 1..127 (or none) are accepted."""
    assert build(None, signal).signal == signal


@pytest.mark.parametrize("signal", [0, -1, -128, 128, 255, 2**40])
@pytest.mark.parametrize("build", _STATUS_BUILDERS, ids=_STATUS_IDS)
def test_signal_out_of_range(build: StatusBuilder, signal: int) -> None:
    """A signal outside 1..127 cannot be built, 0 included."""
    with pytest.raises(ValueError, match=rf"signal {signal} out of range 1\.\.127"):
        build(None, signal)


@pytest.mark.parametrize(("running", "queued"), [(-1, 0), (0, -1), (-(2**63), -(2**63))])
def test_heartbeat_counts_cannot_be_negative(running: int, queued: int) -> None:
    """A node cannot say it runs or holds a negative number of jobs."""
    with pytest.raises(ValueError, match="running and queued counts cannot be negative"):
        m.NodeHeartbeat("n", 1.0, "v", "p", (), running, queued)
    assert m.NodeHeartbeat("n", 1.0, "v", "p", (), 0, 0).running == 0


# --- size caps -----------------------------------------------------------------------------


def test_max_sealed_leaves_room_for_sealing() -> None:
    """A full plaintext chunk still fits once sealed."""
    assert m.MAX_SEALED > m.MAX_CHUNK + 40


@pytest.mark.parametrize(
    ("build", "limit"),
    [
        (lambda data: m.StartJob(JOB, "u", "any", "o", data, 1.0), None),
        (lambda data: m.OutputChunk(JOB, 0, 0, data), m.MAX_SEALED),
        (lambda data: m.InputSent(JOB, "v", 0, data), m.MAX_SEALED),
        (lambda data: m.ControlSent(JOB, "v", 0, data), 4096),
    ],
    ids=["start", "output", "input", "control"],
)
def test_size_caps(build: Callable[[bytes], object], limit: int | None) -> None:
    """Each sealed field takes exactly its cap and refuses one byte more."""
    cap = 256 * 1024 if limit is None else limit
    build(b"x" * cap)
    with pytest.raises(ValueError, match=f"over the {cap} limit"):
        build(b"x" * (cap + 1))


# --- names and ids -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "A", "0", "_", "-", "edge-2", "Node_01", "n" * 64])
def test_valid_name(name: str) -> None:
    """Names are 1-64 of A-Z a-z 0-9 _ -."""
    assert a.valid_name(name)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_invalid_name(name: str) -> None:
    """Dots, spaces, control characters, non-ASCII, wildcards and lengths 0 or 65 are refused."""
    assert not a.valid_name(name)


def test_new_job_id_is_valid_and_fresh() -> None:
    """New job ids are 32 lowercase hex digits and differ every time."""
    ids = {a.new_job_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"[0-9a-f]{32}", job_id) and a.valid_job_id(job_id) for job_id in ids)


@pytest.mark.parametrize("job_id", [JOB, JOB + ".edge-2", JOB + "." + "n" * 64, "0" * 32])
def test_valid_job_id(job_id: str) -> None:
    """A job id is 32 hex digits, optionally followed by .NODE for a fan-out child."""
    assert a.valid_job_id(job_id)


@pytest.mark.parametrize(
    "job_id",
    [
        "",
        JOB[:31],
        JOB + "0",
        JOB.upper(),
        "g" + JOB[1:],
        JOB + ".",
        JOB + ".a.b",
        JOB + "." + "n" * 65,
        JOB + "\n",
        JOB + ".a\n",
        "\n" + JOB,
        " " + JOB,
        JOB + ".é",
        JOB + ".*",
        JOB + ".#",
        JOB.replace("0", "\u0660"),  # Arabic-Indic zero
        JOB + "/x",
        "*",
    ]
    + [JOB + "." + name for name in HOSTILE_NAMES if name],
)
def test_invalid_job_id(job_id: str) -> None:
    """Anything else, including hostile child suffixes, is not a job id."""
    assert not a.valid_job_id(job_id)


def test_child_and_parent_ids() -> None:
    """A child id is <id>.<node>; its parent is the id; a plain id is its own parent."""
    child = a.child_job_id(JOB, "edge-2")
    assert child == JOB + ".edge-2"
    assert a.valid_job_id(child)
    assert a.parent_job_id(child) == JOB
    assert a.parent_job_id(JOB) == JOB


# --- exchanges, keys and queues --------------------------------------------------------------


def test_exchange_and_user_queues() -> None:
    """A user's exchange and queues all live under runlet.<user>."""
    assert a.exchange("alice") == "runlet.alice"
    assert a.dead_letter_exchange("alice") == "runlet.alice.dlx"
    assert a.dead_letter_queue("alice") == "runlet.alice.dead"
    assert a.dispatch_queue("alice", "edge-2") == "runlet.alice.node.edge-2.dispatch"
    assert a.any_queue("alice") == "runlet.alice.dispatch.any"
    assert a.ledger_queue("alice") == "runlet.alice.ledger"
    assert a.rpc_queue("alice", "edge-2") == "runlet.alice.node.edge-2.rpc"


def test_job_queues() -> None:
    """Per-job queues are runlet.<user>.job.<id>.<concern>[.<suffix>]."""
    assert a.job_queue("u", JOB, "input") == f"runlet.u.job.{JOB}.input"
    assert a.job_queue("u", JOB, "output", "viewer1") == f"runlet.u.job.{JOB}.output.viewer1"


def test_routing_keys() -> None:
    """Routing keys follow DESIGN.md section 3."""
    assert a.dispatch_node_key("edge-2") == "dispatch.node.edge-2"
    assert a.dispatch_tag_key("gpu") == "dispatch.tag.gpu"
    assert a.DISPATCH_ANY == "dispatch.any"
    assert a.DISPATCH_ALL == "dispatch.all"
    assert a.state_key(JOB) == f"job.{JOB}.state"
    assert a.output_key(JOB) == f"job.{JOB}.output"
    assert a.input_key(JOB) == f"job.{JOB}.input"
    assert a.control_key(JOB) == f"job.{JOB}.control"
    assert a.rpc_key("edge-2") == "node.edge-2.rpc"
    assert a.presence_key("edge-2") == "node.edge-2.presence"


def _topic_match(pattern: str, key: str) -> bool:
    """AMQP topic matching for patterns with `*` only (one word each)."""
    words, parts = pattern.split("."), key.split(".")
    return len(words) == len(parts) and all(
        w in ("*", p) for w, p in zip(words, parts, strict=True)
    )


def test_fanout_pattern_matches_children_only() -> None:
    """A fan-out pattern matches each child's key for the concern, not the parent's."""
    pattern = a.fanout_pattern(JOB, "state")
    assert pattern == f"job.{JOB}.*.state"
    assert _topic_match(pattern, a.state_key(a.child_job_id(JOB, "edge-2")))
    assert not _topic_match(pattern, a.state_key(JOB))
    assert not _topic_match(pattern, a.output_key(a.child_job_id(JOB, "edge-2")))


def test_ledger_patterns_match_plain_and_child_states() -> None:
    """The ledger binds both plain and child job state keys, and nothing else."""
    child = a.child_job_id(JOB, "n")
    for key in (a.state_key(JOB), a.state_key(child)):
        assert any(_topic_match(p, key) for p in a.LEDGER_PATTERNS)
    for key in (a.output_key(JOB), a.output_key(child), a.presence_key("n")):
        assert not any(_topic_match(p, key) for p in a.LEDGER_PATTERNS)
