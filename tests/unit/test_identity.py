"""Device key pairs and the fleet key sealed to one device (runlet.protocol.identity)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from runlet.errors import CryptoError, StorageError
from runlet.protocol.crypto import FleetKey
from runlet.protocol.identity import (
    DeviceKey,
    is_sealed,
    open_fleet_key,
    parse_public,
    seal_fleet_key,
)


def test_a_sealed_key_opens_on_its_device_only() -> None:
    """The fleet key sealed to one device's public key opens there, and nowhere else."""
    fleet, device, other = FleetKey.generate(), DeviceKey.generate(), DeviceKey.generate()
    sealed = seal_fleet_key(fleet, parse_public(device.public_text()))
    assert is_sealed(sealed)
    assert open_fleet_key(sealed, device) == fleet
    with pytest.raises(CryptoError, match="sealed for another device") as info:
        open_fleet_key(sealed, other)
    assert other.fingerprint() in str(info.value)


def test_sealing_is_fresh_each_time_and_hides_the_key() -> None:
    """Two seals of one key differ, and neither holds the key's text or bytes."""
    fleet, device = FleetKey.generate(), DeviceKey.generate()
    first, second = (seal_fleet_key(fleet, device.public) for _ in range(2))
    assert first != second
    secret = fleet.export_text().removeprefix("runlet-key-v1:")
    for sealed in (first, second):
        assert secret not in sealed
        assert fleet.export_text() not in sealed


def test_a_flipped_byte_is_refused() -> None:
    """Any change to the sealed text fails to open."""
    fleet, device = FleetKey.generate(), DeviceKey.generate()
    sealed = seal_fleet_key(fleet, device.public)
    prefix, body = sealed.split(":", 1)
    raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    for index in (0, 31, len(raw) // 2, len(raw) - 1):
        broken = bytearray(raw)
        broken[index] ^= 1
        text = prefix + ":" + base64.urlsafe_b64encode(bytes(broken)).decode()
        with pytest.raises(CryptoError, match="does not open"):
            open_fleet_key(text, device)


def test_a_box_for_someone_else_relabelled_is_refused() -> None:
    """A payload sealed to this device but naming another recipient is refused."""
    import nacl.public

    fleet, device, other = FleetKey.generate(), DeviceKey.generate(), DeviceKey.generate()
    payload = fleet.export_text().encode() + b"\n" + bytes(other.public)
    sealed = nacl.public.SealedBox(device.public).encrypt(payload)
    text = "runlet-sealed-key-v1:" + base64.urlsafe_b64encode(bytes(sealed)).decode()
    with pytest.raises(CryptoError, match="not made for this device"):
        open_fleet_key(text, device)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "does not start with"),
        ("runlet-key-v1:AAAA", "does not start with"),
        ("runlet-sealed-key-v1:", "does not open"),
        ("runlet-sealed-key-v1:!!!!", "not valid urlsafe base64"),
        ("runlet-sealed-key-v1:QUJD\nrunlet-sealed-key-v1:QUJD", "single line"),
        ("runlet-sealed-key-v1:" + "A" * 5000, "over 4096"),
        ("runlet-sealed-key-v1:QUJD", "does not open"),
        ("runlet-sealed-key-v1:\u00e9\u00e9", "not valid urlsafe base64"),
    ],
)
def test_broken_sealed_text(text: str, problem: str) -> None:
    """Truncated, oversize, non-base64 or foreign text is a CryptoError saying what is wrong."""
    with pytest.raises(CryptoError, match=problem):
        open_fleet_key(text, DeviceKey.generate())


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("runlet-device-v1:", "holds 0 bytes, not 32"),
        ("runlet-device-v1:" + "A" * 42, "holds 31 bytes"),
        ("runlet-device-key-v1:" + "A" * 43, "does not start with 'runlet-device-v1:'"),
        ("runlet-device-v1:%%%", "not valid urlsafe base64"),
    ],
)
def test_broken_public_keys(text: str, problem: str) -> None:
    with pytest.raises(CryptoError, match=problem):
        parse_public(text)


def test_device_key_file_round_trip_and_mode(tmp_path: Path) -> None:
    """load_or_make makes the file once (0600), then reads the same key back."""
    path = tmp_path / "d" / "device.key"
    made = DeviceKey.load_or_make(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert DeviceKey.load_or_make(path).public_text() == made.public_text()
    assert DeviceKey.load(path).fingerprint() == made.fingerprint()
    with pytest.raises(StorageError, match="refusing to overwrite"):
        DeviceKey.generate().save(path)


def test_device_key_file_checks(tmp_path: Path) -> None:
    """A device key open to others, missing or malformed is refused without showing it."""
    path = tmp_path / "device.key"
    made = DeviceKey.load_or_make(path)
    path.chmod(0o644)
    with pytest.raises(CryptoError, match="open to other users"):
        DeviceKey.load(path)
    path.write_text("runlet-device-key-v1:c2hvcnQ\n")
    path.chmod(0o600)
    with pytest.raises(CryptoError, match=r"device\.key: the device key holds 5 bytes") as info:
        DeviceKey.load(path)
    assert made.public_text() not in str(info.value)
    with pytest.raises(CryptoError, match="runlet key init"):
        DeviceKey.load(tmp_path / "none")


def test_repr_shows_only_the_fingerprint() -> None:
    device = DeviceKey.generate()
    assert repr(device) == f"<DeviceKey fingerprint={device.fingerprint()}>"
    assert len(device.fingerprint()) == 16
