"""`opsbook list`: every check with its id, severity, cadences, area, title and linked fix.

Each test runs the real command in a subprocess from a folder outside the checkout, as an
operator would, with no sandbox and no inventory in its environment unless the test gives one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# Every check of the package, counted from its source (each adds one `@check(` line).
CHECK_COUNT = sum(
    path.read_text().count("\n@check(")
    for path in (Path(__file__).resolve().parent.parent / "checks").glob("test_*.py")
)

PRODUCTION = """\
name: production
http:
  backend: {kind: backend, url: "https://chat.example.com", password: {env: OPSBOOK_TEST_UNSET}}
  prom: {kind: prometheus, url: "http://prometheus.example.com:9090"}
postgres:
  chatdb: {host: db.example.com, password: {file: /nonexistent/secrets/pg.password}}
redis:
  queue: {url: "redis://queue.example.com:6379/0", password: {file: FIFO}}
"""


def _opsbook(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OPSBOOK", "PYTEST"))}
    environment.update(
        OPSBOOK_HOME=str(tmp_path / "home"),
        OPSBOOK_SANDBOX_DIR=str(tmp_path / "no-sandbox"),
        **(env or {}),
    )
    return subprocess.run(
        [sys.executable, "-m", "opsbook", "list", *args],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def _listed(tmp_path: Path, *args: str) -> dict[str, Any]:
    result = _opsbook(tmp_path, "--format", "json", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


SCAN = """
import importlib, inspect, json, pkgutil
import opsbook.checks
from opsbook.check import spec_of
found = {}
for info in pkgutil.iter_modules(opsbook.checks.__path__):
    if info.name.startswith("test_"):
        module = importlib.import_module("opsbook.checks." + info.name)
        for function in vars(module).values():
            spec = spec_of(function)
            if spec is not None:
                found[spec.check_id] = [str(spec.severity), spec.remediation_name,
                                        inspect.getdoc(function).splitlines()[0].strip()]
print(json.dumps(found))
"""


def _declared() -> dict[str, Any]:
    """Every packaged check, found by importing its module, independently of pytest (in a
    process of its own: marks are checked against this test run's markers here)."""
    result = subprocess.run(
        [sys.executable, "-c", SCAN], capture_output=True, text=True, timeout=60, check=True
    )
    declared: dict[str, Any] = json.loads(result.stdout)
    return declared


@pytest.fixture
def production(tmp_path: Path) -> Path:
    """A production inventory whose secrets are not on this machine (a FIFO would hang a read)."""
    fifo = tmp_path / "redis.password"
    os.mkfifo(fifo)
    path = tmp_path / "prod inventory.yaml"
    path.write_text(PRODUCTION.replace("FIFO", str(fifo)))
    return path


def test_lists_every_check_without_an_inventory(tmp_path: Path) -> None:
    document = _listed(tmp_path)
    declared = _declared()
    checks = {row["id"]: row for row in document["checks"]}
    assert document["deployment"] is None
    assert sorted(checks) == sorted(declared)
    assert len(checks) == CHECK_COUNT
    for check_id, (severity, remediation, title) in declared.items():
        row = checks[check_id]
        assert (row["severity"], row["remediation"], row["title"]) == (severity, remediation, title)
        assert row["cadences"], check_id
        assert row["targets"] == []
    queue = checks["QUEUE-003"]
    assert queue["remediation"] == "opsbook.remediation.queue.scale_workers"
    assert "daily" in queue["cadences"]
    assert queue["areas"] == ["queue"]
    assert queue["module"] == "checks/test_queue.py"


def test_lists_the_targets_of_an_inventory_whose_secrets_are_absent(
    tmp_path: Path, production: Path
) -> None:
    document = _listed(tmp_path, "--inventory", str(production))
    checks = {row["id"]: row for row in document["checks"]}
    assert document["deployment"] == "production"
    assert len(checks) == CHECK_COUNT
    assert checks["DB-001"]["targets"] == ["chatdb"]
    assert checks["QUEUE-001"]["targets"] == ["queue"]
    assert checks["HEALTH-001"]["targets"] == ["backend"]
    assert checks["COMPOSE-001"]["targets"] == []
    assert "compose" in checks["COMPOSE-001"]["not_applicable"]


def test_a_fleets_folder_lists_each_deployments_targets(tmp_path: Path, production: Path) -> None:
    """A folder of inventories (or --inventory given several times), as a fleet run takes it:
    the checks once, each with its targets by deployment, not one deployment's chosen in
    silence."""
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    (fleet / "production.yaml").write_text(production.read_text())
    staging = "name: staging\nhttp:\n  backend: {kind: backend, url: 'http://10.0.0.9'}\n"
    (fleet / "staging.yaml").write_text(staging)
    (fleet / "waivers.yaml").write_text("waivers: []\n")  # beside them, not an inventory
    document = _listed(tmp_path, "--inventory", str(fleet))
    checks = {row["id"]: row for row in document["checks"]}
    assert document["deployments"] == ["production", "staging"]
    assert len(checks) == CHECK_COUNT
    assert checks["HEALTH-001"]["targets"] == {"production": ["backend"], "staging": ["backend"]}
    assert checks["DB-001"]["targets"] == {"production": ["chatdb"]}
    assert "postgres" in checks["DB-001"]["not_applicable"]["staging"]
    files = [f"--inventory={fleet / 'production.yaml'}", f"--inventory={fleet / 'staging.yaml'}"]
    result = _opsbook(tmp_path, *files)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == f"{CHECK_COUNT} checks, deployments production, staging"
    db = next(line for line in lines if line.startswith("DB-001 "))
    assert db.endswith(
        "  [production: chatdb]  -- not applicable in staging (no postgres in the inventory)"
    )


def test_the_inventory_can_come_from_the_environment(tmp_path: Path, production: Path) -> None:
    result = _opsbook(tmp_path, env={"OPSBOOK_INVENTORY": str(production)})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "SEVERITY", "CADENCES", "AREA", "FIX", "TITLE"]
    assert lines[-1] == f"{CHECK_COUNT} checks, deployment production"
    db = next(line for line in lines if line.startswith("DB-001 "))
    assert db.split()[1:5] == [
        "critical", "daily,predeploy,postdeploy", "database", "services.restart_service",
    ]  # fmt: skip
    assert db.endswith("PostgreSQL accepts connections as the monitoring role.  [chatdb]")


def test_a_marker_expression_selects_as_a_run_would(tmp_path: Path) -> None:
    document = _listed(tmp_path, "-m", "daily and queue")
    assert document["checks"]
    for row in document["checks"]:
        assert "daily" in row["cadences"]
        assert "queue" in row["areas"]
    assert {row["id"] for row in document["checks"]} >= {"QUEUE-001", "QUEUE-006"}


def test_text_lists_one_line_per_check(tmp_path: Path) -> None:
    result = _opsbook(tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == f"{CHECK_COUNT} checks"
    assert len(lines) == 1 + CHECK_COUNT + 1
    assert all(line.split()[0].count("-") >= 1 for line in lines[1:-1])


USER_CHECK = '''\
import pytest
from opsbook import check
from opsbook.check import Severity

pytestmark = [pytest.mark.daily, pytest.mark.health]


@check("LOCAL-001", Severity.LOW)
def test_the_motd_is_there() -> None:
    """The message of the day is in place.

    Risk: operators miss the notice."""
'''


def test_a_users_check_folder_is_listed_beside_the_packaged_checks(tmp_path: Path) -> None:
    mine = tmp_path / "my checks"
    mine.mkdir()
    (mine / "test_local.py").write_text(USER_CHECK)
    document = _listed(tmp_path, "--checks", str(mine))
    checks = {row["id"]: row for row in document["checks"]}
    assert len(checks) == CHECK_COUNT + 1
    assert checks["LOCAL-001"]["title"] == "The message of the day is in place."
    assert checks["LOCAL-001"]["severity"] == "low"
    assert checks["LOCAL-001"]["areas"] == ["health"]


def _one_line(stderr: str, expected: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    assert expected in lines[0], stderr


def test_a_check_module_that_does_not_import_is_one_line(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "test_broken.py").write_text("import no_such_module_here\n")
    result = _opsbook(tmp_path, "--checks", str(mine))
    assert result.returncode == 2, result.stdout + result.stderr
    _one_line(result.stderr, "test_broken.py: ModuleNotFoundError: No module named")


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        pytest.param(["--inventory", "/nonexistent/inv.yaml"], 4, "no such file", id="missing"),
        pytest.param(["--inventory="], 4, "--inventory: empty path", id="empty"),
        pytest.param(["-m", "dialy"], 4, "dialy", id="unknown-marker"),
        pytest.param(["--checks", "/nonexistent/checks"], 2, "no such folder", id="no-checks-dir"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line(tmp_path: Path, args: list[str], code: int, expected: str) -> None:
    result = _opsbook(tmp_path, *args)
    assert result.returncode == code, result.stdout + result.stderr
    _one_line(result.stderr, expected)


def test_an_invalid_inventory_is_one_line_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text("name: prod\npostgres:\n  chatdb: {prot: 5432}\n")
    result = _opsbook(tmp_path, "--inventory", str(path))
    assert result.returncode == 4, result.stdout + result.stderr
    _one_line(result.stderr, "postgres.chatdb.prot: unknown key")


def test_two_inventories_of_one_deployment_are_one_line(tmp_path: Path) -> None:
    paths = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        paths += ["--inventory", str(tmp_path / folder / "prod.yaml")]
        (tmp_path / folder / "prod.yaml").write_text("name: prod\nhttp: {web: {url: 'http://x'}}\n")
    result = _opsbook(tmp_path, *paths)
    assert result.returncode == 4, result.stdout + result.stderr
    _one_line(result.stderr, "deployment 'prod' is named by two inventories")
