"""A dump that fails or is killed must never leave its job frozen (issue 13,
src/ckpt/cgroup_freeze.h). A dump freezes the job's run cgroup while a TCP connection is
in repair mode, and the network lock's guardian thaws it if the dumper is killed then;
should the guardian die too, fschedd thaws the run's cgroup after the failed dump.

Here the run's cgroup is frozen by hand, as such a dump would have left it; a checkpoint
then hangs on the frozen job until CheckpointTimeout kills it; fschedd finds the cgroup
still frozen, thaws it, and the job ends as if uninterrupted."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from ckpt_e2e import E2E
from sched_e2e import Cluster
from test_sched import DELAY, STEPS, assert_same_as_reference, progress, run_reference, workdir


@pytest.fixture(scope="module")
def reference(e2e: E2E, test_user) -> dict[str, bytes]:
    return run_reference(e2e, test_user, "reference-frozen")


def job_cgroup(d: Path) -> Path:
    """The cgroup v2 directory of the job's python3 process, found by its working
    directory."""
    mount = next(ln.split()[1] for ln in open("/proc/self/mounts") if ln.split()[2] == "cgroup2")
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if (p / "cwd").resolve() == d.resolve() and b"compute.py" in (p / "cmdline").read_bytes():
                rel = next(ln[3:].strip() for ln in (p / "cgroup").read_text().splitlines() if ln.startswith("0::"))
                return Path(mount + rel)
        except (OSError, StopIteration):
            continue
    raise AssertionError(f"no process of the job runs in {d}")


def test_failed_dump_never_leaves_the_job_frozen(e2e: E2E, build_dir: Path, test_user, reference):
    c = Cluster(build_dir, e2e.jobs_dir.parent / "cluster-frozen", CheckpointTimeout=5).start()
    try:
        d = workdir(e2e, "frozen", test_user)
        jid = c.sbatch("job.sh", STEPS, DELAY, user=test_user, cwd=d)
        c.wait_state(jid, "RUNNING")
        c.wait_for(lambda: progress(d, jid) >= 3, 60, "progress")
        cg = job_cgroup(d)
        assert re.fullmatch(rf"job{jid}\.g\d+", cg.name), f"not the run's cgroup: {cg}"
        (cg / "cgroup.freeze").write_text("1")
        time.sleep(0.5)
        n = progress(d, jid)
        time.sleep(1)
        assert progress(d, jid) == n, "the job ran while its cgroup was frozen"
        r = c.cmd("scontrol", "checkpoint", "create", jid, user=test_user, check=False)
        assert r.returncode != 0 and "timed out" in r.stderr, r.stderr
        assert c.checkpoints(jid)[-1]["status"] == "Timeout", c.checkpoints(jid)
        c.wait_for(lambda: (cg / "cgroup.freeze").read_text().strip() == "0", 10,
                   "fschedd to thaw the job's cgroup")
        assert "left its cgroup frozen" in c.log("fschedd-node1.log")
        c.wait_state(jid, "COMPLETED", timeout=240)
        assert_same_as_reference(d, jid, reference, test_user)
    finally:
        c.stop()
