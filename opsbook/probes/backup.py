"""What production held when a backup began: the rows the restore drill's copy must have.

The backups themselves are read by opsbook.backup (their directory, manifest and checksums);
this reads the production database they are compared with, as the monitoring role.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from msgspec import Struct

if TYPE_CHECKING:
    from opsbook.targets import PostgresTarget

# The chat's tables and the column that says when a row was written.
STAMPED_TABLES = {"conversations": "created_at", "messages": '"timestamp"'}


class TableRows(Struct, frozen=True):
    """A production table's rows now, and those written before a moment."""

    total: int
    before: int


def production_rows(postgres: PostgresTarget, before: datetime) -> dict[str, TableRows]:
    """The rows of each chat table in production, all and those stamped before `before`."""
    counts = {}
    for table, column in STAMPED_TABLES.items():  # constants: no name comes from outside
        ((total, earlier),) = postgres.query(
            f"SELECT count(*), count(*) FILTER (WHERE {column} < %s) FROM {table}",
            (before,),
        )
        counts[table] = TableRows(int(total), int(earlier))
    return counts
