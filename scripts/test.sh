#!/usr/bin/env bash
# Builds fsched and runs all its tests, as root on Debian 12 (installing the Debian
# packages first if any is missing):
#   0. the formatting check of every C/C++ file against .clang-format
#   1. unit tests (ctest) of the RelWithDebInfo build in build/
#   2. the unit tests again, built with ASan/UBSan in build-asan/
#   3. the libFuzzer harnesses of tests/fuzz, built with clang in build-fuzz/, each run for
#      FUZZ_SECONDS (default 60) from its seed corpus (scripts/fuzz.sh)
#   4. the end-to-end suite (tests/e2e), two test files at a time (scripts/e2e.sh)
# Every stage runs even if an earlier one failed; the exit status is non-zero if any did.
# Environment: FSCHED_BUILD (default build), JOBS (ninja/ctest parallelism, default nproc),
# E2E_JOBS (end-to-end files run at once, default 2).
set -uo pipefail
cd "$(dirname "$0")/.."
build=${FSCHED_BUILD:-build}
case $build in /*) ;; *) build=$PWD/$build ;; esac
jobs=${JOBS:-$(nproc)}

step() { printf '\n==== %s ====\n' "$*"; }
die() { echo "test.sh: $*" >&2; exit 1; }
# The failing tests and sanitizer reports of a gtest log, on one line: CI keeps only the
# tail of the output, so the final summary must say what failed.
sanitizer_summary() {
  grep -E '^\[  FAILED  \] [A-Za-z]|ERROR: (Address|Leak)Sanitizer|Sanitizer: CHECK failed|runtime error:' "$1" |
    sed -e 's/^\[  FAILED  \] //' -e 's/ ([0-9]* ms)$//' | sort -u | head -8 | paste -sd ';' -
}

step "dependencies"
scripts/install-deps.sh || die "installing dependencies failed"

step "build ($build, RelWithDebInfo)"
cmake -G Ninja -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBUILD_TESTING=ON || die "cmake failed"
ninja -C "$build" -j "$jobs" || die "build failed"

step "munged (the RPC unit tests and the scheduler tests authenticate with MUNGE)"
scripts/start-munge.sh || die "starting munged failed"

failed=()
step "formatting (scripts/check-format.sh: .clang-format over every C/C++ file)"
scripts/check-format.sh || failed+=("formatting: run clang-format -i on the files listed above")

step "unit tests"
ctest --test-dir "$build" --output-on-failure -j "$jobs" ||
  failed+=("unit tests: $(cut -d: -f2 "$build/Testing/Temporary/LastTestsFailed.log" 2>/dev/null | head -8 | paste -sd ';' -)")

step "unit tests with ASan/UBSan (build-asan)"
if cmake -G Ninja -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFSCHED_SANITIZE=ON -DBUILD_TESTING=ON &&
   ninja -C build-asan -j "$jobs" fsched_unit_tests fsched_cmds_tests; then
  for t in unit/fsched_unit_tests cmds/fsched_cmds_tests; do
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 build-asan/tests/$t 2>&1 | tee "build-asan/${t##*/}.log"
    ((PIPESTATUS[0] == 0)) || failed+=("ASan/UBSan ${t##*/}: $(sanitizer_summary "build-asan/${t##*/}.log")")
  done
else
  failed+=("ASan/UBSan build")
fi

step "fuzzing (scripts/fuzz.sh: build-fuzz, ${FUZZ_SECONDS:-60} s per harness)"
JOBS="$jobs" scripts/fuzz.sh || failed+=("fuzzing: $(paste -sd ';' build-fuzz/fuzz/failed 2>/dev/null)")

step "end-to-end tests (scripts/e2e.sh: ${E2E_JOBS:-2} files at a time)"
FSCHED_BUILD="$build" scripts/e2e.sh || failed+=("end-to-end tests: $(grep -hE '^(FAILED|ERROR) ' "$build"/e2e/*.log 2>/dev/null | head -8 | paste -sd ';' -)")

echo
if ((${#failed[@]})); then
  printf 'FAILED: %s\n' "${failed[@]}"
  exit 1
fi
echo "All tests passed."
