"""The sandbox's releases: how a backend release is deployed, and rolled back.

    DIR/releases/<tag>/backend.py   the release: a copy of the backend's code
    DIR/releases/<tag>/RELEASE      what it is: tag, when it was made, from where, SHA-256
    DIR/releases/current -> <tag>   the deployed release; the backend runs from here
    DIR/releases/history            the tags deployed, one a line, oldest first

    create(releases, "v2")          copy the reference backend (or a given file) into v2/
    deploy(runtime, releases, "v2") current -> v2 (atomically), append to history, restart
    rollback(runtime, releases)     drop the newest history line, current -> the one before

`runtime` is whatever restarts the backend: the inventory's runtime (opsbook.remediate.runtime),
or the sandbox's Stack itself. Without a `current` link the sandbox runs the backend from the
chatapp package, as before releases existed.

A deployment that `opsbook deploy` deploys (compose, or the inventory's deploy commands) keeps
its releases in its state directory instead (opsbook.remediate.runner.state_dir), beside its
lock and audit log:

    STATE/releases.json             the releases deployed, oldest first: tag, when, the pre-deploy
                                    backup, and on compose the ID of each image it ran

    record(state, release)          append the release now deployed
    deployed(state)                 every release recorded, oldest first
    drop_newest(state)              forget the newest (it was rolled back)
    deployed_tag(inventory)         the release deployed now, sandbox or not
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import msgspec
from msgspec import Struct, field

if TYPE_CHECKING:
    from opsbook.inventory import Inventory

CURRENT = "current"
HISTORY = "history"
ENTRY = "backend.py"
TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class ReleaseError(Exception):
    """A release cannot be made, deployed or rolled back; one line saying why."""


def releases_dir(sandbox_dir: Path) -> Path:
    return sandbox_dir / "releases"


def current_entry(releases: Path) -> Path:
    """The deployed release's backend file, through the `current` link (not resolved, so that
    a restart after a switch runs the newly deployed release); it may not exist."""
    return releases / CURRENT / ENTRY


class Restarts(Protocol):
    """What deploy and rollback need of a runtime: restarting the backend."""

    def restart(self, service: str) -> None: ...


class Release(Struct, frozen=True):
    tag: str
    path: Path


def _check_tag(tag: str) -> str:
    if not TAG.fullmatch(tag) or tag in (CURRENT, HISTORY):
        raise ReleaseError(f"bad release tag {tag!r} (letters, digits, . _ -; not {CURRENT})")
    return tag


def create(releases: Path, tag: str, source: Path | None = None) -> Release:
    """Make release `tag` from a backend file (default: the reference backend)."""
    target = releases / _check_tag(tag)
    if target.exists():
        raise ReleaseError(f"release {tag} already exists in {releases}")
    code = (
        source.read_bytes()
        if source is not None
        else resources.files("chatapp").joinpath("backend.py").read_bytes()
    )
    staging = releases / f".{tag}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    (staging / ENTRY).write_bytes(code)
    (staging / "RELEASE").write_text(
        json.dumps(
            {
                "tag": tag,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "source": str(source) if source else "chatapp.backend",
                "sha256": hashlib.sha256(code).hexdigest(),
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    staging.rename(target)
    return Release(tag, target)


def current(releases: Path) -> str | None:
    link = releases / CURRENT
    return os.readlink(link) if link.is_symlink() else None


def history(releases: Path) -> list[str]:
    try:
        text = (releases / HISTORY).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [line.strip() for line in text.splitlines() if line.strip()]


def previous(releases: Path) -> str | None:
    """The release a rollback would go back to."""
    deployed = history(releases)
    return deployed[-2] if len(deployed) >= 2 else None


def _switch(releases: Path, tag: str) -> None:
    if not (releases / tag / ENTRY).is_file():
        raise ReleaseError(f"no release {tag} in {releases}")
    staged = releases / f".{CURRENT}.new"
    staged.unlink(missing_ok=True)
    staged.symlink_to(tag)
    os.replace(staged, releases / CURRENT)  # atomic: a restart sees the old or the new one


def _write_history(releases: Path, tags: list[str]) -> None:
    staged = releases / f".{HISTORY}.new"
    staged.write_text("".join(f"{tag}\n" for tag in tags), encoding="utf-8")
    os.replace(staged, releases / HISTORY)


def deploy(runtime: Restarts, releases: Path, tag: str) -> None:
    """Switch `current` to release `tag` and restart the backend from it."""
    _switch(releases, _check_tag(tag))
    _write_history(releases, [*history(releases), tag])
    runtime.restart("backend")


def rollback(runtime: Restarts, releases: Path) -> tuple[str, str]:
    """Go back to the release deployed before the current one; (from, to)."""
    deployed = history(releases)
    if len(deployed) < 2:
        raise ReleaseError(f"no earlier release to roll back to in {releases}")
    _switch(releases, deployed[-2])
    _write_history(releases, deployed[:-1])
    runtime.restart("backend")
    return deployed[-1], deployed[-2]


# -- the releases of a deployment that opsbook deploy deploys -----------------------------------

RELEASES_FILE = "releases.json"


class DeployedRelease(Struct, frozen=True, kw_only=True):
    """One release of a deployment, as opsbook deploy recorded it.

    `images`: on compose, for each image the compose file names (where its services run from),
    the ID of the image this release ran; empty for a deployment driven by commands. `backup`:
    the backup taken just before this release was deployed (restoring it undoes what the
    release wrote)."""

    tag: str
    deployed_at: str
    services: tuple[str, ...] = ()
    images: dict[str, str] = field(default_factory=dict)
    backup: str | None = None


class _Recorded(Struct):
    releases: list[DeployedRelease] = field(default_factory=list)


def check_tag(tag: str) -> str:
    """A release tag as an image tag can be: letters, digits, . _ -, at most 64 (ReleaseError)."""
    if not TAG.fullmatch(tag):
        raise ReleaseError(f"bad release tag {tag!r} (letters, digits, . _ -; at most 64)")
    return tag


def deployed(state: Path) -> list[DeployedRelease]:
    """The releases recorded in the state directory, oldest first (the newest runs now)."""
    try:
        data = (state / RELEASES_FILE).read_bytes()
    except FileNotFoundError:
        return []
    try:
        return msgspec.json.decode(data, type=_Recorded).releases
    except msgspec.DecodeError as exc:
        raise ReleaseError(f"{state / RELEASES_FILE}: unreadable: {exc}") from None


def _write_recorded(state: Path, releases: list[DeployedRelease]) -> None:
    state.mkdir(mode=0o750, parents=True, exist_ok=True)
    staged = state / f".{RELEASES_FILE}.new"
    staged.write_bytes(msgspec.json.format(msgspec.json.encode(_Recorded(releases))) + b"\n")
    os.replace(staged, state / RELEASES_FILE)  # atomic: a reader sees the old or the new list


def record(state: Path, release: DeployedRelease) -> None:
    """Append the release now deployed."""
    _write_recorded(state, [*deployed(state), release])


def drop_newest(state: Path) -> DeployedRelease:
    """Forget the newest release (it was rolled back); the one before it runs now."""
    releases = deployed(state)
    if not releases:
        raise ReleaseError(f"no release recorded in {state / RELEASES_FILE}")
    _write_recorded(state, releases[:-1])
    return releases[-1]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def deployed_tag(inventory: Inventory) -> str | None:
    """The release deployed now: the sandbox's `current`, else the newest that opsbook deploy
    recorded in the deployment's state directory (None when there is none, or it is unreadable:
    a check must not fail on this)."""
    from opsbook.remediate.runner import state_dir

    if inventory.sandbox is not None:
        return current(inventory.deploy.releases_dir or releases_dir(inventory.sandbox.dir))
    try:
        recorded = deployed(state_dir(inventory))
    except ReleaseError:
        return None
    return recorded[-1].tag if recorded else None
