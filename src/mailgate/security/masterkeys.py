"""Master keys: the keys that wrap data keys. They never touch the database.

They come from ``MAILGATE_MASTER_KEY`` (comma-separated base64, first active) or from ``master.key``
in the data dir (one base64 key per line, first active), generated with mode 0600 on first start.
A key's id is derived from the key itself, so the file needs no ids and a wrong key is named, not
silently used.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from mailgate.domain.errors import ConfigurationError
from mailgate.security.envelope import KEY_SIZE, new_key

MASTER_KEY_FILE = "master.key"


@dataclass(frozen=True, slots=True)
class MasterKey:
    key: bytes

    @property
    def kid(self) -> str:
        return "mk-" + hashlib.sha256(b"mailgate-master-key-id\0" + self.key).hexdigest()[:16]

    def encoded(self) -> str:
        return base64.b64encode(self.key).decode()


def decode_key(text: str, where: str) -> MasterKey:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError(f"{where}: master key is not valid base64") from None
    if len(raw) != KEY_SIZE:
        raise ConfigurationError(f"{where}: master key must be {KEY_SIZE} bytes, got {len(raw)}")
    return MasterKey(raw)


def generate() -> MasterKey:
    return MasterKey(new_key())


def write_key_file(path: Path, keys: list[MasterKey]) -> None:
    """Replace the key file atomically, readable by the owner only."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("".join(k.encoded() + "\n" for k in keys))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_master_keys(env_value: str | None, data_dir: Path, create: bool = True) -> tuple[list[MasterKey], Path | None]:
    """Return the keys (active first) and the file they came from (None when from the environment)."""
    if env_value:
        keys = [decode_key(part, "MAILGATE_MASTER_KEY") for part in env_value.split(",") if part.strip()]
        if not keys:
            raise ConfigurationError("MAILGATE_MASTER_KEY is set but empty")
        return keys, None
    path = data_dir / MASTER_KEY_FILE
    if not path.exists():
        if not create:
            raise ConfigurationError(f"no master key: {path} does not exist and MAILGATE_MASTER_KEY is unset")
        data_dir.mkdir(parents=True, exist_ok=True)
        write_key_file(path, [generate()])
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigurationError(f"{path} is readable by others (mode {mode:o}); chmod 600 it")
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    keys = [decode_key(line, str(path)) for line in lines]
    if not keys:
        raise ConfigurationError(f"{path} holds no key")
    return keys, path
