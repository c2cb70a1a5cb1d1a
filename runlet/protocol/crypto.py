"""End-to-end encryption of everything a job sends: the fleet key, per-job keys, sealing.

The scheme (DESIGN.md §5)::

    fleet key (32 random bytes, or argon2id of a passphrase)   -- only on the user's devices
        │  keyed BLAKE2b(job_id, key=fleet, person="runlet-job-key")
        ▼
    job key (32 bytes, one per job)
        │  XChaCha20-Poly1305 (nacl.secret.Aead), fresh random 24-byte nonce per message
        ▼
    sealed = nonce(24) ‖ ciphertext ‖ tag(16)          -- OVERHEAD = 40 bytes

    AAD = b"runlet/1\\0" ‖ job_id ‖ \\0 ‖ kind ‖ \\0 ‖ sender ‖ \\0 ‖ seq (u64 BE) ‖ flags (u8)

Binding the job, kind, sender, sequence number and flags into the associated data means a
sealed message cannot be moved to another job or kind, reordered, replayed under another
number, or have its FINAL flag stripped without `JobKey.open` failing. Every message opens on
its own, so a viewer can start reading anywhere. Random nonces are safe with XChaCha20's
192-bit nonce, and they let a restarted writer carry on with the same job key.

Key file: one line ``runlet-key-v1:<urlsafe base64 of the 32 bytes>\\n``, mode 0o600,
written atomically. After `FleetKey.rotated` (``runlet key rotate``) the key also holds the
keys it replaced, newest first, and the line is ``runlet-keyring-v1:<current>,<older>,...``:
everything new is sealed with the current key, and `JobKey.open` tries the current key, then
each older one, so logs sealed before a rotation stay readable where the old keys are. Sealed
data carries no key id: opening tries at most `MAX_RING` keys.

This module must never log, print, ``repr`` or put into an exception message a key, a key
file's contents or a plaintext. Only `FleetKey.fingerprint` (a one-way, personalised hash) is
safe to show.
"""

from __future__ import annotations

import base64
import binascii
import enum
import os
import struct
import tempfile
from pathlib import Path

import nacl.exceptions
import nacl.hash
import nacl.pwhash
import nacl.secret
import nacl.utils
from nacl.bindings import sodium_memcmp
from nacl.encoding import RawEncoder

from runlet.errors import AuthenticationFailed, CryptoError, StorageError
from runlet.files import fsync_dir, make_private_dirs, read_secret

__all__ = [
    "KEY_SIZE",
    "OVERHEAD",
    "AuthenticationFailed",
    "FleetKey",
    "JobKey",
    "Kind",
]

KEY_SIZE = 32
OVERHEAD = nacl.secret.Aead.NONCE_SIZE + nacl.secret.Aead.MACBYTES  # 24 + 16 = 40
SALT_SIZE = nacl.pwhash.argon2id.SALTBYTES  # 16

_KEY_PREFIX = "runlet-key-v1:"
_RING_PREFIX = "runlet-keyring-v1:"
MAX_RING = 16  # keys kept across rotations: the current one and 15 it replaced
_KEY_FILE_MAX = 4096
_AAD_PREFIX = b"runlet/1\0"
_JOB_KEY_PERSON = b"runlet-job-key"
_FINGERPRINT_PERSON = b"runlet-key-fpr"
_SEQ_FLAGS = struct.Struct(">QB")
_MAX_SEQ = 2**64 - 1


class Kind(enum.StrEnum):
    """What a sealed message carries; part of its associated data."""

    COMMAND = "command"
    INPUT = "input"
    OUTPUT = "output"
    CONTROL = "control"


_NOUNS = {
    Kind.COMMAND: "command",
    Kind.INPUT: "input chunk",
    Kind.OUTPUT: "output chunk",
    Kind.CONTROL: "control request",
}


class FleetKey:
    """The 32-byte secret shared by one user's devices, with the keys it replaced (if any)."""

    __slots__ = ("_keys",)

    def __init__(self, raw: bytes, older: tuple[bytes, ...] = ()) -> None:
        for key in (raw, *older):
            if not isinstance(key, bytes) or len(key) != KEY_SIZE:
                size = len(key) if isinstance(key, bytes) else type(key).__name__
                raise CryptoError(f"a fleet key is {KEY_SIZE} bytes, got {size}")
        if len(older) >= MAX_RING:
            raise CryptoError(f"a fleet key keeps at most {MAX_RING - 1} keys it replaced")
        self._keys = (raw, *older)  # current first; one attribute, so `adopt` swaps at once

    @property
    def _raw(self) -> bytes:
        return self._keys[0]

    @property
    def _older(self) -> tuple[bytes, ...]:
        return self._keys[1:]

    def adopt(self, rotation: FleetKey) -> None:
        """Take on `rotation`, in place, for everyone holding this object (a running daemon's
        actors): it must keep this key among its older ones, which only a holder of this key
        can make. Job keys made before go on with the keys they were made from."""
        if not rotation.keeps(self):
            raise CryptoError("the new fleet key is no rotation of this one: refused")
        self._keys = rotation._keys

    def keeps(self, earlier: FleetKey) -> bool:
        """Whether `earlier`'s current key is among the keys this one replaced."""
        current = earlier._raw
        found = [sodium_memcmp(current, key) for key in self._older]  # each in constant time
        return any(found)

    def rotated(self) -> FleetKey:
        """A new random current key that keeps this one (and its older ones) for reading."""
        return FleetKey(nacl.utils.random(KEY_SIZE), (self._raw, *self._older)[: MAX_RING - 1])

    @property
    def generations(self) -> int:
        """How many keys this holds: 1, plus one per rotation kept."""
        return 1 + len(self._older)

    @classmethod
    def generate(cls) -> FleetKey:
        """A new random key from the operating system's CSPRNG."""
        return cls(nacl.utils.random(KEY_SIZE))

    @classmethod
    def from_passphrase(cls, passphrase: bytes, salt: bytes) -> FleetKey:
        """Derive a key with argon2id (MODERATE limits: about 0.8 s and 256 MiB)."""
        if not passphrase:
            raise CryptoError("the passphrase is empty")
        if len(salt) != SALT_SIZE:
            raise ValueError(f"the salt must be {SALT_SIZE} bytes, got {len(salt)}")
        raw = nacl.pwhash.argon2id.kdf(
            KEY_SIZE,
            passphrase,
            salt,
            opslimit=nacl.pwhash.argon2id.OPSLIMIT_MODERATE,
            memlimit=nacl.pwhash.argon2id.MEMLIMIT_MODERATE,
        )
        return cls(raw)

    @classmethod
    def load(cls, path: Path) -> FleetKey:
        """Read a key file, refusing one that others can read or that is malformed."""
        text = _read_key_file(path)
        try:
            return cls.import_text(text)
        except CryptoError as exc:
            raise CryptoError(f"{path}: {exc}") from None

    def save(self, path: Path, *, overwrite: bool = False) -> None:
        """Write the key file atomically with mode 0o600; refuse to replace one unless asked."""
        if not overwrite and path.exists():
            raise StorageError(
                f"{path} already exists; refusing to overwrite a key (move the old one away first)"
            )
        try:
            make_private_dirs(path.parent)
            _write_atomically(path, (self.export_text() + "\n").encode("ascii"), overwrite)
        except FileExistsError as exc:
            raise StorageError(f"{path} already exists; refusing to overwrite a key") from exc
        except OSError as exc:
            raise StorageError(f"cannot write the key file {path}: {exc.strerror}") from exc

    def export_text(self) -> str:
        """The key as one line of text (no newline), for `runlet key export`. It is secret."""
        if not self._older:
            return _KEY_PREFIX + _b64(self._raw)
        return _RING_PREFIX + ",".join(_b64(key) for key in (self._raw, *self._older))

    @classmethod
    def import_text(cls, text: str) -> FleetKey:
        """Parse `export_text` output; surrounding whitespace is ignored."""
        line = text.strip()
        if "\n" in line or "\r" in line:
            raise CryptoError("a runlet key is a single line, found several")
        if line.startswith(_RING_PREFIX):
            parts = line.removeprefix(_RING_PREFIX).split(",")
            if not 2 <= len(parts) <= MAX_RING:
                raise CryptoError(f"a runlet keyring holds 2 to {MAX_RING} keys, not {len(parts)}")
            keys = [_unb64(part) for part in parts]
            return cls(keys[0], tuple(keys[1:]))
        if not line.startswith(_KEY_PREFIX):
            raise CryptoError(f"not a runlet key: it does not start with {_KEY_PREFIX!r}")
        return cls(_unb64(line.removeprefix(_KEY_PREFIX)))

    def fingerprint(self) -> str:
        """16 hex characters identifying the key, safe to show and compare between devices."""
        digest = nacl.hash.blake2b(
            b"fingerprint",
            key=self._raw,
            person=_FINGERPRINT_PERSON,
            digest_size=8,
            encoder=RawEncoder,
        )
        return digest.hex()

    def job_key(self, job_id: str) -> JobKey:
        """The key that seals everything of one job."""
        return JobKey(self, job_id)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FleetKey):
            return NotImplemented
        if len(self._older) != len(other._older):
            return False
        pairs = zip((self._raw, *self._older), (other._raw, *other._older), strict=True)
        same = [sodium_memcmp(mine, theirs) for mine, theirs in pairs]  # each in constant time
        return all(same)

    __hash__ = None  # type: ignore[assignment]  # a secret has no business being a dict key

    def __repr__(self) -> str:
        return f"<FleetKey fingerprint={self.fingerprint()}>"


class JobKey:
    """Seals and opens the messages of one job; made by `FleetKey.job_key`."""

    __slots__ = ("_aead", "_job", "_job_id", "_older")

    def __init__(self, fleet: FleetKey, job_id: str) -> None:
        if not job_id or "\0" in job_id:
            raise ValueError("a job id must be non-empty and contain no NUL character")
        self._job_id = job_id
        self._job = job_id.encode("utf-8")
        # the derivation is FleetKey's own business; older keys only ever open
        keys = fleet._keys  # one read: a concurrent `adopt` cannot tear it
        self._aead = self._derive(keys[0])
        self._older = tuple(self._derive(key) for key in keys[1:])

    def _derive(self, fleet: bytes) -> nacl.secret.Aead:
        derived = nacl.hash.blake2b(
            self._job, key=fleet, person=_JOB_KEY_PERSON, digest_size=KEY_SIZE, encoder=RawEncoder
        )
        return nacl.secret.Aead(derived)

    @property
    def job_id(self) -> str:
        return self._job_id

    def seal(
        self, kind: Kind, seq: int, plaintext: bytes, *, flags: int = 0, sender: str = ""
    ) -> bytes:
        """Encrypt and authenticate `plaintext` as message `seq` of `kind`; 40 bytes longer."""
        aad = self._aad(kind, seq, flags, sender)
        return bytes(self._aead.encrypt(plaintext, aad))

    def open(
        self, kind: Kind, seq: int, sealed: bytes, *, flags: int = 0, sender: str = ""
    ) -> bytes:
        """Check and decrypt what `seal` made with the same arguments, else AuthenticationFailed."""
        aad = self._aad(kind, seq, flags, sender)
        kind = Kind(kind)
        where = f"{_NOUNS[kind]} {seq} of job {self._job_id}"
        if len(sealed) < OVERHEAD:
            raise AuthenticationFailed(
                f"{where} is truncated: {len(sealed)} bytes, a sealed message has at least "
                f"{OVERHEAD}",
                job_id=self._job_id,
                kind=kind,
                seq=seq,
            )
        for aead in (self._aead, *self._older):  # sealed before a rotation: an older key
            try:
                return aead.decrypt(sealed, aad)
            except nacl.exceptions.CryptoError:
                continue
        raise AuthenticationFailed(
            f"{where} did not authenticate: sealed with another fleet key, "
            "for another job or position, or altered",
            job_id=self._job_id,
            kind=kind,
            seq=seq,
        )

    def _aad(self, kind: Kind, seq: int, flags: int, sender: str) -> bytes:
        if not 0 <= seq <= _MAX_SEQ:
            raise ValueError(f"seq must be in 0..2**64-1, got {seq}")
        if not 0 <= flags <= 0xFF:
            raise ValueError(f"flags must be in 0..255, got {flags}")
        if "\0" in sender:
            raise ValueError("a sender must not contain a NUL character")
        # Separators are NULs, which no field may contain; seq and flags are fixed-size and
        # last, so two different tuples can never produce the same AAD.
        return b"".join(
            (
                _AAD_PREFIX,
                self._job,
                b"\0",
                Kind(kind).value.encode("ascii"),
                b"\0",
                sender.encode("utf-8"),
                b"\0",
                _SEQ_FLAGS.pack(seq, flags),
            )
        )

    def __repr__(self) -> str:
        return f"<JobKey job={self._job_id!r}>"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii")


def _unb64(encoded: str) -> bytes:
    encoded += "=" * (-len(encoded) % 4)
    try:
        raw = base64.b64decode(encoded.encode("ascii"), altchars=b"-_", validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise CryptoError("the runlet key is not valid urlsafe base64") from None
    if len(raw) != KEY_SIZE:
        raise CryptoError(f"the runlet key holds {len(raw)} bytes, not {KEY_SIZE}")
    return raw


def _read_key_file(path: Path) -> str:
    """The key file's text, after checking its size, mode and encoding (never echoed)."""

    def error(problem: str) -> CryptoError:
        return CryptoError(f"the key file {path} {problem}")

    def missing() -> CryptoError:
        return CryptoError(
            f"no fleet key at {path}: run `runlet key init` on your first device, "
            "or `runlet key import` to bring the key from another one"
        )

    data = read_secret(path, error, missing=missing, max_bytes=_KEY_FILE_MAX)
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise CryptoError(f"the key file {path} holds binary data, not a runlet key") from None


def _write_atomically(path: Path, data: bytes, overwrite: bool) -> None:
    """Write a 0o600 temporary file beside `path`, fsync it, then move it into place."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), 0o600)  # before the secret goes in
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _commit(tmp, path, overwrite)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def _commit(tmp: Path, path: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if `path` appeared since we checked: no race
    except FileExistsError:
        raise
    except OSError:  # no hard links on this filesystem: the earlier check has to do
        os.replace(tmp, path)
