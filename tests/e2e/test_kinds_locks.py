"""File locks and fd owners, one kind at a time (issue 13): ckpt_lock_kind holds POSIX
record locks, OFD locks, flock(2) locks, leases, or fds with a signal-driven I/O owner
and signal, and is dumped midway and restored; its output and exit status must equal
the uninterrupted run's. The lock kinds are checked every round from a second process
of the job, and the image must hold the locks (so a pass is not luck). A lease being
broken, or a flock on a directory, cannot be restored: the dump must refuse it and the
job run on unharmed."""
from __future__ import annotations

import ctypes
import fcntl
import os
import re
import signal
from pathlib import Path
from typing import Callable

import pytest

from ckpt_e2e import E2E, JobSpec, ns_pid
from test_ipc import checkpoint_run, fds_matching, names_one_fd, refused_dump_run

pytestmark = pytest.mark.slow

ROUNDS = 60
TICK_MS = 50


def _locks(m: dict) -> list[tuple[int, int, str, list[tuple]]]:
    """(pid, fd, path's name, [(kind, write, start, end, to_eof)]) of every fd with locks."""
    return [(p["pid"], f["fd"], Path(f["path"]).name,
             [tuple(l) for l in f["locks"]])  # [kind, write, start, end, to_eof]
            for p in m["processes"] for f in p.get("fds", []) if f.get("locks")]


def _expect_locks(want: list[tuple[str, list[tuple]]]) -> Callable[[dict], None]:
    """The image holds exactly these locks, by file name, each on one fd of the holder
    (the job's last-but-one process: init, holder, checker)."""
    def check(m: dict) -> None:
        got = sorted((name, sorted(locks)) for pid, fd, name, locks in _locks(m))
        assert got == sorted((n, sorted(l)) for n, l in want), got
        holder = m["processes"][1]["pid"]
        assert all(pid == holder for pid, *_ in _locks(m)), _locks(m)
    return check


def _owners(m: dict) -> None:
    """The socket end owned by the process with SIGUSR1, the pipe end owned by its
    second thread with SIGRTMIN, both O_ASYNC."""
    p = m["processes"][-1]
    owned = sorted((f["kind"], f["owner_type"], f["owner"], f["owner_signal"], bool(f["flags"] & 0o20000))
                   for f in p["fds"] if f.get("owner"))
    second_tid = p["threads"][1]["tid"]
    assert owned == [("pipe", 0, second_tid, signal.SIGRTMIN, True),
                     ("unix", 1, p["pid"], signal.SIGUSR1, True)], owned


def _flock_mapped(m: dict) -> None:
    """No fd holds the lock: the holder's shared mapping of flock.m does."""
    assert not _locks(m), _locks(m)
    vmas = [(Path(v["path"]).name, v["shared"], v.get("flock", 0))
            for v in m["processes"][1]["vmas"] if v.get("flock")]
    assert vmas == [("flock.m", True, 2)], vmas  # LOCK_EX


KINDS: dict[str, Callable[[dict], None]] = {
    "posix": _expect_locks([("posix.lock", [("posix", True, 0, 99, False),
                                            ("posix", True, 200, 299, False),
                                            ("posix", False, 1000, 1999, False),
                                            ("posix", True, 4096, 0, True)])]),
    "ofd": _expect_locks([("ofd.lock", [("ofd", True, 0, 99, False),
                                        ("ofd", False, 500, 599, False)])]),
    "flock": _expect_locks([("flock.a", [("flock", True, 0, 0, True)]),
                            ("flock.b", [("flock", False, 0, 0, True)])]),
    "lease": _expect_locks([("lease.r", [("lease", False, 0, 0, True)]),
                            ("lease.w", [("lease", True, 0, 0, True)])]),
    "fown": _owners,
    "flock_mapped": _flock_mapped,
}


@pytest.mark.parametrize("kind", KINDS)
def test_lock_kind(e2e: E2E, kind: str):
    spec = JobSpec(name=f"lock_kind_{kind}",
                   argv=[str(e2e.program("ckpt_lock_kind")), kind, str(ROUNDS), str(TICK_MS)],
                   progress=("lines", "stdout"), timeout=120)
    ref = e2e.reference(spec)
    out = ref.snap["stdout"].text
    assert ref.status == 0 and out.endswith(f"done {kind} {ROUNDS}\n"), out[-500:]

    def check(job, stats: dict, m: dict):
        # init, the holder and (for locks) its checker child
        assert stats["processes"] == (2 if kind == "fown" else 3), stats
        KINDS[kind](m)
    checkpoint_run(e2e, spec, [0.3, 0.6], "middle", check_dump=check)


def _names_mapping(name: str) -> Callable[[list[int]], Callable[[str], None]]:
    """The check that an error line names a process of the job (host or job pid) and
    its mapping of `name`."""
    def names(pids: list[int]) -> Callable[[str], None]:
        ids = set(pids) | {n for n in map(ns_pid, pids) if n}

        def check(line: str):
            assert "mapping" in line and any(re.search(rf"\b{p}\b", line) for p in ids), \
                f"error does not name a process of the job {sorted(ids)} and its mapping: {line}"
        return check
    return names


def _names_fd(name: str) -> Callable[[list[int]], Callable[[str], None]]:
    return lambda pids: names_one_fd(fds_matching(pids, lambda t: t.endswith("/" + name)), name)


@pytest.mark.parametrize("kind,name,words,names", [
    ("lease_breaking", "lease.b", ("being broken",), _names_fd),
    ("flock_dir", "lockdir", ("flock write lock", "kind dir"), _names_fd),
    # An OFD lock held only through a mapping: /proc/locks shows no pid for it, so it
    # cannot be told from another process's lock on the file; refused, naming the mapping.
    ("ofd_mapped", "ofd.m", ("OFD write lock", "through no fd of the job"), _names_mapping),
], ids=["lease_breaking", "flock_dir", "ofd_mapped"])
def test_lock_refused(e2e: E2E, kind: str, name: str, words: tuple[str, ...],
                      names: Callable[[str], Callable[[list[int]], Callable[[str], None]]]):
    spec = JobSpec(name=f"lock_kind_{kind}",
                   argv=[str(e2e.program("ckpt_lock_kind")), kind, "80", str(TICK_MS)],
                   progress=("lines", "stdout"), timeout=120)
    refused_dump_run(e2e, spec, f"done {kind} 80\n", (name, *words), names(name))


def _set_owner_from_outside(pid: int, fd: int, owner: int) -> None:
    """F_SETOWN on the open file description of fd `fd` of process `pid` (a copy taken
    with pidfd_getfd(2)), naming `owner`, a process outside the job: as an fd inherited
    from a parent outside the job would carry it."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        copy = libc.syscall(438, pidfd, fd, 0)  # SYS_pidfd_getfd
        if copy < 0:
            raise OSError(ctypes.get_errno(), "pidfd_getfd")
        try:
            fcntl.fcntl(copy, fcntl.F_SETOWN, owner)
        finally:
            os.close(copy)
    finally:
        os.close(pidfd)


def test_fown_outside_refused(e2e: E2E):
    """An fd whose signal-driven I/O owner is a process outside the job (here the test
    itself, set on the job's open file description from outside, with no O_ASYNC so no
    signal goes anywhere): the dump refuses it, naming the process and fd, and the job
    then finishes unharmed."""
    spec = JobSpec(name="lock_kind_fown_outside",
                   argv=[str(e2e.program("ckpt_lock_kind")), "posix", "80", str(TICK_MS)],
                   progress=("lines", "stdout"), timeout=120)

    def names(pids: list[int]) -> Callable[[str], None]:
        fds = fds_matching(pids, lambda t: t.endswith("/posix.lock"))
        assert fds, "the job holds no posix.lock fd"
        _set_owner_from_outside(fds[0][0], fds[0][1], os.getpid())
        return names_one_fd(fds, "posix.lock")
    refused_dump_run(e2e, spec, "done posix 80\n",
                     ("signal-driven I/O owner", f"process {os.getpid()} on the host",
                      "not a thread, process or process group of the job"), names)
