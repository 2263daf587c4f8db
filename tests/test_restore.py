"""Restoring the whole deployment from a backup, on a real sandbox of this module's own.

Messages are really posted through nginx and stored by the worker, queue entries really sit in
Redis, a file really lies in the data folder; rows, entries and the file are really deleted,
and `python -m opsbook backup restore latest --apply --allow=restore` brings all three back
with the backend and the worker stopped meanwhile, then checks readiness and sends the canary.
A backup whose dump is broken leaves the current data in place and the writers running again.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from pathlib import Path

import pytest
import redis
import requests
import yaml
from test_backup import backup_command, backup_inventory

from opsbook.backup import latest_backup
from opsbook.sandbox.postgres import Postgres
from opsbook.sandbox.stack import Stack

pytestmark = pytest.mark.sandbox

WRITERS = ("backend", "worker")


@pytest.fixture(scope="module")
def stack(module_sandbox: Stack) -> Stack:
    """One sandbox for the module: both tests restore into it, each from a backup of its own."""
    return module_sandbox


@pytest.fixture(scope="module")
def inventory(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sandbox's inventory with backups, and room in the restore budget for both tests."""
    path = backup_inventory(stack, tmp_path_factory.mktemp("restore") / "backups")
    raw = yaml.safe_load(path.read_text())
    raw.setdefault("remediation", {})["budgets"] = {"restore": {"count": 10, "per_s": 86400}}
    path.write_text(yaml.safe_dump(raw))
    return path


def _admin_redis(stack: Stack) -> redis.Redis:
    password = (stack.dir / "secrets" / "redis-default.password").read_text().strip()
    return redis.Redis(
        port=stack.state.ports["redis"], password=password, socket_timeout=3.0,
        decode_responses=True,
    )  # fmt: skip


def _post(stack: Stack, user: str, count: int) -> list[str]:
    base = f"http://127.0.0.1:{stack.state.ports['nginx']}"
    ids = []
    for n in range(count):
        answer = requests.post(
            f"{base}/api/messages", json={"content": f"{user} {n}", "user_id": user}, timeout=3
        )
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["id"])
    return ids


def _stored(stack: Stack, ids: list[str]) -> int:
    listed = ",".join(f"'{i}'" for i in ids)
    database = Postgres(stack.layout, stack.state.ports["postgres"])
    return int(database.psql(f"SELECT count(*) FROM messages WHERE id IN ({listed})", "chatdb"))


def _wait_stored(stack: Stack, ids: list[str]) -> None:
    deadline = time.monotonic() + 30  # a bound against a hang, not a timing
    while _stored(stack, ids) < len(ids):
        assert time.monotonic() < deadline, f"the worker stored {_stored(stack, ids)} of {ids}"
        time.sleep(0.1)


def _pids(stack: Stack) -> dict[str, int | None]:
    return {name: stack.component(name).pid() for name in WRITERS}


def _take(inventory: Path) -> Path:
    taken = backup_command("--inventory", str(inventory))
    assert taken.returncode == 0, taken.stderr
    return Path(taken.stdout.strip().splitlines()[-1])


def _restore(inventory: Path, *args: str) -> tuple[int, str, str]:
    done = backup_command("restore", "latest", "--inventory", str(inventory), *args)
    return done.returncode, done.stdout, done.stderr


def _audit(stack: Stack) -> list[dict[str, object]]:
    lines = (stack.dir / "state" / "audit.log").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _leftovers(stack: Stack) -> list[str]:
    """Unpacked or kept-aside copies of the data folder left beside it."""
    return sorted(p.name for p in (stack.dir / "nginx").glob(".html.opsbook-*"))


def test_restore_brings_rows_files_and_queue_entries_back_with_health_verified(
    stack: Stack, inventory: Path, tmp_path: Path
) -> None:
    ids = _post(stack, "restore", 3)
    _wait_stored(stack, ids)
    queue = _admin_redis(stack)
    dead = [json.dumps({"id": f"dead-{n}", "error": "planted by the restore test"}) for n in (1, 2)]
    queue.rpush("dead_letter_queue", *dead)
    upload = stack.dir / "nginx" / "html" / "uploads" / "restore-proof.bin"
    upload.parent.mkdir(exist_ok=True)
    upload.write_bytes(secrets.token_bytes(4096))
    digest = hashlib.sha256(upload.read_bytes()).hexdigest()
    _take(inventory)

    # What an accident takes: rows, a file of the data folder, queue entries.
    database = Postgres(stack.layout, stack.state.ports["postgres"])
    listed = ",".join(f"'{i}'" for i in ids)
    database.psql(f"DELETE FROM messages WHERE id IN ({listed})", "chatdb")
    upload.unlink()
    queue.delete("dead_letter_queue")
    for each in ids:
        queue.lrem("processed_messages", 0, each)
    assert _stored(stack, ids) == 0
    before = _pids(stack)
    assert all(before.values()), before

    code, out, err = _restore(inventory)
    assert code == 0, out + err
    steps = [line.strip() for line in out.splitlines()[1:]]
    kinds_and_summaries = [line.split(":")[0] for line in steps]
    assert kinds_and_summaries[:3] == [
        "[restore] read the backup through before anything stops (the queue lists of each "
        "Redis snapshot, the data archive)",
        "[restore] stop backend (it writes to postgres, redis)",
        "[restore] stop worker (it writes to postgres, redis)",
    ], out
    started = "[restore] start worker again (only if the restore stopped it"
    assert any(step.startswith(started) for step in steps), out
    assert steps[-1].startswith("[restore] wait until every service answers"), out
    code, out, err = _restore(inventory, "--apply", "--reports-dir", str(tmp_path))
    assert code == 3, out + err
    assert "not allowed: restore" in err
    assert _pids(stack) == before, "a refused restore stopped a writer"

    code, out, err = _restore(
        inventory, "--apply", "--allow=restore", "--reports-dir", str(tmp_path)
    )
    assert code == 0, out + err
    assert "restore_backup: applied" in out
    assert "restored and healthy" in out, out
    assert "canary passed" in out, out

    assert _stored(stack, ids) == 3
    assert hashlib.sha256(upload.read_bytes()).hexdigest() == digest
    assert queue.lrange("dead_letter_queue", 0, -1) == dead
    processed = queue.lrange("processed_messages", 0, -1)
    assert set(ids) <= set(processed), processed
    after = _pids(stack)
    for name in WRITERS:
        assert stack.component(name).is_running(), f"{name} does not run"
        assert after[name] != before[name], f"{name} was not stopped for the restore"
    assert _leftovers(stack) == [], "the data kept aside was not deleted after the checks"
    queue.close()

    entries = [e for e in _audit(stack) if str(e.get("remediation", "")).endswith("restore_backup")]
    assert [e["event"] for e in entries[-2:]] == ["intent", "outcome"], entries
    outcome = entries[-1]
    assert outcome["status"] == "applied"
    written = "\n".join(str(line) for line in outcome["steps"])  # type: ignore[attr-defined]
    for step in (
        "stop backend", "stop worker", "replace the rows of postgres chatdb",
        "replace the queue lists of redis queue", "put the unpacked", "start backend again",
        "start worker again", "canary passed",
    ):  # fmt: skip
        assert step in written, f"{step!r} not in the audit log's outcome:\n{written}"


def test_a_broken_dump_leaves_the_current_data_and_starts_the_writers_again(
    stack: Stack, inventory: Path, tmp_path: Path
) -> None:
    taken = _take(inventory)
    # A backup broken when written, its manifest agreeing: the dump is cut in half.
    dump = taken / "postgres-chatdb.dump"
    dump.write_bytes(dump.read_bytes()[: dump.stat().st_size // 2])
    manifest = json.loads((taken / "manifest.json").read_text())
    manifest["parts"][dump.name].update(
        size=dump.stat().st_size, sha256=hashlib.sha256(dump.read_bytes()).hexdigest()
    )
    (taken / "manifest.json").write_text(json.dumps(manifest))
    latest = latest_backup(taken.parent)
    assert latest is not None
    assert latest.path == taken

    # Written after the backup: a restore would take these away, a failed one must not.
    ids = _post(stack, "after-backup", 2)
    _wait_stored(stack, ids)
    upload = stack.dir / "nginx" / "html" / "uploads" / "after-backup.txt"
    upload.parent.mkdir(exist_ok=True)
    upload.write_text("written after the backup\n")
    queue = _admin_redis(stack)
    processed = queue.lrange("processed_messages", 0, -1)
    before = _pids(stack)

    code, out, err = _restore(
        inventory, "--apply", "--allow=restore", "--reports-dir", str(tmp_path)
    )
    assert code == 1, out + err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in out + err
    assert "step 'replace the rows of postgres chatdb" in err, err
    assert "pg_restore" in err, err
    assert "afterwards: start worker again: started; start backend again: started" in err, err
    assert "remove what was unpacked and not put in place: removed" in err, err

    assert _stored(stack, ids) == 2
    assert upload.read_text() == "written after the backup\n"
    assert queue.lrange("processed_messages", 0, -1) == processed
    queue.close()
    after = _pids(stack)
    for name in WRITERS:
        assert stack.component(name).is_running(), f"{name} does not run"
        assert after[name] != before[name], f"{name} was not stopped before the dump was read"
    assert _leftovers(stack) == []
    outcome = _audit(stack)[-1]
    assert (outcome["event"], outcome["status"]) == ("outcome", "failed"), outcome


def test_maintenance_page_is_up_while_the_writers_are_stopped(
    stack: Stack, inventory: Path, tmp_path: Path
) -> None:
    _take(inventory)
    flag = stack.dir / "nginx" / "maintenance.on"
    code, out, err = _restore(
        inventory, "--maintenance", "--apply", "--allow=restore", "--reports-dir", str(tmp_path)
    )
    assert code == 0, out + err
    assert "restore_backup_in_maintenance: applied" in out
    steps = [line.strip() for line in out.splitlines()[1:]]
    summaries = [line.split(":")[0] for line in steps]
    on = summaries.index(
        "[maintenance-mode] turn maintenance mode on (503 everywhere) for the restore"
    )
    off = summaries.index("[maintenance-mode] turn maintenance mode off (also after a failed step)")
    # nginx serves both public entries, the plain one and the TLS one.
    assert steps[on].endswith(
        "-> frontend /health answers 503; frontend-tls /health answers 503"
    ), steps[on]
    assert steps[off].endswith(
        "-> frontend /health answers 200; frontend-tls /health answers 200"
    ), steps[off]
    stops = [n for n, line in enumerate(summaries) if line.startswith("[restore] stop ")]
    starts = [n for n, line in enumerate(summaries) if line.startswith("[restore] start ")]
    assert on < min(stops), out
    assert max(starts) < off < len(steps) - 1, out
    assert "canary passed" in steps[-1], out
    assert not flag.exists(), "maintenance mode was left on"


def test_a_writer_no_runtime_can_stop_needs_restore_live(
    stack: Stack, inventory: Path, tmp_path: Path
) -> None:
    _take(inventory)
    raw = yaml.safe_load(inventory.read_text())
    del raw["sandbox"]  # nothing here drives the backend and the worker now
    unmanaged = tmp_path / "inventory.yaml"
    unmanaged.write_text(yaml.safe_dump(raw))
    before = _pids(stack)

    code, out, err = _restore(unmanaged)
    assert code == 0, out + err
    first = out.splitlines()[1].strip()
    assert first.startswith(
        "[restore-live] restore while writers keep running: cannot stop backend: no runtime "
        "drives it (name one under services:); worker: no runtime drives it"
    ), out
    code, out, err = _restore(
        unmanaged, "--apply", "--allow=restore", "--reports-dir", str(tmp_path)
    )
    assert code == 3, out + err
    assert "not allowed: restore-live (allow with --allow=restore-live" in err, err
    assert _pids(stack) == before
