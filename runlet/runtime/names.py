"""The names actors are known by in a process's Router, written once.

A message is addressed by name, never by reference, so an actor that restarts keeps its
address. One PTY Session runs per running job, named after it (`session_name`).
"""

from __future__ import annotations

GATEWAY = "gateway"
SUPERVISOR = "supervisor"
JOB_QUEUE = "job_queue"
GOVERNOR = "governor"
VAULT = "vault"
LEDGER = "ledger"
RECONCILER = "reconciler"
KEY_KEEPER = "key_keeper"
SESSION_PREFIX = "pty:"


def session_name(job_id: str) -> str:
    """The name of the PTY Session that runs `job_id`."""
    return f"{SESSION_PREFIX}{job_id}"


def session_job(name: str) -> str | None:
    """The job a PTY Session's name is for; None for any other name."""
    return name.removeprefix(SESSION_PREFIX) if name.startswith(SESSION_PREFIX) else None
