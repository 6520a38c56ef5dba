"""Real programs checkpointed part-way and restored: the restored run's stdout, stderr,
output files (content and owner) and exit status must equal the uninterrupted run's."""
from __future__ import annotations

import signal

import pytest

import specs
from ckpt_e2e import E2E, Job, JobSpec, proc_comm, proc_uids, user_ids

MiB = specs.MiB

# Fractions of a job's work at which it is dumped.
POINTS = {"early": 0.15, "middle": 0.5, "late": 0.85}
# The bash script's four stages are python, sha256sum, sort and xz: dump it a little
# into the first, the third and the fourth, while bash waits for that program.
BASH_POINTS = {"early": (0.05, "python3"), "middle": (0.55, "sort"), "late": (0.8, "xz")}

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("point", POINTS)
def test_python_as_user(e2e: E2E, test_user, point):
    spec = specs.python_job("python_user", user=test_user)
    ref = _check_runs_as(e2e, spec, test_user, point)
    # The job prints its credentials when it ends, after the restore.
    uid, gid = user_ids(test_user)
    assert f"done uid={uid} euid={uid} gid={gid} groups=[{gid}]" in ref.snap["stdout"].text
    # Its own soft limits, printed after the restore (the restored run's output must
    # equal this one's): the dump reads them with prlimit(2).
    assert "limits=[(777, " in ref.snap["stdout"].text, ref.snap["stdout"].text[-300:]


@pytest.mark.parametrize("point", POINTS)
def test_xz_single_thread_as_user(e2e: E2E, test_user, point):
    spec = specs.xz_job(e2e, "xz_t1_user", threads=1, size=5 * MiB, user=test_user)
    _check_runs_as(e2e, spec, test_user, point)


def _check_runs_as(e2e: E2E, spec, user: str, point: str):
    uid, _ = user_ids(user)
    ref = e2e.reference(spec)
    # The reference run really ran as the user: the files it created are the user's.
    created = [rel for rel in ref.snap if rel.startswith("work/")]
    assert created and all(ref.snap[rel].uid == uid for rel in created), ref.snap

    def before_dump(job: Job):
        pids = job.job_pids()
        assert pids, "the job has no process below its init"
        for p in pids:
            assert proc_uids(p) == (uid,) * 4, f"job process {p} has uids {proc_uids(p)}"

    stats = e2e.checkpoint_run(spec, [POINTS[point]], point, before_dump=before_dump)
    assert stats[0]["processes"] == 2, stats
    return ref


@pytest.mark.parametrize("point", ["early", "late"])
def test_python_with_pipes_to_child(e2e: E2E, point):
    """Two processes connected by pipes: python writes lines to a /bin/cat child and
    reads them back."""
    spec = specs.python_job("python_pipechild", steps=150, mode="pipechild")

    def check(job: Job, stats: dict):
        assert stats["processes"] == 3, stats  # init, python, cat
    e2e.checkpoint_run(spec, [POINTS[point]], point, check_dump=check)


@pytest.mark.parametrize("point", POINTS)
def test_sha256sum(e2e: E2E, point):
    spec = specs.sha256_job(e2e)
    e2e.checkpoint_run(spec, [POINTS[point]], point)


def test_sha256sum_dumped_with_direct_io(e2e: E2E):
    """Twice dumped with O_DIRECT (an image read back from the disk, not the page
    cache), the second time from the restored run."""
    spec = specs.sha256_job(e2e)
    e2e.checkpoint_run(spec, [0.3, 0.6], "direct_io", dump_args=("--direct-io",))


@pytest.mark.parametrize("point", POINTS)
def test_sort_parallel(e2e: E2E, point):
    spec = specs.sort_job(e2e)
    e2e.checkpoint_run(spec, [POINTS[point]], point)


@pytest.mark.parametrize("point", POINTS)
def test_xz_two_threads(e2e: E2E, point):
    spec = specs.xz_job(e2e, "xz_t2", threads=2, size=8 * MiB)

    def check(job: Job, stats: dict):
        # xz's main thread plus two compressor threads, and the init.
        assert stats["processes"] == 2 and stats["threads"] >= 4, stats
    e2e.checkpoint_run(spec, [POINTS[point]], point, check_dump=check)


@pytest.mark.parametrize("point", BASH_POINTS)
def test_bash_script(e2e: E2E, point):
    spec = specs.bash_job(e2e)
    ref = e2e.reference(spec)
    assert ref.status == 5
    fraction, program = BASH_POINTS[point]

    def before_dump(job: Job):
        running = [proc_comm(p) for p in job.job_pids()]
        assert running[:1] == ["bash"] and program in running, f"running: {running}"
    e2e.checkpoint_run(spec, [fraction], point, before_dump=before_dump)


@pytest.mark.parametrize("point", POINTS)
def test_ckpt_threads(e2e: E2E, point):
    spec = specs.threads_job(e2e)
    ref = e2e.reference(spec)
    assert ref.status == 3

    def check(job: Job, stats: dict):
        # init + ckpt_threads with main, reader and four workers.
        assert stats["processes"] == 2 and stats["threads"] == 7, stats
    e2e.checkpoint_run(spec, [POINTS[point]], point, check_dump=check)


def test_ckpt_threads_chain_of_five(e2e: E2E):
    """One job through five dump/restore cycles (restored detached, dumped again ...)."""
    spec = specs.threads_job(e2e, name="ckpt_threads_chain", rounds=300, exit_code=0)
    stats = e2e.checkpoint_run(spec, [0.1, 0.25, 0.4, 0.55, 0.7], "chain")
    assert len(stats) == 5
    assert all(s["processes"] == 2 and s["threads"] == 7 for s in stats), stats


# Signal dispositions as the kernel holds them: the program prints its own SigIgn and
# SigCgt (proc(5)) every step, sends itself an ignored SIGUSR2 (fatal at SIG_DFL) and a
# caught SIGUSR1, and forks a child that, with SIGCHLD ignored, is reaped by the kernel
# (waitpid then fails with ECHILD; at SIG_DFL it would return the child's status).
SIGNALS_PY = r'''
import os, signal, sys, time
caught = 0
def on_usr1(sig, frame):
    global caught
    caught += 1
signal.signal(signal.SIGUSR1, on_usr1)
signal.signal(signal.SIGUSR2, signal.SIG_IGN)
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
signal.signal(signal.SIGRTMIN + 3, signal.SIG_IGN)
def masks():
    st = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
    return st["SigIgn"].strip(), st["SigCgt"].strip()
for step in range(int(sys.argv[1])):
    os.kill(os.getpid(), signal.SIGUSR2)
    os.kill(os.getpid(), signal.SIGUSR1)
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    time.sleep(0.03)
    try:
        reaped = "status %d" % os.waitpid(pid, 0)[1]
    except ChildProcessError:
        reaped = "reaped by the kernel"
    print("step", step, "ignored", *masks(), "caught", caught, reaped, flush=True)
'''


def test_python_signal_dispositions(e2e: E2E):
    spec = JobSpec(name="py_signals", argv=[specs.PYTHON, "{work}/signals.py", "150"],
                   setup=lambda work: (work / "signals.py").write_text(SIGNALS_PY),
                   inputs=("signals.py",), progress=("lines", "stdout"), timeout=120)
    ref = e2e.reference(spec)
    out = ref.snap["stdout"].text
    assert ref.status == 0 and "caught 150 reaped by the kernel\n" in out, out[-300:]

    def check(job: Job, stats: dict):
        assert stats["processes"] == 2, stats
    # Restored from a shell started with nohup: ignored signals pass through fork and
    # exec, but the restored job must have its own dispositions, not the restorer's.
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        e2e.checkpoint_run(spec, [0.3, 0.7], "twice", check_dump=check)
    finally:
        signal.signal(signal.SIGHUP, old)
