"""Node-side fencing (issue 12, docs/fencing-node.md) on a real loopback cluster: every
job runs in a cgroup of its own below the node's "jobs" cgroup; when the node's lease
runs out (no heartbeat answered within SlurmdTimeout, counted from the send) the lease
guard freezes all its jobs, whether the controller is away or fschedd itself is
stopped; a heartbeat answered again thaws them and they finish with exactly the output
of an uninterrupted run. fschedd refuses launches with a stale generation or an expired
`issued` time.

What a heartbeat reply's "stale" list does (kill before thaw) is driven by the
controller; it is tested against the node code in tests/unit/fence_test.cpp
(NodeFencing.*) until the controller sends it."""
from __future__ import annotations

import json
import os
import pwd
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ckpt_e2e import E2E
from sched_e2e import Cluster, live_procs_in

TICKS, DELAY = 40, 0.25
SLURMD_TIMEOUT = 4

JOB_SH = """#!/bin/bash
echo "job starts"
# A process that leaves the job's process tree and session: ending the run ends it too.
setsid sleep 1000 < /dev/null > /dev/null 2>&1 &
for i in $(seq 1 "$1"); do echo "tick $i"; sleep "$2"; done
echo "job done"
"""


def expected(ticks: int) -> str:
    return "job starts\n" + "".join(f"tick {i}\n" for i in range(1, ticks + 1)) + "job done\n"


def cgroup2_mount() -> Path:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        f = line.split()
        if len(f) > 2 and f[2] == "cgroup2":
            return Path(f[1])
    raise AssertionError("no cgroup2 mounted")


def cgroup_of(pid: int) -> Path:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return cgroup2_mount() / line[3:].lstrip("/")
    raise AssertionError(f"process {pid} has no cgroup2 line")


def procs_in(d: Path) -> list[int]:
    """Live processes whose cwd is d (the job's shell and what it started)."""
    return live_procs_in(d)


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def events(cg: Path) -> dict[str, int]:
    try:
        return {k: int(v) for k, v in (l.split() for l in (cg / "cgroup.events").read_text().splitlines())}
    except OSError:
        return {}


def workdir(e2e: E2E, name: str, user: str) -> Path:
    d = e2e.jobs_dir.parent / "fencing" / name
    d.mkdir(parents=True)
    os.chmod(d.parent, 0o755)
    (d / "job.sh").write_text(JOB_SH)
    pw = pwd.getpwnam(user)
    for p in [d, d / "job.sh"]:
        os.chown(p, pw.pw_uid, pw.pw_gid)
    return d


@pytest.fixture(scope="module")
def cluster(e2e: E2E, build_dir):
    c = Cluster(build_dir, e2e.jobs_dir.parent / "cluster-fencing", nodes=1,
                HeartbeatInterval=1, SlurmdTimeout=SLURMD_TIMEOUT).start()
    yield c
    for p in [c.ctld, *c.nodes.values()]:
        if p and p.poll() is None:
            p.send_signal(signal.SIGCONT)
    c.stop()


def start_job(c: Cluster, d: Path, user: str) -> tuple[int, Path, Path]:
    """Submits the job, waits for a few ticks; returns its id, output file and run cgroup."""
    jid = c.sbatch("job.sh", TICKS, DELAY, user=user, cwd=d)
    c.wait_state(jid, "RUNNING", 60)
    out = d / f"slurm-{jid}.out"
    c.wait_for(lambda: out.exists() and "tick 3\n" in out.read_text(), 60, "the job's third tick")
    pids = [p for p in procs_in(d) if comm(p) == "slurm_script"]  # the script's shell
    assert pids, "the job's shell is not running"
    return jid, out, cgroup_of(pids[0])


def assert_frozen_then_thawed(c: Cluster, jid: int, out: Path, cg: Path, stop, resume, while_frozen=None):
    """stop() silences the lease; the job must freeze (cgroup frozen, output still),
    and after resume() thaw and end with the exact expected output. while_frozen():
    more checks while the job is frozen."""
    stop()
    try:
        c.wait_for(lambda: events(cg).get("frozen") == 1, SLURMD_TIMEOUT + 10, "the job's cgroup to freeze")
        assert events(cg.parent).get("frozen") == 1, "the node's jobs cgroup is not frozen"
        size = out.stat().st_size
        time.sleep(1.5)
        assert out.stat().st_size == size, "a frozen job wrote output"
        assert "job done" not in out.read_text()
        if while_frozen:
            while_frozen()
    finally:
        resume()
    c.wait_for(lambda: events(cg).get("frozen") == 0, 30, "the job's cgroup to thaw")
    c.wait_state(jid, "COMPLETED", 120)
    assert out.read_text() == expected(TICKS)
    log = c.log("fschedd-node1.log")
    assert "jobs frozen" in log, log[-3000:]
    assert re.search(r"lease renewed: 0 stale runs killed, jobs thawed", log), log[-3000:]


def test_job_runs_in_its_run_cgroup_and_its_strays_die_with_it(e2e, cluster, test_user):
    c = cluster
    d = workdir(e2e, "cgroup", test_user)
    jid, out, cg = start_job(c, d, test_user)
    # <cgroup2>/<fschedd's cgroup>/fsched-node1/jobs/job<ID>.g<GENERATION>
    assert re.fullmatch(rf"job{jid}\.g\d+", cg.name), cg
    assert cg.parent.name == "jobs" and cg.parent.parent.name == "fsched-node1", cg
    fschedd = c.nodes["node1"].pid
    assert cgroup_of(fschedd) != cg and not str(cgroup_of(fschedd)).startswith(str(cg))
    pids = procs_in(d)
    assert {comm(p) for p in pids} >= {"slurm_script", "sleep"}, [comm(p) for p in pids]
    assert all(cgroup_of(p) == cg for p in pids), {p: (comm(p), cgroup_of(p)) for p in pids}
    # The detached sleep 1000 is in the job's cgroup although it left its session.
    strays = [p for p in pids if comm(p) == "sleep" and "1000" in Path(f"/proc/{p}/cmdline").read_text()]
    assert strays
    c.wait_state(jid, "COMPLETED", 120)
    assert out.read_text() == expected(TICKS)
    # The run's end killed what it left behind and removed its cgroup.
    c.wait_for(lambda: not any(os.path.exists(f"/proc/{p}") and comm(p) == "sleep" for p in strays), 10,
               "the job's detached sleep to be killed")
    c.wait_for(lambda: not cg.exists(), 10, f"{cg} to be removed")


def test_jobs_freeze_while_the_controller_is_stopped(e2e, cluster, build_dir, test_user):
    c = cluster
    d = workdir(e2e, "ctld-stopped", test_user)
    jid, out, cg = start_job(c, d, test_user)

    def refusals():
        # fschedd answers, but makes no new state while it holds no lease: a dump of
        # the frozen job and a new launch are refused as transient (503).
        r = node_rpc(c, build_dir, "POST", "/v1/node/checkpoint",
                     {"job_id": jid, "dir": str(c.ckpt_dir / f"fence-{jid}")})
        assert r.returncode == 1 and r.stdout.startswith("HTTP 503") and "jobs frozen" in r.stdout, r.stdout
        assert not (c.ckpt_dir / f"fence-{jid}").exists()
        pw = pwd.getpwnam(test_user)
        r = node_rpc(c, build_dir, "POST", "/v1/node/launch",
                     {"job_id": jid + 100000, "script": JOB_SH, "uid": pw.pw_uid, "gid": pw.pw_gid,
                      "user": test_user, "work_dir": str(d), "stdout": str(d / "x.out"),
                      "stderr": str(d / "x.out"), "generation": 1, "issued": time.time()})
        assert r.returncode == 1 and r.stdout.startswith("HTTP 503") and "lease" in r.stdout, r.stdout
        assert not (d / "x.out").exists()

    assert_frozen_then_thawed(c, jid, out, cg,
                              lambda: c.ctld.send_signal(signal.SIGSTOP),
                              lambda: c.ctld.send_signal(signal.SIGCONT), refusals)


def test_guard_freezes_jobs_while_fschedd_is_stopped(e2e, cluster, test_user):
    c = cluster
    d = workdir(e2e, "fschedd-stopped", test_user)
    jid, out, cg = start_job(c, d, test_user)
    fschedd = c.nodes["node1"]
    guards = [int(e.name) for e in os.scandir("/proc") if e.name.isdigit() and comm(int(e.name)) == "fschedd-guard"
              and Path(f"/proc/{e.name}/stat").read_text().split(") ")[1].split()[1] == str(fschedd.pid)]
    assert len(guards) == 1, "fschedd has no lease guard process"
    assert_frozen_then_thawed(c, jid, out, cg,
                              lambda: fschedd.send_signal(signal.SIGSTOP),
                              lambda: fschedd.send_signal(signal.SIGCONT))


def node_rpc(c: Cluster, build_dir: Path, method: str, path: str, body=None) -> subprocess.CompletedProcess:
    port = c.node_ports["node1"]
    argv = [str(build_dir / "tests/programs/node_rpc"), "127.0.0.1", str(port), method, path]
    if body is not None:
        argv.append(json.dumps(body))
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=c.env)


def test_stale_generation_and_expired_launch_refused(e2e, cluster, build_dir, test_user):
    c = cluster
    d = workdir(e2e, "refused", test_user)
    jid, out, cg = start_job(c, d, test_user)
    r = node_rpc(c, build_dir, "GET", "/v1/node/jobs")
    assert r.returncode == 0, r.stdout + r.stderr
    run = [j for j in json.loads(r.stdout)["jobs"] if j["job_id"] == jid]
    assert len(run) == 1 and "generation" in run[0], r.stdout
    gen = run[0]["generation"]
    pw = pwd.getpwnam(test_user)
    launch = {"job_id": jid, "script": JOB_SH, "uid": pw.pw_uid, "gid": pw.pw_gid, "user": test_user,
              "work_dir": str(d), "stdout": str(d / "x.out"), "stderr": str(d / "x.out"),
              "argv": ["1", "0"], "generation": gen, "issued": time.time()}
    # The generation the node runs, again: refused as stale.
    r = node_rpc(c, build_dir, "POST", "/v1/node/launch", launch)
    assert r.returncode == 1 and r.stdout.startswith("HTTP 409") and "generation" in r.stdout, r.stdout
    # Another job, issued longer ago than cred_expire (AuthInfo, default 120 s): refused.
    other = dict(launch, job_id=jid + 100000, generation=gen + 1, issued=time.time() - 3600)
    r = node_rpc(c, build_dir, "POST", "/v1/node/launch", other)
    assert r.returncode == 1 and r.stdout.startswith("HTTP 409") and "cred_expire" in r.stdout, r.stdout
    assert not (d / "x.out").exists()
    c.wait_state(jid, "COMPLETED", 120)
    assert out.read_text() == expected(TICKS)
