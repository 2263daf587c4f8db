"""The access audit's host probes against this machine: real files with real modes and owners
in a temporary folder, the real /etc/passwd, and real listening sockets."""

from __future__ import annotations

import os
import pwd
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from opsbook.inventory import Host, Inventory
from opsbook.probes.accounts import accounts, local_accounts
from opsbook.probes.files import FileMode, file_mode, globbed_files
from opsbook.probes.host import NotObserved
from opsbook.probes.sockets import internal_ports, listening_sockets
from opsbook.targets import HostTarget

LOCAL = HostTarget("local", Host())
ME = pwd.getpwuid(os.geteuid()).pw_name


@pytest.fixture
def secrets(tmp_path: Path) -> Path:
    """secrets/a.password 0600, secrets/b.password 0644 owned by nobody, a key whose name has
    a space (0400), and a keys/ folder open to its group (0750)."""
    folder = tmp_path / "secrets"
    folder.mkdir()
    for name, mode in (("a.password", 0o600), ("b.password", 0o644)):
        (folder / name).write_text("not a real secret\n")
        (folder / name).chmod(mode)
    key = tmp_path / "key with space.pem"
    key.write_text("-----BEGIN NOTHING-----\n")
    key.chmod(0o400)
    (tmp_path / "keys").mkdir(mode=0o750)
    if os.geteuid() == 0:
        os.chown(folder / "b.password", pwd.getpwnam("nobody").pw_uid, -1)
    return tmp_path


def test_globbed_files_have_their_real_modes_and_owners(secrets: Path) -> None:
    globs = [
        f"{secrets}/secrets/*.password",
        f"{secrets}/key with space.pem",
        f"{secrets}/keys",
        f"{secrets}/nothing/*.pem",
    ]
    found = globbed_files(LOCAL, globs, timeout_s=3)
    b_owner = "nobody" if os.geteuid() == 0 else ME
    assert found.files == [
        FileMode(f"{secrets}/secrets/a.password", 0o600, ME, "regular file"),
        FileMode(f"{secrets}/secrets/b.password", 0o644, b_owner, "regular file"),
        FileMode(f"{secrets}/key with space.pem", 0o400, ME, "regular file"),
        FileMode(f"{secrets}/keys", 0o750, ME, "directory"),
    ]
    assert [f.path.rsplit("/", 1)[-1] for f in found.files if f.too_open] == [
        "b.password",
        "keys",
    ]
    assert found.unmatched_globs == [f"{secrets}/nothing/*.pem"]


def test_a_symlink_is_judged_by_what_it_points_to(secrets: Path) -> None:
    link = secrets / "link.password"
    link.symlink_to(secrets / "secrets" / "b.password")
    assert file_mode(LOCAL, str(link)).mode == 0o644


def test_a_file_that_went_away_is_not_observed(tmp_path: Path) -> None:
    with pytest.raises(NotObserved, match=r"^host local: .*gone: stat failed"):
        file_mode(LOCAL, str(tmp_path / "gone"))


def test_local_accounts_are_those_of_etc_passwd() -> None:
    found = {a.name: a for a in local_accounts(LOCAL, timeout_s=3)}
    assert found == {a.name: a for a in accounts(Path("/etc/passwd").read_text())}
    root = pwd.getpwnam("root")
    assert (found["root"].uid, found["root"].shell) == (0, root.pw_shell)


@pytest.fixture
def listeners_here() -> Iterator[tuple[int, int]]:
    """A socket listening on all interfaces and one on loopback (nothing is sent anywhere)."""
    with socket.socket() as everywhere, socket.socket() as loopback:
        everywhere.bind(("0.0.0.0", 0))  # the probe must see a wildcard bind
        loopback.bind(("127.0.0.1", 0))
        everywhere.listen(1)
        loopback.listen(1)
        yield everywhere.getsockname()[1], loopback.getsockname()[1]


def test_listening_sockets_tell_wildcards_and_their_process(
    listeners_here: tuple[int, int],
) -> None:
    everywhere, loopback = listeners_here
    found = {s.port: s for s in listening_sockets(LOCAL, timeout_s=3)}
    assert (found[everywhere].address, found[everywhere].all_interfaces) == ("0.0.0.0", True)
    assert (found[loopback].address, found[loopback].all_interfaces) == ("127.0.0.1", False)
    if os.geteuid() == 0:  # ss -p names other users' processes to root only
        assert f"pid={os.getpid()}," in found[everywhere].line


def test_internal_ports_are_the_inventorys_services_on_this_host(
    sandbox_inventory: Inventory,
) -> None:
    ports = internal_ports(sandbox_inventory, LOCAL)
    assert ports[urlsplit(sandbox_inventory.redis["queue"].url).port or 0] == "redis queue"
    assert ports[sandbox_inventory.postgres["chatdb"].port] == "postgres chatdb"
    assert "backend backend" in ports.values()
    # The frontend is public by design: ACCESS-004's public_ports judge it, not ACCESS-003.
    assert not any(label.startswith("frontend") for label in ports.values())
    elsewhere = HostTarget("web1", Host(spec="ssh://web1.example"))
    assert internal_ports(sandbox_inventory, elsewhere) == {}
