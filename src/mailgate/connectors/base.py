"""The two small interfaces every connector implements: Sender (outbound) and, later, Mailbox."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from mailgate.domain.delivery import DeliveryOutcome


class Sender(ABC):
    """Delivers one message to some recipients and reports an outcome for each of them.

    ``send`` never raises for anything the remote side or the network does: refusals, timeouts and
    dropped connections are outcomes (Deferred with ``connector_fault`` for path failures). Only
    programming errors escape.
    """

    name: str

    @abstractmethod
    async def send(self, mail_from: str, recipients: Sequence[str], message: bytes) -> dict[str, DeliveryOutcome]:
        """Deliver ``message`` (the full RFC 5322 bytes, CRLF line ends) from ``mail_from`` (may be "")."""

    async def close(self) -> None:  # noqa: B027 - optional: most senders hold nothing to release
        """Release pooled connections; the default has none."""
