"""Images outlive an engine upgrade (issue 11): an image written by an older build of
fsched-ckpt that writes the current image format restores with this build, whatever
engine version it names; an image of another format is refused, naming both versions.

The older build is made here from a pinned commit (git archive of it, cmake + ninja of
fsched-ckpt and fsched-init only, with ccache when there is one) and cached under the
e2e data directory, keyed by the commit, so only the first session pays for it (470 s
measured on the project's 2-core VM while another build ran; the whole file then takes
about 8 minutes, and about 20 s once the build is cached). A commit that cannot be found is a
failure, never a skip: the test exists to show exactly that compatibility.
"""
from __future__ import annotations

import ctypes
import fcntl
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import specs
from ckpt_e2e import E2E, Engine, kill_job_processes, restore_stats

# The oldest commit writing image format 3 (sections recorded in the manifest): the first
# build whose images this build must keep restoring. Update it only together with
# kOldestImageFormat (src/ckpt/image.h), to the first commit of that format.
OLD_COMMIT = "c365215581215d42e8b269a8966cd395f2d02f66"
OLD_FORMAT = 3
FORMAT = 12  # what this build writes (kImageFormatVersion)
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _git(*args: str, cwd: Path = REPO, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def old_engine(e2e: E2E) -> Engine:
    """fsched-ckpt and fsched-init built from OLD_COMMIT (cached across sessions)."""
    cache = e2e.data_dir / f"engine-{OLD_COMMIT}"
    build = cache / "build"
    done = cache / "complete"
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache.parent / f"engine-{OLD_COMMIT}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one session builds, the others wait for it
        if not done.exists():
            if _git("cat-file", "-e", f"{OLD_COMMIT}^{{commit}}").returncode != 0:
                pytest.fail(f"commit {OLD_COMMIT} (the pinned older engine) is not in the "
                            f"repository at {REPO}: fetch it, or update OLD_COMMIT in "
                            f"{Path(__file__).name} together with the image format",
                            pytrace=False)
            shutil.rmtree(cache, ignore_errors=True)
            src = cache / "src"
            src.mkdir(parents=True)
            archive = _git("archive", "--format=tar", OLD_COMMIT)
            assert archive.returncode == 0, f"git archive {OLD_COMMIT}: {archive.stderr.decode()}"
            subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True,
                           timeout=300)
            cmake = ["cmake", "-G", "Ninja", "-S", str(src), "-B", str(build),
                     "-DCMAKE_BUILD_TYPE=RelWithDebInfo", "-DBUILD_TESTING=OFF"]
            env = dict(os.environ)
            if shutil.which("ccache"):
                cmake += ["-DCMAKE_CXX_COMPILER_LAUNCHER=ccache",
                          "-DCMAKE_C_COMPILER_LAUNCHER=ccache"]
                env.setdefault("CCACHE_BASEDIR", str(src))
            t0 = time.monotonic()
            for cmd in (cmake, ["ninja", "-C", str(build), "fsched-ckpt", "fsched-init"]):
                cp = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env)
                assert cp.returncode == 0, (f"building the older engine ({OLD_COMMIT}) failed: "
                                            f"{' '.join(cmd)}:\n{cp.stdout[-3000:]}{cp.stderr[-3000:]}")
            print(f"built the engine of {OLD_COMMIT} in {time.monotonic() - t0:.0f} s")
            done.write_text(f"{time.monotonic() - t0:.0f} s\n")
    engine = Engine(build)
    for exe in (engine.bin, build / "src" / "tools" / "fsched-init"):
        assert os.access(exe, os.X_OK), f"the older build has no {exe}"
    return engine


@pytest.fixture(scope="module")
def test_key(e2e: E2E) -> Path:
    """An image key of this test's own (root, 0600), passed with --key to both engines."""
    d = e2e.jobs_dir.parent / "compat-key"
    d.mkdir(mode=0o700, exist_ok=True)
    key = d / "image.key"
    if not key.exists():
        key.write_bytes(os.urandom(32))
    os.chmod(key, 0o600)
    return key


def _xxh3_hex(data: bytes) -> str:
    lib = ctypes.CDLL("libxxhash.so.0")
    lib.XXH3_64bits.restype = ctypes.c_uint64
    lib.XXH3_64bits.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    return f"{lib.XXH3_64bits(data, len(data)):016x}"


def rewrite_manifest(image: Path, key: Path, edit) -> dict:
    """Applies edit(manifest) to an image's manifest and signs it again (manifest.xxh3
    and manifest.hmac) with `key`, as a dumper writing such a manifest would have."""
    m = json.loads((image / "manifest.json").read_text())
    edit(m)
    text = (json.dumps(m, indent=1) + "\n").encode()
    (image / "manifest.json").write_bytes(text)
    (image / "manifest.xxh3").write_text(_xxh3_hex(text) + "\n")
    mac = hmac.new(key.read_bytes(), text, hashlib.sha256).hexdigest()
    (image / "manifest.hmac").write_text(mac + "\n")
    return m


def _dump_with_old_engine(e2e: E2E, old_engine: Engine, key: Path, name: str, point: float):
    """Runs a python job under the older engine (its fsched-ckpt run and fsched-init),
    dumps it with the older engine at `point` of its work; returns (job, image, ref)."""
    spec = specs.python_job(name, steps=150)
    ref = e2e.reference(spec)  # the uninterrupted run, by this build
    # The same directories as this session's, another engine.
    old_env = E2E(old_engine.build, e2e.data_dir.parent, e2e.jobs_dir.parent)
    job = old_env.job(spec)
    job.start_detached()
    job.wait_progress(ref, point)
    image = e2e.image(f"{name}/old")
    r, stats = old_engine.dump(job.init_pid, image, extra=("--key", str(key)))
    assert r.rc == 0, f"the older engine's dump failed ({r.rc}): {r.stderr.strip()}"
    job.paused()
    m = json.loads((image / "manifest.json").read_text())
    assert m["format_version"] == OLD_FORMAT, m["format_version"]
    return job, image, ref


def test_old_engine_image_restores(e2e: E2E, old_engine: Engine, test_key: Path):
    """A python job started and dumped by the older build, restored by this one: the
    outputs equal the uninterrupted run's, byte for byte."""
    job, image, ref = _dump_with_old_engine(e2e, old_engine, test_key, "compat_python", 0.5)
    try:
        # Whatever version the older build calls itself (both may say the same), the
        # image names another engine: only its format may matter.
        m = rewrite_manifest(image, test_key,
                             lambda m: m.update(engine_version=m["engine_version"] + "-older"))
        assert [s["name"] for s in m["sections"]] == [
            "shm", "deleted_files", "sysv_shm", "pages", "pipes", "sockets"], m["sections"]
        args = [str(e2e.engine.bin), "restore", "--dir", str(image), "--json", "--key",
                str(test_key), "--pidfile", str(job.dir / "pid")]
        cp = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=job.spec.timeout + 60)
        assert cp.returncode == ref.status, (
            f"this build's restore of the older engine's image exited {cp.returncode}, the "
            f"uninterrupted run {ref.status}; stderr: {cp.stderr.strip()}; "
            f"job stderr: {job.read('stderr')[-2000:]}")
        assert restore_stats(cp.stderr), f"restore --json printed no figures: {cp.stderr}"
        job.assert_matches(ref, " (dumped by the older engine, restored by this one)")
    finally:
        kill_job_processes(job.marker)


@pytest.mark.parametrize("other", [OLD_FORMAT - 1, FORMAT + 1])
def test_other_format_refused_naming_both(e2e: E2E, old_engine: Engine, test_key: Path,
                                          other: int):
    """An image of another format, correctly signed, is refused before anything is
    created, with one error line naming its format and the one this build reads."""
    job, image, _ = _dump_with_old_engine(e2e, old_engine, test_key, f"compat_format{other}", 0.2)
    try:
        rewrite_manifest(image, test_key, lambda m: m.update(format_version=other))
        r = e2e.engine.call(["restore", "--dir", str(image), "--key", str(test_key)], 60)
        assert r.rc != 0, "an image of another format was restored"
        lines = r.error_lines()
        assert len(lines) == 1, f"expected one error line, got: {r.stderr}"
        assert f"image format {other} " in lines[0] and \
            f"reads formats {OLD_FORMAT} to {FORMAT}" in lines[0], lines
        assert not job.processes(), f"processes created for a refused image: {job.processes()}"
    finally:
        kill_job_processes(job.marker)
