"""Backups: take one when the latest is stale or broken; restore the database and Redis from one.

Both work on the inventory's `backup:` section and on every PostgreSQL and Redis target, not on
the failing check's target: a backup covers the whole deployment. `restore_backup` is not
linked to any check (nothing a check sees can decide that production should be overwritten);
a person runs it with `python -m opsbook backup restore NAME --apply --allow=restore`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from opsbook import backup
from opsbook.inventory import Postgres, Redis
from opsbook.remediate.context import Context
from opsbook.remediate.plan import RISKY, Plan, Refused, StepKind

RESTORE = StepKind.RESTORE


def _require_risky(kind: str) -> None:
    # Until the kind is registered as risky, the runner's gate would let it through without an
    # allow-list: refuse rather than overwrite production unasked.
    if kind not in RISKY:
        raise Refused(
            f"kind {kind!r} is not registered as risky (opsbook.remediate.plan.RISKY), so it "
            "cannot be allowed explicitly: refusing"
        )


def _restore_database(spec: Postgres, dump: Path) -> Callable[[], str]:
    def restore() -> str:
        _require_risky(RESTORE)
        counts = backup.restore_postgres(spec, dump)
        return "restored " + ", ".join(f"{table} {n}" for table, n in counts.items())

    return restore


def _restore_queue(
    spec: Redis, rdb: Path, restart: Callable[[], None], expected: object
) -> Callable[[], str]:
    def restore() -> str:
        _require_risky(RESTORE)
        keys = backup.restore_redis(spec, rdb, restart)
        return f"redis holds {keys} keys (the backup had {expected})"

    return restore


def take_backup(ctx: Context, *, apply: bool) -> Plan:
    """Take a backup now when the latest is missing, too old or incomplete.

    Changes: writes a new backup directory (pg_dump, Redis RDB, tar of backup.data_paths, with
    manifest.json) into backup.dir; only if there are backups older than
    backup.retention_days, deletes those (opsbook's own `opsbook-backup-*` directories, never the
    newest). Production data is only read.
    Privileges: the admin credentials of every PostgreSQL target (pg_dump: SELECT on every
    table; the tables' owner will do) and every Redis target (SYNC for the RDB, DBSIZE); write
    access to backup.dir.
    Undo: delete the new backup directory; deleted old backups cannot be brought back.
    """
    plan = Plan.for_fix(ctx, "backup")
    settings = ctx.inventory.backup
    if settings is None:
        return plan.nothing("the inventory has no backup: section")
    latest = backup.latest_backup(settings.dir)
    if latest is not None and latest.age_s() < settings.max_age_s and not backup.verify(latest):
        return plan.nothing(f"{latest.name} is complete and {latest.age_s():.0f} s old")
    why = (
        "there is no backup"
        if latest is None
        else f"{latest.name} is {latest.age_s():.0f} s old (max {settings.max_age_s:g} s)"
        if latest.age_s() >= settings.max_age_s
        else f"{latest.name} is incomplete: {'; '.join(backup.verify(latest))}"
    )

    def take() -> str:
        info = backup.take_backup(ctx.inventory)
        return f"wrote {info.name} ({len(info.parts())} parts)"

    plan.add(
        f"take a backup: {why}",
        " && ".join(backup.plan_backup(ctx.inventory)),
        StepKind.BACKUP,
        take,
    )
    old = backup.past_retention(settings.dir, settings.retention_days)
    plan.add(
        f"delete opsbook's backups older than {settings.retention_days} days "
        f"(now: {', '.join(info.name for info in old) or 'none'})",
        f"rm -r {settings.dir}/{backup.BACKUP_PREFIX}*  (only those past retention)",
        StepKind.DELETE_FILES,
        lambda: f"deleted {', '.join(backup.prune(settings.dir, settings.retention_days))}",
        only_if=(
            "if backups are past retention",
            lambda: bool(backup.past_retention(settings.dir, settings.retention_days)),
        ),
    )
    return plan.finish(apply, ctx.gate)


def _drill_problem(ctx: Context, info: backup.BackupInfo | None) -> str | None:
    """What BACKUP-003 finds wrong with a backup when it is restored into a scratch cluster
    (the same drill), or None when it restores with its invariants."""
    if info is None:
        return "there is no backup"
    problems = backup.verify(info)
    if problems:
        return f"{info.name} is incomplete: {problems[0]}"
    queues = next(iter(ctx.inventory.redis.values())).queues if ctx.inventory.redis else None
    try:
        result = backup.drill(info, ctx.target, queues.processed if queues else "")
    except backup.BackupError as exc:
        return f"{info.name}: {exc}"
    found = []
    if result.orphan_messages:
        found.append(f"{result.orphan_messages} message(s) without their conversation")
    if result.processed_missing:
        found.append(f"{len(result.processed_missing)} processed id(s) not in its messages")
    return f"{info.name} restored: {'; '.join(found)}" if found else None


def drill_new_backup(ctx: Context, *, apply: bool) -> Plan:
    """Take a new backup and drill it when the latest does not restore.

    Changes: restores the latest backup into a scratch cluster (BACKUP-003's own drill; the
    scratch cluster is removed afterwards); only if that fails, writes a new backup directory
    into backup.dir (pg_dump, Redis RDB, tar of backup.data_paths, with manifest.json) and
    restores that one into a scratch cluster the same way. The failed backup is left as it is,
    for a person to look at. Production data is only read.
    Privileges: those of take_backup (the admin credentials of every PostgreSQL and Redis
    target, write access to backup.dir), and the PostgreSQL server binaries on this machine
    for the scratch cluster.
    Undo: delete the new backup directory.
    """
    plan = Plan.for_fix(ctx, "backup")
    settings = ctx.inventory.backup
    if settings is None:
        return plan.nothing("the inventory has no backup: section")
    ctx.postgres_spec()  # a fix of a PostgreSQL target's check: its database is drilled
    latest = backup.latest_backup(settings.dir)
    problem = _drill_problem(ctx, latest)
    if problem is None:
        assert latest is not None
        return plan.nothing(f"{latest.name} restores into a scratch cluster")

    def take_and_drill() -> str:
        info = backup.take_backup(ctx.inventory)
        still = _drill_problem(ctx, info)
        drilled = f"drill failed too: {still}" if still else "it restores into a scratch cluster"
        return f"wrote {info.name} ({len(info.parts())} parts); {drilled}"

    plan.add(
        f"take a new backup and drill it: {problem}",
        " && ".join(backup.plan_backup(ctx.inventory)),
        StepKind.BACKUP,
        take_and_drill,
    )
    return plan.finish(apply, ctx.gate)


def restore_backup(ctx: Context, *, apply: bool) -> Plan:
    """Restore every PostgreSQL database and every Redis server from the backup named by the
    context's target (`latest` for the newest).

    Changes: for each PostgreSQL target, in one transaction, TRUNCATEs the tables the dump holds
    and loads the dump's rows (data only: the schema must exist); rows written since the backup
    are lost. For each Redis target, stops the server without saving (SHUTDOWN NOSAVE), puts the
    snapshot in place of its dump file and starts it through the runtime; whatever was queued
    since the backup is lost. The backup must be complete (checksums match) or nothing is done.
    Privileges: the admin credentials (PostgreSQL: owner of the tables; Redis: CONFIG, SHUTDOWN),
    write access to the Redis data directory on this machine, control of the runtime.
    Undo: only by restoring a newer backup: take one first (`python -m opsbook backup`).
    """
    settings = ctx.inventory.backup
    name = ctx.target or "latest"
    plan = Plan.for_fix(ctx, f"backup/{name}")
    if settings is None:
        return plan.nothing("the inventory has no backup: section")
    info = backup.find_backup(settings.dir, name)
    problems = backup.verify(info)
    if problems:
        raise backup.BackupError(f"{info.name} is incomplete: {'; '.join(problems)}")
    parts = info.parts()
    for target, spec in sorted(ctx.inventory.postgres.items()):
        dump = info.path / backup.postgres_part(target)
        if dump.name not in parts:
            continue
        user = spec.admin.user if spec.admin else "?"

        plan.add(
            f"replace the rows of postgres {target} ({spec.database}) with those of {info.name}",
            backup.restore_postgres_command(spec, user, dump),
            RESTORE,
            _restore_database(spec, dump),
        )
    for target, redis_spec in sorted(ctx.inventory.redis.items()):
        rdb = info.path / backup.redis_part(target)
        if rdb.name not in parts:
            continue
        runtime, service = ctx.runtime(), redis_spec.service or target
        user = redis_spec.admin.user if redis_spec.admin else "?"
        expected = parts[rdb.name].get("keys")

        plan.add(
            f"load {info.name}/{rdb.name} into redis {target} (stops and starts {service})",
            backup.restore_redis_command(
                redis_spec, user, rdb, service, runtime.command("restart", service)
            ),
            RESTORE,
            _restore_queue(redis_spec, rdb, partial(runtime.restart, service), expected),
            service=service,
        )
    if not plan.steps:
        return plan.nothing(f"{info.name} holds no part of this inventory's targets")
    return plan.finish(apply, ctx.gate)
