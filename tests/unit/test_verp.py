"""VERP return paths: round trips, what MTAs do to them on the way back, and forgeries."""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.mime import bounces
from mailgate.outbound import verp
from mailgate.outbound.verp import VerpCodec

KEY = bytes(range(32))
DELIVERY = "dlv_5f0c2a9e41b7d3c86e10"
CODEC = VerpCodec(KEY, "bounce.mailgate.example")
_ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"
IDS = st.builds(str.__add__, st.sampled_from(_ID_CHARS), st.text(alphabet=_ID_CHARS + "-", max_size=38))


def test_encode_names_the_delivery_under_the_prefix_and_bounce_domain() -> None:
    address = CODEC.encode(DELIVERY)
    local, _, domain = address.partition("@")
    assert domain == "bounce.mailgate.example"
    assert local.startswith(f"bounces+{DELIVERY}-")
    assert address == address.lower()
    assert CODEC.decode(address) == DELIVERY


def test_encoding_is_deterministic_and_keyed() -> None:
    other = VerpCodec(b"k" * 32, "bounce.mailgate.example")
    assert CODEC.encode(DELIVERY) == CODEC.encode(DELIVERY)
    assert other.encode(DELIVERY) != CODEC.encode(DELIVERY)
    assert other.decode(CODEC.encode(DELIVERY)) is None


@pytest.mark.parametrize(
    "mangle",
    [
        str.upper,
        str.title,
        lambda a: f"<{a}>",
        lambda a: f"  <{a.upper()}>\r\n",
    ],
    ids=["upper", "title", "angle", "angle-spaces-upper"],
)
def test_decode_tolerates_what_mtas_do_to_return_paths(mangle: Callable[[str], str]) -> None:
    assert CODEC.decode(mangle(CODEC.encode(DELIVERY))) == DELIVERY


@pytest.mark.parametrize(
    "address",
    [
        "",
        "@",
        "<>",
        "bounces@bounce.mailgate.example",
        "bounces+@bounce.mailgate.example",
        f"bounces+{DELIVERY}@bounce.mailgate.example",
        f"bounces+{DELIVERY}-@bounce.mailgate.example",
        f"bounces+{DELIVERY}-aaaaaaaaaaaaaaaa@bounce.mailgate.example",
        f"bounces+{DELIVERY}-ääääääääääääääää@bounce.mailgate.example",
        f"bounces+{DELIVERY}-{'a' * 15}1@bounce.mailgate.example",
        "bounces+dlv_x-abc@[192.0.2.1]",
        "bounces+a@b@c",
        "bounces+\x00@bounce.mailgate.example",
    ],
)
def test_anything_not_signed_is_refused(address: str) -> None:
    assert CODEC.decode(address) is None


def test_a_token_for_another_domain_or_prefix_is_refused() -> None:
    token = CODEC.encode(DELIVERY).partition("+")[2].partition("@")[0]
    assert CODEC.decode(f"bounces+{token}@other.example") is None
    assert CODEC.decode(f"bounces+{token}@sub.bounce.mailgate.example") is None
    assert CODEC.decode(f"returns+{token}@bounce.mailgate.example") is None
    assert VerpCodec(KEY, "bounce.mailgate.example", "returns").decode(CODEC.encode(DELIVERY)) is None


def test_idn_bounce_domain_is_sent_as_a_labels_and_read_in_either_form() -> None:
    codec = VerpCodec(KEY, "Rückläufer.Example")
    address = codec.encode(DELIVERY)
    assert address.endswith("@xn--rcklufer-3za0v.example")
    assert address.isascii()
    assert codec.decode(address.replace("xn--rcklufer-3za0v", "rückläufer")) == DELIVERY


def test_prefix_is_case_insensitive_too() -> None:
    codec = VerpCodec(KEY, "bounce.mailgate.example", "Returns")
    assert codec.encode(DELIVERY).startswith("returns+")
    assert codec.decode(codec.encode(DELIVERY).upper()) == DELIVERY


def test_local_part_stays_within_rfc5321() -> None:
    longest = "a" * CODEC.max_id_length
    local = CODEC.encode(longest).partition("@")[0]
    assert len(local) == 64
    assert CODEC.decode(CODEC.encode(longest)) == longest
    with pytest.raises(ValueError, match="allows"):
        CODEC.encode(longest + "a")


@pytest.mark.parametrize("bad", ["", "DLV_1", "dlv.1", "-dlv", "dlv 1", "dlv+1", "dlv_ä"])
def test_encode_refuses_ids_that_would_not_survive_the_trip(bad: str) -> None:
    with pytest.raises(ValueError, match="delivery id"):
        CODEC.encode(bad)


@pytest.mark.parametrize(
    ("key", "domain", "prefix", "message"),
    [
        (b"short", "bounce.example", "bounces", "at least"),
        (KEY, "bounce..example", "bounces", "empty label"),
        (KEY, "bounce.example", "", "prefix"),
        (KEY, "bounce.example", "bounce+s", "prefix"),
        (KEY, "bounce.example", "b.s", "prefix"),
        (KEY, "bounce.example", "b" * 30, "too long"),
    ],
)
def test_codec_refuses_bad_configuration(key: bytes, domain: str, prefix: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VerpCodec(key, domain, prefix)


@pytest.mark.fuzz
@given(IDS)
def test_any_valid_id_round_trips(delivery_id: str) -> None:
    address = CODEC.encode(delivery_id)
    assert len(address.partition("@")[0]) <= 64
    assert CODEC.decode(address) == delivery_id
    assert CODEC.decode(address.upper()) == delivery_id


@pytest.mark.fuzz
@given(IDS, st.data())
def test_any_one_character_change_is_refused(delivery_id: str, data: st.DataObject) -> None:
    address = CODEC.encode(delivery_id)
    position = data.draw(st.integers(min_value=0, max_value=len(address) - 1))
    original = address[position]
    replacement = data.draw(
        st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-_.+@=<ä").filter(lambda c: c != original.lower())
    )
    changed = address[:position] + replacement + address[position + 1 :]
    assert CODEC.decode(changed) is None


@pytest.mark.fuzz
@given(st.text(max_size=120))
def test_decoding_arbitrary_text_never_raises(text: str) -> None:
    assert CODEC.decode(text) is None


@pytest.mark.parametrize("module", [verp, bounces])
def test_codec_and_parser_import_only_the_stdlib_and_the_domain(module: ModuleType) -> None:
    """The inbound side and the sender share these without dragging in the store or the network."""
    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    ours = {name for name in imported if name.split(".")[0] == "mailgate"}
    assert all(name.startswith("mailgate.domain.") for name in ours), ours
    assert all(name.split(".")[0] in sys.stdlib_module_names for name in imported - ours)
