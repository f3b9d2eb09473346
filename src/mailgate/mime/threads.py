"""What threading needs from a message: its reference ids and a subject key.

Ids are returned without their angle brackets, as RFC 5322 ``msg-id`` content. ``In-Reply-To`` and
``References`` in the wild also carry comments, phrases ("<id> (John's message of ...)") and bare ids, so
only the bracketed tokens count there; ``Message-ID`` alone falls back to a bare token, because some
senders omit the brackets and the id is still the id.
"""

from __future__ import annotations

import re

_MSG_ID = re.compile(r"<\s*([^<>\s]+?)\s*>")
_BARE_ID = re.compile(r"[^\s<>()\",;]+@[^\s<>()\",;]+")
# Reply and forward markers in the languages mail clients localize them into, optionally counted
# ("Re[2]:", "Re(2):", "Re^2:"), and mailing-list tags ("[list] "), repeated in any order.
_PREFIX = re.compile(
    r"^\s*(?:(?:re|aw|antw|sv|vs|ref|réf|rif|r|odp|res|fwd?|wg|tr|enc|doorst|rv|i|vb|ynt|πθ|ha)"
    r"\s*(?:\[\d+\]|\(\d+\)|\^\d+)?\s*[:：]|\[[^\[\]]{1,40}\])\s*",
    re.IGNORECASE,
)
_SPACES = re.compile(r"\s+")
# RFC 5322 3.6.4 keeps the first id (the thread's root) and the last ones when trimming References.
MAX_REFERENCES = 100
MAX_BARE_ID = 250


def message_id(value: str | None) -> str | None:
    """The id of a ``Message-ID`` value: the first bracketed id, else a bare ``left@right`` token, else
    the value itself when it is one short token."""
    if not value:
        return None
    match = _MSG_ID.search(value)
    if match is not None:
        return match[1]
    bare = _BARE_ID.search(value)
    if bare is not None:
        return bare[0]
    token = value.strip()
    return token if token and len(token) <= MAX_BARE_ID and not any(c.isspace() for c in token) else None


def reference_ids(value: str | None) -> tuple[str, ...]:
    """The bracketed ids of a ``References`` or ``In-Reply-To`` value, in order, without repeats.

    At most ``MAX_REFERENCES``: the first and the last ones, as RFC 5322 trims."""
    if not value:
        return ()
    ids = list(dict.fromkeys(match[1] for match in _MSG_ID.finditer(value)))
    if len(ids) > MAX_REFERENCES:
        ids = [ids[0], *ids[-(MAX_REFERENCES - 1) :]]
    return tuple(ids)


def normalize_subject(subject: str) -> str:
    """A key under which replies and forwards of one conversation meet: reply/forward prefixes and list
    tags stripped, whitespace collapsed, case folded. A key to compare, not text to show."""
    previous = None
    text = subject
    while text != previous:
        previous = text
        text = _PREFIX.sub("", text, count=1)
    return _SPACES.sub(" ", text).strip().casefold()
