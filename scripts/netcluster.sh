#!/usr/bin/env bash
# A multi-host fsched cluster on this machine for manual experiments: the controller and
# each node in a network namespace and a cgroup of their own (tests/e2e/netcluster.py,
# the harness of the node-failure tests). Run as root; needs a build (FSCHED_BUILD or
# --build, default ./build) and munged (scripts/start-munge.sh).
#   scripts/netcluster.sh up [--nodes 2] [HeartbeatInterval=1 SlurmdTimeout=15 ...]
#   scripts/netcluster.sh exec sbatch --wrap 'sleep 100'   # a command on the controller's host
#   scripts/netcluster.sh exec -H node1 ip addr            # anything on a node's host
#   scripts/netcluster.sh partition node1 / heal node1 / crash node1 / status
#   scripts/netcluster.sh down
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "netcluster.sh: run as root" >&2; exit 1; }
bash "$here/scripts/start-munge.sh"
# Not cd'ing: `exec sbatch ...` runs in the caller's directory, as sbatch would.
exec /usr/bin/python3 "$here/tests/e2e/netcluster.py" "$@"
