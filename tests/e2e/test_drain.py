"""Node drain (issue 15) on a cluster of separate hosts (tests/e2e/netcluster.py): the
real daemons, jobs of the unprivileged test user, the job of tests/e2e/nodefail.py whose
correct output the test computes. The acceptance list of the issue for the drain:

 1. drain a node running three jobs with checkpointing and one without: the three are
    checkpointed ("node drain"), stopped and restored on the other node with output
    byte-identical to an uninterrupted run, the fourth finishes where it was; the node
    is DRAINING, then DRAINED once empty; RESUME brings it back and a new job lands on it
 2. drain when the other node has room for one job only: one moves at once, the others
    wait pending (Resources) and move as room frees; nothing is lost
 5. bad input: draining an unknown node, a drain by a user, a drain without a reason:
    clear errors, nothing changed
and a job the engine cannot checkpoint (unsupported state): the drain says so for that
job and leaves it running where it is.
"""
from __future__ import annotations

import pwd
import re
import time
from pathlib import Path

import pytest

from nodefail import make_workdir, output_problems, steps_done, trace_hosts

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
    c = NetCluster(build_dir, e2e.jobs_dir.parent / f"drain-{request.node.name[:40]}", nodes=2, cpus=4,
                   **CONF)
    c.start()
    yield c
    c.stop()


def workdir(e2e, name: str, user: str) -> Path:
    return make_workdir(e2e.jobs_dir.parent / "drain", name, user)


def node(c, name: str) -> dict:
    return next(n for n in c.node_list() if n["name"] == name)


def update(c, *words, user=None, check=True):
    return c.cmd("scontrol", "update", *words, user=user, check=check)


def wait_node_state(c, name: str, state: str, timeout=60) -> dict:
    return c.wait_for(lambda: (n := node(c, name))["state"] == state and n, timeout, f"{name} {state}")


def sinfo_state(c, name: str) -> str:
    row = next(ln for ln in c.cmd("sinfo", "-N", "-h").stdout.splitlines() if ln.startswith(name))
    return row.split()[-1]


def submit_on_node1(c, jobs: list[tuple[Path, list[str], int]], user: str) -> list[int]:
    """Submits (dir, sbatch options, steps) each while node2 is drained, so all land on
    node1; node2 is back in service (UNDRAIN) once they run."""
    update(c, "NodeName=node2", "State=DRAIN", "Reason=keep the jobs on node1")
    ids = [c.sbatch(*opts, "job.sh", steps, DELAY, user=user, cwd=d) for d, opts, steps in jobs]
    for jid in ids:
        assert c.wait_state(jid, "RUNNING", timeout=60)["nodes"] == "node1"
    update(c, "NodeName=node2", "State=UNDRAIN")
    wait_node_state(c, "node2", "IDLE")
    return ids


def test_drain_moves_checkpointable_jobs_and_leaves_the_others(e2e, cluster, test_user):
    c = cluster
    moving = [workdir(e2e, f"move{i}", test_user) for i in range(3)]
    plain = workdir(e2e, "plain", test_user)
    # The job without checkpointing ends well before the moved ones: node1 is then
    # empty while node2 still runs them, so the job after RESUME can only go to node1.
    jobs = [(d, ["--checkpoint=10:00"], 120) for d in moving] + [(plain, [], 50)]
    ids = submit_on_node1(c, jobs, test_user)
    moved_ids, plain_id = ids[:3], ids[3]
    c.wait_for(lambda: all(steps_done(d) >= 8 for d in moving + [plain]), 60, "progress on node1")

    update(c, "NodeName=node1", "State=DRAIN", "Reason=kernel update")
    n1 = node(c, "node1")
    assert n1["state"] == "DRAINING", n1
    assert sinfo_state(c, "node1") == "drng"
    show = c.cmd("scontrol", "show", "node", "node1").stdout
    assert re.search(r"Reason=kernel update \[root@\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\]", show), show

    for jid in moved_ids:
        j = c.wait_for(lambda: (x := c.job(jid))["state"] == "RUNNING" and x["nodes"] == "node2"
                       and x["restore_from"] == 0 and x, 120, f"job {jid} restored on node2")
        assert j["restarts"] == 1, j
        cks = c.checkpoints(jid)
        assert [(x["source"], x["status"]) for x in cks] == [("node drain", "Present")], cks
        history = "\n".join(j["history"])
        assert "vacated from node1 by its drain" in history, history
        assert re.search(r"restored from checkpoint \d+ on node2", history), history
    # Without checkpointing: runs on where it is, and the node stays DRAINING meanwhile.
    p = c.job(plain_id)
    assert p["state"] == "RUNNING" and p["nodes"] == "node1", p
    assert c.checkpoints(plain_id) == []
    assert node(c, "node1")["state"] == "DRAINING"

    c.wait_state(plain_id, "COMPLETED", timeout=120)
    wait_node_state(c, "node1", "DRAINED", timeout=30)
    assert sinfo_state(c, "node1") == "drain"
    assert not output_problems(plain, plain_id, 50), output_problems(plain, plain_id, 50)

    update(c, "NodeName=node1", "State=RESUME")
    assert wait_node_state(c, "node1", "IDLE")["reason"] == ""
    extra = workdir(e2e, "after", test_user)
    # node2 has 3 of its 4 CPUs taken by the moved jobs: a 4-CPU job fits node1 only.
    assert all(c.job(j)["state"] == "RUNNING" for j in moved_ids), "the moved jobs ended too soon"
    xid = c.sbatch("-c", "4", "job.sh", 4, DELAY, user=test_user, cwd=extra)
    assert c.wait_state(xid, ("RUNNING", "COMPLETED"), timeout=60)["nodes"] == "node1"

    n1_ns, n2_ns = c.netns_link("node1"), c.netns_link("node2")
    for d, jid in zip(moving, moved_ids):
        c.wait_state(jid, "COMPLETED", timeout=180)
        problems = output_problems(d, jid, 120)
        assert not problems, f"job {jid}: {problems}"
        hosts = list(dict.fromkeys(trace_hosts(d)))
        assert hosts == [n1_ns, n2_ns], f"job {jid} ran on {hosts}, expected node1 then node2"


def test_drain_without_room_waits_then_moves(e2e, cluster, test_user):
    c = cluster
    moving = [workdir(e2e, f"wait{i}", test_user) for i in range(3)]
    ids = submit_on_node1(c, [(d, ["--checkpoint=10:00"], 100) for d in moving], test_user)
    # node2: 3 of its 4 CPUs taken by a job that ends in about 15 s: room for one job.
    blocker = workdir(e2e, "blocker", test_user)
    bid = c.sbatch("-c", "3", "job.sh", 50, 0.2, user=test_user, cwd=blocker)
    assert c.wait_state(bid, "RUNNING", timeout=60)["nodes"] == "node2"
    c.wait_for(lambda: all(steps_done(d) >= 5 for d in moving), 60, "progress on node1")

    update(c, "NodeName=node1", "State=DRAIN", "Reason=memory errors")

    def where():
        return {jid: (j := c.job(jid))["state"] + ("@" + j["nodes"] if j["state"] == "RUNNING" else "")
                for jid in ids}
    c.wait_for(lambda: sorted(where().values()) == ["PENDING"] * 2 + ["RUNNING@node2"], 120,
               "one job moved to node2 and two pending")
    waiting = [jid for jid in ids if c.job(jid)["state"] == "PENDING"]
    c.wait_for(lambda: all(c.job(j)["reason"] == "Resources" for j in waiting), 10, "reason Resources")
    assert node(c, "node1")["state"] == "DRAINED"
    assert c.job(bid)["state"] == "RUNNING", "the blocker ended before the check"

    c.wait_state(bid, "COMPLETED", timeout=120)
    for jid in waiting:
        j = c.wait_for(lambda: (x := c.job(jid))["state"] == "RUNNING" and x["restore_from"] == 0 and x,
                       120, f"job {jid} restored once room freed")
        assert j["nodes"] == "node2" and j["restarts"] == 1, j
    for d, jid in zip(moving, ids):
        c.wait_state(jid, "COMPLETED", timeout=180)
        problems = output_problems(d, jid, 100)
        assert not problems, f"job {jid}: {problems}"
        assert [x["source"] for x in c.checkpoints(jid)] == ["node drain"]


def test_drain_bad_input_changes_nothing(e2e, cluster, test_user):
    c = cluster
    r = update(c, "NodeName=node9", "State=DRAIN", "Reason=x", check=False)
    assert r.returncode != 0 and "Invalid node name specified: node9" in r.stderr, r.stderr
    r = update(c, "NodeName=node1", "State=DRAIN", "Reason=mine", user=test_user, check=False)
    assert r.returncode != 0 and "only root may update a node" in r.stderr, r.stderr
    r = update(c, "NodeName=node1", "State=DRAIN", check=False)
    assert r.returncode != 0 and "must specify a reason" in r.stderr, r.stderr
    r = update(c, "NodeName=node1", "State=UNDRAIN", check=False)
    assert r.returncode != 0 and "is not DRAIN" in r.stderr, r.stderr
    for n in ("node1", "node2"):
        info = node(c, n)
        assert info["state"] == "IDLE" and not info["drain"] and info["reason"] == "", info
    # Nothing was written that a restart would bring back.
    c.kill_ctld()
    c.start_ctld()
    c.wait_for(lambda: len(c.node_list()) == 2 and all(n["state"] == "IDLE" for n in c.node_list()),
               60, "both nodes IDLE after a controller restart")


# A job holding state the engine refuses to checkpoint (docs/state-kinds.md: a Unix
# datagram socket whose connected peer is gone), printing a line every 0.25 s.
UNSUPPORTED_SH = """#!/bin/bash
exec python3 -c '
import socket, sys, time
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
b.close()
for i in range(int(sys.argv[1])):
    print("line", i, flush=True)
    time.sleep(0.25)
print("done", flush=True)' "$@"
"""


def test_drain_leaves_a_job_it_cannot_checkpoint_running_and_says_why(e2e, cluster, test_user):
    c = cluster
    stuck, mover = workdir(e2e, "stuck", test_user), workdir(e2e, "mover", test_user)
    (stuck / "job.sh").write_text(UNSUPPORTED_SH)
    update(c, "NodeName=node2", "State=DRAIN", "Reason=keep the jobs on node1")
    sid = c.sbatch("--checkpoint=10:00", "job.sh", 120, user=test_user, cwd=stuck)
    mid = c.sbatch("--checkpoint=10:00", "job.sh", 60, DELAY, user=test_user, cwd=mover)
    for jid in (sid, mid):
        assert c.wait_state(jid, "RUNNING", timeout=60)["nodes"] == "node1"
    update(c, "NodeName=node2", "State=UNDRAIN")
    wait_node_state(c, "node2", "IDLE")
    c.wait_for(lambda: steps_done(mover) >= 5, 60, "progress of the movable job")

    update(c, "NodeName=node1", "State=DRAIN", "Reason=maintenance")
    blocked = c.wait_for(lambda: node(c, "node1")["drain_blocked"], 60, "the drain to give up on a job")
    assert [b["job_id"] for b in blocked] == [sid], blocked
    assert "unsupported" in blocked[0]["why"] and "peer" in blocked[0]["why"], blocked
    show = c.cmd("scontrol", "show", "node", "node1").stdout
    assert f"DrainBlocked=JobId={sid} (" in show, show
    j = c.job(sid)
    assert j["state"] == "RUNNING" and j["nodes"] == "node1", j
    assert "drain of node1:" in "\n".join(j["history"]), j["history"]
    assert [x["status"] for x in c.checkpoints(sid)] == ["Failed"], c.checkpoints(sid)
    # The other job moved; the stuck one finishes where it was, its output whole.
    m = c.wait_for(lambda: (x := c.job(mid))["state"] == "RUNNING" and x["nodes"] == "node2" and x, 120,
                   "the movable job on node2")
    assert m["restarts"] == 1
    assert node(c, "node1")["state"] == "DRAINING"
    c.wait_state(sid, "COMPLETED", timeout=120)
    out = (stuck / f"slurm-{sid}.out").read_text()
    assert out == "".join(f"line {i}\n" for i in range(120)) + "done\n", out[-200:]
    wait_node_state(c, "node1", "DRAINED", timeout=30)
    c.wait_state(mid, "COMPLETED", timeout=120)
    assert not output_problems(mover, mid, 60), output_problems(mover, mid, 60)
