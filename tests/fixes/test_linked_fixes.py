"""The fixes linked to the runbook's checks, each proven on the real sandbox: the component is
really broken, the check fails, `--remediate=apply` carries out the linked fix, and the same
check, run again, passes (FIXED). Each fix acts on the cause: the service that owns the failing
target (Redis for QUEUE-001), never a service that depends on it (the backend keeps its pid).

Breakage that makes the application log errors (Redis down, a consumer restarted under load)
runs on a fresh sandbox of its own, so that LOG-001 of later runs on the shared one stays clean.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import requests
from support import CheckRun, RunChecks, eventually, started_between_scrapes
from test_alerting import RULES, loaded_rules, reload_prometheus
from test_backup import backup_command, backup_inventory
from test_remediation_queue import start_conversation

from opsbook import backup
from opsbook.inventory import load_inventory
from opsbook.remediate.context import Context
from opsbook.remediate.plan import Plan
from opsbook.remediation import database, prometheus, queue, services
from opsbook.sandbox.stack import Stack
from opsbook.targets import HttpTarget

pytestmark = pytest.mark.sandbox

PENDING = "message_queue"
DEAD_LETTER = "dead_letter_queue"
PROCESSED = "processed_messages"
TIMEOUT_S = 3.0


def fixed(run: CheckRun, check_id: str, target: str | None = None) -> dict[str, Any]:
    """The attempt of a check the run fixed: applied, FIXED, and the check passed after."""
    row = run.row(check_id, target)
    assert row["outcome"] == "fixed", run.output
    attempt = row["remediation_attempt"]
    assert (attempt["status"], attempt["verdict"], attempt["after"]) == (
        "applied", "FIXED", "passed",
    ), attempt  # fmt: skip
    return dict(attempt)


def nothing_to_do(
    stack: Stack, fix: Callable[..., Plan], check_id: str, kind: str, target: str,
    env: dict[str, str] | None = None, inventory: Path | None = None,
) -> str:  # fmt: skip
    """Apply the fix again, directly, once its check passes: it must find nothing to do."""
    loaded = load_inventory(inventory or stack.inventory_path, environ=env or {})
    plan = fix(Context(loaded, check_id, kind, target, fix=fix), apply=True)
    assert plan.nothing_to_do is not None, plan.lines()
    assert not plan.applied
    return plan.nothing_to_do


def pids(stack: Stack, *names: str) -> dict[str, int | None]:
    return {name: stack.component(name).pid() for name in names}


def admin_client(stack: Stack) -> redis.Redis:
    password = (stack.dir / "secrets" / "redis-default.password").read_text().strip()
    return redis.Redis(
        port=stack.state.ports["redis"], password=password, socket_timeout=TIMEOUT_S,
        decode_responses=True,
    )  # fmt: skip


def message(content: str, conversation: str | None = None, age_s: float = 0.0) -> str:
    """A message of a conversation (the worker stores it), enqueued age_s ago."""
    return json.dumps(
        {
            "id": str(uuid.uuid4()), "conversation_id": conversation, "user_id": "opsbook-test",
            "role": "user", "content": content, "enqueued_at": time.time() - age_s,
        }
    )  # fmt: skip


# QUEUE-001 and DB-001: the service that owns the target is restarted, not its dependents


@pytest.mark.breaks("QUEUE-001")
@pytest.mark.fixes("QUEUE-001")
def test_stopped_redis_is_restarted_and_the_backend_is_left_alone(
    fresh_sandbox: Stack, run_checks: RunChecks
) -> None:
    stack, inventory = fresh_sandbox, fresh_sandbox.inventory_path
    dependents = pids(stack, "backend", "worker", "nginx")
    stack.stop("redis")
    run = run_checks(
        "--check=QUEUE-001", "--remediate=apply", "--allow=restart,recreate", inventory=inventory
    )
    attempt = fixed(run, "QUEUE-001", "queue")
    assert attempt["plan"] == [
        f"[restart] restart redis, which serves queue: python -m opsbook sandbox restart redis "
        f"--dir {stack.dir} -> healthy",
        f"[recreate] recreate redis (only if queue is still unhealthy): python -m opsbook "
        f"sandbox recreate redis --dir {stack.dir} -> not needed",
    ]
    assert stack.component("redis").is_running()
    assert pids(stack, "backend", "worker", "nginx") == dependents
    again = nothing_to_do(stack, services.restart_service, "QUEUE-001", "redis", "queue")
    assert again == "queue answers now"
    # The next daily run is green but for the log check (the outage's errors are in the logs)
    # and the host's resources (RES-*: this machine's load, shared with other test runs).
    daily = run_checks(inventory=inventory)
    failing = {
        key: outcome
        for key, outcome in daily.outcomes().items()
        if outcome not in ("passed", "skipped") and not key[0].startswith(("LOG-", "RES-"))
    }
    assert not failing, daily.output


# BACKUP-002 and BACKUP-003: a new backup, proven by the check on fresh facts


def _rewrite_manifest(info: backup.BackupInfo, dump: Path) -> None:
    """Record the dump as it is now: complete by its manifest, whatever its content."""
    manifest = json.loads((info.path / "manifest.json").read_text())
    manifest["parts"][dump.name].update(
        size=dump.stat().st_size, sha256=hashlib.sha256(dump.read_bytes()).hexdigest()
    )
    (info.path / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def one_backup(sandbox: Stack, tmp_path: Path) -> tuple[Path, backup.BackupInfo]:
    """(an inventory whose backups go to a folder of the test's own, the one backup there)."""
    inventory = backup_inventory(sandbox, tmp_path / "backups")
    taken = backup_command("--inventory", str(inventory))
    assert taken.returncode == 0, taken.stderr
    latest = backup.latest_backup(tmp_path / "backups")
    assert latest is not None
    return inventory, latest


@pytest.mark.fixes("BACKUP-002")
def test_truncated_backup_is_replaced_by_a_new_one(
    one_backup: tuple[Path, backup.BackupInfo], run_checks: RunChecks
) -> None:
    inventory, truncated = one_backup
    dump = truncated.path / "postgres-chatdb.dump"
    dump.write_bytes(dump.read_bytes()[:200])
    run = run_checks("--check=BACKUP-002", "-m", "backup", "--remediate=apply", inventory=inventory)
    attempt = fixed(run, "BACKUP-002")
    assert attempt["plan"][0].startswith(
        f"[backup] take a backup: {truncated.name} is incomplete: "
    ), attempt
    latest = backup.latest_backup(truncated.path.parent)
    assert latest is not None
    assert latest.name != truncated.name
    assert backup.verify(latest) == []


@pytest.mark.fixes("BACKUP-003")
def test_backup_that_does_not_restore_is_replaced_and_drilled(
    one_backup: tuple[Path, backup.BackupInfo], run_checks: RunChecks
) -> None:
    inventory, broken = one_backup
    dump = broken.path / "postgres-chatdb.dump"
    dump.write_bytes(dump.read_bytes()[:200])
    _rewrite_manifest(broken, dump)
    run = run_checks("--check=BACKUP-003", "-m", "backup", "--remediate=apply", inventory=inventory)
    attempt = fixed(run, "BACKUP-003", "chatdb")
    (step,) = attempt["plan"]
    assert step.startswith(
        f"[backup] take a new backup and drill it: {broken.name}: pg_restore of "
    ), step
    assert step.endswith("parts); it restores into a scratch cluster"), step
    assert not list(Path("/tmp").glob("opsbook-drill-*")), "a scratch cluster was left behind"


# ALERT-002: rules written but not loaded


@pytest.mark.fixes("ALERT-002")
def test_rules_written_but_not_loaded_are_loaded_by_a_reload(
    breakable_sandbox: Stack, run_checks: RunChecks
) -> None:
    rules = breakable_sandbox.dir / "prometheus" / "rules" / RULES
    shipped = rules.read_text()
    # Prometheus loads a rules dir without the runbook's rules (memory-limits.rules.yml stays);
    # then a deploy writes the rules and forgets the reload.
    rules.unlink()
    try:
        reload_prometheus(breakable_sandbox)
        eventually(
            lambda: "HighErrorRate" not in loaded_rules(breakable_sandbox),
            "Prometheus dropped the rules",
        )
    finally:
        rules.write_text(shipped)
    prometheus_pid = breakable_sandbox.component("prometheus").pid()
    run = run_checks("--check=ALERT-002", "--remediate=apply")
    attempt = fixed(run, "ALERT-002")
    (step,) = attempt["plan"]
    assert step.startswith("[reload] reload prometheus: not loaded: group chat-system"), step
    assert f": kill -HUP {prometheus_pid} -> every shipped rule is loaded" in step, step
    assert breakable_sandbox.component("prometheus").pid() == prometheus_pid  # not restarted
    again = nothing_to_do(
        breakable_sandbox, prometheus.reload_rules, "ALERT-002", "http", "prometheus"
    )
    assert again == "every shipped rule is loaded"


# OBS-002: a scrape target down, its service restarted


def _scraped_up(stack: Stack, job: str) -> str | None:
    url = f"http://127.0.0.1:{stack.state.ports['prometheus']}/api/v1/query"
    try:
        answer = requests.get(url, params={"query": f'up{{job="{job}"}}'}, timeout=TIMEOUT_S)
    except requests.RequestException:
        return None
    series = answer.json()["data"]["result"]
    return str(series[0]["value"][1]) if series else None


@pytest.mark.fixes("OBS-002")
def test_scrape_target_down_has_its_service_restarted(
    breakable_sandbox: Stack, run_checks: RunChecks
) -> None:
    breakable_sandbox.stop("backend")
    eventually(lambda: _scraped_up(breakable_sandbox, "backend") == "0", "backend scraped down")
    prometheus_pid = breakable_sandbox.component("prometheus").pid()
    run = run_checks("--check=OBS-002", "--remediate=apply", "--allow=restart")
    attempt = fixed(run, "OBS-002")
    (step,) = attempt["plan"]
    port = breakable_sandbox.state.ports["backend"]
    assert step == (
        f"[restart] restart backend: scrape target backend/127.0.0.1:{port} is down: "
        f"python -m opsbook sandbox restart backend --dir {breakable_sandbox.dir} "
        "-> answers, scraped up"
    )
    assert breakable_sandbox.component("prometheus").pid() == prometheus_pid
    again = nothing_to_do(
        breakable_sandbox, services.restart_scrape_targets, "OBS-002", "http", "prometheus"
    )
    assert again == "every scrape target is up"


@pytest.mark.fixes("OBS-002")
def test_a_scrape_target_started_since_its_last_scrape_is_not_restarted(
    breakable_sandbox: Stack,
) -> None:
    """The backend started after Prometheus's last scrape of it: Prometheus still says "down",
    and the fix, reading Prometheus once its next scrape is in, leaves the backend alone."""
    inventory = load_inventory(breakable_sandbox.inventory_path, environ={})
    scraper = HttpTarget("prometheus", inventory.http["prometheus"], TIMEOUT_S)
    try:
        started_between_scrapes(
            lambda: breakable_sandbox.stop("backend"),
            lambda: breakable_sandbox.start("backend"),
            scraper,
            "backend",
        )
    finally:
        scraper.close()
    backend = pids(breakable_sandbox, "backend")
    again = nothing_to_do(
        breakable_sandbox, services.restart_scrape_targets, "OBS-002", "http", "prometheus"
    )
    assert again == "every scrape target is up"
    assert pids(breakable_sandbox, "backend") == backend


# DB-002: connections near the limit, idle sessions ended


def app_connection(stack: Stack) -> psycopg.Connection[tuple[Any, ...]]:
    password = (stack.dir / "secrets" / "chat_app.password").read_text().strip()
    return psycopg.connect(
        host="127.0.0.1", port=stack.state.ports["postgres"], dbname="chatdb", user="chat_app",
        password=password, connect_timeout=3, application_name="opsbook-test-idle",
    )  # fmt: skip


@pytest.mark.fixes("DB-002")
def test_idle_sessions_are_ended_when_connections_near_the_limit(
    fresh_sandbox: Stack, run_checks: RunChecks
) -> None:
    """A fresh sandbox: the worker's own idle connection is ended too, and it logs an error
    the next time it stores a message."""
    idle = {"OPSBOOK__THRESHOLDS__IDLE_SESSION_S": "1"}
    connections = [app_connection(fresh_sandbox) for _ in range(40)]  # of max_connections 50
    try:
        for connection in connections:
            connection.autocommit = True
            connection.execute("SELECT 1")  # idle from now on, outside a transaction
        time.sleep(1.5)  # past the 1 s idle limit; what is measured is PostgreSQL's state_change
        run = run_checks(
            "--check=DB-002", "--remediate=apply", "--allow=end-sessions", env=idle,
            inventory=fresh_sandbox.inventory_path,
        )  # fmt: skip
        attempt = fixed(run, "DB-002", "chatdb")
        (step,) = attempt["plan"]
        assert step.startswith("[end-sessions] end "), step
        assert "of chat_app@chatdb" in step
        ended = 0
        for connection in connections:
            try:
                connection.execute("SELECT 1")
            except psycopg.OperationalError:
                ended += 1
        assert ended == 40
        again = nothing_to_do(
            fresh_sandbox, database.end_idle_sessions, "DB-002", "postgres", "chatdb", idle
        )
        assert again.endswith(" %, max 80 %)"), again
    finally:
        for connection in connections:
            connection.close()


# QUEUE-002: Redis memory, dead letters archived and trimmed, pending messages untouched


@pytest.fixture
def stopped_worker(breakable_sandbox: Stack) -> Iterator[redis.Redis]:
    """The worker stopped (so that pending messages stay pending); the queue is cleaned up
    after the test, and the worker started again."""
    client = admin_client(breakable_sandbox)
    breakable_sandbox.stop("worker")
    yield client
    client.delete(PENDING, DEAD_LETTER)
    breakable_sandbox.start("worker")
    client.close()


@pytest.mark.fixes("QUEUE-002")
def test_dead_letters_filling_redis_are_archived_and_trimmed(
    breakable_sandbox: Stack, stopped_worker: redis.Redis, run_checks: RunChecks
) -> None:
    client = stopped_worker
    pending = [message(f"pending {n}") for n in range(5)]
    client.lpush(PENDING, *pending)
    letters = [f"dead letter {n} " + "x" * 4000 for n in range(1000)]  # about 4 MiB
    pipe = client.pipeline(transaction=False)
    for letter in letters:
        pipe.lpush(DEAD_LETTER, letter)
    pipe.execute()
    original = client.config_get("maxmemory")["maxmemory"]
    used = int(client.info("memory")["used_memory"])
    try:
        client.config_set("maxmemory", int(used / 0.93))  # 93 % used, 90 % allowed
        run = run_checks("--check=QUEUE-002", "--remediate=apply", "--allow=trim")
        attempt = fixed(run, "QUEUE-002", "queue")
    finally:
        client.config_set("maxmemory", original)
    (step,) = attempt["plan"]
    assert step.startswith("[trim] archive the 990 oldest of the 1000 dead letters to "), step
    assert client.lrange(PENDING, 0, -1) == pending[::-1]  # untouched, in order
    assert client.lrange(DEAD_LETTER, 0, -1) == letters[:-11:-1]  # the newest 10 stay
    again = nothing_to_do(breakable_sandbox, queue.trim_queue_memory, "QUEUE-002", "redis", "queue")
    assert again.endswith("% of maxmemory (max 90 %)"), again
    (archive,) = (breakable_sandbox.dir / "backups").glob("dead-letters-queue-*.jsonl")
    try:
        archived = [json.loads(line) for line in archive.read_text().splitlines()]
        assert archived == letters[:990]  # oldest first, each once
    finally:
        archive.unlink()


@pytest.mark.fixes("QUEUE-002")
def test_processed_history_past_retention_is_trimmed(
    breakable_sandbox: Stack, stopped_worker: redis.Redis, run_checks: RunChecks
) -> None:
    """Ids of messages PostgreSQL has held for 40 days (retention: 30) fill Redis; the newer
    history and every pending message stay."""
    client, tag = stopped_worker, f"opsbook-history-{uuid.uuid4()}"
    pending = [message(f"pending {n}") for n in range(5)]
    client.lpush(PENDING, *pending)
    old = superuser(
        breakable_sandbox,
        f"INSERT INTO conversations (id, user_id) VALUES ('{uuid.uuid4()}', '{tag}');"
        ' INSERT INTO messages (id, conversation_id, role, content, "timestamp")'
        f" SELECT gen_random_uuid(), c.id, 'user', '{tag}', now() - interval '40 days'"
        f" FROM conversations c, generate_series(1, 20000) WHERE c.user_id = '{tag}'"
        " RETURNING id",
    ).split()[:20000]
    assert len(old) == 20000
    newer = client.lrange(PROCESSED, 0, -1)
    pipe = client.pipeline(transaction=False)
    for chunk in range(0, len(old), 1000):
        pipe.rpush(PROCESSED, *old[chunk : chunk + 1000])  # the oldest end
    pipe.execute()
    original = client.config_get("maxmemory")["maxmemory"]
    used = int(client.info("memory")["used_memory"])
    try:
        client.config_set("maxmemory", int(used / 0.93))
        run = run_checks("--check=QUEUE-002", "--remediate=apply", "--allow=trim")
        attempt = fixed(run, "QUEUE-002", "queue")
    finally:
        client.config_set("maxmemory", original)
        while client.lindex(PROCESSED, -1) in set(old):
            client.ltrim(PROCESSED, 0, -2)
        superuser(
            breakable_sandbox,
            f"DELETE FROM messages WHERE content = '{tag}';"
            f" DELETE FROM conversations WHERE user_id = '{tag}'",
        )
    (step,) = attempt["plan"]
    assert step.startswith(
        "[trim] trim the 20000 oldest ids of processed_messages, of messages stored more than "
        "30 days ago: Redis uses "
    ), step
    assert client.lrange(PROCESSED, 0, -1) == newer
    assert client.lrange(PENDING, 0, -1) == pending[::-1]


# QUEUE-005 and QUEUE-007: nothing moving, the inventory's consumer restarted


@pytest.mark.fixes("QUEUE-005", "QUEUE-007")
@pytest.mark.parametrize(
    ("check_id", "target", "env"),
    [
        ("QUEUE-005", "queue", {"OPSBOOK__THRESHOLDS__OLDEST_MESSAGE_AGE_S": "5"}),
        # A check of the pipeline: its target is the database with the queue.
        ("QUEUE-007", "chatdb-queue", {"OPSBOOK__THRESHOLDS__PROCESSED_WINDOW_S": "1"}),
    ],
)
def test_stopped_consumer_is_restarted(
    fresh_sandbox: Stack, run_checks: RunChecks, check_id: str, target: str, env: dict[str, str]
) -> None:
    stack = fresh_sandbox
    client = admin_client(stack)
    conversation = start_conversation(stack, client)
    backend = stack.component("backend").pid()
    stack.stop("worker")
    try:
        time.sleep(1.1)  # nothing stored within QUEUE-007's 1 s window
        waiting = [message(f"waiting {n}", conversation, age_s=60) for n in range(20)]
        client.lpush(PENDING, *waiting)
        run = run_checks(
            f"--check={check_id}", "--remediate=apply", "--allow=restart", env=env,
            inventory=stack.inventory_path,
        )  # fmt: skip
        attempt = fixed(run, check_id, target)
        (step,) = attempt["plan"]
        assert step.startswith(
            "[restart] restart worker: 20 messages wait in message_queue, 0 processed in 0.5 s: "
            f"python -m opsbook sandbox restart worker --dir {stack.dir} -> "
        ), step
        assert stack.component("worker").is_running()
        assert stack.component("backend").pid() == backend
        eventually(lambda: client.llen(PENDING) == 0, "the queue drained")
        again = nothing_to_do(stack, queue.restart_consumer, check_id, "redis", "queue", env)
        assert again == "message_queue is empty"
    finally:
        stack.start("worker")
        client.close()


# OBS-001 and BACKUP-001: Prometheus stopped, backups stopped


@pytest.mark.fixes("OBS-001")
def test_stopped_prometheus_is_restarted(breakable_sandbox: Stack, run_checks: RunChecks) -> None:
    breakable_sandbox.stop("prometheus")
    run = run_checks("--check=OBS-001", "--remediate=apply", "--allow=restart")
    attempt = fixed(run, "OBS-001", "prometheus")
    assert attempt["plan"][0].endswith(
        f"restart prometheus --dir {breakable_sandbox.dir} -> healthy"
    ), attempt
    assert breakable_sandbox.component("prometheus").is_running()


@pytest.mark.fixes("BACKUP-001")
def test_no_backup_has_one_taken(sandbox: Stack, tmp_path: Path, run_checks: RunChecks) -> None:
    inventory = backup_inventory(sandbox, tmp_path / "backups")  # backups stopped: none there
    run = run_checks("--check=BACKUP-001", "-m", "backup", "--remediate=apply", inventory=inventory)
    attempt = fixed(run, "BACKUP-001")
    assert attempt["plan"][0].startswith("[backup] take a backup: there is no backup: "), attempt
    latest = backup.latest_backup(tmp_path / "backups")
    assert latest is not None
    assert backup.verify(latest) == []


# TUNE-002, TUNE-003, TUNE-004: the database's statistics, dead rows and settings


def superuser(stack: Stack, sql: str) -> str:
    return stack.component("postgres").psql(sql, database="chatdb").strip()


@pytest.fixture
def autovacuum_off(fresh_sandbox: Stack) -> Stack:
    """A fresh sandbox whose agents table autovacuum leaves alone (it would fix it first)."""
    superuser(fresh_sandbox, "ALTER TABLE agents SET (autovacuum_enabled = off)")
    return fresh_sandbox


@pytest.mark.fixes("TUNE-002")
def test_stale_statistics_are_analyzed(autovacuum_off: Stack, run_checks: RunChecks) -> None:
    superuser(
        autovacuum_off,
        "INSERT INTO agents (name, status, last_active)"
        " SELECT 'agent-' || n, 'idle', now() FROM generate_series(1, 500) AS n",
    )
    run = run_checks(
        "--check=TUNE-002", "--remediate=apply", inventory=autovacuum_off.inventory_path
    )
    attempt = fixed(run, "TUNE-002", "chatdb")
    assert attempt["plan"][0].endswith(": ANALYZE public.agents -> done"), attempt


@pytest.mark.fixes("TUNE-003")
def test_dead_rows_are_vacuumed(autovacuum_off: Stack, run_checks: RunChecks) -> None:
    superuser(
        autovacuum_off,
        "INSERT INTO agents (name, status) SELECT 'doomed-' || n, 'idle'"
        " FROM generate_series(1, 300) AS n; DELETE FROM agents WHERE name LIKE 'doomed-%';",
    )
    run = run_checks(
        "--check=TUNE-003", "--remediate=apply", inventory=autovacuum_off.inventory_path
    )
    attempt = fixed(run, "TUNE-003", "chatdb")
    assert any(line.endswith("VACUUM (ANALYZE) public.agents -> done") for line in attempt["plan"])


@pytest.mark.fixes("TUNE-004")
def test_lowered_setting_is_set_again(fresh_sandbox: Stack, run_checks: RunChecks) -> None:
    running = superuser(fresh_sandbox, "SHOW maintenance_work_mem")
    expect = {"OPSBOOK__TUNING__MAINTENANCE_WORK_MEM": running}
    superuser(
        fresh_sandbox, "ALTER SYSTEM SET maintenance_work_mem = '16MB'; SELECT pg_reload_conf();"
    )
    run = run_checks(
        "--check=TUNE-004", "--remediate=apply", "--allow=alter-system", env=expect,
        inventory=fresh_sandbox.inventory_path,
    )  # fmt: skip
    attempt = fixed(run, "TUNE-004", "chatdb")
    assert attempt["plan"][0].endswith(
        f"ALTER SYSTEM SET maintenance_work_mem = '{running}' -> done"
    ), attempt
    assert superuser(fresh_sandbox, "SHOW maintenance_work_mem") == running
