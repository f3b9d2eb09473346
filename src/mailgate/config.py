"""Settings: one TOML file plus ``MAILGATE_*`` environment variables, read once into a frozen object.

Every leaf option ``section.name`` can be set by ``MAILGATE_SECTION_NAME`` (top-level options by
``MAILGATE_NAME``); the environment wins over the file, command-line flags win over both. Errors name
the offending key the way the user wrote it, so a typo in the file or a bad variable is found at once.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from mailgate.domain.errors import ConfigurationError

ENV_PREFIX = "MAILGATE_"
DEFAULT_CONFIG_FILE = Path("mailgate.toml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_hostport(value: str, default_port: int | None = None) -> tuple[str, int]:
    """``HOST:PORT`` or ``[v6]:PORT``; a bare host takes ``default_port``."""
    host, sep, port = value.rpartition(":")
    if not sep or "]" in port:
        if default_port is None:
            raise ValueError(f"{value!r} is not HOST:PORT")
        host, port = value, str(default_port)
    host = host.strip("[]")
    if not host:
        raise ValueError(f"{value!r} has no host")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"{value!r} has a non-numeric port") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"{value!r}: port out of range")
    return host, number


class HttpSettings(_Section):
    listen: str = Field("127.0.0.1:8025", description="Address of the HTTP API (HOST:PORT).")
    tls: Literal["auto", "on", "off"] = Field(
        "auto",
        description="TLS on the API listener: `auto` serves TLS unless it binds a loopback address.",
    )
    public_url: str | None = Field(
        None, description="URL clients use to reach the API, when behind a proxy (printed at start)."
    )
    max_body_size: int = Field(
        41943040,
        ge=1024,
        description="Largest request body in bytes (40 MiB: a 25 MiB message with base64 attachments); "
        "larger ones get 413.",
    )

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_hostport(value)
        return value


class DatabaseSettings(_Section):
    url: str | None = Field(
        None,
        description="SQLAlchemy URL. Unset: SQLite file `mailgate.db` in the data dir. "
        "`postgresql://user@host/db` selects PostgreSQL (asyncpg).",
    )
    pool_size: int = Field(10, ge=1, le=200, description="Connections per node (PostgreSQL).")
    busy_timeout_ms: int = Field(30000, ge=0, description="How long SQLite waits for a lock before failing a write.")
    migrate_on_start: bool = Field(True, description="Apply pending migrations when a node starts.")


class BlobSettings(_Section):
    backend: Literal["auto", "file", "database"] = Field(
        "auto",
        description="Where encrypted blobs live: `file` (data dir), `database` (shared by all nodes); "
        "`auto` picks `file` on SQLite and `database` on PostgreSQL.",
    )
    inline_max: int = Field(
        65536,
        ge=0,
        le=16 * 1024 * 1024,
        description="Blobs up to this many bytes are kept in the database with the row that refers to them, "
        "whatever the backend: one durable write instead of three. 0 keeps every blob in the backend.",
    )


class TlsSettings(_Section):
    cert_file: Path | None = Field(
        None, description="PEM certificate chain for every TLS listener. Unset: self-signed, generated."
    )
    key_file: Path | None = Field(None, description="PEM private key matching `cert_file`.")
    hostname: str = Field("localhost", description="Name put in the generated certificate.")


class ServerSettings(_Section):
    roles: list[str] = Field(
        default_factory=lambda: ["all"],
        description="Roles this node runs (`api`, ... or `all`); `--roles` overrides.",
    )
    shutdown_timeout: float = Field(
        20.0, gt=0, description="Seconds a SIGTERM waits for in-flight work before stopping."
    )

    @field_validator("roles", mode="before")
    @classmethod
    def _split_roles(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [r.strip() for r in value.split(",") if r.strip()]
        return value


class QueueSettings(_Section):
    first_retry_delay: float = Field(60.0, gt=0, description="Seconds before the first retry of a deferred delivery.")
    max_retry_delay: float = Field(7200.0, gt=0, description="Backoff cap between retries, in seconds.")
    max_age: float = Field(
        432000.0, gt=0, description="Seconds after acceptance a delivery is given up as failed (5 days)."
    )
    batch: int = Field(200, ge=1, le=10000, description="Deliveries a worker claims at once.")
    parallel: int = Field(32, ge=1, le=1000, description="Messages a worker delivers concurrently.")
    lease: float = Field(
        300.0, gt=0, description="Seconds a claim holds a delivery; after that another worker may take it over."
    )
    poll_interval: float = Field(1.0, gt=0, description="Idle seconds between queue checks (new mail wakes at once).")
    breaker_threshold: int = Field(5, ge=1, description="Consecutive path failures that open a connector's circuit.")
    breaker_cooldown: float = Field(30.0, gt=0, description="Seconds an open circuit waits before one probe.")


class DnsSettings(_Section):
    servers: list[str] = Field(
        default_factory=list,
        description="Resolvers for MX, MTA-STS and sender checks (IP or IP:PORT, comma-separated). "
        "Empty: the system's `/etc/resolv.conf`.",
    )
    timeout: float = Field(5.0, gt=0, le=60, description="Seconds one DNS lookup may take, all retries included.")
    cache_size: int = Field(
        10000,
        ge=0,
        description="Answers the sender checks of received mail (SPF, DKIM, DMARC) keep, each for its TTL "
        "(at most an hour); 0 turns the cache off. Sending asks the resolver every time.",
    )

    @field_validator("servers", mode="before")
    @classmethod
    def _split_servers(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [s.strip() for s in value.split(",") if s.strip()]
        for item in value:
            host, _ = parse_hostport(item, 53)
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ValueError(f"{item!r}: a resolver is given by IP address, not by name") from None
        return value


def _optional_listen(value: str | None) -> str | None:
    """An optional HOST:PORT listener: checked when given, "" turns it off."""
    if value:
        parse_hostport(value)
    return value or None


class SubmissionSettings(_Section):
    listen: str | None = Field(
        "127.0.0.1:1587",
        description="SMTP submission listener (HOST:PORT) with STARTTLS, run by the `submission` role; "
        "`serve --submission` overrides.",
    )
    tls_listen: str | None = Field(
        None, description="Optional implicit-TLS submission listener (HOST:PORT), as on port 465."
    )
    allow_plaintext_auth: bool = Field(
        False, description="Offer AUTH before STARTTLS. Only for trusted loopback clients that cannot do TLS."
    )
    max_message_size: int = Field(
        26214400, ge=1024, description="Largest message accepted, in bytes (SIZE extension; 25 MiB)."
    )
    max_recipients: int = Field(1000, ge=1, description="Recipients one message may have.")
    hostname: str | None = Field(None, description="Name in the greeting and EHLO reply. Unset: the host's name.")

    _check_listen = field_validator("listen", "tls_listen")(_optional_listen)


class MxSettings(_Section):
    listen: str | None = Field(
        "127.0.0.1:2525",
        description="Inbound MX listener (HOST:PORT) with STARTTLS, run by the `mx` role; set `0.0.0.0:25` to "
        "receive from the internet. `serve --mx` overrides.",
    )
    hostname: str | None = Field(
        None, description="Name in the greeting, EHLO reply and Received headers. Unset: `tls.hostname`."
    )
    max_message_size: int = Field(
        26214400, ge=1024, description="Largest message accepted, in bytes (SIZE; larger DATA gets 552, 25 MiB)."
    )
    max_recipients: int = Field(100, ge=1, description="Recipients one message may have (more get 452).")
    command_timeout: float = Field(300.0, gt=0, description="Idle seconds between commands before 421 and close.")
    data_timeout: float = Field(600.0, gt=0, description="Seconds the whole DATA phase may take.")
    max_connections_per_ip: int = Field(20, ge=1, description="Concurrent sessions from one client IP (more: 421).")
    max_connections: int = Field(1000, ge=1, description="Concurrent sessions in all.")
    require_tls: bool = Field(False, description="Refuse MAIL before STARTTLS (530). Off: the internet's MTAs vary.")
    plus_separator: str = Field("+", max_length=1, description="Subaddress separator (`user+tag@`); empty: off.")
    processes: int = Field(
        0,
        ge=0,
        le=64,
        description="Processes serving the MX listener, the node's own included (each uses one CPU core "
        "for SMTP, parsing and checks). 0: one per CPU core, at most 4.",
    )

    _check_listen = field_validator("listen")(_optional_listen)


class SpamSettings(_Section):
    tag: float = Field(5.0, ge=0, description="Default score at which received mail is tagged (X-Spam-Flag).")
    junk: float = Field(8.0, ge=0, description="Default score at which received mail is filed in Junk.")
    reject: float = Field(15.0, ge=0, description="Default score refused at SMTP time (550 5.7.1 ... spam).")
    rspamd_url: str | None = Field(None, description="rspamd controller/normal worker URL (`/checkv2` is added).")
    spamd: str | None = Field(None, description="SpamAssassin spamd address HOST:PORT.")
    timeout: float = Field(10.0, gt=0, le=120, description="Seconds an external scorer may take before it is skipped.")

    @field_validator("spamd")
    @classmethod
    def _check_spamd(cls, value: str | None) -> str | None:
        if value:
            parse_hostport(value, 783)
        return value or None


class BounceSettings(_Section):
    domain: str | None = Field(
        None,
        description="Domain of the VERP return path (`bounces+<token>@domain`); its MX must be this gateway's "
        "MX listener (or a mailbox whose messages reach `POST /v1/bounces`). Unset: the envelope sender is "
        "the From address and asynchronous bounces are not matched.",
    )
    local_prefix: str = Field("bounces", pattern=r"^[a-z0-9_-]{1,20}$", description="Local part before the token.")


class EventSettings(_Section):
    max_wait: float = Field(60.0, ge=0, le=300, description="Longest `wait=` a long-poll may ask for.")


class Settings(_Section):
    data_dir: Path = Field(Path("data"), description="Where the SQLite file, blobs, keys and certificates live.")
    master_key: SecretStr | None = Field(
        None,
        description="Master key(s), base64 of 32 bytes, comma-separated, the first one active. "
        "Unset: read from (or generated into) `master.key` in the data dir.",
    )
    log_format: Literal["json", "text"] = Field("json", description="`json` lines, or `text` for humans.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Lowest level logged.")
    http: HttpSettings = Field(default_factory=HttpSettings)  # type: ignore[arg-type]
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)  # type: ignore[arg-type]
    blobs: BlobSettings = Field(default_factory=BlobSettings)  # type: ignore[arg-type]
    tls: TlsSettings = Field(default_factory=TlsSettings)  # type: ignore[arg-type]
    server: ServerSettings = Field(default_factory=ServerSettings)  # type: ignore[arg-type]
    events: EventSettings = Field(default_factory=EventSettings)  # type: ignore[arg-type]
    queue: QueueSettings = Field(default_factory=QueueSettings)  # type: ignore[arg-type]
    dns: DnsSettings = Field(default_factory=DnsSettings)  # type: ignore[arg-type]
    submission: SubmissionSettings = Field(default_factory=SubmissionSettings)  # type: ignore[arg-type]
    mx: MxSettings = Field(default_factory=MxSettings)  # type: ignore[arg-type]
    spam: SpamSettings = Field(default_factory=SpamSettings)  # type: ignore[arg-type]
    bounces: BounceSettings = Field(default_factory=BounceSettings)  # type: ignore[arg-type]
    connectors: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Global connectors declared here (`[[connectors]]` tables with the fields of "
        "`POST /v1/connectors`), created or updated at start. In the environment: a JSON list.",
    )
    routes: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Global routes declared here (`[routes]` table: name = [connector names in order]), "
        "set at start. In the environment: a JSON object.",
    )

    @field_validator("connectors", "routes", mode="before")
    @classmethod
    def _json_from_environment(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError as exc:
                raise ValueError(f"not valid JSON: {exc}") from None
        return value

    @property
    def database_url(self) -> str:
        """The async SQLAlchemy URL, with the driver filled in."""
        url = self.database.url or f"sqlite:///{(self.data_dir / 'mailgate.db').resolve()}"
        for plain, driver in (
            ("postgresql://", "postgresql+asyncpg://"),
            ("postgres://", "postgresql+asyncpg://"),
            ("sqlite://", "sqlite+aiosqlite://"),
        ):
            if url.startswith(plain):
                return driver + url[len(plain) :]
        return url

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def iter_options(model: type[BaseModel] = Settings, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf option as (dotted key, field info): used for env lookup and the docs."""
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from iter_options(annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", info


def env_name(key: str) -> str:
    return ENV_PREFIX + key.replace(".", "_").upper()


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, _info in iter_options():
        value = environ.get(env_name(key))
        if value is None:
            continue
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(error: ValidationError, env_keys: set[str]) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"])
        where = f"{key} (from {env_name(key)})" if key in env_keys else key
        lines.append(f"{where}: {item['msg']}")
    return "invalid configuration: " + "; ".join(lines)


def load_settings(
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Read the file (``config_file`` or ``./mailgate.toml`` when present), the environment, then overrides."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    path = config_file or (Path(environ["MAILGATE_CONFIG"]) if environ.get("MAILGATE_CONFIG") else None)
    if path is None and DEFAULT_CONFIG_FILE.exists():
        path = DEFAULT_CONFIG_FILE
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigurationError(f"config file {str(path)!r} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    env = _from_env(environ)
    env_keys = {key for key, _ in iter_options() if env_name(key) in environ}
    data = _merge(_merge(data, env), overrides or {})
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigurationError(_describe(exc, env_keys)) from None


SECRET_MASK = "********"  # noqa: S105 - the mask, not a secret
CONNECTOR_SECRETS = frozenset({"password", "client_secret", "refresh_token"})


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, every secret replaced by a mask."""
    dumped: dict[str, Any] = settings.model_dump(mode="json")
    if settings.master_key is not None:
        dumped["master_key"] = SECRET_MASK
    url = settings.database.url
    if url and "@" in url and ":" in url.split("@", 1)[0].split("//", 1)[-1]:
        scheme, rest = url.split("//", 1)
        creds, host = rest.split("@", 1)
        dumped["database"]["url"] = f"{scheme}//{creds.split(':', 1)[0]}:{SECRET_MASK}@{host}"
    dumped["data_dir"] = str(settings.data_dir)
    dumped["connectors"] = [
        {k: (SECRET_MASK if k in CONNECTOR_SECRETS and v else v) for k, v in c.items()} for c in dumped["connectors"]
    ]
    return dumped
