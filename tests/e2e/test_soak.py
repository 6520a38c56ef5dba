"""The soak of tests/e2e/soak.py, short: every program of the mix is dumped and restored
about 30 times at random moments of one run (at least 23 each, in more runs of the
program if one ends too soon, so at least 207 cycles in all), and must end with exactly
the uninterrupted run's output. Longer runs: bench/soak_bench.py. FSCHED_SOAK_SEED=N
repeats the dump points of a failed run."""
from __future__ import annotations

import os
import random
import time

import pytest

import soak
from ckpt_e2e import E2E

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("FSCHED_SOAK_SEED", time.time_ns() % 1_000_000))
CYCLES = 30       # aimed at per program
MIN_CYCLES = 23   # asserted per program: 9 programs, at least 207 cycles


def _names():
    return [s.name for s in soak.workloads(None)]  # names only: no set-up runs here


@pytest.mark.parametrize("name", _names())
def test_soak(e2e: E2E, name: str):
    spec = next(s for s in soak.workloads(e2e) if s.name == name)
    ref = e2e.reference(spec)
    assert ref.status == 0, f"{name}: the uninterrupted run failed ({ref.status})"
    # Dump after a random running time averaging the reference's duration over
    # CYCLES + 10 (the reference's time includes the start of the job, which a run
    # between dumps does not have), so the run gets about CYCLES dumps before it ends. A
    # program that ends sooner is run again (each run's output checked) until it has
    # had MIN_CYCLES in all.
    mean = ref.seconds / (CYCLES + 10)
    rng = random.Random(f"{SEED}/{name}")
    print(f"soak seed {SEED}: FSCHED_SOAK_SEED={SEED} repeats these dump points")
    cycles, runs = 0, 0
    while cycles < MIN_CYCLES and runs < 4:
        res = soak.soak_program(e2e, spec, rng, SEED, gap=(0.3 * mean, 1.7 * mean))
        print(soak.summary([res]))
        assert res.failure is None, res.failure
        cycles, runs = cycles + res.cycles, runs + 1
    assert cycles >= MIN_CYCLES, (
        f"{name}: only {cycles} dump/restore cycles in {runs} runs (reference run {ref.seconds:.1f} s)")
