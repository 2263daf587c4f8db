"""Self-signed certificates for the sandbox's TLS listeners (nginx, PostgreSQL), made by openssl.

An EC key (P-256) takes a few milliseconds, so `sandbox up` stays fast; a certificate that
exists is kept, so clients that trust it keep trusting it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from opsbook.sandbox.process import ComponentError

CERT_DAYS = 825  # the longest validity current clients accept for a server certificate


def make_self_signed(certificate: Path, key: Path, component: str) -> bool:
    """Write a self-signed certificate for 127.0.0.1 and localhost, and its key (mode 0600),
    unless both exist; whether one was made. ComponentError naming `component` when openssl
    cannot make it."""
    if certificate.exists() and key.exists():
        return False
    key.unlink(missing_ok=True)
    # openssl writes into an existing file without changing its mode: 0600 before the key is in.
    key.touch(mode=0o600)
    try:
        done = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec",
             "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-days", str(CERT_DAYS), "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
             "-keyout", str(key), "-out", str(certificate)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except OSError as exc:
        key.unlink(missing_ok=True)
        raise ComponentError(component, f"cannot run openssl: {exc.strerror}", None) from None
    if done.returncode != 0:
        key.unlink(missing_ok=True)
        certificate.unlink(missing_ok=True)
        problem = f"openssl could not make a TLS certificate: {done.stderr.strip()[-300:]}"
        raise ComponentError(component, problem, None)
    certificate.chmod(0o644)
    return True
