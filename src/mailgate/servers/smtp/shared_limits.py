"""Connection limits kept across the processes that serve one listener.

A listener's limits are the operator's (20 sessions per client address, 1000 in all), whatever number of
processes serves it. The counts live in shared memory, a row per process: a process only ever writes its
own row, so the supervisor zeroes the row of one that died with connections open. A client address is
counted in one of ``SLOTS`` hashed slots; two addresses in one slot share a count, which can refuse a
connection early, never admit one past a limit (and takes many connections from both to matter).
"""

from __future__ import annotations

import ctypes
import zlib
from typing import Any

from mailgate.servers.processes import CONTEXT
from mailgate.servers.smtp._common import ConnectionLimits

SLOTS = 4096


class LimitTable:
    """The shared counts of ``rows`` processes; made by the node, handed to its workers at spawn."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self._width = SLOTS + 1  # the last column: the row's connections in all
        self._counts: Any = CONTEXT.RawArray(ctypes.c_int32, rows * self._width)
        self._lock: Any = CONTEXT.Lock()

    def limits(self, row: int, *, per_ip: int, total: int) -> SharedConnectionLimits:
        return SharedConnectionLimits(self, row, per_ip=per_ip, total=total)

    def clear_row(self, row: int) -> None:
        with self._lock:
            start = row * self._width
            self._counts[start : start + self._width] = [0] * self._width

    def take(self, row: int, ip: str, *, per_ip: int, total: int) -> str | None:
        slot = zlib.crc32(ip.encode()) % SLOTS
        counts, width = self._counts, self._width
        with self._lock:
            if sum(counts[r * width + SLOTS] for r in range(self.rows)) >= total:
                return "limit_total"
            if sum(counts[r * width + slot] for r in range(self.rows)) >= per_ip:
                return "limit_per_ip"
            counts[row * width + slot] += 1
            counts[row * width + SLOTS] += 1
        return None

    def give_back(self, row: int, ip: str) -> None:
        slot = zlib.crc32(ip.encode()) % SLOTS
        with self._lock:
            self._counts[row * self._width + slot] -= 1
            self._counts[row * self._width + SLOTS] -= 1


class SharedConnectionLimits(ConnectionLimits):
    """One process's view: the same admit/release as a single process's limits, counted in the table."""

    def __init__(self, table: LimitTable, row: int, *, per_ip: int, total: int) -> None:
        super().__init__(per_ip=per_ip, total=total)
        self._table = table
        self._row = row

    def admit(self, ip: str) -> str | None:
        return self._table.take(self._row, ip, per_ip=self.per_ip, total=self.total)

    def release(self, ip: str) -> None:
        self._table.give_back(self._row, ip)
