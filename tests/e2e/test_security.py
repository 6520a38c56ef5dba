"""A job's user against root's restore (issue 10): between dump and restore the user
controls their files, and `fsched-ckpt restore` runs as root. Each test dumps a job of
an unprivileged user, plays the user's move on the files the image names -- a symlink or
another file in place of the job's output file, working directory, mapped file, FIFO,
listening socket or /dev/shm object -- pointing at root-owned 0600 canaries, and checks
that every canary is unchanged, that nothing of them reaches the user, and that the
restore is refused with one clear line naming the file. The confinement tests check a
job that confined itself (seccomp filters, no_new_privs, dropped capabilities,
securebits) is exactly as confined after a restore."""
from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import textwrap
import time
from pathlib import Path

import pytest

from ckpt_e2e import E2E, Job, JobSpec, alive, single_error_line

PYTHON = "/usr/bin/python3"

pytestmark = pytest.mark.slow


class Canaries:
    """Root-owned files the user must never reach: 0600 files in a 0700 directory (the
    vault), and one 0600 file the user can name but not read."""

    def __init__(self, base: Path):
        self.vault = base / "vault"
        if base.exists():
            shutil.rmtree(base)
        base.mkdir(parents=True)
        os.chmod(base, 0o755)
        self.vault.mkdir(mode=0o700)
        self.files = {}
        for name in ("out.txt", "sock", "fifo", "data.bin", "secret"):
            p = self.vault / name
            p.write_bytes(f"root's {name}: keep out\n".encode() * 64)
            os.chmod(p, 0o600)
            self.files[p] = None
        self.named = base / "root-secret"
        self.named.write_bytes(b"root's named secret\n" * 10)
        os.chmod(self.named, 0o600)
        self.files[self.named] = None
        for p in self.files:
            self.files[p] = self.state(p)
        self.listing = sorted(os.listdir(self.vault))

    @staticmethod
    def state(p: Path):
        st = p.lstat()
        return (st.st_ino, st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns,
                hashlib.sha256(p.read_bytes()).hexdigest())

    def assert_unchanged(self):
        assert sorted(os.listdir(self.vault)) == self.listing, \
            f"the vault changed: {sorted(os.listdir(self.vault))} != {self.listing}"
        for p, want in self.files.items():
            assert p.exists(), f"canary {p} was removed"
            assert self.state(p) == want, f"canary {p} changed"


# The job: writes numbered lines to out.txt (held open), reads a mapped data file,
# optionally holds a FIFO, a listening socket and a /dev/shm object in its work dir.
JOB = textwrap.dedent(r"""
    import mmap, os, socket, sys, time
    rounds = int(sys.argv[1]); kinds = sys.argv[2].split(",")
    out = open("out.txt", "a", buffering=1)
    data = open("data.bin", "rb")
    view = mmap.mmap(data.fileno(), 0, prot=mmap.PROT_READ)
    keep = []
    if "fifo" in kinds:
        os.mkfifo("fifo")
        keep.append(os.open("fifo", os.O_RDWR))
    if "sock" in kinds:
        s = socket.socket(socket.AF_UNIX); s.bind(os.path.abspath("sock")); s.listen(); keep.append(s)
    shm = None
    if "shm" in kinds:
        from multiprocessing import shared_memory
        shm = shared_memory.SharedMemory(name=os.environ["SHM_NAME"], create=True, size=4096)
    for i in range(rounds):
        if shm is not None:
            shm.buf[:8] = i.to_bytes(8, "little")
        out.write(f"{i} {view[i % len(view)]}\n")
        time.sleep(0.05)
    print("done")
""")


def job_spec(e2e: E2E, user: str, name: str, kinds: str, rounds: int = 120,
             shm_name: str = "") -> JobSpec:
    def setup(work: Path):
        (work / "job.py").write_text(JOB)
        (work / "data.bin").write_bytes(bytes(range(256)) * 64)
    env = {"SHM_NAME": shm_name} if shm_name else {}
    return JobSpec(name=name, argv=[PYTHON, "job.py", str(rounds), kinds], setup=setup,
                   inputs=("job.py", "data.bin"), user=user, env=env,
                   progress=("lines", "work/out.txt"), timeout=120)


def dumped(e2e: E2E, spec: JobSpec, lines: int = 15) -> tuple[Job, Path]:
    """The job, started and dumped (killed) once out.txt has `lines` lines."""
    job = e2e.job(spec)
    job.start_detached()
    deadline = time.monotonic() + 60
    out = job.work / "out.txt"
    while time.monotonic() < deadline:
        if out.exists() and out.read_text().count("\n") >= lines:
            break
        assert alive(job.init_pid), f"job ended early: {job.read('stderr')}"
        time.sleep(0.02)
    image = e2e.image(f"{spec.name}/img")
    e2e.dump_ok(job, image)
    return job, image


def as_user(user: str, fn):
    """Runs fn() in a child with the user's ids: the move is the user's, not root's."""
    pw = pwd.getpwnam(user)
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            fn()
            os._exit(0)
        except BaseException as e:  # noqa: BLE001 - reported through the exit status
            os.write(2, f"user move failed: {e!r}\n".encode())
            os._exit(1)
    _, st = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(st) == 0, "the user's move failed"


def refused(e2e: E2E, job: Job, image: Path, *names: str) -> str:
    r, pid = e2e.engine.restore_detached(image, job.dir / "pid2")
    assert pid is None, f"restore went through: init {pid}"
    line = single_error_line(r)
    for n in names:
        assert n in line, f"the refusal does not name {n}: {line}"
    assert not job.processes(), f"a refused restore left processes: {job.processes()}"
    return line


@pytest.fixture
def canaries(e2e: E2E) -> Canaries:
    c = Canaries(e2e.jobs_dir.parent / "canaries")
    yield c
    c.assert_unchanged()


def test_output_file_replaced_by_symlink(e2e: E2E, test_user, canaries):
    """Item 1: out.txt -> a root file: root used to truncate it and the job wrote it."""
    job, image = dumped(e2e, job_spec(e2e, test_user, "sec_out_link", "plain"))
    out = job.work / "out.txt"
    as_user(test_user, lambda: (out.unlink(), out.symlink_to(canaries.vault / "out.txt")))
    line = refused(e2e, job, image, str(out))
    assert "symbolic link" in line, line
    # The named secret too: a link to a file the user can see but not read.
    as_user(test_user, lambda: (out.unlink(), out.symlink_to(canaries.named)))
    refused(e2e, job, image, str(out))
    canaries.assert_unchanged()


def test_output_file_replaced_by_other_file(e2e: E2E, test_user, canaries):
    """Item 1: another file of the user's at the path, larger than at dump time: the
    identity check refuses it by inode before anything is truncated."""
    job, image = dumped(e2e, job_spec(e2e, test_user, "sec_out_other", "plain"))
    out = job.work / "out.txt"
    size = out.stat().st_size

    def swap():
        other = job.work / "other.txt"
        other.write_bytes(b"x" * (size + 100))
        other.replace(out)
    as_user(test_user, swap)
    # The engine's first look (before any process) or the check of the opened fd
    # refuses it; either way the user's file keeps its size.
    line = refused(e2e, job, image, str(out))
    assert "inode" in line or "changed" in line, line
    assert out.stat().st_size == size + 100, "the replaced file was truncated"


def test_working_directory_replaced_by_symlink(e2e: E2E, test_user, canaries):
    """Item 1: the job's cwd -> the vault: root's restore used to chdir into it."""
    job, image = dumped(e2e, job_spec(e2e, test_user, "sec_cwd_link", "plain"))
    moved = job.dir / "work.moved"
    as_user(test_user, lambda: (job.work.rename(moved), job.work.symlink_to(canaries.vault)))
    refused(e2e, job, image, "symbolic link")


def test_listening_socket_directory_replaced(e2e: E2E, test_user, canaries):
    """Item 2: the socket's directory -> the vault, which holds a root file named
    "sock": root's restore used to unlink it and bind a root-owned socket there."""
    job, image = dumped(e2e, job_spec(e2e, test_user, "sec_sock", "sock"))
    moved = job.dir / "work.moved"
    as_user(test_user, lambda: (job.work.rename(moved), job.work.symlink_to(canaries.vault)))
    refused(e2e, job, image)
    # The socket path itself replaced by a regular file of the user's: not removed.
    as_user(test_user, lambda: (job.work.unlink(), moved.rename(job.work)))
    sock = job.work / "sock"
    as_user(test_user, lambda: (sock.unlink(), sock.write_text("mine\n")))
    line = refused(e2e, job, image, str(sock))
    assert "no longer a socket" in line, line
    assert sock.read_text() == "mine\n"


def test_fifo_directory_replaced(e2e: E2E, test_user, canaries):
    """Item 3: the FIFO's directory -> the vault: root used to mkfifo there."""
    job, image = dumped(e2e, job_spec(e2e, test_user, "sec_fifo", "fifo"))
    moved = job.dir / "work.moved"
    as_user(test_user, lambda: (job.work.rename(moved), job.work.symlink_to(canaries.vault)))
    refused(e2e, job, image)
    assert not (canaries.vault / "fifo").is_fifo()


def test_mapped_file_replaced(e2e: E2E, test_user, canaries):
    """Item 4: the mapped data.bin -> a root file (a link, then a copy of the user's)."""
    job, image = dumped(e2e, job_spec(e2e, test_user, "sec_map", "plain"))
    data = job.work / "data.bin"
    saved = data.read_bytes()
    as_user(test_user, lambda: (data.unlink(), data.symlink_to(canaries.vault / "data.bin")))
    line = refused(e2e, job, image, str(data))
    assert "symbolic link" in line, line
    as_user(test_user, lambda: (data.unlink(), data.write_bytes(saved)))
    line = refused(e2e, job, image, str(data))
    assert "changed" in line or "inode" in line, line


def test_dev_shm_object_kept_by_name(e2e: E2E, test_user):
    """Item 5: a named /dev/shm object comes back as itself: the restored job's writes
    reach /dev/shm/NAME."""
    name = f"fsched-sec-{os.getpid()}"
    shm = Path("/dev/shm") / name
    shm.unlink(missing_ok=True)
    try:
        spec = job_spec(e2e, test_user, "sec_shm", "shm", rounds=200, shm_name=name)
        job, image = dumped(e2e, spec, lines=10)
        at_dump = int.from_bytes(shm.read_bytes()[:8], "little")
        shm.unlink()  # as if restored on another node
        e2e.restore_detached_ok(job, image)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if shm.exists() and int.from_bytes(shm.read_bytes()[:8], "little") > at_dump + 5:
                break
            time.sleep(0.05)
        assert shm.exists(), "the restored job has no /dev/shm object"
        counter = int.from_bytes(shm.read_bytes()[:8], "little")
        assert counter > at_dump + 5, f"/dev/shm/{name} did not move on after restore ({at_dump} -> {counter})"
        st = shm.stat()
        assert (st.st_uid, st.st_gid) == (pwd.getpwnam(test_user).pw_uid, pwd.getpwnam(test_user).pw_gid)
        assert job.wait_end(60) == 0
    finally:
        shm.unlink(missing_ok=True)


def test_dev_shm_object_replaced_by_symlink(e2e: E2E, test_user, canaries):
    """Item 5: /dev/shm/NAME -> a root file: root used to open it O_CREAT and fchown it."""
    name = f"fsched-sec-link-{os.getpid()}"
    shm = Path("/dev/shm") / name
    shm.unlink(missing_ok=True)
    try:
        spec = job_spec(e2e, test_user, "sec_shm_link", "shm", shm_name=name)
        job, image = dumped(e2e, spec, lines=10)
        as_user(test_user, lambda: (shm.unlink(), shm.symlink_to(canaries.named)))
        line = refused(e2e, job, image, str(shm))
        assert "symbolic link" in line, line
    finally:
        shm.unlink(missing_ok=True)


# --------------------------------------------------------------------------- confinement

CONFINED = textwrap.dedent(r"""
    import ctypes, errno, os, struct, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, PR_CAPBSET_DROP = 38, 22, 24
    PR_GET_SECUREBITS, PR_SET_SECUREBITS = 27, 28
    def check(r, what):
        if r != 0:
            raise OSError(ctypes.get_errno(), what)
    def seccomp_deny(nr, err):
        # ld [nr]; jeq nr ? deny : allow
        insns = [(0x20, 0, 0, 0), (0x15, 0, 1, nr), (0x06, 0, 0, 0x00050000 | err),
                 (0x06, 0, 0, 0x7fff0000)]
        buf = b"".join(struct.pack("HBBI", *i) for i in insns)
        prog = ctypes.create_string_buffer(buf)
        class Fprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
        fp = Fprog(len(insns), ctypes.addressof(prog))
        check(libc.prctl(PR_SET_SECCOMP, 2, ctypes.byref(fp), 0, 0), "seccomp")
    mode = sys.argv[2]
    if mode == "root":
        for cap in (1, 2, 12, 21):  # DAC_OVERRIDE, DAC_READ_SEARCH, NET_ADMIN, SYS_ADMIN
            check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "capbset_drop")
        check(libc.prctl(PR_SET_SECUREBITS, 0x1, 0, 0, 0), "securebits")  # SECBIT_NOROOT
        # Keep only CAP_CHOWN (0) and CAP_KILL (5) permitted, CAP_KILL effective.
        class Hdr(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
        class Data(ctypes.Structure):
            _fields_ = [("eff", ctypes.c_uint32), ("prm", ctypes.c_uint32), ("inh", ctypes.c_uint32)]
        data = (Data * 2)()
        data[0].eff, data[0].prm, data[0].inh = 1 << 5, (1 << 0) | (1 << 5), 1 << 0
        check(libc.capset(ctypes.byref(Hdr(0x20080522, 0)), data), "capset")
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    seccomp_deny(83, errno.EPERM)     # mkdir
    seccomp_deny(95, errno.EACCES)    # umask: the later filter is asked first
    keys = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp",
            "Seccomp_filters")
    for i in range(int(sys.argv[1])):
        status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
        fields = " ".join(f"{k}={status[k].strip()}" for k in keys)
        try:
            os.mkdir(f"/tmp/fsched-never-{os.getpid()}-{i}")
            made = "mkdir allowed"
        except OSError as e:
            made = f"mkdir {errno.errorcode[e.errno]}"
        um = libc.umask(0o22)
        um = f"umask {errno.errorcode.get(ctypes.get_errno(), um) if um == -1 else um}"
        sb = libc.prctl(PR_GET_SECUREBITS, 0, 0, 0, 0)
        print(i, fields, made, um, f"securebits={sb}", flush=True)
        time.sleep(0.05)
""")


def confined_spec(name: str, user, mode: str) -> JobSpec:
    return JobSpec(name=name, argv=[PYTHON, "confined.py", "80", mode],
                   setup=lambda work: (work / "confined.py").write_text(CONFINED),
                   inputs=("confined.py",), user=user, progress=("lines", "stdout"),
                   timeout=120)


def test_confinement_of_user_job(e2e: E2E, test_user):
    """Item 6: no_new_privs and two seccomp filters of a user's job hold after restores;
    the output, which prints them and tries the filtered calls, is byte-identical."""
    spec = confined_spec("sec_confined_user", test_user, "user")
    ref = e2e.reference(spec)
    first = ref.snap["stdout"].text.splitlines()[0]
    assert "NoNewPrivs=1" in first and "Seccomp_filters=2" in first and "mkdir EPERM" in first, first
    e2e.checkpoint_run(spec, [0.3, 0.6], "confined")


def test_confinement_of_root_job(e2e: E2E):
    """Item 6: a root job that dropped capabilities (bounding set, permitted, effective,
    inheritable), set SECBIT_NOROOT, no_new_privs and seccomp filters gets exactly those
    back -- not root's full set."""
    spec = confined_spec("sec_confined_root", None, "root")
    ref = e2e.reference(spec)
    first = ref.snap["stdout"].text.splitlines()[0]
    assert "CapEff=0000000000000020" in first and "securebits=1" in first, first
    e2e.checkpoint_run(spec, [0.3, 0.6], "confined")


# --------------------------------------------------------------------------- image key

def test_image_key_must_be_root_only(e2e: E2E, test_user, canaries):
    """The key that signs manifests (issue 10, image integrity) is refused unless it is a
    root-owned 0600 regular file; a restore with another key refuses the image."""
    job, image = dumped(e2e, job_spec(e2e, test_user, "sec_key", "plain"))
    keydir = e2e.jobs_dir.parent / "keys"
    shutil.rmtree(keydir, ignore_errors=True)
    keydir.mkdir(mode=0o700)
    key = keydir / "image.key"
    key.write_bytes(os.urandom(32))
    os.chmod(key, 0o600)

    def show(k: Path) -> str:
        r = e2e.engine.call(["show", "--dir", str(image), "--key", str(k)], 60)
        return single_error_line(r)

    assert "HMAC mismatch" in show(key)  # not the key that signed it
    os.chmod(key, 0o644)
    assert "mode 644" in show(key)
    os.chmod(key, 0o600)
    uid, gid = pwd.getpwnam(test_user).pw_uid, pwd.getpwnam(test_user).pw_gid
    os.chown(key, uid, gid)
    assert f"owned by uid {uid}" in show(key)
    link = keydir / "link.key"
    link.symlink_to(key)
    assert "symbolic link" in show(link)
    r = e2e.engine.call(["restore", "--dir", str(image), "--key", str(keydir / "none")], 60)
    assert "cannot open" in single_error_line(r)
    e2e.restore_detached_ok(job, image)  # the default key still opens it
    assert job.wait_end(60) == 0
