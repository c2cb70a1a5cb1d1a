"""The commands behind `runlet …`: each takes the parsed arguments and returns an exit status.

A command that cannot go on raises a `RunletError`; `runlet.cli.main` prints it (a
`UsageError` as `runlet COMMAND: …`) and exits with its status.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

from runlet.config import Config, load_config
from runlet.errors import EXIT_NOHOST, ConfigError, UsageError


def command_name(func: Callable[[argparse.Namespace], int]) -> str:
    """`cmd_user_add` → `user add`."""
    return (
        func.__name__.removeprefix("cmd_").replace("_", " ").replace("check config", "check-config")
    )


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 30 * 86400:
        raise argparse.ArgumentTypeError(f"seconds out of range: {text}")
    return value


def positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 1000:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1000: {text}")
    return value


def _config(args: argparse.Namespace, *, daemon: bool = False) -> Config:
    config = load_config(args.config)
    from runlet.logging import configure

    # a client's terminal belongs to the job it shows: only warnings and errors go to stderr
    level = config.log.level if daemon or config.log.level == "debug" else "warning"
    configure(level, config.log.format)
    return config


def _fleet_key(config: Config) -> Any:
    from runlet.protocol.crypto import FleetKey

    return FleetKey.load(config.key_file)


# -- roles --------------------------------------------------------------------------------


def cmd_start(args: argparse.Namespace) -> int:
    config = _config(args, daemon=True)
    if config.role == "server":
        from runlet.roots.server import run_server

        return run_server(config)
    if config.role != "daemon":
        raise ConfigError(
            "role",
            f"`runlet start` runs a daemon or a server; this config's role is {config.role!r}",
            source=config.source,
        )
    from runlet.roots.daemon import run_daemon

    return run_daemon(config)


# -- jobs ---------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from runlet.client.commands import run_job

    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UsageError("give the command after --, e.g. runlet run --on edge-2 -- uptime")
    env = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name or "\0" in item:
            raise UsageError(f"--env wants KEY=VALUE, got {item!r}")
        env[name] = value
    config = _config(args)
    return asyncio.run(run_job(config, _fleet_key(config), args, argv, env))


def cmd_attach(args: argparse.Namespace) -> int:
    from runlet.client.commands import attach_job

    config = _config(args)
    return asyncio.run(attach_job(config, _fleet_key(config), args))


def cmd_logs(args: argparse.Namespace) -> int:
    from runlet.client.commands import logs_job
    from runlet.roots.reader import Reader

    config = _config(args)
    key = _fleet_key(config)
    with Reader(config) as reader:  # this process's Sync Reconciler
        return asyncio.run(logs_job(config, key, args, reader))


def cmd_jobs(args: argparse.Namespace) -> int:
    from runlet.client import queries
    from runlet.protocol.messages import Query

    try:
        since = None if args.since is None else queries.parse_since(args.since)
        query = Query("jobs", node=args.node, state=args.state, since=since, limit=args.limit)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    rows = asyncio.run(queries.ask(_config(args), query))
    print(queries.as_json(rows) if args.json else queries.render(queries.format_jobs, rows))
    return 0


def cmd_job(args: argparse.Namespace) -> int:
    from runlet.client import queries
    from runlet.protocol.messages import Query

    try:
        query = Query("job", job_id=args.job_id)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    rows = asyncio.run(queries.ask(_config(args), query))
    print(queries.as_json(rows[0]) if args.json else queries.render(queries.format_job, rows[0]))
    return 0


def cmd_nodes(args: argparse.Namespace) -> int:
    from runlet.client import queries
    from runlet.errors import ServerUnavailable
    from runlet.protocol.messages import Query

    config = _config(args)
    try:
        rows = asyncio.run(queries.ask(config, Query("nodes")))
    except ServerUnavailable as exc:  # no ledger: the nodes that say they are alive
        from runlet.client.sightings import listen_for_nodes, listening_seconds

        seconds = listening_seconds(config)
        print(f"runlet: {exc}; listening {seconds:.1f} s for heartbeats", file=sys.stderr)
        rows = asyncio.run(listen_for_nodes(config, seconds))
    print(queries.as_json(rows) if args.json else queries.render(queries.format_nodes, rows))
    return 0


def _user_name(name: str) -> str:
    from runlet.protocol.addresses import valid_name

    if not valid_name(name):
        raise UsageError(f"{name[:80]!r} is not a valid name (1-64 of A-Z a-z 0-9 _ -)")
    return name


def _say_fallback(config: Config, given: list[str]) -> None:
    """Warn when the device address is only the server's own (it may be a private name)."""
    if not given and config.server is not None and not config.server.public_broker_urls:
        print(
            "runlet: the config below reaches the broker the way this server does; if devices"
            " reach it by another name, pass --broker-url or set server.public_broker_urls",
            file=sys.stderr,
        )


def cmd_user_add(args: argparse.Namespace) -> int:
    from runlet.roots import admin

    config = _config(args)
    from runlet.protocol.addresses import valid_name

    if not valid_name(args.node):
        raise UsageError(f"--node {args.node[:80]!r} is not a valid node name")
    name = _user_name(args.name)
    urls = admin.device_urls(config, args.broker_url)  # before anything is made
    _say_fallback(config, args.broker_url)
    account = asyncio.run(admin.add_user(config, name, rotate=args.rotate))
    print(admin.device_config(config, account, args.node, urls), end="")
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    from runlet.roots import admin

    users = asyncio.run(admin.list_users(_config(args)))
    if args.json:
        print(json.dumps([{"name": n, "broker_account": b} for n, b in users]))
    else:
        for name, has_account in users:
            print(f"{name}{'' if has_account else '  (no broker account)'}")
    return 0


def cmd_user_remove(args: argparse.Namespace) -> int:
    from runlet.roots import admin

    removed = asyncio.run(admin.remove_user(_config(args), _user_name(args.name)))
    print(f"user {args.name} {'removed' if removed else 'was not there'}")
    return 0 if removed else EXIT_NOHOST


def cmd_device_add(args: argparse.Namespace) -> int:
    from runlet.roots import admin

    config = _config(args)
    user, node = _user_name(args.user), _user_name(args.node)
    urls = admin.device_urls(config, args.broker_url)  # before anything is made
    _say_fallback(config, args.broker_url)
    account = asyncio.run(
        admin.add_device(config, user, node, run_only=args.run_only, rotate=args.rotate)
    )
    print(admin.device_config(config, account, node, urls), end="")
    return 0


def cmd_device_list(args: argparse.Namespace) -> int:
    from runlet.roots import admin

    devices = asyncio.run(admin.list_devices(_config(args), _user_name(args.user)))
    if args.json:
        print(json.dumps([{"node": n, "run_only": r} for n, r in devices]))
    else:
        for node, run_only in devices:
            print(f"{node}{'  (run-only)' if run_only else ''}")
    return 0


def cmd_device_revoke(args: argparse.Namespace) -> int:
    from runlet.roots import admin

    user, node = _user_name(args.user), _user_name(args.node)
    revoked = asyncio.run(admin.revoke_device(_config(args), user, node))
    print(f"device {node} of {user} {'revoked' if revoked else 'had no account'}")
    if revoked:
        print(
            "it still holds the fleet key: on a device that stays, `runlet key rotate`, then"
            " `runlet key grant NODE LINE` for each remaining device"
        )
    return 0 if revoked else EXIT_NOHOST


def cmd_ping(args: argparse.Namespace) -> int:
    from runlet.client import ping
    from runlet.client.session import Client
    from runlet.protocol.addresses import valid_name

    if not valid_name(args.node) or not 1 <= args.count <= 100_000 or not 0 <= args.interval <= 60:
        raise UsageError("need a node name, 1 <= --count <= 100000, 0 <= --interval <= 60")
    config = _config(args)

    def report(seq: int, elapsed: float | None) -> None:
        if not args.json:
            shown = "timeout" if elapsed is None else f"time={elapsed * 1000:.3f} ms"
            print(
                f"{'pty echo' if args.pty else 'pong'} from {args.node}: seq={seq} {shown}",
                flush=True,
            )

    async def go() -> ping.PingStats:
        async with Client(config, _fleet_key(config)) as client:
            probe = ping.ping_pty if args.pty else ping.ping_daemon
            probes = ping.Probes(args.count, args.interval, args.timeout, report)
            return await probe(client, args.node, probes)

    stats = asyncio.run(go())
    summary = stats.summary()
    if args.json:
        print(json.dumps(ping.as_dict(stats)))
    else:
        print(f"--- {args.node} {'pty echo' if args.pty else 'ping'} statistics ---")
        print(
            f"{summary['sent']} sent, {summary['received']} received, "
            f"{summary['loss']:.1%} loss; min/median/p99/max = {summary['min_ms']}/"
            f"{summary['median_ms']}/{summary['p99_ms']}/{summary['max_ms']} ms"
        )
    return 0 if stats.received else 1


def cmd_send(args: argparse.Namespace) -> int:
    from runlet.client.commands import send_text

    config = _config(args)
    return asyncio.run(send_text(config, _fleet_key(config), args.job_id, args.text))


def cmd_cancel(args: argparse.Namespace) -> int:
    from runlet.client.commands import cancel_job

    config = _config(args)
    return asyncio.run(cancel_job(config, _fleet_key(config), args.job_id, wait=not args.no_wait))


def port_number(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number (0-65535): {text[:20]!r}")
    return int(text)


def cmd_ui(args: argparse.Namespace) -> int:
    from runlet.roots.reader import Reader
    from runlet.ui.serve import check_host, check_role, serve

    config = _config(args)
    check_role(config)
    check_host(args.host)
    key = _fleet_key(config)
    with Reader(config) as reader:  # this process's Sync Reconciler, for the Logs view
        return asyncio.run(
            serve(
                config,
                key,
                reader,
                host=args.host,
                port=args.port,
                open_browser=not args.no_browser,
            )
        )
