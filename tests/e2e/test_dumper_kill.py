"""A dumper killed at any instant never harms the job (issue 10, item 7): 40 dumps of
a multi-threaded job (ckpt_threads: threads on a mutex and condition variable, one
blocked in read(), nanosleep, AVX state, SIGUSR1) are each SIGKILLed at a random instant
-- while it seizes, injects syscalls, reads memory or writes the image -- and the job must
go on: never traced afterwards, never killed, and in the end its output byte-identical to
an uninterrupted run's. Killing the dumper is what fschedd does when CheckpointTimeout
expires."""
from __future__ import annotations

import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import specs
from ckpt_e2e import E2E, alive, assert_running_free, wait_gone

pytestmark = pytest.mark.slow

TRIALS = 40


def test_dumper_sigkill_at_random_instants(e2e: E2E):
    spec = specs.threads_job(e2e, "threads_dumper_kill", rounds=700, exit_code=3)
    ref = e2e.reference(spec)
    job = e2e.job(spec)
    job.start_detached()
    rng = random.Random(20261129)
    # How long a whole dump takes, run as the trials run it (a fresh process), so that
    # kill instants cover all of it: the shortest of three, since later dumps of a warm
    # job are faster than the first.
    whole = float("inf")
    for n in range(3):
        probe = e2e.image(f"dumper_kill/probe{n}")
        t0 = time.monotonic()
        r, _ = e2e.engine.dump(job.init_pid, probe, leave_running=True)
        whole = min(whole, time.monotonic() - t0)
        assert r.rc == 0, r.stderr
        shutil.rmtree(probe)
    killed_mid_dump = restored = 0
    for trial in range(TRIALS):
        image = e2e.image(f"dumper_kill/{trial}")
        # Half the trials dump without --leave-running: killed before its end, the dumper
        # must not have killed the job either.
        args = [str(e2e.engine.bin), "dump", "--pid", str(job.init_pid), "--dir", str(image)]
        if trial % 2 == 0:
            args.append("--leave-running")
        dumper = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started = time.monotonic()
        time.sleep(rng.uniform(0.0, whole * 0.9))
        dumper.kill()
        _, err = dumper.communicate()
        if dumper.returncode == -9:
            killed_mid_dump += 1
        else:
            # It finished before the kill: the dumps got faster, so aim earlier.
            whole = min(whole, time.monotonic() - started)
            assert dumper.returncode == 0, f"trial {trial}: dump failed: {err.decode()}"
        if trial % 2 == 1 and (image / "manifest.json").is_file() and wait_gone(job.init_pid, 3):
            # The dump committed its image and killed the job before the kill landed (if
            # the kill landed between the two, the job runs on: checked below). Go on
            # from that image.
            job.paused()
            e2e.restore_detached_ok(job, image)
            restored += 1
        time.sleep(0.05)
        assert alive(job.init_pid), f"trial {trial}: the job is gone"
        assert_running_free([job.init_pid, *job.job_pids()])
        shutil.rmtree(image, ignore_errors=True)
        shutil.rmtree(Path(str(image) + ".tmp"), ignore_errors=True)
    print(f"{TRIALS} trials, {killed_mid_dump} dumpers killed before they finished, "
          f"{restored} jobs stopped by a completed dump and restored "
          f"(whole dump {whole * 1000:.0f} ms)")
    assert killed_mid_dump >= TRIALS // 2, f"only {killed_mid_dump} dumps were killed midway"
    assert job.progress(ref) < 1.0, "the job ended before the trials did: make it longer"
    # The job ran on unharmed: its output is the uninterrupted run's, byte for byte.
    assert job.wait_end(120) == ref.status
    job.assert_matches(ref, " after its dumpers were killed")
