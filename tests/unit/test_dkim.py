"""Our DKIM signer, checked against dkimpy as the verifying oracle.

dkimpy needs PyNaCl for Ed25519. Messages are verified in their wire form (CRLF, body ending in
CRLF), since that is what a receiver sees and what the signer signs.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailgate.domain.errors import InvalidInput
from mailgate.outbound.dkim import SIGNED_HEADERS, DkimSigner, generate_key

DOMAIN, SELECTOR = "example.com", "mg2026"
T = 1_767_225_600  # 2026-01-01

# 768 bits: cryptography refuses to make one, but must still refuse to sign with one.
RSA_768_PEM = b"""-----BEGIN PRIVATE KEY-----
MIIB5AIBADANBgkqhkiG9w0BAQEFAASCAc4wggHKAgEAAmEAmsfUuc0o2NlwXBzc
0GvMb4K0txfeVtl3KkQFqfJQGl4Az5Ah0r65q2NmeXnQiSnyM6VS9PNNeemN3KBl
6HjihTW7tTqEW5CnKTTYOkBQCsDf5wh1/U5R7pKsw+whW7FzAgMBAAECYAvuc5uP
ESMGP/8ZynvWk3/VF5E1qdIQGXuMmtMq9rnRnUZi2fig8zcfBns+xLCOJxra4vWZ
vwuXFrs6ESwoeQrQq9uUAinC8vlTkXEDW41Vf7UsHRBvvZPSNmiaNAZbQQIxAMmo
CHq1TFyHV8HkejItV3WGXfXpfT0T3ShI5mTAvfOB02RgSQPIKbSTMYyviOSFCwIx
AMR96I12UevRkwXQ+wEBTA9lP4iYsUpqTozaX3X9aew46lKgw/PO0k6u5kwVPdV2
OQIxAL5pv0/2/1rjpZb9IfFdZRchQHni9pIEvrC6XWrHoNVdQnmmfWtnxxGuZ3w7
h9yYTwIwThWrIOxwScKTJrCRzyhwzX1y7hmf+u6cIKV3YjA+s706gXOZ6325XcNr
ibi3RekhAjAIE0wrStYXblREA6m6y7/pNgepjUHY1oG1q1m9AZyh5Ru+/zasm6OK
7xNHctZaIww=
-----END PRIVATE KEY-----
"""

KEYS = {algorithm: generate_key(algorithm) for algorithm in ("rsa", "ed25519")}
ALGORITHMS = pytest.mark.parametrize("algorithm", list(KEYS))


def dns_for(txt: str) -> Callable[..., bytes]:
    def lookup(name: bytes, timeout: int = 5) -> bytes:
        return txt.encode() if name == f"{SELECTOR}._domainkey.{DOMAIN}.".encode() else b""

    return lookup


SIGNERS = {algorithm: DkimSigner(DOMAIN, SELECTOR, pem) for algorithm, (pem, _) in KEYS.items()}


def signer(algorithm: str) -> DkimSigner:
    return SIGNERS[algorithm]  # built once: loading an RSA key (it is validated) costs ~50 ms


def wire(message: bytes) -> bytes:
    """The message as SMTP DATA carries it: CRLF line ends, ending in CRLF."""
    message = re.sub(rb"\r?\n", b"\r\n", message)
    return message if message.endswith(b"\r\n") else message + b"\r\n"


def signed(algorithm: str, message: bytes) -> bytes:
    return signer(algorithm).sign(message, timestamp=T) + message


def verifies(algorithm: str, message: bytes) -> bool:
    return bool(dkim.verify(wire(message), dnsfunc=dns_for(KEYS[algorithm][1])))


def h_tag(header: bytes) -> list[str]:
    value = re.search(rb"[;\s]h=([^;]*);", header)
    assert value is not None
    return [name.strip().decode() for name in value.group(1).split(b":")]


BASIC = (
    b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: hello\r\n"
    b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <1@example.com>\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\nHi Bob,\r\n\r\nsee you.\r\n"
)
CASES = {
    "basic": BASIC,
    "lf-only": BASIC.replace(b"\r\n", b"\n"),
    "mixed-line-ends": b"From: a@example.com\nTo: b@example.org\r\nSubject: x\n\r\nline 1\nline 2\r\n",
    "folded": (
        b"From: a@example.com\r\nTo: one@example.org,\r\n\ttwo@example.org,\r\n   three@example.org\r\n"
        b"Subject: a subject that\r\n  goes on  and\t on\r\nContent-Type: multipart/alternative;\r\n"
        b' boundary="b1"\r\n\r\n--b1\r\n\r\nx\r\n--b1--\r\n'
    ),
    "repeated": (
        b"Received: from a by b\r\nTo: first@example.org\r\nFrom: a@example.com\r\nReferences: <1@x>\r\n"
        b"To: second@example.org\r\nReceived: from c by d\r\nReferences: <2@x>\r\n <3@x>\r\nTo: third@example.org\r\n"
        b"\r\nbody\r\n"
    ),
    "header-trailing-space": b"From: a@example.com \r\nSubject: hello  \t\r\nTo: b@example.org\r\n \r\n\r\nx\r\n",
    "empty-body": b"From: a@example.com\r\nSubject: nothing\r\n\r\n",
    "no-blank-line": b"From: a@example.com\r\nSubject: nothing\r\n",
    "headers-only-unterminated": b"From: a@example.com\r\nSubject: nothing",
    "blank-lines-only": b"From: a@example.com\r\n\r\n\r\n\r\n  \r\n\t\r\n",
    "trailing-space-and-lines": b"From: a@example.com\r\n\r\nline  \t \r\n  indented\tand  spaced  \r\n\r\n \r\n\r\n",
    "unterminated-body": b"From: a@example.com\r\n\r\nlast line has no end  \t",
    "rfc2047-subject": (
        b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.com>\r\nSubject: =?utf-8?b?R3LDvMOfZSBhdXMgS8O2bG4=?=\r\n"
        b"\r\nGr=C3=BC=C3=9Fe\r\n"
    ),
    "raw-utf8": "From: Jürgen <j@example.com>\r\nSubject: Grüße aus Köln — 日本語\r\n\r\nGrüße  \r\n".encode(),
    "8bit-latin1": b"From: a@example.com\r\nSubject: caf\xe9 \xff\r\n\r\n\x80\x81 caf\xe9\x00\r\n",
    "no-space-after-colon": b"From:a@example.com\r\nSubject:no space\r\nTo:\r\n b@example.org\r\n\r\nx\r\n",
    "list-headers": (
        b"From: news@example.com\r\nList-Unsubscribe: <https://example.com/u/1>, <mailto:u@example.com>\r\n"
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\nReply-To: r@example.com\r\n"
        b"In-Reply-To: <0@x>\r\nCc: c@example.org\r\nContent-Transfer-Encoding: 8bit\r\n\r\nnews\r\n"
    ),
    "large-2mb": b"From: a@example.com\r\nSubject: big\r\n\r\n" + b"0123456789 abcdef \t ghij  \r\n" * 75_000,
}


@ALGORITHMS
@pytest.mark.parametrize("case", list(CASES))
def test_dkimpy_verifies_every_case(algorithm: str, case: str) -> None:
    message = CASES[case]
    assert verifies(algorithm, signed(algorithm, message))


@ALGORITHMS
def test_signature_field_shape(algorithm: str) -> None:
    header = signer(algorithm).sign(CASES["repeated"], timestamp=T)
    assert header.startswith(b"DKIM-Signature: v=1; a=" + (b"rsa" if algorithm == "rsa" else b"ed25519") + b"-sha256;")
    assert header.endswith(b"\r\n") and b"\n" not in header.replace(b"\r\n", b"")
    lines = header.removesuffix(b"\r\n").split(b"\r\n")
    assert all(len(line) <= 78 for line in lines) and all(line[:1] == b"\t" for line in lines[1:])
    assert b"c=relaxed/relaxed;" in header and f"t={T};".encode() in header
    assert f"d={DOMAIN};".encode() in header and f"s={SELECTOR};".encode() in header
    # every instance of a signed field, From once more than it occurs, nothing unsigned
    assert sorted(h_tag(header)) == sorted(["from", "from", "to", "to", "to", "references", "references"])


def test_h_lists_only_present_standard_fields_and_oversigns_from() -> None:
    names = h_tag(signer("ed25519").sign(CASES["list-headers"], timestamp=T))
    assert names.count("from") == 2
    assert set(names) == {"from", "list-unsubscribe", "list-unsubscribe-post", "reply-to", "in-reply-to", "cc",
                          "content-transfer-encoding"}  # fmt: skip
    assert set(names) <= set(SIGNED_HEADERS)


def test_timestamp_defaults_to_now() -> None:
    before = int(time.time())
    header = signer("ed25519").sign(BASIC)
    t = re.search(rb"t=(\d+);", header)
    assert t is not None and before <= int(t.group(1)) <= int(time.time())


@ALGORITHMS
def test_tampering_breaks_the_signature(algorithm: str) -> None:
    message = signed(algorithm, BASIC)
    assert verifies(algorithm, message)
    assert not verifies(algorithm, message.replace(b"see you.", b"see you!"))
    assert not verifies(algorithm, message + b"P.S. added\r\n")
    assert not verifies(algorithm, message.replace(b"Subject: hello", b"Subject: hellO"))
    assert not verifies(algorithm, message.replace(b"To: bob@", b"To: eve@"))


@ALGORITHMS
def test_adding_a_from_breaks_the_signature(algorithm: str) -> None:
    message = signed(algorithm, BASIC)
    sig_end = message.index(b"From: Alice")
    top = message[:sig_end] + b"From: Mallory <m@evil.example>\r\n" + message[sig_end:]
    head, _, body = message.partition(b"\r\n\r\n")
    bottom = head + b"\r\nFrom: Mallory <m@evil.example>\r\n\r\n" + body
    assert not verifies(algorithm, top)
    assert not verifies(algorithm, bottom)


@ALGORITHMS
def test_relays_may_add_unsigned_fields_and_refold(algorithm: str) -> None:
    message = signed(algorithm, CASES["folded"])
    assert verifies(algorithm, b"Received: from relay by mx\r\nX-Spam: no\r\n" + message)
    assert verifies(algorithm, message.replace(b"Subject: a subject that\r\n  goes", b"Subject: a subject that goes"))


@ALGORITHMS
def test_our_signature_and_dkimpys_verify_side_by_side(algorithm: str) -> None:
    pem, txt = KEYS[algorithm]
    key = serialization.load_pem_private_key(pem, password=None)
    if algorithm == "rsa":  # dkimpy reads PKCS#1 PEM for RSA and a base64 seed for Ed25519
        theirs_key = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    else:
        raw = serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        theirs_key = base64.b64encode(key.private_bytes(*raw))
    for message in (wire(CASES["repeated"]), wire(CASES["raw-utf8"]), wire(CASES["trailing-space-and-lines"])):
        ours = signer(algorithm).sign(message, timestamp=T)
        theirs = dkim.sign(
            message, SELECTOR.encode(), DOMAIN.encode(), theirs_key, canonicalize=(b"relaxed", b"relaxed"),
            signature_algorithm=b"rsa-sha256" if algorithm == "rsa" else b"ed25519-sha256",
        )  # fmt: skip
        both = theirs + ours + message
        checker = dkim.DKIM(both)
        assert checker.verify(idx=0, dnsfunc=dns_for(txt)) and checker.verify(idx=1, dnsfunc=dns_for(txt))
        # same canonical body, so the same body hash
        bh = [re.search(rb"bh=([^;]+);", h) for h in (ours, theirs)]
        assert bh[0] is not None and bh[1] is not None and bh[0].group(1) == re.sub(rb"\s", b"", bh[1].group(1))


@ALGORITHMS
def test_space_before_colon_is_canonicalized_away(algorithm: str) -> None:
    """Obsolete syntax dkimpy cannot parse, so verify the equivalent modern spelling instead."""
    message = b"From : a@example.com\r\nSubject\t: x\r\n\r\nbody\r\n"
    header = signer(algorithm).sign(message, timestamp=T)
    assert verifies(algorithm, header + message.replace(b" :", b":").replace(b"\t:", b":"))


def test_a_message_without_from_is_refused() -> None:
    with pytest.raises(ValueError, match="From"):
        signer("rsa").sign(b"To: b@example.org\r\nSubject: x\r\n\r\nbody\r\n")
    with pytest.raises(ValueError, match="From"):  # a From in the body is not a header
        signer("rsa").sign(b"\r\nFrom: a@example.com\r\n")


def test_generated_keys_and_dns_records() -> None:
    rsa_pem, rsa_txt = KEYS["rsa"]
    match = re.fullmatch(r"v=DKIM1; k=rsa; p=([A-Za-z0-9+/=]+)", rsa_txt)
    assert match is not None
    public = serialization.load_der_public_key(base64.b64decode(match.group(1)))
    private = serialization.load_pem_private_key(rsa_pem, password=None)
    assert public == private.public_key()
    ed_pem, ed_txt = KEYS["ed25519"]
    match = re.fullmatch(r"v=DKIM1; k=ed25519; p=([A-Za-z0-9+/=]+)", ed_txt)
    assert match is not None and len(base64.b64decode(match.group(1))) == 32
    assert ed_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert DkimSigner(DOMAIN, SELECTOR, generate_key("rsa", 1024)[0]).algorithm == "rsa-sha256"


def test_bad_key_material_is_invalid_input() -> None:
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    encrypted = serialization.load_pem_private_key(KEYS["ed25519"][0], password=None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
    )
    cases = {
        b"not a key": "PEM",
        KEYS["rsa"][1].encode(): "PEM",
        encrypted: "PEM",
        ec_pem: "RSA or Ed25519",
        RSA_768_PEM: "768 bits",
    }
    for pem, message in cases.items():
        with pytest.raises(InvalidInput, match=message):
            DkimSigner(DOMAIN, SELECTOR, pem)
    with pytest.raises(InvalidInput, match="1024"):
        generate_key("rsa", 512)
    with pytest.raises(InvalidInput, match="algorithm"):
        generate_key("dsa")  # type: ignore[arg-type]
    for domain, selector in (("exa mple.com", SELECTOR), (DOMAIN, "s;b=x"), ("", SELECTOR), ("bücher.de", SELECTOR)):
        with pytest.raises(InvalidInput):
            DkimSigner(domain, selector, KEYS["ed25519"][0])


_word = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=12).map(str.encode)
_gap = st.sampled_from([b" ", b"  ", b"\t", b" \t ", b"\r\n ", b"\n\t", b""])
_value = st.builds(
    lambda parts, tail: b"".join(g + w for g, w in parts) + tail, st.lists(st.tuples(_gap, _word), max_size=6), _gap
)
_name = st.sampled_from([n.title().encode() for n in SIGNED_HEADERS[1:]] + [b"Received", b"X-Mailer", b"FROM"])
_eol = st.sampled_from([b"\r\n", b"\n"])


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    fields = draw(st.lists(st.tuples(_name, _value), max_size=8))
    fields.insert(draw(st.integers(0, len(fields))), (b"From", draw(_value)))
    eol = draw(_eol)
    head = b"".join(name + b":" + value.replace(b"\r\n", eol) + eol for name, value in fields)
    lines = draw(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"")), max_size=8))
    return head + eol + eol.join(lines) + draw(st.sampled_from([b"", eol, eol * 3, b" \t" + eol]))


@ALGORITHMS
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=messages())
def test_property_random_messages_always_verify(algorithm: str, message: bytes) -> None:
    assert verifies(algorithm, signed(algorithm, message))


def test_sign_time_against_dkimpy(capsys: pytest.CaptureFixture[str]) -> None:
    """Measured, not asserted: the reason this signer exists. Printed past pytest's capture."""
    pem = KEYS["rsa"][0]
    pkcs1 = serialization.load_pem_private_key(pem, password=None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    ours, message, rounds = signer("rsa"), wire(BASIC), 50
    start = time.perf_counter()
    for _ in range(rounds):
        ours.sign(message)
    mine = (time.perf_counter() - start) / rounds
    start = time.perf_counter()
    for _ in range(rounds):
        dkim.sign(message, SELECTOR.encode(), DOMAIN.encode(), pkcs1, canonicalize=(b"relaxed", b"relaxed"))
    theirs = (time.perf_counter() - start) / rounds
    with capsys.disabled():
        print(f"\nRSA-2048 sign: mailgate {mine * 1e3:.3f} ms, dkimpy {theirs * 1e3:.3f} ms ({theirs / mine:.0f}x)")
