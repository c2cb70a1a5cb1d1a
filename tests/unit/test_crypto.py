"""Fleet keys, key files and the sealing of job messages (runlet.protocol.crypto)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from runlet.errors import AuthenticationFailed, CryptoError, StorageError
from runlet.protocol.crypto import KEY_SIZE, OVERHEAD, FleetKey, JobKey, Kind

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")

RAW = bytes(range(KEY_SIZE))
SALT = b"0123456789abcdef"


@pytest.fixture
def fleet() -> FleetKey:
    return FleetKey(RAW)


@pytest.fixture
def job(fleet: FleetKey) -> JobKey:
    return fleet.job_key("job-1")


def test_overhead_is_nonce_plus_tag() -> None:
    """OVERHEAD is the 24-byte nonce plus the 16-byte tag."""
    assert OVERHEAD == 40


@pytest.mark.parametrize("kind", list(Kind))
def test_seal_open_round_trip(job: JobKey, kind: Kind) -> None:
    """What is sealed opens again with the same kind, seq, flags and sender."""
    sealed = job.seal(kind, 7, b"hello", flags=1, sender="laptop")
    assert len(sealed) == 5 + OVERHEAD
    assert job.open(kind, 7, sealed, flags=1, sender="laptop") == b"hello"


def test_empty_plaintext_round_trip(job: JobKey) -> None:
    """An empty message seals to exactly OVERHEAD bytes and opens to empty bytes."""
    sealed = job.seal(Kind.INPUT, 0, b"")
    assert len(sealed) == OVERHEAD
    assert job.open(Kind.INPUT, 0, sealed) == b""


def test_nonces_are_fresh(job: JobKey) -> None:
    """Sealing the same message twice gives different bytes (random nonce)."""
    assert job.seal(Kind.OUTPUT, 1, b"x") != job.seal(Kind.OUTPUT, 1, b"x")


def test_same_fleet_key_derives_same_job_key() -> None:
    """A second device holding the same fleet key opens what the first sealed."""
    sealed = FleetKey(RAW).job_key("j").seal(Kind.COMMAND, 0, b"ls")
    assert FleetKey(RAW).job_key("j").open(Kind.COMMAND, 0, sealed) == b"ls"


def test_wrong_fleet_key_fails_with_ids(job: JobKey) -> None:
    """Another fleet key's job key rejects the chunk, naming job, kind and seq."""
    sealed = job.seal(Kind.OUTPUT, 12, b"secret")
    other = FleetKey.generate().job_key("job-1")
    with pytest.raises(AuthenticationFailed) as info:
        other.open(Kind.OUTPUT, 12, sealed)
    err = info.value
    assert isinstance(err, CryptoError)
    assert (err.job_id, err.kind, err.seq) == ("job-1", Kind.OUTPUT, 12)
    assert "output chunk 12 of job job-1 did not authenticate" in str(err)
    assert "another fleet key" in str(err)


def test_other_jobs_chunk_rejected(fleet: FleetKey, job: JobKey) -> None:
    """A chunk sealed for one job does not open as a chunk of another job."""
    sealed = job.seal(Kind.OUTPUT, 0, b"data")
    with pytest.raises(AuthenticationFailed):
        fleet.job_key("job-2").open(Kind.OUTPUT, 0, sealed)


def test_reordered_seq_rejected(job: JobKey) -> None:
    """A chunk presented under another sequence number does not open."""
    sealed = job.seal(Kind.OUTPUT, 3, b"data")
    with pytest.raises(AuthenticationFailed) as info:
        job.open(Kind.OUTPUT, 4, sealed)
    assert info.value.seq == 4


def test_other_kind_rejected(job: JobKey) -> None:
    """An output chunk cannot be replayed as input."""
    sealed = job.seal(Kind.OUTPUT, 0, b"rm -rf /\n")
    with pytest.raises(AuthenticationFailed, match="input chunk 0"):
        job.open(Kind.INPUT, 0, sealed)


def test_flags_changed_rejected(job: JobKey) -> None:
    """Stripping or adding a flag (e.g. FINAL) breaks authentication."""
    sealed = job.seal(Kind.OUTPUT, 0, b"end", flags=1)
    with pytest.raises(AuthenticationFailed):
        job.open(Kind.OUTPUT, 0, sealed, flags=0)


def test_sender_changed_rejected(job: JobKey) -> None:
    """A message sealed by one sender does not open as another sender's."""
    sealed = job.seal(Kind.INPUT, 0, b"y\n", sender="phone")
    with pytest.raises(AuthenticationFailed):
        job.open(Kind.INPUT, 0, sealed, sender="laptop")


def test_flipped_byte_anywhere_rejected(job: JobKey) -> None:
    """Flipping any single bit of nonce, ciphertext or tag breaks authentication."""
    sealed = job.seal(Kind.OUTPUT, 5, b"abc")
    for i in range(len(sealed)):
        altered = bytearray(sealed)
        altered[i] ^= 0x01
        with pytest.raises(AuthenticationFailed):
            job.open(Kind.OUTPUT, 5, bytes(altered))


def test_truncated_sealed_rejected(job: JobKey) -> None:
    """A sealed message missing its last byte does not open."""
    sealed = job.seal(Kind.OUTPUT, 0, b"abcdef")
    with pytest.raises(AuthenticationFailed, match="did not authenticate"):
        job.open(Kind.OUTPUT, 0, sealed[:-1])


@pytest.mark.parametrize("size", [0, 1, OVERHEAD - 1])
def test_too_short_sealed_rejected(job: JobKey, size: int) -> None:
    """Anything shorter than nonce plus tag is reported as truncated."""
    with pytest.raises(AuthenticationFailed, match="truncated"):
        job.open(Kind.OUTPUT, 9, b"\0" * size)


@pytest.mark.parametrize(("seq", "flags"), [(-1, 0), (2**64, 0), (0, -1), (0, 256)])
def test_seq_and_flags_ranges(job: JobKey, seq: int, flags: int) -> None:
    """seq must fit in a u64 and flags in a u8."""
    with pytest.raises(ValueError, match="must be in"):
        job.seal(Kind.OUTPUT, seq, b"", flags=flags)


def test_extreme_seq_and_flags_accepted(job: JobKey) -> None:
    """The largest seq and flags values still round-trip."""
    sealed = job.seal(Kind.OUTPUT, 2**64 - 1, b"z", flags=255)
    assert job.open(Kind.OUTPUT, 2**64 - 1, sealed, flags=255) == b"z"


def test_nul_in_ids_refused(fleet: FleetKey, job: JobKey) -> None:
    """A NUL in a job id or sender would make the AAD ambiguous, so it is refused."""
    with pytest.raises(ValueError, match="NUL"):
        fleet.job_key("a\0b")
    with pytest.raises(ValueError, match="NUL"):
        job.seal(Kind.INPUT, 0, b"", sender="a\0b")


@pytest.mark.parametrize("raw", [b"", b"\0" * 31, b"\0" * 33])
def test_fleet_key_size_checked(raw: bytes) -> None:
    """A fleet key must be exactly 32 bytes."""
    with pytest.raises(CryptoError, match="32 bytes"):
        FleetKey(raw)


def test_repr_hides_key(fleet: FleetKey, job: JobKey) -> None:
    """repr shows the fingerprint and job id, never the key in any encoding."""
    text = repr(fleet) + repr(job)
    assert fleet.fingerprint() in text
    assert "job-1" in text
    assert RAW.hex() not in text
    assert fleet.export_text().split(":")[1] not in text


def test_fingerprint_shape_and_stability(fleet: FleetKey) -> None:
    """The fingerprint is 16 hex chars, stable for a key, different for another key."""
    fpr = fleet.fingerprint()
    assert len(fpr) == 16
    int(fpr, 16)
    assert FleetKey(RAW).fingerprint() == fpr
    assert FleetKey.generate().fingerprint() != fpr
    assert fpr not in RAW.hex()


def test_equality_compares_keys() -> None:
    """Two FleetKeys are equal exactly when their bytes are."""
    assert FleetKey(RAW) == FleetKey(RAW)
    assert FleetKey(RAW) != FleetKey(bytes(KEY_SIZE))


def test_generate_gives_distinct_keys() -> None:
    """Generated keys are random."""
    assert FleetKey.generate() != FleetKey.generate()


# --- text export ---------------------------------------------------------------------------


def test_export_import_round_trip(fleet: FleetKey) -> None:
    """export_text is one prefixed line that import_text turns back into the key."""
    text = fleet.export_text()
    assert text.startswith("runlet-key-v1:")
    assert "\n" not in text
    assert FleetKey.import_text(f"  {text}\n") == fleet


def test_import_accepts_missing_padding(fleet: FleetKey) -> None:
    """A pasted key that lost its base64 padding still imports."""
    assert FleetKey.import_text(fleet.export_text().rstrip("=")) == fleet


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "does not start with"),
        ("runlet-key-v2:AAAA", "does not start with"),
        ("runlet-key-v1:not base64!!", "not valid urlsafe base64"),
        ("runlet-key-v1:AAAA", "holds 3 bytes"),
        ("runlet-key-v1:AAAA\nrunlet-key-v1:AAAA", "single line"),
        ("runlet-key-v1:é", "not valid urlsafe base64"),
    ],
)
def test_import_rejects_malformed(text: str, problem: str) -> None:
    """Malformed key text raises CryptoError saying what is wrong."""
    with pytest.raises(CryptoError, match=problem):
        FleetKey.import_text(text)


# --- passphrase ----------------------------------------------------------------------------


def test_passphrase_derivation_is_deterministic() -> None:
    """Same passphrase and salt give the same key; another salt gives another key."""
    first = FleetKey.from_passphrase(b"correct horse", SALT)
    assert FleetKey.from_passphrase(b"correct horse", SALT) == first
    assert FleetKey.from_passphrase(b"correct horse", SALT[::-1]) != first


def test_passphrase_arguments_checked() -> None:
    """The salt must be 16 bytes and the passphrase non-empty."""
    with pytest.raises(ValueError, match="16 bytes"):
        FleetKey.from_passphrase(b"pw", b"short")
    with pytest.raises(CryptoError, match="empty"):
        FleetKey.from_passphrase(b"", SALT)


# --- key files -----------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path, fleet: FleetKey) -> None:
    """A saved key file holds exactly one line and loads back as the same key."""
    path = tmp_path / "key"
    fleet.save(path)
    assert path.read_text() == fleet.export_text() + "\n"
    assert FleetKey.load(path) == fleet


@posix_only
def test_save_modes(tmp_path: Path, fleet: FleetKey) -> None:
    """The key file is 0o600 and the folders created for it are 0o700."""
    path = tmp_path / "a" / "b" / "key"
    fleet.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700


def test_save_refuses_overwrite(tmp_path: Path, fleet: FleetKey) -> None:
    """An existing key file is kept unless overwrite=True; no temp file is left behind."""
    path = tmp_path / "key"
    fleet.save(path)
    other = FleetKey.generate()
    with pytest.raises(StorageError, match="already exists"):
        other.save(path)
    assert FleetKey.load(path) == fleet
    other.save(path, overwrite=True)
    assert FleetKey.load(path) == other
    assert [p.name for p in tmp_path.iterdir()] == ["key"]


def test_save_oserror_becomes_storage_error(tmp_path: Path, fleet: FleetKey) -> None:
    """A folder that cannot be created turns into StorageError with the OSError as cause."""
    (tmp_path / "file").write_text("")
    with pytest.raises(StorageError) as info:
        fleet.save(tmp_path / "file" / "key")
    assert isinstance(info.value.__cause__, OSError)


def test_load_missing_file_says_what_to_run(tmp_path: Path) -> None:
    """A missing key file names its path and tells the user to run `runlet key init`."""
    path = tmp_path / "nokey"
    with pytest.raises(CryptoError) as info:
        FleetKey.load(path)
    assert "runlet key init" in str(info.value)
    assert "runlet key import" in str(info.value)
    assert str(path) in str(info.value)


@posix_only
def test_load_refuses_group_readable_file(tmp_path: Path, fleet: FleetKey) -> None:
    """A key file with mode 0o644 is refused with a `chmod 600 PATH` hint."""
    path = tmp_path / "key"
    fleet.save(path)
    path.chmod(0o644)
    with pytest.raises(CryptoError, match=f"chmod 600 {path}"):
        FleetKey.load(path)


def _write_key_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"SECRETMARKER garbage\n", "does not start with"),
        (b"runlet-key-v1:SECRETMARKER!\n", "not valid urlsafe base64"),
        (b"runlet-key-v1:SECRETMARKERAAAA\n", "holds 12 bytes"),
        (b"SECRETMARKER\xff\xfe\x00\x01", "binary data"),
        (b"SECRETMARKER" + b"A" * 5000, "over 4096 bytes"),
        (b"", "does not start with"),
    ],
)
def test_load_rejects_bad_file_without_echoing_it(
    tmp_path: Path, data: bytes, problem: str
) -> None:
    """Garbage, binary or oversize key files are refused, and their contents never shown."""
    path = _write_key_file(tmp_path / "key", data)
    with pytest.raises(CryptoError, match=problem) as info:
        FleetKey.load(path)
    assert "SECRETMARKER" not in str(info.value)
    assert str(path) in str(info.value)


@posix_only
def test_load_directory_refused(tmp_path: Path) -> None:
    """A folder where the key file should be is reported, not read."""
    folder = tmp_path / "key"
    folder.mkdir(mode=0o700)
    with pytest.raises(CryptoError, match="not a regular file"):
        FleetKey.load(folder)


def test_load_oserror_is_a_key_problem_naming_the_file(tmp_path: Path) -> None:
    """An OSError while opening the key file is a CryptoError naming the file and the reason."""
    (tmp_path / "file").write_text("")
    with pytest.raises(CryptoError, match=r"key file .*/file/key cannot open: Not a directory"):
        FleetKey.load(tmp_path / "file" / "key")
