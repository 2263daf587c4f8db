"""`opsbook deploy`: the runbook's deploy, gated, audited, and rolled back when it fails.

A deploy of release TAG is a sequence of steps; each writes its intent to the deployment's
audit log before it acts and its outcome after (as a fix does), and the whole deploy holds the
deployment's remediation lock, so that no fix and no other deploy acts meanwhile.

    gate        the inventory's gate commands (deploy.gate_commands, in order: the runbook's
                tests, lint, build), then the predeploy checks (`opsbook check -m predeploy`);
                each one's output is kept in the deploy's report folder. A failure: nothing
                is changed.
    backup      opsbook's backup (opsbook.backup), unless --no-backup
    images      compose: TAG's image of each image the deployed services run: one already on
                the engine is used as it is (a tag is a release, never rebuilt), else pulled from
                deploy.registry, else built (`docker compose build`, DOCKER_BUILDKIT=0) and
                tagged TAG
    record      what runs now and what TAG is, in the state directory (opsbook.releases)
    switch      compose: the compose file's image names pointed at TAG's images (`docker tag`),
                then `docker compose up --detach --force-recreate --no-deps SERVICE` for each;
                commands: deploy.commands.deploy with {tag} on deploy.host
    ready       every target answers within deploy.readiness_deadline_s
    postdeploy  the postdeploy checks (`opsbook check -m postdeploy`): readiness, the canary,
                and ROLLBACK-001 against the predeploy run of the gate
    rollback    only when switch, ready or postdeploy failed: the release recorded before TAG
                is brought back the same way, then readiness and the canary

Why the image names of the compose file are moved rather than replaced: every other command
(`docker compose up`, a fix's recreate, the audit's comparison of what runs with the file)
reads the file, so the release must be what the file names, or the next recreate would undo the
deploy. Each release keeps its own tag as well (`docker inspect` shows it among the image's
tags), and what ran before opsbook's first deploy is tagged `predeploy-<UTC stamp>` so that it
is kept.

The exit codes are the command's (opsbook.commands.deploy).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opsbook import releases
from opsbook.canary import run_canary, wait_ready
from opsbook.compose import ComposeError
from opsbook.inventory import Host, Inventory
from opsbook.releases import DeployedRelease, ReleaseError
from opsbook.remediate.audit import AuditKeyError, AuditLog
from opsbook.remediate.lock import RemediationLock
from opsbook.remediate.runner import AUDIT, LOCK, STATE_MODE, audit_log, state_dir
from opsbook.remediate.runtime import ComposeRuntime
from opsbook.report_files import make_folder, reports_group, restrict_tree
from opsbook.waiting import until

EXIT_DEPLOYED = 0
EXIT_GATE = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_STEP = 4
EXIT_ROLLBACK_FAILED = 5
EXIT_NOT_AUDITED = 11

# The services a deploy replaces when the inventory does not list them: the application.
DEPLOYED_ROLES = ("api", "consumer")
DOCKER_TIMEOUT_S = 120.0
BUILD_TIMEOUT_S = 1800.0
PULL_TIMEOUT_S = 600.0
# A postdeploy or predeploy run of the checks; a hung one is cut off at this.
CHECKS_TIMEOUT_S = 1800.0
CANARY_HOP_S = 10.0
TAIL_LINES = 20
AUDIT_CHECK = "DEPLOY"


class DeployError(Exception):
    """A step of the deploy failed: one line saying which and why."""


class GateFailed(DeployError):
    """A gate said no (a gate command, the predeploy or postdeploy checks, readiness)."""


class Usage(Exception):
    """The deploy cannot start: bad tag, nothing to deploy with, no backup section."""


# -- the engine's images ----------------------------------------------------------------------


def repository(ref: str) -> str:
    """An image reference without its tag: `localhost/opsbook-app:dev` -> `localhost/opsbook-app`
    (a registry's port is not a tag)."""
    name, colon, tag = ref.rpartition(":")
    return name if colon and "/" not in tag else ref


def tagged(ref: str, tag: str) -> str:
    return f"{repository(ref)}:{tag}"


def pulled_repository(registry: str, ref: str) -> str:
    """Where `deploy.registry` holds the releases of an image reference: the registry's folder
    and the reference's last name (`registry.example:5000/chat` and `localhost/opsbook-app:dev`
    -> `registry.example:5000/chat/opsbook-app`)."""
    return f"{registry.rstrip('/')}/{repository(ref).rsplit('/', 1)[-1]}"


def short_id(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


class Images:
    """The images of a compose deployment on its engine, through the docker CLI on the same
    engine as `docker compose` (DOCKER_HOST from the inventory). Every call is bounded."""

    def __init__(self, runtime: ComposeRuntime) -> None:
        self.runtime = runtime
        self.driver = runtime.stack

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.driver.docker_host:
            env["DOCKER_HOST"] = self.driver.docker_host
        return env

    def shown(self, *args: str) -> str:
        """The command as a person would type it (for the audit log and the plan)."""
        host = f"DOCKER_HOST={self.driver.docker_host} " if self.driver.docker_host else ""
        return f"{host}{shlex.join(['docker', *args])}"

    def docker(self, *args: str, timeout: float = DOCKER_TIMEOUT_S) -> str:
        try:
            done = subprocess.run(
                ["docker", *args], env=self._env(), capture_output=True, text=True,
                timeout=timeout, stdin=subprocess.DEVNULL, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise DeployError(f"docker {args[0]}: no answer in {timeout:.0f} s") from None
        except OSError as exc:
            raise DeployError(f"docker {args[0]}: {exc.strerror or exc}") from None
        if done.returncode != 0:
            last = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
            why = last[-1].strip() if last else f"exit status {done.returncode}"
            raise DeployError(f"`{shlex.join(['docker', *args])}` failed: {why}")
        return done.stdout

    def image_id(self, ref: str) -> str | None:
        """The ID of the image `ref` names on the engine, or None when there is none."""
        try:
            return self.docker("image", "inspect", "--format", "{{.Id}}", ref).strip() or None
        except DeployError:
            return None

    def tag(self, source: str, ref: str) -> None:
        self.docker("tag", source, ref)

    def service_images(self, services: tuple[str, ...]) -> dict[str, str]:
        """The image the compose file names for each service (`docker compose config`)."""
        try:
            config = json.loads(self.driver.compose("config", "--format", "json"))
        except (ComposeError, ValueError) as exc:
            raise DeployError(f"docker compose config: {exc}") from None
        declared = config.get("services", {})
        images = {}
        for service in services:
            image = declared.get(service, {}).get("image")
            if service not in declared:
                raise DeployError(f"the compose file has no service {service}")
            if not image:
                raise DeployError(f"the compose file names no image for {service}")
            images[service] = str(image)
        return images

    def running(self, service: str) -> set[str]:
        """The IDs of the images the service's containers run (empty when it has none)."""
        try:
            ids = self.driver.compose("ps", "--all", "--quiet", service).split()
        except ComposeError as exc:
            raise DeployError(f"docker compose ps {service}: {exc}") from None
        if not ids:
            return set()
        out = self.docker("inspect", "--format", "{{.Image}}", *ids)
        return {normal_id(line) for line in out.split() if line.strip()}


def normal_id(image_id: str) -> str:
    """Image IDs as the engines give them: with or without `sha256:`."""
    return image_id if image_id.startswith("sha256:") else f"sha256:{image_id}"


# -- the audit trail of a deploy --------------------------------------------------------------


@dataclass
class Step:
    """One step as the audit log and the terminal see it."""

    name: str
    summary: str
    commands: list[str]
    result: str = ""
    label: str = "deploy"

    def lines(self) -> list[str]:
        done = f" -> {self.result}" if self.result else ""
        return [f"[{self.label}] {self.summary}: {c}{done}" for c in self.commands] or [
            f"[{self.label}] {self.summary}{done}"
        ]


@dataclass
class Trail:
    """Writes each step's intent and outcome to the deployment's audit log, and says them.
    `check` and `module` name the entries (a maintenance window's steps are not a deploy's)."""

    inventory: Inventory
    run_id: str
    tag: str
    redact: Callable[[str], str]
    say: Callable[[str], None]
    log: AuditLog | None = None
    check: str = AUDIT_CHECK
    module: str = "opsbook.deploy"
    not_audited: str = ""
    steps: list[dict[str, Any]] = field(default_factory=list)

    def _append(self, record: dict[str, Any]) -> int | None:
        try:
            if self.log is None:
                self.log = audit_log(self.inventory, create_key=True)
            entry = self.log.append(record)
        except (OSError, AuditKeyError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            self.not_audited = f"NOT in the audit log {state_dir(self.inventory) / AUDIT}: {why}"
            return None
        if self.log.unanchored:
            self.not_audited = self.log.unanchored
        return int(entry["seq"])

    def _record(self, event: str, step: Step, **more: Any) -> int | None:
        return self._append(
            {
                "event": event,
                "run": self.run_id,
                "check": self.check,
                "target": f"deployment/{self.inventory.name}",
                "remediation": f"{self.module}.{step.name}",
                "release": self.tag,
                **{k: self.redact(v) if isinstance(v, str) else v for k, v in more.items()},
                "steps": [self.redact(line) for line in step.lines()],
            }
        )

    @contextlib.contextmanager
    def step(
        self, name: str, summary: str, commands: list[str], *, must_audit: bool = True
    ) -> Iterator[Step]:
        """Run one step: intent first (a step whose intent cannot be written does not act,
        unless it is a rollback, which acts anyway and says so), then its outcome."""
        step = Step(name, summary, commands, label=self.check.lower())
        self.say(f"{name}: {summary}")
        intent = self._record("intent", step)
        if intent is None and must_audit:
            raise DeployError(f"{name}: not done: the audit log cannot take its intent")
        try:
            yield step
        except BaseException as exc:
            reason = str(exc) if isinstance(exc, Exception) else type(exc).__name__
            self._record("outcome", step, intent=intent, status="failed", reason=reason)
            self.steps.append({"step": name, "status": "failed", "reason": self.redact(reason)})
            raise
        self._record("outcome", step, intent=intent, status="applied", reason=step.result)
        self.steps.append({"step": name, "status": "done", "result": self.redact(step.result)})
        if step.result:
            self.say(f"  {step.result}")


# -- the deploy -------------------------------------------------------------------------------


@dataclass
class Result:
    code: int
    line: str
    evidence: Path | None = None


@dataclass
class Deploy:
    """One `opsbook deploy` of release `tag` (see the module's docstring)."""

    inventory: Inventory
    inventory_path: Path
    tag: str
    reports_dir: Path
    run_id: str
    redact: Callable[[str], str]
    say: Callable[[str], None] = print
    backup: bool = True
    previous: str | None = None  # commands: the release running now, when none is recorded
    # A maintenance window (opsbook.maintenance_window) runs a deploy inside its own: it holds
    # the deployment's lock already, rebuilds with its own build options (--pull, --no-cache),
    # turns the maintenance page on once the backup is taken and off before readiness and the
    # postdeploy gate (which ask the public entry, the canary through it).
    lock_held: bool = False
    build_options: tuple[str, ...] = ()
    after_backup: Callable[[], None] | None = None
    before_ready: Callable[[], None] | None = None
    evidence: Path = field(init=False)

    def __post_init__(self) -> None:
        releases.check_tag(self.tag)
        self.state = state_dir(self.inventory)
        self.settings = self.inventory.deploy
        self.trail = Trail(self.inventory, self.run_id, self.tag, self.redact, self.say)
        self.backup_name: str | None = None

    # -- what is deployed where --------------------------------------------------------------

    def kind(self) -> str:
        if self.inventory.sandbox is not None:
            raise Usage(
                "the sandbox deploys its releases with opsbook.releases (docs/deploy-and-"
                "backup.md#the-sandboxs-releases), not opsbook deploy"
            )
        if self.inventory.compose is not None:
            return "compose"
        if self.settings.commands is not None:
            return "commands"
        raise Usage("nothing to deploy with: the inventory has no compose: and no deploy.commands")

    def services(self) -> tuple[str, ...]:
        if self.settings.services:
            return self.settings.services
        chosen = tuple(
            name for name, s in self.inventory.services.items() if s.role in DEPLOYED_ROLES
        )
        if not chosen:
            raise Usage(
                "deploy.services is not set and no service has role "
                f"{' or '.join(DEPLOYED_ROLES)}: say which compose services a deploy replaces"
            )
        return chosen

    # -- running ---------------------------------------------------------------------------------

    def run(self) -> Result:
        kind = self.kind()
        if self.backup and self.inventory.backup is None:
            raise Usage("the inventory has no backup: section (a deploy takes a backup first; "
                        "--no-backup to deploy without one)")  # fmt: skip
        services = self.services() if kind == "compose" else ()
        try:
            self._make_evidence()
        except OSError as exc:
            raise Usage(f"reports folder {self.reports_dir}: {exc.strerror or exc}") from None
        lock = RemediationLock(self.state / LOCK)
        try:
            self.state.mkdir(mode=STATE_MODE, parents=True, exist_ok=True)
            taken = self.lock_held or lock.acquire(f"deploy {self.tag} run {self.run_id}")
        except OSError as exc:
            why = f"cannot take the lock in {self.state}: {exc.strerror or exc}"
            return Result(EXIT_REFUSED, why, self.evidence)
        if not taken:
            why = f"another run holds the lock ({lock.holder()})"
            return Result(EXIT_REFUSED, why, self.evidence)
        try:
            if kind == "compose":
                result = self._deploy_compose(services)
            else:
                result = self._deploy_commands()
        finally:
            lock.release()
            self._write_summary()
        if self.trail.not_audited:
            result.line += f"; {self.trail.not_audited}"
            if result.code == EXIT_DEPLOYED:
                result.code = EXIT_NOT_AUDITED
        result.evidence = self.evidence
        return result

    def _make_evidence(self) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.gid = reports_group(None)
        self.evidence = self.reports_dir / "deploys" / f"{stamp}-{self.tag}-{self.run_id}"
        make_folder(self.evidence, self.gid)

    def _write_summary(self) -> None:
        summary = {
            "release": self.tag,
            "deployment": self.inventory.name,
            "run_id": self.run_id,
            "backup": self.backup_name,
            "steps": self.trail.steps,
        }
        path = self.evidence / "deploy.json"
        path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        restrict_tree(self.evidence, self.gid)

    # -- the gates -------------------------------------------------------------------------------

    def _shell(self, name: str, command: str, log: Path) -> tuple[int, str]:
        """A gate command, run here with `sh -c`: (exit status, its last line)."""
        cwd = self.settings.repo or Path.cwd()
        timeout = self.settings.gate_timeout_s
        with log.open("w", encoding="utf-8") as out:
            out.write(f"$ {command}\n(in {cwd})\n")
            out.flush()
            try:
                done = subprocess.run(
                    ["sh", "-c", command], cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, timeout=timeout, check=False,
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                return 124, f"no answer in {timeout:g} s"
            except OSError as exc:
                return 127, f"cannot run in {cwd}: {exc.strerror or exc}"
        lines = [line for line in log.read_text(errors="replace").splitlines()[2:] if line.strip()]
        return done.returncode, self.redact(lines[-1].strip()) if lines else ""

    def _checks(self, marker: str) -> tuple[int, str]:
        return run_checks(marker, self.inventory_path, self.reports_dir, self.evidence)

    def _gate(self) -> None:
        for name, command in self.settings.gate_commands.items():
            with self.trail.step("gate", f"gate command {name}", [command]) as step:
                code, last = self._shell(name, command, self.evidence / f"gate-{name}.log")
                if code != 0:
                    raise GateFailed(
                        f"predeploy gate failed: gate command {name} exited {code}"
                        + (f" ({last})" if last else "")
                        + "; nothing was changed"
                    )
                step.result = "passed"
        shown = f"python -m opsbook check -m predeploy --inventory={self.inventory_path}"
        with self.trail.step("gate", "predeploy checks", [shown]) as step:
            code, bad = self._checks("predeploy")
            if code != 0:
                raise GateFailed(
                    f"predeploy gate failed: the predeploy checks exited {code}"
                    + (f" ({bad})" if bad else "")
                    + "; nothing was changed"
                )
            step.result = "passed"

    def _backup(self) -> None:
        if not self.backup:
            return
        from opsbook import backup

        planned = backup.plan_backup(self.inventory)
        with self.trail.step("backup", "pre-deploy backup", planned) as step:
            try:
                info = backup.take_backup(self.inventory)
            except backup.BackupError as exc:
                raise DeployError(f"backup failed: {exc}") from None
            self.backup_name = info.name
            step.result = f"wrote {info.path}"

    def _ready_and_postdeploy(self) -> None:
        if self.before_ready is not None:
            self.before_ready()
        deadline = self.settings.readiness_deadline_s
        with self.trail.step("ready", f"wait for readiness (up to {deadline:g} s)", []) as step:
            ready = wait_ready(self.inventory, deadline)
            if not ready.ready:
                waiting = "; ".join(f"{what}: {why}" for what, why in ready.not_ready.items())
                raise GateFailed(f"not ready after {ready.waited_s:.0f} s: {waiting}")
            step.result = f"ready in {ready.waited_s:.1f} s"
        shown = f"python -m opsbook check -m postdeploy --inventory={self.inventory_path}"
        with self.trail.step("postdeploy", "postdeploy checks and the canary", [shown]) as step:
            code, bad = self._checks("postdeploy")
            if code != 0:
                raise GateFailed(
                    f"postdeploy gate failed: the postdeploy checks exited {code}"
                    + (f" ({bad})" if bad else "")
                )
            step.result = "passed"

    def _verify_back(self, to: str) -> str:
        """Readiness and the canary after a rollback: what the rollback's outcome says."""
        ready = wait_ready(self.inventory, self.settings.readiness_deadline_s)
        if not ready.ready:
            waiting = "; ".join(f"{what}: {why}" for what, why in ready.not_ready.items())
            raise DeployError(f"rolled back to {to}, but not ready: {waiting}")
        canary = run_canary(self.inventory, CANARY_HOP_S)
        if canary.failed_hop:
            raise DeployError(f"rolled back to {to}, but the canary failed: {canary.problem}")
        return f"ready in {ready.waited_s:.1f} s; canary {canary.hops_ms.get('total')} ms"

    # -- compose ---------------------------------------------------------------------------------

    def _deploy_compose(self, services: tuple[str, ...]) -> Result:
        runtime = ComposeRuntime.from_inventory(self.inventory)
        images = Images(runtime)
        try:
            self._gate()
            by_service = images.service_images(services)
            self._backup()
            if self.after_backup is not None:
                self.after_backup()
            refs = sorted(set(by_service.values()))
            before = self._running_release(images, by_service)
            wanted = self._images_of_tag(images, refs, by_service, before)
            release = DeployedRelease(
                tag=self.tag, deployed_at=releases.now_iso(), services=services,
                images=wanted, backup=self.backup_name,
            )  # fmt: skip
            self._record(before, release)
        except GateFailed as exc:
            return Result(EXIT_GATE, str(exc))
        except (DeployError, ReleaseError) as exc:
            return Result(EXIT_STEP, f"{exc}; nothing was changed")
        try:
            self._switch(images, runtime, release)
            self._ready_and_postdeploy()
        except (DeployError, ComposeError) as exc:
            return self._roll_back_compose(images, runtime, before, exc)
        return Result(EXIT_DEPLOYED, f"deployed {self.tag} ({', '.join(services)})")

    def _running_release(self, images: Images, by_service: dict[str, str]) -> DeployedRelease:
        """What runs now: the recorded newest release if the containers run its images, else
        what they run, tagged predeploy-<stamp> so that it is kept and named."""
        running: dict[str, str] = {}
        for service, ref in by_service.items():
            ids = images.running(service)
            if len(ids) > 1:
                raise DeployError(f"{service}'s containers run different images: {sorted(ids)}")
            now = next(iter(ids), None) or images.image_id(ref)
            if now is None:
                raise DeployError(f"{service} runs no container and no image {ref} exists")
            if running.setdefault(ref, normal_id(now)) != normal_id(now):
                raise DeployError(f"the services of image {ref} run different images")
        recorded = releases.deployed(self.state)
        if recorded and {r: normal_id(i) for r, i in recorded[-1].images.items()} == running:
            return recorded[-1]
        name = f"predeploy-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
        for ref, image_id in running.items():
            images.tag(image_id, tagged(ref, name))
        return DeployedRelease(
            tag=name, deployed_at=releases.now_iso(), services=tuple(by_service), images=running
        )

    def _images_of_tag(
        self,
        images: Images,
        refs: list[str],
        by_service: dict[str, str],
        before: DeployedRelease,
    ) -> dict[str, str]:
        """TAG's image of each image reference: found, pulled, or built."""
        wanted: dict[str, str] = {}
        for ref in refs:
            target = tagged(ref, self.tag)
            found = images.image_id(target)
            if found is not None:
                with self.trail.step("images", f"use {target}", []) as step:
                    step.result = f"already on the engine: {short_id(found)} (not rebuilt)"
                wanted[ref] = normal_id(found)
                continue
            if self.settings.registry:
                source = f"{pulled_repository(self.settings.registry, ref)}:{self.tag}"
                commands = [images.shown("pull", source), images.shown("tag", source, target)]
                with self.trail.step("images", f"pull {source}", commands) as step:
                    images.docker("pull", source, timeout=PULL_TIMEOUT_S)
                    images.tag(source, target)
                    step.result = f"pulled {short_id(images.image_id(target) or '?')}"
            else:
                built = sorted(s for s, r in by_service.items() if r == ref)
                compose = [
                    "docker", "compose", "-p", images.driver.project,
                    "-f", str(images.driver.compose_file), "build", *self.build_options, *built,
                ]  # fmt: skip
                commands = [
                    f"DOCKER_BUILDKIT=0 {images.shown(*compose[1:])}",
                    images.shown("tag", ref, target),
                    images.shown("tag", before.images[ref], ref),
                ]
                with self.trail.step("images", f"build {target}", commands) as step:
                    try:
                        images.driver.compose(
                            "build", *self.build_options, *built, timeout=BUILD_TIMEOUT_S
                        )
                    except ComposeError as exc:
                        tail = " | ".join(exc.log_tail[-3:])
                        raise DeployError(f"build of {target} failed: {exc}: {tail}") from None
                    finally:
                        # The build moved the compose file's name; what runs keeps it until the
                        # switch (a recreate meanwhile must not start the new build).
                        fresh = images.image_id(ref)
                        images.tag(before.images[ref], ref)
                    if fresh is None:
                        raise DeployError(f"the build left no image {ref}")
                    images.tag(fresh, target)
                    step.result = f"built {short_id(fresh)}"
            image_id = images.image_id(target)
            if image_id is None:
                raise DeployError(f"no image {target} after it was made")
            wanted[ref] = normal_id(image_id)
        return wanted

    def _record(self, before: DeployedRelease, release: DeployedRelease) -> None:
        recorded = releases.deployed(self.state)
        where = self.state / releases.RELEASES_FILE
        steps = [f"append {before.tag} (what runs now) and {self.tag} to {where}"]
        with self.trail.step("record", f"record {before.tag} -> {self.tag}", steps) as step:
            if not recorded or recorded[-1] != before:
                releases.record(self.state, before)
            releases.record(self.state, release)
            step.result = "images " + ", ".join(
                f"{ref}: {short_id(before.images.get(ref, '?'))} -> {short_id(i)}"
                for ref, i in release.images.items()
            )

    def _switch(self, images: Images, runtime: ComposeRuntime, release: DeployedRelease) -> None:
        commands = bring_up_commands(self.inventory, images, release)
        with self.trail.step("switch", f"bring up {release.tag}", commands) as step:
            step.result = bring_up(self.inventory, images, release)

    def _roll_back_compose(
        self,
        images: Images,
        runtime: ComposeRuntime,
        before: DeployedRelease,
        failure: Exception,
    ) -> Result:
        why = str(failure)
        gate = isinstance(failure, GateFailed)
        commands = bring_up_commands(self.inventory, images, before)
        try:
            with self.trail.step(
                "rollback", f"roll back to {before.tag}: {why}", commands, must_audit=False
            ) as step:
                bring_up(self.inventory, images, before)
                releases.drop_newest(self.state)
                step.result = self._verify_back(before.tag)
        except Exception as exc:
            return Result(
                EXIT_ROLLBACK_FAILED,
                f"{why}; the rollback to {before.tag} failed too: {exc} "
                f"(what runs: docker compose -p {runtime.stack.project} ps)",
            )
        return Result(
            EXIT_GATE if gate else EXIT_STEP,
            f"{why}; rolled back to {before.tag} ({step.result})",
        )

    # -- commands (systemd, command) ------------------------------------------------------------

    def _deploy_commands(self) -> Result:
        commands = self.settings.commands
        assert commands is not None
        recorded = releases.deployed(self.state)
        previous = recorded[-1].tag if recorded else self.previous
        deploy = commands.deploy.replace("{tag}", shlex.quote(self.tag))
        try:
            self._gate()
            self._backup()
            if self.after_backup is not None:
                self.after_backup()
            where = self.state / releases.RELEASES_FILE
            with self.trail.step("record", f"record {self.tag}", [f"append to {where}"]):
                if previous and not recorded:
                    releases.record(self.state, DeployedRelease(tag=previous, deployed_at=""))
                release = DeployedRelease(
                    tag=self.tag, deployed_at=releases.now_iso(), backup=self.backup_name
                )
                releases.record(self.state, release)
        except GateFailed as exc:
            return Result(EXIT_GATE, str(exc))
        except (DeployError, ReleaseError) as exc:
            return Result(EXIT_STEP, f"{exc}; nothing was changed")
        try:
            # A deploy command that failed half-way may have changed something: roll back.
            with self.trail.step("switch", f"deploy {self.tag}", [deploy]) as step:
                step.result = host_run(self.inventory, "deploy", deploy, self.redact)
            self._ready_and_postdeploy()
        except DeployError as exc:
            return self._roll_back_commands(previous, exc)
        return Result(EXIT_DEPLOYED, f"deployed {self.tag}")

    def _roll_back_commands(self, previous: str | None, failure: Exception) -> Result:
        commands = self.settings.commands
        assert commands is not None
        why = str(failure)
        if previous is None:
            releases.drop_newest(self.state)
            return Result(
                EXIT_ROLLBACK_FAILED,
                f"{why}; no earlier release is recorded to roll back to (on a first deploy, "
                "give --previous TAG)",
            )
        rollback = commands.rollback.replace("{tag}", shlex.quote(previous))
        try:
            with self.trail.step(
                "rollback", f"roll back to {previous}: {why}", [rollback], must_audit=False
            ) as step:
                host_run(self.inventory, "rollback", rollback, self.redact)
                releases.drop_newest(self.state)
                step.result = self._verify_back(previous)
        except Exception as exc:
            return Result(
                EXIT_ROLLBACK_FAILED, f"{why}; the rollback to {previous} failed too: {exc}"
            )
        code = EXIT_GATE if isinstance(failure, GateFailed) else EXIT_STEP
        return Result(code, f"{why}; rolled back to {previous} ({step.result})")


def run_checks(
    marker: str, inventory_path: Path, reports_dir: Path, evidence: Path
) -> tuple[int, str]:
    """`opsbook check -m MARKER` against the inventory, into the reports directory (so that
    ROLLBACK-001 of a postdeploy run finds the predeploy run), its output kept in
    EVIDENCE/MARKER.log: (exit status, the checks that did not pass)."""
    argv = [
        sys.executable, "-m", "opsbook", "check", "-m", marker,
        f"--inventory={inventory_path}", f"--reports-dir={reports_dir}",
    ]  # fmt: skip
    log = evidence / f"{marker}.log"
    with log.open("w", encoding="utf-8") as out:
        try:
            done = subprocess.run(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                timeout=CHECKS_TIMEOUT_S, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return 124, f"no answer in {CHECKS_TIMEOUT_S:g} s"
    return done.returncode, not_passed(reports_dir)


def not_passed(reports_dir: Path) -> str:
    """The checks of the newest run that did not pass, by id (from its findings.json)."""
    try:
        document = json.loads((reports_dir / "latest" / "findings.json").read_text())
    except (OSError, ValueError):
        return ""
    bad = sorted(
        {
            f"{row['check_id']}[{row['target']}]" if row.get("target") else row["check_id"]
            for row in document.get("findings", [])
            if row.get("outcome") in ("failed", "error", "blocked")
        }
    )
    return ", ".join(bad)


def host_run(inventory: Inventory, what: str, command: str, redact: Callable[[str], str]) -> str:
    """A deploy or rollback command, `sh -c` on deploy.host (default: this machine) through
    testinfra, bounded by deploy.gate_timeout_s; its last line of output, or DeployError."""
    from opsbook.errors import NotEvaluated
    from opsbook.targets import HostTarget

    name = inventory.deploy.host or "local"
    spec = inventory.hosts.get(name) or Host(spec="local://")
    host = HostTarget(name, spec, inventory.thresholds.timeout_s)
    try:
        host.reachable()
        done = host.testinfra.run(
            "timeout %s sh -c %s", str(int(inventory.deploy.gate_timeout_s)), command
        )
    except NotEvaluated as exc:
        raise DeployError(f"{what}: {exc}") from None
    if done.rc != 0:
        said = [line.strip() for line in (done.stderr or done.stdout).splitlines()]
        last = [line for line in said if line]
        raise DeployError(
            f"{what}: `{command}` on host {name} exited {done.rc}"
            + (f": {redact(last[-1])}" if last else "")
        )
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    return redact(lines[-1]) if lines else "done"


def proxies_of(inventory: Inventory, services: tuple[str, ...]) -> list[str]:
    """The services that depend on any of `services` and are not among them (nginx in front of
    the backend): once those are recreated, they pass requests on to the new containers only
    when these answer (wait_proxying)."""
    return [
        name
        for name, service in inventory.services.items()
        if name not in services and set(service.depends_on) & set(services)
    ]


def bring_up_commands(inventory: Inventory, images: Images, release: DeployedRelease) -> list[str]:
    """The exact commands that bring `release` up on compose (for the audit log and a plan)."""
    runtime = images.runtime
    return [images.shown("tag", i, ref) for ref, i in release.images.items()] + [
        runtime.command("recreate", service) for service in release.services
    ]


def bring_up(inventory: Inventory, images: Images, release: DeployedRelease) -> str:
    """Point the compose file's image names at `release`'s images, recreate its services, and
    wait until the proxies in front of them pass the API on (the deploy, its rollback,
    ROLLBACK-001's fix). No proxy is reloaded: the stack's nginx looks the backend's name up at
    request time (containers/nginx), so it reaches a recreated container's new address."""
    runtime = images.runtime
    for ref, image_id in release.images.items():
        images.tag(image_id, ref)
    for service in release.services:
        runtime.recreate(service)
    wait_proxying(inventory, proxies_of(inventory, release.services))
    return "recreated " + ", ".join(release.services)


# How long after a recreate a proxy may still send requests to the replaced container's old
# address: the stack's nginx keeps an address it looked up for its resolver's valid=2s
# (containers/nginx), on a clock of whole seconds. Nothing can tell sooner without sending a
# request there, which is the upstream error line (COMPOSE-006) the wait must not cause.
PROXY_NAME_CACHE_S = 3.0


def wait_proxying(inventory: Inventory, proxies: list[str]) -> None:
    """Wait until each proxy passes its API path on after the services behind it were recreated
    or started again (call it right after): first until those services answer their own health
    path (asked directly) and the proxy can no longer hold their old address
    (PROXY_NAME_CACHE_S), then until the proxy's entry answers its `api_path` (as HEALTH-004
    asks it) with neither 502 nor 504. So the wait itself makes the entry log no upstream error
    for a container that is gone or not listening yet. Bounded by the readiness deadline; a
    proxy that still fails is left for the readiness step and the gate to judge."""
    import requests

    timeout = inventory.thresholds.timeout_s
    start = time.monotonic()
    end = start + inventory.deploy.readiness_deadline_s

    def wait_for(url: str, verify: str | bool, ok: Callable[[int], bool]) -> None:
        def answered() -> bool:
            try:
                return ok(requests.get(url, timeout=timeout, verify=verify).status_code)
            except requests.RequestException:
                return False

        until(answered, max(0.0, end - time.monotonic()), 0.2)

    for proxy in proxies:
        behind = set(inventory.services[proxy].depends_on)
        for endpoint in inventory.http.values():
            if endpoint.service in behind:
                url = endpoint.url + endpoint.health_path
                wait_for(url, endpoint.verify, lambda status: status == 200)
        time.sleep(max(0.0, start + PROXY_NAME_CACHE_S - time.monotonic()))
        for name in inventory.services[proxy].targets:
            entry = inventory.http.get(name)
            if entry is not None and entry.api_path is not None:
                url = entry.url + entry.api_path
                wait_for(url, entry.verify, lambda status: status not in (502, 504))


def compose_images(inventory: Inventory) -> Images:
    """The images of the inventory's compose deployment."""
    return Images(ComposeRuntime.from_inventory(inventory))
