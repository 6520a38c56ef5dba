"""POSIX timers, pidfds, netlink sockets, AIO, io_uring, fanotify (issue 13, item 3):
ckpt_misc_kind holds one kind at a time and checks it every round. Restored kinds are
dumped midway and restored, twice; output and exit status must equal the uninterrupted
run's, and the image must hold the state (so a pass is not luck). Refused kinds: the
dump fails with exit code 4 naming the process (and the fd or mapping), and the job then
finishes as if never dumped."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from ckpt_e2e import E2E, JobSpec, ns_pid
from test_ipc import checkpoint_run, fds_matching, names_one_fd, refused_dump_run

pytestmark = pytest.mark.slow

ROUNDS = 60
TICK_MS = 50
O_NONBLOCK = 0o4000
SIGEV_SIGNAL, SIGEV_NONE, SIGEV_THREAD_ID = 0, 1, 4
SIGRTMIN = 34  # glibc's (the kernel's 32 and 33 are glibc's own)
CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_BOOTTIME = 0, 1, 7
CLOCK_PROCESS_CPUTIME = -6  # as the kernel keeps CLOCK_PROCESS_CPUTIME_ID (pid 0, SCHED)


def _posix_timers(m: dict):
    """The four timers of ckpt_misc_kind posix_timers, ids 1-4 (0 was deleted), each
    with its clock, notification, signal, value and time."""
    p = m["processes"][-1]
    t = {x["id"]: x for x in p.get("posix_timers", [])}
    assert sorted(t) == [1, 2, 3, 4], p.get("posix_timers")
    assert t[1]["clockid"] == CLOCK_MONOTONIC and t[1]["notify"] == SIGEV_SIGNAL, t[1]
    assert t[1]["signo"] == SIGRTMIN and t[1]["sigval"] != 0, t[1]
    assert t[1]["interval_ns"] == TICK_MS * 1_000_000, t[1]
    assert 0 < t[1]["value_ns"] <= TICK_MS * 1_000_000 or t[1]["signal_pending"], t[1]
    assert t[2]["clockid"] == CLOCK_REALTIME and t[2]["notify"] == SIGEV_NONE, t[2]
    assert 900e9 < t[2]["value_ns"] < 1000e9 and t[2]["interval_ns"] == 0, t[2]
    assert t[3]["clockid"] == CLOCK_BOOTTIME and t[3]["notify"] == SIGEV_SIGNAL, t[3]
    assert t[3]["value_ns"] == 0 and t[3]["interval_ns"] == 0, t[3]
    assert t[4]["clockid"] == CLOCK_PROCESS_CPUTIME and t[4]["notify"] == SIGEV_THREAD_ID, t[4]
    assert t[4]["signo"] == SIGRTMIN + 1 and t[4]["sigval"] == 77 and t[4]["tid"] == p["pid"], t[4]
    assert t[4]["value_ns"] > 990e9, t[4]
    # A timer's queued signal is the timer's, not among the pending signals to queue.
    assert all(x["signal_pending"] is False for x in (t[2], t[3], t[4])), t


def _pidfd(m: dict):
    """Two pidfds in the program: of its child (O_NONBLOCK) and of itself."""
    prog, child = m["processes"][-2], m["processes"][-1]
    fds = [f for f in prog["fds"] if f["kind"] == "pidfd"]
    assert sorted(f["pidfd_pid"] for f in fds) == sorted([prog["pid"], child["pid"]]), fds
    for f in fds:
        assert bool(f["flags"] & O_NONBLOCK) == (f["pidfd_pid"] == child["pid"]), f


def _netlink(m: dict):
    """One NETLINK_ROUTE socket with its port id and the two options on."""
    fds = [f for f in m["processes"][-1]["fds"] if f["kind"] == "netlink"]
    assert len(fds) == 1, m["processes"][-1]["fds"]
    f = fds[0]
    assert f["nl_protocol"] == 0 and f["nl_portid"] > 0, f  # NETLINK_ROUTE
    assert sorted(f["nl_options"]) == [11, 12], f  # NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK


RESTORED: dict[str, tuple[int, Callable[[dict], None]]] = {
    # kind: (processes in the job, with init; image check)
    "posix_timers": (2, _posix_timers),
    "pidfd": (3, _pidfd),
    "netlink": (2, _netlink),
}


def misc_kind_spec(e2e: E2E, kind: str, rounds: int = ROUNDS) -> JobSpec:
    return JobSpec(name=f"misckind_{kind}",
                   argv=[str(e2e.program("ckpt_misc_kind")), kind, str(rounds), str(TICK_MS)],
                   progress=("lines", "stdout"), timeout=120)


@pytest.mark.parametrize("kind", RESTORED)
def test_misc_kind(e2e: E2E, kind: str):
    spec = misc_kind_spec(e2e, kind)
    ref = e2e.reference(spec)
    out = ref.snap["stdout"].text
    assert ref.status == 0 and out.endswith(f"done {kind} {ROUNDS}\n"), out[-500:]
    processes, image_check = RESTORED[kind]

    def check(job, stats: dict, m: dict):
        assert stats["processes"] == processes, stats
        image_check(m)
    checkpoint_run(e2e, spec, [0.3, 0.6], "middle", check_dump=check)


def _maps(pids: list[int], path: str) -> list[str]:
    """'process PID' names of the processes that map `path` (the error names the mapping
    by its address range and path, and the process)."""
    found = []
    for pid in pids:
        with open(f"/proc/{pid}/maps") as f:
            if any(line.rstrip("\n").endswith(path) for line in f):
                found += [f"process {pid} ", f"pid {ns_pid(pid)} in the job"]
    return found


# Refused kinds: what the error must name (an fd of the kind, a mapping of a path, or a
# process of the job) and the words it must hold.
REFUSED: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "pidfd_exited": ("fd", "anon_inode:[pidfd]", ("pidfd", "reaped")),
    "netlink_queued": ("fd", "socket:", ("netlink", "queued")),
    "aio": ("map", "/[aio] (deleted)", ("AIO", "io_setup")),
    # Its rings are mapped: the mapping is what the dump meets first.
    "io_uring": ("map", "anon_inode:[io_uring]", ("io_uring",)),
    "fanotify": ("fd", "anon_inode:[fanotify]", ("fanotify",)),
    # A POSIX timer: the error names the process that holds it.
    "timer_alarm": ("proc", "", ("POSIX timer", "an alarm clock")),
    "timer_other_cpu": ("proc", "", ("POSIX timer", "another process's CPU clock")),
    "timer_thread_cpu": ("proc", "", ("CLOCK_THREAD_CPUTIME_ID", "with 2 threads")),
}


@pytest.mark.parametrize("kind", REFUSED)
def test_misc_kind_refused(e2e: E2E, kind: str):
    what, target, words = REFUSED[kind]
    if kind == "timer_alarm" and not any(Path("/sys/class/rtc").glob("rtc*")):
        pytest.skip("no RTC: the kernel refuses alarm timers (EOPNOTSUPP)")

    def names(pids: list[int]):
        if what == "fd":
            return names_one_fd(fds_matching(pids, lambda t: t.startswith(target)), target)
        if what == "proc":
            named = [f"process {p} " for p in pids]

            def process(line: str):
                assert any(n in line for n in named), f"error does not name one of {pids}: {line}"
            return process
        mapped = _maps(pids, target)
        assert mapped, f"the job maps no {target}"

        def mapping(line: str):
            assert target in line and any(n in line for n in mapped), \
                f"error does not name the mapping of {target} in {mapped}: {line}"
        return mapping
    refused_dump_run(e2e, misc_kind_spec(e2e, kind, rounds=80), f"done {kind} 80\n", words, names)
