"""Pairing a new device with a short code: SPAKE2, key confirmation, the fleet key sealed.

A code such as ``4-river-7-cactus`` is two things: a *nameplate* (``4``), public, saying where
on the broker the new device (the *board*) waits, and a *password* (``river-7-cactus``, about
22.6 bits) that never leaves the two devices. For each attempt the device that has the fleet
key (the *holder*) and the board run SPAKE2 (the ``spake2`` package, the PAKE of
magic-wormhole) with the password; both get the same 32-byte key only if both typed the same
code, and an eavesdropper or the broker learns nothing it could test guesses against offline.
Each side then proves it holds the key (a keyed BLAKE2b over its role); only after the board's
proof checks out does the holder send the fleet key, sealed with XChaCha20-Poly1305 under a
key derived from the agreed one, the attempt bound into the associated data.

So a wrong code fails on both sides, and an online guesser gets one guess per attempt: the
board makes a new code after `MAX_FAILURES` failed attempts, and every code expires after
`CODE_LIFETIME` seconds. The user, the nameplate and the attempt id are bound into SPAKE2's
identities, so an exchange cannot be replayed into another pairing.

This module must never log, print or put into an exception message a password, an agreed key
or a fleet key; `check_words` (a short digest of the agreed key, the same on both sides) is
safe to show.
"""

from __future__ import annotations

import hmac
import re
import secrets
from dataclasses import dataclass

import nacl.exceptions
import nacl.hash
import nacl.secret
from nacl.encoding import RawEncoder
from spake2 import SPAKE2_A, SPAKE2_B
from spake2.spake2 import SPAKEError

from runlet.errors import CryptoError
from runlet.protocol.crypto import FleetKey
from runlet.protocol.pairing_words import WORDS

CODE_LIFETIME = 600.0  # seconds a code is good for
MAX_FAILURES = 3  # failed attempts before the board makes a new code
MAX_NAMEPLATE = 999
SPAKE_MESSAGE_BYTES = 33  # what spake2's Ed25519 group sends: a side byte and a point
PROOF_BYTES = 32
HOLDER = "holder"
BOARD = "board"

_CODE_RE = re.compile(r"([0-9]{1,3})-([a-z]{2,12})-([0-9]{1,2})-([a-z]{2,12})")
_INDEX = {word: n for n, word in enumerate(WORDS)}
_PROOF_PERSON = b"runlet-pair-prf"
_SEAL_PERSON = b"runlet-pair-key"
_CHECK_PERSON = b"runlet-pair-chk"


@dataclass(frozen=True, slots=True)
class PairingCode:
    """A nameplate (public: where the board waits) and a password (secret: what it proves)."""

    nameplate: int
    first: str
    number: int
    second: str

    def __post_init__(self) -> None:
        if not 1 <= self.nameplate <= MAX_NAMEPLATE:
            raise ValueError(f"a nameplate is 1..{MAX_NAMEPLATE}")
        if self.first not in _INDEX or self.second not in _INDEX or not 0 <= self.number <= 99:
            raise ValueError("not a pairing code's words")

    @classmethod
    def generate(cls, nameplate: int | None = None) -> PairingCode:
        """A fresh code from the OS's CSPRNG (a random nameplate unless one is given)."""
        plate = nameplate if nameplate is not None else 1 + secrets.randbelow(MAX_NAMEPLATE)
        first, second = (secrets.choice(WORDS) for _ in range(2))
        return cls(plate, first, secrets.randbelow(100), second)

    @classmethod
    def parse(cls, text: str) -> PairingCode:
        """``4-river-7-cactus`` (any case, spaces around ignored); ValueError if it is not one."""
        cleaned = text.strip().lower()
        match = _CODE_RE.fullmatch(cleaned) if len(cleaned) <= 40 else None
        if match is None:
            raise ValueError("a pairing code looks like 4-river-7-cactus")
        plate, first, number, second = match.groups()
        try:
            return cls(int(plate), first, int(number), second)
        except ValueError:
            raise ValueError("not a pairing code: check its words") from None

    @property
    def password(self) -> bytes:
        return f"{self.first}-{self.number}-{self.second}".encode("ascii")

    def __str__(self) -> str:
        return f"{self.nameplate}-{self.first}-{self.number}-{self.second}"

    def __repr__(self) -> str:  # never the password
        return f"<PairingCode nameplate={self.nameplate}>"


class KeyExchange:
    """One attempt's SPAKE2 between the holder (side A) and the board (side B)."""

    __slots__ = ("_agreed", "_side", "_spake", "outbound")

    def __init__(self, code: PairingCode, side: str, *, user: str, attempt: str) -> None:
        if side not in (HOLDER, BOARD):
            raise ValueError(f"side is {HOLDER} or {BOARD}")
        context = f"\0{user}\0{code.nameplate}\0{attempt}".encode()
        holder_id, board_id = b"runlet-pair/holder" + context, b"runlet-pair/board" + context
        make = SPAKE2_A if side == HOLDER else SPAKE2_B
        self._spake = make(code.password, idA=holder_id, idB=board_id)
        self._side = side
        self._agreed: bytes | None = None
        self.outbound: bytes = self._spake.start()

    def finish(self, inbound: bytes) -> None:
        """Take the other side's SPAKE2 message; CryptoError if it is malformed."""
        if len(inbound) != SPAKE_MESSAGE_BYTES:
            raise CryptoError("the other device's pairing message has the wrong size")
        try:
            self._agreed = self._spake.finish(inbound)
        except (SPAKEError, ValueError, AssertionError, TypeError, IndexError):
            raise CryptoError("the other device's pairing message is malformed") from None

    def proof(self, side: str | None = None) -> bytes:
        """What proves `side` (default: ours) holds the agreed key."""
        return self._derive(_PROOF_PERSON, (side or self._side).encode("ascii"), PROOF_BYTES)

    def verify(self, side: str, proof: bytes) -> bool:
        """The other side's proof checks out: it typed the same code (constant time)."""
        return hmac.compare_digest(self.proof(side), proof)

    def check_words(self) -> str:
        """8 hex digits from the agreed key, the same on both devices, safe to show."""
        return self._derive(_CHECK_PERSON, b"check", 4).hex()

    def seal(self, fleet: FleetKey) -> bytes:
        """The fleet key, sealed for the other side (only once its proof checked out)."""
        aead = nacl.secret.Aead(self._derive(_SEAL_PERSON, b"seal", 32))
        return bytes(aead.encrypt(fleet.export_text().encode("ascii"), b"runlet-pair/1"))

    def open(self, sealed: bytes) -> FleetKey:
        """The fleet key the holder sealed; CryptoError if it does not authenticate."""
        aead = nacl.secret.Aead(self._derive(_SEAL_PERSON, b"seal", 32))
        try:
            text = aead.decrypt(sealed, b"runlet-pair/1")
        except (nacl.exceptions.CryptoError, ValueError, TypeError):
            raise CryptoError("the sealed fleet key did not authenticate") from None
        try:
            return FleetKey.import_text(text.decode("ascii"))
        except UnicodeDecodeError:
            raise CryptoError("the sealed fleet key is not a runlet key") from None

    def _derive(self, person: bytes, data: bytes, size: int) -> bytes:
        if self._agreed is None:
            raise CryptoError("the key exchange has not finished")
        return nacl.hash.blake2b(
            data, key=self._agreed, person=person, digest_size=size, encoder=RawEncoder
        )

    def __repr__(self) -> str:
        return f"<KeyExchange side={self._side}>"
