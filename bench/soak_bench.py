#!/usr/bin/python3
"""Real-program soak, long (issue 13): the programs of tests/e2e/soak.py (java, node,
python3 threads, OpenMP, sqlite3, git, gcc via make, perl, sort | xz) are run one after
another, again and again, each dumped and restored at random moments until it ends and
its output compared byte for byte with an uninterrupted run; until --cycles dump/restore
cycles are done or --minutes have passed. Every pass draws new dump points from --seed.

Prints one line per program run and a summary: cycles and failures per program, median
freeze and restore times. Exit status 1 if any run failed; each failure names the seed
and cycle. The CI's short version is tests/e2e/test_soak.py.

Usage (as root): /usr/bin/python3 bench/soak_bench.py [--cycles 1000] [--minutes 60]
                 [--seed N] [--per-run 30] [--only NAME[,NAME]] [--build build] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests/e2e"))

import soak  # noqa: E402
from ckpt_e2e import E2E  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=1000, help="stop after this many dump/restore cycles")
    ap.add_argument("--minutes", type=float, default=60.0, help="or after this long")
    ap.add_argument("--seed", type=int, default=int(time.time()) % 1_000_000)
    ap.add_argument("--per-run", type=int, default=30, help="cycles aimed at per program run")
    ap.add_argument("--only", default="", help="comma-separated program names (soak_java, ...)")
    ap.add_argument("--build", default=str(REPO / "build"))
    ap.add_argument("--out", help="write the results as JSON here")
    a = ap.parse_args()

    base = Path("/var/tmp/fsched-soak-bench")
    e2e = E2E(Path(a.build).resolve(), base, base / "run")
    specs = soak.workloads(e2e)
    if a.only:
        names = set(a.only.split(","))
        specs = [s for s in specs if s.name in names]
        if not specs:
            sys.exit(f"--only {a.only}: no such program (have: {', '.join(s.name for s in soak.workloads(e2e))})")
    print(f"soak_bench: seed {a.seed}, up to {a.cycles} cycles or {a.minutes} minutes", flush=True)
    rng = random.Random(a.seed)
    end = time.monotonic() + a.minutes * 60
    results: list[soak.ProgramResult] = []
    while sum(r.cycles for r in results) < a.cycles and time.monotonic() < end:
        for spec in specs:
            ref = e2e.reference(spec)
            mean = ref.seconds / (a.per_run + 5)
            results.append(soak.soak_program(e2e, spec, rng, a.seed, gap=(0.3 * mean, 1.7 * mean)))
            if sum(r.cycles for r in results) >= a.cycles or time.monotonic() >= end:
                break

    merged: dict[str, soak.ProgramResult] = {}
    for r in results:
        m = merged.setdefault(r.name, soak.ProgramResult(r.name))
        m.cycles += r.cycles
        m.freeze_ms += r.freeze_ms
        m.restore_s += r.restore_s
        m.seconds += r.seconds
        if r.failure and not m.failure:
            m.failure = r.failure
    print(soak.summary(list(merged.values())))
    failures = [r.failure for r in results if r.failure]
    print(f"program runs: {len(results)}, failed runs: {len(failures)}")
    for f in failures:
        print("FAILED:", f)
    if a.out:
        Path(a.out).write_text(json.dumps({
            "seed": a.seed, "runs": len(results), "failed_runs": len(failures),
            "cycles": sum(r.cycles for r in results), "failures": failures,
            "programs": {k: {"cycles": v.cycles, "freeze_ms": v.freeze_ms, "restore_s": v.restore_s}
                         for k, v in merged.items()}}, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
