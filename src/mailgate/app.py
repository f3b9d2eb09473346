"""Wiring: settings -> store -> keyring -> services, and the roles a node runs.

Everything is built here once; no other module constructs services, so a test can build a Gateway on
any data dir or database and get exactly what ``mailgate serve`` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from contextlib import nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
import uvicorn
from pydantic import TypeAdapter, ValidationError

from mailgate import __version__
from mailgate.admin.service import AdminService
from mailgate.admin.smtp_credentials import SmtpCredentials
from mailgate.api.app import create_app
from mailgate.api.schemas.outbound import ConnectorIn
from mailgate.config import Settings, parse_hostport
from mailgate.connectors.dns import DnsResolver
from mailgate.connectors.registry import ConnectorFactory
from mailgate.domain.errors import ConfigurationError, MailgateError, Unavailable
from mailgate.domain.inbound import SpamThresholds
from mailgate.domain.outbound import ConnectorSpec
from mailgate.domain.records import EventType
from mailgate.domain.tenancy import SYSTEM
from mailgate.inbound.auth import SenderAuthenticator
from mailgate.inbound.mail import MailService
from mailgate.inbound.mailboxes import MailboxService
from mailgate.inbound.service import InboundService, PendingMail
from mailgate.inbound.spam import SpamScorer
from mailgate.observability.logging import configure_logging, get_logger
from mailgate.observability.metrics import BUILD_INFO, CONNECTOR_STATE, REGISTRY, ROLE_UP, WORKERS
from mailgate.observability.worker_metrics import SNAPSHOT_SECONDS, snapshot
from mailgate.outbound.bounces import BounceService
from mailgate.outbound.retry import RetryPolicy
from mailgate.outbound.routing.breaker import BreakerState
from mailgate.outbound.routing.router import Router
from mailgate.outbound.service import OutboundService
from mailgate.outbound.setup import OutboundSetup
from mailgate.outbound.suppressions import SuppressionService
from mailgate.outbound.templates import TemplateService
from mailgate.outbound.verp import VerpCodec
from mailgate.outbound.worker import DeliveryWorker, WorkerSettings
from mailgate.security.blind_index import BlindIndex
from mailgate.security.masterkeys import load_master_keys
from mailgate.security.tls import TlsMaterial, ensure_tls
from mailgate.servers.listen import bind_listener
from mailgate.servers.processes import Link, NodeGone, WorkerPool
from mailgate.servers.smtp.mx import MxOptions, start_mx
from mailgate.servers.smtp.shared_limits import LimitTable
from mailgate.servers.smtp.submission import SubmissionHandler, SubmissionOptions, start_submission
from mailgate.store.blobs import BlobStore
from mailgate.store.database import Database
from mailgate.store.keyring import Keyring

log = get_logger("mailgate")

MX_AUTO_PROCESSES = 4  # mx.processes = 0: one per core, up to this many (each holds its own caches and pool)
# which row of the MX connection counts this process keeps: 0 in the node's process, N in worker N
_WORKER_ROW: ContextVar[int] = ContextVar("mailgate_mx_worker_row", default=0)


@dataclass
class Gateway:
    settings: Settings
    db: Database
    keyring: Keyring
    blobs: BlobStore
    admin: AdminService
    outbound: OutboundService
    setup: OutboundSetup
    suppressions: SuppressionService
    bounces: BounceService
    templates: TemplateService
    smtp_credentials: SmtpCredentials
    connectors: ConnectorFactory
    tls: TlsMaterial
    mailboxes: MailboxService
    mail: MailService
    inbound: InboundService
    spam: SpamScorer

    @classmethod
    async def open(cls, settings: Settings, *, migrate: bool | None = None) -> Gateway:
        """Open the store (migrating it unless told not to) and build every service."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(
            settings.database_url,
            pool_size=settings.database.pool_size,
            busy_timeout_ms=settings.database.busy_timeout_ms,
        )
        try:
            if settings.database.migrate_on_start if migrate is None else migrate:
                await db.upgrade()
            elif not await db.is_current():
                raise ConfigurationError("database schema is not current: run `mailgate db upgrade`")
            secret = settings.master_key.get_secret_value() if settings.master_key else None
            masters, key_file = load_master_keys(secret, settings.data_dir)
            keyring = Keyring(db, masters, key_file)
            await keyring.load()
        except BaseException:
            await db.dispose()
            raise
        location = settings.blobs.backend
        if location == "auto":
            location = "file" if db.dialect == "sqlite" else "database"
        blobs = BlobStore(db, keyring, location, settings.data_dir / "blobs", inline_max=settings.blobs.inline_max)
        tls = ensure_tls(settings.data_dir, settings.tls.cert_file, settings.tls.key_file, settings.tls.hostname)
        admin = AdminService(db, keyring)
        servers = [parse_hostport(s, 53) for s in settings.dns.servers]
        resolver = DnsResolver(servers, timeout=settings.dns.timeout)
        connectors = ConnectorFactory(resolver)
        templates = TemplateService(db, admin)
        outbound = OutboundService(
            db,
            keyring,
            blobs,
            admin,
            templates=templates,
            hostname=settings.tls.hostname,
        )
        setup = OutboundSetup(db, keyring, admin, validate_connector=connectors)
        setup.config_changed.append(outbound.forget_signers)
        verp = (
            VerpCodec(keyring.subkey("verp"), settings.bounces.domain, settings.bounces.local_prefix)
            if settings.bounces.domain
            else None
        )
        bounces = BounceService(db, admin, verp)
        suppressions = SuppressionService(db, admin)
        smtp_credentials = SmtpCredentials(db, keyring, admin)
        spam_settings = settings.spam
        thresholds = SpamThresholds(tag=spam_settings.tag, junk=spam_settings.junk, reject=spam_settings.reject)
        mailboxes = MailboxService(db, keyring, admin, blobs, spam_defaults=thresholds)
        index = BlindIndex(keyring.subkey("search"))
        spam = SpamScorer(
            rspamd_url=spam_settings.rspamd_url,
            spamd=parse_hostport(spam_settings.spamd, 783) if spam_settings.spamd else None,
            timeout=spam_settings.timeout,
        )
        hostname = settings.mx.hostname or settings.tls.hostname

        async def to_bounces(raw: bytes, to: Sequence[str]) -> object:
            return await bounces.process(SYSTEM, raw, to)

        inbound = InboundService(
            db,
            keyring,
            admin,
            blobs,
            index,
            authenticator=SenderAuthenticator(
                DnsResolver(servers, timeout=settings.dns.timeout, cache_size=settings.dns.cache_size),
                authserv_id=hostname,
                timeout=settings.dns.timeout,
            ),
            spam=spam,
            hostname=hostname,
            spam_defaults=thresholds,
            bounce_domain=settings.bounces.domain,
            bounce_sink=to_bounces if verp is not None else None,
            plus=settings.mx.plus_separator,
        )
        mailboxes.changed.append(inbound.forget_directory)
        return cls(
            settings,
            db,
            keyring,
            blobs,
            admin,
            outbound,
            setup,
            suppressions,
            bounces,
            templates,
            smtp_credentials,
            connectors,
            tls,
            mailboxes,
            MailService(db, keyring, admin, blobs, index),
            inbound,
            spam,
        )

    def delivery_worker(self) -> DeliveryWorker:
        """A worker with its own router (connector pools and breakers live per worker)."""
        q = self.settings.queue
        router = Router(
            self.db,
            self.keyring,
            self.connectors,
            on_breaker_change=self._breaker_changed,
            breaker_threshold=q.breaker_threshold,
            breaker_cooldown=q.breaker_cooldown,
        )
        self.setup.config_changed.append(router.invalidate)
        policy = RetryPolicy(first_delay=q.first_retry_delay, max_delay=q.max_retry_delay, max_age=q.max_age)
        settings = WorkerSettings(
            batch=q.batch, parallel=q.parallel, lease=timedelta(seconds=q.lease), poll_interval=q.poll_interval
        )
        return DeliveryWorker(
            self.db,
            self.keyring,
            self.blobs,
            self.admin,
            self.outbound,
            router,
            policy,
            settings,
            return_path=self.bounces.return_path if self.bounces.verp else None,
        )

    def _breaker_changed(self, spec: ConnectorSpec, old: BreakerState, new: BreakerState) -> None:
        up = new == BreakerState.CLOSED
        CONNECTOR_STATE.labels(spec.name).set(1 if up else 0)
        if new == BreakerState.HALF_OPEN:
            log.info("connector probing", connector=spec.name)
            return
        if old == BreakerState.HALF_OPEN and new == BreakerState.OPEN:
            log.info("connector probe failed; still down", connector=spec.name)  # down was reported already
            return
        log.warning("connector down" if not up else "connector up", connector=spec.name, previous=old.value)
        event = EventType.CONNECTOR_UP if up else EventType.CONNECTOR_DOWN
        asyncio.get_running_loop().create_task(self._emit_connector(event, spec))

    async def _emit_connector(self, event: EventType, spec: ConnectorSpec) -> None:
        try:
            await self.admin.record_event(
                event, tenant_id=spec.scope or None, object_id=spec.id, data={"connector": spec.name, "type": spec.type}
            )
        except MailgateError as exc:
            log.error("could not record connector event", error=exc.detail, event_type=event.value)

    async def close(self) -> None:
        await self.spam.aclose()
        await self.db.dispose()


Role = Callable[[Gateway, asyncio.Event], Awaitable[None]]


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn inside our loop: the node, not uvicorn, owns the signal handlers."""

    def capture_signals(self) -> Any:
        return nullcontext()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def run_api(gw: Gateway, stop: asyncio.Event) -> None:
    settings = gw.settings
    host, port = parse_hostport(settings.http.listen)
    use_tls = settings.http.tls == "on" or (settings.http.tls == "auto" and not _is_loopback(host))
    sock = bind_listener(host, port)
    app = create_app(
        db=gw.db,
        admin=gw.admin,
        outbound=gw.outbound,
        smtp_credentials=gw.smtp_credentials,
        templates=gw.templates,
        setup=gw.setup,
        suppressions=gw.suppressions,
        bounces=gw.bounces,
        mailbox_service=gw.mailboxes,
        mail_service=gw.mail,
        max_wait=settings.events.max_wait,
        max_body=settings.http.max_body_size,
    )
    tls_args: dict[str, Any] = (
        {"ssl_certfile": str(gw.tls.cert_file), "ssl_keyfile": str(gw.tls.key_file)} if use_tls else {}
    )
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=int(settings.server.shutdown_timeout),
        **tls_args,
    )
    server = _EmbeddedUvicorn(config)
    shown_host = f"[{host}]" if ":" in host else host
    url = settings.http.public_url or f"{'https' if use_tls else 'http'}://{shown_host}:{sock.getsockname()[1]}"
    task = asyncio.create_task(server.serve(sockets=[sock]))
    print(f"mailgate API: {url}  (docs: {url}/docs)", flush=True)
    log.info("api listening", url=url, tls=use_tls)
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    stopper.cancel()
    await task


async def run_worker(gw: Gateway, stop: asyncio.Event) -> None:
    await gw.delivery_worker().run(stop)


async def run_submission(gw: Gateway, stop: asyncio.Event) -> None:
    """The SMTP submission listener(s): STARTTLS on ``listen``, implicit TLS on ``tls_listen``."""
    sub = gw.settings.submission
    handler = SubmissionHandler(
        gw.outbound.send_raw,
        gw.smtp_credentials.authenticate,
        SubmissionOptions(
            hostname=sub.hostname,
            max_message_size=sub.max_message_size,
            max_recipients=sub.max_recipients,
            allow_plaintext_auth=sub.allow_plaintext_auth,
        ),
    )
    context = gw.tls.server_context()
    servers = []
    for listen, implicit in ((sub.listen, False), (sub.tls_listen, True)):
        if not listen:
            continue
        host, port = parse_hostport(listen)
        sock = bind_listener(host, port)
        servers.append(await start_submission(handler, sock, tls_context=context, implicit_tls=implicit))
        bound = sock.getsockname()
        log.info("submission listening", host=bound[0], port=bound[1], tls="implicit" if implicit else "starttls")
    try:
        await stop.wait()
    finally:
        for server in servers:
            server.close()
        for server in servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), gw.settings.server.shutdown_timeout)


def mx_processes(settings: Settings) -> int:
    """How many processes serve the MX listener, the node's own included."""
    return settings.mx.processes or min(os.cpu_count() or 1, MX_AUTO_PROCESSES)


async def run_mx(gw: Gateway, stop: asyncio.Event) -> None:
    """The inbound MX listener: STARTTLS with the node's certificate, recipients checked at RCPT; served
    by this process and ``mx.processes`` - 1 workers on the same socket."""
    mx = gw.settings.mx
    if not mx.listen:
        await stop.wait()
        return
    host, port = parse_hostport(mx.listen)
    sock = bind_listener(host, port)
    count = mx_processes(gw.settings)
    if count == 1:
        await _serve_mx(gw, sock, None, stop)
        return
    table = LimitTable(count)
    # SQLite has one writer at a time: workers hand their messages to this process, which commits them
    # in its group commit, rather than queue for the write lock behind each other's transactions
    pool = WorkerPool(
        "mx",
        mx_worker,
        (gw.settings, sock, table),
        count - 1,
        on_message=lambda index, message: _from_mx_worker(gw, index, message),
        on_exit=lambda index: _mx_worker_gone(table, index),
        handlers={"store": gw.inbound.store} if gw.db.dialect == "sqlite" else {},
    )

    def forget() -> None:
        pool.send_all(("forget",))

    gw.mailboxes.changed.append(forget)
    try:
        await pool.start()
        await _serve_mx(gw, sock, table, stop)
    finally:
        gw.mailboxes.changed.remove(forget)
        await pool.stop(gw.settings.server.shutdown_timeout)


def _mx_worker_gone(table: LimitTable, index: int) -> None:
    table.clear_row(index)  # the connections it held are closed with it
    WORKERS.retire(index)


def _from_mx_worker(gw: Gateway, index: int, message: tuple[Any, ...]) -> None:
    kind = message[0]
    if kind == "events":
        gw.db.events_committed_elsewhere()
    elif kind == "metrics":
        WORKERS.update(index, message[1])
    else:
        log.warning("unknown message from an mx worker", worker=index, kind=str(kind))


async def _serve_mx(gw: Gateway, sock: socket.socket, table: LimitTable | None, stop: asyncio.Event) -> None:
    """Serve the MX on ``sock`` until ``stop``; ``table`` holds the connection counts when other
    processes serve the same socket (this process is its row 0, or the worker's number)."""
    mx = gw.settings.mx
    options = MxOptions(
        hostname=mx.hostname or gw.settings.tls.hostname,
        max_message_size=mx.max_message_size,
        max_recipients=mx.max_recipients,
        command_timeout=mx.command_timeout,
        data_timeout=mx.data_timeout,
        max_connections_per_ip=mx.max_connections_per_ip,
        max_connections=mx.max_connections,
        require_tls=mx.require_tls,
    )
    row = _WORKER_ROW.get()
    limits = (
        table.limits(row, per_ip=options.max_connections_per_ip, total=options.max_connections)
        if table is not None
        else None
    )
    server = await start_mx(gw.inbound, sock, tls_context=gw.tls.server_context(), options=options, limits=limits)
    bound = sock.getsockname()
    log.info("mx listening", host=bound[0], port=bound[1], process=row)
    try:
        await stop.wait()
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), gw.settings.server.shutdown_timeout)


def mx_worker(link: Link, settings: Settings, sock: socket.socket, table: LimitTable) -> None:
    """A worker process of the MX role (see ``servers.processes``): its own gateway on the node's store."""
    configure_logging(settings.log_format, settings.log_level)
    structlog.contextvars.bind_contextvars(process=f"mx-{link.index}")
    _WORKER_ROW.set(link.index)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_mx_worker(link, settings, sock, table))


async def _mx_worker(link: Link, settings: Settings, sock: socket.socket, table: LimitTable) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    gw = await Gateway.open(settings, migrate=False)

    def from_node(message: tuple[Any, ...]) -> None:
        if message[0] == "forget":
            gw.inbound.forget_directory()
        elif message[0] == "stop":
            stop.set()

    async def report_metrics() -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_SECONDS)
            link.send(("metrics", snapshot(REGISTRY)))

    async def through_node(pending: PendingMail) -> None:
        try:
            await link.call("store", pending)
        except NodeGone as exc:
            raise Unavailable(str(exc)) from None

    await link.open(from_node, stop.set)
    if gw.db.dialect == "sqlite":
        gw.inbound.commit_through(through_node)
    gw.db.on_events_committed(lambda: link.send(("events",)))
    reporter = asyncio.create_task(report_metrics())
    try:
        await _serve_mx(gw, sock, table, stop)
    finally:
        reporter.cancel()
        link.send(("metrics", snapshot(REGISTRY)))
        await gw.close()
        await link.close()


ROLES: dict[str, Role] = {"api": run_api, "worker": run_worker, "submission": run_submission, "mx": run_mx}


def resolve_roles(requested: list[str]) -> list[str]:
    names = [r.strip().lower() for r in requested if r.strip()]
    if not names or "all" in names:
        return list(ROLES)
    unknown = [r for r in names if r not in ROLES]
    if unknown:
        raise ConfigurationError(f"unknown role(s) {', '.join(unknown)}; known: all, {', '.join(ROLES)}")
    return list(dict.fromkeys(names))


async def apply_declared_connectors(gw: Gateway) -> None:
    """Create or update the connectors and routes the configuration declares (global ones); an invalid
    one stops the start, naming it. Unchanged ones are left alone (no audit entry, no router reload)."""
    settings = gw.settings
    if not settings.connectors and not settings.routes:
        return
    adapter: TypeAdapter[ConnectorIn] = TypeAdapter(ConnectorIn)
    existing = {c.name: c for c in await gw.setup.list_connectors(SYSTEM) if not c.scope}
    for index, declared in enumerate(settings.connectors):
        label = f"connectors[{index}] ({declared.get('name', '?')})"
        try:
            body = adapter.validate_python(declared)
        except ValidationError as exc:
            raise ConfigurationError(f"{label}: {_first_error(exc)}") from None
        if body.tenant is not None:
            raise ConfigurationError(f"{label}: connectors in the configuration are global; drop 'tenant'")
        config = body.config()
        current = existing.get(body.name)
        if current is not None and current.type == body.type and current.config == config:
            continue
        try:
            await gw.setup.put_connector(SYSTEM, name=body.name, type=body.type, config=config)
        except MailgateError as exc:
            raise ConfigurationError(f"{label}: {exc.detail}") from None
    routes = {r.name: r for r in await gw.setup.list_routes(SYSTEM) if not r.scope}
    for name, connectors in settings.routes.items():
        current_route = routes.get(name)
        if current_route is not None and list(current_route.connectors) == connectors:
            continue
        try:
            await gw.setup.put_route(SYSTEM, name=name, connectors=connectors, match={})
        except MailgateError as exc:
            raise ConfigurationError(f"routes.{name}: {exc.detail}") from None
    log.info("declared connectors applied", connectors=len(settings.connectors), routes=len(settings.routes))


def _first_error(exc: ValidationError) -> str:
    item = exc.errors()[0]
    where = ".".join(str(p) for p in item["loc"])
    return f"{where}: {item['msg']}" if where else str(item["msg"])


async def serve(settings: Settings, roles: list[str]) -> None:
    """Run the node until SIGTERM/SIGINT, then stop every role gracefully."""
    names = resolve_roles(roles)
    gw = await Gateway.open(settings)
    try:
        BUILD_INFO.labels(__version__).set(1)
        log.info(
            "tls certificate", file=str(gw.tls.cert_file), fingerprint=gw.tls.fingerprint, generated=gw.tls.generated
        )
        await apply_declared_connectors(gw)
        token = await gw.admin.bootstrap_admin_key()
        if token:
            print(f"admin API key: {token}", flush=True)
            print("  (shown once; it is stored hashed. Keep it safe.)", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        tasks = {asyncio.ensure_future(ROLES[name](gw, stop)) for name in names}
        for name in names:
            ROLE_UP.labels(name).set(1)
        log.info("node started", roles=names, database=gw.db.dialect, version=__version__)
        waiter = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({*tasks, waiter}, return_when=asyncio.FIRST_COMPLETED)
        failed = [t for t in done if t is not waiter and t.exception() is not None]
        stop.set()
        log.info("stopping", reason="role failed" if failed else "signal")
        _, pending = await asyncio.wait(tasks, timeout=settings.server.shutdown_timeout)
        for late in pending:
            late.cancel()
        for name in names:
            ROLE_UP.labels(name).set(0)
        for role_task in failed:
            exc = role_task.exception()
            assert exc is not None
            raise exc
    finally:
        await gw.close()
    log.info("stopped")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    if sys.platform == "win32":
        return None
    import uvloop

    return uvloop.new_event_loop


def run_serve(settings: Settings, roles: list[str]) -> None:
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(settings, roles))
