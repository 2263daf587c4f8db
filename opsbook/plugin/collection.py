"""Validate every check at collection: `pytest --collect-only` is opsbook's static lint."""

from __future__ import annotations

import inspect

import pytest

from opsbook.check import AREAS, CADENCES, CHECK_ID, Severity, spec_of
from opsbook.plugin.keys import CHECK, INVENTORY, CheckInfo, Prop
from opsbook.remediate.contract import problems as fix_problems


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("opsbook").addoption(
        "--check",
        action="append",
        default=[],
        metavar="ID",
        help="run only these checks (repeat, or separate with commas), e.g. --check=QUEUE-003",
    )


def _docstring_parts(function: object) -> tuple[str, str]:
    doc = inspect.getdoc(function) or ""
    title, _, rest = doc.partition("\n")
    return title.strip(), " ".join(rest.split()).removeprefix("Risk:").strip()


# Which kind of target each target fixture stands for (fixtures/targets.py parametrizes them).
TARGET_KINDS = {
    "http_service": "http",
    "prometheus": "http",
    "grafana": "http",
    "postgres_target": "postgres",
    "redis_target": "redis",
    "host": "host",
    "stack_service": "service",
    "compose_service": "compose",
    "limited_compose_service": "compose",
    "unpublished_service": "compose",
}


# How a failure message names a target of each fixture: "redis queue", "host web1"; an HTTP
# service or a compose service is known by its own name ("backend").
LABEL_PREFIXES = {
    "prometheus": "prometheus ",
    "grafana": "grafana ",
    "postgres_target": "postgres ",
    "redis_target": "redis ",
    "host": "host ",
    "stack_service": "service ",
}


def _target_of(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    return callspec.id if callspec is not None else None


def _target_args(item: pytest.Item) -> list[str]:
    params = getattr(getattr(item, "callspec", None), "params", {})
    return [arg for arg in params if arg in TARGET_KINDS]


def _target_kind_of(item: pytest.Item) -> str:
    args = _target_args(item)
    return TARGET_KINDS[args[0]] if args else ""


def _label_of(item: pytest.Item, target: str | None) -> str:
    args = _target_args(item)
    if target is None or not args:
        return target or ""
    return LABEL_PREFIXES.get(args[0], "") + target


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    problems: list[str] = []
    owner_of_id: dict[str, str] = {}
    inventory = config.stash[INVENTORY]
    # The deployment is part of every target's identity: findings, metrics and lock keys
    # carry it, so that a run over several deployments keeps them apart.
    deployment = inventory.name if inventory is not None else ""
    for item in items:
        function = getattr(item, "obj", None)
        spec = spec_of(function)
        if spec is None:
            continue
        where = f"{item.path.name}::{getattr(function, '__name__', item.name)}"
        title, rationale = _docstring_parts(function)
        markers = tuple(
            dict.fromkeys(
                m.name for m in item.iter_markers() if m.name in CADENCES or m.name in AREAS
            )
        )
        owner = owner_of_id.setdefault(spec.check_id, where)
        if owner != where:
            problems.append(f"{where}: check id {spec.check_id} is already used by {owner}")
        if not CHECK_ID.match(spec.check_id):
            problems.append(f"{where}: check id {spec.check_id!r} is not like AREA-001")
        if not isinstance(spec.severity, Severity):
            problems.append(f"{where}: severity must be a Severity, not {spec.severity!r}")
        if not title:
            problems.append(f"{where}: a check needs a docstring; its first line is the title")
        if not any(m in CADENCES for m in markers):
            problems.append(f"{where}: no cadence marker (one of {', '.join(CADENCES)})")
        if spec.remediation is not None:
            problems.extend(f"{where}: {problem}" for problem in fix_problems(spec.remediation))
        target = _target_of(item)
        # A check of the whole deployment (no target) names the deployment in its messages.
        label = _label_of(item, target) or deployment
        info = CheckInfo(spec, title, rationale, target, markers, label)
        item.stash[CHECK] = info
        item.user_properties.extend(
            [
                (Prop.CHECK_ID, spec.check_id),
                (Prop.TITLE, title),
                (Prop.RISK, rationale),
                (Prop.SEVERITY, str(spec.severity)),
                (Prop.TARGET, info.target or ""),
                (Prop.TARGET_KIND, _target_kind_of(item)),
                (Prop.DEPLOYMENT, deployment),
                (Prop.MARKERS, ",".join(markers)),
                (Prop.REMEDIATION, spec.remediation_name or ""),
            ]
        )
    problems.extend(_unknown_waivers(config, owner_of_id))
    if problems:
        # Deduplicate: a parametrized check would repeat its problem once per target.
        raise pytest.UsageError("invalid check: " + "; ".join(dict.fromkeys(problems)))
    _select_check_ids(config, items, owner_of_id)


def _unknown_waivers(config: pytest.Config, known: dict[str, str]) -> list[str]:
    """A waiver for a check id that does not exist waives nothing: a typo, or a check renamed.

    Only judged when every check was collected (not when a person ran one file)."""
    from opsbook.plugin.waivers import WAIVERS

    waivers = config.stash.get(WAIVERS, None)
    if waivers is None or config.args_source != pytest.Config.ArgsSource.TESTPATHS:
        return []
    return [
        f"waiver for {w.check} ({w.owner}, {w.ticket}): no such check"
        for w in waivers.waivers
        if w.check not in known
    ]


def _select_check_ids(
    config: pytest.Config, items: list[pytest.Item], known: dict[str, str]
) -> None:
    wanted = {part.strip() for given in config.getoption("check") for part in given.split(",")}
    wanted.discard("")
    if not wanted:
        return
    unknown = sorted(wanted - set(known))
    if unknown:
        raise pytest.UsageError(f"--check: no such check: {', '.join(unknown)}")
    keep = [
        item for item in items if CHECK in item.stash and item.stash[CHECK].spec.check_id in wanted
    ]
    dropped = [item for item in items if item not in keep]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        # `pytest --collect-only` validates every check without touching any target: it
        # needs no inventory (without one, checks are listed once each, untargeted).
        return
    selected_checks = [item for item in session.items if CHECK in item.stash]
    if selected_checks and session.config.stash[INVENTORY] is None:
        raise pytest.UsageError(
            "no inventory: pass --inventory PATH, set OPSBOOK_INVENTORY, "
            "or start the sandbox with `python -m opsbook sandbox up`"
        )
