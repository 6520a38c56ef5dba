#!/usr/bin/env bash
# Installs every Debian package fsched needs to build, test and benchmark.
# Idempotent; run as root on Debian 12.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
pkgs=(
  build-essential g++ cmake ninja-build pkg-config
  libzstd-dev libxxhash-dev nlohmann-json3-dev libcli11-dev libspdlog-dev libfmt-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  python3 python3-pytest python3-jsonschema   # jsonschema: tests/e2e/test_rest_api.py
  libsqlite3-dev sqlite3 libboost-dev libcpp-httplib-dev libssl-dev zlib1g-dev libbrotli-dev libmunge-dev munge
  libjwt-dev                  # the REST API's JSON Web Tokens (src/proto/jwt.cpp)
  xz-utils coreutils bash procps passwd make gcc gzip tar gawk
  clang libclang-rt-14-dev    # scripts/fuzz.sh: clang, libFuzzer and the sanitizer runtimes
  clang-format                # scripts/check-format.sh (clang-format 14)
  iproute2 util-linux         # tests/e2e/netcluster.py: ip netns, veth, bridge; nsenter
  strace                      # tests/e2e/test_net_lock.py: a dumper stopped right after its kill(2)
  openjdk-17-jdk-headless nodejs git perl  # tests/e2e/soak.py: real programs dumped and restored
  chromium                    # tests/e2e/test_console.py: the web console in headless Chromium
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The web console's npm packages (web/package-lock.json: uPlot; playwright-core for the
# browser tests), again whenever the lock is newer than the last install. npm comes with
# NodeSource's nodejs; Debian's nodejs has it in a package of its own.
command -v npm >/dev/null || apt-get install -y -qq --no-install-recommends npm
web=$(cd "$(dirname "$0")/../web" && pwd)
if [[ ! -f $web/node_modules/.package-lock.json || $web/package-lock.json -nt $web/node_modules/.package-lock.json ]]; then
  (cd "$web" && npm ci --no-audit --no-fund)
fi
