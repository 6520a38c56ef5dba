"""Helpers for the end-to-end checkpoint/restore tests.

A job runs under `fsched-ckpt run` in a job directory JOBDIR that holds
    JOBDIR/stdout, JOBDIR/stderr    the job's output (appended by the engine's init)
    JOBDIR/status                   its exit status, written by the init when it ends
    JOBDIR/work/                    its working directory: inputs and output files
Paths are baked into a checkpointed process (open files, cwd, argv), so every run of
the same job, uninterrupted or checkpointed, uses the same JOBDIR after cleaning it.
The uninterrupted reference run is reduced to a snapshot (sizes, hashes, owners of
every output file) that later runs are compared against.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

POLL = 0.02


# --------------------------------------------------------------------------- processes

def page_runs(value) -> list[list[int]]:
    """A mapping's runs ("runs", "parent_runs") as [first page, count] pairs: the manifest
    holds a base64 string of LEB128 numbers, two per run, the first relative to the end
    of the run before (format 10, PageRuns in src/ckpt/manifest.h), or, before, arrays."""
    if isinstance(value, list):
        return [list(r) for r in value]
    data, nums, at = base64.b64decode(value, validate=True), [], 0
    while at < len(data):
        v = shift = 0
        while True:
            b = data[at]
            at += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        nums.append(v)
    runs, end = [], 0
    for gap, count in zip(nums[::2], nums[1::2]):
        runs.append([end + gap, count])
        end += gap + count
    return runs


def encode_page_runs(runs: list[list[int]]) -> str:
    """The manifest's form of `runs` (in increasing order), as page_runs reads it."""
    out, end = bytearray(), 0
    for first, count in runs:
        for v in (first - end, count):
            while True:
                out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
                v >>= 7
                if not v:
                    break
        end = first + count
    return base64.b64encode(bytes(out)).decode()


def proc_state(pid: int) -> Optional[str]:
    """The one-letter state of a process, or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat[stat.rindex(")") + 2]


def alive(pid: int) -> bool:
    s = proc_state(pid)
    return s is not None and s not in ("Z", "X")


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(POLL)
    return not alive(pid)


def job_processes(marker: str) -> list[int]:
    """Live processes whose command line contains `marker` or whose cwd is under it,
    other than fsched-ckpt commands themselves (whose arguments name the job's files)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
            cwd = ""
            try:
                cwd = os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                pass
        except OSError:
            continue
        if ((marker in cmdline or cwd == marker or cwd.startswith(marker + "/")) and alive(pid)
                and proc_comm(pid) != "fsched-ckpt"):
            found.append(pid)
    return found


def kill_job_processes(marker: str, timeout: float = 10.0) -> list[int]:
    """SIGKILLs every live process of a job (its init first); returns what it killed."""
    killed = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = job_processes(marker)
        if not pids:
            break
        inits = [p for p in pids if proc_comm(p) == "fsched-init"]
        for p in inits or pids:
            try:
                os.kill(p, signal.SIGKILL)
                killed.append(p)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    return killed


def proc_comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    out = []
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            try:
                out += [int(x) for x in Path(f"/proc/{pid}/task/{t}/children").read_text().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for c in children(todo.pop()):
            out.append(c)
            todo.append(c)
    return out


def ns_pid(pid: int) -> Optional[int]:
    """The PID of a host process inside its innermost PID namespace."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    except OSError:
        pass
    return None


def proc_uids(pid: int) -> Optional[tuple[int, ...]]:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return tuple(int(x) for x in line.split()[1:])
    except OSError:
        pass
    return None


def tracer_pid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("TracerPid:"):
            return int(line.split()[1])
    return -1


def assert_running_free(pids: list[int]):
    """Every process is alive, not stopped and not traced."""
    for p in pids:
        assert alive(p), f"process {p} died"
        assert proc_state(p) not in ("t", "T"), f"process {p} left stopped ({proc_state(p)})"
        assert tracer_pid(p) == 0, f"process {p} left traced by {tracer_pid(p)}"


def watch(args: list[str], marker: str, timeout: float) -> tuple["Result", dict[int, str]]:
    """Runs a command, recording every process it creates and every live process of the
    job `marker` while it runs (pid -> comm)."""
    seen: dict[int, str] = {}
    t0 = time.monotonic()
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        while p.poll() is None:
            for q in descendants(p.pid) + job_processes(marker):
                seen.setdefault(q, proc_comm(q))
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"{args} did not finish in {timeout} s")
            time.sleep(0.001)
    finally:
        if p.poll() is None:
            p.kill()
        out, err = p.communicate()
    return Result(p.returncode, out, err, time.monotonic() - t0), seen


# --------------------------------------------------------------------------- snapshots

@dataclasses.dataclass(frozen=True)
class FileState:
    size: int
    digest: str
    uid: int
    gid: int
    text: Optional[str] = dataclasses.field(default=None, compare=False)  # small files, for diffs


def file_state(path: Path) -> FileState:
    st = path.stat()
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    text = None
    if st.st_size <= 64 * 1024:
        text = path.read_bytes().decode(errors="replace")
    return FileState(st.st_size, h.hexdigest(), st.st_uid, st.st_gid, text)


def snapshot(jobdir: Path, exclude: set[str]) -> dict[str, FileState]:
    """Every regular file under JOBDIR except the excluded relative paths and `pid`."""
    snap = {}
    for root, dirs, files in os.walk(jobdir):
        dirs.sort()
        for name in sorted(files):
            p = Path(root, name)
            rel = str(p.relative_to(jobdir))
            if rel in exclude or rel == "pid" or not p.is_file() or p.is_symlink():
                continue
            snap[rel] = file_state(p)
    return snap


def diff_snapshots(expected: dict[str, FileState], actual: dict[str, FileState]) -> str:
    """Empty if equal, else a readable description of every difference."""
    out = []
    for rel in sorted(set(expected) | set(actual)):
        e, a = expected.get(rel), actual.get(rel)
        if e == a:
            continue
        if e is None:
            out.append(f"{rel}: unexpected file ({a.size} bytes)")
        elif a is None:
            out.append(f"{rel}: missing (expected {e.size} bytes)")
        else:
            what = []
            if e.size != a.size:
                what.append(f"size {a.size} != {e.size}")
            elif e.digest != a.digest:
                what.append("same size, different content")
            if (e.uid, e.gid) != (a.uid, a.gid):
                what.append(f"owner {a.uid}:{a.gid} != {e.uid}:{e.gid}")
            line = f"{rel}: " + ", ".join(what)
            if e.text is not None and a.text is not None and e.digest != a.digest:
                el, al = e.text.splitlines(), a.text.splitlines()
                for i in range(max(len(el), len(al))):
                    x = el[i] if i < len(el) else "<none>"
                    y = al[i] if i < len(al) else "<none>"
                    if x != y:
                        line += f"\n    first difference at line {i + 1}:\n    expected {x!r}\n    actual   {y!r}"
                        break
            out.append(line)
    return "\n".join(out)


# --------------------------------------------------------------------------- the engine

@dataclasses.dataclass
class Result:
    rc: int
    stdout: str
    stderr: str
    seconds: float

    def error_lines(self) -> list[str]:
        return [l for l in self.stderr.splitlines() if l.strip()]


def in_cgroup(cgroup: Optional[Path], argv: list[str]) -> list[str]:
    """argv, run in cgroup v2 directory `cgroup` (None: as it is): a shell moves itself
    there, then execs it (no preexec_fn: the tests have threads)."""
    if cgroup is None:
        return argv
    return ["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(cgroup), *argv]


class Engine:
    """Runs the fsched-ckpt CLI. Every call is bounded by a timeout."""

    def __init__(self, build: Path):
        self.build = build
        self.bin = build / "src" / "tools" / "fsched-ckpt"

    def call(self, args: list[str], timeout: float, cgroup: Optional[Path] = None) -> Result:
        """cgroup: a cgroup v2 directory the engine (and so a job it starts) runs in."""
        t0 = time.monotonic()
        cp = subprocess.run(in_cgroup(cgroup, [str(self.bin), *args]), stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=timeout)
        return Result(cp.returncode, cp.stdout, cp.stderr, time.monotonic() - t0)

    def dump(self, pid: int, image: Path, *, leave_running: bool = False,
             timeout: float = 300, extra: tuple[str, ...] = ()) -> tuple[Result, Optional[dict]]:
        args = ["dump", "--pid", str(pid), "--dir", str(image), "--json", *extra]
        if leave_running:
            args.append("--leave-running")
        r = self.call(args, timeout)
        stats = None
        if r.rc == 0:
            stats = json.loads(r.stdout.strip().splitlines()[-1])
        return r, stats

    def restore_detached(self, image: Path, pidfile: Path, timeout: float = 300,
                         cgroup: Optional[Path] = None) -> tuple[Result, Optional[int]]:
        r = self.call(["restore", "--dir", str(image), "--detach", "--pidfile", str(pidfile)], timeout,
                      cgroup)
        pid = int(r.stdout.split()[0]) if r.rc == 0 and r.stdout.split() else None
        return r, pid


def restore_stats(stderr: str) -> Optional[dict]:
    for line in stderr.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                pass
    return None


# --------------------------------------------------------------------------- jobs

@dataclasses.dataclass
class JobSpec:
    """A job of the end-to-end tests.

    argv and env values may contain a "{work}" placeholder. setup(work) fills the
    work directory with inputs (named in `inputs`, which are excluded from comparisons).
    progress says how far along a running job is (0..1), so that tests can dump it at a
    given point:
      ("lines", REL)      lines in JOBDIR/REL relative to the reference run's;
      ("readpos", REL)    the read offset of the job's open descriptor of JOBDIR/REL
                          relative to that file's size;
      ("files", (GLOB, ...), REL, F)
                          total size of the files matching the globs (under JOBDIR)
                          relative to F times the size of JOBDIR/REL;
      ("stages", REL, N)  a job of N stages, each announced by a line in JOBDIR/REL:
                          (completed stages + time in the current one / (reference
                          duration / N), at most 0.99) / N;
      ("time",)           running time relative to the reference run's duration.
    ref_setup(work) runs after setup for the reference run only.
    """
    name: str
    argv: list[str]
    setup: Callable[[Path], None] = lambda work: None
    inputs: tuple[str, ...] = ()
    user: Optional[str] = None
    env: dict = dataclasses.field(default_factory=dict)
    progress: tuple = ("time",)
    timeout: float = 180.0   # for one whole run of the job
    ref_setup: Optional[Callable[[Path], None]] = None


@dataclasses.dataclass
class Reference:
    seconds: float
    status: int
    snap: dict[str, FileState]

    def total(self, progress: tuple) -> float:
        kind = progress[0]
        if kind == "time":
            return self.seconds
        if kind in ("readpos", "files", "stages"):
            return 1.0
        st = self.snap[progress[1]]
        if kind == "lines":
            if st.text is None:
                raise ValueError(f"progress file {progress[1]} too large for line counting")
            return float(st.text.count("\n"))
        raise ValueError(progress)


class Job:
    """One run of a JobSpec in its (freshly cleaned) job directory."""

    def __init__(self, env: "E2E", spec: JobSpec):
        self.env, self.spec = env, spec
        self.dir = env.jobs_dir / spec.name
        self.work = self.dir / "work"
        self.marker = str(self.dir)
        self.init_pid: Optional[int] = None
        self.run_seconds = 0.0          # running time before the current run period
        self.running_since: Optional[float] = None
        self._input_seen_open = False
        self._stage_lines, self._stage_since = 0, 0.0
        # A cgroup v2 directory of the job's own, which its runs and restores start in
        # (None: the test's cgroup).
        self.cgroup: Optional[Path] = None

    # -- set-up

    def prepare(self):
        kill_job_processes(self.marker)
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.work.mkdir(parents=True)
        self.spec.setup(self.work)
        if self.spec.user:
            # The user owns the job directory and everything in it, except shared data
            # files hard-linked in from the cache.
            pw = pwd.getpwnam(self.spec.user)
            for p in [self.dir, self.work, *self.work.rglob("*")]:
                if p.is_dir() or p.stat().st_nlink == 1:
                    os.chown(p, pw.pw_uid, pw.pw_gid)

    def fmt(self, s: str) -> str:
        return s.format(work=self.work)

    def run_args(self) -> list[str]:
        args = ["--stdout", str(self.dir / "stdout"), "--stderr", str(self.dir / "stderr"),
                "--cwd", str(self.work), "--status-file", str(self.dir / "status")]
        if self.spec.user:
            args += ["--user", self.spec.user]
        return args + ["--", *[self.fmt(a) for a in self.spec.argv]]

    def proc_env(self) -> dict:
        e = dict(os.environ)
        e.update({"LC_ALL": "C", "LANG": "C"})
        e.update({k: self.fmt(v) for k, v in self.spec.env.items()})
        return e

    # -- running

    def run_foreground(self) -> Result:
        t0 = time.monotonic()
        try:
            cp = subprocess.run([str(self.env.engine.bin), "run", *self.run_args()],
                                stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=self.spec.timeout, env=self.proc_env())
        finally:
            kill_job_processes(self.marker)
        return Result(cp.returncode, cp.stdout, cp.stderr, time.monotonic() - t0)

    def start_detached(self) -> int:
        cp = subprocess.run(in_cgroup(self.cgroup, [str(self.env.engine.bin), "run", "--detach", "--pidfile",
                                                    str(self.dir / "pid"), *self.run_args()]),
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                            env=self.proc_env())
        assert cp.returncode == 0, f"fsched-ckpt run --detach failed ({cp.returncode}): {cp.stderr}"
        self.init_pid = int(cp.stdout.split()[0])
        assert int((self.dir / "pid").read_text().split()[0]) == self.init_pid
        self.running_since = time.monotonic()
        return self.init_pid

    def paused(self):
        """Call when the job stopped running (dumped and killed)."""
        if self.running_since is not None:
            self.run_seconds += time.monotonic() - self.running_since
            self.running_since = None

    def resumed(self, pid: int):
        self.init_pid = pid
        self.running_since = time.monotonic()

    def processes(self) -> list[int]:
        return job_processes(self.marker)

    def job_pids(self) -> list[int]:
        """The job's processes below the init (host PIDs)."""
        return descendants(self.init_pid) if self.init_pid else []

    def progress(self, ref: Reference) -> float:
        kind = self.spec.progress[0]
        total = ref.total(self.spec.progress)
        if kind == "time":
            now = self.run_seconds
            if self.running_since is not None:
                now += time.monotonic() - self.running_since
            return now / total
        if kind == "files":
            _, globs, rel, factor = self.spec.progress
            done = 0
            for pattern in globs:
                for f in self.dir.glob(pattern):
                    try:
                        done += f.stat().st_size
                    except FileNotFoundError:
                        pass
            return done / (factor * (self.dir / rel).stat().st_size)
        p = self.dir / self.spec.progress[1]
        if kind == "readpos":
            return self._read_position(p)
        if kind == "stages":
            n = self.spec.progress[2]
            lines = self.read(self.spec.progress[1]).count("\n")
            if lines != self._stage_lines:
                self._stage_lines, self._stage_since = lines, time.monotonic()
            if lines == 0:
                return 0.0
            in_stage = min((time.monotonic() - self._stage_since) / (ref.seconds / n), 0.99)
            return (lines - 1 + in_stage) / n
        try:
            with open(p, "rb") as f:
                return f.read().count(b"\n") / total
        except FileNotFoundError:
            return 0.0

    def _read_position(self, path: Path) -> float:
        size = path.stat().st_size
        for pid in self.job_pids():
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") != str(path):
                        continue
                    info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
                except OSError:
                    continue
                self._input_seen_open = True
                return int(info.split()[1]) / size
        return 1.0 if self._input_seen_open else 0.0

    def wait_progress(self, ref: Reference, fraction: float):
        """Waits until the job has done `fraction` of its work; fails if it ends first."""
        deadline = time.monotonic() + self.spec.timeout
        while self.progress(ref) < fraction:
            assert alive(self.init_pid), (
                f"job {self.spec.name} ended before reaching {fraction:.0%} of its work "
                f"(progress {self.progress(ref):.0%}); stderr: {self.read('stderr')[-2000:]}")
            assert time.monotonic() < deadline, f"job {self.spec.name} stuck at {self.progress(ref):.0%}"
            time.sleep(POLL)
        assert alive(self.init_pid), f"job {self.spec.name} ended at the dump point {fraction:.0%}"

    def wait_end(self, timeout: Optional[float] = None) -> int:
        """Waits for a detached (or restored) job to end; returns the status its init wrote."""
        assert wait_gone(self.init_pid, timeout or self.spec.timeout), \
            f"job {self.spec.name} (init {self.init_pid}) did not end in time"
        self.paused()
        st = self.dir / "status"
        deadline = time.monotonic() + 5
        while not st.exists() and time.monotonic() < deadline:
            time.sleep(POLL)
        return int(st.read_text().split()[0])

    def read(self, rel: str) -> str:
        try:
            return (self.dir / rel).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def snapshot(self) -> dict[str, FileState]:
        return snapshot(self.dir, {f"work/{i}" for i in self.spec.inputs})

    def assert_matches(self, ref: Reference, what: str = ""):
        d = diff_snapshots(ref.snap, self.snapshot())
        assert not d, f"{self.spec.name}{what}: output differs from the uninterrupted run:\n{d}"


class E2E:
    """Session-wide state: the engine, directories, reference runs."""

    def __init__(self, build: Path, base: Path, run: Path):
        """base holds the data cache, shared by all sessions; run (under base) this
        session's job directories and images, so that sessions do not disturb each other."""
        self.build = build
        self.engine = Engine(build)
        self.jobs_dir = run / "jobs"
        self.images_dir = run / "images"
        self.data_dir = base / "data"
        self.refs: dict[str, Reference] = {}
        for d in (base, run, self.jobs_dir, self.images_dir, self.data_dir):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o755)

    def program(self, name: str) -> Path:
        return self.build / "tests" / "programs" / name

    # -- data

    def data_file(self, size: int, seed: int) -> Path:
        """A cached file written by gendata (semi-compressible text lines)."""
        p = self.data_dir / f"text-{size}-{seed}.dat"
        if not p.exists() or p.stat().st_size != size:
            tmp = p.with_suffix(f".tmp{os.getpid()}")
            subprocess.run([str(self.program("gendata")), str(size), str(seed), str(tmp)],
                           check=True, timeout=300)
            os.chmod(tmp, 0o644)
            tmp.rename(p)
        return p

    def place(self, src: Path, dst: Path):
        """Puts a data file into a work dir: hard link when large, copy when small
        (xz refuses to compress files with several links)."""
        if src.stat().st_size >= 64 << 20:
            try:
                os.link(src, dst)
                return
            except OSError:
                pass
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o644)

    # -- jobs

    def job(self, spec: JobSpec) -> Job:
        job = Job(self, spec)
        job.prepare()
        return job

    def image(self, name: str) -> Path:
        p = self.images_dir / name
        if p.exists():
            shutil.rmtree(p)
        tmp = Path(str(p) + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def reference(self, spec: JobSpec) -> Reference:
        """The uninterrupted run of a job (run once per session)."""
        if spec.name in self.refs:
            return self.refs[spec.name]
        job = self.job(spec)
        if spec.ref_setup:
            spec.ref_setup(job.work)
        r = job.run_foreground()
        status = int(job.read("status").split()[0]) if job.read("status").strip() else None
        assert status == r.rc, (f"{spec.name}: fsched-ckpt run exited {r.rc} but the init wrote "
                                f"status {status}; stderr: {r.stderr}")
        assert not r.error_lines() or r.rc != 0, f"fsched-ckpt run printed: {r.stderr}"
        ref = Reference(r.seconds, r.rc, job.snapshot())
        self.refs[spec.name] = ref
        return ref

    # -- checkpointed runs

    def dump_ok(self, job: Job, image: Path, *, leave_running: bool = False,
                extra: tuple[str, ...] = ()) -> dict:
        # A job that reads a file of /proc (python's open("/proc/self/status").read())
        # holds its fd for a moment: a dump then is refused (files of /proc would name
        # other processes after a restore) and leaves the job running unharmed. Another
        # dump a moment later is what a user would do; 10 tries.
        for _ in range(10):
            r, stats = self.engine.dump(job.init_pid, image, leave_running=leave_running,
                                        extra=extra)
            if r.rc == 0 or "files of /proc are not supported" not in r.stderr:
                break
            time.sleep(0.05)
        assert r.rc == 0, f"dump of {job.spec.name} failed ({r.rc}): {r.stderr.strip()}"
        assert image.is_dir() and (image / "manifest.json").is_file(), f"no image at {image}"
        assert not Path(str(image) + ".tmp").exists(), "dump left DIR.tmp behind"
        for k in ("processes", "threads", "memory_bytes", "image_bytes", "freeze_ms", "dump_ms"):
            assert k in stats, f"dump --json lacks {k}: {stats}"
        if not leave_running:
            assert wait_gone(job.init_pid, 20), f"dump did not kill the job (init {job.init_pid})"
            job.paused()
            assert not job.processes(), f"job processes left after dump: {job.processes()}"
        return stats

    def restore_detached_ok(self, job: Job, image: Path) -> int:
        r, pid = self.engine.restore_detached(image, job.dir / "pid", cgroup=job.cgroup)
        assert r.rc == 0 and pid, f"restore --detach of {image} failed ({r.rc}): {r.stderr.strip()}"
        assert alive(pid) or job.read("status"), f"restored init {pid} is not running"
        job.resumed(pid)
        return pid

    def restore_foreground(self, job: Job, image: Path) -> Result:
        """Restores in the foreground, waiting (bounded) for the job to end."""
        args = [str(self.engine.bin), "restore", "--dir", str(image), "--json", "--pidfile",
                str(job.dir / "pid")]
        t0 = time.monotonic()
        p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        try:
            out, err = p.communicate(timeout=job.spec.timeout + 60)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            kill_job_processes(job.marker)
            raise AssertionError(f"restore of {job.spec.name} did not finish in time; stderr: {err}")
        return Result(p.returncode, out, err, time.monotonic() - t0)

    def checkpoint_run(self, spec: JobSpec, points: list[float], variant: str,
                       check_dump: Optional[Callable[[Job, dict], None]] = None,
                       before_dump: Optional[Callable[[Job], None]] = None,
                       dump_args: tuple[str, ...] = ()) -> list[dict]:
        """Runs `spec` detached, dumps it (killing it) at each of `points` (fractions of
        its work), restoring it after each dump -- detached between dumps, in the
        foreground after the last one -- and checks the final outputs and exit status
        are those of the uninterrupted run. before_dump(job) runs just before each dump,
        check_dump(job, stats) just after; dump_args are added to each dump's command.
        Returns the dump statistics."""
        ref = self.reference(spec)
        job = self.job(spec)
        job.start_detached()
        all_stats = []
        try:
            for i, point in enumerate(points):
                job.wait_progress(ref, point)
                if before_dump:
                    before_dump(job)
                image = self.image(f"{spec.name}/{variant}-{i}")
                stats = self.dump_ok(job, image, extra=dump_args)
                if check_dump:
                    check_dump(job, stats)
                all_stats.append(stats)
                if i + 1 < len(points):
                    self.restore_detached_ok(job, image)
            r = self.restore_foreground(job, image)
            assert r.rc == ref.status, (
                f"restored {spec.name} exited {r.rc}, uninterrupted run {ref.status}; "
                f"restore stderr: {r.stderr.strip()}; job stderr: {job.read('stderr')[-2000:]}")
            stats = restore_stats(r.stderr)
            assert stats and "restore_ms" in stats, f"restore --json printed no figures: {r.stderr}"
            job.assert_matches(ref, f" ({variant})")
        finally:
            kill_job_processes(job.marker)
        for i in range(len(points)):
            shutil.rmtree(self.images_dir / spec.name / f"{variant}-{i}", ignore_errors=True)
        return all_stats


def user_ids(name: str) -> tuple[int, int]:
    pw = pwd.getpwnam(name)
    return pw.pw_uid, pw.pw_gid


def single_error_line(r: Result) -> str:
    """The one line a failing fsched-ckpt command must print on stderr."""
    assert r.rc != 0, f"expected failure, got exit 0; stdout: {r.stdout!r}"
    lines = r.error_lines()
    assert len(lines) == 1, f"expected one error line on stderr, got: {r.stderr!r}"
    print(f"error line (exit {r.rc}): {lines[0]}")
    return lines[0]


def names_pid_and_fd(message: str, candidates: list[tuple[int, int]]) -> bool:
    """True if message names one of (pid, fd) -- the pid as a whole number, the fd as 'fd N'."""
    for pid, fd in candidates:
        if re.search(rf"\b{pid}\b", message) and re.search(rf"\bfd {fd}\b", message):
            return True
    return False
