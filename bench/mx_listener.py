"""MX listener benchmark: how many messages per second the SMTP protocol layer takes in, against
Postfix's ``smtp-sink`` taking the same messages on the same machine in the same run.

``.venv/bin/python bench/mx_listener.py [--n N] [--sessions S] [--size BYTES]``

Postfix's ``smtp-source`` (C) sends N messages over S parallel sessions, twice: keeping each session's
connection (``-d``), and with a new connection per message, as most senders on the internet do. The
receivers are ``smtp-sink`` (C, the anchor: it acknowledges and discards) and ``start_mx`` on uvloop in
this process with an inbound service that answers 250 at once, so what is measured is aiosmtpd plus
the listener's own layer (limits, timeouts, enhanced codes, the envelope) and nothing behind it.
Logging is at ``warning``, as in ``bench/run.py``. Printed per mode: msgs/s of both, the ratio
(mailgate / smtp-sink; 1.0 = as fast as the C sink) and the listener's CPU time per message. Needs the
Debian package ``postfix`` (its programs only; nothing is started as a service); 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import resource
import time

import loadgen  # bench/ is on sys.path: it is the directory of the script being run

from mailgate.observability.logging import configure_logging

configure_logging("json", "warning")  # before the listener's modules create their loggers

from mailgate.domain.delivery import Reply  # noqa: E402
from mailgate.domain.inbound import InboundEnvelope  # noqa: E402
from mailgate.servers.listen import bind_listener  # noqa: E402
from mailgate.servers.smtp.mx import MxOptions, start_mx  # noqa: E402
from mailgate.testing.postfix import PostfixSink, smtp_source  # noqa: E402

STORED = Reply(250, "2.0.0", "Ok")


class NullInbound:
    """Every recipient exists and every message is stored at once: the listener is all that works."""

    def __init__(self) -> None:
        self.received = 0

    async def check_recipient(self, address: str, *, client_ip: str) -> Reply | None:
        return None

    async def receive(self, envelope: InboundEnvelope) -> Reply:
        self.received += 1
        return STORED


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _timed(port: int, args: argparse.Namespace, reuse: bool) -> tuple[float, float]:
    """Seconds for smtp-source to send ``args.n`` messages, and this process's CPU seconds meanwhile."""
    cpu, start = _cpu(), time.perf_counter()
    await smtp_source(
        port, messages=args.n, sessions=args.sessions, size=args.size, reuse_connections=reuse, timeout=600
    )
    return time.perf_counter() - start, _cpu() - cpu


async def bench(args: argparse.Namespace) -> None:
    inbound = NullInbound()
    sock = bind_listener("127.0.0.1", 0)
    # one client address sends everything here: lift the per-address limit above its sessions
    options = MxOptions(hostname="mx.bench.invalid", max_connections_per_ip=args.sessions * 2)
    server = await start_mx(inbound, sock, tls_context=None, options=options)
    try:
        async with PostfixSink() as sink:
            print(f"smtp-source -s {args.sessions} -m {args.n} -l {args.size}")
            for reuse in (True, False):
                mode = "one connection per session (-d)" if reuse else "a connection per message"
                anchor, _ = await _timed(sink.port, args, reuse)
                before = inbound.received
                seconds, cpu = await _timed(sock.getsockname()[1], args, reuse)
                assert inbound.received - before == args.n, "smtp-source finished, but not every message arrived"
                rate, anchor_rate = args.n / seconds, args.n / anchor
                print(
                    f"{mode:32}  smtp-sink {anchor_rate:7.0f} msgs/s   mailgate mx {rate:7.0f} msgs/s"
                    f"   ratio {rate / anchor_rate:.2f}   listener CPU {cpu / args.n * 1e6:.0f} µs/msg"
                )
    finally:
        server.close()
        await server.wait_closed()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="messages per leg (default 5000)")
    parser.add_argument("--sessions", type=int, default=20, help="parallel sessions (default 20)")
    parser.add_argument("--size", type=int, default=1000, help="payload bytes per message (default 1000)")
    loadgen.on_uvloop(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
