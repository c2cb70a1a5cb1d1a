"""`runlet init`: a device's config written to its default place, its fleet key made, and the
broker asked whether it answers — in that order of checks, so nothing is written for a broker
that refuses us.

The config goes to the user place (``$XDG_CONFIG_HOME/runlet/config.toml``) or, for a service
install, to ``/etc/runlet/runlet.toml``; the fleet key beside it (``fleet.key``, mode 0600).
The config holds the broker login, so it is written 0600 too. An existing config is replaced
only when asked (`force`); an existing key is never replaced here (``runlet key init --force``
does that, on purpose). A device that `joins` a fleet gets no key: `runlet pair` brings it.

The text written is checked by the config loader before anything touches the disk, so what
`init` writes is always what `runlet start` and `check-config` accept.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from runlet.adapters.broker import Broker, BrokerSecurity
from runlet.adapters.broker_port import safe_url
from runlet.config import SYSTEM_CONFIG, Config, parse_config, user_config_path
from runlet.errors import ConfigError, StorageError, UsageError
from runlet.files import write_private_file
from runlet.protocol.crypto import FleetKey

KEY_NAME = "fleet.key"
MAX_URL = 2048
SYSTEM_DATA_DIR = "/var/lib/runlet"

KEY_CREATED = "created"
KEY_KEPT = "kept"
KEY_TO_PAIR = "to pair"


@dataclass(frozen=True, slots=True)
class InitRequest:
    """What `runlet init` was asked for; `node` None takes the host name's first label."""

    broker_url: str
    user: str
    node: str | None = None
    join: bool = False  # the fleet key comes later, from `runlet pair`
    system: bool = False
    force: bool = False


@dataclass(frozen=True, slots=True)
class InitDone:
    """What `init` did: where the config and key are, and how the broker answered."""

    config: Config
    path: Path
    key_file: Path
    key: str  # KEY_CREATED, KEY_KEPT or KEY_TO_PAIR
    fingerprint: str | None
    broker: str  # the URL that answered, password masked
    broker_seconds: float

    def as_dict(self) -> dict[str, object]:
        return {
            "config": str(self.path),
            "role": self.config.role,
            "user": self.config.user,
            "node": self.config.node,
            "data_dir": str(self.config.data_dir),
            "key_file": str(self.key_file),
            "key": self.key,
            "fingerprint": self.fingerprint,
            "broker": self.broker,
            "broker_seconds": round(self.broker_seconds, 3),
        }


BrokerCheck = Callable[[Config], Awaitable[float]]


def config_path_for(system: bool, env: Mapping[str, str]) -> Path:
    """Where `init` writes: the system place with `system`, else the user place."""
    if system:
        return SYSTEM_CONFIG
    path = user_config_path(env)
    if path is None:
        raise UsageError("no home folder to write the config in (HOME is unset): use --system")
    return path


def device_config_text(request: InitRequest, path: Path) -> str:
    """The config file `init` writes for `request` at `path` (strings JSON-quoted: valid TOML)."""
    lines = [
        "# Written by `runlet init`. It holds the broker login: keep it readable by you only.",
        "# Every key: `runlet config-keys`; check it with `runlet check-config`.",
        'role = "daemon"',
        f"user = {json.dumps(request.user)}",
    ]
    if request.node is not None:
        lines.append(f"node = {json.dumps(request.node)}")
    if request.system:
        lines.append(f"data_dir = {json.dumps(SYSTEM_DATA_DIR)}")
    lines += [
        "",
        "[broker]",
        f"urls = [{json.dumps(request.broker_url)}]",
        "",
        "[crypto]",
        f"key_file = {json.dumps(str(path.parent / KEY_NAME))}",
    ]
    return "\n".join(lines) + "\n"


async def broker_answers(config: Config) -> float:
    """Connect to the broker as `config` would and close again; the seconds it took."""
    started = time.monotonic()
    broker = Broker(
        config.broker.urls,
        config.user,
        name=f"runlet-init-{config.node}",
        security=BrokerSecurity.of(config.broker),
    )
    await broker.connect()
    await broker.close()
    return time.monotonic() - started


async def init_device(
    request: InitRequest,
    env: Mapping[str, str],
    *,
    check: BrokerCheck | None = None,
    path: Path | None = None,
) -> InitDone:
    """Check the request, ask the broker, then write the config and (unless joining) the key."""
    path = config_path_for(request.system, env) if path is None else path
    if path.exists() and not request.force:
        raise StorageError(
            f"{path} already exists; refusing to overwrite it (--force replaces it; the fleet"
            " key beside it is kept)"
        )
    if len(request.broker_url) > MAX_URL:
        raise UsageError(f"--broker: longer than {MAX_URL} characters; is it really a URL?")
    text = device_config_text(request, path)
    try:
        config = parse_config(text, source=str(path), base_dir=path.parent, env={})
    except ConfigError as exc:  # a bad --broker, --user or --node: say it as the option
        option = {"broker.urls": "--broker", "user": "--user", "node": "--node"}
        raise UsageError(
            f"{option.get(exc.key.partition('[')[0], exc.key)}: {exc.problem}"
        ) from None
    seconds = await (broker_answers if check is None else check)(config)
    key_file = config.key_file
    key, fingerprint = _make_key(key_file, request.join)
    try:
        write_private_file(path, text.encode("utf-8"), overwrite=request.force)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return InitDone(
        config, path, key_file, key, fingerprint, safe_url(config.broker.urls[0]), seconds
    )


def _make_key(key_file: Path, join: bool) -> tuple[str, str | None]:
    if key_file.exists():
        return KEY_KEPT, FleetKey.load(key_file).fingerprint()
    if join:
        return KEY_TO_PAIR, None
    key = FleetKey.generate()
    key.save(key_file)
    return KEY_CREATED, key.fingerprint()


def next_steps(done: InitDone, broker_url: str, user: str) -> list[str]:
    """What to run next, said as commands."""
    if done.key == KEY_TO_PAIR:
        return [
            "runlet pair            # here: prints a code, then waits",
            "runlet pair CODE       # on a device that has the fleet key",
        ]
    system = " --system" if done.path == SYSTEM_CONFIG else ""
    return [
        "runlet start           # run this device's daemon (or install it as a service)",
        "runlet doctor          # check the whole setup",
        f"add a device: there, `runlet init --broker {safe_url(broker_url)} --user {user}"
        f" --join{system}`, then `runlet pair`; here, `runlet pair CODE`",
    ]
