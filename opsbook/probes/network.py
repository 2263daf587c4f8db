"""Egress: whether a destination outside the stack answers from the checking host.

A `tcp://host:port` destination is reached with a TCP connection; an `http(s)://` one with a
GET whose answer, any status at all, proves the path (DNS, firewall, proxy, TLS) works.
"""

from __future__ import annotations

import re
import socket
from urllib.parse import urlsplit

from msgspec import Struct


class Reach(Struct, frozen=True):
    """What became of one attempt to reach a destination."""

    what: str  # "tcp://api.example:443", "GET https://api.example/v1/models" (no credentials)
    answered: bool
    answer: str  # "connected", "HTTP 404", "no connection", "no answer"
    reason: str = ""  # why not: "Connection refused", "no answer within 3s"


def shown(url: str) -> str:
    """The URL without any user or password in it, for messages and reports."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def _reason(exc: BaseException) -> str:
    # requests buries the socket's own words ("Connection refused") three exceptions deep.
    text = str(exc)
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if found:
        return found[1].strip()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return text[:200] or type(exc).__name__


def reach(url: str, *, timeout_s: float) -> Reach:
    """Connect to (tcp://) or GET (http, https, redirects not followed) the URL once."""
    parts = urlsplit(url)
    if parts.scheme == "tcp":
        what = shown(url)
        try:
            with socket.create_connection((parts.hostname, parts.port), timeout=timeout_s):
                return Reach(what, True, "connected")
        except TimeoutError:
            return Reach(what, False, "no connection", f"no connection within {timeout_s:g}s")
        except OSError as exc:
            return Reach(what, False, "no connection", _reason(exc))
    import requests  # only the HTTP form needs it

    what = f"GET {shown(url)}"
    try:
        with requests.get(url, timeout=timeout_s, allow_redirects=False, stream=True) as answer:
            return Reach(what, True, f"HTTP {answer.status_code}")
    except requests.Timeout:
        return Reach(what, False, "no answer", f"no answer within {timeout_s:g}s")
    except requests.RequestException as exc:
        return Reach(what, False, "no answer", _reason(exc))
