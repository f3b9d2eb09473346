"""What DKIM and ARC verification share: finding signature fields in a header, and fetching the public
keys they name before dkimpy runs.

dkimpy asks for each key through a synchronous ``dnsfunc`` in the middle of verifying. Rather than park
a thread on the event loop for every one of them, all the keys a message names are fetched first,
concurrently, through mailgate's DnsResolver; verification then runs on a thread with the answers in
hand and never touches the network.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import dkim  # type: ignore[import-untyped]
import dkim.util  # type: ignore[import-untyped]

from mailgate.connectors.dns import DnsError, DnsResolver, NoSuchDomain

# dkimpy logs every signature it cannot verify at ERROR: that is the sender's problem, and it is
# reported in the result. A logger outside logging's tree, above CRITICAL, keeps those lines away.
SILENT = logging.Logger("mailgate.inbound.auth.dkimpy", level=logging.CRITICAL + 1)

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_LINES = re.compile(rb"\r?\n")


def header_fields(raw: bytes, names: frozenset[bytes]) -> list[tuple[bytes, bytes]]:
    """The fields called one of ``names`` (lower case), as (name, value) in message order, the value
    still folded.

    Lenient on purpose: a line that is neither a field nor a continuation is skipped here, so the
    signatures are still found and reported; dkimpy judges the message itself when verifying.
    """
    if raw.startswith((b"\r\n", b"\n")):
        return []  # no header at all
    fields: list[tuple[bytes, list[bytes]]] = []
    wanted = False
    for line in _LINES.split(_HEADER_END.split(raw, maxsplit=1)[0]):
        if line[:1] in (b" ", b"\t"):
            if wanted:
                fields[-1][1].append(line)
            continue
        name, colon, value = line.partition(b":")
        name = name.rstrip(b" \t").lower()
        wanted = bool(colon) and name in names
        if wanted:
            fields.append((name, [value]))
    return [(name, b"\r\n".join(parts)) for name, parts in fields]


def tags(value: bytes) -> dict[bytes, bytes] | None:
    """A signature field's tag=value list (RFC 6376 3.2), or None when it does not parse."""
    try:
        parsed: dict[bytes, bytes] = dkim.util.parse_tag_value(value)
    except dkim.util.InvalidTagValueList:
        return None
    return parsed


def key_name(signature: dict[bytes, bytes]) -> str | None:
    """Where the signature's public key is published: ``<s>._domainkey.<d>`` (RFC 6376 3.6.2.1)."""
    selector, domain = signature.get(b"s", b""), signature.get(b"d", b"")
    if not selector or not domain:
        return None
    try:
        return f"{selector.decode('ascii')}._domainkey.{domain.decode('ascii')}".rstrip(".").lower()
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True, slots=True)
class Keys:
    """The TXT records found at each key name, and the names whose lookup failed temporarily."""

    records: dict[str, list[bytes]]
    failures: dict[str, str]
    _chosen: dict[str, tuple[bytes | None, str]] = field(default_factory=dict, init=False, repr=False)

    def key(self, name: str) -> tuple[bytes | None, str]:
        """(the record to verify with, why it is no usable key: "" when it is one). Of several records
        at one name (a key rotation done wrong) the first usable one is taken, as RFC 6376 6.1.2 lets a
        verifier choose; the choice is kept, as parsing an RSA key in dkimpy costs ~0.1 ms."""
        if name not in self._chosen:
            self._chosen[name] = _choose(name, self.records.get(name, []))
        return self._chosen[name]

    def dnsfunc(self, name: bytes, timeout: float = 5) -> bytes | None:
        """dkimpy's key lookup, answered from what was fetched."""
        return self.key(name.decode("ascii", "replace").rstrip(".").lower())[0]


def _choose(name: str, records: list[bytes]) -> tuple[bytes | None, str]:
    if not records:
        return None, f"no key published at {name}"
    problems = []
    for record in records:
        try:
            dkim.evaluate_pk(name, record)
        except dkim.DKIMException as exc:
            problems.append(str(exc))
            continue
        return record, ""
    return records[0], problems[0]


async def fetch_keys(resolver: DnsResolver, names: Iterable[str]) -> Keys:
    """Look every distinct name up at once. A name that does not exist has no records, which dkimpy
    reports as a missing key; a lookup that failed is kept apart, as only a retry can tell."""
    unique = sorted(set(names))
    answers = await asyncio.gather(*(resolver.txt_bytes(name) for name in unique), return_exceptions=True)
    records: dict[str, list[bytes]] = {}
    failures: dict[str, str] = {}
    for name, answer in zip(unique, answers, strict=True):
        if isinstance(answer, NoSuchDomain):
            records[name] = []
        elif isinstance(answer, DnsError):
            failures[name] = answer.reason
        elif isinstance(answer, BaseException):
            raise answer
        else:
            records[name] = answer
    return Keys(records, failures)
