"""RES-001's fix on a really full filesystem: a 2 MiB tmpfs (we run as root) filled with old
opsbook backups and old rotated logs, next to files the fix must never touch.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml
from support import RunChecks

from opsbook.inventory import load_inventory
from opsbook.remediate.context import Context
from opsbook.remediation import disk
from opsbook.sandbox.stack import Stack

pytestmark = pytest.mark.sandbox

DAY_S = 86400


def write(path: Path, kib: int, age_days: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * kib * 1024)
    then = time.time() - age_days * DAY_S
    os.utime(path, (then, then))
    return path


@pytest.mark.breaks("RES-001")
@pytest.mark.fixes("RES-001")
def test_old_backups_and_rotated_logs_are_deleted(
    sandbox: Stack, run_checks: RunChecks, small_filesystem: Path, tmp_path: Path
) -> None:
    data = small_filesystem
    app_log = write(data / "logs" / "app.log", 20, 40)  # live, however old: never deleted
    old = [
        write(data / "backups" / "opsbook-backup-2024-01-01.sql.gz", 700, 45),
        write(data / "backups" / "opsbook-backup-2024-01-02.sql.gz", 700, 44),
        write(data / "logs" / "app.log.1", 150, 31),
        write(data / "logs" / "app.log.2.gz", 150, 60),
    ]
    kept = [
        app_log,
        write(data / "backups" / "opsbook-backup-recent.sql.gz", 40, 2),
        write(data / "backups" / "someone-elses-backup.tar", 40, 90),  # not opsbook's
        write(data / "unrelated.old", 40, 90),  # not in a backups dir, not a rotated log
        write(data / "logs" / "app.log.3.gz", 10, 5),  # rotated, but recent
        write(data / "logs" / "other.log.1", 10, 90),  # rotated copy of a log not listed
    ]
    raw = yaml.safe_load(sandbox.inventory_path.read_text())
    raw["hosts"]["local"].update(filesystems=[str(sandbox.dir), str(data)], logs=[str(app_log)])
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump(raw))

    planned = run_checks("--check=RES-001", "--remediate=plan", inventory=inventory)
    row = planned.row("RES-001", "local")
    assert row["outcome"] == "failed", planned.output
    (step,) = row["remediation_attempt"]["plan"]
    assert step.startswith(
        f"[delete-files] delete 4 file(s), 1.7 MiB, older than 30 days on {data} ("
    )
    assert step.endswith(": rm -r -- " + " ".join(str(p) for p in sorted(old)))
    assert all(path.exists() for path in old + kept)

    refused = run_checks("--check=RES-001", "--remediate=apply", inventory=inventory)
    attempt = refused.row("RES-001", "local")["remediation_attempt"]
    assert attempt["status"] == "refused"
    assert "--allow=delete-files" in attempt["reason"]
    assert all(path.exists() for path in old + kept)

    run = run_checks(
        "--check=RES-001", "--remediate=apply", "--allow=delete-files", inventory=inventory
    )
    row = run.row("RES-001", "local")
    assert row["outcome"] == "fixed", run.output
    assert row["message"].startswith(f"host local: {data} is ")  # the failure it started from
    attempt = row["remediation_attempt"]
    assert (attempt["status"], attempt["verdict"], attempt["after"]) == (
        "applied", "FIXED", "passed",
    )  # fmt: skip
    assert attempt["plan"][0].endswith("-> deleted 4 file(s), 1.7 MiB")
    assert [path for path in old if path.exists()] == []
    assert [path for path in kept if not path.exists()] == []

    ctx = Context(load_inventory(inventory, environ={}), "RES-001", "host", "local")
    assert disk.delete_past_retention(ctx, apply=True).nothing_to_do == (
        "no filesystem of local is over 80%"
    )


def test_full_filesystem_without_old_files_has_nothing_to_delete(
    sandbox: Stack, small_filesystem: Path, tmp_path: Path
) -> None:
    """Still full, but nothing of opsbook's is past retention: a person must free space."""
    data = small_filesystem
    write(data / "backups" / "opsbook-backup-recent.sql.gz", 1800, 1)
    raw = yaml.safe_load(sandbox.inventory_path.read_text())
    raw["hosts"]["local"].update(filesystems=[str(data)], logs=[])
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump(raw))
    ctx = Context(load_inventory(inventory, environ={}), "RES-001", "host", "local")
    plan = disk.delete_past_retention(ctx, apply=True)
    assert plan.nothing_to_do is not None
    assert plan.nothing_to_do.startswith(
        f"no opsbook backups or rotated logs older than 30 days on {data} ("
    )
    assert plan.nothing_to_do.endswith("%); free space by hand")
    assert (data / "backups" / "opsbook-backup-recent.sql.gz").exists()


@pytest.mark.parametrize(
    ("name", "rotated"),
    [
        ("worker.log.1", True),
        ("worker.log.12.gz", True),
        ("worker.log-20240501", True),
        ("worker.log.2024-05-01.gz", True),
        ("worker.log", False),
        ("worker.log.bak", False),
        ("worker.log2", False),
        ("worker.log.1.tmp", False),
        ("backend.log.1", False),
    ],
)
def test_rotated_log_names(name: str, rotated: bool) -> None:
    assert disk.is_rotated_log("worker.log", name) is rotated
