"""`opsbook inventory check PATH...`: a production inventory (or a fleet's folder of them)
linted without its secrets.

Each test runs the real command in a subprocess from an unrelated folder, as a CI job would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

PRODUCTION = """\
name: production
http:
  backend: {kind: backend, url: "https://chat.example.com", password: {env: OPSBOOK_TEST_UNSET}}
  frontend: {kind: frontend, url: "https://chat.example.com:8443"}
postgres:
  chatdb:
    host: db.example.com
    password: {file: /nonexistent/secrets/pg.password}
    admin: {user: postgres, password: {file: /nonexistent/secrets/pg-admin.password}}
redis:
  queue: {url: "redis://queue.example.com:6379/0", password: {file: UNREADABLE}}
hosts:
  web1: {spec: "ssh://web1.example.com"}
services:
  nginx: {targets: [frontend], depends_on: [backend], role: proxy}
  backend: {targets: [backend], depends_on: [postgres, redis], role: api}
  postgres: {targets: [chatdb], role: database}
  redis: {targets: [queue], role: queue}
thresholds: {queue_backlog: 500}
"""


def _check(path: Path, cwd: Path, env: dict[str, str] | None = None) -> Any:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OPSBOOK", "PYTEST"))}
    return subprocess.run(
        [sys.executable, "-m", "opsbook", "inventory", "check", str(path)],
        cwd=cwd, env={**environment, **(env or {})}, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip


def _problems(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.fixture
def production(tmp_path: Path) -> Path:
    """An inventory whose secrets are not here: missing files, an unset variable, a FIFO (a
    read would hang) and a file nobody may read."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    fifo = secrets / "fifo"
    os.mkfifo(fifo)
    unreadable = secrets / "redis.password"
    unreadable.write_text("not for CI\n")
    unreadable.chmod(0)
    text = PRODUCTION.replace("UNREADABLE", str(unreadable))
    text = text.replace("/nonexistent/secrets/pg.password", str(fifo))
    path = tmp_path / "prod inventory.yaml"
    path.write_text(text)
    return path


def test_a_valid_inventory_passes_without_its_secrets(tmp_path: Path, production: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = _check(production, elsewhere)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines() == [
        f"inventory {production}: valid: deployment production, 4 targets (http 2, postgres 1, "
        "redis 1), 1 hosts, 4 services (secrets not read)"
    ]


def test_the_sandbox_inventory_is_valid(sandbox: Any, tmp_path: Path) -> None:
    result = _check(sandbox.inventory_path, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "valid: deployment sandbox" in result.stdout


def test_every_broken_section_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(
        "name: production\n"
        "postgres:\n"
        "  chatdb: {prot: 5432}\n"
        "  replica: {port: 70000}\n"
        "redis:\n"
        "  queue: {url: 'http://queue.example.com'}\n"
        "thresholds: {disk_used_percent: 120}\n"
    )
    result = _check(path, tmp_path)
    assert result.returncode == 2, result.stdout
    assert result.stdout == ""
    assert _problems(result.stderr) == [
        f"inventory {path}: postgres.chatdb.prot: unknown key",
        f"inventory {path}: postgres.replica.port: Expected `int` <= 65535",
        f"inventory {path}: redis.queue.url: not a redis:// URL: 'http://queue.example.com'",
        f"inventory {path}: thresholds.disk_used_percent: Expected `float` <= 100.0",
    ]


@pytest.mark.parametrize(
    ("replace", "by", "expected"),
    [
        pytest.param(
            "depends_on: [postgres, redis]", "depends_on: [postgres, redis, nginx]",
            "services: dependency cycle: ", id="cycle",
        ),
        pytest.param(
            "targets: [chatdb]", "targets: [chatdb, replica]",
            "services: postgres.targets: no such http, postgres or redis entry: replica",
            id="unknown-target",
        ),
        pytest.param(
            "password: {env: OPSBOOK_TEST_UNSET}", "password: s3cret-inline",
            "http.backend.password: a secret is given by reference", id="inline-secret",
        ),
        pytest.param("name: production\n", "", "name: required", id="no-name"),
        pytest.param("queue_backlog: 500", "queue_backlog: -1", "queue_backlog", id="threshold"),
    ],
)  # fmt: skip
def test_a_problem_is_named_in_one_line(
    tmp_path: Path, replace: str, by: str, expected: str
) -> None:
    path = tmp_path / "inventory.yaml"
    assert replace in PRODUCTION
    path.write_text(PRODUCTION.replace("UNREADABLE", "/nonexistent/r").replace(replace, by))
    result = _check(path, tmp_path)
    assert result.returncode == 2, result.stdout
    problems = _problems(result.stderr)
    assert len(problems) == 1, result.stderr
    assert expected in problems[0]
    assert "s3cret-inline" not in result.stderr


def test_overrides_from_the_environment_are_judged_too(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(PRODUCTION.replace("UNREADABLE", "/nonexistent/r"))
    result = _check(path, tmp_path, env={"OPSBOOK__POSTGRES__CHATBD__PORT": "5433"})
    assert result.returncode == 2
    assert _problems(result.stderr) == [
        f"inventory {path}: OPSBOOK__POSTGRES__CHATBD__PORT: no postgres entry named chatbd "
        "(entries: chatdb); an override changes an entry, it does not add one"
    ]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(None, "cannot read: No such file or directory", id="missing"),
        pytest.param(b"\xff\xfe\x00binary", "cannot read", id="binary"),
        pytest.param(b"name: a\nname: b\n", "duplicate key 'name'", id="duplicate-key"),
        pytest.param(b"- a list\n", "expected a mapping at the top level", id="not-a-mapping"),
    ],
)
def test_an_unreadable_file_is_one_line(
    tmp_path: Path, content: bytes | None, expected: str
) -> None:
    path = tmp_path / "inventory.yaml"
    if content is not None:
        path.write_bytes(content)
    result = _check(path, tmp_path)
    assert result.returncode == 2, result.stdout
    problems = _problems(result.stderr)
    assert len(problems) == 1, result.stderr
    assert expected in problems[0]


def test_a_fleet_folder_is_checked_inventory_by_inventory(tmp_path: Path) -> None:
    """Every inventory of the folder judged (a waivers file beside them is not one); one invalid
    inventory fails the check, the valid ones still say so; two with one name are refused."""
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    (fleet / "east.yaml").write_text(PRODUCTION.replace("name: production", "name: east"))
    (fleet / "west.yaml").write_text(
        "name: west\nhttp:\n  backend: {kind: backend, url: 'http://127.0.0.1:9'}\n"
        "thresholds: {queue_backlog: many}\n"
    )
    (fleet / "waivers.yaml").write_text("waivers: []\n")
    result = _check(fleet, tmp_path)
    assert result.returncode == 2, result.stdout
    assert result.stdout.splitlines() == [
        f"inventory {fleet / 'east.yaml'}: valid: deployment east, 4 targets (http 2, "
        "postgres 1, redis 1), 1 hosts, 4 services (secrets not read)"
    ]
    problems = _problems(result.stderr)
    assert len(problems) == 1, result.stderr
    assert "queue_backlog" in problems[0], result.stderr
    (fleet / "west.yaml").write_text(PRODUCTION.replace("name: production", "name: east"))
    twice = _check(fleet, tmp_path)
    assert twice.returncode == 2, twice.stdout
    assert _problems(twice.stderr) == [
        f"opsbook inventory check: deployment 'east' is named by two inventories: "
        f"{fleet / 'east.yaml'} and {fleet / 'west.yaml'} (names must be unique)"
    ]
