"""The ``mailgate`` command.

Every command that changes state goes through the same services as the API, as the principal
``cli:<user>`` with admin rights, so it is audited like an API call.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import TypeAdapter, ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from mailgate.api.schemas.outbound import ConnectorIn
from mailgate.app import Gateway, run_serve
from mailgate.config import CONNECTOR_SECRETS, Settings, load_settings, masked_dump
from mailgate.domain.delivery import DeliveryStatus
from mailgate.domain.errors import ConfigurationError, MailgateError
from mailgate.domain.outbound import DeliveryRecord
from mailgate.domain.tenancy import Principal, Scope
from mailgate.observability.logging import configure_logging
from mailgate.outbound.service import MessageView
from mailgate.store.database import Database
from mailgate.store.types import utcnow

T = TypeVar("T")
app = typer.Typer(
    help="mailgate: a self-hosted email gateway.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
tenants_app = typer.Typer(help="Tenants.", no_args_is_help=True)
apikeys_app = typer.Typer(help="API keys.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit trail.", no_args_is_help=True)
keys_app = typer.Typer(help="Encryption keys.", no_args_is_help=True)
dkim_app = typer.Typer(help="DKIM signing keys.", no_args_is_help=True)
smtp_app = typer.Typer(help="SMTP submission credentials.", no_args_is_help=True)
connectors_app = typer.Typer(help="Connectors: how mail leaves (global ones).", no_args_is_help=True)
routes_app = typer.Typer(help="Routes: which connectors, in which order.", no_args_is_help=True)
queue_app = typer.Typer(help="The outbound queue: inspect, hold, release, retry, cancel.", no_args_is_help=True)
domains_app = typer.Typer(help="Domains the MX receives mail for.", no_args_is_help=True)
mailboxes_app = typer.Typer(help="Mailboxes that hold received mail.", no_args_is_help=True)
for sub, name in (
    (config_app, "config"),
    (db_app, "db"),
    (tenants_app, "tenants"),
    (apikeys_app, "apikeys"),
    (audit_app, "audit"),
    (keys_app, "keys"),
    (dkim_app, "dkim"),
    (smtp_app, "smtp-credentials"),
    (queue_app, "queue"),
    (connectors_app, "connectors"),
    (routes_app, "routes"),
    (domains_app, "domains"),
    (mailboxes_app, "mailboxes"),
):
    app.add_typer(sub, name=name)

err = Console(stderr=True)
# piped output (scripts, grep) gets whole lines: Rich would otherwise squeeze tables into 80 columns
out = Console(width=None if sys.stdout.isatty() else 1000)


def _settings(ctx: typer.Context, **overrides: Any) -> Settings:
    base: dict[str, Any] = ctx.obj or {}
    merged = dict(base.get("overrides", {}))
    for key, value in overrides.items():
        merged.setdefault(key, {}).update(value) if isinstance(value, dict) else merged.__setitem__(key, value)
    settings = load_settings(base.get("config"), merged)
    configure_logging(settings.log_format, settings.log_level if base.get("verbose") else "warning")
    return settings


def _cli_principal() -> Principal:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Principal(actor=f"cli:{user}", tenant_id=None, scopes=frozenset({Scope.ADMIN}))


def _run(settings: Settings, work: Callable[[Gateway], Awaitable[T]]) -> T:
    async def main() -> T:
        gw = await Gateway.open(settings)
        try:
            return await work(gw)
        finally:
            await gw.close()

    return asyncio.run(main())


def _with_database(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    """Just the database, for the schema commands (which must work before the keyring can load)."""

    async def main() -> T:
        db = Database(settings.database_url, busy_timeout_ms=settings.database.busy_timeout_ms)
        try:
            return await work(db)
        finally:
            await db.dispose()

    return asyncio.run(main())


@app.callback()
def main_options(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", help="TOML file (default ./mailgate.toml).")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Data dir (env MAILGATE_DATA_DIR).")] = None,
    log_format: Annotated[str | None, typer.Option("--log-format", help="json or text.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at the configured level in commands.")] = False,
) -> None:
    overrides: dict[str, Any] = {}
    if data_dir is not None:
        overrides["data_dir"] = str(data_dir)
    if log_format is not None:
        overrides["log_format"] = log_format
    ctx.obj = {"config": config, "overrides": overrides, "verbose": verbose}


@app.command()
def serve(
    ctx: typer.Context,
    http: Annotated[str | None, typer.Option("--http", help="API address HOST:PORT (default 127.0.0.1:8025).")] = None,
    roles: Annotated[str | None, typer.Option("--roles", help="Comma-separated roles (default: all).")] = None,
    submission: Annotated[
        str | None, typer.Option("--submission", help="SMTP submission address HOST:PORT (default 127.0.0.1:1587).")
    ] = None,
    mx: Annotated[
        str | None, typer.Option("--mx", help="Inbound MX listener HOST:PORT (default 127.0.0.1:2525).")
    ] = None,
) -> None:
    """Run the gateway: every role in one process unless --roles narrows it."""
    overrides: dict[str, Any] = {}
    if mx is not None:
        overrides["mx"] = {"listen": mx}
    if http is not None:
        overrides["http"] = {"listen": http}
    if submission is not None:
        overrides["submission"] = {"listen": submission}
    if roles is not None:
        overrides["server"] = {"roles": roles}
    settings = _settings(ctx, **overrides)
    configure_logging(settings.log_format, settings.log_level)
    run_serve(settings, settings.server.roles)


@config_app.command("show")
def config_show(ctx: typer.Context) -> None:
    """Print the effective configuration (file + environment + flags), secrets masked."""
    out.print_json(json.dumps(masked_dump(_settings(ctx))))


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Apply pending migrations."""
    settings = _settings(ctx)

    async def work(db: Database) -> tuple[str | None, str | None]:
        before, _ = await db.revisions()
        await db.upgrade()
        return before, (await db.revisions())[0]

    before, after = _with_database(settings, work)
    if before != after:
        _run(
            settings,
            lambda gw: gw.admin.record(
                _cli_principal(),
                "db.upgrade",
                object_type="schema",
                object_id=after,
                details={"from": before, "to": after},
            ),
        )
    print(f"database schema at {after}" + ("" if before != after else " (already current)"))


@db_app.command("check")
def db_check(ctx: typer.Context) -> None:
    """Exit 0 when the schema is current, 1 when migrations are pending."""
    current, head = _with_database(_settings(ctx), lambda db: db.revisions())
    if current == head:
        print(f"database schema is current ({head})")
        return
    print(f"database schema at {current or 'nothing'}, code needs {head}: run `mailgate db upgrade`")
    raise typer.Exit(1)


@tenants_app.command("create")
def tenants_create(ctx: typer.Context, name: str) -> None:
    """Create a tenant; prints its id as the last line."""
    tenant = _run(_settings(ctx), lambda gw: gw.admin.create_tenant(_cli_principal(), name))
    err.print(f"created tenant {tenant.name}")
    print(tenant.id)


@tenants_app.command("list")
def tenants_list(ctx: typer.Context) -> None:
    """List tenants."""
    items = _run(_settings(ctx), lambda gw: gw.admin.list_tenants(_cli_principal(), after=None, limit=500))
    table = Table("id", "name", "created")
    for t in items:
        table.add_row(t.id, t.name, t.created_at.isoformat(timespec="seconds"))
    out.print(table)


@domains_app.command("create")
def domains_create(
    ctx: typer.Context,
    domain: str,
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant name or id the domain belongs to.")],
) -> None:
    """Add a domain to receive mail for; prints its id as the last line."""
    created = _run(_settings(ctx), lambda gw: gw.mailboxes.create_domain(_cli_principal(), domain, tenant=tenant))
    err.print(f"created domain {created.name} for tenant {created.tenant_id}")
    print(created.id)


@domains_app.command("list")
def domains_list(ctx: typer.Context) -> None:
    """List domains with their spam thresholds (tag / junk / reject)."""
    items = _run(_settings(ctx), lambda gw: gw.mailboxes.list_domains(_cli_principal(), after=None, limit=500))
    table = Table("id", "name", "tenant", "spam tag/junk/reject", "catch-all")
    for d in items:
        table.add_row(d.id, d.name, d.tenant_id, f"{d.spam.tag:g}/{d.spam.junk:g}/{d.spam.reject:g}", d.catch_all or "")
    out.print(table)


@mailboxes_app.command("create")
def mailboxes_create(
    ctx: typer.Context,
    address: str,
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant name or id the mailbox belongs to.")],
    name: Annotated[str | None, typer.Option("--name", help="Display name.")] = None,
) -> None:
    """Create a mailbox at one of the tenant's domains; prints its id as the last line."""
    created = _run(
        _settings(ctx),
        lambda gw: gw.mailboxes.create_mailbox(_cli_principal(), address, tenant=tenant, display_name=name),
    )
    err.print(f"created mailbox {created.address}")
    print(created.id)


@mailboxes_app.command("list")
def mailboxes_list(
    ctx: typer.Context,
    domain: Annotated[str | None, typer.Option("--domain", help="Only this domain's mailboxes.")] = None,
) -> None:
    """List mailboxes."""
    items = _run(
        _settings(ctx), lambda gw: gw.mailboxes.list_mailboxes(_cli_principal(), domain=domain, after=None, limit=500)
    )
    table = Table("id", "address", "tenant", "aliases")
    for m in items:
        table.add_row(m.id, m.address, m.tenant_id, ", ".join(m.aliases))
    out.print(table)


@mailboxes_app.command("delete")
def mailboxes_delete(ctx: typer.Context, mailbox: str) -> None:
    """Delete a mailbox (id or address) with every message in it."""
    deleted = _run(_settings(ctx), lambda gw: gw.mailboxes.delete_mailbox(_cli_principal(), mailbox))
    err.print(f"deleted mailbox {deleted.address}")


@apikeys_app.command("create")
def apikeys_create(
    ctx: typer.Context,
    scopes: Annotated[str, typer.Option("--scopes", help="Comma-separated: read,send,manage,admin.")],
    tenant: Annotated[str | None, typer.Option("--tenant", help="Tenant name or id (omit for an admin key).")] = None,
    name: Annotated[str, typer.Option("--name", help="A label for the key.")] = "",
) -> None:
    """Create an API key; prints the key (shown once) as the last line."""
    try:
        wanted = Scope.parse_list(scopes)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--scopes") from None
    key, token = _run(
        _settings(ctx), lambda gw: gw.admin.create_key(_cli_principal(), tenant=tenant, scopes=wanted, name=name)
    )
    err.print(f"created key {key.id} ({','.join(sorted(key.scopes))}); it is shown once:")
    print(token)


@apikeys_app.command("list")
def apikeys_list(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant's keys.")] = None,
) -> None:
    """List API keys (never their secrets)."""
    items = _run(_settings(ctx), lambda gw: gw.admin.list_keys(_cli_principal(), tenant=tenant, after=None, limit=500))
    table = Table("id", "tenant", "name", "scopes", "created", "state")
    for k in items:
        table.add_row(
            k.id,
            k.tenant_id or "-",
            k.name,
            ",".join(sorted(k.scopes)),
            k.created_at.isoformat(timespec="seconds"),
            "active" if k.active else "revoked",
        )
    out.print(table)


@smtp_app.command("create")
def smtp_credentials_create(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant name or id the credential sends for.")],
) -> None:
    """Create an SMTP submission username and password; prints `USERNAME PASSWORD` (shown once) last."""
    credential, password = _run(_settings(ctx), lambda gw: gw.smtp_credentials.create(_cli_principal(), tenant))
    err.print(f"created SMTP credential {credential.id} for tenant {credential.tenant_id}; the password is shown once:")
    print(f"{credential.username} {password}")


@smtp_app.command("list")
def smtp_credentials_list(ctx: typer.Context) -> None:
    """List SMTP credentials (never their passwords)."""
    items = _run(_settings(ctx), lambda gw: gw.smtp_credentials.list(_cli_principal()))
    table = Table("id", "tenant", "username", "created", "state")
    for c in items:
        table.add_row(
            c.id,
            c.tenant_id,
            c.username,
            c.created_at.isoformat(timespec="seconds"),
            "active" if c.active else "revoked",
        )
    out.print(table)


@smtp_app.command("revoke")
def smtp_credentials_revoke(ctx: typer.Context, credential_id: str) -> None:
    """Revoke an SMTP credential: new logins with it fail at once."""
    credential = _run(_settings(ctx), lambda gw: gw.smtp_credentials.revoke(_cli_principal(), credential_id))
    out.print(f"revoked {credential.id} ({credential.username})")


@connectors_app.command("put")
def connectors_put(
    ctx: typer.Context,
    name: str,
    connector_type: Annotated[str, typer.Option("--type", help="smtp_relay, mx, graph or gmail.")],
    options: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="A field as KEY=VALUE (repeatable), e.g. --set host=smtp.example.com --set port=587."
        ),
    ] = None,
) -> None:
    """Create or replace a global connector (the fields of POST /v1/connectors)."""
    body: dict[str, Any] = {"name": name, "type": connector_type}
    for option in options or []:
        key, sep, value = option.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{option!r} is not KEY=VALUE", param_hint="--set")
        body[key.strip()] = _cli_value(value)
    try:
        parsed = TypeAdapter(ConnectorIn).validate_python(body)
    except ValidationError as exc:
        item = exc.errors()[0]
        raise typer.BadParameter(
            f"{'.'.join(str(p) for p in item['loc'])}: {item['msg']}", param_hint="--set"
        ) from None
    spec, created = _run(
        _settings(ctx),
        lambda gw: gw.setup.put_connector(_cli_principal(), name=parsed.name, type=parsed.type, config=parsed.config()),
    )
    out.print(f"{'created' if created else 'replaced'} connector {spec.name} ({spec.type})")
    print(spec.id)


def _cli_value(text: str) -> Any:
    """--set values are JSON when they parse as such (numbers, booleans), else plain strings."""
    try:
        return json.loads(text)
    except ValueError:
        return text


@connectors_app.command("list")
def connectors_list(ctx: typer.Context) -> None:
    """Every connector, secrets masked."""
    items = _run(_settings(ctx), lambda gw: gw.setup.list_connectors(_cli_principal()))
    table = Table("id", "name", "type", "tenant", "config")
    for c in items:
        shown = {k: ("********" if k in CONNECTOR_SECRETS and v else v) for k, v in c.config.items()}
        table.add_row(c.id, c.name, c.type, c.scope or "-", json.dumps(shown))
    out.print(table)


@connectors_app.command("delete")
def connectors_delete(ctx: typer.Context, connector_id: str) -> None:
    """Delete a connector by id (routes naming it skip it from then on)."""
    _run(_settings(ctx), lambda gw: gw.setup.delete_connector(_cli_principal(), connector_id))
    out.print(f"deleted {connector_id}")


@routes_app.command("put")
def routes_put(
    ctx: typer.Context,
    name: str,
    connectors: Annotated[
        str, typer.Option("--connectors", help="Connector names in failover order, comma-separated.")
    ],
) -> None:
    """Create or replace a global route (`default` applies when no other matches)."""
    names = [c.strip() for c in connectors.split(",") if c.strip()]
    route, created = _run(
        _settings(ctx), lambda gw: gw.setup.put_route(_cli_principal(), name=name, connectors=names, match={})
    )
    out.print(f"{'created' if created else 'replaced'} route {route.name}: {' -> '.join(route.connectors)}")


@routes_app.command("list")
def routes_list(ctx: typer.Context) -> None:
    items = _run(_settings(ctx), lambda gw: gw.setup.list_routes(_cli_principal()))
    table = Table("name", "tenant", "connectors", "match")
    for r in items:
        table.add_row(r.name, r.scope or "-", " -> ".join(r.connectors), json.dumps(r.match))
    out.print(table)


@queue_app.command("list")
def queue_list(
    ctx: typer.Context,
    status: Annotated[list[str] | None, typer.Option("--status", help="Only this status (repeatable).")] = None,
    domain: Annotated[str | None, typer.Option("--domain", help="Only recipients at this domain.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=500)] = 100,
) -> None:
    """Counts by status, then the matching deliveries."""
    try:
        wanted = [DeliveryStatus(s) for s in status or []]
    except ValueError:
        known = ", ".join(s.value for s in DeliveryStatus)
        raise typer.BadParameter(f"known statuses: {known}", param_hint="--status") from None

    async def work(gw: Gateway) -> tuple[dict[str, int], list[DeliveryRecord]]:
        principal = _cli_principal()
        counts = await gw.outbound.queue_counts(principal)
        items = await gw.outbound.list_queue(principal, statuses=wanted, domain=domain, after=None, limit=limit)
        return counts, items

    counts, items = _run(_settings(ctx), work)
    out.print("  ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "queue empty")
    table = Table("delivery", "message", "recipient", "status", "attempts", "next attempt", "last reply")
    for d in items:
        table.add_row(
            d.id,
            d.message_id,
            d.recipient,
            d.status.value,
            str(d.attempts),
            "-" if d.status.final else d.next_attempt_at.isoformat(timespec="seconds"),
            (d.last_reply or "")[:60],
        )
    out.print(table)


def _queue_action(ctx: typer.Context, action: str, message_id: str) -> None:
    def call(gw: Gateway) -> Awaitable[MessageView]:
        method: Callable[[Principal, str], Awaitable[MessageView]] = getattr(gw.outbound, action)
        return method(_cli_principal(), message_id)

    view = _run(_settings(ctx), call)
    states = ", ".join(f"{d.recipient}: {d.status.value}" for d in view.deliveries)
    out.print(f"{message_id}: {states}")


@queue_app.command("hold")
def queue_hold(ctx: typer.Context, message_id: str) -> None:
    """Hold a message's queued and deferred deliveries."""
    _queue_action(ctx, "hold", message_id)


@queue_app.command("release")
def queue_release(ctx: typer.Context, message_id: str) -> None:
    """Release a held message: its deliveries are due at once."""
    _queue_action(ctx, "release", message_id)


@queue_app.command("cancel")
def queue_cancel(ctx: typer.Context, message_id: str) -> None:
    """Cancel every delivery of a message that is not sent yet."""
    _queue_action(ctx, "cancel", message_id)


@queue_app.command("retry")
def queue_retry(
    ctx: typer.Context,
    message_id: Annotated[
        str | None, typer.Argument(help="One message; omit to retry every deferred delivery.")
    ] = None,
    domain: Annotated[str | None, typer.Option("--domain", help="Only deliveries to this domain.")] = None,
) -> None:
    """Attempt deferred deliveries now instead of at their backoff time."""
    if message_id is not None:
        _queue_action(ctx, "retry", message_id)
        return
    count = _run(_settings(ctx), lambda gw: gw.outbound.retry_queue(_cli_principal(), domain=domain))
    out.print(f"{count} deferred deliveries are due now")


@apikeys_app.command("revoke")
def apikeys_revoke(ctx: typer.Context, key_id: str) -> None:
    """Revoke a key: it stops working at once."""
    key = _run(_settings(ctx), lambda gw: gw.admin.revoke_key(_cli_principal(), key_id))
    print(f"revoked {key.id}")


@audit_app.command("verify")
def audit_verify(ctx: typer.Context) -> None:
    """Walk the audit chain; exit 1 naming the first broken entry."""

    async def work(gw: Gateway) -> Any:
        total = await gw.admin.audit_size()
        with Progress(
            TextColumn("verifying audit chain"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=True,
            disable=not err.is_terminal,
        ) as bar:
            task = bar.add_task("verify", total=total)
            return await gw.admin.verify_audit(lambda n: bar.update(task, completed=n))

    result = _run(_settings(ctx), work)
    if result.ok:
        print(f"audit chain intact: {result.checked} entries verified")
        return
    print(
        f"audit chain BROKEN at entry {result.broken_seq}: {result.reason} "
        f"({result.checked} entries before it verified)"
    )
    raise typer.Exit(1)


@keys_app.command("rotate")
def keys_rotate(ctx: typer.Context) -> None:
    """Make a new master key active and re-wrap every data key under it; old data stays readable."""

    async def work(gw: Gateway) -> Any:
        result = await gw.keyring.rotate()
        await gw.admin.record(
            _cli_principal(),
            "keys.rotate",
            object_type="master_key",
            object_id=result.master_kid,
            details={"rewrapped": result.rewrapped, "data_key": result.data_key_id},
        )
        return result

    result = _run(_settings(ctx), work)
    print(
        f"master key {result.master_kid} active; {result.rewrapped} data keys re-wrapped; "
        f"new data key {result.data_key_id}"
    )


@dkim_app.command("generate")
def dkim_generate(
    ctx: typer.Context,
    domain: Annotated[str, typer.Option("--domain", help="The signing domain (d=).")],
    selector: Annotated[str | None, typer.Option("--selector", help="Selector (s=); default mgYYYYMM.")] = None,
    algorithm: Annotated[str, typer.Option("--algorithm", help="rsa (2048-bit) or ed25519.")] = "rsa",
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only for this tenant's mail.")] = None,
) -> None:
    """Make a DKIM key (stored encrypted); prints the DNS TXT record to publish, its value last."""
    chosen = selector or utcnow().strftime("mg%Y%m")

    async def work(gw: Gateway) -> str:
        tenant_id = (await gw.admin.get_tenant(_cli_principal(), tenant)).id if tenant else None
        return await gw.setup.generate_dkim(
            _cli_principal(), domain=domain, selector=chosen, algorithm=algorithm, tenant=tenant_id
        )

    value = _run(_settings(ctx), work)
    err.print(f"publish this TXT record at {chosen}._domainkey.{domain.lower().rstrip('.')}:")
    print(value)


def main() -> None:
    try:
        app()
    except ConfigurationError as exc:
        err.print(f"[red]error:[/red] {exc.detail}", highlight=False)
        sys.exit(2)
    except MailgateError as exc:
        err.print(f"[red]error:[/red] {exc.detail}", highlight=False)
        sys.exit(1)
