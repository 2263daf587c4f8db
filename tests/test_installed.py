"""opsbook as a user installs it: a wheel, run from folders that have nothing to do with it.

The wheel is built once for the module from the working tree (copied, so that setuptools' build/
folder in the checkout never leaks stale files into it), installed with `pip install --no-deps
--target DIR`, and run with PYTHONPATH=DIR by this virtualenv's Python, whose dependencies it
uses; every run proves that `opsbook` was imported from DIR, not from the editable checkout.
OPSBOOK_HOME is a folder of the test's own.

The proof of the whole: the same wheel installed into a fresh virtualenv (`python -m venv`),
its dependencies from a local wheelhouse (`pip wheel`, once per session, so that the install
itself runs with `--no-index`), and its `opsbook` console script run from the filesystem root,
against the sandbox (so in the sandbox stage).
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
CHECK_ITEM = re.compile(r"^checks/test_\w+\.py::test_\w+(\[[\w-]+\])?$")


def _packaged_checks() -> int:
    """How many checks the working tree's checks/ holds (the wheel is built from it): one
    `@check(` each, so that a check added elsewhere does not break these tests."""
    return sum(
        line.startswith("@check(")
        for module in (REPO / "checks").glob("test_*.py")
        for line in module.read_text(encoding="utf-8").splitlines()
    )


# RES-003 measures this machine's CPU, shared with the other tests' jobs (and the virtualenv
# just built): its load is not the installed opsbook's to answer for.
SHARED_HOST = {"OPSBOOK__THRESHOLDS__CPU_PRESSURE_PERCENT": "100"}


@dataclass(frozen=True)
class Installed:
    wheel: Path
    target: Path

    def run(self, *args: str, cwd: Path, home: Path, timeout: float = 120) -> Any:
        """`python -m opsbook ARGS` from `cwd`, with the wheel's copy on the path."""
        environment = {
            k: v for k, v in os.environ.items() if not k.startswith(("OPSBOOK", "PYTEST"))
        }
        environment.update(PYTHONPATH=str(self.target), OPSBOOK_HOME=str(home), **SHARED_HOST)
        return subprocess.run(
            [sys.executable, "-m", "opsbook", *args], cwd=cwd, env=environment,
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip


def _source_copy(destination: Path) -> Path:
    """The working tree's files (tracked and new, not ignored), links kept as links; `.git`
    names the checkout's repository, so that the build records its commit."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "-z"],
        capture_output=True, check=True, timeout=60,
    ).stdout.decode()  # fmt: skip
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the working tree, not yet in git
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target)
    (destination / ".git").write_text(f"gitdir: {REPO / '.git'}\n")
    return destination


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("installed")
    source = _source_copy(base / "source")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(base / "dist"),
         str(source)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    (wheel,) = (base / "dist").glob("opsbook-*.whl")
    target = base / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
         str(wheel)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    return Installed(wheel, target)


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working folder with nothing of opsbook's in it."""
    folder = tmp_path / "somewhere else"
    folder.mkdir()
    return folder


def _tracked(pattern: str) -> list[str]:
    return sorted(str(path.relative_to(REPO)) for path in REPO.glob(pattern) if path.is_file())


def test_the_wheel_is_self_contained_and_collides_with_nothing(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    tops = {name.split("/")[0] for name in names}
    assert tops == {"opsbook", "chatapp", next(t for t in tops if t.endswith(".dist-info"))}
    expected = [
        *(f"opsbook/{name}" for name in _tracked("checks/test_*.py")),
        "opsbook/checks/conftest.py",
        "opsbook/checks/opsbook.ini",
        *(f"opsbook/{name}" for name in _tracked("remediation/*.py")),
        *(f"opsbook/{name}" for name in _tracked("fixtures/*.py")),
        *(f"opsbook/{name}" for name in _tracked("alerts/*.yml")),
        "opsbook/compose.yaml",
        *(f"opsbook/{name}" for name in _tracked("containers/**/*")),
        "chatapp/schema.sql",
        "opsbook/BUILD_COMMIT",
    ]
    assert len(_tracked("checks/test_*.py")) >= 10
    assert _tracked("containers/**/*")
    assert [name for name in expected if name not in names] == []


def test_version_names_the_commit_it_was_built_from(
    installed: Installed, elsewhere: Path, tmp_path: Path
) -> None:
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
        check=True, timeout=30,
    ).stdout.strip()  # fmt: skip
    result = installed.run("--version", cwd=elsewhere, home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"opsbook 0.1.0 (commit {head[:12]})"


def test_it_runs_from_the_install_not_the_checkout(
    installed: Installed, elsewhere: Path, tmp_path: Path
) -> None:
    environment = {**os.environ, "PYTHONPATH": str(installed.target)}
    found = subprocess.run(
        [sys.executable, "-c", "import opsbook.checks, opsbook.locations as l; "
         "print(opsbook.checks.__file__); print(l.CHECKS)"],
        cwd=elsewhere, env=environment, capture_output=True, text=True, check=True, timeout=60,
    ).stdout.splitlines()  # fmt: skip
    assert all(line.startswith(str(installed.target)) for line in found), found


def _collected(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if "::" in line]


def test_check_collects_the_packaged_checks_from_anywhere(
    installed: Installed, elsewhere: Path, tmp_path: Path
) -> None:
    result = installed.run("check", "--collect-only", "-q", cwd=elsewhere, home=tmp_path / "h")
    assert result.returncode == 0, result.stdout + result.stderr
    items = _collected(result.stdout)
    assert len(items) == _packaged_checks(), result.stdout
    assert all(CHECK_ITEM.match(item) for item in items), items
    assert not (elsewhere / ".pytest_cache").exists()
    assert list(elsewhere.iterdir()) == []


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


def test_checks_of_ones_own_run_beside_the_packaged_ones(
    installed: Installed, elsewhere: Path, tmp_path: Path
) -> None:
    mine = tmp_path / "my checks"
    mine.mkdir()
    (mine / "test_local.py").write_text(USER_CHECK)
    result = installed.run(
        "check", "--checks", str(mine), "--collect-only", "-q", cwd=elsewhere, home=tmp_path / "h"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    items = _collected(result.stdout)
    assert len(items) == _packaged_checks() + 1, result.stdout
    assert [item for item in items if "test_local.py" in item] == [
        next(i for i in items if i.endswith("test_local.py::test_the_motd_is_there"))
    ]


def test_a_missing_checks_folder_is_one_line(
    installed: Installed, elsewhere: Path, tmp_path: Path
) -> None:
    result = installed.run("check", "--checks", "missing", cwd=elsewhere, home=tmp_path / "h")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["opsbook check: --checks missing: no such folder"]


def test_list_and_inventory_check_work_installed(
    installed: Installed, elsewhere: Path, tmp_path: Path
) -> None:
    listed = installed.run("list", cwd=elsewhere, home=tmp_path / "h")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[-1] == f"{_packaged_checks()} checks"
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("name: ci\npostgres:\n  chatdb: {password: {file: /nonexistent/pw}}\n")
    linted = installed.run("inventory", "check", str(inventory), cwd=elsewhere, home=tmp_path)
    assert linted.returncode == 0, linted.stderr
    assert "valid: deployment ci, 1 targets" in linted.stdout


def test_daily_run_from_another_folder_and_status_from_a_third(
    installed: Installed, sandbox: Any, tmp_path: Path
) -> None:
    spaced = tmp_path / "inventories with spaces" / "sandbox inventory.yaml"
    spaced.parent.mkdir()
    shutil.copy(sandbox.inventory_path, spaced)
    home = tmp_path / "home"
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    run = installed.run(
        "check", "-m", "daily", "--inventory", str(spaced), cwd=first, home=home, timeout=300
    )
    command = shlex.join(["opsbook", "check", "-m", "daily", "--inventory", str(spaced)])
    assert run.returncode == 0, f"{command}\n{run.stdout}{run.stderr}"
    assert (home / "reports" / "latest" / "findings.json").is_file()
    assert list(first.iterdir()) == []
    status = installed.run("status", cwd=second, home=home)
    run_id = (home / "reports" / "latest").resolve().name.rsplit("-", 1)[-1]
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.startswith("opsbook status: OK - sandbox, run ")
    assert run_id in status.stdout.splitlines()[0]


def test_the_packaged_pytest_settings_are_the_checkouts(tmp_path: Path) -> None:
    """checks/opsbook.ini (an installed run's settings) holds what pyproject.toml holds; the
    checkout may add only its development settings (filterwarnings, testpaths)."""
    packaged = configparser.ConfigParser()
    packaged.read(REPO / "checks" / "opsbook.ini")
    ini = dict(packaged["pytest"])
    checkout = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert ini["addopts"].split() == checkout["addopts"]
    assert ini["xfail_strict"] == str(checkout["xfail_strict"]).lower()
    assert set(checkout) - set(ini) <= {"filterwarnings", "testpaths"}
    assert set(ini) <= set(checkout)


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wheels of opsbook's dependencies (pyproject.toml's), made once per session with `pip
    wheel`: the only step that may download; every install after it uses `--no-index`."""
    folder = tmp_path_factory.mktemp("wheelhouse")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    made = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-w",
         str(folder), *project["dependencies"]],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    return folder


@dataclass(frozen=True)
class Virtualenv:
    """A fresh virtualenv holding the wheel and nothing of the checkout's."""

    bin: Path

    def opsbook(
        self, *args: str, home: Path, env: dict[str, str] | None = None, timeout: float = 120
    ) -> Any:
        """`opsbook ARGS`, the console script, from the filesystem root."""
        environment = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("OPSBOOK", "PYTEST", "PYTHON", "VIRTUAL_ENV"))
        }
        environment.update(
            OPSBOOK_HOME=str(home), PATH=f"{self.bin}{os.pathsep}{environment.get('PATH', '')}"
        )
        environment.update(env or {})
        return subprocess.run(
            [str(self.bin / "opsbook"), *args], cwd="/", env=environment, capture_output=True,
            text=True, timeout=timeout, check=False,
        )  # fmt: skip


@pytest.fixture(scope="module")
def virtualenv(
    installed: Installed, wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory
) -> Virtualenv:
    folder = tmp_path_factory.mktemp("venv") / "opsbook"
    subprocess.run(
        [sys.executable, "-m", "venv", str(folder)], check=True, capture_output=True, timeout=300
    )
    python = folder / "bin" / "python"
    installing = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index",
         "--find-links", str(wheelhouse), str(installed.wheel)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert installing.returncode == 0, installing.stderr
    return Virtualenv(folder / "bin")


@pytest.mark.sandbox
def test_a_fresh_virtualenv_runs_the_version_from_the_root(
    virtualenv: Virtualenv, tmp_path: Path
) -> None:
    result = virtualenv.opsbook("--version", home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"opsbook 0\.1\.0 \(commit [0-9a-f]{12}\)\n", result.stdout)
    where = subprocess.run(
        [str(virtualenv.bin / "python"), "-c", "import opsbook; print(opsbook.__file__)"],
        cwd="/", capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    assert where.startswith(str(virtualenv.bin.parent)), where


@pytest.mark.sandbox
def test_a_fresh_virtualenv_lists_the_checks_from_the_root(
    virtualenv: Virtualenv, installed: Installed, tmp_path: Path
) -> None:
    listed = virtualenv.opsbook("list", home=tmp_path / "home")
    assert listed.returncode == 0, listed.stderr
    from_the_wheel = installed.run("list", cwd=tmp_path, home=tmp_path / "home")
    assert re.fullmatch(r"\d+ checks", listed.stdout.splitlines()[-1]), listed.stdout
    assert listed.stdout == from_the_wheel.stdout


@pytest.mark.sandbox
def test_a_fresh_virtualenv_runs_the_daily_checks_green_from_the_root(
    virtualenv: Virtualenv, sandbox: Any, tmp_path: Path
) -> None:
    root_before = set(os.listdir("/"))
    home = tmp_path / "home"
    args = ("check", "-m", "daily", "--inventory", str(sandbox.inventory_path))
    run = virtualenv.opsbook(*args, home=home, env=SHARED_HOST, timeout=300)
    command = shlex.join(["opsbook", *args])
    assert run.returncode == 0, f"cd / && {command}\n{run.stdout}{run.stderr}"
    assert (home / "reports" / "latest" / "findings.json").is_file()
    assert {".pytest_cache", "reports"} & (set(os.listdir("/")) - root_before) == set()
