"""MTA-STS record and policy parsing and MX pattern matching (RFC 8461 §3.1, §3.2, §4.1)."""

from __future__ import annotations

import pytest

from mailgate.connectors.mta_sts import MAX_AGE_LIMIT, PolicyError, StsPolicy, mx_matches, parse_policy, parse_record

POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n"


@pytest.mark.parametrize(
    ("records", "want"),
    [
        (["v=STSv1; id=20160831085700Z;"], "20160831085700Z"),
        (["v=STSv1;id=abc"], "abc"),
        (["v=STSv1; id=abc ;  "], "abc"),
        (["v=STSv1; id=abc; ext_1=some-value"], "abc"),
        (["v=spf1 -all", "v=STSv1; id=abc"], "abc"),  # other TXT records are ignored
        (["v=STSv1; id=abc", "v=STSv1; id=def"], None),  # two policies: none
        (["v=STSv1; id=abc; id=def"], None),
        (["v=STSv1; id="], None),
        (["v=STSv1; id=" + "a" * 33], None),
        (["v=STSv1; id=ab-c"], None),
        (["v=STSv1; id=abc; bad field"], None),
        (["v=STSv1"], None),  # the prefix is "v=STSv1;"
        (["v=STSv2; id=abc"], None),
        (["id=abc; v=STSv1;"], None),
        ([], None),
    ],
)
def test_txt_record(records: list[str], want: str | None) -> None:
    assert parse_record(records) == want


def test_policy_fields() -> None:
    policy = parse_policy(POLICY, "id1")
    assert policy == StsPolicy("id1", "enforce", ("mail.example.com", "*.example.net"), 604800)


def test_policy_tolerates_lf_whitespace_case_and_unknown_keys() -> None:
    text = "version: STSv1\nmode:testing\n\nmx:   MX.Example.COM.  \nmax_age: 86400\nfuture_key: whatever\n"
    policy = parse_policy(text, "x")
    assert (policy.mode, policy.mx, policy.max_age) == ("testing", ("mx.example.com",), 86400)


def test_policy_max_age_is_capped_at_a_year() -> None:
    policy = parse_policy(POLICY.replace("604800", "9999999999"), "x")
    assert policy.max_age == MAX_AGE_LIMIT


def test_mode_none_needs_no_mx() -> None:
    policy = parse_policy("version: STSv1\nmode: none\nmax_age: 86400\n", "x")
    assert (policy.mode, policy.mx) == ("none", ())


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (POLICY.replace("STSv1", "STSv2"), "version"),
        (POLICY.replace("version: STSv1\r\n", ""), "version"),
        (POLICY.replace("enforce", "strict"), "mode"),
        (POLICY.replace("max_age: 604800", "max_age: -1"), "max_age"),
        (POLICY.replace("max_age: 604800", "max_age: 12345678901"), "max_age"),
        (POLICY.replace("max_age: 604800\r\n", ""), "max_age"),
        ("version: STSv1\nmode: enforce\nmax_age: 86400\n", "mx"),
        ("<html><body>not found</body></html>", "key: value"),
    ],
)
def test_bad_policies(text: str, problem: str) -> None:
    with pytest.raises(PolicyError, match=problem):
        parse_policy(text, "x")


@pytest.mark.parametrize(
    ("pattern", "host", "want"),
    [
        ("mail.example.com", "mail.example.com", True),
        ("mail.example.com", "MAIL.example.com.", True),
        ("mail.example.com.", "mail.example.com", True),
        ("mail.example.com", "mail2.example.com", False),
        ("*.example.com", "mx1.example.com", True),
        ("*.example.com", "MX1.EXAMPLE.COM", True),
        ("*.example.com", "example.com", False),  # the wildcard stands for exactly one label
        ("*.example.com", "a.mx1.example.com", False),
        ("*.example.com", ".example.com", False),
        ("*.example.com", "mx1.example.net", False),
        ("mx*.example.com", "mx1.example.com", False),  # only a whole leftmost label may be wild
    ],
)
def test_mx_pattern(pattern: str, host: str, want: bool) -> None:
    assert mx_matches(pattern, host) is want


def test_policy_matches_any_pattern() -> None:
    policy = parse_policy(POLICY, "id1")
    assert policy.matches("mail.example.com")
    assert policy.matches("in1.example.net")
    assert not policy.matches("mail.example.org")
