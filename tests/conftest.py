"""Fixtures shared by the project's tests: one live sandbox stack per session.

`sandbox` starts the whole stack once (a few seconds) and stops it at the end of the session.
Tests that break a component use `breakable_sandbox`, which brings every component back (and
lifts maintenance mode) after the test, so the next test finds a healthy stack.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
from sshd_server import Sshd
from support import CheckRun, RunChecks, eventually

from opsbook.inventory import Inventory, load_inventory
from opsbook.sandbox.process import ComponentError
from opsbook.sandbox.stack import Stack


def _fail_with_log(exc: ComponentError) -> None:
    tail = "\n".join(f"  | {line}" for line in exc.log_tail)
    pytest.fail(f"sandbox: {exc}\n{tail}", pytrace=False)


def _running_stack(prefix: str) -> Iterator[Stack]:
    # Not tmp_path_factory: its base dir is private to root (0700), and PostgreSQL runs as the
    # postgres OS user, which must reach its data dir.
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    stack = Stack(directory)
    try:
        try:
            stack.up()
        except ComponentError as exc:
            _fail_with_log(exc)
        yield stack
    finally:
        stack.down()
        shutil.rmtree(directory, ignore_errors=True)


# Fixtures that start a native sandbox stack: a test that uses one (directly or through another
# fixture) is a sandbox scenario, the third stage of `make test`.
SANDBOX_FIXTURES = {"sandbox", "fresh_sandbox", "breakable_sandbox", "module_sandbox"}


def pytest_configure(config: pytest.Config) -> None:
    # RES-003 measures this machine's CPU, shared with the tests' own load (and other agents'):
    # every checks run a test starts inherits a limit it cannot exceed, so that the healthy
    # runs stay healthy on a busy CI machine. RES-003's own tests set the limits they need.
    os.environ.setdefault("OPSBOOK__THRESHOLDS__CPU_PRESSURE_PERCENT", "100")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SANDBOX_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.sandbox)


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Stack]:
    """A running sandbox (all its components); `sandbox.inventory_path` is its inventory."""
    yield from _running_stack("opsbook-sandbox-")


@pytest.fixture
def fresh_sandbox() -> Iterator[Stack]:
    """A sandbox of the test's own (a few seconds to start).

    For tests whose breakage would linger, and for tests that need a stack no other test has
    broken: error lines stay in LOG-001's window (5 minutes) and must not be cut from the logs.
    """
    yield from _running_stack("opsbook-fresh-")


@pytest.fixture(scope="module")
def module_sandbox() -> Iterator[Stack]:
    """A sandbox of the module's own, shared by its tests: for changes no other module may
    see (a restore, a rotated password)."""
    yield from _running_stack("opsbook-module-")


@pytest.fixture(scope="session")
def sandbox_inventory(sandbox: Stack) -> Inventory:
    return load_inventory(sandbox.inventory_path, environ={})


@pytest.fixture
def admin_redis(sandbox: Stack) -> Iterator[redis.Redis]:
    """The sandbox's Redis as `default`, the admin user: to plant and clean up messages."""
    password = (sandbox.dir / "secrets" / "redis-default.password").read_text().strip()
    client = redis.Redis(
        port=sandbox.state.ports["redis"], password=password, socket_timeout=3.0,
        decode_responses=True,
    )  # fmt: skip
    yield client
    client.close()


def scrape_targets_down(stack: Stack) -> list[str]:
    """The scrape targets Prometheus last saw down (all of them when it does not answer)."""
    url = f"http://127.0.0.1:{stack.state.ports['prometheus']}/api/v1/targets?state=active"
    try:
        active = requests.get(url, timeout=3.0).json()["data"]["activeTargets"]
    except (requests.RequestException, ValueError, KeyError):
        return ["prometheus (no answer)"]
    return [str(t["scrapePool"]) for t in active if t.get("health") != "up"]


@pytest.fixture
def breakable_sandbox(sandbox: Stack) -> Iterator[Stack]:
    """The session sandbox, for a test that stops components or turns on maintenance mode.

    Afterwards every component is up again, and Prometheus has scraped each of them up since:
    its last scrape of a component the test stopped would otherwise say "down" to the next
    test's OBS-002 and ALERT-003 for up to a scrape interval."""
    yield sandbox
    (sandbox.dir / "nginx" / "maintenance.on").unlink(missing_ok=True)
    try:
        sandbox.up()
    except ComponentError as exc:
        _fail_with_log(exc)
    eventually(lambda: not scrape_targets_down(sandbox), "Prometheus scrapes every target up")


# Running the checks suite itself, as an operator would, against the live sandbox.

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def run_checks(sandbox: Stack, tmp_path: Path) -> RunChecks:
    """Run the checks suite (`pytest -m daily` by default) against the sandbox.

    `run_checks("--check=QUEUE-003")`, `run_checks(env={"OPSBOOK__THRESHOLDS__X": "1"})`,
    `run_checks(inventory=path)`, `run_checks(reports=shared_dir)`. The deployment's state
    (remediation lock, budgets, audit log) is the test's own: `tmp_path / "state"`.
    """
    counter = iter(range(1000))

    def run(
        *args: str,
        inventory: Path | None = None,
        env: dict[str, str] | None = None,
        reports: Path | None = None,
    ) -> CheckRun:
        # Each run its own reports dir, unless a test shares one (audit log, budgets, lock).
        reports = reports or tmp_path / f"reports-{next(counter)}"
        # `-m daily` unless the test selects itself (by marker, or by check id).
        chosen = any(a.startswith(("-m", "--check")) for a in args)
        selection = [] if chosen else ["-m", "daily"]
        command = [
            sys.executable, "-m", "pytest", "-q", "-p", "no:randomly",
            f"--inventory={inventory or sandbox.inventory_path}",
            f"--reports-dir={reports}", *selection, *args,
        ]  # fmt: skip
        environment = {
            k: v for k, v in os.environ.items() if not k.startswith(("OPSBOOK_", "PYTEST_"))
        }
        # One deployment state (lock, budgets, audit log) per test, shared by its runs: the
        # session's sandbox serves every test, and a budget one test spends must not brake the
        # next. `tmp_path / "state"`; a test may give its own.
        state = {"OPSBOOK__STATE_DIR": str(tmp_path / "state")}
        # RES-003 measures this machine's CPU, shared with other test runs: their load is not
        # the sandbox's to answer for. Its own tests give the limit they need.
        shared_cpu = {"OPSBOOK__THRESHOLDS__CPU_PRESSURE_PERCENT": "100"}
        process = subprocess.run(
            command, cwd=REPO, env={**environment, **shared_cpu, **state, **(env or {})},
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        return CheckRun(process, reports)

    return run


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, mounted for the test (we run as root)."""
    mount_point = tmp_path / "data"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    """A real OpenSSH server on a free loopback port, letting in the test's own key as the
    current user; `sshd.spec` is its testinfra host spec. Stopped (with its connections) after
    the test."""
    (tmp_path / "sshd").mkdir()
    server = Sshd(tmp_path / "sshd")
    server.start()
    try:
        yield server
    finally:
        server.stop()
