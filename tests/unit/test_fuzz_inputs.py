"""Untrusted input never escapes as anything but our own errors (``make fuzz`` runs these much longer)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.api import pagination
from mailgate.config import env_name, iter_options, load_settings
from mailgate.domain.errors import ConfigurationError, IntegrityError, InvalidInput
from mailgate.security import apikeys
from mailgate.security.envelope import MAGIC, new_key, unseal

pytestmark = pytest.mark.fuzz
KEY = new_key()
ENV_NAMES = [env_name(key) for key, _ in iter_options()]


@given(st.dictionaries(st.sampled_from(ENV_NAMES), st.text(max_size=40), max_size=6))
def test_any_environment_loads_or_fails_cleanly(env: dict[str, str]) -> None:
    try:
        load_settings(environ=env)
    except ConfigurationError as exc:
        assert exc.detail.startswith("invalid configuration") or "master key" in exc.detail


@given(st.one_of(st.binary(max_size=200), st.binary(max_size=200).map(lambda b: MAGIC + b)))
def test_unseal_of_garbage_is_an_integrity_error(blob: bytes) -> None:
    with pytest.raises(IntegrityError):
        unseal(blob, KEY)


@given(st.text(max_size=100))
def test_cursor_decoding_never_crashes(text: str) -> None:
    with contextlib.suppress(InvalidInput):
        pagination.decode(text)


@given(st.one_of(st.integers(min_value=0, max_value=2**62), st.text(alphabet="abcdef0123456789_", max_size=40)))
def test_cursor_round_trip(value: int | str) -> None:
    assert pagination.decode(pagination.encode(value)) == str(value)


@given(st.text(max_size=120))
def test_token_parsing_never_crashes(text: str) -> None:
    parts = apikeys.split_token(text)
    assert parts is None or text == f"mg_{parts[0]}_{parts[1]}"
