"""Messages submitted whole: what is kept byte for byte, what is added, what is taken out."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.domain.errors import InvalidInput
from mailgate.mime.submitted import prepare

BODY = b"line one\r\n.leading dot\r\n\r\nlast line without newline"


def test_the_body_is_kept_exactly_and_instructions_are_removed() -> None:
    raw = (
        b"From: App <app@acme.test>\r\n"
        b"To: a@example.net,\r\n  B <b@example.net>\r\n"
        b"Bcc: hidden@example.net\r\n"
        b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
        b"X-Mailgate-Tags: one, two ,three\r\n"
        b"X-Mailgate-Idempotency-Key: k-1\r\n"
        b"X-Mailgate-Route: bulk\r\n"
        b"X-Other: kept\r\n"
        b"\r\n" + BODY
    )
    out = prepare(raw, hostname="node.test")
    head, _, body = out.raw.partition(b"\r\n\r\n")
    assert body == BODY
    assert b"Bcc" not in head and b"X-Mailgate" not in head and b"X-Other: kept" in head
    assert b"To: a@example.net,\r\n  B <b@example.net>\r\n" in out.raw  # folding kept as sent
    assert out.header_recipients == ["a@example.net", "b@example.net", "hidden@example.net"]
    assert out.from_addresses == ["app@acme.test"]
    assert out.subject == "Grüße"
    assert (out.idempotency_key, out.tags, out.route) == ("k-1", ["one", "two", "three"], "bulk")
    assert out.message_id.endswith("@acme.test>") and b"Message-ID: " + out.message_id.encode() in head
    assert b"\r\nDate: " in head


def test_bare_line_feeds_become_crlf_and_existing_ids_are_kept() -> None:
    out = prepare(
        b"From: a@x.test\nMessage-ID: <id@x.test>\nDate: Mon, 1 Jan 2024 00:00:00 +0000\n\nhi\n", hostname="h"
    )
    assert out.raw == b"From: a@x.test\r\nMessage-ID: <id@x.test>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nhi\r\n"
    assert out.message_id == "<id@x.test>"


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"Subject: x\r\n\r\nbody", "no From header"),
        (b"this is not a header\r\n\r\nbody", "not 'Name: value'"),
        (b" continuation first\r\nFrom: a@x.test\r\n\r\n", "continuation line"),
        (b"From: a@x.test\r\nFrom: b@x.test\r\n\r\n", "more than one From"),
        (b"From: nobody\r\n\r\n", "holds no address"),
        (b"", "empty"),
        (b"\r\n\r\n", "empty"),
        (b"From: a@x.test\r\nX-Mailgate-Tags: " + b",".join(b"t%d" % i for i in range(30)) + b"\r\n\r\n", "at most 20"),
    ],
)
def test_what_is_not_a_message_is_refused_precisely(raw: bytes, problem: str) -> None:
    with pytest.raises(InvalidInput, match=problem):
        prepare(raw, hostname="h")


@pytest.mark.fuzz
@settings(deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_are_prepared_or_refused_never_crash(raw: bytes) -> None:
    try:
        out = prepare(raw, hostname="h")
    except InvalidInput:
        return
    assert b"\r\n\r\n" in out.raw and out.from_addresses
