"""Broker accounts for Runlet users, made through the RabbitMQ management HTTP API.

`runlet user add` gives each user one RabbitMQ user, `runlet-<name>`, without tags (so no
management access) and with configure, write and read permissions on one vhost limited to
`permission_pattern(name)`: the user's exchange `runlet.<name>` and every name under
`runlet.<name>.`. What that guarantees, checked against the real broker in
`tests/integration/test_accounts.py`:

- One user can never consume from, publish to, bind to or declare another user's queues and
  exchanges: the broker closes the channel with ACCESS_REFUSED (403).
- Nobody but the administrator can write to the default exchange (`amq.default` matches no
  pattern), so no account can reach another's queue by name; that is why replies go through
  the user's own exchange (`addresses.reply_key`). Server-named queues (`amq.gen-…`) and
  direct reply-to are out of reach too: every queue Runlet declares has a `runlet.<user>.`
  name.
- A removed user cannot log in again, RabbitMQ closes its open connections, and its queues
  and exchanges (only those matching its pattern: `runlet.alice-x` is not alice's) are
  deleted.

What it cannot hide: RabbitMQ before 4.2.6 checks no permission on a *passive* declare, so
another account can learn whether a queue or exchange name exists and a queue's message and
consumer counts (whether a node is online), never a message.

What it must never do: log, print or put into an exception a password (the admin's or a
user's). `Account.password` is left out of its repr, and the new password travels to the
management API only as a salted SHA-256 hash (RabbitMQ's own `rabbit_password_hashing_sha256`).

**Devices.** `create_device(user, node)` gives one device an account of its own,
`runlet-<user>.<node>` (a dot, which no name may hold, so it can never be another user's
account), with the user's same permissions; `remove_device` deletes it, closes its open
connections and deletes its node's queues, so one lost device is shut out without touching
the others. A **run-only** device
also gets a topic permission on `runlet.<user>` (`run_only_pattern`): it may publish only what
a daemon publishes for the jobs it runs (their state, output and log, under its own node name
for a fanned-out job), its own presence and replies to viewers; never `dispatch.*`, input,
controls or questions to other nodes, so it can run jobs but not start one anywhere. The broker
itself refuses the rest (ACCESS_REFUSED). `remove(user)` removes the user's devices too.

`create` on a name that already has an account raises `AccountExists` unless `rotate=True`,
which gives it a new password (its open connections keep working until they reconnect).
The check and the creation are two requests: two administrators adding the same user at the
same instant both succeed, and the later password wins.

Every failure to reach the API, a refused admin login (401, 403) and any other unexpected
answer become `BrokerUnavailable`, naming the URL and never the password; a bad user name is
a `ValueError`, raised before any request is made.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import re
import secrets
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from runlet.errors import AccountExists, BrokerUnavailable
from runlet.protocol import addresses

BROKER_USER_PREFIX = "runlet-"
_HASHING = "rabbit_password_hashing_sha256"
_NOT_FOUND = 404
_GONE = object()  # what a 404 becomes when the caller expects one


@dataclass(frozen=True, slots=True)
class Account:
    """A user's broker account; `password` is set only by the call that created it."""

    name: str
    broker_user: str
    password: str = field(repr=False)


def permission_pattern(user: str) -> str:
    """The regex the broker grants `user`: `runlet.<user>` and `runlet.<user>.<anything>`.

    It ends in `$(?!\\n)` rather than `$` because the broker (Erlang `re`, PCRE) lets `$`
    match before a final newline; the lookahead makes it the absolute end of the name.
    """
    _require_name(user)
    return rf"^runlet\.{re.escape(user)}(\..*)?$(?!\n)"


def owns(user: str, resource: str) -> bool:
    """Whether a queue or exchange name is `user`'s, by plain string comparison.

    `remove` deletes with this rather than with the regex, so that a mistake in the pattern
    can never turn into deleting other users' queues.
    """
    own = addresses.exchange(user)
    return resource == own or resource.startswith(f"{own}.")


def broker_user(name: str) -> str:
    """The RabbitMQ user name of a Runlet user."""
    _require_name(name)
    return f"{BROKER_USER_PREFIX}{name}"


def device_user(user: str, node: str) -> str:
    """The RabbitMQ user name of one device of a Runlet user: `runlet-<user>.<node>`."""
    _require_name(node)
    return f"{broker_user(user)}.{node}"


def run_only_pattern(node: str) -> str:
    """The routing keys a run-only device may publish on its user's exchange.

    A job's state, output and log (`job.<id>.<concern>`, or `job.<id>.<node>.<concern>` for
    its own part of a fanned-out job), its own presence and a reply to a viewer; the same
    `$(?!\n)` end as `permission_pattern`.
    """
    _require_name(node)
    own = re.escape(node)
    return (
        rf"^(job\.[0-9a-f]{{32}}(\.{own})?\.(state|output|log)|node\.{own}\.presence"
        r"|reply\.[A-Za-z0-9_-]{1,64}\.[0-9a-f]{32})$(?!\n)"
    )


class BrokerAdmin:
    """Creates, lists and removes broker accounts, as a RabbitMQ administrator."""

    def __init__(
        self, url: str, user: str, password: str, *, vhost: str = "/", timeout: float = 10.0
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"management URL must be http(s)://host:port, not {url!r}")
        if parts.username is not None or parts.password is not None:
            raise ValueError("management URL must not hold credentials; pass user and password")
        self.url = url.rstrip("/")
        self.user = user
        self.vhost = vhost
        self.timeout = timeout
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._authorization = f"Basic {token}"

    def __repr__(self) -> str:
        return f"BrokerAdmin({self.url!r}, user={self.user!r}, vhost={self.vhost!r})"

    async def check(self) -> None:
        """Raise `BrokerUnavailable` unless the API answers and takes our admin login."""
        whoami = await self._call("GET", "/api/whoami")
        if "administrator" not in whoami.get("tags", []):
            raise BrokerUnavailable(
                f"RabbitMQ user {self.user!r} at {self.url} is not an administrator"
            )

    async def create(self, name: str, *, rotate: bool = False) -> Account:
        """Make `runlet-<name>` with a fresh password and permissions on its own names only.

        An existing account raises `AccountExists`, or with `rotate` gets a new password.
        When the permissions cannot be set, an account this call made is deleted again.
        """
        return await self._make(broker_user(name), name, rotate=rotate)

    async def _make(self, user: str, name: str, *, rotate: bool) -> Account:
        """Broker user `user` with a new password and the permissions of Runlet user `name`."""
        existed = await self._exists(user)
        if existed and not rotate:
            raise AccountExists(user.removeprefix(BROKER_USER_PREFIX))
        password = secrets.token_urlsafe(24)
        body = {"password_hash": _hash_password(password), "hashing_algorithm": _HASHING}
        await self._call("PUT", f"/api/users/{_quote(user)}", {**body, "tags": ""})
        pattern = permission_pattern(name)
        try:
            await self._call(
                "PUT",
                f"/api/permissions/{_quote(self.vhost)}/{_quote(user)}",
                {"configure": pattern, "write": pattern, "read": pattern},
            )
        except BrokerUnavailable:
            if not existed:
                with contextlib.suppress(BrokerUnavailable):
                    await self._delete(f"/api/users/{_quote(user)}")
            raise
        return Account(name, user, password)

    async def create_device(
        self, user: str, node: str, *, run_only: bool = False, rotate: bool = False
    ) -> Account:
        """An account for one device of `user`, with the user's permissions; a run-only one
        may publish only `run_only_pattern(node)`. `AccountExists` unless `rotate`."""
        account = await self._make(device_user(user, node), user, rotate=rotate)
        path = f"/api/topic-permissions/{_quote(self.vhost)}/{_quote(account.broker_user)}"
        if run_only:
            pattern = {"write": run_only_pattern(node), "read": ".*"}
            await self._call("PUT", path, {"exchange": addresses.exchange(user), **pattern})
        else:  # a rotated account that was run-only before is no longer
            await self._call("DELETE", path, missing_ok=True)
        return account

    async def remove_device(self, user: str, node: str) -> bool:
        """Delete the device's account, close its open connections and delete its node's
        queues (so a job sent to it is refused as having no node, not left waiting);
        whether the account existed."""
        account = device_user(user, node)
        existed = await self._delete(f"/api/users/{_quote(account)}")
        for connection in await self._call("GET", "/api/connections?columns=name,user"):
            if connection.get("user") == account:
                await self._delete(f"/api/connections/{_quote(connection['name'])}")
        prefix = addresses.dispatch_queue(user, node).removesuffix("dispatch")  # ...node.<n>.
        vhost = _quote(self.vhost)
        for queue in await self._call("GET", f"/api/queues/{vhost}?columns=name"):
            if str(queue["name"]).startswith(prefix):
                await self._delete(f"/api/queues/{vhost}/{_quote(queue['name'])}")
        return existed

    async def devices(self, user: str) -> list[tuple[str, bool]]:
        """(node, run-only) for every device account of `user`, sorted by node."""
        prefix = f"{broker_user(user)}."
        nodes = []
        for found in await self._call("GET", "/api/users?columns=name"):
            node = str(found["name"]).removeprefix(prefix)
            if str(found["name"]).startswith(prefix) and addresses.valid_name(node):
                nodes.append(node)
        limited = {
            str(item["user"]).removeprefix(prefix)
            for item in await self._call(
                "GET", f"/api/vhosts/{_quote(self.vhost)}/topic-permissions"
            )
            if item.get("exchange") == addresses.exchange(user)
        }
        return [(node, node in limited) for node in sorted(nodes)]

    async def remove(self, name: str) -> bool:
        """Delete the account, then the user's queues and exchanges.

        Returns whether there was an account. Deleting the user makes RabbitMQ close its open
        connections (CONNECTION_FORCED); the resources are deleted either way, so a
        half-finished removal can be run again.
        """
        user = broker_user(name)
        existed = await self._delete(f"/api/users/{_quote(user)}")
        for node, _ in await self.devices(name):
            await self.remove_device(name, node)
        vhost = _quote(self.vhost)
        for kind in ("queues", "exchanges"):
            for item in await self._call("GET", f"/api/{kind}/{vhost}?columns=name"):
                if owns(name, item["name"]):
                    await self._delete(f"/api/{kind}/{vhost}/{_quote(item['name'])}")
        return existed

    async def list(self) -> list[str]:
        """Names of the Runlet users that have a broker account, sorted."""
        names = []
        for user in await self._call("GET", "/api/users?columns=name"):
            name = user["name"].removeprefix(BROKER_USER_PREFIX)
            if user["name"].startswith(BROKER_USER_PREFIX) and addresses.valid_name(name):
                names.append(name)
        return sorted(names)

    # -- HTTP --------------------------------------------------------------------------------

    async def _exists(self, user: str) -> bool:
        return await self._call("GET", f"/api/users/{_quote(user)}", missing_ok=True) is not _GONE

    async def _delete(self, path: str) -> bool:
        """DELETE; False when it was already gone."""
        return await self._call("DELETE", path, missing_ok=True) is not _GONE

    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, str] | None = None,
        *,
        missing_ok: bool = False,
    ) -> Any:
        """One request in a worker thread; `_GONE` for a 404 when `missing_ok`."""
        return await asyncio.to_thread(self._request, method, path, body, missing_ok)

    def _request(
        self, method: str, path: str, body: dict[str, str] | None, missing_ok: bool
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)  # noqa: S310 - scheme checked in __init__
        request.add_header("Authorization", self._authorization)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        what = f"{method} {self.url}{path.split('?', 1)[0]}"
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                raw = response.read()
        except urllib.error.HTTPError as exc:
            with contextlib.closing(exc):  # it holds the socket until closed
                if exc.code == _NOT_FOUND and missing_ok:
                    return _GONE
                raise _http_error(exc, what, self.user) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise BrokerUnavailable(
                f"cannot reach the RabbitMQ management API at {self.url}: {reason}"
            ) from exc
        try:
            return json.loads(raw) if raw else None
        except ValueError as exc:
            raise BrokerUnavailable(f"{what}: the answer is not JSON") from exc


def _http_error(exc: urllib.error.HTTPError, what: str, admin: str) -> BrokerUnavailable:
    if exc.code in (401, 403):
        return BrokerUnavailable(
            f"{what}: RabbitMQ refused the credentials of {admin!r} ({exc.code})"
        )
    try:
        reason = json.loads(exc.read()).get("reason", exc.reason)
    except (ValueError, OSError, AttributeError):
        reason = exc.reason
    return BrokerUnavailable(f"{what}: RabbitMQ answered {exc.code}: {reason}")


def _hash_password(password: str) -> str:
    """RabbitMQ's sha256 password hash: base64(salt + sha256(salt + password))."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _require_name(name: str) -> None:
    if not addresses.valid_name(name):
        raise ValueError(f"not a valid user name: {name!r} (letters, digits, _ and -)")
