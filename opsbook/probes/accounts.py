"""The local accounts of a host: /etc/passwd, read through testinfra."""

from __future__ import annotations

from typing import TYPE_CHECKING

from msgspec import Struct

from opsbook.probes.host import NotObserved, run

if TYPE_CHECKING:
    from opsbook.targets import HostTarget

# Shells that let nobody in. Debian gives `sync` the shell /bin/sync, which runs sync(1) and
# exits; shutdown and halt are the same idea on older systems.
NO_LOGIN_SHELLS = frozenset({"nologin", "false", "sync", "shutdown", "halt"})


class Account(Struct, frozen=True):
    """One line of /etc/passwd."""

    name: str
    uid: int
    shell: str

    @property
    def can_log_in(self) -> bool:
        """An empty shell means /bin/sh to login(1); any unknown program counts as a shell."""
        return self.shell.rsplit("/", 1)[-1] not in NO_LOGIN_SHELLS

    def line(self) -> str:
        return f"{self.name} uid={self.uid} shell={self.shell or '(empty: /bin/sh)'}"


def accounts(passwd: str) -> list[Account]:
    """The accounts of an /etc/passwd text; comment, blank and NIS `+` lines are left out."""
    result = []
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) < 7 or line.startswith(("#", "+", "-")) or not fields[2].isdigit():
            continue
        result.append(Account(fields[0], int(fields[2]), fields[6].strip()))
    return result


def local_accounts(host: HostTarget, *, timeout_s: float) -> list[Account]:
    """The host's local accounts: /etc/passwd only, not the directory services NSS adds."""
    passwd = run(host, "/etc/passwd", "cat -- /etc/passwd", timeout_s=timeout_s)
    if passwd.rc != 0:
        raise NotObserved(host, "/etc/passwd", f"cannot read: {passwd.why()}")
    return accounts(passwd.stdout)
