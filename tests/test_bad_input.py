"""Bad input: each case is one line on stderr, the documented exit code, no traceback, no hang.

Every case runs the real command in a subprocess, as a person would, with a timeout that would
catch a hang (a FIFO that blocks an open, /dev/zero read until memory runs out).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
USAGE = 4  # the checks suite's usage error (README's table)
NO_RUN = 3  # `opsbook status` without a readable run: UNKNOWN, as Nagios says it

INVENTORY = """\
name: bad-input
postgres:
  chatdb: {host: 127.0.0.1, port: 1, password: {file: SECRET}}
"""


def _inventory(tmp_path: Path, text: str = INVENTORY, secret: Path | None = None) -> Path:
    if secret is None:
        secret = tmp_path / "pg.password"
        secret.write_text("s3cret-value\n")
        secret.chmod(0o600)
    path = tmp_path / "inventory.yaml"
    path.write_text(text.replace("SECRET", str(secret)))
    return path


def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return _inventory(tmp_path, secret=path)


def _big(tmp_path: Path) -> Path:
    path = tmp_path / "big.password"
    path.write_text("x" * (64 * 1024 + 1))
    return _inventory(tmp_path, secret=path)


def _directory(tmp_path: Path) -> Path:
    return _inventory(tmp_path, secret=tmp_path)


def _device(tmp_path: Path) -> Path:
    return _inventory(tmp_path, secret=Path("/dev/zero"))


def _duplicate(tmp_path: Path) -> Path:
    return _inventory(tmp_path, INVENTORY + "postgres: {}\n")


def _latin1(tmp_path: Path) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    return path


def _binary(tmp_path: Path) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)))
    return path


def _waivers(text: bytes) -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        (tmp_path / "waivers.yaml").write_bytes(text)
        return _inventory(tmp_path)

    return make


WAIVER = b"""waivers:
  - {check: CHECK, owner: alice, reason: known, ticket: OPS-1, expires: DATE}
"""

CHECKS_CASES = [
    pytest.param(_fifo, [], {}, "a FIFO, not a regular file", id="secret-fifo"),
    pytest.param(_device, [], {}, "a device or socket, not a regular file", id="secret-device"),
    pytest.param(_directory, [], {}, "a directory, not a file", id="secret-directory"),
    pytest.param(_big, [], {}, "more than the 65536 allowed", id="secret-too-large"),
    pytest.param(_duplicate, [], {}, "duplicate key 'postgres' at line 4", id="duplicate-key"),
    pytest.param(_latin1, [], {}, "not UTF-8 text", id="inventory-not-utf8"),
    pytest.param(_binary, [], {}, "binary, not text", id="inventory-binary"),
    pytest.param(
        _waivers(WAIVER.replace(b"CHECK", b"DB-001").replace(b"DATE", b"2026-02-30")),
        [], {}, "not a valid date: 2026-02-30", id="waiver-impossible-date",
    ),
    pytest.param(
        _waivers(b"waivers: [{check: DB-001, owner: \xe9}]\n"),
        [], {}, "not UTF-8 text", id="waivers-not-utf8",
    ),
    pytest.param(
        _inventory, [], {"OPSBOOK__THRESHOLDS__TIMEOUT_S": "[1"},
        "OPSBOOK__THRESHOLDS__TIMEOUT_S: not a valid YAML value", id="override-bad-yaml",
    ),
    pytest.param(
        _inventory, [], {"OPSBOOK__POSTGRES__CHATBD__PORT": "5433"},
        "no postgres entry named chatbd (entries: chatdb)", id="override-creates-target",
    ),
    pytest.param(None, ["--inventory="], {}, "--inventory: empty path", id="inventory-empty"),
    pytest.param(
        _inventory, ["--allow=restat"], {}, "--allow: no such kind of step: restat",
        id="allow-unknown-kind",
    ),
    pytest.param(
        _waivers(WAIVER.replace(b"CHECK", b"NOPE-001").replace(b"DATE", b"2099-01-01")),
        [], {}, "waiver for NOPE-001 (alice, OPS-1): no such check", id="waiver-unknown-check",
    ),
]  # fmt: skip


def _run(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OPSBOOK", "PYTEST"))}
    return subprocess.run(
        command, cwd=cwd, env={**environment, **env}, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip


def _one_line(stderr: str, expected: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert expected in lines[0], stderr


@pytest.mark.parametrize(("make", "args", "env", "expected"), CHECKS_CASES)
def test_the_checks_suite_refuses_bad_input_in_one_line(
    tmp_path: Path,
    make: Callable[[Path], Path] | None,
    args: list[str],
    env: dict[str, str],
    expected: str,
) -> None:
    inventory = [f"--inventory={make(tmp_path)}"] if make else []
    result = _run(
        [sys.executable, "-m", "pytest", "-q", "--collect-only", *inventory, *args], env, REPO
    )
    assert result.returncode == USAGE, result.stdout + result.stderr
    _one_line(result.stderr, expected)


def _reports(tmp_path: Path, content: bytes) -> Path:
    run = tmp_path / "reports" / "20260101T000000Z-x"
    run.mkdir(parents=True)
    (run / "findings.json").write_bytes(content)
    (tmp_path / "reports" / "latest").symlink_to(run.name)
    return tmp_path / "reports"


GOOD = json.dumps({"run": {"audit_head": None}, "findings": [{"check_id": "DB-001"}]}).encode()

FINDINGS_CASES = [
    pytest.param(GOOD[: len(GOOD) // 2], "not valid JSON (cut short?)", id="partial"),
    pytest.param(b"\x00\x01garbage", "binary, not text", id="binary"),
    pytest.param(b"[1, 2]", "not a run's findings", id="not-an-object"),
    pytest.param(GOOD, "not a run's findings", id="row-without-outcome"),
]


@pytest.mark.parametrize(("content", "expected"), FINDINGS_CASES)
def test_status_refuses_a_damaged_findings_file_in_one_line(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    reports = _reports(tmp_path, content)
    result = _run(
        [sys.executable, "-m", "opsbook", "status", f"--reports-dir={reports}"], {}, tmp_path
    )
    assert result.returncode == NO_RUN, result.stdout + result.stderr
    _one_line(result.stderr, expected)


@pytest.mark.parametrize(("content", "expected"), FINDINGS_CASES)
def test_audit_log_verify_refuses_a_damaged_anchor_in_one_line(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    reports = _reports(tmp_path, content)
    result = _run(
        [sys.executable, "-m", "opsbook", "audit-log", "verify", f"--reports-dir={reports}"],
        {},
        tmp_path,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    _one_line(result.stderr, expected)


REMEDIATE_CASES = [
    *FINDINGS_CASES,
    pytest.param(
        json.dumps({"run": {}, "findings": [{"check_id": "DB-001", "outcome": "failed"}]}).encode(),
        "not a run's findings: DB-001 has no nodeid",
        id="row-without-nodeid",
    ),
]


@pytest.mark.parametrize(("content", "expected"), REMEDIATE_CASES)
def test_remediate_refuses_a_damaged_findings_file_in_one_line(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    reports = _reports(tmp_path, content)
    result = _run(
        [sys.executable, "-m", "opsbook", "remediate", "latest", "--check", "DB-001",
         f"--reports-dir={reports}"],
        {}, tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    _one_line(result.stderr, expected)


SANDBOX_USAGE = 2  # the sandbox command's bad usage (docs/sandbox.md), argparse's own code
MISSING = "no such folder"

SANDBOX_CASES = [
    pytest.param(["status"], MISSING, id="status-dir-missing"),
    pytest.param(["status", "--engine", "compose"], MISSING, id="status-dir-missing-compose"),
    pytest.param(["scale", "worker", "9"], "cannot scale worker to 9 (1 to 8)", id="scale-9"),
    pytest.param(["scale", "worker", "0"], "cannot scale worker to 0 (1 to 8)", id="scale-0"),
    pytest.param(
        ["scale", "worker", "100000"], "cannot scale worker to 100000 (1 to 8)", id="scale-huge"
    ),
]


@pytest.mark.parametrize(("args", "expected"), SANDBOX_CASES)
def test_the_sandbox_command_refuses_bad_usage_in_one_line_and_makes_no_folder(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    missing = tmp_path / "no sandbox here"
    result = _run(
        [sys.executable, "-m", "opsbook", "sandbox", *args, "--dir", str(missing)], {}, tmp_path
    )
    assert result.returncode == SANDBOX_USAGE, result.stdout + result.stderr
    _one_line(result.stderr, expected)
    assert not missing.exists()


BACKUP_INVENTORY = INVENTORY + "backup: {dir: BACKUPS}\n"


def _allow_command(tmp_path: Path, command: str) -> list[str]:
    if command == "remediate":
        return ["remediate", "latest", "--check", "DB-001", f"--reports-dir={tmp_path}"]
    inventory = _inventory(tmp_path, BACKUP_INVENTORY.replace("BACKUPS", str(tmp_path / "b")))
    return ["backup", "restore", "latest", "--apply", f"--inventory={inventory}"]


@pytest.mark.parametrize("command", ["remediate", "backup"])
def test_allow_with_an_unknown_kind_is_one_line(tmp_path: Path, command: str) -> None:
    result = _run(
        [sys.executable, "-m", "opsbook", *_allow_command(tmp_path, command), "--allow=restat"],
        {}, tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    _one_line(result.stderr, "--allow: no such kind of step: restat (risky kinds: ")
