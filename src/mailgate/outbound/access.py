"""Who may do what in the outbound pipeline, and the checks every entry point starts with."""

from __future__ import annotations

from collections.abc import Sequence

from mailgate.domain.address import Address, normalize, parse_address
from mailgate.domain.errors import InvalidInput, NotFound, PermissionDenied
from mailgate.domain.outbound import GLOBAL_SCOPE
from mailgate.domain.tenancy import Principal, Scope


def require(principal: Principal, scope: Scope) -> None:
    if not principal.can(scope):
        raise PermissionDenied(f"this key lacks the {scope.value!r} scope")


def tenant_of(principal: Principal) -> str:
    if principal.tenant_id is None:
        raise InvalidInput("this key belongs to no tenant; use a tenant's key to send or manage its mail")
    return principal.tenant_id


def addresses(values: Sequence[str], field_name: str) -> list[Address]:
    out = []
    for i, value in enumerate(values):
        try:
            out.append(parse_address(value))
        except ValueError as exc:
            raise InvalidInput(f"{field_name}[{i}]: {exc}", field=f"{field_name}[{i}]") from None
    return out


def suppression_key(addr_spec: str) -> str:
    """Suppression matches ignore case entirely: mailbox providers treat local parts that way, and a
    bounce for ``John@`` must stop mail to ``john@``."""
    return normalize(addr_spec).lower()


def scope_for(principal: Principal, tenant: str | None) -> str:
    """Global objects need admin; a tenant's own objects need manage on that tenant."""
    if tenant is None:
        require(principal, Scope.ADMIN)
        return GLOBAL_SCOPE
    if not principal.sees_tenant(tenant):
        raise NotFound("tenant", tenant)
    require(principal, Scope.MANAGE)
    return tenant
