"""The commands behind `runlet key …`, `check-config` and `config-keys`: the fleet key, this
device's key pair, and what the config says."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from runlet.cli.commands import _config, _fleet_key
from runlet.config import Config, as_dict, describe_keys, load_config, locate_config
from runlet.errors import UsageError


def _device_key(config: Config, *, make: bool = True) -> Any:
    from runlet.protocol.identity import DEVICE_KEY_FILE, DeviceKey

    path = config.data_dir / DEVICE_KEY_FILE
    return DeviceKey.load_or_make(path) if make else DeviceKey.load(path)


def cmd_key_init(args: argparse.Namespace) -> int:
    from runlet.protocol.crypto import FleetKey

    config = _config(args)
    key = FleetKey.generate()
    key.save(config.key_file, overwrite=args.force)
    device = _device_key(config)
    print(f"fleet key {key.fingerprint()} written to {config.key_file}")
    print(f"this device's key pair: {device.fingerprint()}")
    print(
        "bring the fleet key to another device: there, `runlet key device`; here, `runlet key"
        " seal LINE`; there, `runlet key import` of what seal printed"
    )
    return 0


def cmd_key_rotate(args: argparse.Namespace) -> int:
    config = _config(args)
    old = _fleet_key(config)
    key = old.rotated()
    key.save(config.key_file, overwrite=True)
    print(f"fleet key {key.fingerprint()} replaces {old.fingerprint()} in {config.key_file}")
    print(
        f"it keeps {key.generations - 1} older key(s) to read what they sealed; give it to each"
        " device that stays: there `runlet key device`, here `runlet key grant NODE LINE` (its"
        " daemon takes it on, now or when it is back); a daemon running on this device with"
        " this key file takes it on when it restarts, or at once with `key grant` to itself"
    )
    return 0


def cmd_key_grant(args: argparse.Namespace) -> int:
    from runlet.client.keys import grant
    from runlet.protocol.addresses import valid_name

    if not valid_name(args.node):
        raise UsageError(f"{args.node[:80]!r} is not a valid node name")
    config = _config(args)
    key = _fleet_key(config)
    sealed_for = asyncio.run(grant(config, key, args.node, args.public))
    print(f"fleet key {key.fingerprint()} sent to {args.node} (device {sealed_for})")
    return 0


def cmd_key_device(args: argparse.Namespace) -> int:
    device = _device_key(_config(args))
    print(device.public_text())
    return 0


def cmd_key_seal(args: argparse.Namespace) -> int:
    from runlet.protocol.identity import fingerprint, parse_public, seal_fleet_key

    config = _config(args)
    recipient = parse_public(args.public)
    print(seal_fleet_key(_fleet_key(config), recipient))
    print(f"sealed for device {fingerprint(recipient)}", file=sys.stderr)
    return 0


def cmd_key_export(args: argparse.Namespace) -> int:
    print(_fleet_key(_config(args)).export_text())
    return 0


def cmd_key_import(args: argparse.Namespace) -> int:
    from runlet.protocol.crypto import FleetKey
    from runlet.protocol.identity import is_sealed, open_fleet_key

    config = _config(args)
    text = sys.stdin.read(8192)
    if is_sealed(text):
        key = open_fleet_key(text, _device_key(config, make=False))
    else:
        key = FleetKey.import_text(text)
    key.save(config.key_file, overwrite=args.force)
    print(f"fleet key {key.fingerprint()} written to {config.key_file}")
    return 0


def cmd_key_show(args: argparse.Namespace) -> int:
    print(_fleet_key(_config(args)).fingerprint())
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    place = locate_config(args.file or args.config, os.environ)
    config = load_config(place.path)
    if args.json:
        print(json.dumps({**_config_dict(config), "found_by": place.found_by}, indent=2))
    else:
        print(
            f"{place.path}: ok — role {config.role}, node {config.node}, user {config.user}, "
            f"{len(config.broker.urls)} broker URL(s), max_parallel {config.jobs.max_parallel}"
            f" (found by {place.found_by})"
        )
    return 0


def cmd_config_keys(args: argparse.Namespace) -> int:
    for dotted, kind, meaning in describe_keys():
        print(f"{dotted:24} {kind:32} {meaning}")
    return 0


def _config_dict(config: Config) -> dict[str, Any]:
    """Every key of every section, read from the schema; broker and database URLs masked."""
    from runlet.adapters.broker_port import safe_url

    return {**as_dict(config, mask=safe_url), "source": config.source}
