"""Fixtures of the end-to-end checkpoint/restore tests.

Environment:
  FSCHED_BUILD     build directory with src/tools/fsched-ckpt and tests/programs/*
                   (default: <repo>/build)
  FSCHED_E2E_TMP   scratch directory: generated data in data/ (kept, shared), this
                   session's job directories and images in run-<pid>/ (removed at the
                   end unless FSCHED_E2E_KEEP is set). Default /var/tmp/fsched-e2e;
                   needs a few GiB.
  FSCHED_E2E_USER  unprivileged user for jobs run with --user (default: fschedtest;
                   created with useradd if missing)
Run as root: /usr/bin/python3 -m pytest -v tests/e2e
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from ckpt_e2e import E2E, kill_job_processes
import netcluster

REPO = Path(__file__).resolve().parents[2]
TEST_TIME_LIMIT = int(os.environ.get("FSCHED_E2E_TEST_LIMIT", "900"))  # seconds per test
BASE = Path(os.environ.get("FSCHED_E2E_TMP", "/var/tmp/fsched-e2e"))
RUN = BASE / f"run-{os.getpid()}"


def _remove_stale_runs():
    """Removes the run directories of sessions that are gone (and their jobs)."""
    for d in BASE.glob("run-*"):
        try:
            os.kill(int(d.name[4:]), 0)
            continue  # that session is still running
        except (ValueError, ProcessLookupError):
            pass
        kill_job_processes(str(d))
        shutil.rmtree(d, ignore_errors=True)
    # The namespaces and cgroups of dead sessions' NetClusters (tests/e2e/netcluster.py).
    try:
        netcluster.remove_stale()
    except (OSError, RuntimeError) as e:  # no cgroup2 or no ip: no NetCluster ran here either
        print(f"netcluster.remove_stale: {e}")


@pytest.fixture(scope="session")
def build_dir() -> Path:
    build = Path(os.environ.get("FSCHED_BUILD", REPO / "build")).resolve()
    needed = [build / "src/tools/fsched-ckpt", build / "src/tools/fsched-init",
              *(build / "tests/programs" / p for p in ("ckpt_threads", "memhog", "gendata"))]
    missing = [str(p) for p in needed if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"not built (run cmake -G Ninja -B {build} && ninja -C {build}): {', '.join(missing)}",
                    pytrace=False)
    return build


@pytest.fixture(scope="session")
def e2e(build_dir) -> E2E:
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests must run as root", pytrace=False)
    _remove_stale_runs()
    env = E2E(build_dir, BASE, RUN)
    yield env
    kill_job_processes(str(RUN))
    if not os.environ.get("FSCHED_E2E_KEEP"):
        shutil.rmtree(RUN, ignore_errors=True)


@pytest.fixture(scope="session")
def test_user() -> str:
    """An unprivileged user for jobs run with --user; created if missing."""
    name = os.environ.get("FSCHED_E2E_USER", "fschedtest")
    exists = lambda: subprocess.run(["id", "-u", name], capture_output=True).returncode == 0
    if not exists():
        r = subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                            "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
                           capture_output=True, text=True, timeout=60)
        # Another session running at once (scripts/e2e.sh runs files in parallel) may
        # have created it between the check and useradd.
        if r.returncode != 0 and not exists():
            pytest.fail(f"useradd {name}: {r.stderr.strip()}", pytrace=False)
    return name


@pytest.fixture(autouse=True)
def _time_limit_and_cleanup():
    """Every test ends within TEST_TIME_LIMIT, and leaves no job process behind."""
    def on_alarm(signum, frame):
        raise TimeoutError(f"test exceeded {TEST_TIME_LIMIT} s")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TEST_TIME_LIMIT)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        kill_job_processes(str(RUN))
