"""The listeners read ``<local@domain>`` with a regular expression before the stdlib parser: wherever the
expression matches, it must give exactly what aiosmtpd's own parse gives."""

from __future__ import annotations

from aiosmtpd.smtp import SMTP
from hypothesis import given
from hypothesis import strategies as st

from mailgate.servers.smtp._common import _PLAIN_ADDRESS

_REFERENCE = SMTP(object())
_PIECES = st.sampled_from(
    ["a", "B", "0", ".", "+", "-", "_", "@", "<", ">", " ", "\t", '"', "(", ")", "[", "]", "=", "é"]
)


def _agrees(arg: str) -> None:
    match = _PLAIN_ADDRESS.match(arg)
    if match is not None:
        assert (match.group(1), match.group(2)) == _REFERENCE._getaddr(arg), arg


def test_common_forms() -> None:
    for arg in ("<a@b.c>", "<a.b+c@ex-ample.org> SIZE=100 BODY=8BITMIME", "<a@b>  X=1", "<a@b>\tX", "<A_B@EX.ORG>"):
        assert _PLAIN_ADDRESS.match(arg) is not None
        _agrees(arg)
    for arg in ("<a..b@c>", '<"q"@x>', "<a@[1.2.3.4]>", "a@b", "<>", "<a@b> (c) X=1", "<.a@b>", "<a.@b>"):
        assert _PLAIN_ADDRESS.match(arg) is None


@given(st.lists(_PIECES, max_size=30).map("".join))
def test_matches_agree_with_the_stdlib_parser(arg: str) -> None:
    _agrees(arg)


@given(st.from_regex(r"<[a-z0-9.+-]{1,12}@[a-z0-9.-]{1,12}>[ a-zA-Z=0-9]{0,20}", fullmatch=True))
def test_address_shaped_input_agrees(arg: str) -> None:
    _agrees(arg)
