"""One kind of kernel state at a time: ckpt_kind holds only a pipe, a FIFO, a Unix
socket pair, an eventfd, an epoll instance, a timerfd, a signalfd, an interval timer,
a shared memfd, a set of process-control attributes (scheduling, timer slack,
parent-death signal, subreaper, THP, oom_score_adj, membarrier), children stopped by
job control, zombies, or a thread in seccomp strict mode, and is dumped twice (the
second time after its restore) and restored; its output and exit status must equal
the uninterrupted run's. Parametrized by kind, so a failure names the kind that
broke. (Deleted files, inotify and SysV shared memory alone: test_fsobjects.py.)"""
from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Callable

import pytest

from ckpt_e2e import (E2E, JobSpec, alive, kill_job_processes, ns_pid, proc_state,
                      single_error_line)
from test_ipc import checkpoint_run, fds_of_kind

pytestmark = pytest.mark.slow

ROUNDS = 60
TICK_MS = 50
SIGUSR1 = 10
SIGSTOP, SIGTSTP = 19, 20


def _fds(m: dict, kind: str) -> list[dict]:
    return [f for p in m["processes"] for f in p.get("fds", []) if f.get("kind") == kind]


def _buffered_pipe(m: dict, named: bool) -> None:
    assert _fds(m, "fifo" if named else "pipe"), "no such fd in the image"
    pipes = [p for p in m["pipes"] if bool(p["path"]) == named]
    assert len(pipes) == 1 and pipes[0]["bytes"] > 0, m["pipes"]


def _queued_socket(m: dict) -> None:
    assert len(fds_of_kind(m, "unix")) == 2, m["sockets"]
    assert sum(len(s["queued"]) for s in m["sockets"]) > 0, m["sockets"]


def _procattrs(m: dict):
    """The attributes ckpt_kind procattr sets are in the image (procattr.h), so that a
    restore that passes the program's own check did not pass by luck."""
    p = m["processes"][-1]
    main, other = p["threads"][0], p["threads"][1]
    got = (p["child_subreaper"], p["thp_disable"], p["oom_score_adj"], p["membarrier"] != 0,
           main["sched"]["policy"], main["sched"]["nice"], main["sched"]["flags"],
           main["timerslack_ns"], main["pdeath_signal"], other["sched"]["policy"],
           other["timerslack_ns"])
    assert got == (True, 1, 345, True, 3, 7, 1, 123456, signal.SIGUSR2, 5, 777000), got


def _zombies(m: dict):
    """ckpt_kind zombie's three children are zombies in the image, with their statuses
    (waitpid(2) form) and process groups: killed by SIGKILL leading its own group,
    exit 7 and killed by SIGUSR1 in the parent's group."""
    parent = m["processes"][1]
    z = [(p["exit_status"], p["pgid"] == p["pid"], p["pgid"] == parent["pgid"])
         for p in m["processes"] if p["zombie"]]
    assert z == [(9, True, False), (7 << 8, False, True), (SIGUSR1, False, True)], z


# What the image must hold for each kind: the program really held that state when dumped.
KINDS: dict[str, Callable[[dict], None]] = {
    "pipe": lambda m: _buffered_pipe(m, named=False),
    "fifo": lambda m: _buffered_pipe(m, named=True),
    "unix": _queued_socket,
    "unix_dgram": _queued_socket,
    "eventfd": lambda m: _fds(m, "eventfd") or pytest.fail("no eventfd in the image"),
    "epoll": lambda m: [len(f["targets"]) for f in _fds(m, "epoll")] == [1]
    or pytest.fail(f"epoll fds: {_fds(m, 'epoll')}"),
    "timerfd": lambda m: [f["interval_ns"] for f in _fds(m, "timerfd")] == [TICK_MS * 1000000]
    or pytest.fail(f"timerfds: {_fds(m, 'timerfd')}"),
    "signalfd": lambda m: [f["sigmask"] for f in _fds(m, "signalfd")] == [1 << (SIGUSR1 - 1)]
    or pytest.fail(f"signalfds: {_fds(m, 'signalfd')}"),
    "itimer": lambda m: any(t["which"] == 0 for p in m["processes"] for t in p.get("itimers", []))
    or pytest.fail("no ITIMER_REAL in the image"),
    "itimer_expired": lambda m: [(t["which"], t["value_usec"], t["interval_usec"])
                                 for p in m["processes"] for t in p.get("itimers", [])] == [(0, 0, 50000)]
    or pytest.fail(f"itimers: {[p.get('itimers') for p in m['processes']]}"),
    "memfd": lambda m: len(m["shm"]) == 1 or pytest.fail(f"shm objects: {m['shm']}"),
    "procattr": lambda m: _procattrs(m),
    "stopped": lambda m: sorted(p["stop_signal"] for p in m["processes"]) == [0, 0, SIGSTOP, SIGTSTP]
    or pytest.fail(f"stop signals: {[p['stop_signal'] for p in m['processes']]}"),
    "zombie": _zombies,
    # The program checks its /proc itself; the image has the init and the child.
    "procfs": lambda m: None,
    "seccomp_strict": lambda m: [t["confinement"]["seccomp_mode"] for t in m["processes"][-1]["threads"]]
    == [0, 1] or pytest.fail(f"threads: {m['processes'][-1]['threads']}"),
    "chroot": lambda m: m["processes"][-1]["root"].endswith("/jail")
    or pytest.fail(f"root directories: {[p.get('root') for p in m['processes']]}"),
    "cgroup": lambda m: [p.get("cgroup") for p in m["processes"]] == ["", "", "kind-sub"]
    or pytest.fail(f"cgroups: {[p.get('cgroup') for p in m['processes']]}"),
    "loginuid": lambda m: m["processes"][-1]["loginuid"] == "4242"
    or pytest.fail(f"login uids: {[p.get('loginuid') for p in m['processes']]}"),
}


# Processes in the image besides init and ckpt_kind: its children.
CHILDREN = {"stopped": 2, "zombie": 3, "procfs": 1, "chroot": 1, "cgroup": 1}


@contextlib.contextmanager
def _own_cgroup():
    """Runs the test (and so every job and restore it starts) in a cgroup v2 of its own
    below this process's, which has no controllers enabled for its children (unlike the
    root cgroup, whose children carry limits that a restore would not give back)."""
    mount = next(l.split()[1] for l in open("/proc/self/mounts") if l.split()[2] == "cgroup2")
    own = next(l[3:].strip() for l in open("/proc/self/cgroup") if l.startswith("0::"))
    home = Path(mount + ("" if own == "/" else own))
    mine = home / f"fsched-e2e-{os.getpid()}"
    mine.mkdir(exist_ok=True)
    (mine / "cgroup.procs").write_text(str(os.getpid()))
    try:
        yield
    finally:
        (home / "cgroup.procs").write_text(str(os.getpid()))
        for d in sorted(mine.rglob("*"), reverse=True):
            if d.is_dir():
                d.rmdir()
        mine.rmdir()


@pytest.mark.parametrize("kind", KINDS)
def test_kind(e2e: E2E, kind: str):
    spec = JobSpec(name=f"kind_{kind}",
                   argv=[str(e2e.program("ckpt_kind")), kind, str(ROUNDS), str(TICK_MS)],
                   progress=("lines", "stdout"), timeout=120)
    with _own_cgroup() if kind == "cgroup" else contextlib.nullcontext():
        ref = e2e.reference(spec)
        out = ref.snap["stdout"].text
        assert ref.status == 0 and out.endswith(f"done {kind} {ROUNDS}\n"), out[-500:]

        def check(job, stats: dict, m: dict):
            assert stats["processes"] == 2 + CHILDREN.get(kind, 0), stats  # init and ckpt_kind
            KINDS[kind](m)
        # Twice: the second dump, of the restored job, sees what the restore really rebuilt.
        checkpoint_run(e2e, spec, [0.3, 0.6], "middle", check_dump=check)


@pytest.mark.parametrize("kind", ["stopped", "seccomp_strict", "procattr"])
def test_kind_survives_leave_running_dump(e2e: E2E, kind: str):
    """A dump that lets the job go on (--leave-running) gives its state back as it
    found it: children stay stopped, the strict-mode thread keeps echoing."""
    spec = JobSpec(name=f"kind_lr_{kind}",
                   argv=[str(e2e.program("ckpt_kind")), kind, str(ROUNDS), str(TICK_MS)],
                   progress=("lines", "stdout"), timeout=120)
    ref = e2e.reference(spec)
    job = e2e.job(spec)
    job.start_detached()
    try:
        job.wait_progress(ref, 0.4)
        image = e2e.image(f"kind_lr/{kind}")
        r, stats = e2e.engine.dump(job.init_pid, image, leave_running=True, timeout=60)
        assert r.rc == 0, r.stderr
        assert job.wait_end() == ref.status
        job.assert_matches(ref, " after a --leave-running dump")
    finally:
        kill_job_processes(job.marker)


# Kinds the engine refuses: the word the error must hold.
REFUSED = {"userns": "user namespace", "cgroup_outside": "outside its job's cgroup",
           "cgroup_threaded": "of type threaded", "cgroup_v1": "in cgroup v1 hierarchy",
           "zombie_core": "with a core dump"}


@pytest.mark.parametrize("kind", REFUSED)
def test_refused_kind(e2e: E2E, kind: str):
    """The dump fails as unsupported (exit 4) with one line naming the process and what
    it holds, leaves no image, and the job finishes as if nothing had happened."""
    if kind == "zombie_core":
        # A core file in the process's working directory, or no core dump (WCOREDUMP)
        # at all; the test never changes this global setting.
        pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
        if pattern.startswith("|") or "/" in pattern:
            pytest.skip(f"core_pattern {pattern!r} does not write a file in the working directory")
    spec = JobSpec(name=f"kind_refused_{kind}",
                   argv=[str(e2e.program("ckpt_kind")), kind, str(ROUNDS), str(TICK_MS)],
                   progress=("lines", "stdout"), timeout=120)
    with _own_cgroup() if kind.startswith("cgroup") else contextlib.nullcontext():
        _refused_run(e2e, spec, kind)


def _refused_run(e2e: E2E, spec: JobSpec, kind: str):
    ref = e2e.reference(spec)
    assert ref.status == 0, ref.snap["stdout"].text[-500:]
    job = e2e.job(spec)
    job.start_detached()
    try:
        job.wait_progress(ref, 0.3)
        image = e2e.image(f"kind_refused/{kind}")
        r, _ = e2e.engine.dump(job.init_pid, image, timeout=60)
        line = single_error_line(r)
        assert r.rc == 4, f"exit {r.rc}, not 4 (unsupported): {line}"
        assert REFUSED[kind] in line and "not supported" in line, line
        pids = [(p, ns_pid(p)) for p in job.job_pids()]
        zombies = {p for p, _ in pids if proc_state(p) == "Z"}  # zombie_core's child
        assert any(f"process {h} (pid {n} in the job)" in line for h, n in pids), (line, pids)
        assert not image.exists(), "a refused dump left an image"
        assert all(alive(p) or p in zombies for p, _ in pids)
        assert job.wait_end() == ref.status
        job.assert_matches(ref, " after a refused dump")
    finally:
        kill_job_processes(job.marker)
