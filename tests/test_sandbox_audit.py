"""The default sandbox exercises its own audit (`pytest -m audit`, issue 18).

Its nginx serves the same site over TLS on a second port, the inventory's public entry
`frontend-tls` (a self-signed certificate, made by openssl at `sandbox up`, is the entry's
`ca_file`): SEC-030, SEC-031 and SEC-032 judge a real TLS listener, and the daily checks of a
frontend run through TLS too. SEC-032 is proven here on that real nginx, turned to accept TLS
1.0 and 1.1 and back. What still does not run on the native sandbox, and where it runs
instead, is the table in docs/sandbox.md.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from support import RunChecks

from opsbook.inventory import InventoryError, load_inventory
from opsbook.sandbox.insecure import legacy_tls
from opsbook.sandbox.stack import Stack

# What the native sandbox leaves not applicable in its audit, and why (docs/sandbox.md).
SKIPPED_ON_THE_SANDBOX = {
    # nginx's hardening is the frontend's; the backend is not nginx
    ("SEC-030", "backend"), ("SEC-031", "backend"), ("SEC-032", "backend"),
    ("SEC-032", "frontend"),  # the plain-HTTP entry: TLS is judged on frontend-tls
    ("SEC-040", "none"), ("SEC-041", "none"),  # no Grafana (tests/checks/test_audit.py)
    ("SEC-060", None),  # no trivy, no images (tests/checks/test_audit.py)
    # the compose stack's (tests/checks/test_container_security.py)
    ("SEC-070", "none"), ("SEC-071", "none"), ("SEC-072", "none"), ("SEC-073", "none"),
    ("SEC-074", "none"), ("SEC-075", "none"), ("SEC-076", "none"), ("SEC-077", "none"),
    ("SEC-078", "none"), ("SEC-079", None), ("SEC-080", "none"),
}  # fmt: skip
TLS_ENTRY = "frontend-tls"


@pytest.mark.sandbox
def test_default_sandbox_runs_its_audit_through_tls(sandbox: Stack, run_checks: RunChecks) -> None:
    run = run_checks("-m", "audit", inventory=sandbox.inventory_path)
    assert run.exit_code == 0, run.output
    outcomes = run.outcomes()
    skipped = {key for key, outcome in outcomes.items() if outcome == "skipped"}
    assert skipped == SKIPPED_ON_THE_SANDBOX, run.output
    assert set(outcomes.values()) == {"passed", "skipped"}, run.output
    for check in ("SEC-030", "SEC-031", "SEC-032"):
        assert run.outcome(check, TLS_ENTRY) == "passed", run.output
    assert run.row("SEC-032", TLS_ENTRY)["observed"] == ["TLSv1.2", "TLSv1.3"]
    # The TLS listener's private key is one of the secret files SEC-001 judges.
    files = run.row("SEC-001")["evidence"]["files (path, mode, owner)"]
    assert f"{sandbox.dir}/nginx/tls/key.pem mode 0600" in files


@pytest.mark.sandbox
def test_daily_checks_of_the_frontend_run_through_tls(
    sandbox: Stack, run_checks: RunChecks
) -> None:
    run = run_checks("--check=HEALTH-001,HEALTH-002,HEALTH-003,HEALTH-004")
    assert run.exit_code == 0, run.output
    for check in ("HEALTH-001", "HEALTH-002", "HEALTH-003", "HEALTH-004"):
        assert run.outcome(check, TLS_ENTRY) == "passed", run.output
    # The API path through the TLS entry answers as the backend does (the proxy works there).
    assert run.row("HEALTH-004", TLS_ENTRY)["observed"] == "404 application/json"


@pytest.mark.sandbox
@pytest.mark.breaks("SEC-032")
def test_old_tls_protocols_on_the_sandbox_nginx_fail(
    breakable_sandbox: Stack, run_checks: RunChecks
) -> None:
    inventory = breakable_sandbox.inventory_path
    try:
        legacy_tls(breakable_sandbox, on=True)
        run = run_checks("-m", "audit", "--check=SEC-032", inventory=inventory)
    finally:
        legacy_tls(breakable_sandbox, on=False)
    assert run.exit_code == 1, run.output
    row = run.row("SEC-032", TLS_ENTRY)
    assert row["message"] == (
        "frontend-tls: accepts TLSv1, TLSv1.1 (expected TLSv1.2 or newer only)"
    )
    assert row["observed"] == ["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]
    again = run_checks("-m", "audit", "--check=SEC-032", inventory=inventory)
    assert again.exit_code == 0, again.output
    assert again.outcome("SEC-032", TLS_ENTRY) == "passed"


@pytest.mark.sandbox
def test_an_entry_whose_certificate_is_not_trusted_fails(
    sandbox: Stack, run_checks: RunChecks, tmp_path: Path
) -> None:
    """The checks verify the TLS entry's certificate: with another certificate as its
    ca_file, its health check fails as a client's request would (never passes); the plain
    entry still passes."""
    other = tmp_path / "other.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(tmp_path / "other.key"),
         "-out", str(other)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    raw = yaml.safe_load(sandbox.inventory_path.read_text())
    raw["http"][TLS_ENTRY]["ca_file"] = str(other)
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(raw))
    run = run_checks("--check=HEALTH-001", inventory=path)
    assert run.exit_code == 1, run.output
    assert run.outcome("HEALTH-001", TLS_ENTRY) == "failed"
    assert "certificate verify failed" in run.row("HEALTH-001", TLS_ENTRY)["message"]
    assert run.outcome("HEALTH-001", "frontend") == "passed"


def test_a_ca_file_on_a_plain_http_entry_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(
        "name: x\nhttp:\n  web: {kind: frontend, url: 'http://127.0.0.1:8080', "
        "ca_file: /etc/ssl/ca.pem}\n"
    )
    with pytest.raises(InventoryError, match=r"http\.web.*ca_file: only for an https url"):
        load_inventory(path, environ={})
