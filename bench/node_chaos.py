#!/usr/bin/python3
"""Node failure soak (issue 12): random node crashes, network partitions and SIGSTOPs
of fschedd on a cluster of separate hosts (tests/e2e/netcluster.py) while checkpointed
jobs run, for --minutes (default 20). Counts what must stay zero:

  jobs lost         a job that did not end COMPLETED (NODE_FAIL, FAILED, stuck...): every
                    job is submitted with --requeue and must survive any failure
  jobs run twice    two live copies of a job: its trace.log (tests/e2e/nodefail.py: each
                    step records the network namespace, i.e. the host, that ran it) shows
                    more host changes than the job had runs (Restarts + 1), or its
                    starts.log more starts from scratch than runs
  outputs differing results.txt or stdout not byte-identical to an uninterrupted run
                    (computed by nodefail.expected)
  false DOWNs       a node seen DOWN or NOT_RESPONDING while it was neither crashed nor
                    partitioned (nor within a short settling time after): a SIGSTOP of
                    fschedd is always shorter than SlurmdTimeout and must cost nothing

--timeouts default (the default: HeartbeatInterval 10, SlurmdTimeout 300,
requeue_timeout 60) is what the false-DOWN figure is about; seed (the seed's aggressive
block) and fast (SlurmdTimeout 6, requeue_timeout 4) see many more recoveries in the same
time. Event durations scale with the timeouts: a crash or partition lasts 0.3 to 1.6 times
SlurmdTimeout + requeue_timeout (so some heal before the node is DOWN and some after),
a SIGSTOP 0.1 to 0.5 SlurmdTimeout. At least one node is always left alone.

Usage (as root): /usr/bin/python3 bench/node_chaos.py [--minutes 20] [--timeouts default|seed|fast]
                 [--nodes 3] [--jobs 4] [--seed N] [--build build] [--out FILE]
Exit status 1 when any count is not zero.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests/e2e"))
from netcluster import NetCluster  # noqa: E402
from nodefail import Watch, host_runs, make_workdir, output_problems, starts, trace_hosts  # noqa: E402

TIMEOUTS = {
    "default": dict(HeartbeatInterval=10, SlurmdTimeout=300, AuthInfo="requeue_timeout=60"),
    "seed": dict(BatchStartTimeout=10, SlurmdTimeout=15, HeartbeatInterval=5,
                 AuthInfo="cred_expire=180,ttl=180,requeue_timeout=30"),
    "fast": dict(HeartbeatInterval=1, SlurmdTimeout=6, AuthInfo="requeue_timeout=4"),
}
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")


def ensure_user(name: str) -> str:
    if subprocess.run(["id", "-u", name], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True, timeout=60)
    return name


class Chaos:
    def __init__(self, c: NetCluster, work: Path, user: str, rng: random.Random, st: int, rt: int, hb: int,
                 checkpoint: str, log):
        self.c, self.work, self.user, self.rng = c, work, user, rng
        self.st, self.rt, self.hb = st, rt, hb
        self.checkpoint = checkpoint
        self.log = log
        self.jobs: dict[int, dict] = {}       # in flight: id -> {"dir", "steps"}
        self.done: list[dict] = []            # classified
        self.active: dict[str, dict] = {}     # node -> {"kind", "until"}
        self.windows: dict[str, list[list[float]]] = {n: [] for n in c.node_ports}  # crash/partition
        self.events: list[dict] = []
        self.n = 0

    # ------------------------------------------------------------ jobs
    def submit(self):
        self.n += 1
        d = make_workdir(self.work, f"job{self.n}", self.user)
        steps = self.rng.randint(150, 400)
        jid = self.c.sbatch("--requeue", f"--checkpoint={self.checkpoint}", "job.sh", steps, 0.5,
                            user=self.user, cwd=d)
        self.jobs[jid] = {"dir": d, "steps": steps}

    def classify(self, jid: int, job: dict | None):
        info = self.jobs.pop(jid)
        d, steps = info["dir"], info["steps"]
        state = job["state"] if job else "UNKNOWN"
        restarts = job.get("restarts", 0) if job else 0
        r = {"job": jid, "state": state, "restarts": restarts, "starts": starts(d),
             "hosts": len(host_runs(trace_hosts(d))), "lost": state != "COMPLETED", "twice": False,
             "differs": []}
        if r["hosts"] > restarts + 1 or r["starts"] > restarts + 1:
            r["twice"] = True
        if state == "COMPLETED":
            r["differs"] = output_problems(d, jid, steps, from_scratch_ok=r["starts"] > 1, check_hosts=False)
        self.done.append(r)
        bad = [k for k in ("lost", "twice") if r[k]] + (["differs"] if r["differs"] else [])
        self.log(f"job {jid}: {state}, restarts {restarts}, {r['hosts']} host run(s), {r['starts']} start(s)"
                 + (f"  <-- {', '.join(bad)} {r['differs']}" if bad else ""))

    def poll_jobs(self, jobs: dict):
        for jid in list(self.jobs):
            j = jobs.get(jid)
            if j and j["state"] in FINAL:
                self.classify(jid, j)

    # ------------------------------------------------------------ events
    def start_event(self, now: float):
        calm = [n for n in self.c.node_ports if n not in self.active]
        if len(calm) <= 1:
            return  # at least one node is left alone
        node = self.rng.choice(calm)
        kind = self.rng.choice(["crash", "partition", "sigstop"])
        if kind == "sigstop":
            dur = self.rng.uniform(0.1, 0.5) * self.st
            self.c.stop_daemon(node, signal.SIGSTOP)
        else:
            dur = self.rng.uniform(0.3, 1.6) * (self.st + self.rt)
            (self.c.crash_node if kind == "crash" else self.c.partition)(node)
            self.windows[node].append([now, float("inf")])
        self.active[node] = {"kind": kind, "until": now + dur}
        self.events.append({"t": now, "node": node, "kind": kind, "seconds": dur})
        self.log(f"{kind} {node} for {dur:.0f} s")

    def end_event(self, node: str, now: float):
        kind = self.active.pop(node)["kind"]
        if kind == "sigstop":
            self.c.cont_daemon(node)
        elif kind == "crash":
            self.c.start_node(node)
        else:
            self.c.heal(node)
        if kind != "sigstop":
            # Settling: back within a few heartbeats (a crashed node registers anew).
            self.windows[node][-1][1] = now + 3 * self.hb + 15
        self.log(f"end of {kind} of {node}")

    def tick(self, now: float):
        for node, ev in list(self.active.items()):
            if now >= ev["until"]:
                self.end_event(node, now)

    def end_all(self, now: float):
        for node in list(self.active):
            self.end_event(node, now)

    def false_downs(self, samples) -> list[tuple[float, str, str]]:
        """(time, node, state) of each entry into DOWN/NOT_RESPONDING outside a crash or
        partition window."""
        out, bad_before = [], {n: False for n in self.windows}
        for t, _, nodes in samples:
            for name, n in nodes.items():
                bad = n["state"] == "DOWN" or bool(n.get("not_responding"))
                if bad and not bad_before.get(name, False):
                    if not any(a <= t <= b for a, b in self.windows.get(name, [])):
                        out.append((t, name, n["state"]))
                bad_before[name] = bad
        return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=20)
    ap.add_argument("--timeouts", choices=sorted(TIMEOUTS), default="default")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=4, help="jobs kept in flight")
    ap.add_argument("--checkpoint", default="0:20", help="the jobs' --checkpoint interval")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--build", default=os.environ.get("FSCHED_BUILD", str(REPO / "build")))
    ap.add_argument("--scratch", default="/var/tmp/fsched-chaos")
    ap.add_argument("--user", default="fschedtest")
    ap.add_argument("--out")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    seed = args.seed if args.seed is not None else int(time.time())
    rng = random.Random(seed)
    conf = TIMEOUTS[args.timeouts]
    st = int(conf["SlurmdTimeout"])
    rt = int(conf["AuthInfo"].split("requeue_timeout=")[1].split(",")[0])
    hb = int(conf["HeartbeatInterval"])
    user = ensure_user(args.user)
    scratch = Path(args.scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    os.chmod(scratch, 0o755)
    t0 = time.time()

    def log(msg):
        print(f"[{time.time() - t0:7.1f}] {msg}", flush=True)
    log(f"seed {seed}, timeouts {args.timeouts} {conf}, {args.nodes} nodes, {args.jobs} jobs in flight")

    with NetCluster(Path(args.build).resolve(), scratch / "cluster", nodes=args.nodes, cpus=args.cpus,
                    CRIU_MaxEpochs=2, **conf) as c:
        chaos = Chaos(c, scratch / "jobs", user, rng, st, rt, hb, args.checkpoint, log)
        end = t0 + args.minutes * 60
        next_event = time.time() + rng.uniform(10, 30)
        with Watch(c, interval=1.0) as w:
            while time.time() < end:
                now = time.time()
                chaos.tick(now)
                if now >= next_event:
                    chaos.start_event(now)
                    next_event = now + rng.uniform(0.1, 0.4) * (st + rt) + 5
                while len(chaos.jobs) < args.jobs:
                    chaos.submit()
                last = w.last()
                if last:
                    chaos.poll_jobs(last[1])
                time.sleep(1)
            log("soak over: healing everything, waiting for the jobs in flight")
            chaos.end_all(time.time())
            deadline = time.time() + 2 * (st + rt) + 330  # the longest job: 400 steps of 0.5 s, plus restores
            while chaos.jobs and time.time() < deadline:
                last = w.last()
                if last:
                    chaos.poll_jobs(last[1])
                time.sleep(2)
            final = w.last()
            for jid in list(chaos.jobs):  # never finished: stuck, counted as lost
                chaos.classify(jid, final[1].get(jid) if final else None)
            false = chaos.false_downs(list(w.samples))

    counts = {
        "jobs": len(chaos.done),
        "jobs_lost": sum(r["lost"] for r in chaos.done),
        "jobs_run_twice": sum(r["twice"] for r in chaos.done),
        "outputs_not_identical": sum(bool(r["differs"]) for r in chaos.done),
        "false_downs": len(false),
        "events": {k: sum(e["kind"] == k for e in chaos.events) for k in ("crash", "partition", "sigstop")},
        "recoveries": sum(r["restarts"] for r in chaos.done),
    }
    print(json.dumps(counts, indent=1))
    for t, node, state in false:
        print(f"false DOWN: {node} {state} at {t - t0:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps({"seed": seed, "timeouts": args.timeouts, "counts": counts,
                                              "events": chaos.events, "jobs": chaos.done,
                                              "false_downs": false}, indent=1, default=str))
    shutil.rmtree(scratch, ignore_errors=True)
    sys.exit(1 if counts["jobs_lost"] or counts["jobs_run_twice"] or counts["outputs_not_identical"]
             or counts["false_downs"] else 0)


if __name__ == "__main__":
    main()
