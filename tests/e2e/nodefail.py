"""What the node-failure tests (test_node_failure.py) and benchmarks (bench/node_*.py)
share: a deterministic job whose correct output is known without running it, ways to
tell which host wrote each of its lines, and a watcher that records what the controller
said about jobs and nodes over time.

The job (PROG_PY) computes a SHA-256 chain: step i prints "step i HEX" on stdout and
writes "i HEX" to results.txt (opened with "w": a run from scratch rewrites it, a
restore truncates it back to the checkpoint, so either way the final file is the same).
Two side files are opened, appended to and closed again at every write, so a restore
never truncates them and they keep what every copy of the job did:
  starts.log  one line per start from scratch (a restore does not add one)
  trace.log   "i NETNS" per step, NETNS the network namespace of the process
              (/proc/self/ns/net): which host ran that step. In a correct recovery the
              hosts form runs, A...A B...B; a stale copy writing after the new one
              started shows as A after B.
"""
from __future__ import annotations

import hashlib
import json
import os
import pwd
import threading
import time
from pathlib import Path

PROG_PY = r'''
import hashlib, os, sys, time
steps, delay = int(sys.argv[1]), float(sys.argv[2])
hold_mib = int(sys.argv[3]) if len(sys.argv) > 3 else 0
ns = lambda: os.readlink("/proc/self/ns/net")
with open("starts.log", "a") as f:
    f.write(f"start {ns()}\n")
# Memory the checkpoints carry (the benchmark's 1 GiB job): incompressible.
ballast = os.urandom(hold_mib << 20)
h = b"fsched"
with open("results.txt", "w") as out:
    for i in range(steps):
        for _ in range(2000):
            h = hashlib.sha256(h).digest()
        print(f"step {i} {h.hex()}", flush=True)
        out.write(f"{i} {h.hex()}\n")
        out.flush()
        with open("trace.log", "a") as t:
            t.write(f"{i} {ns()}\n")
        time.sleep(delay)
print("done", flush=True)
'''

JOB_SH = """#!/bin/bash
exec python3 prog.py "$@"
"""


def expected(steps: int) -> tuple[bytes, bytes]:
    """(stdout, results.txt) of an uninterrupted run, computed here, not by running it."""
    h = b"fsched"
    out, res = [], []
    for i in range(steps):
        for _ in range(2000):
            h = hashlib.sha256(h).digest()
        out.append(f"step {i} {h.hex()}\n")
        res.append(f"{i} {h.hex()}\n")
    out.append("done\n")
    return "".join(out).encode(), "".join(res).encode()


def make_workdir(parent: Path, name: str, user: str) -> Path:
    """A directory owned by `user` holding prog.py and job.sh."""
    d = parent / name
    d.mkdir(parents=True)
    os.chmod(parent, 0o755)
    (d / "prog.py").write_text(PROG_PY)
    (d / "job.sh").write_text(JOB_SH)
    pw = pwd.getpwnam(user)
    for p in (d, d / "prog.py", d / "job.sh"):
        os.chown(p, pw.pw_uid, pw.pw_gid)
    return d


def steps_done(d: Path) -> int:
    try:
        return len((d / "trace.log").read_text().splitlines())
    except FileNotFoundError:
        return 0


def trace_hosts(d: Path) -> list[str]:
    """The network namespace of each step written to trace.log, in order."""
    try:
        return [ln.split(" ", 1)[1] for ln in (d / "trace.log").read_text().splitlines() if " " in ln]
    except FileNotFoundError:
        return []


def host_runs(hosts: list[str]) -> list[str]:
    """trace_hosts collapsed into runs: [A, A, B, B] -> [A, B]."""
    runs: list[str] = []
    for h in hosts:
        if not runs or runs[-1] != h:
            runs.append(h)
    return runs


def starts(d: Path) -> int:
    try:
        return len((d / "starts.log").read_text().splitlines())
    except FileNotFoundError:
        return 0


def output_problems(d: Path, job_id: int, steps: int, from_scratch_ok: bool = False,
                    check_hosts: bool = True) -> list[str]:
    """What differs from an uninterrupted run: results.txt byte for byte, and stdout
    byte for byte (with from_scratch_ok, a job started over may have its earlier run's
    lines before a complete run, as Slurm appends a requeued job's output); with
    check_hosts, also a host writing again after another took over (right for a job
    that moved at most once; one that moved back and forth legitimately does)."""
    want_out, want_res = expected(steps)
    problems = []
    res = (d / "results.txt").read_bytes() if (d / "results.txt").exists() else b""
    if res != want_res:
        problems.append(f"results.txt differs ({len(res)} bytes, expected {len(want_res)})")
    out_path = d / f"slurm-{job_id}.out"
    out = out_path.read_bytes() if out_path.exists() else b""
    ok = out.endswith(want_out) if from_scratch_ok else out == want_out
    if not ok:
        problems.append(f"{out_path.name} differs ({len(out)} bytes, expected {len(want_out)})")
    runs = host_runs(trace_hosts(d))
    if check_hosts and len(runs) != len(set(runs)):
        problems.append(f"a host wrote again after another took over: {runs}")
    return problems


def user_pids(pids: list[int], user: str) -> list[int]:
    """Those of pids that run as user (a job's processes; fschedd and its guard are root's)."""
    uid = pwd.getpwnam(user).pw_uid
    out = []
    for p in pids:
        try:
            if os.stat(f"/proc/{p}").st_uid == uid:
                out.append(p)
        except FileNotFoundError:
            pass
    return out


def cgroup2_root() -> Path:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        f = line.split()
        if len(f) > 2 and f[2] == "cgroup2":
            return Path(f[1])
    raise RuntimeError("no cgroup2 mounted")


def is_frozen(pid: int) -> bool:
    """Whether pid's cgroup v2 is frozen (by itself or an ancestor: cgroup.events reports
    the effective state)."""
    try:
        rel = next(ln[3:] for ln in Path(f"/proc/{pid}/cgroup").read_text().splitlines() if ln.startswith("0::"))
        events = (cgroup2_root() / rel.lstrip("/") / "cgroup.events").read_text()
    except (FileNotFoundError, StopIteration, ProcessLookupError):
        return False
    return "frozen 1" in events.split("\n")


class Watch:
    """Records, every `interval` s in a thread, the controller's view of every job
    (squeue --json -t all) and node (sinfo --json), each sample with the time.time() at
    which both answers were in: a state seen in a sample held at the latest at its time
    (so "not before" bounds checked on sample times never fail for slow commands).
    Use as a context manager; samples are (t, {job_id: job}, {node: node})."""

    def __init__(self, cluster, interval: float = 0.25):
        self.c = cluster
        self.interval = interval
        self.samples: list[tuple[float, dict, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                jr = self.c.cmd("squeue", "--json", "-t", "all", check=False, timeout=30)
                jobs = {j["job_id"]: j for j in json.loads(jr.stdout)["jobs"]} if jr.returncode == 0 else None
                nodes = {n["name"]: n for n in self.c.node_list()}
            except Exception:  # the controller is down for a moment (a test kills it)
                jobs, nodes = None, None
            if jobs is not None and nodes:
                self.samples.append((time.time(), jobs, nodes))
            self._stop.wait(self.interval)

    def __enter__(self) -> "Watch":
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(60)

    def last(self) -> tuple[float, dict, dict] | None:
        return self.samples[-1] if self.samples else None

    def first(self, pred) -> float | None:
        """Time of the first sample (t, jobs, nodes) for which pred(jobs, nodes) holds."""
        for t, jobs, nodes in list(self.samples):
            if pred(jobs, nodes):
                return t
        return None

    def wait(self, pred, timeout: float, what: str) -> float:
        """Waits until a sample satisfies pred(jobs, nodes); returns its time."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            samples = list(self.samples)
            for t, jobs, nodes in samples[seen:]:
                if pred(jobs, nodes):
                    return t
            seen = len(samples)
            time.sleep(0.1)
        last = self.last()
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; last sample: "
                             f"{json.dumps(last[1:] if last else None, default=str)[:3000]}")


def running_on(job_id: int, node: str | None = None, not_on: str | set | None = None):
    """A Watch predicate: the job is RUNNING (on `node`, or on none of `not_on`)."""
    avoid = {not_on} if isinstance(not_on, str) else set(not_on or ())

    def pred(jobs, nodes):
        j = jobs.get(job_id)
        return bool(j and j["state"] == "RUNNING" and (node is None or j["nodes"] == node)
                    and j["nodes"] not in avoid)
    return pred
