"""Address parsing: what is accepted, the canonical form, and a precise refusal for everything else."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.domain.address import Address, canonical_domain, normalize, parse_address, parse_address_list


@pytest.mark.parametrize(
    ("text", "display", "local", "domain"),
    [
        ("user@example.com", "", "user", "example.com"),
        ("  user@example.com\t", "", "user", "example.com"),
        ("Name <user@example.com>", "Name", "user", "example.com"),
        ("Name<user@example.com>", "Name", "user", "example.com"),
        ("<user@example.com>", "", "user", "example.com"),
        ("< user@example.com >", "", "user", "example.com"),
        ('"Quoted, Name" <u@x.org>', "Quoted, Name", "u", "x.org"),
        ('"  spaced  \\"q\\"\t" <u@x.org>', 'spaced "q"', "u", "x.org"),
        ("John   Q.  Public <jqp@x.org>", "John Q. Public", "jqp", "x.org"),
        ('John "Q" Public <jqp@x.org>', "John Q Public", "jqp", "x.org"),
        ("j@x.org <j@x.org>", "j@x.org", "j", "x.org"),
        ("Jörg Müller <joerg@example.de>", "Jörg Müller", "joerg", "example.de"),
        ("user@bücher.example", "", "user", "bücher.example"),
        ("user@BÜCHER.Example", "", "user", "bücher.example"),
        ("user@xn--bcher-kva.example", "", "user", "bücher.example"),
        ("user@bücher\u3002example", "", "user", "bücher.example"),
        ("User.Name+tag@Example.COM", "", "User.Name+tag", "example.com"),
        ('"john doe"@example.com', "", "john doe", "example.com"),
        ('"a@b"@example.com', "", "a@b", "example.com"),
        ('"plain"@example.com', "", "plain", "example.com"),
        ("jörg@example.com", "", "jörg", "example.com"),
        ("x@localhost", "", "x", "localhost"),
        ("x@xn--strae-oqa.de", "", "x", "xn--strae-oqa.de"),
    ],
)
def test_accepted_forms(text: str, display: str, local: str, domain: str) -> None:
    address = parse_address(text)
    assert (address.display_name, address.local, address.domain) == (display, local, domain)


def test_idn_forms() -> None:
    address = parse_address("Bücher <user@bücher.example>")
    assert address.addr_spec == "user@bücher.example"
    assert address.ascii_domain == "xn--bcher-kva.example"
    assert address.ascii_addr_spec == "user@xn--bcher-kva.example"
    assert not address.needs_smtputf8


def test_non_ascii_local_part_needs_smtputf8_and_stays_unicode() -> None:
    address = parse_address("jörg@bücher.example")
    assert address.needs_smtputf8
    assert address.ascii_addr_spec == "jörg@xn--bcher-kva.example"


def test_quoted_local_part_is_requoted_only_when_needed() -> None:
    assert parse_address('"john doe"@example.com').addr_spec == '"john doe"@example.com'
    assert parse_address('"plain"@example.com').addr_spec == "plain@example.com"
    assert parse_address('"a\\"b"@example.com').addr_spec == '"a\\"b"@example.com'


def test_idna_2003_maps_sharp_s_as_the_stdlib_codec_does() -> None:
    # The stdlib codec is IDNA 2003: ß maps to ss. The canonical form follows where the mail really goes.
    assert parse_address("x@straße.de").domain == "strasse.de"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("userexample.com", "no @"),
        ("Name <userexample.com>", "no @"),
        ("a@b.com, c@d.com", "several addresses"),
        ("a@b.com c@d.com", "several addresses"),
        ("<a@b.com> <c@d.com>", "several addresses"),
        ("A <a@b.com> c@d.com", "several addresses"),
        ("a@b.com\r\nBcc: x@y.com", "CR, LF or NUL"),
        ("a@b.com\n", "CR, LF or NUL"),
        ('"x\r\nBcc: y@z.com" <a@b.com>', "CR, LF or NUL"),
        ("a\x00@b.com", "CR, LF or NUL"),
        ("a@b..com", "empty label"),
        ("a@.b.com", "empty label"),
        ("a@b.com.", "empty label"),
        ("a@" + "x" * 64 + ".com", "the limit is 63"),
        ("a@" + "ü" * 60 + ".com", "longer than 63 characters once IDNA-encoded"),
        ("a@-b.com", "hyphen"),
        ("a@b-.com", "hyphen"),
        ("a@exa_mple.com", "only letters, digits and hyphens"),
        ("a@" + ".".join(["x" * 60] * 5), "the limit is 253"),
        ("x" * 65 + "@b.com", "the limit is 64"),
        ("ü" * 33 + "@b.com", "66 octets"),
        ("x" * 64 + "@" + ".".join(["y" * 60] * 3) + ".zzzzzzz", "the limit is 254"),
        ("a@[192.0.2.1]", "address literals"),
        ("a@b.com (comment)", "comments"),
        ('"unterminated <a@b.com>', "unterminated"),
        (".a@b.com", "dot"),
        ("a..b@b.com", "two dots"),
        ("a b@b.com", "whitespace"),
        ("Name a@b.com", "whitespace"),
        ("a@b@c.com", "second @"),
        ("a(b@c.com", "comments"),
        ("a>b@c.com", "'>' without"),
        ("Name <a@b.com", "'<' without"),
        ("Name <a@b.com> trailing", "after '>'"),
        ("Group: <a@b.com>", "inside quotes"),
        ("<>", "no address"),
        ("@b.com", "local part"),
        ("a@", "domain"),
        ("a\u200b@b.com", "invisible"),
        ("a\x01@b.com", "control"),
    ],
)
def test_refusals_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_address(text)


def test_constructing_an_address_validates_and_canonicalizes() -> None:
    assert Address("", "u", "Bücher.EXAMPLE").domain == "bücher.example"
    assert Address(" \tJoe \t Q\u3000Public\xa0", "u", "example.com").display_name == "Joe Q\u3000Public"
    assert Address("Joe \u3000\x1f Public", "u", "example.com").display_name == "Joe Public"
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        Address("a\r\nBcc: x@y.com", "u", "example.com")
    with pytest.raises(ValueError, match="empty"):
        Address("", "", "example.com")
    with pytest.raises(ValueError, match="lone surrogate"):
        Address("\ud800", "u", "example.com")
    with pytest.raises(dataclasses.FrozenInstanceError):
        Address("", "u", "example.com").local = "v"  # type: ignore[misc]


def test_parse_address_list_names_the_bad_item() -> None:
    assert [a.addr_spec for a in parse_address_list(["a@b.com", "C <c@d.org>"])] == ["a@b.com", "c@d.org"]
    assert parse_address_list([]) == []
    with pytest.raises(ValueError, match=r"item 1: .*no @"):
        parse_address_list(["a@b.com", "nope"])
    with pytest.raises(TypeError):
        parse_address_list("a@b.com")


def test_normalize_folds_the_domain_but_never_the_local_part() -> None:
    assert normalize("User@Example.COM") == "User@example.com"
    assert normalize("User@xn--bcher-kva.example") == normalize("User@BÜCHER.example") == "User@bücher.example"
    assert normalize("user@example.com") != normalize("USER@example.com")
    assert normalize("Name <a@B.com>") == "a@b.com"
    assert normalize('"plain"@b.com') == "plain@b.com"
    with pytest.raises(ValueError):
        normalize("not an address")


def test_canonical_domain() -> None:
    assert canonical_domain("Bücher.Example") == "bücher.example"
    with pytest.raises(ValueError, match="empty"):
        canonical_domain("")


# ----- properties -----

_ATEXT = string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~"
_atoms = st.text(alphabet=_ATEXT, min_size=1, max_size=10)
_locals = st.lists(_atoms, min_size=1, max_size=3).map(".".join)
_labels = st.from_regex(r"\A[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?\Z")
_domains = st.lists(_labels, min_size=1, max_size=4).map(".".join)
_names = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\r\n\x00"), max_size=30)


@pytest.mark.fuzz
@given(st.text(max_size=80))
def test_any_text_parses_or_is_a_value_error(text: str) -> None:
    try:
        address = parse_address(text)
    except ValueError:
        return
    assert normalize(address.addr_spec) == address.addr_spec


@pytest.mark.fuzz
@given(st.text(alphabet=' \t"<>@,.\\()[]:;ü\u3002a-\r', max_size=30))
def test_punctuation_soup_parses_or_is_a_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        parse_address(text)


@pytest.mark.fuzz
@given(_locals, _domains)
def test_plain_addresses_round_trip(local: str, domain: str) -> None:
    address = parse_address(f"{local}@{domain}")
    assert address.local == local
    assert address.domain == domain.lower()
    assert normalize(address.addr_spec) == address.addr_spec == f"{local}@{domain.lower()}"


@pytest.mark.fuzz
@given(_names, _locals, _domains)
def test_any_display_name_survives_quoting(name: str, local: str, domain: str) -> None:
    quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    address = parse_address(f"{quoted} <{local}@{domain}>")
    assert address == Address(name, local, domain)
    assert address.display_name == re.sub(r"\s*[ \t]\s*", " ", name).strip()
