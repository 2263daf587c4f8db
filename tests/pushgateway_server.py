"""A real Prometheus Pushgateway for the tests (Debian's prometheus-pushgateway) on a free
loopback port, its groups kept in a folder of the test's; with `guarded`, behind basic auth
(the exporter toolkit's web configuration), as a production gateway often is."""

from __future__ import annotations

import base64
import contextlib
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from support import eventually

from opsbook.loopback import free_port

# The user and password of a guarded gateway; the hash is bcrypt's of the password (cost 4:
# the gateway checks it on every request).
USER, PASSWORD = "ops", "gw-Pa55-for-tests"
PASSWORD_HASH = "$2b$04$ZclVViDSARZl4vQp3.t9cu/st7u1nC1LAsOPPTEtpBsjSze74ZMX2"


def get(url: str, *, auth: bool = False) -> str:
    """The body of a GET, with the guarded gateway's credentials when `auth`."""
    headers = {}
    if auth:
        pair = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        headers["Authorization"] = f"Basic {pair}"
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=3) as answer:
        return str(answer.read().decode())


@contextlib.contextmanager
def running(
    folder: Path, *, guarded: bool = False
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """The gateway's process and URL (without credentials), stopped at the end."""
    port = free_port()
    command = [
        "prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{port}",
        f"--persistence.file={folder / 'pushgateway.data'}",  # Debian's default is shared
    ]  # fmt: skip
    if guarded:
        web = folder / "pushgateway-web.yml"
        web.write_text(f"basic_auth_users:\n  {USER}: '{PASSWORD_HASH}'\n")
        command.append(f"--web.config.file={web}")
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def ready() -> bool:
        try:
            get(f"{url}/-/ready", auth=guarded)
        except OSError:
            return False
        return True

    try:
        eventually(ready, "the Pushgateway answers")
        yield process, url
    finally:
        process.send_signal(signal.SIGCONT)  # a test may have stopped it
        process.terminate()
        process.wait(timeout=30)
