"""Bounce and complaint parsing against messages shaped like what real MTAs and mailbox providers send."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.domain.bounces import BounceKind, DsnAction, FeedbackType
from mailgate.domain.delivery import Reply
from mailgate.domain.errors import InvalidInput
from mailgate.mime.bounces import BounceReport, NotAMessage, parse_report

FIXTURES = Path(__file__).parent.parent / "fixtures" / "bounces"
ALL_FIXTURES = sorted(p.name for p in FIXTURES.iterdir() if p.suffix == ".eml")


def parse(name: str) -> BounceReport:
    return parse_report((FIXTURES / name).read_bytes())


@pytest.mark.parametrize(
    ("name", "kind", "recipient", "status", "reason"),
    [
        ("postfix_hard.eml", "hard", "nobody@customer.example", "5.1.1", "User unknown in virtual"),
        ("postfix_delayed.eml", "soft", "ops@slow.example", "4.4.1", "Connection timed out"),
        ("exim_hard.eml", "hard", "j.doe@gone.example", "5.0.0", "User unknown"),
        ("gmail_failure.eml", "hard", "no.such.user.4711@gmail.com", "5.1.1", "does not exist"),
        ("outlook_ndr.eml", "hard", "k.smith@contoso.com", "5.1.10", "RecipientNotFound"),
        ("outlook_global_dsn.eml", "hard", "jürgen@bücher.example", "5.1.1", "„jürgen“ unbekannt"),
        ("sendmail_multi.eml", "hard", "alice@partner.example", "2.1.5", "Mailbox full"),
        ("wrong_charset.eml", "hard", "müller@legacy.example", "5.1.1", "Postfach überfüllt"),
    ],
)
def test_standard_dsns_from_real_world_mtas(name: str, kind: str, recipient: str, status: str, reason: str) -> None:
    report = parse(name)
    assert (report.kind, report.heuristic, report.feedback) == (kind, False, None)
    assert report.recipients[0].final_recipient == recipient
    assert report.recipients[0].status == status
    assert reason in report.reason


@pytest.mark.parametrize(
    ("name", "kind", "recipient", "status", "reason"),
    [
        ("postfix_plain.eml", "hard", "left.company@oldhost.example", "5.1.1", "mailbox disabled (in reply"),
        ("qmail_failure.eml", "hard", "quota.victim@isp.example", "5.2.2", "mailbox full (#5.2.2)"),
        ("gmail_legacy.eml", "hard", "typo.adress@gmial.com", "5.1.1", "does not exist"),
        ("exim_delay_plain.eml", "soft", "slow@far.example", "4.7.1", "Greylisted"),
    ],
)
def test_plain_text_bounces_are_read_heuristically(
    name: str, kind: str, recipient: str, status: str, reason: str
) -> None:
    report = parse(name)
    assert (report.kind, report.heuristic, report.feedback, report.original) == (kind, True, None, None)
    (found,) = report.recipients
    assert (found.kind, found.final_recipient, found.status, found.action) == (kind, recipient, status, None)
    assert reason in report.reason


@pytest.mark.parametrize(
    ("name", "delivery_id"),
    [
        ("postfix_hard.eml", "dlv_5f0c2a9e41b7d3c86e10"),
        ("postfix_delayed.eml", "dlv_0e7d4c19b2a85f3306d1"),
        ("exim_hard.eml", "dlv_77aa01c3d5e9f2b4a6c8"),
        ("gmail_failure.eml", "dlv_a1b2c3d4e5f60718293a"),
        ("outlook_ndr.eml", "dlv_3c3c3c3c3c3c3c3c3c3c"),
        ("outlook_global_dsn.eml", "dlv_7e7e7e7e7e7e7e7e7e7e"),
        ("wrong_charset.eml", "dlv_beefbeefbeefbeefbeef"),
        ("yahoo_arf.eml", "dlv_4d5e6f708192a3b4c5d6"),
        ("microsoft_jmrp.eml", "dlv_99887766554433221100"),
        ("missing_status_part.eml", "dlv_0000111122223333aaaa"),
    ],
)
def test_quoted_original_names_the_delivery_when_the_return_path_is_lost(name: str, delivery_id: str) -> None:
    original = parse(name).original
    assert original is not None
    assert original.delivery_id == delivery_id


def test_postfix_dsn_in_full() -> None:
    report = parse("postfix_hard.eml")
    assert report.reporting_mta == "smtp-out.mailgate.example"
    assert report.arrival_date == datetime(2024, 5, 14, 9, 12, 43, tzinfo=UTC)
    (recipient,) = report.recipients
    assert recipient.kind is BounceKind.HARD
    assert recipient.action is DsnAction.FAILED
    assert recipient.original_recipient == "nobody@customer.example"
    assert recipient.remote_mta == "mx.customer.example"
    assert recipient.diagnostic_type == "smtp"
    assert recipient.reply == Reply(
        550,
        "5.1.1",
        "<nobody@customer.example>: Recipient address rejected: User unknown in virtual mailbox table",
    )
    assert report.reason == str(recipient.reply)
    original = report.original
    assert original is not None
    assert original.message_id == "<msg_8a1d33f0c2e94b7a5d01.1715677961@shop.example>"
    assert original.mailgate_message_id == "msg_8a1d33f0c2e94b7a5d01"
    assert original.return_path == "bounces+dlv_5f0c2a9e41b7d3c86e10-3kq4x7m2wz5p9ab6@bounce.mailgate.example"
    assert original.header("SUBJECT") == "Your order #1042 has shipped"
    assert original.header("x-absent") is None


def test_headers_only_original_and_non_smtp_diagnostic() -> None:
    report = parse("postfix_delayed.eml")
    (recipient,) = report.recipients
    assert recipient.action is DsnAction.DELAYED
    assert recipient.diagnostic_type == "x-postfix"
    assert recipient.reply is None
    assert report.reason == "connect to mx.slow.example[198.51.100.7]:25: Connection timed out"
    assert report.original is not None
    assert report.original.header("subject") == "[CRIT] disk usage above 95% on db-3"
    assert report.original.mailgate_message_id == "msg_c4f1a0b9e2d3345a6b7c"


def test_exim_generic_status_keeps_the_specific_reply() -> None:
    (recipient,) = parse("exim_hard.eml").recipients
    assert recipient.status == "5.0.0"
    assert recipient.reply == Reply(550, "5.1.1", "<j.doe@gone.example>... User unknown")


def test_gmail_folded_multiline_reply_reads_as_one_sentence() -> None:
    report = parse("gmail_failure.eml")
    reply = report.recipients[0].reply
    assert reply is not None
    assert (reply.code, reply.enhanced) == (550, "5.1.1")
    assert reply.text.startswith(
        "The email account that you tried to reach does not exist. Please try double-checking the recipient's"
    )
    assert "550" not in reply.text
    assert report.arrival_date == datetime(2024, 5, 22, 6, 30, 10, tzinfo=timezone(timedelta(hours=-7)))
    assert report.original is not None
    assert report.original.header("subject") == "=?utf-8?q?Ihre_Bestellung_=E2=9C=93?="


def test_outlook_ndr_with_crlf_line_ends() -> None:
    report = parse("outlook_ndr.eml")
    assert (FIXTURES / "outlook_ndr.eml").read_bytes().count(b"\r\n") > 50
    assert report.reporting_mta == "AM6PR04MB5432.eurprd04.prod.outlook.com"
    assert report.recipients[0].original_recipient == "k.smith@contoso.com"
    assert report.original is not None
    assert report.original.mailgate_message_id == "msg_0f0f0f0f0f0f0f0f0f0f"


def test_base64_global_delivery_status_rfc6533() -> None:
    report = parse("outlook_global_dsn.eml")
    (recipient,) = report.recipients
    assert recipient.original_recipient == "jürgen@bücher.example"
    assert report.arrival_date == datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def test_multi_recipient_dsn_reports_each_and_the_worst_overall() -> None:
    report = parse("sendmail_multi.eml")
    delivered, failed = report.recipients
    assert (delivered.kind, delivered.action, delivered.reason) == (
        BounceKind.DELIVERED,
        DsnAction.DELIVERED,
        "delivered 2.1.5",
    )
    assert (failed.kind, failed.action) == (BounceKind.HARD, DsnAction.FAILED)
    assert failed.final_recipient == "bob@partner.example"
    assert failed.diagnostic_type == "smtp"
    assert report.kind is BounceKind.HARD
    assert report.reason == "552 5.2.2 Mailbox full"
    assert report.original is not None
    assert report.original.delivery_id is None
    assert report.original.mailgate_message_id == "msg_abcabcabcabcabcabcab"


def test_yahoo_arf_complaint() -> None:
    report = parse("yahoo_arf.eml")
    assert report.kind is BounceKind.COMPLAINT
    assert report.recipients == ()
    assert report.reason == "abuse report from Yahoo!-Mail-Feedback/2.0"
    # RFC 5965 says Arrival-Date; Yahoo still sends the draft's Received-Date.
    assert report.arrival_date == datetime(2024, 5, 27, 17, 58, 44, tzinfo=UTC)
    feedback = report.feedback
    assert feedback is not None
    assert feedback.feedback_type is FeedbackType.ABUSE
    assert feedback.version == "0.1"
    assert feedback.original_mail_from == "bounces+dlv_4d5e6f708192a3b4c5d6-ivsgczlumvzwk3tf@bounce.mailgate.example"
    assert feedback.original_rcpt_to == ("someone@yahoo.com",)
    assert feedback.reported_domain == ("deals.example",)
    assert feedback.source_ip is None
    assert report.original is not None
    assert report.original.delivery_id == "dlv_4d5e6f708192a3b4c5d6"
    assert report.original.return_path == feedback.original_mail_from


def test_microsoft_jmrp_complaint() -> None:
    report = parse("microsoft_jmrp.eml")
    assert report.kind is BounceKind.COMPLAINT
    feedback = report.feedback
    assert feedback is not None
    assert feedback.user_agent == "Hotmail FBL"
    assert feedback.source_ip == "198.51.100.20"
    assert feedback.reported_domain == ("news.example", "mailgate.example")
    assert feedback.original_rcpt_to == ("redacted",)
    assert report.arrival_date == datetime(2024, 5, 28, 1, 55, 8, tzinfo=timezone(timedelta(hours=-7)))
    assert report.original is not None
    assert report.original.delivery_id == "dlv_99887766554433221100"
    assert report.original.header("x-hmxmroriginalrecipient") == "<redacted>"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("missing_status_part.eml", "without a status part"),
        ("truncated.eml", "names no recipient"),
        ("not_a_bounce.eml", "not a delivery or feedback report"),
    ],
)
def test_malformed_or_unrelated_mail_is_unknown(name: str, reason: str) -> None:
    report = parse(name)
    assert report.kind is BounceKind.UNKNOWN
    assert reason in report.reason
    assert report.recipients == ()


@pytest.mark.parametrize("raw", [b"", b"\r\n\r\n", b"\x00\xff\xfe garbage without a colon", None])
def test_bytes_that_are_no_message_raise_the_documented_error(raw: bytes | None) -> None:
    data = (FIXTURES / "garbage.bin").read_bytes() if raw is None else raw
    with pytest.raises(NotAMessage) as caught:
        parse_report(data)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, InvalidInput)


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_every_truncation_of_a_fixture_parses(name: str) -> None:
    raw = (FIXTURES / name).read_bytes()
    for end in range(0, len(raw), max(1, len(raw) // 97)):
        try:
            report = parse_report(raw[:end])
        except NotAMessage:
            continue
        assert isinstance(report.kind, BounceKind)


def _dsn(*fields: str, per_message: str = "Reporting-MTA: dns; mx.example") -> bytes:
    block = "\n".join(fields)
    return (
        "From: MAILER-DAEMON@mx.example\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n\n'
        "--b\nContent-Type: text/plain\n\nsee below\n"
        f"--b\nContent-Type: message/delivery-status\n\n{per_message}\n\n{block}\n"
        "--b--\n"
    ).encode()


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        (("Action: failed", "Status: 5.1.1"), BounceKind.HARD),
        (("Action: failed", "Status: 5.7.1 (delivery not authorized)"), BounceKind.HARD),
        (("Action: failed",), BounceKind.HARD),
        # Given up after retrying a temporary error: the address may be fine.
        (("Action: failed", "Status: 4.4.7"), BounceKind.SOFT),
        (("Action: delayed", "Status: 4.4.1"), BounceKind.SOFT),
        (("Action: delayed",), BounceKind.SOFT),
        (("Action: delivered", "Status: 2.0.0"), BounceKind.DELIVERED),
        (("Action: relayed", "Status: 2.0.0"), BounceKind.DELIVERED),
        (("Action: expanded", "Status: 2.0.0"), BounceKind.DELIVERED),
        (("Action: bogus", "Status: 5.1.1"), BounceKind.HARD),
        (("Status: 4.2.2",), BounceKind.SOFT),
        (("Final-Recipient: rfc822; a@b.example", "Diagnostic-Code: smtp; 550 no"), BounceKind.HARD),
        (("Final-Recipient: rfc822; a@b.example", "Diagnostic-Code: smtp; 451-4.3.0 later"), BounceKind.SOFT),
        (("Final-Recipient: rfc822; a@b.example", "Action: weird"), BounceKind.UNKNOWN),
        (("Final-Recipient: rfc822; a@b.example", "Status: 9.9.9"), BounceKind.UNKNOWN),
    ],
)
def test_classification_follows_action_then_status_class(fields: tuple[str, ...], kind: BounceKind) -> None:
    report = parse_report(_dsn(*fields))
    assert report.kind is kind
    assert report.recipients[0].kind is kind


def test_status_falls_back_to_the_enhanced_code_in_the_diagnostic() -> None:
    (recipient,) = parse_report(_dsn("Action: failed", "Diagnostic-Code: smtp; 550 5.2.1 disabled")).recipients
    assert recipient.status == "5.2.1"


def test_recipient_blocks_without_a_per_message_block_are_still_read() -> None:
    report = parse_report(_dsn("Final-Recipient: rfc822;<x@y.example>", "Action: failed", per_message="Status: 5.1.1"))
    assert [r.final_recipient for r in report.recipients] == [None, "x@y.example"]
    assert report.reporting_mta is None
    assert report.kind is BounceKind.HARD


def test_unparseable_arrival_date_is_none_not_an_error() -> None:
    report = parse_report(_dsn("Action: failed", per_message="Arrival-Date: yesterday-ish\nReporting-MTA: mx"))
    assert report.arrival_date is None
    assert report.reporting_mta == "mx"


def _arf(feedback: str, report_type: str = "feedback-report") -> bytes:
    return (
        "From: fbl@isp.example\nMIME-Version: 1.0\n"
        f'Content-Type: multipart/report; report-type={report_type}; boundary="b"\n\n'
        "--b\nContent-Type: text/plain\n\nan abuse report\n"
        f"--b\nContent-Type: message/feedback-report\n\n{feedback}\n"
        "--b\nContent-Type: text/rfc822-headers\n\nMessage-ID: <m@x>\n\n"
        "--b--\n"
    ).encode()


@pytest.mark.parametrize(
    ("value", "kind", "feedback_type"),
    [
        ("abuse", BounceKind.COMPLAINT, FeedbackType.ABUSE),
        ("Fraud", BounceKind.COMPLAINT, FeedbackType.FRAUD),
        ("virus", BounceKind.FEEDBACK, FeedbackType.VIRUS),
        ("not-spam", BounceKind.FEEDBACK, FeedbackType.NOT_SPAM),
        ("auth-failure", BounceKind.FEEDBACK, FeedbackType.AUTH_FAILURE),
        ("other", BounceKind.FEEDBACK, FeedbackType.OTHER),
        ("opt-out", BounceKind.FEEDBACK, None),
    ],
)
def test_arf_feedback_types(value: str, kind: BounceKind, feedback_type: FeedbackType | None) -> None:
    report = parse_report(_arf(f"Feedback-Type: {value}\nVersion: 1"))
    assert report.kind is kind
    assert report.feedback is not None
    assert report.feedback.feedback_type is feedback_type
    assert report.reason == f"{value.lower()} report"
    assert report.original is not None
    assert report.original.message_id == "<m@x>"


def test_arf_without_feedback_type_or_part_is_unknown() -> None:
    assert parse_report(_arf("User-Agent: x/1")).kind is BounceKind.UNKNOWN
    missing = parse_report(_arf("Feedback-Type: abuse").replace(b"message/feedback-report", b"text/plain"))
    assert missing.kind is BounceKind.UNKNOWN
    assert "without a feedback-report part" in missing.reason


def test_feedback_part_is_found_even_under_a_wrong_report_type() -> None:
    assert parse_report(_arf("Feedback-Type: abuse", report_type="bogus")).kind is BounceKind.COMPLAINT


def test_read_receipts_are_not_bounces() -> None:
    fields = "Reporting-UA: x; y\nDisposition: manual-action/MDN-sent-manually; displayed"
    mdn = _arf(fields, report_type="disposition-notification")
    report = parse_report(mdn.replace(b"message/feedback-report", b"message/disposition-notification"))
    assert report.kind is BounceKind.UNKNOWN


def _plain(sender: str, subject: str, body: str) -> bytes:
    return f"From: {sender}\nSubject: {subject}\nContent-Type: text/plain\n\n{body}".encode()


@pytest.mark.parametrize(
    ("sender", "subject", "body"),
    [
        ("Pat <pat@customer.example>", "Undeliverable: x", "550 5.1.1 <a@b.example> unknown"),
        ("MAILER-DAEMON@mx.example", "Your invoice", "550 5.1.1 <a@b.example> unknown"),
        ("MAILER-DAEMON@mx.example", "failure notice", "your message could not be delivered to a@b.example"),
        ("MAILER-DAEMON@mx.example", "failure notice", "550 5.1.1 nobody home"),
        ("MAILER-DAEMON@mx.example", "failure notice", "<postmaster@mx.example>: 550 5.1.1 refused"),
        ("MAILER-DAEMON@mx.example", "failure notice", "a@b.example, from 192.0.2.4.5.6 and 2.1.5"),
    ],
    ids=["person", "subject", "no-code", "no-recipient", "only-daemon-address", "ip-and-success-code"],
)
def test_heuristics_need_a_daemon_a_bounce_subject_a_code_and_a_recipient(sender: str, subject: str, body: str) -> None:
    report = parse_report(_plain(sender, subject, body))
    assert report.kind is BounceKind.UNKNOWN
    assert report.heuristic is False


def test_heuristic_bounce_with_a_bare_reply_code_and_an_attached_original() -> None:
    bounce = EmailMessage()
    bounce["From"] = "Mail Delivery System <MAILER-DAEMON@mx.example>"
    bounce["Subject"] = "Returned mail: User unknown"
    bounce.set_content("<gone@far.example>:\nhost said:\n550 no such user here\n")
    original = EmailMessage()
    original["Message-ID"] = "<msg_1@shop.example>"
    original["X-Mailgate-Delivery"] = "dlv_00000000000000000001"
    original.set_content("hi")
    bounce.add_attachment(original)
    report = parse_report(bounce.as_bytes())
    assert (report.kind, report.heuristic) == (BounceKind.HARD, True)
    (recipient,) = report.recipients
    assert (recipient.final_recipient, recipient.status, recipient.action) == ("gone@far.example", None, None)
    assert recipient.reply == Reply(550, None, "no such user here")
    assert report.original is not None
    assert report.original.delivery_id == "dlv_00000000000000000001"


def test_html_only_bounce_is_read_without_its_tags() -> None:
    raw = _plain("postmaster@mx.example", "Undeliverable: hi", "<p><b>x@y.example</b></p><p>550 5.4.1 denied</p>")
    report = parse_report(raw.replace(b"text/plain", b"text/html"))
    assert report.recipients[0].final_recipient == "x@y.example"
    assert report.reason == "550 5.4.1 denied"


def test_delay_subject_makes_a_heuristic_bounce_soft() -> None:
    raw = _plain("MAILER-DAEMON@mx.example", "Delivery Status Notification (Delay)", "x@y.example\n550 5.0.0 later")
    assert parse_report(raw).kind is BounceKind.SOFT


@pytest.mark.parametrize("charset", ["x-no-such-charset", "idna", "base64", "utf-16"])
def test_bogus_charsets_do_not_stop_the_heuristics(charset: str) -> None:
    raw = _plain("MAILER-DAEMON@mx.example", "failure notice", "<a@b.example>: 550 5.1.1 unknown")
    report = parse_report(raw.replace(b"text/plain", f"text/plain; charset={charset}".encode()))
    assert report.kind in (BounceKind.HARD, BounceKind.UNKNOWN)


@pytest.mark.parametrize("filler", ["a", "<", "a.", "550 ", " folded\n", "Final-Recipient: x\n"])
def test_hostile_bodies_cost_linear_time(filler: str) -> None:
    """A quadratic pattern would take minutes here (the suite's timeout), a linear one milliseconds."""
    body = filler * (400_000 // len(filler))
    for content_type in ("text/plain", "text/html"):
        raw = _plain("MAILER-DAEMON@mx.example", "failure notice", body).replace(b"text/plain", content_type.encode())
        parse_report(raw)
    parse_report(_dsn(f"Diagnostic-Code: smtp; 550 5.1.1 x\n{body}"))


def test_untrusted_mailgate_ids_must_look_like_ids() -> None:
    raw = _dsn("Action: failed").replace(
        b"--b--", b"--b\nContent-Type: text/rfc822-headers\n\nX-Mailgate-Delivery: dlv_1; drop table\n\n--b--"
    )
    report = parse_report(raw)
    assert report.original is not None
    assert report.original.header("x-mailgate-delivery") == "dlv_1; drop table"
    assert report.original.delivery_id is None


# Whole messages go through the stdlib parser: on a shared machine one example can pass 200 ms.
no_deadline = settings(deadline=None)
# Small reports of each kind, so 5,000 mutations fit the fuzz budget (the stdlib parser costs ~5 ms per
# full-size fixture; test_every_truncation_of_a_fixture_parses covers those).
MUTATION_SOURCES = [
    _dsn("Final-Recipient: rfc822; a@b.example", "Action: failed", "Status: 5.1.1", "Diagnostic-Code: smtp; 550 x"),
    _arf("Feedback-Type: abuse\nOriginal-Rcpt-To: <a@b.example>\nArrival-Date: Mon, 27 May 2024 17:58:44 +0000"),
    _plain("MAILER-DAEMON@mx.example", "failure notice", "<a@b.example>:\n    550 5.1.1 unknown\n    user\n"),
]


def _acceptable(raw: bytes) -> None:
    try:
        report = parse_report(raw)
    except NotAMessage:
        return
    assert isinstance(report.kind, BounceKind)
    assert isinstance(report.reason, str)


@pytest.mark.fuzz
@no_deadline
@given(st.binary(max_size=2_000))
def test_arbitrary_bytes_parse_or_raise_not_a_message(raw: bytes) -> None:
    _acceptable(raw)


@pytest.mark.fuzz
@no_deadline
@given(
    st.sampled_from(MUTATION_SOURCES),
    st.lists(st.tuples(st.integers(min_value=0, max_value=5_000), st.binary(max_size=8)), max_size=6),
)
def test_mutated_reports_never_raise(source: bytes, edits: list[tuple[int, bytes]]) -> None:
    raw = bytearray(source)
    for position, replacement in edits:
        at = position % (len(raw) + 1)
        raw[at : at + len(replacement)] = replacement
    _acceptable(bytes(raw))


FIELD_NAMES = st.sampled_from(
    ["Action", "Status", "Final-Recipient", "Diagnostic-Code", "Arrival-Date", "Feedback-Type", "Original-Rcpt-To"]
)


@pytest.mark.fuzz
@no_deadline
@given(
    st.sampled_from(["delivery-status", "feedback-report"]),
    st.sampled_from(["message/delivery-status", "message/global-delivery-status", "message/feedback-report"]),
    st.sampled_from(["7bit", "base64", "quoted-printable"]),
    st.lists(st.tuples(FIELD_NAMES, st.text(max_size=30)), max_size=6),
)
def test_generated_report_parts_never_raise(
    report_type: str, part_type: str, encoding: str, fields: list[tuple[str, str]]
) -> None:
    body = "\n".join(f"{name}: {value}" for name, value in fields)
    raw = (
        f'Content-Type: multipart/report; report-type={report_type}; boundary="b"\n\n'
        f"--b\nContent-Type: {part_type}\nContent-Transfer-Encoding: {encoding}\n\n{body}\n--b--\n"
    )
    _acceptable(raw.encode("utf-8", "surrogatepass"))
