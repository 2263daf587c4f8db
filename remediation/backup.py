"""Backups: take one when the latest is stale or broken; restore the whole deployment from one.

Both work on the inventory's `backup:` section and on every PostgreSQL and Redis target, not on
the failing check's target: a backup covers the whole deployment. `restore_backup` is not
linked to any check (nothing a check sees can decide that production should be overwritten);
a person runs it with `python -m opsbook backup restore NAME --apply --allow=restore`.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from opsbook import backup
from opsbook.canary import run_canary, wait_ready
from opsbook.inventory import Inventory, Postgres, Redis
from opsbook.remediate.context import Context
from opsbook.remediate.plan import RISKY, Plan, Refused, StepKind
from opsbook.remediate.runtime import Runtime, runtime_of

RESTORE = StepKind.RESTORE
RESTORE_LIVE = StepKind.RESTORE_LIVE
# The end-to-end canary's deadline per hop after a restore (as after a deploy or a rollback).
CANARY_HOP_S = 10.0
# Roles whose services only read the stores (exporters, dashboards): not stopped for a restore.
READERS = ("monitoring",)
# Writers stop in this order (the entry to the queue first, its consumers after) and start in
# the reverse one (consumers first, so that what the API queues is taken at once).
STOP_ORDER = ("proxy", "frontend", "api", "other", "consumer")


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


@dataclass
class _Restore:
    """What one application of a restore carries from step to step."""

    stamp: str
    lists: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # per Redis target
    staged: list[backup.StagedData] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)


def writers_of(inventory: Inventory, stores: set[str]) -> list[str]:
    """The services that write to `stores`: those the inventory's services: says depend on
    one of them directly, readers (role monitoring) aside; in the order they are stopped."""
    found = [
        name
        for name, service in inventory.services.items()
        if set(service.depends_on) & stores and service.role not in READERS
    ]

    def order(name: str) -> int:
        role = inventory.services[name].role
        return STOP_ORDER.index(role) if role in STOP_ORDER else STOP_ORDER.index("other")

    return sorted(found, key=order)


def _stop_refusal(inventory: Inventory, service: str) -> tuple[Runtime | None, str | None]:
    """The runtime that stops and starts `service`, or why none can."""
    runtime = runtime_of(inventory, service)
    if runtime is None:
        return None, "no runtime drives it (name one under services:)"
    return runtime, runtime.refusal("stop", service) or runtime.refusal("start", service)


def _stop(runtime: Runtime, service: str, state: _Restore) -> Callable[[], str]:
    def stop() -> str:
        _require_risky(RESTORE)
        if not runtime.is_running(service):
            return "was not running (not started afterwards either)"
        # Counted as stopped before the attempt: a stop that fails half-way is started again.
        state.stopped.append(service)
        runtime.stop(service)
        if runtime.is_running(service):
            raise RuntimeError(f"{runtime.name} runtime: {service} still runs after its stop")
        return "stopped"

    return stop


def _start(
    inventory: Inventory, runtime: Runtime, service: str, proxies: list[str]
) -> Callable[[], str]:
    def start() -> str:
        from opsbook.deploy import wait_proxying

        runtime.start(service)
        if not runtime.is_running(service):
            return "started, but it does not run"
        # A container started again may have a new address; the stack's nginx looks the name up
        # at request time (containers/nginx), no reload: wait until it passes the API on.
        wait_proxying(inventory, proxies)
        return "started"

    return start


def _proxies(inventory: Inventory, service: str, runtime: Runtime) -> list[str]:
    """The compose services in front of `service` (nginx before the backend) when it runs on
    compose: the start's wait asks them."""
    from opsbook.deploy import proxies_of

    if runtime.name != "compose":
        return []
    return [p for p in proxies_of(inventory, (service,)) if inventory.runtime_of(p) == "compose"]


def _switch(
    inventory: Inventory, runtime: Runtime, frontend: str, *, on: bool
) -> Callable[[], str]:
    def switch() -> str:
        from opsbook.remediation.maintenance import _frontend_answers

        runtime.maintenance(on, frontend)
        # As opsbook maintenance on|off: the page is on when the entry itself serves it.
        expected = 503 if on else 200
        return _frontend_answers(inventory, expected, inventory.thresholds.timeout_s)

    return switch


def _beside(path: Path, what: str) -> str:
    """A name beside a data path for what a restore keeps there: PARENT/.NAME.opsbook-WHAT."""
    return f"{path.parent}/.{path.name}.opsbook-{what}"


def _restore(ctx: Context, *, apply: bool, maintenance: bool) -> Plan:
    """The whole restore's plan (restore_backup's docstring says what it does)."""
    inventory, settings = ctx.inventory, ctx.inventory.backup
    name = ctx.target or "latest"
    plan = Plan.for_fix(ctx, f"backup/{name}")
    if settings is None:
        return plan.nothing("the inventory has no backup: section")
    info = backup.find_backup(settings.dir, name)
    problems = backup.verify(info)
    if problems:
        raise backup.BackupError(f"{info.name} is incomplete: {'; '.join(problems)}")
    parts = info.parts()
    deployment = inventory.name
    state = _Restore(stamp=f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
    dumps = {
        target: (spec, info.path / backup.postgres_part(target))
        for target, spec in sorted(inventory.postgres.items())
        if backup.postgres_part(target) in parts
    }
    rdbs = {
        target: (spec, info.path / backup.redis_part(target))
        for target, spec in sorted(inventory.redis.items())
        if backup.redis_part(target) in parts
    }
    archived = [Path(p) for p in parts.get(backup.DATA_PART, {}).get("paths", [])]
    data_paths = [path for path in archived if path in settings.data_paths]
    tar = info.path / backup.DATA_PART
    if not dumps and not rdbs and not data_paths:
        return plan.nothing(f"{info.name} holds no part of this inventory's targets")
    stores = {inventory.service_of(target) for target in [*dumps, *rdbs]}
    writers = writers_of(inventory, stores)

    # Who cannot be stopped is said in one line, and only a restore-live allow lets it go on.
    runtimes: dict[str, Runtime] = {}
    cannot = []
    for service in writers:
        runtime, why = _stop_refusal(inventory, service)
        if runtime is None or why is not None:
            cannot.append(f"{service}: {why}")
        else:
            runtimes[service] = runtime
    if stores and not writers:
        cannot.append(f"the writers of {', '.join(sorted(stores))}: services: names none")
    if cannot:
        plan.add(
            f"restore while writers keep running: cannot stop {'; '.join(cannot)}",
            "nothing: what they write meanwhile may be lost or mixed with the backup's",
            RESTORE_LIVE,
            lambda: "allowed",
            service=deployment,
        )

    if rdbs or data_paths:

        def read_backup() -> str:
            _require_risky(RESTORE)
            said = []
            for target, (spec, rdb) in rdbs.items():
                state.lists[target] = backup.read_queue_lists(rdb, spec.queues)
                lengths = ", ".join(f"{n} {len(v)}" for n, v in state.lists[target].items())
                said.append(f"{rdb.name}: {lengths}")
            if data_paths:
                said.append(f"{tar.name}: {backup.check_data_archive(tar, data_paths)} entries")
            return "; ".join(said)

        reads = [f"redis-server --port 0 --dbfilename {rdb} (scratch); LRANGE each queue list"
                 for _, rdb in rdbs.values()]  # fmt: skip
        reads += [f"tar -tf {tar}"] if data_paths else []
        plan.add(
            "read the backup through before anything stops (the queue lists of each Redis "
            f"snapshot{', the data archive' if data_paths else ''})",
            "; ".join(reads),
            RESTORE,
            read_backup,
            service=deployment,
        )

    if maintenance:
        # The frontend's switch and runtime, as opsbook maintenance on|off finds them.
        from opsbook.remediation.maintenance import _frontend

        front, front_runtime = _frontend(inventory)
        plan.add(
            "turn maintenance mode on (503 everywhere) for the restore",
            front_runtime.maintenance_command(True, front),
            StepKind.MAINTENANCE_MODE,
            _switch(inventory, front_runtime, front, on=True),
            service=front,
        )

    for service, runtime in runtimes.items():
        written = sorted(set(inventory.services[service].depends_on) & stores)
        plan.add(
            f"stop {service} (it writes to {', '.join(written)})",
            runtime.command("stop", service),
            RESTORE,
            _stop(runtime, service, state),
            service=service,
        )

    shown = ", ".join(str(path) for path in data_paths)
    if data_paths:

        def unpack() -> str:
            _require_risky(RESTORE)
            state.staged = backup.unpack_data(tar, data_paths)
            return "unpacked " + ", ".join(str(each.unpacked) for each in state.staged)

        plan.add(
            f"unpack {shown} from {tar.name} beside the current one (nothing in place changes)",
            " && ".join(
                shlex.join(
                    [
                        "tar",
                        "-xpf",
                        str(tar),
                        "-C",
                        _beside(path, "restore-XXXX"),
                        str(path).lstrip("/"),
                    ]
                )
                for path in data_paths
            ),
            RESTORE,
            unpack,
            service=deployment,
        )

    for target, (spec, dump) in dumps.items():
        user = spec.admin.user if spec.admin else "?"
        plan.add(
            f"replace the rows of postgres {target} ({spec.database}) with those of {info.name}",
            backup.restore_postgres_command(spec, user, dump),
            RESTORE,
            _restore_database(spec, dump),
            service=inventory.service_of(target),
        )

    for target, (redis_spec, rdb) in rdbs.items():
        user = redis_spec.admin.user if redis_spec.admin else "?"

        def restore_lists(target: str = target, redis_spec: Redis = redis_spec) -> str:
            _require_risky(RESTORE)
            lengths = backup.restore_queue_lists(redis_spec, state.lists[target])
            return ", ".join(f"{n} {length}" for n, length in lengths.items())

        plan.add(
            f"replace the queue lists of redis {target} with those of {info.name}/{rdb.name}",
            backup.restore_queue_lists_command(
                redis_spec, user, list(backup.queue_list_names(redis_spec.queues))
            ),
            RESTORE,
            restore_lists,
            service=inventory.service_of(target),
        )

    if data_paths:

        def swap() -> str:
            _require_risky(RESTORE)
            backup.swap_in(state.staged, state.stamp)
            kept = [str(each.aside) for each in state.staged if each.aside is not None]
            return f"in place; kept aside: {', '.join(kept) or 'nothing (there was none)'}"

        plan.add(
            f"put the unpacked {shown} in place, the current one kept aside until the restore "
            "is verified",
            " && ".join(
                shlex.join(["mv", str(path), _beside(path, f"before-restore-{state.stamp}")])
                + " && "
                + shlex.join(
                    ["mv", f"{_beside(path, 'restore-XXXX')}/{str(path).lstrip('/')}", str(path)]
                )
                for path in data_paths
            ),
            RESTORE,
            swap,
            service=deployment,
        )

    # From here on, the steps run also when one before failed or was refused (always=True);
    # the verification after them does not.
    for service, runtime in reversed(runtimes.items()):
        plan.add(
            f"start {service} again",
            runtime.command("start", service),
            RESTORE,
            _start(inventory, runtime, service, _proxies(inventory, service, runtime)),
            only_if=(
                "if the restore stopped it; also after a failed step",
                lambda service=service: service in state.stopped,  # type: ignore[misc]
            ),
            service=service,
            always=True,
        )
    if data_paths:
        plan.add(
            "remove what was unpacked and not put in place",
            " ".join(f"rm -r {shlex.quote(_beside(p, 'restore-'))}*" for p in data_paths),
            RESTORE,
            lambda: "removed " + ", ".join(backup.discard_unpacked(state.staged)),
            only_if=(
                "if a step failed before the data was put in place; also after a failed step",
                lambda: any(each.scratch.exists() for each in state.staged),
            ),
            service=deployment,
            always=True,
        )
    if maintenance:
        plan.add(
            "turn maintenance mode off (also after a failed step)",
            front_runtime.maintenance_command(False, front),
            StepKind.MAINTENANCE_MODE,
            _switch(inventory, front_runtime, front, on=False),
            service=front,
            always=True,
        )
    deadline = inventory.deploy.readiness_deadline_s

    def verify() -> str:
        kept = [str(each.aside) for each in state.staged if each.aside is not None]
        keeping = f"; the data from before the restore is kept in {', '.join(kept)}" if kept else ""
        ready = wait_ready(inventory, deadline)
        if not ready.ready:
            waiting = "; ".join(f"{what}: {why}" for what, why in ready.not_ready.items())
            raise RuntimeError(f"restored, but not ready after {ready.waited_s:.0f} s: {waiting}"
                               + keeping)  # fmt: skip
        canary = run_canary(inventory, CANARY_HOP_S)
        if canary.failed_hop == "setup":  # nothing to send it through: said, not failed
            return f"restored and ready in {ready.waited_s:.1f} s; no canary: {canary.problem}"
        if canary.failed_hop:
            raise RuntimeError(f"restored, but the canary failed: {canary.problem}{keeping}")
        removed = backup.discard_aside(state.staged)
        deleted = f"; deleted the data kept aside ({', '.join(removed)})" if removed else ""
        return (
            f"restored and healthy: ready in {ready.waited_s:.1f} s, canary passed "
            f"({canary.hops_ms.get('total')} ms){deleted}"
        )

    plan.add(
        f"wait until every service answers (up to {deadline:g} s), send the canary; then "
        "delete the data kept aside",
        "every HTTP /health, PostgreSQL SELECT 1, Redis PING; POST /api/messages through the "
        "frontend, its row, its processed id, GET /api/messages/ID",
        RESTORE,
        verify,
        service=deployment,
    )
    return plan.execute(ctx.gate) if apply else plan


def restore_backup(ctx: Context, *, apply: bool) -> Plan:
    """Restore the whole deployment from the backup named by the context's target (`latest`
    for the newest): its writers stopped, PostgreSQL, Redis's queue lists and the data paths
    restored, the writers started again, then readiness and the canary.

    Changes: reads the backup through first (each Redis snapshot in a scratch redis-server,
    data.tar listed), before anything stops. Stops the services that write to the stores
    (those the inventory's services: says depend on a restored PostgreSQL or Redis; role
    monitoring aside) through their runtimes; a writer no runtime can stop makes the restore
    a restore-live one, which needs --allow=restore-live. Unpacks the data paths beside the
    current ones; for each PostgreSQL target, in one transaction, TRUNCATEs the tables the
    dump holds and loads the dump's rows (data only: the schema must exist); for each Redis
    target, replaces the queue lists (queue, in-flight, dead letters, processed ids) in one
    MULTI/EXEC, leaving other keys alone; then puts the unpacked data paths in place, the
    current ones renamed aside. Starts the writers it stopped again, also when a step before
    failed (then also removing what was unpacked). Waits for every service to answer and sends
    the canary; once they pass, deletes the data kept aside (kept when they fail). Rows,
    queue entries and files written since the backup are lost. The backup must be complete
    (checksums match) or nothing is done.
    Privileges: the admin credentials (PostgreSQL: owner of the tables; Redis: DEL, RPUSH,
    MULTI, SCAN on the queue lists), write access to the data paths' parent folders (as
    their owner, or root to keep the archived owners), control of the writers' runtimes, and
    redis-server on this machine for the scratch Redis.
    Undo: only by restoring a newer backup: take one first (`python -m opsbook backup`).
    """
    return _restore(ctx, apply=apply, maintenance=False)


def restore_backup_in_maintenance(ctx: Context, *, apply: bool) -> Plan:
    """Restore the whole deployment from a backup as restore_backup does, with the frontend's
    maintenance page on from before the writers stop until they run again.

    Changes: those of restore_backup, and the frontend's maintenance page switched on (every
    path answers 503 with the page) before the writers are stopped and off again after they
    are started (also when a step failed), through the frontend's runtime.
    Privileges: those of restore_backup, and control of the frontend's runtime.
    Undo: only by restoring a newer backup; maintenance mode ends by itself, or with
    `python -m opsbook maintenance off`.
    """
    return _restore(ctx, apply=apply, maintenance=True)
