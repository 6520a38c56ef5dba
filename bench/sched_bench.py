#!/usr/bin/python3
"""Scheduler benchmark: a real fschedctld + fschedd on loopback with MUNGE, driven by the
real commands (the cluster of tests/e2e/sched_e2e.py).

  submit        N sbatch commands in a loop (held jobs, so only the submission path is
                timed): submissions per second through the command
  latency       M jobs submitted one at a time on an idle node: time from just before
                sbatch until the job's first line runs (it writes a timestamp), median
                and p99
  rss           controller RSS (VmRSS) after 10,000 jobs are in its database, and after a
                restart that loads them all
  ckpt_lag      twenty jobs with --checkpoint=0:10 running at once for --ckpt-seconds:
                how far behind start + k*10 s each periodic checkpoint was triggered,
                and how many were Present

Usage (as root): /usr/bin/python3 bench/sched_bench.py [--build build] [--quick] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests/e2e"))
from sched_e2e import Cluster  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def bench_submit(c: Cluster, work: Path, n: int) -> dict:
    script = work / "held.sh"
    script.write_text("#!/bin/bash\ntrue\n")
    t0 = time.monotonic()
    for _ in range(n):
        c.cmd("sbatch", "-H", "--parsable", script, cwd=work)
    dt = time.monotonic() - t0
    return {"jobs": n, "seconds": dt, "per_second": n / dt}


def bench_latency(c: Cluster, work: Path, m: int) -> dict:
    script = work / "stamp.sh"
    script.write_text("#!/bin/bash\ndate +%s.%N > \"stamp-$SLURM_JOB_ID\"\n")
    lat = []
    for _ in range(m):
        t0 = time.time()
        jid = c.sbatch(script, cwd=work)
        stamp = work / f"stamp-{jid}"
        c.wait_for(lambda: stamp.exists() and stamp.read_text().strip(), 30, f"job {jid} to start", interval=0.002)
        lat.append((float(stamp.read_text()) - t0) * 1000)
        c.wait_state(jid, "COMPLETED", timeout=30)
    return {"jobs": m, "median_ms": statistics.median(lat), "p99_ms": pct(lat, 99), "max_ms": max(lat)}


def bench_rss(c: Cluster, work: Path, total: int) -> dict:
    script = work / "held.sh"
    script.write_text("#!/bin/bash\ntrue\n")
    have = len(json.loads(c.cmd("squeue", "--json", "-t", "all").stdout)["jobs"])
    with ThreadPoolExecutor(4) as ex:
        list(ex.map(lambda _: c.cmd("sbatch", "-H", "--parsable", script, cwd=work), range(max(0, total - have))))
    jobs = len(json.loads(c.cmd("squeue", "--json", "-t", "all").stdout)["jobs"])
    running = rss_mib(c.ctld.pid)
    c.kill_ctld()
    c.start_ctld()
    c.cmd("squeue")
    return {"jobs": jobs, "rss_mib_running": running, "rss_mib_after_restart": rss_mib(c.ctld.pid)}


def bench_ckpt_lag(c: Cluster, work: Path, jobs: int, seconds: int) -> dict:
    prog = work / "spin.py"
    prog.write_text("import time, sys\nx = bytearray(16 << 20)\nfor i in range(10**9):\n"
                    "    x[i % len(x)] = i & 255\n    if i % 100000 == 0: time.sleep(0.05)\n")
    script = work / "spin.sh"
    script.write_text(f"#!/bin/bash\nexec python3 {prog}\n")
    ids = [c.sbatch("--checkpoint=0:10", script, cwd=work) for _ in range(jobs)]
    for j in ids:
        c.wait_state(j, "RUNNING", timeout=60)
    time.sleep(seconds)
    lags, present, failed, durations, expected = [], 0, 0, [], 0
    for j in ids:
        info = c.job(j)
        start = info["start_time"]
        expected += int((time.time() - start) // 10)
        for ck in c.checkpoints(j):
            k = round((ck["trigger_time"] - start) / 10)
            lags.append(ck["trigger_time"] - (start + 10 * max(k, 1)))
            present += ck["status"] in ("Present", "Cleared")
            failed += ck["status"] in ("Failed", "Timeout")
            durations.append(ck["duration"])
        c.cmd("scancel", j)
    return {"jobs": jobs, "seconds": seconds, "checkpoints": len(lags), "present": present, "failed": failed,
            "expected": expected, "lag_median_s": statistics.median(lags), "lag_p99_s": pct(lags, 99),
            "lag_max_s": max(lags), "duration_median_s": statistics.median(durations)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=str(REPO / "build"))
    ap.add_argument("--quick", action="store_true", help="fewer jobs (200 submissions, 2,000 in the RSS test)")
    ap.add_argument("--ckpt-seconds", type=int, default=60)
    ap.add_argument("--only", choices=["submit", "latency", "ckpt_lag", "rss"], action="append",
                    help="run only these parts (repeatable)")
    ap.add_argument("--out")
    a = ap.parse_args()
    build = Path(a.build).resolve()
    root = Path(tempfile.mkdtemp(prefix="fsched-sched-bench-", dir="/var/tmp"))
    os.chmod(root, 0o755)
    work = root / "work"
    work.mkdir()
    res = {}
    c = Cluster(build, root / "cluster", nodes=1, cpus=24, CRIU_MaxEpochs=2, HeartbeatInterval=5).start()
    try:
        want = lambda part: not a.only or part in a.only  # noqa: E731
        n = 200 if a.quick else 1000
        if want("submit"):
            res["submit"] = r = bench_submit(c, work, n)
            print(f"submit: {n} sbatch in {r['seconds']:.1f} s = {r['per_second']:.0f}/s", flush=True)
            for j in json.loads(c.cmd("squeue", "--json").stdout)["jobs"]:
                c.cmd("scancel", j["job_id"])
        if want("latency"):
            res["latency"] = r = bench_latency(c, work, 20 if a.quick else 50)
            print(f"submit to running: median {r['median_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms", flush=True)
        if want("ckpt_lag"):
            res["ckpt_lag"] = r = bench_ckpt_lag(c, work, 20, a.ckpt_seconds)
            print(f"20 jobs --checkpoint=0:10 for {r['seconds']} s: {r['checkpoints']} triggered (expected "
                  f"{r['expected']}), {r['present']} Present, {r['failed']} failed; lag median "
                  f"{r['lag_median_s']:.2f} s, p99 {r['lag_p99_s']:.2f} s, max {r['lag_max_s']:.2f} s; "
                  f"checkpoint duration median {r['duration_median_s']:.2f} s", flush=True)
        if want("rss"):
            res["rss"] = r = bench_rss(c, work, 2000 if a.quick else 10000)
            print(f"controller RSS with {r['jobs']} jobs: {r['rss_mib_running']:.1f} MiB, "
                  f"{r['rss_mib_after_restart']:.1f} MiB after a restart", flush=True)
    finally:
        c.stop()
        subprocess.run(["rm", "-rf", str(root)])
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
