"""Alerting: the runbook's alert rules are valid, loaded by Prometheus, and watch real series.

The rules ship in the repository (alerts/*.yml). Prometheus reads its own copies, named by the
`rule_files` globs of its configuration; a copy can differ from the repository's file, so the
checks look at both: the files' validity (promtool), and what the running Prometheus evaluates
(its rules API).
"""

from __future__ import annotations

import shutil

import pytest

from opsbook import Finding, HttpTarget, Severity, check
from opsbook.locations import PACKAGE
from opsbook.probes import prometheus as probe
from opsbook.remediation import prometheus

pytestmark = [pytest.mark.observability]

SHIPPED_RULES = PACKAGE / "alerts"
PROMTOOL_TIMEOUT_S = 20


# Not daily: the file changes with a deploy, and promtool costs more than the rest of a daily
# run together; the running Prometheus's own view of the rules is ALERT-002, daily.
@pytest.mark.predeploy
@pytest.mark.weekly
@check("ALERT-001", Severity.HIGH)
def test_rules_files_are_valid(prometheus: HttpTarget, finding: Finding) -> None:
    """The alert rules files are valid (promtool check rules).

    Risk: Prometheus refuses an invalid rules file: at a reload it keeps the old rules, at a
    restart it does not start at all; either way the alerts people rely on are not the ones
    written down.
    """
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed on this host: cannot validate the rules files")
    loaded = probe.rule_files(prometheus)
    files = list(dict.fromkeys([*sorted(SHIPPED_RULES.glob("*.yml")), *loaded.found]))
    if not files:
        finding.fail(f"no rules files (none shipped in {SHIPPED_RULES})")
    verdicts = [probe.promtool_check_rules(promtool, path, PROMTOOL_TIMEOUT_S) for path in files]
    invalid = [verdict.error for verdict in verdicts if not verdict.valid]
    if loaded.unseen:
        finding.attach("rule_files not found on this host", loaded.unseen)
    finding.attach("promtool", "\n".join(verdict.output for verdict in verdicts))
    finding.expect(
        f"{len(files) - len(invalid)}/{len(files)} valid", "all valid", ok=not invalid,
        problem="invalid rules: " + "; ".join(invalid),
    )  # fmt: skip


@pytest.mark.daily
@check("ALERT-002", Severity.HIGH, remediation=prometheus.reload_rules)
def test_shipped_rules_are_loaded(prometheus: HttpTarget, finding: Finding) -> None:
    """The running Prometheus has loaded every rule group and rule of the shipped rules files.

    Risk: an alert that is written down but not loaded never fires; the outage it describes
    is found by users instead.
    """
    rules = probe.rules_loaded(prometheus, SHIPPED_RULES)
    if not rules.shipped:
        finding.fail(f"no rules shipped in {SHIPPED_RULES}")
    finding.attach("loaded", rules.loaded)
    finding.observe(
        rules.missing or f"all {rules.total} rules loaded",
        expected=f"all {rules.total} rules of {len(rules.shipped)} group(s) loaded",
    )
    if rules.missing:
        finding.fail(
            f"not loaded: {', '.join(rules.missing)} (expected every rule of {SHIPPED_RULES}/*.yml)"
        )


@pytest.mark.daily
@check("ALERT-003", Severity.MEDIUM)
def test_alert_expressions_select_existing_series(prometheus: HttpTarget, finding: Finding) -> None:
    """Every metric the loaded alert rules use has series in Prometheus.

    Risk: an expression over a metric nobody exports (a renamed metric, a missing exporter, a
    typo) is never true: the alert looks armed and can never fire. A metric whose absence an
    alert watches (absent(...)) is reported by that alert and does not fail the check.
    """
    uses = probe.metric_uses(probe.rule_groups(prometheus))
    if not uses.rules:
        finding.fail("no rules loaded")
    present = probe.metrics_with_series(prometheus, set(uses.rules))
    alerted = uses.absence_alerts
    missing = [name for name in sorted(set(uses.rules) - present) if name not in alerted]
    if missing:
        # A scrape target that is down takes its series with it: then the check is blocked by
        # that target (opsbook.plugin.dependencies reads `up`, as for OBS-002), and run again
        # once it is up, when a typo still fails it. One started since Prometheus last scraped
        # it has its series again on the next scrape, waited for when due within the timeout.
        present, targets = probe.metrics_after_next_scrapes(
            prometheus, set(uses.rules), next_scrape_within_s=prometheus.timeout
        )
        missing = [name for name in sorted(set(uses.rules) - present) if name not in alerted]
        finding.attach("up", {target.name: target.up for target in targets})
    finding.attach(
        "metrics",
        {
            name: {
                "rules": sorted(rules),
                "series": name in present
                or (f"none; its absence fires {alerted[name]}" if name in alerted else False),
            }
            for name, rules in sorted(uses.rules.items())
        },
    )
    finding.expect(
        f"{len(present)} of {len(uses.rules)} metrics have series", "every metric used has series",
        ok=not missing,
        problem="no series for "
        + "; ".join(f"{name} (used by {', '.join(sorted(uses.rules[name]))})" for name in missing),
    )  # fmt: skip
