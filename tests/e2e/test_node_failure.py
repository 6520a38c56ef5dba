"""Node failure (issue 12), on a cluster of separate hosts (tests/e2e/netcluster.py:
the controller and every node in a network namespace and a cgroup of their own): a
node that dies, is cut off or is merely slow, and what becomes of its jobs. The
acceptance list of the issue, one test each:

 1. node crash, checkpointed job: running again on the other node within SlurmdTimeout
    + requeue_timeout + the restore time (and not before SlurmdTimeout +
    requeue_timeout), at the seed's aggressive settings; output byte-identical
 2. node crash, no checkpoint: --requeue starts over elsewhere, --no-requeue stays
    NODE_FAIL
 3. partition longer than the timeouts, then heal: restored elsewhere, the old copy
    frozen and never writing after the new one started, rejoin with no stray process
 4. SIGSTOP of fschedd for half of SlurmdTimeout, then CPU + disk saturation, at the
    default timeouts: no job moves, no node goes NOT_RESPONDING or DOWN
 5. controller killed while a node is failing: the recovery completes after its
    restart, nothing lost or duplicated
 6. newest image corrupt: recovery falls back to the previous one, output identical
 7. bad AuthInfo / timeouts: FILE:LINE error from fschedctld at start

Jobs run as the unprivileged test user; the job is tests/e2e/nodefail.py's PROG_PY,
whose correct output is computed by the test. Short timeouts (FAST) keep the file fast,
except test 1 (the seed's settings) and test 4 (the defaults).
"""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from nodefail import (Watch, host_runs, is_frozen, make_workdir, output_problems, running_on,
                      starts, steps_done, trace_hosts, user_pids)
from sched_e2e import free_port, start_munge

try:
    from netcluster import NetCluster
except ImportError as e:  # the harness is required, not optional: fail, do not skip
    NetCluster = None
    _import_error = e

# Detection in 6 s, recovery at 10 s: the design's timeline, scaled down.
HB, ST, RT = 1, 6, 4
FAST = dict(HeartbeatInterval=HB, SlurmdTimeout=ST, AuthInfo=f"requeue_timeout={RT}")
# The seed's block, as written there; HeartbeatInterval is what fsched derives from it
# (SlurmdTimeout / 3) when the key is not set.
AGGRESSIVE = dict(BatchStartTimeout=10, SlurmdTimeout=15, HeartbeatInterval=5,
                  AuthInfo="cred_expire=180,ttl=180,requeue_timeout=30")
# A restore of these small jobs, the controller's check period and the sampling: time
# allowed on top of SlurmdTimeout + requeue_timeout before the job must run again.
RESTORE_SLACK = 10.0
STEPS, DELAY = 60, 0.25  # about 20 s of work
GOOD_STATES = ("IDLE", "MIXED", "ALLOCATED")


@pytest.fixture
def cluster_factory(e2e, build_dir, request):
    """cluster_factory(nodes=2, cpus=2, **conf) -> a started NetCluster, stopped at the
    end of the test."""
    if NetCluster is None:
        pytest.fail(f"tests/e2e/netcluster.py is missing: {_import_error}", pytrace=False)
    made = []

    def make(nodes=2, cpus=2, **conf):
        c = NetCluster(build_dir, e2e.jobs_dir.parent / f"nf-{request.node.name[:40]}-{len(made)}",
                       nodes=nodes, cpus=cpus, **conf)
        made.append(c)
        return c.start()
    yield make
    for c in made:
        c.stop()


def workdir(e2e, name: str, user: str) -> Path:
    return make_workdir(e2e.jobs_dir.parent / "nodefail", name, user)


def submit(c, d: Path, user: str, *opts, steps=STEPS, delay=DELAY) -> int:
    return c.sbatch(*opts, "job.sh", steps, delay, user=user, cwd=d)


def assert_output(d: Path, jid: int, steps=STEPS, from_scratch_ok=False):
    problems = output_problems(d, jid, steps, from_scratch_ok)
    assert not problems, f"job {jid} in {d}: {problems}"


def last_heartbeat(c, node: str) -> float:
    return next(n for n in c.node_list() if n["name"] == node)["last_heartbeat"]


def no_job_processes_left(c, node: str, user: str) -> bool:
    return not user_pids(c.node_pids(node), user)


# ---------------------------------------------------------------- 1
def test_crash_restores_on_the_other_node_within_the_bound(e2e, cluster_factory, test_user):
    """Acceptance 1, at the seed's aggressive settings."""
    st, rt = AGGRESSIVE["SlurmdTimeout"], 30
    c = cluster_factory(**AGGRESSIVE)
    d = workdir(e2e, "crash", test_user)
    jid = submit(c, d, test_user, "--checkpoint=0:03", steps=120)
    with Watch(c) as w:
        victim = c.wait_state(jid, "RUNNING", timeout=60)["nodes"]
        c.wait_checkpoints(jid, 1, timeout=60)
        c.wait_for(lambda: steps_done(d) >= 15, 60, "progress after the checkpoint")
        c.crash_node(victim)
        crashed = time.time()
        assert no_job_processes_left(c, victim, test_user)
        hb = last_heartbeat(c, victim)  # T: the last heartbeat the controller received
        assert hb <= crashed + 0.5

        # T + SlurmdTimeout: NOT_RESPONDING, shown with Slurm's '*'; nothing moves yet.
        w.wait(lambda jobs, nodes: nodes[victim].get("not_responding"), st + 10, f"{victim} NOT_RESPONDING")
        row = next(ln for ln in c.cmd("sinfo", "-N", "-h").stdout.splitlines() if ln.startswith(victim))
        assert row.split()[-1].endswith("*"), row
        assert c.job(jid)["nodes"] == victim and c.job(jid)["state"] == "RUNNING"

        # T + SlurmdTimeout + requeue_timeout: restored on the other node, no command typed.
        moved = w.wait(lambda jobs, nodes: jobs[jid]["nodes"] != victim or jobs[jid]["state"] != "RUNNING",
                       st + rt + 30, f"job {jid} to leave {victim}")
        other = w.wait(running_on(jid, not_on=victim), 60, f"job {jid} running on another node")
        new_node = c.job(jid)["nodes"]
        c.wait_for(lambda: len(host_runs(trace_hosts(d))) >= 2, 60, "the restored job to write")
        running_again = time.time()
        # Not before SlurmdTimeout + requeue_timeout: the old copy had been frozen by then.
        # (moved is when a sample showed it: the move happened at the latest then, and at
        # most one sample earlier.)
        assert moved - hb >= st + rt - 0.5, (moved - hb, st + rt)
        assert running_again - hb <= st + rt + RESTORE_SLACK, (
            f"running again {running_again - hb:.1f} s after the last heartbeat, bound {st + rt} + "
            f"{RESTORE_SLACK} s (moved at {moved - hb:.1f} s, RUNNING on {new_node} at {other - hb:.1f} s)")
        print(f"job {jid}: left {victim} {moved - hb:.1f} s after its last heartbeat, running on "
              f"{new_node} at {other - hb:.1f} s, writing at {running_again - hb:.1f} s")

        node = next(n for n in c.node_list() if n["name"] == victim)
        assert node["state"] == "DOWN" and node["reason"] == "Not responding", node
        show = c.cmd("scontrol", "show", "node", victim).stdout
        assert "Reason=Not responding" in show and "State=DOWN" in show, show
        reasons = c.cmd("sinfo", "-R").stdout
        assert any(ln.startswith("Not responding") and ln.endswith(victim) for ln in reasons.splitlines()), reasons
        job = c.wait_state(jid, "COMPLETED", timeout=180)
    assert new_node != victim
    assert job["restarts"] == 1, job
    assert starts(d) == 1, "restored from its checkpoint, not started over"
    assert_output(d, jid, steps=120)
    show = c.cmd("scontrol", "show", "job", jid).stdout
    assert "Restarts=1" in show, show
    assert f"job {jid}: restoring from checkpoint" in c.log(), "restored by the controller, logged"


# ---------------------------------------------------------------- 2
def test_crash_without_checkpoint_requeue_and_no_requeue(e2e, cluster_factory, test_user):
    """Acceptance 2: three one-CPU nodes; the two jobs land on node1 and node2 (least
    loaded first), both nodes die, node3 takes the --requeue job from scratch."""
    c = cluster_factory(nodes=3, cpus=1, **FAST)
    da, db = workdir(e2e, "requeue", test_user), workdir(e2e, "norequeue", test_user)
    a = submit(c, da, test_user, "--requeue")
    b = submit(c, db, test_user, "--no-requeue")
    na = c.wait_state(a, "RUNNING", timeout=60)["nodes"]
    nb = c.wait_state(b, "RUNNING", timeout=60)["nodes"]
    assert na != nb
    c.wait_for(lambda: steps_done(da) >= 5 and steps_done(db) >= 5, 60, "progress")
    with Watch(c) as w:
        c.crash_node(na)
        c.crash_node(nb)
        w.wait(running_on(a, not_on={na, nb}), ST + RT + 30, f"job {a} running on the third node")
        w.wait(lambda jobs, nodes: jobs[b]["state"] == "NODE_FAIL", 30, f"job {b} NODE_FAIL")
        job_a = c.wait_state(a, "COMPLETED", timeout=180)
    assert c.job(b)["state"] == "NODE_FAIL", "--no-requeue: the job is not run again"
    assert starts(db) == 1 and steps_done(db) < STEPS
    assert starts(da) == 2, "no checkpoint: started over from scratch"
    assert job_a["restarts"] == 1, job_a
    assert_output(da, a, from_scratch_ok=True)


# ---------------------------------------------------------------- 3
def test_partition_fences_the_old_copy_and_the_node_rejoins_clean(e2e, cluster_factory, test_user):
    """Acceptance 3."""
    c = cluster_factory(**FAST)
    d = workdir(e2e, "partition", test_user)
    jid = submit(c, d, test_user, "--checkpoint=0:02", steps=90)
    victim = c.wait_state(jid, "RUNNING", timeout=60)["nodes"]
    c.wait_checkpoints(jid, 1, timeout=60)
    c.wait_for(lambda: steps_done(d) >= 10, 60, "progress")
    with Watch(c) as w:
        c.partition(victim)
        old = user_pids(c.node_pids(victim), test_user)
        assert old, "the job's processes run on the node"
        # Nothing moves before the node's lease has surely expired.
        w.wait(lambda jobs, nodes: nodes[victim]["state"] == "DOWN", ST + RT + 20, f"{victim} DOWN")
        # Cut off, the node froze its jobs itself (its lease ran out at SlurmdTimeout).
        alive = [p for p in old if Path(f"/proc/{p}").exists()]
        assert alive and all(is_frozen(p) for p in alive), f"old copy not frozen: {alive}"
        w.wait(running_on(jid, not_on=victim), 60, f"job {jid} restored on another node")
        c.wait_for(lambda: len(host_runs(trace_hosts(d))) >= 2, 60, "the restored job to write")
        # The old copy is frozen, not killed, while it cannot hear that it moved.
        assert all(Path(f"/proc/{p}").exists() and is_frozen(p) for p in alive)
        before = steps_done(d)
        time.sleep(3)
        assert steps_done(d) > before, "the new copy runs on"
        assert len(host_runs(trace_hosts(d))) == 2, "the old copy must not write again"
        sinfo = c.cmd("sinfo", "-N", "-h").stdout
        assert any(ln.startswith(victim) and ln.split()[-1].startswith("down") for ln in sinfo.splitlines()), sinfo

        c.heal(victim)
        # Back: told the old run is stale, it kills it before thawing anything, and returns
        # to service (ReturnToService = 1).
        c.wait_for(lambda: no_job_processes_left(c, victim, test_user), ST + 20,
                   f"the stale copy on {victim} to be killed")
        c.wait_for(lambda: next(n for n in c.node_list() if n["name"] == victim)["state"] in GOOD_STATES,
                   ST + 20, f"{victim} back in service")
        job = c.wait_state(jid, "COMPLETED", timeout=180)
    node = next(n for n in c.node_list() if n["name"] == victim)
    assert not node.get("not_responding"), node
    assert no_job_processes_left(c, victim, test_user)
    assert job["restarts"] == 1 and starts(d) == 1, job
    assert_output(d, jid, steps=90)  # includes: no host wrote again after another took over
    assert len(host_runs(trace_hosts(d))) == 2


# ---------------------------------------------------------------- 4
def test_no_false_positives_at_the_defaults(e2e, cluster_factory, test_user):
    """Acceptance 4: SlurmdTimeout 20 s (HeartbeatInterval 2 s), the default
    requeue_timeout; fschedd stopped for half of SlurmdTimeout, then the node's CPUs and
    disk saturated for 30 s: no job moves, no node is NOT_RESPONDING or DOWN."""
    st = 20
    c = cluster_factory(SlurmdTimeout=st, HeartbeatInterval=2)
    d = workdir(e2e, "busy", test_user)
    jid = submit(c, d, test_user, "--checkpoint=0:05", steps=240)
    victim = c.wait_state(jid, "RUNNING", timeout=60)["nodes"]
    c.wait_for(lambda: steps_done(d) >= 5, 60, "progress")
    with Watch(c, interval=0.5) as w:
        c.stop_daemon(victim, signal.SIGSTOP)
        try:
            time.sleep(st / 2)
        finally:
            c.cont_daemon(victim)
        progress = steps_done(d)
        with c.saturate(victim):
            time.sleep(30)
        assert steps_done(d) > progress, "the job ran on while its node was saturated"
        job = c.wait_state(jid, "COMPLETED", timeout=300)
    bad = [(round(t), name, n["state"], n.get("not_responding"))
           for t, _, nodes in w.samples for name, n in nodes.items()
           if n["state"] not in GOOD_STATES or n.get("not_responding")]
    assert not bad, f"false positives: {bad[:10]}"
    moved = [(round(t), j["state"], j["nodes"]) for t, jobs, _ in w.samples
             if (j := jobs.get(jid)) and (j["state"] in ("PENDING", "NODE_FAIL", "FAILED", "CANCELLED")
                                          or j["nodes"] not in ("", victim))]
    assert not moved, f"the job moved: {moved[:10]}"
    assert len(w.samples) > 30, "the watch saw the whole test"
    assert job["restarts"] == 0 and starts(d) == 1, job
    assert_output(d, jid, steps=240)
    assert len(host_runs(trace_hosts(d))) == 1


# ---------------------------------------------------------------- 5
def test_controller_killed_while_a_node_fails(e2e, cluster_factory, test_user):
    """Acceptance 5: node crash, the controller killed once the node is NOT_RESPONDING
    and started again; the restarted controller gives the node its grace period, then
    recovers the job; another job on the healthy node is untouched."""
    c = cluster_factory(**FAST)
    da, db = workdir(e2e, "ctld-a", test_user), workdir(e2e, "ctld-b", test_user)
    a = submit(c, da, test_user, "--checkpoint=0:02", steps=90)
    b = submit(c, db, test_user, "--checkpoint=0:02", steps=90)
    na = c.wait_state(a, "RUNNING", timeout=60)["nodes"]
    nb = c.wait_state(b, "RUNNING", timeout=60)["nodes"]
    assert na != nb, "least loaded first: one job per node"
    c.wait_checkpoints(a, 1, timeout=60)
    c.wait_for(lambda: steps_done(da) >= 10, 60, "progress")
    c.crash_node(na)
    c.wait_for(lambda: next(n for n in c.node_list() if n["name"] == na).get("not_responding"), ST + 10,
               f"{na} NOT_RESPONDING")
    c.kill_ctld(signal.SIGKILL)
    time.sleep(2)
    c.start_ctld()
    restarted = time.time()
    with Watch(c) as w:
        moved = w.wait(lambda jobs, nodes: jobs[a]["nodes"] != na or jobs[a]["state"] != "RUNNING",
                       ST + RT + 30, f"job {a} to leave {na}")
        # Grace: the restarted controller counts the node's last heartbeat from its start.
        # (restarted is when it answered, a moment after it started.)
        assert moved - restarted >= ST + RT - 2, (moved - restarted, ST + RT)
        w.wait(running_on(a, node=nb), 60, f"job {a} restored on {nb}")
        ja = c.wait_state(a, "COMPLETED", timeout=180)
        jb = c.wait_state(b, "COMPLETED", timeout=180)
    assert ja["restarts"] == 1 and starts(da) == 1, ja
    assert jb["restarts"] == 0 and starts(db) == 1, jb
    assert_output(da, a, steps=90)
    assert_output(db, b, steps=90)
    assert len(host_runs(trace_hosts(db))) == 1


# ---------------------------------------------------------------- 6
def test_corrupt_newest_image_falls_back_to_the_previous(e2e, cluster_factory, test_user):
    """Acceptance 6."""
    c = cluster_factory(**FAST)
    d = workdir(e2e, "corrupt", test_user)
    jid = submit(c, d, test_user, "--checkpoint=0:02", steps=90)
    victim = c.wait_state(jid, "RUNNING", timeout=60)["nodes"]
    c.wait_checkpoints(jid, 2, timeout=60)
    c.crash_node(victim)
    present = [x for x in c.checkpoints(jid) if x["status"] == "Present"]
    good, newest = present[-2], present[-1]
    pages = Path(newest["location"]) / "pages.img"
    with open(pages, "r+b") as f:  # one flipped bit in the page data
        f.seek(pages.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x10]))
    with Watch(c) as w:
        w.wait(running_on(jid, not_on=victim), ST + RT + 60, f"job {jid} restored on another node")
        job = c.wait_state(jid, "COMPLETED", timeout=180)
    cks = {x["checkpoint_id"]: x for x in c.checkpoints(jid)}
    assert cks[newest["checkpoint_id"]]["status"] == "Failed", cks[newest["checkpoint_id"]]
    assert "restore failed" in cks[newest["checkpoint_id"]]["reason"], cks[newest["checkpoint_id"]]
    assert cks[good["checkpoint_id"]]["status"] == "Present"
    assert f"job {jid}: falling back to checkpoint {good['checkpoint_id']}" in c.log()
    assert starts(d) == 1, "restored from the previous checkpoint, not started over"
    assert job["state"] == "COMPLETED"
    assert_output(d, jid, steps=90)


# ---------------------------------------------------------------- 7
BAD_CONF = [
    ("AuthInfo = requeue_timeout=abc", "AuthInfo = requeue_timeout=abc: requeue_timeout=abc: not an integer"),
    ("AuthInfo = cred_expire=180,colour=red", "unknown key 'colour'"),
    ("AuthInfo = cred_expire=0", "cred_expire=0: out of range 1 to 86400"),
    ("AuthInfo = ttl", "'ttl': expected key=value"),
    ("AuthInfo = ttl=5,ttl=6", "ttl is given twice"),
    ("SlurmdTimeout = soon", "SlurmdTimeout = soon: expected an integer"),
    ("BatchStartTimeout = 0", "BatchStartTimeout = 0: expected an integer"),
    ("ReturnToService = 2", "ReturnToService = 2: expected 0 or 1"),
    ("SlurmdTimeout = 15\nHeartbeatInterval = 10",
     "HeartbeatInterval = 10 and SlurmdTimeout = 15: HeartbeatInterval * 2 must not exceed SlurmdTimeout"),
]


def test_bad_authinfo_and_timeouts_are_file_line_errors(e2e, build_dir):
    """Acceptance 7: fschedctld (and fschedd) refuse to start, naming FILE:LINE."""
    root = e2e.jobs_dir.parent / "nf-badconf"
    root.mkdir(parents=True, exist_ok=True)
    base = ["ControlMachine = localhost", "ControlAddr = 127.0.0.1", f"ControlPort = {free_port()}",
            f"StateSaveLocation = {root / 'state'}", f"SlurmdSpoolDir = {root / 'spool'}",
            f"SlurmctldPidFile = {root / 'ctld.pid'}", f"SlurmdPidFile = {root / 'node.pid'}",
            f"NodeName=node1 NodeAddr=127.0.0.1 Port={free_port()} CPUs=1"]
    for i, (bad, message) in enumerate(BAD_CONF):
        conf = root / f"bad{i}.conf"
        text = "\n".join(base + [bad]) + "\n"
        conf.write_text(text)
        line = len(text.splitlines())  # the offending key is the last line
        for argv in ([build_dir / "src/ctld/fschedctld", "-D", "-f", conf],
                     [build_dir / "src/noded/fschedd", "-D", "-N", "node1", "-f", conf]):
            r = subprocess.run(list(map(str, argv)), capture_output=True, text=True, timeout=30)
            assert r.returncode != 0, (bad, r.stdout, r.stderr)
            assert f"{conf}:{line}: " in r.stderr and message in r.stderr, (bad, r.stderr)
            assert r.stderr.count("\n") <= 2, r.stderr  # one clear line, not a trace

    # The seed's block itself is accepted and has an effect: the controller starts on it
    # and warns of nothing in it.
    start_munge()
    conf = root / "seed.conf"
    conf.write_text("\n".join(base + ["BatchStartTimeout = 10", "SlurmdTimeout = 15",
                                      "AuthInfo = cred_expire=180,ttl=180,requeue_timeout=30"]) + "\n")
    p = subprocess.Popen([str(build_dir / "src/ctld/fschedctld"), "-D", "-f", str(conf)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(2)
        assert p.poll() is None, p.stdout.read()
    finally:
        p.terminate()
        out = p.communicate(timeout=30)[0]
    warned = [ln for ln in out.splitlines() if "no effect" in ln and
              any(k in ln for k in ("AuthInfo", "BatchStartTimeout", "SlurmdTimeout"))]
    assert not warned, out


# ---------------------------------------------------------------- admin DOWN / RESUME
def test_admin_down_and_resume(e2e, cluster_factory, test_user):
    """scontrol update NodeName=X State=DOWN Reason=... takes a node out and requeues
    its job elsewhere (restored from its checkpoint); RESUME brings the node back. DOWN
    without a reason is refused as Slurm refuses it."""
    c = cluster_factory(**FAST)
    r = c.cmd("scontrol", "update", "NodeName=node1", "State=DOWN", check=False)
    assert r.returncode != 0 and "You must specify a reason" in r.stderr, r.stderr
    r = c.cmd("scontrol", "update", "NodeName=node1", "State=DOWN", "Reason=x", user=test_user, check=False)
    assert r.returncode != 0, "only root or SlurmUser may set a node DOWN"
    d = workdir(e2e, "admin", test_user)
    jid = submit(c, d, test_user, "--checkpoint=0:02", steps=60)
    victim = c.wait_state(jid, "RUNNING", timeout=60)["nodes"]
    c.wait_checkpoints(jid, 1, timeout=60)
    c.cmd("scontrol", "update", f"NodeName={victim}", "State=DOWN", "Reason=disk replaced")
    node = next(n for n in c.node_list() if n["name"] == victim)
    assert node["state"] == "DOWN" and node["reason"] == "disk replaced", node
    reasons = c.cmd("sinfo", "-R").stdout.splitlines()
    assert any(ln.startswith("disk replaced") and ln.endswith(victim) for ln in reasons), reasons
    row = next(ln for ln in c.cmd("sinfo", "-N", "-h").stdout.splitlines() if ln.startswith(victim))
    assert row.split()[-1] == "down", row  # no '*': the node answers
    c.wait_for(lambda: c.job(jid)["state"] == "RUNNING" and c.job(jid)["nodes"] != victim, 60,
               f"job {jid} requeued on the other node")
    c.wait_for(lambda: no_job_processes_left(c, victim, test_user), 30, f"the run on {victim} to end")
    time.sleep(2 * HB + 1)  # heartbeats go on: an admin's DOWN does not return by itself
    assert next(n for n in c.node_list() if n["name"] == victim)["state"] == "DOWN"
    c.cmd("scontrol", "update", f"NodeName={victim}", "State=RESUME")
    c.wait_for(lambda: next(n for n in c.node_list() if n["name"] == victim)["state"] in GOOD_STATES, 10,
               f"{victim} back in service")
    c.wait_state(jid, "COMPLETED", timeout=180)
    assert starts(d) == 1
    assert_output(d, jid)
