"""One error hierarchy for the whole gateway.

Services raise these; each edge (HTTP, SMTP, CLI) maps a class to its own wire form in one table,
so a new error never needs a new ``except`` in a route.

    MailgateError
    ├── NotFound            the object does not exist *for the caller* (other tenants' objects too)
    ├── AuthenticationFailed
    ├── PermissionDenied
    ├── Conflict
    ├── InvalidInput
    ├── ConfigurationError
    ├── Unavailable         a dependency (database, disk) cannot serve the request now
    └── IntegrityError      stored data failed a check (audit chain, ciphertext tag)
"""

from __future__ import annotations


class MailgateError(Exception):
    """Base of every error mailgate raises on purpose."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(MailgateError):
    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} {ident!r} not found")
        self.kind = kind
        self.ident = ident


class AuthenticationFailed(MailgateError):
    pass


class PermissionDenied(MailgateError):
    pass


class Conflict(MailgateError):
    pass


class InvalidInput(MailgateError):
    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.field = field


class ConfigurationError(MailgateError):
    pass


class Unavailable(MailgateError):
    pass


class IntegrityError(MailgateError):
    pass
