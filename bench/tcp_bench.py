#!/usr/bin/python3
"""What 100 established TCP connections add to a checkpoint (issue 13, inet.h).

Runs a small Python job under `fsched-ckpt run --detach` that holds N TCP connections
over 127.0.0.1 (both ends in the job, a few bytes queued unread in each direction) and,
as the baseline, the same job holding none; dumps it (killing it), restores it
detached, and lets it check after the restore that every connection still carries
data both ways. Prints medians of --runs runs after one warm-up: freeze_ms and dump_ms
(engine's figures), restore_ms, and the difference to the baseline. Target: under
50 ms added to the freeze.

Usage (as root): /usr/bin/python3 bench/tcp_bench.py [--conns 100] [--runs 5]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

JOB = r'''
import os, socket, sys, time
n, go = int(sys.argv[1]), sys.argv[2]
srv = socket.create_server(("127.0.0.1", 0), backlog=n + 1)
pairs = []
for i in range(n):
    c = socket.create_connection(srv.getsockname())
    a, _ = srv.accept()
    c.sendall(b"c%d" % i)  # left unread: queued in each direction
    a.sendall(b"a%d" % i)
    pairs.append((c, a))
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.01)
bad = 0
for i, (c, a) in enumerate(pairs):
    c.sendall(b"!")
    a.sendall(b"!")
    want_a, want_c = b"c%d!" % i, b"a%d!" % i
    got_a = b""
    while len(got_a) < len(want_a):
        got_a += a.recv(64)
    got_c = b""
    while len(got_c) < len(want_c):
        got_c += c.recv(64)
    bad += got_a != want_a or got_c != want_c
print("ok" if not bad else f"FAIL {bad} connections differ", flush=True)
'''


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(cond, timeout: float, what: str):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


def one_run(ckpt: Path, scratch: Path, n: int) -> dict:
    """One dump and restore of the job holding n connections; the engine's timings."""
    work, image = scratch / "job", scratch / "image"
    for d in (work, image):
        shutil.rmtree(d, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "job.py").write_text(JOB)
    out = work / "stdout"
    cp = subprocess.run([str(ckpt), "run", "--detach", "--stdout", str(out), "--stderr",
                         str(work / "stderr"), "--cwd", str(work), "--", "/usr/bin/python3",
                         str(work / "job.py"), str(n), str(work / "go")],
                        capture_output=True, text=True, timeout=60, check=True)
    init = int(cp.stdout.split()[0])
    wait_for(lambda: out.exists() and out.read_text().startswith("ready"), 120, "the job")
    d = subprocess.run([str(ckpt), "dump", "--pid", str(init), "--dir", str(image), "--json"],
                       capture_output=True, text=True, timeout=300)
    if d.returncode != 0:
        raise RuntimeError(f"dump failed: {d.stderr.strip()}")
    dstats = json.loads(d.stdout.strip().splitlines()[-1])
    wait_for(lambda: not alive(init), 60, "the dumped job to end")
    r = subprocess.run([str(ckpt), "restore", "--dir", str(image), "--detach", "--json"],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"restore failed: {r.stderr.strip()}")
    rstats = [json.loads(l) for l in r.stderr.splitlines() if l.startswith("{")][-1]
    rinit = int(r.stdout.split()[0])
    (work / "go").touch()
    wait_for(lambda: not alive(rinit), 120, "the restored job to end")
    if not out.read_text().endswith("ok\n"):
        os.kill(rinit, signal.SIGKILL) if alive(rinit) else None
        raise RuntimeError(f"restored job: {out.read_text()[-300:]!r}")
    return {"freeze_ms": dstats["freeze_ms"], "dump_ms": dstats["dump_ms"],
            "restore_ms": rstats["restore_ms"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=os.environ.get("FSCHED_BUILD", str(REPO / "build")))
    ap.add_argument("--conns", type=int, default=100)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--scratch", default="/tmp/fsched-tcp-bench")
    args = ap.parse_args()
    ckpt = Path(args.build) / "src" / "tools" / "fsched-ckpt"
    scratch = Path(args.scratch)
    med = {}
    for n in (0, args.conns):
        one_run(ckpt, scratch, n)  # warm-up, discarded
        runs = [one_run(ckpt, scratch, n) for _ in range(args.runs)]
        med[n] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"{n:>6} connections: " + "  ".join(f"{k} {v:.1f}" for k, v in med[n].items()), flush=True)
    print(f" added: " + "  ".join(f"{k} {med[args.conns][k] - med[0][k]:+.1f}" for k in med[0]))
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
