"""The first-run commands: `runlet init`, `doctor`, `pair` and `completion`, with their parsers.

Kept apart from `commands` and `parser` so that these commands can grow without the rest of
the command line changing: `parser.build_parser` calls `add_setup_commands` once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from runlet.cli.completion import SHELLS
from runlet.errors import UsageError


def add_setup_commands(sub: Any) -> None:
    """Add `init`, `doctor`, `pair` and `completion` to the subcommands `sub`."""
    init = sub.add_parser(
        "init",
        help="set this device up: config in its default place, fleet key, broker check",
        description="Write this device's config to ~/.config/runlet/config.toml (or, with "
        "--system, /etc/runlet/runlet.toml), make the fleet key beside it, and check that the "
        "broker answers. On a terminal, what is not given is asked for.",
    )
    init.add_argument("--broker", metavar="URL", help="amqp(s)://user:password@host[:port]/")
    init.add_argument("--user", metavar="NAME", help="whose fleet this device belongs to")
    init.add_argument("--node", metavar="NAME", help="this device's name (default: host name)")
    init.add_argument(
        "--join",
        action="store_true",
        help="make no fleet key: this device gets it from another with `runlet pair`",
    )
    init.add_argument(
        "--system", action="store_true", help="write /etc/runlet/runlet.toml (a service install)"
    )
    init.add_argument("--force", action="store_true", help="replace an existing config")
    init.add_argument("--json", action="store_true", help="print what was done as JSON")
    init.set_defaults(func=cmd_init)

    doctor = sub.add_parser(
        "doctor",
        help="check this device's setup: config, broker, key, clock, daemon, server, disk",
        description="Each check prints one line: ok, problem (with what to do), or skipped "
        "(with why). The exit status is 1 when any problem was found.",
    )
    doctor.add_argument("--json", action="store_true", help="print the findings as JSON")
    doctor.set_defaults(func=cmd_doctor)

    pair = sub.add_parser(
        "pair",
        help="bring the fleet key to a new device with a short code (no SSH needed)",
        description="On the new device (after `runlet init --join`): `runlet pair` prints a code "
        "and waits. On a device that has the key: `runlet pair CODE` shows the new device's "
        "name and check words, asks, and sends the key sealed under a key only the two "
        "devices agree on (SPAKE2). A wrong code fails on both sides; after 3 failures, or 10 "
        "minutes, the new device shows a new code.",
    )
    pair.add_argument("code", nargs="?", help="the code the new device shows")
    pair.add_argument("--yes", action="store_true", help="send without asking (for scripts)")
    pair.set_defaults(func=cmd_pair)

    completion = sub.add_parser(
        "completion",
        help="print the shell completion script: bash, zsh or fish",
        description="Completes commands, options, node names (--on, ping) and recent job ids. "
        "bash: `source <(runlet completion bash)` in ~/.bashrc; zsh: the same in ~/.zshrc; "
        "fish: `runlet completion fish | source` in config.fish.",
    )
    completion.add_argument("shell", choices=SHELLS)
    completion.set_defaults(func=cmd_completion)


def _ask_missing(args: argparse.Namespace, ask: Callable[[str], str] | None) -> tuple[str, str]:
    """--broker and --user, asked for on a terminal when not given; a UsageError otherwise."""
    missing = [
        flag for flag, value in (("--broker", args.broker), ("--user", args.user)) if not value
    ]
    if missing and ask is None:
        raise UsageError(
            f"give {' and '.join(missing)} (no terminal to ask on), e.g. runlet init --broker"
            " amqps://alice:PASSWORD@rabbit.example.org/ --user alice"
        )
    broker = args.broker or _prompt(ask, "broker URL (amqps://user:password@host/): ")
    user = args.user or _prompt(ask, "user: ")
    return broker, user


def _prompt(ask: Callable[[str], str] | None, question: str) -> str:
    assert ask is not None
    answer = ask(question).strip()
    if not answer:
        raise UsageError(f"no answer to {question.rstrip(': ')!r}")
    return answer


def _terminal_ask() -> Callable[[str], str] | None:
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return None

    def ask(question: str) -> str:
        print(question, end="", file=sys.stderr, flush=True)
        return sys.stdin.readline(4096)

    return ask


def _quiet_logging() -> None:
    """Only our own errors on stderr: the broker library's connection attempts stay silent."""
    import logging

    from runlet.logging import configure

    configure("error", "auto")
    for name in ("aiormq", "aio_pika"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def cmd_init(args: argparse.Namespace) -> int:
    from runlet.client.device_setup import InitRequest, init_device, next_steps

    _quiet_logging()
    broker, user = _ask_missing(args, _terminal_ask())
    request = InitRequest(broker, user, args.node, args.join, args.system, args.force)
    done = asyncio.run(init_device(request, os.environ))
    steps = next_steps(done, broker, user)
    if args.json:
        print(json.dumps({**done.as_dict(), "next": steps}, indent=2))
        return 0
    print(f"wrote {done.path} (user {done.config.user}, node {done.config.node})")
    match done.key:
        case "created":
            print(f"made the fleet key {done.fingerprint} at {done.key_file}")
        case "kept":
            print(f"kept the fleet key {done.fingerprint} already at {done.key_file}")
        case _:
            print(f"no fleet key yet: `runlet pair` brings it to {done.key_file}")
    print(f"the broker answered at {done.broker} in {done.broker_seconds:.2f} s")
    print("next:")
    for step in steps:
        print(f"  {step}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from runlet.client.doctor import diagnose, problems

    _quiet_logging()
    findings = asyncio.run(diagnose(args.config, os.environ))
    if args.json:
        found = [f.as_dict() for f in findings]
        print(json.dumps({"problems": problems(findings), "findings": found}, indent=2))
    else:
        for finding in findings:
            print(f"{finding.status:8} {finding.check:7} {finding.detail}")
            if finding.fix:
                print(f"{'':8} {'do:':7} {finding.fix}")
    return 1 if problems(findings) else 0


def _say(line: str) -> None:
    print(line, flush=True)


def show_qr(code: object, out: Any = None) -> None:
    """The code as a QR code in the terminal (segno's text blocks), only on a terminal."""
    stream = sys.stdout if out is None else out
    if not stream.isatty():
        return
    import segno

    segno.make(str(code), error="m").terminal(out=stream, compact=True, border=2)
    stream.flush()


def cmd_pair(args: argparse.Namespace) -> int:
    from runlet.client.pairing import Board, send_key
    from runlet.config import load_config
    from runlet.protocol.crypto import FleetKey
    from runlet.protocol.pairing import PairingCode

    if args.code:
        try:
            PairingCode.parse(args.code)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    ask = _terminal_ask()
    if args.code and not args.yes and ask is None:
        raise UsageError("no terminal to ask on: add --yes to send the key without asking")
    _quiet_logging()
    config = load_config(args.config)
    if not args.code:
        asyncio.run(Board(config, config.key_file, _say, on_code=show_qr).run())
        _say("next: runlet start   (this device can run jobs now)")
        return 0
    key = FleetKey.load(config.key_file)

    def confirm(board: str, check: str) -> bool:
        if args.yes:
            return True
        assert ask is not None
        answer = ask(f"send the fleet key to {board} (check words {check})? [y/N] ")
        return answer.strip().lower() in ("y", "yes")

    asyncio.run(send_key(config, key, args.code, confirm, _say))
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    from runlet.cli.completion import shell_code

    print(shell_code(args.shell))
    return 0
