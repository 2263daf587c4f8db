"""The egress probe against real loopback sockets: one that listens, one bound but not
listening (it refuses), and an HTTP server answering 404."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from test_checks_host import loopback_http_server

from opsbook.probes.network import reach, shown


@pytest.fixture
def closed_port() -> Iterator[int]:
    # Bound but not listening: connections are refused, and no one else can take the port.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    yield closed.getsockname()[1]
    closed.close()


def test_a_listening_port_is_reached() -> None:
    with loopback_http_server() as port:
        reached = reach(f"tcp://127.0.0.1:{port}", timeout_s=3)
        assert (reached.answered, reached.answer) == (True, "connected")
        http = reach(f"http://user:secret@127.0.0.1:{port}/v1/models", timeout_s=3)
    assert (http.answered, http.answer) == (True, "HTTP 404")
    assert http.what == f"GET http://127.0.0.1:{port}/v1/models"  # no credentials


def test_a_refusing_port_is_not_reached(closed_port: int) -> None:
    tcp = reach(f"tcp://127.0.0.1:{closed_port}", timeout_s=3)
    assert (tcp.answered, tcp.answer, tcp.reason) == (False, "no connection", "Connection refused")
    http = reach(f"http://127.0.0.1:{closed_port}/", timeout_s=3)
    assert (http.answered, http.answer, http.reason) == (False, "no answer", "Connection refused")


def test_shown_drops_user_and_password() -> None:
    assert shown("https://u:p@api.example:8443/x?y=1") == "https://api.example:8443/x?y=1"
    assert shown("tcp://db.example:5432") == "tcp://db.example:5432"
