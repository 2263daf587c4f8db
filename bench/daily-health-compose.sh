#!/usr/bin/env bash
# The runbook's daily health script as it is written for Docker Compose (`docker-compose exec`),
# pointed at one compose project (the benchmark's baseline next to `pytest -m daily`).
# Needs: COMPOSE_PROJECT, COMPOSE_FILE, DOCKER_HOST, BACKEND_URL, FRONTEND_URL, DATA_DIR.
# It checks 6 conditions: pg_isready, redis PING, backend /health, frontend /health, the
# containers' CPU and memory (docker stats --no-stream), data filesystem under 80%.
set -u
failed=0
ok()   { echo "OK   $1"; }
fail() { echo "FAIL $1"; failed=1; }
dc() { docker compose -p "$COMPOSE_PROJECT" -f "$COMPOSE_FILE" "$@"; }

dc exec -T postgres pg_isready -t 3 >/dev/null && ok "postgres ready" || fail "postgres ready"
# Redis asks for a password: NOAUTH is an answer, as the runbook's `redis-cli ping` sees it.
answer=$(dc exec -T redis redis-cli ping 2>/dev/null)
case "$answer" in PONG*|NOAUTH*) ok "redis ping";; *) fail "redis ping ($answer)";; esac
curl -fsS -m 3 "$BACKEND_URL/health" >/dev/null && ok "backend health" || fail "backend health"
curl -fsS -m 3 "$FRONTEND_URL/health" >/dev/null && ok "frontend health" || fail "frontend health"
ids=$(dc ps -q)
docker stats --no-stream --format '{{.Name}} {{.CPUPerc}} {{.MemUsage}}' $ids >/dev/null \
    && ok "docker stats" || fail "docker stats"
used=$(df -P "$DATA_DIR" | awk 'NR==2 {gsub("%", "", $5); print $5}')
[ "$used" -lt 80 ] && ok "disk ${used}%" || fail "disk ${used}%"
exit $failed
