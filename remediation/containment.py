"""Incident containment: the public entry closed through its runtime, then opened again.

The incident runbook's first move is `nginx -s stop` on the public entry: nobody outside can
reach the chat while the incident is looked at. Not linked to any check: a person asks for it
(`python -m opsbook incident contain|release`), because it takes the chat away from every user.

The public entry is each http target of kind frontend, and the service that serves it
(`Inventory.service_of`: nginx in the sandbox, frontend in the compose stack, a unit on a
host); it is stopped and started through that service's own runtime. Whether it is closed is
read from outside, as a user would find it: a TCP connection to the entry's host and port is
refused or gets no answer. Whether it is open again: its /health answers 200, as HEALTH-001
asks it.

While the deployment is contained, its state directory holds `contained.json` (who, when,
which services, why), so that the checks of the entry's services are not applicable with the
reason "contained by opsbook at TIME by USER" (a contained entry is not an outage to fix: a
checks run must not restart it), and reports say so.
"""

from __future__ import annotations

import functools
import getpass
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from opsbook.errors import TargetUnreachable
from opsbook.inventory import HttpEndpoint, Inventory
from opsbook.probes.network import reach
from opsbook.remediate import contained as records
from opsbook.remediate.contained import Containment
from opsbook.remediate.context import Context
from opsbook.remediate.plan import Plan, StepKind
from opsbook.remediate.runtime import Runtime, runtime_of
from opsbook.targets import HttpTarget

KIND = StepKind.CONTAIN
POLL_S = 0.2  # between two looks at the entry while it closes or opens


class ContainmentUnsupported(Exception):
    """The deployment has no public entry opsbook can close: no frontend target, no runtime
    for its service, or a runtime that cannot stop or start it."""


@dataclass(frozen=True)
class Entry:
    """One public entry: the frontend target, where it listens, and what serves it."""

    name: str
    endpoint: HttpEndpoint
    service: str
    runtime: Runtime

    @property
    def address(self) -> str:
        parts = urlsplit(self.endpoint.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return f"{parts.hostname}:{port}"


def _state(inventory: Inventory) -> Path:
    from opsbook.remediate.runner import state_dir

    return state_dir(inventory)


def contained(inventory: Inventory) -> Containment | None:
    """The deployment's containment record, or None when it is not contained."""
    return records.read(_state(inventory))


def contained_service(inventory: Inventory, name: str) -> Containment | None:
    """The containment record when `name` is a service it closed, or a target such a service
    serves (None otherwise)."""
    found = contained(inventory)
    if found is None or not found.holds(name, inventory.service_of(name)):
        return None
    return found


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container), no login variables
        return f"uid {os.getuid()}"


def entries(inventory: Inventory) -> list[Entry]:
    """The public entries (http targets of kind frontend) and the runtimes of their services;
    ContainmentUnsupported when there is none, or a runtime cannot stop and start one."""
    found = []
    for name, endpoint in sorted(inventory.endpoints("frontend").items()):
        service = inventory.service_of(name)
        runtime = runtime_of(inventory, service)
        if runtime is None:
            raise ContainmentUnsupported(
                f"no runtime drives {service}, which serves the public entry {name} (name one "
                "under services: in the inventory); stop it by hand, as the incident runbook says"
            )
        for verb in ("stop", "start"):
            why = runtime.refusal(verb, service)
            if why is not None:
                raise ContainmentUnsupported(
                    f"{runtime.name} runtime: cannot {verb} {service}: {why}"
                )
        found.append(Entry(name, endpoint, service, runtime))
    if not found:
        raise ContainmentUnsupported(
            "the inventory has no public entry (an http target of kind frontend)"
        )
    return found


def _services(found: list[Entry]) -> list[Entry]:
    """One entry per service (two frontends served by one nginx stop it once)."""
    seen: dict[str, Entry] = {}
    for entry in found:
        seen.setdefault(entry.service, entry)
    return list(seen.values())


def _closed(entry: Entry, timeout_s: float) -> tuple[bool, str]:
    """Whether the entry's port takes no connection (refused, or no answer within the
    timeout), as a user outside would find it; and what was seen."""
    seen = reach(f"tcp://{entry.address}", timeout_s=timeout_s)
    if seen.answered:
        return False, f"{entry.address} still accepts connections"
    return True, f"{entry.address}: {seen.reason}"


def _open(entry: Entry, timeout_s: float) -> tuple[bool, str]:
    """Whether the entry's /health answers 200 (a fresh target: nothing cached), and what."""
    target = HttpTarget(entry.name, entry.endpoint, timeout_s)
    path = entry.endpoint.health_path
    try:
        status = target.health().status_code
    except TargetUnreachable as exc:
        return False, f"{entry.name} {path}: {exc}"
    finally:
        target.close()
    return status == 200, f"{entry.name} {path} answers {status}"


def _until(
    look: Callable[[Entry, float], tuple[bool, str]],
    found: list[Entry],
    ctx: Context,
    expected: str,
) -> str:
    """Look at every entry until each is as expected, within remediation.verify_timeout_s;
    what was seen, or RuntimeError naming what was not as expected."""
    timeout_s = ctx.thresholds.timeout_s
    end = time.monotonic() + ctx.inventory.remediation.verify_timeout_s
    while True:
        seen = [look(entry, timeout_s) for entry in found]
        if all(ok for ok, _ in seen):
            return "; ".join(what for _, what in seen)
        if time.monotonic() >= end:
            wrong = "; ".join(what for ok, what in seen if not ok)
            raise RuntimeError(
                f"{wrong} after {ctx.inventory.remediation.verify_timeout_s:g} s "
                f"(expected {expected})"
            )
        time.sleep(POLL_S)


def contain_entry(ctx: Context, *, apply: bool) -> Plan:
    """Contain an incident: stop the public entry, so that nobody outside reaches the chat.

    Changes: stops the service of each public entry (the http targets of kind frontend: nginx)
    through its runtime, records the containment in the deployment's state directory
    (contained.json: who, when, why), then connects to each entry's host and port from here
    and expects no connection. Every user is cut off until release_entry; the entry's checks
    are not applicable meanwhile. Raises ContainmentUnsupported when no runtime can stop it.
    Privileges: control of the entry's runtime (the sandbox's owner, the container engine, or
    systemctl on the entry's host through the inventory's sudo).
    Undo: release_entry (`opsbook incident release`).
    """
    return _contain(ctx, apply, reason="")


def containing(reason: str) -> Callable[..., Plan]:
    """contain_entry with the person's reason for the record (`--reason`), named as
    contain_entry in plans and in the audit log."""

    def contain(ctx: Context, *, apply: bool) -> Plan:
        return _contain(ctx, apply, reason)

    return functools.update_wrapper(contain, contain_entry)


def _contain(ctx: Context, apply: bool, reason: str) -> Plan:
    plan = Plan.for_fix(ctx)
    found = entries(ctx.inventory)
    held = contained(ctx.inventory)
    timeout_s = ctx.thresholds.timeout_s
    if held is not None and all(_closed(entry, timeout_s)[0] for entry in found):
        return plan.nothing(f"already {held.line()}; the public entry takes no connection")
    services = _services(found)
    for index, entry in enumerate(services):

        def stop(entry: Entry = entry, last: bool = index == len(services) - 1) -> str:
            entry.runtime.stop(entry.service)
            records.write(
                _state(ctx.inventory),
                Containment(
                    services=tuple(e.service for e in services),
                    entries=tuple(e.address for e in found),
                    time=datetime.now(UTC).isoformat(timespec="seconds"),
                    user=_user(),
                    run=ctx.run_id,
                    reason=reason,
                ),
            )
            if not last:
                return "stopped"
            return _until(_closed, found, ctx, "no connection")

        plan.add(
            f"stop {entry.service}, the public entry (every user is cut off)",
            entry.runtime.command("stop", entry.service),
            KIND,
            stop,
            service=entry.service,
        )
    return plan.finish(apply, ctx.gate)


def release_entry(ctx: Context, *, apply: bool) -> Plan:
    """End a containment: start the public entry again, so that users reach the chat.

    Changes: starts the service of each public entry through its runtime, removes the
    containment record from the deployment's state directory, then asks each entry's /health
    from here and expects 200. Raises ContainmentUnsupported when no runtime can start it.
    Privileges: control of the entry's runtime.
    Undo: contain_entry (`opsbook incident contain`).
    """
    plan = Plan.for_fix(ctx)
    found = entries(ctx.inventory)
    timeout_s = ctx.thresholds.timeout_s
    if contained(ctx.inventory) is None and all(_open(entry, timeout_s)[0] for entry in found):
        return plan.nothing("not contained: the public entry answers")
    services = _services(found)
    for index, entry in enumerate(services):

        def start(entry: Entry = entry, last: bool = index == len(services) - 1) -> str:
            entry.runtime.start(entry.service)
            if not last:
                return "started"
            # No longer held closed by opsbook, whatever the entry answers now: if it does not
            # come back, its checks fail and say so.
            records.remove(_state(ctx.inventory))
            return _until(_open, found, ctx, "200")

        plan.add(
            f"start {entry.service}, the public entry, again",
            entry.runtime.command("start", entry.service),
            KIND,
            start,
            service=entry.service,
        )
    return plan.finish(apply, ctx.gate)
