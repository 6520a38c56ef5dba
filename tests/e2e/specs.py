"""The jobs the end-to-end tests checkpoint: real programs plus the project's own test
programs. Sizes are chosen so each job runs for roughly 5-12 s on the project's 2-core
VM (xz -6 manages only about 0.7 MB/s there, hence its small inputs)."""
from __future__ import annotations

import shutil
from pathlib import Path

from ckpt_e2e import E2E, JobSpec

MiB = 1 << 20

PYTHON = "/usr/bin/python3"

# A deterministic Python computation: dict updates, floating point, a growing list of
# bytes objects and a hash; one progress line per step to stdout and to an output file
# kept open in append mode. MODE "pipechild" talks to a /bin/cat child through two pipes.
COMPUTE_PY = r'''
import hashlib, math, os, random, resource, sys, time

mode, out_path, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(20240601)
base = [rng.getrandbits(30) for _ in range(300000)]
table = {}
blobs = []
acc = 0.0
h = hashlib.sha256()
child = None
# Soft limits of its own, which it prints at the end: a restore must give them back.
LIMITS = (resource.RLIMIT_NOFILE, resource.RLIMIT_STACK, resource.RLIMIT_DATA)
for res, soft in zip(LIMITS, (777, 6 << 20, 3 << 30)):
    hard = resource.getrlimit(res)[1]
    resource.setrlimit(res, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
if mode == "pipechild":
    import subprocess
    child = subprocess.Popen(["/bin/cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    print("fds", child.stdin.fileno(), child.stdout.fileno(), flush=True)
print("start", mode, steps, file=sys.stderr, flush=True)
with open(out_path, "a") as out:
    for step in range(steps):
        for i in range(12000):
            k = rng.getrandbits(40) ^ base[(step * 12000 + i) % len(base)]
            table[k % 100003] = table.get(k % 100003, 0) ^ k
            acc += math.sin(k * 1e-9) * math.sqrt(k % 1000 + 1)
        blobs.append(rng.randbytes(64 * 1024))
        h.update(blobs[-1])
        line = f"step {step + 1}/{steps} acc={acc!r} keys={len(table)} sha={h.hexdigest()[:16]}"
        if child:
            child.stdin.write(line.encode() + b"\n")
            child.stdin.flush()
            line += " echo=" + str(len(child.stdout.readline()))
        print(line, flush=True)
        out.write(line + "\n")
        out.flush()
        if step % 4 == 0:
            time.sleep(0.02)
if child:
    child.stdin.close()
    child.wait()
with open("result.txt", "w") as f:
    f.write(f"{acc!r} {sum(table.values())} {len(blobs)}\n")
print(f"done uid={os.getuid()} euid={os.geteuid()} gid={os.getgid()} "
      f"groups={sorted(os.getgroups())} cwd={os.getcwd()} "
      f"limits={[resource.getrlimit(r) for r in LIMITS]}", flush=True)
print("end", file=sys.stderr, flush=True)
'''


def write_compute_py(work: Path):
    (work / "compute.py").write_text(COMPUTE_PY)


def python_job(name: str, steps: int = 250, mode: str = "plain", user: str | None = None) -> JobSpec:
    return JobSpec(name=name,
                   argv=[PYTHON, "{work}/compute.py", mode, "{work}/progress.txt", str(steps)],
                   setup=write_compute_py, inputs=("compute.py",), user=user,
                   progress=("lines", "stdout"), timeout=120)


def xz_job(e2e: E2E, name: str, threads: int, size: int, user: str | None = None) -> JobSpec:
    def setup(work: Path):
        e2e.place(e2e.data_file(size, 11 + threads), work / "input.dat")
    argv = ["/usr/bin/xz", f"-T{threads}", "-6", "-k", "input.dat"]
    if threads > 1:
        # Several blocks, so that both threads compress at the same time.
        argv[3:3] = ["--block-size=1MiB"]
    return JobSpec(name=name, argv=argv, setup=setup, inputs=("input.dat",), user=user,
                   progress=("readpos", "work/input.dat"), timeout=240)


def sha256_job(e2e: E2E, name: str = "sha256sum", size: int = 128 * MiB, passes: int = 10) -> JobSpec:
    def setup(work: Path):
        e2e.place(e2e.data_file(size, 21), work / "big.dat")
    return JobSpec(name=name, argv=["/usr/bin/sha256sum", *["big.dat"] * passes], setup=setup,
                   inputs=("big.dat",), progress=("lines", "stdout"), timeout=240)


def sort_job(e2e: E2E, name: str = "sort", size: int = 300 * MiB) -> JobSpec:
    def setup(work: Path):
        e2e.place(e2e.data_file(size, 31), work / "input.txt")
        (work / "tmp").mkdir()
    return JobSpec(name=name,
                   argv=["/usr/bin/sort", "--parallel=2", "-S", "50M", "-o", "sorted.txt", "input.txt"],
                   setup=setup, inputs=("input.txt",), env={"TMPDIR": "{work}/tmp"},
                   # sort writes the input, sorted in chunks, to temporary files, then
                   # merges them into the output
                   progress=("files", ("work/tmp/*", "work/sorted.txt"), "work/input.txt", 2.0),
                   timeout=240)


BASH_SCRIPT = r'''#!/bin/bash
# Runs several programs in sequence: bash sits in wait4 while each one runs.
set -euo pipefail
echo "stage 1: python"
/usr/bin/python3 compute.py plain py-progress.txt 90 > py.stdout 2> py.stderr
echo "stage 2: sha256sum"
/usr/bin/sha256sum big.dat big.dat big.dat > sums.txt
echo "stage 3: sort"
/usr/bin/sort --parallel=2 -S 20M -T "$PWD/tmp" -o sorted.txt big.dat
echo "stage 4: xz"
/usr/bin/xz -T1 -6 -k small.dat
for i in 1 2 3; do echo "loop $i" >> loop.txt; done
echo "all done"
exit 5
'''


def bash_job(e2e: E2E, name: str = "bash_script") -> JobSpec:
    def setup(work: Path):
        write_compute_py(work)
        (work / "script.sh").write_text(BASH_SCRIPT)
        e2e.place(e2e.data_file(128 * MiB, 41), work / "big.dat")
        e2e.place(e2e.data_file(2 * MiB, 42), work / "small.dat")
        (work / "tmp").mkdir()
    return JobSpec(name=name, argv=["/bin/bash", "script.sh"], setup=setup,
                   inputs=("compute.py", "script.sh", "big.dat", "small.dat"),
                   progress=("stages", "stdout", 4), timeout=300)


def threads_job(e2e: E2E, name: str = "ckpt_threads", rounds: int = 200, exit_code: int = 3) -> JobSpec:
    return JobSpec(name=name,
                   argv=[str(e2e.program("ckpt_threads")), str(rounds), "{work}/rounds.txt",
                         "--exit-code", str(exit_code)],
                   progress=("lines", "work/rounds.txt"), timeout=120)


def memhog_job(e2e: E2E, name: str, mib: int, mode: str = "random", exe: str | None = None) -> JobSpec:
    """memhog that verifies its memory and exits once work/go exists (which the reference
    run has from the start)."""
    def setup(work: Path):
        if exe:
            shutil.copy2(e2e.program("memhog"), work / exe)
    prog = f"{{work}}/{exe}" if exe else str(e2e.program("memhog"))
    return JobSpec(name=name, argv=[prog, str(mib), mode, "--go-file", "{work}/go"], setup=setup,
                   inputs=(exe,) if exe else (), progress=("lines", "stdout"), timeout=120,
                   ref_setup=lambda work: (work / "go").touch())
