"""Listening sockets, bound before a role starts so that a taken port is a clear start-up error."""

from __future__ import annotations

import socket

from mailgate.domain.errors import ConfigurationError


def bind_listener(host: str, port: int, backlog: int = 1024) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP: asyncio turns Nagle off only on sockets made with it (accepted ones inherit it), and a
    # reply written in several pieces (EHLO's lines) would otherwise wait 40 ms for a delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(backlog)
    sock.setblocking(False)
    return sock
