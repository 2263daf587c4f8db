"""Service logs: the runbook's `tail backend.log | grep -iE 'error|exception|...'`."""

from __future__ import annotations

import pytest

from opsbook import Severity, check
from opsbook.probes.logs import host_clock, recent_errors

pytestmark = [pytest.mark.daily, pytest.mark.logs]

# Only the tail is read: a log of gigabytes must not be copied over SSH every day. 256 KiB holds
# thousands of lines, more than a healthy service writes in the window.
TAIL_BYTES = 256 * 1024
EVIDENCE_LINES = 20


@check("LOG-001", Severity.MEDIUM)
def test_no_recent_errors_in_service_logs(host, request, inventory, thresholds, finding) -> None:
    """No error lines in the service logs in the last minutes.

    Risk: a component fails for some requests (a poison message, a lost connection) while its
    health endpoint still says ok; users see errors that no other check notices.
    """
    name = request.node.callspec.params["host"]
    logs = inventory.hosts[name].logs
    if not logs:
        pytest.skip(f"{name}: no logs listed in the inventory")
    window = thresholds.log_window_s
    clock = host.run("date '+%s %z'")
    assert clock.rc == 0, f"{name}: cannot read the host's clock: {clock.stderr.strip()}"
    # The window is measured on the host's own clock, in its own zone, as the logs are written.
    now = host_clock(clock.stdout)
    problems = []
    total = unreadable = 0
    for path in logs:
        tail = host.run(
            "timeout %s tail -c %s -- %s", f"{thresholds.timeout_s:g}", str(TAIL_BYTES), path
        )
        if tail.rc != 0:
            # A log the inventory names but the host cannot give is a failure, not a pass: a
            # check that read nothing cannot vouch that nothing went wrong, and a missing log
            # most often means the service now logs elsewhere (a changed config, a botched
            # rotation) or not at all, which an operator wants to hear about the same day.
            reason = tail.stderr.strip().rsplit(": ", 1)[-1] or f"exit status {tail.rc}"
            if tail.rc == 124:
                reason = f"no answer within {thresholds.timeout_s:g}s"
            problems.append(f"{path}: cannot read: {reason} (expected a readable log)")
            unreadable += 1
            continue
        data = tail.stdout_bytes
        errors = recent_errors(
            data.decode("utf-8", errors="replace"),
            now,
            window,
            starts_mid_line=len(data) >= TAIL_BYTES,
        )
        if errors:
            total += len(errors)
            shown = errors[-EVIDENCE_LINES:]
            hidden = len(errors) - len(shown)
            more = [f"... ({hidden} earlier error lines not shown)"] if hidden else []
            finding.attach(path, "\n".join(more + shown))
            lines = "line" if len(errors) == 1 else "lines"
            problems.append(
                f"{path}: {len(errors)} error {lines} in the last {window:g}s (expected none)"
            )
    if unreadable:
        finding.observe(f"{total} error lines; {unreadable} logs unreadable", expected=0)
    else:
        finding.observe(total, expected=0)
    assert not problems, f"{name}: " + "; ".join(problems)
