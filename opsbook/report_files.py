"""Who may read the reports: their owner and one group, never everyone.

Reports name hosts, users, versions and what is broken, and the audit log says what was changed
by whom: report folders are 0750 and report files 0640, in the reports group. That group is the
runner's own by default, or the one `--reports-group` names (a web server's group, say, so that
it can serve the status page and nothing else on the machine can read the reports).
"""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path

FOLDER_MODE = 0o750
FILE_MODE = 0o640


class ReportsGroupError(ValueError):
    """The reports group does not exist, or its files could not be given to it."""


def reports_group(name: str | None) -> int:
    """The group id for a group name or number; without one, the runner's own group."""
    if not name:
        return os.getegid()
    try:
        gid = int(name) if name.isdigit() else grp.getgrnam(name).gr_gid
        grp.getgrgid(gid)
    except KeyError:
        raise ReportsGroupError(f"no such group: {name}") from None
    # Only root, or a member, can give a file to a group: say so now, not on the first file.
    if os.geteuid() != 0 and gid != os.getegid() and gid not in os.getgroups():
        raise ReportsGroupError(f"the runner is not a member of group {name}")
    return gid


def restrict(path: Path, gid: int) -> None:
    """Give one folder or file the reports' mode and group. Symbolic links are left as they
    are (their own mode means nothing), and so is what belongs to another user: only its
    owner (or root) could change it."""
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) or (info.st_uid != os.geteuid() and os.geteuid() != 0):
        return
    mode = FOLDER_MODE if stat.S_ISDIR(info.st_mode) else FILE_MODE
    if info.st_gid != gid:
        os.chown(path, -1, gid, follow_symlinks=False)
    if stat.S_IMODE(info.st_mode) != mode:
        os.chmod(path, mode)


def restrict_tree(folder: Path, gid: int) -> None:
    """A folder and everything in it, as `restrict` does each."""
    restrict(folder, gid)
    for parent, folders, files in os.walk(folder):
        for name in (*folders, *files):
            restrict(Path(parent, name), gid)


def make_folder(path: Path, gid: int) -> None:
    """Make a folder (and its missing parents) readable by the owner and the group only."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
    for made in missing:
        restrict(made, gid)
