"""A Pushgateway, as the inventory or `--pushgateway` names it: credentials written in its URL
(`https://ops:PASSWORD@gateway:9091`, a gateway behind basic auth) are sent as basic auth, and
never printed.

prometheus_client and urllib would otherwise take `ops:PASSWORD@gateway` for a host name: the
push failed ("Name or service not known") and its error line showed the password.
"""

from __future__ import annotations

import base64
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from opsbook.secrets import MASK, Redactor


@dataclass(frozen=True)
class Gateway:
    url: str  # where requests go: the address without its credentials
    username: str | None = None
    password: str = field(default="", repr=False)

    @classmethod
    def parse(cls, address: str) -> Gateway:
        """The gateway at `address` (without a scheme, http://, as prometheus_client reads it)."""
        if "://" not in address:
            address = f"http://{address}"
        parts = urlsplit(address)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {Redactor()(address)}")
        url = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl().rstrip("/")
        if "@" not in parts.netloc:
            return cls(url)
        return cls(url, unquote(parts.username or ""), unquote(parts.password or ""))

    def __str__(self) -> str:
        """The address as opsbook prints it: the user name, never the password."""
        if self.username is None:
            return self.url
        scheme, _, rest = self.url.partition("://")
        return f"{scheme}://{self.username}:{MASK}@{rest}"

    def _authorization(self) -> dict[str, str]:
        if self.username is None:
            return {}
        pair = f"{self.username}:{self.password}".encode()
        return {"Authorization": f"Basic {base64.b64encode(pair).decode('ascii')}"}

    def push(self, job: str, registry: Any, grouping_key: dict[str, str], timeout: float) -> None:
        """Replace the group's metrics (prometheus_client's push_to_gateway); OSError when the
        gateway refused them or could not be reached."""
        from prometheus_client import push_to_gateway
        from prometheus_client.exposition import default_handler

        def handler(
            url: str, method: str, timeout: float | None, headers: list[tuple[str, str]],
            data: bytes,
        ) -> Any:  # fmt: skip
            headers = [*headers, *self._authorization().items()]
            return default_handler(url, method, timeout, headers, data)

        push_to_gateway(
            self.url, job=job, registry=registry, grouping_key=grouping_key, timeout=timeout,
            handler=handler,
        )  # fmt: skip

    def get(self, path: str, timeout: float) -> bytes:
        """The body of a GET of `path` (`/metrics`, `/-/ready`); OSError as urllib raises it."""
        # http(s) only: parse refuses any other scheme.
        request = urllib.request.Request(self.url + path, headers=self._authorization())  # noqa: S310
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310
            body: bytes = answer.read()
        return body
