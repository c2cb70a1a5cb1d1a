"""`runlet`: the command line, and the composition root that picks a role from the config.

Exit statuses: a job's own status for `run` and `attach` (128+N when a signal N ended it;
124 timed out; 75 expired, interrupted or lost; 65 rejected); otherwise 0 success, 64 bad
usage, 65 bad data, 68 no such node or job, 69 broker unavailable, 77 key problem, 78 bad
config, 130 interrupted by the user.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from runlet import __version__
from runlet.config import Config, describe_keys, load_config
from runlet.errors import EXIT_CANCELLED, EXIT_NOHOST, ConfigError, RunletError, UsageError

EPILOG = """\
config: -c/--config FILE, or the RUNLET_CONFIG environment variable.
The config's `role` decides what `runlet start` runs (daemon).
Detach from an attached job with Ctrl-] (press it twice to send it to the job).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runlet",
        description="Run shell jobs on a fleet of devices and drive their terminals from anywhere.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-c", "--config", help="config file (default: $RUNLET_CONFIG)")
    parser.add_argument("--version", action="version", version=f"runlet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    start = sub.add_parser("start", help="run this device's daemon in the foreground")
    start.set_defaults(func=cmd_start)

    run = sub.add_parser(
        "run",
        help="run a command on a node and follow it in this terminal",
        description="Run a command in a pseudo-terminal on a node. One argument containing "
        "shell syntax runs through the node's shell; several are an argv.",
    )
    run.add_argument(
        "--on",
        default="",
        metavar="TARGET",
        help="NODE, any (next free node), all (every node), tag:TAG; default: this node",
    )
    run.add_argument("-d", "--detach", action="store_true", help="print the job id and return")
    run.add_argument(
        "--deadline",
        type=_seconds,
        metavar="SECONDS",
        help="give up if the job has not started this many seconds from now (expired)",
    )
    run.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help="end the job (SIGTERM, grace, SIGKILL) after it ran this long",
    )
    run.add_argument(
        "-e",
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set an environment variable for the job (repeatable)",
    )
    run.add_argument("--cwd", help="working folder on the node")
    run.add_argument("--json", action="store_true", help="with --detach: print JSON")
    run.add_argument("--detach-key", default="ctrl-]", help="key that detaches (default ctrl-])")
    run.add_argument("argv", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
    run.set_defaults(func=cmd_run)

    attach = sub.add_parser(
        "attach", help="follow a running or finished job: screen so far, then live"
    )
    attach.add_argument("job_id")
    attach.add_argument("--read-only", action="store_true", help="watch without typing")
    attach.add_argument("--detach-key", default="ctrl-]", help="key that detaches (default ctrl-])")
    attach.set_defaults(func=cmd_attach)

    _add_logs(sub)

    send = sub.add_parser("send", help="type text into a running job (\\r, \\n, \\t, \\e, \\xNN)")
    send.add_argument("job_id")
    send.add_argument("text")
    send.set_defaults(func=cmd_send)

    cancel = sub.add_parser("cancel", help="end a job: SIGTERM, grace period, then SIGKILL")
    cancel.add_argument("job_id")
    cancel.add_argument("--no-wait", action="store_true", help="do not wait for the job to end")
    cancel.set_defaults(func=cmd_cancel)

    _add_key(sub)

    _add_queries(sub)
    _add_users(sub)
    _add_ping(sub)

    check = sub.add_parser("check-config", help="validate a config file and print what it sets")
    check.add_argument("file")
    check.add_argument("--json", action="store_true", help="print the settings as JSON")
    check.set_defaults(func=cmd_check_config)

    keys = sub.add_parser("config-keys", help="list every config key with its default")
    keys.set_defaults(func=cmd_config_keys)
    return parser


def _add_logs(sub: Any) -> None:
    logs = sub.add_parser(
        "logs",
        help="show a job's log from any device: verified, replayable, followable",
        description="A finished job's log comes from this device's copy or the object store "
        "(whichever the sync rule picks); a running job's from its node. Every chunk is "
        "verified; damage is reported on stderr with the chunk it concerns (exit 65).",
    )
    logs.add_argument("job_id")
    logs.add_argument("-f", "--follow", action="store_true", help="keep following a running job")
    logs.add_argument("--play", action="store_true", help="replay with the original timing")
    logs.add_argument(
        "--speed", type=_positive, default=1.0, help="--play speed factor (default 1)"
    )
    logs.add_argument(
        "--max-pause",
        type=_positive,
        default=2.0,
        metavar="SECONDS",
        help="--play: longest pause between chunks (default 2)",
    )
    logs.add_argument("--raw", action="store_true", help="write the bytes unchanged (for pipes)")
    logs.add_argument("--node", help="the node that ran the job, if the store index is missing")
    logs.set_defaults(func=cmd_logs)


def _add_queries(sub: Any) -> None:
    jobs = sub.add_parser("jobs", help="list jobs recorded by the server, newest first")
    jobs.add_argument("--node", help="only jobs of this node")
    jobs.add_argument("--state", help="only jobs in this state (queued, running, exited, ...)")
    jobs.add_argument("--since", help="only jobs queued since: 10m, 2h, 1d, an ISO time, unix s")
    jobs.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    jobs.add_argument("--json", action="store_true", help="print JSON")
    jobs.set_defaults(func=cmd_jobs)
    job = sub.add_parser("job", help="one job's whole state history, from the server")
    job.add_argument("job_id")
    job.add_argument("--json", action="store_true", help="print JSON")
    job.set_defaults(func=cmd_job)
    nodes = sub.add_parser("nodes", help="the fleet's nodes: online or not, last seen, jobs")
    nodes.add_argument("--json", action="store_true", help="print JSON")
    nodes.set_defaults(func=cmd_nodes)


def _add_users(sub: Any) -> None:
    user = sub.add_parser("user", help="server admin: users and their broker accounts")
    user_sub = user.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    add = user_sub.add_parser("add", help="create a user and print a ready device config")
    add.add_argument("name")
    add.add_argument("--rotate", action="store_true", help="existing user: set a new password")
    add.add_argument("--node", default="CHANGE-ME", help="node name to put in the printed config")
    add.set_defaults(func=cmd_user_add)
    listing = user_sub.add_parser("list", help="list users")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=cmd_user_list)
    remove = user_sub.add_parser("remove", help="delete a user's broker account and resources")
    remove.add_argument("name")
    remove.set_defaults(func=cmd_user_remove)


def _add_ping(sub: Any) -> None:
    ping = sub.add_parser(
        "ping",
        help="round-trip latency to a node's daemon through the broker, like ping",
        description="Each probe goes client → broker → daemon → broker → client. With --pty, "
        "each probe is a keystroke typed into `cat` in a PTY on the node, timed to its echo.",
    )
    ping.add_argument("node")
    ping.add_argument("--pty", action="store_true", help="time keystroke echoes through a PTY")
    ping.add_argument("-c", "--count", type=int, default=10, help="probes to send (default 10)")
    ping.add_argument("-i", "--interval", type=float, default=0.2, help="seconds between probes")
    ping.add_argument("-W", "--timeout", type=_positive, default=2.0, help="seconds per probe")
    ping.add_argument("--json", action="store_true", help="print a JSON summary only")
    ping.set_defaults(func=cmd_ping)


def _add_key(sub: Any) -> None:
    key = sub.add_parser("key", help="the fleet key shared by this user's devices")
    key_sub = key.add_subparsers(dest="key_command", metavar="ACTION", required=True)
    k_init = key_sub.add_parser("init", help="make a new fleet key at crypto.key_file")
    k_init.add_argument("--force", action="store_true", help="replace an existing key")
    k_init.set_defaults(func=cmd_key_init)
    key_sub.add_parser(
        "export", help="print the key as one line, to import on another device"
    ).set_defaults(func=cmd_key_export)
    k_import = key_sub.add_parser("import", help="store a key read from standard input")
    k_import.add_argument("--force", action="store_true", help="replace an existing key")
    k_import.set_defaults(func=cmd_key_import)
    key_sub.add_parser("show", help="print the key's fingerprint (safe to share)").set_defaults(
        func=cmd_key_show
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except UsageError as exc:  # said as argparse says it: the command, then what is wrong
        print(f"runlet {_command(func)}: {exc}", file=sys.stderr)
        return exc.exit_code
    except RunletError as exc:
        print(f"runlet: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("runlet: interrupted", file=sys.stderr)
        return EXIT_CANCELLED


def _command(func: Callable[[argparse.Namespace], int]) -> str:
    """`cmd_user_add` → `user add`."""
    return (
        func.__name__.removeprefix("cmd_").replace("_", " ").replace("check config", "check-config")
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 30 * 86400:
        raise argparse.ArgumentTypeError(f"seconds out of range: {text}")
    return value


def _positive(text: str) -> float:
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

    config = _config(args)
    return asyncio.run(logs_job(config, _fleet_key(config), args))


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
    from runlet.protocol.messages import Query

    rows = asyncio.run(queries.ask(_config(args), Query("nodes")))
    print(queries.as_json(rows) if args.json else queries.render(queries.format_nodes, rows))
    return 0


def _user_name(name: str) -> str:
    from runlet.protocol.addresses import valid_name

    if not valid_name(name):
        raise UsageError(f"{name[:80]!r} is not a valid name (1-64 of A-Z a-z 0-9 _ -)")
    return name


def cmd_user_add(args: argparse.Namespace) -> int:
    from runlet.roots import admin

    config = _config(args)
    from runlet.protocol.addresses import valid_name

    if not valid_name(args.node):
        raise UsageError(f"--node {args.node[:80]!r} is not a valid node name")
    account = asyncio.run(admin.add_user(config, _user_name(args.name), rotate=args.rotate))
    print(admin.device_config(config, account, args.node), end="")
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
            return await probe(
                client,
                args.node,
                count=args.count,
                interval=args.interval,
                timeout=args.timeout,
                report=report,
            )

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


# -- keys and config ----------------------------------------------------------------------


def cmd_key_init(args: argparse.Namespace) -> int:
    from runlet.protocol.crypto import FleetKey

    config = _config(args)
    key = FleetKey.generate()
    key.save(config.key_file, overwrite=args.force)
    print(f"fleet key {key.fingerprint()} written to {config.key_file}")
    print("copy it to your other devices with `runlet key export` / `runlet key import`")
    return 0


def cmd_key_export(args: argparse.Namespace) -> int:
    print(_fleet_key(_config(args)).export_text())
    return 0


def cmd_key_import(args: argparse.Namespace) -> int:
    from runlet.protocol.crypto import FleetKey

    config = _config(args)
    text = sys.stdin.read(8192)
    key = FleetKey.import_text(text)
    key.save(config.key_file, overwrite=args.force)
    print(f"fleet key {key.fingerprint()} written to {config.key_file}")
    return 0


def cmd_key_show(args: argparse.Namespace) -> int:
    print(_fleet_key(_config(args)).fingerprint())
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    if args.json:
        print(json.dumps(_config_dict(config), indent=2))
    else:
        print(
            f"{args.file}: ok — role {config.role}, node {config.node}, user {config.user}, "
            f"{len(config.broker.urls)} broker URL(s), max_parallel {config.jobs.max_parallel}"
        )
    return 0


def cmd_config_keys(args: argparse.Namespace) -> int:
    for dotted, kind, meaning in describe_keys():
        print(f"{dotted:24} {kind:32} {meaning}")
    return 0


def _config_dict(config: Config) -> dict[str, Any]:
    from runlet.adapters.broker_port import safe_url

    return {
        "role": config.role,
        "user": config.user,
        "node": config.node,
        "data_dir": str(config.data_dir),
        "tags": list(config.tags),
        "broker": {
            "urls": [safe_url(u) for u in config.broker.urls],
            "heartbeat": config.broker.heartbeat,
            "publish_timeout": config.broker.publish_timeout,
            "prefetch": config.broker.prefetch,
        },
        "jobs": {
            "max_parallel": config.jobs.max_parallel,
            "shell": config.jobs.shell,
            "grace_seconds": config.jobs.grace_seconds,
            "max_load": config.jobs.max_load,
        },
        "crypto": None if config.crypto is None else {"key_file": str(config.crypto.key_file)},
        "log": {"level": config.log.level, "format": config.log.format},
        "source": config.source,
    }


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
