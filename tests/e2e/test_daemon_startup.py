"""How the daemons and commands start (issue 11's small defects): --version everywhere, a
busy port is an error at start before the daemon forks, a daemonized daemon without a
log file logs to /var/log/fsched, keys that are accepted but do nothing are logged at
start, and `sbatch --checkpoint` on a cluster with checkpoints disabled says so."""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from ckpt_e2e import E2E
from sched_e2e import Cluster, start_munge

pytestmark = pytest.mark.slow

VERSION = re.compile(r"^\S+ \(fsched\) \d+\.\d+\.\d+\n$")


def test_version_on_every_command_and_daemon(build_dir: Path):
    progs = [build_dir / "src/cmds" / c for c in ("sbatch", "squeue", "scontrol", "scancel", "sinfo")]
    progs += [build_dir / "src/ctld/fschedctld", build_dir / "src/noded/fschedd",
              build_dir / "src/tools/fsched-ckpt", build_dir / "src/tools/fsched-init"]
    seen = set()
    for p in progs:
        # No configuration is needed (nor read) to print the version.
        r = subprocess.run([str(p), "--version"], capture_output=True, text=True, timeout=30,
                           env={"PATH": "/usr/bin:/bin", "FSCHED_CONF": "/nonexistent/fsched.conf"})
        assert r.returncode == 0, f"{p.name} --version: {r.returncode} {r.stderr}"
        assert VERSION.match(r.stdout), f"{p.name} --version printed {r.stdout!r}"
        assert r.stdout.startswith(p.name + " "), r.stdout
        seen.add(r.stdout.split()[-1])
    assert len(seen) == 1, f"the programs disagree on the version: {seen}"


def test_second_controller_on_a_busy_port_fails_at_start(e2e: E2E, build_dir: Path):
    c = Cluster(build_dir, e2e.jobs_dir.parent / "startup_busy", nodes=1).start()
    try:
        # Daemonized (no -D): the error must reach the terminal and the exit status,
        # before the fork.
        second = subprocess.run([str(build_dir / "src/ctld/fschedctld")], env=c.env, capture_output=True,
                                text=True, timeout=30)
        assert second.returncode != 0, "a second fschedctld started on a busy port"
        assert f"cannot listen on 127.0.0.1:{c.ctld_port}" in second.stderr, second.stderr
        assert "Address already in use" in second.stderr, second.stderr
        node = subprocess.run([str(build_dir / "src/noded/fschedd"), "-D", "-N", "node1"], env=c.env,
                              capture_output=True, text=True, timeout=30)
        assert node.returncode != 0 and f"cannot listen on 127.0.0.1:{c.node_ports['node1']}" in node.stderr, \
            node.stderr
        # The first ones still answer, and alone.
        assert c.ctld.poll() is None and c.nodes["node1"].poll() is None
        assert c.cmd("sinfo").returncode == 0
    finally:
        c.stop()


def test_daemonized_logs_by_default_and_warns_of_keys_that_do_nothing(e2e: E2E, build_dir: Path):
    start_munge()
    root = e2e.jobs_dir.parent / "startup_log"
    c = Cluster(build_dir, root, nodes=1, SlurmctldTimeout=60,
                CheckpointType="checkpoint/none")
    log = Path("/var/log/fsched/fschedctld.log")
    before = log.stat().st_size if log.exists() else 0
    subprocess.run([str(build_dir / "src/ctld/fschedctld")], env=c.env, check=True, timeout=30)
    try:
        c.wait_for(lambda: c.cmd("sinfo", check=False).returncode == 0, 20, "the daemonized fschedctld to answer")
        with open(log, errors="replace") as f:
            f.seek(before)
            text = f.read()
        # This controller's lines: its warnings name this run's configuration file.
        conf = str(c.conf_path)
        for key, why in (("SlurmctldTimeout = 60", "there is no backup controller to take over: has no effect"),):
            assert re.search(rf"fschedctld warning: {re.escape(conf)}:\d+: {re.escape(key)}: {why}", text), \
                f"no warning for {key} in {log}:\n{text[-3000:]}"
        assert re.search(rf"listening on 127\.0\.0\.1:{c.ctld_port}", text), text[-3000:]

        # sbatch --checkpoint where checkpoints are disabled: accepted, with a warning.
        c.start_node("node1")
        r = c.cmd("sbatch", "--parsable", "--checkpoint=60", "--wrap", "true")
        assert re.fullmatch(r"\d+\n", r.stdout), r.stdout
        assert "sbatch: warning: --checkpoint=1:00:00 has no effect: checkpoints are disabled" in r.stderr, r.stderr
        r = c.cmd("sbatch", "--parsable", "--wrap", "true")
        assert "warning" not in r.stderr, r.stderr
    finally:
        pid = int((root / "fschedctld.pid").read_text())
        subprocess.run(["kill", str(pid)], check=False)
        deadline = time.monotonic() + 20
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        c.stop()
