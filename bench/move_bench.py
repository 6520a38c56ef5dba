#!/usr/bin/python3
"""Moving jobs without losing work (issue 15): node drain and preemption by checkpoint,
on clusters of separate hosts (tests/e2e/netcluster.py), jobs of the unprivileged user
running tests/e2e/nodefail.py's PROG_PY with --mib MiB of incompressible memory each.

drain       two nodes of 4 CPUs; 4 jobs with --checkpoint on node1, then
            `scontrol update NodeName=node1 State=DRAIN`. Measured from the command:
              drained   until sinfo shows node1 DRAINED
              moved     until all 4 jobs run on node2 (restore confirmed)
            against the target: the sum of the 4 jobs' checkpoint durations and restore
            times (checkpoint list `duration`; restore: checkpoint done -> running again)
            plus 2 s.
preemption  one node of 2 CPUs, partitions low (PriorityTier 1) and high (10),
            PreemptMode=CHECKPOINT; a low-tier job of 2 CPUs runs, a high-tier one of 2
            CPUs is submitted:
              latency   the high-tier job's start_time - submit_time
              lost      steps the low-tier job did twice (its trace.log lines - steps):
                        the seconds of progress lost are lost * step time, target 0

Prints every trial and the medians; --out writes them as JSON.

Usage (as root): /usr/bin/python3 bench/move_bench.py [--trials 3] [--mib 512]
                 [--build build] [--scratch /var/tmp/fsched-movebench] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests/e2e"))
from netcluster import NetCluster  # noqa: E402
from nodefail import make_workdir, steps_done, trace_hosts  # noqa: E402

USER = "fschedtest"
DELAY = 0.25
BASE = dict(HeartbeatInterval=1, SlurmdTimeout=30, CheckpointTimeout=600)


def ensure_user(name: str) -> str:
    if subprocess.run(["id", "-u", name], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True, timeout=60)
    return name


def node_state(c, name: str) -> str:
    return next(n["state"] for n in c.node_list() if n["name"] == name)


def drain_trial(build: Path, scratch: Path, mib: int, i: int) -> dict:
    root = scratch / f"drain{i}"
    shutil.rmtree(root, ignore_errors=True)
    c = NetCluster(build, root, nodes=2, cpus=4, **BASE)
    c.start()
    try:
        c.cmd("scontrol", "update", "NodeName=node2", "State=DRAIN", "Reason=bench")
        dirs = [make_workdir(root / "jobs", f"j{k}", USER) for k in range(4)]
        ids = [c.sbatch("--checkpoint=60:00", "job.sh", 100000, DELAY, mib, user=USER, cwd=d) for d in dirs]
        for jid in ids:
            c.wait_state(jid, "RUNNING", timeout=120)
        c.wait_for(lambda: all(steps_done(d) >= 3 for d in dirs), 300, "the jobs' memory allocated")
        c.cmd("scontrol", "update", "NodeName=node2", "State=UNDRAIN")
        c.wait_for(lambda: node_state(c, "node2") == "IDLE", 30, "node2 IDLE")
        t0 = time.time()
        c.cmd("scontrol", "update", "NodeName=node1", "State=DRAIN", "Reason=bench")
        drained = moved = None
        running_at: dict[int, float] = {}
        while moved is None or drained is None:
            now = time.time()
            if now - t0 > 600:
                raise RuntimeError("drain not done in 600 s")
            if drained is None and node_state(c, "node1") == "DRAINED":
                drained = now - t0
            for jid in ids:
                j = c.job(jid)
                if jid not in running_at and j["state"] == "RUNNING" and j["nodes"] == "node2" \
                        and j["restore_from"] == 0:
                    running_at[jid] = time.time()
            if len(running_at) == len(ids):
                moved = max(running_at.values()) - t0
            time.sleep(0.1)
        dumps, restores = [], []
        for jid in ids:
            ck = c.checkpoints(jid)[-1]
            dumps.append(ck["duration"])
            restores.append(running_at[jid] - ck["completion_time"])
        target = sum(dumps) + sum(restores) + 2
        return {"drained_s": round(drained, 2), "moved_s": round(moved, 2),
                "dump_s": [round(x, 2) for x in dumps], "restore_s": [round(x, 2) for x in restores],
                "target_s": round(target, 2)}
    finally:
        for jid in list(locals().get("ids", [])):
            c.cmd("scancel", jid, check=False)
        c.stop()


def preempt_trial(build: Path, scratch: Path, mib: int, i: int) -> dict:
    root = scratch / f"preempt{i}"
    shutil.rmtree(root, ignore_errors=True)
    c = NetCluster(build, root, nodes=1, cpus=2,
                   partitions=["PartitionName=low Default=YES PriorityTier=1", "PartitionName=high PriorityTier=10"],
                   PreemptType="preempt/partition_prio", PreemptMode="CHECKPOINT", **BASE)
    c.start()
    try:
        low_dir, high_dir = make_workdir(root / "jobs", "low", USER), make_workdir(root / "jobs", "high", USER)
        steps = 80
        low = c.sbatch("-p", "low", "-c", "2", "job.sh", steps, DELAY, mib, user=USER, cwd=low_dir)
        c.wait_state(low, "RUNNING", timeout=120)
        c.wait_for(lambda: steps_done(low_dir) >= 10, 300, "progress of the low-tier job")
        high = c.sbatch("-p", "high", "-c", "2", "job.sh", 8, DELAY, user=USER, cwd=high_dir)
        h = c.wait_state(high, ("RUNNING", "COMPLETED"), timeout=300)
        latency = h["start_time"] - h["submit_time"]
        c.wait_state(low, "COMPLETED", timeout=600)
        lost = len(trace_hosts(low_dir)) - steps
        ck = c.checkpoints(low)
        return {"latency_s": round(latency, 2), "lost_steps": lost,
                "dump_s": round(ck[0]["duration"], 2) if ck else None}
    finally:
        c.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--build", default=str(REPO / "build"))
    ap.add_argument("--scratch", default="/var/tmp/fsched-movebench")
    ap.add_argument("--out")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("move_bench.py: run as root")
    ensure_user(USER)
    build, scratch = Path(a.build).resolve(), Path(a.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    os.chmod(scratch, 0o755)
    drains, preempts = [], []
    for i in range(a.trials):
        drains.append(drain_trial(build, scratch, a.mib, i))
        print(f"drain {i + 1}: {drains[-1]}", flush=True)
        preempts.append(preempt_trial(build, scratch, a.mib, i))
        print(f"preemption {i + 1}: {preempts[-1]}", flush=True)
    med = statistics.median
    print(f"\ndrain of 4 jobs x {a.mib} MiB, medians of {a.trials}: "
          f"DRAINED {med(d['drained_s'] for d in drains):.2f} s, all running on node2 "
          f"{med(d['moved_s'] for d in drains):.2f} s, target (sum of dumps and restores + 2 s) "
          f"{med(d['target_s'] for d in drains):.2f} s")
    print(f"preemption of a {a.mib} MiB job, medians of {a.trials}: latency "
          f"{med(p['latency_s'] for p in preempts):.2f} s, steps lost {max(p['lost_steps'] for p in preempts)} "
          f"(max), its dump {med(p['dump_s'] for p in preempts):.2f} s")
    if a.out:
        Path(a.out).write_text(json.dumps({"drain": drains, "preemption": preempts}, indent=1))


if __name__ == "__main__":
    main()
