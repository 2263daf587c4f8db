#!/bin/sh
# Initialise the cluster once, provision chatdb on every start (idempotent; the same statements
# as Postgres.provision in opsbook/sandbox/postgres.py: keep the two in step), then run the
# server in the foreground. Passwords are read from the
# secret files and set over the unix socket of a server that listens on no TCP port.
set -eu
secrets=/run/secrets
tables="conversations, messages, agents"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    initdb -D "$PGDATA" -U postgres --auth-local=peer --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C --no-sync >/dev/null
    cat >>"$PGDATA/postgresql.conf" <<CONF
listen_addresses = '*'
password_encryption = 'scram-sha-256'
log_connections = on
log_disconnections = on
log_line_prefix = '%m [%p] %q%u@%d '
max_connections = 50
shared_buffers = 32MB
shared_preload_libraries = 'pg_stat_statements'
CONF
    # No trust line: the superuser only through the socket (peer), everyone else SCRAM.
    printf 'local all postgres peer\nhost all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n' \
        >"$PGDATA/pg_hba.conf"
fi

pg_ctl -D "$PGDATA" -w -s -o "-c listen_addresses='' -c unix_socket_directories=/tmp" start
psql_() { psql -X -q -A -t -v ON_ERROR_STOP=1 -h /tmp -U postgres "$@"; }
{
    for role in chat_app opsbook_monitor opsbook_admin; do
        printf '\\set pw `cat %s/%s.password`\n' "$secrets" "$role"
        printf "SELECT 'CREATE ROLE %s' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '%s') \\\\gexec\n" "$role" "$role"
        printf "ALTER ROLE %s LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'pw';\n" "$role"
    done
    cat <<SQL
\\unset pw
SELECT 'CREATE DATABASE chatdb' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'chatdb') \\gexec
REVOKE ALL ON DATABASE chatdb FROM PUBLIC;
GRANT CONNECT ON DATABASE chatdb TO chat_app, opsbook_monitor, opsbook_admin;
GRANT pg_monitor TO opsbook_monitor;
GRANT pg_monitor, pg_signal_backend TO opsbook_admin;
GRANT ALTER SYSTEM ON PARAMETER shared_buffers, effective_cache_size, maintenance_work_mem TO opsbook_admin;
SQL
} | psql_ -d postgres
{
    cat /etc/opsbook/schema.sql
    cat <<SQL
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
GRANT EXECUTE ON FUNCTION pg_reload_conf() TO opsbook_admin;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO chat_app, opsbook_monitor;
GRANT SELECT, INSERT, UPDATE, DELETE ON $tables TO chat_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO chat_app;
GRANT SELECT ON $tables TO opsbook_monitor;
GRANT USAGE, CREATE ON SCHEMA public TO opsbook_admin;
ALTER TABLE conversations OWNER TO opsbook_admin;
ALTER TABLE messages OWNER TO opsbook_admin;
ALTER TABLE agents OWNER TO opsbook_admin;
SQL
    # The secret rotation's one right over chat_app (SET_APP_PASSWORD in opsbook/sandbox/postgres.py:
    # keep the two in step); quoted, so that the shell leaves its dollars alone.
    cat <<'SQL'
CREATE OR REPLACE FUNCTION public.opsbook_set_password(role_name name, verifier text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
BEGIN
    IF role_name <> 'chat_app' THEN
        RAISE EXCEPTION 'opsbook_set_password: only the application role chat_app';
    END IF;
    IF verifier NOT LIKE 'SCRAM-SHA-256$%' THEN
        RAISE EXCEPTION 'opsbook_set_password: a SCRAM-SHA-256 verifier, never a clear password';
    END IF;
    EXECUTE format('ALTER ROLE %I PASSWORD %L', role_name, verifier);
END
$fn$;
REVOKE ALL ON FUNCTION public.opsbook_set_password(name, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.opsbook_set_password(name, text) TO opsbook_admin;
SQL
} | psql_ -d chatdb
pg_ctl -D "$PGDATA" -w -s -m fast stop
exec postgres -D "$PGDATA"
