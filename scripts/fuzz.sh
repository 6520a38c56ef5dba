#!/usr/bin/env bash
# Builds the libFuzzer harnesses of tests/fuzz with clang in build-fuzz/ (CMake option
# FSCHED_FUZZ: everything compiled with -fsanitize=fuzzer-no-link,address,undefined)
# and runs each for a bounded time, starting from its seed corpus tests/fuzz/corpus/<h>/,
# JOBS harnesses at once.
# Prints per harness its executions per second and coverage (libFuzzer's final cov:/ft:
# line and its stat:: lines); exits non-zero if a harness crashed, leaked, hung or
# exceeded its memory limit, naming the file that reproduces it
# (build-fuzz/tests/fuzz/fuzz_<h> FILE runs it again); the failures are also listed in
# build-fuzz/fuzz/failed.
# Environment: FUZZ_SECONDS (per harness, default 60), FUZZ_HARNESSES (default: all of
# tests/fuzz/fuzz_*.cpp), FUZZ_RSS_MB (-rss_limit_mb, default 2048), FUZZ_TIMEOUT (seconds
# one input may take, default 20), FUZZ_BUILD (default build-fuzz), JOBS (ninja, and
# harnesses run at once; default 2).
set -uo pipefail
cd "$(dirname "$0")/.."
build=${FUZZ_BUILD:-build-fuzz}
secs=${FUZZ_SECONDS:-60}
rss=${FUZZ_RSS_MB:-2048}
unit_timeout=${FUZZ_TIMEOUT:-20}
jobs=${JOBS:-2}
mkdir -p "$build/fuzz"
: >"$build/fuzz/failed"   # one line per failure, for scripts/test.sh's summary
die() { echo "fuzz.sh: $*" >&2; echo "$*" >>"$build/fuzz/failed"; exit 1; }

if [[ -n ${FUZZ_HARNESSES:-} ]]; then
  read -ra harnesses <<<"$FUZZ_HARNESSES"
else
  harnesses=()
  for f in tests/fuzz/fuzz_*.cpp; do h=${f##*/fuzz_}; harnesses+=("${h%.cpp}"); done
fi
command -v clang++ >/dev/null || die "clang++ not found (scripts/install-deps.sh installs clang)"

CC=clang CXX=clang++ cmake -G Ninja -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFSCHED_FUZZ=ON \
  -DBUILD_TESTING=OFF >"$build/fuzz/cmake.log" 2>&1 || { cat "$build/fuzz/cmake.log"; die "cmake failed"; }
ninja -C "$build" -j "$jobs" "${harnesses[@]/#/fuzz_}" || die "building the harnesses failed"

# Runs harness $1 for $secs seconds; its log in $build/fuzz/$1.log, its exit status in
# $build/fuzz/$1.rc. JOBS harnesses run at once (each is one process on one CPU).
run_harness() {
  local h=$1 bin=$build/tests/fuzz/fuzz_$1 work=$build/fuzz/corpus/$1 art=$build/fuzz/artifacts
  mkdir -p "$work" "$art"
  local args=(-max_total_time="$secs" -rss_limit_mb="$rss" -timeout="$unit_timeout" -print_final_stats=1
              -artifact_prefix="$art/$h-")
  [[ -f tests/fuzz/$h.dict ]] && args+=(-dict="tests/fuzz/$h.dict")
  # Per-harness options, e.g. -max_len, one per line.
  [[ -f tests/fuzz/$h.options ]] && while read -r o; do [[ $o && $o != \#* ]] && args+=("$o"); done <"tests/fuzz/$h.options"
  # The outer timeout only guards against a fuzzer that ignores -max_total_time.
  timeout --kill-after=30 $((secs + 300)) "$bin" "${args[@]}" "$work" "tests/fuzz/corpus/$h" >"$build/fuzz/$h.log" 2>&1
  echo $? >"$build/fuzz/$h.rc"
}
running=0
for h in "${harnesses[@]}"; do
  if ((running >= jobs)); then wait -n; ((running--)); fi
  printf '[%(%T)T] fuzz_%s: %s s\n' -1 "$h" "$secs"
  run_harness "$h" &
  ((running++))
done
wait

failed=()
summary=()
for h in "${harnesses[@]}"; do
  log=$build/fuzz/$h.log
  rc=$(cat "$build/fuzz/$h.rc" 2>/dev/null || echo 255)
  printf '\n==== fuzz_%s: %s s ====\n' "$h" "$secs"
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1)
  execs=$(sed -n 's/^stat::average_exec_per_sec:[[:space:]]*//p' "$log" | tail -1)
  cov=$(sed -n 's/.* cov: \([0-9]*\) ft: \([0-9]*\).*/cov: \1 ft: \2/p' "$log" | tail -1)
  grep -E '^(#[0-9]+[[:space:]]+DONE|stat::)' "$log"
  if ((rc != 0)); then
    # The sanitizer's or libFuzzer's report, and the input that reproduces it.
    grep -E 'ERROR: |runtime error:|^SUMMARY:|fuzz_[a-z]+: |Test unit written to|uncaught exception|terminate called' "$log" | head -20
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    failed+=("fuzz_$h (exit $rc; input: ${artifact:-none written}; log: $log)")
    summary+=("fuzz_$h: FAILED, ${execs:-?} exec/s, ${cov:-no coverage line}, input ${artifact:-?}")
  else
    summary+=("fuzz_$h: ok, ${execs:-?} exec/s, ${cov:-?} (${done_line:+$(sed 's/.*corp: \([^ ]*\).*/corpus \1/' <<<"$done_line")})")
  fi
done

printf '\n==== fuzzing summary (%s s per harness) ====\n' "$secs"
printf '%s\n' "${summary[@]}"
if ((${#failed[@]})); then
  printf 'FAILED: %s\n' "${failed[@]}"
  printf '%s\n' "${failed[@]}" >"$build/fuzz/failed"
  exit 1
fi
echo "All fuzzers ran without finding a bug."
