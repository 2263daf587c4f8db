"""Small helpers for services on this machine's loopback: a free port, a quick HTTP GET.

Neutral ground: the sandbox, the compose stack and the restore drill all use them, and none of
them owns them.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

NETWORK_TIMEOUT_S = 1.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def http_status(port: int, path: str) -> int | None:
    """The status of GET http://127.0.0.1:PORT/PATH, or None if nothing answered."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=NETWORK_TIMEOUT_S)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def http_json(port: int, path: str) -> Any:
    """The JSON body of GET http://127.0.0.1:PORT/PATH, or None."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=NETWORK_TIMEOUT_S)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return json.loads(response.read()) if response.status == 200 else None
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        connection.close()
