"""PostgreSQL's programs for a server's major version: where they are looked for, which may be used.

Debian and Ubuntu install each major version's programs in /usr/lib/postgresql/<major>/bin
(/usr/bin/pg_dump is a wrapper that picks one of them), the PGDG packages for RHEL in
/usr/pgsql-<major>/bin; elsewhere (Homebrew, Alpine, a build from source) they are on PATH,
and there only their `--version` says which major they are. $OPSBOOK_PG_BIN, when set, is
looked in first, and its programs are version-checked like PATH's.

A client program (pg_dump, pg_restore, psql) is the server's major version's. When that one is
not installed, the nearest newer one will do (pg_dump dumps servers of its own version or
older, pg_restore reads the archives of its own pg_dump or older ones); an older one never:
an older pg_dump does not know what a newer server may hold (it refuses one at best), so a
backup is never taken with it. The error names the versions and every place looked in.

The server's programs (postgres, initdb, pg_isready, createdb) for a cluster opsbook runs itself
are those of the cluster's own version (its PG_VERSION file), else the newest installed.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ENV_PG_BIN = "OPSBOOK_PG_BIN"
VERSION_TIMEOUT_S = 10
# `pg_dump (PostgreSQL) 15.13 (Debian 15.13-0+deb12u1)`, `postgres (PostgreSQL) 17beta1`
_VERSION = re.compile(r"\(PostgreSQL\) (\d+)")


class PgToolsError(Exception):
    """No suitable PostgreSQL program: one line naming the versions and where it looked."""


@dataclass(frozen=True)
class Places:
    """Where programs are looked for: the filesystem `root` (/ but in tests), PATH and
    $OPSBOOK_PG_BIN as they were when the places were taken."""

    root: Path = Path("/")
    path: str = field(default_factory=lambda: os.environ.get("PATH", os.defpath))
    pg_bin: Path | None = field(
        default_factory=lambda: Path(os.environ[ENV_PG_BIN]) if os.environ.get(ENV_PG_BIN) else None
    )

    def version_dirs(self, major: int) -> list[Path]:
        """The standard folders of one major version's programs (Debian's, then RHEL's)."""
        return [
            self.root / "usr/lib/postgresql" / str(major) / "bin",
            self.root / f"usr/pgsql-{major}" / "bin",
        ]

    def installed_majors(self) -> list[int]:
        """The major versions with a standard folder, newest first."""
        found: set[int] = set()
        for parent, pattern in (("usr/lib/postgresql", "*"), ("usr", "pgsql-*")):
            for folder in (self.root / parent).glob(pattern):
                number = folder.name.removeprefix("pgsql-")
                if number.isdigit() and (folder / "bin").is_dir():
                    found.add(int(number))
        return sorted(found, reverse=True)

    def on_path(self, name: str) -> Path | None:
        found = shutil.which(name, path=self.path)
        return Path(found) if found else None


def major_of(version_num: int) -> int:
    """The major version of `server_version_num` (150004 is 15.4: 15). Before 10 the major had
    two parts (90624 is 9.6.24); those come out as 9, whose servers any newer pg_dump serves."""
    return version_num // 10000


@functools.lru_cache(maxsize=64)
def _reported_major(path: str, mtime_ns: int) -> int | None:
    try:
        done = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT_S,
            check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _VERSION.search(done.stdout)
    return int(match[1]) if done.returncode == 0 and match else None


def reported_major(program: Path) -> int | None:
    """The major version a program's `--version` reports; None when it says none."""
    try:
        mtime_ns = program.stat().st_mtime_ns
    except OSError:
        return None
    return _reported_major(str(program), mtime_ns)


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


@dataclass(frozen=True)
class Tool:
    """A program found for a server: its path and the major version it is."""

    path: Path
    major: int

    def __str__(self) -> str:
        return str(self.path)


def client_tool(name: str, server_major: int, places: Places | None = None) -> Tool:
    """The `name` program (pg_dump, pg_restore, psql) for a server of `server_major`: the same
    major version's, else the nearest newer one's; PgToolsError when only older ones exist.

    Looked in: $OPSBOOK_PG_BIN, the standard folders of `server_major`, those of the newer
    versions installed, then PATH; the first of the server's version wins, else the oldest of
    the newer ones (a standard folder's before PATH's)."""
    places = places or Places()
    looked: list[str] = []
    candidates: list[Tool] = []
    for where, tool in _candidates(name, server_major, places):
        looked.append(where)
        if tool is None:
            continue
        if tool.major == server_major:
            return tool
        candidates.append(tool)
    newer = sorted((t for t in candidates if t.major > server_major), key=lambda t: t.major)
    if newer:
        return newer[0]
    older = {t for t in candidates if t.major < server_major}
    older |= {
        Tool(folder / name, major)
        for major in places.installed_majors()
        if major < server_major
        for folder in places.version_dirs(major)
        if _executable(folder / name)
    }
    shown = sorted(older, key=lambda t: (-t.major, str(t)))
    found = f"found only older: {', '.join(f'{t} ({t.major})' for t in shown)}" if older else ""
    found = found or "found none"
    raise PgToolsError(
        f"no {name} for the PostgreSQL {server_major} server (version {server_major} or newer "
        f"needed, never older): looked in {', '.join(dict.fromkeys(looked))}; {found}"
    )


def _candidates(name: str, server_major: int, places: Places) -> Iterator[tuple[str, Tool | None]]:
    """(where it looked, what it found there), in the order of preference, lazily: the
    programs that must be asked their version are asked only when reached."""
    if places.pg_bin is not None:
        yield f"${ENV_PG_BIN} ({places.pg_bin})", _asked(places.pg_bin / name)
    for folder in places.version_dirs(server_major):
        # The folder names the version: no need to ask the program.
        yield str(folder), Tool(folder / name, server_major) if _executable(folder / name) else None
    for major in sorted(m for m in places.installed_majors() if m > server_major):
        for folder in places.version_dirs(major):
            yield str(folder), Tool(folder / name, major) if _executable(folder / name) else None
    program = places.on_path(name)
    yield "PATH", _asked(program) if program is not None else None


def _asked(program: Path) -> Tool | None:
    if not _executable(program):
        return None
    major = reported_major(program)
    return Tool(program, major) if major is not None else None


def server_bin(major: int | None = None, places: Places | None = None) -> Path:
    """The folder of a server's programs (postgres, initdb, pg_isready, psql, createdb):
    $OPSBOOK_PG_BIN; else version `major`'s (a cluster's PG_VERSION), or with no major the
    newest installed; else the folder of the `postgres` on PATH of that version."""
    places = places or Places()
    if places.pg_bin is not None:
        return places.pg_bin
    majors = [major] if major is not None else places.installed_majors()
    looked: list[str] = []
    for each in majors:
        for folder in places.version_dirs(each):
            looked.append(str(folder))
            if _executable(folder / "postgres"):
                return folder
    looked.append("PATH")
    program = places.on_path("postgres")
    if program is not None and (major is None or reported_major(program) == major):
        return program.resolve().parent
    version = f"PostgreSQL {major}'s" if major is not None else "PostgreSQL's"
    raise PgToolsError(
        f"{version} server programs are not installed: looked in {', '.join(looked)} "
        f"(or set ${ENV_PG_BIN} to their folder)"
    )
