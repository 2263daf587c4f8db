"""Service logs: the runbook's `tail backend.log | grep -iE 'error|exception|...'`."""

from __future__ import annotations

import pytest

from opsbook import Finding, HostTarget, Severity, Thresholds, check
from opsbook.probes.host import NotObserved
from opsbook.probes.logs import clock, log_tail, recent_errors

pytestmark = [pytest.mark.daily, pytest.mark.logs]

EVIDENCE_LINES = 20


@check("LOG-001", Severity.MEDIUM)
def test_no_recent_errors_in_service_logs(
    host: HostTarget, thresholds: Thresholds, finding: Finding
) -> None:
    """No error lines in the service logs in the last minutes.

    Risk: a component fails for some requests (a poison message, a lost connection) while its
    health endpoint still says ok; users see errors that no other check notices.
    """
    if not host.spec.logs:
        pytest.skip(f"{host.label}: no logs listed in the inventory")
    window = thresholds.log_window_s
    # The window is measured on the host's own clock, in its own zone, as the logs are written.
    now = clock(host, timeout_s=thresholds.timeout_s)
    problems = []
    for path in host.spec.logs:
        try:
            tail = log_tail(host, path, timeout_s=thresholds.timeout_s)
        except NotObserved as exc:
            # A log the inventory names but the host cannot give is a failure, not a pass: a
            # check that read nothing cannot vouch that nothing went wrong, and a missing log
            # most often means the service now logs elsewhere (a changed config, a botched
            # rotation) or not at all, which an operator wants to hear about the same day.
            problems.append(f"{path}: {exc.reason} (expected a readable log)")
            continue
        errors = recent_errors(tail.text, now, window, starts_mid_line=tail.cut)
        if errors:
            hidden = len(errors) - EVIDENCE_LINES
            more = [f"... ({hidden} earlier error lines not shown)"] if hidden > 0 else []
            finding.attach(path, "\n".join(more + errors[-EVIDENCE_LINES:]))
            lines = "line" if len(errors) == 1 else "lines"
            problems.append(f"{path}: {len(errors)} error {lines} in the last {window:g}s")
    finding.expect_none(problems, expected=f"no error lines in the last {window:g}s")
