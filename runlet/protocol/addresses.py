"""Names on the broker: exchanges, routing keys and queues (DESIGN.md §3), and id rules.

Node names, user names and tags become single words of topic routing keys, so they may not
contain dots. A job id is 32 hex digits; a job that fans out (`--on all`, `--on tag:T`) runs
once per node under the child id `<id>.<node>`, so its keys have one word more and watchers
bind `job.<id>.*.state`.
"""

from __future__ import annotations

import re
import uuid

NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
JOB_ID_RE = re.compile(r"[0-9a-f]{32}(?:\.[A-Za-z0-9_-]{1,64})?")

DISPATCH_ANY = "dispatch.any"
DISPATCH_ALL = "dispatch.all"
RPC_JOBS = "rpc.jobs"  # a question about a job, asked of every node; only its holder answers
SERVER_RPC = "server.rpc"  # questions for the server (jobs, job, nodes)
PRESENCE_PATTERN = "node.*.presence"


def valid_name(name: str) -> bool:
    """True when `name` may be a node, user or tag name."""
    return NAME_RE.fullmatch(name) is not None


def valid_job_id(job_id: str) -> bool:
    """True when `job_id` is a job id or a fan-out child id."""
    return JOB_ID_RE.fullmatch(job_id) is not None


def new_job_id() -> str:
    """A fresh job id, made by the client so a redelivered dispatch never runs twice."""
    return uuid.uuid4().hex


def child_job_id(job_id: str, node: str) -> str:
    """The id of one node's execution of a fanned-out job."""
    return f"{job_id}.{node}"


def parent_job_id(job_id: str) -> str:
    """The id a job was dispatched under (itself, unless it is a fan-out child)."""
    return job_id.split(".", 1)[0]


def exchange(user: str) -> str:
    return f"runlet.{user}"


def dead_letter_exchange(user: str) -> str:
    return f"runlet.{user}.dlx"


def dead_letter_queue(user: str) -> str:
    return f"runlet.{user}.dead"


def dispatch_queue(user: str, node: str) -> str:
    return f"runlet.{user}.node.{node}.dispatch"


def any_queue(user: str) -> str:
    return f"runlet.{user}.dispatch.any"


def ledger_queue(user: str) -> str:
    return f"runlet.{user}.ledger"


def rpc_queue(user: str, node: str) -> str:
    return f"runlet.{user}.node.{node}.rpc"


def presence_queue(user: str) -> str:
    return f"runlet.{user}.presence"


def server_rpc_queue(user: str) -> str:
    return f"runlet.{user}.server.rpc"


def job_queue(user: str, job_id: str, concern: str, suffix: str = "") -> str:
    """Per-job classic queue name; `suffix` makes it unique per connection or viewer."""
    tail = f".{suffix}" if suffix else ""
    return f"runlet.{user}.job.{job_id}.{concern}{tail}"


def dispatch_node_key(node: str) -> str:
    return f"dispatch.node.{node}"


def dispatch_tag_key(tag: str) -> str:
    return f"dispatch.tag.{tag}"


def state_key(job_id: str) -> str:
    return f"job.{job_id}.state"


def log_key(job_id: str) -> str:
    return f"job.{job_id}.log"


def output_key(job_id: str) -> str:
    return f"job.{job_id}.output"


def input_key(job_id: str) -> str:
    return f"job.{job_id}.input"


def control_key(job_id: str) -> str:
    return f"job.{job_id}.control"


def rpc_key(node: str) -> str:
    return f"node.{node}.rpc"


def presence_key(node: str) -> str:
    return f"node.{node}.presence"


def keys_key(node: str) -> str:
    """Where a rotated fleet key for `node` is sent (`KeyGranted`)."""
    return f"node.{node}.keys"


def keys_queue(user: str, node: str) -> str:
    """A node's durable queue of granted keys: one sent while it is away waits for it."""
    return f"runlet.{user}.node.{node}.keys"


REPLY_KEY_RE = re.compile(r"reply\.[A-Za-z0-9_-]{1,64}\.[0-9a-f]{32}")


def reply_key(viewer: str, job_id: str) -> str:
    """Where a node sends its answer to one viewer: a key on the user's own exchange.

    Replies never use the default exchange: writing to it would let any account reach any
    queue by name, so per-user broker permissions could not hold.
    """
    return f"reply.{viewer}.{parent_job_id(job_id)}"


def valid_reply_key(key: str) -> bool:
    return REPLY_KEY_RE.fullmatch(key) is not None


def fanout_pattern(job_id: str, concern: str) -> str:
    """Binding pattern matching every child of a fanned-out job for one concern."""
    return f"job.{job_id}.*.{concern}"


def pair_board_key(nameplate: int) -> str:
    """Where a device waiting to be paired with code `nameplate-…` listens."""
    return f"pair.{nameplate}.board"


def pair_holder_key(nameplate: int, attempt: str) -> str:
    """Where the device sending the fleet key hears back, for one attempt."""
    return f"pair.{nameplate}.holder.{attempt}"


def pair_queue(user: str, nameplate: int, side: str) -> str:
    return f"runlet.{user}.pair.{nameplate}.{side}"


LEDGER_PATTERNS = ("job.*.state", "job.*.*.state", "job.*.log", "job.*.*.log")
