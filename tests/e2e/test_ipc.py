"""Jobs of several processes talking to each other, checkpointed part-way and restored:
pipes with data in them, make's jobserver and forking compiler drivers, multi-threaded
xz behind tar, Python multiprocessing (pipes and POSIX semaphores in /dev/shm) and
asyncio (subprocesses, timers, epoll, a socketpair), and ckpt_ipc (shared anonymous
memory with a process-shared mutex, stream and datagram socketpairs, eventfd, epoll,
timerfd). The restored run's stdout, stderr, output files (content and owner) and exit
status must equal the uninterrupted run's. Also: state the engine refuses (a half-closed TCP
connection, a pidfd) makes the dump fail with a clear message and leaves the job running."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

import pytest

from ckpt_e2e import (E2E, Job, JobSpec, Reference, alive, children, descendants,
                      kill_job_processes, names_pid_and_fd, ns_pid, proc_comm, proc_state,
                      proc_uids, single_error_line, tracer_pid, user_ids, wait_gone)

MiB = 1 << 20
PYTHON = "/usr/bin/python3"
BASH = "/bin/bash"

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------- helpers

def manifest(image: Path) -> dict:
    return json.loads((image / "manifest.json").read_text())


def fds_of_kind(m: dict, kind: str) -> list[tuple[int, int]]:
    """(pid in the job, fd) of every fd of the given kind in a manifest."""
    return [(p["pid"], f["fd"]) for p in m["processes"] for f in p.get("fds", []) if f.get("kind") == kind]


def exes(m: dict) -> list[str]:
    return [p["exe"] for p in m["processes"]]


class ProgressJob(Job):
    """A Job whose progress (a fraction of the work of the reference run) may come from
    a function of the job and the reference run."""

    def __init__(self, env: E2E, spec: JobSpec, progress_fn: Optional[Callable[[Job, Reference], float]]):
        super().__init__(env, spec)
        self.progress_fn = progress_fn

    def progress(self, ref: Reference) -> float:
        if self.progress_fn:
            return self.progress_fn(self, ref)
        return super().progress(ref)


def output_size_progress(rel: str) -> Callable[[Job, Reference], float]:
    """Progress as the size of an output file relative to its final size."""
    def progress(job: Job, ref: Reference) -> float:
        try:
            return (job.dir / rel).stat().st_size / ref.snap[rel].size
        except FileNotFoundError:
            return 0.0
    return progress


DUMP_TIMEOUT = 60     # seconds; these jobs dump in well under one
RESTORE_TIMEOUT = 120


def describe_processes(job: Job) -> str:
    """pid, command, state and kernel wait channel of the job's init and processes."""
    out = []
    for p in [job.init_pid, *descendants(job.init_pid)]:
        try:
            wchan = Path(f"/proc/{p}/wchan").read_text()
        except OSError:
            wchan = "?"
        out.append(f"{p} {proc_comm(p)} state {proc_state(p)} wchan {wchan}")
    return "; ".join(out)


def dump_bounded(e2e: E2E, job: Job, image: Path, timeout: float = DUMP_TIMEOUT,
                 refused_if: str = "") -> Optional[dict]:
    """E2E.dump_ok with a shorter time limit, and the job's process states in the message
    when the dump fails or hangs (a hung dumper is killed, which lets the job go on).
    None, instead of a failure, when the dump was refused with `refused_if` in its error
    and the job runs on."""
    args = [str(e2e.engine.bin), "dump", "--pid", str(job.init_pid), "--dir", str(image), "--json"]
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        states = describe_processes(job)
        p.kill()
        p.communicate()
        raise AssertionError(f"dump of {job.spec.name} did not finish in {timeout} s (dumper "
                             f"killed); the job's processes then: {states}")
    if p.returncode != 0 and refused_if and refused_if in err:
        assert alive(job.init_pid), f"the refused dump of {job.spec.name} ended the job: {err.strip()}"
        return None
    assert p.returncode == 0, (f"dump of {job.spec.name} failed ({p.returncode}): {err.strip()}; "
                               f"the job's processes after it: {describe_processes(job)}")
    stats = json.loads(out.strip().splitlines()[-1])
    assert (image / "manifest.json").is_file(), f"no image at {image}"
    assert not Path(str(image) + ".tmp").exists(), "dump left DIR.tmp behind"
    for k in ("processes", "threads", "memory_bytes", "image_bytes", "freeze_ms", "dump_ms"):
        assert k in stats, f"dump --json lacks {k}: {stats}"
    assert wait_gone(job.init_pid, 20), f"dump did not kill the job (init {job.init_pid})"
    job.paused()
    assert not job.processes(), f"job processes left after dump: {job.processes()}"
    return stats


def restore_detached_bounded(e2e: E2E, job: Job, image: Path) -> int:
    r, pid = e2e.engine.restore_detached(image, job.dir / "pid", timeout=RESTORE_TIMEOUT)
    assert r.rc == 0 and pid, f"restore --detach of {image} failed ({r.rc}): {r.stderr.strip()}"
    assert alive(pid) or job.read("status"), f"restored init {pid} is not running"
    job.resumed(pid)
    return pid


def fds_matching(pids: list[int], match: Callable[[str], bool]) -> list[tuple[int, int]]:
    """(pid, fd) pairs, by host and by job pid, of the fds of `pids` whose /proc/PID/fd
    link `match`es: what an error about one of them may name."""
    found = []
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if match(target):
                found += [(pid, int(fd)), (ns_pid(pid), int(fd))]
    return found


def refused_dump_run(e2e: E2E, spec: JobSpec, done: str,
                     words: tuple[str, ...] | list[str],
                     names: Callable[[list[int]], Callable[[str], None]]):
    """A kind the dump must refuse: `spec` runs to its end as `done` says in its
    uninterrupted run; dumped at 30% of its work, the dump exits 4 (unsupported,
    docs/failures.md) with one error line holding every one of `words` and "not
    supported". names(pids), called with the job's processes before the dump, returns
    the check that the line names what it must (process, fd, mapping). The dump leaves
    no image, and every process alive, not stopped, not traced; the job then ends with
    the uninterrupted run's status and outputs."""
    ref = e2e.reference(spec)
    out = ref.snap["stdout"].text
    assert ref.status == 0 and out.endswith(done), out[-500:]
    job = e2e.job(spec)
    job.start_detached()
    try:
        job.wait_progress(ref, 0.3)
        check_names = names(job.job_pids())
        image = e2e.image(f"refused/{spec.name}")
        r, _ = e2e.engine.dump(job.init_pid, image, timeout=DUMP_TIMEOUT)
        line = single_error_line(r)
        assert r.rc == 4, f"exit {r.rc}, not 4 (unsupported, docs/failures.md): {line}"
        assert all(w in line for w in words) and "not supported" in line, line
        check_names(line)
        assert not image.exists() and not Path(str(image) + ".tmp").exists(), "a failed dump left an image"
        for p in [job.init_pid, *job.job_pids()]:
            assert alive(p), f"process {p} died"
            assert proc_state(p) not in ("t", "T"), f"process {p} left stopped"
            assert tracer_pid(p) == 0, f"process {p} left traced"
        assert job.wait_end() == ref.status
        job.assert_matches(ref, " after a refused dump")
    finally:
        kill_job_processes(job.marker)


def names_one_fd(candidates: list[tuple[int, int]], what: str) -> Callable[[str], None]:
    """The check that an error line names one of `candidates` (pid and fd)."""
    assert candidates, f"the job holds no {what} fd"

    def check(line: str):
        assert names_pid_and_fd(line, candidates), \
            f"error does not name the pid and fd {candidates}: {line}"
    return check


def checkpoint_run(e2e: E2E, spec: JobSpec, points: list[float], variant: str, *,
                   progress: Optional[Callable[[Job, Reference], float]] = None,
                   before_dump: Optional[Callable[[Job], None]] = None,
                   check_dump: Optional[Callable[[Job, dict, dict], None]] = None,
                   retry_dump_if: str = "") -> list[dict]:
    """Like E2E.checkpoint_run: runs `spec` detached, dumps it (killing it) at each of
    `points` (fractions of its work), restoring it detached between dumps and in the
    foreground after the last one, and checks outputs and exit status against the
    uninterrupted run. check_dump(job, stats, manifest) runs after each dump; every
    restored init must be pid 1 of its namespace with the job's processes below it.
    A dump refused with `retry_dump_if` in its error (state the job is about to leave,
    such as unread inotify events) is tried again after before_dump, 10 times at most.
    Returns the manifests of the dumps."""
    ref = e2e.reference(spec)
    job = ProgressJob(e2e, spec, progress)
    job.prepare()
    job.start_detached()
    manifests, images = [], []
    try:
        for i, point in enumerate(points):
            job.wait_progress(ref, point)
            image = e2e.image(f"{spec.name}/{variant}-{i}")
            images.append(image)
            for attempt in range(10):
                if before_dump:
                    before_dump(job)
                stats = dump_bounded(e2e, job, image, refused_if=retry_dump_if if attempt < 9 else "")
                if stats is not None:
                    break
            m = manifest(image)
            assert len(m["processes"]) == stats["processes"], (stats, exes(m))
            if check_dump:
                check_dump(job, stats, m)
            manifests.append(m)
            if i + 1 < len(points):
                pid = restore_detached_bounded(e2e, job, image)
                assert proc_comm(pid) == "fsched-init" and ns_pid(pid) == 1, \
                    f"restore --detach printed {pid}, which is not the job's init ({proc_comm(pid)})"
                assert int(job.read("pid").split()[0]) == pid, "--pidfile differs from the printed pid"
                # The restored job runs below the restored init (unless it ended already).
                assert descendants(pid) or not alive(pid), f"restored init {pid} has no job below it"
        r = e2e.restore_foreground(job, images[-1])
        assert r.rc == ref.status, (
            f"restored {spec.name} exited {r.rc}, uninterrupted run {ref.status}; "
            f"restore stderr: {r.stderr.strip()}; job stderr: {job.read('stderr')[-2000:]}")
        job.assert_matches(ref, f" ({variant})")
    finally:
        kill_job_processes(job.marker)
        for image in images:
            shutil.rmtree(image, ignore_errors=True)
    return manifests


def proc_argv(pid: int) -> list[str]:
    """The command line of `pid`, or [] once it has gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def wait_for_process(job: Job, comms: tuple[str, ...], timeout: float = 30.0,
                     cmdline_has: Optional[Callable[[list[str]], bool]] = None) -> int:
    """Waits until a process of the job runs one of `comms` (and, given `cmdline_has`,
    has a command line it accepts); returns its host pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in job.job_pids():
            if proc_comm(p) in comms and (cmdline_has is None or cmdline_has(proc_argv(p))):
                return p
        assert alive(job.init_pid), f"job {job.spec.name} ended; stderr: {job.read('stderr')[-2000:]}"
        time.sleep(0.005)
    raise AssertionError(f"no process of {job.spec.name} ran {comms} within {timeout} s: "
                         f"{[proc_comm(p) for p in job.job_pids()]}")


# --------------------------------------------------------------------------- bash pipeline

# gendata's text -> awk (rewrites every line, writes a progress line every 50000 lines
# to prog.txt) -> gzip. Every stage is busy, so the pipes between them hold data.
PIPELINE_AWK = (r'{ w += NF; $1 = toupper($1); print NR, NF, $0 } '
                r'NR % 50000 == 0 { print NR, w > "prog.txt"; fflush("prog.txt") } '
                r'END { print "lines", NR, "words", w > "summary.txt" }')
PIPELINE_SH = r'''set -o pipefail
"$GENDATA" "$BYTES" 7 /dev/stdout | /usr/bin/awk "$AWK" | /bin/gzip -n -c > out.gz
status=$?
echo "pipeline status $status"
echo "pipeline stderr line" >&2
exit $((status + 4))
'''


def pipeline_job(e2e: E2E, name: str, user: Optional[str] = None, size: int = 100 * MiB) -> JobSpec:
    return JobSpec(name=name, argv=[BASH, "-c", PIPELINE_SH],
                   env={"GENDATA": str(e2e.program("gendata")), "BYTES": str(size),
                        # (JobSpec formats env values: "{work}" placeholders, "{{" for "{")
                        "AWK": PIPELINE_AWK.replace("{", "{{").replace("}", "}}")},
                   user=user, progress=("lines", "work/prog.txt"), timeout=180)


def check_pipeline_dump(job: Job, stats: dict, m: dict):
    # init, bash, gendata, awk, gzip
    assert stats["processes"] == 5, (stats, exes(m))
    assert any(e.endswith("/gzip") for e in exes(m)) and any(e.endswith("awk") for e in exes(m)), exes(m)
    pipes = m["pipes"]
    assert len(pipes) >= 2, f"the pipeline's two pipes are not in the image: {pipes}"
    assert any(p["bytes"] > 0 for p in pipes), f"no data in the pipes at the dump: {pipes}"
    print(f"pipes at dump: {[(p['bytes'], p['capacity']) for p in pipes]}")


def check_pipeline_reference(ref: Reference):
    assert ref.status == 4, ref.status
    assert ref.snap["work/out.gz"].size > 30 * MiB, ref.snap["work/out.gz"]
    assert ref.snap["stdout"].text == "pipeline status 0\n", ref.snap["stdout"].text
    assert ref.snap["work/summary.txt"].text.startswith("lines "), ref.snap["work/summary.txt"].text
    assert ref.snap["work/prog.txt"].text.count("\n") >= 20


@pytest.mark.parametrize("point", [0.25, 0.7], ids=["early", "late"])
def test_pipeline_gzip(e2e: E2E, point):
    spec = pipeline_job(e2e, "ipc_pipeline")
    check_pipeline_reference(e2e.reference(spec))
    checkpoint_run(e2e, spec, [point], f"p{point}", check_dump=check_pipeline_dump)


def test_pipeline_gzip_as_user(e2e: E2E, test_user):
    spec = pipeline_job(e2e, "ipc_pipeline_user", user=test_user)
    ref = e2e.reference(spec)
    check_pipeline_reference(ref)
    uid, gid = user_ids(test_user)
    for rel in ("work/out.gz", "work/prog.txt", "work/summary.txt"):
        assert (ref.snap[rel].uid, ref.snap[rel].gid) == (uid, gid), (rel, ref.snap[rel])

    def before_dump(job: Job):
        pids = job.job_pids()
        assert len(pids) == 4, [proc_comm(p) for p in pids]
        for p in pids:
            assert proc_uids(p) == (uid,) * 4, f"job process {p} ({proc_comm(p)}) has uids {proc_uids(p)}"

    def check(job: Job, stats: dict, m: dict):
        check_pipeline_dump(job, stats, m)
        for p in m["processes"][1:]:
            assert set(p["uids"]) == {uid} and set(p["gids"]) == {gid}, (p["exe"], p["uids"], p["gids"])
    checkpoint_run(e2e, spec, [0.5], "user", before_dump=before_dump, check_dump=check)


# --------------------------------------------------------------------------- make -j2

MAKE_FILES = 200


# Files whose cc1 runs about a second (a long generated function at -O2), so a dump taken
# while one compiles finds the compiler still there however loaded the machine is.
MAKE_SLOW = frozenset(range(20, MAKE_FILES, 40))


def slow_function(i: int) -> str:
    body = "".join(f"  x = (x ^ (x >> {k % 31 + 1})) * {0x9E3779B97F4A7C15 + k}ull + {k}u;\n"
                   for k in range(3000))
    return f"\nuint64_t slow_{i}(uint64_t x) {{\n{body}  return x;\n}}\n"


def write_c_project(work: Path):
    """MAKE_FILES small C files compiled into libgen.a, linked with main.c into prog,
    whose output goes to result.txt."""
    names = [f"m{i:03d}" for i in range(MAKE_FILES)]
    for i, n in enumerate(names):
        (work / f"{n}.c").write_text(f'''#include <stdint.h>
#include <string.h>
#include "gen.h"

static uint64_t mix{i}(uint64_t x) {{
  x ^= x >> 31;
  x *= 0x9E3779B97F4A7C15ull + {i}u;
  return x ^ (x >> 29);
}}

uint64_t f_{n}(uint64_t seed) {{
  uint64_t acc = seed + {i}u;
  char buf[64];
  for (int k = 0; k < {50 + i % 17}; k++) {{
    acc = mix{i}(acc + (uint64_t)k);
    memset(buf, (int)(acc & 0x7f), sizeof buf);
    acc += (uint64_t)buf[k % 64] * {i * 3 + 1}u;
  }}
  return acc;
}}
{slow_function(i) if i in MAKE_SLOW else ""}''')
    (work / "gen.h").write_text("#include <stdint.h>\n" +
                                "".join(f"uint64_t f_{n}(uint64_t);\n" for n in names))
    (work / "main.c").write_text(
        '#include <stdio.h>\n#include "gen.h"\n\nint main(void) {\n  uint64_t s = 1;\n' +
        "".join(f'  s = f_{n}(s);\n' for n in names) +
        '  printf("%llu\\n", (unsigned long long)s);\n  return 0;\n}\n')
    (work / "Makefile").write_text(f"""CC = /usr/bin/gcc
CFLAGS = -O2 -Wall
OBJS = {' '.join(n + '.o' for n in names)}

all: result.txt

result.txt: prog
\t./prog > result.txt

prog: main.o libgen.a
\t$(CC) -o $@ main.o libgen.a

libgen.a: $(OBJS)
\t/usr/bin/ar rcs $@ $(OBJS)

%.o: %.c gen.h
\t$(CC) $(CFLAGS) -c $< -o $@
""")
    (work / "tmp").mkdir()


def make_job() -> JobSpec:
    inputs = tuple([f"m{i:03d}.c" for i in range(MAKE_FILES)] + ["gen.h", "main.c", "Makefile"])
    return JobSpec(name="ipc_make", argv=["/usr/bin/make", "-j2", "--no-print-directory"],
                   setup=write_c_project, inputs=inputs, env={"TMPDIR": "{work}/tmp"},
                   progress=("lines", "stdout"), timeout=240)


@pytest.mark.parametrize("point", [0.3, 0.75], ids=["early", "late"])
def test_make_j2(e2e: E2E, point):
    spec = make_job()
    ref = e2e.reference(spec)
    assert ref.status == 0, ref.snap.get("stderr")
    objs = [rel for rel in ref.snap if re.fullmatch(r"work/m\d{3}\.o", rel)]
    assert len(objs) == MAKE_FILES, sorted(ref.snap)
    for rel in ("work/libgen.a", "work/prog", "work/main.o"):
        assert ref.snap[rel].size > 0, rel
    assert re.fullmatch(r"\d+\n", ref.snap["work/result.txt"].text), ref.snap["work/result.txt"].text
    assert ref.snap["stderr"].size == 0, ref.snap["stderr"].text
    lines = ref.snap["stdout"].text.splitlines()
    assert len(lines) == MAKE_FILES + 4 and lines[-1] == "./prog > result.txt", lines[-3:]

    slow_sources = tuple(f"m{i:03d}.c" for i in sorted(MAKE_SLOW))

    def before_dump(job: Job):
        # A compiler is running: make's child gcc driver has forked cc1, writing a
        # temporary file in TMPDIR. Waiting for a slow file's cc1 leaves about a second
        # before it ends, so the freeze finds it.
        wait_for_process(job, ("cc1",), timeout=120,
                         cmdline_has=lambda argv: any(a.endswith(slow_sources) for a in argv))

    def check(job: Job, stats: dict, m: dict):
        names = [os.path.basename(e) for e in exes(m)]
        assert "make" in names, names
        # the gcc driver (x86_64-linux-gnu-gcc-12) and cc1 or as (x86_64-linux-gnu-as)
        assert any("gcc" in n for n in names), names
        # cc1 or as may have exited between the wait above and the freeze: then it is
        # dumped as a zombie its gcc driver has not reaped yet (no exe), still a child of
        # the driver.
        drivers = {p["pid"] for p in m["processes"] if "gcc" in os.path.basename(p["exe"])}
        compilers = [p for p in m["processes"]
                     if os.path.basename(p["exe"]) in ("cc1", "as") or p["exe"].endswith("-as")
                     or (p["zombie"] and p["ppid"] in drivers)]
        assert compilers, names
        make = next(p for p in m["processes"] if p["exe"].endswith("/make"))
        make_pipes = [f for f in make["fds"] if f["kind"] == "pipe"]
        assert len(make_pipes) >= 2, f"make holds no jobserver pipe: {make['fds']}"
        print(f"processes at dump: {names}; jobserver pipe bytes: "
              f"{[p['bytes'] for p in m['pipes']]}")
    checkpoint_run(e2e, spec, [point], f"p{point}", before_dump=before_dump, check_dump=check)


# --------------------------------------------------------------------------- tar | xz -T2

TAR_FILES = 240


def tar_tree_files() -> list[str]:
    return [f"tree/d{i % 6}/s{i % 11:02d}/f{i:03d}.txt" for i in range(TAR_FILES)]


def tar_job(e2e: E2E) -> JobSpec:
    files = tar_tree_files()

    def setup(work: Path):
        data = e2e.data_file(64 * MiB, 51).read_bytes()
        pos = 0
        for i, rel in enumerate(files):
            p = work / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            n = 40000 + (i * 7919) % 220000
            p.write_bytes(data[pos:pos + n])
            os.chmod(p, 0o644)
            pos += n
        for d in sorted({(work / rel).parent for rel in files} | {(work / rel).parent.parent for rel in files}):
            os.chmod(d, 0o755)
        os.chmod(work / "tree", 0o755)
    script = ("set -o pipefail; /bin/tar -cf - --sort=name --mtime=@0 --owner=0 --group=0 "
              "--numeric-owner tree | /usr/bin/xz -T2 -1 > out.tar.xz; echo tar-xz status $?")
    return JobSpec(name="ipc_tar_xz", argv=[BASH, "-c", script], setup=setup, inputs=tuple(files),
                   progress=("time",), timeout=240)


def test_tar_xz_two_threads(e2e: E2E):
    spec = tar_job(e2e)
    ref = e2e.reference(spec)
    assert ref.status == 0 and ref.snap["stdout"].text == "tar-xz status 0\n", ref.snap["stdout"].text
    assert ref.snap["work/out.tar.xz"].size > 5 * MiB, ref.snap["work/out.tar.xz"]

    def check(job: Job, stats: dict, m: dict):
        # init, bash, tar, xz with its main thread and two compressor threads
        assert stats["processes"] == 4, (stats, exes(m))
        xz = next(p for p in m["processes"] if p["exe"].endswith("/xz"))
        assert len(xz["threads"]) >= 3, f"xz has {len(xz['threads'])} threads"
        assert m["pipes"], "no pipe between tar and xz in the image"
        print(f"pipe bytes at dump: {[p['bytes'] for p in m['pipes']]}")
    checkpoint_run(e2e, spec, [0.45], "middle", progress=output_size_progress("work/out.tar.xz"),
                   check_dump=check)


# --------------------------------------------------------------------------- python multiprocessing

POOL_PY = r'''
import hashlib, multiprocessing, os, sys

PARENT = os.getpid()

def work(i):
    h = hashlib.sha256(i.to_bytes(8, "little"))
    x = i
    for k in range(60):
        h = hashlib.sha256(h.digest())
        x = (x * 6364136223846793005 + 1442695040888963407 + k) % (1 << 64)
    return i, h.hexdigest()[:24], x % 1000003, os.getpid() != PARENT

def main():
    n, out_path = int(sys.argv[1]), sys.argv[2]
    print("pool start", n, flush=True)
    total = in_workers = 0
    with multiprocessing.get_context("fork").Pool(2) as pool, open(out_path, "w") as out:
        for i, digest, v, in_worker in pool.imap(work, range(n), chunksize=50):
            total = (total * 31 + v) % (1 << 61)
            in_workers += in_worker
            out.write(f"{i} {digest} {v}\n")
            if (i + 1) % (n // 100) == 0:
                out.flush()
                print(f"done {i + 1} total {total}", flush=True)
        # A second pass, results in completion order.
        s = sum(v for _, _, v, _ in pool.imap_unordered(work, range(0, n, 7), chunksize=100))
    print(f"end total {total} sum7 {s} all_in_workers {in_workers == n}", flush=True)
    print("pool end", file=sys.stderr, flush=True)
    sys.exit(3)

if __name__ == "__main__":
    main()
'''


def test_python_multiprocessing_pool(e2e: E2E):
    spec = JobSpec(name="ipc_mp_pool", argv=[PYTHON, "{work}/pool.py", "140000", "{work}/results.txt"],
                   setup=lambda work: (work / "pool.py").write_text(POOL_PY), inputs=("pool.py",),
                   progress=("lines", "stdout"), timeout=180)
    ref = e2e.reference(spec)
    assert ref.status == 3, ref.snap["stderr"].text
    assert "all_in_workers True" in ref.snap["stdout"].text
    assert ref.snap["work/results.txt"].size > 4 * MiB

    def check(job: Job, stats: dict, m: dict):
        # init, the pool's parent (main + 3 handler threads) and its two workers
        assert stats["processes"] == 4, (stats, exes(m))
        assert len(m["processes"][1]["threads"]) == 4, len(m["processes"][1]["threads"])
        # The queues' locks: POSIX semaphores, unlinked from /dev/shm right after creation.
        sems = [s for s in m["shm"] if not s["path"]]
        assert len(sems) >= 2, f"no unlinked semaphores in the image: {m['shm']}"
        assert len(m["pipes"]) >= 2, m["pipes"]
        print(f"shm objects: {len(m['shm'])}; pipe bytes: {[p['bytes'] for p in m['pipes']]}")
    checkpoint_run(e2e, spec, [0.4], "middle", check_dump=check)


# --------------------------------------------------------------------------- python asyncio

ASYNCIO_PY = r'''
import asyncio, hashlib, sys

PY = "/usr/bin/python3"

def payload(i):
    return hashlib.sha256(str(i).encode()).digest() * (2000 + (i * 37) % 3000)

async def sha_child(i):
    """sha256sum fed through its stdin pipe, its answer read from its stdout pipe."""
    proc = await asyncio.create_subprocess_exec(
        "/usr/bin/sha256sum", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    data = payload(i)
    out, _ = await proc.communicate(data)
    digest = out.split()[0].decode()
    ok = digest == hashlib.sha256(data).hexdigest()
    return digest[:16], ok, proc.returncode

async def line_child(i):
    """A python child printing lines slowly, read line by line as they come."""
    code = ("import sys, time\n"
            f"for k in range({i % 4 + 3}):\n"
            f"    print('line', k, k * {i}, flush=True)\n"
            "    time.sleep(0.01)\n"
            f"sys.exit({i % 5})\n")
    proc = await asyncio.create_subprocess_exec(PY, "-c", code, stdout=asyncio.subprocess.PIPE)
    lines = []
    while line := await proc.stdout.readline():
        lines.append(line.decode().strip())
    rc = await proc.wait()
    return len(lines), lines[-1], rc

async def ticker(state):
    while True:
        await asyncio.sleep(0.005)
        state["ticks"] += 1

async def main():
    rounds = int(sys.argv[1])
    loop = asyncio.get_running_loop()
    state = {"ticks": 0}
    tick_task = asyncio.create_task(ticker(state))
    fired = []
    for r in range(rounds):
        loop.call_later(0.001 * (r % 3), fired.append, r)
        (sha, ok, rc1), (nl, last, rc2), _ = await asyncio.gather(
            sha_child(r), line_child(r), asyncio.sleep(0.02))
        print(f"round {r} sha {sha} {ok} rc {rc1} lines {nl} last {last!r} rc {rc2}", flush=True)
    await asyncio.sleep(0.01)
    tick_task.cancel()
    print(f"end rounds {rounds} fired {sorted(fired) == list(range(rounds))} "
          f"ticked {state['ticks'] > 0}", flush=True)

asyncio.run(main())
'''


def test_python_asyncio_subprocesses(e2e: E2E):
    spec = JobSpec(name="ipc_asyncio", argv=[PYTHON, "{work}/aio.py", "110"],
                   setup=lambda work: (work / "aio.py").write_text(ASYNCIO_PY), inputs=("aio.py",),
                   progress=("lines", "stdout"), timeout=180)
    ref = e2e.reference(spec)
    out = ref.snap["stdout"].text
    assert ref.status == 0 and out.count(" True rc 0 ") == 110, out[-500:]
    assert out.endswith("end rounds 110 fired True ticked True\n"), out[-500:]

    def before_dump(job: Job):
        # At least one subprocess of the asyncio program is running (a child watcher
        # thread waits for it).
        deadline = time.monotonic() + 30
        while True:
            main = job.job_pids()[:1]
            if main and children(main[0]):
                break
            assert time.monotonic() < deadline and alive(job.init_pid), \
                f"no subprocess seen: {describe_processes(job)}"
            time.sleep(0.002)

    def check(job: Job, stats: dict, m: dict):
        assert stats["processes"] >= 3, (stats, exes(m))  # init, python, its children
        py = m["processes"][1]
        kinds = {f["kind"] for f in py["fds"]}
        assert {"epoll", "unix"} <= kinds, f"asyncio's epoll and self-pipe socketpair missing: {kinds}"
        print(f"processes at dump: {exes(m)}; threads of python: {len(py['threads'])}")
    checkpoint_run(e2e, spec, [0.5], "middle", before_dump=before_dump, check_dump=check)


# --------------------------------------------------------------------------- ckpt_ipc

IPC_ROUNDS = 900


def ipc_job(e2e: E2E, name: str) -> JobSpec:
    assert os.access(e2e.program("ckpt_ipc"), os.X_OK), \
        f"{e2e.program('ckpt_ipc')} is not built (ninja -C {e2e.build})"
    return JobSpec(name=name,
                   argv=[str(e2e.program("ckpt_ipc")), str(IPC_ROUNDS), "{work}/rounds.txt",
                         "--exit-code", "6"],
                   progress=("lines", "stdout"), timeout=120)


def check_ipc_reference(ref: Reference):
    out = ref.snap["stdout"].text
    assert ref.status == 6, out[-1000:]
    assert "FAIL" not in out and out.endswith("done failures 0 exit 6\n"), out[-1000:]
    assert f"counter {2 * IPC_ROUNDS * 1000} atomic {2 * IPC_ROUNDS * 1000} " in out
    assert ref.snap["work/rounds.txt"].size > 50000


def check_ipc_dump(job: Job, stats: dict, m: dict):
    # init, parent, child
    assert stats["processes"] == 3, (stats, exes(m))
    parent, child = m["processes"][1], m["processes"][2]
    # One shared anonymous object, mapped by both.
    assert len(m["shm"]) == 1, m["shm"]
    key = m["shm"][0]["key"]
    for p in (parent, child):
        assert any(v["kind"] == "shm" and v["shm_key"] == key for v in p["vmas"]), p["exe"]
    # Two socketpairs, each with one end in each process.
    types = sorted(s["type"] for s in m["sockets"])
    assert types == [1, 1, 2, 2], m["sockets"]
    assert len(fds_of_kind(m, "unix")) >= 4
    # The eventfd is one open file description shared by both processes.
    efds = [(p["pid"], f) for p in (parent, child) for f in p["fds"] if f["kind"] == "eventfd"]
    assert len(efds) == 2 and any(f["shared_fd"] >= 0 for _, f in efds), efds
    for kind in ("epoll", "timerfd"):
        assert fds_of_kind(m, kind), f"no {kind} fd in the image"
    queued = sum(sum(s["queued"]) for s in m["sockets"])
    print(f"bytes queued in sockets at dump: {queued}")


def test_ckpt_ipc(e2e: E2E):
    spec = ipc_job(e2e, "ipc_ckpt_ipc")
    check_ipc_reference(e2e.reference(spec))
    manifests = checkpoint_run(e2e, spec, [0.5], "middle", check_dump=check_ipc_dump)
    # The stream socket is kept busy: a dump midway finds data queued in it.
    assert sum(sum(s["queued"]) for s in manifests[0]["sockets"]) > 0, manifests[0]["sockets"]


def test_ckpt_ipc_chain_of_five(e2e: E2E):
    """Five dump/restore cycles: restored detached, left running a while, dumped again."""
    spec = ipc_job(e2e, "ipc_ckpt_ipc_chain")
    check_ipc_reference(e2e.reference(spec))

    def before_dump(job: Job):
        # The (restored) init with the parent and child below it.
        assert proc_comm(job.init_pid) == "fsched-init" and ns_pid(job.init_pid) == 1
        below = job.job_pids()
        assert len(below) == 2 and {proc_comm(p) for p in below} == {"ckpt_ipc"}, \
            [(p, proc_comm(p)) for p in below]
    manifests = checkpoint_run(e2e, spec, [0.1, 0.25, 0.4, 0.55, 0.7], "chain",
                               before_dump=before_dump, check_dump=check_ipc_dump)
    assert len(manifests) == 5
    # Restored with the same PIDs each time.
    pids = [sorted(p["pid"] for p in m["processes"]) for m in manifests]
    assert all(p == pids[0] for p in pids), pids


# --------------------------------------------------------------------------- refused state

UNSUPPORTED_PY = r'''
import hashlib, os, signal, socket, sys, time

mode, steps = sys.argv[1], int(sys.argv[2])
h = hashlib.sha256()
if mode == "tcp_half_closed":
    # A connection shut for writing at one end (FIN_WAIT2; its peer CLOSE_WAIT).
    listener = socket.create_server(("127.0.0.1", 0))
    conn = socket.create_connection(listener.getsockname())
    peer, _ = listener.accept()
    conn.shutdown(socket.SHUT_WR)
    fd = conn.fileno()
elif mode == "pidfd":
    child = os.fork()
    if child == 0:
        time.sleep(3600)
        os._exit(0)
    fd = os.pidfd_open(child)
print("fd", fd, flush=True)
for step in range(steps):
    for i in range(3000):
        h.update(f"{step} {i}".encode())
    line = f"step {step + 1}/{steps} {h.hexdigest()[:16]}"
    if mode == "tcp_half_closed":
        # The half-closed connection still carries data the other way.
        peer.sendall(line.encode())
        line += " echo " + str(len(conn.recv(4096)))
    else:
        # The pidfd still works: the child is alive.
        signal.pidfd_send_signal(fd, 0)
        line += " child alive"
    print(line, flush=True)
    time.sleep(0.05)
if mode == "pidfd":
    signal.pidfd_send_signal(fd, signal.SIGKILL)
    os.waitpid(child, 0)
print("end", mode, flush=True)
'''


def unsupported_candidates(job: Job, prefix: str) -> list[tuple[int, int]]:
    found = []
    for pid in job.job_pids():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith(prefix):
                found += [(pid, int(fd)), (ns_pid(pid), int(fd))]
    return found


# (pidfds are restored now: tests/e2e/test_kinds_misc.py; TCP sockets: test_kinds_net.py.)
@pytest.mark.parametrize("mode,prefix,word", [("tcp_half_closed", "socket:", "FIN_WAIT2")])
def test_unsupported_state_refused(e2e: E2E, mode, prefix, word):
    spec = JobSpec(name=f"ipc_refused_{mode}", argv=[PYTHON, "{work}/hold.py", mode, "80"],
                   setup=lambda work: (work / "hold.py").write_text(UNSUPPORTED_PY), inputs=("hold.py",),
                   progress=("lines", "stdout"), timeout=120)
    ref = e2e.reference(spec)
    out = ref.snap["stdout"].text
    assert ref.status == 0 and out.endswith(f"end {mode}\n"), out[-500:]
    job = e2e.job(spec)
    job.start_detached()
    try:
        job.wait_progress(ref, 0.3)
        candidates = unsupported_candidates(job, prefix)
        assert candidates, f"the job holds no {prefix} fd"
        image = e2e.image(f"refused/{mode}")
        r, _ = e2e.engine.dump(job.init_pid, image, timeout=DUMP_TIMEOUT)
        line = single_error_line(r)
        assert r.rc == 4, f"exit {r.rc}, not 4 (unsupported, docs/failures.md): {line}"
        assert names_pid_and_fd(line, candidates), f"error does not name the pid and fd {candidates}: {line}"
        assert word in line and "not supported" in line, line
        assert not image.exists() and not Path(str(image) + ".tmp").exists(), "a failed dump left an image"
        for p in [job.init_pid, *job.job_pids()]:
            assert alive(p), f"process {p} died"
            assert proc_state(p) not in ("t", "T"), f"process {p} left stopped"
            assert tracer_pid(p) == 0, f"process {p} left traced"
        assert job.wait_end() == ref.status
        job.assert_matches(ref, " after a refused dump")
    finally:
        kill_job_processes(job.marker)
