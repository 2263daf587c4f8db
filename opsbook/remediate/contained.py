"""The record of a deployment an incident's containment closed, in its state directory.

`opsbook incident contain` (opsbook.remediation.containment) writes `contained.json` beside the
remediation lock, budgets and audit log; `release` removes it. While it is there, the checks of
the services it names are not applicable (the fixtures), `opsbook status` shows them CONTAINED,
and no fix may start, restart or recreate them (the runner's gate): the entry is closed on
purpose. Kept apart from the containment fix so that the runner can read it.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import msgspec

RECORD = "contained.json"
RECORD_MODE = 0o640
STATE_MODE = 0o750


class Containment(msgspec.Struct, frozen=True):
    """Who closed which public entries, when, and why."""

    services: tuple[str, ...]
    entries: tuple[str, ...]  # host:port of each public entry closed
    time: str  # ISO 8601, UTC, to the second
    user: str
    run: str
    reason: str = ""

    def line(self) -> str:
        """`contained by opsbook at 2026-12-01T14:02:11+00:00 by alice: reason`."""
        why = f": {self.reason}" if self.reason else ""
        return f"contained by opsbook at {self.time} by {self.user}{why}"

    def holds(self, *names: str) -> bool:
        """Whether any of `names` (a service, or the service of a target) is closed by it; a
        record that names no service (unreadable) holds every one."""
        return not self.services or bool(set(names) & set(self.services))


def read(state: Path) -> Containment | None:
    """The record in the state directory `state`, or None when the deployment is not contained.
    A record that cannot be read still means contained, with "?" for what cannot be read."""
    path = state / RECORD
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return Containment((), (), "?", "?", "?", f"{path} cannot be read: {exc.strerror}")
    try:
        return msgspec.json.decode(data, type=Containment)
    except msgspec.DecodeError as exc:
        return Containment((), (), "?", "?", "?", f"{path} cannot be read: {exc}")


def write(state: Path, record: Containment) -> None:
    state.mkdir(mode=STATE_MODE, parents=True, exist_ok=True)
    path = state / RECORD
    # Aside under a name of its own, then renamed: a reader never sees half a record.
    aside = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    aside.write_bytes(msgspec.json.encode(record) + b"\n")
    aside.chmod(RECORD_MODE)
    os.replace(aside, path)


def remove(state: Path) -> None:
    (state / RECORD).unlink(missing_ok=True)
