"""The maintenance-windows runbook: `opsbook maintenance run patch|upgrade|cleanup`.

A window is a frame around one action, under the deployment's lock (held from the first step
to the last, so that no fix and no deploy acts inside it), each step's intent and outcome in
the deployment's audit log (`check: MAINTENANCE`, `remediation:
opsbook.maintenance_window.<step>`; the maintenance page's own switches as `maintenance`'s):

    precheck    `opsbook check -m daily`; red: refused, nothing changed (unless --force)
    backup      opsbook's backup (the deploy's own, for patch and upgrade)
    on          the maintenance page on, through the frontend's runtime (`maintenance on`)
    action      patch, upgrade or cleanup (below)
    off         the maintenance page off: always, also when the action failed (a page that
                was on before the window is left on)
    postcheck   `opsbook check -m daily`, then the verdict

    patch       compose: the deployed services' images rebuilt (`docker compose build --pull
                --no-cache`, or `--no-cache` alone with --offline: no registry reachable, the
                base image as the engine has it) and rolled out as a release of their own
                (`patch-<UTC stamp>`) through `opsbook deploy` (opsbook.deploy): switch,
                readiness, the postdeploy gate, rollback. The sandbox and systemd/command
                hosts: not applicable, the host's packages are its OS's job.
    upgrade     `opsbook deploy --tag TAG` inside the window.
    cleanup     only what belongs to the deployment (never `docker system prune`): its compose
                project's stopped containers (by label), the tags of its released images'
                repositories that neither the compose file, nor any container on the engine, nor
                the current or previous release (releases.json) uses, its project's unused
                volumes only with --allow=prune-volumes, rotated logs (`NAME.1`, `NAME.2.gz`,
                ...) of the logs the inventory lists older than remediation.retention_days, and
                opsbook's backups past backup.retention_days (opsbook.backup.retention).

For patch and upgrade the page goes on once the backup is taken and off before the deploy's
readiness wait and postdeploy gate: they ask the public entry (the canary goes through it),
which the page would answer with 503.
"""

from __future__ import annotations

import json
import posixpath
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opsbook import releases
from opsbook.deploy import (
    Deploy,
    DeployError,
    Images,
    Trail,
    normal_id,
    proxies_of,
    pulled_repository,
    repository,
    run_checks,
    wait_proxying,
)
from opsbook.deploy import Usage as DeployUsage
from opsbook.inventory import Inventory
from opsbook.remediate.runtime import ComposeRuntime
from opsbook.report_files import make_folder, reports_group, restrict_tree

ACTIONS = ("patch", "upgrade", "cleanup")
ALLOWANCES = ("prune-volumes",)
AUDIT_CHECK = "MAINTENANCE"
MODULE = "opsbook.maintenance_window"
CHECKS_MARKER = "daily"
DAY_S = 86400
PROJECT_LABEL = "com.docker.compose.project"
STOPPED = ("created", "exited", "dead")

EXIT_DONE = 0
EXIT_POSTCHECKS = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_ACTION = 4
EXIT_STILL_ON = 5
EXIT_NOT_AUDITED = 11


class Usage(Exception):
    """The window cannot start: one line saying why."""


class Refused(Exception):
    """The window did not start: the lock is held, or the pre-checks are red."""


@dataclass(frozen=True)
class Removal:
    """One thing a cleanup removes: what it is, the exact command, and why it may go."""

    kind: str  # container, image, volume, log, backup
    name: str
    command: str
    why: str

    def line(self) -> str:
        return f"remove {self.kind} {self.name} ({self.why}): {self.command}"


@dataclass
class Result:
    code: int
    line: str
    evidence: Path | None = None


# -- cleanup: what belongs to the deployment -----------------------------------------------


def _lines(text: str) -> list[list[str]]:
    return [line.split("\t") for line in text.splitlines() if line.strip()]


def _container_facts(images: Images, ids: list[str]) -> list[list[str]]:
    """(ID, image ID, volume names) of each container; one that went away since it was listed
    (another stack's teardown) is left out, one that is still there and cannot be read is an
    error: an image or volume it uses must never be taken for unused."""
    volumes = '{{range .Mounts}}{{if eq .Type "volume"}} {{.Name}}{{end}}{{end}}'
    inspect = ("inspect", "--type", "container", "--format", "{{.Id}}\t{{.Image}}\t" + volumes)
    try:
        return [row for row in _lines(images.docker(*inspect, *ids)) if len(row) >= 2]
    except DeployError:
        rows = []
        for cid in ids:
            try:
                rows += [row for row in _lines(images.docker(*inspect, cid)) if len(row) >= 2]
            except DeployError:
                still = images.docker(
                    "ps", "--all", "--quiet", "--no-trunc", "--filter", f"id={cid}"
                )
                if still.strip():
                    raise
        return rows


def compose_removals(inventory: Inventory, allow: frozenset[str]) -> tuple[list[Removal], str]:
    """The compose project's containers, images and volumes a cleanup removes, and a note of
    what it keeps on purpose (unused volumes without --allow=prune-volumes)."""
    runtime = ComposeRuntime.from_inventory(inventory)
    images = Images(runtime)
    project = runtime.stack.project
    removals: list[Removal] = []
    listed = images.docker(
        "ps", "--all", "--no-trunc", "--filter", f"label={PROJECT_LABEL}={project}",
        "--format", "{{.ID}}\t{{.Names}}\t{{.State}}",
    )  # fmt: skip
    removed_ids = set()
    for cid, name, state in (row[:3] for row in _lines(listed) if len(row) >= 3):
        if state in STOPPED:
            removed_ids.add(cid)
            command = images.shown("rm", name)
            removals.append(Removal("container", name, command, f"{state}, project {project}"))
    # Images: only tags of the repositories the deployed services' images are in, where
    # opsbook deploy's releases pile up; the stack's other images (database, proxy) are not
    # released by opsbook, and their names are shared by other stacks on the same engine.
    try:
        services = Deploy(inventory, Path(), "cleanup", Path(), "", str).services()
    except DeployUsage as exc:
        raise DeployError(str(exc)) from None
    by_service = images.service_images(services)
    repositories = {repository(ref) for ref in by_service.values()}
    registry = inventory.deploy.registry
    if registry:
        # A pulled release keeps the registry's name beside the compose file's: untagging
        # only the latter would leave the image on the engine for good.
        repositories |= {pulled_repository(registry, ref) for ref in by_service.values()}
    keep: dict[str, str] = {}
    for ref in by_service.values():
        found = images.image_id(ref)
        if found:
            keep[normal_id(found)] = f"the compose file names it ({ref})"
    # Rollback needs the release before the current one: both are kept.
    recorded = releases.deployed(_state(inventory))
    for label, release in zip(("current", "previous"), reversed(recorded[-2:]), strict=False):
        for image_id in release.images.values():
            keep.setdefault(normal_id(image_id), f"the {label} release {release.tag}")
    # What every container on the engine runs and mounts: its image is kept unless the
    # container is removed here; its volumes are kept even then (a stopped database's data).
    every = images.docker("ps", "--all", "--quiet", "--no-trunc").split()
    mounted: set[str] = set()
    if every:
        for cid, image_id, *rest in _container_facts(images, every):
            mounted.update(" ".join(rest).split())
            if cid not in removed_ids:
                keep.setdefault(normal_id(image_id), "a container uses it")
    table = images.docker("image", "ls", "--no-trunc", "--format",
                          "{{.ID}}\t{{.Repository}}\t{{.Tag}}")  # fmt: skip
    for image_id, repo, tag in (row[:3] for row in _lines(table) if len(row) >= 3):
        if repo not in repositories or tag == "<none>" or normal_id(image_id) in keep:
            continue
        ref = f"{repo}:{tag}"
        why = "neither a container, the compose file, the current nor the previous release uses it"
        removals.append(Removal("image", ref, images.shown("rmi", ref), why))
    # Unused by our own reckoning: Podman answers `--filter dangling=true` beside a label
    # filter with volumes that are mounted.
    labelled = images.docker(
        "volume", "ls", "--quiet", "--filter", f"label={PROJECT_LABEL}={project}"
    ).split()
    volumes = [volume for volume in labelled if volume not in mounted]
    note = ""
    if volumes and "prune-volumes" in allow:
        for volume in volumes:
            command = images.shown("volume", "rm", volume)
            removals.append(Removal("volume", volume, command, f"unused, project {project}"))
    elif volumes:
        note = (
            f"kept {len(volumes)} unused volume(s) of {project} ({', '.join(volumes)}): "
            "they hold data; --allow=prune-volumes removes them"
        )
    return removals, note


def log_removals(inventory: Inventory) -> tuple[list[Removal], str]:
    """Rotated copies of the logs the inventory lists (every host's `logs`, and `audit.logs`)
    older than remediation.retention_days; never a live log."""
    from opsbook.errors import NotEvaluated
    from opsbook.probes.disk import entries
    from opsbook.remediation.disk import is_rotated_log
    from opsbook.targets import HostTarget

    days = inventory.remediation.retention_days
    timeout = inventory.thresholds.timeout_s
    removals: list[Removal] = []
    unread: list[str] = []
    for name, spec in sorted(inventory.hosts.items()):
        host = HostTarget(name, spec, timeout)
        logs = dict.fromkeys([*spec.logs, *inventory.audit.logs])
        by_directory: dict[str, list[str]] = {}
        for log in logs:
            directory, log_name = posixpath.split(log)
            by_directory.setdefault(directory, []).append(log_name)
        for directory, names in sorted(by_directory.items()):
            try:
                found = entries(host, directory, timeout_s=timeout)
            except NotEvaluated as exc:
                unread.append(f"{directory} on {name}: {exc}")
                continue
            for file in sorted(found, key=lambda f: f.path):
                base = posixpath.basename(file.path)
                rotated = any(is_rotated_log(log_name, base) for log_name in names)
                if file.is_dir or not rotated or file.age_s <= days * DAY_S:
                    continue
                why = f"rotated, {file.age_s / DAY_S:.0f} days old (retention {days} days)"
                command = f"{name}: rm -f -- {shlex.quote(file.path)}"
                removals.append(Removal("log", f"{name}:{file.path}", command, why))
    return removals, "; ".join(f"could not list {what}" for what in unread)


def backup_removals(inventory: Inventory) -> list[Removal]:
    from opsbook.backup import past_retention

    if inventory.backup is None:
        return []
    days = inventory.backup.retention_days
    return [
        Removal("backup", info.name, f"rm -r -- {shlex.quote(str(info.path))}",
                f"{info.age_s() / DAY_S:.0f} days old (retention {days} days; newest kept)")
        for info in past_retention(inventory.backup.dir, days)
    ]  # fmt: skip


def cleanup_plan(inventory: Inventory, allow: frozenset[str]) -> tuple[list[Removal], list[str]]:
    """Everything a cleanup removes now, in the order it removes it, and notes."""
    removals: list[Removal] = []
    notes: list[str] = []
    if inventory.compose is not None:
        found, note = compose_removals(inventory, allow)
        removals += found
        notes += [note] if note else []
    logs, note = log_removals(inventory)
    removals += logs
    notes += [note] if note else []
    removals += backup_removals(inventory)
    return removals, notes


def remove(inventory: Inventory, removals: list[Removal]) -> str:
    """Carry the cleanup's removals out, in order; the first that fails stops it (raised)."""
    from opsbook.backup import prune
    from opsbook.targets import HostTarget

    images = Images(ComposeRuntime.from_inventory(inventory)) if inventory.compose else None
    counts: dict[str, int] = {}
    backups = [r for r in removals if r.kind == "backup"]
    for removal in removals:
        if removal.kind == "container" and images is not None:
            images.docker("rm", removal.name)
        elif removal.kind == "image" and images is not None:
            images.docker("rmi", removal.name)
        elif removal.kind == "volume" and images is not None:
            images.docker("volume", "rm", removal.name)
        elif removal.kind == "log":
            host_name, path = removal.name.split(":", 1)
            host = HostTarget(host_name, inventory.hosts[host_name], inventory.thresholds.timeout_s)
            done = host.testinfra.run("rm -f -- %s", path)
            if done.rc != 0:
                raise RuntimeError(f"rm {path} on {host_name} exited {done.rc}: {done.stderr}")
        else:
            continue
        counts[removal.kind] = counts.get(removal.kind, 0) + 1
    if backups and inventory.backup is not None:
        # prune() deletes opsbook's backups only, never the newest: what the plan listed.
        counts["backup"] = len(prune(inventory.backup.dir, inventory.backup.retention_days))
    return "removed " + (", ".join(f"{n} {kind}(s)" for kind, n in counts.items()) or "nothing")


def _state(inventory: Inventory) -> Path:
    from opsbook.remediate.runner import state_dir

    return state_dir(inventory)


# -- the window -----------------------------------------------------------------------------


@dataclass
class Window:
    """One maintenance window (see the module's docstring)."""

    inventory: Inventory
    inventory_path: Path
    action: str
    reports_dir: Path
    run_id: str
    redact: Callable[[str], str]
    say: Callable[[str], None] = print
    allow: frozenset[str] = frozenset()
    tag: str | None = None
    force: bool = False
    offline: bool = False
    evidence: Path = field(init=False)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise Usage(f"unknown action {self.action!r} (one of {', '.join(ACTIONS)})")
        unknown = sorted(self.allow - set(ALLOWANCES))
        if unknown:
            raise Usage(f"--allow: unknown {', '.join(unknown)} (a window allows "
                        f"{', '.join(ALLOWANCES)})")  # fmt: skip
        if self.action == "upgrade" and not self.tag:
            raise Usage("upgrade needs --tag TAG (the release to deploy)")
        if self.action != "upgrade" and self.tag:
            raise Usage(f"--tag is for upgrade, not {self.action}")
        if self.tag:
            try:
                releases.check_tag(self.tag)
            except releases.ReleaseError as exc:
                raise Usage(str(exc)) from None
        if not self.inventory.endpoints("frontend"):
            raise Usage("the inventory has no frontend (http kind: frontend) for the page")
        self.stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.label = self.tag or f"{self.action}-{self.stamp}"
        self.trail = Trail(
            self.inventory, self.run_id, self.label, self.redact, self.say,
            check=AUDIT_CHECK, module=MODULE,
        )  # fmt: skip
        self.page_on = False  # turned on by this window (and not yet off)
        self.problems: list[str] = []  # the page not switched off before the postdeploy gate

    # -- what the window does -------------------------------------------------------------

    def not_applicable(self) -> str | None:
        """Why this action has nothing to do on this deployment, or None."""
        if self.action == "patch" and self.inventory.compose is None:
            return (
                "patch: not applicable: no compose project; the host's packages are its OS's "
                "job (apt-get upgrade by its administrator, or unattended-upgrades)"
            )
        return None

    def _job(self, remediator: Any | None = None) -> Deploy:
        """The deploy of a patch or upgrade (Usage when the deployment cannot take one)."""
        if self.action == "patch" and self.inventory.deploy.registry:
            raise Usage(
                "patch: this deployment's images come from deploy.registry: build a patched "
                "release there and run `maintenance run upgrade --tag TAG`"
            )
        problems = self.problems

        def page(on: bool) -> None:
            why = self._page(remediator, on=on) if remediator is not None else None
            if why and on:
                raise DeployError(why)
            if why:
                problems.append(why)
            if not on and job.kind() == "compose":
                # The switch's own wait for the proxies ended at once on the page's 503: wait
                # again, now that the entry passes requests on, until nginx has resolved the
                # replaced containers' new addresses.
                wait_proxying(self.inventory, proxies_of(self.inventory, job.services()))

        job = Deploy(
            self.inventory, self.inventory_path, self.tag or f"patch-{self.stamp}",
            self.reports_dir, self.run_id, self.redact, say=self.say, lock_held=True,
            build_options=self.build_options(),
            after_backup=lambda: page(True), before_ready=lambda: page(False),
        )  # fmt: skip
        try:
            if job.kind() == "compose":
                job.services()
            if self.inventory.backup is None:
                raise DeployUsage("the inventory has no backup: section (a window takes one)")
        except DeployUsage as exc:
            raise Usage(str(exc)) from None
        return job

    def deploys(self) -> bool:
        return self.action in ("patch", "upgrade")

    def build_options(self) -> tuple[str, ...]:
        if self.action != "patch":
            return ()
        return ("--no-cache",) if self.offline else ("--pull", "--no-cache")

    def plan(self) -> list[str]:
        """What the window would do, step by step (cleanup: exactly what it removes now)."""
        shown = f"python -m opsbook check -m {CHECKS_MARKER} --inventory={self.inventory_path}"
        lines = [
            f"precheck: {shown} (red: stop, nothing changed"
            + (", unless --force" if not self.force else "; --force: go on anyway")
            + ")"
        ]
        if self.deploys():
            tag = self._job().tag
            how = {
                (): "found, pulled or built as opsbook deploy does",
                ("--no-cache",): "rebuilt with `docker compose build --no-cache` (--offline: "
                "the base image as the engine has it)",
                ("--pull", "--no-cache"): "rebuilt with `docker compose build --pull "
                "--no-cache` (the base image's and the packages' security updates)",
            }[self.build_options()]
            lines += [
                f"action: opsbook deploy --tag {tag}: gate (-m predeploy), backup, "
                "maintenance page on, images " + how + ", switch, maintenance page off, "
                "readiness, postdeploy gate with the canary, rollback if it fails",
            ]
        else:
            lines += [
                "backup: opsbook backup",
                "on: opsbook maintenance on",
            ]
            removals, notes = cleanup_plan(self.inventory, self.allow)
            lines += [f"action: {r.line()}" for r in removals] or ["action: nothing to remove"]
            lines += [f"action: {note}" for note in notes]
            lines += ["off: opsbook maintenance off (always)"]
        lines.append(f"postcheck: {shown}")
        return [self.redact(line) for line in lines]

    # -- running ---------------------------------------------------------------------------

    def run(self) -> Result:
        from opsbook.remediate.runner import Remediator

        na = self.not_applicable()
        if na:
            return Result(EXIT_DONE, na)
        if self.deploys():
            self._job()
        try:
            gid = reports_group(None)
            self.evidence = (
                self.reports_dir / "maintenance" / f"{self.stamp}-{self.action}-{self.run_id}"
            )
            make_folder(self.evidence, gid)
        except OSError as exc:
            raise Usage(f"reports folder {self.reports_dir}: {exc.strerror or exc}") from None
        remediator = Remediator(self.inventory, self.reports_dir, self.run_id)
        if not remediator.take_lock():
            return Result(EXIT_REFUSED, remediator._lock_problem or "no lock", self.evidence)
        try:
            result = self._window(remediator)
        finally:
            remediator.release_lock()
            summary = {
                "action": self.action,
                "window": self.label,
                "deployment": self.inventory.name,
                "steps": self.trail.steps,
            }
            (self.evidence / "maintenance.json").write_text(json.dumps(summary, indent=2) + "\n")
            restrict_tree(self.evidence, gid)
        if self.trail.not_audited:
            result.line += f"; {self.trail.not_audited}"
            if result.code == EXIT_DONE:
                result.code = EXIT_NOT_AUDITED
        result.evidence = self.evidence
        return result

    def _checks(self, when: str) -> tuple[int, str]:
        folder = self.evidence / when
        folder.mkdir(exist_ok=True)
        return run_checks(CHECKS_MARKER, self.inventory_path, self.reports_dir, folder)

    def _window(self, remediator: Any) -> Result:
        shown = f"python -m opsbook check -m {CHECKS_MARKER} --inventory={self.inventory_path}"
        try:
            with self.trail.step("precheck", "pre-checks", [shown]) as step:
                code, bad = self._checks("precheck")
                verdict = "green" if code == 0 else f"red (exit {code}: {bad or 'see the log'})"
                step.result = verdict
                if code != 0 and not self.force:
                    raise Refused(f"pre-checks {verdict}; nothing was changed (--force to go on)")
        except Refused as exc:
            return Result(EXIT_REFUSED, str(exc))
        except DeployError as exc:
            return Result(EXIT_REFUSED, f"{exc}; nothing was changed")
        failure: str | None = None
        try:
            failure = self._deploy(remediator) if self.deploys() else self._cleanup(remediator)
        except Exception as exc:
            failure = str(exc)
        finally:
            still_on = self._page(remediator, on=False) if self.page_on else None
        with self.trail.step("postcheck", "post-checks", [shown]) as step:
            code, bad = self._checks("postcheck")
            step.result = "green" if code == 0 else f"red (exit {code}: {bad or 'see the log'})"
        if still_on:
            return Result(EXIT_STILL_ON, f"the maintenance page is still on: {still_on}"
                          + (f"; {failure}" if failure else ""))  # fmt: skip
        if failure:
            return Result(
                EXIT_ACTION, f"{self.action} failed: {failure}; post-checks {step.result}"
            )
        if code != 0:
            return Result(EXIT_POSTCHECKS, f"{self.action} done; post-checks {step.result}")
        return Result(EXIT_DONE, f"{self.action} done; post-checks green")

    def _page(self, remediator: Any, *, on: bool) -> str | None:
        """Switch the maintenance page through `maintenance on|off` (its own audit entries);
        None when done, else why not. A page already on before the window is left on."""
        from opsbook.remediate.context import Context
        from opsbook.remediation.maintenance import maintenance_off, maintenance_on

        fix = maintenance_on if on else maintenance_off
        frontend = sorted(self.inventory.endpoints("frontend"))[0]
        ctx = Context(self.inventory, "maintenance", "http", frontend, fix=fix)
        attempt = remediator.apply_one(fix, ctx, apply=True, redact=self.redact)
        self.say(self.redact(f"{'on' if on else 'off'}: {attempt.summary()}"))
        if attempt.not_audited:
            self.trail.not_audited = attempt.not_audited
        if attempt.status == "applied":
            self.page_on = on
            return None
        if attempt.status == "nothing-to-do":
            return None  # on already (someone else's page: left on), or off already
        return f"maintenance {'on' if on else 'off'} {attempt.status}: {attempt.reason}"

    def _cleanup(self, remediator: Any) -> str | None:
        from opsbook import backup

        if self.inventory.backup is not None:
            with self.trail.step("backup", "backup", backup.plan_backup(self.inventory)) as step:
                try:
                    step.result = f"wrote {backup.take_backup(self.inventory).path}"
                except backup.BackupError as exc:
                    raise DeployError(f"backup failed: {exc}") from None
        why = self._page(remediator, on=True)
        if why:
            return why
        removals, notes = cleanup_plan(self.inventory, self.allow)
        with self.trail.step("action", "cleanup", [r.line() for r in removals]) as step:
            step.result = remove(self.inventory, removals)
            if notes:
                step.result += "; " + "; ".join(notes)
        return None

    def _deploy(self, remediator: Any) -> str | None:
        from opsbook.deploy import EXIT_DEPLOYED

        job = self._job(remediator)
        tag = job.tag
        commands = [f"opsbook deploy --tag {tag}" + (" (" + " ".join(self.build_options())
                    + ")" if self.build_options() else "")]  # fmt: skip
        with self.trail.step("action", f"{self.action}: deploy {tag}", commands) as step:
            result = job.run()
            step.result = f"exit {result.code}: {result.line}"
        if self.trail.not_audited == "" and job.trail.not_audited:
            self.trail.not_audited = job.trail.not_audited
        if result.code != EXIT_DEPLOYED:
            return result.line
        return "; ".join(self.problems) or None
