"""The Gmail connector against FakeGmail on a real loopback socket: the raw message round trip, the
refresh-token grant, Gmail's ways of saying "slow down", and its permanent refusals. What the Graph
tests already prove for the shared machinery (pauses, envelope versus headers) is checked here only
where Gmail's answers differ."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from mailgate.connectors.gmail import GmailConfig, GmailSender
from mailgate.connectors.oauth2 import TokenError, TokenManager
from mailgate.domain.delivery import Bounced, Deferred, Delivered, DeliveryOutcome, Failed
from mailgate.domain.errors import InvalidInput
from mailgate.testing.fake_gmail import FakeGmail

pytestmark = pytest.mark.timeout(30)

CLIENT = "123.apps.googleusercontent.com"
SECRET = "gsecret"
REFRESH = "1//refresh"
USER = "me@example.test"
# bytes that base64 turns into + and /, so standard base64 would not pass for base64url
MESSAGE = (
    b"From: me@example.test\r\nTo: ann@example.net\r\nSubject: =?utf-8?b?w7w=?=\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\xfb\xff\xfe>>>???\r\n"
)
RCPTS = ["ann@example.net"]

SenderFactory = Callable[..., GmailSender]


@pytest.fixture
async def gmail() -> AsyncIterator[FakeGmail]:
    async with FakeGmail(client_id=CLIENT, client_secret=SECRET, refresh_token=REFRESH, user=USER) as fake:
        yield fake


@pytest.fixture
async def make_sender(gmail: FakeGmail) -> AsyncIterator[SenderFactory]:
    made: list[GmailSender] = []

    def make(**overrides: Any) -> GmailSender:
        values: dict[str, Any] = {
            "client_id": CLIENT,
            "client_secret": SECRET,
            "refresh_token": REFRESH,
            "base_url": gmail.base_url,
            "token_url": gmail.token_url,
            "timeout": 5,
            **overrides,
        }
        sender = GmailSender(GmailConfig(**values), name="gmail")
        made.append(sender)
        return sender

    yield make
    for sender in made:
        await sender.close()


def only(outcomes: dict[str, DeliveryOutcome]) -> DeliveryOutcome:
    distinct = set(outcomes.values())
    assert len(distinct) == 1, outcomes
    return distinct.pop()


def connector_fault(outcome: DeliveryOutcome, *words: str) -> Deferred:
    assert isinstance(outcome, Deferred), outcome
    assert outcome.connector_fault, outcome
    text = f"{outcome.reason} {outcome.reply or ''}".lower()
    for word in words:
        assert word.lower() in text, text
    return outcome


async def test_delivers_the_raw_message_byte_for_byte(gmail: FakeGmail, make_sender: SenderFactory) -> None:
    assert b"+" in base64.b64encode(MESSAGE) and b"/" in base64.b64encode(MESSAGE)

    outcome = only(await make_sender().send("bounces@example.test", RCPTS, MESSAGE))

    assert isinstance(outcome, Delivered)
    assert outcome.reply.code == 250 and "200 OK, id " in outcome.reply.text
    assert [m.mime for m in gmail.sent] == [MESSAGE]
    assert gmail.sent[0].user_id == "me"


async def test_sends_as_a_named_user(gmail: FakeGmail, make_sender: SenderFactory) -> None:
    assert isinstance(only(await make_sender(user_id=USER).send("", RCPTS, MESSAGE)), Delivered)
    assert gmail.sent[0].user_id == USER


async def test_refresh_token_grant_is_used_once_for_many_sends(gmail: FakeGmail, make_sender: SenderFactory) -> None:
    gmail.token_delay = 0.1
    sender = make_sender()

    results = await asyncio.gather(*(sender.send("", RCPTS, MESSAGE) for _ in range(5)))
    results.append(await sender.send("", RCPTS, MESSAGE))

    assert all(isinstance(only(r), Delivered) for r in results)
    assert gmail.token_requests == 1


async def test_an_expired_token_is_refreshed_and_the_send_retried(gmail: FakeGmail, make_sender: SenderFactory) -> None:
    sender = make_sender()
    await sender.send("", RCPTS, MESSAGE)
    gmail.expire_tokens()

    assert isinstance(only(await sender.send("", RCPTS, MESSAGE)), Delivered)
    assert gmail.token_requests == 2
    assert len(gmail.sent) == 2


async def test_revoked_consent_is_the_connectors_fault_and_says_what_to_do(
    gmail: FakeGmail, make_sender: SenderFactory
) -> None:
    sender = make_sender()
    await sender.send("", RCPTS, MESSAGE)
    gmail.revoke()

    outcome = connector_fault(
        only(await sender.send("", RCPTS, MESSAGE)), "invalid_grant", "expired or revoked", "authorize again"
    )

    assert outcome.reply is not None and outcome.reply.code == 454
    assert len(gmail.sent) == 1


async def test_a_rotated_refresh_token_is_used_next_time(gmail: FakeGmail) -> None:
    gmail.rotate_refresh_token = True
    tokens = TokenManager.refresh_token(gmail.token_url, client_id=CLIENT, client_secret=SECRET, refresh_token=REFRESH)
    first = await tokens.token()
    tokens.invalidate(first)

    assert await tokens.token() != first  # the original refresh token no longer works here
    assert gmail.token_requests == 2
    await tokens.aclose()


async def test_wrong_client_secret_is_a_permanent_token_error(gmail: FakeGmail) -> None:
    tokens = TokenManager.refresh_token(gmail.token_url, client_id=CLIENT, client_secret="nope", refresh_token=REFRESH)
    with pytest.raises(TokenError) as caught:
        await tokens.token()
    await tokens.aclose()

    assert caught.value.permanent and caught.value.error == "invalid_client"


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (429, "rateLimitExceeded"),
        (403, "userRateLimitExceeded"),
        (403, "rateLimitExceeded"),
        (403, "dailyLimitExceeded"),
    ],
)
async def test_quota_answers_defer(gmail: FakeGmail, make_sender: SenderFactory, status: int, reason: str) -> None:
    gmail.fail(status, reason, "User-rate limit exceeded. Retry after 2026-11-05T10:00:00Z (Mail sending)")

    outcome = connector_fault(only(await make_sender().send("", RCPTS, MESSAGE)), "throttling", reason, "retry after")

    assert outcome.reply is not None and (outcome.reply.code, outcome.reply.enhanced) == (451, "4.4.5")


async def test_429_retry_after_pauses_the_connector(gmail: FakeGmail, make_sender: SenderFactory) -> None:
    gmail.throttle(retry_after=60)
    sender = make_sender()

    connector_fault(only(await sender.send("", RCPTS, MESSAGE)), "Retry-After: 60s")
    connector_fault(only(await sender.send("", RCPTS, MESSAGE)), "pause")
    assert gmail.send_requests == 1


@pytest.mark.parametrize(("status", "reason"), [(500, "backendError"), (503, "backendError"), (502, "")])
async def test_server_errors_are_connector_faults(
    gmail: FakeGmail, make_sender: SenderFactory, status: int, reason: str
) -> None:
    gmail.fail(status, reason, "Backend Error")

    outcome = connector_fault(only(await make_sender().send("", RCPTS, MESSAGE)), "unavailable", str(status))

    assert outcome.reply is not None and outcome.reply.code == 451


async def test_no_answer_is_a_connector_fault(gmail: FakeGmail, make_sender: SenderFactory) -> None:
    gmail.hang()

    connector_fault(only(await make_sender(timeout=0.5).send("", RCPTS, MESSAGE)), "may have been sent")


@pytest.mark.parametrize(("status", "reason"), [(403, "domainPolicy"), (403, "insufficientPermissions")])
async def test_policy_refusals_are_the_connectors_fault(
    gmail: FakeGmail, make_sender: SenderFactory, status: int, reason: str
) -> None:
    gmail.fail(status, reason, "The domain administrators have disabled Gmail apps.")

    outcome = connector_fault(only(await make_sender().send("", RCPTS, MESSAGE)), reason)

    assert outcome.reply is not None and outcome.reply.code == 454


async def test_a_user_we_may_not_send_as_is_the_connectors_fault(gmail: FakeGmail, make_sender: SenderFactory) -> None:
    connector_fault(only(await make_sender(user_id="boss@example.test").send("", RCPTS, MESSAGE)), "Delegation denied")


@pytest.mark.parametrize(
    ("status", "reason", "reply"),
    [(400, "invalidArgument", (554, "5.6.0")), (400, "failedPrecondition", (554, "5.6.0")), (413, "", (552, "5.3.4"))],
)
async def test_refused_messages_bounce(
    gmail: FakeGmail, make_sender: SenderFactory, status: int, reason: str, reply: tuple[int, str]
) -> None:
    gmail.fail(status, reason, "Invalid To header")

    outcome = only(await make_sender().send("", RCPTS, MESSAGE))

    assert isinstance(outcome, Bounced), outcome
    assert (outcome.reply.code, outcome.reply.enhanced) == reply
    assert "Invalid To header" in outcome.reply.text


async def test_envelope_only_recipients_become_bcc(gmail: FakeGmail, make_sender: SenderFactory) -> None:
    await make_sender().send("", [*RCPTS, "hidden@example.com"], MESSAGE)

    assert gmail.sent[0].mime == b"Bcc: hidden@example.com\r\n" + MESSAGE


async def test_a_visible_address_outside_the_envelope_is_refused(gmail: FakeGmail, make_sender: SenderFactory) -> None:
    outcome = only(await make_sender().send("", ["someone@else.test"], MESSAGE))

    assert isinstance(outcome, Failed) and "ann@example.net" in outcome.reason
    assert gmail.send_requests == 0


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"refresh_token": ""}, "refresh_token"),
        ({"user_id": "me/../other"}, "user_id"),
        ({"token_url": "http://oauth2.example.com/token"}, "token_url"),
        ({"base_url": "gmail.googleapis.com"}, "base_url"),
        ({"timeout": -1}, "timeout"),
    ],
)
def test_config_is_validated(overrides: dict[str, Any], field: str) -> None:
    values: dict[str, Any] = {"client_id": CLIENT, "client_secret": SECRET, "refresh_token": REFRESH}
    with pytest.raises(InvalidInput) as caught:
        GmailConfig(**{**values, **overrides})
    assert caught.value.field == field


def test_config_defaults_point_at_google() -> None:
    cfg = GmailConfig(client_id=CLIENT, client_secret=SECRET, refresh_token=REFRESH)
    assert cfg.send_url == "https://gmail.googleapis.com/gmail/v1/users/me/messages/send"
    assert cfg.token_url == "https://oauth2.googleapis.com/token"
