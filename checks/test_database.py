"""PostgreSQL: the runbook's `pg_isready` and friends."""

from __future__ import annotations

import pytest

from opsbook import Severity, TargetUnreachable, check
from opsbook.targets import PostgresTarget

pytestmark = [pytest.mark.daily, pytest.mark.database, pytest.mark.postdeploy]


@check("DB-001", Severity.CRITICAL)
def test_postgres_accepts_connections(postgres_target: PostgresTarget, finding) -> None:
    """PostgreSQL accepts connections as the monitoring role.

    Risk: the backend cannot store or read messages.
    """
    try:
        (answer,) = postgres_target.query("SELECT 1")[0]
    except TargetUnreachable as exc:
        finding.observe("refused", expected="accepting")
        raise AssertionError(f"postgres {postgres_target.name}: {exc.reason}") from None
    finding.observe("accepting", expected="accepting")
    assert answer == 1, f"postgres {postgres_target.name}: SELECT 1 returned {answer!r}"
