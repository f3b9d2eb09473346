from pathlib import Path

import pytest

from mailgate.config import env_name, iter_options, load_settings, masked_dump, parse_hostport
from mailgate.domain.errors import ConfigurationError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_defaults_are_embedded() -> None:
    s = load_settings(environ={})
    assert s.http.listen == "127.0.0.1:8025"
    assert s.data_dir == Path("data")
    assert s.is_sqlite
    assert s.database_url.startswith("sqlite+aiosqlite:///")
    assert s.database_url.endswith("/data/mailgate.db")


def test_environment_overrides_file_and_flags_override_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "m.toml"
    cfg.write_text('data_dir = "/from/file"\n[http]\nlisten = "127.0.0.1:1"\n[database]\npool_size = 3\n')
    s = load_settings(cfg, environ={"MAILGATE_HTTP_LISTEN": "127.0.0.1:2"})
    assert s.http.listen == "127.0.0.1:2"
    assert s.database.pool_size == 3
    assert s.data_dir == Path("/from/file")
    s = load_settings(cfg, overrides={"http": {"listen": "127.0.0.1:3"}}, environ={"MAILGATE_HTTP_LISTEN": "x:2"})
    assert s.http.listen == "127.0.0.1:3"


def test_postgres_urls_get_the_async_driver() -> None:
    s = load_settings(environ={"MAILGATE_DATABASE_URL": "postgresql://u@h/db"})
    assert s.database_url == "postgresql+asyncpg://u@h/db"
    assert not s.is_sqlite


def test_unknown_file_key_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "m.toml"
    cfg.write_text("[http]\nlisten = '127.0.0.1:1'\nlistne = 'typo'\n")
    with pytest.raises(ConfigurationError, match=r"http\.listne"):
        load_settings(cfg, environ={})


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="MAILGATE_DATABASE_POOL_SIZE"):
        load_settings(environ={"MAILGATE_DATABASE_POOL_SIZE": "many"})
    with pytest.raises(ConfigurationError, match="MAILGATE_HTTP_LISTEN"):
        load_settings(environ={"MAILGATE_HTTP_LISTEN": "no-port"})


def test_missing_and_broken_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[http\n")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        load_settings(bad, environ={})


def test_roles_from_environment_are_split() -> None:
    assert load_settings(environ={"MAILGATE_SERVER_ROLES": "api, worker"}).server.roles == ["api", "worker"]


def test_show_masks_secrets() -> None:
    s = load_settings(environ={"MAILGATE_MASTER_KEY": "c2VjcmV0", "MAILGATE_DATABASE_URL": "postgresql://u:pw@h/db"})
    dumped = masked_dump(s)
    text = repr(dumped)
    assert "c2VjcmV0" not in text and "pw@" not in text
    assert dumped["master_key"] == "********"
    assert dumped["database"]["url"] == "postgresql://u:********@h/db"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("127.0.0.1:25", ("127.0.0.1", 25)), ("[::1]:8025", ("::1", 8025)), ("localhost:0", ("localhost", 0))],
)
def test_hostport(value: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(value) == expected


@pytest.mark.parametrize("value", ["nohost", ":25", "h:99999", "h:x"])
def test_hostport_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        parse_hostport(value)


def test_every_option_is_documented_with_its_variable() -> None:
    text = DOCS.read_text()
    for key, _info in iter_options():
        assert f"`{key}`" in text, key
        assert f"`{env_name(key)}`" in text, key
