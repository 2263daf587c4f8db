"""PostgreSQL's programs are found for the server's major version, never an older one.

Debian 12 ships only PostgreSQL 15 and PyPI has no PostgreSQL server, so the lookup itself is
tested on real files: a tree of version folders as Debian and RHEL lay them out, holding real
executables that answer `--version` as PostgreSQL's do. The lookup runs on that tree as it runs
on /. Then the real one: the sandbox's server asked its version, and a real backup's dump says
which pg_dump made it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from opsbook.backup import take_backup
from opsbook.backup.tools import postgres_admin_connection, server_major
from opsbook.inventory import load_inventory
from opsbook.pg_tools import PgToolsError, Places, client_tool, major_of, server_bin
from opsbook.postgres_cluster import Cluster
from opsbook.sandbox.stack import Stack


def _program(path: Path, answer: str) -> Path:
    """A real executable that prints `answer` for --version, as PostgreSQL's programs do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho '{answer}'\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Debian's 14 (server and clients) and 16 (clients only), RHEL's 17, PATH's 18."""
    root = tmp_path / "root"
    for name in ("pg_dump", "pg_restore", "postgres"):
        _program(root / f"usr/lib/postgresql/14/bin/{name}", f"{name} (PostgreSQL) 14.13")
    for name in ("pg_dump", "pg_restore"):
        _program(root / f"usr/lib/postgresql/16/bin/{name}", f"{name} (PostgreSQL) 16.4")
    _program(root / "usr/pgsql-17/bin/pg_dump", "pg_dump (PostgreSQL) 17.2")
    _program(root / "usr/pgsql-17/bin/postgres", "postgres (PostgreSQL) 17.2")
    _program(root / "bin/pg_dump", "pg_dump (PostgreSQL) 18.1 (Homebrew)")
    (root / "usr/lib/postgresql/not-a-version/bin").mkdir(parents=True)
    return root


def _places(root: Path, pg_bin: Path | None = None) -> Places:
    return Places(root=root, path=str(root / "bin"), pg_bin=pg_bin)


def test_the_installed_versions_are_read_from_the_standard_folders(tree: Path) -> None:
    assert _places(tree).installed_majors() == [17, 16, 14]


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        pytest.param(14, "usr/lib/postgresql/14/bin/pg_dump", id="debian-same-version"),
        pytest.param(16, "usr/lib/postgresql/16/bin/pg_dump", id="debian-clients-only"),
        pytest.param(17, "usr/pgsql-17/bin/pg_dump", id="rhel-same-version"),
        pytest.param(18, "bin/pg_dump", id="path-asked-its-version"),
        pytest.param(15, "usr/lib/postgresql/16/bin/pg_dump", id="none-of-15-the-nearest-newer"),
        pytest.param(12, "usr/lib/postgresql/14/bin/pg_dump", id="none-of-12-the-nearest-newer"),
    ],
)
def test_pg_dump_is_the_servers_version_else_the_nearest_newer(
    tree: Path, server: int, expected: str
) -> None:
    found = client_tool("pg_dump", server, _places(tree))
    assert found.path == tree / expected
    done = subprocess.run(
        [str(found.path), "--version"], capture_output=True, text=True, check=True, timeout=10
    )
    assert f"(PostgreSQL) {found.major}." in done.stdout
    assert found.major >= server


def test_an_older_pg_dump_is_never_used_and_the_error_says_where_it_looked(tree: Path) -> None:
    with pytest.raises(PgToolsError) as refused:
        client_tool("pg_dump", 19, _places(tree))
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(
        "no pg_dump for the PostgreSQL 19 server (version 19 or newer needed, never older): "
        f"looked in {tree}/usr/lib/postgresql/19/bin, {tree}/usr/pgsql-19/bin, PATH; "
        "found only older: "
    )
    assert message.endswith(
        f"{tree}/bin/pg_dump (18), {tree}/usr/pgsql-17/bin/pg_dump (17), "
        f"{tree}/usr/lib/postgresql/16/bin/pg_dump (16), "
        f"{tree}/usr/lib/postgresql/14/bin/pg_dump (14)"
    )


def test_a_program_on_path_that_does_not_say_its_version_is_not_used(tree: Path) -> None:
    _program(tree / "bin/pg_restore", "pg_restore, some version")
    with pytest.raises(PgToolsError, match=r"found only older: .*/14/bin/pg_restore \(14\)$"):
        client_tool("pg_restore", 17, _places(tree))


def test_opsbook_pg_bin_comes_first_and_is_asked_its_version(tree: Path, tmp_path: Path) -> None:
    own = tmp_path / "own"
    _program(own / "pg_dump", "pg_dump (PostgreSQL) 16.9")
    assert client_tool("pg_dump", 16, _places(tree, own)).path == own / "pg_dump"
    # Its pg_dump is older than a 17 server: the standard folders' is taken instead.
    assert client_tool("pg_dump", 17, _places(tree, own)).path == tree / "usr/pgsql-17/bin/pg_dump"


def test_a_servers_programs_are_its_versions_else_the_newest_installed(tree: Path) -> None:
    places = _places(tree)
    assert server_bin(None, places) == tree / "usr/pgsql-17/bin"
    assert server_bin(14, places) == tree / "usr/lib/postgresql/14/bin"
    with pytest.raises(PgToolsError) as missing:
        server_bin(16, places)  # 16's clients are installed, not its server
    assert str(missing.value) == (
        f"PostgreSQL 16's server programs are not installed: looked in "
        f"{tree}/usr/lib/postgresql/16/bin, {tree}/usr/pgsql-16/bin, PATH "
        "(or set $OPSBOOK_PG_BIN to their folder)"
    )
    _program(tree / "bin/postgres", "postgres (PostgreSQL) 16.4")
    assert server_bin(16, places) == tree / "bin"


def test_a_cluster_knows_the_version_that_made_it_and_opsbook_pg_bin_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = Cluster(tmp_path, 5432)
    assert cluster.major is None
    cluster.data.mkdir()
    (cluster.data / "PG_VERSION").write_text("15\n")
    assert cluster.major == 15
    monkeypatch.setenv("OPSBOOK_PG_BIN", str(tmp_path / "own"))
    assert cluster.tool("initdb") == str(tmp_path / "own" / "initdb")


def test_server_version_num_gives_the_major_version() -> None:
    assert major_of(150004) == 15
    assert major_of(170000) == 17
    assert major_of(90624) == 9  # 9.6: older than anything accepted


def test_the_sandboxs_server_gets_its_own_versions_pg_dump(sandbox: Stack, tmp_path: Path) -> None:
    inventory = load_inventory(sandbox.inventory_path, environ={})
    spec = inventory.postgres["chatdb"]
    with postgres_admin_connection(spec, "opsbook-test") as conn:
        major = server_major(conn)
    found = client_tool("pg_dump", major)
    assert found.major == major
    done = subprocess.run(
        [str(found.path), "--version"], capture_output=True, text=True, check=True, timeout=10
    )
    assert f"(PostgreSQL) {major}." in done.stdout

    raw = yaml.safe_load(sandbox.inventory_path.read_text())
    raw["backup"]["dir"] = str(tmp_path / "backups")
    copy = tmp_path / "inventory.yaml"
    copy.write_text(yaml.safe_dump(raw))
    info = take_backup(load_inventory(copy, environ={}))
    assert info.parts()["postgres-chatdb.dump"]["server_major"] == major
    listing = subprocess.run(
        [str(client_tool("pg_restore", major).path), "-l", str(info.path / "postgres-chatdb.dump")],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    dumped_by = re.search(r"Dumped by pg_dump version: (\d+)\.", listing)
    dumped_from = re.search(r"Dumped from database version: (\d+)\.", listing)
    assert dumped_by, listing
    assert dumped_from, listing
    assert int(dumped_from[1]) == major
    assert int(dumped_by[1]) == major
