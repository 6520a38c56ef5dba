"""Soak test of the engine over real programs nobody here wrote: each program runs under
fsched-ckpt and is dumped (and killed) and restored again and again at random moments
until it ends; its stdout, stderr, output files and exit status must then equal those of
an uninterrupted run, byte for byte.

The mix covers what batch jobs run: language runtimes with JIT compilers and
garbage-collector threads (java, node, python3 with threads), an OpenMP program (libgomp's
spinning worker threads), a database (sqlite3 in WAL mode: a shared file mapping), version
control (git: many short-lived processes), a compiler (gcc driving cc1/as/collect2 from
make), perl, and a shell pipeline (sort | xz | sha256sum).

Used by tests/e2e/test_soak.py (a short run in CI) and bench/soak_bench.py (long runs).
Every dump point is drawn from a seeded random generator: the seed is printed and a
failure names it, so FSCHED_SOAK_SEED=N reproduces the same points (up to timing).
"""
from __future__ import annotations

import dataclasses
import random
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

from ckpt_e2e import E2E, Job, JobSpec, alive, kill_job_processes, wait_gone

PYTHON = "/usr/bin/python3"

# --------------------------------------------------------------------------- programs

PY_THREADS = r'''
import gc, hashlib, sys, threading
rounds = int(sys.argv[1])
def work(seed, out):
    h = hashlib.sha256()
    objs = {}
    for i in range(6000):
        k = (seed * 7919 + i * 104729) % 100003
        if i % 7 == 0:
            objs.pop((k * 31) % 100003, None)
        objs[k] = [k, str(k) * 3, {"v": k}]      # garbage for the cyclic collector
        h.update(repr(objs[k]).encode())
    out[seed] = h.hexdigest()[:16]
with open("py.out", "w") as f:
    for r in range(rounds):
        out = {}
        ts = [threading.Thread(target=work, args=(r * 4 + t, out)) for t in range(4)]
        for th in ts: th.start()
        for th in ts: th.join()
        gc.collect()
        line = f"round {r} " + " ".join(out[r * 4 + t] for t in range(4))
        print(line, flush=True)
        f.write(line + "\n"); f.flush()
print("done", flush=True)
'''

JAVA_SRC = r'''
import java.io.*;
import java.util.*;
import java.util.concurrent.*;
public class Soak {
    public static void main(String[] a) throws Exception {
        int rounds = Integer.parseInt(a[0]);
        ExecutorService pool = Executors.newFixedThreadPool(3);
        try (PrintWriter out = new PrintWriter(new FileWriter("java.out"))) {
            for (int r = 0; r < rounds; r++) {
                final int rr = r;
                List<Future<Long>> fs = new ArrayList<>();
                for (int t = 0; t < 3; t++) {
                    final int tt = t;
                    fs.add(pool.submit(() -> {
                        HashMap<Integer, String> m = new HashMap<>();
                        long h = 1125899906842597L;
                        for (int i = 0; i < 60000; i++) {
                            int k = (int) ((rr * 31L + tt * 7L + i * 2654435761L) % 50021);
                            m.put(k, Integer.toHexString(k) + ":" + i);
                            h = 31 * h + m.get(k).hashCode();
                        }
                        return h;
                    }));
                }
                StringBuilder sb = new StringBuilder("round " + r);
                for (Future<Long> f : fs) sb.append(' ').append(Long.toHexString(f.get()));
                System.out.println(sb);
                out.println(sb);
                out.flush();
            }
        }
        pool.shutdown();
        System.out.println("done");
    }
}
'''

NODE_SRC = r'''
const fs = require("fs");
const crypto = require("crypto");
const rounds = parseInt(process.argv[2]);
const fd = fs.openSync("node.out", "w");
let keep = [];
for (let r = 0; r < rounds; r++) {
  const m = new Map();
  let s = 0;
  for (let i = 0; i < 150000; i++) {
    const k = (r * 2654435761 + i * 40503) % 65521;
    m.set(k, { k, s: k.toString(36), a: [i, k] });
    s = (s * 31 + k) % 1000000007;
  }
  keep.push(JSON.stringify([...m.values()].slice(0, 200)));
  if (keep.length > 20) keep = keep.slice(10);
  const h = crypto.createHash("sha256").update(keep.join()).digest("hex").slice(0, 16);
  const line = `round ${r} ${s} ${m.size} ${h}\n`;
  process.stdout.write(line);
  fs.writeSync(fd, line);
}
fs.closeSync(fd);
console.log("done");
'''

OMP_SRC = r'''
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
  int rounds = atoi(argv[1]);
  FILE *f = fopen("omp.out", "w");
  static double v[1 << 20];
  for (int r = 0; r < rounds; r++) {
    unsigned long long sum = 0;
#pragma omp parallel for reduction(+ : sum) schedule(dynamic, 4096)
    for (int i = 0; i < (1 << 20); i++) {
      unsigned long long x = (unsigned long long)i * 6364136223846793005ULL + r;
      for (int k = 0; k < 24; k++) x = x * 2862933555777941757ULL + 3037000493ULL;
      v[i] = (double)(x >> 11);
      sum += x >> 40;
    }
    printf("round %d %llu\n", r, sum);
    fflush(stdout);
    fprintf(f, "round %d %llu %.1f\n", r, sum, v[r]);
    fflush(f);
  }
  fclose(f);
  puts("done");
  return 0;
}
'''

SQLITE_GEN = r'''
import sys
n = int(sys.argv[1])
print("PRAGMA journal_mode=WAL;")
print("CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, v TEXT);")
print("CREATE INDEX tk ON t(k);")
for b in range(n):
    print("BEGIN;")
    for i in range(400):
        x = b * 400 + i
        print(f"INSERT INTO t(k, v) VALUES ({(x * 2654435761) % 9973}, '{x:x}-{x * 7 % 1000}');")
    print("COMMIT;")
    print(f"SELECT {b}, count(*), sum(k), max(v) FROM t WHERE k % 7 = {b % 7};")
    if b % 10 == 9:
        print(f"UPDATE t SET v = v || 'u' WHERE k % 11 = {b % 11};")
        print("SELECT count(*), total(length(v)) FROM t;")
print("SELECT k, count(*) FROM t GROUP BY k ORDER BY count(*) DESC, k LIMIT 5;")
'''

GIT_SH = r'''
set -e
export GIT_AUTHOR_NAME=soak GIT_AUTHOR_EMAIL=soak@example.org
export GIT_COMMITTER_NAME=soak GIT_COMMITTER_EMAIL=soak@example.org
export HOME=$PWD GIT_CONFIG_NOSYSTEM=1
git init -q -b main repo
cd repo
for i in $(seq 1 "$1"); do
  export GIT_AUTHOR_DATE="@$((1700000000 + i)) +0000" GIT_COMMITTER_DATE="@$((1700000000 + i)) +0000"
  seq "$i" $((i * 40)) > "f$((i % 17)).txt"
  printf 'line %s\n' "$i" >> log.txt
  git add -A
  git commit -q -m "commit $i"
  if ((i % 25 == 0)); then git gc -q; fi
  echo "commit $i $(git rev-parse HEAD)"
done
git log --oneline | wc -l
git rev-parse HEAD^{tree}
cd .. && rm -rf repo  # its index holds inode numbers and times: not comparable
'''

GCC_MAKEFILE = r'''
SRCS := $(wildcard src/*.c)
OBJS := $(SRCS:src/%.c=obj/%.o)
all: prog
	./prog > prog.out
	sha256sum obj/*.o | sha256sum > objs.sum
obj/%.o: src/%.c
	@mkdir -p obj
	gcc -O2 -c -o $@ $<
prog: $(OBJS)
	gcc -o $@ $^
'''

PERL_SRC = r'''
use strict; use warnings;
my $rounds = shift;
open(my $out, ">", "perl.out") or die;
my %h;
for my $r (1 .. $rounds) {
  for my $i (1 .. 40000) {
    my $k = ($r * 7919 + $i * 104729) % 65521;
    $h{$k} .= chr(97 + $k % 26);
    $h{$k} = substr($h{$k}, -12) if length($h{$k}) > 24;
  }
  my $s = 0; $s = ($s * 31 + length($h{$_}) + ord($h{$_})) % 1000000007 for sort { $a <=> $b } keys %h;
  my $t = join("", map { $h{$_} } (sort { $a <=> $b } keys %h)[0 .. 9]) =~ s/[aeiou]+/-/gr;
  printf "round %d %d %s\n", $r, $s, substr($t, 0, 40);
  printf $out "round %d %d\n", $r, $s;
}
print "done\n";
'''


def _write(path: Path, text: str, mode: int = 0o644):
    path.write_text(text)
    path.chmod(mode)


def _gcc_sources(work: Path, n: int):
    src = work / "src"
    src.mkdir()
    for i in range(n):
        body = "\n".join(
            f"static long g{i}_{j}(long x) {{ for (int k = 0; k < {j + 3}; k++) x = x * {2 * j + 3} + {i}; return x ^ (x >> 7); }}"
            for j in range(120))
        calls = " + ".join(f"g{i}_{j}(x)" for j in range(0, 120, 3))
        _write(src / f"m{i}.c", f"{body}\nlong f{i}(long x) {{ return {calls}; }}\n")
    decls = "\n".join(f"long f{i}(long);" for i in range(n))
    sums = "\n".join(f'  printf("f{i} %ld\\n", f{i}({i + 1}));' for i in range(n))
    _write(src / "main.c", f"#include <stdio.h>\n{decls}\nint main(void) {{\n{sums}\n  return 0;\n}}\n")
    _write(work / "Makefile", GCC_MAKEFILE)


def workloads(e2e: E2E, scale: float = 1.0) -> list[JobSpec]:
    """The programs of the soak, sized by `scale` (1.0: each runs roughly 5-15 s alone on
    the project's 2-core machine)."""

    def n(x: float) -> int:
        return max(1, int(x * scale))

    def omp_setup(work: Path):
        _write(work / "omp.c", OMP_SRC)
        subprocess.run(["gcc", "-O2", "-fopenmp", "-o", str(work / "omp"), str(work / "omp.c")],
                       check=True, timeout=120)

    def java_setup(work: Path):
        _write(work / "Soak.java", JAVA_SRC)
        subprocess.run(["javac", "-d", str(work), str(work / "Soak.java")], check=True, timeout=300)

    def sqlite_setup(work: Path):
        with open(work / "script.sql", "w") as f:
            subprocess.run([PYTHON, "-c", SQLITE_GEN, str(n(400))], stdout=f, check=True, timeout=120)

    def pipeline_setup(work: Path):
        e2e.place(e2e.data_file(8 << 20, 77), work / "input.dat")

    def sources(*files: tuple[str, str], then: Optional[Callable[[Path], None]] = None):
        def setup(work: Path):
            for fname, text in files:
                _write(work / fname, text)
            if then:
                then(work)
        return setup

    return [
        JobSpec(name="soak_python_threads", argv=[PYTHON, "soak.py", str(n(160))],
                setup=sources(("soak.py", PY_THREADS)), inputs=("soak.py",)),
        JobSpec(name="soak_java", argv=["java", "-Xmx256m", "-cp", "{work}", "Soak", str(n(60))],
                setup=java_setup, inputs=("Soak.java", "Soak.class"), timeout=300),
        JobSpec(name="soak_node", argv=["node", "soak.js", str(n(70))],
                setup=sources(("soak.js", NODE_SRC)), inputs=("soak.js",), timeout=300),
        JobSpec(name="soak_openmp", argv=["{work}/omp", str(n(250))], setup=omp_setup,
                inputs=("omp.c", "omp"), env={"OMP_NUM_THREADS": "3"}),
        JobSpec(name="soak_sqlite3", argv=["/bin/sh", "-c", "sqlite3 db.sqlite < script.sql"],
                setup=sqlite_setup, inputs=("script.sql", "db.sqlite-wal", "db.sqlite-shm")),
        JobSpec(name="soak_git", argv=["/bin/bash", "soak.sh", str(n(150))],
                setup=sources(("soak.sh", GIT_SH)), inputs=("soak.sh",), timeout=300),
        JobSpec(name="soak_gcc_make", argv=["make", "-s", "-j2"],
                setup=lambda work: _gcc_sources(work, n(60)), timeout=300),
        JobSpec(name="soak_perl", argv=["perl", "soak.pl", str(n(25))],
                setup=sources(("soak.pl", PERL_SRC)), inputs=("soak.pl",)),
        JobSpec(name="soak_pipeline",
                argv=["/bin/bash", "-c", "sort -S 64M input.dat | xz -T2 -2 | sha256sum > sorted.sum"],
                setup=pipeline_setup, inputs=("input.dat",), timeout=300),
    ]


# --------------------------------------------------------------------------- the soak

@dataclasses.dataclass
class ProgramResult:
    name: str
    cycles: int = 0
    freeze_ms: list = dataclasses.field(default_factory=list)
    restore_s: list = dataclasses.field(default_factory=list)
    failure: Optional[str] = None     # what went wrong, with the seed and cycle
    seconds: float = 0.0


def soak_program(e2e: E2E, spec: JobSpec, rng: random.Random, seed: int,
                 gap: tuple[float, float], max_cycles: int = 1 << 30,
                 log: Callable[[str], None] = print) -> ProgramResult:
    """Runs `spec` detached, then dumps it (killing it) after a random running time in
    `gap` seconds and restores it, again and again, until it ends (or max_cycles dumps);
    then compares its outputs with the uninterrupted run's. Never raises for what the
    engine does: a failure is returned in ProgramResult.failure."""
    res = ProgramResult(spec.name)
    t0 = time.monotonic()
    ref = e2e.reference(spec)
    job = e2e.job(spec)
    images = [e2e.image(f"soak/{spec.name}-a"), e2e.image(f"soak/{spec.name}-b")]
    where = lambda: f"{spec.name}, seed {seed}, cycle {res.cycles + 1}"  # noqa: E731
    try:
        job.start_detached()
        while res.cycles < max_cycles:
            wait = rng.uniform(*gap)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and alive(job.init_pid):
                time.sleep(0.01)
            if not alive(job.init_pid):
                break
            image = images[res.cycles % 2]
            if image.exists():
                shutil.rmtree(image)
            r, stats = e2e.engine.dump(job.init_pid, image)
            if r.rc != 0:
                if job.read("status").strip() or not alive(job.init_pid):
                    break  # the job ended while being dumped: allowed, its output is checked
                res.failure = f"{where()}: dump failed ({r.rc}): {r.stderr.strip()[-1500:]}"
                return res
            res.freeze_ms.append(stats["freeze_ms"])
            if not wait_gone(job.init_pid, 20):
                res.failure = f"{where()}: the dump did not kill the job"
                return res
            job.paused()
            t1 = time.monotonic()
            r, pid = e2e.engine.restore_detached(image, job.dir / "pid")
            if r.rc != 0 or not pid:
                res.failure = f"{where()}: restore failed ({r.rc}): {r.stderr.strip()[-1500:]}"
                return res
            res.restore_s.append(time.monotonic() - t1)
            job.resumed(pid)
            res.cycles += 1
        if not wait_gone(job.init_pid, spec.timeout):
            res.failure = f"{where()}: the job did not end within {spec.timeout} s"
            return res
        status = job.read("status").split()
        if not status or int(status[0]) != ref.status:
            res.failure = (f"{spec.name}, seed {seed}, after {res.cycles} cycles: exit status "
                           f"{status} instead of {ref.status}; stderr: {job.read('stderr')[-1500:]}")
            return res
        try:
            job.assert_matches(ref, f" after {res.cycles} cycles (seed {seed})")
        except AssertionError as e:
            res.failure = str(e)[:3000]
        return res
    finally:
        kill_job_processes(job.marker)
        for im in images:
            shutil.rmtree(im, ignore_errors=True)
        res.seconds = time.monotonic() - t0
        log(f"soak {spec.name}: {res.cycles} cycles in {res.seconds:.1f} s"
            f"{', FAILED: ' + res.failure if res.failure else ''}")


def summary(results: list[ProgramResult]) -> str:
    lines = []
    for r in results:
        fr = f"freeze median {statistics.median(r.freeze_ms):.0f} ms" if r.freeze_ms else "no dump"
        rs = f"restore median {statistics.median(r.restore_s):.2f} s" if r.restore_s else ""
        lines.append(f"{r.name:24} {r.cycles:5} cycles  {fr}  {rs}  {'FAIL' if r.failure else 'ok'}")
    total = sum(r.cycles for r in results)
    failed = sum(1 for r in results if r.failure)
    lines.append(f"total: {total} dump/restore cycles over {len(results)} programs, {failed} failed")
    return "\n".join(lines)
