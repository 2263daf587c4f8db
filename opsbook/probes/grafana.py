"""What Grafana gives a stranger: a login with its first-start password, anonymous access.

The requests go without the inventory's credentials, as a stranger's would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from msgspec import Struct

from opsbook.errors import TargetUnreachable

if TYPE_CHECKING:
    from opsbook.targets import HttpTarget

DEFAULT_ADMIN = {"user": "admin", "password": "admin"}  # Grafana's first-start login


class StrangerAnswer(Struct, frozen=True):
    """The answer to a request sent without credentials."""

    status: int
    body: str  # cut to 1000 characters, for the report


def _request(target: HttpTarget, method: str, path: str, **kwargs: Any) -> StrangerAnswer:
    import requests

    target.reachable()
    try:
        response = requests.request(
            method, target.spec.url + path, timeout=target.timeout, allow_redirects=False,
            verify=target.spec.verify, **kwargs,
        )  # fmt: skip
    except requests.RequestException as exc:
        raise TargetUnreachable("http", target.name, target.where, str(exc)[:200]) from None
    return StrangerAnswer(response.status_code, response.text[:1000])


def default_admin_login(target: HttpTarget) -> StrangerAnswer:
    """POST /login with admin/admin."""
    return _request(target, "POST", "/login", json=DEFAULT_ADMIN)


def anonymous_org(target: HttpTarget) -> StrangerAnswer:
    """GET /api/org without credentials: 200 when anonymous access is on."""
    return _request(target, "GET", "/api/org")
