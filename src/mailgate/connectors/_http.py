"""What the HTTP mail APIs (Graph, Gmail) have in common: one call sends the message to everyone in
its headers, an OAuth2 bearer token authorizes it, and the answer is an HTTP status plus a JSON error.

Both APIs take the MIME message and deliver it to the addresses in its To, Cc and Bcc headers; there
is no envelope. The queue, however, hands a connector an envelope: the recipients due now. The two
agree only when the copy sent to the API names exactly those recipients, which ``api_copy`` arranges
(or refuses). Both services treat a Bcc header as blind recipients and keep it out of the copies
they deliver.
"""

from __future__ import annotations

import asyncio
import email.utils
from abc import abstractmethod
from collections.abc import Sequence
from datetime import UTC, datetime
from email.parser import HeaderParser
from email.policy import compat32
from enum import Enum

import httpx2

from mailgate.connectors._smtp import address_problem
from mailgate.connectors.base import Sender
from mailgate.connectors.oauth2 import TokenError, TokenManager, http_client
from mailgate.domain.delivery import Bounced, Deferred, Delivered, DeliveryOutcome, Failed, Reply

# A Retry-After beyond this is an outage, not throttling; the queue's backoff handles those better
# than a connector that stays silent for hours.
MAX_HOLD = 900.0


class Verdict(Enum):
    """How an API error answer is treated; each maps to one outcome and one SMTP-style reply, so an
    operator reads Graph and Gmail failures in the same vocabulary as SMTP ones."""

    THROTTLED = "throttled"  # 429 and quota answers: wait, count against the connector
    UNAVAILABLE = "unavailable"  # 5xx: the service is down or overloaded
    MISCONFIGURED = "misconfigured"  # credentials, permissions, unknown mailbox: an operator must act
    BAD_RECIPIENT = "bad_recipient"  # the service refused an address
    TOO_BIG = "too_big"
    BAD_MESSAGE = "bad_message"  # the service refused the content


def api_copy(message: bytes, recipients: Sequence[str], service: str) -> bytes | str:
    """The message as it must be uploaded so that exactly ``recipients`` receive it, or why that is
    impossible.

    Recipients missing from To/Cc (Bcc recipients, whose header the submitter removed as RFC 5322
    asks) are written into a Bcc header of the uploaded copy; any Bcc header the message already had
    is replaced, so a Bcc address the queue did not ask for now is not mailed again. A To or Cc
    address that is not a recipient (suppressed, routed elsewhere, already delivered, or a list
    address the submitter expanded) cannot be left out without changing what every reader sees, so
    such a message is refused rather than mailed to someone the queue did not choose.
    """
    end = message.find(b"\r\n\r\n")
    head, body = (message[: end + 2], message[end + 2 :]) if end >= 0 else (message, b"")
    headers = HeaderParser(policy=compat32).parsestr(head.decode("utf-8", "surrogateescape"), headersonly=True)
    fields = [*headers.get_all("To", []), *headers.get_all("Cc", [])]
    visible = [addr for _, addr in email.utils.getaddresses([str(f) for f in fields]) if addr]
    wanted = {r.lower() for r in recipients}
    strays = list(dict.fromkeys(a for a in visible if a.lower() not in wanted))
    if strays:
        verb = "is" if len(strays) == 1 else "are"
        return (
            f"{service} delivers to every To and Cc address of the message, and {', '.join(strays)} "
            f"{verb} not among the recipients of this delivery (suppressed, routed elsewhere or already "
            "delivered); sending would mail them too. Send such messages through an SMTP connector"
        )
    shown = {a.lower() for a in visible}
    blind = [r for r in recipients if r.lower() not in shown]
    kept = _without_bcc(head)
    if blind:
        kept = b"Bcc: " + ", ".join(blind).encode("utf-8") + b"\r\n" + kept
    return kept + body


def _without_bcc(head: bytes) -> bytes:
    lines = head.splitlines(keepends=True)
    kept: list[bytes] = []
    dropping = False
    for line in lines:
        if line[:1] in (b" ", b"\t"):  # a folded continuation belongs to the field above it
            if not dropping:
                kept.append(line)
            continue
        dropping = line[:4].lower() == b"bcc:"
        if not dropping:
            kept.append(line)
    return b"".join(kept)


def retry_after(response: httpx2.Response) -> float | None:
    """Seconds the service asked us to wait (delta-seconds or an HTTP date), or None."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class HttpApiSender(Sender):
    """Sends through one HTTP mail API. A subclass says how to post and how to read the answer; this
    class owns the parts that must behave the same for every API: recipients, token reuse, the one
    retry after a 401, pausing while the service asked for a pause, and the outcome vocabulary.

    A 202/200 means the service accepted the message for everyone, so every recipient gets the
    same outcome. The envelope sender is not sent: the API sends as the connector's mailbox, and
    non-delivery reports come back to that mailbox.
    """

    service: str

    def __init__(self, *, name: str, tokens: TokenManager, timeout: float) -> None:
        self.name = name
        self.tokens = tokens
        self._timeout = timeout
        self._client: httpx2.AsyncClient | None = None
        self._hold_until = 0.0
        self._hold_reply: Reply | None = None

    @abstractmethod
    async def _post(self, client: httpx2.AsyncClient, token: str, message: bytes) -> httpx2.Response: ...

    @abstractmethod
    def _accepted(self, response: httpx2.Response) -> str:
        """The reply text of a success, with whatever id the service gave the message."""

    @abstractmethod
    def _error(self, response: httpx2.Response) -> tuple[str, str, Verdict]:
        """The error code and message of a failed answer and how to treat it."""

    async def send(self, mail_from: str, recipients: Sequence[str], message: bytes) -> dict[str, DeliveryOutcome]:
        wanted = list(dict.fromkeys(recipients))
        outcomes: dict[str, DeliveryOutcome] = {}
        for rcpt in wanted:
            problem = address_problem(rcpt)
            if problem:  # it would go into a Bcc header line: a CR/LF there forges headers
                outcomes[rcpt] = Failed(problem)
        live = [r for r in wanted if r not in outcomes]
        if live:
            copy = api_copy(message, live, self.service)
            outcome = Failed(copy) if isinstance(copy, str) else await self._deliver(copy)
            outcomes.update(dict.fromkeys(live, outcome))
        return {r: outcomes[r] for r in wanted}

    async def _deliver(self, message: bytes) -> DeliveryOutcome:
        now = asyncio.get_running_loop().time()
        if now < self._hold_until:
            left = self._hold_until - now
            return Deferred(
                f"{self.service} asked for a pause; {left:.0f}s left, not sent", self._hold_reply, connector_fault=True
            )
        if self._client is None or self._client.is_closed:
            self._client = http_client(self._timeout)
        for attempt in range(2):
            try:
                token = await self.tokens.token()
            except TokenError as exc:
                if exc.permanent:
                    return self._misconfigured(f"no access token: {exc.reason}")
                return Deferred(f"{self.service}: no access token: {exc.reason}", connector_fault=True)
            try:
                response = await self._post(self._client, token, message)
            except httpx2.TimeoutException:
                return Deferred(
                    f"{self.service} did not answer within {self._timeout:g}s; the message may have been sent",
                    connector_fault=True,
                )
            except httpx2.HTTPError as exc:
                return Deferred(f"{self.service} unreachable: {describe(exc)}", connector_fault=True)
            if response.status_code == 401 and attempt == 0:
                # tokens die before their time (revoked, password reset, clock skew): one fresh token
                # tells an expired token from credentials that no longer work
                self.tokens.invalidate(token)
                continue
            return self._outcome(response)
        raise AssertionError("unreachable: the second attempt always returns")

    def _outcome(self, response: httpx2.Response) -> DeliveryOutcome:
        status = response.status_code
        if 200 <= status < 300:
            return Delivered(Reply(250, "2.0.0", self._accepted(response)))
        code, text, verdict = self._error(response)
        detail = " ".join(p for p in (f"{self.service} {status} {response.reason_phrase}", code) if p)
        detail = " ".join(f"{detail}: {text}".split()) if text else detail
        match verdict:
            case Verdict.THROTTLED:
                wait = retry_after(response)
                if wait is not None:
                    detail += f" (Retry-After: {wait:g}s)"
                reply = Reply(451, "4.4.5", detail)
                if wait:
                    self._hold(wait, reply)
                return Deferred(f"{self.service} is throttling this connector", reply, connector_fault=True)
            case Verdict.UNAVAILABLE:
                wait = retry_after(response)
                reply = Reply(451, "4.3.0", detail)
                if wait:
                    self._hold(wait, reply)
                return Deferred(f"{self.service} is unavailable", reply, connector_fault=True)
            case Verdict.MISCONFIGURED:
                return self._misconfigured(detail)
            case Verdict.BAD_RECIPIENT:
                return Bounced(Reply(550, "5.1.3", detail), f"{self.service} refused a recipient address")
            case Verdict.TOO_BIG:
                return Bounced(Reply(552, "5.3.4", detail), f"{self.service} refused the message as too big")
            case Verdict.BAD_MESSAGE:
                return Bounced(Reply(554, "5.6.0", detail), f"{self.service} refused the message")

    def _misconfigured(self, detail: str) -> Deferred:
        """Wrong credentials or permissions fail every message alike: they are the connector's fault
        (failover, breaker), and retrying after an operator's fix delivers them."""
        reply = Reply(454, "4.7.0", detail)
        return Deferred(
            f"{self.service} refused the connector's credentials or permissions", reply, connector_fault=True
        )

    def _hold(self, seconds: float, reply: Reply) -> None:
        """Calls made while throttled count against the quota and extend the throttling, so none are
        made until the time the service named."""
        until = asyncio.get_running_loop().time() + min(seconds, MAX_HOLD)
        if until > self._hold_until:
            self._hold_until, self._hold_reply = until, reply

    async def close(self) -> None:
        """Close the HTTP connections; a later send opens new ones."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        await self.tokens.aclose()


def describe(exc: httpx2.HTTPError) -> str:
    """httpx names the failure in its message; wrapped OS and TLS errors sometimes only in the cause."""
    text = str(exc)
    if not text and exc.__cause__ is not None:
        text = str(exc.__cause__)
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__
