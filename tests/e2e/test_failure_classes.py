"""Failure classes end to end (docs/failures.md): fsched-ckpt's exit code for each
class, and the controller's reaction to a restore that fails for a passing reason (the
checkpoint stays Present and the restore is retried, on the other node) or for its
image (the checkpoint is Failed at once and the job falls back)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

import specs
from ckpt_e2e import E2E, JobSpec, kill_job_processes, single_error_line
from sched_e2e import Cluster
from test_failures import _resign, scratch
from test_sched import DELAY, STEPS, assert_same_as_reference, progress, workdir

PYTHON = "/usr/bin/python3"
EXIT_TRANSIENT, EXIT_USAGE, EXIT_IMAGE, EXIT_UNSUPPORTED = 1, 2, 3, 4


# --------------------------------------------------------------------------- the engine

def test_usage_errors_exit_2(e2e: E2E):
    d = scratch(e2e, "usage")
    for args in (["dump", "--no-such-option"], ["restore"], ["dump", "--pid", "1", "--dir", str(d / "x"),
                                                             "--compress-level", "99"]):
        r = e2e.engine.call(args, 30)
        assert r.rc == EXIT_USAGE, (args, r.rc, r.stderr)
    # A PID that is not a job's init: a wrong argument, not a failure of the job.
    sleeper = subprocess.Popen(["/bin/sleep", "60"])
    try:
        r = e2e.engine.call(["dump", "--pid", str(sleeper.pid), "--dir", str(d / "img")], 30)
        assert r.rc == EXIT_USAGE, (r.rc, r.stderr)
        assert str(sleeper.pid) in single_error_line(r)
    finally:
        sleeper.kill()
        sleeper.wait()
    help_text = e2e.engine.call(["--help"], 30).stdout
    assert "docs/failures.md" in help_text and "unsupported" in help_text, help_text


# A SysV semaphore set, which the engine refuses (docs/state-kinds.md); POSIX timers,
# the example here before, are restored now.
SYSV_SEM_PY = r'''
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
# semget(IPC_PRIVATE, 1, IPC_CREAT | 0600), in the job's own IPC namespace.
if libc.semget(0, 1, 0o1000 | 0o600) < 0:
    raise OSError(ctypes.get_errno(), "semget")
for step in range(int(sys.argv[1])):
    print("step", step, flush=True)
    time.sleep(0.05)
print("end", flush=True)
'''


def test_unsupported_state_exits_4(e2e: E2E):
    spec = JobSpec(name="sysv_sem", argv=[PYTHON, "{work}/sem.py", "80"],
                   setup=lambda work: (work / "sem.py").write_text(SYSV_SEM_PY), inputs=("sem.py",),
                   progress=("lines", "stdout"), timeout=60)
    ref = e2e.reference(spec)
    assert ref.status == 0, "the semaphore job fails on its own"
    job = e2e.job(spec)
    job.start_detached()
    try:
        job.wait_progress(ref, 0.3)
        image = e2e.image("classes/sysv_sem")
        r, _ = e2e.engine.dump(job.init_pid, image, timeout=60)
        line = single_error_line(r)
        assert r.rc == EXIT_UNSUPPORTED, (r.rc, line)
        assert "SysV semaphore" in line, line
        assert not image.exists()
        assert job.wait_end() == ref.status  # the refused dump left it running
        job.assert_matches(ref, " after a refused dump")
    finally:
        kill_job_processes(job.marker)


@pytest.fixture(scope="module")
def copied_exe_image(e2e: E2E):
    """memhog run from a copy of its executable in its work directory, dumped."""
    spec = specs.memhog_job(e2e, "memhog_classes", 32, exe="memhog_classes")
    ref = e2e.reference(spec)
    job = e2e.job(spec)
    job.start_detached()
    job.wait_progress(ref, 0.5)  # "ready"
    image = e2e.image("classes/original")
    e2e.dump_ok(job, image)
    return ref, job, image


def test_malformed_manifest_exits_3(e2e: E2E, copied_exe_image):
    """A manifest whose signature holds but whose content is not a manifest: the image
    is bad wherever it is restored."""
    ref, job, original = copied_exe_image
    image = e2e.image("classes/malformed")
    shutil.copytree(original, image)
    m = json.loads((image / "manifest.json").read_text())
    m["processes"][0]["exe"] = 5  # an integer where a path must be
    (image / "manifest.json").write_text(json.dumps(m, indent=1) + "\n")
    _resign(image)
    r = e2e.engine.call(["restore", "--dir", str(image)], 120)
    line = single_error_line(r)
    assert r.rc == EXIT_IMAGE, (r.rc, line)
    assert "malformed manifest" in line, line


@contextmanager
def moved_away(path: Path):
    """path missing for the duration (renamed to PATH.away), then put back."""
    away = path.with_name(path.name + ".away")
    path.rename(away)
    try:
        yield
    finally:
        away.rename(path)


def test_missing_executable_exits_1_then_restores(e2e: E2E, copied_exe_image):
    """The job's executable moved away on this node: transient. Put back, the same image
    restores and the job ends as it would have."""
    ref, job, image = copied_exe_image
    exe = job.work / "memhog_classes"
    with moved_away(exe):
        r = e2e.engine.call(["restore", "--dir", str(image)], 120)
        line = single_error_line(r)
        assert r.rc == EXIT_TRANSIENT, (r.rc, line)
        assert str(exe) in line and "missing" in line, line
    (job.work / "go").touch()
    r = e2e.restore_foreground(job, image)
    assert r.rc == ref.status, r.stderr
    job.assert_matches(ref)


# --------------------------------------------------------------------------- the controller

@pytest.fixture(scope="module")
def reference(e2e: E2E, test_user) -> dict[str, bytes]:
    """test_sched's uninterrupted run of its job script, made here in a directory of its
    own (test_sched's fixture of the same name would make its directory twice)."""
    d = workdir(e2e, "reference-classes", test_user)
    with open(d / "out.txt", "wb") as out:
        subprocess.run(["runuser", "-u", test_user, "--", "bash", "job.sh", str(STEPS), "0"], cwd=d,
                       stdout=out, stderr=subprocess.STDOUT, check=True, timeout=300)
    return {"out": (d / "out.txt").read_bytes(), "results.txt": (d / "results.txt").read_bytes(),
            "results.txt.xz": (d / "results.txt.xz").read_bytes()}


@pytest.fixture(scope="module")
def cluster2(e2e: E2E, build_dir):
    c = Cluster(build_dir, e2e.jobs_dir.parent / "cluster-classes", nodes=2).start()
    yield c
    c.stop()


def restore_attempts(log: str, jid: int, cid: int) -> list[str]:
    """The nodes the controller sent the restores of checkpoint cid of job jid to, in order."""
    return re.findall(rf"job {jid}: restoring from checkpoint {cid} on (\S+)", log)


def vacated_with_two_checkpoints(c: Cluster, d: Path, user: str) -> tuple[int, dict, dict]:
    jid = c.sbatch("job.sh", STEPS, DELAY, user=user, cwd=d)
    c.wait_for(lambda: progress(d, jid) >= 8, 60, "progress")
    c.cmd("scontrol", "checkpoint", "create", jid)
    c.wait_for(lambda: progress(d, jid) >= 16, 60, "progress")
    c.cmd("scontrol", "checkpoint", "vacate", jid)
    c.wait_state(jid, "PENDING", timeout=60)
    older, newest = c.checkpoints(jid)
    return jid, older, newest


def test_transient_restore_failure_keeps_the_checkpoint_and_retries_elsewhere(e2e: E2E, cluster2: Cluster,
                                                                                test_user, reference):
    c = cluster2
    d = workdir(e2e, "transient", test_user)
    jid, older, newest = vacated_with_two_checkpoints(c, d, test_user)
    cid = newest["checkpoint_id"]
    # A file the job has open for writing, missing on the node for a while (an NFS mount
    # not there yet, an administrator's mistake): the restore fails, the image is fine.
    with moved_away(d / "results.txt"):
        c.cmd("scontrol", "checkpoint", "restart", jid)
        c.wait_for(lambda: f"job {jid}: restore from checkpoint {cid} on" in c.log(), 60, "the failed restore")
    log = c.log()
    assert re.search(rf"job {jid}: restore from checkpoint {cid} on \S+ failed \(transient\)", log), log[-3000:]
    assert f"job {jid}: checkpoint {cid} stays Present" in log
    assert c.checkpoints(jid)[1]["status"] == "Present"
    c.wait_state(jid, "COMPLETED", timeout=240)
    cks = c.checkpoints(jid)
    assert [x["status"] for x in cks] == ["Present", "Present"], cks
    attempts = restore_attempts(c.log(), jid, cid)
    assert len(attempts) == 2 and attempts[0] != attempts[1], f"not retried on the other node: {attempts}"
    assert f"falling back to checkpoint" not in c.log().split(f"job {jid}: restart from checkpoint")[-1]
    assert_same_as_reference(d, jid, reference, test_user)


def test_transient_restore_failures_are_bounded_then_fall_back(e2e: E2E, cluster2: Cluster, test_user, reference):
    c = cluster2
    d = workdir(e2e, "bounded", test_user)
    jid, older, newest = vacated_with_two_checkpoints(c, d, test_user)
    cid = newest["checkpoint_id"]
    with moved_away(d / "results.txt"):
        c.cmd("scontrol", "checkpoint", "restart", jid)
        c.wait_for(lambda: c.checkpoints(jid)[1]["status"] == "Failed", 120, "the checkpoint to be given up")
    failed = c.checkpoints(jid)[1]
    assert failed["reason"].startswith("restore failed: 3 transient failures in a row"), failed
    assert "results.txt" in failed["reason"], failed
    assert len(restore_attempts(c.log(), jid, cid)) == 3
    # The fallback to the older checkpoint may itself have met the missing file once:
    # transient again, so it stays Present and the job completes from it.
    c.wait_state(jid, "COMPLETED", timeout=240)
    assert c.checkpoints(jid)[0]["status"] == "Present"
    assert f"job {jid}: falling back to checkpoint {older['checkpoint_id']}" in c.log()
    assert_same_as_reference(d, jid, reference, test_user)


def test_image_failure_fails_the_checkpoint_at_once(e2e: E2E, cluster2: Cluster, test_user, reference):
    c = cluster2
    d = workdir(e2e, "badimage", test_user)
    jid, older, newest = vacated_with_two_checkpoints(c, d, test_user)
    cid = newest["checkpoint_id"]
    image = Path(newest["location"])
    m = json.loads((image / "manifest.json").read_text())
    m["processes"][0]["exe"] = 5
    (image / "manifest.json").write_text(json.dumps(m, indent=1) + "\n")
    _resign(image)
    c.cmd("scontrol", "checkpoint", "restart", jid)
    c.wait_state(jid, "COMPLETED", timeout=240)
    cks = c.checkpoints(jid)
    assert cks[1]["status"] == "Failed", cks[1]
    assert cks[1]["reason"].startswith("restore failed: image failure: "), cks[1]["reason"]
    assert "malformed manifest" in cks[1]["reason"], cks[1]["reason"]
    assert cks[0]["status"] == "Present"
    assert len(restore_attempts(c.log(), jid, cid)) == 1, "an image failure was retried"
    assert image.is_dir(), "the bad image is kept for inspection"
    assert_same_as_reference(d, jid, reference, test_user)


def test_dump_of_unsupported_state_says_so_in_the_reason(e2e: E2E, cluster2: Cluster, test_user):
    """The class of a failed dump reaches the checkpoint's record through fschedd."""
    c = cluster2
    d = workdir(e2e, "unsupported", test_user)
    (d / "sem.py").write_text(SYSV_SEM_PY)
    (d / "sem.sh").write_text("#!/bin/bash\npython3 sem.py 600\n")
    uid, gid = os.stat(d).st_uid, os.stat(d).st_gid
    for f in ("sem.py", "sem.sh"):
        os.chown(d / f, uid, gid)
    jid = c.sbatch("sem.sh", user=test_user, cwd=d)
    try:
        c.wait_for(lambda: progress(d, jid) >= 5, 60, "progress")
        r = c.cmd("scontrol", "checkpoint", "create", jid, check=False)
        assert r.returncode != 0, r.stdout
        ck = c.checkpoints(jid)[0]
        assert ck["status"] == "Failed", ck
        assert ck["reason"].startswith("unsupported failure: "), ck["reason"]
        assert "SysV semaphore" in ck["reason"], ck["reason"]
        assert c.job(jid)["state"] == "RUNNING", "a refused dump must leave the job running"
    finally:
        c.cmd("scancel", jid, check=False)
        c.wait_state(jid, ("CANCELLED", "COMPLETED", "FAILED"), timeout=60)
