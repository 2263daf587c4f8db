"""`python -m opsbook secrets rotate` on a native sandbox of the module's own: the application's
PostgreSQL and Redis passwords (chat_app) replaced in their files, on their servers and in the
backend and worker, then the old refused and the new accepted by the real servers, the
services restarted and healthy, and the canary through; no secret value in the output, the
audit log or the reports.

Compose is not tested here: recreating the backend and worker there rebuilds nothing and would
cost the stack's start (docs/remediation.md#secret-rotation says what it does). The command
runs in-process through its own register()/run(), as opsbook.cli wires it.
"""

from __future__ import annotations

import argparse
import stat
from pathlib import Path

import psycopg
import pytest
import redis
import yaml

from opsbook.canary import run_canary
from opsbook.commands import secrets
from opsbook.inventory import load_inventory
from opsbook.sandbox.stack import Stack

pytestmark = pytest.mark.sandbox

ALLOWED = ("--apply", "--allow=rotate")


@pytest.fixture(scope="module")
def stack(module_sandbox: Stack) -> Stack:
    """One sandbox for the module: its chat_app passwords are rotated, more than once."""
    return module_sandbox


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The deployment's state (lock, audit log) of this test alone."""
    path = tmp_path / "state"
    monkeypatch.setenv("OPSBOOK__STATE_DIR", str(path))
    return path


def opsbook_secrets(*args: str) -> int:
    parser = argparse.ArgumentParser(prog="python -m opsbook")
    secrets.register(parser.add_subparsers(dest="command", required=True))
    parsed = parser.parse_args(["secrets", *args])
    return int(parsed.run(parsed))


def secret(stack: Stack, name: str) -> str:
    return (stack.dir / "secrets" / f"{name}.password").read_text().strip()


def postgres_login(stack: Stack, password: str) -> str | None:
    """None when chat_app logs in to chatdb with `password`; else libpq's reason."""
    try:
        with psycopg.connect(
            host="127.0.0.1", port=stack.state.ports["postgres"], dbname="chatdb",
            user="chat_app", password=password, connect_timeout=3,
        ) as conn:  # fmt: skip
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        return str(exc)
    return None


def redis_login(stack: Stack, password: str) -> str | None:
    """None when chat_app logs in to Redis with `password` (PING answers); else why not."""
    client = redis.Redis(
        port=stack.state.ports["redis"], username="chat_app", password=password,
        socket_timeout=3.0,
    )  # fmt: skip
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        return str(exc)
    finally:
        client.close()
    return None


def everything_written(*roots: Path) -> str:
    """Every file under the folders, as text (the reports, the state with its audit log)."""
    return "".join(
        path.read_text(errors="replace") for root in roots for path in root.rglob("*")
        if path.is_file()
    )  # fmt: skip


def test_rotation_is_refused_without_allow(
    stack: Stack, state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (secret(stack, "chat_app"), secret(stack, "redis-chat_app"))
    where = ["--inventory", str(stack.inventory_path), "--reports-dir", str(tmp_path)]
    assert opsbook_secrets("rotate", "--apply", *where) == 3
    out, err = capsys.readouterr()
    assert err == (
        "secrets rotate: refused: not allowed: rotate (allow with --allow=rotate or "
        "remediation.allow)\n"
    )
    assert out.startswith("secrets rotate: plan\n")
    assert (secret(stack, "chat_app"), secret(stack, "redis-chat_app")) == before
    assert not (stack.dir / "secrets" / "chat_app.password.previous").exists()
    # Without --apply: the plan only, exit 0, nothing changed.
    assert opsbook_secrets("rotate", *where) == 0
    assert capsys.readouterr().out.endswith(
        "secrets rotate: nothing changed (add --apply --allow=rotate to rotate)\n"
    )
    assert (secret(stack, "chat_app"), secret(stack, "redis-chat_app")) == before


def test_rotation_replaces_both_passwords_everywhere(
    stack: Stack, state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old_pg, old_redis = secret(stack, "chat_app"), secret(stack, "redis-chat_app")
    pids = {name: stack.component(name).pid() for name in ("backend", "worker")}
    reports = tmp_path / "reports"
    where = ["--inventory", str(stack.inventory_path), "--reports-dir", str(reports)]

    assert opsbook_secrets("rotate", *ALLOWED, *where) == 0
    out, err = capsys.readouterr()
    new_pg, new_redis = secret(stack, "chat_app"), secret(stack, "redis-chat_app")
    assert len({old_pg, old_redis, new_pg, new_redis}) == 4
    assert "rotate_credentials: applied" in out
    assert "postgres-app (chat_app on postgres chatdb): old refused, new accepted" in out
    assert "redis-app (chat_app on redis queue): old refused, new accepted" in out
    assert "canary passed" in out

    # The real servers: the old passwords refused, the new accepted.
    assert "password authentication failed" in (postgres_login(stack, old_pg) or "")
    assert postgres_login(stack, new_pg) is None
    assert redis_login(stack, old_redis) is not None
    assert redis_login(stack, new_redis) is None

    # The files: the new secret with the old mode, the old one kept aside, private.
    for name, old in (("chat_app", old_pg), ("redis-chat_app", old_redis)):
        path = stack.dir / "secrets" / f"{name}.password"
        previous = path.with_name(path.name + ".previous")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(previous.stat().st_mode) == 0o600
        assert previous.read_text().strip() == old

    # The backend and the worker were restarted (they read the files at start) and serve:
    # a message posted through the public entry is stored and answered.
    assert all(stack.component(n).pid() not in (None, pid) for n, pid in pids.items())
    canary = run_canary(load_inventory(stack.inventory_path, environ={}), 30.0)
    assert canary.failed_hop is None, canary.problem

    # Redis started again keeps the new password: its start writes its config from the file.
    stack.restart("redis")
    assert redis_login(stack, new_redis) is None
    assert redis_login(stack, old_redis) is not None

    # No value anywhere: not printed, not in the audit log, not in the reports.
    written = out + err + everything_written(state, tmp_path)
    assert (state / "audit.log").is_file()
    for value in (old_pg, old_redis, new_pg, new_redis):
        assert value not in written


def test_a_second_rotation_works_too(
    stack: Stack, state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ["--inventory", str(stack.inventory_path), "--reports-dir", str(tmp_path)]
    first = secret(stack, "chat_app")
    assert opsbook_secrets("rotate", *ALLOWED, "--only", "postgres", *where) == 0
    out = capsys.readouterr().out
    second = secret(stack, "chat_app")
    assert second != first
    assert "redis-app" not in out  # --only postgres
    assert "password authentication failed" in (postgres_login(stack, first) or "")
    assert postgres_login(stack, second) is None
    previous = stack.dir / "secrets" / "chat_app.password.previous"
    assert previous.read_text().strip() == first
    assert first not in out
    assert second not in out


def test_opsbook_own_credentials_are_refused_in_one_line(
    stack: Stack, state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = yaml.safe_load(stack.inventory_path.read_text())
    admin = stack.dir / "secrets" / "opsbook_admin.password"
    own = {"kind": "postgres", "target": "chatdb", "user": "opsbook_admin", "file": str(admin)}
    raw["credentials"] = {"admin": own}
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump(raw))
    before = admin.read_text()
    assert opsbook_secrets("rotate", *ALLOWED, "--inventory", str(inventory)) == 2
    out, err = capsys.readouterr()
    assert (out, err) == (
        "",
        "secrets rotate: admin: opsbook_admin is opsbook's own admin role on postgres chatdb: "
        "rotating it would lock opsbook out mid-plan; rotate it by hand\n",
    )
    assert admin.read_text() == before
    assert opsbook_secrets("rotate", "--only", "nothing", "--inventory", str(inventory)) == 2
    assert capsys.readouterr().err.startswith("secrets rotate: --only nothing: no such credential")


def test_an_api_key_is_written_and_its_consumers_restarted(
    stack: Stack, state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An API key is no server's: the file is written, the worker restarted, and the check is
    that the services answer and the canary gets through."""
    key = tmp_path / "llm.key"
    key.write_text("the-old-api-key-value\n")
    key.chmod(0o640)
    raw = yaml.safe_load(stack.inventory_path.read_text())
    raw["credentials"]["llm-key"] = {"kind": "api_key", "file": str(key), "consumers": ["worker"]}
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump(raw))
    worker = stack.component("worker").pid()
    where = ["--inventory", str(inventory), "--reports-dir", str(tmp_path / "reports")]

    assert opsbook_secrets("rotate", *ALLOWED, "--only", "llm-key", *where) == 0
    out = capsys.readouterr().out
    new = key.read_text().strip()
    assert new != "the-old-api-key-value"
    assert stat.S_IMODE(key.stat().st_mode) == 0o640
    assert (tmp_path / "llm.key.previous").read_text() == "the-old-api-key-value\n"
    assert stack.component("worker").pid() not in (None, worker)
    assert "restart backend" not in out
    assert "canary passed" in out
    assert new not in out
    assert "the-old-api-key-value" not in out


def test_rotation_during_a_containment_leaves_the_entry_closed(
    stack: Stack, state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The incident runbook's order: contain, rotate, release. The closed entry is not
    opened, nor waited for; the canary goes to the backend."""
    from opsbook.commands import incident

    def opsbook_incident(*args: str) -> int:
        parser = argparse.ArgumentParser(prog="python -m opsbook")
        incident.register(parser.add_subparsers(dest="command", required=True))
        parsed = parser.parse_args(["incident", *args])
        return int(parsed.run(parsed))

    where = ["--inventory", str(stack.inventory_path), "--reports-dir", str(tmp_path)]
    assert opsbook_incident("contain", "--allow=contain", *where) == 0
    try:
        assert opsbook_secrets("rotate", *ALLOWED, "--only", "redis", *where) == 0
        out = capsys.readouterr().out
        assert "canary passed" in out
        assert not stack.component("nginx").is_running()
    finally:
        assert opsbook_incident("release", "--allow=contain", *where) == 0
    assert stack.component("nginx").is_running()


def test_the_compose_image_gives_the_admin_the_same_function() -> None:
    """containers/postgres/entrypoint.sh runs the SQL the native sandbox runs (its heredoc as
    the shell expands it), so that the rotation works on the compose stack too."""
    import subprocess

    from opsbook.sandbox.postgres import SET_APP_PASSWORD

    entrypoint = Path(__file__).resolve().parents[1] / "containers" / "postgres" / "entrypoint.sh"
    lines = entrypoint.read_text().splitlines()
    start = lines.index("    cat <<'SQL'")
    end = lines.index("SQL", start + 1)
    heredoc = "\n".join([lines[start].strip(), *lines[start + 1 : end + 1]]) + "\n"
    done = subprocess.run(["sh", "-c", heredoc], capture_output=True, text=True, timeout=10)
    assert done.stdout.strip() == SET_APP_PASSWORD.strip()
