"""The remediation contract: collection rejects a fix with the wrong signature or docstring,
step kinds are one list (allow-list, help, docs), a plan is named after its fix, Context's
accessors are typed, and the report is settled in one order (could not evaluate, waiver, fix).

Plugin behaviour is tested through real pytest runs (pytester); unreachable targets are closed
loopback ports.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import opsbook.remediation as remediation
from opsbook.inventory import load_inventory
from opsbook.remediate.context import Context, WrongTargetKind
from opsbook.remediate.contract import problems
from opsbook.remediate.plan import (
    NOT_DONE,
    Plan,
    Refused,
    RemediationFailed,
    Step,
    StepKind,
    kinds_table,
    parse_allow,
)
from opsbook.remediate.runner import Remediator

REPO = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """An opsbook suite in a temporary folder, its inventory a closed port, its fixes in
    fixes.py beside the checks."""
    pytester.makeini("[pytest]\naddopts = --strict-markers -p no:cacheprovider\n")
    pytester.makeconftest('pytest_plugins = ["opsbook.plugin", "opsbook.fixtures.targets"]\n')
    monkeypatch.delenv("OPSBOOK_SANDBOX_DIR", raising=False)
    port = closed_port()
    inventory = pytester.path / "inventory.yaml"
    inventory.write_text(f"name: test\npostgres:\n  chatdb: {{port: {port}}}\n")
    monkeypatch.setenv("OPSBOOK_INVENTORY", str(inventory))
    monkeypatch.syspath_prepend(str(pytester.path))
    return pytester


GOOD_FIX = '''
from opsbook.remediate.context import Context
from opsbook.remediate.plan import Plan, StepKind


def restart_demo(ctx: Context, *, apply: bool) -> Plan:
    """Restart the demo service.

    Changes: restarts it.
    Privileges: none.
    Undo: nothing to undo.
    """
    plan = Plan.for_fix(ctx)
    plan.add("restart demo", "demo restart", StepKind.RESTART, lambda: None)
    return plan.finish(apply, ctx.gate)
'''


def linked_check(
    fix: str = "restart_demo",
    body: str = 'assert 7 <= 5, "demo: 7 (max 5)"',
    arguments: str = "",
) -> str:
    return f'''
import pytest
from opsbook import Severity, check
from fixes import {fix}

pytestmark = [pytest.mark.daily, pytest.mark.health]

@check("DEMO-001", Severity.HIGH, remediation={fix})
def test_demo({arguments}):
    """Demo holds."""
    {body}
'''


def findings(pytester: pytest.Pytester) -> list[dict[str, Any]]:
    document = json.loads((pytester.path / "reports" / "latest" / "findings.json").read_text())
    rows: list[dict[str, Any]] = document["findings"]
    return rows


BAD_FIXES = {
    "positional-apply": (
        "def restart_demo(ctx, apply):\n"
        '    """Restart.\n\n    Changes: x.\n    Privileges: y.\n    Undo: z.\n    """\n',
        "signature (ctx, apply) must be (ctx: Context, *, apply: bool) -> Plan",
    ),
    "not-annotated": (
        "def restart_demo(ctx, *, apply):\n"
        '    """Restart.\n\n    Changes: x.\n    Privileges: y.\n    Undo: z.\n    """\n',
        "signature (ctx, *, apply) must be annotated (ctx: Context, *, apply: bool) -> Plan",
    ),
    "no-undo": (
        "from opsbook.remediate.context import Context\n"
        "from opsbook.remediate.plan import Plan\n"
        "def restart_demo(ctx: Context, *, apply: bool) -> Plan:\n"
        '    """Restart.\n\n    Changes: x.\n    Privileges: y.\n    """\n',
        "docstring: no Undo: paragraph (it needs Changes:, Privileges:, Undo:)",
    ),
    "no-docstring": (
        "from opsbook.remediate.context import Context\n"
        "from opsbook.remediate.plan import Plan\n"
        "def restart_demo(ctx: Context, *, apply: bool) -> Plan:\n    pass\n",
        "needs a docstring: a first line saying what it does, then Changes:, Privileges:, Undo:",
    ),
}


@pytest.mark.parametrize(("source", "problem"), BAD_FIXES.values(), ids=BAD_FIXES.keys())
def test_a_fix_that_breaks_the_contract_is_rejected_at_collection(
    suite: pytest.Pytester, source: str, problem: str
) -> None:
    suite.makepyfile(fixes=source, test_demo=linked_check())
    result = suite.runpytest_subprocess("--collect-only")
    assert result.ret == 4
    lines = [line for line in result.stderr.lines if line.strip()]
    assert len(lines) == 1, lines
    assert f"test_demo.py::test_demo: remediation fixes.restart_demo: {problem}" in lines[0], lines[
        0
    ]


def test_a_fix_that_keeps_the_contract_is_collected(suite: pytest.Pytester) -> None:
    suite.makepyfile(fixes=GOOD_FIX, test_demo=linked_check())
    assert suite.runpytest_subprocess("--collect-only").ret == 0


def _fixes() -> list[Callable[..., Any]]:
    """Every fix in remediation/: the public functions that return a Plan."""
    found = []
    for module_info in pkgutil.iter_modules(remediation.__path__):
        module = importlib.import_module(f"opsbook.remediation.{module_info.name}")
        for name, function in inspect.getmembers(module, inspect.isfunction):
            public = function.__module__ == module.__name__ and not name.startswith("_")
            if public and inspect.signature(function).return_annotation in ("Plan", Plan):
                found.append(function)
    return found


@pytest.mark.parametrize("fix", _fixes(), ids=lambda fix: f"{fix.__module__}.{fix.__name__}")
def test_every_fix_keeps_the_contract(fix: Callable[..., Any]) -> None:
    assert problems(fix) == ()


def test_every_fix_names_its_plan_after_itself() -> None:
    """No fix spells its own name: Plan.for_fix takes it from the function being run."""
    for path in (REPO / "remediation").glob("*.py"):
        assert 'Plan("' not in path.read_text(), path


def test_the_kinds_table_in_the_docs_is_the_enum() -> None:
    assert kinds_table() in (REPO / "docs" / "remediation.md").read_text()


def test_allow_takes_known_kinds_only() -> None:
    assert parse_allow(["restart,end-sessions", "restore"]) == {
        StepKind.RESTART,
        StepKind.END_SESSIONS,
        StepKind.RESTORE,
    }
    with pytest.raises(ValueError, match=r"no such kind of step: restat \(risky kinds: restart,"):
        parse_allow(["restat"])


def test_an_unknown_allow_kind_is_a_usage_error(suite: pytest.Pytester) -> None:
    suite.makepyfile(fixes=GOOD_FIX, test_demo=linked_check())
    result = suite.runpytest_subprocess("--remediate=plan", "--allow=restat")
    assert result.ret == 4
    lines = [line for line in result.stderr.lines if line.strip()]
    assert len(lines) == 1, lines
    assert "--allow: no such kind of step: restat (risky kinds: restart, recreate," in lines[0]


def test_allow_help_lists_the_risky_kinds(suite: pytest.Pytester) -> None:
    result = suite.runpytest_subprocess("--help")
    assert "allow a risky kind of fix: restart, recreate, end-sessions" in " ".join(
        result.stdout.str().split()
    )


def test_a_failure_gets_its_fix_planned_under_the_fixs_own_name(suite: pytest.Pytester) -> None:
    """The control for the two tests below: the same failure, neither waived nor unreachable,
    is remediated."""
    suite.makepyfile(fixes=GOOD_FIX, test_demo=linked_check())
    result = suite.runpytest("-m", "daily", "--remediate=plan")
    assert result.ret == 1
    (row,) = findings(suite)
    assert row["remediation_attempt"]["status"] == "planned"
    assert row["remediation_attempt"]["plan"] == ["[restart] restart demo: demo restart"]
    result.stdout.fnmatch_lines(["*remediation fixes.restart_demo: planned*"])


def test_a_waived_failure_is_not_remediated(suite: pytest.Pytester) -> None:
    suite.makepyfile(fixes=GOOD_FIX, test_demo=linked_check())
    (suite.path / "waivers.yaml").write_text(
        "waivers:\n  - {check: DEMO-001, owner: alice, reason: known, ticket: OPS-2,"
        " expires: 2999-01-01}\n"
    )
    result = suite.runpytest("-m", "daily", "--remediate=plan")
    assert result.ret == 0
    (row,) = findings(suite)
    assert row["outcome"] == "waived"
    assert row["remediation_attempt"] is None
    assert "opsbook remediation" not in result.stdout.str()


def test_an_unreachable_target_is_not_remediated(suite: pytest.Pytester) -> None:
    check = linked_check(body='postgres.query("SELECT 1")', arguments="postgres")
    suite.makepyfile(fixes=GOOD_FIX, test_demo=check)
    result = suite.runpytest("-m", "daily", "--remediate=plan")
    assert result.ret == 10
    (row,) = findings(suite)
    assert (row["outcome"], row["unreachable"]) == ("error", True)
    assert row["remediation_attempt"] is None


@pytest.fixture
def inventory(tmp_path: Path) -> Any:
    path = tmp_path / "inventory.yaml"
    path.write_text(
        "name: test\npostgres:\n  chatdb: {port: 5432}\nredis:\n  queue: {}\n"
        "hosts:\n  web1: {}\nhttp:\n  backend: {url: 'http://127.0.0.1:1', kind: backend}\n"
        f"state_dir: {tmp_path / 'state'}\n"
    )
    return load_inventory(path, environ={})


def test_typed_accessors_refuse_the_wrong_kind_of_target(inventory: Any) -> None:
    ctx = Context(inventory, "QUEUE-001", "redis", "queue")
    assert ctx.redis_spec() is inventory.redis["queue"]
    assert ctx.thresholds.dead_letter_max == inventory.thresholds.dead_letter_max
    with pytest.raises(WrongTargetKind, match="wants a postgres target, but QUEUE-001 failed on"):
        ctx.postgres_spec()
    assert Context(inventory, "RES-001", "host", "web1").host_spec() is inventory.hosts["web1"]
    assert Context(inventory, "H-001", "http", "backend").service() == "backend"
    with pytest.raises(WrongTargetKind, match="the inventory has no postgres target 'other'"):
        Context(inventory, "DB-001", "postgres", "other").postgres_spec()


def failing_step(ctx: Context, *, apply: bool) -> Plan:
    """Fail on purpose.

    Changes: nothing.
    Privileges: none.
    Undo: nothing to undo.
    """
    plan = Plan.for_fix(ctx)

    def boom() -> None:
        raise RuntimeError("boom")

    plan.add("fail", "false", StepKind.SCALE, boom)
    return plan.finish(apply, ctx.gate)


def test_after_a_failed_step_only_the_always_steps_run_and_the_line_says_what_they_did() -> None:
    """A plan that stops a writer, fails, and must start it again: the restore's shape."""
    ran: list[str] = []

    def act(name: str, fail: bool = False) -> Callable[[], str]:
        def step() -> str:
            ran.append(name)
            if fail:
                raise RuntimeError(f"{name} broke")
            return f"{name} done"

        return step

    plan = Plan("restore", "deployment/prod")
    plan.add("stop worker", "systemctl stop worker", StepKind.RESTORE, act("stop"))
    plan.add("replace rows", "pg_restore", StepKind.RESTORE, act("replace", fail=True))
    plan.add("swap data", "mv", StepKind.RESTORE, act("swap"))
    plan.add("remove scratch", "rm", StepKind.RESTORE, act("scratch"), always=True,
             only_if=("if unpacked", lambda: False))  # fmt: skip
    plan.add("start worker again", "systemctl start worker", StepKind.RESTORE, act("start"),
             always=True)  # fmt: skip
    plan.add("verify", "GET /health", StepKind.RESTORE, act("verify"))
    with pytest.raises(RemediationFailed) as failed:
        plan.execute(lambda step: None)
    assert ran == ["stop", "replace", "start"]
    assert str(failed.value) == (
        "restore on deployment/prod: step 'replace rows' failed: RuntimeError: replace broke "
        "(done before it: stop worker); afterwards: start worker again: start done"
    )
    assert [step.result for step in plan.steps] == [
        "stop done", "FAILED: RuntimeError: replace broke", NOT_DONE, "not needed",
        "start done", NOT_DONE,
    ]  # fmt: skip
    assert not plan.applied


def test_a_refused_step_still_lets_the_always_steps_run() -> None:
    def gate(step: Step) -> None:
        if step.summary == "replace rows":
            raise Refused("not allowed: restore")

    plan = Plan("restore", "deployment/prod")
    plan.add("replace rows", "pg_restore", StepKind.RESTORE, lambda: None)
    plan.add("start worker again", "start", StepKind.RESTORE, lambda: None, always=True,
             only_if=("if stopped", lambda: False))  # fmt: skip
    with pytest.raises(Refused, match=r"^not allowed: restore; afterwards: nothing to undo$"):
        plan.execute(gate)
    # A plan without always steps fails as it always did: the step's line, no "afterwards".
    plain = Plan("fix", "redis/queue")
    plain.add("restart", "systemctl restart redis", StepKind.RESTART, lambda: 1 / 0)
    with pytest.raises(RemediationFailed, match=r"\(done before it: nothing\)$"):
        plain.execute(lambda step: None)


def test_a_plan_is_named_after_the_fix_the_runner_runs(inventory: Any, tmp_path: Path) -> None:
    remediator = Remediator(inventory, tmp_path / "reports", "run-1")
    ctx = Context(inventory, "DB-001", "postgres", "chatdb")
    attempt = remediator.apply_one(failing_step, ctx, apply=True, redact=str)
    name = "test_fix_contract.failing_step"
    assert attempt.status == "failed"
    assert attempt.reason.startswith(f"{name} on postgres/chatdb: step 'fail' failed:")
    # The deployment's audit log: the intent before the step, the outcome after it.
    log = (tmp_path / "state" / "audit.log").read_text()
    intent, outcome = [json.loads(line) for line in log.splitlines()]
    assert (intent["event"], intent["remediation"]) == ("intent", name)
    assert (outcome["event"], outcome["remediation"], outcome["status"]) == (
        "outcome",
        name,
        "failed",
    )
    # The lock taken for this fix alone is released again.
    assert remediator.take_lock()
    remediator.release_lock()
