"""The sandbox stack, tested on live processes: CLI, message flow, failures, and clean shutdown.

Everything here runs real PostgreSQL, Redis, nginx, Prometheus and the reference backend and
worker on 127.0.0.1; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
import requests
from support import eventually

from opsbook.inventory import Inventory, load_inventory
from opsbook.sandbox.process import group_members
from opsbook.sandbox.stack import COMPONENTS, Stack

pytestmark = pytest.mark.sandbox

SOURCE_ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 3.0


def cli(*args: str, sandbox_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SOURCE_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "opsbook", "sandbox", *args, "--dir", str(sandbox_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def url(inventory: Inventory, name: str, path: str) -> str:
    return inventory.http[name].url + path


@pytest.fixture
def checker_redis(sandbox_inventory: Inventory) -> Iterator[redis.Redis]:
    """Redis as the read-only `opsbook` user, from the inventory."""
    target = sandbox_inventory.redis["queue"]
    assert target.password is not None
    client = redis.Redis.from_url(
        target.url, password=target.password.reveal(), socket_timeout=TIMEOUT_S,
        decode_responses=True,
    )  # fmt: skip
    yield client
    client.close()


@pytest.fixture
def monitor_db(sandbox_inventory: Inventory) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """chatdb as the `opsbook_monitor` role, from the inventory."""
    target = sandbox_inventory.postgres["chatdb"]
    assert target.password is not None
    with psycopg.connect(
        host=target.host, port=target.port, dbname=target.database, user=target.user,
        password=target.password.reveal(), connect_timeout=3, autocommit=True,
    ) as conn:  # fmt: skip
        yield conn


def test_up_again_prints_the_inventory_and_keeps_ports_and_pids(sandbox: Stack) -> None:
    before = {s.name: (s.pid, s.port) for s in sandbox.status()}
    result = cli("up", sandbox_dir=sandbox.dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == str(sandbox.inventory_path)
    assert {s.name: (s.pid, s.port) for s in sandbox.status()} == before
    inventory = load_inventory(Path(result.stdout.splitlines()[-1]), environ={})
    assert inventory.sandbox is not None
    assert inventory.sandbox.dir == sandbox.dir
    assert inventory.postgres["chatdb"].port == sandbox.state.ports["postgres"]
    assert set(inventory.http) == {"backend", "frontend", "frontend-tls", "prometheus"}
    assert inventory.http["frontend-tls"].url == (
        f"https://127.0.0.1:{sandbox.state.ports['nginx-tls']}"
    )


def test_secrets_are_private_files(sandbox: Stack) -> None:
    secrets = sorted((sandbox.dir / "secrets").iterdir())
    assert len(secrets) == 6
    for path in secrets:
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert "password" not in (sandbox.dir / "inventory.yaml").read_text().replace(
        "password:", ""
    ).replace(".password", "")


def test_status_lists_every_component_running(sandbox: Stack) -> None:
    result = cli("status", sandbox_dir=sandbox.dir)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == list(COMPONENTS)
    assert all(line.split()[1] == "running" for line in lines)


def test_every_service_answers(sandbox_inventory: Inventory) -> None:
    for name, endpoint in sandbox_inventory.http.items():
        answer = requests.get(
            endpoint.url + endpoint.health_path, timeout=TIMEOUT_S, verify=endpoint.verify
        )
        assert answer.status_code == 200, f"{name}: {answer.status_code}"
    health = requests.get(url(sandbox_inventory, "backend", "/health"), timeout=TIMEOUT_S)
    assert health.json() == {"status": "ok", "database": "ok", "redis": "ok"}
    frontend = requests.get(url(sandbox_inventory, "frontend", "/"), timeout=TIMEOUT_S)
    assert frontend.headers["X-Frame-Options"] == "DENY"
    assert frontend.headers["Server"] == "nginx"  # server_tokens off: no version


def test_redis_refuses_anonymous_and_checker_is_read_only(
    sandbox: Stack, checker_redis: redis.Redis
) -> None:
    with socket.create_connection(
        ("127.0.0.1", sandbox.state.ports["redis"]), timeout=TIMEOUT_S
    ) as anonymous:
        anonymous.sendall(b"PING\r\n")
        assert anonymous.recv(100).startswith(b"-NOAUTH")
    assert checker_redis.ping()
    with pytest.raises(redis.exceptions.NoPermissionError):
        checker_redis.lpush("message_queue", "x")


def test_posted_message_is_stored_and_marked_processed(
    sandbox_inventory: Inventory,
    monitor_db: psycopg.Connection[tuple[object, ...]],
    checker_redis: redis.Redis,
) -> None:
    content = f"hello {uuid.uuid4()}"
    answer = requests.post(
        url(sandbox_inventory, "frontend", "/api/messages"),
        json={"content": content, "user_id": "alice"},
        timeout=TIMEOUT_S,
    )
    assert answer.status_code == 202, answer.text
    message_id = answer.json()["id"]

    def stored() -> bool:
        """the message is in the messages table"""
        row = monitor_db.execute("SELECT content FROM messages WHERE id = %s", (message_id,))
        return row.fetchone() == (content,)

    eventually(stored)
    assert message_id in checker_redis.lrange("processed_messages", 0, 99)
    again = requests.get(
        url(sandbox_inventory, "frontend", f"/api/messages/{message_id}"), timeout=TIMEOUT_S
    )
    assert again.status_code == 200
    assert again.json()["content"] == content
    bad = requests.post(
        url(sandbox_inventory, "backend", "/api/messages"), data="{nope", timeout=TIMEOUT_S
    )
    assert bad.status_code == 400


def test_poison_message_is_dead_lettered_and_process_dlq_requeues_it(
    sandbox: Stack, admin_redis: redis.Redis
) -> None:
    admin_redis.delete("dead_letter_queue")
    poison = f"not json {uuid.uuid4()}"
    orphan = json.dumps(
        {"id": str(uuid.uuid4()), "conversation_id": str(uuid.uuid4()), "user_id": "bob",
         "role": "user", "content": "no such conversation", "enqueued_at": time.time()}
    )  # fmt: skip
    admin_redis.lpush("message_queue", poison, orphan)

    def both_dead() -> bool:
        """both messages are in dead_letter_queue"""
        return {poison, orphan} <= set(admin_redis.lrange("dead_letter_queue", 0, -1))

    eventually(both_dead)
    assert "ERROR" in (sandbox.dir / "logs" / "worker.log").read_text()

    first_failure_count = admin_redis.llen("dead_letter_queue")
    env = {**os.environ, "PYTHONPATH": str(SOURCE_ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "chatapp.worker", "process-dlq",
         "--config", str(sandbox.dir / "app.json")],
        capture_output=True, text=True, timeout=30, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"moved {first_failure_count} " in result.stdout
    # Requeued, the worker fails them again: they come back, once each.
    eventually(both_dead)
    assert admin_redis.llen("message_queue:processing") == 0
    admin_redis.delete("dead_letter_queue")


def test_worker_restart_recovers_in_flight_messages(
    breakable_sandbox: Stack, admin_redis: redis.Redis
) -> None:
    admin_redis.delete("dead_letter_queue")
    breakable_sandbox.stop("worker")
    in_flight = f"left in processing {uuid.uuid4()}"  # not JSON: it ends as a dead letter
    admin_redis.lpush("message_queue:processing", in_flight)
    breakable_sandbox.start("worker")

    def dead_lettered() -> bool:
        """the recovered message reached dead_letter_queue"""
        return in_flight in admin_redis.lrange("dead_letter_queue", 0, -1)

    eventually(dead_lettered)
    assert admin_redis.llen("message_queue:processing") == 0
    admin_redis.delete("dead_letter_queue")


def test_up_recovers_a_killed_component_and_its_orphans(
    breakable_sandbox: Stack, sandbox_inventory: Inventory
) -> None:
    nginx = breakable_sandbox.component("nginx")
    master = nginx.pid()
    assert master is not None
    workers = [pid for pid in group_members(master) if pid != master]
    assert workers
    os.kill(master, signal.SIGKILL)  # its workers live on, holding the port
    eventually(lambda: not nginx.is_running())
    breakable_sandbox.up()
    assert nginx.pid() not in (None, master)
    assert not any(Path(f"/proc/{pid}").exists() and not _is_zombie(pid) for pid in workers)
    answer = requests.get(url(sandbox_inventory, "frontend", "/health"), timeout=TIMEOUT_S)
    assert answer.status_code == 200


def test_health_is_503_while_redis_is_stopped(
    breakable_sandbox: Stack, sandbox_inventory: Inventory
) -> None:
    health = url(sandbox_inventory, "backend", "/health")
    breakable_sandbox.stop("redis")
    answer = requests.get(health, timeout=TIMEOUT_S)
    assert answer.status_code == 503
    assert answer.json() == {"status": "error", "database": "ok", "redis": "error"}
    assert "redis://" not in answer.text
    breakable_sandbox.start("redis")
    assert requests.get(health, timeout=TIMEOUT_S).status_code == 200


def test_maintenance_flag_makes_nginx_answer_503(
    breakable_sandbox: Stack, sandbox_inventory: Inventory
) -> None:
    flag = breakable_sandbox.dir / "nginx" / "maintenance.on"
    flag.touch()
    for path in ("/", "/health", "/api/messages/x"):
        answer = requests.get(url(sandbox_inventory, "frontend", path), timeout=TIMEOUT_S)
        assert answer.status_code == 503, path
        assert "maintenance" in answer.text
    flag.unlink()
    answer = requests.get(url(sandbox_inventory, "frontend", "/health"), timeout=TIMEOUT_S)
    assert answer.status_code == 200


def test_component_that_cannot_start_is_named_with_its_log(breakable_sandbox: Stack) -> None:
    breakable_sandbox.stop("redis")
    with socket.socket() as squatter:
        # SO_REUSEADDR: the port may still hold TIME_WAIT connections of the stopped Redis.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", breakable_sandbox.state.ports["redis"]))
        squatter.listen()
        result = cli("up", sandbox_dir=breakable_sandbox.dir)
    assert result.returncode == 1
    first, *tail = result.stderr.splitlines()
    assert first.startswith("sandbox up: redis: failed to start"), first
    assert any("Address already in use" in line for line in tail), result.stderr
    assert len(tail) <= 10
    assert "Traceback" not in result.stderr
    status = cli("status", sandbox_dir=breakable_sandbox.dir)
    assert status.returncode == 3


def test_bad_cli_input_is_one_line_and_exit_2(sandbox: Stack) -> None:
    result = cli("start", "mysql", sandbox_dir=sandbox.dir)
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
    assert "Traceback" not in result.stderr


def test_down_leaves_no_process_behind() -> None:
    directory = Path(tempfile.mkdtemp(prefix="opsbook-sandbox-down-"))
    stack = Stack(directory)
    try:
        stack.up()
        pids = [s.pid for s in stack.status()]
        assert all(pids)
        groups = {pid: group_members(pid) for pid in pids if pid}
        assert all(groups.values())
        result = cli("down", sandbox_dir=directory)
        assert result.returncode == 0, result.stderr
        for leader, members in groups.items():
            assert not group_members(leader), f"group {leader} still has processes"
            for pid in members:
                assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid), f"pid {pid} lives"
        assert cli("status", sandbox_dir=directory).returncode == 3
        assert cli("down", sandbox_dir=directory).returncode == 0
    finally:
        stack.down()
        subprocess.run(["rm", "-rf", str(directory)], check=False)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def test_down_on_a_compose_directory_says_to_add_the_engine(tmp_path: Path) -> None:
    """`down` without --engine on what `up --engine compose` made stops nothing: it says so."""
    (tmp_path / "inventory.yaml").write_text("name: compose\ncompose:\n  project: p\n")
    result = cli("down", sandbox_dir=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"sandbox down: {tmp_path} holds a compose project, not native processes: "
        "add --engine compose"
    ]
    (tmp_path / "inventory.yaml").unlink()
    assert cli("down", sandbox_dir=tmp_path).returncode == 0  # nothing there: nothing to stop
