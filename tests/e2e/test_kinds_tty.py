"""Pseudo-terminals (issue 13, "Terminals"): ckpt_tty_kind holds one kind of pty state
at a time and checks it every round (termios, window size, ttyname, stat of /dev/pts/N,
data both ways, controlling terminal and foreground group). Restored kinds are dumped
midway and restored; output and exit status must equal the uninterrupted run's, and the
image must hold the state (so a pass is not luck). Refused kinds: the dump fails with
exit code 4 naming the process and fd, and the job then finishes as if never dumped.
Real programs: Python's pty.spawn running an interactive Python, dumped and restored."""
from __future__ import annotations

import os
from typing import Callable

import pytest

from ckpt_e2e import E2E, JobSpec, user_ids
from test_ipc import checkpoint_run, fds_matching, names_one_fd, refused_dump_run

pytestmark = pytest.mark.slow

ROUNDS = 60
TICK_MS = 50
ECHO, ICANON = 0o10, 0o2


def _ptys(m: dict) -> list[dict]:
    return [f for p in m["processes"] for f in p.get("fds", []) if f.get("kind") == "pty"]


def _termios_lflag(f: dict) -> int:
    return int.from_bytes(bytes.fromhex(f["termios_hex"])[12:16], "little")


def _pair_common(m: dict, winsize: list[int]) -> list[dict]:
    ptys = _ptys(m)
    masters = [f for f in ptys if f["pty_master"]]
    slaves = [f for f in ptys if not f["pty_master"]]
    assert len(masters) == 1 and slaves, ptys
    assert all(f["pty_index"] == masters[0]["pty_index"] for f in slaves), ptys
    assert all(f["path"] == f"/dev/pts/{f['pty_index']}" for f in slaves), slaves
    assert all(f["winsize"] == winsize for f in ptys), ptys
    # The slave's owner is the job's user, in group tty (the job's devpts, gid=5).
    assert all(f["file"]["uid"] == os.getuid() and f["file"]["gid"] == 5 for f in ptys), ptys
    return ptys


def _pair(m: dict):
    ptys = _pair_common(m, [33, 111, 7, 9])
    assert all(not _termios_lflag(f) & ECHO and _termios_lflag(f) & ICANON for f in ptys), ptys


def _raw(m: dict):
    ptys = _pair_common(m, [50, 200, 7, 9])
    assert all(not _termios_lflag(f) & ICANON for f in ptys), ptys


def _packet(m: dict):
    ptys = _pair_common(m, [24, 80, 7, 9])
    assert all(f["pty_packet"] for f in ptys if f["pty_master"]), ptys
    assert all(f["tty_exclusive"] for f in ptys if not f["pty_master"]), ptys


def _ctty(m: dict):
    ptys = _pair_common(m, [40, 100, 7, 9])
    index = ptys[0]["pty_index"]
    procs = m["processes"]
    assert len(procs) == 4, [p["pid"] for p in procs]
    parent, leader, grandchild = procs[1], procs[2], procs[3]
    assert parent["ctty"] == -1, parent
    assert leader["sid"] == leader["pid"] and leader["ctty"] == index, leader
    assert grandchild["ctty"] == index and grandchild["pgid"] == grandchild["pid"], grandchild
    assert leader["ctty_pgrp"] == grandchild["pgid"], (leader, grandchild)


RESTORED: dict[str, tuple[Callable[[dict], None], int]] = {
    # kind: (image check, processes: init and the program's)
    "pair": (_pair, 2),
    "raw": (_raw, 2),
    "packet": (_packet, 2),
    "ctty": (_ctty, 4),
}


def tty_kind_spec(e2e: E2E, kind: str, rounds: int = ROUNDS) -> JobSpec:
    return JobSpec(name=f"ttykind_{kind}",
                   argv=[str(e2e.program("ckpt_tty_kind")), kind, str(rounds), str(TICK_MS)],
                   progress=("lines", "stdout"), timeout=120)


@pytest.mark.parametrize("kind", RESTORED)
def test_tty_kind(e2e: E2E, kind: str):
    spec = tty_kind_spec(e2e, kind)
    ref = e2e.reference(spec)
    out = ref.snap["stdout"].text
    assert ref.status == 0 and out.endswith(f"done {kind} {ROUNDS}\n"), out[-500:]

    def check(job, stats: dict, m: dict):
        assert stats["processes"] == RESTORED[kind][1], stats
        RESTORED[kind][0](m)
    checkpoint_run(e2e, spec, [0.3, 0.6], "middle", check_dump=check)


def _is_master(t: str) -> bool:
    return t in ("/dev/ptmx", "/dev/pts/ptmx")


# Refused kinds: the (pid, fd) pairs the error may name, and words it must hold.
REFUSED: dict[str, tuple[Callable[[list[int]], list[tuple[int, int]]], str]] = {
    "master_alone": (lambda pids: fds_matching(pids, _is_master), "slave"),
    "queued": (lambda pids: fds_matching(pids, lambda t: _is_master(t) or t.startswith("/dev/pts/")),
               "queued"),
    "dev_tty": (lambda pids: fds_matching(pids, lambda t: t == "/dev/tty"), "/dev/tty"),
    "locked": (lambda pids: fds_matching(pids, _is_master), "is locked (TIOCSPTLCK"),
    "ldisc": (lambda pids: fds_matching(pids, lambda t: t.startswith("/dev/pts/")), "not N_TTY"),
    "slave_alone": (lambda pids: fds_matching(pids, lambda t: t.startswith("/dev/pts/")),
                    "master of this pseudo-terminal is not open in the job"),
    # Names the process (no fd): checked below.
    "ctty_orphan": (lambda pids: fds_matching(pids, lambda t: t.startswith("/dev/pts/")),
                    "differs from its parent's"),
}


@pytest.mark.parametrize("kind", REFUSED)
def test_tty_kind_refused(e2e: E2E, kind: str):
    candidates_of, word = REFUSED[kind]

    def names(pids: list[int]) -> Callable[[str], None]:
        candidates = candidates_of(pids)
        if kind != "ctty_orphan":
            return names_one_fd(candidates, kind)
        assert candidates, "the job holds no pty slave"
        holders = sorted({pid for pid, _ in candidates})

        def process(line: str):
            assert any(f"process {p} " in line for p in holders), \
                f"error does not name a process of {holders}: {line}"
        return process
    refused_dump_run(e2e, tty_kind_spec(e2e, kind, rounds=80), f"done {kind} 80\n", (word,), names)


# A real interactive program on a pty: Python's pty.spawn (what `script` does: the
# child is a session leader with the slave as its controlling terminal and stdin,
# stdout, stderr) running an interactive Python that computes, checks its terminal and
# prints a line every 50 ms; the parent copies the master to the job's stdout.
_CHILD = r"""
import os, sys, termios, time
tty = os.ttyname(0)
for i in range(60):
    assert os.ttyname(1) == tty and os.isatty(2), "terminal changed"
    assert os.tcgetpgrp(0) == os.getpgrp() == os.getsid(0), "not the foreground session leader"
    assert termios.tcgetattr(0)[3] & termios.ICANON, "not canonical"
    print(tty.startswith("/dev/pts/"), i, sum(k * k for k in range(i * 1000)), flush=True)
    time.sleep(0.05)
"""
_SPAWN = ("import pty, sys; "
          "sys.exit(pty.spawn(['/usr/bin/python3', '-c', sys.argv[1]]) >> 8)")


def test_pty_spawn_real_program(e2e: E2E):
    spec = JobSpec(name="tty_pty_spawn", argv=["/usr/bin/python3", "-c", _SPAWN, _CHILD],
                   progress=("lines", "stdout"), timeout=120)
    ref = e2e.reference(spec)
    out = ref.snap["stdout"].text
    assert ref.status == 0 and "True 59 " in out, out[-500:]

    def check(job, stats: dict, m: dict):
        ptys = _ptys(m)
        assert any(f["pty_master"] for f in ptys) and any(not f["pty_master"] for f in ptys), ptys
        leaders = [p for p in m["processes"] if p["ctty"] >= 0 and p["sid"] == p["pid"]]
        assert len(leaders) == 1 and leaders[0]["ctty_pgrp"] == leaders[0]["pid"], m["processes"]
    checkpoint_run(e2e, spec, [0.3, 0.6], "middle", check_dump=check)


@pytest.mark.parametrize("kind", ["pair", "ctty"])
def test_tty_kind_as_user(e2e: E2E, test_user: str, kind: str):
    """Restore runs as root for an ordinary user: the pty comes back with the user as
    the slave's owner (the program compares stat(2) of /dev/pts/N every round with what
    it saw at set-up; the image must hold the user's uid)."""
    spec = tty_kind_spec(e2e, kind)
    spec = JobSpec(name=f"ttykind_user_{kind}", argv=spec.argv, user=test_user,
                   progress=("lines", "stdout"), timeout=120)
    uid, _ = user_ids(test_user)
    ref = e2e.reference(spec)
    out = ref.snap["stdout"].text
    assert ref.status == 0 and out.endswith(f"done {kind} {ROUNDS}\n"), out[-500:]

    def check(job, stats: dict, m: dict):
        ptys = _ptys(m)
        assert ptys and all(f["file"]["uid"] == uid and f["file"]["gid"] == 5 for f in ptys), ptys
    checkpoint_run(e2e, spec, [0.3, 0.6], "middle", check_dump=check)


def test_script_real_program(e2e: E2E):
    """util-linux script(1) -qfc (signalfd, poll, a shell below it as session leader on
    the slave) running the interactive Python of test_pty_spawn_real_program."""
    spec = JobSpec(name="tty_script",
                   argv=["/usr/bin/script", "-qfc", f"/usr/bin/python3 -c '{_CHILD}'", "/dev/null"],
                   progress=("lines", "stdout"), timeout=120)
    ref = e2e.reference(spec)
    out = ref.snap["stdout"].text
    assert ref.status == 0 and "True 59 " in out, out[-500:]

    def check(job, stats: dict, m: dict):
        ptys = _ptys(m)
        assert any(f["pty_master"] for f in ptys) and any(not f["pty_master"] for f in ptys), ptys
        assert any(p["ctty"] >= 0 for p in m["processes"]), m["processes"]
    checkpoint_run(e2e, spec, [0.3, 0.6], "middle", check_dump=check)
