#!/usr/bin/env bash
# The runbook's own daily health script, adapted to the sandbox's ports (the benchmark's
# baseline). It checks 6 conditions: backend /health, frontend /health, pg_isready, redis PING,
# message_queue depth under 1000, data filesystem under 80%.
set -u
failed=0
ok()   { echo "OK   $1"; }
fail() { echo "FAIL $1"; failed=1; }

curl -fsS -m 3 "$BACKEND_URL/health" >/dev/null && ok "backend health" || fail "backend health"
curl -fsS -m 3 "$FRONTEND_URL/health" >/dev/null && ok "frontend health" || fail "frontend health"
pg_isready -q -h "$PGHOST" -p "$PGPORT" -d chatdb -t 3 && ok "postgres ready" || fail "postgres ready"
[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" --user opsbook --no-auth-warning ping 2>/dev/null)" = PONG ] \
    && ok "redis ping" || fail "redis ping"
depth=$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" --user opsbook --no-auth-warning llen message_queue 2>/dev/null)
[ "${depth:-99999}" -lt 1000 ] && ok "queue depth $depth" || fail "queue depth ${depth:-?}"
used=$(df -P "$DATA_DIR" | awk 'NR==2 {gsub("%", "", $5); print $5}')
[ "$used" -lt 80 ] && ok "disk ${used}%" || fail "disk ${used}%"
exit $failed
