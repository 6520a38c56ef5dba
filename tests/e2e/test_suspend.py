"""scontrol suspend / resume (issue 15) on a cluster of separate hosts
(tests/e2e/netcluster.py): a "suspend" checkpoint stops the job and releases its node,
resume restores it, on another node when its own is taken. The job is
tests/e2e/nodefail.py's PROG_PY run by the unprivileged test user; its output must be
byte-identical to an uninterrupted run. The issue's acceptance 3, and its bad input
(suspending someone else's job).
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from nodefail import host_runs, is_frozen, make_workdir, output_problems, steps_done, trace_hosts, user_pids

try:
    from netcluster import NetCluster
except ImportError as e:  # the harness is required, not optional: fail, do not skip
    NetCluster = None
    _import_error = e

CONF = dict(HeartbeatInterval=1, SlurmdTimeout=30)
DELAY = 0.25


@pytest.fixture
def cluster(e2e, build_dir, request):
    if NetCluster is None:
        pytest.fail(f"tests/e2e/netcluster.py is missing: {_import_error}", pytrace=False)
    c = NetCluster(build_dir, e2e.jobs_dir.parent / f"susp-{request.node.name[:40]}", nodes=2, cpus=2,
                   **CONF)
    c.start()
    yield c
    c.stop()


def workdir(e2e, name: str, user: str) -> Path:
    return make_workdir(e2e.jobs_dir.parent / "suspend", name, user)


def suspended(c, jid: int, node: str, d: Path, user: str):
    """Checks that job jid is SUSPENDED, nothing of it runs on `node`, its CPUs are free
    and it makes no progress."""
    j = c.job(jid)
    assert j["state"] == "SUSPENDED", j
    row = c.cmd("squeue", "-h", "-j", jid, "-o", "%t").stdout.strip()
    assert row == "S", row
    assert not user_pids(c.node_pids(node), user), "the job's processes are still there"
    n = next(x for x in c.node_list() if x["name"] == node)
    assert n["alloc_cpus"] == 0, n
    before = steps_done(d)
    time.sleep(1.5)
    assert steps_done(d) == before, "a suspended job made progress"


def test_suspend_then_resume_on_another_node_twice(e2e, cluster, test_user):
    c = cluster
    d = workdir(e2e, "twice", test_user)
    jid = c.sbatch("job.sh", 140, DELAY, user=test_user, cwd=d)
    assert c.wait_state(jid, "RUNNING", timeout=60)["nodes"] == "node1"
    c.wait_for(lambda: steps_done(d) >= 10, 60, "progress on node1")

    assert c.cmd("scontrol", "suspend", jid, user=test_user).stdout == ""
    suspended(c, jid, "node1", d, test_user)
    cks = c.checkpoints(jid)
    assert [(x["source"], x["status"]) for x in cks] == [("suspend", "Present")], cks

    # node1 is taken meanwhile (by its drain): the resume goes to node2.
    c.cmd("scontrol", "update", "NodeName=node1", "State=DRAIN", "Reason=taken")
    c.cmd("scontrol", "resume", jid, user=test_user)
    j = c.wait_for(lambda: (x := c.job(jid))["state"] == "RUNNING" and x["restore_from"] == 0 and x,
                   60, "the job restored")
    assert j["nodes"] == "node2" and j["restarts"] == 1, j
    c.cmd("scontrol", "update", "NodeName=node1", "State=RESUME")
    progress = steps_done(d)
    c.wait_for(lambda: steps_done(d) >= progress + 8, 60, "progress on node2")

    # Again, right away: suspended on node2, resumed wherever there is room.
    c.cmd("scontrol", "suspend", jid, user=test_user)
    suspended(c, jid, "node2", d, test_user)
    c.cmd("scontrol", "resume", jid, user=test_user)
    j = c.wait_for(lambda: (x := c.job(jid))["state"] == "RUNNING" and x["restarts"] == 2 and x,
                   60, "the job restored again")
    c.wait_state(jid, "COMPLETED", timeout=180)
    problems = output_problems(d, jid, 140, check_hosts=False)
    assert not problems, problems
    runs = host_runs(trace_hosts(d))
    assert runs[:2] == [c.netns_link("node1"), c.netns_link("node2")], runs
    j = c.job(jid)
    assert j["restarts"] == 2, j
    history = "\n".join(j["history"])
    assert "suspended on node1" in history and "suspended on node2" in history, history
    assert [x["source"] for x in c.checkpoints(jid)] == ["suspend", "suspend"]


def test_resume_of_a_corrupt_image_falls_back_as_restart_does(e2e, cluster, test_user):
    c = cluster
    d = workdir(e2e, "corrupt", test_user)
    jid = c.sbatch("job.sh", 100, DELAY, user=test_user, cwd=d)
    c.wait_state(jid, "RUNNING", timeout=60)
    c.wait_for(lambda: steps_done(d) >= 8, 60, "progress")
    c.cmd("scontrol", "checkpoint", "create", jid, user=test_user)
    c.wait_for(lambda: steps_done(d) >= 20, 60, "progress after the checkpoint")
    c.cmd("scontrol", "suspend", jid, user=test_user)
    good, newest = c.checkpoints(jid)
    assert newest["source"] == "suspend", newest
    pages = Path(newest["location"]) / "pages.img"
    with open(pages, "r+b") as f:  # one flipped bit in the page data
        f.seek(pages.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x10]))
    c.cmd("scontrol", "resume", jid, user=test_user)
    c.wait_state(jid, "COMPLETED", timeout=240)
    problems = output_problems(d, jid, 100, check_hosts=False)
    assert not problems, problems
    cks = {x["checkpoint_id"]: x for x in c.checkpoints(jid)}
    assert cks[newest["checkpoint_id"]]["status"] == "Failed", cks
    assert "image failure" in cks[newest["checkpoint_id"]]["reason"], cks
    history = "\n".join(c.job(jid)["history"])
    assert f"falling back to checkpoint {good['checkpoint_id']}" in history, history


def test_suspend_refused_for_another_user_and_when_not_running(e2e, cluster, test_user):
    c = cluster
    d = workdir(e2e, "refused", test_user)
    jid = c.sbatch("job.sh", 60, DELAY, user=test_user, cwd=d)
    c.wait_state(jid, "RUNNING", timeout=60)
    # Another unprivileged user: nobody.
    r = c.cmd("scontrol", "suspend", jid, user="nobody", check=False)
    assert r.returncode != 0 and "Access/permission denied" in r.stderr, r.stderr
    r = c.cmd("scontrol", "resume", jid, user=test_user, check=False)
    assert r.returncode != 0 and f"Job {jid} is not suspended (state RUNNING)" in r.stderr, r.stderr
    r = c.cmd("scontrol", "suspend", "99999", check=False)
    assert r.returncode != 0 and "Invalid job id" in r.stderr, r.stderr
    assert c.job(jid)["state"] == "RUNNING" and c.checkpoints(jid) == []
    c.cmd("scancel", jid)
    c.wait_state(jid, "CANCELLED", timeout=60)


def test_suspend_in_place_freezes_the_job_where_it_is(e2e, cluster, test_user):
    """Slurm's behaviour, asked for with --in-place: the job's processes stay on the node,
    frozen, holding its CPUs; resume thaws them there; the output is byte-identical."""
    c = cluster
    d = workdir(e2e, "inplace", test_user)
    jid = c.sbatch("job.sh", 60, DELAY, user=test_user, cwd=d)
    node = c.wait_state(jid, "RUNNING", timeout=60)["nodes"]
    c.wait_for(lambda: steps_done(d) >= 8, 60, "progress")
    pids = user_pids(c.node_pids(node), test_user)
    assert pids
    assert c.cmd("scontrol", "suspend", "--in-place", jid, user=test_user).stdout == ""
    j = c.job(jid)
    assert j["state"] == "SUSPENDED" and j["suspended_in_place"], j
    assert c.cmd("squeue", "-h", "-j", jid, "-o", "%t").stdout.strip() == "S"
    assert all(is_frozen(p) for p in pids if Path(f"/proc/{p}").exists()), "not frozen"
    assert next(n for n in c.node_list() if n["name"] == node)["alloc_cpus"] == 1
    before = steps_done(d)
    time.sleep(3)  # longer than a heartbeat or two: the node keeps the frozen run
    assert steps_done(d) == before, "a suspended job made progress"
    assert set(user_pids(c.node_pids(node), test_user)) >= {p for p in pids if Path(f"/proc/{p}").exists()}
    c.cmd("scontrol", "resume", jid, user=test_user)
    j = c.job(jid)
    assert j["state"] == "RUNNING" and j["nodes"] == node and j["restarts"] == 0, j
    c.wait_for(lambda: steps_done(d) > before, 30, "progress after the resume")
    c.wait_state(jid, "COMPLETED", timeout=120)
    problems = output_problems(d, jid, 60)
    assert not problems, problems
    assert c.checkpoints(jid) == [], "an in-place suspend takes no checkpoint"
