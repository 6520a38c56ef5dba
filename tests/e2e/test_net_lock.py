"""The network lock of a dump (issue 13, netlock.h): a server OUTSIDE the job streams a
known byte pattern into a connection of the job as fast as a paced sender goes, so that
the job's receive window is open and data is in flight during every dump.

- Dumped (and killed) twice midway and restored: no byte lost, none twice -- the job
  checks every byte against the pattern and its output must equal the uninterrupted
  run's. Without the lock the kernel acknowledges what arrives after the queues are read
  (lost with the killed job) or the dump gives up because a sequence number moved.
- Its dumper SIGKILLed at random instants (while the sockets are locked and in repair
  mode): the guardian gives them back, the job goes on unharmed, and no guardian is
  left behind.
- Its dumper SIGKILLed right after its kill(2) of the job, while the job is dying: the
  guardian holds the sockets (it does not give them back to a dying job, whose close
  would reset the connection), and the restore takes them over."""
from __future__ import annotations

import os
import random
import shutil
import signal
import socketserver
import subprocess
import threading
import time
from pathlib import Path

import pytest

from ckpt_e2e import E2E, JobSpec, alive, assert_running_free, restore_stats, wait_gone
from netcluster import cgroup2_root, remove_cgroup
from specs import PYTHON
from test_ipc import checkpoint_run

pytestmark = pytest.mark.slow

MIB = 24
PACE_S = 0.004  # between 64 KiB sends: ~16 MiB/s, slower than the job reads

STREAM_PY = r'''
import errno, os, socket, sys
mib = int(sys.argv[1])
total = mib << 20
s = socket.create_connection(("127.0.0.1", int(os.environ["NET_PEER_PORT"])))
s.sendall(str(total).encode())
pat = bytes(range(256)) * 257
got = 0
while got < total:
    try:
        b = s.recv(1 << 16)
    except OSError as e:
        print("network error:", errno.errorcode.get(e.errno, e.errno), "after", got, "bytes",
              flush=True)
        sys.exit(4)
    if not b:
        print("EOF after", got, "bytes", flush=True)
        sys.exit(3)
    off = got % 256
    if b != pat[off:off + len(b)]:
        bad = next(i for i in range(len(b)) if b[i] != pat[off + i])
        print("byte", got + bad, "is", b[bad], "not", pat[off + bad], flush=True)
        sys.exit(2)
    before, got = got, got + len(b)
    for k in range((before >> 20) + 1, (got >> 20) + 1):
        print("MiB", k, flush=True)
s.close()
print("done", mib, flush=True)
'''


class _Stream(socketserver.BaseRequestHandler):
    def handle(self):
        total = int(self.request.recv(32).decode())
        chunk = bytes(range(256)) * 256
        sent = 0
        while sent < total:
            n = min(len(chunk), total - sent)
            self.request.sendall(chunk[:n])
            sent += n
            time.sleep(PACE_S)
        while self.request.recv(65536):
            pass


@pytest.fixture
def stream_server():
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Stream)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def stream_spec(port: int, name: str, mib: int = MIB) -> JobSpec:
    return JobSpec(name=name, argv=[PYTHON, "{work}/stream_job.py", str(mib)],
                   setup=lambda work: (work / "stream_job.py").write_text(STREAM_PY),
                   inputs=("stream_job.py",), env={"NET_PEER_PORT": str(port)},
                   progress=("lines", "stdout"), timeout=120)


def _guardians(wait: float = 3.0, besides: frozenset[int] = frozenset()) -> list[int]:
    """Network lock guardians alive (zombies aside) other than `besides` (those an
    earlier test left holding its sockets), after waiting up to `wait` s for those that
    are ending."""
    deadline = time.monotonic() + wait
    while True:
        found = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    stat = (d / "stat").read_text()
                except OSError:
                    continue
                comm, state = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2]
                if comm == "fsched-netlock" and state != "Z" and int(d.name) not in besides:
                    found.append(int(d.name))
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_stream_from_outside_across_dumps(e2e: E2E, stream_server):
    before = frozenset(_guardians(0))
    spec = stream_spec(stream_server, "netlock_stream")
    ref = e2e.reference(spec)
    assert ref.status == 0 and ref.snap["stdout"].text.endswith(f"done {MIB}\n"), \
        ref.snap["stdout"].text[-300:]

    def check(job, stats: dict, m: dict):
        est = [s for s in m.get("inet_sockets", []) if s["state"] == 1]
        assert len(est) == 1 and est[0]["peer_port"] == stream_server, m.get("inet_sockets")
        # The killed job's socket is held for the restore, which takes it over (below).
        held = _guardians(0, before)
        assert m["netlock"] and len(held) == 1, (m["netlock"], held)
        # In the test's cgroup, with the test itself: not the job's own, not frozen.
        assert stats["tcp_freeze"].startswith("none: "), stats
    checkpoint_run(e2e, spec, [0.3, 0.6], "middle", check_dump=check)
    assert _guardians(besides=before) == [], "a guardian outlived the restore of its image"


def test_stream_reset_when_not_held(e2e: E2E, stream_server):
    """With --tcp-hold 0 the killed job's socket closes at once: the server's next
    segment meets no socket and is answered with a reset. The restore still succeeds, and
    the program gets the reset as an ordinary network error (it exits 4 saying so)."""
    before = frozenset(_guardians(0))
    spec = stream_spec(stream_server, "netlock_reset")
    ref = e2e.reference(spec)
    job = e2e.job(spec)
    job.start_detached()
    job.wait_progress(ref, 0.3)
    image = e2e.image("netlock_reset/0")
    r = subprocess.run([str(e2e.engine.bin), "dump", "--pid", str(job.init_pid), "--dir",
                        str(image), "--tcp-hold", "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert wait_gone(job.init_pid, 5)
    assert _guardians(besides=before) == []
    time.sleep(2.5)  # the server retransmits (RTO >= 200 ms, doubling) into the closed port
    job.paused()
    r = subprocess.run([str(e2e.engine.bin), "restore", "--dir", str(image), "--json"],
                       capture_output=True, text=True, timeout=60)
    stats = restore_stats(r.stderr)
    assert stats and stats["tcp_reset"] == 1 and stats["tcp_taken_over"] == 0, r.stderr
    assert r.returncode == 4, (r.returncode, r.stderr)
    out = job.read("stdout")
    assert "network error: ECONNRESET" in out, out[-300:]


@pytest.fixture
def job_cgroup():
    """A cgroup v2 of the job's own (cgroup_freeze.h), removed with whatever is left in it."""
    cg = cgroup2_root() / f"fsched-e2e-netlock-{os.getpid()}"
    remove_cgroup(cg)
    cg.mkdir()
    yield cg
    remove_cgroup(cg)


def test_dumper_killed_while_locked(e2e: E2E, stream_server, job_cgroup):
    """The job runs in a cgroup of its own, which each dump freezes while a connection is
    in repair mode: a dumper killed then leaves the job frozen until the guardian has
    taken the socket out of repair mode and thawed it."""
    before = frozenset(_guardians(0))
    spec = stream_spec(stream_server, "netlock_dumper_kill", mib=4 * MIB)
    ref = e2e.reference(spec)
    job = e2e.job(spec)
    job.cgroup = job_cgroup
    job.start_detached()
    rng = random.Random(20261206)
    job.wait_progress(ref, 0.1)
    whole = float("inf")
    for n in range(2):
        probe = e2e.image(f"netlock_kill/probe{n}")
        t0 = time.monotonic()
        r, stats = e2e.engine.dump(job.init_pid, probe, leave_running=True)
        whole = min(whole, time.monotonic() - t0)
        assert r.rc == 0, r.stderr
        assert stats["tcp_freeze"] == f"cgroup /{job_cgroup.name}", stats
        shutil.rmtree(probe)
    killed = 0
    for trial in range(12):
        image = e2e.image(f"netlock_kill/{trial}")
        args = [str(e2e.engine.bin), "dump", "--pid", str(job.init_pid), "--dir", str(image)]
        if trial % 2 == 0:
            args.append("--leave-running")
        dumper = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started = time.monotonic()
        time.sleep(rng.uniform(0.0, whole * 0.9))
        dumper.kill()
        _, err = dumper.communicate()
        if dumper.returncode == -9:
            killed += 1
        else:
            whole = min(whole, time.monotonic() - started)
            assert dumper.returncode == 0, f"trial {trial}: dump failed: {err.decode()}"
        if trial % 2 == 1 and (image / "manifest.json").is_file() and wait_gone(job.init_pid, 3):
            job.paused()
            e2e.restore_detached_ok(job, image)
        print("TRIAL", trial, dumper.returncode, (image / "manifest.json").is_file(), alive(job.init_pid), err.decode()[-200:], flush=True)
        # A guardian is left only by a killed dump that had killed the job, for the restore
        # above (which took its sockets) or with nothing: both end at once.
        assert _guardians(besides=before) == [], f"trial {trial}: a guardian is left"
        assert (job_cgroup / "cgroup.freeze").read_text().strip() == "0", \
            f"trial {trial}: the job's cgroup was left frozen"
        assert alive(job.init_pid), (f"trial {trial}: the job is gone: "
                                     f"{job.read('stdout')[-300:]} {job.read('stderr')[-500:]}")
        assert_running_free([job.init_pid, *job.job_pids()])
        shutil.rmtree(image, ignore_errors=True)
        shutil.rmtree(Path(str(image) + ".tmp"), ignore_errors=True)
    assert killed >= 4, f"only {killed} dumps were killed midway"
    assert job.progress(ref) < 1.0, "the job ended before the trials did: make it longer"
    assert job.wait_end(120) == ref.status
    job.assert_matches(ref, " after its dumpers were killed")


def test_dumper_killed_while_the_job_dies(e2e: E2E, stream_server, job_cgroup):
    """strace stops the dumper for 5 s right after its kill(2) of the job's init (the
    dump's last step), and the dumper is SIGKILLed there. The job's init cannot have
    ended yet (its traced threads wait for their tracer), so only the dump's word to the
    guardian before the kill tells it the job is dying: its sockets must be held, not
    taken out of repair mode, and the restore must continue the stream without a
    reset."""
    before = frozenset(_guardians(0))
    spec = stream_spec(stream_server, "netlock_kill_at_kill", mib=4 * MIB)
    ref = e2e.reference(spec)
    job = e2e.job(spec)
    job.cgroup = job_cgroup
    job.start_detached()
    job.wait_progress(ref, 0.2)
    image = e2e.image("netlock_kill_at_kill/0")
    trace = e2e.jobs_dir / "netlock_kill_at_kill.strace"
    # The dumper's kill(2)s: kill(PID, 0) as it starts, then the job's kill
    # (FrozenTree::kill), checked below. Only the main thread is traced (no -f), so the
    # guardian it forks runs free.
    strace = subprocess.Popen(["strace", "-o", str(trace), "-e", "trace=kill",
                               "-e", "inject=kill:delay_exit=5000000:when=2+",
                               str(e2e.engine.bin), "dump", "--pid", str(job.init_pid),
                               "--dir", str(image)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    dumper = None
    while time.monotonic() < deadline and strace.poll() is None:
        text = trace.read_text() if trace.exists() else ""
        if f"kill({job.init_pid}, SIGKILL)" in text and "DELAYED" in text:
            dumper = int(Path(f"/proc/{strace.pid}/task/{strace.pid}/children").read_text().split()[0])
            break
        time.sleep(0.01)
    assert dumper, (f"the dumper never reached its kill of the job: {trace.read_text() if trace.exists() else ''} "
                    f"{strace.stderr.read().decode() if strace.poll() is not None else ''}")
    os.kill(dumper, signal.SIGKILL)
    strace.wait(30)
    assert (image / "manifest.json").is_file(), "the image was committed before the kill"
    assert wait_gone(job.init_pid, 10), "the job outlived its kill"
    held = _guardians(0, before)
    assert len(held) == 1, f"the guardian should hold the dying job's socket: {held}"
    assert (job_cgroup / "cgroup.freeze").read_text().strip() == "0"
    job.paused()
    time.sleep(1.0)  # the server retransmits meanwhile: the held socket drops, never resets
    e2e.restore_detached_ok(job, image)
    assert _guardians(besides=before) == [], "the restore did not take the held socket"
    assert job.wait_end(120) == ref.status
    job.assert_matches(ref, " after its dumper was killed as the job died")
