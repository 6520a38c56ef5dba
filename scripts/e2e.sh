#!/usr/bin/env bash
# Runs the end-to-end suite (tests/e2e/test_*.py) as E2E_JOBS pytest sessions at once,
# one test file per session: most of the suite waits (on checkpoint intervals,
# heartbeats, node-failure timeouts), so two sessions on two cores take little more
# than half the time of one. Each session has its own run directory, cgroups and
# namespaces (tests/e2e/conftest.py, netcluster.py), so files cannot see each other.
#
# pytest-xdist is not used: with Debian 12's execnet 1.9 its workers run tests outside
# the main thread, where the suite's per-test SIGALRM time limit cannot be set.
#
# Files start longest first, by the seconds in tests/e2e/durations.txt ("SECONDS FILE"
# per line; a file not listed there starts first), so that the last to start are short.
# Each file's pytest -v output goes to $FSCHED_BUILD/e2e/<file>.log and is printed whole
# once the file ends; the last lines list per file its result and seconds, and every
# failed test. Exits non-zero if any file failed.
#
# Arguments: test files to run (default: all of tests/e2e/test_*.py); extra pytest
# options in E2E_PYTEST_ARGS (e.g. "-k restore").
# Environment: FSCHED_BUILD (default build), E2E_JOBS (default 2).
set -uo pipefail
cd "$(dirname "$0")/.."
build=${FSCHED_BUILD:-build}
case $build in /*) ;; *) build=$PWD/$build ;; esac
export FSCHED_BUILD=$build
jobs=${E2E_JOBS:-2}
logs=$build/e2e
rm -rf "$logs"
mkdir -p "$logs"

if (($#)); then files=("$@"); else files=(tests/e2e/test_*.py); fi
# Longest first; unknown files (new ones) count as longest.
ordered=$(for f in "${files[@]}"; do
  secs=$(awk -v f="${f##*/}" '$2 == f { print $1 }' tests/e2e/durations.txt 2>/dev/null)
  echo "${secs:-99999} $f"
done | sort -k1,1nr | cut -d' ' -f2)

# One file: its log, then "RC SECONDS" in <log>.status.
run_file() {
  local f=$1 name log start rc
  name=${1##*/}
  log=$logs/${name%.py}.log
  start=$(date +%s)
  printf '[%(%T)T] start %s\n' -1 "$name"
  # shellcheck disable=SC2086  # E2E_PYTEST_ARGS is split on purpose
  /usr/bin/python3 -m pytest -v -rfE --durations=5 ${E2E_PYTEST_ARGS:-} "$f" >"$log" 2>&1 </dev/null
  rc=$?
  echo "$rc $(($(date +%s) - start))" >"$log.status"
  printf '[%(%T)T] end   %s: exit %d, %d s\n' -1 "$name" "$rc" "$(($(date +%s) - start))"
}
export -f run_file
export logs

start=$(date +%s)
echo "$ordered" | xargs -P "$jobs" -I{} bash -c 'run_file "$1"' _ {}

failed=()
summary=()
while read -r f; do
  name=${f##*/}
  log=$logs/${name%.py}.log
  printf '\n==== %s ====\n' "$name"
  cat "$log"
  read -r rc secs <"$log.status" 2>/dev/null || { rc=255 secs=0; }
  # 5: no test collected (all deselected by -k), not a failure
  if ((rc == 0 || rc == 5)); then
    summary+=("$(printf '%6d s  %s  ok' "$secs" "$name")")
  else
    summary+=("$(printf '%6d s  %s  FAILED (exit %d)' "$secs" "$name" "$rc")")
    failed+=("$name")
  fi
done <<<"$ordered"

printf '\n==== end-to-end files (E2E_JOBS=%d, %d s in all) ====\n' "$jobs" "$(($(date +%s) - start))"
printf '%s\n' "${summary[@]}"
if ((${#failed[@]})); then
  echo "failed tests:"
  for name in "${failed[@]}"; do
    grep -hE '^(FAILED|ERROR) ' "$logs/${name%.py}.log" | head -10
  done
  exit 1
fi
