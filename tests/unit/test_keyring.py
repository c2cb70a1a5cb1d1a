"""A fleet key rotated: new messages under the new key, old ones still open (the keyring)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from runlet.cli import main
from runlet.errors import AuthenticationFailed, CryptoError
from runlet.protocol.crypto import MAX_RING, FleetKey, Kind
from runlet.protocol.identity import DeviceKey, open_fleet_key, seal_fleet_key


def test_rotated_key_seals_new_and_opens_old() -> None:
    """After a rotation, what the old key sealed still opens; what is sealed now opens only
    with the new key (a device left with the old key cannot read it)."""
    old = FleetKey.generate()
    before = old.job_key("j").seal(Kind.OUTPUT, 1, b"before")
    new = old.rotated()
    after = new.job_key("j").seal(Kind.OUTPUT, 2, b"after")
    assert new.job_key("j").open(Kind.OUTPUT, 1, before) == b"before"
    assert new.job_key("j").open(Kind.OUTPUT, 2, after) == b"after"
    with pytest.raises(AuthenticationFailed, match="did not authenticate"):
        old.job_key("j").open(Kind.OUTPUT, 2, after)
    assert new.fingerprint() != old.fingerprint()
    assert (old.generations, new.generations) == (1, 2)


def test_an_older_key_still_binds_the_position() -> None:
    """A message opened with an older key is still bound to its job, kind and seq."""
    old = FleetKey.generate()
    sealed = old.job_key("j").seal(Kind.INPUT, 5, b"x")
    new = old.rotated()
    for job, kind, seq in (("k", Kind.INPUT, 5), ("j", Kind.OUTPUT, 5), ("j", Kind.INPUT, 6)):
        with pytest.raises(AuthenticationFailed):
            new.job_key(job).open(kind, seq, sealed)


def test_ring_text_round_trip_and_equality() -> None:
    """A rotated key exports as one keyring line and imports back equal, in order."""
    key = FleetKey.generate().rotated().rotated()
    text = key.export_text()
    assert text.startswith("runlet-keyring-v1:")
    assert "\n" not in text
    again = FleetKey.import_text(text + "\n")
    assert again == key
    assert again.generations == 3
    assert FleetKey.import_text(FleetKey.generate().export_text()).generations == 1
    assert key != FleetKey(bytes(32))
    assert key != key.rotated()


def test_the_ring_keeps_at_most_max_ring_keys() -> None:
    """Rotation drops the oldest key beyond MAX_RING."""
    key = FleetKey.generate()
    first = key.job_key("j").seal(Kind.OUTPUT, 0, b"first")
    for _ in range(MAX_RING + 3):
        key = key.rotated()
    assert key.generations == MAX_RING
    with pytest.raises(AuthenticationFailed):
        key.job_key("j").open(Kind.OUTPUT, 0, first)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("runlet-keyring-v1:", "holds 2 to 16 keys, not 1"),
        ("runlet-keyring-v1:" + _b64(bytes(32)), "holds 2 to 16 keys, not 1"),
        ("runlet-keyring-v1:" + ",".join([_b64(bytes(32))] * 17), "not 17"),
        ("runlet-keyring-v1:" + _b64(bytes(32)) + "," + _b64(bytes(31)), "holds 31 bytes"),
        ("runlet-keyring-v1:" + _b64(bytes(32)) + ",!!", "not valid urlsafe base64"),
        ("runlet-keyring-v1:" + _b64(bytes(32)) + ",", "holds 0 bytes"),
        ("runlet-keyring-v1:a,b\nrunlet-key-v1:c", "single line"),
    ],
)
def test_broken_rings(text: str, problem: str) -> None:
    """Truncated, oversize or garbled keyring lines are CryptoErrors saying what is wrong."""
    with pytest.raises(CryptoError, match=problem):
        FleetKey.import_text(text)


def test_a_ring_travels_sealed() -> None:
    """The whole ring reaches a device sealed to it, old keys included."""
    key, device = FleetKey.generate().rotated(), DeviceKey.generate()
    assert open_fleet_key(seal_fleet_key(key, device.public), device) == key


def test_a_recipient_key_holding_a_newline_opens() -> None:
    """The recipient's 32 bytes may hold a newline byte; the payload is split by length."""
    device = next(d for d in iter(DeviceKey.generate, None) if b"\n" in bytes(d.public))
    key = FleetKey.generate()
    assert open_fleet_key(seal_fleet_key(key, device.public), device) == key


@pytest.fixture
def _no_log_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command must not point structlog at this test's captured stderr (it closes), nor
    read RUNLET_* variables from outside."""
    for name in list(os.environ):
        if name.startswith("RUNLET_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr("runlet.logging.configure", lambda *args, **kwargs: None)


@pytest.mark.usefixtures("_no_log_setup")
def test_key_rotate_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`key rotate` replaces the key file with a ring whose current key is new; the old
    fingerprint is named, and a device given the sealed ring reads both generations."""
    config = tmp_path / "c.toml"
    config.write_text(
        f'role = "client"\nuser = "alice"\nnode = "laptop"\ndata_dir = "{tmp_path / "d"}"\n'
        f'[crypto]\nkey_file = "{tmp_path / "fleet.key"}"\n'
    )
    assert main(["-c", str(config), "key", "init"]) == 0
    old = FleetKey.load(tmp_path / "fleet.key")
    capsys.readouterr()
    assert main(["-c", str(config), "key", "rotate"]) == 0
    out = capsys.readouterr().out
    new = FleetKey.load(tmp_path / "fleet.key")
    assert f"replaces {old.fingerprint()}" in out
    assert new.fingerprint() in out
    assert new.generations == 2
    assert (tmp_path / "fleet.key").stat().st_mode & 0o777 == 0o600
    sealed = old.job_key("j").seal(Kind.OUTPUT, 0, b"old log")
    assert new.job_key("j").open(Kind.OUTPUT, 0, sealed) == b"old log"
