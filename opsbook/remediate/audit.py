"""The audit log of applied remediations: JSON lines, each carrying the hash of the one before.

Editing or deleting an entry breaks the chain, and `verify` says where. Deleting the newest
entries leaves a shorter valid chain, so every run's findings.json also records the log's
head (count and hash) as an anchor that `verify` compares against.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opsbook.report_files import FILE_MODE

GENESIS = "0" * 64
# What a command exits with when what it did is not in the audit log: the code of a checks run
# whose audit trail has a gap (opsbook.plugin.outcomes.EXIT_AUDIT_TRAIL_INCOMPLETE).
EXIT_NOT_AUDITED = 11


def _digest(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> list[dict[str, Any]]:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def head(self) -> dict[str, Any]:
        entries = self.entries()
        return {"count": len(entries), "hash": entries[-1]["hash"] if entries else GENESIS}

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        head = self.head()
        entry = {
            "seq": head["count"] + 1,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            **record,
            "prev": head["hash"],
        }
        entry["hash"] = _digest(entry)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(_open_for_append(self.path), "a", encoding="utf-8") as stream:
            stream.write(json.dumps(entry, sort_keys=True) + "\n")
            stream.flush()
            os.fsync(stream.fileno())
        return entry


def _open_for_append(path: Path) -> int:
    """The log's file descriptor. A new log is readable by its owner and the reports group
    only (opsbook.report_files): it takes its folder's group, which each run gives the
    reports group."""
    flags = os.O_WRONLY | os.O_APPEND
    try:
        descriptor = os.open(path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return os.open(path, flags)
    try:
        os.fchmod(descriptor, FILE_MODE)  # whatever the umask left of it
        os.fchown(descriptor, -1, path.parent.stat().st_gid)
    except PermissionError:
        pass  # not a member of the folder's group: the log stays in the runner's own group
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def verify(path: Path, anchor: dict[str, Any] | None = None) -> list[str]:
    """Problems with the log (empty when intact): edited, deleted or reordered entries."""
    problems = []
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        lines = []
    previous = GENESIS
    for number, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            problems.append(f"line {number}: not JSON")
            previous = "?"
            continue
        if entry.get("seq") != number:
            problems.append(f"line {number}: sequence {entry.get('seq')} (an entry is missing)")
        if entry.get("prev") != previous:
            problems.append(f"line {number}: does not follow the entry before it")
        if entry.get("hash") != _digest(entry):
            problems.append(f"line {number}: edited (its hash does not match its content)")
        previous = str(entry.get("hash"))
    if anchor is not None and lines:
        if len(lines) < anchor["count"]:
            problems.append(
                f"{anchor['count'] - len(lines)} newest entr(y/ies) deleted "
                f"(the last run recorded {anchor['count']})"
            )
        elif (
            anchor["count"] and json.loads(lines[anchor["count"] - 1]).get("hash") != anchor["hash"]
        ):
            problems.append(f"entry {anchor['count']} differs from the last run's record")
    elif anchor is not None and anchor["count"]:
        problems.append(f"the log is gone (the last run recorded {anchor['count']} entries)")
    return problems
