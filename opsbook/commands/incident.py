"""`python -m opsbook incident collect|contain|release`: the incident runbook's first moves.

    python -m opsbook incident collect [--inventory PATH] [--out DIR] [--dump-database]
    python -m opsbook incident contain --allow=contain [--reason TEXT] [--inventory PATH]
    python -m opsbook incident release --allow=contain [--inventory PATH]

`collect` gathers the evidence into one folder. `contain` closes the public entry (the
runbook's `nginx -s stop`): the service of each http target of kind frontend is stopped through
its own runtime, the containment is recorded in the deployment's state directory, and a TCP
connection to the entry from here must then be refused or get no answer. `release` starts it
again and expects /health to answer 200. Both print their plan, then carry it out under the
remediation lock, written ahead to the deployment's audit log (intent and outcome); both are
steps of the risky kind `contain`, so they need `--allow=contain` (or `remediation.allow`).
Asking for the state the entry is already in changes nothing and says so.
(opsbook.remediation.containment; docs/remediation.md#incident-containment.)

Collected, for every host of the inventory: its service logs (and, for a sandbox, every log of
the sandbox), the processes (`ps`), the listening sockets (`ss -ltnp`); the status of the
stack's components (the sandbox's, or the compose project's containers through `docker ps`
when the engine answers, with each container's log of the last 24 hours); with
--dump-database, a `pg_dump -Fc` of each database made as its admin role, named
`*.incident-backup.dump`. Everything goes into DIR (default reports/incident-<UTC stamp>, mode
0700) with manifest.json: SHA-256 and size of every file and what could not be collected.
Nothing is stopped or changed.

The dump is opt-in: it reads every table of a database that may already be struggling, and it
copies every chat into the evidence folder.

`collect` exit codes: 0 everything collected; 1 some evidence could not be collected (each on
stderr; the folder and its manifest are still written); 2 bad usage.

`contain` and `release` exit codes (those of `opsbook maintenance`): 0 done and verified from
outside, or nothing to do; 1 done but not verified (the entry still takes connections after
`contain`, or does not answer 200 after `release`), or a step failed (what was attempted is
printed); 2 bad usage (no inventory, no public entry, a runtime that cannot stop or start it,
an unknown --allow kind); 3 refused (not allowed, or another run holds the remediation lock);
11 done, but the audit log could not take its entry.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsbook.inventory import Host, Inventory, InventoryError, load_inventory
from opsbook.locations import inventory_path, reports_dir
from opsbook.remediate.runtime import runtime_for

if TYPE_CHECKING:
    from opsbook.remediate.plan import Plan

EXIT_INCOMPLETE = 1
LOG_BYTES = 64 * 1024 * 1024  # the tail of each log: a day of a busy service
COMMAND_TIMEOUT_S = 30
DUMP_TIMEOUT_S = 3600


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "incident",
        help="the incident runbook: collect evidence, contain or release the public entry",
    )
    parser.set_defaults(run=run)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    collect = actions.add_parser("collect", help="logs, status, sockets (and a dump) into DIR")
    collect.add_argument("--inventory", type=Path, default=None, help="inventory YAML")
    collect.add_argument("--out", type=Path, default=None, help="evidence folder to create")
    collect.add_argument(
        "--dump-database", action="store_true", help="also pg_dump each database (admin role)"
    )
    for action, what in (
        ("contain", "close the public entry (stop its service) and verify it takes no connection"),
        ("release", "open the public entry again (start its service) and verify /health is 200"),
    ):
        sub = actions.add_parser(action, help=what)
        sub.add_argument("--inventory", type=Path, default=None, help="inventory YAML")
        sub.add_argument("--reports-dir", type=Path, default=None, help="default: reports/")
        sub.add_argument(
            "--allow", action="append", default=[], metavar="KIND",
            help="allow a risky kind of step: contain is needed",
        )  # fmt: skip
        if action == "contain":
            sub.add_argument("--reason", default="", help="why, for the record and the reports")


class _Evidence:
    """The folder being filled, and the notes about what could not be collected."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.missing: list[str] = []
        root.mkdir(mode=0o700, parents=True, exist_ok=False)

    def write(self, relative: str, data: bytes) -> None:
        path = self.root / relative
        created = False
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            created = True
            with os.fdopen(fd, "wb") as stream:
                stream.write(data)
        except OSError as exc:
            # A full disk, often the incident itself: a cut file would pass for the whole one.
            if created:
                path.unlink(missing_ok=True)
            self.note(f"{relative}: not written: {exc.strerror or exc}")

    def note(self, problem: str) -> None:
        self.missing.append(problem)

    def manifest(self, inventory: Inventory, started: datetime) -> dict[str, Any]:
        files = []
        for path in sorted(p for p in self.root.rglob("*") if p.is_file()):
            digest = hashlib.sha256()
            with path.open("rb") as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    digest.update(block)
            files.append(
                {
                    "path": str(path.relative_to(self.root)),
                    "sha256": digest.hexdigest(),
                    "bytes": path.stat().st_size,
                }
            )
        return {
            "kind": "opsbook incident evidence",
            "inventory": inventory.name,
            "started": started.isoformat(timespec="seconds"),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "stopped_anything": False,
            "files": files,
            "not_collected": self.missing,
        }


def _safe_name(path: str) -> str:
    return path.strip("/").replace("/", "__") or "root"


def _host_evidence(evidence: _Evidence, name: str, spec: Host, logs: list[str]) -> None:
    # The host probes: the same log tail as LOG-001 and SEC-050, every command under timeout.
    from opsbook.probes.host import NotObserved, run
    from opsbook.probes.logs import log_tail
    from opsbook.targets import HostTarget

    host = HostTarget(name, spec)
    try:
        host.testinfra.run("true")
    except Exception as exc:  # testinfra raises its backends' own errors
        evidence.note(f"host {name}: cannot reach {spec.spec}: {exc}")
        return
    for what, command in (("processes.txt", "ps auxww"), ("sockets.txt", "ss -ltnp")):
        try:
            done = run(host, command, command, timeout_s=COMMAND_TIMEOUT_S)
        except NotObserved as exc:
            evidence.note(str(exc))
            continue
        if done.rc == 0:
            evidence.write(f"hosts/{name}/{what}", done.stdout_bytes)
        else:
            evidence.note(f"host {name}: {command} failed: {done.stderr.strip()[:200]}")
    for log in logs:
        try:
            tail = log_tail(host, log, timeout_s=COMMAND_TIMEOUT_S, max_bytes=LOG_BYTES)
        except NotObserved as exc:
            evidence.note(f"host {name}: log {log}: {exc.reason}")
            continue
        evidence.write(f"hosts/{name}/logs/{_safe_name(log)}", tail.data)


def _sandbox_logs(directory: Path) -> list[str]:
    found = [*directory.glob("logs/*.log"), *directory.glob("nginx/logs/*.log")]
    return sorted(str(p) for p in found)


def _stack_status(evidence: _Evidence, inventory: Inventory) -> None:
    if inventory.sandbox is not None:
        runtime = runtime_for(inventory)
        lines = runtime.status_lines() if runtime is not None else []
        evidence.write("status/sandbox.txt", ("\n".join(lines) + "\n").encode())
    if inventory.compose is not None:
        env = dict(os.environ)
        if inventory.compose.docker_host:
            env["DOCKER_HOST"] = inventory.compose.docker_host
        command = [
            "docker", "ps", "--all", "--no-trunc",
            "--filter", f"label=com.docker.compose.project={inventory.compose.project}",
        ]  # fmt: skip
        try:
            done = subprocess.run(
                command, capture_output=True, timeout=COMMAND_TIMEOUT_S, env=env, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            evidence.note(f"compose {inventory.compose.project}: docker ps: {exc}")
            return
        if done.returncode != 0:
            reason = done.stderr.decode("utf-8", "replace").strip()[:200]
            evidence.note(f"compose {inventory.compose.project}: docker ps failed: {reason}")
            return
        evidence.write("status/containers.txt", done.stdout)
        _compose_logs(evidence, inventory, env)


def _compose_logs(evidence: _Evidence, inventory: Inventory, env: dict[str, str]) -> None:
    """The last 24 hours of each container's log (`docker logs --since 24h`), its tail capped
    like a host log's: what the runbook's `docker-compose logs` would show."""
    assert inventory.compose is not None
    project = inventory.compose.project
    try:
        listed = subprocess.run(
            ["docker", "ps", "--all", "--format", "{{.Names}}",
             "--filter", f"label=com.docker.compose.project={project}"],
            capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, env=env, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        evidence.note(f"compose {project}: docker ps: {exc}")
        return
    for name in listed.stdout.split():
        try:
            done = subprocess.run(
                ["docker", "logs", "--since", "24h", "--timestamps", name],
                capture_output=True, timeout=COMMAND_TIMEOUT_S, env=env, check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            evidence.note(f"compose {project}: docker logs {name}: {exc}")
            continue
        if done.returncode != 0:
            reason = done.stderr.decode("utf-8", "replace").strip()[:200]
            evidence.note(f"compose {project}: docker logs {name} failed: {reason}")
            continue
        # Containers write to stdout and stderr alike; both, stdout first.
        evidence.write(
            f"containers/{_safe_name(name)}.log", (done.stdout + done.stderr)[-LOG_BYTES:]
        )


def _dump_databases(evidence: _Evidence, inventory: Inventory) -> None:
    from opsbook.backup.tools import (
        BackupError,
        pg_client,
        postgres_admin_connection,
        server_major,
    )

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for name, pg in inventory.postgres.items():
        if pg.admin is None or pg.admin.password is None:
            evidence.note(f"postgres {name}: no admin credentials in the inventory: no dump")
            continue
        try:
            # The pg_dump of the server's own major version or newer, never an older one.
            with postgres_admin_connection(pg, "opsbook-incident") as conn:
                dump = pg_client("pg_dump", server_major(conn), f"postgres {name}")
        except BackupError as exc:
            evidence.note(f"{exc}: no dump")
            continue
        relative = f"database/{name}-{pg.database}-{stamp}.incident-backup.dump"
        target = evidence.root / relative
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The password travels in the environment, never on the command line (ps shows argv).
        env = {**os.environ, "PGPASSWORD": pg.admin.password.resolve().reveal()}
        command = [
            dump, "--format=custom", f"--file={target}",
            f"--host={pg.host}", f"--port={pg.port}", f"--username={pg.admin.user}",
            f"--dbname={pg.database}", "--no-password",
        ]  # fmt: skip
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=DUMP_TIMEOUT_S, env=env,
                check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            evidence.note(f"postgres {name}: pg_dump: {exc}")
            continue
        if done.returncode != 0:
            target.unlink(missing_ok=True)
            evidence.note(f"postgres {name}: pg_dump failed: {done.stderr.strip()[:300]}")
        else:
            target.chmod(0o600)


def run(args: argparse.Namespace) -> int:
    if args.action in ("contain", "release"):
        return _contain_or_release(args)
    started = datetime.now(UTC)
    path = inventory_path(args.inventory)
    try:
        inventory = load_inventory(path)
    except InventoryError as exc:
        print(f"incident collect: {exc}", file=sys.stderr)
        return 2
    out = args.out or reports_dir() / f"incident-{started.strftime('%Y%m%dT%H%M%SZ')}"
    try:
        evidence = _Evidence(out)
    except OSError as exc:
        print(f"incident collect: cannot create {out}: {exc.strerror}", file=sys.stderr)
        return 2
    extra = _sandbox_logs(inventory.sandbox.dir) if inventory.sandbox is not None else []
    for name, host in inventory.hosts.items():
        logs = list(dict.fromkeys([*host.logs, *(extra if host.spec == "local://" else [])]))
        _host_evidence(evidence, name, host, logs)
    _stack_status(evidence, inventory)
    if args.dump_database:
        _dump_databases(evidence, inventory)
    else:
        evidence.note("database dump: not taken (add --dump-database)")
    manifest = evidence.manifest(inventory, started)
    evidence.write("manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
    written = "manifest.json" if (out / "manifest.json").exists() else "NO manifest.json"
    print(f"{out}: {len(manifest['files'])} files, {written}")
    problems = [p for p in evidence.missing if not p.startswith("database dump: not taken")]
    for problem in evidence.missing:
        print(f"  not collected: {problem}", file=sys.stderr)
    return EXIT_INCOMPLETE if problems else 0


def _contain_or_release(args: argparse.Namespace) -> int:
    """`incident contain|release`: as `opsbook maintenance` switches its page, through the
    Remediator (lock, allow-list, intent and outcome in the audit log)."""
    from collections.abc import Callable

    from opsbook.commands.applied import said
    from opsbook.remediate.context import Context
    from opsbook.remediate.plan import parse_allow
    from opsbook.remediate.runner import Remediator
    from opsbook.remediation.containment import (
        ContainmentUnsupported,
        containing,
        release_entry,
    )
    from opsbook.secrets import Redactor

    action = f"incident {args.action}"
    try:
        allow = parse_allow(args.allow)
        inventory = load_inventory(inventory_path(args.inventory))
    except (ValueError, InventoryError) as exc:
        print(f"{action}: {exc}", file=sys.stderr)
        return 2
    fix: Callable[..., Plan] = (
        containing(str(args.reason)) if args.action == "contain" else release_entry
    )
    frontends = sorted(inventory.endpoints("frontend"))
    ctx = Context(inventory, "incident", "http", frontends[0] if frontends else "", fix=fix)
    redact = Redactor(secret.reveal() for secret in inventory.secrets())
    try:
        # The plan is shown before the lock is asked for; an entry no runtime can stop is a
        # usage error, not a failed step.
        plan = fix(ctx, apply=False)
    except ContainmentUnsupported as exc:
        print(f"{action}: {exc}", file=sys.stderr)
        return 2
    print(f"{action}: plan")
    for line in plan.lines():
        print(redact(f"  {line}"))
    if plan.nothing_to_do is not None:
        return 0
    reports = args.reports_dir or reports_dir()
    remediator = Remediator(inventory, reports, f"cli-{os.getpid()}", frozenset(allow))
    return said(action, remediator.apply_one(fix, ctx, apply=True, redact=redact), redact)
