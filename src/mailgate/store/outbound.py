"""Rows of the outbound pipeline, and the queue's claim statement.

The claim is one statement on both engines: ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP
LOCKED) RETURNING``. PostgreSQL skips rows other workers hold; SQLite ignores the locking clause and
is serialized by the writer's ``BEGIN IMMEDIATE`` instead. A lease makes a dead worker's rows due
again once it expires.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BindParameter, Row, and_, bindparam, case, delete, func, literal_column, or_, select, update
from sqlalchemy.exc import IntegrityError as DbIntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from mailgate.domain.delivery import DeliveryStatus
from mailgate.domain.errors import Conflict
from mailgate.domain.outbound import (
    GLOBAL_SCOPE,
    AttemptRecord,
    ConnectorSpec,
    DeliveryRecord,
    MessageRecord,
    RouteSpec,
    Suppression,
)
from mailgate.store.database import PIPELINED, insert_ignoring_duplicates
from mailgate.store.keyring import Keyring
from mailgate.store.schema import (
    attempts,
    connectors,
    deliveries,
    dkim_keys,
    idempotency_keys,
    messages,
    routes,
    suppressions,
)
from mailgate.store.types import utcnow

DUE = (DeliveryStatus.QUEUED.value, DeliveryStatus.DEFERRED.value)
STOPPED = (DeliveryStatus.HELD, DeliveryStatus.CANCELLED)


def _ctx(kind: str, ident: str) -> bytes:
    return f"{kind}:{ident}".encode()


# ----- connectors and routes -----


async def _connector(keyring: Keyring, row: Row[Any]) -> ConnectorSpec:
    config = json.loads(await keyring.unseal(row.config, _ctx("connector", row.id)))
    return ConnectorSpec(row.id, row.scope, row.name, row.type, config, row.created_at, row.updated_at)


async def put_connector(
    conn: AsyncConnection, keyring: Keyring, *, new_id: str, scope: str, name: str, type: str, config: dict[str, Any]
) -> tuple[ConnectorSpec, bool]:
    """Create or replace by (scope, name); returns the connector and whether it was created."""
    now = utcnow()
    existing = (
        await conn.execute(select(connectors.c.id).where(connectors.c.scope == scope, connectors.c.name == name))
    ).scalar_one_or_none()
    ident = existing or new_id
    sealed = keyring.seal(json.dumps(config).encode(), _ctx("connector", ident))
    if existing:
        await conn.execute(
            update(connectors).where(connectors.c.id == ident).values(type=type, config=sealed, updated_at=now)
        )
    else:
        await conn.execute(
            connectors.insert().values(
                id=ident, scope=scope, name=name, type=type, config=sealed, created_at=now, updated_at=now
            )
        )
    row = (await conn.execute(select(connectors).where(connectors.c.id == ident))).one()
    return await _connector(keyring, row), existing is None


async def list_connectors(conn: AsyncConnection, keyring: Keyring, scopes: Sequence[str] | None) -> list[ConnectorSpec]:
    """Connectors of the given scopes (None: all of them, for admins)."""
    query = select(connectors).order_by(connectors.c.scope, connectors.c.name)
    if scopes is not None:
        query = query.where(connectors.c.scope.in_(list(scopes)))
    return [await _connector(keyring, r) for r in (await conn.execute(query)).all()]


async def get_connector(conn: AsyncConnection, keyring: Keyring, ident: str) -> ConnectorSpec | None:
    row = (await conn.execute(select(connectors).where(connectors.c.id == ident))).first()
    return await _connector(keyring, row) if row else None


async def delete_connector(conn: AsyncConnection, ident: str) -> bool:
    return (await conn.execute(delete(connectors).where(connectors.c.id == ident))).rowcount == 1


def _route(row: Row[Any]) -> RouteSpec:
    return RouteSpec(
        row.id, row.scope, row.name, list(row.connectors["names"]), row.match, row.created_at, row.updated_at
    )


async def put_route(
    conn: AsyncConnection, *, new_id: str, scope: str, name: str, connector_names: list[str], match: dict[str, Any]
) -> tuple[RouteSpec, bool]:
    now = utcnow()
    existing = (
        await conn.execute(select(routes.c.id).where(routes.c.scope == scope, routes.c.name == name))
    ).scalar_one_or_none()
    values = {"connectors": {"names": connector_names}, "match": match, "updated_at": now}
    if existing:
        await conn.execute(update(routes).where(routes.c.id == existing).values(**values))
    else:
        await conn.execute(routes.insert().values(id=new_id, scope=scope, name=name, created_at=now, **values))
    row = (await conn.execute(select(routes).where(routes.c.id == (existing or new_id)))).one()
    return _route(row), existing is None


async def list_routes(conn: AsyncConnection, scopes: Sequence[str]) -> list[RouteSpec]:
    query = select(routes).where(routes.c.scope.in_(list(scopes))).order_by(routes.c.scope.desc(), routes.c.name)
    return [_route(r) for r in (await conn.execute(query)).all()]


async def delete_route(conn: AsyncConnection, scope: str, name: str) -> bool:
    result = await conn.execute(delete(routes).where(routes.c.scope == scope, routes.c.name == name))
    return result.rowcount == 1


# ----- messages and deliveries -----


async def insert_messages(conn: AsyncConnection, keyring: Keyring, records: Sequence[MessageRecord]) -> None:
    """The summary (subject, sender) is personal data: sealed like the message itself."""
    rows = [
        {
            "id": message.id,
            "tenant_id": message.tenant_id,
            "created_at": message.created_at,
            "mail_from": message.mail_from,
            "blob_id": message.blob_id,
            "size": message.size,
            "summary": keyring.seal(json.dumps(message.summary).encode(), _ctx("message", message.id)),
            "tags": {"tags": message.tags},
            "meta": message.meta,
            "route": message.route,
            "source": message.source,
        }
        for message in records
    ]
    if rows:
        await conn.execute(messages.insert(), rows, execution_options=PIPELINED)


async def get_message(conn: AsyncConnection, keyring: Keyring, ident: str) -> MessageRecord | None:
    row = (await conn.execute(select(messages).where(messages.c.id == ident))).first()
    return None if row is None else await _message(keyring, row)


async def get_messages(conn: AsyncConnection, keyring: Keyring, ids: Sequence[str]) -> dict[str, MessageRecord]:
    rows = (await conn.execute(select(messages).where(messages.c.id.in_(list(ids))))).all() if ids else []
    return {row.id: await _message(keyring, row) for row in rows}


async def _message(keyring: Keyring, row: Row[Any]) -> MessageRecord:
    summary = json.loads(await keyring.unseal(row.summary, _ctx("message", row.id)))
    return MessageRecord(
        row.id,
        row.tenant_id,
        row.created_at,
        row.mail_from,
        row.blob_id,
        row.size,
        summary,
        list(row.tags["tags"]),
        row.meta,
        row.route,
        row.source,
    )


def _delivery(row: Row[Any]) -> DeliveryRecord:
    return DeliveryRecord(
        id=row.id,
        message_id=row.message_id,
        tenant_id=row.tenant_id,
        recipient=row.recipient,
        domain=row.domain,
        status=DeliveryStatus(row.status),
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        last_reply=row.last_reply,
        last_connector=row.last_connector,
    )


async def insert_deliveries(conn: AsyncConnection, rows: Iterable[DeliveryRecord]) -> None:
    values = [
        {
            "id": d.id,
            "message_id": d.message_id,
            "tenant_id": d.tenant_id,
            "recipient": d.recipient,
            "domain": d.domain,
            "status": d.status.value,
            "attempts": d.attempts,
            "next_attempt_at": d.next_attempt_at,
            "created_at": d.created_at,
            "updated_at": d.updated_at,
            "last_reply": d.last_reply,
            "last_connector": d.last_connector,
        }
        for d in rows
    ]
    if values:
        await conn.execute(deliveries.insert(), values, execution_options=PIPELINED)


async def get_delivery(conn: AsyncConnection, delivery_id: str) -> DeliveryRecord | None:
    row = (await conn.execute(select(deliveries).where(deliveries.c.id == delivery_id))).first()
    return _delivery(row) if row else None


async def mark_bounced_after_sending(conn: AsyncConnection, delivery_id: str, reply: str) -> bool:
    """An asynchronous bounce: the next hop took the message (250), a later one refused it."""
    now = utcnow()
    result = await conn.execute(
        update(deliveries)
        .where(deliveries.c.id == delivery_id, deliveries.c.status == DeliveryStatus.SENT.value)
        .values(status=DeliveryStatus.BOUNCED.value, last_reply=reply, updated_at=now)
    )
    if result.rowcount != 1:
        return False
    await conn.execute(
        attempts.insert().values(
            delivery_id=delivery_id,
            at=now,
            connector=None,
            outcome=DeliveryStatus.BOUNCED.value,
            reply=reply,
            duration_ms=0,
        )
    )
    return True


async def deliveries_of(conn: AsyncConnection, message_id: str) -> list[DeliveryRecord]:
    query = select(deliveries).where(deliveries.c.message_id == message_id).order_by(deliveries.c.id)
    return [_delivery(r) for r in (await conn.execute(query)).all()]


async def attempts_of(conn: AsyncConnection, delivery_ids: Sequence[str]) -> dict[str, list[AttemptRecord]]:
    query = select(attempts).where(attempts.c.delivery_id.in_(list(delivery_ids))).order_by(attempts.c.id)
    out: dict[str, list[AttemptRecord]] = {d: [] for d in delivery_ids}
    for r in (await conn.execute(query)).all():
        out[r.delivery_id].append(AttemptRecord(r.at, r.connector, r.outcome, r.reply, r.duration_ms))
    return out


async def claim_due(
    conn: AsyncConnection, *, owner: str, now: datetime, lease: timedelta, limit: int
) -> list[DeliveryRecord]:
    due = (
        select(deliveries.c.id)
        .where(
            deliveries.c.status.in_(DUE),
            deliveries.c.next_attempt_at <= now,
            or_(deliveries.c.lease_expires_at.is_(None), deliveries.c.lease_expires_at < now),
        )
        .order_by(deliveries.c.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    result = await conn.execute(
        update(deliveries)
        .where(deliveries.c.id.in_(due.scalar_subquery()))
        .values(lease_owner=owner, lease_expires_at=now + lease)
        .returning(*deliveries.c)
    )
    return sorted((_delivery(r) for r in result.all()), key=lambda d: (d.message_id, d.id))


async def leased_by(conn: AsyncConnection, ids: Sequence[str], owner: str) -> set[str]:
    """Which of ``ids`` this worker still holds (locked until commit on PostgreSQL)."""
    if not ids:
        return set()
    query = select(deliveries.c.id).where(deliveries.c.id.in_(list(ids)), deliveries.c.lease_owner == owner)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return {r.id for r in (await conn.execute(query)).all()}


@dataclass(frozen=True, slots=True)
class AttemptResult:
    delivery_id: str
    status: DeliveryStatus
    next_attempt_at: datetime | None
    connector: str | None
    reply: str | None
    duration_ms: int


async def record_attempts(conn: AsyncConnection, results: Sequence[AttemptResult], owner: str) -> None:
    """Store many attempts' results with two statements. Callers pass only deliveries ``leased_by``
    says they hold; the lease condition is repeated in the update all the same."""
    if not results:
        return
    now = utcnow()
    # a hold or cancel made while the attempt was in flight survives its deferral; a final outcome (sent,
    # bounced, failed) is what happened and is recorded whatever the operator did meanwhile. Constants
    # are inlined: executemany cannot expand an IN list.
    stopped = or_(*(deliveries.c.status == literal_column(f"'{s.value}'") for s in STOPPED))
    new_status: BindParameter[str] = bindparam("b_status")
    await conn.execute(
        update(deliveries)
        .where(deliveries.c.id == bindparam("b_id"), deliveries.c.lease_owner == bindparam("b_owner"))
        .values(
            status=case(
                (
                    and_(new_status == DeliveryStatus.DEFERRED.value, stopped),
                    deliveries.c.status,
                ),
                else_=new_status,
            ),
            attempts=deliveries.c.attempts + 1,
            next_attempt_at=bindparam("b_next"),
            lease_owner=None,
            lease_expires_at=None,
            last_reply=bindparam("b_reply"),
            last_connector=bindparam("b_connector"),
            updated_at=now,
        ),
        [
            {
                "b_id": r.delivery_id,
                "b_owner": owner,
                "b_status": r.status.value,
                "b_next": r.next_attempt_at or now,
                "b_reply": r.reply,
                "b_connector": r.connector,
            }
            for r in results
        ],
        execution_options=PIPELINED,
    )
    await conn.execute(
        attempts.insert(),
        [
            {
                "delivery_id": r.delivery_id,
                "at": now,
                "connector": r.connector,
                "outcome": r.status.value,
                "reply": r.reply,
                "duration_ms": r.duration_ms,
            }
            for r in results
        ],
        execution_options=PIPELINED,
    )


async def set_status(
    conn: AsyncConnection,
    *,
    message_id: str,
    from_statuses: Sequence[DeliveryStatus],
    to: DeliveryStatus,
    delivery_id: str | None = None,
    next_attempt_at: datetime | None = None,
) -> list[str]:
    """Move deliveries between states (cancel, hold, release, retry now); returns the ids moved."""
    now = utcnow()
    conditions = [deliveries.c.message_id == message_id, deliveries.c.status.in_([s.value for s in from_statuses])]
    if delivery_id is not None:
        conditions.append(deliveries.c.id == delivery_id)
    values: dict[str, Any] = {"status": to.value, "updated_at": now}
    if next_attempt_at is not None:
        values["next_attempt_at"] = next_attempt_at
    result = await conn.execute(update(deliveries).where(and_(*conditions)).values(**values).returning(deliveries.c.id))
    return [r.id for r in result.all()]


async def list_deliveries(
    conn: AsyncConnection,
    *,
    tenant_id: str | None,
    statuses: Sequence[DeliveryStatus],
    domain: str | None,
    after: str | None,
    limit: int,
) -> list[DeliveryRecord]:
    query = select(deliveries).order_by(deliveries.c.id).limit(limit)
    if tenant_id is not None:
        query = query.where(deliveries.c.tenant_id == tenant_id)
    if statuses:
        query = query.where(deliveries.c.status.in_([s.value for s in statuses]))
    if domain:
        query = query.where(deliveries.c.domain == domain)
    if after:
        query = query.where(deliveries.c.id > after)
    return [_delivery(r) for r in (await conn.execute(query)).all()]


async def retry_now(conn: AsyncConnection, *, tenant_id: str | None, domain: str | None, now: datetime) -> int:
    """Make every deferred delivery (of a tenant, to a domain) due at once: after an outage is fixed."""
    conditions = [deliveries.c.status == DeliveryStatus.DEFERRED.value, deliveries.c.next_attempt_at > now]
    if tenant_id is not None:
        conditions.append(deliveries.c.tenant_id == tenant_id)
    if domain:
        conditions.append(deliveries.c.domain == domain)
    result = await conn.execute(update(deliveries).where(and_(*conditions)).values(next_attempt_at=now, updated_at=now))
    return int(result.rowcount or 0)


async def queue_counts(conn: AsyncConnection, tenant_id: str | None) -> dict[str, int]:
    query = select(deliveries.c.status, func.count()).group_by(deliveries.c.status)
    if tenant_id is not None:
        query = query.where(deliveries.c.tenant_id == tenant_id)
    return {status: int(n) for status, n in (await conn.execute(query)).all()}


# ----- suppressions -----


async def add_suppression(
    conn: AsyncConnection, tenant_id: str, address: str, reason: str, detail: str | None = None
) -> bool:
    try:
        async with conn.begin_nested():
            await conn.execute(
                suppressions.insert().values(
                    tenant_id=tenant_id, address=address, reason=reason, detail=detail, created_at=utcnow()
                )
            )
    except DbIntegrityError:
        return False
    return True


async def add_suppressions(conn: AsyncConnection, tenant_id: str, rows: Sequence[tuple[str, str, str | None]]) -> int:
    """Add (address, reason, detail) rows with one statement; addresses already listed keep their
    entry. Returns how many were new."""
    unique = {address: (address, reason, detail) for address, reason, detail in rows}
    if not unique:
        return 0
    existing = set(await suppressed_among(conn, tenant_id, list(unique)))
    fresh = [row for address, row in unique.items() if address not in existing]
    if fresh:
        at = utcnow()
        await conn.execute(
            insert_ignoring_duplicates(conn, suppressions),
            [{"tenant_id": tenant_id, "address": a, "reason": r, "detail": d, "created_at": at} for a, r, d in fresh],
        )
    return len(fresh)


async def remove_suppression(conn: AsyncConnection, tenant_id: str, address: str) -> bool:
    result = await conn.execute(
        delete(suppressions).where(suppressions.c.tenant_id == tenant_id, suppressions.c.address == address)
    )
    return result.rowcount == 1


async def suppressed_among(conn: AsyncConnection, tenant_id: str, addresses: Sequence[str]) -> set[str]:
    query = select(suppressions.c.address).where(
        suppressions.c.tenant_id == tenant_id, suppressions.c.address.in_(list(addresses))
    )
    return {r.address for r in (await conn.execute(query)).all()}


async def list_suppressions(
    conn: AsyncConnection, tenant_id: str, *, after: str | None, limit: int
) -> list[Suppression]:
    query = select(suppressions).where(suppressions.c.tenant_id == tenant_id).order_by(suppressions.c.address)
    if after is not None:
        query = query.where(suppressions.c.address > after)
    rows = (await conn.execute(query.limit(limit))).all()
    return [Suppression(r.address, r.reason, r.created_at, r.detail) for r in rows]


# ----- idempotency -----


async def claim_idempotency_key(
    conn: AsyncConnection, tenant_id: str, key: str, request_hash: str, not_before: datetime
) -> tuple[str, dict[str, Any] | None] | None:
    """Reserve ``key``; None if it is ours now, else (its request hash, its stored response or None
    while the first request is still in flight). Keys older than ``not_before`` are replaced."""
    await conn.execute(
        delete(idempotency_keys).where(
            idempotency_keys.c.tenant_id == tenant_id,
            idempotency_keys.c.key == key,
            idempotency_keys.c.created_at < not_before,
        )
    )
    try:
        async with conn.begin_nested():
            await conn.execute(
                idempotency_keys.insert().values(
                    tenant_id=tenant_id, key=key, request_hash=request_hash, response=None, created_at=utcnow()
                )
            )
    except DbIntegrityError:
        row = (
            await conn.execute(
                select(idempotency_keys).where(idempotency_keys.c.tenant_id == tenant_id, idempotency_keys.c.key == key)
            )
        ).one()
        return row.request_hash, row.response
    return None


async def complete_idempotency_key(conn: AsyncConnection, tenant_id: str, key: str, response: dict[str, Any]) -> None:
    await conn.execute(
        update(idempotency_keys)
        .where(idempotency_keys.c.tenant_id == tenant_id, idempotency_keys.c.key == key)
        .values(response=response)
    )


def conflict_for_key(key: str) -> Conflict:
    return Conflict(f"Idempotency-Key {key!r} was used with a different request")


# ----- DKIM keys -----


@dataclass(frozen=True, slots=True)
class DkimKeyRow:
    id: str
    domain: str
    selector: str
    sealed_pem: bytes


async def insert_dkim_key(
    conn: AsyncConnection,
    *,
    key_id: str,
    scope: str,
    domain: str,
    selector: str,
    algorithm: str,
    sealed_pem: bytes,
    dns_value: str,
) -> bool:
    """False when (domain, selector) already has a key: a selector is never reused for another key."""
    try:
        async with conn.begin_nested():
            await conn.execute(
                dkim_keys.insert().values(
                    id=key_id,
                    scope=scope,
                    domain=domain,
                    selector=selector,
                    algorithm=algorithm,
                    private_key=sealed_pem,
                    dns_value=dns_value,
                    active=True,
                    created_at=utcnow(),
                )
            )
    except DbIntegrityError:
        return False
    return True


async def signing_key(conn: AsyncConnection, domain: str, tenant_id: str) -> DkimKeyRow | None:
    """The newest active key for ``domain``: the tenant's own first, else a global one."""
    rows = (
        await conn.execute(
            select(dkim_keys)
            .where(
                dkim_keys.c.domain == domain.lower(),
                dkim_keys.c.active.is_(True),
                dkim_keys.c.scope.in_([tenant_id, GLOBAL_SCOPE]),
            )
            .order_by(dkim_keys.c.created_at.desc())
        )
    ).all()
    if not rows:
        return None
    row = next((r for r in rows if r.scope == tenant_id), rows[0])
    return DkimKeyRow(row.id, row.domain, row.selector, row.private_key)
