"""Files on a host: mode, owner and kind, read with testinfra's `file` module.

The inventory names secret files by glob (`/srv/chat/secrets/*.password`); the host's own
shell expands each glob, so that a remote host's files are listed, not the runner's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from msgspec import Struct

from opsbook.probes.host import NotObserved, run

if TYPE_CHECKING:
    from opsbook.targets import HostTarget


class FileMode(Struct, frozen=True):
    """A file's mode, owner and kind (symbolic links followed, as `stat -L` does)."""

    path: str
    mode: int
    owner: str
    kind: str  # "regular file", "directory" or "other"

    @property
    def too_open(self) -> bool:
        """A secret file is 0600 or stricter: no execute bit, nothing for group or others."""
        allowed = 0o700 if self.kind == "directory" else 0o600
        return bool(self.mode & ~allowed & 0o7777)

    def line(self) -> str:
        return f"{self.path} mode {self.mode:04o} owner {self.owner} ({self.kind})"


class GlobbedFiles(Struct, frozen=True):
    """The files a list of globs matched on a host, and the globs that matched nothing."""

    files: list[FileMode]
    unmatched_globs: list[str]


# IFS is a newline, so that paths with spaces stay whole; `GLOB pattern` lines say which glob
# the paths below belong to. A glob that matches nothing expands to itself, which -e refuses.
_EXPAND = """IFS='
'
for pattern do
  printf 'GLOB %s\\n' "$pattern"
  for f in $pattern; do [ -e "$f" ] && printf '%s\\n' "$f"; done
done
true"""


def expand_globs(
    host: HostTarget, globs: Sequence[str], *, timeout_s: float
) -> dict[str, list[str]]:
    """The paths each glob matches on the host, by glob (in the order given)."""
    placeholders = " ".join(["%s"] * len(globs))
    listing = run(
        host, "secret files", f"sh -c %s sh {placeholders}", _EXPAND, *globs, timeout_s=timeout_s
    )
    if listing.rc != 0:
        raise NotObserved(host, "secret files", f"cannot list them: {listing.why()}")
    matches: dict[str, list[str]] = {}
    current: list[str] = []
    for line in str(listing.stdout).splitlines():
        if line.startswith("GLOB "):
            current = matches.setdefault(line.removeprefix("GLOB "), [])
        elif line:
            current.append(line)
    return matches


def file_mode(host: HostTarget, path: str) -> FileMode:
    """One file's mode, owner and kind, through testinfra's `host.file(path)`."""
    found = host.testinfra.file(path)
    try:
        mode, owner = int(found.mode), str(found.user)
    except (AssertionError, ValueError):  # testinfra's check_output asserts rc == 0
        # The file went away since the glob was expanded, or stat may not look at it.
        raise NotObserved(host, path, "stat failed: cannot read its mode and owner") from None
    kind = "directory" if found.is_directory else "regular file" if found.is_file else "other"
    return FileMode(path, mode, owner, kind)


def globbed_files(host: HostTarget, globs: Sequence[str], *, timeout_s: float) -> GlobbedFiles:
    """Mode, owner and kind of every file the globs match on the host."""
    matches = expand_globs(host, globs, timeout_s=timeout_s)
    paths = list(dict.fromkeys(path for paths in matches.values() for path in paths))
    return GlobbedFiles(
        files=[file_mode(host, path) for path in paths],
        unmatched_globs=[glob for glob, paths in matches.items() if not paths],
    )
