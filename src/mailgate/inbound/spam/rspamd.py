"""rspamd's HTTP protocol: one ``POST /checkv2`` per message, the SMTP envelope in request headers,
the verdict as JSON (``score``, ``symbols``, ``action``, ``required_score``).

Only the score and the symbols are used. rspamd's ``action`` follows rspamd's own thresholds; mailgate
applies the domain's thresholds to the sum of every scorer's score instead, so one set of numbers
decides what happens to a message.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import httpx2

if TYPE_CHECKING:
    from mailgate.inbound.spam import SpamInput


class RspamdClient:
    """One connection pool to one rspamd (a normal worker or a proxy in self-scan mode).

    There is no httpx timeout: httpx bounds each phase (connect, write, read) on its own, so a slow
    rspamd could take several times the limit. The scorer bounds the whole call with one deadline.
    The environment's proxy settings are ignored (``trust_env=False``): message content must not
    travel through a proxy meant for outgoing web requests.
    """

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/") + "/checkv2"
        self._client = httpx2.AsyncClient(timeout=None, trust_env=False, follow_redirects=False)

    async def check(self, item: SpamInput) -> tuple[float, dict[str, float]]:
        """rspamd's score and its symbols with their scores; ValueError when the answer is not one."""
        response = await self._client.post(self.url, content=item.raw, headers=envelope_headers(item))
        if response.status_code != 200:
            raise ValueError(f"HTTP {response.status_code}: {_error_text(response)}")
        return parse_answer(response.json())

    async def aclose(self) -> None:
        await self._client.aclose()


def envelope_headers(item: SpamInput) -> list[tuple[str, str]]:
    """What rspamd would otherwise have to guess: the client, its greeting and the envelope.

    rspamd 3.4 refuses non-ASCII addresses in these headers and then scores the whole message as
    BROKEN_HEADERS (8 points), so an SMTPUTF8 envelope goes with its domains as A-labels, and an
    address whose local part is not ASCII is left out (a From left out reads as a bounce's empty
    reverse path, which is also how an actual bounce is sent). Hostname is the client's verified
    reverse DNS name; without it rspamd scores the client as having none (HFILTER_HOSTNAME_UNKNOWN,
    2.5 points), so the MX path should look it up.
    """
    fields = [("IP", item.client_ip), ("Helo", _a_labels(item.helo))]
    if item.client_name:
        fields.append(("Hostname", _a_labels(item.client_name)))
    fields.append(("From", _ascii_address(item.mail_from)))
    fields += [("Rcpt", _ascii_address(rcpt)) for rcpt in item.recipients]
    return [(name, "".join(value.split())) for name, value in fields if value]


def _a_labels(host: str) -> str:
    """``host`` in ASCII (IDNA A-labels), or "" when it has no such form."""
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return ""


def _ascii_address(address: str) -> str:
    local, at, domain = address.rpartition("@")
    if not at or not local.isascii():
        return address if address.isascii() else ""
    domain = _a_labels(domain)
    return f"{local}@{domain}" if domain else ""


def parse_answer(answer: Any) -> tuple[float, dict[str, float]]:
    """``score`` and ``symbols`` of a /checkv2 answer, checked: an error object (``{"error": ...}``) is
    no verdict, and a NaN score would poison every comparison downstream."""
    if not isinstance(answer, dict):
        raise ValueError("the answer is not a JSON object")
    if "error" in answer:
        raise ValueError(f"rspamd: {answer['error']}")
    score = _number(answer.get("score"), "score")
    symbols: dict[str, float] = {}
    listed = answer.get("symbols") or {}
    if not isinstance(listed, dict):
        raise ValueError("symbols is not an object")
    for name, symbol in listed.items():
        value = symbol.get("score", 0.0) if isinstance(symbol, dict) else 0.0
        symbols[str(name)] = _number(value, f"the score of {name}")
    return score, symbols


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} is not a number: {value!r}")
    return float(value)


def _error_text(response: httpx2.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    return str(body.get("error", body))[:200] if isinstance(body, dict) else str(body)[:200]
