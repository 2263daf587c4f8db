"""Prometheus: the alert rules written down but not loaded (ALERT-002) are read again."""

from __future__ import annotations

import time

from opsbook.locations import PACKAGE
from opsbook.probes import prometheus as probe
from opsbook.remediate.context import Context
from opsbook.remediate.plan import Plan, StepKind
from opsbook.remediate.runtime import refuse
from opsbook.remediation.services import owner, runtime_of
from opsbook.targets import HttpTarget

SHIPPED_RULES = PACKAGE / "alerts"  # what ALERT-002 expects loaded
LOADED_DEADLINE_S = 20.0
POLL_S = 0.25


def _not_loaded(ctx: Context) -> list[str]:
    """ALERT-002's own fact: the shipped groups and rules the running Prometheus does not
    evaluate (asked on a connection of its own)."""
    target = HttpTarget(ctx.target, ctx.http_spec(), ctx.thresholds.timeout_s)
    try:
        return probe.rules_loaded(target, SHIPPED_RULES).missing
    finally:
        target.close()


def reload_rules(ctx: Context, *, apply: bool) -> Plan:
    """Make Prometheus read its rules files again when shipped rules are not loaded.

    Changes: sends the Prometheus service SIGHUP through the inventory's runtime (the same as
    POST /-/reload): it reads its configuration and rules files again, without a restart; its
    data and scrapes go on. Then waits up to 20 s for the rules to be loaded. A rules file that
    is invalid is refused by Prometheus, which keeps the rules it had (ALERT-001 names the
    file); rules missing from Prometheus's rules files stay missing (deploy alerts/*.yml to
    the files its rule_files name).
    Privileges: control of the runtime (signal the Prometheus process or container).
    Undo: nothing to undo; Prometheus evaluates the rules files as they are on disk.
    """
    plan = Plan.for_fix(ctx)
    missing = _not_loaded(ctx)
    if not missing:
        return plan.nothing("every shipped rule is loaded")
    service = owner(ctx)
    runtime = runtime_of(ctx, service)
    refuse(runtime, "reload", service)

    def reload() -> str:
        runtime.reload(service)
        end = time.monotonic() + LOADED_DEADLINE_S
        while still := _not_loaded(ctx):
            if time.monotonic() >= end:
                return f"still not loaded after {LOADED_DEADLINE_S:g} s: {', '.join(still)}"
            time.sleep(POLL_S)
        return "every shipped rule is loaded"

    plan.add(
        f"reload {service}: not loaded: {', '.join(missing)}",
        runtime.command("reload", service),
        StepKind.RELOAD,
        reload,
        service=service,
    )
    return plan.finish(apply, ctx.gate)
