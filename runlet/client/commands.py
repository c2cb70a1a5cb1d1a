"""The client commands behind `runlet run`, `attach`, `send` and `cancel`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from runlet.client.follow import DETACHED, Follower, Options
from runlet.client.session import Client, Submitted, Watch, exit_status, target_of
from runlet.client.terminal import parse_key, terminal_size
from runlet.config import Config
from runlet.errors import EXIT_DATAERR, JobNotFound, NoSuchTarget, UsageError
from runlet.protocol.crypto import FleetKey
from runlet.protocol.messages import JobStateChanged, OutputChunk, parse_target
from runlet.protocol.payloads import Control, JobSpec

DISCOVERY_SECONDS = 2.0  # how long a fan-out waits to hear which nodes took the job


def _err(text: str) -> None:
    print(f"[runlet] {text}", file=sys.stderr, flush=True)


async def run_job(
    config: Config, key: FleetKey, args: argparse.Namespace, argv: list[str], env: dict[str, str]
) -> int:
    try:
        target = target_of(args.on, config.node)
        detach_key = parse_key(args.detach_key)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if sys.stdin.isatty() and os.environ.get("TERM"):
        env.setdefault("TERM", os.environ["TERM"])  # the job draws for this terminal, as ssh does
    spec = JobSpec(tuple(argv), env, args.cwd, args.timeout)
    deadline = time.time() + args.deadline if args.deadline else None
    rows, cols = terminal_size(0)
    fans_out = parse_target(target)[0] in ("all", "tag")
    async with Client(config, key) as client:
        from runlet.protocol.addresses import new_job_id

        job_id = new_job_id()
        watch = await client.watch(job_id, fans_out=fans_out)
        submitted = await client.submit(
            spec, target, job_id=job_id, deadline=deadline, rows=rows, cols=cols
        )
        if submitted.offline:
            until = (
                f" until {time.strftime('%H:%M:%S', time.localtime(deadline))}" if deadline else ""
            )
            _err(f"{target.removeprefix('node:')} is offline: the job waits in its queue{until}")
        if args.detach:
            return await _detached(watch, submitted, json_out=args.json)
        if fans_out:
            return await _follow_fanout(client, watch, submitted)
        follower = Follower(
            client,
            job_id,
            watch,
            Options(interactive=True, detach_key=detach_key, deadline=deadline),
        )
        status = await follower.run()
    if status == DETACHED:
        _err(f"detached; job {job_id} goes on (runlet attach {job_id})")
        return 0
    return status


async def _detached(watch: Watch, submitted: Submitted, *, json_out: bool) -> int:
    ids: list[str] = []
    if submitted.fans_out:
        ids = await _discover(watch, submitted.job_id)
    if json_out:
        print(
            json.dumps(
                {
                    "job_id": submitted.job_id,
                    "target": submitted.target,
                    "children": ids,
                    "offline": submitted.offline,
                }
            )
        )
    else:
        print(submitted.job_id)
        for child in ids:
            print(child)
    return 0


async def discover(watch: Watch, job_id: str) -> list[str]:
    """The ids of a fanned-out job's executions heard of within DISCOVERY_SECONDS."""
    return await _discover(watch, job_id)


async def _discover(watch: Watch, job_id: str) -> list[str]:
    end = time.monotonic() + DISCOVERY_SECONDS
    seen: list[str] = []
    while (left := end - time.monotonic()) > 0:
        try:
            msg = await asyncio.wait_for(watch.inbox.get(), left)
        except TimeoutError:
            break
        if isinstance(msg, JobStateChanged) and msg.job_id not in seen:
            seen.append(msg.job_id)
    return seen


async def _follow_fanout(client: Client, watch: Watch, submitted: Submitted) -> int:
    """Follow every node's execution, output prefixed with the node's name."""
    from runlet.client.session import Reassembler

    streams: dict[str, Reassembler] = {}
    finals: dict[str, JobStateChanged] = {}
    nodes: dict[str, str] = {}
    start = time.monotonic()
    while True:
        try:
            msg = await asyncio.wait_for(watch.inbox.get(), 0.25)
        except TimeoutError:
            msg = None
        if isinstance(msg, JobStateChanged):
            nodes[msg.job_id] = msg.node
            streams.setdefault(msg.job_id, Reassembler(client.key, msg.job_id))
            if msg.terminal:
                finals[msg.job_id] = msg
        elif isinstance(msg, OutputChunk):
            stream = streams.setdefault(msg.job_id, Reassembler(client.key, msg.job_id))
            node = nodes.get(msg.job_id, msg.job_id.rsplit(".", 1)[-1])
            for piece in stream.feed(msg):
                for line in piece.decode(errors="replace").splitlines(keepends=True):
                    sys.stdout.write(f"[{node}] {line}")
            sys.stdout.flush()
        settled = all(
            j in finals and (streams[j].finished or time.monotonic() - start > 30) for j in streams
        )
        if time.monotonic() - start > DISCOVERY_SECONDS and streams and settled:
            break
        if time.monotonic() - start > DISCOVERY_SECONDS * 5 and not streams:
            raise NoSuchTarget(submitted.target)
    worst = 0
    for job_id, final in sorted(finals.items()):
        status = exit_status(final)
        _err(f"{final.node}: {job_id} {final.state} (status {status})")
        worst = worst or status
    return worst


async def attach_job(config: Config, key: FleetKey, args: argparse.Namespace) -> int:
    job_id = _job_id(args.job_id)
    try:
        detach_key = parse_key(args.detach_key)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    async with Client(config, key) as client:
        watch = await client.watch(job_id)
        options = Options(replay=True, read_only=args.read_only, detach_key=detach_key)
        status = await Follower(client, job_id, watch, options).run()
    if status == DETACHED:
        _err(f"detached; job {job_id} goes on")
        return 0
    return status


async def send_text(config: Config, key: FleetKey, job_id: str, text: str) -> int:
    job_id = _job_id(job_id)
    data = unescape(text)
    async with Client(config, key) as client:
        try:
            await client.send_input(job_id, data, confirm=True)
        except NoSuchTarget:
            raise JobNotFound(f"job {job_id} is not running on any node", job_id=job_id) from None
    return 0


async def cancel_job(config: Config, key: FleetKey, job_id: str, *, wait: bool) -> int:
    job_id = _job_id(job_id)
    async with Client(config, key) as client:
        watch = await client.watch(job_id)
        try:
            await client.control(job_id, Control("cancel"), confirm=True)
        except NoSuchTarget:
            raise JobNotFound(
                f"job {job_id} is not queued or running on any node", job_id=job_id
            ) from None
        if not wait:
            return 0
        _err(f"cancel sent to job {job_id}; waiting for it to end")
        while True:
            msg = await watch.inbox.get()
            if isinstance(msg, JobStateChanged) and msg.job_id == job_id and msg.terminal:
                detail = f" ({msg.detail})" if msg.detail else ""
                _err(f"job {job_id} {msg.state}{detail}")
                return 0 if msg.state == "cancelled" else exit_status(msg)


def _job_id(text: str) -> str:
    from runlet.protocol.addresses import valid_job_id

    if not valid_job_id(text):
        raise UsageError(f"not a job id: {text[:80]!r} (32 hex digits, optionally .NODE)")
    return text


def unescape(text: str) -> bytes:
    """Turn `send`'s escapes (\\r \\n \\t \\e \\0 \\\\ \\xNN) into bytes; the rest is UTF-8."""
    out = bytearray()
    simple = {"r": b"\r", "n": b"\n", "t": b"\t", "e": b"\x1b", "0": b"\0", "\\": b"\\"}
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "\\" or i + 1 == len(text):
            try:
                out += ch.encode("utf-8", "surrogateescape")  # argv bytes that are not UTF-8
            except UnicodeEncodeError:
                raise UsageError(f"text has an invalid character at position {i}") from None
            i += 1
            continue
        nxt = text[i + 1]
        if nxt in simple:
            out += simple[nxt]
            i += 2
        elif (
            nxt == "x"
            and len(text) >= i + 4
            and all(c in "0123456789abcdefABCDEF" for c in text[i + 2 : i + 4])
        ):
            out.append(int(text[i + 2 : i + 4], 16))
            i += 4
        else:
            raise UsageError(
                f"unknown escape \\{nxt} at position {i} (use \\r \\n \\t \\e \\0 \\\\ \\xNN)"
            )
    if len(out) > 60_000:
        raise UsageError(f"text is {len(out)} bytes; send at most 60000 at once")
    return bytes(out)


class LogReader(Protocol):
    """This process's Sync Reconciler, as the composition root offers it (runlet.roots.reader)."""

    async def read(
        self, job_id: str, path: Path, *, node: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[Path, str, bool]:  # fmt: skip
        """(the copy to read, the rule's decision, whether it is finished); JobNotFound if none."""


def local_log_path(config: Config, job_id: str) -> Path:
    """Where this device keeps a job's log: its own vault's copy, or one fetched before."""
    vault_copy = config.data_dir / "vault" / f"{job_id}.rlog"
    return vault_copy if vault_copy.exists() else config.data_dir / "logs" / f"{job_id}.rlog"


async def stored_log(
    config: Config, reader: LogReader, job_id: str, *, node: str | None = None
) -> Path | None:
    """A finished copy of the job's log here (fetched by the sync rule), or None: ask the nodes."""
    return await _stored_log(config, reader, job_id, local_log_path(config, job_id), node=node)


async def logs_job(
    config: Config, key: FleetKey, args: argparse.Namespace, reader: LogReader
) -> int:
    """`runlet logs`: a finished job's log through the reconciler, a running one from its node."""
    job_id = _job_id(args.job_id)
    local = local_log_path(config, job_id)
    path = await _stored_log(config, reader, job_id, local, node=args.node)
    if path is not None:
        return _print_log(path, job_id, key, args)
    async with Client(config, key) as client:
        watch = await client.watch(job_id)
        options = Options(
            interactive=False, replay=True, quiet=not args.follow, until_replayed=not args.follow
        )
        try:
            status = await Follower(client, job_id, watch, options).run()
        except JobNotFound:
            if local.exists():  # an unfinished copy is all there is: show it, say what is missing
                return _print_log(local, job_id, key, args)
            raise JobNotFound(
                f"no log of job {job_id}: not in the object store and no online node holds it",
                job_id=job_id,
            ) from None
    return 0 if not args.follow else status


async def _stored_log(
    config: Config, reader: LogReader, job_id: str, local: Path, *, node: str | None
) -> Path | None:
    """The path of a finished copy of the log (local or fetched), or None to ask the nodes."""
    if config.storage is not None:
        local.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        path, decision, final = await reader.read(job_id, local, node=node, progress=_progress())
    except JobNotFound:
        return None
    if not final:
        return None  # only a checkpoint so far: the job runs, or its device died mid-job
    if config.storage is not None and sys.stderr.isatty():
        _err(f"log of {job_id}: {decision}")
    return path


def _progress() -> Callable[[int, int], None]:
    shown = {"last": 0.0}
    tty = sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if total < 1 << 20 or (now - shown["last"] < 0.2 and done < total):
            return
        shown["last"] = now
        text = f"downloading {done / 1e6:.1f} of {total / 1e6:.1f} MB"
        if tty:
            sys.stderr.write(f"\r[runlet] {text}" + ("\n" if done >= total else ""))
            sys.stderr.flush()
        elif done >= total:
            _err(text)

    return progress


def _print_log(path: Path, job_id: str, key: FleetKey, args: argparse.Namespace) -> int:
    from runlet.client.logview import show_log

    raw = args.raw or sys.stdout.isatty()

    def write(data: bytes) -> None:
        sys.stdout.buffer.write(data if raw else data.replace(b"\r\n", b"\n"))
        sys.stdout.buffer.flush()

    verdict = show_log(
        path,
        job_id,
        key,
        write,
        _err,
        play_speed=args.speed if args.play else None,
        max_pause=args.max_pause,
    )
    return 0 if verdict.intact else EXIT_DATAERR
