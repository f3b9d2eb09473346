import base64
import os
import stat
from pathlib import Path

import pytest

from mailgate.domain.errors import ConfigurationError
from mailgate.domain.tenancy import Scope
from mailgate.security import apikeys
from mailgate.security.masterkeys import MASTER_KEY_FILE, generate, load_master_keys


def test_tokens_split_and_verify() -> None:
    kid = apikeys.new_key_id()
    token = apikeys.new_token(kid)
    parts = apikeys.split_token(token)
    assert parts is not None and parts[0] == kid
    pepper = os.urandom(32)
    stored = apikeys.hash_secret(pepper, parts[1])
    assert parts[1] not in stored
    assert apikeys.secret_matches(pepper, parts[1], stored)
    other = "B" if parts[1].endswith("A") else "A"  # a different secret, whatever the last character was
    assert not apikeys.secret_matches(pepper, parts[1][:-1] + other, stored)
    assert not apikeys.secret_matches(os.urandom(32), parts[1], stored)


@pytest.mark.parametrize("bad", ["", "mg_", "Bearer x", "mg_key_0000000000000000_short", "mg_key_zz_" + "a" * 43])
def test_malformed_tokens_do_not_split(bad: str) -> None:
    assert apikeys.split_token(bad) is None


def test_master_key_file_is_generated_private(tmp_path: Path) -> None:
    keys, path = load_master_keys(None, tmp_path)
    assert path == tmp_path / MASTER_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, _ = load_master_keys(None, tmp_path)
    assert [k.kid for k in again] == [k.kid for k in keys]


def test_master_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    _, path = load_master_keys(None, tmp_path)
    assert path is not None
    path.chmod(0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        load_master_keys(None, tmp_path)


def test_master_keys_from_environment() -> None:
    a, b = generate(), generate()
    keys, path = load_master_keys(f"{a.encoded()},{b.encoded()}", Path("/nonexistent"))
    assert path is None
    assert [k.kid for k in keys] == [a.kid, b.kid]
    with pytest.raises(ConfigurationError, match="32 bytes"):
        load_master_keys(base64.b64encode(b"short").decode(), Path("/nonexistent"))
    with pytest.raises(ConfigurationError, match="base64"):
        load_master_keys("***", Path("/nonexistent"))


def test_scopes_parse() -> None:
    assert Scope.parse_list("read, send") == {Scope.READ, Scope.SEND}
    assert Scope.parse_list(["ADMIN"]) == {Scope.ADMIN}
    with pytest.raises(ValueError, match="unknown scope 'sned'"):
        Scope.parse_list("read,sned")
    with pytest.raises(ValueError, match="at least one"):
        Scope.parse_list(" , ")
