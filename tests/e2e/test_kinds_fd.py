"""File descriptor identity and flags (issue 13): ckpt_fd_kind holds one kind of fd
state at a time and checks it every round. Restored kinds are dumped midway and
restored; output and exit status must equal the uninterrupted run's, and the image must
hold the state (so a pass is not luck). Refused kinds: the dump fails with exit code 4
naming the process and fd, and the job then finishes as if never dumped."""
from __future__ import annotations

import re
from typing import Callable

import pytest

from ckpt_e2e import E2E, JobSpec
from test_ipc import checkpoint_run, fds_matching, names_one_fd, refused_dump_run

pytestmark = pytest.mark.slow

ROUNDS = 60
TICK_MS = 50
O_NONBLOCK, O_APPEND, O_ASYNC = 0o4000, 0o2000, 0o20000


def _fds(m: dict, kind: str) -> list[dict]:
    return [f for p in m["processes"] for f in p.get("fds", []) if f.get("kind") == kind]


def _flags(m: dict):
    """Every kind ckpt_fd_kind flags toggles is in the image, some with O_NONBLOCK or
    O_ASYNC set (the pattern differs between fds, so one of two neighbours has it)."""
    kinds = {"pipe", "fifo", "unix", "eventfd", "epoll", "chr", "dir"}
    fds = [f for f in m["processes"][-1]["fds"] if f["kind"] in kinds]
    assert {f["kind"] for f in fds} == kinds, fds
    assert any(f["flags"] & O_NONBLOCK for f in fds) and any(f["flags"] & O_ASYNC for f in fds), fds
    assert any(f["flags"] & O_APPEND for f in _fds(m, "pipe")), _fds(m, "pipe")
    # The dup of the pipe's read end is recorded as sharing the first one's description.
    assert sum(f["shared_fd"] >= 0 for f in _fds(m, "pipe")) == 1, _fds(m, "pipe")


def _opens(m: dict):
    fifo = _fds(m, "fifo")
    assert len(fifo) == 3 and all(f["shared_fd"] < 0 for f in fifo), fifo  # 2 readers, 1 writer
    files = [f for f in _fds(m, "file") if f["path"].endswith("fdkind.data")]
    assert len(files) == 3 and sum(f["shared_fd"] >= 0 for f in files) == 1, files
    for kind in ("dir", "chr"):
        assert any(f["shared_fd"] >= 0 for f in _fds(m, kind)), _fds(m, kind)


def _shutdown(m: dict):
    assert sorted(s["shutdown"] for s in m["sockets"]) == [1, 1, 2, 2], m["sockets"]


def _names(m: dict):
    names = sorted(s["name"] for s in m["sockets"])
    assert len(names) == 4 and names[0] == "", names
    assert sum(n.startswith("@fdkind-") for n in names) == 2, names
    assert sum(n.endswith("/fdkind.sock") for n in names) == 1, names


def _clone_files(m: dict):
    """The child is recorded as sharing its parent's fd table, and holds the fds its
    parent opened (51 and up)."""
    child = m["processes"][-1]
    assert child["files_of_parent"] and not m["processes"][-2]["files_of_parent"], m["processes"]
    assert any(f["fd"] > 50 for f in child["fds"]), child["fds"]


def _pipe_reopen(m: dict):
    """Two read ends of one pipe, each its own open file description."""
    reads = [f for f in _fds(m, "pipe") if f["flags"] & 3 == 0]
    assert len(reads) == 2 and reads[0]["file"]["ino"] == reads[1]["file"]["ino"], reads
    assert all(f["shared_fd"] < 0 for f in reads), reads


def _dgram_shut_rd(m: dict):
    """The end shut for reading keeps its two queued datagrams."""
    got = sorted((s["shutdown"], s["queued"]) for s in m["sockets"])
    assert got == [(0, []), (1, [3, 3])], m["sockets"]


def _peer_gone(m: dict):
    """Two sockets whose peer is gone, with what it wrote: 11 bytes, two records."""
    got = sorted((s["type"], s["peer_gone"], s["peer"], s["queued"]) for s in m["sockets"])
    assert got == [(1, True, 0, [11]), (5, True, 0, [4, 7])], m["sockets"]


def _accepted(m: dict):
    """Every socket's name as the job bound it or got it from accept(2): the path
    listener and the three sockets it accepted (one peer gone), the abstract seqpacket
    listener and its socket, the client bound to its own path, the sockets of the two
    closed listeners, and four unnamed clients, each connected to its accepted peer."""
    socks = m["sockets"]
    names = [s["name"] for s in socks]
    assert len(socks) == 13, socks

    def named(end: str) -> list[dict]:
        return [s for s in socks if s["name"].endswith(end) or
                (end.startswith("@") and s["name"].startswith(end))]
    assert len(named("/fdkind-acc.sock")) == 4, names
    assert len(named("@fdkind-acc-")) == 2, names
    assert len(named("/fdkind-cli.sock")) == 1 and len(named("/fdkind-old.sock")) == 1, names
    assert len(named("@fdkind-old-")) == 1 and names.count("") == 4, names
    listeners = [s for s in socks if s["state"] == 10]
    assert sorted((s["type"], s["name"][:1]) for s in listeners) == [(1, "/"), (5, "@")], listeners
    gone = [s for s in socks if s["peer_gone"]]
    assert len(gone) == 1 and gone[0]["name"].endswith("/fdkind-acc.sock"), gone
    assert gone[0]["queued"] == [3], gone
    by_ino = {s["ino"]: s for s in socks}
    for s in socks:
        if s["state"] != 10 and not s["peer_gone"]:
            assert by_ino[s["peer"]]["peer"] == s["ino"], s
            assert "" in (s["name"], by_ino[s["peer"]]["name"]) or \
                {s["name"][-8:], by_ino[s["peer"]]["name"][-8:]} == {"acc.sock", "cli.sock"}, s
    assert sorted(q for s in socks for q in s["queued"]) == [3, 5, 5], socks


def _dgram_named(m: dict):
    """Five named datagram sockets and one unnamed: the pair connected by name, one
    connected one way to a socket connected to nothing, a socketpair with a bound end;
    one datagram queued (from its peer, which refills it)."""
    socks = m["sockets"]
    assert len(socks) == 6 and all(s["type"] == 2 for s in socks), socks

    def one(pred: Callable[[str], bool]) -> dict:
        got = [s for s in socks if pred(s["name"])]
        assert len(got) == 1, socks
        return got[0]
    d1 = one(lambda n: n.startswith("@fdkind-dg1-"))
    d2, d3, d4 = (one(lambda n, i=i: n.endswith(f"/fdkind-dg{i}.sock")) for i in (2, 3, 4))
    e0, e1 = one(lambda n: n.startswith("@fdkind-e1-")), one(lambda n: n == "")
    assert [d1["peer"], d2["peer"], d3["peer"], d4["peer"]] == [d2["ino"], d1["ino"], d4["ino"], 0]
    assert [e0["peer"], e1["peer"]] == [e1["ino"], e0["ino"]], socks
    assert [s["queued"] for s in (d1, d2, d3, d4, e0, e1)] == [[], [5], [], [], [], []], socks


RESTORED: dict[str, Callable[[dict], None]] = {
    "flags": _flags,
    "opens": _opens,
    "unix_shutdown": _shutdown,
    "unix_names": _names,
    "clone_files": _clone_files,
    "pipe_reopen": _pipe_reopen,
    "dgram_shut_rd": _dgram_shut_rd,
    "unix_peer_gone": _peer_gone,
    "unix_accepted": _accepted,
    "dgram_named": _dgram_named,
}


def fd_kind_spec(e2e: E2E, kind: str, rounds: int = ROUNDS, user: str | None = None) -> JobSpec:
    return JobSpec(name=f"fdkind_{kind}" + ("_user" if user else ""),
                   argv=[str(e2e.program("ckpt_fd_kind")), kind, str(rounds), str(TICK_MS)],
                   user=user, progress=("lines", "stdout"), timeout=120)


@pytest.mark.parametrize("kind", RESTORED)
def test_fd_kind(e2e: E2E, kind: str):
    spec = fd_kind_spec(e2e, kind)
    ref = e2e.reference(spec)
    out = ref.snap["stdout"].text
    assert ref.status == 0 and out.endswith(f"done {kind} {ROUNDS}\n"), out[-500:]

    def check(job, stats: dict, m: dict):
        # init and ckpt_fd_kind (and its CLONE_FILES child)
        assert stats["processes"] == (3 if kind == "clone_files" else 2), stats
        RESTORED[kind](m)
    checkpoint_run(e2e, spec, [0.3, 0.6], "middle", check_dump=check)


def test_fd_kind_as_user(e2e: E2E, test_user):
    """Socket names of a job of an ordinary user: the restore binds its path names and
    connects to its path listener as that user (the program checks every name each round)."""
    spec = fd_kind_spec(e2e, "unix_accepted", user=test_user)
    ref = e2e.reference(spec)
    assert ref.status == 0, ref.snap["stdout"].text[-500:]
    checkpoint_run(e2e, spec, [0.4], "user", check_dump=lambda job, stats, m: _accepted(m))


# Refused kinds: the (pid, fd) pairs the error may name, and a word it must hold.
REFUSED: dict[str, tuple[Callable[[list[int]], list[tuple[int, int]]], str]] = {
    "epoll_closed": (lambda pids: fds_matching(pids, lambda t: t == "anon_inode:[eventpoll]"),
                     "epoll"),
    "proc_fd": (lambda pids: fds_matching(pids, lambda t: t.startswith("/proc/")), "/proc"),
    "unix_relative": (lambda pids: fds_matching(pids, lambda t: t.startswith("socket:")),
                      "relative path"),
    "pipe_rdwr": (lambda pids: fds_matching(pids, lambda t: t.startswith("pipe:")),
                  "reading and writing"),
    "dgram_no_peer": (lambda pids: fds_matching(pids, lambda t: t.startswith("socket:")),
                      "no peer"),
    "dgram_peer_gone": (lambda pids: fds_matching(pids, lambda t: t.startswith("socket:")),
                        "peer is gone"),
    "dgram_one_way": (lambda pids: fds_matching(pids, lambda t: t.startswith("socket:")),
                      "not connected back"),
    "dgram_one_way_queued": (lambda pids: fds_matching(pids, lambda t: t.startswith("socket:")),
                             "senders are unknown"),
    # Names both processes; no fd: checked below.
    "files_sibling": (lambda pids: [(p, 0) for p in pids], "CLONE_FILES"),
    "dgram_shut_empty": (lambda pids: fds_matching(pids, lambda t: t.startswith("socket:")),
                         "empty datagram"),
}


@pytest.mark.parametrize("kind", REFUSED)
def test_fd_kind_refused(e2e: E2E, kind: str):
    candidates_of, word = REFUSED[kind]

    def names(pids: list[int]):
        candidates = candidates_of(pids)
        assert candidates, f"the job holds no fd of kind {kind}"
        if kind != "files_sibling":
            return names_one_fd(candidates, kind)

        def both(line: str):
            assert len(pids) == 3, pids
            named = [p for p in pids if re.search(rf"\b{p}\b", line)]
            assert len(named) == 2, f"error does not name two of {pids}: {line}"
        return both
    refused_dump_run(e2e, fd_kind_spec(e2e, kind, rounds=80), f"done {kind} 80\n", (word,), names)
