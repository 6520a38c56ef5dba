"""Memory-mapping state, one kind at a time (issue 13): ckpt_mem_kind holds only
madvise/mlock/mseal flags, mlockall(MCL_FUTURE), sealed memfds, an executable memfd, a
shared file mapping partly made read-only or guard regions (MADV_GUARD_INSTALL), and is dumped midway and restored; its own
checks every round and its output must equal the uninterrupted run's, and the image must
hold the state (so a pass is not luck). A mapping the engine cannot restore (a sysfs
file) must make the dump refuse, naming it, with the job going on unharmed."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from ckpt_e2e import (E2E, JobSpec, alive, kill_job_processes, page_runs, proc_state,
                      single_error_line, tracer_pid)
from test_ipc import DUMP_TIMEOUT, checkpoint_run

pytestmark = pytest.mark.slow

ROUNDS = 60
TICK_MS = 50
MCL_FUTURE = 2
F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE = 1, 2, 4, 8


def _job_process(m: dict) -> dict:
    return m["processes"][-1]


def _advice(m: dict) -> None:
    flags = {f for v in _job_process(m)["vmas"] for f in v.get("vmflags", [])}
    want = {"dc", "wf", "hg", "nh", "dd", "mg", "sr", "rr", "lo", "lf", "nr", "sl"}
    assert want <= flags, f"missing from the image: {want - flags}"


def _seals(m: dict) -> None:
    shm = [o for o in m["shm"]]
    held = [d for d in m["deleted_files"] if d["path"] == "/memfd:kind_held"]
    assert [o["seals"] for o in shm] == [F_SEAL_SHRINK | F_SEAL_GROW], shm
    assert [d["seals"] for d in held] == [F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL], \
        m["deleted_files"]


def _exe_memfd(m: dict) -> None:
    exe = [d for d in m["deleted_files"] if d["path"] == "/memfd:kind_exe"]
    assert [d["seals"] for d in exe] == [F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW], m["deleted_files"]
    assert exe[0]["size"] > 10000, exe


def _shared_mprotect(m: dict) -> None:
    pieces = [v for v in _job_process(m)["vmas"] if v.get("path", "").endswith("/kind.map")]
    assert len(pieces) == 2 and all(v["shared"] for v in pieces), pieces
    ro = [v for v in pieces if v["prot"] == 1]
    assert len(ro) == 1 and "mw" in ro[0]["vmflags"], pieces


def _guard(m: dict) -> None:
    guarded = [v["guards"] for v in _job_process(m)["vmas"] if v.get("guards")]
    assert guarded == [[[2, 1], [5, 2]]], guarded


def _numa(m: dict):
    """The policies ckpt_mem_kind numa sets are in the image (mempolicy.h)."""
    p = _job_process(m)
    threads = [(t.get("mempolicy") or {}).get("mode", 0) for t in p["threads"]]
    assert threads == [1, 2 | (1 << 15)], threads
    vmas = [v["mempolicy"] for v in p["vmas"] if (v.get("mempolicy") or {}).get("mode")]
    assert vmas == [{"mode": 3, "nodes": [1]}], vmas


def _cow_zero(m: dict):
    """The all-zero page each private mapping of ckpt_mem_kind cow_zero copied on write
    is stored (a zero page is left out only where the restore maps zeros anyway)."""
    p = _job_process(m)
    cow = [v for v in p["vmas"] if not v["shared"] and v["kind"] == "file"
           and (v["path"].endswith("/kind.cow") or v["path"].startswith("/memfd:kind_cow"))]
    assert len(cow) == 2, [(v["kind"], v["path"]) for v in p["vmas"]]
    for v in cow:
        assert [1, 2] in page_runs(v["runs"]), (v["path"], v["runs"])


KINDS: dict[str, Callable[[dict], None]] = {
    "advice": _advice,
    "mlockall": lambda m: _job_process(m)["mlockall"] & MCL_FUTURE
    or pytest.fail(f"mlockall not in the image: {_job_process(m).get('mlockall')}"),
    "memfd_seals": _seals,
    "memfd_exec": _exe_memfd,
    "memfd_exec_ro": _exe_memfd,
    "shared_mprotect": _shared_mprotect,
    "guard": _guard,
    "numa": _numa,
    "cow_zero": _cow_zero,
}


def _spec(e2e: E2E, kind: str) -> JobSpec:
    return JobSpec(name=f"memkind_{kind}",
                   argv=[str(e2e.program("ckpt_mem_kind")), kind, str(ROUNDS), str(TICK_MS)],
                   progress=("lines", "stdout"), timeout=120)


@pytest.mark.parametrize("kind", KINDS)
def test_mem_kind(e2e: E2E, kind: str):
    spec = _spec(e2e, kind)
    ref = e2e.reference(spec)
    out = ref.snap["stdout"].text
    assert ref.status == 0 and out.endswith(f"done {kind} {ROUNDS}\n"), out[-500:]

    def check(job, stats: dict, m: dict):
        assert stats["processes"] == 2, stats  # init and ckpt_mem_kind
        KINDS[kind](m)
    checkpoint_run(e2e, spec, [0.5], "middle", check_dump=check)


@pytest.mark.parametrize("kind,names", [
    ("sysfs_map", "/sys/kernel/btf/vmlinux"),
    ("ksm_merge_any", "PR_SET_MEMORY_MERGE"),
    ("memlock_lowered", "exceed its RLIMIT_MEMLOCK of 4096 bytes"),
])
def test_mem_kind_refused(e2e: E2E, kind: str, names: str):
    """The dump fails with exit 4 (unsupported, docs/failures.md) naming the process and
    the mapping, leaves no image, and the job finishes as if never dumped."""
    if names.startswith("/") and not Path(names).exists():
        pytest.skip(f"{names} does not exist on this kernel")
    if kind == "ksm_merge_any" and not Path("/sys/kernel/mm/ksm").exists():
        pytest.skip("this kernel has no KSM")
    spec = _spec(e2e, kind)
    ref = e2e.reference(spec)
    assert ref.status == 0, ref.snap["stdout"].text[-500:]
    job = e2e.job(spec)
    job.start_detached()
    try:
        job.wait_progress(ref, 0.3)
        pids = job.job_pids()
        image = e2e.image(f"refused/{kind}")
        r, _ = e2e.engine.dump(job.init_pid, image, timeout=DUMP_TIMEOUT)
        line = single_error_line(r)
        assert r.rc == 4, f"exit {r.rc}, not 4 (unsupported): {line}"
        assert names in line and "not supported" in line, line
        assert any(f"process {p}" in line for p in pids), f"no process of {pids} named: {line}"
        assert not image.exists() and not Path(str(image) + ".tmp").exists(), "a failed dump left an image"
        for p in [job.init_pid, *job.job_pids()]:
            assert alive(p), f"process {p} died"
            assert proc_state(p) not in ("t", "T"), f"process {p} left stopped"
            assert tracer_pid(p) == 0, f"process {p} left traced"
        assert job.wait_end() == ref.status
        job.assert_matches(ref, " after a refused dump")
    finally:
        kill_job_processes(job.marker)
