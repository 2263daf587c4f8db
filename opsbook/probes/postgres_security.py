"""How PostgreSQL lets clients in: pg_hba rules, security settings, role attributes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from msgspec import Struct

from opsbook.errors import NotEvaluated

if TYPE_CHECKING:
    from opsbook.targets import PostgresTarget

GRANT_HBA = (
    "GRANT SELECT ON pg_hba_file_rules TO {role}; "
    "GRANT EXECUTE ON FUNCTION pg_hba_file_rules() TO {role} (in the checked database)"
)


class HbaRule(Struct, frozen=True):
    """One line of pg_hba.conf as the server parsed it (pg_hba_file_rules)."""

    line_number: int
    type: str | None
    databases: list[str]
    users: list[str]
    address: str | None
    auth_method: str | None
    error: str | None  # why the server could not load the line

    def line(self) -> str:
        """`line 2: host all all 127.0.0.1 trust`, as an operator reads pg_hba.conf."""
        fields = [self.type, ",".join(self.databases), ",".join(self.users), self.address]
        fields.append(self.auth_method)
        return f"line {self.line_number}: " + " ".join(f for f in fields if f)


def hba_rules(target: PostgresTarget) -> list[HbaRule]:
    """The rows of pg_hba_file_rules; NotEvaluated, naming the grant, when the role may not
    read them (superuser only by default)."""
    import psycopg

    try:
        rows = target.query(
            "SELECT line_number, type, database, user_name, address, auth_method, error"
            " FROM pg_hba_file_rules ORDER BY line_number"
        )
    except psycopg.errors.InsufficientPrivilege:
        role = target.spec.user
        raise NotEvaluated(
            f"postgres {target.name}: {role} may not read pg_hba_file_rules (superuser only "
            "by default); grant it: " + GRANT_HBA.format(role=role)
        ) from None
    return [
        HbaRule(number, kind, list(databases or []), list(users or []), address, method, error)
        for number, kind, databases, users, address, method, error in rows
    ]


def setting(target: PostgresTarget, name: str) -> str:
    """A server setting as current_setting() shows it (`on`, `scram-sha-256`)."""
    ((value,),) = target.query("SELECT current_setting(%s)", (name,))
    return str(value)


# Roles whose membership gives what superuser gives: run programs, read and write server files.
SERVER_ACCESS_ROLES = ("pg_execute_server_program", "pg_write_server_files", "pg_read_server_files")


class RoleAttributes(Struct, frozen=True):
    """A role's powerful attributes, and the superuser or server-access roles it belongs to."""

    name: str
    superuser: bool
    createrole: bool
    createdb: bool
    replication: bool
    bypassrls: bool
    member_of: list[str]

    @property
    def privileges(self) -> list[str]:
        """`SUPERUSER`, `CREATEDB`, `member of pg_write_server_files`, ... (empty: none)."""
        flags = {
            "SUPERUSER": self.superuser,
            "CREATEROLE": self.createrole,
            "CREATEDB": self.createdb,
            "REPLICATION": self.replication,
            "BYPASSRLS": self.bypassrls,
        }
        return [flag for flag, held in flags.items() if held] + [
            f"member of {role}" for role in self.member_of
        ]


def role_attributes(target: PostgresTarget, roles: Sequence[str]) -> list[RoleAttributes]:
    """The attributes of the roles that exist among `roles`, by name."""
    rows = target.query(
        "SELECT r.rolname, r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolreplication,"
        " r.rolbypassrls, ARRAY(SELECT g.rolname FROM pg_roles g WHERE g.oid <> r.oid"
        "  AND pg_has_role(r.oid, g.oid, 'MEMBER') AND (g.rolsuper OR g.rolname = ANY(%s)))"
        " FROM pg_roles r WHERE r.rolname = ANY(%s) ORDER BY 1",
        (list(SERVER_ACCESS_ROLES), list(roles)),
    )
    return [
        RoleAttributes(name, superuser, createrole, createdb, replication, bypassrls, list(via))
        for name, superuser, createrole, createdb, replication, bypassrls, via in rows
    ]
