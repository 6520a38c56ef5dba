"""Daemons killed in the middle of an engine operation (issue 10, items 8-10): fschedd
SIGKILLed during a vacate, a checkpoint and a restore, fschedctld SIGKILLed during a
vacate. After the daemon's restart no valid checkpoint may be listed Failed, the job's
output must be byte-identical to an uninterrupted run, the job must never run twice,
and Failed/Timeout images (and DIR.tmp leftovers) must be gone from disk.

The job holds MEM_MIB MiB of incompressible memory (tests/programs/memhog), so that a
dump lasts long enough to be killed at chosen instants within it."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from ckpt_e2e import E2E
from sched_e2e import Cluster, live_procs_in

MEM_MIB, SECONDS = 256, 6  # memhog's steps are counted, not timed: frozen time does not count

JOB_SH = f"""#!/bin/bash
echo "job starts"
./memhog {MEM_MIB} random --seconds {SECONDS} --step-ms 50
echo "job done"
"""


def workdir(e2e: E2E, build: Path, name: str, user: str) -> Path:
    import pwd
    d = e2e.jobs_dir.parent / "faults" / name
    d.mkdir(parents=True)
    os.chmod(d.parent, 0o755)
    (d / "job.sh").write_text(JOB_SH)
    shutil.copy2(build / "tests/programs/memhog", d / "memhog")
    pw = pwd.getpwnam(user)
    for p in [d, d / "job.sh", d / "memhog"]:
        os.chown(p, pw.pw_uid, pw.pw_gid)
    return d


def memhogs(d: Path) -> list[int]:
    """Live memhog processes of the job in d (by their cwd)."""
    return live_procs_in(d, "memhog")


class Watch:
    """Samples how many copies of the job run, every 20 ms, until stopped."""

    def __init__(self, d: Path):
        self.d, self.max, self.stop_ = d, 0, False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stop_:
            self.max = max(self.max, len(memhogs(self.d)))
            time.sleep(0.02)

    def stop(self) -> int:
        self.stop_ = True
        self.t.join()
        return self.max


@pytest.fixture(scope="module")
def reference(e2e: E2E, build_dir, test_user) -> bytes:
    d = workdir(e2e, build_dir, "reference", test_user)
    r = subprocess.run(["runuser", "-u", test_user, "--", "bash", "job.sh"], cwd=d, capture_output=True,
                       check=True, timeout=120)
    assert b"ok " in r.stdout, r.stdout
    return r.stdout


@pytest.fixture(scope="module")
def cluster(e2e: E2E, build_dir):
    c = Cluster(build_dir, e2e.jobs_dir.parent / "cluster-faults", nodes=1).start()
    yield c
    c.stop()


def out_of(d: Path, jid: int) -> bytes:
    return (d / f"slurm-{jid}.out").read_bytes()


def start_job(c: Cluster, e2e, build_dir, name, user) -> tuple[int, Path]:
    d = workdir(e2e, build_dir, name, user)
    jid = c.sbatch("job.sh", user=user, cwd=d)
    c.wait_state(jid, "RUNNING", timeout=30)
    # Its memory is filled once it says "ready".
    c.wait_for(lambda: (d / f"slurm-{jid}.out").exists() and b"ready" in out_of(d, jid), 60, "the job to be ready")
    return jid, d


def tmp_images(c: Cluster, jid: int) -> list[Path]:
    return list((c.ckpt_dir / str(jid)).glob("*.tmp")) if (c.ckpt_dir / str(jid)).exists() else []


def wait_dump_started(c: Cluster, jid: int):
    c.wait_for(lambda: tmp_images(c, jid), 30, "the dump to start writing DIR.tmp", interval=0.01)


def restart_node(c: Cluster):
    c.kill_node("node1", signal.SIGKILL)
    c.start_node("node1")


def settled(c: Cluster, jid: int) -> list[dict]:
    return c.wait_for(lambda: (x := c.checkpoints(jid)) and all(k["status"] != "Creating" for k in x) and x,
                      90, "the checkpoints to settle")


def assert_disk_matches_records(c: Cluster, jid: int):
    """Present images exist; Failed/Timeout/Cleared ones and every DIR.tmp are gone."""
    cks = c.checkpoints(jid)

    def ok():
        return not tmp_images(c, jid) and all(
            Path(x["location"]).exists() == (x["status"] == "Present") for x in cks if x["location"])
    c.wait_for(ok, 20, f"the images on disk to match the records {cks}")


def finish_and_compare(c: Cluster, jid: int, d: Path, reference: bytes, watch: Watch):
    c.wait_state(jid, "COMPLETED", timeout=120)
    assert watch.stop() <= 1, "the job ran twice at once"
    assert out_of(d, jid) == reference, f"output differs from the uninterrupted run:\n{out_of(d, jid)!r}"


@pytest.mark.parametrize("delay", [0.0, 0.25, 0.5])
def test_fschedd_killed_during_vacate(e2e, build_dir, cluster, test_user, reference, delay):
    c = cluster
    jid, d = start_job(c, e2e, build_dir, f"vacate-{delay}", test_user)
    w = Watch(d)
    p = subprocess.Popen([str(c.bin / "scontrol"), "checkpoint", "vacate", str(jid)], env=c.env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_dump_started(c, jid)
    time.sleep(delay)
    restart_node(c)
    p.wait(120)
    cks = settled(c, jid)
    # The dump's runner outlives fschedd: the image is complete, so the checkpoint is
    # Present, never Failed because the daemon died.
    assert [x["status"] for x in cks] == ["Present"], cks
    job = c.wait_state(jid, "PENDING", timeout=30)
    assert job["reason"] == "Vacated", job
    assert not memhogs(d), "a vacated job must not run"
    assert_disk_matches_records(c, jid)
    c.cmd("scontrol", "checkpoint", "restart", jid, user=test_user)
    finish_and_compare(c, jid, d, reference, w)
    assert c.job(jid)["restarts"] == 1


@pytest.mark.parametrize("delay", [0.05, 0.2])
def test_fschedd_killed_during_checkpoint(e2e, build_dir, cluster, test_user, reference, delay):
    c = cluster
    jid, d = start_job(c, e2e, build_dir, f"ckpt-{delay}", test_user)
    w = Watch(d)
    p = subprocess.Popen([str(c.bin / "scontrol"), "checkpoint", "create", str(jid)], env=c.env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_dump_started(c, jid)
    time.sleep(delay)
    restart_node(c)
    p.wait(120)
    cks = settled(c, jid)
    assert [x["status"] for x in cks] == ["Present"], cks
    assert c.job(jid)["state"] in ("RUNNING", "COMPLETED")
    assert_disk_matches_records(c, jid)
    finish_and_compare(c, jid, d, reference, w)


def cluster_dumpers(c: Cluster) -> list[int]:
    """The engines dumping into cluster c's checkpoint directory: fsched-ckpt itself
    (argv[0]), not the fschedd runner whose arguments name it, and not the dumps of
    another test file's cluster running at the same time."""
    found = []
    for e in os.scandir("/proc"):
        if not e.name.isdigit():
            continue
        try:
            argv = Path(f"/proc/{e.name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (len(argv) > 1 and argv[0].endswith(b"/fsched-ckpt") and argv[1] == b"dump"
                and any(a.startswith(bytes(c.ckpt_dir) + b"/") for a in argv)):
            found.append(int(e.name))
    return found


def test_dumper_and_fschedd_killed_image_failed_and_removed(e2e, build_dir, cluster, test_user, reference):
    """fschedd and the engine both killed mid-dump: the image is incomplete, so Failed,
    and nothing of it stays on disk; the job runs on unharmed."""
    c = cluster
    jid, d = start_job(c, e2e, build_dir, "dumper-killed", test_user)
    w = Watch(d)
    p = subprocess.Popen([str(c.bin / "scontrol"), "checkpoint", "create", str(jid)], env=c.env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_dump_started(c, jid)
    c.kill_node("node1", signal.SIGKILL)
    dumpers = cluster_dumpers(c)
    assert dumpers, "the dump should still be running"
    for pid in dumpers:
        os.kill(pid, signal.SIGKILL)
    c.start_node("node1")
    p.wait(120)
    cks = settled(c, jid)
    assert [x["status"] for x in cks] == ["Failed"], cks
    assert_disk_matches_records(c, jid)
    loc = Path(cks[0]["location"])
    assert not loc.exists()
    finish_and_compare(c, jid, d, reference, w)
    # A Failed image that reappears on disk (left by an older controller, say) and a
    # stray DIR.tmp are removed when fschedctld starts; the record stays, with its reason.
    loc.mkdir(mode=0o700)
    (loc / "pages.img").write_bytes(b"x" * 4096)
    Path(f"{loc}.tmp").mkdir(mode=0o700)
    c.kill_ctld()
    c.start_ctld()
    c.wait_for(lambda: not loc.exists() and not Path(f"{loc}.tmp").exists(), 20, "the startup sweep")
    after = c.checkpoints(jid)
    assert after[0]["status"] == "Failed" and after[0]["reason"] == cks[0]["reason"], after


@pytest.mark.parametrize("delay", [0.05, 0.3])
def test_fschedd_killed_during_restore(e2e, build_dir, cluster, test_user, reference, delay):
    c = cluster
    jid, d = start_job(c, e2e, build_dir, f"restore-{delay}", test_user)
    w = Watch(d)
    c.cmd("scontrol", "checkpoint", "create", jid, user=test_user)
    c.cmd("scontrol", "checkpoint", "vacate", jid, user=test_user)
    c.wait_state(jid, "PENDING", timeout=30)
    ops = c.root / "spool" / "ops-node1" / f"job{jid}.op.json"
    c.cmd("scontrol", "checkpoint", "restart", jid, user=test_user)
    c.wait_for(lambda: ops.exists() and json.loads(ops.read_text())["kind"] == "restore", 30,
               "the restore to start", interval=0.01)
    time.sleep(delay)
    restart_node(c)
    job = c.wait_state(jid, ("RUNNING", "COMPLETED"), timeout=60)
    # Both images are valid: neither may be marked Failed because fschedd died.
    assert [x["status"] for x in c.checkpoints(jid)] == ["Present", "Present"], c.checkpoints(jid)
    if delay > 0.1:
        finish_and_compare(c, jid, d, reference, w)
        assert c.job(jid)["restarts"] == 1
        return
    # A requeue right after: the restored run is tracked, so it is stopped before the
    # job starts again from scratch; never two copies at once.
    c.wait_for(lambda: not c.job(jid).get("restore_from"), 60, "the restore to be confirmed")
    if c.job(jid)["state"] == "RUNNING":
        c.cmd("scontrol", "requeue", jid, user=test_user)
    c.wait_state(jid, "COMPLETED", timeout=120)
    assert w.stop() <= 1, "the job ran twice at once"
    out = out_of(d, jid)
    assert out.endswith(reference) and out.count(b"ok ") == 1, out


def test_fschedctld_killed_during_vacate(e2e, build_dir, cluster, test_user, reference):
    c = cluster
    jid, d = start_job(c, e2e, build_dir, "ctld-vacate", test_user)
    w = Watch(d)
    p = subprocess.Popen([str(c.bin / "scontrol"), "checkpoint", "vacate", str(jid)], env=c.env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_dump_started(c, jid)
    time.sleep(0.2)
    c.kill_ctld()
    p.wait(60)
    c.start_ctld()
    cks = settled(c, jid)
    assert [x["status"] for x in cks] == ["Present"], cks
    job = c.wait_state(jid, "PENDING", timeout=30)
    assert job["reason"] == "Vacated", job
    assert_disk_matches_records(c, jid)
    c.cmd("scontrol", "checkpoint", "restart", jid, user=test_user)
    finish_and_compare(c, jid, d, reference, w)


def test_fschedctld_killed_during_restore(e2e, build_dir, cluster, test_user, reference):
    """The restore's answer never reaches the controller: the restarted controller keeps
    the job where it was placed and takes the node's report, not starting it again."""
    c = cluster
    jid, d = start_job(c, e2e, build_dir, "ctld-restore", test_user)
    w = Watch(d)
    c.cmd("scontrol", "checkpoint", "vacate", jid, user=test_user)
    c.wait_state(jid, "PENDING", timeout=30)
    ops = c.root / "spool" / "ops-node1" / f"job{jid}.op.json"
    c.cmd("scontrol", "checkpoint", "restart", jid, user=test_user)
    c.wait_for(lambda: ops.exists() and json.loads(ops.read_text())["kind"] == "restore", 30,
               "the restore to start", interval=0.01)
    c.kill_ctld()
    c.start_ctld()
    c.wait_for(lambda: not c.job(jid).get("restore_from"), 60, "the restore to be confirmed")
    assert [x["status"] for x in c.checkpoints(jid)] == ["Present"], c.checkpoints(jid)
    finish_and_compare(c, jid, d, reference, w)
    assert c.job(jid)["restarts"] == 1


def test_timed_out_image_removed(e2e, build_dir, test_user):
    """A dump stopped by CheckpointTimeout leaves no image and no DIR.tmp; the record
    stays, Timeout, with its reason."""
    c = Cluster(build_dir, e2e.jobs_dir.parent / "cluster-faults-timeout", CheckpointTimeout=1).start()
    try:
        d = workdir(e2e, build_dir, "timeout", test_user)
        # 3 GiB of random pages: a dump of 1 GiB sometimes finished within the 1 s.
        (d / "job.sh").write_text(JOB_SH.replace(f"memhog {MEM_MIB}", "memhog 3072"))
        jid = c.sbatch("job.sh", user=test_user, cwd=d)
        c.wait_for(lambda: (d / f"slurm-{jid}.out").exists() and b"ready" in out_of(d, jid), 60, "ready")
        r = c.cmd("scontrol", "checkpoint", "create", jid, check=False)
        assert r.returncode != 0
        cks = settled(c, jid)
        assert [x["status"] for x in cks] == ["Timeout"], cks
        assert "CheckpointTimeout" in cks[0]["reason"], cks
        assert_disk_matches_records(c, jid)
        c.cmd("scancel", jid)
        c.wait_state(jid, "CANCELLED", timeout=30)
    finally:
        c.stop()
