"""Unix socket state (issue 13, item 3): files in flight, sent with SCM_RIGHTS and not
yet received, and socket options. ckpt_unix_kind holds one kind and checks it every
round. Restored kinds are dumped midway and restored, twice; output and exit status
must equal the uninterrupted run's, and the image must hold the files in flight (so a
pass is not luck). Refused kinds: the dump fails with exit code 4 naming the process
(and the socket), and the job then finishes as if never dumped."""
from __future__ import annotations

import re
from typing import Callable

import pytest

from ckpt_e2e import E2E, JobSpec, ns_pid
from test_ipc import checkpoint_run, fds_matching, names_one_fd, refused_dump_run

pytestmark = pytest.mark.slow

ROUNDS = 60
TICK_MS = 50
SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET = 1, 2, 5


def _rights(m: dict) -> dict[int, list[dict]]:
    """Socket type -> the rights of its queued messages."""
    return {s["type"]: s.get("rights", []) for s in m["sockets"] if s.get("rights")}


def _held(m: dict):
    """The stream's queue: a run of bytes ending with the send of three fds the program
    holds, then the bytes sent after it."""
    prog = m["processes"][-1]
    rights = _rights(m)
    assert list(rights) == [SOCK_STREAM], m["sockets"]
    (r,) = rights[SOCK_STREAM]
    stream = next(s for s in m["sockets"] if s.get("rights"))
    assert r["msg"] == 0 and len(stream["queued"]) == 2, stream
    assert [x["pid"] for x in r["fds"]] == [prog["pid"]] * 3, r
    kinds = {f["fd"]: f["kind"] for f in prog["fds"]}
    assert [kinds[x["fd"]] for x in r["fds"]] == ["pipe", "file", "unix"], (r, kinds)
    assert not m.get("in_flight"), m.get("in_flight")


def _alone(m: dict):
    """A file (twice), a directory and /dev/null that only the queues hold: recorded
    once each, the datagram's middle message naming the same file."""
    rights = _rights(m)
    assert sorted(rights) == [SOCK_DGRAM, SOCK_SEQPACKET], m["sockets"]
    (sp,) = rights[SOCK_SEQPACKET]
    (dg,) = rights[SOCK_DGRAM]
    assert sp["msg"] == 0 and dg["msg"] == 1, (sp, dg)
    files = [x["file"] for x in sp["fds"]]
    assert all(x["pid"] == 0 for x in sp["fds"] + dg["fds"]), (sp, dg)
    assert files[0] == files[1] and len(set(files)) == 3, files
    assert [x["file"] for x in dg["fds"]] == [files[0]], dg
    flight = m["in_flight"]
    assert [flight[i]["kind"] for i in files[1:]] == ["file", "dir", "chr"], flight
    f = flight[files[0]]
    assert f["path"].endswith("/ckpt_unix_kind.dat") and f["pos"] % 7 == 0 and f["pos"] > 0, f
    assert flight[files[3]]["path"] == "/dev/null", flight


SOL_SOCKET = 1
SO_PASSCRED, SO_SNDBUF, SO_RCVBUF, SO_PRIORITY, SO_RCVLOWAT = 16, 7, 8, 12, 18
SO_RCVTIMEO, SO_SNDTIMEO, SO_TIMESTAMP, SO_PEEK_OFF = 20, 21, 29, 42


def _opts(m: dict):
    """The options ckpt_unix_kind unix_opts sets, on the sockets it sets them on."""
    got = sorted(sorted(o["name"] for o in s["opts"]) for s in m["sockets"] if s.get("opts"))
    want = sorted([[SO_SNDBUF], [SO_PASSCRED, SO_TIMESTAMP], [SO_RCVTIMEO, SO_SNDTIMEO],
                   [SO_RCVBUF, SO_RCVLOWAT, SO_PEEK_OFF], [SO_PRIORITY]])
    assert got == want, m["sockets"]
    assert all(o["level"] == SOL_SOCKET for s in m["sockets"] for o in s.get("opts", []))


RESTORED: dict[str, Callable[[dict], None]] = {
    "scm_held": _held, "scm_alone": _alone, "unix_opts": _opts}


def unix_kind_spec(e2e: E2E, kind: str, rounds: int = ROUNDS) -> JobSpec:
    return JobSpec(name=f"unixkind_{kind}",
                   argv=[str(e2e.program("ckpt_unix_kind")), kind, str(rounds), str(TICK_MS)],
                   progress=("lines", "stdout"), timeout=120)


@pytest.mark.parametrize("kind", RESTORED)
def test_unix_kind(e2e: E2E, kind: str):
    spec = unix_kind_spec(e2e, kind)
    ref = e2e.reference(spec)
    out = ref.snap["stdout"].text
    assert ref.status == 0 and out.endswith(f"done {kind} {ROUNDS}\n"), out[-500:]

    def check(job, stats: dict, m: dict):
        assert stats["processes"] == 2, stats
        RESTORED[kind](m)
    checkpoint_run(e2e, spec, [0.3, 0.6], "middle", check_dump=check)


@pytest.mark.parametrize("as_user", [False, True], ids=["root", "user"])
def test_unix_peercred(e2e: E2E, test_user, as_user: bool):
    """SO_PEERCRED and SO_PEERGROUPS of restored sockets are their makers' (pid, uid, gid,
    groups), not the restore's root init: socketpairs made by the parent, connections its
    child made to its listeners (one of them closed: remade through a scratch path), and
    a pair and a connection made by a process that exited before the dump (a stand-in
    with its pid makes them again), and a pair made by a zombie. ckpt_unix_kind checks them every round, in both
    processes; as a user, a root peer would show."""
    import pwd
    user = test_user if as_user else None
    spec = JobSpec(name="unixkind_peercred" + ("_user" if as_user else ""),
                   argv=[str(e2e.program("ckpt_unix_kind")), "peercred", str(ROUNDS),
                         str(TICK_MS)],
                   user=user, progress=("lines", "stdout"), timeout=120)
    ref = e2e.reference(spec)
    out = ref.snap["stdout"].text
    assert ref.status == 0 and out.endswith(f"done peercred {ROUNDS}\n"), out[-500:]
    uid = pwd.getpwnam(test_user).pw_uid if as_user else 0

    def check(job, stats: dict, m: dict):
        assert stats["processes"] == 4, stats
        zombie = [p["pid"] for p in m["processes"] if p["zombie"]]
        parent, child = [p["pid"] for p in m["processes"] if not p["zombie"]][-2:]
        assert len(zombie) == 1, m["processes"]
        creds = [s["cred"] for s in m["sockets"] if s["cred"]["set"]]
        # 2 pair ends x 4 pairs (one made by a process that has exited, one by the
        # zombie), 4 connections x 2 ends (one made by the exited process), 2 listeners
        # still open.
        assert len(creds) == 18, m["sockets"]
        assert all(c["uid"] == uid and c["gid"] == c["groups"][0] for c in creds if as_user), creds
        assert all(c["uid"] == 0 for c in creds if not as_user), creds
        # The pids: the parent's, the child's and the exited maker's, which is no
        # process of the image. The program checks them all after each restore, the
        # connection remade through a scratch path (its listener closed) included.
        pids = {c["pid"] for c in creds}
        alive = {p["pid"] for p in m["processes"]}
        assert {parent, child, zombie[0]} < pids and len(pids - alive) == 1 and min(pids) > 1, \
            (pids, alive)
    checkpoint_run(e2e, spec, [0.3, 0.6], "middle", check_dump=check)


def _names_process(pids: list[int]) -> Callable[[str], None]:
    def check(line: str):
        assert any(re.search(rf"\bprocess {p}\b", line) or f"pid {ns_pid(p)} in the job" in line
                   for p in pids), f"error names none of {pids}: {line}"
    return check


# Refused kinds: the check of what the error names, and the words it must hold.
REFUSED: dict[str, tuple[Callable[[list[int]], Callable[[str], None]], tuple[str, ...]]] = {
    "scm_pipe": (lambda pids: names_one_fd(fds_matching(pids, lambda t: t.startswith("socket:")),
                                           "socket"),
                 ("pipe:", "SCM_RIGHTS", "held by no process")),
    # The lock is met first, by the check that every lock of the job is on an fd.
    "scm_lock": (_names_process, ("flock", "in flight")),
    # An OFD lock shows no pid in /proc/locks: the file in flight is met with it.
    "scm_ofd": (lambda pids: names_one_fd(fds_matching(pids, lambda t: t.startswith("socket:")),
                                          "socket"),
                ("SCM_RIGHTS", "holds a lock")),
    "passcred_queued": (lambda pids: names_one_fd(
        fds_matching(pids, lambda t: t.startswith("socket:")), "socket"),
        ("SO_PASSCRED", "queued")),
    "sock_filter": (lambda pids: names_one_fd(
        fds_matching(pids, lambda t: t.startswith("socket:")), "socket"),
        ("socket filter",)),
    "unix_oob": (lambda pids: names_one_fd(
        fds_matching(pids, lambda t: t.startswith("socket:")), "socket"),
        ("out-of-band",)),
    "dgram_other_sender": (lambda pids: names_one_fd(
        fds_matching(pids, lambda t: t.startswith("socket:")), "socket"),
        ("queued from @unixkind-os-", "-sender")),
    "unix_backlog": (lambda pids: names_one_fd(
        fds_matching(pids, lambda t: t.startswith("socket:")), "socket"),
        ("1 connection(s) waiting to be accepted",)),
}


@pytest.mark.parametrize("kind", REFUSED)
def test_unix_kind_refused(e2e: E2E, kind: str):
    names, words = REFUSED[kind]
    refused_dump_run(e2e, unix_kind_spec(e2e, kind, rounds=80), f"done {kind} 80\n", words, names)


def test_unix_peercred_outside(e2e: E2E):
    """A socketpair the job got from a process outside its PID namespace (this test,
    through SCM_RIGHTS): the job sees pid 0 in its peer credentials, which no restored
    process could give, so the dump refuses it, naming the socket, and the job goes on."""
    import socket
    import threading
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind("\0fsched-e2e-outside-maker")
    server.listen(4)
    stop = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            a, b = socket.socketpair()
            socket.send_fds(conn, [b"o"], [a.fileno(), b.fileno()])
            for s in (a, b, conn):
                s.close()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        refused_dump_run(e2e, unix_kind_spec(e2e, "peercred_outside", rounds=80),
                         "done peercred_outside 80\n", ("outside the job", "peer credentials"),
                         lambda pids: names_one_fd(
                             fds_matching(pids, lambda t: t.startswith("socket:")), "socket"))
    finally:
        stop.set()
        t.join()
        server.close()


# A real program passing fds: python3's socket.send_fds/recv_fds (sendmsg(2) with
# SCM_RIGHTS) between a parent and its child over a stream and a datagram pair. The
# parent keeps three messages ahead of the child, so that files are always in flight:
# files it closed once sent, and a pipe both hold.
SEND_FDS_PY = r'''
import os, socket, sys, time
steps = int(sys.argv[1])
work = os.path.dirname(os.path.abspath(__file__))
for i in range(8):
    with open(os.path.join(work, "part%d" % i), "w") as f:
        f.write("part %d " % i + "x" * i + "\n")
st_p, st_c = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
dg_p, dg_c = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
r, w = os.pipe()
go_r, go_w = os.pipe()  # the parent's go-ahead: one byte per message the child may read
pid = os.fork()
if pid == 0:
    for step in range(steps):
        os.read(go_r, 1)
        msg, fds, _, _ = socket.recv_fds(dg_c, 64, 4)
        data, sfds, _, _ = socket.recv_fds(st_c, 64, 4)
        f = os.fdopen(fds[0])
        f.seek(int(msg.split()[1]))
        print("child", step, msg.decode(), data.decode(), f.read().strip(), len(fds), len(sfds),
              flush=True)
        os.write(sfds[0], b"%d" % step)  # after the line: the parent's comes next
        f.close()
        for fd in fds[1:] + sfds:
            os.close(fd)
    os._exit(0)
for step in range(steps + 3):
    if step < steps:
        fd = os.open(os.path.join(work, "part%d" % (step % 8)), os.O_RDONLY)
        socket.send_fds(dg_p, [b"file %d" % (step % 3)], [fd, fd])
        socket.send_fds(st_p, [b"pipe %d;" % step], [w])
        os.close(fd)
    if step >= 3:
        os.write(go_w, b"g")
        print("parent", step, os.read(r, 16).decode(), flush=True)
    time.sleep(0.03)
os.waitpid(pid, 0)
print("done", steps, flush=True)
'''


def test_python_send_fds(e2e: E2E):
    spec = JobSpec(name="py_send_fds", argv=["/usr/bin/python3", "{work}/send_fds.py", "150"],
                   setup=lambda work: (work / "send_fds.py").write_text(SEND_FDS_PY),
                   inputs=("send_fds.py",), progress=("lines", "stdout"), timeout=120)
    ref = e2e.reference(spec)
    out = ref.snap["stdout"].text
    assert ref.status == 0 and out.endswith("done 150\n"), out[-300:]

    def check(job, stats: dict, m: dict):
        assert stats["processes"] == 3, stats
        rights = [r for s in m["sockets"] for r in s.get("rights", [])]
        # Three messages ahead on each pair (the child may be mid-step: two or more).
        assert len(rights) >= 4, m["sockets"]
        assert any(x["pid"] == 0 for r in rights for x in r["fds"]), rights
    checkpoint_run(e2e, spec, [0.3, 0.6], "middle", check_dump=check)
