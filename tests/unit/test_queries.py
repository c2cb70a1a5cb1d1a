"""Questions for the server (client.queries): parsing `--since`, formatting rows, decoding answers.

`ask` is driven through an in-process stand-in for `runlet.adapters.broker.Broker` that hands back a
canned answer body: nothing connects anywhere, and every check `ask` makes on the server's
answer runs for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack
import pytest

from runlet import errors
from runlet.client import queries
from runlet.config import Config
from runlet.errors import NoSuchTarget, ProtocolError, RunletError
from runlet.protocol import addresses, wire
from runlet.protocol.messages import Query, QueryAnswered

NOW = 1_700_000_000.0
JOB = "0123456789abcdef0123456789abcdef"


# --- parse_since -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ago"),
    [
        ("10m", 600.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("30s", 30.0),
        ("1.5h", 5400.0),
        ("0m", 0.0),
        ("  10m\n", 600.0),
    ],
)
def test_parse_since_relative(text: str, ago: float) -> None:
    """`<number><s|m|h|d>` is that long before now."""
    assert queries.parse_since(text, now=NOW) == NOW - ago


def test_parse_since_defaults_to_the_clock() -> None:
    """Without `now`, relative times count back from the real clock."""
    before = datetime.now(UTC).timestamp()
    since = queries.parse_since("1h")
    after = datetime.now(UTC).timestamp()
    assert before - 3600 <= since <= after - 3600


@pytest.fixture
def far_timezone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time 14 hours from UTC, so UTC and local readings of a time differ."""
    monkeypatch.setenv("TZ", "XXX-14")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-02", datetime(2024, 1, 2, tzinfo=UTC).timestamp()),
        ("2024-01-02T03:04:05", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()),
        ("2024-01-02T03:04:05Z", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()),
        ("2024-01-02T03:04:05+02:00", datetime(2024, 1, 2, 1, 4, 5, tzinfo=UTC).timestamp()),
        ("2024-01-02 03:04", datetime(2024, 1, 2, 3, 4, tzinfo=UTC).timestamp()),
    ],
)
@pytest.mark.usefixtures("far_timezone")
def test_parse_since_iso(text: str, expected: float) -> None:
    """An ISO date or time is taken as given; without a zone it is UTC, not local time."""
    assert queries.parse_since(text, now=NOW) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1700000000", 1_700_000_000.0), ("1700000000.25", 1_700_000_000.25), ("0", 0.0)],
)
def test_parse_since_unix_seconds(text: str, expected: float) -> None:
    """A plain number is unix seconds."""
    assert queries.parse_since(text, now=NOW) == expected


def test_parse_since_negative_unix_seconds() -> None:
    """A moment before 1970 is refused: no job can have been queued then."""
    with pytest.raises(ValueError, match="not a time"):
        queries.parse_since("-5", now=NOW)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "yesterday",
        "10 m",
        "10min",
        "10M",
        "m",
        "-10m",
        "+10m",
        "10m ago",
        "1w",
        "2024-13-45",
        "2024-01-02T25:00",
        "10m\x00",
        "\u202e10m",
        "1,5h",
    ],
)
def test_parse_since_garbage(text: str) -> None:
    """Anything else is a ValueError that quotes the input and lists the accepted forms."""
    with pytest.raises(ValueError, match="not a time") as info:
        queries.parse_since(text, now=NOW)
    assert "10m, 2h, 1d, an ISO date, or unix seconds" in str(info.value)
    assert repr(text)[:10] in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "nan",
        "inf",
        "-inf",
        "1e300",
        "-1e300",
        pytest.param("9" * 400, id="400-digits"),
        "99999999999999999999d",
        "999999999999999h",
    ],
)
def test_parse_since_refuses_unrepresentable(text: str) -> None:
    """A number that is not a representable moment is refused like any other bad input."""
    with pytest.raises(ValueError, match="not a time"):
        queries.parse_since(text, now=NOW)


def test_parse_since_oversize_message_bounded() -> None:
    """A huge bad value gives a short error, not the whole value echoed back."""
    with pytest.raises(ValueError, match="not a time") as info:
        queries.parse_since("x" * 100_000, now=NOW)
    assert len(str(info.value)) < 300


# --- table and formatting ----------------------------------------------------------------------


def test_table_aligns_columns() -> None:
    """Each column is as wide as its widest cell, two spaces apart; trailing blanks go."""
    text = queries.table([["a", "bbbb", ""], ["ccc", "d", "e"]], ["X", "Y", "Z"])
    assert text.splitlines() == ["X    Y     Z", "a    bbbb", "ccc  d     e"]


def test_table_no_rows() -> None:
    """Without rows the table is just its header."""
    assert queries.table([], ["JOB", "NODE"]) == "JOB  NODE"


def test_table_unicode_cells() -> None:
    """Non-ASCII cells are kept intact and padded by characters."""
    text = queries.table([["nœud-é", "ok"], ["x", "日本"]], ["NAME", "S"])
    lines = text.splitlines()
    assert lines[1] == "nœud-é  ok"
    assert lines[2] == "x       日本"


def row(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "job_id": JOB,
        "node": "edge-1",
        "state": "exited",
        "exit_code": 0,
        "signal": None,
        "queued_at": 0.0,
        "ended_at": 86400.0 + 3661.0,
    }
    base.update(overrides)
    return base


def test_format_jobs_full_row() -> None:
    """A job row shows id, node, state, status and UTC times."""
    lines = queries.format_jobs([row()]).splitlines()
    assert lines[0].split() == ["JOB", "NODE", "STATE", "STATUS", "QUEUED", "ENDED"]
    assert lines[1].split() == [
        JOB,
        "edge-1",
        "exited",
        "exit",
        "0",
        "1970-01-01",
        "00:00:00",
        "1970-01-02",
        "01:01:01",
    ]


def test_format_jobs_none_fields() -> None:
    """Missing node, status and times show as '-' or nothing, never 'None'."""
    text = queries.format_jobs(
        [row(node=None, exit_code=None, signal=None, queued_at=None, ended_at=None)]
    )
    body = text.splitlines()[1]
    assert "None" not in body
    assert body.split() == [JOB, "-", "exited", "-", "-"]


def test_format_jobs_rows_without_optional_keys() -> None:
    """Rows holding only the required keys still format."""
    text = queries.format_jobs([{"job_id": JOB, "state": "queued"}])
    assert text.splitlines()[1].split() == [JOB, "-", "queued", "-", "-"]


def test_format_jobs_signal_status() -> None:
    """A job ended by a signal shows `signal N`; an exit code wins over a signal."""
    assert "signal 9" in queries.format_jobs([row(exit_code=None, signal=9)])
    assert "exit 1" in queries.format_jobs([row(exit_code=1, signal=9)])


def test_format_jobs_empty() -> None:
    """No jobs: only the header."""
    assert queries.format_jobs([]) == "JOB  NODE  STATE  STATUS  QUEUED  ENDED"


def test_format_jobs_unicode_node() -> None:
    """Unicode in a cell is shown as is."""
    assert "nœud" in queries.format_jobs([row(node="nœud")])


def test_format_job_with_history() -> None:
    """One job: its fields, then each state change with its detail."""
    answer = {
        "job": {"job_id": JOB, "node": None, "state": "killed", "signal": 15, "log_key": None},
        "history": [
            {"seq": 0, "state": "queued", "at": 0.0, "detail": None},
            {"seq": 1, "state": "killed", "at": 60.0, "detail": "cancelled by alice ✓"},
        ],
    }
    lines = queries.format_job(answer).splitlines()
    assert lines[:5] == [
        f"job      {JOB}",
        "node     -",
        "target   -",
        "state    killed signal 15",
        "log      -",
    ]
    assert lines[5] == ""
    assert lines[6].split() == ["SEQ", "STATE", "AT", "DETAIL"]
    assert lines[7].split() == ["0", "queued", "1970-01-01", "00:00:00"]
    assert lines[8].endswith("cancelled by alice ✓")


def test_format_job_empty_history() -> None:
    """A job with no recorded history prints its header and an empty table."""
    text = queries.format_job({"job": {"job_id": JOB, "state": "submitted"}, "history": []})
    assert "state    submitted\n" in text
    assert text.endswith("SEQ  STATE  AT  DETAIL")


def test_format_nodes() -> None:
    """Nodes show online state, last seen, counts, platform and tags."""
    text = queries.format_nodes(
        [
            {
                "name": "edge-1",
                "online": True,
                "last_seen": 0.0,
                "running": 2,
                "queued": 5,
                "platform": "linux",
                "tags": ["gpu", "eu"],
            },
            {"name": "edge-2", "online": None, "last_seen": None, "tags": None, "platform": ""},
            {"name": "ノード", "tags": []},
        ]
    )
    lines = text.splitlines()
    assert lines[1].split() == [
        *["edge-1", "online", "1970-01-01", "00:00:00"],
        *["2", "5", "linux", "gpu,eu"],
        *["-", "-", "-", "-", "-"],
    ]
    assert lines[2].split() == ["edge-2", "offline", "-", "0", "0", "-", *["-"] * 5]
    assert lines[3].split() == ["ノード", "offline", "-", "0", "0", "-", *["-"] * 5]


def test_format_nodes_with_vitals() -> None:
    """CPU %, memory used/total, load, uptime and temperature, as a heartbeat gave them."""
    text = queries.format_nodes(
        [
            {
                "name": "pi-1",
                "online": True,
                "tags": ["pi"],
                "platform": "Linux-aarch64",
                "cpu_percent": 37.4,
                "mem_used": 1536 << 20,
                "mem_total": 4 << 30,
                "load1": 0.5,
                "uptime": 3 * 86400 + 4 * 3600 + 59,
                "temperature": 51.55,
            },
            {"name": "pc", "uptime": 5 * 3600 + 12 * 60, "mem_used": 512 << 20, "mem_total": 0},
            {"name": "vm", "uptime": 7 * 60 + 3, "mem_used": 10, "mem_total": 900},
        ]
    )
    lines = text.splitlines()
    assert lines[0].split()[-5:] == ["CPU", "MEMORY", "LOAD", "UPTIME", "TEMP"]
    assert lines[1].split()[-5:] == ["37%", "1.5G/4.0G", "0.50", "3d4h", "51.5C"]
    assert lines[2].split()[-2:] == ["5h12m", "-"]
    assert "10/900" in lines[3]
    assert lines[3].split()[-2:] == ["7m", "-"]


def test_format_nodes_empty() -> None:
    """No nodes: only the header."""
    assert queries.format_nodes([]).split() == [
        "NODE",
        "STATUS",
        "LAST",
        "SEEN",
        "RUNNING",
        "QUEUED",
        "PLATFORM",
        "TAGS",
        "CPU",
        "MEMORY",
        "LOAD",
        "UPTIME",
        "TEMP",
    ]


def test_when() -> None:
    """Times print as UTC `YYYY-MM-DD HH:MM:SS`; None prints '-'."""
    assert queries.when(None) == "-"
    assert queries.when(1_700_000_000.9) == "2023-11-14 22:13:20"


def test_as_json_sorted_and_tolerant() -> None:
    """JSON output is sorted, indented, and never fails on a value JSON lacks."""
    text = queries.as_json([{"b": 1, "a": b"\x00", "c": None}])
    assert text.index('"a"') < text.index('"b"') < text.index('"c"')
    assert json.loads(text) == [{"a": "b'\\x00'", "b": 1, "c": None}]


FORMATTERS: list[tuple[str, Callable[[Any], str], Any]] = [
    ("jobs-missing-state", queries.format_jobs, [{"job_id": JOB}]),
    ("jobs-missing-job-id", queries.format_jobs, [{"state": "queued"}]),
    ("jobs-time-out-of-range", queries.format_jobs, [row(queued_at=1e20)]),
    ("jobs-time-nan", queries.format_jobs, [row(ended_at=math.nan)]),
    ("jobs-time-is-text", queries.format_jobs, [row(queued_at="yesterday")]),
    ("job-missing-history", queries.format_job, {"job": {"job_id": JOB, "state": "queued"}}),
    ("job-history-not-rows", queries.format_job, {"job": row(), "history": [1, 2]}),
    ("nodes-missing-name", queries.format_nodes, [{"online": True}]),
    ("nodes-tags-not-list", queries.format_nodes, [{"name": "n", "tags": 5}]),
    ("nodes-cpu-is-text", queries.format_nodes, [{"name": "n", "cpu_percent": "hot"}]),
    (
        "nodes-memory-is-text",
        queries.format_nodes,
        [{"name": "n", "mem_used": "x", "mem_total": 1}],
    ),
    ("nodes-uptime-is-a-list", queries.format_nodes, [{"name": "n", "uptime": [1]}]),
    ("nodes-uptime-is-nan", queries.format_nodes, [{"name": "n", "uptime": math.nan}]),
]


@pytest.mark.parametrize(
    ("formatter", "rows"), [(f, r) for _, f, r in FORMATTERS], ids=[n for n, _, _ in FORMATTERS]
)
def test_formatters_odd_server_rows(formatter: Callable[[Any], str], rows: Any) -> None:
    """A malformed row from the server fails only as a RunletError, which the CLI prints."""
    with contextlib.suppress(RunletError):
        queries.render(formatter, rows)


# --- ask: the answer from the server -----------------------------------------------------------


@dataclass
class FakeIncoming:
    body: bytes
    acked: bool = False

    async def ack(self) -> None:
        self.acked = True


@dataclass
class FakeServer:
    """Replaces `Broker` in runlet.client.queries: records what is sent, answers with `answer`."""

    answer: bytes | None = None
    bounce: bool = False
    knows_user: bool = False
    published: list[tuple[str, bytes, dict[str, Any]]] = field(default_factory=list)
    delivered: list[FakeIncoming] = field(default_factory=list)
    closed: bool = False

    def __call__(self, urls: Sequence[str], user: str, *, name: str, **_: Any) -> FakeBroker:
        return FakeBroker(self)


class FakeBroker:
    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.handler: Callable[[Any], Awaitable[None]] | None = None

    async def connect(self) -> None:
        return None

    async def consume(self, spec: object, handler: Callable[[Any], Awaitable[None]]) -> None:
        self.handler = handler

    async def publish(self, key: str, body: bytes, **options: Any) -> None:
        self.server.published.append((key, body, options))
        if self.server.bounce:
            raise NoSuchTarget(key)
        if self.server.answer is not None and self.handler is not None:
            incoming = FakeIncoming(self.server.answer)
            self.server.delivered.append(incoming)
            await self.handler(incoming)

    async def queue_info(self, name: str) -> tuple[int, int] | None:
        return (0, 0) if self.server.knows_user else None

    async def close(self) -> None:
        self.server.closed = True


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config(role="client", user="alice", node="laptop", data_dir=tmp_path)


def serve(
    monkeypatch: pytest.MonkeyPatch, answer: bytes | None, *, bounce: bool = False
) -> FakeServer:
    server = FakeServer(answer=answer, bounce=bounce)
    monkeypatch.setattr(queries, "Broker", server)
    return server


def answered(
    rows: Any = None, *, ok: bool = True, error: str | None = None, raw: bytes | None = None
) -> bytes:
    body = raw if raw is not None else msgpack.packb(rows, use_bin_type=True)
    return wire.encode(QueryAnswered(ok, rows=body if ok else b"", error=error))


def ask(config: Config, query: Query | None = None) -> list[dict[str, Any]]:
    return asyncio.run(queries.ask(config, query or Query("nodes")))


def test_ask_returns_rows(monkeypatch: pytest.MonkeyPatch, config: Config) -> None:
    """The server's rows come back as a list of dicts; the query went to server.rpc, mandatory."""
    server = serve(monkeypatch, answered([{"name": "edge-1"}, {"name": "edge-2"}]))
    query = Query("jobs", state="running", limit=5)
    assert ask(config, query) == [{"name": "edge-1"}, {"name": "edge-2"}]
    [(key, body, options)] = server.published
    assert key == addresses.SERVER_RPC
    assert wire.decode_as(body, Query) == query
    assert options["mandatory"] is True
    assert options["reply_to"] == options["message_id"]
    assert server.delivered[0].acked
    assert server.closed


def test_ask_empty_answer(monkeypatch: pytest.MonkeyPatch, config: Config) -> None:
    """An empty list of rows is a valid answer."""
    serve(monkeypatch, answered([]))
    assert ask(config) == []


@pytest.mark.parametrize(
    ("error", "says"),
    [("no job 0123 in the ledger", "no job 0123 in the ledger"), (None, "refused the query")],
)
def test_ask_refused(
    monkeypatch: pytest.MonkeyPatch, config: Config, error: str | None, says: str
) -> None:
    """A refusal raises a RunletError carrying the server's reason, or a generic one."""
    server = serve(monkeypatch, answered(ok=False, error=error))
    with pytest.raises(RunletError, match=says):
        ask(config)
    assert server.closed


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xc1garbage", id="garbage"),
        pytest.param(answered([])[:-1], id="truncated"),
        pytest.param(wire.encode(Query("nodes")), id="wrong-message"),
        pytest.param(b"\x92" + b"\x91" * 5000, id="hostile-nesting"),
        pytest.param(b"\xdb" + (3 << 20).to_bytes(4, "big") + b"x" * (3 << 20), id="oversize"),
    ],
)
def test_ask_undecodable_answer(
    monkeypatch: pytest.MonkeyPatch, config: Config, body: bytes
) -> None:
    """An answer that is not a valid QueryAnswered message raises ProtocolError."""
    server = serve(monkeypatch, body)
    with pytest.raises(ProtocolError):
        ask(config)
    assert server.closed


@pytest.mark.parametrize(
    "rows",
    [
        pytest.param({"name": "x"}, id="map-not-list"),
        pytest.param("rows", id="text"),
        pytest.param(None, id="nil"),
        pytest.param([{"name": "x"}, ["not", "a", "dict"]], id="list-of-lists"),
        pytest.param([1, 2, 3], id="list-of-ints"),
    ],
)
def test_ask_rows_not_a_list_of_maps(
    monkeypatch: pytest.MonkeyPatch, config: Config, rows: Any
) -> None:
    """Rows that are not a list of maps raise ProtocolError naming the problem."""
    serve(monkeypatch, answered(rows))
    with pytest.raises(ProtocolError, match="not a list of rows"):
        ask(config)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"\xc1", id="garbage"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\x91\x80\x00", id="trailing-bytes"),
        pytest.param(b"\x92\x80", id="truncated"),
        pytest.param(b"\x91\x81\x01\x02", id="integer-keys"),
    ],
)
def test_ask_rows_not_msgpack(monkeypatch: pytest.MonkeyPatch, config: Config, raw: bytes) -> None:
    """Row bytes that are not valid msgpack raise ProtocolError."""
    serve(monkeypatch, answered(raw=raw))
    with pytest.raises(ProtocolError):
        ask(config)


def test_ask_no_server(monkeypatch: pytest.MonkeyPatch, config: Config) -> None:
    """A query that bounces (no server bound) raises ServerUnavailable (exit 69) at once;
    with the user's ledger queue there, a server knew the user: it is not running."""
    server = serve(monkeypatch, None, bounce=True)
    server.knows_user = True
    with pytest.raises(errors.ServerUnavailable, match="no Runlet server is running") as info:
        ask(config)
    assert info.value.exit_code == 69
    assert "'alice'" in str(info.value)
    assert server.closed


def test_ask_a_user_no_server_knows(monkeypatch: pytest.MonkeyPatch, config: Config) -> None:
    """A bounce with no ledger queue for the user: no server knows them; say `user add`."""
    serve(monkeypatch, None, bounce=True)
    with pytest.raises(errors.ServerUnavailable, match="runlet user add alice"):
        ask(config)


def test_ask_no_answer(monkeypatch: pytest.MonkeyPatch, config: Config) -> None:
    """A server that never answers gives ServerUnavailable after the answer deadline."""
    server = serve(monkeypatch, None)
    monkeypatch.setattr(queries, "ANSWER_SECONDS", 0.01)
    with pytest.raises(errors.ServerUnavailable, match="did not answer"):
        ask(config)
    assert server.closed
