"""A PostgreSQL cluster that opsbook runs itself on this machine: initdb, the server's command
line, readiness, and SQL as the superuser over the cluster's own unix socket.

Two users, one component: the sandbox's `postgres` (a server that outlives the command that
started it, under the sandbox's pid files) and the restore drill's scratch cluster (a throwaway
server on a private socket, stopped when the drill ends: `Cluster.running`).

The programs are the cluster's own version's (its PG_VERSION), or for a cluster not yet made
the newest installed: $OPSBOOK_PG_BIN, else the standard folders (opsbook.pg_tools), looked up
when a program is run, not at import. PostgreSQL refuses to run as root, so as root the server
and initdb run as the `postgres` OS user, which must be able to reach the cluster's home.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from opsbook.pg_tools import PgToolsError, server_bin

SUPERUSER = "postgres"
COMMAND_TIMEOUT_S = 60
START_DEADLINE_S = 30.0
STOP_GRACE_S = 15.0


class ClusterError(Exception):
    """A PostgreSQL program failed; `output` is what it printed (its own words are the tail)."""

    def __init__(self, problem: str, output: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.output = output


def server_os_user() -> str:
    """The OS user that runs the server: `postgres` as root, else whoever we are."""
    return SUPERUSER if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name


def as_server_user() -> dict[str, object]:
    """subprocess arguments that run a program as the server's OS user (nothing unless root)."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(SUPERUSER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


@dataclass(frozen=True)
class Cluster:
    """One cluster: its files under `home` (data/, run/ for the socket), its port."""

    home: Path
    port: int

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def socket_dir(self) -> Path:
        return self.home / "run"

    @property
    def initialised(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    @property
    def major(self) -> int | None:
        """The major version the cluster was made with (PG_VERSION); None before initdb."""
        try:
            return int((self.data / "PG_VERSION").read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            return None

    def tool(self, name: str) -> str:
        """The path of one of the server's programs for this cluster (initdb, postgres,
        pg_isready, psql, createdb, pg_restore); ClusterError when none is installed."""
        try:
            return str(server_bin(self.major) / name)
        except PgToolsError as exc:
            raise ClusterError(str(exc)) from None

    def dsn(self, database: str, user: str = SUPERUSER) -> str:
        """A libpq connection string over the unix socket."""
        return f"host={self.socket_dir} port={self.port} dbname={database} user={user}"

    def owned_dir(self, path: Path, mode: int) -> None:
        """Make a directory of the cluster's, owned by the server's OS user."""
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
        if os.geteuid() == 0:
            shutil.chown(path, SUPERUSER, SUPERUSER)

    def command(self, argv: list[str], stdin: str | None = None) -> str:
        """Run a PostgreSQL program as the server's OS user; its stdout, or ClusterError."""
        tool = Path(argv[0]).name
        try:
            done = subprocess.run(  # type: ignore[call-overload]
                argv, input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                cwd=self.home, check=False, **as_server_user(),
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ClusterError(f"{tool} failed: {exc}") from None
        assert isinstance(done, subprocess.CompletedProcess)
        if done.returncode != 0:
            output = str(done.stdout) + str(done.stderr)
            raise ClusterError(f"{tool} exited with code {done.returncode}", output)
        return str(done.stdout)

    def initdb(self, *auth: str) -> None:
        """Create the cluster's data directory (`auth`: initdb's --auth-* options)."""
        self.command(
            [self.tool("initdb"), "-D", str(self.data), "-U", SUPERUSER, *auth,
             "--encoding=UTF8", "--locale=C",
             "--no-sync"]  # a cluster opsbook makes is never precious: skip initdb's fsyncs
        )  # fmt: skip

    def server_argv(self, *settings: str) -> list[str]:
        """The server's command line; `settings` are NAME=VALUE, each passed with -c."""
        argv = [self.tool("postgres"), "-D", str(self.data)]
        for setting in settings:
            argv += ["-c", setting]
        return argv

    def ready(self, host: str | None = None) -> bool:
        """pg_isready on `host` (default: the cluster's socket), with a timeout."""
        try:
            done = subprocess.run(
                [self.tool("pg_isready"), "-q", "-h", host or str(self.socket_dir),
                 "-p", str(self.port), "-t", "1"],
                capture_output=True, timeout=5, check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser over the unix socket; stops at the first error."""
        return self.command(
            [self.tool("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", str(self.socket_dir), "-p", str(self.port), "-U", SUPERUSER, "-d", database],
            stdin=sql,
        )  # fmt: skip

    @contextmanager
    def running(self, log: Path, *settings: str) -> Iterator[Cluster]:
        """Run the server for the duration of a `with` block; it is stopped however the block
        ends (SIGINT, PostgreSQL's fast shutdown, then SIGKILL to its process group)."""
        with log.open("ab") as stream:
            process = subprocess.Popen(  # type: ignore[call-overload]
                self.server_argv(*settings), stdout=stream, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=self.home, start_new_session=True,
                **as_server_user(),
            )  # fmt: skip
        assert isinstance(process, subprocess.Popen)
        try:
            deadline = time.monotonic() + START_DEADLINE_S
            while not self.ready():
                if process.poll() is not None or time.monotonic() > deadline:
                    lines = log.read_text(errors="replace").strip().splitlines()
                    raise ClusterError(
                        f"PostgreSQL did not start: {lines[-1] if lines else '?'}",
                        "\n".join(lines[-20:]),
                    )
                time.sleep(0.1)
            yield self
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(5)
