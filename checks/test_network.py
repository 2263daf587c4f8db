"""Egress: the destinations outside the stack that the chat needs (opt-in, `egress:`)."""

from __future__ import annotations

import re
import socket
from urllib.parse import urlsplit

import pytest

from opsbook import Severity, check
from opsbook.plugin.keys import INVENTORY

pytestmark = [pytest.mark.daily, pytest.mark.network]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # One test per inventory entry, named after it: the destinations are the operator's
    # (a model provider's API, say), never written here.
    if "egress" not in metafunc.fixturenames:
        return
    inventory = metafunc.config.stash.get(INVENTORY, None)
    names = sorted(inventory.egress) if inventory is not None else []
    if names:
        metafunc.parametrize("egress", names, ids=names)
        return
    # The same skip as a target kind the inventory does not have (fixtures/targets.py).
    skip = pytest.mark.skip(reason="no egress in the inventory (NET-001 is opt-in)")
    metafunc.parametrize("egress", [pytest.param(None, marks=skip)], ids=["none"])


def _shown(url: str) -> str:
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


@check("NET-001", Severity.HIGH)
def test_egress_destination_is_reachable(egress, inventory, thresholds, finding) -> None:
    """An egress destination answers from the checking host.

    Risk: the chat cannot reach what it depends on outside the stack (the model provider's API,
    say): every answer fails although every service inside the stack is healthy.
    """
    import requests

    url = inventory.egress[egress].url
    parts = urlsplit(url)
    timeout = thresholds.timeout_s
    if parts.scheme == "tcp":
        expected = f"a TCP connection within {timeout:g}s"
        try:
            with socket.create_connection((parts.hostname, parts.port), timeout=timeout):
                pass
        except TimeoutError:
            finding.observe("no connection", expected=expected)
            raise AssertionError(
                f"{egress}: {_shown(url)}: no connection within {timeout:g}s (expected {expected})"
            ) from None
        except OSError as exc:
            finding.observe("no connection", expected=expected)
            raise AssertionError(
                f"{egress}: {_shown(url)}: {_reason(exc)} (expected {expected})"
            ) from None
        finding.observe("connected", expected=expected)
        return
    # Any HTTP answer, a 404 or a 401 included, proves the path works: the check is about the
    # network (DNS, firewall, proxy, TLS), not about the remote service or our credentials.
    expected = f"an HTTP answer within {timeout:g}s"
    try:
        with requests.get(url, timeout=timeout, allow_redirects=False, stream=True) as response:
            status = response.status_code
    except requests.Timeout:
        finding.observe("no answer", expected=expected)
        raise AssertionError(
            f"{egress}: GET {_shown(url)}: no answer within {timeout:g}s (expected {expected})"
        ) from None
    except requests.RequestException as exc:
        finding.observe("no answer", expected=expected)
        raise AssertionError(
            f"{egress}: GET {_shown(url)}: {_reason(exc)} (expected {expected})"
        ) from None
    finding.observe(f"HTTP {status}", expected=expected)
