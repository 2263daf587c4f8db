"""Fresh looks at a target, for remediations deciding whether there is anything to fix."""

from __future__ import annotations

import time

from opsbook.errors import TargetUnreachable
from opsbook.remediate.context import Context
from opsbook.targets import HttpTarget, PostgresTarget, RedisTarget

POLL_S = 0.25


def healthy(ctx: Context) -> bool:
    """Whether the failing target answers now (a new connection, not the run's cached one)."""
    if ctx.target_kind == "compose":
        return ctx.runtime().is_running(ctx.service())
    timeout = ctx.thresholds.timeout_s
    try:
        if ctx.target_kind == "http":
            return HttpTarget(ctx.target, ctx.http_spec(), timeout).health().status_code == 200
        if ctx.target_kind == "postgres":
            target = PostgresTarget(ctx.target, ctx.postgres_spec(), timeout)
            try:
                return target.query("SELECT 1") == [(1,)]
            finally:
                target.close()
        if ctx.target_kind == "redis":
            redis_target = RedisTarget(ctx.target, ctx.redis_spec(), timeout)
            try:
                return bool(redis_target.client().ping())
            finally:
                redis_target.close()
    except TargetUnreachable:
        return False
    raise ValueError(f"cannot tell whether a {ctx.target_kind} target is healthy")


def healthy_within(ctx: Context, deadline_s: float) -> bool:
    end = time.monotonic() + deadline_s
    while not healthy(ctx):
        if time.monotonic() >= end:
            return False
        time.sleep(POLL_S)
    return True
