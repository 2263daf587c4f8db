"""The inventory's services model: the graph every fix and every "blocked by" reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from opsbook.inventory import Inventory, InventoryError, load_inventory

BASE = """\
name: chat
http:
  backend: {kind: backend, url: "http://127.0.0.1:3001"}
  frontend: {kind: frontend, url: "http://127.0.0.1:8080"}
postgres: {chatdb: {}}
redis: {queue: {url: "redis://127.0.0.1:6379/0"}}
hosts: {app1: {spec: "local://"}}
"""

CHAT_GRAPH = """\
services:
  frontend: {targets: [frontend], depends_on: [backend], role: frontend}
  backend: {targets: [backend], depends_on: [database, redis], role: api}
  worker: {depends_on: [redis, database], role: consumer}
  database: {targets: [chatdb], role: database, runtime: systemd, unit: postgresql.service,
             host: app1}
  redis: {targets: [queue], role: queue}
"""


def load(tmp_path: Path, text: str) -> Inventory:
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    return load_inventory(path, environ={})


def test_the_chat_graph_reads_as_written(tmp_path: Path) -> None:
    inventory = load(tmp_path, BASE + CHAT_GRAPH)
    assert inventory.service_of("chatdb") == "database"
    assert inventory.dependencies("frontend") == ("backend", "database", "redis")
    assert inventory.with_role("consumer") == ("worker",)
    assert inventory.runtime_of("database") == "systemd"
    # Without a runtime of its own or a sandbox/compose section, nothing can restart it.
    assert inventory.runtime_of("backend") is None


def test_without_services_a_target_is_its_own_service(tmp_path: Path) -> None:
    inventory = load(tmp_path, BASE.replace("chatdb: {}", "chatdb: {service: postgres}"))
    assert inventory.service_of("chatdb") == "postgres"
    assert inventory.service_of("queue") == "queue"
    assert inventory.dependencies("backend") == ()


@pytest.mark.parametrize(
    ("services", "message"),
    [
        pytest.param(
            "  backend: {depends_on: [nosuch]}\n",
            "services: backend.depends_on: no such service: nosuch",
            id="unknown-dependency",
        ),
        pytest.param(
            "  a: {depends_on: [b]}\n  b: {depends_on: [a]}\n",
            "services: dependency cycle: a -> b -> a",
            id="cycle",
        ),
        pytest.param(
            "  a: {depends_on: [a]}\n",
            "services: a.depends_on: a service cannot depend on itself",
            id="self",
        ),
        pytest.param(
            "  backend: {targets: [nosuch]}\n",
            "services: backend.targets: no such http, postgres or redis entry: nosuch",
            id="unknown-target",
        ),
        pytest.param(
            "  a: {targets: [backend]}\n  b: {targets: [backend]}\n",
            "services: b.targets: backend is already served by a",
            id="served-twice",
        ),
        pytest.param(
            "  db: {host: nosuch}\n",
            "services: db.host: no such entry in hosts: nosuch",
            id="unknown-host",
        ),
        pytest.param(
            "  db: {runtime: command}\n",
            "services.db.commands: required with runtime: command",
            id="command-without-commands",
        ),
        pytest.param(
            "  db: {runtime: compose, unit: x.service}\n",
            "services.db.unit: only with runtime: systemd",
            id="unit-without-systemd",
        ),
        pytest.param(
            "  db: {role: leader}\n",
            "services.db.role",
            id="unknown-role",
        ),
    ],
)
def test_a_broken_graph_is_refused_with_one_line(
    tmp_path: Path, services: str, message: str
) -> None:
    with pytest.raises(InventoryError) as raised:
        load(tmp_path, BASE + "services:\n" + services)
    text = str(raised.value)
    assert message in text, text
    assert "\n" not in text
