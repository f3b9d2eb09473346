"""parse_message: received bytes to a structured message, with defects instead of exceptions.

Messages are built with the stdlib composer where it can express them (and then its own reading is the
oracle), and written by hand where the point is a malformation it would never produce.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailgate.mime import defects, parse, quoting, threads, tnef
from mailgate.mime.charsets import decode
from mailgate.mime.html import sanitize, sanitized_to_text
from mailgate.mime.parse import Address, ParsedMessage, parse_message

FUZZ = os.environ.get("HYPOTHESIS_PROFILE") == "fuzz"


def compose(
    *,
    subject: str = "Hello",
    sender: str = "Alice <alice@example.com>",
    to: str = "bob@example.com",
    text: str | None = "Hi Bob",
    html: str | None = None,
    attachments: tuple[tuple[bytes, str, str, str], ...] = (),
) -> EmailMessage:
    """A message from the stdlib composer; attachments are (data, maintype/subtype, filename, disposition)."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = "Tue, 05 Mar 2024 10:00:00 +0100"
    msg["Message-ID"] = "<m1@example.com>"
    if text is not None:
        msg.set_content(text)
    if html is not None:
        if text is None:
            msg.set_content(html, subtype="html")
        else:
            msg.add_alternative(html, subtype="html")
    for data, content_type, filename, disposition in attachments:
        maintype, subtype = content_type.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename, disposition=disposition)
    return msg


def wire(msg: EmailMessage) -> bytes:
    return msg.as_bytes(policy=policy.SMTP)


def crlf(text: str) -> bytes:
    """Hand-written mail: lines joined with CRLF, as it arrives over SMTP."""
    return text.replace("\n", "\r\n").encode("utf-8")


# ----- headers, addresses, dates, ids -----


def test_fields_of_a_composed_message_agree_with_the_stdlib() -> None:
    raw = wire(
        compose(
            subject="Grüße – Bericht für Q3",
            sender='"Müller, Jürgen" <juergen@example.com>',
            to="Bob <bob@example.com>, carol@example.org",
            attachments=((b"%PDF-1.4 body", "application/pdf", "Bericht Q3 – final.pdf", "attachment"),),
        )
    )
    ours = parse_message(raw)
    std = message_from_bytes(raw, policy=policy.default)
    assert ours.subject == str(std["subject"]) == "Grüße – Bericht für Q3"
    assert [(a.name, a.address) for a in ours.from_] == [(a.display_name, a.addr_spec) for a in std["from"].addresses]
    assert ours.from_ == (Address("Müller, Jürgen", "juergen@example.com"),)
    assert ours.to == (Address("Bob", "bob@example.com"), Address("", "carol@example.org"))
    std_attachment = next(iter(std.iter_attachments()))
    [attachment] = ours.attachments
    assert attachment.filename == std_attachment.get_filename() == "Bericht Q3 – final.pdf"
    assert attachment.data == std_attachment.get_content() == b"%PDF-1.4 body"
    assert (attachment.index, attachment.size, attachment.content_type) == (0, 13, "application/pdf")
    assert attachment.sha256 == hashlib.sha256(b"%PDF-1.4 body").hexdigest()
    assert not attachment.inline
    plain = std.get_body(("plain",))
    assert plain is not None
    assert ours.text.strip() == plain.get_content().strip() == "Hi Bob"
    assert ours.date == datetime(2024, 3, 5, 9, 0, tzinfo=UTC)
    assert ours.message_id == "m1@example.com"
    assert ours.defects == ()
    assert ours.size == len(raw)


def test_encoded_words_adjacent_split_and_unknown() -> None:
    raw = crlf(
        "From: =?iso-8859-1?q?J=FCrgen?= =?utf-8?b?TcO8bGxlcg==?= <j@example.com>\n"
        # one UTF-8 character split across two words, and a word in a charset nobody knows
        "Subject: =?utf-8?q?caf=C3?= =?utf-8?q?=A9?= and =?x-unknown?q?na=EFve?=\n"
        "Date: Tue, 05 Mar 2024 10:00:00 +0000\n\nx\n"
    )
    message = parse_message(raw)
    assert message.subject == "café and naïve"
    assert message.from_ == (Address("JürgenMüller", "j@example.com"),)
    assert "charset-fallback:x-unknown" in message.defects


def test_a_decoded_word_cannot_add_a_line_to_a_header() -> None:
    raw = crlf("From: a@example.com\nSubject: =?utf-8?q?a=0D=0ABcc:_x@evil.example?=\n\nbody\n")
    message = parse_message(raw)
    assert message.subject == "a  Bcc: x@evil.example"
    assert message.bcc == ()


def test_idn_domains_come_back_in_unicode() -> None:
    raw = crlf(
        "From: =?utf-8?q?J=C3=BCrgen?= <j@xn--bcher-kva.example>\n"
        "To: anna@bücher.example, <bob@xn--mnchen-3ya.example>\n\nx\n"
    )
    message = parse_message(raw)
    assert message.from_ == (Address("Jürgen", "j@bücher.example"),)
    assert [a.address for a in message.to] == ["anna@bücher.example", "bob@münchen.example"]


@pytest.mark.parametrize(
    ("value", "expected", "bad"),
    [
        ("undisclosed-recipients:;", [("undisclosed-recipients", "")], False),
        ("team: x@example.com, y@example.com;, z@example.com", [("", "x@example.com"), ("", "y@example.com"),
                                                                 ("", "z@example.com")], False),
        ("a@example.com (Alice Example)", [("", "a@example.com")], False),
        ('"Doe, John" <john@example.com>', [("Doe, John", "john@example.com")], False),
        ("<@relay.example:user@example.com>", [("", "user@example.com")], False),
        ("John Smith john@example.com", [("John Smith", "john@example.com")], True),
        ("<Undisclosed-Recipient:;@example.com>", [("Undisclosed-Recipient:;@example.com", "")], True),
        ("root", [("root", "")], True),
        ("<>", [], False),
    ],
)  # fmt: skip
def test_address_lists(value: str, expected: list[tuple[str, str]], bad: bool) -> None:
    message = parse_message(crlf(f"From: a@example.com\nTo: {value}\n\nx\n"))
    assert [(a.name, a.address) for a in message.to] == expected
    assert ("bad-address:to" in message.defects) is bad


def test_dates_are_aware_utc() -> None:
    def date_of(value: str) -> ParsedMessage:
        return parse_message(crlf(f"From: a@example.com\nDate: {value}\n\nx\n"))

    assert date_of("Thu, 22 Aug 2002 18:26:25 +0700").date == datetime(2002, 8, 22, 11, 26, 25, tzinfo=UTC)
    assert date_of("Thu, 22 Aug 2002 18:26:25 -0000").date == datetime(2002, 8, 22, 18, 26, 25, tzinfo=UTC)
    broken = date_of("yesterday at noon")
    assert broken.date is None
    assert "bad-date" in broken.defects
    missing = parse_message(crlf("From: a@example.com\n\nx\n"))
    assert missing.date is None
    assert "no-date" in missing.defects


def test_reference_ids_and_header_order() -> None:
    raw = crlf(
        "Received: from a by b\n"
        "From: a@example.com\n"
        "Received: from c by d\n"
        "Message-ID: <abc@example.com>\n"
        "In-Reply-To: <parent@example.com> (John's message of Tuesday)\n"
        "References: <root@example.com>\n <parent@example.com> <root@example.com>\n"
        "X-Folded: one\n\ttwo\n"
        "\nx\n"
    )
    message = parse_message(raw)
    assert [name for name, _ in message.headers] == [
        "Received", "From", "Received", "Message-ID", "In-Reply-To", "References", "X-Folded",
    ]  # fmt: skip
    assert message.headers[-1] == ("X-Folded", "one\ttwo")
    assert (message.message_id, message.in_reply_to) == ("abc@example.com", "parent@example.com")
    assert message.references == ("root@example.com", "parent@example.com")


def test_an_mbox_separator_line_is_no_header() -> None:
    raw = b"From alice@example.com  Thu Aug 22 12:36:23 2002\nFrom: alice@example.com\nSubject: s\n\nbody\n"
    message = parse_message(raw)
    assert [name for name, _ in message.headers] == ["From", "Subject"]
    assert message.text == "body\n"
    assert message.size == len(raw)


@pytest.mark.parametrize(
    ("subject", "key"),
    [
        ("Re: Fwd: AW: [list] Quarterly report", "quarterly report"),
        ("RE[2]:  WG: Quarterly   Report", "quarterly report"),
        ("Quarterly report", "quarterly report"),
        ("Re: Re:", ""),
    ],
)
def test_normalize_subject(subject: str, key: str) -> None:
    assert threads.normalize_subject(subject) == key


def test_message_id_forms() -> None:
    assert threads.message_id("<a@b>") == "a@b"
    assert threads.message_id(" a@b ") == "a@b"
    assert threads.message_id("123456") == "123456"
    assert threads.message_id("not an id") is None
    many = " ".join(f"<id{i}@x>" for i in range(300))
    ids = threads.reference_ids(many)
    assert len(ids) == threads.MAX_REFERENCES
    assert (ids[0], ids[1], ids[-1]) == ("id0@x", "id201@x", "id299@x")


# ----- bodies: charsets, html, calendar, nested messages, inline images -----


def test_html_only_mail_gets_text_and_sanitized_html() -> None:
    html = (
        '<html><head><title>T</title><style>p {}</style></head><body onload="x()">'
        '<p style="color: red; position: fixed">Hello <b>world</b></p>'
        "<ul><li>one</li><li>two</li></ul>"
        '<img src="cid:logo@example.com"><a href="javascript:alert(1)">click</a>'
        "<script>alert(1)</script></body></html>"
    )
    message = parse_message(wire(compose(text=None, html=html)))
    assert message.text == "Hello world\n\n  * one\n  * two\n\nclick"
    assert message.html is not None
    assert "<script" not in message.html and "alert" not in message.html and "onload" not in message.html
    assert "javascript:" not in message.html
    assert '<img src="cid:logo@example.com">' in message.html
    assert 'style="color:red"' in message.html
    assert "position" not in message.html


def test_text_part_wins_over_html() -> None:
    message = parse_message(wire(compose(text="plain version", html="<p>html version</p>")))
    assert message.text.strip() == "plain version"
    assert message.html == "<p>html version</p>\n"


@pytest.mark.parametrize(
    ("html", "text"),
    [
        ("<p>a</p><p>b</p>", "a\n\nb"),
        ("<div>a</div><div>b</div>", "a\nb"),
        ("a<br>b<br><br>c", "a\nb\n\nc"),
        ("<table><tr><td>x</td><td>y</td></tr><tr><td>z</td></tr></table>", "x  y\nz"),
        ("<ol><li>first</li><li>second</li></ol>", "  1. first\n  2. second"),
        ("<pre>  keep\n    this</pre>", "  keep\n    this"),
        ("a &amp; b&nbsp;&nbsp;c &lt;tag&gt;", "a & b  c <tag>"),
        ('<img alt="a>b" src="cid:x">after', "after"),
        ("   \n  ", ""),
    ],
)
def test_html_to_text_layout(html: str, text: str) -> None:
    assert sanitized_to_text(sanitize(html)) == text


def test_inline_cid_image() -> None:
    msg = compose(text=None, html='<p>Logo: <img src="cid:logo@example.com"></p>')
    html_part = msg.get_body(("html",))
    assert html_part is not None
    html_part.add_related(b"\x89PNG fake", maintype="image", subtype="png", cid="<logo@example.com>")
    message = parse_message(wire(msg))
    [image] = message.attachments
    assert (image.content_type, image.content_id, image.inline, image.data) == (
        "image/png", "logo@example.com", True, b"\x89PNG fake",
    )  # fmt: skip
    assert message.html is not None and "cid:logo@example.com" in message.html


def test_nested_message_is_one_attachment() -> None:
    inner = compose(subject="Inner subject", text="inner text")
    outer = compose(subject="Fwd: Inner subject", text="see attached")
    outer.add_attachment(inner)
    message = parse_message(wire(outer))
    assert message.text.strip() == "see attached"
    [attachment] = message.attachments
    assert attachment.content_type == "message/rfc822"
    nested = parse_message(attachment.data)
    assert (nested.subject, nested.text.strip()) == ("Inner subject", "inner text")


def test_calendar_parts() -> None:
    ics = "BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nSUMMARY:Planung\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    msg = compose(text="You are invited")
    msg.add_alternative(ics, subtype="calendar", params={"method": "REQUEST"})
    msg.add_attachment(ics.encode(), maintype="text", subtype="calendar", filename="invite.ics")
    message = parse_message(wire(msg))
    assert len(message.calendar) == 2
    assert all("SUMMARY:Planung" in text for text in message.calendar)
    assert [a.filename for a in message.attachments] == ["invite.ics"]  # the alternative is no attachment


@pytest.mark.parametrize(
    ("charset", "body", "text", "defect"),
    [
        ("iso-8859-1", "\u201cquoted\u201d".encode("cp1252"), "\u201cquoted\u201d", None),  # read as cp1252
        ("us-ascii", "café".encode(), "café", "charset-fallback:us-ascii"),  # UTF-8 under an ASCII label
        ("unknown-8bit", "café".encode("cp1252"), "café", "charset-fallback:unknown-8bit"),
        ("default", "Müller".encode("cp1252"), "Müller", "charset-fallback:default"),
        ("chinesebig5", "中文".encode("big5"), "中文", None),
        ("ks_c_5601-1987", "한국어".encode("cp949"), "한국어", None),
        ("iso-2022-jp", "日本語".encode("iso2022_jp"), "日本語", None),
        ("big5", "中文".encode("big5") + b"\xff", "中文\ufffd", "charset-fallback:big5"),
    ],
)
def test_body_charsets(charset: str, body: bytes, text: str, defect: str | None) -> None:
    raw = b"From: a@example.com\r\nContent-Type: text/plain; charset=" + charset.encode() + b"\r\n\r\n" + body
    message = parse_message(raw)
    assert message.text == text
    assert [d for d in message.defects if d.startswith("charset")] == ([defect] if defect else [])


def test_charset_chain_edges() -> None:
    assert decode(b"plain", "no-such-charset") == ("plain", None)
    assert decode("é".encode("cp1252"), "utf-8") == ("\ufffd", "charset-fallback:utf-8")
    assert decode(b"caf\xe9", "base64") == ("café", "charset-fallback:base64")  # a transform, not a charset


# ----- visible reply -----

GMAIL = """Thanks, that works.

On Tue, Mar 5, 2024 at 10:00 AM John Doe <john@example.com> wrote:
> Does it work?
> --
> John
"""
GMAIL_WRAPPED = """Sure.

On Tue, Mar 5, 2024 at 10:00 AM Johnathan Doe-Smithington <
johnathan.doe-smithington@example.com> wrote:

> Does it work?
"""
OUTLOOK = """Yes, approved.

Best,
Anna

________________________________
From: John Doe <john@example.com>
Sent: Tuesday, March 5, 2024 10:00 AM
To: Anna <anna@example.com>
Subject: Approval

Please approve.
"""
OUTLOOK_CLASSIC = "Ok\n\n-----Original Message-----\nFrom: a\nSent: b\n\nold text\n"
GERMAN = """Passt so.

Viele Grüße
Max

Am Di., 5. März 2024 um 10:00 Uhr schrieb John Doe <john@example.com>:
> Passt das?
"""
GERMAN_OUTLOOK = (
    "Danke!\n\nVon: John Doe <john@example.com>\nGesendet: Dienstag, 5. März 2024\nAn: Max\nBetreff: Frage\n\nFrage?"
)
INLINE = "John wrote:\n> question one?\nanswer one\n> question two?\nanswer two\n-- \nJohn's signature\n"
FRENCH = "Oui.\n\nLe mar. 5 mars 2024 à 10:00, Jean <jean@example.fr> a écrit :\n> Ça va ?\n"


@pytest.mark.parametrize(
    ("text", "reply"),
    [
        (GMAIL, "Thanks, that works."),
        (GMAIL_WRAPPED, "Sure."),
        (OUTLOOK, "Yes, approved.\n\nBest,\nAnna"),
        (OUTLOOK_CLASSIC, "Ok"),
        (GERMAN, "Passt so.\n\nViele Grüße\nMax"),
        (GERMAN_OUTLOOK, "Danke!"),
        (INLINE, "answer one\nanswer two"),
        (FRENCH, "Oui."),
        ("Hello there\n\n-- \nJohn Doe\nACME Corp\n", "Hello there"),
        ("Yes\n\nSent from my iPhone\n", "Yes"),
        ("FYI\n\n---------- Forwarded message ---------\nFrom: X <x@y>\nDate: Tue\n\nbody", "FYI"),
        ("A note.\nNothing quoted: not even this line.\n", "A note.\nNothing quoted: not even this line."),
        ("On the other hand:\n\nthis is still the message\n", "On the other hand:\n\nthis is still the message"),
    ],
)
def test_reply_text(text: str, reply: str) -> None:
    assert quoting.reply_text(text) == reply
    assert quoting.reply_text(text.replace("\n", "\r\n")) == reply


def test_reply_text_of_a_parsed_reply() -> None:
    message = parse_message(wire(compose(text=GERMAN)))
    assert message.reply_text == "Passt so.\n\nViele Grüße\nMax"
    assert "schrieb" in message.text


def test_reply_text_of_a_huge_line_is_linear() -> None:
    text = ("x" * 200 + ":\n") * 5_000 + "wrote:" * 50_000
    assert quoting.reply_text(text).endswith("wrote:")


# ----- TNEF -----


def tnef_attribute(level: int, attribute: int, data: bytes) -> bytes:
    size = len(data).to_bytes(4, "little")
    return bytes([level]) + attribute.to_bytes(4, "little") + size + data + (sum(data) & 0xFFFF).to_bytes(2, "little")


def mapi_string(kind: int, prop: int, value: bytes) -> bytes:
    """One variable-length MAPI property: type, id, a value count of 1, the length, the padded value."""
    padded = value + b"\0" * (-len(value) % 4)
    return (
        kind.to_bytes(2, "little")
        + prop.to_bytes(2, "little")
        + (1).to_bytes(4, "little")
        + (len(value).to_bytes(4, "little") + padded)
    )


def build_tnef(files: list[tuple[str, bytes, str | None]]) -> bytes:
    """A winmail.dat as Outlook writes one: each file's 8.3 title and data as attributes, its long name
    (UTF-16) and MIME type as MAPI properties."""
    out = tnef.SIGNATURE.to_bytes(4, "little") + (0x1234).to_bytes(2, "little")
    out += tnef_attribute(1, 0x00089006, b"\x00\x00\x01\x00")  # attTnefVersion
    out += tnef_attribute(1, 0x00069007, (1252).to_bytes(4, "little") + bytes(4))  # attOemCodepage
    out += tnef_attribute(1, 0x00069003, (0).to_bytes(4, "little"))  # empty message properties
    for name, data, mime in files:
        out += tnef_attribute(2, 0x00069002, b"\x01\x00" + b"\xff" * 4 + bytes(8))  # attAttachRenddata
        out += tnef_attribute(2, 0x00018010, name[:8].encode("cp1252", "replace") + b"\0")  # attAttachTitle
        out += tnef_attribute(2, 0x0006800F, data)  # attAttachData
        props = [mapi_string(0x001F, 0x3707, (name + "\0").encode("utf-16-le"))]
        if mime:
            props.append(mapi_string(0x001E, 0x370E, mime.encode() + b"\0"))
        props.append((0x0003).to_bytes(2, "little") + (0x3705).to_bytes(2, "little") + (1).to_bytes(4, "little"))
        block = len(props).to_bytes(4, "little") + b"".join(props)
        out += tnef_attribute(2, 0x00069005, block)  # attAttachment
    return out


def test_winmail_dat_is_replaced_by_its_files() -> None:
    stream = build_tnef([("Jahresbericht 2024.pdf", b"%PDF-1.7", "application/pdf"), ("Übersicht.txt", b"rows", None)])
    msg = compose(text="see attachments")
    msg.add_attachment(stream, maintype="application", subtype="ms-tnef", filename="winmail.dat")
    message = parse_message(wire(msg))
    assert [(a.index, a.filename, a.content_type, a.data) for a in message.attachments] == [
        (0, "Jahresbericht 2024.pdf", "application/pdf", b"%PDF-1.7"),
        (1, "Übersicht.txt", "text/plain", b"rows"),
    ]
    assert message.defects == ()


def test_broken_winmail_dat_stays_an_attachment() -> None:
    msg = compose(text="x")
    msg.add_attachment(b"not tnef at all", maintype="application", subtype="ms-tnef", filename="winmail.dat")
    message = parse_message(wire(msg))
    assert [a.filename for a in message.attachments] == ["winmail.dat"]
    assert "bad-tnef" in message.defects


def test_truncated_tnef_keeps_what_was_read() -> None:
    stream = build_tnef([("a.txt", b"first", None), ("b.txt", b"second file", None)])
    files = tnef.unpack(stream[: stream.rindex(b"second file") + 3])
    assert [(f.filename, f.data) for f in files] == [("a.txt", b"first")]


# ----- defects -----

MULTIPART = (
    "From: a@example.com\nDate: Tue, 05 Mar 2024 10:00:00 +0000\nContent-Type: multipart/mixed{params}\n\n{body}"
)
PARTS = "--XX\nContent-Type: text/plain\n\nthe text\n--XX\nContent-Type: application/pdf; name=a.pdf\n\n%PDF\n--XX--\n"


@pytest.mark.parametrize(
    ("raw", "defect"),
    [
        (b"From: a@example.com\r\nSubject: a\x00b\r\n\r\nbody", "nul-bytes"),
        (b"From: a@example.com\nDate: Tue, 05 Mar 2024 10:00:00 +0000\n\nbody\n", "lf-line-ends"),
        ("From: J\xfcrgen <j@example.com>\r\nSubject: gr\xfc\xdfe\r\n\r\nx".encode("latin-1"), "8bit-header"),
        (b"From: a@example.com\r\nthis line is no header\r\n\r\nbody", "missing-header-separator"),
        (b" folded first\r\nFrom: a@example.com\r\n\r\nbody", "bad-header-line"),
        (b"Subject: none\r\n\r\nbody", "no-from"),
        (b"From: a@example.com\r\n\r\nbody", "no-date"),
        (b"From: a@example.com\r\nDate: the day after\r\n\r\nbody", "bad-date"),
        (b"From: a@example.com\r\nTo: nobody\r\n\r\nbody", "bad-address:to"),
        (b"From: a@example.com\r\nSubject: =?utf-8?b?!!!?=\r\n\r\nbody", "bad-encoded-word"),
        (b"From: a@example.com\r\nContent-Type: text/plain; charset=unknown-8bit\r\n\r\ncaf\xe9",
         "charset-fallback:unknown-8bit"),
        (b"From: a@example.com\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8*&^%$\r\n", "bad-base64"),
        (b"From: a@example.com\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nbad =ZZ escape\r\n",
         "bad-quoted-printable"),
        (MULTIPART.format(params="", body=PARTS).encode(), "missing-boundary"),
        (MULTIPART.format(params="; boundary=YY", body=PARTS).encode(), "missing-boundary"),
        (MULTIPART.format(params="; boundary=XX", body=PARTS.removesuffix("--XX--\n")).encode(),
         "missing-close-boundary"),
    ],
)  # fmt: skip
def test_defects(raw: bytes, defect: str) -> None:
    message = parse_message(raw)
    assert defect in message.defects
    assert message.size == len(raw)


def test_nul_bytes_never_reach_text_fields() -> None:
    message = parse_message(b"From: a@example.com\r\nSubject: a\x00b\r\n\r\nbo\x00dy")
    assert (message.subject, message.text) == ("a\ufffdb", "bo\ufffddy")


@pytest.mark.parametrize("params", ["; boundary=YY", ';\n boundary="YY"', ""])
def test_a_missing_boundary_is_recovered_from_the_body(params: str) -> None:
    message = parse_message(MULTIPART.format(params=params, body=PARTS).encode())
    assert "missing-boundary" in message.defects
    assert message.text == "the text"
    assert [(a.filename, a.data) for a in message.attachments] == [("a.pdf", b"%PDF")]


def test_a_multipart_without_any_boundary_keeps_its_body_as_text() -> None:
    message = parse_message(MULTIPART.format(params="", body="just text, no parts\n").encode())
    assert message.text == "just text, no parts\n"
    assert "missing-boundary" in message.defects


def test_bad_base64_in_an_attachment_is_decoded_leniently() -> None:
    body = PARTS.replace("Content-Type: application/pdf; name=a.pdf\n", "Content-Type: application/pdf; name=a.pdf\n"
                         "Content-Transfer-Encoding: base64\n").replace("%PDF", "JVBERg=*=!")  # fmt: skip
    message = parse_message(MULTIPART.format(params="; boundary=XX", body=body).encode())
    assert [a.data for a in message.attachments] == [b"%PDF"]
    assert "bad-base64" in message.defects
    assert message.text == "the text"


def nested(depth: int, leaf: str) -> bytes:
    head = "".join(f"Content-Type: multipart/mixed; boundary=b{i}\n\n--b{i}\n" for i in range(depth))
    return f"From: a@example.com\n{head}{leaf}".encode()


def test_a_nesting_bomb_is_not_read() -> None:
    message = parse_message(nested(1000, "Content-Type: text/plain\n\ndeep\n"))
    assert "mime-structure" in message.defects  # fast-mail-parser refuses it; the stdlib is not tried
    assert (message.text, message.from_) == ("", (Address("", "a@example.com"),))


def test_the_stdlib_reader_stops_at_its_depth() -> None:
    message = parse_message(nested(100, "Content-Type: text/plain; charset=unknown-8bit\n\ndeep \xe9\n"))
    assert "mime-too-deep" in message.defects
    assert message.text == ""


def test_html_too_deep_to_sanitize_keeps_its_text() -> None:
    raw = b"From: a@example.com\r\nContent-Type: text/html\r\n\r\n" + b"<div>" * 50_000 + b"deep &amp; dark"
    message = parse_message(raw)
    assert (message.html, message.text) == (None, "deep & dark")
    assert "html-too-deep" in message.defects


@pytest.mark.parametrize(
    "raw",
    [
        # fast-mail-parser decodes a header's encoded-words in quadratic time: it never sees the headers
        b"From: a@example.com\r\nSubject: " + b" ".join([b"=?utf-8?q?a=C3=A9?="] * 100_000) + b"\r\n\r\nx",
        # html5ever scans its open elements per block element
        b"From: a@example.com\r\nContent-Type: text/html\r\n\r\n" + b"<span>" * 30_000 + b"<div></div>" * 30_000,
        # an inline reply's attribution lines, each followed by quoted and new text
        b"From: a@example.com\r\n\r\n" + b"On Monday x wrote:\r\n> q\r\nanswer\r\n" * 200_000,
        b"From: a@example.com\r\nTo: " + b", ".join([b'"N, x" (c) <u@example.com>'] * 50_000) + b"\r\n\r\nx",
    ],
    ids=["encoded-words", "nested-html", "attributions", "addresses"],
)
def test_hostile_input_stays_linear(raw: bytes) -> None:
    started = time.perf_counter()
    parse_message(raw)
    assert time.perf_counter() - started < 10  # quadratic costs took minutes here


def test_an_internal_error_is_contained(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(parse, "read_body", broken)
    raw = b"From: a@example.com\r\n\r\nx"
    message = parse_message(raw)
    assert message.defects == (defects.INTERNAL_ERROR,)
    assert message.size == len(raw)


def test_to_json_is_json() -> None:
    msg = compose(attachments=((b"data", "application/octet-stream", "x.bin", "attachment"),))
    payload = parse_message(wire(msg)).to_json()
    assert json.loads(json.dumps(payload)) == payload
    assert payload["from"] == [{"name": "Alice", "address": "alice@example.com"}]
    assert payload["date"] == "2024-03-05T09:00:00+00:00"
    assert payload["attachments"] == [
        {"index": 0, "filename": "x.bin", "content_type": "application/octet-stream", "size": 4,
         "sha256": hashlib.sha256(b"data").hexdigest(), "content_id": None, "inline": False}
    ]  # fmt: skip
    assert "data" not in payload["attachments"][0]


# ----- never raises -----

SEEDS = [
    wire(compose()),
    wire(compose(text=None, html="<p>x<b>y</b></p><ul><li>z</ul>")),
    wire(compose(attachments=((b"\x00\x01binary", "application/pdf", "Bericht – Q3.pdf", "attachment"),))),
    wire(compose(subject="=?utf-8?q?x?=", text=GMAIL)),
    MULTIPART.format(params="; boundary=XX", body=PARTS).encode(),
    b"From: a@b\r\nContent-Type: text/plain; charset=chinesebig5\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + base64.b64encode("中文".encode("big5")),
    b"From: a@b\r\nContent-Type: application/ms-tnef; name=winmail.dat\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + base64.b64encode(build_tnef([("a.txt", b"first", "text/plain")])),
]
TOKENS = [
    b"\r\n", b"\n", b"\r\n\r\n", b"--", b"--XX", b"--XX--", b"=?utf-8?b?", b"=?x?q?", b"?=", b"\x00", b"\xff\xfe",
    b"=", b"=\r\n", b";", b'"', b"<", b">", b"(", b")", b":", b",", b"boundary=XX", b"charset=default",
    b"Content-Type: multipart/mixed; boundary=XX\r\n", b"Content-Type: message/rfc822\r\n",
    b"Content-Transfer-Encoding: base64\r\n", b"filename*0*=utf-8''%E2%80", tnef.SIGNATURE.to_bytes(4, "little"),
]  # fmt: skip


@st.composite
def mutated_mime(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(("insert", "delete", "flip", "truncate")))
        if action == "insert":
            data[at:at] = draw(st.sampled_from(TOKENS) | st.binary(max_size=8))
        elif action == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif action == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif action == "truncate":
            del data[at:]
    return bytes(data)


ANY_BYTES = st.one_of(st.binary(max_size=2000), mutated_mime())


def check_never_raises(raw: bytes) -> None:
    message = parse_message(raw)
    assert isinstance(message, ParsedMessage)
    assert message.size == len(raw)
    assert defects.INTERNAL_ERROR not in message.defects
    assert [a.index for a in message.attachments] == list(range(len(message.attachments)))
    json.dumps(message.to_json())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ANY_BYTES)
def test_any_bytes_parse(raw: bytes) -> None:
    check_never_raises(raw)


@pytest.mark.fuzz
@settings(max_examples=10_000 if FUZZ else 50, deadline=None, suppress_health_check=list(HealthCheck))
@given(ANY_BYTES)
def test_any_bytes_parse_long(raw: bytes) -> None:
    check_never_raises(raw)


@settings(max_examples=200 if not FUZZ else 5_000, deadline=None)
@given(st.binary(max_size=600).map(lambda tail: build_tnef([("a.txt", b"x" * 20, "text/plain")])[:90] + tail))
def test_any_tnef_stream_unpacks_or_fails_cleanly(stream: bytes) -> None:
    try:
        files = tnef.unpack(stream)
    except tnef.TnefError:
        return
    assert all(isinstance(f.data, bytes) for f in files)
