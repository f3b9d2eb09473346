"""Composing outbound mail: structure, encodings, wire hygiene, and header injection that never lands.

Every message is read back with the stdlib parser (``policy.default``), as a receiving client would.
"""

from __future__ import annotations

import email
import email.policy
import re
import time
from datetime import UTC, datetime, timedelta, timezone
from email.header import decode_header, make_header
from email.message import EmailMessage
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.domain.address import Address, parse_address
from mailgate.domain.errors import InvalidInput
from mailgate.mime.compose import Attachment, Draft, compose, html_to_text
from mailgate.mime.headers import encode_words, validate_extra_headers

DOMAIN = "mail.example.com"
BASE_HEADERS = {"from", "to", "subject", "date", "message-id", "mime-version", "content-type"}
INJECTED = "a\r\nBcc: injected@evil.example"
# Encoded-words that decode to a CRLF: the stdlib of Python < 3.11.10 writes them out decoded.
SMUGGLED = "=?utf-8?q?a=0D=0ABcc:_injected@evil.example?="


def draft(**overrides: Any) -> Draft:
    values: dict[str, Any] = {
        "from_": parse_address("Sender <sender@example.com>"),
        "to": [parse_address("Rcpt <rcpt@example.org>")],
        "cc": [],
        "bcc": [],
        "reply_to": [],
        "subject": "Hello",
        "text": "Hi there.\n",
        "html": None,
        "attachments": [],
        "headers": [],
    }
    values.update(overrides)
    return Draft(**values)


def build(**overrides: Any) -> tuple[bytes, EmailMessage]:
    raw, message_id = compose(draft(**overrides), message_id_domain=DOMAIN)
    assert_wire_clean(raw)
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert message["Message-ID"] == message_id
    assert not message.defects
    return raw, message


def assert_wire_clean(raw: bytes) -> None:
    assert raw.endswith(b"\r\n")
    lines = raw.split(b"\r\n")
    assert not any(b"\r" in line or b"\n" in line for line in lines), "bare CR or LF"
    assert max(len(line) for line in lines) <= 998


def header_lines_starting(raw: bytes, name: bytes) -> list[bytes]:
    """Lines anywhere in the message that a reader would take as a ``name:`` header."""
    return re.findall(rb"(?im)^" + re.escape(name) + rb"[ \t]*:.*$", raw)


def header_names(message: EmailMessage) -> set[str]:
    return {name.lower() for name in message.keys()}  # noqa: SIM118 - keys() keeps duplicates visible


def structure(part: EmailMessage) -> Any:
    if part.is_multipart():
        return (part.get_content_type(), [structure(p) for p in part.iter_parts()])  # type: ignore[arg-type]
    return part.get_content_type()


def body_of(message: EmailMessage, subtype: str) -> str:
    part = message.get_body((subtype,))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content


def wire_text(text: str) -> str:
    """What a text body reads back as: line endings become CRLF and a final one is added."""
    text = re.sub(r"\r\n|\r|\n", "\r\n", text)
    return text if text.endswith("\r\n") else text + "\r\n"


def assert_display_name(raw: bytes, message: EmailMessage, header: str, expected: str) -> None:
    """Check the first display name of ``header`` as readers see it.

    The stdlib's address parser keeps the space between two encoded-words, which RFC 2047 6.2 says to
    drop; when a name needs several words we check it with an RFC 2047 decoder instead, and with the
    stdlib whenever it does not.
    """
    compat = email.message_from_bytes(raw, policy=email.policy.compat32)
    phrase = re.sub(r"\r\n[ \t]", " ", str(compat[header])).split(" <", 1)[0]
    words = re.findall(r"=\?[^?]+\?[qb]\?[^?]*\?=", phrase)
    if len(words) > 1:
        assert " ".join(words) == phrase
        assert str(make_header(decode_header(phrase))) == expected
    else:
        assert message[header].addresses[0].display_name == expected


def top_header_block(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0]


# ----- structure -----


def test_text_only_is_a_single_text_plain_part() -> None:
    _, message = build(text="Hi there.\nSecond line.")
    assert structure(message) == "text/plain"
    assert header_names(message) == BASE_HEADERS | {"content-transfer-encoding"}
    assert body_of(message, "plain") == "Hi there.\r\nSecond line.\r\n"
    assert message["From"].addresses[0].display_name == "Sender"
    assert message["To"].addresses[0].addr_spec == "rcpt@example.org"
    assert re.fullmatch(rf"<[0-9a-f]{{32}}@{re.escape(DOMAIN)}>", message["Message-ID"])


def test_header_order_puts_identity_first() -> None:
    raw, _ = build(cc=[parse_address("c@example.net")], reply_to=[parse_address("r@example.com")])
    names = [line.split(b":", 1)[0] for line in top_header_block(raw).split(b"\r\n") if line[:1] not in b" \t"]
    assert names[:7] == [b"From", b"To", b"Cc", b"Reply-To", b"Subject", b"Date", b"Message-ID"]
    assert names[-3:] == [b"MIME-Version", b"Content-Type", b"Content-Transfer-Encoding"]


def test_html_only_gets_a_derived_text_alternative() -> None:
    html = "<html><head><title>T</title><style>p{}</style></head><body><p>Hi &amp; welcome</p><p>Bye</p></body></html>"
    _, message = build(text=None, html=html)
    assert structure(message) == ("multipart/alternative", ["text/plain", "text/html"])
    assert body_of(message, "plain") == "Hi & welcome\r\n\r\nBye\r\n"
    assert body_of(message, "html") == html + "\r\n"


def test_text_and_html_are_alternatives_with_the_given_text() -> None:
    _, message = build(text="plain words", html="<p>html words</p>")
    assert structure(message) == ("multipart/alternative", ["text/plain", "text/html"])
    assert body_of(message, "plain") == "plain words\r\n"


def test_empty_strings_count_as_no_body() -> None:
    _, message = build(text="", html="<b>x</b>")
    assert body_of(message, "plain") == "x\r\n"


def test_inline_images_with_content_id_are_related_to_the_html() -> None:
    logo = bytes(range(256)) * 3
    _, message = build(
        html='<p><img src="cid:logo@x"></p>',
        attachments=[
            Attachment("logo.png", "image/png", logo, content_id="<logo@x>", inline=True),
            Attachment("report.pdf", "Application/PDF", b"%PDF-1.7\n\x00\xff"),
        ],
    )
    assert structure(message) == (
        "multipart/mixed",
        [
            ("multipart/alternative", ["text/plain", ("multipart/related", ["text/html", "image/png"])]),
            "application/pdf",
        ],
    )
    related = next(p for p in message.walk() if p.get_content_type() == "multipart/related")
    assert related.get_param("type") == "text/html"
    image = next(p for p in message.walk() if p.get_content_type() == "image/png")
    assert image["Content-ID"] == "<logo@x>"
    assert image.get_content_disposition() == "inline"
    assert image.get_payload(decode=True) == logo
    attachments = list(message.iter_attachments())
    assert [(a.get_filename(), a.get_payload(decode=True)) for a in attachments] == [
        ("report.pdf", b"%PDF-1.7\n\x00\xff")
    ]


def test_inline_parts_without_html_go_to_mixed() -> None:
    _, message = build(attachments=[Attachment("a.png", "image/png", b"\x89PNG", content_id="a", inline=True)])
    assert structure(message) == ("multipart/mixed", ["text/plain", "image/png"])
    part = list(message.iter_parts())[1]
    assert part.get_content_disposition() == "inline"
    assert part["Content-ID"] == "<a>"


def test_attachments_only() -> None:
    _, message = build(text=None, attachments=[Attachment("a.bin", "application/octet-stream", b"\x00" * 10)])
    assert structure(message) == ("multipart/mixed", ["application/octet-stream"])


def test_attachments_round_trip_byte_exact() -> None:
    payloads = [bytes(range(256)) * 40, b"line\r\nbare lf\nbare cr\rend", b"", "naïve".encode("latin-1")]
    attachments = [
        Attachment(f"file{i}.dat", ctype, data)
        for i, (ctype, data) in enumerate(
            zip(["application/octet-stream", "text/plain", "text/csv", "text/x-a+b"], payloads, strict=True)
        )
    ]
    _, message = build(attachments=attachments)
    got = [(a.get_filename(), a.get_content_type(), a.get_payload(decode=True)) for a in message.iter_attachments()]
    assert got == [(a.filename, a.content_type, a.data) for a in attachments]


# ----- encodings -----


def test_non_ascii_subject_and_names_are_rfc2047_and_the_message_is_ascii() -> None:
    raw, message = build(
        from_=parse_address('"Jörg Müller, Sr." <joerg@example.com>'),
        to=[parse_address("Zoë <zoe@bücher.example>"), parse_address("plain@example.org")],
        subject="Grüße aus Köln – 日本語",
    )
    assert raw.isascii()
    header_block = top_header_block(raw)
    assert b"=?utf-8?" in header_block
    assert b"xn--bcher-kva.example" in header_block
    assert message["Subject"] == "Grüße aus Köln – 日本語"
    assert message["From"].addresses[0].display_name == "Jörg Müller, Sr."
    assert [a.display_name for a in message["To"].addresses] == ["Zoë", ""]
    assert message["To"].addresses[0].domain == "xn--bcher-kva.example"


def test_non_ascii_local_part_switches_to_smtputf8() -> None:
    raw, _ = build(to=[parse_address("Jörg <jörg@example.de>")], subject="Grüße")
    assert "jörg@example.de".encode() in raw
    # message_from_bytes reads headers as ASCII (surrogate-escaping the rest): decode UTF-8 ourselves.
    message = email.message_from_string(raw.decode("utf-8"), policy=email.policy.default)
    assert message["To"].addresses[0].username == "jörg"
    assert message["Subject"] == "Grüße"
    assert b"=?utf-8?" in top_header_block(raw)  # text is still encoded: only the address needs UTF-8


def test_non_ascii_bodies_are_7bit_clean() -> None:
    text = "Grüße\n" + "é" * 3000 + "\n" + "x" * 5000
    raw, message = build(text=text, html="<p>" + "ü" * 4000 + "</p>")
    assert raw.isascii()
    assert body_of(message, "plain") == wire_text(text)
    for part in message.walk():
        if not part.is_multipart():
            assert part["Content-Transfer-Encoding"] in {"7bit", "quoted-printable", "base64"}


def test_nul_in_an_ascii_body_is_not_sent_as_7bit() -> None:
    _, message = build(text="a\x00b")
    assert message["Content-Transfer-Encoding"] == "quoted-printable"
    assert body_of(message, "plain") == "a\x00b\r\n"


@pytest.mark.parametrize(
    "filename",
    [
        "résumé.pdf",
        "日本語のファイル名" * 8 + ".txt",
        "x" * 200 + ".txt",
        'quote " and \\ backslash.txt',
        "wide\u3000space.txt",
        "=?utf-8?q?looks_encoded?=.txt",
        "plain name.txt",
    ],
)
def test_filenames_round_trip(filename: str) -> None:
    raw, message = build(attachments=[Attachment(filename, "text/plain", b"x")])
    (attachment,) = message.iter_attachments()
    assert attachment.get_filename() == filename
    if not filename.isascii():
        assert b"filename*" in raw and b"utf-8''" in raw


def test_filenames_are_stripped() -> None:
    _, message = build(attachments=[Attachment("  padded.txt \u3000", "text/plain", b"x")])
    (attachment,) = message.iter_attachments()
    assert attachment.get_filename() == "padded.txt"


def test_long_unbreakable_subject_stays_under_the_line_limit() -> None:
    subject = "x" * 3000
    _, message = build(subject=subject)
    assert message["Subject"] == subject


def test_long_display_names_decode_per_rfc2047() -> None:
    address = Address("Ŝtéfàn " * 20, "s", "example.com")
    raw, message = build(to=[address])
    assert message["To"].addresses[0].addr_spec == "s@example.com"
    assert re.search(rb"To: =\?utf-8\?[qb]\?.*\?=\r\n =\?utf-8", raw)  # several words, folded
    assert_display_name(raw, message, "To", address.display_name)


def test_bcc_only_mail_gets_undisclosed_recipients() -> None:
    raw, message = build(to=[], bcc=[parse_address("hidden@secret.example")])
    assert message["To"].addresses == ()
    assert b"undisclosed-recipients:;" in raw
    assert b"hidden" not in raw


def test_bcc_never_appears() -> None:
    raw, message = build(
        to=[parse_address("a@example.org")],
        cc=[parse_address("c@example.org")],
        bcc=[parse_address("Secret Person <hidden@secret.example>")],
    )
    assert "bcc" not in header_names(message)
    assert b"hidden" not in raw and b"Secret Person" not in raw and b"secret.example" not in raw


def test_extra_headers_are_written_verbatim() -> None:
    unsubscribe = "<https://example.com/unsubscribe/" + "a" * 300 + ">, <mailto:unsub@example.com?subject=x>"
    headers = validate_extra_headers(
        {
            "List-Unsubscribe": unsubscribe,
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "X-Campaign": "  spring sale  ",
            "X-Note": "Grüße",
            "References": " ".join(f"<id{i}@example.com>" for i in range(20)),
        }
    )
    raw, message = build(headers=headers)
    assert message["List-Unsubscribe"] == unsubscribe
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["X-Campaign"] == "spring sale"
    assert message["X-Note"] == "Grüße"
    assert b"=?" not in raw.split(b"List-Unsubscribe:", 1)[1].split(b"\r\nList-Unsubscribe-Post")[0]
    assert message["References"].split() == [f"<id{i}@example.com>" for i in range(20)]


def test_given_date_and_message_id_are_used() -> None:
    date = datetime(2026, 3, 1, 12, 30, tzinfo=timezone(timedelta(hours=2)))
    _, message = build(date=date, message_id="abc.123@example.com")
    assert message["Message-ID"] == "<abc.123@example.com>"
    assert message["Date"].datetime == date
    _, message = build(date=datetime(2026, 3, 1, 12, 30), message_id="<x@y>")
    assert message["Date"].datetime == datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
    assert message["Message-ID"] == "<x@y>"


def test_unicode_message_id_domain_is_encoded() -> None:
    raw, _ = compose(draft(), message_id_domain="bücher.example")
    assert b"@xn--bcher-kva.example>" in raw


# ----- refusals -----


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"text": None, "html": None}, "text"),
        ({"text": "", "html": ""}, "text"),
        ({"subject": INJECTED}, "subject"),
        ({"subject": "a\rb"}, "subject"),
        ({"subject": "a\x00b"}, "subject"),
        ({"subject": "\ud800"}, "subject"),
        ({"text": "\udfff"}, "text"),
        ({"html": "<p>\ud800</p>"}, "html"),
        ({"message_id": "no-at-sign"}, "message_id"),
        ({"message_id": "<a b@c>"}, "message_id"),
        ({"message_id": "<a@b>\r\nBcc: x@y"}, "message_id"),
        ({"headers": [("Bcc", "x@evil.example")]}, "headers.Bcc"),
        ({"headers": [("X-Campaign", INJECTED)]}, "headers.X-Campaign"),
    ],
)
def test_draft_refusals_name_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        compose(draft(**overrides), message_id_domain=DOMAIN)
    assert info.value.field == field


def test_bad_message_id_domain() -> None:
    with pytest.raises(InvalidInput) as info:
        compose(draft(), message_id_domain="bad domain")
    assert info.value.field == "message_id_domain"


@pytest.mark.parametrize(
    ("attachment", "field", "message"),
    [
        (Attachment("", "text/plain", b""), "filename", "empty"),
        (Attachment("   ", "text/plain", b""), "filename", "empty"),
        (Attachment(INJECTED, "text/plain", b""), "filename", "CR, LF or NUL"),
        (Attachment("a\x07.txt", "text/plain", b""), "filename", "control"),
        (Attachment("tab\there.txt", "text/plain", b""), "filename", "control"),
        (Attachment("x" * 256, "text/plain", b""), "filename", "255"),
        (Attachment("a.txt", "text", b""), "content_type", "type/subtype"),
        (Attachment("a.txt", "text/", b""), "content_type", "type/subtype"),
        (Attachment("a.txt", "/plain", b""), "content_type", "type/subtype"),
        (Attachment("a.txt", "text/plain; charset=utf-8", b""), "content_type", "type/subtype"),
        (Attachment("a.txt", "text/plain\r\nBcc: x@y", b""), "content_type", "type/subtype"),
        (Attachment("a.txt", "te xt/plain", b""), "content_type", "type/subtype"),
        (Attachment("a.txt", "multipart/mixed", b""), "content_type", "multipart"),
        (Attachment("a.eml", "message/rfc822", b""), "content_type", "message"),
        (Attachment("a.png", "image/png", b"", content_id="a\r\nb"), "content_id", "CR, LF or NUL"),
        (Attachment("a.png", "image/png", b"", content_id="<a<b>"), "content_id", "angle brackets"),
        (Attachment("a.png", "image/png", b"", content_id="a>b"), "content_id", "angle brackets"),
        (Attachment("a.png", "image/png", b"", content_id="<>"), "content_id", "empty"),
        (Attachment("a.png", "image/png", b"", content_id="a b"), "content_id", "printable ASCII"),
        (Attachment("a.png", "image/png", b"", content_id="ü@x"), "content_id", "printable ASCII"),
        (Attachment("a.png", "image/png", b"", content_id="=?utf-8?q?x?="), "content_id", "encoded-word"),
    ],
)
def test_attachment_refusals(attachment: Attachment, field: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)) as info:
        compose(draft(attachments=[Attachment("ok.txt", "text/plain", b"ok"), attachment]), message_id_domain=DOMAIN)
    assert info.value.field == f"attachments[1].{field}"


def test_duplicate_content_ids_are_refused() -> None:
    parts = [Attachment(f"{i}.png", "image/png", b"", content_id="same", inline=True) for i in range(2)]
    with pytest.raises(InvalidInput, match="earlier attachment") as info:
        compose(draft(html="<p/>", attachments=parts), message_id_domain=DOMAIN)
    assert info.value.field == "attachments[1].content_id"


# ----- header injection -----


def test_injection_in_a_header_value_is_refused() -> None:
    with pytest.raises(InvalidInput) as info:
        validate_extra_headers({"X-Campaign": INJECTED})
    assert info.value.field == "headers.X-Campaign"


def test_encoded_word_smuggling_a_crlf_into_an_extra_header_is_refused() -> None:
    with pytest.raises(InvalidInput, match="encoded-word") as info:
        validate_extra_headers({"X-Campaign": f"x {SMUGGLED}"})
    assert info.value.field == "headers.X-Campaign"


def test_injection_in_a_display_name_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        parse_address(f'"{INJECTED}" <a@example.com>')
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        Address(INJECTED, "a", "example.com")


@pytest.mark.parametrize("text", [SMUGGLED, f"x {SMUGGLED} y", "=?utf-8?b?YQ0KQmNjOiB4QHk=?=", "a\x0bBcc: x@y\x0c"])
def test_smuggling_through_subject_and_names_is_encoded_not_decoded(text: str) -> None:
    raw, message = build(
        subject=text,
        from_=Address(text, "sender", "example.com"),
        to=[Address(text, "rcpt", "example.org")],
        reply_to=[Address(text, "reply", "example.org")],
    )
    assert header_names(message) == BASE_HEADERS | {"reply-to", "content-transfer-encoding"}
    assert header_lines_starting(raw, b"bcc") == []
    assert message["Subject"] == text
    for name in ("From", "To", "Reply-To"):
        assert_display_name(raw, message, name, Address(text, "a", "b.example").display_name)


@pytest.mark.parametrize("filename", [SMUGGLED + ".pdf", "=?utf-8?b?YQ0KQmNjOiB4QHk=?=.pdf"])
def test_smuggling_through_a_filename_is_encoded_not_decoded(filename: str) -> None:
    raw, message = build(attachments=[Attachment(filename, "application/pdf", b"%PDF")])
    assert header_lines_starting(raw, b"bcc") == []
    (attachment,) = message.iter_attachments()
    assert attachment.get_filename() == filename
    assert set(attachment.keys()) == {"Content-Type", "Content-Transfer-Encoding", "Content-Disposition"}


# ----- extra header policy -----


@pytest.mark.parametrize(
    "name",
    [
        "From", "sender", "TO", "Cc", "bcc", "Reply-To", "subject", "Date", "message-id", "MIME-Version",
        "Content-Type", "content-transfer-encoding", "Content-Disposition", "Content-ID", "Return-Path",
        "Received", "DKIM-Signature", "ARC-Seal", "arc-message-signature", "Authentication-Results",
        "Resent-From", "resent-message-id", "X-Mailgate-Tenant", "x-mailgate-anything",
    ],
)  # fmt: skip
def test_structural_headers_cannot_be_overridden(name: str) -> None:
    with pytest.raises(InvalidInput, match="set by mailgate") as info:
        validate_extra_headers({name: "x"})
    assert info.value.field == f"headers.{name}"


@pytest.mark.parametrize(
    "name",
    ["X-Campaign", "List-Unsubscribe", "List-Unsubscribe-Post", "In-Reply-To", "References", "Auto-Submitted",
     "Precedence", "X-Priority", "List-Id", "Keywords"],
)  # fmt: skip
def test_ordinary_headers_are_allowed(name: str) -> None:
    assert validate_extra_headers({name: " value "}) == [(name, "value")]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("", "x", "empty"),
        ("X Campaign", "x", "ftext"),
        ("X:Campaign", "x", "ftext"),
        ("X-Ünïcode", "x", "ftext"),
        ("X-Tab\t", "x", "ftext"),
        ("X-A", "a\nb", "CR, LF or NUL"),
        ("X-A", "a\rb", "CR, LF or NUL"),
        ("X-A", "a\x00b", "CR, LF or NUL"),
        ("X-A", "a\x1bb", "control"),
        ("X-A", "x" * 999, "999 characters"),
        ("X-A", "\ud800", "lone surrogate"),
        ("X-" + "A" * 990, "x" * 8, "998 octets"),
    ],
)
def test_bad_extra_headers(name: str, value: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)) as info:
        validate_extra_headers({name: value})
    assert info.value.field == f"headers.{name}"


def test_longest_allowed_value_fits_the_line_limit() -> None:
    headers = validate_extra_headers({"X-Token": "t" * 980})
    _, message = build(headers=headers)
    assert message["X-Token"] == "t" * 980


# ----- html to text, encoded words -----


def test_html_to_text() -> None:
    html = "<div>One<br>Two</div><!-- hidden --><script>alert(1)</script>\n<p>Three &lt;3&nbsp;x</p><ul><li>a</li></ul>"
    assert html_to_text(html) == "One\nTwo\n\nThree <3 x\n\na"


@pytest.mark.parametrize("hostile", ["<" * 200_000, "<!--" * 50_000, "<script>" * 50_000, "<p " * 100_000])
def test_html_to_text_is_linear_on_hostile_input(hostile: str) -> None:
    started = time.monotonic()
    html_to_text(hostile)
    assert time.monotonic() - started < 2


def test_encoded_words_respect_the_length_limit_and_characters() -> None:
    text = "😀" * 100 + "abc " * 50
    words = encode_words(text, first_width=30)
    assert len(words[0]) <= 30
    assert all(len(word) <= 75 for word in words)
    assert str(make_header(decode_header(" ".join(words)))) == text


# ----- properties -----

_header_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\r\n\x00"), max_size=120)
_short_names = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\r\n\x00"), max_size=10)
_bodies = st.text(st.characters(exclude_categories=("Cs",)), max_size=400)
_filenames = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="".join(map(chr, [*range(32), 127]))),
    min_size=1,
    max_size=80,
).filter(str.strip)


@pytest.mark.fuzz
@given(subject=_header_text, name=_header_text)
def test_any_subject_and_display_name_round_trip(subject: str, name: str) -> None:
    sender = Address(name, "sender", "example.com")
    raw, message = build(subject=subject, from_=sender, to=[sender, Address("", "two", "example.org")])
    assert header_names(message) == BASE_HEADERS | {"content-transfer-encoding"}
    assert message["Subject"] == subject
    assert [a.addr_spec for a in message["To"].addresses] == ["sender@example.com", "two@example.org"]
    assert message["From"].addresses[0].addr_spec == "sender@example.com"
    assert_display_name(raw, message, "From", sender.display_name)
    assert_display_name(raw, message, "To", sender.display_name)


@pytest.mark.fuzz
@given(name=_short_names)
def test_short_display_names_read_back_exactly_with_the_stdlib(name: str) -> None:
    sender = Address(name, "sender", "example.com")
    _, message = build(from_=sender)
    assert message["From"].addresses[0].display_name == sender.display_name


@pytest.mark.fuzz
@given(text=_bodies, html=st.one_of(st.none(), _bodies))
def test_any_body_round_trips(text: str, html: str | None) -> None:
    if not text and not html:
        return
    _, message = build(text=text, html=html)
    assert header_names(message) >= BASE_HEADERS and "bcc" not in header_names(message)
    if text:
        assert body_of(message, "plain") == wire_text(text)
    if html:
        assert body_of(message, "html") == wire_text(html)


@pytest.mark.fuzz
@given(filename=_filenames, data=st.binary(max_size=300))
def test_any_filename_and_payload_round_trip(filename: str, data: bytes) -> None:
    _, message = build(attachments=[Attachment(filename, "application/octet-stream", data)])
    (attachment,) = message.iter_attachments()
    assert attachment.get_filename() == filename.strip()
    assert attachment.get_payload(decode=True) == data
    assert header_names(message) == BASE_HEADERS


@pytest.mark.fuzz
@given(value=st.text(max_size=200))
def test_any_extra_header_value_is_refused_or_lands_in_its_own_header(value: str) -> None:
    try:
        headers = validate_extra_headers({"X-Campaign": value})
    except InvalidInput as exc:
        assert exc.field == "headers.X-Campaign"
        return
    _, message = build(headers=headers)
    assert header_names(message) == BASE_HEADERS | {"content-transfer-encoding", "x-campaign"}
    if "=?" not in value:  # readers decode encoded-words in unstructured values, as they should
        assert message["X-Campaign"] == value.strip(" \t")


@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=400))
def test_the_seven_bit_text_path_writes_what_the_stdlib_would(text: str) -> None:
    """Plain ASCII bodies skip set_content for speed; the bytes must not change because of it."""
    from email.message import MIMEPart

    from mailgate.mime import compose as module

    fast = module._text_part(text, "plain")
    stdlib = MIMEPart(policy=module._POLICY)
    stdlib.set_content(text, subtype="plain", cte="quoted-printable" if "\x00" in text else None)
    assert fast.as_bytes() == stdlib.as_bytes()


@given(
    subject=_header_text,
    name=_header_text,
    local=st.sampled_from(["rcpt", "émile"]),
    text=st.text(alphabet=st.characters(max_codepoint=127, exclude_characters="\x00"), min_size=1, max_size=400),
)
def test_a_plain_text_message_is_written_as_the_stdlib_would(subject: str, name: str, local: str, text: str) -> None:
    """A 7bit text/plain message skips building an EmailMessage; its bytes must not change because of it."""
    from mailgate.mime import compose as module
    from mailgate.mime.headers import address_header, text_header

    rcpt = Address(name, local, "example.org")
    headers = [address_header("To", [rcpt]), text_header("Subject", subject), module._MIME_VERSION]
    seven_bit = module._seven_bit_body(text)
    if seven_bit is None:  # a line over 78 octets: compose takes the stdlib path for it
        return
    body = module._text_part(text, "plain")
    utf8 = rcpt.needs_smtputf8
    assert module._render_plain(headers, seven_bit, utf8=utf8) == module._render(headers, body, utf8=utf8)


def test_the_date_line_keeps_the_given_offset() -> None:
    when = datetime(2026, 12, 3, 9, 30, 5, 123456, tzinfo=timezone(timedelta(hours=-5)))
    raw, _ = compose(draft(date=when), message_id_domain=DOMAIN)
    assert b"\r\nDate: Thu, 03 Dec 2026 09:30:05 -0500\r\n" in raw
