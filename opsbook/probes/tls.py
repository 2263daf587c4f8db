"""The TLS protocol versions an HTTPS endpoint accepts: one handshake per version offered."""

from __future__ import annotations

import socket
import warnings
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from opsbook.errors import TargetUnreachable

if TYPE_CHECKING:
    from opsbook.targets import HttpTarget

# Oldest first, as Python's ssl.TLSVersion names them; reports show them as `TLSv1.1`.
TLS_VERSIONS = ("TLSv1", "TLSv1_1", "TLSv1_2", "TLSv1_3")
WEAK_TLS = frozenset({"TLSv1", "TLSv1.1"})


def serves_tls(target: HttpTarget) -> bool:
    """Whether the endpoint's URL is https (an http URL has no TLS to look at)."""
    return urlsplit(target.spec.url).scheme == "https"


def _accepts(host: str, port: int, version: str, timeout_s: float) -> bool:
    import ssl  # a weekly audit's need; kept out of every run's start-up

    with warnings.catch_warnings():
        # Offering TLS 1.0/1.1 is the point of the probe; Python deprecates the names.
        warnings.simplefilter("ignore", DeprecationWarning)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # probing protocols, not trust
        context.minimum_version = context.maximum_version = getattr(ssl.TLSVersion, version)
        # OpenSSL 3's default security level refuses TLS < 1.2 in the client itself.
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    try:
        with (
            socket.create_connection((host, port), timeout=timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            return True
    except ssl.SSLError:
        return False


def accepted_tls_versions(target: HttpTarget) -> list[str]:
    """The TLS versions the endpoint completes a handshake with, oldest first (`TLSv1.2`).

    Each version is offered alone, on its own connection, within the target's timeout.
    """
    parts = urlsplit(target.spec.url)
    host, port = parts.hostname or "", parts.port or 443
    try:
        accepted = [v for v in TLS_VERSIONS if _accepts(host, port, v, target.timeout)]
    except OSError as exc:  # ssl.SSLError is an OSError too, but _accepts keeps those
        reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
        raise TargetUnreachable("http", target.name, target.where, reason) from None
    return [version.replace("_", ".") for version in accepted]
