"""The checks' HTTP client: GET with a timeout, one kept-alive connection per target.

Built on the standard library's http.client: a daily run makes a few dozen GETs on loopback or
a LAN, and importing a full client library would cost more than all of them together. It never
follows redirects (a check judges the answer it got) and verifies TLS certificates.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import time
from datetime import timedelta
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from msgspec import Struct


class HttpError(Exception):
    """No answer: the connection failed, timed out, or the server broke the protocol."""

    def __init__(self, reason: str, *, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.timed_out = timed_out


class Response(Struct, frozen=True):
    """An answer, with the parts of `requests.Response` that checks use."""

    url: str
    status_code: int
    headers: Message
    content: bytes
    elapsed: timedelta

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    @property
    def text(self) -> str:
        charset = self.headers.get_content_charset() or "utf-8"
        return self.content.decode(charset, errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


class Client:
    """GETs against one base URL (scheme, host, port and a path prefix)."""

    def __init__(
        self,
        base_url: str,
        timeout: float,
        auth: tuple[str, str] | None = None,
        ca_file: Path | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        self.base_url = base_url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._timeout = timeout
        self._ca_file = ca_file  # None: the system's CAs
        self._headers = {"User-Agent": "opsbook", "Accept": "*/*"}
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._connection: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            if self._https:
                self._connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout,
                    context=ssl.create_default_context(cafile=self._ca_file),
                )  # fmt: skip
            else:
                self._connection = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._timeout
                )
        return self._connection

    def get(self, path: str, params: dict[str, str] | None = None) -> Response:
        target = self._prefix + path + (f"?{urlencode(params)}" if params else "")
        reused = self._connection is not None
        try:
            return self._get(target)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            if reused and not isinstance(exc, TimeoutError):
                # The server may have closed a kept-alive connection between two checks.
                try:
                    return self._get(target)
                except (OSError, http.client.HTTPException) as again:
                    self.close()
                    exc = again
            raise HttpError(_reason(exc), timed_out=isinstance(exc, TimeoutError)) from None

    def _get(self, target: str) -> Response:
        connection = self._connect()
        started = time.perf_counter()
        connection.request("GET", target, headers=self._headers)
        answer = connection.getresponse()
        elapsed = timedelta(seconds=time.perf_counter() - started)
        body = answer.read()
        if answer.will_close:
            self.close()
        return Response(self.base_url + target, answer.status, answer.headers, body, elapsed)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
