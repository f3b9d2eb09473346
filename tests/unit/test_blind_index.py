"""The blind index: normalized whole words, keyed per tenant, revealing no word."""

from __future__ import annotations

from mailgate.security.blind_index import MAX_TERMS, BlindIndex, words

KEY = b"k" * 32


def test_words_are_normalized_split_and_deduplicated() -> None:
    assert words("Grüße aus KÖLN, köln! alice+sales@acme.test a ﬁle") == [
        "grüsse",
        "aus",
        "köln",
        "alice",
        "sales",
        "acme",
        "test",
        "file",  # NFKC folds the ligature
    ]


def test_terms_match_queries_per_tenant_only() -> None:
    index = BlindIndex(KEY)
    stored = set(index.terms("ten_a", ["Quarterly report", "from Jürgen"], senders=["jm@example.org"]))
    assert set(index.query("ten_a", "REPORT jürgen")) <= stored
    assert not set(index.query("ten_a", "annual")) & stored
    assert not set(index.query("ten_b", "report")) & stored  # another tenant's key
    assert index.sender_term("ten_a", "JM@example.org") in stored
    assert not any("report" in term or "quarterly" in term for term in stored)
    assert all(len(term) == 20 for term in stored)


def test_a_huge_message_is_bounded() -> None:
    text = " ".join(f"w{i}" for i in range(MAX_TERMS * 2))
    assert len(BlindIndex(KEY).terms("t", [text])) == MAX_TERMS
