#!/bin/sh
# Writes nginx's resolver from the container's own /etc/resolv.conf, then runs the command.
# nginx.conf passes /api/ to the backend by a name looked up at request time (a recreated
# backend container has a new address), which needs a resolver; its address is the engine's
# DNS on the compose network: Docker's embedded 127.0.0.11, Podman's aardvark-dns at the
# network's gateway. Only the first nameserver: others (the host's) do not know the services.
set -eu
server=$(awk '$1 == "nameserver" { print $2; exit }' /etc/resolv.conf)
if [ -z "$server" ]; then
    echo "entrypoint: no nameserver in /etc/resolv.conf: nginx cannot look up the backend" >&2
    exit 1
fi
case "$server" in
    *:*) server="[$server]" ;;  # an IPv6 address, as nginx's resolver takes it
esac
# valid=2s: a recreated backend is reached at most 2 s after its name moves.
echo "resolver $server valid=2s ipv6=off;" > /var/lib/nginx/resolver.conf
exec "$@"
