"""The scorer that runs on every received message: authentication verdicts and header heuristics,
in pure Python, with no daemon behind it.

It must not reject ham. Most legitimate mail in the field is still unsigned and arrives without an
SPF record, and old mail is full of small RFC violations, so no single rule here comes near the tag
threshold (5) on its own, except GTUBE, the test pattern everyone agrees on. A message reaches tag
only by failing several independent checks; junk (8) and reject (15) are for what rspamd or spamd add
on top. The weights were checked against the SpamAssassin public corpus (see the tests).

Each rule is one named symbol in ``WEIGHTS``; ``check`` returns the symbols that fired with their
weights. It costs about 50 microseconds a message (measured over the corpus on two busy cores): one
pass over the headers, a few regular expressions over short strings, substring scans of the start of
the body. Html-only mail costs the most, up to half a millisecond, as its visible text is counted.
"""

from __future__ import annotations

import email.utils
import ipaddress
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from mailgate.domain.inbound import AuthResults, AuthVerdict

if TYPE_CHECKING:
    from mailgate.inbound.spam import SpamInput

GTUBE: Final = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
_GTUBE_BYTES: Final = GTUBE.encode()

WEIGHTS: Final[Mapping[str, float]] = {
    # authentication: what SPF, DKIM and DMARC said about the message
    "SPF_FAIL": 1.5,  # also legitimate forwarding without SRS, hence not more
    "SPF_SOFTFAIL": 0.5,
    "DKIM_FAIL": 1.0,  # a signature that does not verify and none that does; lists that edit mail do this
    "DMARC_REJECT": 3.5,  # the From domain asks for rejection of exactly this kind of message
    "DMARC_QUARANTINE": 2.0,
    "DMARC_PASS": -0.5,  # the From domain vouches for it; a small credit, as spammers' own domains pass too
    "AUTH_NONE": 0.8,  # nothing to check at all: no SPF record, no signature (most old ham)
    # headers
    "GTUBE": 1000.0,
    "MISSING_FROM": 1.0,
    "MISSING_DATE": 1.0,
    "MISSING_MID": 0.5,
    "MID_INVALID": 1.0,  # a Message-ID without "@": no MUA or MTA writes one
    "MIME_NO_VERSION": 1.0,  # html or attachments without MIME-Version: hand-made by a bulk tool
    "TO_UNDISCLOSED": 1.0,  # "undisclosed-recipients:;" or a To without any address
    "DATE_IN_FUTURE": 1.0,  # a day ahead or more: sorts to the top of an inbox
    "FROM_NAME_SPOOF": 2.0,  # display name holds an address of another domain: "paypal.com <x@evil.test>"
    "SUBJ_ALL_CAPS": 0.8,
    "SUBJ_SPAM_PHRASE": 1.5,
    "RCPTS_MANY": 1.0,
    # forged trace and greeting
    "RCVD_ILLEGAL_IP": 1.5,  # a Received header names an IPv4 address that cannot exist
    "FORGED_FREEMAIL_RCVD": 1.5,  # From a big webmail, yet no trace of its servers and no signature of it
    "HELO_BOGUS": 0.5,  # HELO is a bare IP or localhost from a remote client
    "HELO_IS_RCPT_DOMAIN": 1.0,  # HELO names the recipient's own domain: a spambot habit
    # content
    "HTML_ONLY": 0.5,
    "HTML_LITTLE_TEXT": 1.0,  # html-only and almost no visible text: an image or a link
    "BODY_SPAM_PHRASE": 1.5,  # "this is not spam", "sent in compliance with", "money-back guarantee"
    "URI_NUMERIC_IP": 1.5,  # a link to http://203.0.113.7/: nobody's web site, someone's proxy
    "EXE_ATTACHMENT": 4.0,
    "DOUBLE_EXT_ATTACHMENT": 1.0,  # "invoice.pdf.exe"
}

RCPTS_MANY_AT: Final = 30  # recipients (envelope, or To and Cc) from which a message counts as bulk
LITTLE_TEXT: Final = 200  # visible characters under which html-only mail says almost nothing
# RFC 1918 and unique-local addresses; not ipaddress's is_private, which covers the documentation
# ranges too, which tests use as the internet
_INTERNAL: Final = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))
_FUTURE_SLACK: Final = 86_400.0  # clocks are wrong and time zones get lost; a day is not a mistake

_EXECUTABLE_EXTENSIONS: Final = frozenset({
    "exe", "scr", "js", "jse", "vbs", "vbe", "bat", "cmd", "com", "pif", "cpl", "msi", "msp", "hta", "wsf", "wsh",
    "jar", "lnk", "ps1", "reg", "application", "gadget",
})  # fmt: skip
_EXECUTABLE_TYPES: Final = frozenset(
    {
        "application/x-msdownload",
        "application/x-msdos-program",
        "application/x-dosexec",
        "application/x-ms-dos-executable",
        "application/x-executable",
        "application/vnd.microsoft.portable-executable",
        "application/hta",
        "application/x-javascript",
        "application/javascript",
        "text/javascript",
        "application/x-vbscript",
        "text/vbscript",
        "application/java-archive",
    }
)
_DOCUMENT_EXTENSIONS: Final = frozenset({
    "pdf", "doc", "docx", "xls", "xlsx", "ppt", "pptx", "txt", "rtf", "jpg", "jpeg", "png", "gif", "zip", "htm", "html",
})  # fmt: skip

# Words and phrases that ham subjects practically never carry; single words like "free" or "winner"
# do, and stay out. Matched on whole words of the lowercased subject: "Specialist" holds "cialis".
_SPAM_WORDS: Final = frozenset({
    "viagra", "v1agra", "vi@gra", "cialis", "levitra", "xanax", "valium", "phentermine", "casino", "lottery",
    "refinance", "refinancing",
})  # fmt: skip
_SPAM_PHRASES: Final = (
    "make money", "make big money", "make easy money", "make extra money", "earn extra cash", "earn cash",
    "earn money", "work from home", "work at home", "100% free", "free money", "free cash", "free gift",
    "free trial", "free quote", "risk free", "no credit check", "no prescription", "online pharmacy",
    "lowest price", "lowest prices", "lowest rates", "lose weight", "weight loss", "replica watches",
    "hot singles", "male enhancement", "you've won", "you have won", "you have been selected",
    "you are a winner", "act now", "limited time offer", "dear friend", "business proposal",
    "million dollars", "urgent reply", "urgent assistance", "double your", "cash bonus", "credit card debt",
)  # fmt: skip
_PADDED_PHRASES: Final = tuple(f" {phrase} " for phrase in _SPAM_PHRASES)  # whole words only
_WORD: Final = re.compile(r"[\w%'@$]+")
# Phrases of bulk mail that ham bodies practically never carry (under 0.2 % of the corpus ham)
BODY_PHRASES: Final = (
    "this is not spam", "this is not a spam", "this email is not spam", "this message is not spam",
    "not unsolicited", "sent in compliance with", "bill s. 1618", "bill s.1618", "section 301",
    "money back guarantee", "money-back guarantee",
    "remove in the subject", '"remove" in the subject', "with remove in the subject",
)  # fmt: skip
# one of these is in every phrase above: most bodies hold none, and seven scans cost half of fourteen
BODY_ANCHORS: Final = ("spam", "solicited", "complian", "1618", "section 301", "guarantee", "remove")
BODY_SCAN: Final = 20_000  # body characters the phrase and link rules read; spam says it early
_NUMERIC_URL: Final = re.compile(r"https?://\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?=[:/\s\"'>]|$)")
_ADDRESS_IN_NAME: Final = re.compile(r"[\w.+-]+@([a-z0-9-]+(?:\.[a-z0-9-]+)+)", re.IGNORECASE)
_BAD_OCTET: Final = r"(?:25[6-9]|2[6-9]\d|[3-9]\d\d)"
# a bracketed or parenthesized dotted quad with an octet above 255 (one alternative per position of
# the bad octet), so the Received headers are searched in one pass
_ILLEGAL_IPV4: Final = re.compile(
    r"[\[(](?:"
    + "|".join(r"\.".join(_BAD_OCTET if i == bad else r"\d{1,3}" for i in range(4)) for bad in range(4))
    + r")[\])]"
)
# a tag and the text after it, up to the next tag
_SEGMENT: Final = re.compile(r"<(/?)([a-zA-Z]*)[^>]*>([^<]*)")
_HIDDEN: Final = frozenset({"style", "script", "title"})
HTML_SCAN: Final = 20_000  # html characters looked at for visible text; more is never "little text"

# A webmail's own servers appear in the trace of everything it sends, or its DKIM signature does.
_FREEMAIL: Final[Mapping[str, tuple[str, ...]]] = {
    "gmail.com": ("google.com", "gmail.com"),
    "googlemail.com": ("google.com", "googlemail.com"),
    "yahoo.com": ("yahoo.com", "yahoo.net", "yahoodns.net"),
    "hotmail.com": ("hotmail.com", "outlook.com", "live.com", "msn.com"),
    "outlook.com": ("outlook.com", "hotmail.com", "live.com"),
    "live.com": ("live.com", "outlook.com", "hotmail.com"),
    "msn.com": ("msn.com", "hotmail.com", "outlook.com", "live.com"),
    "aol.com": ("aol.com", "aol.net", "yahoo.com", "yahoodns.net"),
}


def check(item: SpamInput) -> dict[str, float]:
    """The symbols ``item`` triggers, each with its weight."""
    hits: list[str] = []
    _authentication(item.auth, hits)
    _headers(item, hits)
    _greeting(item, hits)
    _content(item, hits)
    return {name: WEIGHTS[name] for name in hits}


def _authentication(auth: AuthResults, hits: list[str]) -> None:
    spf = auth.spf.result
    if spf is AuthVerdict.FAIL:
        hits.append("SPF_FAIL")
    elif spf is AuthVerdict.SOFTFAIL:
        hits.append("SPF_SOFTFAIL")
    verdicts = {d.result for d in auth.dkim}
    if AuthVerdict.FAIL in verdicts and AuthVerdict.PASS not in verdicts:
        hits.append("DKIM_FAIL")
    dmarc = auth.dmarc
    if dmarc.result is AuthVerdict.FAIL:
        # the published policy, not the sampled disposition: pct=10 still says "this is not us"
        if dmarc.policy == "reject":
            hits.append("DMARC_REJECT")
        elif dmarc.policy == "quarantine":
            hits.append("DMARC_QUARANTINE")
    elif dmarc.result is AuthVerdict.PASS:
        hits.append("DMARC_PASS")
    if spf in (AuthVerdict.NONE, AuthVerdict.NEUTRAL) and verdicts <= {AuthVerdict.NONE}:
        hits.append("AUTH_NONE")


def _headers(item: SpamInput, hits: list[str]) -> None:
    date: str | None = None
    mid: str | None = None
    mime_version = undisclosed = False
    to_cc_addresses = 0
    received: list[str] = []
    for name, value in item.headers:
        match name.lower():
            case "date":
                date = value
            case "message-id":
                mid = value
            case "mime-version":
                mime_version = True
            case "received":
                received.append(value)
            case "to":
                to_cc_addresses += value.count("@")
                undisclosed = undisclosed or "@" not in value or "undisclosed" in value.lower()
            case "cc":
                to_cc_addresses += value.count("@")
    if _GTUBE_BYTES in item.raw or GTUBE in item.text:
        hits.append("GTUBE")
    if not item.from_address:
        hits.append("MISSING_FROM")
    if date is None:
        hits.append("MISSING_DATE")
    elif _in_future(date):
        hits.append("DATE_IN_FUTURE")
    if mid is None:
        hits.append("MISSING_MID")
    elif "@" not in mid:
        hits.append("MID_INVALID")
    if not mime_version and (item.html is not None or item.attachment_types):
        hits.append("MIME_NO_VERSION")
    if undisclosed:
        hits.append("TO_UNDISCLOSED")
    if _name_spoofs(item.from_name, item.from_address):
        hits.append("FROM_NAME_SPOOF")
    subject = item.subject
    if len(subject) >= 10 and subject.isupper() and sum(map(str.isalpha, subject)) >= 10:
        hits.append("SUBJ_ALL_CAPS")
    if _spammy(subject):
        hits.append("SUBJ_SPAM_PHRASE")
    if max(len(item.recipients), to_cc_addresses) >= RCPTS_MANY_AT:
        hits.append("RCPTS_MANY")
    if received and _ILLEGAL_IPV4.search(" ".join(received)):
        hits.append("RCVD_ILLEGAL_IP")
    if _forged_freemail(item, received):
        hits.append("FORGED_FREEMAIL_RCVD")


def _spammy(subject: str) -> bool:
    words = _WORD.findall(subject.lower())
    if _SPAM_WORDS.intersection(words):
        return True
    padded = f" {' '.join(words)} "
    return any(phrase in padded for phrase in _PADDED_PHRASES) or "$$$" in subject


def _in_future(date: str) -> bool:
    parsed = email.utils.parsedate_tz(date)
    if parsed is None:
        return False
    try:
        when = email.utils.mktime_tz(parsed)
    except (OverflowError, ValueError):
        return False
    return when > time.time() + _FUTURE_SLACK


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


def _related(a: str, b: str) -> bool:
    """One domain is the other or below it (mail.example.com and example.com)."""
    return a == b or a.endswith("." + b) or b.endswith("." + a)


def _name_spoofs(name: str, address: str) -> bool:
    if "@" not in name or not address:
        return False
    own = _domain(address)
    return any(not _related(m.group(1).lower(), own) for m in _ADDRESS_IN_NAME.finditer(name))


def _forged_freemail(item: SpamInput, received: list[str]) -> bool:
    domain = _domain(item.from_address)
    servers = _FREEMAIL.get(domain)
    if servers is None:
        return False
    if any(d.result is AuthVerdict.PASS and _related(d.domain.lower(), domain) for d in item.auth.dkim):
        return False
    trace = " ".join([item.helo, *received]).lower()
    return not any(server in trace for server in servers)


def _greeting(item: SpamInput, hits: list[str]) -> None:
    """HELO tricks of spambots; loopback and internal clients (our own relays) are exempt. The
    greeting is looked at first, as it is almost always a plain host name, and parsing the client's
    address is the dearer half."""
    helo = item.helo.lower().rstrip(".")
    if helo in ("localhost", "localhost.localdomain") or _is_ip(helo):
        symbol = "HELO_BOGUS"
    elif helo and any(_domain(r) == helo for r in item.recipients):
        symbol = "HELO_IS_RCPT_DOMAIN"
    else:
        return
    try:
        client = ipaddress.ip_address(item.client_ip)
    except ValueError:
        return
    if not (client.is_loopback or client.is_link_local or any(client in network for network in _INTERNAL)):
        hits.append(symbol)


def _is_ip(text: str) -> bool:
    """A bare address literal; RFC 5321 wants it in brackets, [192.0.2.1], which is not bogus."""
    if not (text[:1].isdigit() or ":" in text):
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _content(item: SpamInput, hits: list[str]) -> None:
    if item.html is not None and not item.text.strip():
        hits.append("HTML_ONLY")
        if _little_text(item.html):
            hits.append("HTML_LITTLE_TEXT")
    body = (item.text or item.html or "")[:BODY_SCAN].lower()
    if any(a in body for a in BODY_ANCHORS) and any(phrase in body for phrase in BODY_PHRASES):
        hits.append("BODY_SPAM_PHRASE")
    if "://" in body and _NUMERIC_URL.search(body):
        hits.append("URI_NUMERIC_IP")
    executable = any(t.lower() in _EXECUTABLE_TYPES for t in item.attachment_types)
    double = False
    for name in item.attachment_names:
        parts = (name or "").lower().rstrip(" .").rsplit(".", 2)
        if len(parts) > 1 and parts[-1] in _EXECUTABLE_EXTENSIONS:
            executable = True
            double = double or (len(parts) == 3 and parts[-2].strip() in _DOCUMENT_EXTENSIONS)
    if executable:
        hits.append("EXE_ATTACHMENT")
    if double:
        hits.append("DOUBLE_EXT_ATTACHMENT")


def _little_text(html: str) -> bool:
    """Whether a reader sees fewer than LITTLE_TEXT characters: text outside tags, less styles,
    scripts and the title. Stops as soon as there is enough, which for real html is early."""
    seen = len(html[: html.find("<")].strip()) if "<" in html else len(html.strip())
    for match in _SEGMENT.finditer(html, 0, HTML_SCAN):
        if seen >= LITTLE_TEXT:
            return False
        closing, tag, text = match.groups()
        if closing or tag.lower() not in _HIDDEN:
            seen += len(text.strip())
    return seen < LITTLE_TEXT and len(html) <= HTML_SCAN
