"""The `runlet` argument parser: every command, option and help text."""

from __future__ import annotations

import argparse
from typing import Any

from runlet import __version__
from runlet.cli.commands import (
    cmd_attach,
    cmd_cancel,
    cmd_device_add,
    cmd_device_list,
    cmd_device_revoke,
    cmd_job,
    cmd_jobs,
    cmd_logs,
    cmd_nodes,
    cmd_ping,
    cmd_run,
    cmd_send,
    cmd_start,
    cmd_ui,
    cmd_user_add,
    cmd_user_list,
    cmd_user_remove,
    port_number,
    positive,
    seconds,
)
from runlet.cli.key_commands import (
    cmd_check_config,
    cmd_config_keys,
    cmd_key_device,
    cmd_key_export,
    cmd_key_grant,
    cmd_key_import,
    cmd_key_init,
    cmd_key_rotate,
    cmd_key_seal,
    cmd_key_show,
)
from runlet.cli.setup_commands import add_setup_commands

EPILOG = """\
config: -c/--config FILE, else $RUNLET_CONFIG, else $XDG_CONFIG_HOME/runlet/config.toml
(~/.config/runlet/config.toml), else /etc/runlet/runlet.toml; `runlet init` writes one.
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
    parser.add_argument(
        "-c",
        "--config",
        help="config file (default: $RUNLET_CONFIG, then the default places below)",
    )
    parser.add_argument("--version", action="version", version=f"runlet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    add_setup_commands(sub)

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
        type=seconds,
        metavar="SECONDS",
        help="give up if the job has not started this many seconds from now (expired)",
    )
    run.add_argument(
        "--timeout",
        type=seconds,
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
    _add_ui(sub)

    _add_queries(sub)
    _add_users(sub)
    _add_ping(sub)

    check = sub.add_parser(
        "check-config", help="validate a config file, say where it was found and what it sets"
    )
    check.add_argument("file", nargs="?", help="default: -c, or the file runlet would read")
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
    logs.add_argument("--speed", type=positive, default=1.0, help="--play speed factor (default 1)")
    logs.add_argument(
        "--max-pause",
        type=positive,
        default=2.0,
        metavar="SECONDS",
        help="--play: longest pause between chunks (default 2)",
    )
    logs.add_argument("--raw", action="store_true", help="write the bytes unchanged (for pipes)")
    logs.add_argument("--node", help="the node that ran the job, if the store index is missing")
    logs.set_defaults(func=cmd_logs)


def _add_ui(sub: Any) -> None:
    ui = sub.add_parser(
        "ui",
        help="the desktop manager: fleet, jobs and live terminals in a browser page",
        description="Serve a page on this machine only (127.0.0.1) with the fleet, its jobs "
        "and live terminals; output is decrypted here, by this process. The URL carries a "
        "per-launch token.",
    )
    ui.add_argument("--port", type=port_number, default=0, help="port to listen on (0: any free)")
    ui.add_argument("--host", default="127.0.0.1", help="loopback address (default 127.0.0.1)")
    ui.add_argument("--no-browser", action="store_true", help="print the URL, open no browser")
    ui.set_defaults(func=cmd_ui)


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
    add.add_argument(
        "--broker-url",
        action="append",
        default=[],
        metavar="URL",
        help="broker address devices use, without a login (repeat for a cluster);"
        " default: server.public_broker_urls",
    )
    add.set_defaults(func=cmd_user_add)
    listing = user_sub.add_parser("list", help="list users")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=cmd_user_list)
    remove = user_sub.add_parser("remove", help="delete a user's broker account and resources")
    remove.add_argument("name")
    remove.set_defaults(func=cmd_user_remove)
    device = sub.add_parser("device", help="server admin: one broker account per device")
    device_sub = device.add_subparsers(dest="device_command", metavar="ACTION", required=True)
    add = device_sub.add_parser("add", help="an account for one device; prints its config")
    add.add_argument("user")
    add.add_argument("node")
    add.add_argument(
        "--run-only", action="store_true", help="it may run jobs but never start one (dispatch)"
    )
    add.add_argument("--rotate", action="store_true", help="existing device: set a new password")
    add.add_argument(
        "--broker-url",
        action="append",
        default=[],
        metavar="URL",
        help="broker address the device uses, without a login; default: public_broker_urls",
    )
    add.set_defaults(func=cmd_device_add)
    listing = device_sub.add_parser("list", help="list a user's devices")
    listing.add_argument("user")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=cmd_device_list)
    revoke = device_sub.add_parser(
        "revoke", help="delete a device's account and close its connections"
    )
    revoke.add_argument("user")
    revoke.add_argument("node")
    revoke.set_defaults(func=cmd_device_revoke)


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
    ping.add_argument("-W", "--timeout", type=positive, default=2.0, help="seconds per probe")
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
    key_sub.add_parser(
        "device", help="print this device's public key (makes its key pair if need be)"
    ).set_defaults(func=cmd_key_device)
    key_sub.add_parser(
        "rotate", help="a new fleet key that keeps the old ones for reading (after a revoke)"
    ).set_defaults(func=cmd_key_rotate)
    k_seal = key_sub.add_parser(
        "seal", help="print the fleet key sealed to another device's public key"
    )
    k_seal.add_argument("public", help="the line `runlet key device` printed on that device")
    k_seal.set_defaults(func=cmd_key_seal)
    k_grant = key_sub.add_parser(
        "grant", help="send the fleet key, sealed to a node's key pair, to that node's daemon"
    )
    k_grant.add_argument("node")
    k_grant.add_argument("public", help="the line `runlet key device` printed on that node")
    k_grant.set_defaults(func=cmd_key_grant)
    k_import = key_sub.add_parser(
        "import", help="store a key (plain or sealed to this device) read from standard input"
    )
    k_import.add_argument("--force", action="store_true", help="replace an existing key")
    k_import.set_defaults(func=cmd_key_import)
    key_sub.add_parser("show", help="print the key's fingerprint (safe to share)").set_defaults(
        func=cmd_key_show
    )
