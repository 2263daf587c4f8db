"""The audit trail: reports/<UTC stamp>-<run id>/ with report.html, junit.xml, findings.json,
status.html (the status page, opsbook.pages.status_page, rendered from findings.json) and, when
the run has audit checks, audit-summary.json (opsbook.pages.audit_summary). reports/status.html,
the page across the last runs of the same selection (opsbook.pages.run_strip), is rewritten
once a run's folder is in place.

Everything is written into a hidden staging folder that is renamed into place when the run
ends, so a reader never opens a half-written file; `reports/latest` then points at it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Generator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from msgspec import Struct

from opsbook.check import Severity
from opsbook.history import Changes, KeptRun, compare, earlier_runs, kept_runs
from opsbook.pages import audit_summary, run_strip, status_page
from opsbook.plugin.keys import FINDINGS, INVENTORY, RUN_ID, audit_trail_gap
from opsbook.plugin.outcomes import settle_exit_code
from opsbook.report_files import (
    ReportsGroupError,
    make_folder,
    reports_group,
    restrict,
    restrict_tree,
)
from opsbook.schema import SCHEMA_VERSION

LATEST = "latest"
AUDIT_LOG = "audit.log"


class Run(Struct):
    """One run's identity and the folder its reports go to."""

    run_id: str
    started: datetime
    reports_dir: Path
    # The group that may read the reports (opsbook.report_files).
    group: int

    @property
    def name(self) -> str:
        return f"{self.started:%Y%m%dT%H%M%SZ}-{self.run_id}"

    @property
    def staging(self) -> Path:
        return self.reports_dir / f".{self.name}.partial"

    @property
    def final(self) -> Path:
        return self.reports_dir / self.name


RUN = pytest.StashKey["Run | None"]()
CHANGES = pytest.StashKey["Changes"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("opsbook")
    group.addoption(
        "--reports-dir",
        metavar="DIR",
        help="where each run's report folder goes (default: reports/ under the rootdir)",
    )
    group.addoption("--no-reports", action="store_true", help="write no report folder for this run")
    group.addoption(
        "--reports-group",
        metavar="GROUP",
        help="the group that may read the reports and the audit log (default: the runner's "
        "own); files are 0640, folders 0750",
    )


def _wanted(config: pytest.Config) -> bool:
    return not (
        config.getoption("no_reports")
        or config.option.collectonly
        or config.option.help
        or config.option.version
        or hasattr(config, "workerinput")
    )


def pytest_configure(config: pytest.Config) -> None:
    # Not tryfirst: the inventory must load (and may refuse) first. Being registered after
    # junitxml and pytest-html, this still runs before they read the paths set here.
    config.stash[RUN] = None
    if not _wanted(config):
        return
    reports_dir = Path(config.getoption("reports_dir") or config.rootpath / "reports")
    try:
        group = reports_group(config.getoption("reports_group"))
    except ReportsGroupError as exc:
        raise pytest.UsageError(f"--reports-group: {exc}") from None
    run = Run(secrets.token_hex(4), datetime.now(UTC), reports_dir, group)
    try:
        make_folder(run.staging, group)
    except OSError as exc:
        raise pytest.UsageError(
            f"reports folder {reports_dir}: {exc.strerror or exc}"
            " (choose another with --reports-dir=DIR, or run with --no-reports)"
        ) from None
    try:
        # The folder of every run and of the audit log, which this group may read from now on.
        # Best effort: an audit log that cannot be changed (read-only) says so when written.
        restrict(reports_dir, group)
        if (reports_dir / AUDIT_LOG).exists():
            restrict(reports_dir / AUDIT_LOG, group)
    except OSError:
        pass
    config.stash[RUN] = run
    config.stash[RUN_ID] = run.run_id
    # A person's own --junitxml / --html wins; ours go into the run folder otherwise.
    if not config.option.xmlpath:
        config.option.xmlpath = str(run.staging / "junit.xml")
    if not getattr(config.option, "htmlpath", None):
        config.option.htmlpath = str(run.staging / "report.html")
        config.option.self_contained_html = True


def _summary(config: pytest.Config, run: Run, exit_status: int) -> dict[str, Any]:
    from opsbook.plugin.inventory_option import chosen_inventory_path
    from opsbook.provenance import provenance
    from opsbook.remediate.runner import audit_head

    inventory = config.stash[INVENTORY]
    finished = datetime.now(UTC)
    inventory_path = chosen_inventory_path(config)
    return {
        "run_id": run.run_id,
        "started": run.started.isoformat(),
        "finished": finished.isoformat(timespec="seconds"),
        "duration_s": round((finished - run.started).total_seconds(), 3),
        "inventory": inventory.name if inventory is not None else None,
        "inventory_path": str(inventory_path.resolve()) if inventory_path else None,
        "rootdir": str(config.rootpath),
        "selection": config.option.markexpr or None,
        "exit_code": int(exit_status),
        "counts": config.stash[FINDINGS].counts(),
        # Anchors the deployment's audit log (the weaker anchor: see docs/remediation.md).
        "audit_head": audit_head(inventory) if inventory is not None else None,
        "provenance": provenance(inventory_path),
    }


def changes_since(config: pytest.Config, run: Run) -> Changes:
    """Compared once per run, with earlier runs of the same selection."""
    if CHANGES not in config.stash:
        selection = config.option.markexpr or None
        earlier = earlier_runs(run.reports_dir, selection, run.started.isoformat())
        config.stash[CHANGES] = compare(config.stash[FINDINGS].to_builtins(), earlier)
    return config.stash[CHANGES]


def _write_text(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def _write_json(path: Path, document: object) -> None:
    _write_text(path, json.dumps(document, indent=2, default=str) + "\n")


def _point_latest(run: Run) -> None:
    link = run.reports_dir / LATEST
    temporary = run.reports_dir / f".{LATEST}.{run.run_id}"
    temporary.symlink_to(run.name)
    os.replace(temporary, link)


def _staged_reporters(config: pytest.Config, run: Run) -> list[tuple[object, str, str | Path]]:
    """pytest-html's and junitxml's plugin objects that write into the run's staging folder,
    with the attribute holding their file (private attributes: only those that are there)."""
    found = []
    for plugin in config.pluginmanager.get_plugins():
        for attribute in ("_report_path", "logfile"):
            path = getattr(plugin, attribute, None)
            if isinstance(path, str | Path) and Path(path).parent == run.staging:
                found.append((plugin, attribute, path))
    return found


def _retarget_html_message(config: pytest.Config, run: Run) -> None:
    # pytest-html prints "Generated html report: <path>" with the staging path, junitxml
    # "generated xml file: <path>"; point them at where the files are published. Called from
    # the terminal summary, after both files are written.
    for plugin, attribute, path in _staged_reporters(config, run):
        setattr(plugin, attribute, type(path)(run.final / Path(path).name))


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """A run that selected no check writes no report folder, and no report file is announced."""
    config = session.config
    run = config.stash[RUN]
    if run is None or session.items or session.testsfailed:
        return
    if not _drop_reporters(config, run):
        return  # junitxml would write into the staging folder: sessionfinish removes it then
    shutil.rmtree(run.staging, ignore_errors=True)
    config.stash[RUN] = None


def _drop_reporters(config: pytest.Config, run: Run) -> bool:
    """Unregister the reporters that write into the staging folder, so that they neither
    write nor announce a file; False (and nothing dropped) when junitxml cannot be."""
    reporters = _staged_reporters(config, run)
    junitxml = [plugin for plugin, attribute, _ in reporters if attribute == "logfile"]
    if junitxml and not _forget_junitxml(config, junitxml[0]):
        return False
    for plugin, _, _ in reporters:
        config.pluginmanager.unregister(plugin)
    return True


def _forget_junitxml(config: pytest.Config, plugin: object) -> bool:
    # junitxml unregisters the plugin object it stashed when pytest unconfigures; unless it is
    # taken out of the (private) stash first, that would fail on an unregistered plugin.
    try:
        from _pytest.junitxml import xml_key
    except ImportError:
        return False
    if config.stash.get(xml_key, None) is not plugin:
        return False
    del config.stash[xml_key]
    return True


@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish(session: pytest.Session) -> Generator[None, None, None]:
    """Publish the run folder once junit.xml and report.html are written (inside this wrapper)."""
    config = session.config
    try:
        yield
    except OSError as exc:
        # junitxml or pytest-html could not write (a full disk, say). The checks' outcome
        # stands and is shown; the exception also skipped the exit code's settling.
        if config.stash[RUN] is None:
            raise
        _not_written(session, exc)
        settle_exit_code(session)
        return
    run = config.stash[RUN]
    if run is None:
        return
    findings = config.stash[FINDINGS]
    if not findings.rows:
        # Not a checks run (the suite's own tests, say): leave no report folder behind.
        shutil.rmtree(run.staging, ignore_errors=True)
        config.stash[RUN] = None
        return
    document: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run": _summary(config, run, session.exitstatus),
        "changes": changes_since(config, run).to_dict(),
        "findings": sorted(
            findings.to_builtins(),
            key=lambda row: (-Severity[row["severity"].upper()], row["check_id"], row["nodeid"]),
        ),
    }
    try:
        _write_json(run.staging / "findings.json", document)
        _write_text(run.staging / "status.html", status_page.render(document))
        if any(audit_summary.is_audit(row) for row in document["findings"]):
            _write_json(run.staging / audit_summary.FILE_NAME, audit_summary.summarize(document))
        restrict_tree(run.staging, run.group)
        os.replace(run.staging, run.final)
        _point_latest(run)
    except OSError as exc:
        _not_written(session, exc)
        settle_exit_code(session)
        return
    if not os.environ.get("OPSBOOK_FLEET_CHILD"):
        # A fleet child's folder holds its one run, which the fleet's own pages link to.
        _write_status_across_runs(config, run, document)


def _write_status_across_runs(config: pytest.Config, run: Run, document: dict[str, Any]) -> None:
    """reports/status.html: this run and the earlier ones of its deployment and selection (a
    reports folder shared by two inventories, or holding a merged fleet's folder, keeps their
    strips apart). The run's own folder is in place already; a page that cannot be written is
    one line, not a failed run."""
    selection = config.option.markexpr or None
    inventory = document["run"]["inventory"]
    runs = [
        kept
        for kept in kept_runs(run.reports_dir, selection, run.started.isoformat())
        if (kept.document.get("run") or {}).get("inventory") == inventory
    ]
    runs.append(KeptRun(run.name, document))
    try:
        run_strip.write(run.reports_dir, runs, run.group)
    except (OSError, KeyError, TypeError, ValueError) as exc:
        # An earlier run's findings.json of another version may lack what the page reads.
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else repr(exc)
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"opsbook: {run.reports_dir / run_strip.PAGE_NAME} not written: {reason}"
            )


def _not_written(session: pytest.Session, exc: OSError) -> None:
    """Drop what was staged of a run folder that could not be completed, and keep why."""
    config = session.config
    run = config.stash[RUN]
    assert run is not None
    _drop_reporters(config, run)
    shutil.rmtree(run.staging, ignore_errors=True)
    config.stash[RUN] = None
    audit_trail_gap(config, f"the run's reports, in {run.reports_dir}: {exc.strerror or exc}")


@pytest.hookimpl(optionalhook=True, trylast=True)
def pytest_html_results_summary(
    prefix: list[str], summary: list[str], postfix: list[str], session: pytest.Session
) -> None:
    """report.html: the audit checks by control family (as audit-summary.json has them), after
    the audit summary opsbook.plugin.html writes below the table."""
    rows = session.config.stash[FINDINGS].to_builtins()
    if any(audit_summary.is_audit(row) for row in rows):
        postfix.append(audit_summary.html_section(audit_summary.summarize({"findings": rows})))


@pytest.hookimpl(tryfirst=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    config = terminalreporter.config
    run = config.stash.get(RUN, None)
    if run is not None and config.stash[FINDINGS].rows:
        _retarget_html_message(config, run)
        terminalreporter.write_sep("-", f"opsbook report: {run.final / 'report.html'}")
