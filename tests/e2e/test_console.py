"""The web console (issue 16) in real headless Chromium: Debian's /usr/bin/chromium
driven by playwright-core (web/node_modules, from scripts/install-deps.sh) through
tests/web/console.test.mjs (node --test), against a real cluster: fschedctld serving the
REST API and the console built in <build>/web (scripts/build-web.sh), fschedd, MUNGE,
tokens from `scontrol token`, a job of the unprivileged test user.

The browser logs in with the user's token, sees the running job, watches its periodic
checkpoints, triggers one whose description is an XSS attack (shown as text, no dialog),
vacates the job and restarts it from an older checkpoint chosen in the table; the job
finishes and its output must be byte-identical to an uninterrupted run. Another user
(nobody) sees the job but is refused (403, the server's message shown); an expired and
a forged token are refused (401). Screenshots: <build>/e2e/screenshots/console/.
"""
from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from sched_e2e import REPO, Cluster

STEPS, DELAY = 240, 0.5  # the job counts for about 2 minutes
XSS = "<img src=x onerror=alert(1)>"
OTHER_USER = "nobody"  # another unprivileged user, as in test_suspend.py

COUNT_PY = r'''
import hashlib, sys, time
steps, delay = int(sys.argv[1]), float(sys.argv[2])
h = b"fsched console"
print("job starts", flush=True)
for i in range(steps):
    h = hashlib.sha256(h).digest()
    print(f"step {i} {h.hex()}", flush=True)
    time.sleep(delay)
print("job done", flush=True)
'''

JOB_SH = """#!/bin/bash
#SBATCH -J console-job
python3 count.py "$1" "$2"
"""


def expected_output(steps: int) -> bytes:
    """What count.py prints when nothing interrupts it."""
    h = b"fsched console"
    lines = ["job starts"]
    for i in range(steps):
        h = hashlib.sha256(h).digest()
        lines.append(f"step {i} {h.hex()}")
    lines.append("job done")
    return ("\n".join(lines) + "\n").encode()


def workdir(e2e, name: str, user: str) -> Path:
    d = e2e.jobs_dir.parent / "console" / name
    d.mkdir(parents=True)
    os.chmod(d.parent, 0o755)
    (d / "count.py").write_text(COUNT_PY)
    (d / "job.sh").write_text(JOB_SH)
    pw = pwd.getpwnam(user)
    for p in (d, d / "count.py", d / "job.sh"):
        os.chown(p, pw.pw_uid, pw.pw_gid)
    return d


def steps_done(d: Path, jid: int) -> int:
    try:
        return (d / f"slurm-{jid}.out").read_text().count("step ")
    except FileNotFoundError:
        return 0


@pytest.fixture
def browser_tools(build_dir):
    """node, Chromium, playwright-core and the built console: required, not optional."""
    missing = []
    if not shutil.which("node"):
        missing.append("node (apt-get install nodejs)")
    if not os.access("/usr/bin/chromium", os.X_OK):
        missing.append("/usr/bin/chromium (apt-get install chromium)")
    if not (REPO / "web/node_modules/playwright-core/package.json").exists():
        missing.append("web/node_modules/playwright-core (run scripts/install-deps.sh)")
    if not (build_dir / "web/index.html").exists():
        missing.append(f"{build_dir}/web/index.html (run scripts/build-web.sh {build_dir}/web)")
    if missing:
        pytest.fail("the console tests need: " + "; ".join(missing), pytrace=False)


def test_console_in_chromium(e2e, build_dir, test_user, browser_tools):
    shots = build_dir / "e2e/screenshots/console"
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    c = Cluster(build_dir, e2e.jobs_dir.parent / "console-cluster", nodes=1, cpus=2).start()
    try:
        d = workdir(e2e, "job", test_user)
        jid = c.sbatch("--checkpoint=0:04", "job.sh", STEPS, DELAY, user=test_user, cwd=d)
        xss_jid = c.sbatch("--hold", "-J", XSS, "job.sh", 1, 0, user=test_user, cwd=d)
        c.wait_state(jid, "RUNNING", timeout=60)
        c.wait_for(lambda: steps_done(d, jid) >= 2, 60, "the job to start counting")

        expired = c.token(test_user, lifespan=1)
        env = dict(os.environ,
                   CONSOLE_URL=c.rest_url,
                   USER_NAME=test_user, USER_TOKEN=c.token(test_user),
                   OTHER_NAME=OTHER_USER, OTHER_TOKEN=c.token(OTHER_USER),
                   EXPIRED_TOKEN=expired,
                   JOB_ID=str(jid), XSS_JOB_ID=str(xss_jid),
                   SCREENSHOT_DIR=str(shots))
        time.sleep(2.5)  # the 1 s token has expired (JWT times are whole seconds)
        start = time.monotonic()
        r = subprocess.run(["node", "--test", "--test-reporter=spec", str(REPO / "tests/web/console.test.mjs")],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=780)
        print(r.stdout)
        print(r.stderr)
        print(f"browser tests: {time.monotonic() - start:.0f} s, screenshots in {shots}")
        assert r.returncode == 0, f"node --test failed ({r.returncode}):\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"

        # What the browser did, seen from the command line.
        job = c.wait_state(jid, "COMPLETED", timeout=60)
        assert job["restarts"] == 1 and job["num_retained"] == 10, job
        restart = json.loads((shots / "restart.json").read_text())
        cks = {x["checkpoint_id"]: x for x in c.checkpoints(jid)}
        assert cks[restart["vacate"]]["source"] == "vacate", cks
        assert cks[restart["vacate"]]["description"] == "vacated from the console", cks
        assert any(x["description"] == XSS and x["source"] == "manual" for x in cks.values()), cks
        assert not any(x["description"] == "not mine" for x in cks.values()), cks
        assert restart["restart_from"] < restart["vacate"]
        out = d / f"slurm-{jid}.out"
        assert out.read_bytes() == expected_output(STEPS), f"{out} differs from an uninterrupted run"
        assert c.job(xss_jid)["name"] == XSS
        for png in ("01-jobs", "02-checkpoints", "03-overview-plots", "04-other-user", "05-expired-token",
                    "06-vacate-restart", "07-delete", "08-nodes-cluster"):
            assert (shots / f"{png}.png").stat().st_size > 0, png
    finally:
        c.stop()
