#!/usr/bin/python3
"""Incremental images and pre-dump (issue 14, docs/incremental.md), measured side by side.

A job (bench/dirty_job) holds --mib MiB of incompressible memory and rewrites --percent
% of its pages per round. Each run, on fresh jobs:

- chain: a full dump with --track-mem (left running), then after each round an
  incremental dump on the one before, 8 of them: dump time, freeze and image size of
  the full image against the incrementals (left running, with --track-mem);
- restore: the job's state dumped both as a full image (left running) and, at once,
  as a 9th incremental that kills it; each restored (detached, then killed): restore
  time from the chain of a full image and 9 incrementals (seed 002's CRIU_FullEvery=10
  example) against the full image (target: at most 1.2x);
- freeze: a fresh job dumped plainly (killed) against another pre-dumped, run for one
  round, then dumped on the pre-dump (killed), and a third pre-dumped and dumped left
  running (the scheduler's periodic checkpoint with CRIU_PreDump): freeze times
  (target: at most 100 ms on the pre-dump, where the plain dump freezes for seconds);
- pre-copy: incrementals of one job left running, with and without the pre-copy
  round (`--no-pre-copy`) in turn: freeze, the freeze's pages phase and dump time;
- tracking: the rounds of the chain's job (each after a dump that reset the tracking:
  every first write to a page takes a fault) against the same rounds of a job never
  dumped, each round after a sync (so that no writeback of an image runs beside it):
  the cost of one first write, and from it the slowdown of a job that writes 1 GiB/s
  over this much memory with a checkpoint every 60 s (each page faults at most once
  per interval).

With --track-method hash every dump compares page hashes instead (page_hashes.h):
the rounds after a dump then take no fault, and the dumps read all the memory.

Prints medians of --runs runs. Usage (as root):
  /usr/bin/python3 bench/incremental_bench.py [--mib 2048] [--percent 5] [--runs 5]
      [--track-method kernel|hash]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class Job:
    def __init__(self, ckpt: Path, prog: Path, scratch: Path, name: str, args: list[str]):
        self.ckpt, self.dir = ckpt, scratch / name
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.go = self.dir / "go"
        self.out = self.dir / "out"
        pidfile = self.dir / "pid"
        # The detached init keeps no pipe of ours open: --pidfile, not its stdout.
        subprocess.run([str(ckpt), "run", "--detach", "--pidfile", str(pidfile), "--stdout",
                        str(self.out), "--", str(prog), *args[:3], str(self.go), *args[3:]],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)
        self.pid = int(pidfile.read_text().split()[0])
        self.wait_line("ready")
        self.rounds = 0

    def wait_line(self, prefix: str, timeout: float = 600) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.out.exists():
                for line in self.out.read_text().splitlines():
                    if line.startswith(prefix):
                        return line
            time.sleep(0.01)
        raise RuntimeError(f"no line {prefix!r} from the job in {self.dir}")

    def round(self) -> float:
        """Runs one round; returns its duration in ms as the job measured it."""
        self.rounds += 1
        self.go.touch()
        return float(self.wait_line(f"round {self.rounds} ").split()[3])

    def ckpt_json(self, args: list[str], stream: str = "stdout") -> dict:
        r = subprocess.run([str(self.ckpt), *args], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({r.returncode}): {r.stderr.strip()}")
        text = r.stdout if stream == "stdout" else r.stderr
        return json.loads([ln for ln in text.splitlines() if ln.startswith("{")][-1])

    def dump(self, image: Path, *extra: str) -> dict:
        return self.ckpt_json(["dump", "--pid", str(self.pid), "--dir", str(image), "--json",
                               *extra])

    def kill(self):
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def restore_stats(ckpt: Path, image: Path) -> dict:
    pidfile, err = Path(str(image) + ".pid"), Path(str(image) + ".err")
    with open(err, "w") as e:
        r = subprocess.run([str(ckpt), "restore", "--dir", str(image), "--detach", "--json",
                            "--pidfile", str(pidfile)],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=e)
    if r.returncode != 0:
        raise RuntimeError(f"restore of {image} failed: {err.read_text().strip()}")
    st = json.loads([ln for ln in err.read_text().splitlines() if ln.startswith("{")][-1])
    os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)
    return st


def one_run(ckpt: Path, prog: Path, scratch: Path, mib: int, percent: float,
            method: tuple[str, ...]) -> dict:
    args = [str(mib), str(percent), "100"]
    out: dict = {}
    # chain and restore
    job = Job(ckpt, prog, scratch, "chain", args)
    images = scratch / "images"
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir()
    try:
        full = job.dump(images / "link-0", "--leave-running", "--track-mem", *method)
        incr, tracked = [], []
        for i in range(1, 9):
            os.sync()
            tracked.append(job.round())
            incr.append(job.dump(images / f"link-{i}", "--leave-running", "--track-mem",
                                 "--parent", str(images / f"link-{i - 1}"), *method))
            assert incr[-1]["incremental"], incr[-1]
        job.round()
        job.dump(images / "full", "--leave-running")
        last = job.dump(images / "link-9", "--parent", str(images / "link-8"), *method)
        assert last["incremental"], last
    finally:
        job.kill()
    out["tracked_round_ms"] = statistics.median(tracked)
    out["pages_per_round"] = int(mib * 256 * percent / 100)
    out["full_dump_ms"], out["full_freeze_ms"] = full["dump_ms"], full["freeze_ms"]
    out["full_image_mib"] = full["image_bytes"] / 1048576
    out["incr_dump_ms"] = statistics.median(s["dump_ms"] for s in incr)
    out["incr_freeze_ms"] = statistics.median(s["freeze_ms"] for s in incr)
    out["incr_image_mib"] = statistics.median(s["image_bytes"] for s in incr) / 1048576
    for name, image in (("full", images / "full"), ("chain", images / "link-9")):
        st = restore_stats(ckpt, image)
        out[f"restore_{name}_ms"] = st["restore_ms"]
        # Where the time goes: verifying every link before any process exists, then
        # the phases of the restore itself.
        out[f"restore_{name}_verify_ms"] = st["verify_ms"]
        for phase, ms in st.get("phases_ms", {}).items():
            out[f"restore_{name}_{phase}_ms"] = ms
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir()
    # freeze: plain dump against pre-dump + dump
    plain = Job(ckpt, prog, scratch, "plain", args)
    try:
        plain.round()
        out["plain_freeze_ms"] = plain.dump(images / "plain")["freeze_ms"]
    finally:
        plain.kill()
    pre = Job(ckpt, prog, scratch, "pre", args)
    try:
        pre.ckpt_json(["pre-dump", "--pid", str(pre.pid), "--dir", str(images / "pre"), "--json",
                       *method])
        pre.round()
        st = pre.dump(images / "final", "--parent", str(images / "pre"), *method)
        out["predump_freeze_ms"] = st["freeze_ms"]
        for phase, ms in st.get("phases_ms", {}).items():
            out[f"predump_phase_{phase}_ms"] = ms
    finally:
        pre.kill()
    # The scheduler's periodic checkpoint with CRIU_PreDump: the job runs on after the
    # dump, which need not wait for the disk.
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir()
    pre = Job(ckpt, prog, scratch, "pre-leave", args)
    try:
        pre.ckpt_json(["pre-dump", "--pid", str(pre.pid), "--dir", str(images / "pre"), "--json",
                       *method])
        pre.round()
        st = pre.dump(images / "final", "--leave-running", "--track-mem", "--parent",
                      str(images / "pre"), *method)
        assert st["incremental"], st
        out["predump_leave_freeze_ms"] = st["freeze_ms"]
    finally:
        pre.kill()
    # The pre-copy round (precopy.h) on and off, side by side: incrementals of one job
    # left running, alternating `--no-pre-copy`, each after a round.
    if not method or method[1] == "kernel":
        shutil.rmtree(images, ignore_errors=True)
        images.mkdir()
        ab = Job(ckpt, prog, scratch, "pre-copy", args)
        try:
            ab.dump(images / "0", "--leave-running", "--track-mem", *method)
            on, off = [], []
            for i in range(1, 9):
                os.sync()
                ab.round()
                st = ab.dump(images / str(i), "--leave-running", "--parent", str(images / str(i - 1)),
                             *(() if i % 2 else ("--no-pre-copy",)), *method)
                assert st["incremental"], st
                (on if i % 2 else off).append(st)
                shutil.rmtree(images / str(i - 1))
        finally:
            ab.kill()
        for name, sts in (("on", on), ("off", off)):
            out[f"precopy_{name}_freeze_ms"] = statistics.median(s["freeze_ms"] for s in sts)
            out[f"precopy_{name}_pages_ms"] = statistics.median(s["phases_ms"]["pages"] for s in sts)
            out[f"precopy_{name}_dump_ms"] = statistics.median(s["dump_ms"] for s in sts)
        out["precopy_on_round_ms"] = statistics.median(s["pre_copy_ms"] for s in on)
    plain2 = Job(ckpt, prog, scratch, "untracked", args)
    try:
        untracked = []
        for _ in range(8):
            os.sync()
            untracked.append(plain2.round())
        out["untracked_round_ms"] = statistics.median(untracked)
    finally:
        plain2.kill()
    shutil.rmtree(images, ignore_errors=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=2048)
    ap.add_argument("--percent", type=float, default=5)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--build", type=Path, default=REPO / "build")
    ap.add_argument("--scratch", type=Path, default=Path("/var/tmp/fsched-incr-bench"))
    ap.add_argument("--track-method", choices=("kernel", "hash"),
                    help="passed to every dump and pre-dump (default: the engine's)")
    a = ap.parse_args()
    method = ("--track-method", a.track_method) if a.track_method else ()
    ckpt = (a.build / "src/tools/fsched-ckpt").resolve()
    prog = (a.build / "bench/dirty_job").resolve()
    runs = [one_run(ckpt, prog, a.scratch, a.mib, a.percent, method) for _ in range(a.runs)]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(json.dumps({"runs": runs, "median": med}, indent=1))
    print(f"{a.mib} MiB job, {a.percent}% rewritten per round, tracking by "
          f"{a.track_method or 'the default method'}; medians of {a.runs}:")
    print(f"  dump: full {med['full_dump_ms']:.0f} ms ({med['full_image_mib']:.0f} MiB), "
          f"incremental {med['incr_dump_ms']:.0f} ms ({med['incr_image_mib']:.0f} MiB)")
    print(f"  freeze: plain dump {med['plain_freeze_ms']:.0f} ms, dump on a pre-dump "
          f"{med['predump_freeze_ms']:.0f} ms (both kill the job: the freeze ends at the kill, "
          f"after the image is durable); dump on a pre-dump left running "
          f"{med['predump_leave_freeze_ms']:.0f} ms; incremental left running "
          f"{med['incr_freeze_ms']:.0f} ms")
    if "precopy_on_freeze_ms" in med:
        print(f"  incrementals left running with / without the pre-copy round (alternating, 4 "
              f"each per run): frozen {med['precopy_on_freeze_ms']:.0f} / "
              f"{med['precopy_off_freeze_ms']:.0f} ms (pages phase {med['precopy_on_pages_ms']:.0f} / "
              f"{med['precopy_off_pages_ms']:.0f} ms), dump {med['precopy_on_dump_ms']:.0f} / "
              f"{med['precopy_off_dump_ms']:.0f} ms; the round {med['precopy_on_round_ms']:.0f} ms "
              f"before the freeze")
    print("  phases of the dump on a pre-dump: " + ", ".join(
        f"{k[len('predump_phase_'):-3]} {med[k]:.0f}" for k in med
        if k.startswith("predump_phase_")))
    print(f"  restore: full image {med['restore_full_ms']:.0f} ms, full + 9 incrementals "
          f"{med['restore_chain_ms']:.0f} ms "
          f"({med['restore_chain_ms'] / med['restore_full_ms']:.2f}x); of which verifying "
          f"{med['restore_full_verify_ms']:.0f} / {med['restore_chain_verify_ms']:.0f} ms")
    print("  restore phases (full / chain): " + ", ".join(
        f"{k[len('restore_full_'):-3]} {med[k]:.0f} / {med.get('restore_chain_' + k[len('restore_full_'):], 0):.0f}"
        for k in med if k.startswith("restore_full_") and k.count("_") > 2 and k != "restore_full_verify_ms"))
    fault_us = (med["tracked_round_ms"] - med["untracked_round_ms"]) * 1000 / med["pages_per_round"]
    pages = a.mib * 256
    print(f"  a round ({med['pages_per_round']:.0f} pages written) after a reset "
          f"{med['tracked_round_ms']:.1f} ms, never dumped {med['untracked_round_ms']:.1f} ms: "
          f"{fault_us:.2f} us per first write; a job writing 1 GiB/s over {a.mib} MiB, "
          f"checkpointed every 60 s: at most {min(pages, 262144 * 60)} faults per 60 s, "
          f"{min(pages, 262144 * 60) * fault_us / 1e6 / 60 * 100:.2f}% slower")
    shutil.rmtree(a.scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
