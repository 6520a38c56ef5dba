#!/usr/bin/python3
"""Web console and REST API benchmark (issue 16's figures): a real one-node cluster
(tests/e2e/sched_e2e.py: fschedctld with RestPort and WebRoot = <build>/web, fschedd,
MUNGE) holding N jobs, submitted held through POST /v1/jobs so that none runs.

  submit        N submissions through the REST API (8 clients at once): per second
  list          GET /v1/jobs at N jobs: requests per second from 1 client and from 8,
                and the reply's size
  render        time to first render of the console's Jobs page in headless Chromium
                (bench/console_bench.mjs): from the start of the navigation to the
                first row drawn, the page's own GET + parse + draw, and of that the
                controller's time to the reply's first byte, per run
  rss           fschedctld's RSS (VmRSS) after the submissions, and after the console
                and the list benchmark have used it

Usage (as root, after a build and scripts/install-deps.sh):
  /usr/bin/python3 bench/console_bench.py [--build build] [--jobs 10000] [--runs 5] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests/e2e"))
from sched_e2e import Cluster  # noqa: E402
from sched_bench import rss_mib  # noqa: E402


def call(url: str, token: str, method="GET", body=None) -> bytes:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"X-SLURM-USER-TOKEN": token, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read()


def bench_submit(c: Cluster, token: str, work: Path, n: int) -> dict:
    body = {"script": "#!/bin/bash\ntrue\n", "argv": [], "env": {"PATH": "/usr/bin:/bin"}, "name": "held",
            "work_dir": str(work), "stdout": str(work / "slurm-%j.out"), "stderr": "", "partition": "",
            "cpus_per_task": 1, "ntasks": 1, "mem_mb": 0, "time_limit": 0, "checkpoint_interval": 0,
            "requeue": True, "hold": True}
    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as ex:
        list(ex.map(lambda i: call(f"{c.rest_url}/v1/jobs", token, "POST", dict(body, name=f"held-{i}")),
                    range(n)))
    dt = time.monotonic() - t0
    return {"jobs": n, "seconds": round(dt, 2), "per_second": round(n / dt, 1)}


def bench_list(c: Cluster, token: str, seconds: float = 10) -> dict:
    size = len(call(f"{c.rest_url}/v1/jobs", token))
    out = {"reply_bytes": size}
    for clients in (1, 8):
        done = 0
        deadline = time.monotonic() + seconds

        def loop(_):
            n = 0
            while time.monotonic() < deadline:
                call(f"{c.rest_url}/v1/jobs", token)
                n += 1
            return n
        t0 = time.monotonic()
        with ThreadPoolExecutor(clients) as ex:
            done = sum(ex.map(loop, range(clients)))
        out[f"per_second_{clients}_clients"] = round(done / (time.monotonic() - t0), 1)
    return out


def bench_render(c: Cluster, token: str, runs: int) -> dict:
    env = dict(os.environ, CONSOLE_URL=c.rest_url, TOKEN=token, RUNS=str(runs))
    r = subprocess.run(["node", str(REPO / "bench/console_bench.mjs")], env=env, capture_output=True, text=True,
                       timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"console_bench.mjs failed: {r.stderr.strip()}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["first_render_ms_median"] = sorted(res["first_render_ms"])[len(res["first_render_ms"]) // 2]
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=str(REPO / "build"))
    ap.add_argument("--jobs", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out")
    a = ap.parse_args()
    build = Path(a.build).resolve()
    with tempfile.TemporaryDirectory(prefix="console-bench-", dir="/var/tmp") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)
        work = root / "work"
        work.mkdir()
        c = Cluster(build, root / "cluster", nodes=1).start()
        try:
            token = c.token(lifespan=3600)
            res = {"jobs": a.jobs}
            res["submit"] = bench_submit(c, token, work, a.jobs)
            res["rss_mib_after_submit"] = round(rss_mib(c.ctld.pid), 1)
            res["list"] = bench_list(c, token)
            res["render"] = bench_render(c, token, a.runs)
            res["rss_mib_after_console"] = round(rss_mib(c.ctld.pid), 1)
        finally:
            c.stop()
    text = json.dumps(res, indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
