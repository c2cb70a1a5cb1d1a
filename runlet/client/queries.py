"""`runlet jobs`, `job` and `nodes`: questions for the server, answered over the broker.

Output is aligned for people, or JSON (`--json`) for scripts. The server answers through the
user's own exchange; no server running, or none that knows the user, means the question
bounces at once (exit 69), and the message says which of the two and what to run.
`ask` opens a connection for one question (the CLI); `Asker` keeps one open and matches each
answer to its question by correlation id (`runlet ui`, which asks again and again).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from runlet.adapters.broker import Broker, BrokerSecurity, Incoming, QueueSpec
from runlet.adapters.broker_port import BrokerPort
from runlet.config import Config
from runlet.errors import NoSuchTarget, ProtocolError, RunletError, ServerUnavailable
from runlet.protocol import addresses, wire
from runlet.protocol.messages import Query, QueryAnswered

ANSWER_SECONDS = 15.0
_SINCE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float | None = None) -> float:
    """`10m`, `2h`, `1d` ago, an ISO date/time, or unix seconds → unix time; ValueError if bad."""
    now = time.time() if now is None else now
    shown = text[:40] + ("..." if len(text) > 40 else "")
    problem = f"not a time: {shown!r} (use 10m, 2h, 1d, an ISO date, or unix seconds)"
    value: float | None = None
    if match := _SINCE.fullmatch(text.strip()):
        value = now - float(match.group(1)) * _UNITS[match.group(2)]
    else:
        try:
            value = float(text)
        except ValueError:
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                raise ValueError(problem) from None
            value = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    if not math.isfinite(value) or not 0 <= value <= now + 366 * 86400:
        raise ValueError(problem)
    return value


async def ask(config: Config, query: Query) -> list[dict[str, Any]]:
    """Send one query to the server and wait for its answer rows."""
    viewer = f"{config.node[:40]}-q{int(time.time() * 1000) % 100000}"
    reply = addresses.reply_key(viewer, "0" * 32)
    broker = Broker(
        config.broker.urls,
        config.user,
        name=f"runlet-query-{config.node}",
        heartbeat=config.broker.heartbeat,
        security=BrokerSecurity.of(config.broker),
    )
    await broker.connect()
    answers: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_answer(incoming: Incoming) -> None:
        await incoming.ack()
        answers.put_nowait(incoming.body)

    try:
        name = addresses.job_queue(config.user, "0" * 32, "answers", viewer)
        await broker.consume(QueueSpec(name, "exclusive", (reply,), dead_letter=False), on_answer)
        try:
            await broker.publish(
                addresses.SERVER_RPC,
                wire.encode(query),
                message_id=reply,
                durable=True,
                mandatory=True,
                reply_to=reply,
            )
        except NoSuchTarget:
            known = await broker.queue_info(addresses.presence_queue(config.user)) is not None
            raise ServerUnavailable(no_server(config.user, known=known)) from None
        try:
            body = await asyncio.wait_for(answers.get(), ANSWER_SECONDS)
        except TimeoutError:
            raise ServerUnavailable(
                f"the server did not answer in {ANSWER_SECONDS:.0f} s"
            ) from None
    finally:
        await broker.close()
    return _rows(body)


def _rows(body: bytes) -> list[dict[str, Any]]:
    answer = wire.decode_as(body, QueryAnswered)
    if not answer.ok:
        raise RunletError(answer.error or "the server refused the query")
    return wire.decode_rows(answer.rows)


def no_server(user: str, *, known: bool) -> str:
    """Why no server answered: none runs (one knew the user: the presence queue only a
    server declares is there; it expires a day after its server went), or none knows the
    user (there is no such queue: daemons declare the ledger queue, never this one)."""
    if known:
        return (
            f"no Runlet server is running for user {user!r}: start it (`runlet start` with"
            " the server's config); state changes wait in its queue meanwhile"
        )
    return (
        f"no Runlet server knows user {user!r}: on the server, run `runlet user add {user}`"
        " (and start the server if none runs)"
    )


class Asker:
    """Questions for the server over an open broker connection, any number at once.

    One exclusive queue takes every answer; each question carries its own correlation id, so
    an answer that comes after its question gave up is dropped, never taken for another's.
    """

    def __init__(self, broker: BrokerPort, user: str, node: str) -> None:
        self.broker = broker
        self.viewer = f"{node[:40]}-a{secrets.token_hex(4)}"
        self.reply = addresses.reply_key(self.viewer, "0" * 32)
        self.queue = addresses.job_queue(user, "0" * 32, "answers", self.viewer)
        self._waiting: dict[str, asyncio.Future[bytes]] = {}
        self.late = 0  # answers that came after their question gave up

    async def start(self) -> None:
        spec = QueueSpec(self.queue, "exclusive", (self.reply,), dead_letter=False)
        await self.broker.consume(spec, self._on_answer)

    async def _on_answer(self, incoming: Incoming) -> None:
        await incoming.ack()
        waiting = self._waiting.pop(incoming.correlation_id or "", None)
        if waiting is None or waiting.done():
            self.late += 1
            return
        waiting.set_result(incoming.body)

    async def ask(self, query: Query, timeout: float = ANSWER_SECONDS) -> list[dict[str, Any]]:
        """The server's answer rows; ServerUnavailable when none runs or it does not answer."""
        ident = secrets.token_hex(8)
        answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = answer
        try:
            try:
                await self.broker.publish(
                    addresses.SERVER_RPC,
                    wire.encode(query),
                    message_id=f"{self.viewer}:{ident}",
                    durable=True,
                    mandatory=True,
                    reply_to=self.reply,
                    correlation_id=ident,
                )
            except NoSuchTarget:
                raise ServerUnavailable("no Runlet server is running for this user") from None
            try:
                body = await asyncio.wait_for(answer, timeout)
            except TimeoutError:
                raise ServerUnavailable(f"the server did not answer in {timeout:.0f} s") from None
        finally:
            self._waiting.pop(ident, None)
        return _rows(body)


def render(formatter: Callable[[Any], str], rows: Any) -> str:
    """Format server rows for people; rows of an unexpected shape are a ProtocolError."""
    try:
        return formatter(rows)
    except (KeyError, TypeError, ValueError, OverflowError, IndexError, AttributeError) as exc:
        raise ProtocolError(
            f"the server's answer has rows of an unexpected shape ({exc!r})"
        ) from exc


def when(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S")


def table(rows: list[list[str]], header: list[str]) -> str:
    """Columns aligned to their widest cell."""
    widths = [max(len(str(cell)) for cell in col) for col in zip(header, *rows, strict=False)]
    lines = [header, *rows]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=False)).rstrip()
        for line in lines
    )


def format_jobs(rows: list[dict[str, Any]]) -> str:
    body = [
        [
            r["job_id"],
            r.get("node") or "-",
            r["state"],
            _status(r),
            when(r.get("queued_at")),
            when(r.get("ended_at")),
        ]
        for r in rows
    ]
    return table(body, ["JOB", "NODE", "STATE", "STATUS", "QUEUED", "ENDED"])


def format_job(row: dict[str, Any]) -> str:
    job, history = row["job"], row["history"]
    head = [
        f"job      {job['job_id']}",
        f"node     {job.get('node') or '-'}",
        f"target   {job.get('target') or '-'}",
        f"state    {job['state']} {_status(job)}".rstrip(),
        f"log      {job.get('log_key') or '-'}",
    ]
    steps = [[str(h["seq"]), h["state"], when(h["at"]), h.get("detail") or ""] for h in history]
    return "\n".join(head) + "\n\n" + table(steps, ["SEQ", "STATE", "AT", "DETAIL"])


def format_nodes(rows: list[dict[str, Any]]) -> str:
    body = [
        [
            r["name"],
            "online" if r.get("online") else "offline",
            when(r.get("last_seen")),
            str(r.get("running", 0)),
            str(r.get("queued", 0)),
            r.get("platform") or "-",
            ",".join(r.get("tags") or []),
            *vitals(r),
        ]
        for r in rows
    ]
    header = ["NODE", "STATUS", "LAST SEEN", "RUNNING", "QUEUED", "PLATFORM", "TAGS"]
    return table(body, [*header, "CPU", "MEMORY", "LOAD", "UPTIME", "TEMP"])


def vitals(row: dict[str, Any]) -> list[str]:
    """A node's vitals for people: CPU %, memory used/total, load, uptime, temperature."""
    cpu, load, temp = row.get("cpu_percent"), row.get("load1"), row.get("temperature")
    used, total = row.get("mem_used"), row.get("mem_total")
    memory = f"{size(used)}/{size(total)}" if used is not None and total else "-"
    return [
        "-" if cpu is None else f"{cpu:.0f}%",
        memory,
        "-" if load is None else f"{load:.2f}",
        span(row.get("uptime")),
        "-" if temp is None else f"{temp:.1f}C",
    ]


def size(value: float | None) -> str:
    """Bytes as people read them: 512M, 3.8G."""
    if value is None:
        return "-"
    for unit in ("", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit in ("", "K", "M") else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError  # pragma: no cover - the loop returns at "T"


def span(seconds: float | None) -> str:
    """An uptime as people read it: 3d4h, 5h12m, 7m."""
    if seconds is None:
        return "-"
    days, rest = divmod(int(seconds), 86400)
    hours, minutes = rest // 3600, rest % 3600 // 60
    if days:
        return f"{days}d{hours}h"
    return f"{hours}h{minutes}m" if hours else f"{minutes}m"


def as_json(rows: Any) -> str:
    return json.dumps(rows, indent=2, sort_keys=True, default=str)


def _status(row: dict[str, Any]) -> str:
    if row.get("exit_code") is not None:
        return f"exit {row['exit_code']}"
    if row.get("signal") is not None:
        return f"signal {row['signal']}"
    return ""
