import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.domain.errors import IntegrityError
from mailgate.security import envelope
from mailgate.security.envelope import CHUNK_SIZE, TAG_SIZE, key_id_of, new_key, seal, unseal

KEY = new_key()


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 7])
def test_round_trip_across_chunk_boundaries(size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    sealed = seal(data, KEY, "dk_1", b"ctx")
    assert unseal(sealed, KEY, b"ctx") == data
    assert key_id_of(sealed) == "dk_1"
    if size >= 16:
        assert data[:16] not in sealed


@given(st.binary(max_size=4096), st.binary(max_size=64))
def test_round_trip_property(data: bytes, context: bytes) -> None:
    assert unseal(seal(data, KEY, "k", context), KEY, context) == data


def test_wrong_key_or_context_fails() -> None:
    sealed = seal(b"secret", KEY, "k", b"a")
    with pytest.raises(IntegrityError):
        unseal(sealed, new_key(), b"a")
    with pytest.raises(IntegrityError):
        unseal(sealed, KEY, b"b")


def test_any_flipped_byte_fails() -> None:
    sealed = bytearray(seal(b"x" * 100, KEY, "k"))
    for pos in (0, 5, len(sealed) // 2, len(sealed) - 1):
        tampered = bytearray(sealed)
        tampered[pos] ^= 1
        with pytest.raises(IntegrityError):
            unseal(bytes(tampered), KEY)


def test_truncation_at_a_chunk_boundary_fails() -> None:
    data = b"a" * (2 * CHUNK_SIZE)
    sealed = seal(data, KEY, "k")
    header_len = len(sealed) - 2 * (CHUNK_SIZE + TAG_SIZE)
    with pytest.raises(IntegrityError):
        unseal(sealed[: header_len + CHUNK_SIZE + TAG_SIZE], KEY)


def test_swapped_chunks_fail() -> None:
    data = b"a" * CHUNK_SIZE + b"b" * CHUNK_SIZE + b"c"
    sealed = seal(data, KEY, "k")
    step = CHUNK_SIZE + TAG_SIZE
    header_len = len(sealed) - 2 * step - (1 + TAG_SIZE)
    c0 = sealed[header_len : header_len + step]
    c1 = sealed[header_len + step : header_len + 2 * step]
    swapped = sealed[:header_len] + c1 + c0 + sealed[header_len + 2 * step :]
    with pytest.raises(IntegrityError):
        unseal(swapped, KEY)


def test_not_sealed_is_rejected() -> None:
    with pytest.raises(IntegrityError, match="bad magic"):
        unseal(b"plain text", KEY)
    with pytest.raises(IntegrityError):
        unseal(envelope.MAGIC + b"\x05ab", KEY)
