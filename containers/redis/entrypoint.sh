#!/bin/sh
# The same users and ACL rules as the native sandbox (opsbook/sandbox/redis.py: keep the two in step); the config
# holds only SHA-256 hashes of the passwords read from /run/secrets/redis-USER.password.
set -eu
conf=/var/lib/redis/redis.conf
digest() { tr -d '\n' <"/run/secrets/redis-$1.password" | sha256sum | cut -d' ' -f1; }
keys="~message_queue ~message_queue:processing ~message_queue:processing:* ~dead_letter_queue ~processed_messages"
umask 077
cat >"$conf" <<CONF
bind * -::*
port 6379
protected-mode yes
daemonize no
dir /var/lib/redis
logfile ""
save ""
appendonly no
maxmemory 64mb
maxmemory-policy noeviction
user default reset on #$(digest default) ~* &* +@all
user chat_app reset on #$(digest chat_app) $keys -@all +@list +@connection
user opsbook reset on #$(digest opsbook) ~* -@all +@read -@dangerous +ping +info +client|list +memory|usage +slowlog|get
CONF
exec redis-server "$conf"
