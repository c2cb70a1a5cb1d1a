"""Shell completion for `runlet` (argcomplete): `runlet completion bash|zsh|fish` prints the
script; at each TAB the shell runs `runlet` itself, which answers from the argparse tree.

argcomplete rather than shtab: node names and job ids are only known at TAB time, and
argcomplete runs completers written in Python for bash, zsh and fish alike, where shtab writes
static scripts and leaves dynamic parts to hand-written shell functions for each shell.

The dynamic completers ask the server (`nodes`, the recent `jobs`) with the config the command
line names. They fail silently — no completions, nothing printed — when there is no config,
no broker or no server, and give up after `ASK_SECONDS`: a TAB must never hang or spill.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Callable
from typing import Any

SHELLS = ("bash", "zsh", "fish")
ASK_SECONDS = 3.0
RECENT_JOBS = 20

Completer = Callable[..., list[str]]


def shell_code(shell: str) -> str:
    """The script that makes `shell` complete `runlet`."""
    from argcomplete.shell_integration import shellcode

    return shellcode(["runlet"], shell=shell)


def autocomplete(parser: argparse.ArgumentParser) -> None:
    """When the shell is asking (argcomplete's variables set), answer and exit; else nothing."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    import argcomplete

    install_completers(parser)
    argcomplete.autocomplete(parser, always_complete_options=False)  # options after a "-"


def install_completers(parser: argparse.ArgumentParser) -> None:
    """Attach the dynamic completers to every `--on`, node and job-id argument of the tree."""
    by_dest: dict[str, Completer] = {
        "on": complete_targets,
        "node": complete_nodes,
        "job_id": complete_jobs,
    }
    for action in parser._actions:  # argparse has no public walk of its tree
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                install_completers(sub)
        elif action.dest in by_dest and action.choices is None:
            action.completer = by_dest[action.dest]  # type: ignore[attr-defined]


def _ask(parsed_args: argparse.Namespace, query: Any) -> list[dict[str, Any]]:
    """The server's answer rows, or [] on any failure at all (a TAB never shows an error)."""
    try:
        from runlet.client import queries
        from runlet.config import load_config

        config = load_config(getattr(parsed_args, "config", None))

        async def go() -> list[dict[str, Any]]:
            return await asyncio.wait_for(queries.ask(config, query), ASK_SECONDS)

        return asyncio.run(go())
    except Exception:  # noqa: BLE001 - completion fails silently, by design
        return []


def _nodes(parsed_args: argparse.Namespace) -> list[dict[str, Any]]:
    from runlet.protocol.messages import Query

    return [row for row in _ask(parsed_args, Query("nodes")) if isinstance(row, dict)]


def complete_nodes(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """Online nodes first, then the others, as the server knows them."""
    rows = sorted(_nodes(parsed_args), key=lambda row: not row.get("online"))
    names = [str(row.get("name", "")) for row in rows]
    return [name for name in names if name and name.startswith(prefix)]


def complete_targets(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """`--on`: the online nodes, `any`, `all` and `tag:T` for every tag an online node has."""
    online = [row for row in _nodes(parsed_args) if row.get("online")]
    names = [str(row.get("name", "")) for row in online]
    tags = sorted({f"tag:{tag}" for row in online for tag in row.get("tags") or ()})
    choices = [*names, "any", "all", *tags]
    return [choice for choice in choices if choice and choice.startswith(prefix)]


def complete_jobs(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """The most recent job ids the server recorded."""
    from runlet.protocol.messages import Query

    rows = _ask(parsed_args, Query("jobs", limit=RECENT_JOBS))
    ids = [str(row.get("job_id", "")) for row in rows if isinstance(row, dict)]
    return [job for job in ids if job and job.startswith(prefix)]
