"""Preemption by checkpoint (issue 15, acceptance 4) on a cluster of separate hosts
(tests/e2e/netcluster.py): PreemptType = preempt/partition_prio, PreemptMode =
CHECKPOINT, partitions low (PriorityTier 1) and high (PriorityTier 10) on one node of 2
CPUs. A low-tier job fills the cluster; a high-tier job arrives: the low-tier job is
checkpointed ("preemption") and back to pending within seconds, the high-tier job runs,
and the low-tier job is restored afterwards with output byte-identical to an
uninterrupted run and no step done twice (no lost work). Jobs are tests/e2e/nodefail.py's
PROG_PY, run by the unprivileged test user.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from nodefail import is_frozen, make_workdir, output_problems, steps_done, trace_hosts, user_pids

try:
    from netcluster import NetCluster
except ImportError as e:  # the harness is required, not optional: fail, do not skip
    NetCluster = None
    _import_error = e

CONF = dict(HeartbeatInterval=1, SlurmdTimeout=30, PreemptType="preempt/partition_prio",
            PreemptMode="CHECKPOINT")
PARTITIONS = ["PartitionName=low Default=YES PriorityTier=1", "PartitionName=high PriorityTier=10"]
DELAY = 0.25


@pytest.fixture
def cluster_factory(e2e, build_dir, request):
    if NetCluster is None:
        pytest.fail(f"tests/e2e/netcluster.py is missing: {_import_error}", pytrace=False)
    made = []

    def make(**conf):
        c = NetCluster(build_dir, e2e.jobs_dir.parent / f"preempt-{request.node.name[:40]}", nodes=1, cpus=2,
                       partitions=PARTITIONS, **{**CONF, **conf})
        made.append(c)
        return c.start()
    yield make
    for c in made:
        c.stop()


@pytest.fixture
def cluster(cluster_factory):
    return cluster_factory()


def workdir(e2e, name: str, user: str) -> Path:
    return make_workdir(e2e.jobs_dir.parent / "preempt", name, user)


def test_high_tier_job_preempts_by_checkpoint_and_nothing_is_lost(e2e, cluster, test_user):
    c = cluster
    low_dir, high_dir = workdir(e2e, "low", test_user), workdir(e2e, "high", test_user)
    low = c.sbatch("-p", "low", "-c", "2", "job.sh", 120, DELAY, user=test_user, cwd=low_dir)
    c.wait_state(low, "RUNNING", timeout=60)
    c.wait_for(lambda: steps_done(low_dir) >= 12, 60, "progress of the low-tier job")

    high = c.sbatch("-p", "high", "-c", "2", "job.sh", 24, DELAY, user=test_user, cwd=high_dir)
    h = c.wait_state(high, ("RUNNING", "COMPLETED"), timeout=60)
    latency = h["start_time"] - h["submit_time"]
    assert latency < 15, f"the high-tier job started {latency:.1f} s after its submission"
    lj = c.job(low)
    assert lj["state"] == "PENDING", lj
    cks = c.checkpoints(low)
    assert [(x["source"], x["status"]) for x in cks] == [("preemption", "Present")], cks
    assert cks[0]["description"] == f"preempted by job {high}", cks
    assert f"preempted by job {high}" in "\n".join(lj["history"]), lj["history"]
    assert f"preempting job(s) {low}" in "\n".join(c.job(high)["history"])

    c.wait_state(high, "COMPLETED", timeout=120)
    assert not output_problems(high_dir, high, 24), output_problems(high_dir, high, 24)
    lj = c.wait_for(lambda: (x := c.job(low))["state"] == "RUNNING" and x["restore_from"] == 0 and x,
                    60, "the low-tier job restored")
    assert lj["restarts"] == 1, lj
    c.wait_state(low, "COMPLETED", timeout=180)
    problems = output_problems(low_dir, low, 120)
    assert not problems, problems
    # No lost work: every step ran once (the checkpoint froze the job; nothing ran
    # after it that the restore had to do again).
    assert len(trace_hosts(low_dir)) == 120, f"{len(trace_hosts(low_dir)) - 120} steps done twice"


def test_suspend_mode_freezes_the_low_tier_job_and_thaws_it_after(e2e, cluster_factory, test_user):
    """PreemptMode = SUSPEND,GANG: the low-tier job stays in memory, frozen, while the
    high-tier job uses its CPUs; it is thawed (not restored) once they are free."""
    c = cluster_factory(PreemptMode="SUSPEND,GANG")
    low_dir, high_dir = workdir(e2e, "slow", test_user), workdir(e2e, "shigh", test_user)
    low = c.sbatch("-p", "low", "-c", "2", "job.sh", 80, DELAY, user=test_user, cwd=low_dir)
    c.wait_state(low, "RUNNING", timeout=60)
    c.wait_for(lambda: steps_done(low_dir) >= 8, 60, "progress of the low-tier job")
    pids = user_pids(c.node_pids("node1"), test_user)
    high = c.sbatch("-p", "high", "-c", "2", "job.sh", 24, DELAY, user=test_user, cwd=high_dir)
    c.wait_state(high, "RUNNING", timeout=30)
    lj = c.job(low)
    assert lj["state"] == "SUSPENDED" and lj["suspended_by"] == high, lj
    assert all(is_frozen(p) for p in pids if Path(f"/proc/{p}").exists()), "the low-tier job is not frozen"
    before = steps_done(low_dir)
    time.sleep(2)  # the high-tier job runs about 6 s
    assert c.job(high)["state"] == "RUNNING"
    assert steps_done(low_dir) == before, "the low-tier job ran while suspended"
    c.wait_state(high, "COMPLETED", timeout=120)
    lj = c.wait_state(low, "RUNNING", timeout=30)
    assert lj["restarts"] == 0 and c.checkpoints(low) == [], lj
    c.wait_state(low, "COMPLETED", timeout=120)
    for d, jid, steps in ((low_dir, low, 80), (high_dir, high, 24)):
        problems = output_problems(d, jid, steps)
        assert not problems, f"job {jid}: {problems}"
    assert len(trace_hosts(low_dir)) == 80
