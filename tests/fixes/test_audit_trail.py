"""The deployment's audit trail: written ahead, chained with a keyed MAC, anchored outside the
reports, verified by `opsbook audit-log verify`; and the deployment's shared budgets.

The entries are written by the real runner (`Remediator.apply_one`) into a real state
directory, anchored in a real textfile (node-exporter's collector reads such a file) or a real
Pushgateway. The fixes applied here are the tests' own and act on nothing: what is under test
is the trail they leave, not what they change.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pushgateway_server
import pytest
from support import eventually

from opsbook.inventory import Inventory, load_inventory
from opsbook.remediate.context import Context
from opsbook.remediate.plan import Plan, StepKind
from opsbook.remediate.runner import AUDIT, KEY, TERMINATED, Remediator, audit_head
from opsbook.sandbox.stack import Stack

REPO = Path(__file__).resolve().parents[2]
DEPLOYMENT = "audit-trail"


def write_inventory(folder: Path, *, pushgateway: str | None = None) -> Path:
    trail = (
        f"{{pushgateway: '{pushgateway}'}}"
        if pushgateway
        else f"{{textfile_dir: {folder}/textfile}}"
    )
    (folder / "textfile").mkdir(exist_ok=True)
    path = folder / "inventory.yaml"
    path.write_text(
        f"name: {DEPLOYMENT}\n"
        f"state_dir: {folder}/state\n"
        "http:\n  backend: {kind: backend, url: 'http://127.0.0.1:1'}\n"
        "redis:\n  queue: {url: 'redis://127.0.0.1:1/0'}\n"
        "services:\n"
        "  backend: {targets: [backend], depends_on: [redis]}\n"
        "  redis: {targets: [queue]}\n"
        "  worker: {depends_on: [redis], role: consumer}\n"
        f"remediation:\n  audit_trail: {trail}\n"
    )
    return path


def scale_backend(ctx: Context, *, apply: bool) -> Plan:
    """Scale the backend (a test's fix: it changes nothing).

    Changes: nothing.
    Privileges: none.
    Undo: nothing to undo.
    """
    plan = Plan.for_fix(ctx)
    plan.add("scale backend", "true", StepKind.SCALE, lambda: "done")
    return plan.finish(apply, ctx.gate)


def restart_worker(ctx: Context, *, apply: bool) -> Plan:
    """Restart the worker for a stalled queue (a test's fix: it changes nothing).

    Changes: nothing.
    Privileges: none.
    Undo: nothing to undo.
    """
    plan = Plan.for_fix(ctx)
    plan.add("restart worker", "true", StepKind.RESTART, lambda: "done", service="worker")
    return plan.finish(apply, ctx.gate)


def restart_redis(ctx: Context, *, apply: bool) -> Plan:
    """Restart Redis (a test's fix: it changes nothing).

    Changes: nothing.
    Privileges: none.
    Undo: nothing to undo.
    """
    plan = Plan.for_fix(ctx)
    plan.add("restart redis", "true", StepKind.RESTART, lambda: "done")
    return plan.finish(apply, ctx.gate)


def apply(
    inventory: Inventory, reports: Path, fix: Callable[..., Plan], target: tuple[str, str]
) -> Any:
    remediator = Remediator(inventory, reports, f"run-{reports.name}", frozenset(StepKind))
    ctx = Context(inventory, "TEST-001", *target)
    return remediator.apply_one(fix, ctx, apply=True, redact=str)


def record_run(inventory: Inventory, reports: Path) -> None:
    """What a run leaves in reports/latest/findings.json: the log's head, as the weaker anchor."""
    run = reports / "20260101T000000Z-x"
    run.mkdir(parents=True, exist_ok=True)
    summary = {"inventory": inventory.name, "audit_head": audit_head(inventory)}
    (run / "findings.json").write_text(json.dumps({"run": summary, "findings": []}))
    latest = reports / "latest"
    if not latest.is_symlink():
        latest.symlink_to(run.name)


def verify(inventory_path: Path, reports: Path) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OPSBOOK", "PYTEST"))}
    return subprocess.run(
        [sys.executable, "-m", "opsbook", "audit-log", "verify", f"--inventory={inventory_path}",
         f"--reports-dir={reports}"],
        cwd=REPO, env={**environment, "OPSBOOK_HOME": str(reports.parent)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


class Trail:
    """A deployment with three fixes applied (six entries: intent and outcome each), recorded
    by a run in its reports folder, and anchored."""

    def __init__(self, folder: Path, pushgateway: str | None = None) -> None:
        self.inventory_path = write_inventory(folder, pushgateway=pushgateway)
        self.inventory = load_inventory(self.inventory_path, environ={})
        self.reports = folder / "reports"
        self.log = folder / "state" / AUDIT
        for _ in range(3):
            assert (
                apply(self.inventory, self.reports, scale_backend, ("http", "backend")).status
                == "applied"
            )
        record_run(self.inventory, self.reports)

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines(keepends=True)

    def entries(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines()]

    def write(self, entries: list[dict[str, Any]]) -> None:
        self.log.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))

    def verify(self) -> subprocess.CompletedProcess[str]:
        return verify(self.inventory_path, self.reports)

    def rewrite_findings(self, count: int, mac: str) -> None:
        findings = self.reports / "latest" / "findings.json"
        document = json.loads(findings.read_text())
        document["run"]["audit_head"] = {"count": count, "hash": mac}
        findings.write_text(json.dumps(document))


@pytest.fixture
def trail(tmp_path: Path) -> Trail:
    return Trail(tmp_path)


def test_a_fix_leaves_its_intent_then_its_outcome(trail: Trail) -> None:
    entries = trail.entries()
    assert [(e["seq"], e["event"]) for e in entries] == [
        (1, "intent"), (2, "outcome"), (3, "intent"), (4, "outcome"), (5, "intent"), (6, "outcome"),
    ]  # fmt: skip
    intent, outcome = entries[:2]
    assert intent["steps"] == ["[scale] scale backend: true"]
    assert (outcome["intent"], outcome["status"]) == (1, "applied")
    assert outcome["steps"] == ["[scale] scale backend: true -> done"]
    assert outcome["prev"] == intent["mac"]
    key = trail.log.parent / KEY
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    anchor_file = trail.log.parents[1] / "textfile" / f"opsbook_audit_{DEPLOYMENT}.prom"
    anchor = anchor_file.read_text()
    assert (
        f'opsbook_audit_log_entries{{deployment="{DEPLOYMENT}",head="{entries[-1]["mac"]}"}} 6.0'
        in anchor
    )
    verified = trail.verify()
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout == f"{trail.log}: intact (6 entries, anchored at {anchor_file})\n"


def _sha256_chain(entries: list[dict[str, Any]], key: bytes | None) -> list[dict[str, Any]]:
    """What an attacker recomputes: each entry's MAC (a plain SHA-256 when they have no key,
    as the old log had; an HMAC under `key` otherwise) and every link after it."""
    previous = "0" * 64
    for entry in entries:
        entry["prev"] = previous
        body = json.dumps(
            {k: v for k, v in entry.items() if k != "mac"}, sort_keys=True, separators=(",", ":")
        ).encode()
        entry["mac"] = (
            hmac.new(key, body, hashlib.sha256).hexdigest()
            if key
            else hashlib.sha256(body).hexdigest()
        )
        previous = entry["mac"]
    return entries


def edit(trail: Trail) -> None:
    trail.log.write_text(
        trail.log.read_text().replace('"status": "applied"', '"status": "failed"', 1)
    )


def delete_middle(trail: Trail) -> None:
    lines = trail.lines()
    trail.log.write_text("".join(lines[:2] + lines[3:]))


def delete_last(trail: Trail) -> None:
    trail.log.write_text("".join(trail.lines()[:-1]))


def delete_last_and_record_it(trail: Trail) -> None:
    """The newest entry deleted, and the findings.json record changed to match."""
    delete_last(trail)
    last = trail.entries()[-1]
    trail.rewrite_findings(last["seq"], last["mac"])


def delete_last_then_a_run_appends(trail: Trail) -> None:
    """The newest entry deleted, then the next run writes: it must not launder the gap."""
    delete_last(trail)
    apply(trail.inventory, trail.reports, scale_backend, ("http", "backend"))


def swap(trail: Trail) -> None:
    lines = trail.lines()
    lines[2], lines[3] = lines[3], lines[2]
    trail.log.write_text("".join(lines))


def truncate(trail: Trail) -> None:
    data = trail.log.read_bytes()
    trail.log.write_bytes(data[: len(data) * 2 // 3 + 10])  # within the fifth entry


def truncate_to_nothing(trail: Trail) -> None:
    trail.log.write_text("")


def remove_the_log(trail: Trail) -> None:
    trail.log.unlink()


def forge_with_recomputed_hash(trail: Trail) -> None:
    entries = trail.entries()
    entries[1]["status"] = "refused"
    trail.write(_sha256_chain(entries, None))


def forge_with_a_key_of_ones_own(trail: Trail) -> None:
    entries = trail.entries()
    entries[1]["status"] = "refused"
    trail.write(_sha256_chain(entries, b"guessed"))


def rewrite_with_anchor(trail: Trail) -> None:
    """The chain rewritten (no key) with the newest run's findings.json to match."""
    entries = trail.entries()
    entries[1]["status"] = "refused"
    entries = _sha256_chain(entries, None)
    trail.write(entries)
    trail.rewrite_findings(len(entries), entries[-1]["mac"])


def replace_the_key_and_rewrite(trail: Trail) -> None:
    """Whoever can write the state directory but not read the key swaps in a key of their
    own and rewrites everything under it, findings.json too: every MAC checks out."""
    key = trail.log.parent / KEY
    key.unlink()
    key.write_text("attackers-key\n")
    entries = trail.entries()
    entries[1]["status"] = "refused"
    entries = _sha256_chain(entries, b"attackers-key")
    trail.write(entries)
    trail.rewrite_findings(len(entries), entries[-1]["mac"])


# Each way of tampering, and what verify says about it.
TAMPERING: list[tuple[Callable[[Trail], None], str]] = [
    (edit, "line 2: its MAC does not match its content"),
    (delete_middle, "line 3: entry 4 where 3 was due"),
    (delete_last, "1 newest entr(y/ies) deleted (the exported anchor says 6"),
    (delete_last_and_record_it, "the exported anchor says 6, the log holds 5"),
    (
        delete_last_then_a_run_appends,
        "entry 6: the log had lost entries when it was next written: its anchor recorded 6 "
        "entries, the log held 5",
    ),
    (swap, "line 3: entry 4 where 3 was due"),
    (truncate, "torn: a write was cut short"),
    (truncate_to_nothing, "6 newest entr(y/ies) deleted"),
    (remove_the_log, "6 newest entr(y/ies) deleted"),
    (forge_with_recomputed_hash, "line 2: its MAC does not match"),
    (forge_with_a_key_of_ones_own, "line 1: its MAC does not match"),
    (rewrite_with_anchor, "entry 6 differs from the exported anchor"),
    (replace_the_key_and_rewrite, "entry 6 differs from the exported anchor"),
]


def test_every_intent_gets_an_outcome_even_when_nothing_was_left_to_do(tmp_path: Path) -> None:
    inventory = load_inventory(write_inventory(tmp_path), environ={})

    def gone_when_applied(ctx: Context, *, apply: bool) -> Plan:
        """Scale the backend, unless it recovered meanwhile (a test's fix).

        Changes: nothing.
        Privileges: none.
        Undo: nothing to undo.
        """
        plan = Plan.for_fix(ctx)
        if apply:  # the condition went away between the plan and the fix
            return plan.nothing("backend answers now")
        plan.add("scale backend", "true", StepKind.SCALE, lambda: "done")
        return plan.finish(apply, ctx.gate)

    attempt = apply(inventory, tmp_path / "reports", gone_when_applied, ("http", "backend"))
    assert attempt.status == "nothing-to-do"
    log = (tmp_path / "state" / AUDIT).read_text()
    intent, outcome = [json.loads(line) for line in log.splitlines()]
    assert (outcome["event"], outcome["intent"], outcome["status"]) == (
        "outcome", intent["seq"], "nothing-to-do",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("tamper", "expected"), TAMPERING, ids=[tamper.__name__ for tamper, _ in TAMPERING]
)
def test_tampering_without_the_key_is_detected(
    trail: Trail, tamper: Callable[[Trail], None], expected: str
) -> None:
    tamper(trail)
    verified = trail.verify()
    assert verified.returncode == 1, verified.stdout + verified.stderr
    assert "Traceback" not in verified.stderr
    assert expected in verified.stderr, verified.stderr


def test_whoever_holds_the_key_and_the_anchor_can_forge(trail: Trail) -> None:
    """What the trail does not protect against (docs/remediation.md): a symmetric key is no
    signature, and an anchor its forger can also write anchors nothing."""
    key = (trail.log.parent / KEY).read_bytes().strip()
    entries = trail.entries()
    genuine = entries[-1]["mac"]
    entries[1]["status"] = "refused"
    entries = _sha256_chain(entries, key)
    trail.write(entries)
    anchor = trail.log.parents[1] / "textfile" / f"opsbook_audit_{DEPLOYMENT}.prom"
    anchor.write_text(anchor.read_text().replace(genuine, entries[-1]["mac"]))
    trail.rewrite_findings(len(entries), entries[-1]["mac"])
    assert trail.verify().returncode == 0


TORN = b'{"check": "TEST-001", "ev'


def test_a_torn_last_line_is_reported_and_later_runs_append_after_it(trail: Trail) -> None:
    # What a write cut short leaves (a full disk at the wrong moment): part of a line.
    with trail.log.open("ab") as stream:
        stream.write(TORN)
    torn = trail.verify()
    assert torn.returncode == 1
    assert torn.stderr.splitlines() == [f"{trail.log}: line 7: torn: a write was cut short"]
    # The next run goes on, after an entry that records the torn line.
    assert (
        apply(trail.inventory, trail.reports, scale_backend, ("http", "backend")).status
        == "applied"
    )
    entries = [json.loads(line) for line in trail.lines() if line != TORN.decode() + "\n"]
    assert [(e["seq"], e["event"]) for e in entries[6:]] == [
        (7, "torn"),
        (8, "intent"),
        (9, "outcome"),
    ]
    assert entries[6]["line"] == 7
    after = trail.verify()
    assert after.returncode == 1
    assert after.stderr.splitlines() == [
        f"{trail.log}: line 7: torn (a write was cut short; recorded by entry 7 of run run-reports)"
    ]


def test_a_full_state_filesystem_applies_nothing(small_filesystem: Path, tmp_path: Path) -> None:
    """Written ahead: a fix whose intent the log cannot take is not applied."""
    from support import fill

    inventory_path = write_inventory(tmp_path)
    text = inventory_path.read_text().replace(
        f"state_dir: {tmp_path}/state", f"state_dir: {small_filesystem}/state"
    )
    inventory_path.write_text(text)
    inventory = load_inventory(inventory_path, environ={})
    remediator = Remediator(inventory, tmp_path / "reports", "run-full", frozenset(StepKind))
    assert remediator.take_lock()  # the lock file is made while there is room
    try:
        fill(small_filesystem)
        done: list[str] = []

        def record(ctx: Context, *, apply: bool) -> Plan:
            """Scale (records that it acted).

            Changes: nothing.
            Privileges: none.
            Undo: nothing to undo.
            """
            plan = Plan.for_fix(ctx)
            plan.add("scale backend", "true", StepKind.SCALE, lambda: done.append("acted"))
            return plan.finish(apply, ctx.gate)

        attempt = remediator.apply_one(
            record, Context(inventory, "T", "http", "backend"), apply=True, redact=str
        )
    finally:
        remediator.release_lock()
    assert attempt.status == "skipped"
    assert (
        attempt.reason
        == "not applied: the audit log cannot take its intent: No space left on device"
    )
    assert done == []


HANG = textwrap.dedent(
    """
    import signal, sys, time
    from pathlib import Path
    from opsbook.inventory import load_inventory
    from opsbook.remediate.context import Context
    from opsbook.remediate.plan import Plan, StepKind
    from opsbook.remediate.runner import Remediator

    inventory_path, started, handler = sys.argv[1:]
    if handler == "own":  # like pytest's: note it, let the run end after this check
        signal.signal(signal.SIGTERM, lambda *_: Path(started + ".handled").touch())

    def wait_for_ever(ctx, *, apply):
        plan = Plan.for_fix(ctx)

        def hang():
            Path(started).touch()
            while True:
                time.sleep(1)

        plan.add("scale backend", "wait for ever", StepKind.SCALE, hang)
        return plan.finish(apply, ctx.gate)

    inventory = load_inventory(Path(inventory_path))
    remediator = Remediator(inventory, Path("reports"), "run-hang")
    ctx = Context(inventory, "TEST-001", "http", "backend")
    attempt = remediator.apply_one(wait_for_ever, ctx, apply=True, redact=str)
    print(attempt.summary())
    """
)


@pytest.fixture
def hanging_fix(tmp_path: Path) -> Iterator[Callable[[str], tuple[subprocess.Popen[str], Trail]]]:
    """A process applying a fix that never ends; its trail."""
    processes: list[subprocess.Popen[str]] = []

    def start(handler: str) -> tuple[subprocess.Popen[str], Trail]:
        trail = Trail(tmp_path)
        script = tmp_path / "hang.py"
        script.write_text(HANG)
        started = tmp_path / "started"
        process = subprocess.Popen(
            [sys.executable, str(script), str(trail.inventory_path), str(started), handler],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        processes.append(process)
        eventually(started.exists, "the fix is applying")
        return process, trail

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.communicate()  # and its pipe closed


def test_a_run_killed_mid_fix_leaves_the_intent(hanging_fix: Any) -> None:
    process, trail = hanging_fix("default")
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    last = trail.entries()[-1]
    assert (last["seq"], last["event"], last["run"]) == (7, "intent", "run-hang")
    assert last["steps"] == ["[scale] scale backend: wait for ever"]
    verified = trail.verify()
    assert verified.returncode == 0, verified.stderr  # nothing was tampered with
    assert (
        "note: entry 7: __main__.wait_for_ever on http/backend (run run-hang) has an intent and "
        "no outcome: its run ended before the fix did"
    ) in verified.stdout


@pytest.mark.parametrize(("handler", "exit_code"), [("default", 128 + 15), ("own", 0)])
def test_sigterm_during_a_fix_abandons_its_waits_and_records_it(
    hanging_fix: Any, handler: str, exit_code: int
) -> None:
    process, trail = hanging_fix(handler)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    # A generous bound against the hang (the fix waits for ever), not a speed test.
    output, _ = process.communicate(timeout=30)
    assert time.monotonic() - sent < 30
    assert process.returncode == exit_code, output
    outcome = trail.entries()[-1]
    assert (outcome["event"], outcome["intent"], outcome["status"]) == ("outcome", 7, "failed")
    assert outcome["reason"] == f"{TERMINATED}; what it did is not known"
    if handler == "own":
        assert (trail.log.parents[1] / "started.handled").exists()  # its own handler ran too
        assert (
            output.strip()
            == f"__main__.wait_for_ever: failed - {TERMINATED}; what it did is not known"
        )
    assert trail.verify().returncode == 0


@pytest.fixture(params=["open", "behind basic auth"])
def pushgateway(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A real Prometheus Pushgateway (Debian's prometheus-pushgateway) on a free port, open or
    behind basic auth (its URL then carries the credentials, as an inventory would write it)."""
    guarded = request.param != "open"
    with pushgateway_server.running(tmp_path, guarded=guarded) as (_, url):
        if guarded:
            user, password = pushgateway_server.USER, pushgateway_server.PASSWORD
            url = url.replace("http://", f"http://{user}:{password}@")
        yield url


def test_the_head_is_anchored_in_a_pushgateway(pushgateway: str, tmp_path: Path) -> None:
    trail = Trail(tmp_path, pushgateway=pushgateway)
    credentials = f"{pushgateway_server.USER}:{pushgateway_server.PASSWORD}@"
    plain = pushgateway.replace(credentials, "")
    metrics = pushgateway_server.get(f"{plain}/metrics", auth=plain != pushgateway)
    head = trail.entries()[-1]["mac"]
    assert f'deployment="{DEPLOYMENT}",head="{head}"' in metrics
    assert trail.verify().returncode == 0
    delete_last_and_record_it(trail)
    verified = trail.verify()
    assert verified.returncode == 1
    assert (
        "1 newest entr(y/ies) deleted (the exported anchor says 6, the log holds 5)"
        in verified.stderr
    )
    assert pushgateway_server.PASSWORD not in verified.stdout + verified.stderr


def test_budgets_are_charged_to_the_service_a_fix_acts_on(tmp_path: Path) -> None:
    inventory = load_inventory(write_inventory(tmp_path), environ={})
    reports = tmp_path / "reports"
    queue = ("redis", "queue")
    for _ in range(2):
        assert apply(inventory, reports, restart_worker, queue).status == "applied"
    refused = apply(inventory, reports, restart_worker, queue)
    assert refused.reason.startswith("budget spent: 2 restart(s) of worker within 3600s")
    # Redis's own budget is untouched by the worker's restarts.
    assert apply(inventory, reports, restart_redis, queue).status == "applied"


def test_a_brake_holds_for_every_reports_folder(tmp_path: Path) -> None:
    inventory = load_inventory(write_inventory(tmp_path), environ={})
    queue = ("redis", "queue")
    for folder in ("a", "b", "c"):
        apply(inventory, tmp_path / folder, restart_redis, queue)
    braked = apply(inventory, tmp_path / "d", restart_redis, queue)
    assert braked.status == "refused"
    assert "restart of redis is braked since its budget ran out" in braked.reason


# The same on the real sandbox, in a real checks run: the backend answers 404 on the health
# path the inventory is made to name, so restart_service restarts it and then waits for it to
# answer (20 s), and the verification for up to 10 minutes: a fix that is still going on when
# the signal comes.
ENDLESS_FIX = {
    "OPSBOOK__HTTP__BACKEND__HEALTH_PATH": "/no-such-page",
    "OPSBOOK__REMEDIATION__VERIFY_TIMEOUT_S": "600",
}


def start_checks(stack: Stack, tmp_path: Path) -> subprocess.Popen[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OPSBOOK", "PYTEST"))}
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly",
         f"--inventory={stack.inventory_path}", f"--reports-dir={tmp_path / 'reports'}",
         "--check=HEALTH-001", "--remediate=apply", "--allow=restart"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**environment, **ENDLESS_FIX, "OPSBOOK__STATE_DIR": str(tmp_path / "state")},
    )  # fmt: skip


def wait_for_intent(process: subprocess.Popen[str], log: Path) -> None:
    def intent_written() -> bool:
        assert process.poll() is None, "the run ended before its fix began"
        return log.exists() and '"event": "intent"' in log.read_text()

    eventually(intent_written, "the run writes the fix's intent", deadline_s=120)


def test_a_checks_run_killed_mid_fix_leaves_the_intent(
    breakable_sandbox: Stack, tmp_path: Path
) -> None:
    process = start_checks(breakable_sandbox, tmp_path)
    log = tmp_path / "state" / AUDIT
    try:
        wait_for_intent(process, log)
    finally:
        process.kill()
        process.communicate(timeout=60)
    (intent,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert (intent["event"], intent["check"], intent["target"]) == (
        "intent", "HEALTH-001", "http/backend",
    )  # fmt: skip
    assert intent["remediation"] == "opsbook.remediation.services.restart_service"


def test_sigterm_ends_a_checks_run_mid_fix_and_records_it(
    breakable_sandbox: Stack, tmp_path: Path
) -> None:
    process = start_checks(breakable_sandbox, tmp_path)
    log = tmp_path / "state" / AUDIT
    try:
        wait_for_intent(process, log)
        process.send_signal(signal.SIGTERM)
        # A generous bound against the hang (the fix would wait 20 s, its check 10 minutes),
        # not a speed test.
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 2, output  # interrupted, as pytest ends on SIGTERM
    assert "terminated (SIGTERM): stopped after the check that was running" in output
    intent, outcome = [json.loads(line) for line in log.read_text().splitlines()]
    assert (outcome["event"], outcome["intent"]) == ("outcome", intent["seq"])
    assert TERMINATED in outcome["reason"]


def test_unreadable_budgets_refuse_until_a_person_resets_them(tmp_path: Path) -> None:
    inventory_path = write_inventory(tmp_path)
    inventory = load_inventory(inventory_path, environ={})
    budgets = tmp_path / "state" / "remediation-budgets.json"
    budgets.parent.mkdir()
    budgets.write_text('{"restart:redis": {"times": [')  # cut short
    refused = apply(inventory, tmp_path / "reports", restart_redis, ("redis", "queue"))
    assert refused.status == "refused"
    assert (
        refused.reason
        == f"restart of redis refused: the budgets in {budgets} are not readable JSON"
    )
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OPSBOOK", "PYTEST"))}
    reset = subprocess.run(
        [sys.executable, "-m", "opsbook", "remediate", "--reset-budget",
         f"--inventory={inventory_path}"],
        cwd=REPO, env=environment, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (reset.returncode, reset.stdout) == (0, "reset: (unreadable budgets)\n"), reset.stderr
    assert (
        apply(inventory, tmp_path / "reports", restart_redis, ("redis", "queue")).status
        == "applied"
    )
