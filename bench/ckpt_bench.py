#!/usr/bin/python3
"""Checkpoint/restore benchmark of fsched-ckpt.

For each workload -- memhog holding 64, 512 and 2048 MiB of random (incompressible)
and of text (compressible) memory, and a Python process holding ~200 MiB of objects --
and a tree of 16 memhog processes of 64 MiB each beside one memhog of 1024 MiB, it
runs the job under `fsched-ckpt run --detach`, dumps it (killing it), restores it
detached, lets it verify its memory and end, and records:
  freeze_ms        how long the job was stopped (engine's figure)
  dump_ms          the whole dump including the durable commit (engine's figure)
  image_mib        size of the image directory
  restore_ms       from the start of restore until the job runs again (engine's figure)
  dump_rss_mib     peak RSS of the dump process (wait4 rusage)
  restore_rss_mib  peak RSS of the restore process (wait4 rusage; includes the pages of
                   the image file it maps)
  dump_anon_mib, restore_anon_mib   peak anonymous RSS, sampled every 2 ms
  dump_wall_ms, restore_wall_ms   the commands' wall-clock times
One warm-up run per workload is discarded (this VM's memory balloon makes first runs
slow), then --runs runs; the table shows medians, --out gets every run as JSON.

Usage (as root): /usr/bin/python3 bench/ckpt_bench.py [--quick] [--runs N] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20

PY_HOG = r'''
import os, random, sys, time
mib, go = int(sys.argv[1]), sys.argv[2]
rng = random.Random(7)
# About 2/3 of the memory in distinct 120-byte bytes objects (168 bytes each with their
# list slot and allocator rounding), 1/3 in distinct 61+-bit ints (48 bytes each).
blobs = [rng.randbytes(120) for _ in range(mib * 1024 * 1024 * 2 // 3 // 168)]
ints = [rng.getrandbits(60) | (i << 60) for i in range(mib * 1024 * 1024 // 3 // 48)]
def digest():
    h = 0
    for b in blobs:
        h = (h * 1000003 ^ hash(b)) & 0xFFFFFFFFFFFFFFFF
    return (h ^ sum(ints)) & 0xFFFFFFFFFFFFFFFF
before = digest()
print("ready", len(blobs), len(ints), flush=True)
while not os.path.exists(go):
    time.sleep(0.05)
after = digest()
print("ok %016x" % after if after == before else "mismatch", flush=True)
sys.exit(0 if after == before else 1)
'''


TREE = 16  # processes of the tree workload


def ready(kind: str, text: str) -> bool:
    return text.count("ready") >= (TREE if kind == "tree16" else 1)


def verified(kind: str, text: str) -> bool:
    lines = text.strip().splitlines()
    if kind == "tree16":
        return sum(ln.startswith("ok ") for ln in lines) == TREE and "mismatch" not in text
    return bool(lines) and lines[-1].startswith("ok ")


class BenchError(Exception):
    pass


def rss_anon_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def run_timed(args: list[str], timeout: float) -> tuple[int, str, str, float, int, int]:
    """Runs a command; returns (rc, stdout, stderr, wall ms, peak RSS in KiB, peak
    anonymous RSS in KiB). Peak RSS is ru_maxrss from wait4 and includes file pages the
    command maps (restore maps the image); the anonymous peak is sampled from
    /proc/PID/status every 2 ms. Output goes to files, not pipes, as the child is reaped
    with wait4."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        deadline = t0 + timeout
        anon = 0
        while True:
            anon = max(anon, rss_anon_kib(p.pid))
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                p.kill()
                os.wait4(p.pid, 0)
                p.returncode = -9  # reaped here; keep Popen from waiting again
                raise BenchError(f"{' '.join(args[:2])} timed out after {timeout} s")
            time.sleep(0.002)
        wall = (time.monotonic() - t0) * 1000
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return p.returncode, out.read().decode(), err.read().decode(), wall, ru.ru_maxrss, anon


def restore_stats(stderr: str) -> dict:
    """The JSON figures `fsched-ckpt restore --json` prints on stderr (the last such line)."""
    stats = {}
    for line in stderr.splitlines():
        if line.strip().startswith("{"):
            stats = json.loads(line)
    return stats


def alive(pid: int) -> bool:
    try:
        st = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return st[st.rindex(")") + 2] not in "ZX"


def wait_for(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(0.02)


def dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


class Bench:
    def __init__(self, build: Path, scratch: Path, drop_caches: bool, level: int | None,
                 direct_io: bool = False):
        self.ckpt = build / "src" / "tools" / "fsched-ckpt"
        self.memhog = build / "tests" / "programs" / "memhog"
        for p in (self.ckpt, self.memhog):
            if not os.access(p, os.X_OK):
                raise BenchError(f"{p} is not built (cmake -G Ninja -B {build} && ninja -C {build})")
        self.scratch = scratch
        self.drop_caches = drop_caches
        self.level = level
        self.direct_io = direct_io
        self.inits: set[int] = set()

    def cleanup(self):
        for pid in self.inits:
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def job_argv(self, work: Path, kind: str, mib: int) -> list[str]:
        if kind == "tree16":  # bash with 16 memhog children, mib/16 MiB each
            return ["/bin/bash", "-c", f'for i in $(seq {TREE}); do "{self.memhog}" {mib // TREE} random '
                    f'--go-file "{work / "go"}" & done; wait']
        if kind == "python":
            (work / "hog.py").write_text(PY_HOG)
            return ["/usr/bin/python3", str(work / "hog.py"), str(mib), str(work / "go")]
        return [str(self.memhog), str(mib), kind, "--go-file", str(work / "go")]

    def one_run(self, name: str, kind: str, mib: int) -> dict:
        work = self.scratch / "job"
        image = self.scratch / "image"
        for d in (work, image, Path(str(image) + ".tmp")):
            if d.exists():
                shutil.rmtree(d)
        work.mkdir(parents=True)
        out = work / "stdout"
        argv = self.job_argv(work, kind, mib)
        cp = subprocess.run([str(self.ckpt), "run", "--detach", "--stdout", str(out), "--stderr",
                             str(work / "stderr"), "--cwd", str(work), "--", *argv],
                            capture_output=True, text=True, timeout=60)
        if cp.returncode != 0:
            raise BenchError(f"run failed: {cp.stderr.strip()}")
        init = int(cp.stdout.split()[0])
        self.inits.add(init)
        wait_for(lambda: out.exists() and ready(kind, out.read_text()), 600, f"{name} to be ready")
        if self.drop_caches:
            subprocess.run(["sync"], check=True)
            Path("/proc/sys/vm/drop_caches").write_text("3\n")

        dump_args = [str(self.ckpt), "dump", "--pid", str(init), "--dir", str(image), "--json"]
        if self.level is not None:
            dump_args += ["--compress-level", str(self.level)]
        if self.direct_io:
            dump_args.append("--direct-io")
        rc, dout, derr, dwall, drss, danon = run_timed(dump_args, 900)
        if rc != 0:
            raise BenchError(f"dump of {name} failed: {derr.strip()}")
        dstats = json.loads(dout.strip().splitlines()[-1])
        wait_for(lambda: not alive(init), 60, "the dumped job to end")
        image_bytes = dir_bytes(image)
        if self.drop_caches:
            subprocess.run(["sync"], check=True)
            Path("/proc/sys/vm/drop_caches").write_text("3\n")

        rc, rout, rerr, rwall, rrss, ranon = run_timed(
            [str(self.ckpt), "restore", "--dir", str(image), "--detach", "--json"], 900)
        if rc != 0:
            raise BenchError(f"restore of {name} failed: {rerr.strip()}")
        rstats = restore_stats(rerr)
        rinit = int(rout.split()[0])
        self.inits.add(rinit)
        (work / "go").touch()
        wait_for(lambda: not alive(rinit), 600, f"restored {name} to verify its memory and end")
        if not verified(kind, out.read_text()):
            raise BenchError(f"restored {name} failed its memory check: {out.read_text()[-300:]!r}")
        shutil.rmtree(image)
        return {
            "freeze_ms": dstats["freeze_ms"], "dump_ms": dstats["dump_ms"],
            "memory_mib": dstats["memory_bytes"] / MiB, "image_mib": image_bytes / MiB,
            "restore_ms": rstats.get("restore_ms"),
            "dump_rss_mib": drss / 1024, "restore_rss_mib": rrss / 1024,
            "dump_anon_mib": danon / 1024, "restore_anon_mib": ranon / 1024,
            "dump_wall_ms": dwall, "restore_wall_ms": rwall,
            # where the time went, as the engine reports it (JSON only)
            "dump_phases_ms": dstats.get("phases_ms", {}),
            "restore_phases_ms": rstats.get("phases_ms", {}),
        }


COLUMNS = [("memory_mib", "memory", "{:.0f}"), ("freeze_ms", "freeze ms", "{:.0f}"),
           ("dump_ms", "dump ms", "{:.0f}"), ("image_mib", "image", "{:.1f}"),
           ("restore_ms", "restore ms", "{:.0f}"), ("dump_rss_mib", "dump RSS", "{:.1f}"),
           ("restore_rss_mib", "restore RSS", "{:.1f}"), ("restore_anon_mib", "restore anon", "{:.1f}")]


def machine_info() -> dict:
    """Where a benchmark ran, for the head of its --out JSON."""
    return {"kernel": platform.release(), "machine": platform.machine(), "cpus": os.cpu_count()}


def median(runs: list[dict], key: str):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def print_table(results: list[dict]):
    head = f"{'workload':<18}" + "".join(f"{c[1]:>14}" for c in COLUMNS)
    print(head)
    print("-" * len(head))
    for res in results:
        row = f"{res['workload']:<18}"
        for key, _, fmt in COLUMNS:
            v = res["median"].get(key)
            row += f"{(fmt.format(v) if v is not None else '-'):>14}"
        print(row)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.environ.get("FSCHED_BUILD", str(REPO / "build")))
    ap.add_argument("--out", help="write all results as JSON to this file")
    ap.add_argument("--runs", type=int, default=5, help="measured runs per workload (default 5)")
    ap.add_argument("--quick", action="store_true",
                    help="only 64 MiB memhog (random, text) and a 50 MiB Python process, 3 runs")
    ap.add_argument("--only", action="append", help="run the workloads whose name contains this (repeatable)")
    ap.add_argument("--scratch", default="/tmp/fsched-bench", help="job and image directory")
    ap.add_argument("--compress-level", type=int, help="zstd level passed to dump")
    ap.add_argument("--direct-io", action="store_true",
                    help="dump with --direct-io (O_DIRECT): restore then reads the image from the disk")
    ap.add_argument("--drop-caches", action="store_true",
                    help="drop the page cache before dump and restore (cold-cache figures)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("ckpt_bench: must run as root", file=sys.stderr)
        return 2

    if args.quick:
        workloads = [("memhog-64-random", "random", 64), ("memhog-64-text", "text", 64),
                     ("python-50", "python", 50)]
        runs = min(args.runs, 3)
    else:
        workloads = [(f"memhog-{m}-{k}", k, m) for m in (64, 512, 2048) for k in ("random", "text")]
        workloads.append(("python-200", "python", 200))
        # Issue 3: freezing a 16-process tree vs one process with the same memory.
        workloads += [("memhog-1024-random", "random", 1024), ("tree-16x64-random", "tree16", 1024)]
        runs = args.runs
    if args.only:
        workloads = [w for w in workloads if any(o in w[0] for o in args.only)]

    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    bench = Bench(Path(args.build), scratch, args.drop_caches, args.compress_level, args.direct_io)
    results = []
    t_start = time.monotonic()
    try:
        for name, kind, mib in workloads:
            t0 = time.monotonic()
            bench.one_run(name, kind, mib)  # warm-up, discarded
            all_runs = [bench.one_run(name, kind, mib) for _ in range(runs)]
            med = {k: median(all_runs, k) for k, v in all_runs[0].items() if not isinstance(v, dict)}
            results.append({"workload": name, "kind": kind, "mib": mib, "runs": all_runs, "median": med})
            print(f"{name}: {runs} runs + warm-up in {time.monotonic() - t0:.0f} s", file=sys.stderr,
                  flush=True)
    except BenchError as e:
        print(f"ckpt_bench: {e}", file=sys.stderr)
        return 1
    finally:
        bench.cleanup()
        shutil.rmtree(scratch / "image", ignore_errors=True)

    print()
    print_table(results)
    print(f"\nmedians of {runs} runs after one warm-up (sizes in MiB); "
          f"total {time.monotonic() - t_start:.0f} s")
    if args.out:
        doc = {**machine_info(), "runs": runs, "quick": args.quick, "compress_level": args.compress_level,
               "direct_io": args.direct_io,
               "drop_caches": args.drop_caches, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "results": results}
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
