"""Incremental images (docs/incremental.md): a job dumped with --track-mem and then with
--parent stores only the pages written since; restored from the newest link of a chain
(the seed's CRIU_FullEvery=10 example: a full image and 9 incrementals) it ends with the
uninterrupted run's output, byte for byte. A damaged link fails the restore of every
image after it before any process exists."""
from __future__ import annotations

from pathlib import Path

import json
import os
import re
import random
import shutil
import signal

import pytest

from ckpt_e2e import E2E, Job, JobSpec, kill_job_processes, page_runs
from test_ipc import manifest

# A python3 job that rewrites a little of its 48 MiB heap buffer and of a private
# anonymous mapping each step, grows the buffer every 10th step, maps and unmaps a
# region and moves another with mremap (ctypes), writes to a private mapping of a
# file (whose other pages stay the file's) and around guard pages (MADV_GUARD_INSTALL),
# and prints digests of all of it.
JOB_PY = r'''
import ctypes, hashlib, mmap, os, random, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mremap.restype = ctypes.c_void_p
libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
PROT, PRIV = mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
rnd = random.Random(7)
buf = bytearray(rnd.randbytes(48 << 20))
N = 4 << 20
moved = libc.mmap(None, N, PROT, PRIV, -1, 0)
ctypes.memmove(moved, rnd.randbytes(N), N)
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
fd = os.open(sys.argv[2], os.O_RDONLY)
FL = os.fstat(fd).st_size
fmap = libc.mmap(None, FL, PROT, mmap.MAP_PRIVATE, fd, 0)
os.close(fd)
G, P = 16 * 4096, 4096
gmap = libc.mmap(None, G, PROT, PRIV, -1, 0)
ctypes.memmove(gmap, rnd.randbytes(G), G)
assert libc.madvise(gmap + 4 * P, 3 * P, 102) == 0, ctypes.get_errno()  # MADV_GUARD_INSTALL
steps = int(sys.argv[1])
for i in range(steps):
    ctypes.memmove(fmap + rnd.randrange(FL - 64), rnd.randbytes(64), 64)
    gpage = rnd.choice([0, 1, 2, 3, 7, 8, 9, 10, 11, 12, 13, 14, 15])
    ctypes.memmove(gmap + gpage * P + rnd.randrange(P - 64), rnd.randbytes(64), 64)
    gd = hashlib.sha256(ctypes.string_at(gmap, 4 * P) + ctypes.string_at(gmap + 7 * P, 9 * P))
    for k in range(20):
        off = rnd.randrange(len(buf) - 4096)
        buf[off:off + 100] = rnd.randbytes(100)
    moff = rnd.randrange(N - 64)
    ctypes.memmove(moved + moff, rnd.randbytes(64), 64)
    if i % 10 == 5:
        buf.extend(rnd.randbytes(1 << 20))
    if i % 7 == 3:
        moved = libc.mremap(moved, N, N + 4096, 1)  # MREMAP_MAYMOVE: maybe elsewhere
        libc.munmap(moved + N, 4096)
    tmp = libc.mmap(None, 1 << 20, PROT, PRIV, -1, 0)
    ctypes.memmove(tmp, rnd.randbytes(1 << 20), 1 << 20)
    d = hashlib.sha256(ctypes.string_at(tmp, 1 << 20)).hexdigest()[:8]
    libc.munmap(tmp, 1 << 20)
    print(i, hashlib.sha256(buf).hexdigest()[:16],
          hashlib.sha256(ctypes.string_at(moved, N)).hexdigest()[:16], d,
          hashlib.sha256(ctypes.string_at(fmap, FL)).hexdigest()[:16], gd.hexdigest()[:8],
          flush=True)
    time.sleep(0.04)
print("done", steps, flush=True)
'''

STEPS = 140


def _setup(work: Path) -> None:
    (work / "job.py").write_text(JOB_PY)
    (work / "data.bin").write_bytes(random.Random(11).randbytes(1 << 20))


def _spec(name: str) -> JobSpec:
    return JobSpec(name=name,
                   argv=["/usr/bin/python3", "{work}/job.py", str(STEPS), "{work}/data.bin"],
                   setup=_setup, inputs=("job.py", "data.bin"), progress=("lines", "stdout"),
                   timeout=180)


def _pre_dump(e2e: E2E, job: Job, pre: Path, *extra: str) -> dict:
    """fsched-ckpt pre-dump of the job into `pre`, which must succeed; its JSON stats."""
    r = e2e.engine.call(["pre-dump", "--pid", str(job.init_pid), "--dir", str(pre), "--json",
                         *extra], 120)
    assert r.rc == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def _chain(e2e: E2E, job: Job, ref, name: str, links: int, mappings: bool = False,
           method: str | None = None, shared: bool = False) -> list[Path]:
    """Dumps the running job `links` times, leaving it running: a full image with
    --track-mem, then incrementals on the one before. With `mappings` (JOB_PY), checks
    what each image holds of its file mapping and guard pages. With `method`, dumps
    with --track-method METHOD and checks that each incremental's private mappings say
    so. With `shared`, checks that the job's shared memory object is hashed and that
    each incremental takes most of it from its parent. Returns the image directories."""
    images = []
    for i in range(links):
        job.wait_progress(ref, 0.1 + 0.6 * i / links)
        image = e2e.image(f"{name}/link-{i}")
        # --parent with --leave-running keeps the job tracked: --track-mem is left out
        # of every other incremental dump.
        extra = (("--track-mem",) if i % 2 == 0 else ()) + \
            (("--parent", str(images[-1])) if images else ()) + \
            (("--track-method", method) if method else ())
        r, st = e2e.engine.dump(job.init_pid, image, leave_running=True, extra=extra)
        assert r.rc == 0, f"dump {i} failed ({r.rc}): {r.stderr.strip()}"
        m = manifest(image)
        if i == 0:
            assert m["kind"] == "full" and not st["incremental"], (m["kind"], st)
        else:
            assert m["kind"] == "incremental" and st["incremental"], (m["kind"], st)
            assert m["parent"]["image_id"] == manifest(images[-1])["image_id"]
            # A little of the memory was written between dumps: far less is stored.
            assert st["memory_bytes"] < 0.5 * first["memory_bytes"], (st, first)
            parent_pages = sum(c for p in m["processes"] for v in p["vmas"]
                               for _, c in page_runs(v.get("parent_runs", [])))
            assert parent_pages * 4096 > 40 << 20, parent_pages
            tracks = {v.get("track", "none") for p in m["processes"] for v in p["vmas"]
                      if not v.get("shared") and v["kind"] in ("anon", "heap", "stack")}
            # With kernel tracking, a mapping made or moved since the parent is stored
            # whole ("none"); hashes cover every private mapping.
            assert (tracks == {"hash"} if method == "hash"
                    else "kernel" in tracks and tracks <= {"kernel", "none"}), tracks
            assert st["track_method"] == (method or "kernel"), st
            # Left running, the incremental's pages were copied under the freeze and
            # written after the thaw (dump.cpp hold_budget_for_written) with the kernel's
            # tracking; with hashes, which pages it stores is not known before the freeze.
            if method == "hash":
                assert st["held_bytes"] == 0, st
            else:
                assert st["held_bytes"] > 0, st
                # ... and most of them before the freeze, by the pre-copy round
                # (precopy.h), the job running: the chain restored below proves the
                # copies true, with the job writing all the while.
                assert st["pre_copied_bytes"] > 0 and st["pre_copy_ms"] > 0, st
        if shared:
            objs = m["shm"]
            assert objs and all(o.get("track") == "hash" for o in objs), objs
            own = sum(c for o in objs for _, c in page_runs(o.get("runs", [])))
            below = sum(c for o in objs for _, c in page_runs(o.get("parent_runs", [])))
            if i == 0:
                assert below == 0 and own >= 2048, (own, below)
            else:
                # A few hundred of its 2048 pages were written since the parent.
                assert below > 1000 and own < 1000, (own, below)
        # The private mapping of data.bin: the pages the job wrote (since the parent)
        # are stored, the file's own are not; the guard pages are recorded.
        if mappings:
            vmas = [v for p in m["processes"] for v in p["vmas"]]
            data = [v for v in vmas if v.get("path", "").endswith("/data.bin")]
            assert len(data) == 1, [v.get("path") for v in vmas]
            written = sum(c for _, c in page_runs(data[0].get("runs", [])))
            assert 1 <= written < 64, data[0]
            assert [[4, 3]] in [v.get("guards") for v in vmas], "no guard pages recorded"
        if i == 0:
            first = st
        images.append(image)
    return images


def test_incremental_chain_of_ten(e2e: E2E):
    spec = _spec("incr_chain")
    ref = e2e.reference(spec)
    assert ref.status == 0 and ref.snap["stdout"].text.endswith(f"done {STEPS}\n")
    job = e2e.job(spec)
    job.start_detached()
    try:
        images = _chain(e2e, job, ref, spec.name, 10, mappings=True)
        # A plain dump of the tracked job: full, and our registrations are no refusal.
        plain = e2e.image(f"{spec.name}/plain")
        r, st = e2e.engine.dump(job.init_pid, plain, leave_running=True)
        assert r.rc == 0 and not st["incremental"] and manifest(plain)["kind"] == "full", \
            (r.stderr, st)
        # The last one kills the job; the restore reads the whole chain.
        job.wait_progress(ref, 0.8)
        last = e2e.image(f"{spec.name}/last")
        r, st = e2e.engine.dump(job.init_pid, last, extra=("--parent", str(images[-1])))
        assert r.rc == 0 and st["incremental"], (r.stderr, st)
        # show lists the chain, newest first, down to the full image.
        sh = e2e.engine.call(["show", "--dir", str(last)], 60)
        assert sh.rc == 0, sh.stderr
        chain = [ln.split()[0] for ln in sh.stdout.splitlines()
                 if ln.startswith("    /") and " pages; " in ln]
        assert chain == [str(last)] + [str(p) for p in reversed(images)], sh.stdout[:2000]
        assert f"{last} incremental" in sh.stdout and "pages; kernel" in sh.stdout, sh.stdout[:2000]
        job.paused()
        res = e2e.restore_foreground(job, last)
        assert res.rc == ref.status, res.stderr
        job.assert_matches(ref, " (restored from an 11-link chain)")
    finally:
        kill_job_processes(job.marker)


def test_damaged_link_fails_the_restore_before_any_process(e2e: E2E):
    spec = _spec("incr_damaged")
    ref = e2e.reference(spec)
    job = e2e.job(spec)
    job.start_detached()
    try:
        images = _chain(e2e, job, ref, spec.name, 5, mappings=True)
    finally:
        kill_job_processes(job.marker)
    pages = images[2] / "pages.img"
    data = bytearray(pages.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pages.write_bytes(bytes(data))
    # Links 0 and 1 do not need link 2; links 3 and 4 do, and are refused up front.
    for i, want in ((1, 0), (4, 3), (3, 3)):
        pidfile = Path(str(images[i]) + ".pid")
        res, pid = e2e.engine.restore_detached(images[i], pidfile)
        if want == 0:
            assert res.rc == 0 and pid, res.stderr
            os.kill(pid, signal.SIGKILL)
        else:
            assert res.rc == want, (i, res.rc, res.stderr)
            assert str(images[2]) in res.stderr, res.stderr
            assert pid is None, "the refused restore made a process"
    # verify checks the image itself; with --chain, every link the restore needs.
    res = e2e.engine.call(["verify", "--dir", str(images[4])], 120)
    assert res.rc == 0 and "is intact" in res.stdout, res.stderr
    res = e2e.engine.call(["verify", "--chain", "--dir", str(images[4])], 120)
    assert res.rc == 3 and str(images[2]) in res.stderr and "checksum mismatch" in res.stderr, (
        res.rc, res.stderr)
    res = e2e.engine.call(["verify", "--chain", "--dir", str(images[1])], 120)
    assert res.rc == 0 and "and its 1 parent image(s) are intact" in res.stdout, res.stderr


def test_pre_dump_then_dump(e2e: E2E):
    """pre-dump copies the memory of the running job, frozen only to start tracking; the
    dump made on it a second later, while the job went on rewriting memory, stores only
    what changed and restores byte-identical."""
    spec = _spec("incr_predump")
    ref = e2e.reference(spec)
    job = e2e.job(spec)
    job.start_detached()
    try:
        job.wait_progress(ref, 0.3)
        pre = e2e.image(f"{spec.name}/pre")
        ps = _pre_dump(e2e, job, pre)
        assert manifest(pre)["kind"] == "pre-dump"
        assert ps["memory_bytes"] > 40 << 20, ps
        # A pre-dump is not a restore target.
        bad, _ = e2e.engine.restore_detached(pre, Path(str(pre) + ".pid"))
        assert bad.rc == 2 and "pre-dump" in bad.stderr, (bad.rc, bad.stderr)
        job.wait_progress(ref, 0.5)
        last = e2e.image(f"{spec.name}/last")
        r, st = e2e.engine.dump(job.init_pid, last, extra=("--parent", str(pre)))
        assert r.rc == 0 and st["incremental"], (r.stderr, st)
        assert st["memory_bytes"] < 0.5 * ps["memory_bytes"], (st, ps)
        job.paused()
        res = e2e.restore_foreground(job, last)
        assert res.rc == ref.status, res.stderr
        job.assert_matches(ref, " (restored on a pre-dump)")
    finally:
        kill_job_processes(job.marker)


# Two processes sharing an anonymous MAP_SHARED mapping (each rewrites its own half),
# each with a private buffer and three threads that rewrite buffers of their own in
# lockstep with the main thread (a barrier per step), so that the output is the same
# on every run. The child reports into child.txt, the parent on stdout; at the end the
# parent prints the digest of the whole shared mapping.
MP_PY = r'''
import hashlib, mmap, os, random, sys, threading, time
steps = int(sys.argv[1])
S = 8 << 20
shared = mmap.mmap(-1, S)
shared[:] = random.Random(11).randbytes(S)
pid = os.fork()
me = 0 if pid == 0 else 1
rnd = random.Random(20 + me)
private = bytearray(rnd.randbytes(16 << 20))
bufs = [bytearray(random.Random(30 + 3 * me + k).randbytes(4 << 20)) for k in range(3)]
digests = [""] * 3
start, done = threading.Barrier(4), threading.Barrier(4)
def worker(k):
    tr = random.Random(40 + 3 * me + k)
    for i in range(steps):
        start.wait()
        for _ in range(8):
            off = tr.randrange(len(bufs[k]) - 64)
            bufs[k][off:off + 64] = tr.randbytes(64)
        digests[k] = hashlib.sha256(bufs[k]).hexdigest()[:10]
        done.wait()
threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
for t in threads:
    t.start()
out = open("child.txt", "w") if me == 0 else sys.stdout
half = S // 2
for i in range(steps):
    start.wait()
    for _ in range(8):
        off = me * half + rnd.randrange(half - 64)
        shared[off:off + 64] = rnd.randbytes(64)
        poff = rnd.randrange(len(private) - 64)
        private[poff:poff + 64] = rnd.randbytes(64)
    done.wait()
    print(i, hashlib.sha256(shared[me * half:(me + 1) * half]).hexdigest()[:10],
          hashlib.sha256(private).hexdigest()[:10], *digests, file=out, flush=True)
    time.sleep(0.04)
for t in threads:
    t.join()
if me == 0:
    out.close()
    os._exit(0)
os.waitpid(pid, 0)
print("shared", hashlib.sha256(shared).hexdigest(), flush=True)
print("done", steps, flush=True)
'''


@pytest.mark.parametrize("method", ["kernel", "hash"])
def test_incremental_chain_two_processes_shared_memory_threads(e2e: E2E, method: str):
    """The acceptance's multi-process job with shared anonymous memory and its
    multi-threaded job, in one: a full image and 9 incrementals left running, a 10th
    that kills the job; the restore from the 11-link chain ends as the uninterrupted
    run did (both processes' reports, the shared mapping's final digest). The shared
    mapping's pages are compared by hash whatever the method (the kernel's written
    bits are per process): each incremental stores only those written since."""
    spec = JobSpec(name=f"incr_mp_{method}", argv=["/usr/bin/python3", "{work}/job.py", str(STEPS)],
                   setup=lambda work: (work / "job.py").write_text(MP_PY),
                   inputs=("job.py",), progress=("lines", "stdout"), timeout=180)
    ref = e2e.reference(spec)
    assert ref.status == 0 and ref.snap["stdout"].text.endswith(f"done {STEPS}\n"), ref.snap["stdout"].text[-300:]
    job = e2e.job(spec)
    job.start_detached()
    try:
        images = _chain(e2e, job, ref, spec.name, 10, method=method, shared=True)
        m = manifest(images[-1])
        assert len([p for p in m["processes"] if not p.get("zombie")]) >= 3, "init and both processes"
        job.wait_progress(ref, 0.8)
        last = e2e.image(f"{spec.name}/last")
        r, st = e2e.engine.dump(job.init_pid, last,
                                extra=("--parent", str(images[-1]), "--track-method", method))
        assert r.rc == 0 and st["incremental"], (r.stderr, st)
        assert st["threads"] >= 8, st
        job.paused()
        res = e2e.restore_foreground(job, last)
        assert res.rc == ref.status, res.stderr
        job.assert_matches(ref, " (two processes, shared memory and threads, from an 11-link chain)")
    finally:
        kill_job_processes(job.marker)


def test_incremental_chain_by_page_hashes(e2e: E2E):
    """The fallback where the kernel cannot report written pages (--track-method hash,
    the default on a kernel without UFFD_FEATURE_WP_ASYNC): each dump hashes every page
    and stores only those whose hash differs from the parent's at the same address. A
    chain of 6 links while the job grows its heap, maps, unmaps and moves memory, then
    a dump that kills it: the restore ends as the uninterrupted run did. A hash dump
    on a parent made with kernel tracking is full, and says why."""
    spec = _spec("incr_hash")
    ref = e2e.reference(spec)
    job = e2e.job(spec)
    job.start_detached()
    try:
        images = _chain(e2e, job, ref, spec.name, 6, mappings=True, method="hash")
        # Every private page's hash is kept: 16 bytes a page.
        m = manifest(images[-1])
        hashed = sum(c for p in m["processes"] for v in p["vmas"] if v.get("track") == "hash"
                     for key in ("runs", "parent_runs") for _, c in page_runs(v.get(key, [])))
        sec = {s["name"]: s["offset"] for s in m["sections"]}
        assert m["pages_logical_bytes"] - sec["page_hashes"] == 16 * hashed > 0, (sec, hashed)
        # A kernel-tracked image gives a hash dump nothing to compare with.
        kern = e2e.image(f"{spec.name}/kernel")
        r, st = e2e.engine.dump(job.init_pid, kern, leave_running=True,
                                extra=("--track-mem", "--track-method", "kernel"))
        assert r.rc == 0, r.stderr
        full = e2e.image(f"{spec.name}/full")
        r, st = e2e.engine.dump(job.init_pid, full, leave_running=True,
                                extra=("--parent", str(kern), "--track-method", "hash"))
        assert r.rc == 0 and not st["incremental"], (r.stderr, st)
        assert "no page hashes" in st["full_because"], st
        # Hashes that cannot be read (a bad chunk in the parent's page_hashes section,
        # the stream's last) make a full image, not a failed dump.
        damaged = e2e.image(f"{spec.name}/damaged")
        shutil.copytree(images[-1], damaged)
        pages = bytearray((damaged / "pages.img").read_bytes())
        pages[-1] ^= 0xFF
        (damaged / "pages.img").write_bytes(bytes(pages))
        r, st = e2e.engine.dump(job.init_pid, e2e.image(f"{spec.name}/on-damaged"),
                                leave_running=True,
                                extra=("--parent", str(damaged), "--track-method", "hash"))
        assert r.rc == 0 and not st["incremental"], (r.stderr, st)
        assert "page hashes cannot be read" in st["full_because"] and "checksum" in \
            st["full_because"], st
        job.wait_progress(ref, 0.8)
        last = e2e.image(f"{spec.name}/last")
        r, st = e2e.engine.dump(job.init_pid, last,
                                extra=("--parent", str(images[-1]), "--track-method", "hash"))
        assert r.rc == 0 and st["incremental"] and st["track_method"] == "hash", (r.stderr, st)
        sh = e2e.engine.call(["show", "--dir", str(last)], 60)
        assert sh.rc == 0 and "pages; hash" in sh.stdout, (sh.stderr, sh.stdout[:2000])
        job.paused()
        res = e2e.restore_foreground(job, last)
        assert res.rc == ref.status, res.stderr
        job.assert_matches(ref, " (restored from a 7-link chain of page hashes)")
    finally:
        kill_job_processes(job.marker)


def test_pre_dump_then_dump_by_page_hashes(e2e: E2E):
    """pre-dump with --track-method hash leaves the job untouched (no write
    protection): the dump on it compares hashes and restores byte-identical."""
    spec = _spec("incr_predump_hash")
    ref = e2e.reference(spec)
    job = e2e.job(spec)
    job.start_detached()
    try:
        job.wait_progress(ref, 0.3)
        pre = e2e.image(f"{spec.name}/pre")
        ps = _pre_dump(e2e, job, pre, "--track-method", "hash")
        # Nothing of the job was registered with a userfaultfd.
        pids = [str(job.init_pid)] + \
            Path(f"/proc/{job.init_pid}/task/{job.init_pid}/children").read_text().split()
        assert len(pids) >= 2, pids
        for pid in pids:
            flags = [ln for ln in Path(f"/proc/{pid}/smaps").read_text().splitlines()
                     if ln.startswith("VmFlags:")]
            assert not any(" uw" in f for f in flags), (pid, flags)
        job.wait_progress(ref, 0.5)
        last = e2e.image(f"{spec.name}/last")
        r, st = e2e.engine.dump(job.init_pid, last,
                                extra=("--parent", str(pre), "--track-method", "hash"))
        assert r.rc == 0 and st["incremental"], (r.stderr, st)
        assert st["memory_bytes"] < 0.5 * ps["memory_bytes"], (st, ps)
        job.paused()
        res = e2e.restore_foreground(job, last)
        assert res.rc == ref.status, res.stderr
        job.assert_matches(ref, " (restored on a pre-dump by page hashes)")
    finally:
        kill_job_processes(job.marker)


def test_pre_dump_then_dump_shared_memory(e2e: E2E):
    """A pre-dump copies the shared anonymous mapping too, while the job runs (with the
    hash of each page); the dump on it stores only the shared pages written since, and
    the restore takes the others from the pre-dump: both processes end as the
    uninterrupted run did."""
    spec = JobSpec(name="incr_predump_shm",
                   argv=["/usr/bin/python3", "{work}/job.py", str(STEPS)],
                   setup=lambda work: (work / "job.py").write_text(MP_PY),
                   inputs=("job.py",), progress=("lines", "stdout"), timeout=180)
    ref = e2e.reference(spec)
    job = e2e.job(spec)
    job.start_detached()
    try:
        job.wait_progress(ref, 0.3)
        pre = e2e.image(f"{spec.name}/pre")
        _pre_dump(e2e, job, pre)
        objs = manifest(pre)["shm"]
        assert len(objs) == 1 and objs[0]["track"] == "hash", objs
        assert sum(c for _, c in page_runs(objs[0]["runs"])) == 2048, objs
        job.wait_progress(ref, 0.5)
        last = e2e.image(f"{spec.name}/last")
        r, st = e2e.engine.dump(job.init_pid, last, extra=("--parent", str(pre)))
        assert r.rc == 0 and st["incremental"], (r.stderr, st)
        o = manifest(last)["shm"][0]
        own = sum(c for _, c in page_runs(o.get("runs", [])))
        below = sum(c for _, c in page_runs(o.get("parent_runs", [])))
        assert own + below == 2048 and below > 1000, (own, below)
        job.paused()
        res = e2e.restore_foreground(job, last)
        assert res.rc == ref.status, res.stderr
        job.assert_matches(ref, " (shared memory from a pre-dump)")
    finally:
        kill_job_processes(job.marker)


# A job holding a 4 MiB file it unlinked (deleted while open), rewriting a few bytes
# of it and of a buffer each step.
DELETED_PY = r'''
import hashlib, os, random, sys, time
steps = int(sys.argv[1])
rnd = random.Random(5)
fd = os.open("scratch.bin", os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o600)
os.unlink("scratch.bin")
S = 4 << 20
os.write(fd, rnd.randbytes(S))
buf = bytearray(rnd.randbytes(8 << 20))
for i in range(steps):
    for _ in range(4):
        os.pwrite(fd, rnd.randbytes(64), rnd.randrange(S - 64))
        off = rnd.randrange(len(buf) - 64)
        buf[off:off + 64] = rnd.randbytes(64)
    print(i, hashlib.sha256(os.pread(fd, S, 0)).hexdigest()[:16],
          hashlib.sha256(buf).hexdigest()[:16], flush=True)
    time.sleep(0.04)
print("done", steps, flush=True)
'''


def test_incremental_chain_deleted_file(e2e: E2E):
    """A file deleted while open is compared by hash in every dump that tracks (the
    kernel's written bits see no write(2)): each incremental stores only the pages of
    it written since its parent, and the restore from a 4-link chain rebuilds the
    whole file: the job ends as the uninterrupted run did."""
    spec = JobSpec(name="incr_deleted", argv=["/usr/bin/python3", "{work}/job.py", str(STEPS)],
                   setup=lambda work: (work / "job.py").write_text(DELETED_PY),
                   inputs=("job.py",), progress=("lines", "stdout"), timeout=180)
    ref = e2e.reference(spec)
    job = e2e.job(spec)
    job.start_detached()
    try:
        images = []
        for i in range(3):
            job.wait_progress(ref, 0.2 + 0.2 * i)
            image = e2e.image(f"{spec.name}/link-{i}")
            extra = ("--track-mem",) + (("--parent", str(images[-1])) if images else ())
            r, st = e2e.engine.dump(job.init_pid, image, leave_running=True, extra=extra)
            assert r.rc == 0 and st["incremental"] == (i > 0), (r.stderr, st)
            files = manifest(image)["deleted_files"]
            assert len(files) == 1 and files[0]["track"] == "hash", files
            own = sum(c for _, c in page_runs(files[0].get("runs", [])))
            below = sum(c for _, c in page_runs(files[0].get("parent_runs", [])))
            # A few dozen of its 1024 pages were written since the parent.
            assert (own, below) == (1024, 0) if i == 0 else (below > 900 and own + below == 1024), \
                (i, own, below)
            images.append(image)
        job.wait_progress(ref, 0.8)
        last = e2e.image(f"{spec.name}/last")
        r, st = e2e.engine.dump(job.init_pid, last, extra=("--parent", str(images[-1])))
        assert r.rc == 0 and st["incremental"], (r.stderr, st)
        job.paused()
        res = e2e.restore_foreground(job, last)
        assert res.rc == ref.status, res.stderr
        job.assert_matches(ref, " (a deleted file from a 4-link chain)")
    finally:
        kill_job_processes(job.marker)


# A job holding a 4 MiB SysV segment (removed with IPC_RMID while attached, as programs
# do to have it go with them) and a 4 MiB file it unlinked, rewriting a few bytes of
# each every step; at step 60 it makes a second, 64 KiB segment it fills once. Each
# step prints digests of all of it, so a page the restore got wrong shows.
OBJECTS_PY = r'''
import ctypes, hashlib, os, random, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
def segment(size, rnd):
    shm = libc.shmget(0, size, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
    addr = libc.shmat(shm, None, 0) if shm >= 0 else None
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "shmget/shmat")
    ctypes.memmove(addr, rnd.randbytes(size), size)
    return shm, addr
steps = int(sys.argv[1])
rnd = random.Random(13)
S = 4 << 20
shm, seg = segment(S, rnd)
if libc.shmctl(shm, 0, None) < 0:  # IPC_RMID: gone once detached
    raise OSError(ctypes.get_errno(), "shmctl")
fd = os.open("scratch.bin", os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o600)
os.unlink("scratch.bin")
os.write(fd, rnd.randbytes(S))
small = None
for i in range(steps):
    for _ in range(4):
        off = rnd.randrange(S - 64)
        ctypes.memmove(seg + off, rnd.randbytes(64), 64)
        os.pwrite(fd, rnd.randbytes(64), rnd.randrange(S - 64))
    if i == 60:
        small = segment(64 << 10, rnd)[1]
    print(i, shm, hashlib.sha256(ctypes.string_at(seg, S)).hexdigest()[:16],
          hashlib.sha256(os.pread(fd, S, 0)).hexdigest()[:16],
          small and hashlib.sha256(ctypes.string_at(small, 64 << 10)).hexdigest()[:16],
          flush=True)
    time.sleep(0.04)
print("done", steps, flush=True)
'''


def _objects_spec(name: str) -> JobSpec:
    return JobSpec(name=name, argv=["/usr/bin/python3", "{work}/job.py", str(STEPS)],
                   setup=lambda work: (work / "job.py").write_text(OBJECTS_PY),
                   inputs=("job.py",), progress=("lines", "stdout"), timeout=180)


def _own_below(obj: dict) -> tuple[int, int]:
    """Pages an object's entry stores itself and takes from the parent chain."""
    return (sum(c for _, c in page_runs(obj.get("runs", []))),
            sum(c for _, c in page_runs(obj.get("parent_runs", []))))


def test_incremental_chain_sysv_shm(e2e: E2E):
    """SysV segments are compared by hash in every dump that tracks (the kernel's
    written bits are per process): each incremental takes the pages of the 4 MiB
    segment not rewritten since its parent from the chain, a segment the parent did not
    have is stored whole, and the restore from a 4-link chain refills both before the
    job attaches them: it ends as the uninterrupted run did."""
    spec = _objects_spec("incr_sysv")
    ref = e2e.reference(spec)
    assert ref.status == 0 and ref.snap["stdout"].text.endswith(f"done {STEPS}\n"), \
        ref.snap["stdout"].text[-300:]
    job = e2e.job(spec)
    job.start_detached()
    try:
        images, small_seen = [], False
        for i in range(3):
            # Steps ~28, ~56, ~84: the small segment (step 60) is new in the second or third.
            job.wait_progress(ref, 0.2 + 0.2 * i)
            image = e2e.image(f"{spec.name}/link-{i}")
            extra = ("--track-mem",) + (("--parent", str(images[-1])) if images else ())
            r, st = e2e.engine.dump(job.init_pid, image, leave_running=True, extra=extra)
            assert r.rc == 0 and st["incremental"] == (i > 0), (r.stderr, st)
            segs = {s["size"]: s for s in manifest(image)["sysv_shm"]}
            big = segs[4 << 20]
            assert big["removed"] and big["track"] == "hash", big
            own, below = _own_below(big)
            # A few dozen of its 1024 pages were rewritten since the parent.
            assert (own, below) == (1024, 0) if i == 0 else (below > 900 and own + below == 1024), \
                (i, own, below)
            # The small segment: whole where it is new, then from the parent.
            if 64 << 10 in segs:
                assert _own_below(segs[64 << 10]) == ((0, 16) if small_seen else (16, 0)), \
                    (i, segs[64 << 10])
                small_seen = True
            images.append(image)
        assert small_seen, "the small segment is in no link"
        job.wait_progress(ref, 0.8)
        last = e2e.image(f"{spec.name}/last")
        r, st = e2e.engine.dump(job.init_pid, last, extra=("--parent", str(images[-1])))
        assert r.rc == 0 and st["incremental"], (r.stderr, st)
        segs = {s["size"]: s for s in manifest(last)["sysv_shm"]}
        own, below = _own_below(segs[4 << 20])
        assert below > 900 and own + below == 1024, (own, below)
        assert _own_below(segs[64 << 10]) == (0, 16), segs[64 << 10]
        # show counts the shared objects' pages too: at least the two segments' pages
        # taken from below, next to the deleted file's.
        sh = e2e.engine.call(["show", "--dir", str(last)], 60)
        assert sh.rc == 0, sh.stderr
        line = next(ln for ln in sh.stdout.splitlines() if ln.startswith(f"    {last} "))
        m = re.search(r"shared objects (\d+) / (\d+) pages", line)
        assert m and int(m[2]) >= below + 16 and int(m[1]) + int(m[2]) >= 2 * 1024 + 16, line
        job.paused()
        res = e2e.restore_foreground(job, last)
        assert res.rc == ref.status, res.stderr
        job.assert_matches(ref, " (SysV segments from a 4-link chain)")
    finally:
        kill_job_processes(job.marker)


def test_pre_dump_then_dump_deleted_file_and_sysv_shm(e2e: E2E):
    """A pre-dump copies the deleted file and the SysV segment too (opened while the job
    is frozen, read and hashed while it runs): the dump on it stores only their pages
    rewritten since, the restore takes the others from the pre-dump, and the job ends
    as the uninterrupted run did."""
    spec = _objects_spec("incr_predump_objects")
    ref = e2e.reference(spec)
    job = e2e.job(spec)
    job.start_detached()
    try:
        job.wait_progress(ref, 0.3)
        pre = e2e.image(f"{spec.name}/pre")
        _pre_dump(e2e, job, pre)
        pm = manifest(pre)
        files = pm["deleted_files"]
        assert len(files) == 1 and files[0]["track"] == "hash", files
        assert _own_below(files[0]) == (1024, 0), files
        big = [s for s in pm["sysv_shm"] if s["size"] == 4 << 20]
        assert len(big) == 1 and big[0]["track"] == "hash", pm["sysv_shm"]
        assert _own_below(big[0]) == (1024, 0), big
        job.wait_progress(ref, 0.5)
        last = e2e.image(f"{spec.name}/last")
        r, st = e2e.engine.dump(job.init_pid, last, extra=("--parent", str(pre)))
        assert r.rc == 0 and st["incremental"], (r.stderr, st)
        m = manifest(last)
        for what, obj in (("deleted file", m["deleted_files"][0]),
                          ("segment", {s["size"]: s for s in m["sysv_shm"]}[4 << 20])):
            own, below = _own_below(obj)
            assert below > 900 and own + below == 1024, (what, own, below)
        job.paused()
        res = e2e.restore_foreground(job, last)
        assert res.rc == ref.status, res.stderr
        job.assert_matches(ref, " (a deleted file and a SysV segment from a pre-dump)")
    finally:
        kill_job_processes(job.marker)
