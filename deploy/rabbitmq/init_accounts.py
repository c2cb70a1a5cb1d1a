"""Create or update the RabbitMQ account the Runlet server logs in with (`runlet-server`).

Runs once, in the `rabbitmq-init` container of deploy/compose.yaml, after RabbitMQ answers.
It talks to the management HTTP API as the administrator and:

- creates `runlet-server` (or resets its password, so changing the secret file and running
  this again rotates it), with no tags: it cannot use the management UI or API;
- grants it configure, write and read on the names `runlet.*` of vhost `/`, and nothing else.
  The server consumes every user's ledger, presence and rpc queues and answers through each
  user's exchange, all of them named `runlet.<user>...` (see runlet/protocol/addresses.py).

The passwords come from files (docker secrets); the new one is sent as a salted SHA-256 hash
(RabbitMQ's rabbit_password_hashing_sha256), and neither is ever printed.

Environment: RABBITMQ_API (default http://rabbitmq:15672), RABBITMQ_ADMIN_USER (admin),
RABBITMQ_ADMIN_PASSWORD_FILE, SERVER_BROKER_USER (runlet-server), SERVER_BROKER_PASSWORD_FILE.
Exit status: 0 done; 1 a password file is missing or empty, or the API refused or never answered
(the message says which).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

VHOST = "/"
PATTERN = r"^runlet\."
ATTEMPTS = 30  # the API may lag the AMQP port by a few seconds after a start


def read_secret(variable: str) -> str:
    path = os.environ.get(variable, "")
    try:
        with open(path, encoding="utf-8") as handle:
            value = handle.read().strip()
    except OSError as exc:
        sys.exit(f"rabbitmq-init: {variable}={path!r}: cannot read it: {exc.strerror}")
    if not value:
        sys.exit(f"rabbitmq-init: {variable}={path!r} is empty")
    return value


def password_hash(password: str) -> str:
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def call(api: str, auth: str, method: str, path: str, body: dict[str, str] | None) -> None:
    if not api.startswith(("http://", "https://")):
        sys.exit(f"rabbitmq-init: RABBITMQ_API must be an http(s) URL, got {api!r}")
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked just above
        api.rstrip("/") + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Basic {auth}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10):  # noqa: S310 - checked above
        pass


def wait_for_api(api: str, auth: str) -> None:
    for attempt in range(1, ATTEMPTS + 1):
        try:
            call(api, auth, "GET", "/api/whoami", None)
        except urllib.error.HTTPError as exc:
            sys.exit(f"rabbitmq-init: {api} refused the administrator login: HTTP {exc.code}")
        except OSError as exc:
            if attempt == ATTEMPTS:
                sys.exit(f"rabbitmq-init: {api} did not answer after {ATTEMPTS} tries: {exc}")
            time.sleep(2)
        else:
            return


def main() -> int:
    api = os.environ.get("RABBITMQ_API", "http://rabbitmq:15672")
    admin = os.environ.get("RABBITMQ_ADMIN_USER", "admin")
    user = os.environ.get("SERVER_BROKER_USER", "runlet-server")
    admin_password = read_secret("RABBITMQ_ADMIN_PASSWORD_FILE")
    server_password = read_secret("SERVER_BROKER_PASSWORD_FILE")
    auth = base64.b64encode(f"{admin}:{admin_password}".encode()).decode()
    wait_for_api(api, auth)
    quoted_user = urllib.parse.quote(user, safe="")
    quoted_vhost = urllib.parse.quote(VHOST, safe="")
    try:
        account = {
            "password_hash": password_hash(server_password),
            "hashing_algorithm": "rabbit_password_hashing_sha256",
            "tags": "",
        }
        call(api, auth, "PUT", f"/api/users/{quoted_user}", account)
        grant = {"configure": PATTERN, "write": PATTERN, "read": PATTERN}
        call(api, auth, "PUT", f"/api/permissions/{quoted_vhost}/{quoted_user}", grant)
    except urllib.error.HTTPError as exc:
        sys.exit(f"rabbitmq-init: {api} refused to set up {user}: HTTP {exc.code}")
    except OSError as exc:
        sys.exit(f"rabbitmq-init: {api} failed while setting up {user}: {exc}")
    print(f"rabbitmq-init: account {user} ready on vhost {VHOST} (configure/write/read {PATTERN})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
