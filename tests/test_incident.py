"""`python -m opsbook incident collect`: the evidence folder, its manifest; nothing stops."""

from __future__ import annotations

import argparse
import hashlib
import json
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from support import fill

from opsbook.commands import incident
from opsbook.sandbox.stack import Stack

pytestmark = pytest.mark.sandbox


def collect(*argv: str) -> int:
    """The command as `python -m opsbook incident collect ARGV` runs it."""
    parser = argparse.ArgumentParser(prog="python -m opsbook")
    incident.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["incident", "collect", *argv])
    return int(args.run(args))


def test_collects_logs_status_sockets_and_a_marked_dump(
    sandbox: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = [(s.name, s.pid) for s in sandbox.status()]
    out = tmp_path / "evidence"
    assert collect(f"--inventory={sandbox.inventory_path}", f"--out={out}", "--dump-database") == 0
    assert [(s.name, s.pid) for s in sandbox.status()] == before, "something was restarted"
    assert stat.S_IMODE(out.stat().st_mode) == 0o700

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stopped_anything"] is False
    assert manifest["not_collected"] == []
    files = {entry["path"]: entry for entry in manifest["files"]}
    for relative, entry in files.items():
        data = (out / relative).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], relative
        assert len(data) == entry["bytes"]
        assert stat.S_IMODE((out / relative).stat().st_mode) == 0o600, relative

    logs = {Path(p).name for p in files if p.startswith("hosts/local/logs/")}
    for name in (
        "postgres.log",
        "redis.log",
        "backend.log",
        "worker.log",
        "access.log",
        "error.log",
    ):
        assert any(log.endswith(name) for log in logs), (name, logs)
    sockets = (out / "hosts/local/sockets.txt").read_text()
    assert f"127.0.0.1:{sandbox.state.ports['postgres']}" in sockets
    assert "postgres" in (out / "hosts/local/processes.txt").read_text()
    status = (out / "status/sandbox.txt").read_text()
    assert status.count("running") == len(before)

    (dump,) = [p for p in files if p.startswith("database/")]
    assert dump.endswith(".incident-backup.dump")
    listing = subprocess.run(
        ["pg_restore", "--list", str(out / dump)], capture_output=True, text=True, check=True
    )
    assert "TABLE public messages" in listing.stdout
    admin = (sandbox.dir / "secrets" / "opsbook_admin.password").read_text().strip()
    printed = capsys.readouterr()
    assert admin not in printed.out + printed.err + (out / "manifest.json").read_text()


def test_dump_is_opt_in_and_missing_evidence_is_said(
    sandbox: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inventory = yaml.safe_load(sandbox.inventory_path.read_text())
    # A compose project whose engine does not answer, and a log that does not exist.
    inventory["compose"] = {"project": "chat", "docker_host": "unix:///nonexistent/docker.sock"}
    inventory["hosts"]["local"]["logs"].append("/nonexistent/opsbook.log")
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(inventory))
    out = tmp_path / "evidence"
    assert collect(f"--inventory={path}", f"--out={out}") == 1
    manifest = json.loads((out / "manifest.json").read_text())
    notes = manifest["not_collected"]
    assert "database dump: not taken (add --dump-database)" in notes
    assert any(n.startswith("compose chat: docker ps failed") for n in notes), notes
    assert any(n.startswith("host local: log /nonexistent/opsbook.log") for n in notes), notes
    assert not any(p["path"].startswith("database/") for p in manifest["files"])
    assert "not collected: compose chat" in capsys.readouterr().err
    # An existing folder is never overwritten: evidence is written once.
    assert collect(f"--inventory={path}", f"--out={out}") == 2


def test_a_full_disk_is_said_file_by_file_and_leaves_no_cut_file(
    sandbox: Stack, small_filesystem: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A full disk is often the incident itself."""
    out = small_filesystem / "evidence"
    fill(small_filesystem)
    assert collect(f"--inventory={sandbox.inventory_path}", f"--out={out}") == 1
    printed = capsys.readouterr()
    assert printed.out.startswith(f"{out}: ")
    assert printed.out.strip().endswith("files, NO manifest.json")
    assert "  not collected: hosts/local/processes.txt: not written: No space left on device" in (
        printed.err.splitlines()
    )
    assert "Traceback" not in printed.err
    assert all(path.stat().st_size == 0 for path in out.rglob("*") if path.is_file())
