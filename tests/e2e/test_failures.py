"""Error paths: each must fail with one clear line on stderr, leave a running job
running (and finishing with the right output), and a refused restore must create no
process and touch none of the job's files."""
from __future__ import annotations

import ctypes
import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import specs
from ckpt_e2e import (E2E, Job, alive, assert_running_free, encode_page_runs, job_processes,
                      page_runs, single_error_line, watch)


def scratch(e2e: E2E, name: str) -> Path:
    d = e2e.images_dir / "scratch" / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d


def free_pid() -> int:
    pid = int(Path("/proc/sys/kernel/pid_max").read_text()) - 7
    while Path(f"/proc/{pid}").exists():
        pid -= 1
    return pid


def no_image(image: Path):
    assert not image.exists(), f"a failed dump left {image}"
    assert not Path(str(image) + ".tmp").exists(), f"a failed dump left {image}.tmp"


# --------------------------------------------------------------------------- CLI misuse

def test_check(e2e: E2E):
    r = e2e.engine.call(["check"], 60)
    assert r.rc == 0, r.stdout + r.stderr


def test_dump_without_pid(e2e: E2E):
    image = scratch(e2e, "nopid") / "img"
    line = single_error_line(e2e.engine.call(["dump", "--dir", str(image)], 30))
    assert "--pid" in line
    no_image(image)


def test_dump_nonexistent_pid(e2e: E2E):
    pid = free_pid()
    image = scratch(e2e, "nonexistent") / "img"
    line = single_error_line(e2e.engine.call(["dump", "--pid", str(pid), "--dir", str(image)], 30))
    assert re.search(rf"\b{pid}\b", line), line
    no_image(image)


def test_dump_process_not_started_by_run(e2e: E2E):
    image = scratch(e2e, "notajob") / "img"
    sleeper = subprocess.Popen(["/bin/sleep", "120"])
    try:
        time.sleep(0.1)
        line = single_error_line(
            e2e.engine.call(["dump", "--pid", str(sleeper.pid), "--dir", str(image)], 30))
        assert re.search(rf"\b{sleeper.pid}\b", line), line
        assert sleeper.poll() is None, "dump killed a process that is not a job"
        assert_running_free([sleeper.pid])
        no_image(image)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_restore_not_an_image(e2e: E2E):
    d = scratch(e2e, "notimage")
    (d / "readme.txt").write_text("not a checkpoint\n")
    line = single_error_line(e2e.engine.call(["restore", "--dir", str(d)], 30))
    assert str(d) in line, line


def test_restore_missing_dir(e2e: E2E):
    d = scratch(e2e, "missing") / "nothing-here"
    line = single_error_line(e2e.engine.call(["restore", "--dir", str(d)], 30))
    assert str(d) in line, line


# --------------------------------------------------------------------------- failed dumps

def _parent_is_file(d: Path) -> Path:
    (d / "file").write_text("x")
    return d / "file" / "img"


def _parent_missing(d: Path) -> Path:
    return d / "missing" / "img"


def _dir_exists(d: Path) -> Path:
    (d / "img").mkdir()
    (d / "img" / "sentinel").write_text("keep me\n")
    return d / "img"


BAD_LOCATIONS = {"parent_is_file": _parent_is_file, "parent_missing": _parent_missing,
                 "dir_exists": _dir_exists}


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD_LOCATIONS)
def test_dump_to_bad_location_leaves_job_running(e2e: E2E, case):
    spec = specs.python_job("python_bad_location", steps=100)
    ref = e2e.reference(spec)
    job = e2e.job(spec)
    job.start_detached()
    job.wait_progress(ref, 0.3)
    image = BAD_LOCATIONS[case](scratch(e2e, f"bad-{case}"))
    r, _ = e2e.engine.dump(job.init_pid, image)
    line = single_error_line(r)
    assert str(image) in line or str(image.parent) in line, line
    if case == "dir_exists":
        assert sorted(os.listdir(image)) == ["sentinel"], "dump touched an existing directory"
    else:
        no_image(image)
    assert_running_free([job.init_pid, *job.job_pids()])
    assert job.wait_end() == ref.status
    job.assert_matches(ref, f" after a failed dump ({case})")


@pytest.mark.slow
def test_dumper_killed_midway_leaves_job_running(e2e: E2E):
    """SIGKILL the dumper while it writes 1 GiB: the job must go on, unharmed."""
    spec = specs.memhog_job(e2e, "memhog_1g", 1024, "random")
    ref = e2e.reference(spec)
    job = e2e.job(spec)
    job.start_detached()
    job.wait_progress(ref, 0.5)  # "ready": memory filled
    image = e2e.image("killed/memhog")
    tmp = Path(str(image) + ".tmp")
    dumper = subprocess.Popen([str(e2e.engine.bin), "dump", "--pid", str(job.init_pid), "--dir",
                               str(image)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while dumper.poll() is None and time.monotonic() < deadline:
            written = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file()) if tmp.exists() else 0
            if written >= 64 << 20:
                break
            time.sleep(0.005)
        assert dumper.poll() is None, (
            f"the dump ended (exit {dumper.returncode}) before it could be killed: "
            f"{dumper.communicate()[1]}")
        dumper.kill()
    finally:
        if dumper.poll() is None:
            dumper.kill()
        dumper.wait()
    assert not image.exists(), "a killed dump left a complete-looking image"
    time.sleep(0.5)
    assert_running_free([job.init_pid, *job.job_pids()])
    (job.work / "go").touch()
    assert job.wait_end(120) == ref.status == 0
    job.assert_matches(ref, " after its dumper was killed")


# --------------------------------------------------------------------------- dumps that succeed

@pytest.mark.slow
def test_dump_leave_running_then_restore(e2e: E2E):
    """--leave-running: the job finishes normally; the image, restored afterwards, redoes
    the rest of the run over the same files and ends the same way."""
    spec = specs.threads_job(e2e, name="ckpt_threads_leave", rounds=120, exit_code=3)
    ref = e2e.reference(spec)
    job = e2e.job(spec)
    job.start_detached()
    job.wait_progress(ref, 0.4)
    image = e2e.image("leave/threads")
    stats = e2e.dump_ok(job, image, leave_running=True)
    assert stats["processes"] == 2 and stats["threads"] == 7, stats
    assert_running_free([job.init_pid, *job.job_pids()])
    assert job.wait_end() == ref.status
    job.assert_matches(ref, " left running after a dump")
    r = e2e.restore_foreground(job, image)
    assert r.rc == ref.status, r.stderr
    job.assert_matches(ref, " restored after it had finished")


@pytest.mark.slow
def test_image_layout_and_show(e2e: E2E):
    spec = specs.threads_job(e2e, name="ckpt_threads_show", rounds=80, exit_code=0)
    ref = e2e.reference(spec)
    job = e2e.job(spec)
    job.start_detached()
    job.wait_progress(ref, 0.5)
    image = e2e.image("layout/threads")
    stats = e2e.dump_ok(job, image)
    assert stats["memory_bytes"] > 0 and stats["image_bytes"] > 0, stats
    assert stats["freeze_ms"] <= stats["dump_ms"], stats
    # An image holds the job's memory: only root may read it.
    assert image.stat().st_mode & 0o777 == 0o700
    for f in image.rglob("*"):
        assert f.stat().st_mode & 0o777 == (0o700 if f.is_dir() else 0o600), f
    r = e2e.engine.call(["show", "--dir", str(image)], 60)
    assert r.rc == 0, r.stderr
    assert "ckpt_threads" in r.stdout
    r = e2e.engine.call(["show", "--dir", str(image), "--json"], 60)
    assert r.rc == 0, r.stderr
    assert isinstance(json.loads(r.stdout), dict)
    r = e2e.restore_foreground(job, image)
    assert r.rc == ref.status, r.stderr
    job.assert_matches(ref)


# --------------------------------------------------------------------------- refused restores

def _flip_bit(image: Path):
    p = image / "pages.img"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x10
    p.write_bytes(data)


def _truncate(image: Path):
    p = image / "pages.img"
    os.truncate(p, p.stat().st_size // 2)


def _remove_pages(image: Path):
    (image / "pages.img").unlink()


def _edit_manifest(image: Path):
    """Changes one digit of a number: still valid JSON, but not what was dumped. The
    manifest's HMAC (root-only image key) is checked before anything else, so that is
    what refuses it, whether or not manifest.xxh3 is rewritten to match (unit test
    ImageHmac.ManifestEditedWithMatchingChecksumIsRefused)."""
    p = image / "manifest.json"
    text = p.read_text()
    m = re.search(r'"(?:rip|regs|start|pos|pid)"\s*:\s*\[?\s*(\d+)', text) or re.search(r":\s*(\d+)", text)
    i = m.end(1) - 1
    text = text[:i] + str((int(text[i]) + 1) % 10) + text[i + 1:]
    json.loads(text)
    p.write_text(text)


CORRUPTIONS = {"pages_bit_flip": (_flip_bit, "pages.img"), "pages_truncated": (_truncate, "pages.img"),
               "pages_missing": (_remove_pages, "pages.img"), "manifest_edited": (_edit_manifest, "HMAC mismatch")}


@pytest.fixture(scope="module")
def dumped_memhog(e2e: E2E):
    spec = specs.memhog_job(e2e, "memhog_corrupt", 64, "random")
    ref = e2e.reference(spec)
    job = e2e.job(spec)
    job.start_detached()
    job.wait_progress(ref, 0.5)  # "ready"
    image = e2e.image("corrupt/original")
    e2e.dump_ok(job, image)
    return ref, job, image


def assert_refused(e2e: E2E, job: Job, image: Path) -> str:
    before = job.snapshot()
    r, seen = watch([str(e2e.engine.bin), "restore", "--dir", str(image)], job.marker, 120)
    line = single_error_line(r)
    assert not seen, f"a refused restore created processes: {seen}"
    assert not job_processes(job.marker)
    assert job.snapshot() == before, "a refused restore changed the job's files"
    return line


@pytest.mark.slow
@pytest.mark.parametrize("case", CORRUPTIONS)
def test_restore_refuses_corrupt_image(e2e: E2E, dumped_memhog, case):
    ref, job, original = dumped_memhog
    image = e2e.image(f"corrupt/{case}")
    shutil.copytree(original, image)
    corrupt, names = CORRUPTIONS[case]
    corrupt(image)
    line = assert_refused(e2e, job, image)
    assert names in line, line


def _resign(image: Path):
    """Makes manifest.xxh3 and manifest.hmac match manifest.json again, as a buggy dumper
    holding the image key would: only the manifest's own checks can refuse it then."""
    text = (image / "manifest.json").read_bytes()
    key = Path(os.environ.get("FSCHED_IMAGE_KEY", "/etc/fsched/image.key")).read_bytes()
    (image / "manifest.hmac").write_text(hmac.new(key, text, hashlib.sha256).hexdigest() + "\n")
    lib = ctypes.CDLL("libxxhash.so.0")  # the library the engine uses
    lib.XXH3_64bits.restype = ctypes.c_uint64
    lib.XXH3_64bits.argtypes = (ctypes.c_char_p, ctypes.c_size_t)
    (image / "manifest.xxh3").write_text(f"{lib.XXH3_64bits(text, len(text)):016x}\n")


SEMANTIC_EDITS = {
    # A page run past the end of its mapping: the restore would write outside it.
    "run_past_mapping": lambda m: (lambda v: v.update(runs=encode_page_runs(page_runs(v["runs"]) + [[1 << 40, 1]])))(next(v for p in m["processes"] for v in p["vmas"] if page_runs(v["runs"]))),
    # A child before its parent.
    "parent_after_child": lambda m: m["processes"][1].update(ppid=99999) if len(m["processes"]) > 1 else m["processes"][0].update(pid=7),
    # Page data the stream does not hold: the restore would wait for it or read another part's.
    "stream_longer_than_parts": lambda m: m.update(pages_logical_bytes=m["pages_logical_bytes"] + 4096),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", SEMANTIC_EDITS)
def test_restore_refuses_inconsistent_manifest_before_any_process(e2e: E2E, dumped_memhog, case):
    """Every semantic check of a manifest runs before the first process is created
    (issue 10): a signed manifest with an impossible value is refused with one line."""
    ref, job, original = dumped_memhog
    image = e2e.image(f"semantic/{case}")
    shutil.copytree(original, image)
    m = json.loads((image / "manifest.json").read_text())
    SEMANTIC_EDITS[case](m)
    text = json.dumps(m, indent=1) + "\n"
    (image / "manifest.json").write_text(text)
    r = e2e.engine.call(["show", "--dir", str(image)], 60)
    assert r.rc != 0  # the checksum no longer matches
    _resign(image)
    line = assert_refused(e2e, job, image)
    assert "image:" in line or "manifest" in line, line


@pytest.mark.slow
def test_restore_of_intact_image_after_refusals(e2e: E2E, dumped_memhog):
    ref, job, original = dumped_memhog
    (job.work / "go").touch()  # the restored memhog verifies its memory and ends
    r = e2e.restore_foreground(job, original)
    assert r.rc == ref.status, r.stderr
    job.assert_matches(ref)


@pytest.mark.slow
@pytest.mark.parametrize("what", ["executable", "library"])
def test_restore_refused_when_mapped_file_changed(e2e: E2E, what):
    """memhog run from a copy of its executable, or with a copy of libc through
    LD_LIBRARY_PATH; the copy is changed after the dump."""
    if what == "executable":
        spec = specs.memhog_job(e2e, "memhog_copy", 64, exe="memhog_copy")
        rel = "memhog_copy"
    else:
        spec = specs.memhog_job(e2e, "memhog_libc_copy", 64)
        spec.env = {"LD_LIBRARY_PATH": "{work}/lib"}
        spec.setup = lambda work: ((work / "lib").mkdir(),
                                   shutil.copy2(Path("/lib/x86_64-linux-gnu/libc.so.6").resolve(),
                                                work / "lib" / "libc.so.6"))
        rel = "lib/libc.so.6"
    job = e2e.job(spec)
    changed = job.work / rel
    job.start_detached()
    deadline = time.monotonic() + 60
    while "ready" not in job.read("stdout"):
        assert time.monotonic() < deadline and alive(job.init_pid), job.read("stderr")
        time.sleep(0.02)
    pids = job.job_pids()
    assert pids and any(str(changed) in Path(f"/proc/{p}/maps").read_text() for p in pids), \
        f"{changed} is not mapped by the job"
    image = e2e.image(f"changed/{what}")
    e2e.dump_ok(job, image)
    if what == "executable":
        st = changed.stat()
        os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))  # touch
    else:
        with open(changed, "ab") as f:
            f.write(b"\0")
    line = assert_refused(e2e, job, image)
    assert str(changed) in line, line
