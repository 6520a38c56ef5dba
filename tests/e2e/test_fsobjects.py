"""File-system objects with no path to reopen them by, checkpointed part-way and
restored: files deleted while open or mapped (ckpt_fsobj, bash here-documents larger
than a pipe, Python's tempfile.TemporaryFile), inotify instances (ckpt_fsobj, Python
through ctypes) and SysV shared memory (ckpt_fsobj). The restored run's stdout, stderr,
output files and exit status must equal the uninterrupted run's."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from ckpt_e2e import E2E, Job, JobSpec, Reference, alive, kill_job_processes
from test_ipc import checkpoint_run, fds_of_kind, wait_for_process

PYTHON = "/usr/bin/python3"
BASH = "/bin/bash"

pytestmark = pytest.mark.slow


def wait_sleeping(job: Job, timeout: float = 20.0):
    """Waits until every process of the job below its init is in a sleep (nanosleep or
    clock_nanosleep) or waiting for a child, so that no inotify event is in flight."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = []
        for p in job.job_pids():
            try:
                nr = Path(f"/proc/{p}/syscall").read_text().split()[0]
            except (OSError, IndexError):
                busy.append(p)
                continue
            if nr not in ("35", "230", "61", "247"):  # nanosleep, clock_nanosleep, wait4, waitid
                busy.append(p)
        if not busy and job.job_pids():
            return
        assert alive(job.init_pid), f"job {job.spec.name} ended"
        time.sleep(0.002)
    raise AssertionError(f"job {job.spec.name} never idle in a sleep")


def deleted_files(m: dict) -> dict[str, dict]:
    """The manifest's deleted files by the name they had."""
    return {Path(d["path"]).name: d for d in m.get("deleted_files", [])}


# --------------------------------------------------------------------------- deleted files

def fsobj_job(e2e: E2E, name: str, mode: str, rounds: int, tick_ms: int) -> JobSpec:
    return JobSpec(name=name, argv=[str(e2e.program("ckpt_fsobj")), mode, str(rounds), str(tick_ms)],
                   progress=("lines", "stdout"), timeout=120)


def check_fsobj_deleted_dump(job: Job, stats: dict, m: dict):
    assert stats["processes"] == 3, stats
    d = deleted_files(m)
    # scratch.log (two fds), sparse.bin (an fd), shared.map and private.map (mapped only);
    # after a restore they live on under new names in the same directory.
    assert len(d) == 4, m.get("deleted_files")
    for f in d.values():
        assert Path(f["path"]).parent == job.work, f["path"]
    sizes = sorted(f["size"] for f in d.values())
    assert sizes[-1] == 64 << 20, sizes
    sparse = next(f for f in d.values() if f["size"] == 64 << 20)
    stored = sum(n for _, n in sparse["runs"])
    assert 0 < stored <= 40, f"the sparse file's holes were stored: {sparse['runs']}"
    parent, child = m["processes"][1], m["processes"][2]
    pfds = [f for f in parent["fds"] if f.get("deleted_key")]
    cfds = [f for f in child["fds"] if f.get("deleted_key")]
    assert len(pfds) == 3 and len(cfds) == 3, (pfds, cfds)
    # The child's fds are the parent's open file descriptions (fork).
    assert all(f["shared_fd"] >= 0 for f in cfds), cfds
    for p in (parent, child):
        mapped = [v for v in p["vmas"] if v.get("deleted_key")]
        assert len(mapped) == 2, [v["path"] for v in p["vmas"]]


def test_fsobj_deleted(e2e: E2E):
    spec = fsobj_job(e2e, "fs_deleted", "deleted", 250, 20)
    ref = e2e.reference(spec)
    out = ref.snap["stdout"].text
    assert ref.status == 0 and out.endswith("done\n") and "FAIL" not in out, out[-1000:]
    assert "links 0 mode 640" in out and "sparse size 67108864" in out, out[-600:]
    checkpoint_run(e2e, spec, [0.3, 0.7], "twice", check_dump=check_fsobj_deleted_dump)


# bash keeps a here-document larger than a pipe in an unlinked file in $TMPDIR. The
# loop reads it line by line (the read offset is kept across the checkpoint); the group
# after it sleeps with the document as stdin (bash and sleep share the descriptor),
# then sorts it.
def heredoc_script(lines: int) -> str:
    body = "".join(f"line {i:06d} {(i * 7919) % 100003:06d} {'abcdefghij' * (1 + i % 5)}\n"
                   for i in range(lines))
    return f'''set -e
n=0; sum=0
while IFS= read -r line; do
  n=$((n + 1)); sum=$(( (sum * 31 + ${{#line}}) % 1000003 ))
  if (( n % 400 == 0 )); then echo "read $n sum $sum"; sleep 0.05; fi
done <<'EOF'
{body}EOF
echo "loop done $n $sum"
{{ sleep 2; /usr/bin/sort -r | /usr/bin/sha256sum; /usr/bin/wc -l < /dev/null; }} <<'EOF'
{body}EOF
echo "end"
'''


def heredoc_spec(name: str) -> JobSpec:
    """bash feeding a 12,000-line here-document (larger than a pipe, so a deleted temp
    file in $TMPDIR) to a slow reader."""
    def setup(work: Path):
        (work / "heredoc.sh").write_text(heredoc_script(12000))
        (work / "tmp").mkdir()
    return JobSpec(name=name, argv=[BASH, "{work}/heredoc.sh"], setup=setup,
                   inputs=("heredoc.sh",), env={"TMPDIR": "{work}/tmp"},
                   progress=("lines", "stdout"), timeout=120)


def test_bash_heredoc(e2e: E2E):
    spec = heredoc_spec("fs_heredoc")
    ref = e2e.reference(spec)
    out = ref.snap["stdout"].text
    assert ref.status == 0 and out.endswith("end\n") and "loop done 12000" in out, out[-500:]

    def check(job: Job, stats: dict, m: dict):
        d = m.get("deleted_files", [])
        assert d and all(Path(f["path"]).parent == job.work / "tmp" for f in d), d
        assert all(f["size"] > 65536 for f in d), d
        print(f"deleted files at dump: {[(f['path'], f['size']) for f in d]}")
    # In the loop, and during the sleep of the second document ("loop done" is line 31
    # of 34).
    checkpoint_run(e2e, spec, [0.4], "loop", check_dump=check)
    checkpoint_run(e2e, spec, [0.9], "sleep", check_dump=check,
                   before_dump=lambda job: wait_for_process(job, ("sleep",)))



def test_restore_refused_without_deleted_files_directory(e2e: E2E):
    """A deleted file is recreated in its old directory: with that directory gone the
    restore is refused before any process exists, naming it; once it is back the same
    image restores and the job ends as the uninterrupted run did."""
    from ckpt_e2e import job_processes, single_error_line, watch
    from test_ipc import dump_bounded

    spec = heredoc_spec("fs_heredoc_nodir")
    ref = e2e.reference(spec)
    job = e2e.job(spec)
    job.start_detached()
    image = e2e.image("refused/heredoc_nodir")
    try:
        job.wait_progress(ref, 0.3)
        dump_bounded(e2e, job, image)
        (job.work / "tmp").rename(job.work / "tmp.away")
        before = job.snapshot()
        r, seen = watch([str(e2e.engine.bin), "restore", "--dir", str(image)], job.marker, 120)
        line = single_error_line(r)
        assert "restore refused" in line and f"{job.work}/tmp" in line, line
        assert not seen, f"a refused restore created processes: {seen}"
        assert not job_processes(job.marker)
        assert job.snapshot() == before, "a refused restore changed the job's files"
        (job.work / "tmp.away").rename(job.work / "tmp")
        r = e2e.restore_foreground(job, image)
        assert r.rc == ref.status, r.stderr
        job.assert_matches(ref, " (restored once the directory was back)")
    finally:
        from ckpt_e2e import kill_job_processes
        kill_job_processes(job.marker)


TEMPFILE_PY = r'''
import hashlib, mmap, os, sys, tempfile, time
steps = int(sys.argv[1])
f = tempfile.TemporaryFile(dir="tmp")
g = tempfile.TemporaryFile(mode="w+", dir="tmp")
f.write(b"\0" * 8192)
f.flush()
mm = mmap.mmap(f.fileno(), 8192)   # MAP_SHARED on the unlinked file
mfd = os.memfd_create("scratch")   # a memfd held as an fd only
h = hashlib.sha256()
for s in range(steps):
    f.write(bytes([s % 251]) * (1000 + s * 13))
    os.write(mfd, f"{s} ".encode())
    g.write(f"step {s}\n")
    mm[s % 8192] = s % 256
    f.flush()
    pos = f.tell()
    f.seek(0)
    h.update(f.read())
    f.seek(pos)
    print(f"step {s} size {pos} {h.hexdigest()[:16]} {hashlib.md5(mm[:]).hexdigest()[:8]}", flush=True)
    time.sleep(0.03)
g.seek(0)
print("lines", len(g.read().splitlines()), "final", f.tell())
print("memfd", os.lseek(mfd, 0, os.SEEK_CUR), hashlib.sha256(os.pread(mfd, 1 << 20, 0)).hexdigest()[:16],
      os.readlink(f"/proc/self/fd/{mfd}"))
'''


def test_python_temporaryfile(e2e: E2E):
    def setup(work: Path):
        (work / "tmpf.py").write_text(TEMPFILE_PY)
        (work / "tmp").mkdir()
    spec = JobSpec(name="fs_tempfile", argv=[PYTHON, "{work}/tmpf.py", "200"], setup=setup,
                   inputs=("tmpf.py",), progress=("lines", "stdout"), timeout=120)
    ref = e2e.reference(spec)
    assert ref.status == 0 and "lines 200 final" in ref.snap["stdout"].text
    assert "/memfd:scratch (deleted)\n" in ref.snap["stdout"].text

    def check(job: Job, stats: dict, m: dict):
        d = m.get("deleted_files", [])
        assert len(d) == 3 and any(f["path"] == "/memfd:scratch" for f in d), d
        py = m["processes"][1]
        assert any(v.get("deleted_key") and v["shared"] for v in py["vmas"]), "no mapped tempfile"
    checkpoint_run(e2e, spec, [0.5], "middle", check_dump=check)


# --------------------------------------------------------------------------- inotify

def check_fsobj_inotify_dump(job: Job, stats: dict, m: dict):
    ino = [f for p in m["processes"] for f in p["fds"] if f["kind"] == "inotify"]
    assert len(ino) == 1, ino
    watches = ino[0]["watches"]
    # a, c, f and wdir; b's watch (wd 2) was removed.
    assert [w["wd"] for w in watches] == [1, 3, 4, 5], watches
    assert [Path(w["path"]).name for w in watches] == ["a", "c", "f", "wdir"], watches


def test_fsobj_inotify(e2e: E2E):
    spec = fsobj_job(e2e, "fs_inotify", "inotify", 200, 25)
    ref = e2e.reference(spec)
    out = ref.snap["stdout"].text
    assert ref.status == 0 and out.startswith("wds a 1 c 3 f 4 top 5\n"), out[:200]
    assert out.endswith("late wd 6\ndone\n"), out[-200:]
    # Events queued and not yet read are refused by the dump: dump while the program
    # sleeps between rounds, with every event read, and again should a round have
    # started in between.
    checkpoint_run(e2e, spec, [0.3, 0.6], "twice", before_dump=wait_sleeping,
                   check_dump=check_fsobj_inotify_dump, retry_dump_if="inotify events not yet read")


INOTIFY_PY = r'''
import ctypes, os, select, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
IN_MODIFY, IN_ATTRIB, IN_CREATE, IN_DELETE, IN_NONBLOCK = 0x2, 0x4, 0x100, 0x200, 0o4000

def add(fd, path, mask):
    wd = libc.inotify_add_watch(fd, path.encode(), mask)
    if wd < 0:
        raise OSError(ctypes.get_errno(), "inotify_add_watch " + path)
    return wd

def events(data):
    out = []
    while data:
        wd, mask, cookie, n = struct.unpack("iIII", data[:16])
        name = data[16:16 + n].rstrip(bytes(1)).decode()
        out.append(f"{wd}:{mask:x}:{name}")
        data = data[16 + n:]
    return out

steps = int(sys.argv[1])
for d in ("in1", "in2", "in3"):
    os.makedirs(d, exist_ok=True)
blocking = libc.inotify_init1(0)
polled = libc.inotify_init1(IN_NONBLOCK)
ep = select.epoll()
ep.register(polled, select.EPOLLIN)
w1 = add(blocking, "in1", IN_CREATE | IN_DELETE)
# Watches added and removed so that the numbers of polled's watches have gaps.
tmp = [add(polled, d, IN_CREATE) for d in ("in1", "in2", "in3")]
libc.inotify_rm_watch(polled, tmp[0])
libc.inotify_rm_watch(polled, tmp[1])
os.read(polled, 4096)  # the two IN_IGNORED events
w3 = add(polled, "in2", IN_CREATE | IN_ATTRIB)
print("wds", w1, tmp[2], w3, flush=True)
for s in range(steps):
    name = f"in1/f{s}"
    open(name, "w").close()
    os.unlink(name)
    got = events(os.read(blocking, 4096))
    while len(got) < 2:
        got += events(os.read(blocking, 4096))
    open(f"in2/g{s}", "w").close()
    os.chmod(f"in2/g{s}", 0o600)
    if s % 3 == 0:
        open(f"in3/h{s}", "w").close()
    want = 3 if s % 3 == 0 else 2
    polled_ev = []
    while len(polled_ev) < want:
        for fd, _ in ep.poll(5):
            polled_ev += events(os.read(fd, 4096))
    print(f"step {s}", " ".join(got), "|", " ".join(polled_ev), flush=True)
    time.sleep(0.04)
print("end", add(polled, "in3", IN_DELETE), flush=True)
'''


def test_python_inotify(e2e: E2E):
    spec = JobSpec(name="fs_pyinotify", argv=[PYTHON, "{work}/watch.py", "120"],
                   setup=lambda work: (work / "watch.py").write_text(INOTIFY_PY), inputs=("watch.py",),
                   progress=("lines", "stdout"), timeout=120)
    ref = e2e.reference(spec)
    out = ref.snap["stdout"].text
    assert ref.status == 0 and out.startswith("wds 1 3 4\n") and "\nend 3\n" in out, out[:300]

    def check(job: Job, stats: dict, m: dict):
        ino = sorted((f for f in m["processes"][1]["fds"] if f["kind"] == "inotify"),
                     key=lambda f: f["fd"])
        assert [[w["wd"] for w in f["watches"]] for f in ino] == [[1], [3, 4]], ino
        assert fds_of_kind(m, "epoll"), "no epoll fd"
    checkpoint_run(e2e, spec, [0.5], "middle", before_dump=wait_sleeping, check_dump=check,
                   retry_dump_if="inotify events not yet read")


UNREAD_PY = r'''
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(0)
os.makedirs("w", exist_ok=True)
assert libc.inotify_add_watch(fd, b"w", 0x100) == 1  # IN_CREATE
open("w/x", "w").close()  # an event the job never reads
print("queued", flush=True)
time.sleep(60)
'''


def test_inotify_events_not_yet_read_refuse_the_dump(e2e: E2E):
    """Unread events cannot be restored: the dump refuses, names the fd, and the job
    runs on (docs/state-kinds.md)."""
    spec = JobSpec(name="fs_unread", argv=[PYTHON, "{work}/unread.py"],
                   setup=lambda work: (work / "unread.py").write_text(UNREAD_PY), inputs=("unread.py",),
                   progress=("lines", "stdout"), timeout=120)
    job = e2e.job(spec)
    job.start_detached()
    try:
        deadline = time.monotonic() + 30
        while "queued" not in job.read("stdout"):
            assert time.monotonic() < deadline and alive(job.init_pid), job.read("stderr")
            time.sleep(0.05)
        image = e2e.image("fs_unread/refused")
        r, _ = e2e.engine.dump(job.init_pid, image)
        assert r.rc != 0, "the dump of a job with unread inotify events went through"
        assert "inotify events not yet read" in r.stderr and "fd 3" in r.stderr, r.stderr
        assert alive(job.init_pid) and job.processes(), "the refused dump ended the job"
        assert not image.exists() and not Path(str(image) + ".tmp").exists()
    finally:
        kill_job_processes(job.marker)


# --------------------------------------------------------------------------- SysV shm

def check_fsobj_sysv_dump(job: Job, stats: dict, m: dict):
    segs = m.get("sysv_shm", [])
    # a (private), b (with a key) and c (removed while attached), with their ids.
    assert [s["id"] for s in segs] == [0, 1, 2], segs
    assert [s["removed"] for s in segs] == [False, False, True], segs
    assert segs[1]["key"] == 0x0f5c4ed1 and segs[1]["mode"] == 0o640, segs[1]
    # a: the pages written (each round writes one) and its last, partial page.
    assert 0 < sum(n for _, n in segs[0]["runs"]) <= 65, segs[0]["runs"]
    for p in m["processes"][1:]:
        attached = sorted(int(v["shm_key"]) for v in p["vmas"] if v["kind"] == "sysv")
        assert attached == [0, 1, 2], (p["pid"], attached)


def test_fsobj_sysv(e2e: E2E):
    spec = fsobj_job(e2e, "fs_sysv", "sysv", 200, 25)
    ref = e2e.reference(spec)
    out = ref.snap["stdout"].text
    assert ref.status == 0 and out.endswith("done\n") and "FAIL" not in out, out[-500:]
    # The job has an IPC namespace of its own: its first segments are 0, 1, 2.
    assert " a id 0 size 262244 nattch 2 mode 600\n b id 1 size 262244 nattch 2 mode 640\n" in out, out[:400]
    checkpoint_run(e2e, spec, [0.3, 0.65], "twice", check_dump=check_fsobj_sysv_dump)


# ipcmk creates a segment nobody attaches; ipcs shows it (id, perms, size, attach count)
# while a second one, made by ipcmk too, is removed part-way.
IPCS_SH = r'''set -e
/usr/bin/ipcmk -M 100000 -p 0640
/usr/bin/ipcmk -M 5000
for i in $(seq 1 60); do
  echo "step $i: $(/usr/bin/ipcs -m | /usr/bin/awk 'NR > 3 && NF { printf "%s %s %s %s;", $2, $4, $5, $6 }')"
  if [ "$i" = 40 ]; then /usr/bin/ipcrm -m 1; fi
  sleep 0.1
done
'''


def test_ipcmk_segments(e2e: E2E):
    # (JobSpec formats argv: "{{" for "{")
    spec = JobSpec(name="fs_ipcmk", argv=[BASH, "-c", IPCS_SH.replace("{", "{{").replace("}", "}}")],
                   progress=("lines", "stdout"),
                   timeout=120)
    ref = e2e.reference(spec)
    out = ref.snap["stdout"].text
    assert ref.status == 0 and "step 1: 0 640 100000 0;1 644 5000 0;" in out, out[:300]
    assert out.endswith("step 60: 0 640 100000 0;\n"), out[-200:]

    def check(job: Job, stats: dict, m: dict):
        assert [s["id"] for s in m["sysv_shm"]] == [0, 1], m["sysv_shm"]
    checkpoint_run(e2e, spec, [0.3, 0.6], "twice", check_dump=check)


REFUSED_IPC_PY = r'''
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
mode = sys.argv[1]
if mode == "sem":
    if libc.semget(0, 1, 0o1600) < 0:   # IPC_PRIVATE, IPC_CREAT | 0600
        raise OSError(ctypes.get_errno(), "semget")
else:
    # A segment of 4 pages, attached, its last two pages unmapped again.
    shm = libc.shmget(0, 4 * 4096, 0o1600)
    addr = libc.shmat(shm, None, 0)
    if shm < 0 or addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "shmget/shmat")
    if libc.munmap(ctypes.c_void_p(addr + 2 * 4096), 2 * 4096) < 0:
        raise OSError(ctypes.get_errno(), "munmap")
for step in range(int(sys.argv[2])):
    print("step", step, flush=True)
    time.sleep(0.05)
print("end", flush=True)
'''


@pytest.mark.parametrize("mode,words", [("sem", ("SysV semaphore", "not supported")),
                                        ("partial", ("SysV segment", "partly unmapped"))])
def test_sysv_refused(e2e: E2E, mode, words):
    """State the engine refuses: the dump fails naming it, and the job runs on unharmed."""
    from ckpt_e2e import kill_job_processes, single_error_line
    spec = JobSpec(name=f"fs_refused_{mode}", argv=[PYTHON, "{work}/ipc.py", mode, "60"],
                   setup=lambda work: (work / "ipc.py").write_text(REFUSED_IPC_PY), inputs=("ipc.py",),
                   progress=("lines", "stdout"), timeout=60)
    ref = e2e.reference(spec)
    assert ref.status == 0 and ref.snap["stdout"].text.endswith("end\n"), ref.snap["stdout"].text[-300:]
    job = e2e.job(spec)
    job.start_detached()
    try:
        job.wait_progress(ref, 0.3)
        image = e2e.image(f"refused/{mode}")
        r, _ = e2e.engine.dump(job.init_pid, image, timeout=60)
        line = single_error_line(r)
        assert r.rc == 4, f"exit {r.rc}, not 4 (unsupported, docs/failures.md): {line}"
        assert all(w in line for w in words), line
        assert not image.exists() and not Path(str(image) + ".tmp").exists()
        assert job.wait_end() == ref.status
        job.assert_matches(ref, " after a refused dump")
    finally:
        kill_job_processes(job.marker)
