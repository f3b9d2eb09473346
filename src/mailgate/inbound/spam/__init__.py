"""Spam scoring of received mail: the built-in rules always, rspamd and spamd when configured.

The scores add up: the built-in rules' weights, rspamd's score and spamd's score, with each engine's
symbols kept under its name (``rspamd:BAYES_SPAM``, ``spamd:URIBL_BLACK``). The domain's thresholds
then turn the sum into an action (``SpamThresholds.action``).

A configured engine that is down, slow or answers nonsense costs its score, never the message: the
verdict lists it in ``errors`` and the built-in score still counts. Engines run concurrently, under
one deadline each, so ``score`` returns within ``timeout`` whatever they do.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from mailgate.domain.inbound import AuthResults, SpamVerdict
from mailgate.inbound.spam import builtin
from mailgate.inbound.spam.rspamd import RspamdClient
from mailgate.inbound.spam.spamd import SpamdClient
from mailgate.observability.logging import get_logger

__all__ = ["SpamInput", "SpamScorer"]

log = get_logger("mailgate.inbound.spam")


@dataclass(frozen=True, slots=True)
class SpamInput:
    """What the MX path knows when it scores a message: the SMTP session, the authentication
    verdicts and the parsed message.

    ``text`` is the text/plain body ("" when there is none) and ``html`` the text/html body (None when
    there is none): a text derived from the html must not go into ``text``, or html-only mail cannot
    be told apart. ``attachment_types`` and ``attachment_names`` are per attachment, as declared in
    the message. ``client_name`` is the client's verified reverse DNS name, when it was looked up.
    """

    raw: bytes
    client_ip: str
    helo: str
    mail_from: str  # "" for the null reverse-path <>
    recipients: tuple[str, ...]
    auth: AuthResults
    headers: tuple[tuple[str, str], ...]  # decoded headers in order
    subject: str
    from_address: str
    from_name: str
    text: str
    html: str | None
    attachment_types: tuple[str, ...]
    attachment_names: tuple[str | None, ...]
    client_name: str | None = None


class _Engine(Protocol):
    async def check(self, item: SpamInput) -> tuple[float, dict[str, float]]: ...

    async def aclose(self) -> None: ...


class SpamScorer:
    """Scores messages; one per process, as it holds rspamd's connection pool."""

    def __init__(
        self, *, rspamd_url: str | None = None, spamd: tuple[str, int] | None = None, timeout: float = 10.0
    ) -> None:
        self.timeout = timeout
        self._engines: dict[str, _Engine] = {}
        if rspamd_url:
            self._engines["rspamd"] = RspamdClient(rspamd_url)
        if spamd is not None:
            self._engines["spamd"] = SpamdClient(*spamd)

    async def score(self, item: SpamInput) -> SpamVerdict:
        symbols = builtin.check(item)
        total = sum(symbols.values())
        engines = ["builtin"]
        errors: list[str] = []
        answers = await asyncio.gather(*(self._ask(name, engine, item) for name, engine in self._engines.items()))
        for name, answer in zip(self._engines, answers, strict=True):
            if isinstance(answer, str):
                errors.append(answer)
                continue
            score, found = answer
            total += score
            symbols.update({f"{name}:{symbol}": points for symbol, points in found.items()})
            engines.append(name)
        return SpamVerdict(score=total, symbols=symbols, engines=tuple(engines), errors=tuple(errors))

    async def _ask(self, name: str, engine: _Engine, item: SpamInput) -> tuple[float, dict[str, float]] | str:
        """The engine's answer, or why there is none. Every exception is caught: whatever goes wrong
        in an engine or its client, the message is still received with the built-in score."""
        try:
            async with asyncio.timeout(self.timeout):
                return await engine.check(item)
        except TimeoutError:
            error = f"{name}: no answer within {self.timeout:g}s"
        except Exception as exc:
            error = f"{name}: {_describe(exc)}"
        log.warning("spam engine failed", engine=name, error=error)
        return error

    async def aclose(self) -> None:
        for engine in self._engines.values():
            await engine.aclose()


def _describe(exc: BaseException) -> str:
    """The exception's class and message; OS errors wrapped by httpx carry their text in the cause."""
    text = str(exc) or (str(exc.__cause__) if exc.__cause__ is not None else "")
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__
