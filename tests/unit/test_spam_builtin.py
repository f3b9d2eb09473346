"""The built-in spam rules: each symbol fires where it should and stays quiet on the near miss next to
it, and plain old ham stays far below the tag threshold."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import email.utils
import time
from typing import Any

import pytest

from mailgate.domain.inbound import (
    ArcResult,
    AuthResults,
    AuthVerdict,
    DkimResult,
    DmarcResult,
    SpamAction,
    SpamThresholds,
    SpfResult,
)
from mailgate.inbound.spam import SpamInput, builtin
from mailgate.inbound.spam.builtin import GTUBE, WEIGHTS

V = AuthVerdict
NO_AUTH = AuthResults(
    spf=SpfResult(V.NONE, "example.com"),
    dkim=(),
    dmarc=DmarcResult(V.NONE, "example.com"),
    arc=ArcResult(V.NONE),
)
# signed and SPF-checked, but no DMARC record: no authentication symbol fires
CLEAN_AUTH = dataclasses.replace(
    NO_AUTH, spf=SpfResult(V.PASS, "example.com"), dkim=(DkimResult(V.PASS, "example.com", "s1"),)
)
HEADERS = (
    ("Received", "from mail.example.com (mail.example.com [203.0.113.5]) by mx.example.org; Tue, 2 Dec 2025 10:00:00"),
    ("From", "Alice Example <alice@example.com>"),
    ("To", "bob@example.org"),
    ("Subject", "Lunch on Thursday?"),
    ("Date", "Tue, 02 Dec 2025 10:00:00 +0000"),
    ("Message-ID", "<abc@example.com>"),
    ("MIME-Version", "1.0"),
)


def item(**changes: object) -> SpamInput:
    """A clean message that triggers no rule; ``changes`` replace its fields."""
    base = SpamInput(
        raw=b"From: Alice Example <alice@example.com>\r\n\r\nHi Bob, lunch on Thursday?\r\n",
        client_ip="203.0.113.5",
        helo="mail.example.com",
        mail_from="alice@example.com",
        recipients=("bob@example.org",),
        auth=CLEAN_AUTH,
        headers=HEADERS,
        subject="Lunch on Thursday?",
        from_address="alice@example.com",
        from_name="Alice Example",
        text="Hi Bob, lunch on Thursday?\r\n",
        html=None,
        attachment_types=(),
        attachment_names=(),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def without(name: str) -> tuple[tuple[str, str], ...]:
    return tuple(h for h in HEADERS if h[0] != name)


def auth(**changes: object) -> AuthResults:
    return dataclasses.replace(CLEAN_AUTH, **changes)  # type: ignore[arg-type]


def dmarc(result: AuthVerdict, policy: str = "none") -> DmarcResult:
    return DmarcResult(result, "example.com", policy=policy)


def test_the_clean_message_triggers_nothing() -> None:
    assert builtin.check(item()) == {}


FIRES: dict[str, dict[str, Any]] = {
    "SPF_FAIL": {"auth": auth(spf=SpfResult(V.FAIL, "example.com"))},
    "SPF_SOFTFAIL": {"auth": auth(spf=SpfResult(V.SOFTFAIL, "example.com"))},
    "DKIM_FAIL": {"auth": auth(dkim=(DkimResult(V.FAIL, "example.com"),))},
    "DMARC_REJECT": {"auth": auth(dmarc=dmarc(V.FAIL, "reject"))},
    "DMARC_QUARANTINE": {"auth": auth(dmarc=dmarc(V.FAIL, "quarantine"))},
    "DMARC_PASS": {"auth": auth(dmarc=dmarc(V.PASS))},
    "AUTH_NONE": {"auth": NO_AUTH},
    "GTUBE": {"raw": f"Subject: test\r\n\r\n{GTUBE}\r\n".encode()},
    "MISSING_FROM": {"from_address": "", "from_name": ""},
    "MISSING_DATE": {"headers": without("Date")},
    "MISSING_MID": {"headers": without("Message-ID")},
    "MID_INVALID": {"headers": (*without("Message-ID"), ("Message-ID", "<20020826151210>"))},
    "MIME_NO_VERSION": {"headers": without("MIME-Version"), "html": "<p>Hi Bob</p>"},
    "TO_UNDISCLOSED": {"headers": (*without("To"), ("To", "undisclosed-recipients:;"))},
    "DATE_IN_FUTURE": {"headers": (*without("Date"), ("Date", email.utils.formatdate(time.time() + 3 * 86400)))},
    "FROM_NAME_SPOOF": {"from_name": "service@paypal.com"},
    "SUBJ_ALL_CAPS": {"subject": "MEETING MOVED TO FRIDAY"},
    "SUBJ_SPAM_PHRASE": {"subject": "Lose weight fast"},
    "RCPTS_MANY": {"recipients": tuple(f"u{n}@example.org" for n in range(30))},
    "RCVD_ILLEGAL_IP": {"headers": (*HEADERS, ("Received", "from x (unknown [217.59.999.12]) by y"))},
    "FORGED_FREEMAIL_RCVD": {"from_address": "alice@gmail.com", "auth": NO_AUTH},
    "HELO_BOGUS": {"helo": "localhost"},
    "HELO_IS_RCPT_DOMAIN": {"helo": "example.org"},
    "HTML_ONLY": {"text": "", "html": "<p>" + "A long enough newsletter paragraph. " * 20 + "</p>"},
    "HTML_LITTLE_TEXT": {"text": "", "html": '<html><body><a href="x"><img src="cid:1"></a>Buy</body></html>'},
    "BODY_SPAM_PHRASE": {"text": "Dear reader,\r\nThis is NOT spam: you signed up at one of our partners."},
    "URI_NUMERIC_IP": {"text": "Claim it at http://203.0.113.7/claim.php?id=1 today"},
    "EXE_ATTACHMENT": {"attachment_types": ("application/octet-stream",), "attachment_names": ("setup.exe",)},
    "DOUBLE_EXT_ATTACHMENT": {
        "attachment_types": ("application/octet-stream",),
        "attachment_names": ("invoice.pdf.scr",),
    },
}
# rules that fire together by design: the first needs what the others flag
ALSO = {
    "FORGED_FREEMAIL_RCVD": {"AUTH_NONE"},
    "HTML_LITTLE_TEXT": {"HTML_ONLY"},
    "DOUBLE_EXT_ATTACHMENT": {"EXE_ATTACHMENT"},
}


def test_every_rule_is_tested() -> None:
    assert set(FIRES) == set(WEIGHTS)


@pytest.mark.parametrize("symbol", FIRES)
def test_each_rule_fires_alone(symbol: str) -> None:
    hits = builtin.check(item(**FIRES[symbol]))
    assert set(hits) == {symbol} | ALSO.get(symbol, set())
    assert hits[symbol] == WEIGHTS[symbol]


NEAR_MISSES: dict[str, dict[str, Any]] = {
    "spf neutral is no failure": {"auth": auth(spf=SpfResult(V.NEUTRAL, "example.com"))},
    "a broken signature beside a good one": {
        "auth": auth(dkim=(DkimResult(V.FAIL, "list.example"), DkimResult(V.PASS, "example.com")))
    },
    "dmarc fail under p=none": {"auth": auth(dmarc=dmarc(V.FAIL, "none"))},
    "spf pass without a signature is some authentication": {"auth": auth(dkim=())},
    "gtube broken": {"raw": GTUBE[:-3].encode()},
    "a future date within a day": {"headers": (*without("Date"), ("Date", email.utils.formatdate(time.time() + 3600)))},
    "an unparsable date": {"headers": (*without("Date"), ("Date", "sometime last week"))},
    "a group with an address": {"headers": (*without("To"), ("To", "Team: bob@example.org;"))},
    "plain text without MIME-Version": {"headers": without("MIME-Version")},
    "talk about spam": {"text": "I think this is spam, or is it not? Spam it is."},
    "an address in a link's path": {"text": "see http://example.com/203.0.113.7/ and https://1example.org"},
    "the display name is the address itself": {"from_name": "alice@example.com"},
    "the display name names a subdomain": {"from_name": "alice@mail.example.com"},
    "a short capitals subject": {"subject": "RE: FYI"},
    "capitals with lowercase": {"subject": "MEETING moved to FRIDAY"},
    "a harmless free": {"subject": "Free for lunch? I won the raffle"},
    "29 recipients": {"recipients": tuple(f"u{n}@example.org" for n in range(29))},
    "a plausible address": {
        "headers": (*HEADERS, ("Received", "from x (unknown [217.59.99.12]) by y (8.11.6/8.11.6)"))
    },
    "freemail with its trace": {
        "from_address": "alice@gmail.com",
        "headers": (*HEADERS, ("Received", "from mail-wr1-f41.google.com (mail-wr1-f41.google.com [209.85.221.41])")),
    },
    "freemail with its signature": {
        "from_address": "alice@gmail.com",
        "auth": auth(dkim=(DkimResult(V.PASS, "gmail.com"),)),
    },
    "an address literal in brackets": {"helo": "[203.0.113.5]"},
    "localhost from loopback": {"helo": "localhost", "client_ip": "127.0.0.1"},
    "our own relay greeting with our domain": {"helo": "example.org", "client_ip": "10.0.0.2"},
    "html beside text": {"html": "<p>Hi</p>"},
    "a document": {"attachment_types": ("application/pdf",), "attachment_names": ("report.pdf",)},
    "a name without extension": {"attachment_types": ("application/octet-stream",), "attachment_names": (None,)},
}


@pytest.mark.parametrize("case", NEAR_MISSES)
def test_near_misses_trigger_nothing(case: str) -> None:
    assert builtin.check(item(**NEAR_MISSES[case])) == {}


def test_every_body_phrase_holds_an_anchor() -> None:
    assert all(any(anchor in phrase for anchor in builtin.BODY_ANCHORS) for phrase in builtin.BODY_PHRASES)


def test_an_executable_is_known_by_its_type_too() -> None:
    hits = builtin.check(item(attachment_types=("application/x-msdownload",), attachment_names=("update",)))
    assert set(hits) == {"EXE_ATTACHMENT"}


def test_long_styles_do_not_count_as_text() -> None:
    html = "<style>" + "p { color: red; }\n" * 300 + "</style><img src='cid:1'>"
    assert "HTML_LITTLE_TEXT" in builtin.check(item(text="", html=html))


def test_to_and_cc_count_as_recipients() -> None:
    to = ", ".join(f"u{n}@example.org" for n in range(20))
    cc = ", ".join(f"c{n}@example.org" for n in range(10))
    assert set(builtin.check(item(headers=(*HEADERS, ("Cc", cc), ("To", to))))) == {"RCPTS_MANY"}


def spam_input(
    raw: bytes,
    *,
    auth: AuthResults = NO_AUTH,
    client_ip: str = "203.0.113.5",
    helo: str = "mail.example.com",
    client_name: str | None = None,
) -> SpamInput:
    """What the MX path would hand the scorer for ``raw``, parsed with the standard library (leniently:
    old mail has unknown charsets and broken encodings) and with the envelope taken from its headers.
    Only From and Subject are decoded; the rules read the other headers' raw values."""
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    headers = tuple((name, "".join(str(value).splitlines())) for name, value in message.raw_items())
    from_name, from_address = email.utils.parseaddr(_decoded("From", message.get("From", "")))
    text, html, types, names = "", None, [], []
    for part in message.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        if part.get_content_disposition() == "attachment" or part.get_filename():
            types.append(ctype)
            names.append(part.get_filename())
        elif ctype == "text/plain" and not text:
            text = _content(part)
        elif ctype == "text/html" and html is None:
            html = _content(part)
    recipients = tuple(a for _, a in email.utils.getaddresses([str(v) for v in message.get_all("To", [])]) if a)
    return SpamInput(
        raw=raw,
        client_ip=client_ip,
        helo=helo,
        mail_from=from_address,
        recipients=recipients[:1] or ("someone@example.org",),
        auth=auth,
        headers=headers,
        subject=_decoded("Subject", message.get("Subject", "")),
        from_address=from_address,
        from_name=from_name,
        text=text,
        html=html,
        attachment_types=tuple(types),
        attachment_names=tuple(names),
        client_name=client_name,
    )


def _decoded(name: str, raw_value: object) -> str:
    try:
        return str(email.policy.default.header_factory(name, str(raw_value)))
    except Exception:
        return str(raw_value)


def _content(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    try:
        return payload.decode(part.get_content_charset() or "ascii")
    except (LookupError, UnicodeDecodeError):
        return payload.decode("latin-1")


OLD_HAM = b"""\
Return-Path: <jm@jmason.org>
Received: from dogma.slashnull.org (dogma.slashnull.org [212.17.35.15])
    by mail.netnoteinc.com (Postfix) with ESMTP id 3A1AC43F99
    for <zzzz@localhost>; Mon, 26 Aug 2002 10:12:14 -0400 (EDT)
From: Justin Mason <jm@jmason.org>
To: zzzz@netnoteinc.com
Subject: Re: sa-exim and spamd
Date: Mon, 26 Aug 2002 15:12:10 +0100
X-Mailer: exmh version 2.5

Yes, that should work; the config file is read once at startup, so
restart it after changing local.cf.

--j.
"""


def test_plain_old_unsigned_ham_stays_far_below_tag() -> None:
    """No Message-ID, no SPF, no DKIM, LF line ends: 2002 mail as the public corpus has it."""
    hits = builtin.check(spam_input(OLD_HAM))
    assert set(hits) == {"AUTH_NONE", "MISSING_MID"}
    assert sum(hits.values()) < SpamThresholds().tag / 2


def test_gtube_is_rejected() -> None:
    raw = OLD_HAM.replace(b"--j.", GTUBE.encode())
    score = sum(builtin.check(spam_input(raw)).values())
    assert score > 1000
    assert SpamThresholds().action(score) is SpamAction.REJECT


@pytest.mark.parametrize(
    ("score", "action"),
    [
        (-3.0, SpamAction.NONE),
        (4.99, SpamAction.NONE),
        (5.0, SpamAction.TAG),
        (7.99, SpamAction.TAG),
        (8.0, SpamAction.JUNK),
        (14.99, SpamAction.JUNK),
        (15.0, SpamAction.REJECT),
        (1000.0, SpamAction.REJECT),
    ],
)
def test_default_thresholds_map_scores_to_actions(score: float, action: SpamAction) -> None:
    assert SpamThresholds().action(score) is action


def test_no_single_rule_reaches_tag_but_gtube() -> None:
    tag = SpamThresholds().tag
    assert [name for name, weight in WEIGHTS.items() if weight >= tag] == ["GTUBE"]


def test_it_is_fast() -> None:
    """It runs on every received message: well under 0.2 ms each, on a message that exercises most
    rules (html-only, an attachment, freemail, Received headers). The best of several batches, so a
    busy machine does not fail it."""
    busy = item(
        from_address="x@yahoo.com",
        html="<p>hello</p>" * 50,
        text="",
        attachment_types=("application/pdf",),
        attachment_names=("a.pdf",),
        auth=NO_AUTH,
        headers=HEADERS * 4,
    )
    batches = []
    for _ in range(10):
        started = time.perf_counter()
        for _ in range(200):
            builtin.check(busy)
        batches.append((time.perf_counter() - started) / 200)
    assert min(batches) < 0.0002, f"{min(batches) * 1e6:.0f} µs a message"
