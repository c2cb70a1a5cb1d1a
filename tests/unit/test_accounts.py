"""Broker account rules that need no broker: the permission pattern, names, secrets kept out."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re

import pytest

from runlet.adapters import rabbitmq_admin as accounts
from runlet.adapters.rabbitmq_admin import (
    Account,
    BrokerAdmin,
    broker_user,
    owns,
    permission_pattern,
)


def _granted(user: str, resource: str) -> bool:
    """What the broker does: Erlang `re:run`, a search with PCRE's `$` (not a fullmatch)."""
    return re.search(permission_pattern(user), resource) is not None


@pytest.mark.parametrize(
    "resource", ["runlet.alice", "runlet.alice.x.y", "runlet.alice.dlx", "runlet.alice.dead"]
)
def test_pattern_grants_own_exchange_and_queues(resource: str) -> None:
    """`runlet.<user>` and every name under `runlet.<user>.` belong to the user."""
    assert _granted("alice", resource)


@pytest.mark.parametrize(
    "resource",
    [
        "runlet.alice2",
        "runlet.alic",
        "runlet.alice-x",
        "runlet.alice-x.foo",
        "runlet.alice_x",
        "runlet.bob",
        "xrunlet.alice",
        "runlet.alice\n",
        "runlet.alice.x\n",
        "runletXalice",
        "runlet.aliceXfoo",
        "runlet",
        "",
        "amq.default",
        "amq.gen-abc",
        "amq.rabbitmq.reply-to",
    ],
)
def test_pattern_refuses_every_other_name(resource: str) -> None:
    """Another user's names (`alice-x` is a user too), near misses and broker names are refused."""
    assert not _granted("alice", resource)


OWN = ["runlet.alice", "runlet.alice.x.y", "runlet.alice.dlx", "runlet.alice.dead"]
OTHERS = ["runlet.alice2", "runlet.alice-x", "runlet.alice-x.foo", "runlet.bob", "xrunlet.alice"]


def test_removal_check_agrees_with_the_pattern() -> None:
    """`owns`, which `remove` deletes by, claims exactly the names the pattern grants."""
    for resource in [*OWN, *OTHERS, "runlet", "", "amq.default", "runlet.alice\n"]:
        assert owns("alice", resource) == _granted("alice", resource), resource


def test_pattern_escapes_the_name() -> None:
    """A hyphen or underscore is matched literally, never as regex syntax."""
    assert _granted("a-b_c", "runlet.a-b_c.q")
    assert not _granted("a-b_c", "runlet.a-bXc.q")
    assert permission_pattern("a-b") == r"^runlet\.a\-b(\..*)?$(?!\n)"


@pytest.mark.parametrize("name", ["", "a.b", "a b", "ä", "a*", "a\n", "x" * 65])
def test_bad_names_are_value_errors(name: str) -> None:
    """A name that cannot be a Runlet user name is refused before it reaches the broker."""
    with pytest.raises(ValueError, match="not a valid user name"):
        permission_pattern(name)
    with pytest.raises(ValueError, match="not a valid user name"):
        broker_user(name)


def test_create_checks_the_name_before_any_request() -> None:
    """`create` and `remove` raise ValueError for a bad name without touching the network."""
    admin = BrokerAdmin("http://192.0.2.1:15672", "guest", "guest", timeout=0.01)
    with pytest.raises(ValueError, match="not a valid user name"):
        asyncio.run(admin.create("a.b"))
    with pytest.raises(ValueError, match="not a valid user name"):
        asyncio.run(admin.remove("runlet.x"))


def test_broker_user_name() -> None:
    """A Runlet user's broker login is `runlet-<name>`."""
    assert broker_user("alice") == "runlet-alice"


def test_secrets_stay_out_of_reprs() -> None:
    """Neither an Account's password nor the admin password shows in a repr or attributes."""
    account = Account("alice", "runlet-alice", "s3cret-pw")
    admin = BrokerAdmin("http://127.0.0.1:15672", "guest", "admin-pw")
    assert "s3cret-pw" not in repr(account)
    assert "admin-pw" not in repr(admin)
    assert "admin-pw" not in str(vars(admin))


@pytest.mark.parametrize(
    "url",
    ["http://guest:guest@127.0.0.1:15672", "amqp://127.0.0.1:5672", "127.0.0.1:15672", "http://"],
)
def test_bad_management_urls_are_refused(url: str) -> None:
    """A URL holding credentials, of another scheme or without a host is an error, not a guess."""
    with pytest.raises(ValueError, match="management URL"):
        BrokerAdmin(url, "guest", "guest")


def test_password_hash_is_rabbitmq_sha256() -> None:
    """The hash sent is base64(salt + sha256(salt + password)) with a 4-byte salt."""
    raw = base64.b64decode(accounts._hash_password("pw"))
    salt, digest = raw[:4], raw[4:]
    assert digest == hashlib.sha256(salt + b"pw").digest()
    assert accounts._hash_password("pw") != accounts._hash_password("pw")
