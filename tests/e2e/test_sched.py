"""The scheduler end to end: real fschedctld and fschedd on loopback, real MUNGE, the
Slurm-named commands, jobs as an unprivileged user, checkpoints written by the engine.
Every job's output is compared byte for byte with an uninterrupted run of the same
script."""
from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ckpt_e2e import E2E
from sched_e2e import Cluster

STEPS, DELAY = 60, 0.3  # the job computes for about 20 s

COMPUTE_PY = r'''
import hashlib, sys, time
steps, delay = int(sys.argv[1]), float(sys.argv[2])
h = b"fsched"
with open("results.txt", "a") as out:
    for i in range(steps):
        for _ in range(3000):
            h = hashlib.sha256(h).digest()
        print(f"step {i} {h.hex()}", flush=True)
        out.write(f"{i} {h.hex()}" * 40 + "\n")
        out.flush()
        time.sleep(delay)
'''

JOB_SH = """#!/bin/bash
#SBATCH -J ckptjob
set -e
echo "job starts"
python3 compute.py "$1" "$2"
xz -T1 -6 -k results.txt
sha256sum results.txt.xz
echo "job done"
"""


def user_ids(name):
    pw = pwd.getpwnam(name)
    return pw.pw_uid, pw.pw_gid


def ensure_user(name):
    if subprocess.run(["id", "-u", name], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True, timeout=60)
    return name


def workdir(e2e: E2E, name: str, user: str) -> Path:
    d = e2e.jobs_dir.parent / "sched" / name
    d.mkdir(parents=True)
    os.chmod(d.parent, 0o755)
    (d / "compute.py").write_text(COMPUTE_PY)
    (d / "job.sh").write_text(JOB_SH)
    uid, gid = user_ids(user)
    for p in [d, d / "compute.py", d / "job.sh"]:
        os.chown(p, uid, gid)
    return d


@pytest.fixture(scope="module")
def reference(e2e: E2E, test_user) -> dict[str, bytes]:
    return run_reference(e2e, test_user, "reference")


def run_reference(e2e: E2E, test_user: str, name: str) -> dict[str, bytes]:
    """An uninterrupted run of the job script, as the same user, without fsched, in
    work directory `name` (one per test module)."""
    d = workdir(e2e, name, test_user)
    with open(d / "out.txt", "wb") as out:
        subprocess.run(["runuser", "-u", test_user, "--", "bash", "job.sh", str(STEPS), "0"], cwd=d,
                       stdout=out, stderr=subprocess.STDOUT, check=True, timeout=300)
    return {"out": (d / "out.txt").read_bytes(), "results.txt": (d / "results.txt").read_bytes(),
            "results.txt.xz": (d / "results.txt.xz").read_bytes()}


def assert_same_as_reference(d: Path, job_id: int, reference: dict[str, bytes], user: str):
    out = d / f"slurm-{job_id}.out"
    assert out.read_bytes() == reference["out"], f"{out} differs from the uninterrupted run"
    for f in ("results.txt", "results.txt.xz"):
        assert (d / f).read_bytes() == reference[f], f"{d / f} differs from the uninterrupted run"
    assert out.stat().st_uid == user_ids(user)[0], "the job's output must belong to its user"


def progress(d: Path, job_id: int) -> int:
    try:
        return (d / f"slurm-{job_id}.out").read_text().count("step ")
    except FileNotFoundError:
        return 0


@pytest.fixture(scope="module")
def cluster(e2e: E2E, build_dir):
    c = Cluster(build_dir, e2e.jobs_dir.parent / "cluster", nodes=2).start()
    yield c
    c.stop()


def test_periodic_checkpoints_and_retention(e2e: E2E, build_dir, test_user, reference):
    c = Cluster(build_dir, e2e.jobs_dir.parent / "cluster-epochs", CRIU_MaxEpochs=2).start()
    try:
        d = workdir(e2e, "periodic", test_user)
        jid = c.sbatch("--checkpoint=0:05", "job.sh", STEPS, DELAY, user=test_user, cwd=d)
        job = c.wait_state(jid, "COMPLETED", timeout=240)
        assert job["user"] == test_user and job["checkpoint_interval"] == 5
        cks = c.checkpoints(jid)
        made = [x for x in cks if x["status"] in ("Present", "Cleared")]
        assert len(made) >= 3, cks
        # Only the newest CRIU_MaxEpochs = 2 remain; the older ones are Cleared and gone.
        assert [x["status"] for x in made] == ["Cleared"] * (len(made) - 2) + ["Present"] * 2, cks
        # Cleared images are removed by a worker of the controller, outside its lock.
        c.wait_for(lambda: all(Path(x["location"]).exists() == (x["status"] == "Present") for x in made), 20,
                   f"the Cleared images to be removed and the Present ones kept: {made}")
        for x in made:
            assert x["source"] == "periodic" and x["job_version"] == 1
            assert x["location"] == str(c.ckpt_dir / str(jid) / str(x["checkpoint_id"]))
            assert x["trigger_time"] <= x["completion_time"]
            assert abs(x["duration"] - (x["completion_time"] - x["trigger_time"])) < 1e-3
        for x in cks:
            if x["status"] not in ("Present", "Cleared"):  # only one racing the job's end
                assert x["status"] == "Failed" and x is cks[-1], cks
        # Periodic means on the grid start + k * 5 s: consecutive triggers are a multiple
        # of 5 s apart (a due point is skipped only while the previous dump still runs).
        gaps = [b["trigger_time"] - a["trigger_time"] for a, b in zip(made, made[1:])]
        assert all(round(g / 5) >= 1 and abs(g - 5 * round(g / 5)) <= 1.5 for g in gaps), gaps
        present = [x for x in made if x["status"] == "Present"]
        assert all(x["size"] > 0 for x in present)
        st = (c.ckpt_dir / str(jid)).stat()
        assert st.st_uid == 0 and st.st_mode & 0o077 == 0, "images are root's only"
        du = subprocess.run(["du", "-sh", str(c.ckpt_dir / str(jid))], capture_output=True, text=True, check=True)
        assert du.stdout.strip()
        assert_same_as_reference(d, jid, reference, test_user)
        show = c.cmd("scontrol", "show", "job", jid).stdout
        assert "Checkpoint=00:00:05" in show and f"CheckpointDir={c.ckpt_dir / str(jid)}" in show, show
        assert f"LastCheckpoint={cks[-1]['checkpoint_id']}" in show, show
    finally:
        c.stop()


def test_vacate_restart_twice_then_older_checkpoint(e2e: E2E, cluster: Cluster, test_user, reference):
    c = cluster
    d = workdir(e2e, "vacate", test_user)
    jid = c.sbatch("job.sh", STEPS, DELAY, user=test_user, cwd=d)
    c.wait_state(jid, "RUNNING")
    c.wait_for(lambda: progress(d, jid) >= 8, 60, "progress")
    r = c.cmd("scontrol", "checkpoint", "create", jid, "Description=before vacating", user=test_user)
    first = c.checkpoints(jid)[-1]
    assert first["status"] == "Present" and first["source"] == "manual", first
    assert first["description"] == "before vacating"
    assert str(first["checkpoint_id"]) in r.stdout

    for cycle in range(2):
        c.wait_for(lambda: progress(d, jid) >= 8 + 8 * (cycle + 1), 60, "progress")
        c.cmd("scontrol", "checkpoint", "vacate", jid, user=test_user)
        job = c.wait_state(jid, "PENDING", timeout=10)
        assert job["reason"] == "Vacated", job
        assert c.checkpoints(jid)[-1]["source"] == "vacate"
        n = progress(d, jid)
        time.sleep(1.5)
        assert progress(d, jid) == n, "a vacated job must not run"
        assert c.job(jid)["state"] == "PENDING"
        if cycle == 0:
            c.cmd("scontrol", "checkpoint", "restart", jid, user=test_user)
        else:
            # Back to the manual checkpoint made before both vacates: the output written
            # since is truncated away by the restore and written again identically.
            c.cmd("scontrol", "checkpoint", "restart", jid, f"CheckpointId={first['checkpoint_id']}",
                  user=test_user)
        c.wait_state(jid, "RUNNING", timeout=60)

    job = c.wait_state(jid, "COMPLETED", timeout=240)
    assert job["restarts"] == 2 and job["job_version"] == 3, job
    assert_same_as_reference(d, jid, reference, test_user)
    assert [x["source"] for x in c.checkpoints(jid)] == ["manual", "vacate", "vacate"]
    show = c.cmd("scontrol", "show", "job", jid).stdout
    assert "Restarts=2" in show and "JobState=COMPLETED" in show, show
    # A finished job keeps the start of its last run (it used to read Unknown once the
    # job had released its node).
    assert job["start_time"] > job["submit_time"] and job["end_time"] >= job["start_time"], job
    assert "StartTime=Unknown" not in show and "StartTime=" in show, show


def test_failed_checkpoints_leave_the_job_running(e2e: E2E, build_dir, test_user, reference):
    root = e2e.jobs_dir.parent / "cluster-unwritable"
    blocker = e2e.jobs_dir.parent / "cluster-blocker"
    blocker.write_text("a regular file where a directory should be\n")
    c = Cluster(build_dir, root, CheckpointDir=blocker / "ckpt").start()
    try:
        d = workdir(e2e, "unwritable", test_user)
        jid = c.sbatch("--checkpoint=0:03", "job.sh", STEPS, DELAY, user=test_user, cwd=d)
        cks = c.wait_checkpoints(jid, 1, status="Failed", timeout=60)
        failed = [x for x in cks if x["status"] == "Failed"][0]
        assert "ckpt" in failed["reason"] and failed["completion_time"] >= failed["trigger_time"], failed
        r = c.cmd("scontrol", "checkpoint", "vacate", jid, user=test_user, check=False)
        assert r.returncode != 0 and "error" in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert c.job(jid)["state"] == "RUNNING", "a failed vacate leaves the job running"
        c.wait_state(jid, "COMPLETED", timeout=240)
        assert_same_as_reference(d, jid, reference, test_user)
        assert all(x["status"] == "Failed" for x in c.checkpoints(jid))
        # The reason shows in the table too, not only with --json.
        table = c.cmd("scontrol", "checkpoint", "list", jid, user=test_user).stdout
        assert table.splitlines()[0].endswith("REASON"), table
        assert failed["reason"] in table, table
    finally:
        c.stop()
        blocker.unlink()


def test_other_users_and_bad_input(e2e: E2E, cluster: Cluster, test_user):
    c = cluster
    other = ensure_user("fschedtest2")
    d = workdir(e2e, "perm", test_user)
    jid = c.sbatch("job.sh", 200, DELAY, user=test_user, cwd=d)
    c.wait_state(jid, "RUNNING")
    for args in (["scancel", jid], ["scontrol", "checkpoint", "vacate", jid], ["scontrol", "hold", jid]):
        r = c.cmd(*args, user=other, check=False)
        assert r.returncode != 0 and "denied" in r.stderr.lower(), (args, r.stderr)
    assert c.job(jid)["state"] == "RUNNING"
    c.cmd("scancel", jid)  # root may
    job = c.wait_state(jid, "CANCELLED", timeout=30)
    assert job["reason"] in ("None", "") or job["state"] == "CANCELLED"

    r = c.cmd("sbatch", "--checkpoint=ten", "job.sh", user=test_user, cwd=d, check=False)
    assert r.returncode != 0 and "ten" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = c.cmd("scontrol", "show", "job", 999999, check=False)
    assert r.returncode != 0 and "Invalid job id" in r.stderr, r.stderr
    r = c.cmd("scontrol", "checkpoint", "restart", 999999, check=False)
    assert r.returncode != 0 and "Invalid job id" in r.stderr, r.stderr

    bad = c.root / "bad.conf"
    bad.write_text(c.conf_path.read_text().replace("KillWait = 5", "KillWait = soon"))
    r = subprocess.run([str(c.build / "src/ctld/fschedctld"), "-D", "-f", str(bad)], capture_output=True,
                       text=True, timeout=30)
    line = [ln for ln in c.conf_path.read_text().splitlines()].index("KillWait = 5") + 1
    assert r.returncode != 0 and f"bad.conf:{line}:" in r.stderr and "KillWait" in r.stderr, r.stderr
    bad.write_text(c.conf_path.read_text() + "NoSuchKey = 1\n")
    r = subprocess.run([str(c.build / "src/noded/fschedd"), "-D", "-N", "node1", "-f", str(bad)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "NoSuchKey" in r.stderr and "bad.conf:" in r.stderr, r.stderr


def test_daemon_restarts_lose_nothing(e2e: E2E, cluster: Cluster, test_user, reference):
    c = cluster
    d = workdir(e2e, "restarts", test_user)
    jid = c.sbatch("--checkpoint=0:04", "job.sh", STEPS, DELAY, user=test_user, cwd=d)
    c.wait_checkpoints(jid, 1)
    before = c.checkpoints(jid)
    node = c.job(jid)["nodes"]

    c.kill_ctld()  # a crash, not a clean stop
    c.start_ctld()
    assert c.job(jid)["state"] == "RUNNING"
    after = c.checkpoints(jid)
    assert [x["checkpoint_id"] for x in after][:len(before)] == [x["checkpoint_id"] for x in before]
    assert all(a["status"] in (b["status"], "Failed") for a, b in zip(after, before))

    c.kill_node(node)
    assert c.job(jid)["state"] == "RUNNING", "jobs are not children of fschedd"
    c.start_node(node)
    n = len([x for x in c.checkpoints(jid) if x["status"] == "Present"])
    c.wait_checkpoints(jid, n + 1, timeout=60)  # checkpoints go on with the new fschedd
    c.wait_state(jid, "COMPLETED", timeout=240)
    assert_same_as_reference(d, jid, reference, test_user)
    assert "found again" in c.log(f"fschedd-{node}.log")


def test_restart_falls_back_when_the_newest_image_is_corrupt(e2e: E2E, cluster: Cluster, test_user, reference):
    c = cluster
    d = workdir(e2e, "fallback", test_user)
    jid = c.sbatch("job.sh", STEPS, DELAY, user=test_user, cwd=d)
    c.wait_for(lambda: progress(d, jid) >= 8, 60, "progress")
    c.cmd("scontrol", "checkpoint", "create", jid)
    c.wait_for(lambda: progress(d, jid) >= 16, 60, "progress")
    c.cmd("scontrol", "checkpoint", "vacate", jid)
    good, newest = c.checkpoints(jid)
    pages = Path(newest["location"]) / "pages.img"
    with open(pages, "r+b") as f:  # one flipped bit in the page data
        f.seek(pages.stat().st_size // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x10]))
    r = c.cmd("scontrol", "checkpoint", "restart", jid)
    # The restore of the newest fails later: the message names the fallback too.
    assert (f"restarting from checkpoint {newest['checkpoint_id']}, or from checkpoint {good['checkpoint_id']} "
            "should its restore fail") in r.stdout, r.stdout
    c.wait_state(jid, "COMPLETED", timeout=240)
    cks = c.checkpoints(jid)
    assert cks[1]["status"] == "Failed" and "restore failed" in cks[1]["reason"], cks[1]
    assert "checksum" in cks[1]["reason"] or "xxh3" in cks[1]["reason"], cks[1]["reason"]
    assert cks[0]["status"] == "Present"
    assert_same_as_reference(d, jid, reference, test_user)
    log = c.log()
    assert f"job {jid}: falling back to checkpoint {good['checkpoint_id']}" in log


def test_restart_clears_an_image_deleted_by_hand(e2e: E2E, cluster: Cluster, test_user, reference):
    """An administrator removed the newest image's directory: the restart notices, marks
    it Cleared with the reason and restores the older one."""
    c = cluster
    d = workdir(e2e, "deleted-image", test_user)
    jid = c.sbatch("job.sh", STEPS, DELAY, user=test_user, cwd=d)
    c.wait_for(lambda: progress(d, jid) >= 8, 60, "progress")
    c.cmd("scontrol", "checkpoint", "create", jid)
    c.wait_for(lambda: progress(d, jid) >= 16, 60, "progress")
    c.cmd("scontrol", "checkpoint", "vacate", jid)
    c.wait_state(jid, "PENDING", timeout=10)
    good, newest = c.checkpoints(jid)
    assert newest["status"] == "Present", newest
    shutil.rmtree(newest["location"])
    r = c.cmd("scontrol", "checkpoint", "restart", jid, user=test_user)
    assert f"restarting from checkpoint {good['checkpoint_id']}" in r.stdout, r.stdout
    gone = c.checkpoints(jid)[1]
    assert gone["status"] == "Cleared" and "missing" in gone["reason"] and newest["location"] in gone["reason"], gone
    table = c.cmd("scontrol", "checkpoint", "list", jid, user=test_user).stdout
    assert "missing" in table, table
    # Asked for by id, it is refused as what it now is.
    r = c.cmd("scontrol", "checkpoint", "restart", jid, f"CheckpointId={newest['checkpoint_id']}", check=False)
    assert r.returncode != 0 and ("Cleared" in r.stderr or "cannot be restarted" in r.stderr), r.stderr
    c.wait_state(jid, "COMPLETED", timeout=240)
    assert c.job(jid)["restarts"] == 1
    assert_same_as_reference(d, jid, reference, test_user)


def test_requeue_hold_release_signal_and_time_limit(e2e: E2E, cluster: Cluster, test_user, reference):
    c = cluster
    d = workdir(e2e, "requeue", test_user)
    jid = c.sbatch("-H", "job.sh", STEPS, 0.1, user=test_user, cwd=d)
    job = c.wait_state(jid, "PENDING", timeout=10)
    assert job["reason"] == "JobHeldUser", job
    time.sleep(1)
    assert c.job(jid)["state"] == "PENDING", "a held job does not start"
    c.cmd("scontrol", "release", jid, user=test_user)
    c.wait_state(jid, "RUNNING", timeout=30)
    c.wait_for(lambda: progress(d, jid) >= 5, 60, "progress")
    # Requeue starts again from scratch (seed 002: requeue is not restore).
    c.cmd("scontrol", "requeue", jid, user=test_user)
    job = c.wait_state(jid, "RUNNING", timeout=60)
    c.wait_state(jid, "COMPLETED", timeout=240)
    job = c.job(jid)
    assert job["restarts"] == 1, job
    text = (d / f"slurm-{jid}.out").read_text()
    assert text.count("job starts") == 2 and text.endswith("job done\n"), text[-200:]

    # scancel --signal reaches the job's processes: bash dies of SIGUSR1.
    d2 = workdir(e2e, "signal", test_user)
    jid2 = c.sbatch("job.sh", STEPS, DELAY, user=test_user, cwd=d2)
    c.wait_for(lambda: progress(d2, jid2) >= 3, 60, "progress")
    c.cmd("scancel", "--signal=USR1", jid2, user=test_user)
    job = c.wait_state(jid2, ("FAILED", "COMPLETED"), timeout=60)
    assert job["state"] == "FAILED" and job["exit_code"] == "0:10", job

    # A time limit ends the job as TIMEOUT.
    d3 = workdir(e2e, "timelimit", test_user)
    jid3 = c.sbatch("--time=0:03", "job.sh", STEPS, DELAY, user=test_user, cwd=d3)
    job = c.wait_state(jid3, "TIMEOUT", timeout=60)
    assert 3 <= job["run_time"] <= 12, job


def test_restart_on_another_node(e2e: E2E, cluster: Cluster, test_user, reference):
    c = cluster
    d = workdir(e2e, "migrate", test_user)
    jid = c.sbatch("-c", 2, "job.sh", STEPS, DELAY, user=test_user, cwd=d)
    first = c.wait_state(jid, "RUNNING")["nodes"]
    c.wait_for(lambda: progress(d, jid) >= 8, 60, "progress")
    c.cmd("scontrol", "checkpoint", "vacate", jid, user=test_user)
    # Other jobs take the whole node the vacated one ran on, and only that one.
    filler = d / "filler.sh"
    filler.write_text("#!/bin/bash\nsleep 300\n")
    blockers = []
    for _ in c.node_ports:
        blockers.append(c.sbatch("-c", 2, filler, cwd=d))
        if c.wait_state(blockers[-1], "RUNNING")["nodes"] == first:
            break
    for b in blockers:
        if c.job(b)["nodes"] != first:
            c.cmd("scancel", b)
            c.wait_state(b, "CANCELLED", timeout=30)
    c.cmd("scontrol", "checkpoint", "restart", jid, user=test_user)
    job = c.wait_state(jid, "RUNNING", timeout=60)
    assert job["nodes"] != first, f"restored on {job['nodes']}, the node it was vacated from is busy"
    c.wait_state(jid, "COMPLETED", timeout=240)
    assert_same_as_reference(d, jid, reference, test_user)
    for b in blockers:
        c.cmd("scancel", b, check=False)


def test_checkpoint_timeout(e2e: E2E, build_dir, test_user):
    c = Cluster(build_dir, e2e.jobs_dir.parent / "cluster-timeout", CheckpointTimeout=1).start()
    try:
        d = workdir(e2e, "timeout", test_user)
        memhog = d / "memhog"  # a copy the user can reach wherever the build is
        shutil.copy2(build_dir / "tests/programs/memhog", memhog)
        (d / "hog.sh").write_text(f"#!/bin/bash\nexec {memhog} 2048 random --go-file go\n")
        jid = c.sbatch("hog.sh", user=test_user, cwd=d)
        c.wait_for(lambda: "ready" in (d / f"slurm-{jid}.out").read_text()
                   if (d / f"slurm-{jid}.out").exists() else False, 120, "memhog to fill its memory")
        r = c.cmd("scontrol", "checkpoint", "create", jid, user=test_user, check=False)
        assert r.returncode != 0 and "CheckpointTimeout" in r.stderr, r.stderr
        ck = c.checkpoints(jid)[-1]
        assert ck["status"] == "Timeout" and "CheckpointTimeout" in ck["reason"], ck
        loc = Path(ck["location"])
        assert not loc.exists() and not Path(str(loc) + ".tmp").exists(), "a timed-out dump leaves no image"
        assert c.job(jid)["state"] == "RUNNING"
        (d / "go").touch()  # memhog checks its 2 GiB and ends
        c.wait_state(jid, "COMPLETED", timeout=120)
        out = (d / f"slurm-{jid}.out").read_text()
        assert "ok " in out and "mismatch" not in out, out
    finally:
        c.stop()


@pytest.mark.parametrize("requeue", [True, False], ids=["requeue", "no-requeue"])
def test_job_lost_with_its_node_restarts_from_checkpoint(e2e: E2E, cluster: Cluster, test_user, reference,
                                                         requeue: bool):
    """The node restarts (faster than SlurmdTimeout) and finds the job's processes gone:
    a node failure. With --requeue (the default) the job is restored from its checkpoint
    without anyone typing anything; with --no-requeue it stays NODE_FAIL until
    `scontrol checkpoint restart`."""
    c = cluster
    d = workdir(e2e, f"lost-{requeue}", test_user)
    opt = "--requeue" if requeue else "--no-requeue"
    jid = c.sbatch("--checkpoint=0:03", opt, "job.sh", STEPS, DELAY, user=test_user, cwd=d)
    c.wait_checkpoints(jid, 1)
    node = c.job(jid)["nodes"]
    init = json.loads((c.root / "spool" / f"job{jid}" / "job.json").read_text())["pid"]
    # The node goes down: its daemon and the job die together.
    c.kill_node(node, signal.SIGKILL)
    os.kill(init, signal.SIGKILL)
    c.wait_for(lambda: not Path(f"/proc/{init}").exists() or
               Path(f"/proc/{init}/stat").read_text().split()[2] == "Z", 10, "the job to die")
    c.start_node(node)
    if requeue:
        c.wait_for(lambda: c.job(jid)["restarts"] >= 1, 60, "the job to be restored")
        show = c.cmd("scontrol", "show", "job", jid).stdout
        assert "lost run" in show and "to be restored from checkpoint" in show, show
    else:
        job = c.wait_state(jid, "NODE_FAIL", timeout=30)
        assert job["reason"] == "NodeFail", job
        c.cmd("scontrol", "checkpoint", "restart", jid, user=test_user)
    c.wait_state(jid, "COMPLETED", timeout=240)
    assert_same_as_reference(d, jid, reference, test_user)


def test_load_aware_skips_periodic_checkpoints(e2e: E2E, build_dir, test_user):
    # Memory in use is always above 0.0: every periodic checkpoint is skipped, and says
    # why. CPU and I/O ratios never exceed 1.0, so they cannot be the reason instead.
    c = Cluster(build_dir, e2e.jobs_dir.parent / "cluster-loadaware", CRIU_LoadAware="YES",
                CRIU_LoadThresholdMemory="0.0", CRIU_LoadThresholdCPU="1.0", CRIU_LoadThresholdIO="1.0").start()
    try:
        d = workdir(e2e, "loadaware", test_user)
        jid = c.sbatch("--checkpoint=0:02", "job.sh", STEPS, DELAY, user=test_user, cwd=d)
        cks = c.wait_checkpoints(jid, 2, status="Skipped", timeout=60)
        skipped = [x for x in cks if x["status"] == "Skipped"]
        assert all(x["source"] == "periodic" and "CRIU_LoadThresholdMemory" in x["reason"] for x in skipped), skipped
        assert not any(Path(x["location"] or "/nonexistent").exists() for x in skipped)
        # Load-aware skipping is for the schedule: a checkpoint asked for by hand is taken.
        c.cmd("scontrol", "checkpoint", "create", jid, user=test_user)
        assert c.checkpoints(jid)[-1]["status"] == "Present"
        node = [n for n in c.node_list() if n["name"] == c.job(jid)["nodes"]][0]
        assert 0.0 < node["mem_util"] < 1.0, node
        c.cmd("scancel", jid)
        c.wait_state(jid, "CANCELLED", timeout=30)
    finally:
        c.stop()
