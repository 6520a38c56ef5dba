#!/usr/bin/env bash
# Makes sure MUNGE works on this machine, as fsched's daemons and commands need it:
# creates a key if there is none and starts munged if it is not running. Idempotent;
# run as root.
set -euo pipefail
if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
  exit 0
fi
install -d -o munge -g munge -m 0700 /etc/munge
if [ ! -s /etc/munge/munge.key ]; then
  if command -v mungekey >/dev/null; then
    mungekey --create --keyfile=/etc/munge/munge.key
  else
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
runuser -u munge -- /usr/sbin/munged
for _ in $(seq 50); do
  if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then exit 0; fi
  sleep 0.1
done
echo "start-munge.sh: munged does not answer" >&2
exit 1
