#!/usr/bin/python3
"""Side-by-side checkpoint/restore timings of fsched-ckpt and CRIU on the same machine.

This VM's timings swing 2x from minute to minute, so figures of the two engines are only
comparable when measured together: for each workload -- memhog holding 512 and 2048 MiB
of random (incompressible) memory, and the ~200 MiB Python process of ckpt_bench.py --
the two engines run interleaved, run by run (fsched 1, criu 1, fsched 2, criu 2, ...),
after one discarded warm-up run each. Every run starts the job, waits until it has filled
its memory, dumps it (killing it), restores it detached, lets it verify its memory and
checks that it printed `ok` and exited 0. `sync` and a 3 s pause precede every dump and
every restore. Both engines write their images under the same --scratch directory, and
every image is deleted after its run.

  fsched  job started with `fsched-ckpt run --detach` (as ckpt_bench.py does);
          `fsched-ckpt dump --pid INIT --dir DIR --json`: dump_ms and freeze_ms from
          its JSON; `fsched-ckpt restore --dir DIR --detach --json`: restore_ms from its
          JSON.
  criu    job started directly, as a session leader (setsid) with stdin /dev/null and
          stdout/stderr to files; `criu dump -t PID -D DIR --display-stats`: dump_ms is
          the command's wall-clock time, frozen_ms its "Frozen time"; `criu restore -D
          DIR -d`: restore_ms is the command's wall-clock time.

The commands' wall-clock times of both engines are in the table too (dump wall, restore
wall): they are the like-for-like figures (CRIU's include its start-up, fsched's JSON
figures do not). fsched's dump makes its image durable (fsync) and CRIU's does not, so
right after each CRIU dump the script fsyncs CRIU's image and shows the time taken as
"criu fsync" (compare fsched's dump ms with CRIU's dump ms + criu fsync). The binaries
are copied to the scratch directory once at start, so that a rebuild during the benchmark
changes nothing. Any failure of either engine stops the benchmark with the engine's
stderr (CRIU: its log) and exit status 1.

With --leave-running both engines dump with the job left running (fsched
--leave-running, criu -R) and the job is then killed before the restore: the freeze of a
periodic checkpoint, where neither engine waits for the disk (fsched makes its image
durable after the thaw). Without it, fsched's freeze of a killed job lasts until its
image is durable, and CRIU's does not wait for that.

Usage (as root): /usr/bin/python3 bench/criu_compare.py [--runs N] [--only WORKLOAD]...
                 [--fsched-build DIR] [--criu PATH] [--out FILE] [--leave-running]
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ckpt_bench import (PY_HOG, BenchError, alive, dir_bytes, machine_info, median, ready,  # noqa: E402
                         restore_stats, run_timed, verified, wait_for)

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20
PAUSE_S = 3.0
TIMEOUT_S = 900
WORKLOADS = [("memhog-512-random", "random", 512), ("memhog-2048-random", "random", 2048),
             ("python-200", "python", 200)]
ENGINES = ("fsched", "criu")
PR_SET_CHILD_SUBREAPER = 36


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat), to tell it from a later
    process that reuses its PID."""
    try:
        st = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return st[st.rindex(")") + 2:].split()[19]


def children() -> list[int]:
    """PIDs of our own children (which include the jobs left to us as subreaper)."""
    me, kids = os.getpid(), []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                st = (d / "stat").read_text()
            except OSError:
                continue
            if int(st[st.rindex(")") + 2:].split()[1]) == me:
                kids.append(int(d.name))
    return kids


def settle():
    """`sync` and a pause before every dump and restore, so that neither engine pays for
    the other's (or the previous run's) writeback."""
    subprocess.run(["sync"], check=True)
    time.sleep(PAUSE_S)


def fsync_tree(d: Path) -> float:
    """fsyncs every file of an image directory and the directory; returns the ms taken."""
    t0 = time.monotonic()
    for f in sorted(d.rglob("*")):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return (time.monotonic() - t0) * 1000


def stable_copy(src: Path, dst: Path, timeout: float = 600):
    """Copies a binary another engineer may be rebuilding: waits until it exists and has
    not changed for 5 s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            st = src.stat()
            if os.access(src, os.X_OK) and time.time() - st.st_mtime > 5:
                shutil.copy2(src, dst)
                if dst.stat().st_size == st.st_size and src.stat().st_mtime == st.st_mtime:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"{src} is missing or keeps changing (cmake -G Ninja -B build && ninja -C build)")
        time.sleep(2)


class Compare:
    def __init__(self, build: Path, criu: Path, scratch: Path, leave_running: bool = False):
        self.scratch = scratch
        # Both engines dump with the job left running (fsched --leave-running, criu
        # -R), which is then killed before the restore: the freeze of a periodic
        # checkpoint, where neither waits for the disk.
        self.leave_running = leave_running
        self.bin = scratch / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        srcs = {"fsched-ckpt": build / "src" / "tools" / "fsched-ckpt",
                "fsched-init": build / "src" / "tools" / "fsched-init",
                "memhog": build / "tests" / "programs" / "memhog"}
        self.binaries = {}
        for name, src in srcs.items():
            stable_copy(src, self.bin / name)
            self.binaries[name] = {"from": str(src), "mtime": time.strftime(
                "%Y-%m-%dT%H:%M:%S", time.localtime(src.stat().st_mtime))}
        self.ckpt = self.bin / "fsched-ckpt"
        self.memhog = self.bin / "memhog"
        if not os.access(criu, os.X_OK):
            raise BenchError(f"{criu} is not built (see bench/README.md)")
        self.criu = criu
        cp = subprocess.run([str(criu), "--version"], capture_output=True, text=True)
        self.criu_version = " ".join(cp.stdout.split())
        self.procs: dict[int, str | None] = {}  # every process started: pid -> start time
        # Detached restores (and `fsched-ckpt run --detach`) leave their job to the
        # nearest subreaper: make that us, so that we can reap the job and see its exit
        # status.
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise BenchError(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")

    # -- processes ---------------------------------------------------------------------

    def track(self, pid: int):
        self.procs[pid] = start_time(pid)

    def reap(self, pid: int, timeout: float, what: str) -> int | None:
        """Waits for a process to end; its exit status if it is our child (returns None
        if it is not, then it only waits for it to be gone)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                r, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                wait_for(lambda: not alive(pid), max(deadline - time.monotonic(), 0.1), what)
                self.procs.pop(pid, None)
                return None
            if r:
                self.procs.pop(pid, None)
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() > deadline:
                raise BenchError(f"timed out waiting for {what}")
            time.sleep(0.02)

    def cleanup(self):
        # First whatever still is our child: a dump or restore command cut short (and, a
        # round later, the job a killed restore command leaves to us), and the jobs.
        for _ in range(3):
            kids = children()
            for pid in kids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for pid in kids:
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
                self.procs.pop(pid, None)
            if not kids:
                break
        # Then the jobs that are not our children (if any).
        for pid, started in list(self.procs.items()):
            killed = False
            if started is not None and start_time(pid) == started:
                try:
                    os.kill(pid, signal.SIGKILL)  # an fsched init takes its PID namespace along
                    killed = True
                except ProcessLookupError:
                    pass
            try:
                os.waitpid(pid, 0 if killed else os.WNOHANG)
            except ChildProcessError:
                pass
        self.procs.clear()

    # -- one run -----------------------------------------------------------------------

    def job_argv(self, work: Path, kind: str, mib: int) -> list[str]:
        if kind == "python":
            (work / "hog.py").write_text(PY_HOG)
            return ["/usr/bin/python3", str(work / "hog.py"), str(mib), str(work / "go")]
        return [str(self.memhog), str(mib), kind, "--go-file", str(work / "go")]

    def fresh(self, engine: str) -> tuple[Path, Path]:
        work = self.scratch / f"job-{engine}"
        image = self.scratch / f"image-{engine}"
        for d in (work, image, Path(str(image) + ".tmp")):
            if d.exists():
                shutil.rmtree(d)
        work.mkdir(parents=True)
        return work, image

    def finish(self, engine: str, name: str, kind: str, pid: int, work: Path) -> int | None:
        """Lets the restored job verify its memory and end; checks its output and status."""
        (work / "go").touch()
        code = self.reap(pid, 600, f"restored {name} ({engine}) to verify its memory and end")
        out = (work / "stdout").read_text()
        if not verified(kind, out):
            raise BenchError(f"{engine}: restored {name} failed its memory check: {out[-300:]!r}; "
                             f"stderr: {tail((work / 'stderr').read_text(errors='replace'))!r}")
        if code not in (0, None):
            raise BenchError(f"{engine}: restored {name} exited with status {code}")
        return code

    def run_fsched(self, name: str, kind: str, mib: int) -> dict:
        work, image = self.fresh("fsched")
        out = work / "stdout"
        cp = subprocess.run([str(self.ckpt), "run", "--detach", "--stdout", str(out), "--stderr",
                             str(work / "stderr"), "--cwd", str(work), "--", *self.job_argv(work, kind, mib)],
                            capture_output=True, text=True, timeout=60)
        if cp.returncode != 0:
            raise BenchError(f"fsched: run of {name} failed (status {cp.returncode}):\n{tail(cp.stderr)}")
        init = int(cp.stdout.split()[0])
        self.track(init)
        wait_for(lambda: out.exists() and ready(kind, out.read_text()), 600, f"{name} (fsched) to be ready")

        settle()
        load = os.getloadavg()[0]
        rc, dout, derr, dwall, _, _ = run_timed(
            [str(self.ckpt), "dump", "--pid", str(init), "--dir", str(image), "--json",
             *(["--leave-running"] if self.leave_running else [])], TIMEOUT_S)
        if rc != 0:
            raise BenchError(f"fsched: dump of {name} failed (status {rc}):\n{tail(derr)}")
        dstats = json.loads(dout.strip().splitlines()[-1])
        if self.leave_running:
            os.kill(init, signal.SIGKILL)  # init's death ends its PID namespace
        self.reap(init, 60, f"the dumped {name} (fsched) to end")
        image_bytes = dir_bytes(image)

        settle()
        rc, rout, rerr, rwall, _, _ = run_timed(
            [str(self.ckpt), "restore", "--dir", str(image), "--detach", "--json"], TIMEOUT_S)
        if rc != 0:
            raise BenchError(f"fsched: restore of {name} failed (status {rc}):\n{tail(rerr)}")
        rstats = restore_stats(rerr)
        if rstats.get("restore_ms") is None:
            raise BenchError(f"fsched: restore of {name} printed no restore_ms:\n{tail(rerr)}")
        rinit = int(rout.split()[0])
        self.track(rinit)
        code = self.finish("fsched", name, kind, rinit, work)
        shutil.rmtree(image)
        return {"dump_ms": dstats["dump_ms"], "frozen_ms": dstats["freeze_ms"],
                "restore_ms": rstats["restore_ms"], "image_mib": image_bytes / MiB,
                "dump_wall_ms": dwall, "restore_wall_ms": rwall, "exit_status": code,
                "loadavg_at_dump": load, "memory_mib": dstats.get("memory_bytes", 0) / MiB,
                "dump_phases_ms": dstats.get("phases_ms", {}),
                "restore_phases_ms": rstats.get("phases_ms", {})}

    def criu_log(self, which: str) -> Path:
        return self.scratch / f"criu-{which}.log"

    def run_criu(self, name: str, kind: str, mib: int) -> dict:
        work, image = self.fresh("criu")
        image.mkdir()
        out = work / "stdout"
        with open(os.devnull, "rb") as null, open(out, "ab") as o, open(work / "stderr", "ab") as e:
            p = subprocess.Popen(self.job_argv(work, kind, mib), stdin=null, stdout=o, stderr=e,
                                 cwd=work, start_new_session=True)
        self.track(p.pid)
        pid = p.pid
        try:
            wait_for(lambda: out.exists() and ready(kind, out.read_text()) or p.poll() is not None, 600,
                     f"{name} (criu) to be ready")
        finally:
            if p.returncode is not None:
                self.procs.pop(pid, None)
        if p.returncode is not None:
            raise BenchError(f"criu: job {name} ended before it was ready (status {p.returncode})")

        settle()
        load = os.getloadavg()[0]
        dlog = self.criu_log("dump")
        dlog.unlink(missing_ok=True)
        rc, dout, derr, dwall, _, _ = run_timed(
            [str(self.criu), "dump", "-t", str(pid), "-D", str(image), "-o", str(dlog),
             "--display-stats", *(["-R"] if self.leave_running else [])], TIMEOUT_S)
        if rc != 0:
            log = dlog.read_text(errors="replace") if dlog.exists() else ""
            raise BenchError(f"criu: dump of {name} failed (status {rc}):\n{tail(derr + chr(10) + log)}")
        stats = {}
        for m in re.finditer(r"^\s*([A-Za-z ]+ time):\s+(\d+)\s+us", dout + "\n" + derr, re.M):
            stats[m.group(1).strip()] = int(m.group(2)) / 1000
        if "Frozen time" not in stats:
            raise BenchError(f"criu: dump of {name} printed no 'Frozen time':\n{tail(dout + derr)}")
        # CRIU does not fsync its images, fsched's dump_ms includes its fsyncs: time
        # the fsync of CRIU's image apart, right away (JSON and the "criu fsync" column).
        fsync_ms = fsync_tree(image)
        # The dumped task was killed by criu (or, left running, is killed now); reap it so
        # that its PID is free for restore.
        if self.leave_running:
            p.kill()
        p.wait(timeout=60)
        self.procs.pop(pid, None)
        image_bytes = dir_bytes(image)

        settle()
        rlog = self.criu_log("restore")
        rlog.unlink(missing_ok=True)
        rc, rout, rerr, rwall, _, _ = run_timed(
            [str(self.criu), "restore", "-D", str(image), "-d", "-o", str(rlog)], TIMEOUT_S)
        if rc != 0:
            log = rlog.read_text(errors="replace") if rlog.exists() else ""
            raise BenchError(f"criu: restore of {name} failed (status {rc}):\n{tail(rerr + chr(10) + log)}")
        if not alive(pid):
            raise BenchError(f"criu: restore of {name} succeeded but PID {pid} is not running")
        self.track(pid)
        code = self.finish("criu", name, kind, pid, work)
        shutil.rmtree(image)
        return {"dump_ms": dwall, "frozen_ms": stats["Frozen time"], "restore_ms": rwall,
                "image_mib": image_bytes / MiB, "dump_wall_ms": dwall, "restore_wall_ms": rwall,
                "exit_status": code, "loadavg_at_dump": load, "fsync_ms": fsync_ms,
                "memory_dump_ms": stats.get("Memory dump time"),
                "memory_write_ms": stats.get("Memory write time")}

    def one_run(self, engine: str, name: str, kind: str, mib: int) -> dict:
        r = (self.run_fsched if engine == "fsched" else self.run_criu)(name, kind, mib)
        r["time"] = time.strftime("%H:%M:%S")
        return r


COLUMNS = [("dump_ms", "dump ms", "{:.0f}"), ("frozen_ms", "frozen ms", "{:.0f}"),
           ("restore_ms", "restore ms", "{:.0f}"), ("image_mib", "image MiB", "{:.1f}"),
           ("dump_wall_ms", "dump wall", "{:.0f}"), ("restore_wall_ms", "restore wall", "{:.0f}"),
           ("fsync_ms", "criu fsync", "{:.0f}")]


def print_table(results: list[dict]):
    head = f"{'workload':<20}{'engine':<8}" + "".join(f"{c[1]:>14}" for c in COLUMNS)
    print(head)
    print("-" * len(head))
    for res in results:
        for engine in ENGINES:
            row = f"{res['workload']:<20}{engine:<8}"
            for key, _, fmt in COLUMNS:
                v = res["median"][engine].get(key)
                row += f"{(fmt.format(v) if v is not None else '-'):>14}"
            print(row)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fsched-build", default=os.environ.get("FSCHED_BUILD", str(REPO / "build")),
                    help="fsched build directory (default $FSCHED_BUILD or build/)")
    ap.add_argument("--criu", default="/opt/criu-src/criu/criu", help="criu binary")
    ap.add_argument("--runs", type=int, default=5, help="measured runs per engine and workload (default 5)")
    ap.add_argument("--only", action="append",
                    help="run the workloads whose name contains this (repeatable): "
                         + ", ".join(w[0] for w in WORKLOADS))
    ap.add_argument("--scratch", default="/tmp/fsched-criu-compare", help="jobs' and images' directory")
    ap.add_argument("--out", help="write every run as JSON to this file")
    ap.add_argument("--leave-running", action="store_true",
                    help="both engines dump with the job left running (fsched --leave-running, "
                         "criu -R), then kill it before the restore")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("criu_compare: must run as root", file=sys.stderr)
        return 2
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    workloads = WORKLOADS
    if args.only:
        workloads = [w for w in WORKLOADS if any(o in w[0] for o in args.only)]
        if not workloads:
            ap.error("--only matches no workload")

    # SIGTERM/SIGHUP end the benchmark like Ctrl-C does, through the cleanup below.
    def stop(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)

    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    results = []
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    t_start = time.monotonic()
    cmp = None
    try:
        cmp = Compare(Path(args.fsched_build), Path(args.criu), scratch, args.leave_running)
        print(f"criu_compare: started {started}; {cmp.criu_version}; fsched-ckpt from "
              f"{cmp.binaries['fsched-ckpt']['from']} ({cmp.binaries['fsched-ckpt']['mtime']})",
              file=sys.stderr, flush=True)
        for name, kind, mib in workloads:
            t0 = time.monotonic()
            runs: dict[str, list[dict]] = {e: [] for e in ENGINES}
            for i in range(args.runs + 1):  # run 0 of each engine is the discarded warm-up
                for engine in ENGINES:
                    r = cmp.one_run(engine, name, kind, mib)
                    if i > 0:
                        runs[engine].append(r)
                    print(f"  {name} {engine} {'warm-up' if i == 0 else f'run {i}'}: dump "
                          f"{r['dump_ms']:.0f} ms, frozen {r['frozen_ms']:.0f} ms, restore "
                          f"{r['restore_ms']:.0f} ms, image {r['image_mib']:.1f} MiB", file=sys.stderr, flush=True)
            med = {e: {k: median(runs[e], k) for k, _, _ in COLUMNS} for e in ENGINES}
            results.append({"workload": name, "kind": kind, "mib": mib, "runs": runs, "median": med})
            print(f"{name}: {args.runs} runs + warm-up per engine in {time.monotonic() - t0:.0f} s",
                  file=sys.stderr, flush=True)
    except BenchError as e:
        print(f"criu_compare: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"criu_compare: interrupted {e}", file=sys.stderr)
        return 130
    finally:
        if cmp is not None:
            cmp.cleanup()
        for d in scratch.glob("image-*"):
            shutil.rmtree(d, ignore_errors=True)

    print()
    print_table(results)
    print(f"\nmedians of {args.runs} interleaved runs per engine after one warm-up each (ms; "
          f"image in MiB); started {started}, took {time.monotonic() - t_start:.0f} s")
    if args.out:
        doc = {**machine_info(), "runs": args.runs, "time": started, "criu": {"path": args.criu, "version": cmp.criu_version},
               "binaries": cmp.binaries, "results": results}
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
