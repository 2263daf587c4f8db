"""The target sections (http, postgres, redis) of an inventory for a stack the sandbox runs,
natively or as a compose project: the same services, ports and credentials files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opsbook.sandbox.base import Layout
from opsbook.sandbox.postgres import ADMIN_ROLE, APP_ROLE, MONITOR_ROLE
from opsbook.sandbox.redis import secret_name


def target_sections(
    layout: Layout,
    ports: dict[str, int],
    services: dict[str, str],
    tls_entry: tuple[int, Path] | None = None,
) -> dict[str, Any]:
    """`ports` and `services` are keyed by backend, frontend, prometheus, postgres, redis:
    where each answers on 127.0.0.1, and the runtime's name for it. `tls_entry`: the port of
    the frontend's TLS listener and the certificate (self-signed) to verify it with, for a
    second public entry, `frontend-tls`, served by the frontend's service."""
    secret = layout.secret_file
    graph = services_graph(services)
    http: dict[str, Any] = {
        "backend": {
            "kind": "backend",
            "url": f"http://127.0.0.1:{ports['backend']}",
            "service": services["backend"],
        },
        "frontend": {
            "kind": "frontend",
            "url": f"http://127.0.0.1:{ports['frontend']}",
            "service": services["frontend"],
            # The reference backend answers 404 (JSON) for an id that is no message.
            "api_path": "/api/messages/opsbook-route-probe",
        },
        "prometheus": {
            "kind": "prometheus",
            "url": f"http://127.0.0.1:{ports['prometheus']}",
            "health_path": "/-/healthy",
            "service": services["prometheus"],
        },
    }
    if tls_entry is not None:
        tls_port, certificate = tls_entry
        # The same server as `frontend`, over TLS: the audit's TLS check (SEC-032) has a real
        # listener to judge, and every frontend check runs through TLS too. Placed after
        # `frontend`, which stays the entry the canary and the maintenance fix address first.
        http["frontend-tls"] = {
            **http["frontend"],
            "url": f"https://127.0.0.1:{tls_port}",
            "ca_file": str(certificate),
        }
        graph[services["frontend"]]["targets"].append("frontend-tls")
    return {
        "services": graph,
        "http": http,
        "postgres": {
            "chatdb": {
                "host": "127.0.0.1",
                "port": ports["postgres"],
                "database": "chatdb",
                "user": MONITOR_ROLE,
                "password": {"file": str(secret(MONITOR_ROLE))},
                "sslmode": "disable",
                "service": services["postgres"],
                "admin": {"user": ADMIN_ROLE, "password": {"file": str(secret(ADMIN_ROLE))}},
            }
        },
        "redis": {
            "queue": {
                "url": f"redis://opsbook@127.0.0.1:{ports['redis']}/0",
                "password": {"file": str(secret(secret_name("opsbook")))},
                "service": services["redis"],
                "admin": {
                    "user": "default",
                    "password": {"file": str(secret(secret_name("default")))},
                },
            }
        },
        # The application's own passwords (app.json names the same files): what
        # `opsbook secrets rotate` replaces; their consumers are the services depending on them.
        "credentials": {
            "postgres-app": {
                "kind": "postgres",
                "target": "chatdb",
                "user": APP_ROLE,
                "file": str(secret(APP_ROLE)),
            },
            "redis-app": {
                "kind": "redis",
                "target": "queue",
                "user": "chat_app",
                "file": str(secret(secret_name("chat_app"))),
                # Its start writes redis.conf from the secret files (CONFIG REWRITE would
                # leave a config the audit finds world-readable).
                "server_reads_file": True,
            },
        },
    }


def services_graph(services: dict[str, str]) -> dict[str, Any]:
    """The chat system's services and what each depends on (the inventory's `services:`):
    frontend -> backend -> postgres, redis; worker -> redis, postgres."""
    backend, postgres, redis = services["backend"], services["postgres"], services["redis"]
    return {
        services["frontend"]: {"targets": ["frontend"], "depends_on": [backend], "role": "proxy"},
        backend: {"targets": ["backend"], "depends_on": [postgres, redis], "role": "api"},
        "worker": {"depends_on": [redis, postgres], "role": "consumer"},
        postgres: {"targets": ["chatdb"], "role": "database"},
        redis: {"targets": ["queue"], "role": "queue"},
        services["prometheus"]: {"targets": ["prometheus"], "role": "monitoring"},
    }
