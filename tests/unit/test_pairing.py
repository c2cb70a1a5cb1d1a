"""The pairing crypto (runlet.protocol.pairing): codes, SPAKE2 with key confirmation, the
sealed fleet key, and what a hostile peer's messages do."""

from __future__ import annotations

import pytest

from runlet.errors import CryptoError
from runlet.protocol.crypto import FleetKey
from runlet.protocol.pairing import (
    BOARD,
    HOLDER,
    SPAKE_MESSAGE_BYTES,
    KeyExchange,
    PairingCode,
)
from runlet.protocol.pairing_words import WORDS

ATTEMPT = "ab" * 16
CODE = PairingCode(4, "river", 7, "cactus")


def pair(
    board_code: PairingCode = CODE, board_ids: dict[str, str] | None = None
) -> tuple[KeyExchange, KeyExchange]:
    ids = {"user": "alice", "attempt": ATTEMPT}
    holder = KeyExchange(CODE, HOLDER, **ids)
    board = KeyExchange(board_code, BOARD, **(ids | (board_ids or {})))
    holder.finish(board.outbound)
    board.finish(holder.outbound)
    return holder, board


def test_the_word_list_is_256_sorted_distinct_lower_case_words() -> None:
    """One byte a word: 256 of them, sorted, no repeats, a-z only."""
    assert len(WORDS) == 256
    assert list(WORDS) == sorted(set(WORDS))
    assert all(word.isascii() and word.isalpha() and word.islower() for word in WORDS)


def test_a_code_prints_and_parses_back() -> None:
    """str() and parse() are inverses; generated codes are valid and differ."""
    codes = {PairingCode.generate() for _ in range(50)}
    assert len(codes) > 45
    for code in codes:
        assert PairingCode.parse(str(code)) == code
    assert PairingCode.parse("  4-RIVER-7-Cactus\n") == CODE
    assert "river" not in repr(CODE)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "4-river-7",
        "river-7-cactus-4",
        "1000-river-7-cactus",
        "0-river-7-cactus",
        "4-river-007-cactus",
        "4-rivers-7-cactus",
        "4-river-7-cactus-",
        "4_river_7_cactus",
        "4-river-7-cactus" * 10,
        "\uff14-river-7-cactus",
        "4-river-7-cact\x00s",
    ],
)
def test_malformed_codes_are_value_errors(text: str) -> None:
    """Truncated, oversize, unknown words, full-width or foreign digits, NULs: ValueError."""
    with pytest.raises(ValueError, match="code"):
        PairingCode.parse(text)


def test_the_same_code_agrees_and_each_side_proves_it() -> None:
    """Same code: each side's proof checks out on the other; the check words match; the
    fleet key sealed by the holder opens on the board."""
    holder, board = pair()
    assert board.verify(HOLDER, holder.proof())
    assert holder.verify(BOARD, board.proof())
    assert holder.check_words() == board.check_words()
    key = FleetKey.generate()
    assert board.open(holder.seal(key)) == key
    assert not board.verify(BOARD, holder.proof())  # a proof cannot be reflected


@pytest.mark.parametrize(
    "board_ids", [{}, {"user": "mallory"}, {"attempt": "cd" * 16}], ids=["code", "user", "attempt"]
)
def test_a_different_code_user_or_attempt_fails_on_both_sides(board_ids: dict[str, str]) -> None:
    """A wrong code (or another user's or attempt's exchange): neither proof checks out and
    the sealed key does not open."""
    other = PairingCode(4, "river", 8, "cactus") if not board_ids else CODE
    holder, board = pair(other, board_ids)
    assert not board.verify(HOLDER, holder.proof())
    assert not holder.verify(BOARD, board.proof())
    with pytest.raises(CryptoError):
        board.open(holder.seal(FleetKey.generate()))


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"B",
        b"B" * SPAKE_MESSAGE_BYTES,
        b"\x00" * SPAKE_MESSAGE_BYTES,
        b"A" + b"\xff" * 32,
        b"A" * 1000,
        b"S" + b"\x01" * 32,
    ],
)
def test_hostile_spake_messages_are_crypto_errors(message: bytes) -> None:
    """Empty, truncated, oversize, wrong-side or off-curve messages: CryptoError, no crash."""
    board = KeyExchange(CODE, BOARD, user="alice", attempt=ATTEMPT)
    with pytest.raises(CryptoError):
        board.finish(message)
    with pytest.raises(CryptoError, match="not finished"):
        board.proof()


def test_a_tampered_or_truncated_sealed_key_does_not_open() -> None:
    """One flipped bit, a cut, or garbage: CryptoError; nothing of the key is in the text."""
    holder, board = pair()
    sealed = bytearray(holder.seal(FleetKey.generate()))
    sealed[30] ^= 1
    for bad in (bytes(sealed), bytes(sealed[:20]), b"", b"x" * 200):
        with pytest.raises(CryptoError, match="did not authenticate"):
            board.open(bad)


def test_a_side_is_holder_or_board() -> None:
    """Any other side name is refused."""
    with pytest.raises(ValueError, match="side"):
        KeyExchange(CODE, "both", user="alice", attempt=ATTEMPT)
