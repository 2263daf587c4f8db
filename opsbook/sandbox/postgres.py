"""PostgreSQL (15 or newer): a private cluster with the `chatdb` database, its schema and two roles.

The superuser is reached only through a unix socket under the sandbox dir (peer auth, mapped
from the OS user that runs the server); every other login is SCRAM over 127.0.0.1. There is no
`trust` line. As root the server runs as the `postgres` OS user, which must be able to reach the
sandbox dir.
"""

from __future__ import annotations

import os
import shutil
import signal
from importlib import resources
from pathlib import Path

from opsbook.postgres_cluster import SUPERUSER, Cluster, ClusterError, server_os_user
from opsbook.sandbox.base import Component, require_port
from opsbook.sandbox.process import ComponentError, Process, SandboxError
from opsbook.sandbox.tls import make_self_signed
from opsbook.secrets import scram_verifier

DATABASE = "chatdb"
APP_ROLE = "chat_app"
MONITOR_ROLE = "opsbook_monitor"
# Remediation's role: owns the tables (VACUUM, CREATE INDEX) and may end other sessions
# (pg_signal_backend); not a superuser. It may ALTER SYSTEM only the tuning runbook's settings
# (PostgreSQL 15's per-parameter grant) and reload the configuration.
ADMIN_ROLE = "opsbook_admin"
TUNED_SETTINGS = ("shared_buffers", "effective_cache_size", "maintenance_work_mem")
SOCKET_PATH_MAX = 107  # sun_path in struct sockaddr_un, less the final NUL
# The secret rotation's one right over the application's role: PostgreSQL 15 lets only a
# superuser or CREATEROLE change another role's password, and CREATEROLE there may also grant
# itself pg_execute_server_program. This function (the superuser's, SECURITY DEFINER) sets
# the application role's password from a SCRAM verifier and nothing else; only the admin role
# may call it (`opsbook secrets rotate` uses it where it exists, ALTER ROLE elsewhere).
SET_APP_PASSWORD = f"""
CREATE OR REPLACE FUNCTION public.opsbook_set_password(role_name name, verifier text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
BEGIN
    IF role_name <> '{APP_ROLE}' THEN
        RAISE EXCEPTION 'opsbook_set_password: only the application role {APP_ROLE}';
    END IF;
    IF verifier NOT LIKE 'SCRAM-SHA-256$%' THEN
        RAISE EXCEPTION 'opsbook_set_password: a SCRAM-SHA-256 verifier, never a clear password';
    END IF;
    EXECUTE format('ALTER ROLE %I PASSWORD %L', role_name, verifier);
END
$fn$;
REVOKE ALL ON FUNCTION public.opsbook_set_password(name, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.opsbook_set_password(name, text) TO {ADMIN_ROLE};
"""


class Postgres(Component):
    name = "postgres"

    @property
    def home(self) -> Path:
        return self.layout.dir / "postgres"

    @property
    def cluster(self) -> Cluster:
        """The cluster's files and programs (port 0 until the stack has given it one)."""
        return Cluster(self.home, self.port or 0)

    @property
    def data(self) -> Path:
        return self.cluster.data

    @property
    def socket_dir(self) -> Path:
        return self.cluster.socket_dir

    @property
    def os_user(self) -> str:
        """The OS user that runs the server (and is mapped to the superuser)."""
        return server_os_user()

    def _process(self) -> Process:
        try:
            argv = self.cluster.server_argv()
        except ClusterError:
            # No server programs on this machine: status and stop still work, and prepare()
            # says where it looked before anything is started.
            argv = ["postgres", "-D", str(self.data)]
        return Process(
            name=self.name,
            argv=argv,
            log=self.layout.log(self.name),
            pid_file=self.layout.pid_file(self.name),
            user=SUPERUSER if os.geteuid() == 0 else None,
            # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM would wait for every client.
            stop_signal=signal.SIGINT,
        )

    def _check_reachable(self) -> None:
        if os.geteuid() != 0:
            return
        for parent in reversed([self.layout.dir, *self.layout.dir.parents]):
            if not os.stat(parent).st_mode & 0o001:
                raise SandboxError(
                    f"postgres: the {SUPERUSER} OS user cannot reach {self.layout.dir}: "
                    f"{parent} is not searchable by others (choose a dir under /tmp or /srv)"
                )
        socket_path = self.socket_dir / f".s.PGSQL.{require_port(self)}"
        if len(str(socket_path)) > SOCKET_PATH_MAX:
            raise SandboxError(
                f"postgres: socket path too long (max {SOCKET_PATH_MAX}): {socket_path}"
            )

    def _failed(self, exc: ClusterError) -> ComponentError:
        """The component's error for a failed PostgreSQL program; its output goes to the log,
        whose tail is the useful part."""
        if not exc.output:
            return ComponentError(self.name, exc.problem, None)
        self.layout.logs.mkdir(parents=True, exist_ok=True)
        with self.layout.log(self.name).open("a", encoding="utf-8") as log:
            log.write(exc.output)
        return ComponentError(self.name, exc.problem, self.layout.log(self.name))

    def prepare(self) -> None:
        port = require_port(self)
        cluster = self.cluster
        self._check_reachable()
        try:
            cluster.tool("postgres")
        except ClusterError as exc:
            raise self._failed(exc) from None
        cluster.owned_dir(self.home, 0o755)
        cluster.owned_dir(self.socket_dir, 0o755)
        if not cluster.initialised:
            cluster.owned_dir(self.data, 0o700)
            try:
                cluster.initdb("--auth-local=peer", "--auth-host=scram-sha-256")
            except ClusterError as exc:
                raise self._failed(exc) from None
            with (self.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
                conf.write("\ninclude 'opsbook.conf'\n")
        files = {
            "opsbook.conf": "\n".join(
                [
                    "listen_addresses = '127.0.0.1'",
                    f"port = {port}",
                    f"unix_socket_directories = '{self.socket_dir}'",
                    "unix_socket_permissions = 0700",
                    "password_encryption = 'scram-sha-256'",
                    # TLS for clients that ask (libpq's default, prefer: the backend does),
                    # as a server whose traffic leaves the host needs (SEC-013); pg_hba's
                    # `host` lines still take the checks' own sslmode=disable connections.
                    "ssl = on",
                    "ssl_cert_file = 'server.crt'",
                    "ssl_key_file = 'server.key'",
                    "log_connections = on",
                    "log_disconnections = on",
                    "logging_collector = off",
                    "log_line_prefix = '%m [%p] %q%u@%d '",
                    "max_connections = 50",
                    "shared_buffers = 32MB",
                    # The tuning runbook reads the slowest queries from pg_stat_statements
                    # (TUNE-001); the library must be loaded at server start.
                    "shared_preload_libraries = 'pg_stat_statements'",
                    "",
                ]
            ),
            "pg_hba.conf": (
                "# TYPE  DATABASE  USER  ADDRESS  METHOD\n"
                f"local all {SUPERUSER} peer map=opsbook\n"
                "host all all 127.0.0.1/32 scram-sha-256\n"
            ),
            "pg_ident.conf": f"opsbook {self.os_user} {SUPERUSER}\n",
        }
        for name, text in files.items():
            path = self.data / name
            path.write_text(text, encoding="utf-8")
            path.chmod(0o600)
            if os.geteuid() == 0:
                shutil.chown(path, SUPERUSER, SUPERUSER)
        certificate, key = self.data / "server.crt", self.data / "server.key"
        # PostgreSQL refuses a key that others can read, or one not owned by its own user.
        make_self_signed(certificate, key, self.name)
        if os.geteuid() == 0:
            for path in (certificate, key):
                shutil.chown(path, SUPERUSER, SUPERUSER)

    def ready(self) -> bool:
        return self.cluster.ready("127.0.0.1")

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser over the unix socket; stops at the first error."""
        require_port(self)
        try:
            return self.cluster.psql(sql, database)
        except ClusterError as exc:
            raise self._failed(exc) from None

    def provision(self) -> None:
        """Create chatdb, its schema and the two roles; idempotent (passwords follow the files)."""
        roles = {
            APP_ROLE: self.layout.secret(APP_ROLE),
            MONITOR_ROLE: self.layout.secret(MONITOR_ROLE),
            ADMIN_ROLE: self.layout.secret(ADMIN_ROLE),
        }
        statements = []
        for role, password in roles.items():
            verifier = scram_verifier(password)
            statements.append(
                f"SELECT 'CREATE ROLE {role}' WHERE NOT EXISTS "
                f"(SELECT FROM pg_roles WHERE rolname = '{role}') \\gexec\n"
                f"ALTER ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                f"NOBYPASSRLS PASSWORD '{verifier}';\n"
            )
        statements.append(
            f"SELECT 'CREATE DATABASE {DATABASE}' WHERE NOT EXISTS "
            f"(SELECT FROM pg_database WHERE datname = '{DATABASE}') \\gexec\n"
            f"REVOKE ALL ON DATABASE {DATABASE} FROM PUBLIC;\n"
            f"GRANT CONNECT ON DATABASE {DATABASE} TO {APP_ROLE}, {MONITOR_ROLE}, {ADMIN_ROLE};\n"
            f"GRANT pg_monitor TO {MONITOR_ROLE};\n"
            f"GRANT pg_monitor, pg_signal_backend TO {ADMIN_ROLE};\n"
            f"GRANT ALTER SYSTEM ON PARAMETER {', '.join(TUNED_SETTINGS)} TO {ADMIN_ROLE};\n"
        )
        self.psql("".join(statements))
        schema = resources.files("chatapp").joinpath("schema.sql").read_text("utf-8")
        tables = "conversations, messages, agents"
        self.psql(
            schema
            + "CREATE EXTENSION IF NOT EXISTS pg_stat_statements;\n"
            # Function privileges are per database: the admin reloads from chatdb.
            + f"GRANT EXECUTE ON FUNCTION pg_reload_conf() TO {ADMIN_ROLE};\n"
            + "REVOKE ALL ON SCHEMA public FROM PUBLIC;\n"
            + f"GRANT USAGE ON SCHEMA public TO {APP_ROLE}, {MONITOR_ROLE};\n"
            + f"GRANT SELECT, INSERT, UPDATE, DELETE ON {tables} TO {APP_ROLE};\n"
            + f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE};\n"
            + f"GRANT SELECT ON {tables} TO {MONITOR_ROLE};\n"
            # The audit reads pg_hba.conf's rules (SEC-010); per database in PG15.
            + f"GRANT SELECT ON pg_hba_file_rules TO {MONITOR_ROLE};\n"
            + f"GRANT EXECUTE ON FUNCTION pg_hba_file_rules() TO {MONITOR_ROLE};\n"
            + f"GRANT USAGE, CREATE ON SCHEMA public TO {ADMIN_ROLE};\n"
            + SET_APP_PASSWORD
            + "".join(
                f"ALTER TABLE {table} OWNER TO {ADMIN_ROLE};\n" for table in tables.split(", ")
            ),
            database=DATABASE,
        )

    def start(self) -> None:
        super().start()
        self.provision()
