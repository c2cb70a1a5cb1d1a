"""A device's own key pair, and the fleet key sealed to it for the trip to a new device.

Every device has an X25519 key pair (PyNaCl `PrivateKey`), made by `runlet key init` or at a
daemon's first start, kept in ``<data_dir>/device.key`` (mode 0o600). Its public half is shown
as one line, ``runlet-device-v1:<base64>``, and may go anywhere. A device that holds the fleet
key seals it to a new device's public key (`seal_fleet_key`, a libsodium sealed box: anonymous
sender, 48 bytes of overhead); the result, ``runlet-sealed-key-v1:<base64>``, is useless to
anyone but the holder of that device's private key (`open_fleet_key`), so it can travel
through a chat, a ticket or a shared folder instead of the key itself.

The sealed payload is the fleet key's export line followed by the recipient's public key, so
a sealed key opened by a device checks that it was meant for that device.

This module must never log, print, ``repr`` or put into an exception a private key, a fleet
key or a sealed payload's plaintext; `DeviceKey.fingerprint` and the public line are safe.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

import nacl.exceptions
import nacl.hash
import nacl.public
from nacl.encoding import RawEncoder

from runlet.errors import CryptoError, StorageError
from runlet.files import make_private_dirs, read_secret
from runlet.protocol.crypto import FleetKey, _write_atomically

DEVICE_KEY_FILE = "device.key"
_PRIVATE_PREFIX = "runlet-device-key-v1:"
_PUBLIC_PREFIX = "runlet-device-v1:"
_SEALED_PREFIX = "runlet-sealed-key-v1:"
_MAX_TEXT = 4096
_FINGERPRINT_PERSON = b"runlet-dev-fpr"


class DeviceKey:
    """One device's X25519 key pair."""

    __slots__ = ("_private",)

    def __init__(self, private: nacl.public.PrivateKey) -> None:
        self._private = private

    @classmethod
    def generate(cls) -> DeviceKey:
        return cls(nacl.public.PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> DeviceKey:
        """Read a device key file, refusing one others can read or that is malformed."""

        def error(problem: str) -> CryptoError:
            return CryptoError(f"the device key file {path} {problem}")

        def missing() -> CryptoError:
            return CryptoError(f"no device key at {path}: run `runlet key init` on this device")

        data = read_secret(path, error, missing=missing, max_bytes=_MAX_TEXT)
        try:
            raw = _decode(data.decode("ascii", "replace"), _PRIVATE_PREFIX, "device key")
        except CryptoError as exc:
            raise CryptoError(f"{path}: {exc}") from None
        return cls(nacl.public.PrivateKey(raw))

    @classmethod
    def load_or_make(cls, path: Path) -> DeviceKey:
        """The device key at `path`, made (mode 0o600) if there is none yet."""
        if path.exists():
            return cls.load(path)
        key = cls.generate()
        key.save(path)
        return key

    def save(self, path: Path) -> None:
        """Write the key atomically with mode 0o600; never replace an existing one."""
        text = _PRIVATE_PREFIX + _b64(bytes(self._private)) + "\n"
        try:
            make_private_dirs(path.parent)
            _write_atomically(path, text.encode("ascii"), False)
        except FileExistsError as exc:
            raise StorageError(
                f"{path} already exists; refusing to overwrite a device key"
            ) from exc
        except OSError as exc:
            raise StorageError(f"cannot write the device key {path}: {exc.strerror}") from exc

    @property
    def public(self) -> nacl.public.PublicKey:
        return self._private.public_key

    def public_text(self) -> str:
        """This device's public key as one line, to hand to a device that has the fleet key."""
        return public_text(self.public)

    def fingerprint(self) -> str:
        return fingerprint(self.public)

    def __repr__(self) -> str:
        return f"<DeviceKey fingerprint={self.fingerprint()}>"


def public_text(public: nacl.public.PublicKey) -> str:
    return _PUBLIC_PREFIX + _b64(bytes(public))


def fingerprint(public: nacl.public.PublicKey) -> str:
    """16 hex characters naming a device's public key, to compare by eye."""
    digest = nacl.hash.blake2b(
        bytes(public), person=_FINGERPRINT_PERSON, digest_size=8, encoder=RawEncoder
    )
    return digest.hex()


def parse_public(text: str) -> nacl.public.PublicKey:
    """A public key line as `public_text` writes it; CryptoError when it is not one."""
    return nacl.public.PublicKey(_decode(text, _PUBLIC_PREFIX, "device public key"))


def is_sealed(text: str) -> bool:
    return text.strip().startswith(_SEALED_PREFIX)


def seal_fleet_key(fleet: FleetKey, recipient: nacl.public.PublicKey) -> str:
    """The fleet key sealed to `recipient`, as one line of text."""
    payload = fleet.export_text().encode("ascii") + b"\n" + bytes(recipient)
    sealed = nacl.public.SealedBox(recipient).encrypt(payload)
    return _SEALED_PREFIX + _b64(bytes(sealed))


def open_fleet_key(text: str, device: DeviceKey) -> FleetKey:
    """Open what `seal_fleet_key` made for this device; CryptoError for anything else."""
    sealed = _decode(text, _SEALED_PREFIX, "sealed key", exact=None)
    try:
        payload = nacl.public.SealedBox(device._private).decrypt(sealed)
    except nacl.exceptions.CryptoError:
        raise CryptoError(
            "the sealed key does not open with this device's key: it was sealed for another"
            f" device (this one is {device.fingerprint()}: give `runlet key device`'s line) or"
            " altered"
        ) from None
    # the key's line, a newline, then the recipient's 32 bytes (which may hold a newline too)
    line, sep, recipient = payload[:-33], payload[-33:-32], payload[-32:]
    if sep != b"\n" or recipient != bytes(device.public):
        raise CryptoError("the sealed key was not made for this device")
    try:
        return FleetKey.import_text(line.decode("ascii"))
    except UnicodeDecodeError:
        raise CryptoError("the sealed key holds no runlet key") from None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode(text: str, prefix: str, what: str, *, exact: int | None = 32) -> bytes:
    line = text.strip()
    if len(line) > _MAX_TEXT:
        raise CryptoError(f"the {what} is over {_MAX_TEXT} characters")
    if "\n" in line or "\r" in line:
        raise CryptoError(f"a {what} is a single line, found several")
    if not line.startswith(prefix):
        raise CryptoError(f"not a {what}: it does not start with {prefix!r}")
    encoded = line.removeprefix(prefix)
    encoded += "=" * (-len(encoded) % 4)
    try:
        raw = base64.b64decode(encoded.encode("ascii"), altchars=b"-_", validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise CryptoError(f"the {what} is not valid urlsafe base64") from None
    if exact is not None and len(raw) != exact:
        raise CryptoError(f"the {what} holds {len(raw)} bytes, not {exact}")
    return raw
