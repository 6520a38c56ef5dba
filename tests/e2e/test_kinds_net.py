"""TCP and UDP sockets (issue 13): ckpt_net_kind holds one kind of socket state at a time
and checks it every round. Restored kinds are dumped midway and restored; output and exit
status must equal the uninterrupted run's, and the image must hold the state (so a pass
is not luck). A leave-running dump must let the job go on unharmed (its connections out
of repair mode). Refused kinds: the dump fails with exit code 4 naming the process and
fd, and the job then finishes as if never dumped. Also a real program: python3's
http.server in the job, serving a client loop in the job across dumps."""
from __future__ import annotations

import socketserver
import threading
from typing import Callable

import pytest

from ckpt_e2e import E2E, JobSpec, alive, kill_job_processes, tracer_pid
from specs import PYTHON
from test_ipc import checkpoint_run, fds_matching, manifest, names_one_fd, refused_dump_run

pytestmark = pytest.mark.slow

ROUNDS = 60
TICK_MS = 50
TCP_ESTABLISHED, TCP_CLOSE, TCP_LISTEN = 1, 7, 10


def _inet(m: dict) -> list[dict]:
    return m.get("inet_sockets", [])


def _uids_are(m: dict, uid: int):
    assert all(s["uid"] == uid for s in _inet(m)), _inet(m)


def _listen(m: dict):
    socks = _inet(m)
    assert sorted((s["family"], s["state"]) for s in socks) == [(2, TCP_LISTEN), (10, TCP_LISTEN)], socks
    assert all(s["backlog"] == 7 and s["local_port"] > 0 for s in socks), socks


def _pair(family: int):
    def check(m: dict):
        est = [s for s in _inet(m) if s["state"] == TCP_ESTABLISHED]
        assert len(est) == 2 and all(s["family"] == family for s in est), _inet(m)
        # Both directions loaded: data waiting to be read on both ends, and data queued
        # to send (some of it not sent yet) on at least one.
        assert all(len(s["recvq_hex"]) > 0 for s in est), [len(s["recvq_hex"]) for s in est]
        assert any(len(s["sendq_hex"]) > 0 for s in est), [len(s["sendq_hex"]) for s in est]
        assert any(s["unsent"] > 0 for s in est), [s["unsent"] for s in est]
        a, b = est
        assert (a["local_port"], a["peer_port"]) == (b["peer_port"], b["local_port"]), est
    return check


def _outside(m: dict):
    est = [s for s in _inet(m) if s["state"] == TCP_ESTABLISHED]
    assert len(est) == 1 and est[0]["peer_addr"] == "127.0.0.1", _inet(m)


def _udp(m: dict):
    socks = [s for s in _inet(m) if s["type"] == 2]
    assert len(socks) == 2 and sorted(bool(s["peer_addr"]) for s in socks) == [False, True], socks


def _opts(m: dict):
    names = {(o["level"], o["name"]) for s in _inet(m) for o in s["opts"]}
    # SO_KEEPALIVE, SO_LINGER, TCP_KEEPIDLE, TCP_CORK, IPV6_UNICAST_HOPS among them
    for want in [(1, 9), (1, 13), (6, 4), (6, 3), (41, 16)]:
        assert want in names, (want, sorted(names))


RESTORED: dict[str, Callable[[dict], None]] = {
    "listen": _listen,
    "pair": _pair(2),
    "pair6": _pair(10),
    "udp": _udp,
    "opts": _opts,
}


class _Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo_server():
    """A TCP echo server outside the job, on 127.0.0.1, that stays up."""
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def net_spec(e2e: E2E, kind: str, rounds: int = ROUNDS, env: dict | None = None,
             user: str | None = None) -> JobSpec:
    return JobSpec(name=f"netkind_{kind}" + ("_user" if user else ""),
                   argv=[str(e2e.program("ckpt_net_kind")), kind, str(rounds), str(TICK_MS)],
                   env=env or {}, user=user, progress=("lines", "stdout"), timeout=120)


def _check_kind(kind: str, uid: int = 0):
    def check(job, stats: dict, m: dict):
        assert stats["processes"] == (3 if kind.startswith("pair") else 2), stats
        RESTORED[kind](m)
        _uids_are(m, uid)
    return check


@pytest.mark.parametrize("kind", RESTORED)
def test_net_kind(e2e: E2E, kind: str):
    spec = net_spec(e2e, kind)
    ref = e2e.reference(spec)
    out = ref.snap["stdout"].text
    assert ref.status == 0 and out.endswith(f"done {kind} {ROUNDS}\n"), out[-500:]
    checkpoint_run(e2e, spec, [0.3, 0.6], "middle", check_dump=_check_kind(kind))


def test_net_pair_as_user(e2e: E2E, test_user):
    """Restored sockets belong to the job's user, not to root (the program checks its
    sockets' owner every round; the image records it)."""
    import pwd
    uid = pwd.getpwnam(test_user).pw_uid
    spec = net_spec(e2e, "pair", user=test_user)
    ref = e2e.reference(spec)
    assert ref.status == 0, ref.snap["stdout"].text[-500:]
    checkpoint_run(e2e, spec, [0.4], "user", check_dump=_check_kind("pair", uid))


def test_net_outside_peer(e2e: E2E, echo_server):
    """A connection to a server outside the job, which stays up across the dump."""
    spec = net_spec(e2e, "outside", env={"NET_PEER_PORT": str(echo_server)})
    ref = e2e.reference(spec)
    assert ref.status == 0, ref.snap["stdout"].text[-500:]
    checkpoint_run(e2e, spec, [0.3, 0.6], "middle", check_dump=lambda j, s, m: _outside(m))


@pytest.mark.parametrize("kind", ["pair", "outside"])
def test_net_leave_running(e2e: E2E, kind: str, echo_server):
    """A leave-running dump takes the connections out of repair mode again: the job
    goes on and its output equals the uninterrupted run's."""
    spec = net_spec(e2e, kind, env={"NET_PEER_PORT": str(echo_server)})
    ref = e2e.reference(spec)
    job = e2e.job(spec)
    job.start_detached()
    try:
        job.wait_progress(ref, 0.3)
        image = e2e.image(f"leave/{kind}")
        stats = e2e.dump_ok(job, image, leave_running=True)
        assert stats["processes"] >= 2, stats
        assert any(s["state"] == TCP_ESTABLISHED for s in _inet(manifest(image)))
        for p in [job.init_pid, *job.job_pids()]:
            assert alive(p), f"process {p} died"
            assert tracer_pid(p) == 0, f"process {p} left traced"
        assert job.wait_end() == ref.status
        job.assert_matches(ref, " after a leave-running dump")
    finally:
        kill_job_processes(job.marker)


REFUSED: dict[str, str] = {
    "backlog": "waiting to be accepted",
    "close_wait": "FIN_WAIT2",  # its first fd: the end that shut down
    "udp_queued": "receive queue",
    # Its connection was put in repair mode before the UDP socket was refused: the job
    # must then talk on through it (repair mode undone).
    "repair_undo": "receive queue",
    "urgent": "urgent (out-of-band) data",
    "so_error": "pending socket error",
    "urgent_read": "a byte read out of band still inside its receive queue",
    "bindtodevice": "bound to device lo (SO_BINDTODEVICE)",
    "filter": "socket filter",
    "freebind": "IP_FREEBIND or IP_TRANSPARENT",
    "transparent": "IP_FREEBIND or IP_TRANSPARENT",  # the job runs as root: CAP_NET_ADMIN
    "ip_options": "IP options (IP_OPTIONS)",
    "raw": "of type 3 and protocol 1",
    "packet": "not a Unix, TCP, UDP or netlink socket",
}


@pytest.mark.parametrize("kind", REFUSED)
def test_net_kind_refused(e2e: E2E, kind: str):
    refused_dump_run(e2e, net_spec(e2e, kind, rounds=80), f"done {kind} 80\n", (REFUSED[kind],),
                     lambda pids: names_one_fd(
                         fds_matching(pids, lambda t: t.startswith("socket:")), "socket"))


HTTP_PY = r'''
import http.server, os, sys, threading, time, urllib.request
rounds = int(sys.argv[1])
os.makedirs("site", exist_ok=True)
for i in range(rounds):
    with open(f"site/p{i}.txt", "w") as f:
        f.write(f"page {i} " + "x" * (i * 37 % 5000) + "\n")
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def __init__(self, *a, **k):
        super().__init__(*a, directory="site", **k)
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
threading.Thread(target=srv.serve_forever, daemon=True).start()
port = srv.server_address[1]
for i in range(rounds):
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/p{i}.txt", timeout=30).read()
    print(i, len(body), body[:12].decode(), flush=True)
    time.sleep(0.05)
srv.shutdown()
print("end", flush=True)
'''


def test_http_server_in_job(e2e: E2E):
    """python3 http.server in the job serves a client loop in the job across dumps and
    restores (a listener, and keep-alive-less connections coming and going)."""
    spec = JobSpec(name="net_http", argv=[PYTHON, "{work}/http_job.py", "80"],
                   setup=lambda work: (work / "http_job.py").write_text(HTTP_PY),
                   inputs=("http_job.py",), progress=("lines", "stdout"), timeout=120)
    ref = e2e.reference(spec)
    assert ref.status == 0 and ref.snap["stdout"].text.endswith("end\n"), ref.snap["stdout"].text[-300:]

    def check(job, stats: dict, m: dict):
        assert any(s["state"] == TCP_LISTEN for s in _inet(m)), _inet(m)
    checkpoint_run(e2e, spec, [0.3, 0.6], "middle", check_dump=check)
