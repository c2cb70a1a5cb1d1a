"""`runlet doctor`: the whole setup of this device checked, one finding a line.

In order: the config (found where, how), the broker (reachable at which URL, in how long; a
refused login names the account), the fleet key (there, readable by its owner only, a key),
the clock against the broker host's (through the management listener's HTTP Date header, when
one answers: AMQP carries no time), this node's daemon (a ping through the broker), the server
(a `nodes` question), and the free disk space where `data_dir` lives. Each finding is ok, a
problem with what to do, or skipped with why (a check that needs the broker when it is away).

It changes nothing: the only thing it declares on the broker is what every client connection
declares (the user's exchange and dead-letter queue), and it writes no file.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from runlet.adapters.broker import Broker, BrokerSecurity
from runlet.adapters.broker_port import safe_url
from runlet.adapters.http_date import read_clock
from runlet.client import ping, queries
from runlet.client.session import Client
from runlet.config import Config, ConfigPlace, load_config, locate_config
from runlet.errors import (
    BrokerLoginRefused,
    BrokerUnavailable,
    CryptoError,
    NoSuchTarget,
    RunletError,
)
from runlet.protocol.crypto import FleetKey
from runlet.protocol.messages import Query

OK = "ok"
PROBLEM = "problem"
SKIPPED = "skipped"

MIN_FREE_BYTES = 256 * 1024 * 1024
MAX_SKEW_SECONDS = 30.0
PING_SECONDS = 3.0
SERVER_SECONDS = 10.0
MANAGEMENT_PORTS = {"amqp": ("http", 15672), "amqps": ("https", 15671)}


@dataclass(frozen=True, slots=True)
class Finding:
    """One check's result: `status` is OK, PROBLEM or SKIPPED; `fix` says what to do."""

    check: str
    status: str
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def problems(findings: list[Finding]) -> int:
    return sum(1 for f in findings if f.status == PROBLEM)


async def diagnose(
    path: str | None, env: Mapping[str, str], *, clock_probe: bool = True
) -> list[Finding]:
    """Every check, in order; a config that cannot be read ends the list there."""
    try:
        place = locate_config(path, env)
        config = load_config(place.path, env=env)
    except RunletError as exc:
        fix = "run `runlet init --broker URL --user NAME`, or fix the file"
        return [Finding("config", PROBLEM, str(exc), fix)]
    findings = [_config_finding(place, config)]
    broker = await _broker(config)
    findings.append(broker)
    key, fleet_key = _key(config)
    findings.append(key)
    findings.append(await _clock(config) if clock_probe else _skip("clock", "not asked"))
    if broker.status != OK:
        findings += [_skip(c, "the broker is not reachable") for c in ("daemon", "server")]
    else:
        findings.append(await _daemon(config, fleet_key))
        findings.append(await _server(config))
    findings.append(_disk(config.data_dir))
    return findings


def _skip(check: str, why: str) -> Finding:
    return Finding(check, SKIPPED, why)


def _config_finding(place: ConfigPlace, config: Config) -> Finding:
    detail = (
        f"{place.path} (found by {place.found_by}): role {config.role}, user {config.user},"
        f" node {config.node}"
    )
    return Finding("config", OK, detail)


async def _broker(config: Config) -> Finding:
    started = time.monotonic()
    broker = Broker(
        config.broker.urls,
        config.user,
        name=f"runlet-doctor-{config.node}",
        security=BrokerSecurity.of(config.broker),
    )
    try:
        await broker.connect()
    except BrokerLoginRefused as exc:
        fix = (
            f"check the login of account {exc.account!r} in broker.urls; the server's admin"
            f" prints a new one with `runlet user add {config.user} --rotate`"
        )
        return Finding("broker", PROBLEM, str(exc), fix)
    except BrokerUnavailable as exc:
        fix = "is RabbitMQ running, and reachable from here (host, port, firewall)?"
        return Finding("broker", PROBLEM, str(exc), fix)
    finally:
        await broker.close()
    url = broker.stats.url or safe_url(config.broker.urls[0])
    return Finding("broker", OK, f"reachable at {url} in {time.monotonic() - started:.2f} s")


def _key(config: Config) -> tuple[Finding, FleetKey | None]:
    if config.role == "server" or config.crypto is None:
        return _skip("key", "a server holds no fleet key"), None
    path = config.crypto.key_file
    try:
        key = FleetKey.load(path)
    except CryptoError as exc:
        text = str(exc)
        if "open to other users" in text:
            fix = f"chmod 600 {path}"
        elif "no fleet key" in text:
            fix = "`runlet pair` here and `runlet pair CODE` on a device that has the key"
        else:
            fix = f"bring the key again: move {path} away, then `runlet pair`"
        return Finding("key", PROBLEM, text, fix), None
    return Finding("key", OK, f"{path}: fleet key {key.fingerprint()}, owner-only"), key


def management_url(broker_url: str) -> str | None:
    """The management listener's URL on the broker's host, by RabbitMQ's default ports."""
    parts = urlsplit(broker_url)
    if parts.scheme not in MANAGEMENT_PORTS or not parts.hostname:
        return None
    scheme, port = MANAGEMENT_PORTS[parts.scheme]
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{scheme}://{host}:{port}/"


async def _clock(config: Config) -> Finding:
    url = management_url(config.broker.urls[0])
    reading = None if url is None else await asyncio.to_thread(read_clock, url)
    if reading is None:
        return _skip("clock", "not measurable: no management listener answered on the broker host")
    detail = (
        f"{reading.skew:+.0f} s against the broker host ({reading.url}, 1 s resolution,"
        f" round trip {reading.round_trip * 1000:.0f} ms)"
    )
    if abs(reading.skew) > MAX_SKEW_SECONDS:
        fix = "set the clock right (timedatectl set-ntp true, or your system's NTP client)"
        return Finding("clock", PROBLEM, detail, fix)
    return Finding("clock", OK, detail)


async def _daemon(config: Config, key: FleetKey | None) -> Finding:
    if config.role != "daemon":
        return _skip("daemon", f"this config's role is {config.role}")
    client = Client(config, key or FleetKey.generate())  # a ping seals nothing
    try:
        async with client:
            probes = ping.Probes(1, 0.0, PING_SECONDS)
            stats = await ping.ping_daemon(client, config.node, probes)
    except NoSuchTarget:
        return Finding("daemon", PROBLEM, f"node {config.node} has never run", "runlet start")
    except RunletError as exc:
        return Finding("daemon", PROBLEM, str(exc), "runlet doctor again once the broker is up")
    if not stats.received:
        detail = f"node {config.node} did not answer a ping in {PING_SECONDS:.0f} s"
        return Finding("daemon", PROBLEM, detail, "runlet start (or start its service)")
    ms = stats.times[0] * 1000
    return Finding("daemon", OK, f"node {config.node} answered a ping in {ms:.1f} ms")


async def _server(config: Config) -> Finding:
    try:
        rows = await asyncio.wait_for(queries.ask(config, Query("nodes")), SERVER_SECONDS)
    except TimeoutError:
        detail = f"the server did not answer in {SERVER_SECONDS:.0f} s"
        return Finding("server", PROBLEM, detail, "is the server running and its database up?")
    except RunletError as exc:
        text = str(exc)
        fix = f"runlet user add {config.user}  (on the server)" if "user add" in text else ""
        return Finding("server", PROBLEM, text, fix or "start the server: runlet start")
    online = sum(1 for row in rows if row.get("online"))
    return Finding("server", OK, f"answered: {len(rows)} node(s), {online} online")


def _disk(data_dir: Path) -> Finding:
    where = data_dir
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        usage = shutil.disk_usage(where)
    except OSError as exc:
        return Finding("disk", PROBLEM, f"cannot read {where}: {exc.strerror}", "")
    detail = f"{usage.free / 2**30:.1f} GiB free of {usage.total / 2**30:.1f} GiB at {data_dir}"
    if usage.free < MIN_FREE_BYTES:
        return Finding("disk", PROBLEM, detail, "free some space: jobs' logs are kept there")
    if not os.access(where, os.W_OK):
        return Finding("disk", PROBLEM, f"{where} is not writable", f"check the owner of {where}")
    return Finding("disk", OK, detail)
